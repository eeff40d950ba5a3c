//! The checkpoint store: layout, lookup, commit, listing and garbage collection.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use sluice_store::StoreErrorKind;
use url::Url;

use super::gc::Lease;
use super::{CacheKeyInputs, Manifest};
use crate::identity::ObjectIdentity;
use crate::names::validate_name;
use crate::{Error, Result};

pub(crate) const MANIFEST: &str = "_manifest.json";
pub(crate) const LAST_HIT: &str = "_last_hit";
/// A writer's lease on its `data-<id>` directory: the time (by the writer's clock) it
/// last renewed it. `gc` keeps a directory whose lease is younger than [`LEASE_TTL`].
pub(crate) const LEASE: &str = "_lease";
/// Left in a `data-<id>` directory when the manifest that named it stopped standing
/// (refreshed, expired, invalidated): the time it did. `gc` deletes the directory a
/// grace period later, so that a run still reading it is not broken.
pub(crate) const RELEASED: &str = "_released";
pub(super) const CHECKPOINTS: &str = "checkpoints";
pub(super) const SCHEMAS: &str = "schemas";

/// How long a checkpoint writer's lease holds without a renewal: `gc` keeps what a
/// writer killed without cleaning up left behind until then.
pub const LEASE_TTL: Duration = Duration::from_secs(600);
/// How often a writer renews its lease (by the wall clock, and by the flow's clock as
/// its parts make progress).
pub(crate) const LEASE_RENEW: Duration = Duration::from_secs(60);
/// Cached source schemas (`schemas/`) older than this are collected by `gc`: a source
/// read again after that reads its footers again.
pub const SCHEMA_CACHE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// What a lookup found.
#[derive(Debug)]
pub(crate) enum Lookup {
    /// A valid, unexpired checkpoint whose parts' footers were checked, ready to read.
    Hit(Arc<super::CheckpointRead>),
    /// None usable; `reason` says why when one existed.
    Miss { reason: Option<String> },
}

/// What a lookup expects of a checkpoint beyond its task and key.
#[derive(Debug, Default)]
pub(crate) struct Expected<'a> {
    /// The key inputs, when the key is made from them: the manifest's must be these.
    pub(crate) inputs: Option<&'a CacheKeyInputs>,
    /// The task's current expiry policy: a checkpoint expires at the earlier of its
    /// stored expiry and its creation plus this.
    pub(crate) ttl: Option<Duration>,
    /// The schema this run plans for the task's output: the checkpoint's must be it.
    pub(crate) schema: Option<&'a datafusion::arrow::datatypes::Schema>,
    /// Whether the read checks the parts' block checksums.
    pub(crate) verify: bool,
}

/// A store of checkpoints: any object store URL (`file://`, a plain path, `s3://`,
/// `memory://`), used as the root of the checkpoint layout.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> sluice_core::Result<()> {
/// use sluice_core::{CheckpointStore, Session};
/// let dir = tempfile::tempdir().unwrap();
/// let store = CheckpointStore::open(&Session::new(), &dir.path().display().to_string())?;
/// assert!(store.list().await?.is_empty());
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    pub(super) root: Url,
    /// `root`'s object path: every key of the store starts with it.
    pub(super) prefix: Path,
    pub(super) store: Arc<dyn ObjectStore>,
}

/// One checkpoint, as [`CheckpointStore::list`] shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CacheEntry {
    /// The task.
    pub task: String,
    /// The cache key.
    pub key: String,
    /// `valid`, `expired`, `incomplete` (parts without a manifest) or `invalid` (a
    /// manifest that does not parse, or of a newer format).
    pub state: String,
    /// Rows, from the manifest.
    pub rows: Option<u64>,
    /// Bytes of every object under the key (parts, orphans included).
    pub bytes: u64,
    /// When it was committed.
    pub created: Option<DateTime<Utc>>,
    /// When it expires.
    pub expires: Option<DateTime<Utc>>,
    /// When a run last read it.
    pub last_hit: Option<DateTime<Utc>>,
}

