//! Flows: a named function of tasks; one call is a flow run with an id, parameters and a
//! record of its task runs.

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::task::futures::TaskLocalFuture;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tracing::Instrument;
use tracing::instrument::Instrumented;

use crate::record::{FlowRunRecord, FlowState};
use crate::runtime::history::RunStore;
use crate::runtime::run::{Closing, Ending, Hooks, TaskRunState};
use crate::{Clock, Error, ExecutionMode, Result, Runner, Session};

/// Where flow runs record themselves unless told otherwise: `$SLUICE_RUN_STORE`, or
/// `.sluice/` in the working directory.
pub const DEFAULT_RUN_STORE: &str = ".sluice/";

/// How long an interrupted run waits for its background cleanups (staging deletes,
/// multipart aborts) before it reports.
const CLEANUP_LIMIT: Duration = Duration::from_secs(10);

/// A flow's hooks.
type FlowHooks = Hooks<FlowRunRecord>;

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
    /// How many task bodies may run at once, in all and per tag.
    pub(crate) limits: crate::runtime::concurrency::Limits,
    /// Calls started with `submit`, stopped when the run ends.
    submitted: crate::runtime::concurrency::Submitted,
    /// How the run shows its progress.
    pub(crate) progress: crate::Progress,
}

impl FlowRunShared {
    /// The run's shared state, and why the run is refused if its runner is unusable.
    fn new(flow: &Flow, parameters: serde_json::Value) -> (Arc<Self>, Option<Error>) {
        let session = flow.options.session.clone().unwrap_or_default();
        let (session, refused) = match &flow.options.runner {
            Some(runner) => match session.on_runner(runner.clone()) {
                Ok(session) => (session, None),
                Err(e) => (session, Some(e)),
            },
            None => {
                let unusable = session.usable().err();
                (session, unusable)
            }
        };
        // Code's choice, else the settings' (`SLUICE_RESULT_STORE`, sluice.toml).
        let result_store = flow.options.result_store.clone().or_else(|| {
            let settings = session.settings().ok()?;
            settings.result_store().map(String::from)
        });
        let shared = Arc::new(Self {
            name: flow.name.clone(),
            run_id: uuid::Uuid::new_v4().to_string(),
            version: flow.version.clone(),
            parameters,
            mode: flow.options.mode,
            session,
            result_store,
            checkpoints: flow.options.checkpoints,
            clock: flow.options.clock.clone(),
            start: Utc::now(),
            started: Instant::now(),
            tasks: Mutex::new(Vec::new()),
            limits: crate::runtime::concurrency::Limits::new(
                flow.options.task_concurrency,
                &flow.options.tag_concurrency,
            ),
            submitted: Default::default(),
            progress: flow.options.progress,
        });
        let refused = refused.or_else(|| match shared.mode {
            ExecutionMode::Eager => shared.session.refuse_eager().err(),
            _ => None,
        });
        (shared, refused)
    }

    /// Every task run so far, as progress shows it.
    pub(crate) fn live_tasks(&self) -> Vec<crate::runtime::run::LiveTask> {
        self.task_runs().iter().map(|t| t.live()).collect()
    }

    /// The task runs so far: a copy of the list, so that it is not locked while each
    /// run is read.
    fn task_runs(&self) -> Vec<Arc<TaskRunState>> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Time since the run started.
    pub(crate) fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The flow run of the calling code, if it runs inside one.
    pub(crate) fn current() -> Option<Arc<Self>> {
        CURRENT_FLOW.try_with(Arc::clone).ok()
    }

    /// `future`, run inside the flow run `flow`.
    pub(crate) fn scope<F: Future>(flow: Arc<Self>, future: F) -> TaskLocalFuture<Arc<Self>, F> {
        CURRENT_FLOW.scope(flow, future)
    }

    /// A call started in the background, to stop when the run ends.
    pub(crate) fn track(&self, handle: tokio::task::AbortHandle) {
        self.submitted.push(handle);
    }

