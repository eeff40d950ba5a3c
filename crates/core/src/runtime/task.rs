//! Tasks: named, versioned units of work whose calls are recorded as task runs.

use std::future::Future;
use std::sync::Arc;

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::logical_expr::{Extension, LogicalPlan};
use datafusion::prelude::CsvReadOptions;
use tracing::Instrument;

use crate::checkpoint::lineage::Lineage;
use crate::checkpoint::{
    self, CachePolicy, CheckpointFormat, CheckpointStore, Outcome, Persist, Persisted,
};
use crate::plan::boundary::TaskBoundary;
use crate::record::{TaskRunRecord, TaskState};
use crate::runtime::flow::FlowRunShared;
use crate::runtime::run::{TaskHooks, TaskRunState};
use crate::seam::TaskHandle;
use crate::{
    Error, ExecutionMode, Frame, FrameInfo, ParquetRead, Result, Retry, Session, WriteSummary,
};

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
///         .run(|_cx| {
///             let df = df.clone(); // the body runs again on a retry
///             async move { df.with_column("n2", col("n") * lit(2)) }
///         })
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
    config: TaskConfig,
}

/// A task's settings, shared by its runs.
#[derive(Debug, Clone, Default)]
pub(crate) struct TaskConfig {
    version: Option<String>,
    retry: Option<Retry>,
    timeout: Option<std::time::Duration>,
    tags: Vec<String>,
    hooks: TaskHooks,
    persist: Option<Persist>,
    cache: Option<CachePolicy>,
    result_store: Option<String>,
    format: CheckpointFormat,
    parameters: serde_json::Map<String, serde_json::Value>,
}

