//! Flow-run and task-run records: what ran, in what state, with which figures.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::Error;

/// How a flow moves data between tasks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionMode {
    /// Tasks return plan fragments that compose into one plan; a sink streams the whole
    /// chain in record batches with bounded memory. The default.
    #[default]
    Lazy,
    /// Each task's output is collected in memory before the next task runs, as Prefect
    /// does by default. Kept for comparison and benchmarks.
    Eager,
}

impl std::str::FromStr for ExecutionMode {
    type Err = Error;

    /// ```
    /// use sluice_core::ExecutionMode;
    /// assert_eq!("eager".parse::<ExecutionMode>().unwrap(), ExecutionMode::Eager);
    /// assert!("fast".parse::<ExecutionMode>().is_err());
    /// ```
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.to_ascii_lowercase().as_str() {
            "lazy" => Ok(ExecutionMode::Lazy),
            "eager" => Ok(ExecutionMode::Eager),
            other => Err(Error::InvalidOption {
                option: "mode",
                reason: format!("{other:?} is not an execution mode; use lazy or eager"),
            }),
        }
    }
}

impl std::fmt::Display for ExecutionMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ExecutionMode::Lazy => "lazy",
            ExecutionMode::Eager => "eager",
        })
    }
}

/// The state of a task run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum TaskState {
    /// Created, not started.
    Pending,
    /// The task body is running, or (in lazy mode) its output is still streaming.
    Running,
    /// Finished; in lazy mode, its output streamed to the end (or was never consumed).
    Completed,
    /// Its output was read from a valid checkpoint instead of being computed.
    Cached,
    /// Not executed: a task downstream of it was read from its checkpoint, and nothing
    /// else consumed its output. The record's `reason` names that task.
    Skipped,
    /// Its output stream was dropped before its end (a downstream `limit` that did not
    /// reach the scan, a cancelled sink), and no execution ran to the end; or the flow
    /// run was cancelled or timed out while it ran. The record's `reason` says which.
    Cancelled,
    /// An attempt failed with an error that can be retried; the next attempt starts
    /// after the retry delay. The record's `attempts` lists them.
    Retrying,
    /// Failed; the record's `error` says why.
    Failed,
}

impl TaskState {
    /// Whether the run has ended in this state (nothing will change it but a later
    /// execution that completes the output of a task that failed).
    pub fn is_final(self) -> bool {
        !matches!(
            self,
            TaskState::Pending | TaskState::Running | TaskState::Retrying
        )
    }
}

/// The state of a flow run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum FlowState {
    /// Running.
    Running,
    /// The flow body returned `Ok`.
    Completed,
    /// The flow body returned an error, or the run timed out.
    Failed,
    /// The run was cancelled (a cancellation token, Ctrl-C): its plans were stopped and
    /// nothing it was writing was published.
    Cancelled,
}

impl std::str::FromStr for FlowState {
    type Err = Error;

    /// Parses a state name, ignoring case.
    ///
    /// ```
    /// use sluice_core::FlowState;
    /// assert_eq!("failed".parse::<FlowState>().unwrap(), FlowState::Failed);
    /// ```
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.to_ascii_lowercase().as_str() {
            "running" => Ok(FlowState::Running),
            "completed" => Ok(FlowState::Completed),
            "failed" => Ok(FlowState::Failed),
            "cancelled" | "canceled" => Ok(FlowState::Cancelled),
            other => Err(Error::InvalidOption {
                option: "state",
                reason: format!(
                    "{other:?} is not a flow-run state; use running, completed, failed or cancelled"
                ),
            }),
        }
    }
}

impl std::fmt::Display for FlowState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// One attempt of a task run: each call of its body. A task with retries has one per
/// try; the last one is the attempt that decided the run's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TaskAttempt {
    /// 1 for the first call of the body.
    pub attempt: u32,
    /// When it started.
    pub start: DateTime<Utc>,
    /// How long the body ran, in milliseconds.
    pub duration_ms: f64,
    /// Why it failed; `None` for the attempt that succeeded.
    pub error: Option<String>,
}

/// How one execution of a task's output ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum ExecutionOutcome {
    /// Some partitions are still streaming.
    Running,
    /// Every partition streamed to its end.
    Completed,
    /// A partition's stream was dropped before its end.
    Dropped,
    /// A partition failed.
    Failed,
}

/// One execution of a lazy task's output: one physical plan that streamed it (a sink,
/// `collect`, a barrier checkpoint). A frame consumed by two sinks is executed twice
/// unless it was persisted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TaskExecution {
    /// How it ended.
    pub outcome: ExecutionOutcome,
    /// Output partitions.
    pub partitions: usize,
    /// Rows that streamed out of the task in this execution.
    pub rows: u64,
    /// In-memory Arrow bytes that streamed out of the task.
    pub bytes: u64,
    /// Time spent producing those batches, including everything upstream.
    pub busy_ms: f64,
    /// Whether it read the task's checkpoint rather than computing the task.
    pub from_checkpoint: bool,
}

