//! The checkpoint store: layout, lookup, commit, listing and garbage collection.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use sluice_store::{StoreErrorKind, resolve_url};
use url::Url;

use super::{CacheKeyInputs, Manifest};
use crate::names::validate_name;
use crate::{Error, Result, Session};

pub(crate) const MANIFEST: &str = "_manifest.json";
pub(crate) const LAST_HIT: &str = "_last_hit";
const CHECKPOINTS: &str = "checkpoints";
const SCHEMAS: &str = "schemas";

/// What a lookup found.
#[derive(Debug)]
pub(crate) enum Lookup {
    /// A valid, unexpired checkpoint.
    Hit(Box<Manifest>),
    /// None usable; `reason` says why when one existed.
    Miss { reason: Option<String> },
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
    root: Url,
    /// `root`'s object path: every key of the store starts with it.
    prefix: Path,
    store: Arc<dyn ObjectStore>,
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

#[derive(Debug, Default)]
struct KeyObjects {
    manifest: Option<ObjectMeta>,
    last_hit: Option<ObjectMeta>,
    others: Vec<ObjectMeta>,
}

/// The root URL (ending in `/`) of a store that Sluice writes its own objects to
/// (checkpoints, run records), its object path (the prefix of every key Sluice makes
/// there), and the object store behind it.
///
/// A location whose path is not a valid object path once decoded (`%00`, a newline in
/// a directory name) is refused here: its objects would otherwise go to the top of the
/// store (of the local file system, for a path) instead of under the prefix.
pub(crate) fn store_root(
    session: &Session,
    location: &str,
) -> Result<(Url, Path, Arc<dyn ObjectStore>)> {
    store_root_in(session.stores(), location)
}

/// [`store_root`] with the object store from `stores`.
fn store_root_in(
    stores: &sluice_store::StoreRegistry,
    location: &str,
) -> Result<(Url, Path, Arc<dyn ObjectStore>)> {
    let mut root = resolve_url(location)?;
    if !root.path().ends_with('/') {
        let path = format!("{}/", root.path());
        root.set_path(&path);
    }
    if matches!(root.scheme(), "http" | "https") {
        return Err(Error::Store(sluice_store::StoreError::ReadOnly {
            url: sluice_store::redact(&root),
            scheme: root.scheme().to_string(),
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
    /// store from the session.
    pub fn open(session: &Session, location: &str) -> Result<Self> {
        Self::in_registry(session.stores(), location)
    }

    /// The checkpoint store at `location`, its object store from `stores` (a session's,
    /// or a cluster process's own, built from the environment).
    pub(crate) fn in_registry(
        stores: &sluice_store::StoreRegistry,
        location: &str,
    ) -> Result<Self> {
        let (root, prefix, store) = store_root_in(stores, location)?;
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

    pub(crate) fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    fn root_path(&self) -> Path {
        self.prefix.clone()
    }

    fn under(&self, parts: &[&str]) -> Path {
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

    fn error(&self, path: &Path, operation: &'static str, source: object_store::Error) -> Error {
        store_error(&self.root, path, operation, source)
    }

    /// Looks a checkpoint up and validates it before anything streams: the manifest
    /// parses, is of a known format, is for this task and key (and these key inputs),
    /// has not expired, and every part exists with its recorded size. Anything else
    /// is a miss with a warning, and an invalid or expired manifest is removed so that
    /// a new one can be committed. Errors other than "not found" (access denied, an
    /// unreachable endpoint) are errors.
    pub(crate) async fn lookup(
        &self,
        task: &str,
        key: &str,
        inputs: Option<&CacheKeyInputs>,
        now: DateTime<Utc>,
    ) -> Result<Lookup> {
        let dir = self.key_dir(task, key);
        let manifest_path = dir.clone().join(MANIFEST);
        let bytes = match self.store.get(&manifest_path).await {
            Ok(found) => found
                .bytes()
                .await
                .map_err(|e| self.error(&manifest_path, "get", e))?,
            // No manifest is a miss; no bucket is an error (nothing could be written).
            Err(e) if sluice_store::classify(&e) == StoreErrorKind::NotFound => {
                return Ok(Lookup::Miss { reason: None });
            }
            Err(e) => return Err(self.error(&manifest_path, "get", e)),
        };
        let miss = |reason: String| {
            tracing::warn!(task, key, checkpoint = %self.url_of(&dir), %reason, "checkpoint not used");
            Ok(Lookup::Miss {
                reason: Some(reason),
            })
        };
        let manifest = match Manifest::parse(&bytes) {
            Ok(manifest) => manifest,
            Err(reason) if reason.contains("newer") => return miss(reason),
            Err(reason) => {
                self.invalidate(task, key).await;
                return miss(reason);
            }
        };
        if manifest.task != task || manifest.key != key {
            self.invalidate(task, key).await;
            return miss(format!(
                "the manifest is for {}/{}, not {task}/{key}",
                manifest.task, manifest.key
            ));
        }
        if let Some(inputs) = inputs
            && &manifest.key_inputs != inputs
        {
            self.invalidate(task, key).await;
            return miss("the manifest's key inputs differ from this call's".into());
        }
        if let Some(expires) = manifest.expires
            && expires <= now
        {
            self.invalidate(task, key).await;
            return miss(format!("it expired at {expires}"));
        }
        // Every part at once: each is a round trip (a blocking task on local disk).
        let heads = futures::future::join_all(manifest.files.iter().map(|file| {
            let path = dir.clone().join_path(&file.path);
            async move { (file, self.store.head(&path).await, path) }
        }))
        .await;
        for (file, head, path) in heads {
            match head {
                Ok(meta) if meta.size == file.size => {}
                Ok(meta) => {
                    self.invalidate(task, key).await;
                    return miss(format!(
                        "part {} has {} bytes, the manifest says {}",
                        file.path, meta.size, file.size
                    ));
                }
                Err(object_store::Error::NotFound { .. }) => {
                    self.invalidate(task, key).await;
                    return miss(format!("part {} is missing", file.path));
                }
                Err(e) => return Err(self.error(&path, "head", e)),
            }
        }
        if super::CheckpointRead::is_known_corrupt(self, &manifest) {
            self.invalidate(task, key).await;
            return miss("a run in this process found it corrupt".into());
        }
        Ok(Lookup::Hit(Box::new(manifest)))
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
    /// one can be committed (best effort: a failure is logged).
    pub(crate) async fn invalidate(&self, task: &str, key: &str) {
        let path = self.key_dir(task, key).join(MANIFEST);
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                tracing::info!(task, key, "invalidated checkpoint");
            }
            Err(e) => tracing::warn!(task, key, error = %e, "could not invalidate checkpoint"),
        }
    }

    /// Commits a manifest: create-if-absent, or overwrite when `replace`. Returns
    /// `false` when another writer committed first (create lost the race).
    pub(crate) async fn commit(&self, manifest: &Manifest, replace: bool) -> Result<bool> {
        let path = self.key_dir(&manifest.task, &manifest.key).join(MANIFEST);
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
        // What a refresh replaces: its parts go once the new manifest stands.
        let replaced = if replace {
            self.read_manifest(&path).await?.ok()
        } else {
            None
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
                    StoreErrorKind::Conflict | StoreErrorKind::PreconditionFailed => Ok(false),
                    _ => Err(self.error(&path, "put", e)),
                };
            }
        }
        // Read it back: a server whose conditional put is not atomic under concurrency
        // (some S3-compatible ones) can let two creates succeed; the manifest that
        // stands is the last one written, and only its writer keeps its parts.
        match self.read_manifest(&path).await? {
            Ok(standing) => {
                let ours = standing.files == manifest.files;
                if ours && let Some(old) = replaced {
                    let dir = self.key_dir(&manifest.task, &manifest.key);
                    let kept: BTreeSet<&str> = manifest
                        .files
                        .iter()
                        .filter_map(|f| f.path.split('/').next())
                        .collect();
                    let gone: BTreeSet<&str> = old
                        .files
                        .iter()
                        .filter_map(|f| f.path.split('/').next())
                        .filter(|d| !kept.contains(d))
                        .collect();
                    for data_dir in gone {
                        if let Err(e) = self.delete_prefix(&dir.clone().join(data_dir)).await {
                            tracing::warn!(error = %e, "could not delete a replaced checkpoint's parts");
                        }
                    }
                }
                Ok(ours)
            }
            Err(reason) => Err(Error::Internal {
                message: format!(
                    "the manifest just committed at {} does not read back: {reason}",
                    self.url_of(&path)
                ),
            }),
        }
    }

    /// Every object under `prefix`.
    async fn list_under(&self, prefix: &Path) -> Result<Vec<ObjectMeta>> {
        self.store
            .list(Some(prefix))
            .try_collect()
            .await
            .map_err(|e| self.error(prefix, "list", e))
    }

    /// Deletes every object under `prefix`.
    pub(crate) async fn delete_prefix(&self, prefix: &Path) -> Result<u64> {
        let objects = self.list_under(prefix).await?;
        self.delete_all(&objects).await
    }

    async fn delete_all(&self, objects: &[ObjectMeta]) -> Result<u64> {
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
    async fn scan(&self) -> Result<BTreeMap<(String, String), KeyObjects>> {
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

    async fn read_manifest(&self, path: &Path) -> Result<std::result::Result<Manifest, String>> {
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

    async fn read_last_hit(&self, path: &Path) -> Option<DateTime<Utc>> {
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

    /// Removes expired checkpoints, parts that no manifest names and stale staging
    /// objects (of checkpoints and of sinks writing into the store), all only when
    /// older than `grace`: a run in progress keeps its parts.
    pub async fn gc(&self, now: DateTime<Utc>, grace: Duration) -> Result<GcReport> {
        let grace = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
        let old = |meta: &ObjectMeta| now.signed_duration_since(meta.last_modified) >= grace;
        let mut report = GcReport::default();
        for ((task, key), objects) in self.scan().await? {
            let label = format!("{task}/{key}");
            let dir = self.key_dir(&task, &key);
            let manifest = match &objects.manifest {
                Some(meta) => Some((meta, self.read_manifest(&meta.location).await?)),
                None => None,
            };
            let referenced: BTreeSet<Path> = match &manifest {
                Some((_, Ok(m))) => m
                    .files
                    .iter()
                    .map(|f| dir.clone().join_path(&f.path))
                    .collect(),
                _ => BTreeSet::new(),
            };
            if let Some((meta, Ok(m))) = &manifest
                && m.expires.is_some_and(|e| e <= now)
            {
                // The manifest goes first: from then on nothing reads the parts.
                report.bytes += self.delete_all(std::slice::from_ref(*meta)).await?;
                report.bytes += self.delete_prefix(&dir).await?;
                report.expired.push(label);
                continue;
            }
            if let Some((meta, Err(reason))) = &manifest
                && !reason.contains("newer")
                && old(meta)
            {
                report.bytes += self.delete_all(std::slice::from_ref(*meta)).await?;
                report.stale.push(self.url_of(&meta.location));
            }
            let orphans: Vec<ObjectMeta> = objects
                .others
                .into_iter()
                .filter(|m| !referenced.contains(&m.location) && old(m))
                .collect();
            report.bytes += self.delete_all(&orphans).await?;
            report
                .orphans
                .extend(orphans.iter().map(|m| self.url_of(&m.location)));
        }
        // Staging objects of sinks that wrote into this store and never finished.
        let stale: Vec<ObjectMeta> = self
            .list_under(&self.root_path())
            .await?
            .into_iter()
            .filter(|m| m.location.as_ref().contains(sluice_store::STAGING_MARKER) && old(m))
            .collect();
        report.bytes += self.delete_all(&stale).await?;
        report
            .stale
            .extend(stale.iter().map(|m| self.url_of(&m.location)));
        if self.root.scheme() == "file" {
            self.gc_local_uploads(now, grace, &mut report)?;
        }
        Ok(report)
    }

    /// On local disk, an upload that a killed process left unfinished is a file named
    /// `<part>#<n>` that the object store does not list: find those (and the
    /// directories left empty) on the file system itself.
    fn gc_local_uploads(
        &self,
        now: DateTime<Utc>,
        grace: chrono::Duration,
        report: &mut GcReport,
    ) -> Result<()> {
        let Ok(root) = self.root.to_file_path() else {
            return Ok(());
        };
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
                    .is_some_and(|n| n.contains('#'));
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

    fn schema_path(&self, digest: &str) -> Path {
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

trait JoinPath {
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