impl Task {
    /// A task named `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            config: TaskConfig::default(),
        }
    }

    /// The task's code version, recorded in its runs and part of its cache key
    /// (`#[task]` sets a hash of the task's source; an explicit version overrides it).
    pub fn with_version(mut self, version: impl Into<String>) -> Self {
        self.config.version = Some(version.into());
        self
    }

    /// Checkpoints the task's output (a [`Frame`]) to the flow's result store, and
    /// reads it back instead of recomputing when the same cache key comes again. See
    /// [`Persist`] for the two modes and [`cache`](Self::cache) for the key.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> sluice_core::Result<()> {
    /// use sluice_core::*;
    /// let store = tempfile::tempdir().unwrap();
    /// let count = || async {
    ///     Flow::new("numbers")
    ///         .with_result_store(store.path().display().to_string())
    ///         .run(serde_json::json!({}), async {
    ///             let df = Task::new("numbers")
    ///                 .persist(Persist::Tee)
    ///                 .run(|cx| async move {
    ///                     cx.sql("SELECT * FROM (VALUES (1), (2), (3)) AS t(n)", []).await
    ///                 })
    ///                 .await?;
    ///             df.count().await
    ///         })
    ///         .await
    /// };
    /// let first = count().await;
    /// assert_eq!(first.record.tasks[0].state, TaskState::Completed);
    /// let second = count().await;
    /// assert_eq!(*second.output.as_ref().unwrap(), 3);
    /// assert_eq!(second.record.tasks[0].state, TaskState::Cached);
    /// # Ok(())
    /// # }
    /// ```
    pub fn persist(mut self, mode: Persist) -> Self {
        self.config.persist = Some(mode);
        self
    }

    /// How the task's cache key is made, when its checkpoint expires, whether to
    /// refresh it. Persists the task (in [`Persist::Tee`] mode) unless
    /// [`persist`](Self::persist) says otherwise.
    pub fn cache(mut self, policy: CachePolicy) -> Self {
        self.config.cache = Some(policy);
        self
    }

    /// Writes this task's checkpoints to `location` instead of the flow's result store.
    pub fn with_result_store(mut self, location: impl Into<String>) -> Self {
        self.config.result_store = Some(location.into());
        self
    }

    /// How the checkpoint's Parquet parts are encoded.
    pub fn with_checkpoint_format(mut self, format: CheckpointFormat) -> Self {
        self.config.format = format;
        self
    }

    /// Records a parameter of the call: it is part of the cache key (`#[task]`
    /// records every argument that is not a frame: frames enter the key through their
    /// lineage).
    pub fn with_parameter(mut self, name: impl Into<String>, value: serde_json::Value) -> Self {
        self.config.parameters.insert(name.into(), value);
        self
    }

    /// Retries the task when it fails with an error a new attempt may fix (see
    /// [`Error::is_retryable`]), like Prefect's `retries` / `retry_delay_seconds`.
    ///
    /// In lazy mode a task that returns a frame only builds a plan; its failures
    /// surface in the sink that runs it. The sink's task then runs its body again (so
    /// its plan runs again), spending a retry of the task that failed. A checkpoint
    /// committed upstream is read by the new attempt, not recomputed, and a destination
    /// the sink already published is not written again.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use std::sync::atomic::{AtomicU32, Ordering};
    /// use sluice_core::*;
    /// let calls = AtomicU32::new(0);
    /// let run = Flow::new("flaky")
    ///     .with_run_history(false)
    ///     .run(serde_json::json!({}), async {
    ///         Task::new("call_api")
    ///             .with_retries(Retry::new(2))
    ///             .run(|_cx| async {
    ///                 match calls.fetch_add(1, Ordering::SeqCst) {
    ///                     0 => Err(Error::retryable(std::io::Error::other("429"))),
    ///                     _ => Ok(7u64),
    ///                 }
    ///             })
    ///             .await
    ///     })
    ///     .await;
    /// assert_eq!(*run.output.as_ref().unwrap(), 7);
    /// let task = &run.record.tasks[0];
    /// assert_eq!(task.state, TaskState::Completed);
    /// assert_eq!(task.attempts.len(), 2);
    /// assert!(task.attempts[0].error.as_deref().unwrap().contains("429"));
    /// # }
    /// ```
    pub fn with_retries(mut self, retry: Retry) -> Self {
        self.config.retry = Some(retry);
        self
    }

    /// Fails the task with [`Error::Timeout`] when an attempt of its body runs longer
    /// than `limit`, or, in lazy mode, when one execution of its output (the streaming
    /// of its fragment, everything upstream included, inside whichever sink runs it)
    /// does. Building a lazy fragment takes no time; the time that counts is the
    /// streaming. The plans it ran are stopped and nothing partial is published. A
    /// timeout can be retried.
    pub fn with_timeout(mut self, limit: std::time::Duration) -> Self {
        self.config.timeout = Some(limit);
        self
    }

    /// Tags the task, for the flow's per-tag concurrency limits
    /// ([`FlowOptions::with_tag_concurrency`](crate::FlowOptions::with_tag_concurrency)):
    /// `Task::new("fetch").with_tag("api")`.
    pub fn with_tag(mut self, tag: impl Into<String>) -> Self {
        self.config.tags.push(tag.into());
        self
    }

    /// Calls `hook` with the run's record when the run completes (or is read from a
    /// checkpoint). Hooks run once per run, on the thread that ended it: keep them short.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use std::sync::{Arc, Mutex};
    /// use sluice_core::*;
    /// let seen = Arc::new(Mutex::new(Vec::new()));
    /// let log = Arc::clone(&seen);
    /// let _ = Task::new("answer")
    ///     .on_completion(move |record| log.lock().unwrap().push(record.name.clone()))
    ///     .run(|_cx| async { Ok(42u64) })
    ///     .await;
    /// assert_eq!(*seen.lock().unwrap(), ["answer"]);
    /// # }
    /// ```
    pub fn on_completion(mut self, hook: impl Fn(&TaskRunRecord) + Send + Sync + 'static) -> Self {
        self.config.hooks.completion.push(Arc::new(hook));
        self
    }

    /// Calls `hook` with the run's record when the run fails (after its last retry).
    pub fn on_failure(mut self, hook: impl Fn(&TaskRunRecord) + Send + Sync + 'static) -> Self {
        self.config.hooks.failure.push(Arc::new(hook));
        self
    }

    /// Calls `hook` with the run's record when the run is cancelled (the flow run was
    /// cancelled or timed out while it ran, or its output stream was dropped).
    pub fn on_cancellation(
        mut self,
        hook: impl Fn(&TaskRunRecord) + Send + Sync + 'static,
    ) -> Self {
        self.config.hooks.cancellation.push(Arc::new(hook));
        self
    }

    /// Runs `body` as one run of this task, inside the current flow run (or a one-off
    /// run when called outside any flow). The body is called again for each retry
    /// ([`with_retries`](Self::with_retries)), so it is `FnMut`: clone what it moves.
    pub async fn run<T, F, Fut>(self, mut body: F) -> Result<T>
    where
        T: TaskOutput,
        F: FnMut(TaskContext) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let flow = FlowRunShared::current_or_ad_hoc(&self.name);
        let run = TaskRunState::with_settings(
            &self.name,
            self.config.version.clone(),
            self.config.retry.clone(),
            self.config.timeout,
            self.config.hooks.clone(),
        );
        flow.add_task(Arc::clone(&run));
        let timeout = self.config.timeout;
        let tags = self.config.tags.clone();
        // A call nested in another task's body takes no permit: the outer one holds one.
        let nested = crate::seam::current().is_some();
        let cx = TaskContext {
            flow: Arc::clone(&flow),
            run: Arc::clone(&run),
            config: Arc::new(self.config),
            attempt: 1,
        };
        let span = tracing::info_span!("task.run", task = %self.name, flow_run = %flow.run_id, task_run = run.id);
        let mut attempt = 1;
        loop {
            let start = chrono::Utc::now();
            let started = std::time::Instant::now();
            let cx = TaskContext {
                attempt,
                ..cx.clone()
            };
            // Pending until the flow's limits let it start (not part of its timeout).
            let _permits = if nested {
                Vec::new()
            } else {
                flow.limits.acquire(&tags).await
            };
            let work = async {
                run.start();
                // Before the body: a name that cannot be a key component is refused
                // before anything is read or written, persisted or not (the task may
                // be persisted by the next edit, and names show in records and logs).
                crate::names::validate_name("task name", &self.name)?;
                tracing::debug!(attempt, "task run started");
                let output = body(cx.clone()).await?;
                output.finish(&cx).await
            };
            let work = crate::seam::scope(run.handle(), work.instrument(span.clone()));
            let result = match timeout {
                Some(limit) => tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
                    Err(Error::Timeout {
                        scope: "task",
                        name: self.name.clone(),
                        limit,
                    })
                }),
                None => work.await,
            };
            match result {
                Ok(output) => {
                    if run.records_attempts() {
                        run.attempt(attempt, start, started.elapsed(), None, false);
                    }
                    run.body_done();
                    return Ok(output);
                }
                Err(error) => {
                    if let Some(delay) = retry_of(&flow, &run, &error) {
                        let next = attempt + 1;
                        run.attempt(attempt, start, started.elapsed(), Some(&error), true);
                        tracing::warn!(parent: &span, task = %self.name, attempt, next, delay_ms = delay.as_millis() as u64, error = %error, "task attempt failed; retrying");
                        tokio::time::sleep(delay).await;
                        attempt = next;
                        continue;
                    }
                    if run.records_attempts() {
                        run.attempt(attempt, start, started.elapsed(), Some(&error), false);
                    }
                    match error.task() {
                        Some(upstream) if upstream != self.name => {
                            run.fail(&Error::UpstreamFailed {
                                task: self.name.clone(),
                                upstream: upstream.to_string(),
                            })
                        }
                        _ => run.fail(&error),
                    }
                    return Err(error.in_task(&self.name));
                }
            }
        }
    }
}