/// How a task's checkpoint was used in a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CacheRecord {
    /// The checkpoint's location: `<store>/checkpoints/<task>/<key>/`.
    pub checkpoint: String,
    /// `hit`, `miss`, `refresh` or `disabled`.
    pub lookup: String,
    /// Why it was a miss when a checkpoint existed (expired, invalid, ...).
    pub reason: Option<String>,
    /// Whether this run committed a new checkpoint.
    pub committed: bool,
}

impl CacheRecord {
    pub(crate) fn new(checkpoint: &str, lookup: &str, reason: Option<String>) -> Self {
        Self {
            checkpoint: checkpoint.to_string(),
            lookup: lookup.to_string(),
            reason,
            committed: false,
        }
    }
}

/// A log line emitted inside a task run, kept in its record (see
/// [`RunLogLayer`](crate::RunLogLayer)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct LogLine {
    /// When it was emitted.
    pub time: DateTime<Utc>,
    /// `ERROR`, `WARN`, `INFO`, `DEBUG` or `TRACE`.
    pub level: String,
    /// The module that emitted it.
    pub target: String,
    /// The message and its fields (`key=value`).
    pub message: String,
}

/// How many log lines a task run's record keeps; later ones are counted, not kept.
pub const MAX_LOG_LINES: usize = 200;

/// An output a task's sink published: part of its [`TaskRunRecord`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SinkRecord {
    /// The destination.
    pub url: String,
    /// Rows written.
    pub rows: u64,
    /// Bytes written.
    pub bytes: u64,
    /// How it was written: unchanged columns copied, or every column encoded again.
    pub path: crate::WritePath,
}

/// What one task run did. Part of a [`FlowRunRecord`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TaskRunRecord {
    /// The task's name.
    pub name: String,
    /// The task run's id within the process (log lines carry it as `task_run`).
    #[serde(default)]
    pub id: u64,
    /// The run's state.
    pub state: TaskState,
    /// The task's code version (a hash of its source when defined with `#[task]`).
    pub version: Option<String>,
    /// When the task was called.
    pub start: DateTime<Utc>,
    /// When it finished: the body returned and, in lazy mode, its output stream ended.
    pub end: Option<DateTime<Utc>>,
    /// `end - start` in milliseconds.
    pub duration_ms: Option<f64>,
    /// Time spent producing output batches (the body in eager mode; the streaming
    /// of its fragment, including everything upstream of it, in lazy mode), summed
    /// over executions.
    pub busy_ms: f64,
    /// Rows out of the task: rows of its first execution that streamed to the end
    /// (or of the latest one), or rows a sink wrote.
    pub rows: Option<u64>,
    /// In-memory Arrow bytes out of the task, or bytes a sink wrote.
    pub bytes: Option<u64>,
    /// Sources the task's output was read from.
    pub sources: Vec<String>,
    /// The task's cache key, when it is persisted.
    pub cache_key: Option<String>,
    /// How its checkpoint was used, when it is persisted.
    pub cache: Option<CacheRecord>,
    /// Each execution of its output, in order (lazy mode).
    pub executions: Vec<TaskExecution>,
    /// Each call of its body, in order, when it was retried (empty otherwise).
    #[serde(default)]
    pub attempts: Vec<TaskAttempt>,
    /// Rows its Parquet sources hold, from their footers, when progress is shown.
    #[serde(default)]
    pub expected_rows: Option<u64>,
    /// The first [`MAX_LOG_LINES`] log lines emitted inside the run.
    #[serde(default)]
    pub logs: Vec<LogLine>,
    /// Log lines emitted beyond those.
    #[serde(default)]
    pub logs_dropped: u64,
    /// The outputs its sinks published, and how each was written.
    #[serde(default)]
    pub sinks: Vec<SinkRecord>,
    /// Why it is `Skipped` or `Cancelled`.
    pub reason: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
}