#[derive(Debug, Default)]
pub(super) struct KeyObjects {
    pub(super) manifest: Option<ObjectMeta>,
    pub(super) last_hit: Option<ObjectMeta>,
    pub(super) others: Vec<ObjectMeta>,
}

/// The root URL (ending in `/`) of a store that Sluice writes its own objects to
/// (checkpoints, run records), its object path (the prefix of every key Sluice makes
/// there), and the object store behind it.
///
/// A location whose path is not a valid object path once decoded (`%00`, a newline in
/// a directory name) is refused here: its objects would otherwise go to the top of the
/// store (of the local file system, for a path) instead of under the prefix.
pub(crate) fn store_root(
    stores: &sluice_store::StoreRegistry,
    location: &str,
) -> Result<(Url, Path, Arc<dyn ObjectStore>)> {
    let mut root = stores.resolve(location)?;
    if !root.path().ends_with('/') {
        let path = format!("{}/", root.path());
        root.set_path(&path);
    }
    let target = stores.target(&root)?;
    if matches!(target.scheme(), "http" | "https") {
        return Err(Error::Store(sluice_store::StoreError::ReadOnly {
            url: sluice_store::redact(&root),
            scheme: target.scheme().to_string(),
        }));
    }
    let prefix = sluice_store::object_path(&root).map_err(|e| match e {
        sluice_store::StoreError::InvalidUrl { reason, .. } => {
            Error::Store(sluice_store::StoreError::InvalidUrl {
                location: location.to_string(),
                reason: format!("its path cannot prefix object keys: {reason}"),
            })
        }
        other => Error::Store(other),
    })?;
    let store = stores.store_for(&root)?;
    Ok((root, prefix, store))
}

/// The URL (without credentials) of `path` in the store whose root is `root`.
pub(crate) fn url_in(root: &Url, path: &Path) -> String {
    let mut url = root.clone();
    url.set_path(&format!("/{path}"));
    sluice_store::redact(&url)
}

/// What an object store operation on `path` (in the store whose root is `root`) failed
/// with, as the error users act on.
pub(crate) fn store_error(
    root: &Url,
    path: &Path,
    operation: &'static str,
    source: object_store::Error,
) -> Error {
    let url = url_in(root, path);
    crate::error::classify_store_error(&source, std::slice::from_ref(&url)).unwrap_or(Error::Store(
        sluice_store::StoreError::ObjectStore {
            operation,
            url,
            source,
        },
    ))
}

impl CheckpointStore {
    /// The checkpoint store at `location` (a path or URL; a directory), its object
    /// store from the session's registry (a [`Session`](crate::Session), or a
    /// [`StoreRegistry`](sluice_store::StoreRegistry) of one's own).
    pub fn open(stores: &impl AsRef<sluice_store::StoreRegistry>, location: &str) -> Result<Self> {
        Self::in_registry(stores.as_ref(), location)
    }

    /// The checkpoint store at `location`, its object store from `stores` (a session's,
    /// or a cluster process's own, built from the environment).
    pub(crate) fn in_registry(
        stores: &sluice_store::StoreRegistry,
        location: &str,
    ) -> Result<Self> {
        let (root, prefix, store) = store_root(stores, location)?;
        Ok(Self {
            root,
            prefix,
            store,
        })
    }

    /// The store's root URL.
    pub fn url(&self) -> &Url {
        &self.root
    }

    /// `scheme://authority` of the store: how DataFusion names its object store.
    pub(crate) fn store_url(&self) -> String {
        let authority = &self.root[url::Position::BeforeHost..url::Position::AfterPort];
        format!("{}://{authority}", self.root.scheme())
    }

    pub(crate) fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    pub(super) fn root_path(&self) -> Path {
        self.prefix.clone()
    }

    pub(super) fn under(&self, parts: &[&str]) -> Path {
        let mut path = self.root_path();
        for part in parts {
            path = path.join(*part);
        }
        path
    }

    /// `checkpoints/<task>/<key>` under the root.
    pub(crate) fn key_dir(&self, task: &str, key: &str) -> Path {
        self.under(&[CHECKPOINTS, task, key])
    }