/// Whether a failed attempt of `run` is retried, and when: by this task's own retries
/// when the error is its own, or by the retries of the upstream task it is attributed
/// to (a lazy task whose output failed while this task's sink streamed it: rerunning
/// this body reruns that plan). Returns the delay before the next attempt.
fn retry_of(
    flow: &FlowRunShared,
    run: &TaskRunState,
    error: &Error,
) -> Option<std::time::Duration> {
    if !error.is_retryable() {
        return None;
    }
    let own = || {
        let (_, delay) = run.take_retry()?;
        Some(delay)
    };
    match error.task() {
        Some(upstream) if upstream != run.name => flow
            .task_run(upstream)
            .and_then(|upstream| upstream.take_retry().map(|(_, delay)| delay))
            .or_else(own),
        _ => own(),
    }
}

/// What a task body sees: its flow run, its session, and readers that record the
/// sources they open.
#[derive(Debug, Clone)]
pub struct TaskContext {
    flow: Arc<FlowRunShared>,
    run: Arc<TaskRunState>,
    config: Arc<TaskConfig>,
    attempt: u32,
}

/// Where and how a persisted task's checkpoint goes.
struct Persistence {
    mode: Persist,
    policy: CachePolicy,
    store: String,
}

impl TaskContext {
    /// The task's persistence, if it is persisted and the flow uses checkpoints.
    fn persistence(&self) -> Option<Persistence> {
        let config = &self.config;
        if !self.flow.checkpoints || (config.persist.is_none() && config.cache.is_none()) {
            return None;
        }
        Some(Persistence {
            mode: config.persist.unwrap_or_default(),
            policy: config.cache.clone().unwrap_or_default(),
            store: config
                .result_store
                .clone()
                .or_else(|| self.flow.result_store.clone())
                .unwrap_or_else(|| DEFAULT_RESULT_STORE.to_string()),
        })
    }