/// What one flow run did. Serializes to the JSON written by the examples' `--summary`.
///
/// ```
/// # use sluice_core::*;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<()> {
/// let run = Flow::new("noop").run(serde_json::json!({}), async { Ok(()) }).await;
/// let json = serde_json::to_value(&run.record).unwrap();
/// assert_eq!(json["flow"], "noop");
/// assert_eq!(json["state"], "Completed");
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct FlowRunRecord {
    /// The flow's name.
    pub flow: String,
    /// This run's id.
    pub run_id: String,
    /// The run's state.
    pub state: FlowState,
    /// The execution mode.
    pub mode: ExecutionMode,
    /// The flow's code version.
    pub version: Option<String>,
    /// The flow's parameters.
    pub parameters: serde_json::Value,
    /// When the flow started.
    pub start: DateTime<Utc>,
    /// When it ended.
    pub end: Option<DateTime<Utc>>,
    /// `end - start` in milliseconds.
    pub duration_ms: Option<f64>,
    /// The task runs, in call order.
    pub tasks: Vec<TaskRunRecord>,
    /// Why it failed.
    pub error: Option<String>,
}

impl FlowRunRecord {
    /// The record of the first task run named `name`.
    pub fn task(&self, name: &str) -> Option<&TaskRunRecord> {
        self.tasks.iter().find(|t| t.name == name)
    }
}

/// One execution of a task's output: the partitions of one physical plan's boundary
/// node. Counted by the streams of those partitions.
#[derive(Debug)]
pub(crate) struct ExecutionState {
    /// When the first partition started.
    pub(crate) started: Instant,
    partitions: usize,
    from_checkpoint: bool,
    rows: AtomicU64,
    bytes: AtomicU64,
    busy_nanos: AtomicU64,
    ended: AtomicUsize,
    dropped: AtomicUsize,
    failed: AtomicBool,
}

impl ExecutionState {
    /// A batch of `rows` rows and `bytes` bytes left the task, `nanos` after it was asked for.
    pub(crate) fn add_output(&self, rows: u64, bytes: u64, nanos: u64) {
        self.rows.fetch_add(rows, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.busy_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    fn outcome(&self) -> ExecutionOutcome {
        let ended = self.ended.load(Ordering::Acquire);
        let dropped = self.dropped.load(Ordering::Acquire);
        if self.failed.load(Ordering::Acquire) {
            ExecutionOutcome::Failed
        } else if ended + dropped < self.partitions {
            ExecutionOutcome::Running
        } else if dropped > 0 {
            ExecutionOutcome::Dropped
        } else {
            ExecutionOutcome::Completed
        }
    }

    fn record(&self) -> TaskExecution {
        TaskExecution {
            outcome: self.outcome(),
            partitions: self.partitions,
            rows: self.rows.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            busy_ms: self.busy_nanos.load(Ordering::Relaxed) as f64 / 1e6,
            from_checkpoint: self.from_checkpoint,
        }
    }
}

/// A task run as progress shows it.
#[derive(Debug, Clone)]
pub(crate) struct LiveTask {
    pub(crate) id: u64,
    pub(crate) name: String,
    pub(crate) state: TaskState,
    pub(crate) rows: u64,
    pub(crate) bytes: u64,
    pub(crate) elapsed: std::time::Duration,
    pub(crate) expected_rows: Option<u64>,
}

/// Why a flow run closes its task runs.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Closing<'a> {
    /// The flow body returned.
    Ended,
    /// The flow run was cancelled or timed out; the reason says which.
    Interrupted(&'a str),
}

/// How one partition's stream of an execution ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamEnd {
    /// It returned `Ready(None)`.
    Ended,
    /// It returned an error.
    Failed,
    /// It was dropped before either.
    Dropped,
}

/// How a run ended, as hooks see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    Completed,
    Failed,
    Cancelled,
}

impl TaskState {
    /// The ending this final state is, for hooks (`Cached` completes; `Skipped` never ran).
    fn ending(self) -> Option<Ending> {
        match self {
            TaskState::Completed | TaskState::Cached => Some(Ending::Completed),
            TaskState::Failed => Some(Ending::Failed),
            TaskState::Cancelled => Some(Ending::Cancelled),
            _ => None,
        }
    }
}

/// A function called with a run's record (`R`: a task run's or a flow run's) when the
/// run ends.
pub(crate) type Hook<R> = Arc<dyn Fn(&R) + Send + Sync>;

/// The hooks of a task or a flow, by how its runs end.
pub(crate) struct Hooks<R> {
    pub(crate) completion: Vec<Hook<R>>,
    pub(crate) failure: Vec<Hook<R>>,
    pub(crate) cancellation: Vec<Hook<R>>,
}

impl<R> Default for Hooks<R> {
    fn default() -> Self {
        Self {
            completion: Vec::new(),
            failure: Vec::new(),
            cancellation: Vec::new(),
        }
    }
}

impl<R> Clone for Hooks<R> {
    fn clone(&self) -> Self {
        Self {
            completion: self.completion.clone(),
            failure: self.failure.clone(),
            cancellation: self.cancellation.clone(),
        }
    }
}

