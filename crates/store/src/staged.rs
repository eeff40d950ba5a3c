//! Outputs written under a hidden staging name and published whole.
//!
//! What a reader may see, whatever point a writer crashes at:
//!
//! | crash during              | the destination shows                                   |
//! |---------------------------|---------------------------------------------------------|
//! | writing the staged data   | its previous content (or nothing); the staging name is hidden |
//! | writing one file in place | its previous content (or nothing): the upload is invisible until completed |
//! | publishing a file         | the old file or the new one, never a mix (one rename, or one completion) |
//! | publishing a local dir    | the old directory or the new one (directory rename)     |
//! | publishing a remote dir   | no `_SUCCESS` marker until every part is in place       |
//!
//! A multipart upload is invisible until completed, but on a failed write DataFusion 55
//! still *completes* the uploads it started (`stateless_serialize_and_write_files` in
//! `datafusion-datasource/src/write/orchestration.rs` shuts every writer down), which
//! would publish a truncated file at the destination; and on S3 publishing a staged
//! file is a server-side copy (CopyObject: at most 5 GiB per object). So one file on a
//! remote store is written in place ([`StagedOutput::in_place`],
//! [`StagedOutput::register_writer`]): at the destination, with its completion held
//! until [`StagedOutput::publish`]. Directories and local files are staged.
//!
//! Leftover staging objects start with `.` and carry `sluice-staging` in their name:
//! DataFusion and most readers skip hidden files, and they are safe to delete.

use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use url::Url;

use crate::redact::redact;
use crate::{InPlace, Result, StoreError, StoreRegistry, object_path};

/// The shape of an output: one object, or a directory of parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// One object at exactly the destination URL.
    File,
    /// A directory (prefix) of part files.
    Directory,
}

/// One published object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedFile {
    /// Where it is.
    pub url: Url,
    /// Its size in bytes.
    pub size: u64,
}

/// What [`StagedOutput::publish`] made visible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedOutput {
    /// The destination.
    pub url: Url,
    /// The data files now at the destination, sorted by URL.
    pub files: Vec<PublishedFile>,
}

