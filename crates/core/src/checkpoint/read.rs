//! Reading a checkpoint on a cache hit: a scan of exactly the manifest's parts, with
//! the manifest's schema, whose checksums are verified while it streams.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use datafusion::catalog::TableProvider;
use datafusion::datasource::empty::EmptyTable;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::logical_expr::LogicalPlan;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use object_store::ObjectStoreExt;

use super::{CheckpointStore, Manifest, ManifestFile};
use crate::run::TaskRunState;
use crate::{Error, Result, Session};

fn known_corrupt() -> &'static std::sync::Mutex<std::collections::HashSet<String>> {
    static KNOWN: std::sync::OnceLock<std::sync::Mutex<std::collections::HashSet<String>>> =
        std::sync::OnceLock::new();
    KNOWN.get_or_init(Default::default)
}

/// Bytes read per request when verifying a part.
const VERIFY_CHUNK: u64 = 8 << 20;

/// The checksum verification of a checkpoint's parts: `Err(reason)` on a mismatch.
pub(crate) type Verification = Shared<BoxFuture<'static, std::result::Result<(), String>>>;

/// A checkpoint being read: what a task boundary over its scan needs to verify it and
/// to invalidate it if it turns out corrupt.
#[derive(Debug)]
pub(crate) struct CheckpointRead {
    store: CheckpointStore,
    task: String,
    manifest: Manifest,
    invalidated: AtomicBool,
    /// Whether to verify the parts' checksums while they stream (not for a checkpoint
    /// this run has just written and hashed).
    verify: bool,
    verification: std::sync::OnceLock<Verification>,
    /// Read by a cluster's executor: each partition verifies a share of the parts, and
    /// a corrupt checkpoint is reported to the client, which invalidates it.
    on_executor: bool,
}

impl CheckpointRead {
    pub(crate) fn new(store: CheckpointStore, manifest: Manifest, verify: bool) -> Arc<Self> {
        Arc::new(Self {
            store,
            task: manifest.task.clone(),
            manifest,
            invalidated: AtomicBool::new(false),
            verify,
            verification: std::sync::OnceLock::new(),
            on_executor: false,
        })
    }

    /// The checkpoint as a cluster's executor reads it (see [`Self::verification`]
    /// and [`Self::corrupt`]).
    #[cfg(feature = "ballista")]
    pub(crate) fn on_executor(
        store: CheckpointStore,
        manifest: Manifest,
        verify: bool,
    ) -> Arc<Self> {
        let mut read = Self::new(store, manifest, verify);
        if let Some(read) = Arc::get_mut(&mut read) {
            read.on_executor = true;
        }
        read
    }

    /// The store and manifest, and whether to verify: what a cluster's executors need
    /// to read the checkpoint.
    #[cfg(feature = "ballista")]
    pub(crate) fn parts(&self) -> (&CheckpointStore, &Manifest, bool) {
        (&self.store, &self.manifest, self.verify)
    }

    /// A checkpoint as the known-corrupt set names it: its directory and commit time.
    fn identity(store: &CheckpointStore, manifest: &Manifest) -> String {
        format!(
            "{}@{}",
            store.key_url(&manifest.task, &manifest.key),
            manifest.created.to_rfc3339()
        )
    }