    /// The URL of an object path in this store.
    pub(crate) fn url_of(&self, path: &Path) -> String {
        url_in(&self.root, path)
    }

    /// The URL of a checkpoint's directory.
    pub(crate) fn key_url(&self, task: &str, key: &str) -> String {
        format!("{}/", self.url_of(&self.key_dir(task, key)))
    }

    /// The checkpoint of `task` under `key` could not be looked up, written or
    /// committed: `source`, naming the task and the checkpoint.
    pub(crate) fn checkpoint_error(&self, task: &str, key: &str, source: Error) -> Error {
        Error::Checkpoint {
            task: task.to_string(),
            checkpoint: self.key_url(task, key),
            source: Box::new(source),
        }
    }

    pub(super) fn error(
        &self,
        path: &Path,
        operation: &'static str,
        source: object_store::Error,
    ) -> Error {
        store_error(&self.root, path, operation, source)
    }

    /// Looks a checkpoint up and checks, before anything streams, everything that can
    /// be checked without reading its data: the manifest parses, is of this build's
    /// format, is for this task and key (and these key inputs), has not expired (by the
    /// earlier of its stored expiry and its creation plus the current policy's), and
    /// holds the planned schema; every part is there with its size, and its footer
    /// (checked against its block checksums) holds the manifest's rows and schema (see
    /// [`CheckpointRead::open`](super::CheckpointRead::open)). Anything else is a miss
    /// with a warning, and the manifest is removed (only that one: see
    /// [`invalidate`](Self::invalidate)) so that the task recomputes and a new one can be
    /// committed. Errors other than "not found" (access denied, an unreachable
    /// endpoint) are errors.
    pub(crate) async fn lookup(
        &self,
        task: &str,
        key: &str,
        expected: &Expected<'_>,
        now: DateTime<Utc>,
    ) -> Result<Lookup> {
        let (manifest, identity) = match self.lookup_manifest(task, key, expected, now).await? {
            Ok(found) => found,
            Err(reason) => return Ok(Lookup::Miss { reason }),
        };
        match super::CheckpointRead::open(
            self.clone(),
            manifest.clone(),
            expected.verify,
            expected.schema,
        )
        .await?
        {
            Ok(read) => Ok(Lookup::Hit(read)),
            Err(reason) => {
                tracing::warn!(task, key, checkpoint = %self.key_url(task, key), %reason, "checkpoint not used");
                self.invalidate_at(&manifest, Some(&identity), now).await;
                Ok(Lookup::Miss {
                    reason: Some(reason),
                })
            }
        }
    }

    /// The manifest part of [`lookup`](Self::lookup): `Err(reason)` is a miss.
    #[allow(clippy::type_complexity)]
    pub(super) async fn lookup_manifest(
        &self,
        task: &str,
        key: &str,
        expected: &Expected<'_>,
        now: DateTime<Utc>,
    ) -> Result<std::result::Result<(Manifest, ObjectIdentity), Option<String>>> {
        let dir = self.key_dir(task, key);
        let manifest_path = dir.clone().join(MANIFEST);
        let (bytes, identity) = match self.store.get(&manifest_path).await {
            Ok(found) => {
                let identity = ObjectIdentity::of(&found.meta);
                let bytes = found
                    .bytes()
                    .await
                    .map_err(|e| self.error(&manifest_path, "get", e))?;
                (bytes, identity)
            }
            // No manifest is a miss; no bucket is an error (nothing could be written).
            Err(e) if sluice_store::classify(&e) == StoreErrorKind::NotFound => {
                return Ok(Err(None));
            }
            Err(e) => return Err(self.error(&manifest_path, "get", e)),
        };
        let miss = |reason: String| {
            tracing::warn!(task, key, checkpoint = %self.url_of(&dir), %reason, "checkpoint not used");
            Ok(Err(Some(reason)))
        };
        let manifest = match Manifest::parse(&bytes) {
            Ok(manifest) => manifest,
            // Another build's manifest stays for that build.
            Err(reason) if reason.contains("newer") || reason.contains("older") => {
                return miss(reason);
            }
            Err(reason) => {
                self.invalidate_unparsed(task, key, &identity).await;
                return miss(reason);
            }
        };
        let invalid = |reason: String| async {
            self.invalidate_at(&manifest, Some(&identity), now).await;
            miss(reason)
        };
        if manifest.task != task || manifest.key != key {
            return invalid(format!(
                "the manifest is for {}/{}, not {task}/{key}",
                manifest.task, manifest.key
            ))
            .await;
        }
        if let Some(inputs) = expected.inputs
            && &manifest.key_inputs != inputs
        {
            return invalid("the manifest's key inputs differ from this call's".into()).await;
        }
        if let Some(expires) = expiry(&manifest, expected.ttl)
            && expires <= now
        {
            return invalid(format!("it expired at {expires}")).await;
        }
        if super::CheckpointRead::is_known_corrupt(self, &manifest) {
            return invalid("a run in this process found it corrupt".into()).await;
        }
        Ok(Ok((manifest, identity)))
    }

