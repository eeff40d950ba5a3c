//! Task boundaries: a thin pass-through node at the end of each task's fragment.
//!
//! After planning, the plan of a lazy flow is one DataFusion plan, and the tasks would
//! vanish in it. A `TaskBoundary` (logical) / [`TaskBoundaryExec`] (physical) marks
//! where a task's output leaves it, so that a streaming run still records per-task rows,
//! bytes and time, and an error is attributed to the first task it passes through.
//!
//! The boundary does not block the optimizer: it passes projections down (it declares
//! that it needs exactly the columns its parent needs), lets every filter through and
//! lets limits through, so projection and predicate push-down still reach the scan.

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::Session as DfSession;
use datafusion::common::config::ConfigOptions;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{
    Expr, LogicalPlan, UserDefinedLogicalNode, UserDefinedLogicalNodeCore,
};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::execution_plan::CardinalityEffect;
use datafusion::physical_plan::filter_pushdown::{FilterDescription, FilterPushdownPhase};
use datafusion::physical_plan::metrics::{
    BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet, RecordOutput,
};
use datafusion::physical_plan::{
    ChildStats, DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, Statistics,
    StatisticsArgs,
};
use datafusion::physical_planner::{ExtensionPlanner, PhysicalPlanner};
use futures::{Future, Stream};

use crate::Error;
use crate::error::panic_message;
use crate::seam::{Execution, Partition, StreamEnd, TaskHandle};

/// The logical boundary node at the end of a task's fragment.
#[derive(Debug, Clone)]
pub(crate) struct TaskBoundary {
    pub(crate) task: TaskHandle,
    pub(crate) sources: Arc<[String]>,
    /// Set when the input is a scan of the task's checkpoint (a cache hit).
    pub(crate) checkpoint: Option<Arc<dyn CheckpointSource>>,
    pub(crate) input: LogicalPlan,
}

crate::plan::single_input_node!(TaskBoundary, task_id);

impl TaskBoundary {
    /// The task run whose output this node marks: two boundaries over one input differ
    /// by it.
    fn task_id(&self) -> u64 {
        self.task.id()
    }
}

impl UserDefinedLogicalNodeCore for TaskBoundary {
    crate::plan::single_input_logical!("TaskBoundary");

    fn prevent_predicate_push_down_columns(&self) -> std::collections::HashSet<String> {
        // A pass-through: every filter may move below it.
        std::collections::HashSet::new()
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "TaskBoundary: task={}", self.task.name())
    }

    fn with_exprs_and_inputs(&self, _exprs: Vec<Expr>, inputs: Vec<LogicalPlan>) -> DfResult<Self> {
        let input = crate::plan::only_one("TaskBoundary", inputs)?;
        Ok(Self {
            task: self.task.clone(),
            sources: Arc::clone(&self.sources),
            checkpoint: self.checkpoint.clone(),
            input,
        })
    }

    fn necessary_children_exprs(&self, output_columns: &[usize]) -> Option<Vec<Vec<usize>>> {
        // The output schema is the input schema: column i out needs column i in.
        Some(vec![output_columns.to_vec()])
    }

    fn supports_limit_pushdown(&self) -> bool {
        true
    }
}

/// The physical boundary: passes batches through unchanged, counting them into the
/// task's run record and into DataFusion metrics (`output_rows`, `output_bytes`,
/// `elapsed_compute`: they show in `EXPLAIN ANALYZE`, and a cluster's executors report
/// them back, beside the count `sluice_task=NAME` that says whose they are), and
/// attributes errors to the task.
#[derive(Debug)]
pub struct TaskBoundaryExec {
    input: Arc<dyn ExecutionPlan>,
    /// The task run whose output this node counts.
    pub(crate) task: TaskHandle,
    /// The sources errors are attributed to.
    pub(crate) sources: Arc<[String]>,
    /// The task's checkpoint this node reads (a cache hit).
    pub(crate) checkpoint: Option<Arc<dyn CheckpointSource>>,
    properties: Arc<PlanProperties>,
    /// This plan instance's execution, started when its first partition starts.
    execution: std::sync::OnceLock<Arc<Execution>>,
    metrics: ExecutionPlanMetricsSet,
}

impl TaskBoundaryExec {
    pub(crate) fn new(
        input: Arc<dyn ExecutionPlan>,
        task: TaskHandle,
        sources: Arc<[String]>,
        checkpoint: Option<Arc<dyn CheckpointSource>>,
    ) -> Self {
        let properties = Arc::clone(input.properties());
        Self {
            input,
            task,
            sources,
            checkpoint,
            properties,
            execution: std::sync::OnceLock::new(),
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }

    /// The name of the task whose output this node counts.
    pub fn task_name(&self) -> &str {
        self.task.name()
    }

    #[cfg(feature = "ballista")]
    /// Counts into partition `partition`'s metrics what a column copy on an executor
    /// moved past this boundary without running it: `rows`, `bytes` (in memory, as
    /// the row groups' footers say) in `nanos`.
    pub(crate) fn count_copied(&self, partition: usize, rows: u64, bytes: u64, nanos: u64) {
        use datafusion::physical_plan::metrics::MetricBuilder;
        crate::plan::count_identity(
            &self.metrics,
            crate::plan::TASK_IDENTITY,
            self.task.name(),
            partition,
        );
        MetricBuilder::new(&self.metrics)
            .output_rows(partition)
            .add(rows as usize);
        MetricBuilder::new(&self.metrics)
            .output_bytes(partition)
            .add(bytes as usize);
        MetricBuilder::new(&self.metrics)
            .elapsed_compute(partition)
            .add_duration(std::time::Duration::from_nanos(nanos));
    }
}

impl DisplayAs for TaskBoundaryExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "TaskBoundaryExec: task={}", self.task.name())
    }
}

