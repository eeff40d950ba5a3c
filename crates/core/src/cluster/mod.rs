//! Running plans on an Apache DataFusion Ballista cluster (cargo feature `ballista`).
//!
//! A session whose [`Runner`](crate::Runner) is a cluster plans as a local one does:
//! sources are listed and their footers read here, tasks build the same logical plan.
//! When a sink runs, the logical plan goes to the Ballista scheduler (Sluice's nodes
//! through [`LogicalCodec`]), which plans it with Sluice's planner ([`scheduler_state`])
//! and sends stages to the executors (through [`PhysicalCodec`]). The executors read
//! the sources and write the sink's staged output straight to the object store; this
//! process waits, publishes the staged output once the job succeeded, and fills the
//! run record from the task boundaries' metrics that the executors reported.
//!
//! Checkpoints run there too. A persisted task's tee is written by the executors, each
//! partition's part with a receipt (its size, rows and BLAKE3) beside it; this process
//! commits the manifest from the receipts once the job has succeeded, and before a
//! sink publishes, or deletes the parts when it failed. A cache hit's scan of the
//! checkpoint runs on the executors, whose tasks verify the parts' checksums between
//! them; a mismatch fails the job, and this process invalidates the checkpoint.
//!
//! What does not run on a cluster fails before anything is sent, with
//! [`Error::Cluster`] saying why: in-memory frames (eager mode,
//! [`Session::from_batches`](crate::Session::from_batches)), checkpoint stores in
//! memory, and case-insensitive reads.

mod codec;
mod parts;
mod sink;
mod wire;

use wire::WireError;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ballista_core::execution_plans::DistributedQueryExec;
use ballista_core::extension::{SessionConfigExt, SessionStateExt};
use ballista_core::planner::BallistaQueryPlanner;
use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
use ballista_core::serde::protobuf::{
    GetJobMetricsParams, GetJobMetricsResult, OperatorWithMetrics, operator_metric::Metric,
};
use datafusion::catalog::Session as DfSession;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::datasource::listing::{ListingTable, ListingTableConfig};
use datafusion::datasource::physical_plan::{FileScanConfig, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::{provider_as_source, source_as_provider};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::context::QueryPlanner;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::{SessionState, SessionStateBuilder};
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{DataFrame, SessionConfig};
use datafusion_proto::protobuf::LogicalPlanNode;

pub use codec::{LogicalCodec, PhysicalCodec};
pub use sink::{PartitionedParquetSinks, set_executor_address};

use crate::checkpoint::gc::Lease;
use crate::checkpoint::tee::ABANDONED_PARTITIONS;
use crate::checkpoint::{CheckpointRead, CheckpointTarget, CheckpointTee, Tee};
use crate::parquet_io::evolution::CaseInsensitiveFormat;
use crate::parquet_io::format::WrappedFormat;
use crate::parquet_io::pins::SourceFormat;
use crate::plan::boundary::{CheckpointSource, TaskBoundary, TaskBoundaryExec};
use crate::seam::{StreamEnd, TaskHandle};
use crate::{Error, Result};
use parts::{PartsWrite, Streamed, commit_parts};

/// The port of a scheduler URL that names none (Ballista's default).
pub const DEFAULT_SCHEDULER_PORT: u16 = 50050;

/// How long connecting to the scheduler may take before the run fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The options every cluster session needs, applied to `config`.
///
/// DataFusion 55's file-stream work stealing lets a scan partition take files from
/// its siblings' queues. On a cluster each partition is planned in another process
/// with every sibling's files still queued, so the files are read once per partition
/// (apache/datafusion#23292): it is turned off.
///
/// ```
/// let config = sluice_core::cluster::cluster_config(datafusion::prelude::SessionConfig::new());
/// assert!(!config.options().execution.enable_file_stream_work_stealing);
/// ```
pub fn cluster_config(mut config: SessionConfig) -> SessionConfig {
    config
        .options_mut()
        .execution
        .enable_file_stream_work_stealing = false;
    config
}

/// What a client's session sends its cluster beside the plan, in each job's settings:
/// the named stores' settings ([`Settings::to_wire`](sluice_store::Settings::to_wire):
/// credentials by reference only), which executors resolve in their own environment,
/// and what a Parquet sink asks of the column copy on the executors. Written out by
/// hand: the entries of DataFusion's `extensions_options!` lack their prefix, so
/// Ballista's scheduler and executors could not set them back.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// The named stores, as JSON; empty for none.
    pub stores: String,
    /// The column copy's choices for the job's Parquet sink, as JSON; empty for the
    /// defaults.
    pub parquet_copy: String,
}

/// The name [`ClusterOptions`] had when it carried the named stores alone.
#[deprecated(since = "0.2.0", note = "renamed `ClusterOptions`")]
pub type StoreSettingsOption = ClusterOptions;

impl ClusterOptions {
    const STORES: &'static str = "stores";
    const PARQUET_COPY: &'static str = "parquet_copy";
}