impl PublishedOutput {
    /// Total size of the published files.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

/// A destination being written: data goes to [`staging_url`](Self::staging_url), and
/// [`publish`](Self::publish) moves it to the destination once it is whole.
///
/// Dropping it without publishing deletes the staged data (in the background when a
/// tokio runtime is running), so a cancelled write leaves nothing behind.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), sluice_store::StoreError> {
/// use object_store::{ObjectStoreExt, PutPayload};
/// use sluice_store::{OutputKind, StagedOutput, StoreRegistry, object_path, resolve_url};
///
/// let registry = StoreRegistry::new();
/// let dest = resolve_url("memory://bucket/out/report.csv")?;
/// let staged = StagedOutput::new(&registry, &dest, OutputKind::File)?;
/// let store = registry.store_for(&dest)?;
/// store
///     .put(&object_path(staged.staging_url())?, PutPayload::from("a,b\n1,2\n"))
///     .await
///     .unwrap();
/// assert!(store.head(&object_path(&dest)?).await.is_err()); // not visible yet
/// let published = staged.publish().await?;
/// assert_eq!(published.bytes(), 8);
/// assert!(store.head(&object_path(&dest)?).await.is_ok());
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct StagedOutput {
    store: Arc<dyn ObjectStore>,
    dest: Url,
    staging: Url,
    kind: OutputKind,
    /// One file on a remote store: the upload that may be written at the destination.
    in_place: Option<InPlace>,
    /// Whether [`parts_url`](StagedOutput::parts_url) was handed out for a file: its
    /// parts are deleted with the staged data.
    parts: std::sync::atomic::AtomicBool,
    finished: bool,
}

/// The scheme of the URLs [`StagedOutput::register_writer`] registers.
pub const IN_PLACE_SCHEME: &str = "sluice-in-place";

/// A writer store registered by [`StagedOutput::register_writer`]; dropped, it is
/// deregistered.
#[derive(Debug)]
pub struct RegisteredWriter {
    url: Url,
    registry: Arc<StoreRegistry>,
}

impl RegisteredWriter {
    /// The URL to write the output's one file to.
    pub fn url(&self) -> &Url {
        &self.url
    }
}

impl Drop for RegisteredWriter {
    fn drop(&mut self) {
        self.registry.deregister(&self.url);
    }
}

/// What every staging name contains: `.NAME.sluice-staging-ID`.
pub const STAGING_MARKER: &str = ".sluice-staging-";

/// Name of the marker written last into a published remote directory.
pub const SUCCESS_MARKER: &str = "_SUCCESS";

impl StagedOutput {
    /// Prepares a staged write to `dest`. Nothing is written yet.
    pub fn new(registry: &StoreRegistry, dest: &Url, kind: OutputKind) -> Result<Self> {
        let target = registry.target(dest)?;
        if matches!(target.scheme(), "http" | "https") {
            return Err(StoreError::ReadOnly {
                url: redact(dest),
                scheme: target.scheme().to_string(),
            });
        }
        let store = registry.store_for(dest)?;
        let mut dest = dest.clone();
        let trimmed = dest.path().trim_end_matches('/').to_string();
        let (parent, name) = trimmed.rsplit_once('/').unwrap_or(("", trimmed.as_str()));
        if name.is_empty() {
            return Err(StoreError::InvalidUrl {
                location: redact(&dest),
                reason: "a destination needs a file or directory name".into(),
            });
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        let mut staging = dest.clone();
        match kind {
            OutputKind::File => {
                staging.set_path(&format!("{parent}/.{name}{STAGING_MARKER}{id}"));
                dest.set_path(&trimmed);
            }
            OutputKind::Directory => {
                staging.set_path(&format!("{parent}/.{name}{STAGING_MARKER}{id}/"));
                dest.set_path(&format!("{trimmed}/"));
            }
        }
        let remote = !matches!(dest.scheme(), "file" | "memory");
        let in_place = (kind == OutputKind::File && remote)
            .then(|| object_path(&dest))
            .transpose()?
            .map(|path| InPlace::new(Arc::clone(&store), path, redact(&dest)));
        Ok(Self {
            store,
            dest,
            staging,
            kind,
            in_place,
            parts: std::sync::atomic::AtomicBool::new(false),
            finished: false,
        })
    }

    /// Where the output's parts go when writers elsewhere (a cluster's executors) each
    /// write one part and this process assembles the result: the staging directory
    /// itself for a directory output (its parts are the output's files), and for one
    /// file a hidden directory beside its staging name (`.NAME.sluice-staging-ID.parts/`),
    /// deleted by [`publish`](Self::publish), [`abort`](Self::abort) or a drop.
    ///
    /// ```
    /// use sluice_store::{OutputKind, StagedOutput, StoreRegistry, resolve_url};
    /// let registry = StoreRegistry::new();
    /// let dest = resolve_url("memory://bucket/out/trips.parquet")?;
    /// let staged = StagedOutput::new(&registry, &dest, OutputKind::File)?;
    /// let parts = staged.parts_url();
    /// assert!(parts.path().starts_with("/out/.trips.parquet.sluice-staging-"));
    /// assert!(parts.path().ends_with(".parts/"));
    /// # Ok::<(), sluice_store::StoreError>(())
    /// ```
    pub fn parts_url(&self) -> Url {
        self.parts.store(true, std::sync::atomic::Ordering::Relaxed);
        match self.kind {
            OutputKind::Directory => self.staging.clone(),
            OutputKind::File => {
                let mut parts = self.staging.clone();
                parts.set_path(&format!("{}.parts/", self.staging.path()));
                parts
            }
        }
    }

    /// The parts directory of a file output, when one was handed out.
    fn file_parts(&self) -> Option<Url> {
        (self.kind == OutputKind::File && self.parts.load(std::sync::atomic::Ordering::Relaxed))
            .then(|| self.parts_url())
    }

    /// Where the data must be written.
    pub fn staging_url(&self) -> &Url {
        &self.staging
    }

    /// Where the data will appear.
    pub fn destination(&self) -> &Url {
        &self.dest
    }

    /// For one file on a remote store (S3, GCS, Azure), the destination itself, for a
    /// writer that uploads there instead of to the [staging URL](Self::staging_url):
    /// its upload, once [finished](crate::InPlaceUpload::finish), is completed by
    /// [`publish`](Self::publish), and aborted by [`abort`](Self::abort) or a drop. A
    /// writer that does not finish one writes to the staging URL as usual. `None` for
    /// a directory and on local disk or memory, where publishing is a rename already.
    pub fn in_place(&self) -> Option<&InPlace> {
        self.in_place.as_ref()
    }

    /// For a writer that reaches stores through `registry` by URL and completes its
    /// uploads even when it fails (DataFusion's sinks): when the output can be written
    /// [in place](Self::in_place), registers its [writer store](InPlace::writer_store) at
    /// a URL of its own (`sluice-in-place://ID/NAME`) and returns it, deregistered when
    /// dropped. What the writer writes there waits at the destination for
    /// [`publish`](Self::publish); if it fails, [`abort`](Self::abort) discards it.
    pub fn register_writer(&self, registry: &Arc<StoreRegistry>) -> Option<RegisteredWriter> {
        let in_place = self.in_place.as_ref()?;
        let name = self.dest.path().rsplit('/').next().unwrap_or("output");
        let id = uuid::Uuid::new_v4().simple().to_string();
        let url = Url::parse(&format!("{IN_PLACE_SCHEME}://{id}/"))
            .ok()?
            .join(name)
            .ok()?;
        registry.register(&url, in_place.writer_store());
        Some(RegisteredWriter {
            url,
            registry: Arc::clone(registry),
        })
    }

    /// Moves the staged data to the destination, replacing what was there.
    pub async fn publish(mut self) -> Result<PublishedOutput> {
        self.finished = true;
        let result = match self.kind {
            OutputKind::File => self.publish_file().await,
            OutputKind::Directory if self.dest.scheme() == "file" => self.publish_local_dir(),
            OutputKind::Directory => self.publish_remote_dir().await,
        };
        if result.is_err() {
            let _ = delete_prefix(&self.store, &self.staging).await;
        }
        if let Some(parts) = self.file_parts()
            && let Err(e) = delete_prefix(&self.store, &parts).await
        {
            tracing::warn!(parts = %redact(&parts), error = %e, "could not delete an assembled output's parts");
        }
        let files = result?;
        tracing::debug!(dest = %redact(&self.dest), files = files.len(), "published output");
        Ok(PublishedOutput {
            url: self.dest.clone(),
            files,
        })
    }

    /// Deletes the staged data; the destination is left as it was.
    pub async fn abort(mut self) -> Result<()> {
        self.finished = true;
        if let Some(in_place) = &self.in_place {
            in_place.abort();
        }
        if let Some(parts) = self.file_parts() {
            delete_prefix(&self.store, &parts).await?;
        }
        if self.parts.load(std::sync::atomic::Ordering::Relaxed) {
            // Parts written by other processes (a cluster's executors): one killed while
            // writing left its upload open.
            crate::sweep_pending_uploads(&self.store, &object_path(&self.parts_url())?).await;
        }
        delete_prefix(&self.store, &self.staging).await
    }

    async fn publish_file(&self) -> Result<Vec<PublishedFile>> {
        if let Some(in_place) = &self.in_place
            && let Some(size) = in_place.complete().await?
        {
            return Ok(vec![PublishedFile {
                url: self.dest.clone(),
                size,
            }]);
        }
        let from = object_path(&self.staging)?;
        let to = object_path(&self.dest)?;
        self.store
            .rename(&from, &to)
            .await
            .map_err(|source| self.store_error("rename", &self.dest, source))?;
        let meta = self
            .store
            .head(&to)
            .await
            .map_err(|source| self.store_error("head", &self.dest, source))?;
        Ok(vec![PublishedFile {
            url: self.dest.clone(),
            size: meta.size,
        }])
    }

    fn publish_local_dir(&self) -> Result<Vec<PublishedFile>> {
        let to_fs = |url: &Url| {
            url.to_file_path().map_err(|()| StoreError::InvalidUrl {
                location: redact(url),
                reason: "not a local path".into(),
            })
        };
        let staging = to_fs(&self.staging)?;
        let dest = to_fs(&self.dest)?;
        let io = |operation, path: &std::path::Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Io {
                operation,
                path,
                source,
            }
        };
        if !staging.exists() {
            // The query produced no rows and wrote no part: publish an empty directory.
            std::fs::create_dir_all(&staging).map_err(io("create directory", &staging))?;
        }
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(io("create directory", parent))?;
        }
        let replaced = staging.with_extension("replaced");
        let had_old = dest.exists();
        if had_old {
            std::fs::rename(&dest, &replaced).map_err(io("rename", &dest))?;
        }
        if let Err(e) = std::fs::rename(&staging, &dest) {
            if had_old {
                let _ = std::fs::rename(&replaced, &dest);
            }
            return Err(io("rename", &staging)(e));
        }
        if had_old {
            std::fs::remove_dir_all(&replaced).map_err(io("remove directory", &replaced))?;
        }
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&dest).map_err(io("list", &dest))? {
            let entry = entry.map_err(io("list", &dest))?;
            let meta = entry.metadata().map_err(io("stat", &entry.path()))?;
            if meta.is_file() {
                files.push(PublishedFile {
                    url: Url::from_file_path(entry.path()).map_err(|()| {
                        StoreError::InvalidUrl {
                            location: entry.path().display().to_string(),
                            reason: "not an absolute path".into(),
                        }
                    })?,
                    size: meta.len(),
                });
            }
        }
        files.sort_by(|a, b| a.url.as_str().cmp(b.url.as_str()));
        Ok(files)
    }

    async fn publish_remote_dir(&self) -> Result<Vec<PublishedFile>> {
        let dest_prefix = object_path(&self.dest)?;
        let marker = dest_prefix.clone().join(SUCCESS_MARKER);
        // Readers that honour the marker see "incomplete" from here until the end.
        match self.store.delete(&marker).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(source) => return Err(self.store_error("delete", &self.dest, source)),
        }
        delete_prefix(&self.store, &self.dest).await?;
        let staged = list(&self.store, &self.staging).await?;
        let staging_prefix = object_path(&self.staging)?;
        let mut files = Vec::with_capacity(staged.len());
        for meta in staged {
            let relative: Vec<_> = meta
                .location
                .prefix_match(&staging_prefix)
                .into_iter()
                .flatten()
                .collect();
            let mut to = dest_prefix.clone();
            for part in relative {
                to = to.join(part.as_ref());
            }
            self.store
                .rename(&meta.location, &to)
                .await
                .map_err(|source| self.store_error("rename", &self.dest, source))?;
            let mut url = self.dest.clone();
            url.set_path(&format!("/{to}"));
            files.push(PublishedFile {
                url,
                size: meta.size,
            });
        }
        self.store
            .put(&marker, PutPayload::new())
            .await
            .map_err(|source| self.store_error("put", &self.dest, source))?;
        files.sort_by(|a, b| a.url.as_str().cmp(b.url.as_str()));
        Ok(files)
    }

    fn store_error(
        &self,
        operation: &'static str,
        url: &Url,
        source: object_store::Error,
    ) -> StoreError {
        StoreError::ObjectStore {
            operation,
            url: redact(url),
            source,
        }
    }
}

