//! Run history: every flow run's record, as JSON, in a run store.
//!
//! A flow run writes its record when it starts (state `Running`, no end), again while it
//! runs when its tasks change (at most every [`LIVE_RECORD_INTERVAL`]), and when it ends,
//! to `<store>/runs/<flow>/<run-id>.json`. A process killed mid-run leaves the last
//! version: the run shows as `Running` with no end, and never vanishes. The store is a
//! `.sluice/` folder in the working directory by default, or any store URL
//! (`s3://team-bucket/sluice/`, so that a team shares its runs).
//!
//! Beside the records, an index of time-ordered keys, one per run, written with its
//! first record: `<store>/runs-index/<20 digits: u64::MAX - start in µs>=<run-id>=<flow>`.
//! Keys sort newest first, so a page of runs ([`RunStore::page`]) lists keys (a few
//! bytes each) and reads only the records it shows, however many runs the store holds.
//! A store written before the index existed is indexed on first use (a one-time read
//! of every record), after which `runs-index/_complete` marks the index authoritative.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use url::Url;

use crate::checkpoint::{store_error, store_root, url_in};
use crate::names::validate_name;
use crate::record::{FlowRunRecord, FlowState};
use crate::{Error, Result};

const RUNS: &str = "runs";
const INDEX: &str = "runs-index";
/// Written once every run of the store is in the index.
const INDEX_COMPLETE: &str = "_complete";

/// How often a running flow's record is written again when its tasks changed, for a
/// view in another process (`sluice ui`, `sluice runs show`) to follow it.
pub const LIVE_RECORD_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// One page of runs, newest first ([`RunStore::page`]).
#[derive(Debug, Clone, Default)]
pub struct RunPage {
    /// The runs of this page.
    pub runs: Vec<FlowRunRecord>,
    /// The cursor of the next page (pass it as `after`), if there are more runs.
    pub next: Option<String>,
}

/// A run as its index key names it.
#[derive(Debug, Clone, PartialEq)]
struct IndexEntry {
    key: String,
    start_us: i64,
    run_id: String,
    flow: String,
}

impl IndexEntry {
    fn key_of(record: &FlowRunRecord) -> String {
        let micros = u64::try_from(record.start.timestamp_micros()).unwrap_or(0);
        // `=` is in no valid name (see `validate_name`): it separates the parts.
        format!(
            "{:020}={}={}",
            u64::MAX - micros,
            record.run_id,
            record.flow
        )
    }

    /// The entry a key names; `None` for the marker and for keys Sluice did not write.
    fn parse(key: &str) -> Option<Self> {
        let mut parts = key.split('=');
        let (inverse, run_id, flow) = (parts.next()?, parts.next()?, parts.next()?);
        if inverse.len() != 20 || parts.next().is_some() {
            return None;
        }
        let inverse: u64 = inverse.parse().ok()?;
        Some(Self {
            key: key.to_string(),
            start_us: i64::try_from(u64::MAX - inverse).ok()?,
            run_id: run_id.to_string(),
            flow: flow.to_string(),
        })
    }
}

/// A store of flow-run records, read by `sluice runs ls|show`.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> sluice_core::Result<()> {
/// use sluice_core::{Flow, RunFilter, RunStore, Session};
/// let dir = tempfile::tempdir().unwrap();
/// let store = dir.path().display().to_string();
/// let run = Flow::new("hello")
///     .with_run_store(&store)
///     .run(serde_json::json!({}), async { Ok(()) })
///     .await;
/// let runs = RunStore::open(&Session::new(), &store)?;
/// let listed = runs.list(&RunFilter::default()).await?;
/// assert_eq!(listed[0].run_id, run.record.run_id);
/// assert_eq!(runs.get(&run.record.run_id[..8]).await?.flow, "hello");
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct RunStore {
    root: Url,
    /// `root`'s object path: every key of the store starts with it.
    prefix: Path,
    store: Arc<dyn ObjectStore>,
}

/// Which runs [`RunStore::list`] returns.
///
/// ```
/// use sluice_core::{FlowState, RunFilter};
/// let filter = RunFilter::default().with_flow("etl").with_state(FlowState::Failed);
/// # let _ = filter;
/// ```
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    flow: Option<String>,
    state: Option<FlowState>,
    since: Option<DateTime<Utc>>,
}