impl<R> std::fmt::Debug for Hooks<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("completion", &self.completion.len())
            .field("failure", &self.failure.len())
            .field("cancellation", &self.cancellation.len())
            .finish()
    }
}

impl<R> Hooks<R> {
    fn of(&self, ending: Ending) -> &[Hook<R>] {
        match ending {
            Ending::Completed => &self.completion,
            Ending::Failed => &self.failure,
            Ending::Cancelled => &self.cancellation,
        }
    }

    /// Calls the hooks of `ending` with `record` (of the run named `name`). A hook that
    /// panics is logged, not propagated.
    pub(crate) fn call(&self, ending: Ending, name: &str, record: &R) {
        for hook in self.of(ending) {
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hook(record))).is_err() {
                tracing::warn!(run = name, "a hook panicked; the run's state is unchanged");
            }
        }
    }
}

/// A task's hooks.
pub(crate) type TaskHooks = Hooks<TaskRunRecord>;

/// The live state of one task run, shared by the task wrapper and the boundary node
/// that counts the task's output while it streams.
#[derive(Debug)]
pub(crate) struct TaskRunState {
    pub(crate) id: u64,
    pub(crate) name: String,
    pub(crate) retry: Option<crate::Retry>,
    /// How long one attempt of the body, or one execution of its lazy output, may take.
    pub(crate) timeout: Option<std::time::Duration>,
    /// What sinks inside this run published, by destination: a retry does not write
    /// them again.
    published: Mutex<Vec<crate::WriteSummary>>,
    /// Retries spent so far (by this task's body, or by a sink that reran its output).
    retries_used: std::sync::atomic::AtomicU32,
    hooks: TaskHooks,
    hooked: AtomicBool,
    /// Log lines, apart from the record: a line can be logged while the record is
    /// locked (the "task run finished" event is).
    logs: Mutex<(Vec<LogLine>, u64)>,
    record: Mutex<TaskRunRecord>,
    started: Instant,
    executions: Mutex<Vec<Arc<ExecutionState>>>,
    /// Set when the body returned a lazy frame: the run completes when it has streamed.
    awaits_stream: AtomicBool,
    /// Set when a call of the body ended (returned, failed, or was read from a
    /// checkpoint); a run closed without it was stopped mid-call.
    body_ended: AtomicBool,
    /// The downstream task whose checkpoint made this task's output unnecessary.
    superseded_by: Mutex<Option<String>>,
    /// Set on a cluster's scheduler and executors: this process only runs the task's
    /// boundary; the client records the run.
    pub(crate) detached: bool,
}

static NEXT_TASK_RUN: AtomicU64 = AtomicU64::new(1);

impl TaskRunState {
    #[cfg(test)]
    pub(crate) fn new(name: &str, version: Option<String>) -> Arc<Self> {
        Self::with_settings(name, version, None, None, TaskHooks::default())
    }

    pub(crate) fn with_settings(
        name: &str,
        version: Option<String>,
        retry: Option<crate::Retry>,
        timeout: Option<std::time::Duration>,
        hooks: TaskHooks,
    ) -> Arc<Self> {
        Arc::new(Self {
            id: NEXT_TASK_RUN.fetch_add(1, Ordering::Relaxed),
            name: name.to_string(),
            retry,
            timeout,
            published: Mutex::new(Vec::new()),
            retries_used: std::sync::atomic::AtomicU32::new(0),
            hooks,
            hooked: AtomicBool::new(false),
            logs: Mutex::new((Vec::new(), 0)),
            record: Mutex::new(TaskRunRecord {
                id: 0,
                expected_rows: None,
                logs: Vec::new(),
                logs_dropped: 0,
                sinks: Vec::new(),
                name: name.to_string(),
                state: TaskState::Pending,
                version,
                start: Utc::now(),
                end: None,
                duration_ms: None,
                busy_ms: 0.0,
                rows: None,
                bytes: None,
                sources: Vec::new(),
                cache_key: None,
                cache: None,
                executions: Vec::new(),
                attempts: Vec::new(),
                reason: None,
                error: None,
            }),
            started: Instant::now(),
            executions: Mutex::new(Vec::new()),
            awaits_stream: AtomicBool::new(false),
            body_ended: AtomicBool::new(false),
            superseded_by: Mutex::new(None),
            detached: false,
        })
    }

    /// The body starts running (again, after a retry).
    pub(crate) fn start(&self) {
        let mut record = self.lock();
        if matches!(record.state, TaskState::Pending | TaskState::Retrying) {
            record.state = TaskState::Running;
        }
    }

