//! One file written straight to its destination on a remote store: a multipart upload,
//! which no reader sees until it is completed, completed only when the output is
//! published.
//!
//! Publishing a staged file on S3 (GCS, Azure alike) is a server-side copy of the whole
//! object and a delete: round trips, time in proportion to the object on the server,
//! and at most 5 GiB per object on S3 (CopyObject's limit). A writer that decides when
//! its upload completes needs no staging name: it uploads its parts to the destination
//! with an [`InPlaceUpload`], [`finish`](InPlaceUpload::finish)es it once every part is
//! acknowledged, and [`StagedOutput::publish`](crate::StagedOutput::publish) completes it,
//! which replaces the destination at once. An upload never completed (the write failed,
//! was cancelled, or the output was aborted or dropped) is aborted: the destination keeps
//! what it had.
//!
//! DataFusion's writers complete their uploads even when the plan fails, so they write
//! through [`InPlace::writer_store`] instead, which holds a completion (or a small
//! file's single put) for the publish; Sluice's column copy uses [`InPlaceUpload`].

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutPayloadMut, PutResult,
    UploadPart,
};
use tokio::task::{JoinHandle, JoinSet};

use crate::builder::Replacing;
use crate::{Result, StoreError};

use crate::compose::MIN_PART_BYTES;

/// How an [`InPlaceUpload`] sends its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartOptions {
    /// Bytes per part (all but the last), at least [`MIN_PART_BYTES`].
    pub part_bytes: usize,
    /// Parts uploading at once: each holds its bytes until the store acknowledges them.
    pub in_flight: usize,
}

impl Default for PartOptions {
    /// 10 MiB parts (DataFusion's writer buffer), two in flight.
    fn default() -> Self {
        PartOptions {
            part_bytes: 10 << 20,
            in_flight: 2,
        }
    }
}

/// The destination of a [`StagedOutput`](crate::StagedOutput) that can be written in
/// place: one file on a remote store. Cloned freely; at most one finished upload waits
/// in it for the publish.
///
/// ```
/// # fn main() -> Result<(), sluice_store::StoreError> {
/// use sluice_store::{OutputKind, StagedOutput, StoreRegistry, resolve_url};
///
/// let registry = StoreRegistry::new();
/// let dest = resolve_url("s3://bucket/out/trips.parquet")?;
/// let staged = StagedOutput::new(&registry, &dest, OutputKind::File)?;
/// let in_place = staged.in_place().expect("one file on S3 can be written in place");
/// assert_eq!(in_place.url(), "s3://bucket/out/trips.parquet");
/// // A writer then runs `in_place.start(PartOptions::default())`, `put`s its bytes and
/// // `finish`es the upload; `staged.publish()` completes it.
///
/// // Local disk and memory stage and rename instead (a rename is cheap there).
/// let local = resolve_url("memory://bucket/out.csv")?;
/// let staged = StagedOutput::new(&registry, &local, OutputKind::File)?;
/// assert!(staged.in_place().is_none());
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct InPlace {
    store: Arc<dyn ObjectStore>,
    path: Path,
    /// The destination, without credentials.
    url: String,
    finished: Arc<Mutex<Option<Finished>>>,
}

impl std::fmt::Debug for InPlace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InPlace").field("url", &self.url).finish()
    }
}

/// A file written and waiting for the publish.
enum Finished {
    /// A multipart upload whose parts are all acknowledged, to complete or abort.
    Upload {
        upload: Box<dyn MultipartUpload>,
        size: u64,
    },
    /// A file small enough for one request (a writer's single put), held in memory.
    Put { payload: PutPayload },
}

impl InPlace {
    pub(crate) fn new(store: Arc<dyn ObjectStore>, path: Path, url: String) -> Self {
        InPlace {
            store,
            path,
            url,
            finished: Arc::default(),
        }
    }