impl datafusion::config::ExtensionOptions for ClusterOptions {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }

    fn cloned(&self) -> Box<dyn datafusion::config::ExtensionOptions> {
        Box::new(self.clone())
    }

    fn set(&mut self, key: &str, value: &str) -> DfResult<()> {
        match key {
            Self::STORES => self.stores = value.to_string(),
            Self::PARQUET_COPY => self.parquet_copy = value.to_string(),
            _ => {
                return Err(DataFusionError::Configuration(format!(
                    "`sluice.{key}` is not a setting (only `sluice.{}` and `sluice.{}`)",
                    Self::STORES,
                    Self::PARQUET_COPY
                )));
            }
        }
        Ok(())
    }

    fn entries(&self) -> Vec<datafusion::config::ConfigEntry> {
        use datafusion::config::ConfigExtension as _;
        vec![
            datafusion::config::ConfigEntry {
                key: format!("{}.{}", Self::PREFIX, Self::STORES),
                value: Some(self.stores.clone()),
                description: "the named stores' settings, credentials by reference (JSON)",
            },
            datafusion::config::ConfigEntry {
                key: format!("{}.{}", Self::PREFIX, Self::PARQUET_COPY),
                value: Some(self.parquet_copy.clone()),
                description: "what a Parquet sink asks of the column copy on executors (JSON)",
            },
        ]
    }
}

impl datafusion::config::ConfigExtension for ClusterOptions {
    const PREFIX: &'static str = "sluice";
}

/// `config` carrying `settings` to the cluster: the named stores, credentials by
/// reference only (a store with a secret written out stays behind).
///
/// ```
/// use datafusion::prelude::SessionConfig;
/// use sluice_core::cluster::{ClusterOptions, with_store_settings};
/// let settings = sluice_store::Settings::from_toml("[stores.lake]\nurl = \"s3://trips\"")?;
/// let config = with_store_settings(SessionConfig::new(), &settings);
/// let sent = config.options().extensions.get::<ClusterOptions>().unwrap();
/// assert!(sent.stores.contains("s3://trips"));
/// # Ok::<(), sluice_store::SettingsError>(())
/// ```
pub fn with_store_settings(
    config: SessionConfig,
    settings: &sluice_store::Settings,
) -> SessionConfig {
    let stores = if settings.stores().next().is_none() {
        String::new()
    } else {
        settings.to_wire()
    };
    let mut options = config
        .options()
        .extensions
        .get::<ClusterOptions>()
        .cloned()
        .unwrap_or_default();
    options.stores = stores;
    config.with_option_extension(options)
}

/// The object stores of a scheduler's or an executor's tasks: one registry per set of
/// named stores a client sent (most processes see one), each creating its stores per
/// URL from this process's environment and the settings' references.
pub(crate) fn stores_for(config: &SessionConfig) -> DfResult<Arc<sluice_store::StoreRegistry>> {
    use std::collections::HashMap;
    use std::sync::Mutex;
    static REGISTRIES: std::sync::OnceLock<
        Mutex<HashMap<String, Arc<sluice_store::StoreRegistry>>>,
    > = std::sync::OnceLock::new();
    let wire = config
        .options()
        .extensions
        .get::<ClusterOptions>()
        .map(|option| option.stores.clone())
        .unwrap_or_default();
    let mut registries = REGISTRIES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(registry) = registries.get(&wire) {
        return Ok(Arc::clone(registry));
    }
    let settings = if wire.is_empty() {
        sluice_store::Settings::empty()
    } else {
        sluice_store::Settings::from_wire(&wire)
            .map_err(|e| DataFusionError::External(Box::new(e)))?
    };
    let registry = Arc::new(sluice_store::StoreRegistry::with_settings(settings));
    registries.insert(wire, Arc::clone(&registry));
    Ok(registry)
}

/// The runtime of a scheduler's or an executor's task: object stores created per URL
/// from the environment (the AWS variables, as in a local session) and the named
/// stores the client sent in `config`, since stores registered on a client do not
/// travel.
pub fn runtime_env(config: &SessionConfig) -> DfResult<Arc<RuntimeEnv>> {
    RuntimeEnvBuilder::new()
        .with_object_store_registry(stores_for(config)? as _)
        .build_arc()
}

/// A session configuration that accepts the settings clients send
/// ([`ClusterOptions`]): what schedulers and executors start from.
///
/// ```
/// let config = sluice_core::cluster::accepting_store_settings(datafusion::prelude::SessionConfig::new());
/// assert!(config.options().extensions.get::<sluice_core::cluster::ClusterOptions>().is_some());
/// ```
pub fn accepting_store_settings(config: SessionConfig) -> SessionConfig {
    config.with_option_extension(ClusterOptions::default())
}

/// `plan`, decoded on an executor, with its Parquet scans capped at the column-chunk
/// size this process allows (`SLUICE_MAX_COLUMN_CHUNK_BYTES`, else 1 GiB), as a local
/// read caps them: DataFusion's protobuf does not encode Sluice's reader. A scan
/// without a reader factory gets the default one over this process's store for its URL.
fn cap_scans(
    plan: Arc<dyn ExecutionPlan>,
    stores: &sluice_store::StoreRegistry,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    use crate::parquet_io::limits;
    use datafusion::datasource::physical_plan::parquet::DefaultParquetFileReaderFactory;
    let cap = limits::max_column_chunk_bytes_from_env();
    rewrite_scans(plan, |conf, source| {
        let scan = match source.parquet_file_reader_factory() {
            Some(_) => DataSourceExec::from_data_source(conf.clone()),
            None => {
                let url: &url::Url = conf.object_store_url.as_ref();
                let store = stores
                    .store_for(url)
                    .map_err(|e| DataFusionError::External(Box::new(e)))?;
                let source = source.clone().with_parquet_file_reader_factory(Arc::new(
                    DefaultParquetFileReaderFactory::new(store),
                ));
                scan_of(conf, source)
            }
        };
        Ok(limits::limit_scan(scan, cap, None))
    })
}