    /// Spends one retry of this task's policy, if any is left: returns the attempt
    /// number that follows (2 for the first retry) and the delay before it.
    pub(crate) fn take_retry(&self) -> Option<(u32, std::time::Duration)> {
        let retry = self.retry.as_ref()?;
        let used = self
            .retries_used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used < retry.retries()).then_some(used + 1)
            })
            .ok()?;
        Some((used + 2, retry.delay_before(used + 1)))
    }

    /// Records an attempt of the body. A failed one that will be retried puts the run
    /// in `Retrying` (its error shown until the next attempt).
    pub(crate) fn attempt(
        &self,
        attempt: u32,
        start: DateTime<Utc>,
        duration: std::time::Duration,
        error: Option<&Error>,
        retrying: bool,
    ) {
        let mut record = self.lock();
        record.attempts.push(TaskAttempt {
            attempt,
            start,
            duration_ms: duration.as_secs_f64() * 1e3,
            error: error.map(|e| e.to_string()),
        });
        if retrying {
            record.state = TaskState::Retrying;
            record.end = None;
            record.duration_ms = None;
            record.error = error.map(|e| e.to_string());
        }
    }

    /// The run as progress shows it: its state and the figures of its latest execution.
    pub(crate) fn live(&self) -> LiveTask {
        let latest = self
            .executions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last()
            .cloned();
        let record = self.lock();
        let (rows, bytes, elapsed) = match &latest {
            Some(e) => (
                e.rows.load(Ordering::Relaxed),
                e.bytes.load(Ordering::Relaxed),
                e.started.elapsed(),
            ),
            None => (
                record.rows.unwrap_or(0),
                record.bytes.unwrap_or(0),
                self.started.elapsed(),
            ),
        };
        LiveTask {
            id: self.id,
            name: self.name.clone(),
            state: record.state,
            rows,
            bytes,
            elapsed,
            expected_rows: record.expected_rows,
        }
    }

    /// Keeps a log line emitted inside the run (the first [`MAX_LOG_LINES`]).
    pub(crate) fn log(&self, line: LogLine) {
        let mut logs = self.logs.lock().unwrap_or_else(|p| p.into_inner());
        if logs.0.len() < MAX_LOG_LINES {
            logs.0.push(line);
        } else {
            logs.1 += 1;
        }
    }

    /// The rows its sources hold, for progress.
    pub(crate) fn set_expected_rows(&self, rows: u64) {
        let mut record = self.lock();
        record.expected_rows = Some(record.expected_rows.unwrap_or(0) + rows);
    }

    /// Whether a retry of this task's policy is left (without spending it).
    pub(crate) fn has_retry_left(&self) -> bool {
        self.retry
            .as_ref()
            .is_some_and(|r| self.retries_used.load(Ordering::Acquire) < r.retries())
    }

    /// An execution of this task's output failed with an error that a rerun of the
    /// sink may fix, and a retry is left: the run is `Retrying` until the sink decides.
    pub(crate) fn execution_failed_retryably(&self, error: &Error) {
        let mut record = self.lock();
        if !record.state.is_final() {
            record.state = TaskState::Retrying;
            record.error = Some(error.to_string());
        }
    }

    /// What a sink of this run published at `url` before, if it did.
    pub(crate) fn published(&self, url: &str) -> Option<crate::WriteSummary> {
        self.published
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|w| w.url == url)
            .cloned()
    }

    /// A sink of this run published `summary`.
    pub(crate) fn record_published(&self, summary: &crate::WriteSummary) {
        self.published
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(summary.clone());
        self.lock().sinks.push(SinkRecord {
            url: summary.url.clone(),
            rows: summary.rows,
            bytes: summary.bytes,
            path: summary.path.clone(),
        });
    }

    /// Whether attempts are recorded for this run (it has a retry policy).
    pub(crate) fn records_attempts(&self) -> bool {
        self.retry.is_some()
    }

    /// Calls the hooks of `state`, once per run.
    fn fire_hooks(&self, state: TaskState) {
        let Some(ending) = state.ending() else {
            return;
        };
        if self.hooks.of(ending).is_empty() || self.hooked.swap(true, Ordering::AcqRel) {
            return;
        }
        self.hooks.call(ending, &self.name, &self.snapshot(false));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TaskRunRecord> {
        self.record.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn set_sources(&self, sources: &[String]) {
        let mut record = self.lock();
        for s in sources {
            if !record.sources.contains(s) {
                record.sources.push(s.clone());
            }
        }
    }

    pub(crate) fn set_cache(&self, key: &str, cache: CacheRecord) {
        let mut record = self.lock();
        record.cache_key = Some(key.to_string());
        record.cache = Some(cache);
    }

    /// A checkpoint of this task's output was committed by this run.
    pub(crate) fn checkpoint_committed(&self) {
        if let Some(cache) = self.lock().cache.as_mut() {
            cache.committed = true;
        }
    }

    /// The output was read from a checkpoint: the run is `Cached`, and final.
    pub(crate) fn cached(&self) {
        let mut record = self.lock();
        if matches!(record.state, TaskState::Pending | TaskState::Running) {
            self.finish_locked(&mut record, TaskState::Cached, None);
            drop(record);
            self.fire_hooks(TaskState::Cached);
        }
    }

    /// A downstream task was read from its checkpoint: unless something else executes
    /// this task's output, the run ends `Skipped`.
    pub(crate) fn supersede(&self, by: &str) {
        let mut superseded = self.superseded_by.lock().unwrap_or_else(|p| p.into_inner());
        if superseded.is_none() {
            *superseded = Some(by.to_string());
        }
    }

    /// A run state that records nowhere: a task boundary decoded on a cluster's
    /// scheduler or executor. Its figures travel back as the node's metrics, and the
    /// client records them (see [`record_remote_execution`](Self::record_remote_execution)).
    #[cfg(feature = "ballista")]
    pub(crate) fn detached(name: &str, timeout: Option<std::time::Duration>) -> Arc<Self> {
        let mut run = Self::with_settings(name, None, None, timeout, TaskHooks::default());
        if let Some(state) = Arc::get_mut(&mut run) {
            state.detached = true;
        }
        run
    }

    /// Records an execution that ran elsewhere (on a cluster's executors) and has
    /// ended: its partitions, the rows, bytes and time its boundary counted, whether
    /// it read the task's checkpoint, and how it ended.
    #[cfg(feature = "ballista")]
    pub(crate) fn record_remote_execution(
        &self,
        partitions: usize,
        rows: u64,
        bytes: u64,
        nanos: u64,
        from_checkpoint: bool,
        end: StreamEnd,
    ) {
        let execution = self.new_execution(partitions, from_checkpoint);
        execution.add_output(rows, bytes, nanos);
        for _ in 0..execution.partitions {
            self.stream_closed(&execution, end);
        }
    }

    /// A physical plan starts executing this task's output over `partitions` partitions.
    pub(crate) fn new_execution(
        &self,
        partitions: usize,
        from_checkpoint: bool,
    ) -> Arc<ExecutionState> {
        let execution = Arc::new(ExecutionState {
            started: Instant::now(),
            partitions: partitions.max(1),
            from_checkpoint,
            rows: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            busy_nanos: AtomicU64::new(0),
            ended: AtomicUsize::new(0),
            dropped: AtomicUsize::new(0),
            failed: AtomicBool::new(false),
        });
        self.executions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::clone(&execution));
        execution
    }

    /// One partition stream of `execution` ended. When every partition of it has
    /// ended, the run completes if they all ran to their end; it is `Cancelled` if one
    /// was dropped (unless an earlier execution completed it).
    pub(crate) fn stream_closed(&self, execution: &ExecutionState, end: StreamEnd) {
        let counter = match end {
            StreamEnd::Ended => &execution.ended,
            StreamEnd::Failed => {
                execution.failed.store(true, Ordering::Release);
                &execution.ended
            }
            StreamEnd::Dropped => &execution.dropped,
        };
        counter.fetch_add(1, Ordering::AcqRel);
        let mut record = self.lock();
        let finished = match execution.outcome() {
            ExecutionOutcome::Completed
                if matches!(
                    record.state,
                    TaskState::Running
                        | TaskState::Retrying
                        | TaskState::Cancelled
                        | TaskState::Failed
                ) =>
            {
                // A later execution (a retry of the sink that consumed it) produced the
                // whole output after an earlier one failed or was dropped.
                record.reason = record
                    .error
                    .take()
                    .map(|e| format!("an earlier execution failed: {e}"));
                self.finish_locked(&mut record, TaskState::Completed, None);
                Some(TaskState::Completed)
            }
            ExecutionOutcome::Dropped if record.state == TaskState::Running => {
                record.reason = Some(
                    "its output stream was dropped before its end (a downstream limit, \
                     or a sink that stopped)"
                        .into(),
                );
                self.finish_locked(&mut record, TaskState::Cancelled, None);
                Some(TaskState::Cancelled)
            }
            _ => None,
        };
        drop(record);
        if let Some(state) = finished {
            self.fire_hooks(state);
        }
    }

    /// The body returned a lazy frame: the run stays Running until it has streamed.
    pub(crate) fn expect_stream(&self) {
        self.awaits_stream.store(true, Ordering::Relaxed);
    }

    /// The body returned successfully.
    pub(crate) fn body_done(&self) {
        self.body_ended.store(true, Ordering::Release);
        if self.awaits_stream.load(Ordering::Relaxed) {
            return;
        }
        let mut record = self.lock();
        if record.state == TaskState::Running {
            self.finish_locked(&mut record, TaskState::Completed, None);
            drop(record);
            self.fire_hooks(TaskState::Completed);
        }
    }

    /// Records a sink's figures (rows written, bytes written).
    pub(crate) fn record_written(&self, rows: u64, bytes: u64) {
        let mut record = self.lock();
        record.rows = Some(rows);
        record.bytes = Some(bytes);
    }

    pub(crate) fn fail(&self, error: &Error) {
        self.body_ended.store(true, Ordering::Release);
        let mut record = self.lock();
        if record.state != TaskState::Failed {
            self.finish_locked(&mut record, TaskState::Failed, Some(error.to_string()));
            drop(record);
            self.fire_hooks(TaskState::Failed);
        }
    }

    pub(crate) fn state(&self) -> TaskState {
        self.lock().state
    }

    fn finish_locked(&self, record: &mut TaskRunRecord, state: TaskState, error: Option<String>) {
        record.state = state;
        record.end = Some(Utc::now());
        record.duration_ms = Some(self.started.elapsed().as_secs_f64() * 1e3);
        record.error = error;
        tracing::info!(
            task = %self.name,
            state = ?state,
            duration_ms = record.duration_ms,
            "task run finished"
        );
    }

    /// The record as of now. When `closing` (the flow has ended), a task still waiting
    /// for its output to stream is closed: `Skipped` if a downstream checkpoint made it
    /// unnecessary, `Completed` if nothing consumed it, `Cancelled` if a stream of it was
    /// still open.
    pub(crate) fn snapshot(&self, closing: bool) -> TaskRunRecord {
        self.close(closing.then_some(Closing::Ended))
    }

    /// Closes the run because the flow run ended (`Closing::Ended`) or was interrupted
    /// (`Closing::Interrupted`: every run not final is `Cancelled` with that reason), and
    /// returns its record.
    pub(crate) fn close(&self, closing: Option<Closing<'_>>) -> TaskRunRecord {
        let executions: Vec<TaskExecution> = self
            .executions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|e| e.record())
            .collect();
        let mut record = self.lock();
        let mut finished = None;
        if let Some(Closing::Interrupted(why)) = closing
            && !record.state.is_final()
        {
            record.reason = Some(why.to_string());
            self.finish_locked(&mut record, TaskState::Cancelled, None);
            finished = Some(TaskState::Cancelled);
        } else if closing.is_some()
            && !record.state.is_final()
            && !self.body_ended.load(Ordering::Acquire)
            && record.state != TaskState::Retrying
        {
            // Its call was dropped: a sibling in `map` failed, or a `submit`ted call
            // was still running when the flow run ended.
            record.reason = Some("its call was stopped before it finished".into());
            self.finish_locked(&mut record, TaskState::Cancelled, None);
            finished = Some(TaskState::Cancelled);
        } else if closing.is_some() && record.state == TaskState::Retrying {
            // An execution failed and no sink reran it.
            let error = record.error.take();
            self.finish_locked(&mut record, TaskState::Failed, error);
            finished = Some(TaskState::Failed);
        } else if closing.is_some() && !record.state.is_final() {
            let superseded = self
                .superseded_by
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let (state, reason) = match (executions.is_empty(), superseded) {
                (true, Some(by)) => (
                    TaskState::Skipped,
                    Some(format!(
                        "not executed: downstream task {by:?} was read from its checkpoint"
                    )),
                ),
                (true, None) => (TaskState::Completed, None),
                (false, _) => (
                    TaskState::Cancelled,
                    Some("the flow ended while its output was still streaming".into()),
                ),
            };
            record.reason = reason;
            self.finish_locked(&mut record, state, None);
            finished = Some(state);
        }
        let mut out = record.clone();
        drop(record);
        if let Some(chosen) = executions
            .iter()
            .find(|e| e.outcome == ExecutionOutcome::Completed)
            .or(executions.last())
        {
            out.rows = Some(chosen.rows);
            out.bytes = Some(chosen.bytes);
        }
        out.busy_ms += executions.iter().map(|e| e.busy_ms).sum::<f64>();
        out.executions = executions;
        out.id = self.id;
        {
            let logs = self.logs.lock().unwrap_or_else(|p| p.into_inner());
            out.logs = logs.0.clone();
            out.logs_dropped = logs.1;
        }
        if let Some(state) = finished {
            self.fire_hooks(state);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lazy_run() -> Arc<TaskRunState> {
        let run = TaskRunState::new("t", None);
        run.start();
        run.expect_stream();
        run.body_done();
        run
    }

    #[test]
    fn a_multi_partition_execution_completes_when_its_last_partition_ends() {
        let run = lazy_run();
        let execution = run.new_execution(3, false);
        execution.add_output(10, 100, 1_000);
        run.stream_closed(&execution, StreamEnd::Ended);
        run.stream_closed(&execution, StreamEnd::Ended);
        assert_eq!(run.state(), TaskState::Running);
        execution.add_output(5, 50, 1_000);
        run.stream_closed(&execution, StreamEnd::Ended);
        assert_eq!(run.state(), TaskState::Completed);
        let record = run.snapshot(true);
        assert_eq!(record.rows, Some(15));
        assert_eq!(record.executions.len(), 1);
        assert_eq!(record.executions[0].outcome, ExecutionOutcome::Completed);
    }

    #[test]
    fn a_dropped_stream_is_not_a_finished_one() {
        let run = lazy_run();
        let execution = run.new_execution(2, false);
        run.stream_closed(&execution, StreamEnd::Ended);
        run.stream_closed(&execution, StreamEnd::Dropped);
        assert_eq!(run.state(), TaskState::Cancelled);
        let record = run.snapshot(true);
        assert_eq!(record.state, TaskState::Cancelled);
        assert!(record.reason.unwrap().contains("dropped"));
        assert_eq!(record.executions[0].outcome, ExecutionOutcome::Dropped);
    }

    #[test]
    fn executions_are_recorded_separately_and_rows_do_not_accumulate() {
        let run = lazy_run();
        let first = run.new_execution(1, false);
        first.add_output(7, 70, 0);
        run.stream_closed(&first, StreamEnd::Dropped);
        assert_eq!(run.state(), TaskState::Cancelled);
        let second = run.new_execution(2, false);
        second.add_output(20, 200, 0);
        run.stream_closed(&second, StreamEnd::Ended);
        run.stream_closed(&second, StreamEnd::Ended);
        // A later execution that ran to the end completes the run.
        assert_eq!(run.state(), TaskState::Completed);
        let third = run.new_execution(2, false);
        third.add_output(20, 200, 0);
        run.stream_closed(&third, StreamEnd::Ended);
        run.stream_closed(&third, StreamEnd::Ended);
        let record = run.snapshot(true);
        assert_eq!(record.rows, Some(20), "the first complete execution's rows");
        let rows: Vec<u64> = record.executions.iter().map(|e| e.rows).collect();
        assert_eq!(rows, [7, 20, 20]);
    }

    #[test]
    fn a_failed_partition_fails_the_execution_and_completion_does_not_override_failure() {
        let run = lazy_run();
        let execution = run.new_execution(2, false);
        run.fail(&Error::Internal {
            message: "boom".into(),
        });
        run.stream_closed(&execution, StreamEnd::Failed);
        run.stream_closed(&execution, StreamEnd::Ended);
        assert_eq!(run.state(), TaskState::Failed);
        let record = run.snapshot(true);
        assert_eq!(record.executions[0].outcome, ExecutionOutcome::Failed);
    }

    #[test]
    fn unconsumed_fragments_complete_and_superseded_ones_are_skipped() {
        let unconsumed = lazy_run();
        assert_eq!(unconsumed.snapshot(true).state, TaskState::Completed);
        let superseded = lazy_run();
        superseded.supersede("transform");
        let record = superseded.snapshot(true);
        assert_eq!(record.state, TaskState::Skipped);
        assert!(record.reason.unwrap().contains("transform"));
        assert_eq!(record.rows, None);
        // Superseded but executed by another consumer: completed, not skipped.
        let used = lazy_run();
        used.supersede("transform");
        let execution = used.new_execution(1, false);
        used.stream_closed(&execution, StreamEnd::Ended);
        assert_eq!(used.snapshot(true).state, TaskState::Completed);
    }

    #[test]
    fn logs_are_bounded_and_counted_beyond() {
        let run = lazy_run();
        for i in 0..MAX_LOG_LINES + 50 {
            run.log(LogLine {
                time: Utc::now(),
                level: "INFO".into(),
                target: "t".into(),
                message: format!("line {i}"),
            });
        }
        let record = run.snapshot(true);
        assert_eq!(record.logs.len(), MAX_LOG_LINES);
        assert_eq!(record.logs_dropped, 50);
        assert_eq!(record.logs[0].message, "line 0");
    }

    #[test]
    fn a_cached_run_stays_cached_while_its_checkpoint_streams() {
        let run = lazy_run();
        run.cached();
        let execution = run.new_execution(1, true);
        execution.add_output(3, 30, 0);
        run.stream_closed(&execution, StreamEnd::Ended);
        let record = run.snapshot(true);
        assert_eq!(record.state, TaskState::Cached);
        assert_eq!(record.rows, Some(3));
        assert!(record.executions[0].from_checkpoint);
    }
}