impl RunFilter {
    /// Only runs of this flow.
    pub fn with_flow(mut self, flow: impl Into<String>) -> Self {
        self.flow = Some(flow.into());
        self
    }

    /// Only runs in this state.
    pub fn with_state(mut self, state: FlowState) -> Self {
        self.state = Some(state);
        self
    }

    /// Only runs that started at or after `since`.
    pub fn with_since(mut self, since: DateTime<Utc>) -> Self {
        self.since = Some(since);
        self
    }

    fn accepts(&self, record: &FlowRunRecord) -> bool {
        self.flow.as_ref().is_none_or(|f| *f == record.flow)
            && self.state.is_none_or(|s| s == record.state)
            && self.since.is_none_or(|since| record.start >= since)
    }
}

/// The index entries of `records`.
fn entries_of(records: &[FlowRunRecord]) -> Vec<IndexEntry> {
    records
        .iter()
        .filter_map(|r| IndexEntry::parse(&IndexEntry::key_of(r)))
        .collect()
}

impl RunStore {
    /// The run store at `location` (a path or a store URL), with the store from the
    /// session's registry (a [`Session`](crate::Session), or a
    /// [`StoreRegistry`](sluice_store::StoreRegistry) of one's own).
    pub fn open(stores: &impl AsRef<sluice_store::StoreRegistry>, location: &str) -> Result<Self> {
        let (root, prefix, store) = store_root(stores.as_ref(), location)?;
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

    /// The object at `rest` (parts as stored, `/`-separated) under the store's prefix.
    fn stored(&self, rest: &str) -> Path {
        let text = if self.prefix.as_ref().is_empty() {
            rest.to_string()
        } else {
            format!("{}/{rest}", self.prefix.as_ref())
        };
        Path::parse(&text).unwrap_or_else(|_| {
            rest.split('/')
                .fold(self.prefix.clone(), |path, part| path.join(part))
        })
    }

    /// Where the record an index entry names is: its flow and run id as stored.
    fn entry_path(&self, entry: &IndexEntry) -> Path {
        self.stored(&format!("{RUNS}/{}/{}.json", entry.flow, entry.run_id))
    }

    fn path_of(&self, flow: &str, run_id: &str) -> Path {
        self.prefix
            .clone()
            .join(RUNS)
            .join(flow)
            .join(format!("{run_id}.json"))
    }

    fn url_of(&self, path: &Path) -> String {
        url_in(&self.root, path)
    }

    fn error(&self, path: &Path, operation: &'static str, source: object_store::Error) -> Error {
        store_error(&self.root, path, operation, source)
    }

    /// Writes (or overwrites) a run's record, and its index key.
    pub async fn write(&self, record: &FlowRunRecord) -> Result<()> {
        self.update(record).await?;
        let path = self.stored(&format!("{INDEX}/{}", IndexEntry::key_of(record)));
        self.store
            .put(&path, PutPayload::default())
            .await
            .map_err(|e| self.error(&path, "put", e))?;
        Ok(())
    }

    /// Overwrites a run's record whose index key is written already (a running
    /// flow's update).
    pub(crate) async fn update(&self, record: &FlowRunRecord) -> Result<()> {
        validate_name("flow name", &record.flow)?;
        validate_name("run id", &record.run_id)?;
        let path = self.path_of(&record.flow, &record.run_id);
        let json = serde_json::to_vec_pretty(record).map_err(|e| Error::Internal {
            message: format!("a run record does not serialize: {e}"),
        })?;
        self.store
            .put(&path, PutPayload::from(json))
            .await
            .map_err(|e| self.error(&path, "put", e))?;
        Ok(())
    }

    /// The runs that pass `filter`, newest first. Records that do not parse (a run
    /// store shared with another version, a truncated file) are skipped with a warning.
    /// A filter's flow name must be a valid name ([`validate_name`]).
    pub async fn list(&self, filter: &RunFilter) -> Result<Vec<FlowRunRecord>> {
        Ok(self.page(filter, None, usize::MAX).await?.runs)
    }

    /// Up to `limit` runs that pass `filter`, newest first, after the cursor `after`
    /// (the `next` of the page before; `None` for the first page). Only the index's
    /// keys and the records shown are read, so a page costs the same in a store of ten
    /// runs and of a hundred thousand (a state filter reads records until the page is
    /// full).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> sluice_core::Result<()> {
    /// use sluice_core::{Flow, RunFilter, RunStore, Session};
    /// let dir = tempfile::tempdir().unwrap();
    /// let store = dir.path().display().to_string();
    /// for _ in 0..3 {
    ///     Flow::new("hello").with_run_store(&store).run(serde_json::json!({}), async { Ok(()) }).await;
    /// }
    /// let runs = RunStore::open(&Session::new(), &store)?;
    /// let first = runs.page(&RunFilter::default(), None, 2).await?;
    /// assert_eq!(first.runs.len(), 2);
    /// let second = runs.page(&RunFilter::default(), first.next.as_deref(), 2).await?;
    /// assert_eq!(second.runs.len(), 1);
    /// assert!(second.next.is_none());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn page(
        &self,
        filter: &RunFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<RunPage> {
        if let Some(flow) = &filter.flow {
            validate_name("flow name", flow)?;
        }
        let entries = self.index().await?;
        let since_us = filter.since.map(|t| t.timestamp_micros());
        let candidates: Vec<IndexEntry> = entries
            .into_iter()
            .filter(|e| after.is_none_or(|after| e.key.as_str() > after))
            .filter(|e| filter.flow.as_ref().is_none_or(|f| *f == e.flow))
            // Newest first: once one started before `since`, so did the rest.
            .take_while(|e| since_us.is_none_or(|since| e.start_us >= since))
            .collect();
        let mut page = RunPage::default();
        let mut read = 0;
        while page.runs.len() < limit && read < candidates.len() {
            let wanted = (limit - page.runs.len()).min(64);
            let chunk = &candidates[read..(read + wanted).min(candidates.len())];
            let paths: Vec<Path> = chunk.iter().map(|e| self.entry_path(e)).collect();
            let records = self.read_all(&paths).await?;
            for (entry, record) in chunk.iter().zip(records) {
                read += 1;
                let Some(record) = record.filter(|r| filter.accepts(r)) else {
                    continue;
                };
                page.runs.push(record);
                if page.runs.len() == limit {
                    if read < candidates.len() {
                        page.next = Some(entry.key.clone());
                    }
                    break;
                }
            }
        }
        Ok(page)
    }

    /// Every index entry, newest first; the index is built first for a store written
    /// before it existed.
    async fn index(&self) -> Result<Vec<IndexEntry>> {
        let prefix = self.prefix.clone().join(INDEX);
        let keys = self.keys(&prefix).await?;
        let complete = keys.iter().any(|k| k.filename() == Some(INDEX_COMPLETE));
        let mut entries: Vec<IndexEntry> = keys
            .iter()
            .filter_map(|k| k.filename().and_then(IndexEntry::parse))
            .collect();
        if !complete {
            entries.extend(self.build_index().await?);
        }
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        entries.dedup_by(|a, b| a.key == b.key);
        Ok(entries)
    }

    /// The object paths under `prefix`.
    async fn keys(&self, prefix: &Path) -> Result<Vec<Path>> {
        self.store
            .list(Some(prefix))
            .map_ok(|meta| meta.location)
            .try_collect::<Vec<_>>()
            .await
            .map_err(|e| self.error(prefix, "list", e))
    }

    /// The records at `paths`, in order (`None` for one gone or unreadable), 16 read at
    /// once. (A loop rather than a stream of closures: those make the future lose
    /// `Send` to a compiler limit, and the view serves pages from spawned tasks.)
    async fn read_all(&self, paths: &[Path]) -> Result<Vec<Option<FlowRunRecord>>> {
        let mut records = Vec::with_capacity(paths.len());
        for chunk in paths.chunks(16) {
            let reads: Vec<_> = chunk.iter().map(|path| self.read(path)).collect();
            for record in futures::future::join_all(reads).await {
                records.push(record?);
            }
        }
        Ok(records)
    }

    /// Indexes every record of the store (one written before the index existed, or by
    /// a version that did not write it), then marks the index complete; returns the
    /// entries. A store this process cannot write to (read-only credentials) is still
    /// listed, from the entries built here: the index is written next time one can.
    async fn build_index(&self) -> Result<Vec<IndexEntry>> {
        let paths: Vec<Path> = self
            .keys(&self.prefix.clone().join(RUNS))
            .await?
            .into_iter()
            .filter(|path| path.as_ref().ends_with(".json"))
            .collect();
        // A record is listed where it is: its key takes the flow and the run id from its
        // path (`runs/<flow>/<run-id>.json`), the start from its contents.
        let mut records = Vec::new();
        for (path, record) in paths.iter().zip(self.read_all(&paths).await?) {
            let Some(mut record) = record else { continue };
            // The parts as stored (percent-encoded where a hand-written name needed it).
            let mut parts = path.as_ref().rsplit('/');
            let (Some(file), Some(flow)) = (parts.next(), parts.next()) else {
                continue;
            };
            let run_id = file.trim_end_matches(".json");
            if run_id.contains('=') || flow.contains('=') {
                tracing::warn!(record = %self.url_of(path), "a run record whose path holds `=` cannot be indexed; it is not listed");
                continue;
            }
            record.flow = flow.to_string();
            record.run_id = run_id.to_string();
            records.push(record);
        }
        tracing::info!(store = %sluice_store::redact(&self.root), runs = records.len(), "indexing the run store");
        for chunk in records.chunks(16) {
            let puts: Vec<_> = chunk
                .iter()
                .map(|record| {
                    let path = self.stored(&format!("{INDEX}/{}", IndexEntry::key_of(record)));
                    async move { self.store.put(&path, PutPayload::default()).await }
                })
                .collect();
            for put in futures::future::join_all(puts).await {
                if let Err(e) = put {
                    tracing::warn!(store = %sluice_store::redact(&self.root), error = %e, "cannot write the run index; runs are listed from their records until it can be");
                    return Ok(entries_of(&records));
                }
            }
        }
        let marker = self.prefix.clone().join(INDEX).join(INDEX_COMPLETE);
        if let Err(e) = self.store.put(&marker, PutPayload::default()).await {
            tracing::warn!(store = %sluice_store::redact(&self.root), error = %e, "cannot mark the run index complete");
        }
        Ok(entries_of(&records))
    }

    /// The run whose id is `run_id`, or the one run whose id starts with it.
    pub async fn get(&self, run_id: &str) -> Result<FlowRunRecord> {
        let not_found = |detail: String| Error::RunNotFound {
            run_id: run_id.to_string(),
            store: sluice_store::redact(&self.root),
            detail,
        };
        if run_id.is_empty() {
            return Err(not_found(String::new()));
        }
        let mut matches: Vec<IndexEntry> = self
            .index()
            .await?
            .into_iter()
            .filter(|e| e.run_id.starts_with(run_id))
            .collect();
        match matches.len() {
            0 => Err(not_found(String::new())),
            1 => {
                let entry = matches.remove(0);
                self.read(&self.entry_path(&entry))
                    .await?
                    .ok_or_else(|| not_found(" (its record is gone or does not parse)".into()))
            }
            n => Err(not_found(format!(
                " (the prefix matches {n} runs: {}; give more of the id)",
                matches
                    .iter()
                    .map(|e| e.run_id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    async fn read(&self, path: &Path) -> Result<Option<FlowRunRecord>> {
        let bytes = match self.store.get(path).await {
            Ok(found) => found
                .bytes()
                .await
                .map_err(|e| self.error(path, "get", e))?,
            // Deleted between the listing and the read.
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.error(path, "get", e)),
        };
        match serde_json::from_slice(&bytes) {
            Ok(record) => Ok(Some(record)),
            Err(e) => {
                tracing::warn!(record = %self.url_of(path), error = %e, "skipping a run record that does not parse");
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Session;
    use crate::record::ExecutionMode;

    fn record(flow: &str, n: i64, state: FlowState) -> FlowRunRecord {
        FlowRunRecord {
            flow: flow.into(),
            run_id: format!("{:08x}-0000-4000-8000-{:012x}", n, n),
            state,
            mode: ExecutionMode::Lazy,
            version: None,
            runner: None,
            parameters: serde_json::json!({}),
            start: DateTime::from_timestamp(1_700_000_000 + n, 0).unwrap(),
            end: None,
            duration_ms: None,
            tasks: Vec::new(),
            error: None,
        }
    }

    #[tokio::test]
    async fn pages_walk_the_index_newest_first_with_filters() {
        let dir = tempfile::tempdir().unwrap();
        let store = RunStore::open(&Session::new(), &dir.path().display().to_string()).unwrap();
        for n in 0..25 {
            let flow = if n % 2 == 0 { "even" } else { "odd" };
            let state = if n % 5 == 0 {
                FlowState::Failed
            } else {
                FlowState::Completed
            };
            store.write(&record(flow, n, state)).await.unwrap();
        }
        let all = RunFilter::default();
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = store.page(&all, after.as_deref(), 10).await.unwrap();
            assert!(page.runs.len() <= 10);
            seen.extend(
                page.runs
                    .iter()
                    .map(|r| r.start.timestamp() - 1_700_000_000),
            );
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        assert_eq!(seen, (0..25).rev().collect::<Vec<_>>());
        let odd = store
            .page(&all.clone().with_flow("odd"), None, 100)
            .await
            .unwrap();
        assert_eq!(odd.runs.len(), 12);
        let failed = store
            .page(&all.clone().with_state(FlowState::Failed), None, 3)
            .await
            .unwrap();
        let failed: Vec<i64> = failed
            .runs
            .iter()
            .map(|r| r.start.timestamp() - 1_700_000_000)
            .collect();
        assert_eq!(failed, vec![20, 15, 10]);
        let since = DateTime::from_timestamp(1_700_000_020, 0).unwrap();
        assert_eq!(
            store
                .page(&all.with_since(since), None, 100)
                .await
                .unwrap()
                .runs
                .len(),
            5
        );
        // A prefix of a run id finds the run through the index.
        let got = store.get("00000007").await.unwrap();
        assert_eq!(got.flow, "odd");
    }

    #[tokio::test]
    async fn a_store_written_before_the_index_is_indexed_on_first_use() {
        let dir = tempfile::tempdir().unwrap();
        let store = RunStore::open(&Session::new(), &dir.path().display().to_string()).unwrap();
        for n in 0..5 {
            store
                .write(&record("old", n, FlowState::Completed))
                .await
                .unwrap();
        }
        // As an older version left it: records, no index.
        std::fs::remove_dir_all(dir.path().join(INDEX)).unwrap();
        let page = store.page(&RunFilter::default(), None, 2).await.unwrap();
        assert_eq!(page.runs.len(), 2);
        assert_eq!(page.runs[0].start.timestamp(), 1_700_000_004);
        assert!(dir.path().join(INDEX).join(INDEX_COMPLETE).exists());
        assert_eq!(
            std::fs::read_dir(dir.path().join(INDEX)).unwrap().count(),
            6
        );
    }
}

#[cfg(test)]
mod live {
    use crate::{Flow, RunFilter, RunStore, Session, Task};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_running_flows_record_is_written_again_when_its_tasks_change() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().display().to_string();
        let (release, wait) = tokio::sync::oneshot::channel::<()>();
        let flow_store = store.clone();
        let run = tokio::spawn(async move {
            Flow::new("ongoing")
                .with_run_store(&flow_store)
                .run(serde_json::json!({}), async move {
                    // Collected: its output streams, and the task completes now.
                    Task::new("first")
                        .run(|cx| async move { cx.sql("SELECT 1 AS n", []).await })
                        .await?
                        .collect()
                        .await?;
                    let _ = wait.await;
                    Ok(())
                })
                .await
        });
        let runs = RunStore::open(&Session::new(), &store).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let listed = runs.list(&RunFilter::default()).await.unwrap();
            if listed
                .first()
                .is_some_and(|r| r.tasks.len() == 1 && r.state == crate::FlowState::Running)
            {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no update: {listed:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        let _ = release.send(());
        let finished = run.await.unwrap();
        let stored = runs.get(&finished.record.run_id).await.unwrap();
        assert_eq!(stored.state, crate::FlowState::Completed);
    }
}