    /// Whether a stream in this process found this checkpoint corrupt.
    pub(crate) fn is_known_corrupt(store: &CheckpointStore, manifest: &Manifest) -> bool {
        let identity = Self::identity(store, manifest);
        known_corrupt()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&identity)
    }

    /// The checkpoint directory's URL.
    pub(crate) fn url(&self) -> String {
        self.store.key_url(&self.task, &self.manifest.key)
    }

    fn file_urls(&self) -> Vec<String> {
        let dir = self.url();
        self.manifest
            .files
            .iter()
            .map(|f| format!("{dir}{}", f.path))
            .collect()
    }

    /// A table over exactly the checkpoint's parts, with the manifest's schema: no
    /// footer is read to plan it.
    pub(crate) fn table(&self) -> Result<Arc<dyn TableProvider>> {
        let schema = self.manifest.schema()?;
        let paths = self
            .file_urls()
            .iter()
            .map(ListingTableUrl::parse)
            .collect::<datafusion::error::Result<Vec<_>>>()?;
        if paths.is_empty() {
            return Ok(Arc::new(EmptyTable::new(schema)));
        }
        let options =
            ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension("");
        Ok(Arc::new(ListingTable::try_new(
            ListingTableConfig::new_with_multi_paths(paths)
                .with_listing_options(options)
                .with_schema(schema),
        )?))
    }

    /// A scan of the checkpoint, as a logical plan.
    pub(crate) fn scan_plan(&self, session: &Session) -> Result<LogicalPlan> {
        Ok(session.context().read_table(self.table()?)?.into_parts().1)
    }

    /// The verification of the parts' BLAKE3 against the manifest, run in the
    /// background while a partition streams; `None` when not verified. Here every part
    /// is verified once, shared by the partitions. On a cluster's executor each
    /// partition verifies the parts it reads (`reads`: their object paths), so that the
    /// job's tasks verify each part once between them; every part when that cannot be
    /// told.
    pub(crate) fn verification(
        &self,
        reads: impl FnOnce() -> Option<Vec<String>>,
    ) -> Option<Verification> {
        if !self.verify {
            return None;
        }
        let start = |files: Vec<ManifestFile>| {
            let store = Arc::clone(self.store.object_store());
            let dir = self.store.key_dir(&self.task, &self.manifest.key);
            let handle = tokio::spawn(verify_parts(store, dir, files));
            async move {
                handle
                    .await
                    .unwrap_or_else(|e| Err(format!("checksum verification stopped: {e}")))
            }
            .boxed()
            .shared()
        };
        if self.on_executor {
            let dir = self.store.key_dir(&self.task, &self.manifest.key);
            let reads = reads();
            let share = self
                .manifest
                .files
                .iter()
                .filter(|file| {
                    let path = file
                        .path
                        .split('/')
                        .fold(dir.clone(), |p, part| p.join(part));
                    reads
                        .as_ref()
                        .is_none_or(|reads| reads.iter().any(|r| r == path.as_ref()))
                })
                .cloned()
                .collect();
            return Some(start(share));
        }
        Some(
            self.verification
                .get_or_init(|| start(self.manifest.files.clone()))
                .clone(),
        )
    }

    /// The checkpoint turned out corrupt while streaming: invalidates it (once), fails
    /// the task run, and returns the error to raise.
    pub(crate) fn corrupt(&self, run: &TaskRunState, reason: String) -> Error {
        // On an executor the client invalidates it when the job's error comes back.
        if !self.on_executor && !self.invalidated.swap(true, Ordering::AcqRel) {
            // Known bad in this process at once; removed from the store in the
            // background (the stream that found it cannot wait), and counted: the
            // failed flow run waits for it before it returns.
            known_corrupt()
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(Self::identity(&self.store, &self.manifest));
            let store = self.store.clone();
            let (task, key) = (self.task.clone(), self.manifest.key.clone());
            sluice_store::cleanup::spawn("invalidate a corrupt checkpoint", async move {
                store.invalidate(&task, &key).await
            });
        }
        let error = Error::CorruptCheckpoint {
            task: self.task.clone(),
            checkpoint: self.url(),
            reason,
        };
        run.fail(&error);
        Error::Task {
            task: self.task.clone(),
            source: Box::new(error),
        }
    }
}

/// Reads every part in `files` (under `dir`) and compares its size and BLAKE3 with the
/// manifest's: `Err(reason)` on the first mismatch.
async fn verify_parts(
    store: Arc<dyn object_store::ObjectStore>,
    dir: object_store::path::Path,
    files: Vec<ManifestFile>,
) -> std::result::Result<(), String> {
    for file in files {
        let path = file
            .path
            .split('/')
            .fold(dir.clone(), |p, part| p.join(part));
        // Large ranges: the local store streams a whole-object get in 8 KiB reads, each
        // a blocking task; ranges are one read each.
        let mut hasher = blake3::Hasher::new();
        let mut size = 0u64;
        while size < file.size {
            let end = (size + VERIFY_CHUNK).min(file.size);
            let chunk = store
                .get_range(&path, size..end)
                .await
                .map_err(|e| format!("cannot read part {}: {e}", file.path))?;
            if chunk.is_empty() {
                break;
            }
            size += chunk.len() as u64;
            hasher.update(&chunk);
        }
        let digest = hasher.finalize().to_hex().to_string();
        if size != file.size || digest != file.blake3 {
            return Err(format!(
                "part {} does not match its checksum ({size} bytes, blake3 {}; the manifest \
                 says {} bytes, blake3 {})",
                file.path,
                &digest[..16],
                file.size,
                &file.blake3[..file.blake3.len().min(16)]
            ));
        }
    }
    Ok(())
}