    /// The flow run of the calling task, or a one-off run for a task called outside any
    /// flow (Prefect allows that too).
    pub(crate) fn current_or_ad_hoc(task: &str) -> Arc<Self> {
        CURRENT_FLOW
            .try_with(Arc::clone)
            .unwrap_or_else(|_| Self::new(&Flow::new(task), serde_json::Value::Null).0)
    }

    pub(crate) fn add_task(&self, run: Arc<TaskRunState>) {
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(run);
    }

    /// The latest run of the task named `name` in this flow run.
    pub(crate) fn task_run(&self, name: &str) -> Option<Arc<TaskRunState>> {
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .rev()
            .find(|t| t.name == name)
            .cloned()
    }

    fn record(
        &self,
        state: FlowState,
        error: Option<String>,
        closing: Option<Closing<'_>>,
    ) -> FlowRunRecord {
        let tasks = self.task_runs().iter().map(|t| t.close(closing)).collect();
        let ended = state != FlowState::Running;
        FlowRunRecord {
            flow: self.name.clone(),
            run_id: self.run_id.clone(),
            state,
            mode: self.mode,
            version: self.version.clone(),
            runner: Some(sluice_store::redact_location(
                &self.session.runner().to_string(),
            )),
            parameters: redact_parameters(&self.parameters),
            start: self.start,
            end: ended.then(Utc::now),
            duration_ms: ended.then(|| self.started.elapsed().as_secs_f64() * 1e3),
            tasks,
            error,
        }
    }
}

/// Parameters as recorded: credentials inside URL-valued strings are removed.
fn redact_parameters(value: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::String(text) => Value::String(sluice_store::redact_location(text)),
        Value::Array(items) => Value::Array(items.iter().map(redact_parameters).collect()),
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), redact_parameters(v)))
                .collect(),
        ),
        other => other.clone(),
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
    run_store: Option<String>,
    run_history: bool,
    task_concurrency: Option<usize>,
    tag_concurrency: Vec<(String, usize)>,
    progress: crate::Progress,
    timeout: Option<Duration>,
    cancellation: Option<CancellationToken>,
    hooks: FlowHooks,
    runner: Option<Runner>,
}

impl Default for FlowOptions {
    fn default() -> Self {
        Self {
            mode: ExecutionMode::default(),
            session: None,
            result_store: None,
            checkpoints: true,
            clock: Clock::default(),
            run_store: None,
            run_history: true,
            task_concurrency: None,
            tag_concurrency: Vec::new(),
            progress: crate::Progress::Off,
            timeout: None,
            cancellation: None,
            hooks: FlowHooks::default(),
            runner: None,
        }
    }
}

impl FlowOptions {
    /// Where the run's record is written, as JSON (see [`RunStore`]): a path or any
    /// store URL. By default `$SLUICE_RUN_STORE`, or `.sluice/` in the working
    /// directory.
    pub fn with_run_store(mut self, location: impl Into<String>) -> Self {
        self.run_store = Some(location.into());
        self
    }

    /// At most `limit` task bodies run at once in a run of this flow (a `map` over
    /// twelve files with a limit of 4, say). Unlimited by default. See
    /// [`map`](crate::map) for what a body is in lazy mode.
    pub fn with_task_concurrency(mut self, limit: usize) -> Self {
        self.task_concurrency = Some(limit);
        self
    }

    /// At most `limit` bodies of tasks tagged `tag` (see
    /// [`Task::with_tag`](crate::Task::with_tag)) run at once in a run of this flow.
    pub fn with_tag_concurrency(mut self, tag: impl Into<String>, limit: usize) -> Self {
        self.tag_concurrency.push((tag.into(), limit));
        self
    }

    /// Shows the run's progress on standard error (see [`Progress`](crate::Progress));
    /// off by default.
    pub fn with_progress(mut self, progress: crate::Progress) -> Self {
        self.progress = progress;
        self
    }