    /// The destination, without credentials.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Starts the upload at the destination; its creation (a `HEAD` of what is there,
    /// then the upload's creation) runs while the first part fills.
    pub fn start(&self, options: PartOptions) -> InPlaceUpload {
        InPlaceUpload {
            target: self.clone(),
            creating: Some(tokio::spawn(self.create())),
            upload: None,
            buffer: PutPayloadMut::new(),
            options: PartOptions {
                part_bytes: options.part_bytes.max(MIN_PART_BYTES),
                in_flight: options.in_flight.max(1),
            },
            parts: JoinSet::new(),
            size: 0,
        }
    }

    /// An object store for a writer that completes its uploads itself, even when it
    /// fails (DataFusion's sinks): the one file written to it, at whatever path, goes to
    /// the destination and waits there for the publish, as an [`InPlaceUpload`]
    /// finished. A multipart upload's parts go to the destination as they come, its
    /// completion is held; a file small enough for one `put` is held in memory (it is
    /// under the writer's buffer size) and put at the publish. Reading, listing or
    /// deleting through it is an error.
    pub fn writer_store(&self) -> Arc<dyn ObjectStore> {
        Arc::new(WriterStore {
            target: self.clone(),
        })
    }

    /// Creates the multipart upload at the destination, telling the store what is
    /// there now: a completion whose answer is lost is taken for done only if the
    /// object there is no longer that one.
    fn create(
        &self,
    ) -> impl std::future::Future<Output = object_store::Result<Box<dyn MultipartUpload>>> + Send + 'static
    {
        let store = Arc::clone(&self.store);
        let path = self.path.clone();
        async move {
            let replacing = match store.head(&path).await {
                Ok(meta) => Replacing::Object(meta),
                Err(object_store::Error::NotFound { .. }) => Replacing::Nothing,
                Err(_) => Replacing::Unknown,
            };
            let mut options = PutMultipartOptions::default();
            options.extensions.insert(replacing);
            store.put_multipart_opts(&path, options).await
        }
    }

    /// Whether [`compose`](Self::compose) can write this destination: an S3 store
    /// built by [`StoreBuilder`](crate::StoreBuilder).
    pub fn can_compose(&self) -> bool {
        #[cfg(feature = "s3")]
        return crate::s3_requests::S3Requests::of(&self.store).is_some();
        #[cfg(not(feature = "s3"))]
        false
    }

    /// Writes the destination as `pieces` in order, the server copying every range
    /// long enough to be a part of its own (`UploadPartCopy`, no bytes through this
    /// process) and this process sending the rest (given bytes, and short ranges read
    /// to make parts of S3's minimum size), then holds the upload for the publish as a
    /// [`finish`](InPlaceUpload::finish)ed one. The ranges' objects are in the same
    /// store (and bucket) as the destination.
    ///
    /// Fails with [`StoreError::ObjectStore`] (`NotSupported`) where
    /// [`can_compose`](Self::can_compose) is false.
    pub async fn compose(
        &self,
        pieces: Vec<crate::Piece>,
        options: crate::ComposeOptions,
    ) -> Result<crate::Composed> {
        #[cfg(feature = "s3")]
        if let Some(copy) = crate::s3_requests::S3Requests::of(&self.store) {
            let (upload, composed) = copy
                .compose(&self.path, pieces, options)
                .await
                .map_err(|source| crate::s3_requests::error(&self.url, source))?;
            tracing::debug!(url = %self.url, ?composed, "composed server-side");
            self.hold(Finished::Upload {
                upload: Box::new(upload),
                size: composed.size,
            });
            return Ok(composed);
        }
        let _ = (pieces, options);
        Err(self.error(
            "compose",
            object_store::Error::NotSupported {
                source: "only an S3 store built by Sluice composes objects server-side".into(),
            },
        ))
    }

    /// Holds `finished` for the publish, aborting any upload held before.
    fn hold(&self, finished: Finished) {
        let replaced = self
            .finished
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(finished);
        if let Some(Finished::Upload { upload, .. }) = replaced {
            abort(upload, self.url.clone());
        }
    }