/// `plan`, decoded on an executor under a cache hit's boundary, with its Parquet scans
/// (of the checkpoint's parts) reading through the checkpoint's verifying store.
fn read_checkpoint_scans(
    plan: Arc<dyn ExecutionPlan>,
    read: &Arc<CheckpointRead>,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    rewrite_scans(plan, |conf, source| {
        let source = source
            .clone()
            .with_parquet_file_reader_factory(read.reader_factory());
        Ok(scan_of(conf, source))
    })
}

/// Every Parquet scan of `plan` down to the next task boundary (which rewrites its
/// own), replaced by what `rewrite` makes of its configuration and source.
fn rewrite_scans(
    plan: Arc<dyn ExecutionPlan>,
    rewrite: impl Fn(&FileScanConfig, &ParquetSource) -> DfResult<Arc<dyn ExecutionPlan>>,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    plan.transform_down(|node| {
        if node.is::<TaskBoundaryExec>() {
            return Ok(Transformed::new(node, false, TreeNodeRecursion::Jump));
        }
        let Some(exec) = node.downcast_ref::<DataSourceExec>() else {
            return Ok(Transformed::no(node));
        };
        let Some((conf, source)) = exec.downcast_to_file_source::<ParquetSource>() else {
            return Ok(Transformed::no(node));
        };
        let scan = rewrite(conf, source)?;
        Ok(Transformed::new(scan, true, TreeNodeRecursion::Jump))
    })
    .map(|t| t.data)
}

/// A scan of `conf` through `source`.
fn scan_of(conf: &FileScanConfig, source: ParquetSource) -> Arc<dyn ExecutionPlan> {
    DataSourceExec::from_data_source(
        FileScanConfigBuilder::from(conf.clone())
            .with_source(Arc::new(source))
            .build(),
    )
}

/// The session state a scheduler plans Sluice's plans in: Sluice's query planner (its
/// task boundaries become [`TaskBoundaryExec`](crate::plan::boundary::TaskBoundaryExec)s),
/// a Parquet sink per partition ([`PartitionedParquetSinks`], applied by the query
/// planner: Ballista's adaptive planner replaces a session's physical optimizer rules
/// with its own), stores from the environment, and [`cluster_config`].
pub fn scheduler_state(config: SessionConfig) -> DfResult<SessionState> {
    Ok(SessionStateBuilder::new()
        .with_runtime_env(runtime_env(&config)?)
        .with_config(cluster_config(config))
        .with_default_features()
        .with_query_planner(Arc::new(sink::SchedulerPlanner))
        .build())
}

/// A task boundary of a plan sent to the cluster, and the boundaries under it.
struct Boundary {
    task: TaskHandle,
    upstream: Vec<String>,
    /// The checkpoint it reads, on a cache hit.
    checkpoint: Option<Arc<dyn CheckpointSource>>,
}

/// A persisted task's checkpoint that a job writes: the client commits it.
struct TeeWrite {
    target: Arc<CheckpointTarget>,
    parts: Arc<PartsWrite>,
    /// The client's lease on the write's directory while the executors write it (see
    /// `gc`): ended after the commit, or before the parts are deleted.
    lease: Option<Lease>,
}

/// A plan as the cluster runs it: its task boundaries and the checkpoints it writes.
struct Prepared {
    plan: LogicalPlan,
    boundaries: Vec<Boundary>,
    tees: TeeWrites,
}

/// The checkpoints a job writes. Dropped before [`settle`](Self::settle) (the run was
/// cancelled while the job ran), their parts are deleted in the background.
#[derive(Default)]
struct TeeWrites(Vec<TeeWrite>);

impl TeeWrites {
    /// Commits each checkpoint once the job has succeeded (before a sink publishes),
    /// or deletes its parts when the job, or a commit, failed.
    async fn settle<T>(mut self, outcome: &mut Result<T>, metrics: Option<&GetJobMetricsResult>) {
        for mut tee in std::mem::take(&mut self.0) {
            let lease = tee.lease.take();
            if outcome.is_ok() {
                let streamed = metrics.map(|m| tee_figures(m, &tee.parts.write));
                if let Err(e) = commit_parts(&tee.target, &tee.parts, streamed, lease).await {
                    *outcome = Err(tee.target.error(e));
                }
            } else if let Some(lease) = lease {
                lease.end().await;
            }
            if outcome.is_err()
                && let Err(e) = tee.target.store.delete_prefix(&tee.parts.dir()).await
            {
                tracing::warn!(error = %e, "could not delete a failed job's checkpoint parts");
            }
        }
    }
}

impl Drop for TeeWrites {
    fn drop(&mut self) {
        for mut tee in self.0.drain(..) {
            sluice_store::cleanup::spawn("delete a cancelled job's checkpoint parts", async move {
                if let Some(lease) = tee.lease.take() {
                    lease.end().await;
                }
                if let Err(e) = tee.target.store.delete_prefix(&tee.parts.dir()).await {
                    tracing::warn!(error = %e, "could not delete a cancelled job's checkpoint parts");
                }
            });
        }
    }
}