    /// Whether the run's record is written to the run store (default: yes).
    pub fn with_run_history(mut self, enabled: bool) -> Self {
        self.run_history = enabled;
        self
    }

    /// Fails the run with [`Error::Timeout`] when it runs longer than `limit`: its
    /// plans are stopped, nothing it was writing is published, and the task runs it
    /// stopped are `Cancelled`.
    pub fn with_timeout(mut self, limit: Duration) -> Self {
        self.timeout = Some(limit);
        self
    }

    /// Cancels the run when `token` is cancelled (from a Ctrl-C handler, say): its
    /// plans are stopped, nothing it was writing is published, and the run and the
    /// task runs it stopped are `Cancelled`.
    pub fn with_cancellation(mut self, token: CancellationToken) -> Self {
        self.cancellation = Some(token);
        self
    }

    /// Calls `hook` with the run's record when the run completes.
    pub fn on_completion(mut self, hook: impl Fn(&FlowRunRecord) + Send + Sync + 'static) -> Self {
        self.hooks.completion.push(Arc::new(hook));
        self
    }

    /// Calls `hook` with the run's record when the run fails (or times out).
    pub fn on_failure(mut self, hook: impl Fn(&FlowRunRecord) + Send + Sync + 'static) -> Self {
        self.hooks.failure.push(Arc::new(hook));
        self
    }

    /// Calls `hook` with the run's record when the run is cancelled.
    pub fn on_cancellation(
        mut self,
        hook: impl Fn(&FlowRunRecord) + Send + Sync + 'static,
    ) -> Self {
        self.hooks.cancellation.push(Arc::new(hook));
        self
    }

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

    /// Where the run's plans execute, overriding the session's runner: a Ballista
    /// cluster with [`Runner::ballista`] (cargo feature `ballista`). Tasks do not change.
    /// A runner this build cannot use fails the run before its body starts.
    ///
    /// ```
    /// use sluice_core::{FlowOptions, Runner};
    /// let options = FlowOptions::default().with_runner(Runner::ballista("df://127.0.0.1:50050"));
    /// # let _ = options;
    /// ```
    pub fn with_runner(mut self, runner: Runner) -> Self {
        self.runner = Some(runner);
        self
    }

    /// The session tasks read, plan and write in; by default a new one per run.
    pub fn with_session(mut self, session: Session) -> Self {
        self.session = Some(session);
        self
    }
}

