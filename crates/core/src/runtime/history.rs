//! Run history: every flow run's record, as JSON, in a run store.
//!
//! A flow run writes its record when it starts (state `Running`, no end) and again when
//! it ends, to `<store>/runs/<flow>/<run-id>.json`. A process killed mid-run leaves the
//! first version: the run shows as `Running` with no end, and never vanishes. The
//! store is a `.sluice/` folder in the working directory by default, or any store URL
//! (`s3://team-bucket/sluice/`, so that a team shares its runs).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use url::Url;

use crate::checkpoint::{store_error, store_root, url_in};
use crate::names::validate_name;
use crate::record::{FlowRunRecord, FlowState};
use crate::{Error, Result};

const RUNS: &str = "runs";

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

    /// Writes (or overwrites) a run's record.
    pub async fn write(&self, record: &FlowRunRecord) -> Result<()> {
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
        if let Some(flow) = &filter.flow {
            validate_name("flow name", flow)?;
        }
        let mut prefix = self.prefix.clone().join(RUNS);
        if let Some(flow) = &filter.flow {
            prefix = prefix.join(flow.as_str());
        }
        let objects: Vec<_> = self
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| self.error(&prefix, "list", e))?;
        let reads = objects
            .into_iter()
            .filter(|meta| meta.location.as_ref().ends_with(".json"))
            .map(|meta| async move { self.read(&meta.location).await });
        let mut records: Vec<FlowRunRecord> = futures::stream::iter(reads)
            .buffer_unordered(16)
            .try_filter_map(|found| async move { Ok(found) })
            .try_filter(|record| std::future::ready(filter.accepts(record)))
            .try_collect()
            .await?;
        records.sort_by(|a, b| b.start.cmp(&a.start).then(b.run_id.cmp(&a.run_id)));
        Ok(records)
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
        let mut matches = self
            .list(&RunFilter::default())
            .await?
            .into_iter()
            .filter(|r| r.run_id.starts_with(run_id))
            .collect::<Vec<_>>();
        match matches.len() {
            0 => Err(not_found(String::new())),
            1 => Ok(matches.remove(0)),
            n => Err(not_found(format!(
                " (the prefix matches {n} runs: {}; give more of the id)",
                matches
                    .iter()
                    .map(|r| r.run_id.as_str())
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