    /// Records that a run read the checkpoint (best effort: a failure is logged).
    pub(crate) async fn touch(&self, task: &str, key: &str, now: DateTime<Utc>) {
        let path = self.key_dir(task, key).join(LAST_HIT);
        if let Err(e) = self
            .store
            .put(&path, PutPayload::from(now.to_rfc3339()))
            .await
        {
            tracing::warn!(task, key, error = %e, "could not record the checkpoint hit");
        }
    }

    /// Removes a checkpoint's manifest, so that it is a miss from now on and a new
    /// one can be committed, and releases its parts (see [`RELEASED`]). Only the
    /// manifest that was judged goes: with `judged` (a manifest's id), the standing
    /// manifest is read just before the delete and left in place if it is another (a
    /// refresh or another run committed since). object_store 0.13 has no conditional
    /// delete, so a manifest committed between that read and the delete can still go:
    /// the window is two round trips, and what it costs is a recomputation, never wrong
    /// data. Best effort: a failure is logged.
    pub(crate) async fn invalidate(&self, task: &str, key: &str, judged: Option<&str>) {
        let path = self.key_dir(task, key).join(MANIFEST);
        match self.read_manifest_with_identity(&path).await {
            Ok(Some((Ok(manifest), identity))) => {
                if judged.is_some_and(|judged| judged != manifest.id) {
                    tracing::info!(task, key, "another manifest stands now; not invalidated");
                    return;
                }
                self.invalidate_at(&manifest, Some(&identity), Utc::now())
                    .await;
            }
            Ok(Some((Err(_), identity))) => self.invalidate_unparsed(task, key, &identity).await,
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(task, key, error = %e, "could not read the checkpoint to invalidate");
            }
        }
    }

    /// Deletes `manifest` (when the manifest object is still `identity`) and releases
    /// the parts it named.
    pub(super) async fn invalidate_at(
        &self,
        manifest: &Manifest,
        identity: Option<&ObjectIdentity>,
        now: DateTime<Utc>,
    ) {
        if self.remove_manifest(manifest, identity).await {
            self.release(manifest, now).await;
        }
    }

    /// Deletes `manifest` when the manifest object is still `identity`; whether it did.
    pub(super) async fn remove_manifest(
        &self,
        manifest: &Manifest,
        identity: Option<&ObjectIdentity>,
    ) -> bool {
        let (task, key) = (manifest.task.as_str(), manifest.key.as_str());
        let path = self.key_dir(task, key).join(MANIFEST);
        if let Some(identity) = identity {
            match self.store.head(&path).await {
                Ok(meta) if identity.differs(&meta).is_none() => {}
                Ok(_) => {
                    tracing::info!(task, key, "another manifest stands now; not invalidated");
                    return false;
                }
                Err(object_store::Error::NotFound { .. }) => return false,
                Err(e) => {
                    tracing::warn!(task, key, error = %e, "could not invalidate checkpoint");
                    return false;
                }
            }
        }
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                tracing::info!(task, key, "invalidated checkpoint");
                true
            }
            Err(e) => {
                tracing::warn!(task, key, error = %e, "could not invalidate checkpoint");
                false
            }
        }
    }

    /// Deletes a manifest that does not parse, when it is still `identity`.
    pub(super) async fn invalidate_unparsed(
        &self,
        task: &str,
        key: &str,
        identity: &ObjectIdentity,
    ) {
        let path = self.key_dir(task, key).join(MANIFEST);
        if let Ok(meta) = self.store.head(&path).await
            && identity.differs(&meta).is_none()
        {
            match self.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                    tracing::info!(task, key, "removed an unreadable manifest");
                }
                Err(e) => {
                    tracing::warn!(task, key, error = %e, "could not remove an unreadable manifest")
                }
            }
        }
    }

    /// Marks the data directories a manifest named as released at `now` (see
    /// [`RELEASED`]). Best effort: a directory without the marker is collected by `gc`
    /// by the age of its parts.
    pub(crate) async fn release(&self, manifest: &Manifest, now: DateTime<Utc>) {
        let dir = self.key_dir(&manifest.task, &manifest.key);
        for data_dir in data_dirs_of(manifest) {
            self.put_marker(&dir.clone().join(data_dir).join(RELEASED), now)
                .await;
        }
    }

    /// Commits a manifest: create-if-absent, or overwrite when `replace`. Checks first
    /// that every part it names is there with its size. Returns the committed manifest
    /// object's identity, or `None` when another writer committed first (create lost the
    /// race). A replaced manifest's parts are released (see [`RELEASED`]), not deleted:
    /// a run may still be reading them.
    ///
    /// The writer's `lease` on the parts has ended when this returns, committed or not
    /// (so that whoever deletes the parts next finds no renewal in flight). Once the
    /// manifest is written it names the parts, so the lease ends while the manifest is
    /// read back: one round trip, not two.
    pub(crate) async fn commit(
        &self,
        manifest: &Manifest,
        replace: bool,
        now: DateTime<Utc>,
        mut lease: Option<Lease>,
    ) -> Result<Option<ObjectIdentity>> {
        let committed = self.commit_ending(manifest, replace, now, &mut lease).await;
        if let Some(lease) = lease {
            lease.end().await;
        }
        committed
    }

    /// [`commit`](Self::commit), ending `lease` (taking it) once the manifest is written.
    async fn commit_ending(
        &self,
        manifest: &Manifest,
        replace: bool,
        now: DateTime<Utc>,
        lease: &mut Option<Lease>,
    ) -> Result<Option<ObjectIdentity>> {
        let dir = self.key_dir(&manifest.task, &manifest.key);
        let path = dir.clone().join(MANIFEST);
        // The parts' listing and the manifest a refresh replaces (its parts are released
        // once the new one stands) are read together: one round trip, not two.
        let listing = async {
            let mut listed: BTreeMap<Path, u64> = BTreeMap::new();
            for data_dir in data_dirs_of(manifest) {
                for meta in self.list_under(&dir.clone().join(data_dir)).await? {
                    listed.insert(meta.location, meta.size);
                }
            }
            Ok::<_, Error>(listed)
        };
        let replaced = async {
            Ok::<_, Error>(if replace {
                self.read_manifest(&path).await?.ok()
            } else {
                None
            })
        };
        let (listed, replaced) = futures::try_join!(listing, replaced)?;
        for file in &manifest.files {
            let part = dir.clone().join_path(&file.path);
            if listed.get(&part) != Some(&file.size) {
                return Err(Error::Internal {
                    message: format!(
                        "part {} of the checkpoint at {} is not there with its {} bytes; \
                         nothing committed",
                        file.path,
                        self.url_of(&dir),
                        file.size
                    ),
                });
            }
        }
        let bytes = serde_json::to_vec_pretty(manifest).map_err(|e| Error::Internal {
            message: format!("cannot serialize a manifest: {e}"),
        })?;
        let options = PutOptions {
            mode: if replace {
                PutMode::Overwrite
            } else {
                PutMode::Create
            },
            ..Default::default()
        };
        match self
            .store
            .put_opts(&path, PutPayload::from(bytes), options)
            .await
        {
            Ok(_) => {}
            Err(e) => {
                return match sluice_store::classify(&e) {
                    // Lost the create-if-absent race: the winner's checkpoint stands.
                    StoreErrorKind::Conflict | StoreErrorKind::PreconditionFailed => Ok(None),
                    _ => Err(self.error(&path, "put", e)),
                };
            }
        }
        // Read it back: a server whose conditional put is not atomic under concurrency
        // (some S3-compatible ones) can let two creates succeed; the manifest that
        // stands is the last one written, and only its writer keeps its parts (a
        // loser deletes its own, lease or not).
        let end_lease = async {
            if let Some(lease) = lease.take() {
                lease.end().await;
            }
        };
        let (standing, ()) = futures::join!(self.read_manifest_with_identity(&path), end_lease);
        match standing? {
            Some((Ok(standing), identity)) => {
                if standing.id != manifest.id {
                    return Ok(None);
                }
                if let Some(old) = replaced
                    && old.id != manifest.id
                {
                    self.release(&old, now).await;
                }
                Ok(Some(identity))
            }
            Some((Err(reason), _)) => Err(Error::Internal {
                message: format!(
                    "the manifest just committed at {} does not read back: {reason}",
                    self.url_of(&path)
                ),
            }),
            None => Err(Error::Internal {
                message: format!(
                    "the manifest just committed at {} is gone",
                    self.url_of(&path)
                ),
            }),
        }
    }

    /// Starts a writer's lease on `dir` (a checkpoint's `data-<id>` directory), by
    /// `clock`: renewed every [`LEASE_RENEW`] until the returned lease is dropped, and
    /// when [`Lease::progress`] finds the clock has moved that far.
    pub(crate) fn lease(&self, dir: &Path, clock: super::Clock) -> Lease {
        Lease::start(self.clone(), dir.clone().join(LEASE), clock)
    }

    /// Every object under `prefix`.
    pub(super) async fn list_under(&self, prefix: &Path) -> Result<Vec<ObjectMeta>> {
        self.store
            .list(Some(prefix))
            .try_collect()
            .await
            .map_err(|e| self.error(prefix, "list", e))
    }

    /// Deletes every object under `prefix`, and aborts the multipart uploads left open
    /// there (on S3: a writer killed mid-part, such as a cluster's executor).
    pub(crate) async fn delete_prefix(&self, prefix: &Path) -> Result<u64> {
        let objects = self.list_under(prefix).await?;
        let bytes = self.delete_all(&objects).await?;
        sluice_store::sweep_pending_uploads(&self.store, prefix).await;
        Ok(bytes)
    }

    pub(super) async fn delete_all(&self, objects: &[ObjectMeta]) -> Result<u64> {
        let mut bytes = 0;
        for meta in objects {
            match self.store.delete(&meta.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => bytes += meta.size,
                Err(e) => return Err(self.error(&meta.location, "delete", e)),
            }
        }
        Ok(bytes)
    }

    /// Every object under `checkpoints/`, grouped by task and key.
    pub(super) async fn scan(&self) -> Result<BTreeMap<(String, String), KeyObjects>> {
        let prefix = self.under(&[CHECKPOINTS]);
        let objects = self.list_under(&prefix).await?;
        let mut keys: BTreeMap<(String, String), KeyObjects> = BTreeMap::new();
        for meta in objects {
            let rest: Vec<String> = match meta.location.prefix_match(&prefix) {
                Some(parts) => parts.map(|p| p.as_ref().to_string()).collect(),
                None => continue,
            };
            let [task, key, tail @ ..] = rest.as_slice() else {
                continue;
            };
            let entry = keys.entry((task.clone(), key.clone())).or_default();
            match tail {
                [name] if name == MANIFEST => entry.manifest = Some(meta),
                [name] if name == LAST_HIT => entry.last_hit = Some(meta),
                _ => entry.others.push(meta),
            }
        }
        Ok(keys)
    }

    pub(super) async fn read_manifest(
        &self,
        path: &Path,
    ) -> Result<std::result::Result<Manifest, String>> {
        match self.store.get(path).await {
            Ok(found) => {
                let bytes = found
                    .bytes()
                    .await
                    .map_err(|e| self.error(path, "get", e))?;
                Ok(Manifest::parse(&bytes))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(Err("no manifest".into())),
            Err(e) => Err(self.error(path, "get", e)),
        }
    }

    /// The manifest at `path` with the identity of the object read; `None` when there
    /// is none.
    #[allow(clippy::type_complexity)]
    pub(super) async fn read_manifest_with_identity(
        &self,
        path: &Path,
    ) -> Result<Option<(std::result::Result<Manifest, String>, ObjectIdentity)>> {
        match self.store.get(path).await {
            Ok(found) => {
                let identity = ObjectIdentity::of(&found.meta);
                let bytes = found
                    .bytes()
                    .await
                    .map_err(|e| self.error(path, "get", e))?;
                Ok(Some((Manifest::parse(&bytes), identity)))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error(path, "get", e)),
        }
    }

    /// A marker's time (a lease's or a release's): what it says, or when it was
    /// written if it says nothing readable.
    pub(super) async fn marker_time(&self, meta: &ObjectMeta) -> DateTime<Utc> {
        let Ok(found) = self.store.get(&meta.location).await else {
            return meta.last_modified;
        };
        let Ok(bytes) = found.bytes().await else {
            return meta.last_modified;
        };
        std::str::from_utf8(&bytes)
            .ok()
            .and_then(|text| DateTime::parse_from_rfc3339(text.trim()).ok())
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or(meta.last_modified)
    }

    pub(super) async fn read_last_hit(&self, path: &Path) -> Option<DateTime<Utc>> {
        let bytes = self.store.get(path).await.ok()?.bytes().await.ok()?;
        DateTime::parse_from_rfc3339(std::str::from_utf8(&bytes).ok()?)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// Every checkpoint in the store (valid or not), by task and key.
    pub async fn list(&self) -> Result<Vec<CacheEntry>> {
        self.list_at(Utc::now()).await
    }

    /// [`list`](Self::list), judging expiry at `now`.
    pub async fn list_at(&self, now: DateTime<Utc>) -> Result<Vec<CacheEntry>> {
        let mut out = Vec::new();
        for ((task, key), objects) in self.scan().await? {
            let bytes = objects.others.iter().map(|m| m.size).sum();
            let mut entry = CacheEntry {
                task,
                key,
                state: "incomplete".into(),
                rows: None,
                bytes,
                created: None,
                expires: None,
                last_hit: None,
            };
            if let Some(meta) = &objects.last_hit {
                entry.last_hit = self.read_last_hit(&meta.location).await;
            }
            if let Some(meta) = &objects.manifest {
                match self.read_manifest(&meta.location).await? {
                    Ok(manifest) => {
                        let expired = manifest.expires.is_some_and(|e| e <= now);
                        entry.state = if expired { "expired" } else { "valid" }.into();
                        entry.rows = Some(manifest.rows);
                        entry.created = Some(manifest.created);
                        entry.expires = manifest.expires;
                    }
                    Err(_) => entry.state = "invalid".into(),
                }
            }
            out.push(entry);
        }
        Ok(out)
    }

    /// The manifest of `task`'s checkpoint whose key is `key` (or starts with it, if
    /// exactly one does).
    pub async fn show(&self, task: &str, key: &str) -> Result<Manifest> {
        validate_name("task name", task)?;
        let keys: Vec<String> = self
            .scan()
            .await?
            .into_iter()
            .filter(|((t, k), o)| t == task && k.starts_with(key) && o.manifest.is_some())
            .map(|((_, k), _)| k)
            .collect();
        let not_found = |reason: String| Error::InvalidOption {
            option: "key",
            reason,
        };
        let full = match keys.as_slice() {
            [one] => one.clone(),
            [] => {
                return Err(not_found(format!(
                    "no checkpoint of task {task:?} with a key starting {key:?} in {}",
                    self.root
                )));
            }
            _ => {
                return Err(not_found(format!(
                    "{} checkpoints of task {task:?} have keys starting {key:?}; give more of the key",
                    keys.len()
                )));
            }
        };
        let path = self.key_dir(task, &full).join(MANIFEST);
        self.read_manifest(&path)
            .await?
            .map_err(|reason| Error::InvalidOption {
                option: "key",
                reason: format!(
                    "the manifest at {} is unusable: {reason}",
                    self.url_of(&path)
                ),
            })
    }

    /// Removes every checkpoint, or every checkpoint of `task`. Returns the bytes
    /// freed.
    pub async fn clear(&self, task: Option<&str>) -> Result<u64> {
        let prefix = match task {
            Some(task) => {
                validate_name("task name", task)?;
                self.under(&[CHECKPOINTS, task])
            }
            None => self.under(&[CHECKPOINTS]),
        };
        // Manifests first, so that nothing reads a checkpoint being cleared.
        let (manifests, rest): (Vec<_>, Vec<_>) = self
            .list_under(&prefix)
            .await?
            .into_iter()
            .partition(|m| m.location.filename() == Some(MANIFEST));
        Ok(self.delete_all(&manifests).await? + self.delete_all(&rest).await?)
    }

    pub(super) fn schema_path(&self, digest: &str) -> Path {
        self.under(&[SCHEMAS, &format!("{digest}.json")])
    }

    /// A source schema cached under the digest of the source objects' identities.
    pub(crate) async fn cached_schema(
        &self,
        digest: &str,
    ) -> Option<datafusion::arrow::datatypes::SchemaRef> {
        #[derive(Deserialize)]
        struct Entry {
            schema_ipc: String,
        }
        let bytes = self
            .store
            .get(&self.schema_path(digest))
            .await
            .ok()?
            .bytes()
            .await
            .ok()?;
        let entry: Entry = serde_json::from_slice(&bytes).ok()?;
        super::manifest::decode_schema(&entry.schema_ipc).ok()
    }

    /// Caches a source schema (best effort: a failure is logged).
    pub(crate) async fn cache_schema(
        &self,
        digest: &str,
        schema: &datafusion::arrow::datatypes::Schema,
    ) {
        let Ok(schema_ipc) = super::manifest::encode_schema(schema) else {
            return;
        };
        let body = serde_json::json!({ "schema_ipc": schema_ipc });
        let path = self.schema_path(digest);
        if let Err(e) = self
            .store
            .put(&path, PutPayload::from(body.to_string()))
            .await
        {
            tracing::warn!(digest, error = %e, "could not cache a source schema");
        }
    }
}

/// When `manifest`'s checkpoint expires under a policy whose expiry is now `ttl`: the
/// earlier of its stored expiry and its creation plus `ttl`.
pub(crate) fn expiry(manifest: &Manifest, ttl: Option<Duration>) -> Option<DateTime<Utc>> {
    let by_policy = ttl
        .and_then(|ttl| chrono::Duration::from_std(ttl).ok())
        .and_then(|ttl| manifest.created.checked_add_signed(ttl));
    match (manifest.expires, by_policy) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The `data-<id>` directories a manifest's parts are in.
pub(super) fn data_dirs_of(manifest: &Manifest) -> impl Iterator<Item = &str> {
    manifest
        .files
        .iter()
        .filter_map(|f| f.path.split('/').next())
        .collect::<BTreeSet<&str>>()
        .into_iter()
}

pub(super) trait JoinPath {
    fn join_path(self, relative: &str) -> Path;
}

impl JoinPath for Path {
    fn join_path(self, relative: &str) -> Path {
        relative
            .split('/')
            .filter(|p| !p.is_empty())
            .fold(self, |path, part| path.join(part))
    }
}
