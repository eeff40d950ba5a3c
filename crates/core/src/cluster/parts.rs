//! A persisted task's checkpoint as a cluster writes it.
//!
//! The executors' tees write one part per partition under the checkpoint's `data-<id>/`,
//! each with a receipt beside it once the part is closed; the client commits the manifest
//! from the receipts after the job ([`commit_parts`]). Ballista runs several partitions
//! per task and numbers them from 0 in each task's plan, so a part is identified by the
//! slice of input it read, and the client commits only when the tee's metrics from the
//! job's successful tasks say every row that streamed through it is in a part.

use std::fmt;
use std::sync::{Arc, OnceLock};

use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::physical_plan::ExecutionPlan;
use futures::FutureExt;
use futures::future::BoxFuture;
use object_store::path::Path;

use crate::checkpoint::gc::Lease;
use crate::checkpoint::store::{LEASE, store_error};
use crate::checkpoint::tee::{CheckpointWrite, Encoded, PartEnd, TeeSink, commit};
use crate::checkpoint::{
    CheckpointFormat, CheckpointStore, CheckpointTarget, Manifest, ManifestFile,
};
use crate::{Error, Result};

/// What names a part's receipt: `part-<n>-<attempt>.receipt.json` beside
/// `part-<n>-<attempt>.parquet`.
pub(crate) const RECEIPT_SUFFIX: &str = ".receipt.json";

/// One persisted task's checkpoint as a cluster writes it: the executors write the
/// parts under `data-<write>/` of the checkpoint's directory, each with a receipt, and
/// the client commits the manifest from the receipts once the job has succeeded.
#[derive(Debug)]
pub(crate) struct PartsWrite {
    pub(crate) store: CheckpointStore,
    pub(crate) task: String,
    pub(crate) key: String,
    /// This write's directory under the checkpoint's: `data-<id>`.
    pub(crate) write: String,
    pub(crate) format: CheckpointFormat,
    /// The checkpoint, when the client's run has already committed it (a second sink
    /// of the same frame): it is read instead of computed again.
    pub(crate) committed: Option<Manifest>,
}

impl PartsWrite {
    /// A new write of `target`'s checkpoint, under a directory of its own.
    pub(crate) fn of(target: &CheckpointTarget) -> Self {
        Self {
            store: target.store.clone(),
            task: target.task.clone(),
            key: target.key.clone(),
            write: format!("data-{}", uuid::Uuid::new_v4().simple()),
            format: target.format,
            committed: target.committed.get().cloned(),
        }
    }

    /// `checkpoints/<task>/<key>/data-<id>`.
    pub(crate) fn dir(&self) -> Path {
        self.store
            .key_dir(&self.task, &self.key)
            .join(self.write.as_str())
    }
}

/// The executors write: each partition its part and, once the part is closed, a
/// receipt beside it; the client commits the manifest from the receipts
/// ([`commit_parts`]).
impl TeeSink for PartsWrite {
    fn store(&self) -> &CheckpointStore {
        &self.store
    }

    fn task(&self) -> &str {
        &self.task
    }

    fn key(&self) -> &str {
        &self.key
    }

    fn write_id(&self) -> &str {
        &self.write
    }

    fn committed(&self) -> Option<Manifest> {
        self.committed.clone()
    }

    fn format(&self) -> CheckpointFormat {
        self.format
    }

    /// As Sluice's one-line text: Ballista sends errors to the client as text.
    fn error(&self, source: Error) -> DataFusionError {
        let error = self.store.checkpoint_error(&self.task, &self.key, source);
        DataFusionError::Execution(crate::one_line(&error))
    }