impl ExecutionPlan for TaskBoundaryExec {
    crate::plan::single_child_exec!("TaskBoundaryExec");

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let input = crate::plan::only_one("TaskBoundaryExec", children)?;
        Ok(Arc::new(Self::new(
            input,
            self.task.clone(),
            Arc::clone(&self.sources),
            self.checkpoint.clone(),
        )))
    }

    fn execute(
        &self,
        partition_index: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let input = self
            .input
            .execute(partition_index, context)
            .map_err(|e| self.attribute(e))?;
        let execution = self.execution.get_or_init(|| {
            self.task.execution(
                self.properties.partitioning.partition_count(),
                self.checkpoint.is_some(),
            )
        });
        let partition = self.task.partition(execution);
        crate::plan::count_identity(
            &self.metrics,
            crate::plan::TASK_IDENTITY,
            self.task.name(),
            partition_index,
        );
        let deadline = partition
            .deadline()
            .map(|at| Box::pin(tokio::time::sleep_until(tokio::time::Instant::from_std(at))));
        Ok(Box::pin(BoundaryStream {
            baseline: BaselineMetrics::new(&self.metrics, partition_index),
            schema: self.input.schema(),
            input,
            sources: Arc::clone(&self.sources),
            checkpoint: self.checkpoint.clone(),
            partition,
            deadline,
            input_done: false,
        }))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn child_stats_requests(&self, partition: Option<usize>) -> Vec<ChildStats> {
        vec![ChildStats::At(partition)]
    }

    fn statistics_from_inputs(
        &self,
        input_stats: &[Arc<Statistics>],
        _args: &StatisticsArgs,
    ) -> DfResult<Arc<Statistics>> {
        crate::plan::only_one("TaskBoundaryExec", input_stats.to_vec())
    }

    fn supports_limit_pushdown(&self) -> bool {
        true
    }

    fn cardinality_effect(&self) -> CardinalityEffect {
        CardinalityEffect::Equal
    }

    fn gather_filters_for_pushdown(
        &self,
        _phase: FilterPushdownPhase,
        parent_filters: Vec<Arc<dyn PhysicalExpr>>,
        _config: &ConfigOptions,
    ) -> DfResult<FilterDescription> {
        FilterDescription::from_children(parent_filters, &self.children())
    }
}

impl TaskBoundaryExec {
    /// `error`, reached at this boundary, attributed to its task.
    pub(crate) fn attribute(&self, error: DataFusionError) -> DataFusionError {
        attribute(&self.task, &self.sources, self.checkpoint.as_deref(), error)
    }
}

/// Attributes an error that reached a boundary. Over a checkpoint's scan, the
/// checkpoint judges it first (a block that does not match its checksum, a missing
/// part, a page that does not decode make it corrupt; a store failing is no judgement
/// on it); any other error is attributed by the seam ([`TaskHandle::attribute`]).
pub(crate) fn attribute(
    task: &TaskHandle,
    sources: &[String],
    checkpoint: Option<&dyn CheckpointSource>,
    error: DataFusionError,
) -> DataFusionError {
    if let Some(checkpoint) = checkpoint
        && let Some(reason) = checkpoint.corruption(&error)
    {
        return task.leaving(checkpoint.corrupt(task, reason).into());
    }
    task.attribute(sources, error)
}

/// The checkpoint a cache hit's boundary reads (see [`crate::checkpoint`]): what the
/// boundary asks of it when an error comes up from under it.
pub(crate) trait CheckpointSource: std::any::Any + fmt::Debug + Send + Sync {
    /// Why `error`, raised while the checkpoint was read, shows it corrupt; `None`
    /// when it does not (the store failing: unreachable, throttled).
    fn corruption(&self, error: &DataFusionError) -> Option<String>;
    /// The checkpoint turned out corrupt: invalidates it, fails `task`, and returns
    /// the error to raise.
    fn corrupt(&self, task: &TaskHandle, reason: String) -> crate::Error;
    /// The checkpoint's parts, in the manifest's order, as the column copy reads them:
    /// each with the footer the lookup read and checked. `None` when a part's footer
    /// was not read (a checkpoint this run has just written).
    fn parts(&self) -> Option<Vec<CheckpointPart>>;
    /// Whether [`read_ranges`](Self::read_ranges) checks every byte against the
    /// manifest's checksums (not when the flow turned verification off).
    fn verified(&self) -> bool;
    /// Whether a Parquet sink over the checkpoint encodes its rows again rather than
    /// copying its row groups (the manifest's `reencode`).
    fn reencode(&self) -> bool;
    /// Byte ranges of the part at `location`, each checked against the manifest's
    /// checksums before it is handed over (as the scan's reads are), unless
    /// verification is off.
    fn read_ranges<'a>(
        &'a self,
        location: &'a object_store::path::Path,
        ranges: &'a [std::ops::Range<u64>],
    ) -> futures::future::BoxFuture<'a, DfResult<Vec<bytes::Bytes>>>;
}