/// A Ballista cluster, as a session's runner.
#[derive(Debug, Clone)]
pub(crate) struct Cluster {
    /// `df://host:port`, as the user wrote it.
    url: String,
    /// `http://host:port`, as Ballista's gRPC clients take it.
    scheduler: String,
    /// `host:port`.
    address: String,
}

impl Cluster {
    pub(crate) fn new(url: &str) -> Result<Self> {
        let parsed = url::Url::parse(url).map_err(|e| Error::InvalidOption {
            option: "runner",
            reason: format!("{url:?} is not a URL df://host:port ({e})"),
        })?;
        let host = parsed.host_str().unwrap_or_default();
        let port = parsed.port().unwrap_or(DEFAULT_SCHEDULER_PORT);
        Ok(Self {
            url: url.to_string(),
            scheduler: format!("http://{host}:{port}"),
            address: format!("{host}:{port}"),
        })
    }

    fn error(&self, reason: impl Into<String>) -> Error {
        Error::Cluster {
            address: self.url.clone(),
            reason: reason.into(),
        }
    }

    /// Fails within [`CONNECT_TIMEOUT`] when nothing answers at the scheduler's address.
    async fn reachable(&self) -> Result<()> {
        let hint = format!(
            "start a scheduler there (`sluice scheduler --bind {}`) or fix the runner's URL",
            self.address
        );
        match tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio::net::TcpStream::connect(&self.address),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                Err(self.error(format!("nothing answers at {} ({e}); {hint}", self.address)))
            }
            Err(_) => Err(self.error(format!(
                "no answer from {} within {CONNECT_TIMEOUT:?}; {hint}",
                self.address
            ))),
        }
    }

    /// The plan as the cluster can run it, its task boundaries, and the checkpoints it
    /// writes. Refuses what does not run on a cluster, naming it.
    fn prepare(&self, plan: &LogicalPlan) -> Result<Prepared> {
        let mut refusal: Option<Error> = None;
        let mut tees = TeeWrites::default();
        let prepared = plan
            .clone()
            .transform_up(|node| {
                let portable = match &node {
                    LogicalPlan::TableScan(scan) => portable_scan(scan.source.clone())
                        .map_err(|reason| format!("{reason} (table {})", scan.table_name))
                        .map(|source| {
                            source.map(|source| {
                                let mut scan = scan.clone();
                                scan.source = source;
                                LogicalPlan::TableScan(scan)
                            })
                        }),
                    LogicalPlan::Extension(extension) => {
                        match extension.node.as_any().downcast_ref::<CheckpointTee>() {
                            Some(tee) => cluster_tee(tee).map(|prepared| {
                                prepared.map(|(tee, write)| {
                                    tees.0.extend(write);
                                    tee
                                })
                            }),
                            None => Ok(None),
                        }
                    }
                    _ => Ok(None),
                };
                match portable {
                    Ok(Some(replaced)) => Ok(Transformed::yes(replaced)),
                    Ok(None) => Ok(Transformed::no(node)),
                    Err(reason) => {
                        refusal.get_or_insert_with(|| self.error(reason));
                        Ok(Transformed::no(node))
                    }
                }
            })
            .map_err(|e| self.error(e.to_string()))?
            .data;
        if let Some(refusal) = refusal {
            return Err(refusal);
        }
        let mut boundaries = Vec::new();
        collect_boundaries(&prepared, &mut boundaries).map_err(|e| self.error(e.to_string()))?;
        Ok(Prepared {
            plan: prepared,
            boundaries,
            tees,
        })
    }

    /// A session state that sends plans to the cluster, and where the physical plans
    /// it made are kept (to find the job afterwards).
    fn state(
        &self,
        local: SessionState,
        settings: &sluice_store::Settings,
    ) -> Result<(SessionState, Jobs)> {
        let jobs = Jobs::default();
        let config = cluster_config(with_store_settings(local.config().clone(), settings))
            .with_ballista_logical_extension_codec(Arc::new(LogicalCodec::default()))
            .upgrade_for_ballista();
        let planner = JobRecorder {
            inner: BallistaQueryPlanner::<LogicalPlanNode>::with_extension(
                self.scheduler.clone(),
                config.ballista_config(),
                Arc::new(LogicalCodec::default()),
            ),
            jobs: jobs.clone(),
        };
        let config = config.with_ballista_query_planner(Arc::new(planner));
        // The packed group keys' functions are Sluice's: the executors could not run them.
        let rules = local
            .optimizers()
            .iter()
            .filter(|rule| rule.name() != crate::plan::group_keys::PackGroupKeys::NAME)
            .cloned()
            .collect();
        let state = SessionStateBuilder::new_from_existing(local)
            .with_config(config)
            .with_optimizer_rules(rules)
            .build();
        // Ballista's rules and functions; the planner is the recorder set above.
        let state = state
            .upgrade_for_ballista(self.scheduler.clone())
            .map_err(|e| self.error(e.to_string()))?;
        Ok((state, jobs))
    }

    /// Runs `body` on a data frame over `plan` that executes on the cluster, then
    /// records what each task boundary counted into its run.
    pub(crate) async fn run<T, F, Fut>(
        &self,
        local: SessionState,
        settings: &sluice_store::Settings,
        plan: &LogicalPlan,
        body: F,
    ) -> Result<T>
    where
        F: FnOnce(DataFrame) -> Fut,
        Fut: Future<Output = DfResult<T>>,
    {
        let Prepared {
            plan,
            boundaries,
            tees,
        } = self.prepare(plan)?;
        self.reachable().await?;
        let (state, jobs) = self.state(local, settings)?;
        let config = state.config().clone();
        let started = Instant::now();
        let mut outcome = body(DataFrame::new(state, plan))
            .await
            .map_err(|e| self.job_error(e, &boundaries));
        let job = jobs.job_id();
        let metrics = match &job {
            Some(job) => match self.job_metrics(job, &config).await {
                Ok(metrics) => Some(metrics),
                Err(e) => {
                    tracing::warn!(job, error = %e, "could not read the job's metrics from the scheduler; per-task figures are missing");
                    None
                }
            },
            None => None,
        };
        tees.settle(&mut outcome, metrics.as_ref()).await;
        self.record(&boundaries, metrics.as_ref(), outcome.as_ref().err());
        tracing::info!(cluster = %self.url, job = job.unwrap_or_default(), elapsed = ?started.elapsed(), ok = outcome.is_ok(), "cluster job ended");
        outcome
    }

    /// `state` (a job's, see [`run`](Self::run)) with what a Parquet sink asks of the
    /// column copy on the executors (see `sink::PartSinkExec`).
    pub(crate) fn with_parquet_copy(
        &self,
        mut state: SessionState,
        copy: &crate::parquet_io::copy::ExecutorCopy,
    ) -> SessionState {
        let options = state.config_mut().options_mut();
        let mut cluster = options
            .extensions
            .get::<ClusterOptions>()
            .cloned()
            .unwrap_or_default();
        cluster.parquet_copy = serde_json::to_string(copy).unwrap_or_default();
        options.extensions.insert(cluster);
        state
    }

    /// The parts a Parquet sink's job wrote under `dir` (see [`sink::gather`]), in the
    /// order of the input they read, and what each executor wrote; fails when they do
    /// not hold the job's `rows`.
    pub(crate) async fn gather_parts(
        &self,
        store: &Arc<dyn object_store::ObjectStore>,
        dir: &url::Url,
        rows: u64,
    ) -> Result<(
        Vec<object_store::ObjectMeta>,
        Vec<crate::WriterShare>,
        Option<crate::WriteMethod>,
    )> {
        sink::gather(store, dir, rows, &self.url).await
    }

    async fn job_metrics(&self, job: &str, config: &SessionConfig) -> Result<GetJobMetricsResult> {
        let size = config.ballista_config().grpc_client_max_message_size();
        let mut client = SchedulerGrpcClient::connect(self.scheduler.clone())
            .await
            .map_err(|e| self.error(e.to_string()))?
            .max_decoding_message_size(size);
        Ok(client
            .get_job_metrics(GetJobMetricsParams {
                job_id: job.to_string(),
            })
            .await
            .map_err(|e| self.error(e.message().to_string()))?
            .into_inner())
    }

    /// Fills each task run from its boundary's metrics, and marks the runs a failed
    /// job stopped.
    fn record(
        &self,
        boundaries: &[Boundary],
        metrics: Option<&GetJobMetricsResult>,
        failure: Option<&Error>,
    ) {
        let counted = metrics.map(boundary_metrics).unwrap_or_default();
        let culprit = failure.and_then(Error::task);
        for boundary in boundaries {
            let figures = counted
                .get(boundary.task.name())
                .copied()
                .unwrap_or_default();
            let end = match failure {
                None => StreamEnd::Ended,
                Some(_) => StreamEnd::Failed,
            };
            figures.record(&boundary.task, boundary.checkpoint.is_some(), end);
            let Some(error) = failure else { continue };
            if culprit == Some(boundary.task.name()) {
                boundary.task.fail(error);
            } else if let Some(upstream) =
                culprit.filter(|c| boundary.upstream.iter().any(|u| u == c))
            {
                boundary.task.fail(&Error::UpstreamFailed {
                    task: boundary.task.name().to_string(),
                    upstream: upstream.to_string(),
                });
            } else {
                boundary.task.fail(&self.error(error.to_string()));
            }
        }
    }

    /// The job's error as Sluice's: the task the executors named (the innermost, when
    /// an upstream failure passed through several boundaries), the cluster's address,
    /// and the executors' message.
    fn job_error(&self, error: DataFusionError, boundaries: &[Boundary]) -> Error {
        if let DataFusionError::External(boxed) = error {
            return match boxed.downcast::<Error>() {
                Ok(ours) => *ours,
                Err(other) => self.error(other.to_string()),
            };
        }
        let text = crate::error::message(&error);
        // Sluice's error as the executors sent it (see `wire`).
        if let Some(wire) = WireError::find(&text) {
            return self.executor_error(wire, boundaries, &job_of(&text));
        }
        let message = executor_message(&text);
        let message = message.trim();
        if message.ends_with("Cancelled") {
            // Nobody here cancelled it: the scheduler did. `sluice scheduler` cancels
            // the jobs of a cluster that has had no executor for a while.
            return self.error(format!(
                "the scheduler cancelled the job ({message}); a `sluice scheduler` does so \
                 when no executor has been registered for its --no-executor-timeout: start \
                 one with `sluice executor --scheduler {}`, or see the scheduler's log",
                self.address
            ));
        }
        self.error(message.to_string())
    }

    /// An error an executor raised, from its payload: attributed to the task it names.
    /// A corrupt checkpoint under a cache hit's boundary (the executor's boundary said
    /// so, as locally) is invalidated here, where the next run looks it up.
    fn executor_error(&self, wire: WireError, boundaries: &[Boundary], job: &str) -> Error {
        let boundary = wire
            .task
            .as_deref()
            .and_then(|task| boundaries.iter().find(|b| b.task.name() == task));
        if wire.kind == "CorruptCheckpoint"
            && let Some(boundary) = boundary
            && let Some(checkpoint) = &boundary.checkpoint
        {
            let reason = wire.reason.unwrap_or(wire.message);
            return checkpoint.corrupt(
                &boundary.task,
                format!("{reason}; found by the executors of {}", self.url),
            );
        }
        let source = Error::OnExecutor {
            cluster: self.url.clone(),
            kind: wire.kind,
            object: wire.object,
            message: format!("{}{job}", wire.message),
            retryable: wire.retryable,
        };
        match wire.task {
            Some(task) => Error::Task {
                task,
                source: Box::new(source),
            },
            None => source,
        }
    }
}

