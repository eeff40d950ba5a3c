//! What `gc` keeps and collects, and the leases that keep a writer's parts from it.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use super::store::*;
use crate::{Error, Result};

/// What [`CheckpointStore::gc`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct GcReport {
    /// Expired checkpoints (`task/key`), removed whole.
    pub expired: Vec<String>,
    /// Parts no manifest names (failed, killed or losing runs), older than the grace
    /// period.
    pub orphans: Vec<String>,
    /// Staging objects of sinks (`.NAME.sluice-staging-ID`) and manifests that do not
    /// parse, older than the grace period.
    pub stale: Vec<String>,
    /// Bytes freed.
    pub bytes: u64,
}

/// How `gc` judges age: at `now`, objects older than `grace` are old.
#[derive(Debug)]
pub(super) struct Judge {
    pub(super) now: DateTime<Utc>,
    pub(super) grace: chrono::Duration,
}

impl Judge {
    pub(super) fn old(&self, t: DateTime<Utc>) -> bool {
        self.now.signed_duration_since(t) >= self.grace
    }
}

/// What `gc` does with a data directory that no standing manifest names.
#[derive(Debug)]
pub(super) enum Verdict {
    /// A live writer's: untouched.
    Live,
    /// Kept for now; marked released at this time when this pass released it.
    Keep { release_at: Option<DateTime<Utc>> },
    /// Deleted whole.
    Delete,
}