    /// Completes the finished upload, if any: the destination now holds it. Returns its
    /// size.
    pub(crate) async fn complete(&self) -> Result<Option<u64>> {
        match self.take() {
            None => Ok(None),
            Some(Finished::Upload { mut upload, size }) => match upload.complete().await {
                Ok(_) => Ok(Some(size)),
                Err(source) => {
                    abort(upload, self.url.clone());
                    Err(self.error("complete the upload of", source))
                }
            },
            Some(Finished::Put { payload }) => {
                let size = payload.content_length() as u64;
                self.store
                    .put(&self.path, payload)
                    .await
                    .map_err(|source| self.error("put", source))?;
                Ok(Some(size))
            }
        }
    }

    /// Aborts the finished upload, if any, in the background.
    pub(crate) fn abort(&self) {
        if let Some(Finished::Upload { upload, .. }) = self.take() {
            abort(upload, self.url.clone());
        }
    }

    fn take(&self) -> Option<Finished> {
        self.finished
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    fn error(&self, operation: &'static str, source: object_store::Error) -> StoreError {
        StoreError::ObjectStore {
            operation,
            url: self.url.clone(),
            source,
        }
    }
}

/// Aborts `upload` in the background, counted by [`cleanup::drain`](crate::cleanup::drain).
fn abort(mut upload: Box<dyn MultipartUpload>, url: String) {
    crate::cleanup::spawn("abort an in-place upload", async move {
        if let Err(error) = upload.abort().await {
            tracing::warn!(%url, %error, "could not abort an unpublished upload");
        }
    });
}

/// A multipart upload at an output's destination (see the [module](self)): bytes are
/// put in order, sent in parts of [`PartOptions::part_bytes`], a few at once.
///
/// Dropped before [`finish`](Self::finish) returned, the upload is aborted.
pub struct InPlaceUpload {
    target: InPlace,
    creating: Option<JoinHandle<object_store::Result<Box<dyn MultipartUpload>>>>,
    upload: Option<Box<dyn MultipartUpload>>,
    buffer: PutPayloadMut,
    options: PartOptions,
    parts: JoinSet<object_store::Result<()>>,
    size: u64,
}

impl std::fmt::Debug for InPlaceUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InPlaceUpload")
            .field("url", &self.target.url)
            .field("size", &self.size)
            .field("in_flight", &self.parts.len())
            .finish()
    }
}

impl InPlaceUpload {
    /// Appends `bytes`, waiting while [`PartOptions::in_flight`] parts are uploading.
    pub async fn put(&mut self, mut bytes: Bytes) -> Result<()> {
        self.size += bytes.len() as u64;
        while !bytes.is_empty() {
            let room = self.options.part_bytes - self.buffer.content_length();
            self.buffer.push(bytes.split_to(room.min(bytes.len())));
            if self.buffer.content_length() >= self.options.part_bytes {
                self.send_part().await?;
            }
        }
        Ok(())
    }

    /// Sends the last part and waits for every part: the upload then waits, invisible,
    /// for [`StagedOutput::publish`](crate::StagedOutput::publish) to complete it (or
    /// for the output's abort or drop to abort it). Returns the file's size.
    pub async fn finish(mut self) -> Result<u64> {
        if self.buffer.content_length() > 0 {
            self.send_part().await?;
        }
        while !self.parts.is_empty() {
            self.join_part().await?;
        }
        let upload = self.created().await?;
        let size = self.size;
        self.target.hold(Finished::Upload { upload, size });
        Ok(size)
    }

    async fn send_part(&mut self) -> Result<()> {
        while self.parts.len() >= self.options.in_flight {
            self.join_part().await?;
        }
        let payload = std::mem::take(&mut self.buffer).freeze();
        if self.upload.is_none() {
            let created = self.created().await?;
            self.upload = Some(created);
        }
        if let Some(upload) = self.upload.as_mut() {
            self.parts.spawn(upload.put_part(payload));
        }
        Ok(())
    }

