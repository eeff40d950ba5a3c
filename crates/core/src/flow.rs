//! Flows: a named function of tasks; one call is a flow run with an id, parameters and a
//! record of its task runs.

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use chrono::{DateTime, Utc};
use futures::FutureExt;
use tokio::task::futures::TaskLocalFuture;
use tracing::Instrument;
use tracing::instrument::Instrumented;

use crate::run::{FlowRunRecord, FlowState, TaskRunState};
use crate::{Clock, ExecutionMode, Result, Session};

tokio::task_local! {
    static CURRENT_FLOW: Arc<FlowRunShared>;
}

/// The live state of a flow run, shared with the tasks it calls.
#[derive(Debug)]
pub(crate) struct FlowRunShared {
    pub(crate) name: String,
    pub(crate) run_id: String,
    version: Option<String>,
    parameters: serde_json::Value,
    pub(crate) mode: ExecutionMode,
    pub(crate) session: Session,
    /// Where persisted tasks write checkpoints unless they name a store of their own.
    pub(crate) result_store: Option<String>,
    /// Whether persisted tasks read and write checkpoints at all.
    pub(crate) checkpoints: bool,
    pub(crate) clock: Clock,
    start: DateTime<Utc>,
    started: Instant,
    tasks: Mutex<Vec<Arc<TaskRunState>>>,
}

impl FlowRunShared {
    fn new(flow: &Flow, parameters: serde_json::Value) -> Arc<Self> {
        Arc::new(Self {
            name: flow.name.clone(),
            run_id: uuid::Uuid::new_v4().to_string(),
            version: flow.version.clone(),
            parameters,
            mode: flow.options.mode,
            session: flow.options.session.clone().unwrap_or_default(),
            result_store: flow.options.result_store.clone(),
            checkpoints: flow.options.checkpoints,
            clock: flow.options.clock.clone(),
            start: Utc::now(),
            started: Instant::now(),
            tasks: Mutex::new(Vec::new()),
        })
    }

    /// The flow run of the calling task, or a one-off run for a task called outside any
    /// flow (Prefect allows that too).
    pub(crate) fn current_or_ad_hoc(task: &str) -> Arc<Self> {
        CURRENT_FLOW
            .try_with(Arc::clone)
            .unwrap_or_else(|_| Self::new(&Flow::new(task), serde_json::Value::Null))
    }

    pub(crate) fn add_task(&self, run: Arc<TaskRunState>) {
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(run);
    }

    fn record(&self, state: FlowState, error: Option<String>, closing: bool) -> FlowRunRecord {
        let tasks = self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|t| t.snapshot(closing))
            .collect();
        let ended = state != FlowState::Running;
        FlowRunRecord {
            flow: self.name.clone(),
            run_id: self.run_id.clone(),
            state,
            mode: self.mode,
            version: self.version.clone(),
            parameters: self.parameters.clone(),
            start: self.start,
            end: ended.then(Utc::now),
            duration_ms: ended.then(|| self.started.elapsed().as_secs_f64() * 1e3),
            tasks,
            error,
        }
    }
}

/// How a flow runs: execution mode, session, and where persisted tasks keep their
/// checkpoints.
///
/// ```
/// use sluice_core::{ExecutionMode, FlowOptions};
/// let options = FlowOptions::default()
///     .with_mode(ExecutionMode::Eager)
///     .with_result_store("s3://my-bucket/sluice/");
/// # let _ = options;
/// ```
#[derive(Debug, Clone)]
pub struct FlowOptions {
    mode: ExecutionMode,
    session: Option<Session>,
    result_store: Option<String>,
    checkpoints: bool,
    clock: Clock,
}

impl Default for FlowOptions {
    fn default() -> Self {
        Self {
            mode: ExecutionMode::default(),
            session: None,
            result_store: None,
            checkpoints: true,
            clock: Clock::default(),
        }
    }
}

impl FlowOptions {
    /// Where persisted tasks write their checkpoints (a path or any store URL:
    /// `file://`, `s3://`, `memory://`), unless a task names its own; like Prefect's
    /// `result_storage`. Without it, checkpoints go to `.sluice/` in the working
    /// directory. Setting it also caches the schemas of the Parquet sources tasks read
    /// there (by source identity), so that a cache hit reads no source footer.
    pub fn with_result_store(mut self, location: impl Into<String>) -> Self {
        self.result_store = Some(location.into());
        self
    }

    /// Whether persisted tasks read and write checkpoints (default: yes). Off, every
    /// task runs as if unpersisted.
    pub fn with_checkpoints(mut self, enabled: bool) -> Self {
        self.checkpoints = enabled;
        self
    }

    /// The clock that checkpoint expiry is judged by (tests inject one).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Lazy (the default) or eager.
    pub fn with_mode(mut self, mode: ExecutionMode) -> Self {
        self.mode = mode;
        self
    }

    /// The session tasks read, plan and write in; by default a new one per run.
    pub fn with_session(mut self, session: Session) -> Self {
        self.session = Some(session);
        self
    }
}

/// A named flow. `#[flow]` expands to this; without macros, call [`Flow::run`] with
/// the flow's body.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use sluice_core::{Flow, FlowState, Task, TaskState};
///
/// let run = Flow::new("hello")
///     .run(serde_json::json!({"who": "world"}), async {
///         let n = Task::new("answer").run(|_cx| async { Ok(42u64) }).await?;
///         Ok(n)
///     })
///     .await;
/// assert_eq!(*run.output.as_ref().unwrap(), 42);
/// assert_eq!(run.record.state, FlowState::Completed);
/// assert_eq!(run.record.tasks[0].name, "answer");
/// assert_eq!(run.record.tasks[0].state, TaskState::Completed);
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Flow {
    name: String,
    version: Option<String>,
    options: FlowOptions,
}