    /// The store that caches source schemas: the flow's result store, when set.
    fn schema_cache(&self) -> Option<CheckpointStore> {
        if !self.flow.checkpoints {
            return None;
        }
        let location = self.flow.result_store.as_ref()?;
        CheckpointStore::open(&self.flow.session, location).ok()
    }
}

/// Where checkpoints go when neither the task nor the flow names a store.
pub const DEFAULT_RESULT_STORE: &str = ".sluice/";

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

    /// Which attempt of the task this is: 1, then 2 for the first retry.
    pub fn attempt(&self) -> u32 {
        self.attempt
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

    /// A lazy frame over Parquet data; see [`Session::read_parquet`]. When the flow
    /// has a result store, the source's schema is cached there by the identity of the
    /// objects listed, so a later run whose tasks hit their checkpoints reads no
    /// footer either.
    pub async fn read_parquet(&self, location: &str) -> Result<Frame> {
        self.read_parquet_with(location, ParquetRead::default())
            .await
    }

    /// [`read_parquet`](Self::read_parquet) with options; see
    /// [`Session::read_parquet_with`]. The options are part of the read's identity:
    /// a checkpoint made from a case-insensitive read is not reused for a
    /// case-sensitive one, nor is a cached schema.
    pub async fn read_parquet_with(&self, location: &str, options: ParquetRead) -> Result<Frame> {
        let frame = self
            .flow
            .session
            .read_parquet_with_schema_cache(location, &options, self.schema_cache().as_ref())
            .await?;
        self.run.set_sources(frame.sources());
        if self.flow.progress != crate::Progress::Off
            && let Some(rows) = frame.footer_rows().await
        {
            self.run.set_expected_rows(rows);
        }
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
        let name = cx.run.name.clone();
        let version = cx.config.version.clone();
        let parameters = serde_json::Value::Object(cx.config.parameters.clone());
        let task = cx.run.handle();
        let Some(persistence) = cx.persistence() else {
            // Not persisted: the key downstream tasks see is computed only if one of
            // them needs it.
            let lineage = Lineage::task(&name, version, parameters, self.lineage(), None, None);
            let plan = boundary(&task, self.sources().to_vec(), self.logical_plan().clone());
            return deliver(cx, self.with_plan_and_lineage(plan, lineage)).await;
        };
        let session = cx.session();
        let decision = checkpoint::decide(Persisted {
            task: &task,
            version,
            parameters,
            lineage: self.lineage(),
            plan: self.logical_plan(),
            sources: self.sources(),
            schema: self.schema(),
            mode: persistence.mode,
            policy: &persistence.policy,
            store: CheckpointStore::open(session, &persistence.store)?,
            format: cx.config.format,
            context: session.context(),
            settings: crate::checkpoint::key::settings(session.state().config_options()),
            functions: &|used| session.function_version(used),
            flow_run: &cx.flow.run_id,
            clock: &cx.flow.clock,
        })
        .await?;
        cx.run.set_cache(&decision.key, decision.record);
        match decision.outcome {
            Outcome::Hit {
                plan,
                sources,
                lineage,
            } => {
                cx.run.cached();
                let frame = Frame::from_plan(session.clone(), plan, sources, lineage);
                deliver(cx, frame).await
            }
            Outcome::Tee { plan, lineage } => {
                deliver(cx, self.with_plan_and_lineage(plan, lineage)).await
            }
            Outcome::Barrier(barrier) => {
                cx.run.expect_stream();
                let teed = self.with_plan_and_lineage(barrier.plan.clone(), self.lineage().clone());
                teed.drain().await?;
                let (plan, lineage) = barrier.read_back(session.context()).await?;
                let frame =
                    Frame::from_plan(session.clone(), plan, self.sources().to_vec(), lineage);
                deliver(cx, frame).await
            }
        }
    }
}

/// A task boundary for `task` over `input` (a task that is not persisted).
fn boundary(task: &TaskHandle, sources: Vec<String>, input: LogicalPlan) -> LogicalPlan {
    LogicalPlan::Extension(Extension {
        node: Arc::new(TaskBoundary {
            task: task.clone(),
            sources: sources.into(),
            checkpoint: None,
            input,
        }),
    })
}

/// Hands a task's output frame on: lazily, or collected in memory in eager mode.
async fn deliver(cx: &TaskContext, frame: Frame) -> Result<Frame> {
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