impl CheckpointStore {
    /// Removes expired checkpoints, parts that no manifest names and stale staging
    /// objects (of checkpoints and of sinks writing into the store), without breaking a
    /// run in progress or a committed checkpoint:
    ///
    /// - every key's manifest is read *after* the store is listed, so a manifest
    ///   committed meanwhile is seen and its parts kept;
    /// - a `data-<id>` directory that no manifest names is kept while its writer's lease
    ///   ([`LEASE`]) is younger than [`LEASE_TTL`]; one released by a manifest that
    ///   stopped standing ([`RELEASED`]: refreshed, expired, invalidated) goes `grace`
    ///   after the release; any other goes when its newest object is older than `grace`;
    /// - an expired manifest (by `now`) goes, and its parts are released at `now`;
    /// - a manifest that does not parse, a `_last_hit` marker without a manifest, and a
    ///   sink's staging object go when older than `grace`; cached source schemas when
    ///   older than [`SCHEMA_CACHE_TTL`] (and `grace`).
    pub async fn gc(&self, now: DateTime<Utc>, grace: Duration) -> Result<GcReport> {
        let judge = Judge {
            now,
            grace: chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX),
        };
        let mut report = GcReport::default();
        // The directories of live writers: their unfinished uploads stay too.
        let mut live_dirs: BTreeSet<Path> = BTreeSet::new();
        for ((task, key), objects) in self.scan().await? {
            self.gc_key(&task, &key, objects, &judge, &mut report, &mut live_dirs)
                .await?;
        }
        // Cached source schemas, by age.
        let schema_age = chrono::Duration::from_std(SCHEMA_CACHE_TTL.max(grace))
            .unwrap_or(chrono::Duration::MAX);
        let schemas: Vec<ObjectMeta> = self
            .list_under(&self.under(&[SCHEMAS]))
            .await?
            .into_iter()
            .filter(|m| now.signed_duration_since(m.last_modified) >= schema_age)
            .collect();
        report.bytes += self.delete_all(&schemas).await?;
        report
            .stale
            .extend(schemas.iter().map(|m| self.url_of(&m.location)));
        // Staging objects of sinks that wrote into this store and never finished.
        let stale: Vec<ObjectMeta> = self
            .list_under(&self.root_path())
            .await?
            .into_iter()
            .filter(|m| {
                m.location.as_ref().contains(sluice_store::STAGING_MARKER)
                    && judge.old(m.last_modified)
            })
            .collect();
        report.bytes += self.delete_all(&stale).await?;
        report
            .stale
            .extend(stale.iter().map(|m| self.url_of(&m.location)));
        if self.root.scheme() == "file" {
            self.gc_local_uploads(now, judge.grace, &live_dirs, &mut report)?;
        }
        Ok(report)
    }

    /// [`gc`](Self::gc) of one checkpoint key's objects, as the listing found them.
    pub(super) async fn gc_key(
        &self,
        task: &str,
        key: &str,
        objects: KeyObjects,
        judge: &Judge,
        report: &mut GcReport,
        live_dirs: &mut BTreeSet<Path>,
    ) -> Result<()> {
        let dir = self.key_dir(task, key);
        // Read after the listing: a manifest committed since is seen.
        let path = dir.clone().join(MANIFEST);
        let mut standing = match self.read_manifest_with_identity(&path).await? {
            Some((Ok(manifest), identity)) => Some((manifest, identity)),
            Some((Err(reason), identity)) => {
                let foreign = reason.contains("newer");
                if !foreign
                    && objects
                        .manifest
                        .as_ref()
                        .is_some_and(|m| judge.old(m.last_modified))
                {
                    self.invalidate_unparsed(task, key, &identity).await;
                    report.stale.push(self.url_of(&path));
                }
                None
            }
            None => None,
        };
        // An expired checkpoint's manifest goes now; its parts are released now.
        let mut released_now: BTreeSet<String> = BTreeSet::new();
        if let Some((manifest, identity)) = &standing
            && manifest.expires.is_some_and(|e| e <= judge.now)
        {
            if self.remove_manifest(manifest, Some(identity)).await {
                released_now.extend(data_dirs_of(manifest).map(str::to_string));
                report.expired.push(format!("{task}/{key}"));
            }
            standing = None;
        }
        let manifest = standing.as_ref().map(|(m, _)| m);
        let referenced: BTreeSet<Path> = manifest
            .iter()
            .flat_map(|m| m.files.iter())
            .map(|f| dir.clone().join_path(&f.path))
            .collect();
        let named: BTreeSet<&str> = manifest.into_iter().flat_map(data_dirs_of).collect();
        let mut by_dir: BTreeMap<String, Vec<ObjectMeta>> = BTreeMap::new();
        for meta in objects.others {
            if let Some(name) = meta
                .location
                .prefix_match(&dir)
                .and_then(|mut parts| parts.next())
                .map(|p| p.as_ref().to_string())
            {
                by_dir.entry(name).or_default().push(meta);
            }
        }
        for (name, metas) in by_dir {
            let data_dir = dir.clone().join(name.as_str());
            let doomed = if named.contains(name.as_str()) {
                // A committed checkpoint's directory: only what its manifest does not
                // name (a receipt, an attempt that lost), once old and not leased.
                if self.leased(&metas, judge).await {
                    live_dirs.insert(data_dir);
                    continue;
                }
                metas
                    .into_iter()
                    .filter(|m| !referenced.contains(&m.location) && judge.old(m.last_modified))
                    .collect()
            } else {
                match self
                    .orphan_verdict(&metas, released_now.contains(&name), judge)
                    .await
                {
                    Verdict::Live => {
                        live_dirs.insert(data_dir);
                        continue;
                    }
                    Verdict::Keep { release_at } => {
                        if let Some(at) = release_at {
                            self.put_marker(&data_dir.join(RELEASED), at).await;
                        }
                        continue;
                    }
                    Verdict::Delete => metas,
                }
            };
            report.bytes += self.delete_all(&doomed).await?;
            report.orphans.extend(
                doomed
                    .iter()
                    .filter(|m| !matches!(m.location.filename(), Some(LEASE) | Some(RELEASED)))
                    .map(|m| self.url_of(&m.location)),
            );
        }
        if standing.is_none()
            && let Some(meta) = &objects.last_hit
            && judge.old(meta.last_modified)
        {
            report.bytes += self.delete_all(std::slice::from_ref(meta)).await?;
            report.stale.push(self.url_of(&meta.location));
        }
        Ok(())
    }

    /// Whether a data directory's objects hold a writer's lease renewed within
    /// [`LEASE_TTL`] (by `judge`'s clock).
    pub(super) async fn leased(&self, metas: &[ObjectMeta], judge: &Judge) -> bool {
        let Some(lease) = metas.iter().find(|m| m.location.filename() == Some(LEASE)) else {
            return false;
        };
        let renewed = self.marker_time(lease).await;
        judge.now.signed_duration_since(renewed)
            < chrono::Duration::from_std(LEASE_TTL).unwrap_or(chrono::Duration::MAX)
    }

    /// What becomes of a data directory no standing manifest names: kept while its
    /// writer's lease lives; gone `grace` after its release (`released_now`: this pass
    /// released it), or, never released, once its newest object is older than `grace`.
    pub(super) async fn orphan_verdict(
        &self,
        metas: &[ObjectMeta],
        released_now: bool,
        judge: &Judge,
    ) -> Verdict {
        if self.leased(metas, judge).await {
            return Verdict::Live;
        }
        let released = if released_now {
            Some(judge.now)
        } else {
            match metas
                .iter()
                .find(|m| m.location.filename() == Some(RELEASED))
            {
                Some(marker) => Some(self.marker_time(marker).await),
                None => None,
            }
        };
        let gone = match released {
            Some(at) => judge.old(at),
            None => metas.iter().all(|m| judge.old(m.last_modified)),
        };
        match gone {
            true => Verdict::Delete,
            false => Verdict::Keep {
                release_at: released.filter(|_| released_now),
            },
        }
    }

    /// On local disk, an upload that a killed process left unfinished is a file named
    /// `<part>#<n>` that the object store does not list: find those (and the
    /// directories left empty) on the file system itself.
    pub(super) fn gc_local_uploads(
        &self,
        now: DateTime<Utc>,
        grace: chrono::Duration,
        live: &BTreeSet<Path>,
        report: &mut GcReport,
    ) -> Result<()> {
        let Ok(root) = self.root.to_file_path() else {
            return Ok(());
        };
        // The live writers' directories, on the file system.
        let live: Vec<std::path::PathBuf> = live
            .iter()
            .filter_map(|dir| {
                let relative = dir.prefix_match(&self.prefix)?;
                Some(relative.fold(root.clone(), |path, part| path.join(part.as_ref())))
            })
            .collect();
        let checkpoints = root.join(CHECKPOINTS);
        let mut stack = vec![checkpoints.clone()];
        let mut dirs = Vec::new();
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                let Ok(meta) = entry.metadata() else { continue };
                if meta.is_dir() {
                    stack.push(path.clone());
                    dirs.push(path);
                    continue;
                }
                let unfinished = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.contains('#'))
                    && !live.iter().any(|dir| path.starts_with(dir));
                let modified: DateTime<Utc> =
                    meta.modified().map(DateTime::<Utc>::from).unwrap_or(now);
                if unfinished && now.signed_duration_since(modified) >= grace {
                    std::fs::remove_file(&path).map_err(|source| {
                        Error::Store(sluice_store::StoreError::Io {
                            operation: "delete",
                            path: path.clone(),
                            source,
                        })
                    })?;
                    report.bytes += meta.len();
                    report.orphans.push(path.display().to_string());
                }
            }
        }
        // Deepest first: a directory emptied by the gc goes too.
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for dir in dirs {
            let _ = std::fs::remove_dir(&dir); // fails, as it should, unless empty
        }
        Ok(())
    }
}