    fn describe(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, " write={}", self.write)
    }

    fn open(
        self: Arc<Self>,
        _execution: &OnceLock<Arc<CheckpointWrite>>,
        input: &Arc<dyn ExecutionPlan>,
        partition: usize,
        _partitions: usize,
    ) -> (Path, Arc<dyn PartEnd>) {
        // An attempt of its own: a task Ballista runs again (its executor was lost)
        // never overwrites a part another attempt may still be writing. A short id:
        // object keys stay within what file-system-backed S3 servers can name.
        let attempt = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let name = format!("part-{partition}-{attempt}");
        let receipt = self.dir().join(format!("{name}{RECEIPT_SUFFIX}"));
        let end = ReceiptEnd {
            slice: super::slice_identity(input, partition),
            path: receipt,
            parts: Arc::clone(&self),
        };
        (self.dir().join(format!("{name}.parquet")), Arc::new(end))
    }
}

/// The end of a partition on an executor: a receipt beside its part.
struct ReceiptEnd {
    parts: Arc<PartsWrite>,
    path: Path,
    slice: Option<String>,
}

impl PartEnd for ReceiptEnd {
    fn finish(
        self: Arc<Self>,
        _partition: usize,
        part: Result<ManifestFile>,
    ) -> BoxFuture<'static, DfResult<()>> {
        async move {
            let receipt = PartReceipt {
                slice: self.slice.clone(),
                file: part.map_err(|e| self.parts.error(e))?,
            };
            receipt
                .put(&self.parts.store, &self.path)
                .await
                .map_err(|e| self.parts.error(e))
        }
        .boxed()
    }
}

/// What an executor leaves beside a part it has written completely.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct PartReceipt {
    /// What the partition read, when it can be told (see [`slice_identity`](super::slice_identity)): two
    /// attempts of one slice (Ballista ran a task again) are one part.
    slice: Option<String>,
    file: ManifestFile,
}

impl Receipt for PartReceipt {
    fn part(&self) -> (&str, u64) {
        let name = self.file.path.rsplit('/').next().unwrap_or_default();
        (name, self.file.size)
    }

    fn slice(&self) -> &str {
        self.slice.as_deref().unwrap_or(&self.file.path)
    }
}

/// What an executor leaves beside a part it wrote whole (`NAME.receipt.json`, next to
/// the part `NAME`): the part it names and the slice of input it holds.
pub(crate) trait Receipt: serde::de::DeserializeOwned {
    /// The part's file name in its directory, and its size when it was whole.
    fn part(&self) -> (&str, u64);
    /// What the part holds: two attempts of one slice of input (a task Ballista ran
    /// again) are one part.
    fn slice(&self) -> &str;
}

/// The receipts among `listed` (a parts directory's listing), one per slice, in slice
/// order: a receipt whose part is missing or of another size (its writer died after
/// the receipt of a former attempt, or the part was replaced) is passed over.
/// `read_error` names a failed read of a receipt.
pub(crate) async fn one_per_slice<R: Receipt>(
    store: &dyn object_store::ObjectStore,
    listed: &[object_store::ObjectMeta],
    read_error: impl Fn(&Path, object_store::Error) -> Error,
) -> Result<Vec<R>> {
    use object_store::ObjectStoreExt;
    let sizes: std::collections::HashMap<&str, u64> = listed
        .iter()
        .filter_map(|m| Some((m.location.filename()?, m.size)))
        .collect();
    let mut chosen: std::collections::BTreeMap<String, R> = Default::default();
    // Read at once: on a remote store each is a round trip.
    let receipts = listed
        .iter()
        .filter(|m| m.location.as_ref().ends_with(RECEIPT_SUFFIX))
        .map(|meta| async move {
            let read = async { store.get(&meta.location).await?.bytes().await }.await;
            (meta, read)
        });
    for (meta, read) in futures::future::join_all(receipts).await {
        let bytes = read.map_err(|e| read_error(&meta.location, e))?;
        let receipt: R = serde_json::from_slice(&bytes).map_err(|e| Error::Internal {
            message: format!("the part receipt {} does not parse: {e}", meta.location),
        })?;
        let (name, size) = receipt.part();
        if sizes.get(name) != Some(&size) {
            tracing::warn!(receipt = %meta.location, "a part's receipt does not match the part; not used");
            continue;
        }
        chosen.entry(receipt.slice().to_string()).or_insert(receipt);
    }
    Ok(chosen.into_values().collect())
}