    /// The upload, once created (taken out of `self`).
    async fn created(&mut self) -> Result<Box<dyn MultipartUpload>> {
        if let Some(upload) = self.upload.take() {
            return Ok(upload);
        }
        let creating = self.creating.take().ok_or_else(|| {
            self.target.error(
                "upload",
                object_store::Error::Generic {
                    store: "sluice",
                    source: "the upload failed before".into(),
                },
            )
        })?;
        creating
            .await
            .map_err(|e| {
                self.target.error(
                    "create the upload of",
                    object_store::Error::JoinError { source: e },
                )
            })?
            .map_err(|source| self.target.error("create the upload of", source))
    }

    async fn join_part(&mut self) -> Result<()> {
        match self.parts.join_next().await {
            Some(Ok(Ok(()))) | None => Ok(()),
            Some(Ok(Err(source))) => Err(self.target.error("upload a part of", source)),
            Some(Err(e)) => Err(self.target.error(
                "upload a part of",
                object_store::Error::JoinError { source: e },
            )),
        }
    }
}

impl Drop for InPlaceUpload {
    fn drop(&mut self) {
        self.parts.abort_all();
        if let Some(upload) = self.upload.take() {
            abort(upload, self.target.url.clone());
        } else if let Some(creating) = self.creating.take() {
            let url = self.target.url.clone();
            crate::cleanup::spawn("abort an in-place upload", async move {
                if let Ok(Ok(mut upload)) = creating.await
                    && let Err(error) = upload.abort().await
                {
                    tracing::warn!(%url, %error, "could not abort an unpublished upload");
                }
            });
        }
    }
}

/// [`InPlace::writer_store`].
#[derive(Debug)]
struct WriterStore {
    target: InPlace,
}

impl std::fmt::Display for WriterStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "in-place writer of {}", self.target.url)
    }
}

impl WriterStore {
    fn unsupported<T>(&self, what: &str) -> object_store::Result<T> {
        Err(object_store::Error::NotSupported {
            source: format!(
                "{what} through the in-place writer of {}: it only writes",
                self.target.url
            )
            .into(),
        })
    }
}

#[async_trait::async_trait]
impl ObjectStore for WriterStore {
    async fn put_opts(
        &self,
        _location: &Path,
        payload: PutPayload,
        _opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.target.hold(Finished::Put { payload });
        Ok(PutResult {
            e_tag: None,
            version: None,
        })
    }

    async fn put_multipart_opts(
        &self,
        _location: &Path,
        _opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let upload = self.target.create().await?;
        Ok(Box::new(HeldUpload {
            upload: Some(upload),
            size: 0,
            target: self.target.clone(),
        }))
    }

    async fn get_opts(
        &self,
        _location: &Path,
        _options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.unsupported("reading")
    }

    fn delete_stream(
        &self,
        _locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        futures::stream::once(futures::future::ready(self.unsupported("deleting"))).boxed()
    }

    fn list(&self, _prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        futures::stream::once(futures::future::ready(self.unsupported("listing"))).boxed()
    }

    async fn list_with_delimiter(
        &self,
        _prefix: Option<&Path>,
    ) -> object_store::Result<ListResult> {
        self.unsupported("listing")
    }

    async fn copy_opts(
        &self,
        _from: &Path,
        _to: &Path,
        _options: CopyOptions,
    ) -> object_store::Result<()> {
        self.unsupported("copying")
    }
}

/// A multipart upload through a [`WriterStore`]: parts go to the destination, the
/// completion is held for the publish.
#[derive(Debug)]
struct HeldUpload {
    upload: Option<Box<dyn MultipartUpload>>,
    size: u64,
    target: InPlace,
}