/// A writer's lease on its `data-<id>` directory (see [`LEASE`]): written at once,
/// renewed every [`LEASE_RENEW`] of wall-clock time, and on
/// [`progress`](Self::progress) when the flow's clock has moved that far. One task
/// writes it, so [`end`](Self::end) knows no renewal is in flight when it returns.
#[derive(Debug)]
pub(crate) struct Lease {
    pub(super) progress: Arc<tokio::sync::Notify>,
    pub(super) stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub(super) task: Option<tokio::task::JoinHandle<()>>,
    pub(super) store: CheckpointStore,
    pub(super) path: Path,
}

impl Lease {
    pub(super) fn start(store: CheckpointStore, path: Path, clock: super::Clock) -> Self {
        let progress = Arc::new(tokio::sync::Notify::new());
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let task = {
            let (store, path, progress) = (store.clone(), path.clone(), Arc::clone(&progress));
            tokio::spawn(async move {
                let due = chrono::Duration::from_std(LEASE_RENEW).unwrap_or(chrono::Duration::MAX);
                let mut renewed = clock.now();
                store.put_marker(&path, renewed).await;
                let mut every = tokio::time::interval(LEASE_RENEW);
                every.tick().await; // the first tick is now
                loop {
                    tokio::select! {
                        _ = &mut stopped => break,
                        _ = every.tick() => {}
                        _ = progress.notified() => {
                            if clock.now().signed_duration_since(renewed) < due {
                                continue;
                            }
                        }
                    }
                    renewed = clock.now();
                    store.put_marker(&path, renewed).await;
                }
            })
        };
        Self {
            progress,
            stop: Some(stop),
            task: Some(task),
            store,
            path,
        }
    }

    /// The write made progress: renew the lease if the flow's clock moved
    /// [`LEASE_RENEW`] since the last renewal.
    pub(crate) fn progress(&self) {
        self.progress.notify_one();
    }

    /// Stops the renewals (waiting for one in flight) and removes the lease object.
    pub(crate) async fn end(mut self) {
        self.stop_renewing().await;
        if let Err(e) = self.store.store.delete(&self.path).await
            && !matches!(e, object_store::Error::NotFound { .. })
        {
            tracing::warn!(error = %e, lease = %self.path, "could not remove a checkpoint writer's lease");
        }
    }

    pub(super) async fn stop_renewing(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // Not ended (the write was dropped): stop renewing; `gc` collects what is left
        // once the lease is stale.
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl CheckpointStore {
    /// Writes a marker (a lease, a release) holding `at` (best effort: logged).
    pub(super) async fn put_marker(&self, path: &Path, at: DateTime<Utc>) {
        if let Err(e) = self
            .store
            .put(path, PutPayload::from(at.to_rfc3339()))
            .await
        {
            tracing::warn!(error = %e, marker = %path, "could not write a checkpoint marker");
        }
    }
}