/// ` (job ID)` when `text` is a failed job's status (`Job ID failed: ...`).
fn job_of(text: &str) -> String {
    text.trim()
        .strip_prefix("Job ")
        .and_then(|rest| rest.split_whitespace().next())
        .map(|id| format!(" (job {id})"))
        .unwrap_or_default()
}

/// The executor's own message out of Ballista's wrapping (`Job X failed: Job failed due
/// to stage 0 failed: Task failed due to runtime execution error:
/// DataFusionError(Shared(Execution("..."))))`), with the job named after it.
fn executor_message(text: &str) -> String {
    let text = text.trim();
    let job = job_of(text);
    let Some(start) = text.rfind("Execution(\"") else {
        return text.to_string();
    };
    let inner = &text[start + "Execution(\"".len()..];
    let inner = inner.rfind("\")").map_or(inner, |end| &inner[..end]);
    let inner = inner.replace("\\\"", "\"").replace("\\\\", "\\");
    format!("{inner}{job}")
}

/// Per task, what its boundaries counted over the job's stages.
#[derive(Debug, Default, Clone, Copy)]
struct Figures {
    partitions: usize,
    rows: u64,
    bytes: u64,
    nanos: u64,
}

impl Figures {
    /// Records, through the seam, the execution that ran on the executors and has
    /// ended: its partitions, what its boundary counted, whether it read the task's
    /// checkpoint, and how every partition ended.
    fn record(&self, task: &TaskHandle, from_checkpoint: bool, end: StreamEnd) {
        let execution = task.execution(self.partitions, from_checkpoint);
        execution.add_output(self.rows, self.bytes, self.nanos);
        for _ in 0..self.partitions.max(1) {
            task.partition(&execution).end(end);
        }
    }
}