/// The [`FlowOptions`] setters as shorthands on a type that holds a flow's options
/// ([`Flow`], [`FlowCall`]), each forwarding to the option's setter: the options have
/// one type, and these are its setters, not copies of them.
macro_rules! option_shorthands {
    () => {
        option_shorthands! {
            with_mode(mode: ExecutionMode),
            with_runner(runner: Runner),
            with_session(session: Session),
            with_result_store(location: impl Into<String>),
            with_checkpoints(enabled: bool),
            with_clock(clock: Clock),
            with_run_store(location: impl Into<String>),
            with_run_history(enabled: bool),
            with_timeout(limit: Duration),
            with_cancellation(token: CancellationToken),
            with_progress(progress: crate::Progress),
        }
    };
    ($($name:ident($arg:ident: $ty:ty)),* $(,)?) => {
        $(
            #[doc = concat!(
                "Sets [`FlowOptions::", stringify!($name), "`]: `.", stringify!($name),
                "(x)` is `.configure(|o| o.", stringify!($name), "(x))`."
            )]
            pub fn $name(mut self, $arg: $ty) -> Self {
                let options = std::mem::take(self.options_mut());
                *self.options_mut() = options.$name($arg);
                self
            }
        )*
    };
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

    fn options_mut(&mut self) -> &mut FlowOptions {
        &mut self.options
    }

    option_shorthands!();

    /// Changes the options with `change` (hooks, timeouts, ...):
    /// `flow.configure(|o| o.with_timeout(limit).on_failure(alert))`.
    pub fn configure(mut self, change: impl FnOnce(FlowOptions) -> FlowOptions) -> Self {
        self.options = change(self.options);
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
    /// Runs with these options.
    pub fn with_options(mut self, options: FlowOptions) -> Self {
        self.flow.options = options;
        self
    }

    fn options_mut(&mut self) -> &mut FlowOptions {
        &mut self.flow.options
    }

    option_shorthands!();

    /// Changes the options with `change` (hooks, run history, ...).
    pub fn configure(mut self, change: impl FnOnce(FlowOptions) -> FlowOptions) -> Self {
        self.flow.options = change(self.flow.options);
        self
    }

    /// Starts the run; the future resolves to the body's result and the run record.
    pub fn run(self) -> FlowFuture<F> {
        let options = &self.flow.options;
        let (shared, refused) = FlowRunShared::new(&self.flow, self.parameters);
        let span = tracing::info_span!(
            "flow.run",
            flow = %shared.name,
            run = %shared.run_id,
            mode = %shared.mode,
        );
        // A flow name that cannot be a key component fails the run before its body
        // starts and before any record is written.
        let refused = crate::names::validate_name("flow name", &shared.name)
            .err()
            .or(refused)
            .or_else(|| shared.session.settings().err());
        let history = if options.run_history && refused.is_none() {
            // Code's choice, else the settings' (`SLUICE_RUN_STORE`, sluice.toml).
            let location = options
                .run_store
                .clone()
                .or_else(|| {
                    let settings = shared.session.settings().ok()?;
                    settings.run_store().map(String::from)
                })
                .unwrap_or_else(|| DEFAULT_RUN_STORE.to_string());
            match RunStore::open(&shared.session, &location) {
                Ok(store) => Some(store),
                Err(e) => {
                    tracing::warn!(store = %sluice_store::redact_location(&location), error = %e, "cannot open the run store; this run is not recorded");
                    None
                }
            }
        } else {
            None
        };
        let starting = history.clone().map(|store| {
            let record = shared.record(FlowState::Running, None, None);
            write_record(store, record)
        });
        FlowFuture {
            inner: Some(Box::pin(
                CURRENT_FLOW.scope(Arc::clone(&shared), self.body.instrument(span)),
            )),
            shared,
            history,
            hooks: options.hooks.clone(),
            cancelled: options
                .cancellation
                .clone()
                .map(|token| Box::pin(token.cancelled_owned())),
            deadline: options
                .timeout
                .map(|limit| (limit, Box::pin(tokio::time::sleep(limit)))),
            starting,
            refused,
            progress: None,
            live: None,
            announced: false,
            finishing: None,
            ended: None,
        }
    }
}

/// Writes a running flow's record again when its tasks changed (a task started, ended,
/// retried, logged or counted rows), at most every [`LIVE_RECORD_INTERVAL`], so that a
/// view in another process follows the run.
///
/// [`LIVE_RECORD_INTERVAL`]: crate::runtime::history::LIVE_RECORD_INTERVAL
struct LiveRecord {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl LiveRecord {
    fn start(shared: &Arc<FlowRunShared>, store: RunStore) -> Option<Self> {
        let handle = tokio::runtime::Handle::try_current().ok()?;
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let shared = Arc::clone(shared);
        // What the record written at the start holds (the body has not run yet).
        let mut written = task_changes(&shared.record(FlowState::Running, None, None));
        let task = handle.spawn(async move {
            let mut ticks =
                tokio::time::interval(crate::runtime::history::LIVE_RECORD_INTERVAL);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = ticks.tick() => {}
                }
                let record = shared.record(FlowState::Running, None, None);
                let now = task_changes(&record);
                if now != written {
                    if let Err(e) = store.update(&record).await {
                        tracing::debug!(run = %record.run_id, error = %e, "could not update the running flow's record");
                    }
                    written = now;
                }
            }
        });
        Some(Self { stop, task })
    }

    /// Stops the updates, waiting for one being written.
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// What a view of a running flow needs updated: each task run's state, rows, attempts
/// and log lines.
fn task_changes(record: &FlowRunRecord) -> Vec<String> {
    record
        .tasks
        .iter()
        .map(|t| {
            format!(
                "{} {:?} {:?} {} {}",
                t.id,
                t.state,
                t.rows,
                t.attempts.len(),
                t.logs.len()
            )
        })
        .collect()
}