impl Drop for StagedOutput {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        if let Some(in_place) = &self.in_place {
            in_place.abort();
        }
        let store = Arc::clone(&self.store);
        let staged = [Some(self.staging.clone()), self.file_parts()];
        crate::cleanup::spawn("delete staged output", async move {
            for staging in staged.into_iter().flatten() {
                if let Err(e) = delete_prefix(&store, &staging).await {
                    tracing::warn!(staging = %redact(&staging), error = %e, "could not delete staged output");
                }
            }
        });
    }
}

async fn list(store: &Arc<dyn ObjectStore>, url: &Url) -> Result<Vec<object_store::ObjectMeta>> {
    let prefix: Path = object_path(url)?;
    store
        .list(Some(&prefix))
        .try_collect()
        .await
        .map_err(|source| StoreError::ObjectStore {
            operation: "list",
            url: redact(url),
            source,
        })
}

/// Deletes the object at `url` and everything under it as a prefix.
async fn delete_prefix(store: &Arc<dyn ObjectStore>, url: &Url) -> Result<()> {
    if url.scheme() == "file"
        && let Ok(path) = url.to_file_path()
    {
        // On local disk a staged directory is a real directory: remove the tree.
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        return match removed {
            Err(source) if source.kind() != std::io::ErrorKind::NotFound => Err(StoreError::Io {
                operation: "delete",
                path,
                source,
            }),
            _ => Ok(()),
        };
    }
    let delete_error = |source| StoreError::ObjectStore {
        operation: "delete",
        url: redact(url),
        source,
    };
    // A directory (a trailing `/`) is no object of its own: deleting its name would
    // fail on stores that keep objects as files (s3s-fs: "is a directory").
    if !url.path().ends_with('/') {
        match store.delete(&object_path(url)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(source) => return Err(delete_error(source)),
        }
    }
    for meta in list(store, url).await? {
        match store.delete(&meta.location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(source) => return Err(delete_error(source)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resolve_url;

    #[tokio::test]
    async fn aborted_directory_leaves_nothing_at_the_destination() {
        let dir = tempfile::tempdir().unwrap();
        let registry = StoreRegistry::new();
        let dest = resolve_url(&format!("{}/out/", dir.path().display())).unwrap();
        let staged = StagedOutput::new(&registry, &dest, OutputKind::Directory).unwrap();
        let store = registry.store_for(&dest).unwrap();
        let part = object_path(staged.staging_url())
            .unwrap()
            .join("part-0.parquet");
        store.put(&part, PutPayload::from("x")).await.unwrap();
        staged.abort().await.unwrap();
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[tokio::test]
    async fn local_directory_publish_replaces_the_old_directory_whole() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("out");
        std::fs::create_dir_all(&old).unwrap();
        std::fs::write(old.join("stale.parquet"), b"old").unwrap();
        let registry = StoreRegistry::new();
        let dest = resolve_url(&format!("{}/out/", dir.path().display())).unwrap();
        let staged = StagedOutput::new(&registry, &dest, OutputKind::Directory).unwrap();
        let store = registry.store_for(&dest).unwrap();
        let part = object_path(staged.staging_url())
            .unwrap()
            .join("part-0.parquet");
        store.put(&part, PutPayload::from("new!")).await.unwrap();
        let published = staged.publish().await.unwrap();
        assert_eq!(published.files.len(), 1);
        assert_eq!(published.bytes(), 4);
        assert!(!old.join("stale.parquet").exists());
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("out")]);
    }

    #[tokio::test]
    async fn remote_directory_publish_writes_the_marker_last() {
        let registry = StoreRegistry::new();
        let dest = resolve_url("memory://bkt/out").unwrap();
        let store = registry.store_for(&dest).unwrap();
        store
            .put(&Path::from("out/old.parquet"), PutPayload::from("old"))
            .await
            .unwrap();
        let staged = StagedOutput::new(&registry, &dest, OutputKind::Directory).unwrap();
        let part = object_path(staged.staging_url())
            .unwrap()
            .join("part-0.parquet");
        store.put(&part, PutPayload::from("new")).await.unwrap();
        let published = staged.publish().await.unwrap();
        assert_eq!(published.files.len(), 1);
        let all: Vec<_> = store
            .list(None)
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .unwrap();
        let mut all = all;
        all.sort();
        assert_eq!(
            all,
            vec!["out/_SUCCESS".to_string(), "out/part-0.parquet".to_string()]
        );
    }

    #[tokio::test]
    async fn dropping_an_unpublished_file_deletes_the_staged_object() {
        let registry = StoreRegistry::new();
        let dest = resolve_url("memory://bkt/x.parquet").unwrap();
        let store = registry.store_for(&dest).unwrap();
        let staged = StagedOutput::new(&registry, &dest, OutputKind::File).unwrap();
        let staging = object_path(staged.staging_url()).unwrap();
        store.put(&staging, PutPayload::from("half")).await.unwrap();
        drop(staged);
        for _ in 0..100 {
            if store.head(&staging).await.is_err() {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("staged object still present");
    }
}