/// What each task's boundaries counted on the executors, by task: the operators of
/// type `TaskBoundaryExec` in the job's stages, each named by its identity count
/// (`sluice_task=NAME`, see [`crate::plan::count_identity`]).
fn boundary_metrics(metrics: &GetJobMetricsResult) -> HashMap<String, Figures> {
    let mut figures: HashMap<String, Figures> = HashMap::new();
    for stage in &metrics.stages {
        for operator in &stage.operators {
            let Some(task) = identity(operator, "TaskBoundaryExec", crate::plan::TASK_IDENTITY)
            else {
                continue;
            };
            let entry = figures.entry(task.to_string()).or_default();
            entry.partitions += stage.partitions as usize;
            for metric in &operator.metrics {
                match &metric.metric {
                    Some(Metric::OutputRows(n)) => entry.rows += n,
                    Some(Metric::ElapseTime(n)) => entry.nanos += n,
                    Some(Metric::OutputBytes(n)) => entry.bytes += n,
                    _ => {}
                }
            }
        }
    }
    figures
}

/// Whose `operator`'s metrics are, if it is of type `operator_type` and has an identity
/// count `KEY=VALUE` under `key`: the value.
fn identity<'a>(
    operator: &'a OperatorWithMetrics,
    operator_type: &str,
    key: &str,
) -> Option<&'a str> {
    if operator.operator_type != operator_type {
        return None;
    }
    operator
        .metrics
        .iter()
        .find_map(|metric| match &metric.metric {
            Some(Metric::Count(count)) => count
                .name
                .strip_prefix(key)
                .and_then(|rest| rest.strip_prefix('=')),
            _ => None,
        })
}

/// What partition `partition` of `plan` reads, when it can be told (see
/// [`partition_files`]): a task that Ballista runs
/// again reads the same slice, so its part replaces, rather than adds to, the first
/// attempt's. (Ballista renumbers a task's partitions from 0, so the partition number
/// alone does not say.)
pub(crate) fn slice_identity(plan: &Arc<dyn ExecutionPlan>, partition: usize) -> Option<String> {
    let mut hasher = blake3::Hasher::new();
    for file in partition_files(plan, partition)? {
        hasher.update(file.object_meta.location.as_ref().as_bytes());
        let (start, end) = file.range.as_ref().map_or((0, -1), |r| (r.start, r.end));
        hasher.update(format!("\0{start}..{end}\n").as_bytes());
    }
    Some(hasher.finalize().to_hex().to_string())
}