/// Writes a run's record; a failure is logged, not raised: the run itself went on.
fn write_record(store: RunStore, record: FlowRunRecord) -> BoxFuture<'static, ()> {
    async move {
        if let Err(e) = store.write(&record).await {
            tracing::warn!(run = %record.run_id, error = %e, "could not record the flow run");
        }
    }
    .boxed()
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

/// A flow's body, inside its flow run and span.
type FlowBody<F> = TaskLocalFuture<Arc<FlowRunShared>, Instrumented<F>>;

/// A running flow; resolves to a [`FlowRun`].
///
/// It records the run in the run store before the body starts and again when it
/// ends; a cancellation or a timeout drops the body (which stops its plans and
/// discards what they were writing), waits for the cleanups that follow, and
/// resolves with [`Error::Cancelled`] or [`Error::Timeout`].
#[must_use = "futures do nothing unless polled"]
pub struct FlowFuture<F: Future> {
    inner: Option<Pin<Box<FlowBody<F>>>>,
    shared: Arc<FlowRunShared>,
    history: Option<RunStore>,
    hooks: FlowHooks,
    cancelled: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    deadline: Option<(Duration, Pin<Box<tokio::time::Sleep>>)>,
    /// Writing the `Running` record, before the body starts.
    starting: Option<BoxFuture<'static, ()>>,
    /// Why the run is refused before its body starts (an invalid flow name).
    refused: Option<Error>,
    /// The progress display, while the body runs.
    progress: Option<crate::runtime::progress::Reporter>,
    /// The record written again while the body runs, when its tasks change.
    live: Option<LiveRecord>,
    /// Whether the start was logged (and the progress display started).
    announced: bool,
    /// Cleanups and the final record, after the body ended.
    finishing: Option<BoxFuture<'static, ()>>,
    /// The body's result and the final record, once the body ended.
    ended: Option<(F::Output, FlowRunRecord)>,
}

// Nothing in a `FlowFuture` relies on being pinned: the body is boxed, and the ended
// output is only moved, never pinned.
impl<F: Future> Unpin for FlowFuture<F> {}

impl<F: Future> std::fmt::Debug for FlowFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowFuture")
            .field("flow", &self.shared.name)
            .field("run_id", &self.shared.run_id)
            .finish_non_exhaustive()
    }
}