impl PartReceipt {
    async fn put(&self, store: &CheckpointStore, path: &Path) -> Result<()> {
        use object_store::ObjectStoreExt;
        let bytes = serde_json::to_vec(self).map_err(|e| Error::Internal {
            message: format!("cannot serialize a part's receipt: {e}"),
        })?;
        store
            .object_store()
            .put(path, bytes.into())
            .await
            .map_err(|e| store_error(store.url(), path, "put", e))?;
        Ok(())
    }
}

/// What a cluster job's successful tasks reported of a tee: the rows that streamed
/// through it and the partitions that ended without their part.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Streamed {
    pub(crate) rows: u64,
    pub(crate) abandoned: u64,
}

/// Commits the checkpoint a cluster job wrote under `parts.dir()`, from the parts'
/// receipts (one per slice, see [`slice_identity`]), when the executors reported no
/// abandoned partition and the parts hold every row that `streamed` through the tee.
/// Anything else (a downstream limit stopped partitions early, a task ran twice over
/// a slice that cannot be told, the job's figures are missing) commits nothing and
/// deletes the parts, as a local run that stops early does. Parts of other attempts
/// and the receipts are deleted after the commit.
pub(crate) async fn commit_parts(
    target: &CheckpointTarget,
    parts: &PartsWrite,
    streamed: Option<Streamed>,
    lease: Option<Lease>,
) -> Result<()> {
    use futures::TryStreamExt;
    use object_store::ObjectStoreExt;
    let store = target.store.object_store();
    let dir = parts.dir();
    let listed: Vec<object_store::ObjectMeta> = store
        .list(Some(&dir))
        .try_collect()
        .await
        .map_err(|e| store_error(target.store.url(), &dir, "list", e))?;
    let chosen: Vec<PartReceipt> = one_per_slice(store.as_ref(), &listed, |location, e| {
        store_error(target.store.url(), location, "get", e)
    })
    .await?;
    let files: Vec<ManifestFile> = chosen.into_iter().map(|r| r.file).collect();
    let written: u64 = files.iter().map(|f| f.rows).sum();
    let complete = Some(Streamed {
        rows: written,
        abandoned: 0,
    });
    if streamed != complete {
        tracing::warn!(
            task = %target.task,
            key = %target.key,
            parts_rows = written,
            streamed = ?streamed,
            "the checkpoint's parts do not hold every row that streamed through the tee \
             (a limit stopped it early, a task ran twice, or the job's figures are \
             missing): nothing committed"
        );
        if let Some(lease) = lease {
            lease.end().await;
        }
        target.store.delete_prefix(&dir).await?;
        return Ok(());
    }
    let keep: std::collections::HashSet<&str> = files
        .iter()
        .filter_map(|f| f.path.rsplit('/').next())
        .collect();
    let extra: Vec<Path> = listed
        .iter()
        .filter(|m| {
            !m.location
                .filename()
                .is_some_and(|name| keep.contains(name) || name == LEASE)
        })
        .map(|m| m.location.clone())
        .collect();
    // Not marked for sinks to encode again: a cluster's sinks write their own layout
    // (a part per partition) whatever the checkpoint's.
    let encoded = Encoded {
        codec: target.format.tee_compression(),
        reencode: false,
    };
    commit(target, &dir, files, encoded, lease).await?;
    for path in extra {
        if let Err(e) = store.delete(&path).await {
            tracing::warn!(path = %path, error = %e, "could not delete a part's receipt or another attempt's part");
        }
    }
    sluice_store::sweep_pending_uploads(store, &dir).await;
    Ok(())
}