/// A part of a checkpoint, as the column copy reads it (see
/// [`CheckpointSource::parts`]).
#[derive(Debug, Clone)]
pub(crate) struct CheckpointPart {
    /// The part's URL, for errors.
    pub(crate) url: String,
    pub(crate) location: object_store::path::Path,
    /// Its footer, as the lookup read and checked it.
    pub(crate) metadata: Arc<parquet::file::metadata::ParquetMetaData>,
}

struct BoundaryStream {
    /// Rows, batches and bytes out and time spent, as DataFusion metrics.
    baseline: BaselineMetrics,
    schema: SchemaRef,
    input: SendableRecordBatchStream,
    sources: Arc<[String]>,
    /// The checkpoint this stream reads, on a cache hit (its bytes are checked as they
    /// are read: see `checkpoint::read`).
    checkpoint: Option<Arc<dyn CheckpointSource>>,
    /// This partition of the task's execution, reported through the seam (dropped
    /// before its end, it reports so).
    partition: Partition,
    /// When this execution times out (the task's timeout after it started).
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    input_done: bool,
}

impl BoundaryStream {
    fn attribute(&self, error: DataFusionError) -> DataFusionError {
        attribute(
            self.partition.task(),
            &self.sources,
            self.checkpoint.as_deref(),
            error,
        )
    }

    /// The input has ended.
    fn poll_end(&mut self) -> Poll<Option<DfResult<RecordBatch>>> {
        self.partition.end(StreamEnd::Ended);
        Poll::Ready(None)
    }
}

impl Stream for BoundaryStream {
    type Item = DfResult<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.partition.is_closed() {
            return Poll::Ready(None);
        }
        if let Some(deadline) = self.deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            let error = self.partition.task().timed_out();
            let error = self.attribute(DataFusionError::External(Box::new(error)));
            self.partition.end(StreamEnd::Failed);
            return Poll::Ready(Some(Err(error)));
        }
        if self.input_done {
            return self.poll_end();
        }
        let started = Instant::now();
        // A malformed file can make a decoder panic (an upstream bug): turn the panic into
        // this task's error instead of tearing down the caller.
        let polled = match std::panic::catch_unwind(AssertUnwindSafe(|| {
            self.input.as_mut().poll_next(cx)
        })) {
            Ok(polled) => polled,
            Err(payload) => {
                let cause = DataFusionError::Execution(format!(
                    "execution panicked: {}",
                    panic_message(payload.as_ref())
                ));
                let error = if self.sources.is_empty() {
                    Error::Execution { source: cause }
                } else {
                    Error::Read {
                        sources: self.sources.to_vec(),
                        source: cause,
                    }
                };
                Poll::Ready(Some(Err(error.into())))
            }
        };
        let nanos = started.elapsed().as_nanos() as u64;
        self.baseline
            .elapsed_compute()
            .add_duration(std::time::Duration::from_nanos(nanos));
        match polled {
            Poll::Ready(Some(Ok(batch))) => {
                let batch = batch.record_output(&self.baseline);
                self.partition.add_output(
                    batch.num_rows() as u64,
                    batch.get_array_memory_size() as u64,
                    nanos,
                );
                Poll::Ready(Some(Ok(batch)))
            }
            Poll::Ready(Some(Err(error))) => {
                self.partition.add_output(0, 0, nanos);
                let error = self.attribute(error);
                self.partition.end(StreamEnd::Failed);
                Poll::Ready(Some(Err(error)))
            }
            Poll::Ready(None) => {
                self.partition.add_output(0, 0, nanos);
                self.input_done = true;
                self.poll_end()
            }
            Poll::Pending => {
                self.partition.add_output(0, 0, nanos);
                Poll::Pending
            }
        }
    }
}

impl RecordBatchStream for BoundaryStream {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }
}

/// Plans [`TaskBoundary`] nodes as [`TaskBoundaryExec`].
#[derive(Debug)]
pub(crate) struct BoundaryPlanner;

#[async_trait]
impl ExtensionPlanner for BoundaryPlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        _session: &dyn DfSession,
        _planning_ctx: &datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext,
    ) -> DfResult<Option<Arc<dyn ExecutionPlan>>> {
        let Some(boundary) = node.as_any().downcast_ref::<TaskBoundary>() else {
            return Ok(None);
        };
        let input = crate::plan::only_one("TaskBoundary", physical_inputs.to_vec())?;
        Ok(Some(Arc::new(TaskBoundaryExec::new(
            input,
            boundary.task.clone(),
            Arc::clone(&boundary.sources),
            boundary.checkpoint.clone(),
        ))))
    }
}