/// The files partition `partition` of `plan` scans, when it can be told: a scan reached
/// from `plan` through operators that keep partitions apart (projections, filters,
/// task boundaries). `None` when something on the way mixes partitions.
pub(crate) fn partition_files(
    plan: &Arc<dyn ExecutionPlan>,
    partition: usize,
) -> Option<Vec<datafusion::datasource::listing::PartitionedFile>> {
    use datafusion::datasource::physical_plan::FileScanConfig;
    use datafusion::datasource::source::DataSourceExec;
    let mut node = Arc::clone(plan);
    loop {
        if let Some(source) = node.downcast_ref::<DataSourceExec>() {
            let config = source.data_source().downcast_ref::<FileScanConfig>()?;
            return Some(config.file_groups.get(partition)?.files().to_vec());
        }
        let children = node.children();
        let [child] = children.as_slice() else {
            return None;
        };
        let keeps_partitions = node.is::<crate::plan::boundary::TaskBoundaryExec>()
            || ballista_core::execution_plans::plan_algebra::preserves_partitioning(node.as_ref());
        if !keeps_partitions
            || child.properties().partitioning.partition_count()
                != node.properties().partitioning.partition_count()
        {
            return None;
        }
        node = Arc::clone(child);
    }
}

/// What the job's successful tasks reported of the tee writing under `data-<write>`.
fn tee_figures(metrics: &GetJobMetricsResult, write: &str) -> Streamed {
    let mut streamed = Streamed::default();
    let operators = metrics.stages.iter().flat_map(|stage| &stage.operators);
    for operator in operators.filter(|o| {
        identity(o, "CheckpointExec", crate::checkpoint::tee::WRITE_IDENTITY) == Some(write)
    }) {
        for metric in &operator.metrics {
            match &metric.metric {
                Some(Metric::OutputRows(n)) => streamed.rows += n,
                Some(Metric::Count(count)) if count.name == ABANDONED_PARTITIONS => {
                    streamed.abandoned += count.value
                }
                _ => {}
            }
        }
    }
    streamed
}

/// The checkpoint a table provider scans, if it is a checkpoint's table.
fn checkpoint_of(table: &dyn datafusion::catalog::TableProvider) -> Option<&Arc<CheckpointRead>> {
    table
        .downcast_ref::<crate::checkpoint::read::CheckpointTable>()
        .map(|t| &t.read)
}

/// A scan the cluster can decode: Sluice's Parquet format with the column-chunk cap
/// becomes DataFusion's (which Ballista encodes), other listing tables go as they are.
/// `Ok(None)`: unchanged; `Err`: what cannot run on a cluster.
fn portable_scan(
    source: Arc<dyn datafusion::logical_expr::TableSource>,
) -> std::result::Result<Option<Arc<dyn datafusion::logical_expr::TableSource>>, String> {
    let provider = source_as_provider(&source).map_err(|e| e.to_string())?;
    // A checkpoint's scan crosses as its manifest (see the codec).
    if checkpoint_of(provider.as_ref()).is_some() {
        return Ok(None);
    }
    let Some(listing) = provider.downcast_ref::<ListingTable>() else {
        return Err(
            "in-memory data (eager mode, `Session::from_batches`) cannot be sent to a \
                    cluster; run the flow in lazy mode over files or object stores"
                .into(),
        );
    };
    let format = &listing.options().format;
    if format.is::<WrappedFormat<CaseInsensitiveFormat>>() {
        return Err(
            "case-insensitive column names (`ParquetRead::with_case_insensitive_names`) \
                    do not run on a cluster yet; rename the columns or run locally"
                .into(),
        );
    }
    // Sluice's source format becomes DataFusion's, which Ballista encodes. (The pins
    // do not cross: on a cluster the scheduler's listing is the one the executors read.)
    let Some(source) = format.downcast_ref::<WrappedFormat<SourceFormat>>() else {
        return Ok(None);
    };
    let inner = &source.inner;
    let mut options = listing.options().clone();
    options.format = Arc::clone(inner);
    let partition_columns: Vec<&str> = options
        .table_partition_cols
        .iter()
        .map(|(name, _)| name.as_str())
        .collect();
    let table_schema = datafusion::catalog::TableProvider::schema(listing);
    let file_schema = datafusion::arrow::datatypes::Schema::new(
        table_schema
            .fields()
            .iter()
            .filter(|f| !partition_columns.contains(&f.name().as_str()))
            .cloned()
            .collect::<Vec<_>>(),
    );
    let table = ListingTable::try_new(
        ListingTableConfig::new_with_multi_paths(listing.table_paths().clone())
            .with_listing_options(options)
            .with_schema(Arc::new(file_schema)),
    )
    .map_err(|e| e.to_string())?;
    Ok(Some(provider_as_source(Arc::new(table))))
}

/// A persisted task's tee as the cluster runs it: its executors write the parts, or
/// read the checkpoint when this run has committed it already. `None` for a tee
/// already prepared. Refuses a checkpoint store in this process's memory.
fn cluster_tee(
    node: &CheckpointTee,
) -> std::result::Result<Option<(LogicalPlan, Option<TeeWrite>)>, String> {
    let tee: Arc<dyn std::any::Any + Send + Sync> = node.tee.clone();
    let Ok(target) = tee.downcast::<CheckpointTarget>() else {
        return Ok(None);
    };
    let target = &target;
    if target.store.url().scheme() == "memory" {
        return Err(format!(
            "task {:?} is persisted to {}, which lives in this process's memory: the \
             cluster's executors cannot write it; persist to a store they share (s3://..., \
             or a path every executor mounts)",
            target.task,
            target.store.url()
        ));
    }
    let parts = Arc::new(PartsWrite::of(target));
    let write = parts.committed.is_none().then(|| TeeWrite {
        target: Arc::clone(target),
        parts: Arc::clone(&parts),
        lease: Some(target.store.lease(&parts.dir(), target.clock.clone())),
    });
    let tee = LogicalPlan::Extension(datafusion::logical_expr::Extension {
        node: Arc::new(CheckpointTee {
            tee: parts as Tee,
            input: node.input.clone(),
        }),
    });
    Ok(Some((tee, write)))
}