impl<F, T> Future for FlowFuture<F>
where
    F: Future<Output = Result<T>>,
{
    type Output = FlowRun<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Some(starting) = this.starting.as_mut() {
            std::task::ready!(starting.as_mut().poll(cx));
            this.starting = None;
        }
        if !this.announced && this.refused.is_none() {
            this.announced = true;
            tracing::info!(flow = %this.shared.name, run = %this.shared.run_id, mode = %this.shared.mode, "flow run started");
            this.progress =
                crate::runtime::progress::Reporter::start(&this.shared, this.shared.progress);
            this.live = this
                .history
                .clone()
                .and_then(|store| LiveRecord::start(&this.shared, store));
        }
        if this.ended.is_none() {
            let (output, interrupted) = match this.poll_body(cx) {
                Poll::Ready(ended) => ended,
                Poll::Pending => return Poll::Pending,
            };
            if let Some(progress) = this.progress.take() {
                progress.finish();
            }
            let stopped = this.shared.submitted.abort_all();
            if stopped > 0 {
                tracing::warn!(flow = %this.shared.name, run = %this.shared.run_id, stopped, "submitted calls still running when the flow run ended were stopped; await them");
            }
            let (state, closing) = match (&output, interrupted) {
                (_, Some(why)) => (
                    if matches!(output, Err(Error::Cancelled { .. })) {
                        FlowState::Cancelled
                    } else {
                        FlowState::Failed
                    },
                    Some(Closing::Interrupted(why)),
                ),
                (Ok(_), None) => (FlowState::Completed, Some(Closing::Ended)),
                (Err(_), None) => (FlowState::Failed, Some(Closing::Ended)),
            };
            let error = output.as_ref().err().map(|e| e.to_string());
            let record = this.shared.record(state, error, closing);
            tracing::info!(
                flow = %record.flow,
                run = %record.run_id,
                state = ?record.state,
                duration_ms = record.duration_ms,
                "flow run finished"
            );
            let ending = match state {
                FlowState::Completed => Ending::Completed,
                FlowState::Cancelled => Ending::Cancelled,
                _ => Ending::Failed,
            };
            this.hooks.call(ending, &record.flow, &record);
            let history = this.history.clone();
            let saved = record.clone();
            let live = this.live.take();
            this.finishing = Some(
                async move {
                    // No update may land after the final record.
                    if let Some(live) = live {
                        live.stop().await;
                    }
                    if interrupted.is_some() {
                        sluice_store::cleanup::drain(CLEANUP_LIMIT).await;
                    } else if state == FlowState::Failed {
                        // Staging deletes and checkpoint invalidations of a failed run
                        // end before it returns (a process may exit right after).
                        sluice_store::cleanup::drain_cleanups(CLEANUP_LIMIT).await;
                    }
                    if let Some(store) = history {
                        write_record(store, saved).await;
                    }
                }
                .boxed(),
            );
            this.ended = Some((output, record));
        }
        if let Some(finishing) = this.finishing.as_mut() {
            std::task::ready!(finishing.as_mut().poll(cx));
            this.finishing = None;
        }
        let (output, record) = this
            .ended
            .take()
            .expect("a flow future polled after it resolved");
        Poll::Ready(FlowRun { output, record })
    }
}

impl<F, T> FlowFuture<F>
where
    F: Future<Output = Result<T>>,
{
    /// Polls the body, racing it against cancellation and the timeout. On either,
    /// the body is dropped (its plans stop, its staged outputs are discarded) and the
    /// reason is returned.
    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<(Result<T>, Option<&'static str>)> {
        if let Some(error) = self.refused.take() {
            // Never polled, so it never read or wrote anything.
            self.inner = None;
            tracing::warn!(flow = %self.shared.name.escape_debug(), error = %error, "flow run refused");
            return Poll::Ready((Err(error), None));
        }
        let interruption = if self
            .cancelled
            .as_mut()
            .is_some_and(|c| c.as_mut().poll(cx).is_ready())
        {
            Some((
                Error::Cancelled {
                    flow: self.shared.name.clone(),
                    run_id: self.shared.run_id.clone(),
                },
                "the flow run was cancelled",
            ))
        } else if let Some((limit, deadline)) = self.deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            Some((
                Error::Timeout {
                    scope: "flow",
                    name: self.shared.name.clone(),
                    limit: *limit,
                },
                "the flow run timed out",
            ))
        } else {
            None
        };
        if let Some((error, why)) = interruption {
            // The runs it stops are closed with its reason first: dropping the body drops
            // the streams of their outputs, which would otherwise close them as merely
            // dropped (or not, when a stream lives in a task DataFusion spawned).
            for run in self.shared.task_runs() {
                run.close(Some(Closing::Interrupted(why)));
            }
            // Dropping the body drops every plan it was running.
            self.inner = None;
            tracing::warn!(flow = %self.shared.name, run = %self.shared.run_id, reason = why, "flow run interrupted");
            return Poll::Ready((Err(error), Some(why)));
        }
        let inner = self
            .inner
            .as_mut()
            .expect("a flow future polled after it resolved");
        let output = std::task::ready!(inner.as_mut().poll(cx));
        self.inner = None;
        Poll::Ready((output, None))
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
