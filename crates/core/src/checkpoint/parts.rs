//! A persisted task's checkpoint as a cluster writes it (cargo feature `ballista`).
//!
//! The executors' tees write one part per partition under the checkpoint's `data-<id>/`,
//! each with a receipt beside it once the part is closed; the client commits the manifest
//! from the receipts after the job ([`commit_parts`]). Ballista runs several partitions
//! per task and numbers them from 0 in each task's plan, so a part is identified by the
//! slice of input it read, and the client commits only when the tee's metrics from the
//! job's successful tasks say every row that streamed through it is in a part.

use std::sync::Arc;

use datafusion::physical_plan::ExecutionPlan;
use object_store::path::Path;

use super::gc::Lease;
use super::store::LEASE;
use super::tee::commit;
use super::{CheckpointFormat, CheckpointStore, CheckpointTarget, Manifest, ManifestFile};
use crate::{Error, Result};

/// What names a part's receipt: `part-<n>-<attempt>.receipt.json` beside
/// `part-<n>-<attempt>.parquet`.
pub(super) const RECEIPT_SUFFIX: &str = ".receipt.json";

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
    /// What partition `partition` of the tee's input reads, when it can be told: a
    /// task that Ballista runs again reads the same slice, so its part replaces,
    /// rather than adds to, the first attempt's (the cluster's `slice_identity`).
    pub(crate) slice_of: fn(&Arc<dyn ExecutionPlan>, usize) -> Option<String>,
}

impl PartsWrite {
    /// A new write of `target`'s checkpoint, under a directory of its own, its parts
    /// identified by `slice_of`.
    pub(crate) fn of(
        target: &CheckpointTarget,
        slice_of: fn(&Arc<dyn ExecutionPlan>, usize) -> Option<String>,
    ) -> Self {
        Self {
            store: target.store.clone(),
            task: target.task.clone(),
            key: target.key.clone(),
            write: format!("data-{}", uuid::Uuid::new_v4().simple()),
            format: target.format,
            committed: target.committed.get().cloned(),
            slice_of,
        }
    }

    /// `checkpoints/<task>/<key>/data-<id>`.
    pub(crate) fn dir(&self) -> Path {
        self.store
            .key_dir(&self.task, &self.key)
            .join(self.write.as_str())
    }
}

/// What an executor leaves beside a part it has written completely.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct PartReceipt {
    /// What the partition read, when it can be told (see [`PartsWrite::slice_of`]): two
    /// attempts of one slice (Ballista ran a task again) are one part.
    pub(super) slice: Option<String>,
    pub(super) file: ManifestFile,
}

impl PartReceipt {
    pub(super) async fn put(&self, store: &CheckpointStore, path: &Path) -> Result<()> {
        use object_store::ObjectStoreExt;
        let bytes = serde_json::to_vec(self).map_err(|e| Error::Internal {
            message: format!("cannot serialize a part's receipt: {e}"),
        })?;
        store
            .object_store()
            .put(path, bytes.into())
            .await
            .map_err(|e| super::store_error(store.url(), path, "put", e))?;
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
/// receipts (one per slice, see [`PartsWrite::slice_of`]), when the executors reported no
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
        .map_err(|e| super::store_error(target.store.url(), &dir, "list", e))?;
    let sizes: std::collections::HashMap<String, u64> = listed
        .iter()
        .filter_map(|m| Some((m.location.filename()?.to_string(), m.size)))
        .collect();
    let mut chosen: std::collections::BTreeMap<String, ManifestFile> = Default::default();
    for meta in listed
        .iter()
        .filter(|m| m.location.as_ref().ends_with(RECEIPT_SUFFIX))
    {
        let read_error = |e| super::store_error(target.store.url(), &meta.location, "get", e);
        let bytes = store
            .get(&meta.location)
            .await
            .map_err(read_error)?
            .bytes()
            .await
            .map_err(read_error)?;
        let receipt: PartReceipt = serde_json::from_slice(&bytes).map_err(|e| Error::Internal {
            message: format!("the part receipt {} does not parse: {e}", meta.location),
        })?;
        let name = receipt.file.path.rsplit('/').next().unwrap_or_default();
        if sizes.get(name) != Some(&receipt.file.size) {
            tracing::warn!(receipt = %meta.location, "a part's receipt does not match the part; not used");
            continue;
        }
        let slice = receipt.slice.unwrap_or_else(|| receipt.file.path.clone());
        chosen.entry(slice).or_insert(receipt.file);
    }
    let files: Vec<ManifestFile> = chosen.into_values().collect();
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
    commit(target, &dir, files, lease).await?;
    for path in extra {
        if let Err(e) = store.delete(&path).await {
            tracing::warn!(path = %path, error = %e, "could not delete a part's receipt or another attempt's part");
        }
    }
    Ok(())
}