impl Flow {
    /// A flow named `name`, with default options.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            version: None,
            options: FlowOptions::default(),
        }
    }

    /// The flow's code version, recorded in its runs.
    pub fn with_version(mut self, version: impl Into<String>) -> Self {
        self.version = Some(version.into());
        self
    }

    /// Replaces the options.
    pub fn with_options(mut self, options: FlowOptions) -> Self {
        self.options = options;
        self
    }

    /// Where persisted tasks write checkpoints; see [`FlowOptions::with_result_store`].
    pub fn with_result_store(mut self, location: impl Into<String>) -> Self {
        self.options = self.options.with_result_store(location);
        self
    }

    /// Binds the flow to a body and its parameters. Awaiting the call gives the body's
    /// result; [`FlowCall::run`] gives the whole [`FlowRun`].
    pub fn call<F, T>(self, parameters: serde_json::Value, body: F) -> FlowCall<F>
    where
        F: Future<Output = Result<T>>,
    {
        FlowCall {
            flow: self,
            parameters,
            body,
        }
    }

    /// Runs `body` as one run of this flow.
    pub fn run<F, T>(self, parameters: serde_json::Value, body: F) -> FlowFuture<F>
    where
        F: Future<Output = Result<T>>,
    {
        self.call(parameters, body).run()
    }
}

/// A flow bound to its body and parameters, not started yet: what a `#[flow]` function
/// returns. `.await` it for the body's result, or call [`run`](Self::run) for the
/// result and the run record. Options can be changed before it starts.
#[must_use = "a flow call does nothing until awaited or run"]
#[derive(Debug)]
pub struct FlowCall<F> {
    flow: Flow,
    parameters: serde_json::Value,
    body: F,
}

impl<F, T> FlowCall<F>
where
    F: Future<Output = Result<T>>,
{
    /// Runs in this execution mode.
    pub fn with_mode(mut self, mode: ExecutionMode) -> Self {
        self.flow.options.mode = mode;
        self
    }

    /// Runs in this session.
    pub fn with_session(mut self, session: Session) -> Self {
        self.flow.options.session = Some(session);
        self
    }

    /// Runs with these options.
    pub fn with_options(mut self, options: FlowOptions) -> Self {
        self.flow.options = options;
        self
    }

    /// Writes checkpoints to this store; see [`FlowOptions::with_result_store`].
    pub fn with_result_store(mut self, location: impl Into<String>) -> Self {
        self.flow.options = self.flow.options.with_result_store(location);
        self
    }

    /// Reads and writes checkpoints (the default), or runs every task unpersisted.
    pub fn with_checkpoints(mut self, enabled: bool) -> Self {
        self.flow.options = self.flow.options.with_checkpoints(enabled);
        self
    }

    /// Judges checkpoint expiry by this clock.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.flow.options = self.flow.options.with_clock(clock);
        self
    }

    /// Starts the run; the future resolves to the body's result and the run record.
    pub fn run(self) -> FlowFuture<F> {
        let shared = FlowRunShared::new(&self.flow, self.parameters);
        let span = tracing::info_span!(
            "flow.run",
            flow = %shared.name,
            run = %shared.run_id,
            mode = %shared.mode,
        );
        FlowFuture {
            inner: CURRENT_FLOW.scope(Arc::clone(&shared), self.body.instrument(span)),
            shared,
            announced: false,
        }
    }
}

impl<F, T> IntoFuture for FlowCall<F>
where
    F: Future<Output = Result<T>>,
{
    type Output = Result<T>;
    type IntoFuture = futures::future::Map<FlowFuture<F>, fn(FlowRun<T>) -> Result<T>>;

    fn into_future(self) -> Self::IntoFuture {
        self.run()
            .map(FlowRun::into_result as fn(FlowRun<T>) -> Result<T>)
    }
}

pin_project_lite::pin_project! {
    /// A running flow; resolves to a [`FlowRun`].
    #[must_use = "futures do nothing unless polled"]
    pub struct FlowFuture<F> {
        #[pin]
        inner: TaskLocalFuture<Arc<FlowRunShared>, Instrumented<F>>,
        shared: Arc<FlowRunShared>,
        announced: bool,
    }
}

impl<F, T> Future for FlowFuture<F>
where
    F: Future<Output = Result<T>>,
{
    type Output = FlowRun<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if !*this.announced {
            *this.announced = true;
            tracing::info!(flow = %this.shared.name, run = %this.shared.run_id, mode = %this.shared.mode, "flow run started");
        }
        let output = std::task::ready!(this.inner.poll(cx));
        let (state, error) = match &output {
            Ok(_) => (FlowState::Completed, None),
            Err(e) => (FlowState::Failed, Some(e.to_string())),
        };
        let record = this.shared.record(state, error, true);
        tracing::info!(
            flow = %record.flow,
            run = %record.run_id,
            state = ?record.state,
            duration_ms = record.duration_ms,
            "flow run finished"
        );
        Poll::Ready(FlowRun { output, record })
    }
}

/// A finished flow run: the body's result and the run record.
#[derive(Debug)]
pub struct FlowRun<T> {
    /// What the flow body returned.
    pub output: Result<T>,
    /// What happened: states, timings, rows.
    pub record: crate::FlowRunRecord,
}

impl<T> FlowRun<T> {
    /// The body's result.
    pub fn into_result(self) -> Result<T> {
        self.output
    }
}
