//! Tasks: named, versioned units of work whose calls are recorded as task runs.

use std::future::Future;
use std::sync::Arc;

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::logical_expr::{Extension, LogicalPlan};
use datafusion::prelude::CsvReadOptions;
use tracing::Instrument;

use crate::boundary::TaskBoundary;
use crate::flow::FlowRunShared;
use crate::run::{TaskRunState, TaskState};
use crate::{Error, ExecutionMode, Frame, FrameInfo, Result, Session, WriteSummary};

/// A named task. `#[task]` expands to this; without macros, call [`Task::run`] with the
/// task's body.
///
/// Inside a flow, each call is recorded as a task run. A body that returns a
/// [`Frame`] returns a plan fragment: in lazy mode nothing runs until a sink consumes
/// it, and the run stays `Running` until its output has streamed past; in eager mode
/// the frame is collected in memory before the call returns.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> sluice_core::Result<()> {
/// use sluice_core::{Frame, Task, col, lit};
///
/// async fn double(df: Frame) -> sluice_core::Result<Frame> {
///     Task::new("double")
///         .run(|_cx| async move { df.with_column("n2", col("n") * lit(2)) })
///         .await
/// }
/// let session = sluice_core::Session::new();
/// let df = session.sql("SELECT * FROM (VALUES (1), (2)) AS t(n)", []).await?;
/// let out = double(df).await?;
/// assert_eq!(out.columns(), vec!["n", "n2"]);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Task {
    name: String,
    version: Option<String>,
}

impl Task {
    /// A task named `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            version: None,
        }
    }

    /// The task's code version, recorded in its runs (`#[task]` sets a hash of the
    /// task's source).
    pub fn with_version(mut self, version: impl Into<String>) -> Self {
        self.version = Some(version.into());
        self
    }

    /// Runs `body` as one run of this task, inside the current flow run (or a one-off
    /// run when called outside any flow).
    pub async fn run<T, F, Fut>(self, body: F) -> Result<T>
    where
        T: TaskOutput,
        F: FnOnce(TaskContext) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let flow = FlowRunShared::current_or_ad_hoc(&self.name);
        let run = TaskRunState::new(&self.name, self.version);
        flow.add_task(Arc::clone(&run));
        let cx = TaskContext {
            flow: Arc::clone(&flow),
            run: Arc::clone(&run),
        };
        let span = tracing::info_span!("task.run", task = %self.name, flow_run = %flow.run_id);
        let result = async {
            run.start();
            tracing::debug!("task run started");
            let output = body(cx.clone()).await?;
            output.finish(&cx).await
        }
        .instrument(span)
        .await;
        match result {
            Ok(output) => {
                run.body_done();
                Ok(output)
            }
            Err(error) => {
                match error.task() {
                    Some(upstream) if upstream != self.name => run.fail(&Error::UpstreamFailed {
                        task: self.name.clone(),
                        upstream: upstream.to_string(),
                    }),
                    _ => run.fail(&error),
                }
                Err(error.in_task(&self.name))
            }
        }
    }
}

/// What a task body sees: its flow run, its session, and readers that record the
/// sources they open.
#[derive(Debug, Clone)]
pub struct TaskContext {
    flow: Arc<FlowRunShared>,
    run: Arc<TaskRunState>,
}

impl TaskContext {
    /// The task's name.
    pub fn task_name(&self) -> &str {
        &self.run.name
    }

    /// The flow's name.
    pub fn flow_name(&self) -> &str {
        &self.flow.name
    }

    /// The flow run's id.
    pub fn flow_run_id(&self) -> &str {
        &self.flow.run_id
    }

    /// The flow's execution mode.
    pub fn mode(&self) -> ExecutionMode {
        self.flow.mode
    }

    /// The session the flow runs in.
    pub fn session(&self) -> &Session {
        &self.flow.session
    }

    /// The current state of this task run.
    pub fn state(&self) -> TaskState {
        self.run.state()
    }

    /// A lazy frame over Parquet data; see [`Session::read_parquet`].
    pub async fn read_parquet(&self, location: &str) -> Result<Frame> {
        let frame = self.flow.session.read_parquet(location).await?;
        self.run.set_sources(frame.sources());
        Ok(frame)
    }