/// Each task boundary of `plan` that the job runs, with the boundaries under it. (Under
/// a checkpoint this run has committed, nothing runs: the checkpoint is read.)
fn collect_boundaries(plan: &LogicalPlan, out: &mut Vec<Boundary>) -> DfResult<()> {
    plan.apply(|node| {
        let LogicalPlan::Extension(extension) = node else {
            return Ok(TreeNodeRecursion::Continue);
        };
        if let Some(tee) = extension.node.as_any().downcast_ref::<CheckpointTee>()
            && tee.tee.committed().is_some()
        {
            return Ok(TreeNodeRecursion::Jump);
        }
        let Some(boundary) = extension.node.as_any().downcast_ref::<TaskBoundary>() else {
            return Ok(TreeNodeRecursion::Continue);
        };
        let mut upstream = Vec::new();
        boundary.input.apply(|inner| {
            if let LogicalPlan::Extension(e) = inner
                && let Some(b) = e.node.as_any().downcast_ref::<TaskBoundary>()
            {
                upstream.push(b.task.name().to_string());
            }
            Ok(TreeNodeRecursion::Continue)
        })?;
        out.push(Boundary {
            task: boundary.task.clone(),
            upstream,
            checkpoint: boundary.checkpoint.clone(),
        });
        Ok(TreeNodeRecursion::Continue)
    })
    .map(|_| ())
}

/// The physical plans a cluster state made: the one that ran holds the job's id.
#[derive(Debug, Clone, Default)]
struct Jobs(Arc<Mutex<Vec<Arc<dyn ExecutionPlan>>>>);

impl Jobs {
    fn job_id(&self) -> Option<String> {
        let plans = self.0.lock().unwrap_or_else(|p| p.into_inner());
        plans.iter().rev().find_map(|plan| {
            plan.downcast_ref::<DistributedQueryExec<LogicalPlanNode>>()
                .and_then(|exec| exec.job_id())
                .map(|id| id.to_string())
        })
    }
}

/// Ballista's query planner, keeping the plans it makes.
#[derive(Debug)]
struct JobRecorder {
    inner: BallistaQueryPlanner<LogicalPlanNode>,
    jobs: Jobs,
}

#[async_trait]
impl QueryPlanner for JobRecorder {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session: &dyn DfSession,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let plan = self
            .inner
            .create_physical_plan(logical_plan, session)
            .await?;
        self.jobs
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::clone(&plan));
        Ok(plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_executors_message_is_taken_out_of_ballistas_wrapping() {
        let text = r#"Job 038GYBZ846000 failed: Job failed due to stage 0 failed: Task failed due to runtime execution error: DataFusionError(Shared(Execution("task \"extract\" failed: reading s3://b/in/ failed: snappy: corrupt input")))"#;
        assert_eq!(
            executor_message(text),
            r#"task "extract" failed: reading s3://b/in/ failed: snappy: corrupt input (job 038GYBZ846000)"#
        );
        assert_eq!(executor_message(" Cancelled "), "Cancelled");
    }

    #[test]
    fn a_boundarys_figures_are_found_by_its_type_and_identity_count_not_its_text() {
        use ballista_core::serde::protobuf::{JobStageMetrics, NamedCount, OperatorMetric};
        let metric = |metric| OperatorMetric {
            partition: Some(0),
            metric: Some(metric),
        };
        let operator = |operator_type: &str, desc: &str, metrics| OperatorWithMetrics {
            depth: 0,
            operator_type: operator_type.into(),
            operator_desc: desc.into(),
            metrics,
        };
        let identity = |name: &str| {
            metric(Metric::Count(NamedCount {
                name: format!("{}={name}", crate::plan::TASK_IDENTITY),
                value: 1,
            }))
        };
        let metrics = GetJobMetricsResult {
            stages: vec![JobStageMetrics {
                stage_id: 1,
                partitions: 2,
                operators: vec![
                    // Its text names another task: the identity count decides.
                    operator(
                        "TaskBoundaryExec",
                        "TaskBoundaryExec: task=other",
                        vec![
                            identity("extract"),
                            metric(Metric::OutputRows(7)),
                            metric(Metric::OutputRows(5)),
                            metric(Metric::OutputBytes(100)),
                        ],
                    ),
                    // Another operator with the same count is not a boundary.
                    operator(
                        "ProjectionExec",
                        "TaskBoundaryExec: task=extract",
                        vec![identity("extract"), metric(Metric::OutputRows(1000))],
                    ),
                ],
            }],
        };
        let figures = boundary_metrics(&metrics);
        assert_eq!(figures.len(), 1, "{figures:?}");
        let extract = &figures["extract"];
        assert_eq!(
            (extract.rows, extract.bytes, extract.partitions),
            (12, 100, 2)
        );
    }
}
