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
//! DataFusion's writers complete their uploads even when the plan fails, so they keep
//! writing under the staging name; Sluice's column copy writes in place.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use object_store::path::Path;
use object_store::{
    MultipartUpload, ObjectStore, ObjectStoreExt, PutMultipartOptions, PutPayloadMut,
};
use tokio::task::{JoinHandle, JoinSet};

use crate::builder::Replacing;
use crate::{Result, StoreError};

/// S3's smallest part but the last: parts are never smaller.
pub const MIN_PART_BYTES: usize = 5 << 20;

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

/// An upload whose parts are all acknowledged, waiting to be completed or aborted.
pub(crate) struct Finished {
    upload: Box<dyn MultipartUpload>,
    size: u64,
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
        let store = Arc::clone(&self.store);
        let path = self.path.clone();
        let creating = async move {
            // What the destination holds now: a completion whose answer is lost is
            // taken for done only if the object there is no longer this one.
            let replacing = match store.head(&path).await {
                Ok(meta) => Replacing::Object(meta),
                Err(object_store::Error::NotFound { .. }) => Replacing::Nothing,
                Err(_) => Replacing::Unknown,
            };
            let mut options = PutMultipartOptions::default();
            options.extensions.insert(replacing);
            store.put_multipart_opts(&path, options).await
        };
        InPlaceUpload {
            target: self.clone(),
            creating: Some(tokio::spawn(creating)),
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

    /// Completes the finished upload, if any: the destination now holds it. Returns its
    /// size.
    pub(crate) async fn complete(&self) -> Result<Option<u64>> {
        let Some(mut finished) = self.take() else {
            return Ok(None);
        };
        match finished.upload.complete().await {
            Ok(_) => Ok(Some(finished.size)),
            Err(source) => {
                abort(finished.upload, self.url.clone());
                Err(self.error("complete the upload of", source))
            }
        }
    }

    /// Aborts the finished upload, if any, in the background.
    pub(crate) fn abort(&self) {
        if let Some(finished) = self.take() {
            abort(finished.upload, self.url.clone());
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

    /// Bytes put so far.
    pub fn size(&self) -> u64 {
        self.size
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
        let replaced = self
            .target
            .finished
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(Finished { upload, size });
        if let Some(replaced) = replaced {
            abort(replaced.upload, self.target.url.clone());
        }
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use object_store::memory::InMemory;
    use object_store::{ObjectStoreExt, PutPayload};

    use crate::{OutputKind, StagedOutput, StoreRegistry, resolve_url};

    use super::*;

    /// A registry whose `s3://bkt` is an in-memory store, and a single-file output there.
    fn s3_output(registry: &StoreRegistry) -> (Arc<dyn ObjectStore>, StagedOutput) {
        let dest = resolve_url("s3://bkt/out/x.parquet").unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        registry.register(&dest, Arc::clone(&store));
        let staged = StagedOutput::new(registry, &dest, OutputKind::File).unwrap();
        (store, staged)
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
        let (store, staged) = s3_output(&registry);
        let path = Path::from("out/x.parquet");
        store.put(&path, PutPayload::from("old")).await.unwrap();
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
        let before = store.get(&path).await.unwrap().bytes().await.unwrap();
        assert_eq!(&before[..], b"old", "finished is not published");
        let published = staged.publish().await.unwrap();
        assert_eq!(published.bytes(), expected.len() as u64);
        let after = store.get(&path).await.unwrap().bytes().await.unwrap();
        assert_eq!(after.len(), expected.len());
        assert!(after == expected, "the bytes published are the bytes put");
        assert_eq!(objects(&store).await, vec!["out/x.parquet".to_string()]);
    }

    #[tokio::test]
    async fn an_upload_dropped_aborted_or_never_published_leaves_the_old_file() {
        let registry = StoreRegistry::new();
        let (store, _) = s3_output(&registry);
        let path = Path::from("out/x.parquet");
        store.put(&path, PutPayload::from("old")).await.unwrap();
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
            let now = store.get(&path).await.unwrap().bytes().await.unwrap();
            assert_eq!(&now[..], b"old", "case {case}");
            assert_eq!(objects(&store).await, vec!["out/x.parquet".to_string()]);
        }
    }

    #[tokio::test]
    async fn without_a_finished_upload_publishing_renames_the_staged_file() {
        let registry = StoreRegistry::new();
        let (store, staged) = s3_output(&registry);
        // A writer that fell back: its in-place upload dropped, the staged file written.
        let upload = staged.in_place().unwrap().start(PartOptions::default());
        drop(upload);
        let staging = crate::object_path(staged.staging_url()).unwrap();
        store.put(&staging, PutPayload::from("new")).await.unwrap();
        let published = staged.publish().await.unwrap();
        assert_eq!(published.bytes(), 3);
        let now = store
            .get(&Path::from("out/x.parquet"))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(&now[..], b"new");
    }
}