    /// A lazy frame over CSV data; see [`Session::read_csv`].
    pub async fn read_csv(&self, location: &str, options: CsvReadOptions<'_>) -> Result<Frame> {
        let frame = self.flow.session.read_csv(location, options).await?;
        self.run.set_sources(frame.sources());
        Ok(frame)
    }

    /// A lazy frame over newline-delimited JSON; see [`Session::read_json`].
    pub async fn read_json(&self, location: &str) -> Result<Frame> {
        let frame = self.flow.session.read_json(location).await?;
        self.run.set_sources(frame.sources());
        Ok(frame)
    }

    /// A frame defined by SQL over frames by name; see [`Session::sql`].
    pub async fn sql<'a>(
        &self,
        query: &str,
        frames: impl IntoIterator<Item = (&'a str, &'a Frame)>,
    ) -> Result<Frame> {
        self.flow.session.sql(query, frames).await
    }
}

/// What a task may return. A [`Frame`] gets a boundary node (lazy mode) or is collected
/// (eager mode); sink results record their figures; other values pass through.
///
/// Implement it with the default method for your own types: `impl TaskOutput for MyType {}`.
pub trait TaskOutput: Sized + Send {
    /// Finishes the task's output once the body has returned.
    fn finish(self, cx: &TaskContext) -> impl Future<Output = Result<Self>> + Send {
        let _ = cx;
        async move { Ok(self) }
    }
}

impl TaskOutput for Frame {
    async fn finish(self, cx: &TaskContext) -> Result<Self> {
        cx.run.set_sources(self.sources());
        let boundary = LogicalPlan::Extension(Extension {
            node: Arc::new(TaskBoundary {
                run: Arc::clone(&cx.run),
                sources: self.sources().to_vec().into(),
                input: self.logical_plan().clone(),
            }),
        });
        let frame = self.with_plan(boundary);
        match cx.mode() {
            ExecutionMode::Lazy => {
                cx.run.expect_stream();
                Ok(frame)
            }
            ExecutionMode::Eager => {
                let (collected, rows, bytes) = frame.materialize().await?;
                tracing::debug!(task = %cx.task_name(), rows, bytes, "collected task output");
                Ok(collected)
            }
        }
    }
}

impl TaskOutput for WriteSummary {
    async fn finish(self, cx: &TaskContext) -> Result<Self> {
        cx.run.record_written(self.rows, self.bytes);
        Ok(self)
    }
}

impl TaskOutput for Vec<RecordBatch> {
    async fn finish(self, cx: &TaskContext) -> Result<Self> {
        let rows = self.iter().map(|b| b.num_rows() as u64).sum();
        let bytes = self.iter().map(|b| b.get_array_memory_size() as u64).sum();
        cx.run.record_written(rows, bytes);
        Ok(self)
    }
}

impl TaskOutput for FrameInfo {}
impl TaskOutput for () {}
impl TaskOutput for bool {}
impl TaskOutput for String {}
impl TaskOutput for u64 {}
impl TaskOutput for usize {}
impl TaskOutput for i64 {}
impl TaskOutput for f64 {}
impl TaskOutput for serde_json::Value {}

impl<T: TaskOutput> TaskOutput for Option<T> {
    async fn finish(self, cx: &TaskContext) -> Result<Self> {
        match self {
            Some(value) => Ok(Some(value.finish(cx).await?)),
            None => Ok(None),
        }
    }
}

impl<T: TaskOutput> TaskOutput for Vec<T>
where
    T: Sync,
{
    async fn finish(self, cx: &TaskContext) -> Result<Self> {
        let mut out = Vec::with_capacity(self.len());
        for value in self {
            out.push(value.finish(cx).await?);
        }
        Ok(out)
    }
}

impl<A: TaskOutput, B: TaskOutput> TaskOutput for (A, B) {
    async fn finish(self, cx: &TaskContext) -> Result<Self> {
        Ok((self.0.finish(cx).await?, self.1.finish(cx).await?))
    }
}

impl<A: TaskOutput, B: TaskOutput, C: TaskOutput> TaskOutput for (A, B, C) {
    async fn finish(self, cx: &TaskContext) -> Result<Self> {
        Ok((
            self.0.finish(cx).await?,
            self.1.finish(cx).await?,
            self.2.finish(cx).await?,
        ))
    }
}