#[async_trait::async_trait]
impl MultipartUpload for HeldUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.size += data.content_length() as u64;
        match self.upload.as_mut() {
            Some(upload) => upload.put_part(data),
            None => Box::pin(futures::future::ready(Err(object_store::Error::Generic {
                store: "sluice",
                source: format!("the upload of {} is finished", self.target.url).into(),
            }))),
        }
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        if let Some(upload) = self.upload.take() {
            self.target.hold(Finished::Upload {
                upload,
                size: self.size,
            });
        }
        Ok(PutResult {
            e_tag: None,
            version: None,
        })
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        match self.upload.take() {
            Some(mut upload) => upload.abort().await,
            None => Ok(()),
        }
    }
}

impl Drop for HeldUpload {
    fn drop(&mut self) {
        if let Some(upload) = self.upload.take() {
            abort(upload, self.target.url.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use object_store::memory::InMemory;
    use object_store::{ObjectStoreExt, PutPayload};

    use crate::{OutputKind, StagedOutput, StoreRegistry, resolve_url};

    use super::*;

    /// A registry whose `s3://bkt` is an in-memory store holding `out/x.parquet` ("old"),
    /// and a single-file output replacing it.
    async fn s3_output(registry: &StoreRegistry) -> (Arc<dyn ObjectStore>, StagedOutput) {
        let dest = resolve_url("s3://bkt/out/x.parquet").unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        store
            .put(&dest_path(), PutPayload::from("old"))
            .await
            .unwrap();
        registry.register(&dest, Arc::clone(&store));
        let staged = StagedOutput::new(registry, &dest, OutputKind::File).unwrap();
        (store, staged)
    }

    fn dest_path() -> Path {
        Path::from("out/x.parquet")
    }

    /// What the destination holds.
    async fn at_dest(store: &Arc<dyn ObjectStore>) -> Bytes {
        store
            .get(&dest_path())
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
    }

    async fn objects(store: &Arc<dyn ObjectStore>) -> Vec<String> {
        use futures::TryStreamExt;
        let mut all: Vec<String> = store
            .list(None)
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .unwrap();
        all.sort();
        all
    }

    /// 12 MiB and a bit, in pieces that straddle the 5 MiB parts.
    fn pieces() -> Vec<Bytes> {
        (0..25u8)
            .map(|i| Bytes::from(vec![i; (1 << 19) + 7]))
            .collect()
    }

    #[tokio::test]
    async fn a_finished_upload_appears_only_when_published_and_replaces_the_old_file() {
        let registry = StoreRegistry::new();
        let (store, staged) = s3_output(&registry).await;
        let mut upload = staged.in_place().unwrap().start(PartOptions {
            part_bytes: 1, // raised to S3's minimum
            in_flight: 2,
        });
        let mut expected = Vec::new();
        for piece in pieces() {
            expected.extend_from_slice(&piece);
            upload.put(piece).await.unwrap();
        }
        assert_eq!(upload.finish().await.unwrap(), expected.len() as u64);
        let before = at_dest(&store).await;
        assert_eq!(&before[..], b"old", "finished is not published");
        let published = staged.publish().await.unwrap();
        assert_eq!(published.bytes(), expected.len() as u64);
        let after = at_dest(&store).await;
        assert_eq!(after.len(), expected.len());
        assert!(after == expected, "the bytes published are the bytes put");
        assert_eq!(objects(&store).await, vec!["out/x.parquet".to_string()]);
    }

    #[tokio::test]
    async fn an_upload_dropped_aborted_or_never_published_leaves_the_old_file() {
        let registry = StoreRegistry::new();
        let (store, _) = s3_output(&registry).await;
        // Dropped halfway; finished, then the output aborted; finished, then dropped.
        for case in 0..3 {
            let staged = StagedOutput::new(
                &registry,
                &resolve_url("s3://bkt/out/x.parquet").unwrap(),
                OutputKind::File,
            )
            .unwrap();
            let mut upload = staged.in_place().unwrap().start(PartOptions::default());
            for piece in pieces() {
                upload.put(piece).await.unwrap();
            }
            match case {
                0 => drop(upload),
                1 => {
                    upload.finish().await.unwrap();
                    staged.abort().await.unwrap();
                }
                _ => {
                    upload.finish().await.unwrap();
                    drop(staged);
                }
            }
            assert!(crate::cleanup::drain(Duration::from_secs(5)).await);
            let now = at_dest(&store).await;
            assert_eq!(&now[..], b"old", "case {case}");
            assert_eq!(objects(&store).await, vec!["out/x.parquet".to_string()]);
        }
    }

    #[tokio::test]
    async fn a_writer_stores_file_waits_for_the_publish_whether_put_or_uploaded() {
        use object_store::buffered::BufWriter;
        use tokio::io::AsyncWriteExt;
        let registry = Arc::new(StoreRegistry::new());
        // Small enough for one put, and large enough for a multipart upload, each
        // written as DataFusion's sinks write (object_store's `BufWriter`).
        for pieces in [vec![Bytes::from_static(b"small")], pieces()] {
            let (store, staged) = s3_output(&registry).await;
            let writer = staged.register_writer(&registry).unwrap();
            assert_eq!(writer.url().scheme(), crate::IN_PLACE_SCHEME);
            let writer_store = registry.store_for(writer.url()).unwrap();
            let mut file = BufWriter::with_capacity(writer_store, Path::from("x.parquet"), 5 << 20);
            let mut expected = Vec::new();
            for piece in pieces {
                expected.extend_from_slice(&piece);
                file.put(piece).await.unwrap();
            }
            file.shutdown().await.unwrap();
            let before = at_dest(&store).await;
            assert_eq!(&before[..], b"old", "written is not published");
            let url = writer.url().clone();
            let published = staged.publish().await.unwrap();
            assert_eq!(published.bytes(), expected.len() as u64);
            let after = at_dest(&store).await;
            assert!(
                after == expected,
                "the bytes published are the bytes written"
            );
            drop(writer);
            assert!(
                registry.store_for(&url).is_err(),
                "deregistered when dropped"
            );
        }
    }

    #[tokio::test]
    async fn what_a_failed_writer_completed_anyway_is_discarded_by_the_abort() {
        use object_store::buffered::BufWriter;
        use tokio::io::AsyncWriteExt;
        let registry = Arc::new(StoreRegistry::new());
        let (store, staged) = s3_output(&registry).await;
        let writer = staged.register_writer(&registry).unwrap();
        let mut file = BufWriter::with_capacity(
            registry.store_for(writer.url()).unwrap(),
            Path::from("x.parquet"),
            5 << 20,
        );
        // Half a file, shut down as DataFusion 55 shuts its writers down on failure.
        for piece in pieces().into_iter().take(12) {
            file.put(piece).await.unwrap();
        }
        file.shutdown().await.unwrap();
        staged.abort().await.unwrap();
        assert!(crate::cleanup::drain(Duration::from_secs(5)).await);
        let now = at_dest(&store).await;
        assert_eq!(&now[..], b"old");
        // Reading through the writer's store is refused.
        let writer_store = registry.store_for(writer.url()).unwrap();
        assert!(matches!(
            writer_store.get(&Path::from("x.parquet")).await,
            Err(object_store::Error::NotSupported { .. })
        ));
    }

    #[tokio::test]
    async fn without_a_finished_upload_publishing_renames_the_staged_file() {
        let registry = StoreRegistry::new();
        let (store, staged) = s3_output(&registry).await;
        // A writer that fell back: its in-place upload dropped, the staged file written.
        let upload = staged.in_place().unwrap().start(PartOptions::default());
        drop(upload);
        let staging = crate::object_path(staged.staging_url()).unwrap();
        store.put(&staging, PutPayload::from("new")).await.unwrap();
        let published = staged.publish().await.unwrap();
        assert_eq!(published.bytes(), 3);
        let now = at_dest(&store).await;
        assert_eq!(&now[..], b"new");
    }
}
