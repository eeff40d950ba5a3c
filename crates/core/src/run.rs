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
    /// reach the scan, a cancelled sink), and no execution ran to the end.
    Cancelled,
    /// Failed; the record's `error` says why.
    Failed,
}

/// The state of a flow run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum FlowState {
    /// Running.
    Running,
    /// The flow body returned `Ok`.
    Completed,
    /// The flow body returned an error.
    Failed,
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

/// What one task run did. Part of a [`FlowRunRecord`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TaskRunRecord {
    /// The task's name.
    pub name: String,
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

/// The live state of one task run, shared by the task wrapper and the boundary node
/// that counts the task's output while it streams.
#[derive(Debug)]
pub(crate) struct TaskRunState {
    pub(crate) id: u64,
    pub(crate) name: String,
    record: Mutex<TaskRunRecord>,
    started: Instant,
    executions: Mutex<Vec<Arc<ExecutionState>>>,
    /// Set when the body returned a lazy frame: the run completes when it has streamed.
    awaits_stream: AtomicBool,
    /// The downstream task whose checkpoint made this task's output unnecessary.
    superseded_by: Mutex<Option<String>>,
}

static NEXT_TASK_RUN: AtomicU64 = AtomicU64::new(1);

impl TaskRunState {
    pub(crate) fn new(name: &str, version: Option<String>) -> Arc<Self> {
        Arc::new(Self {
            id: NEXT_TASK_RUN.fetch_add(1, Ordering::Relaxed),
            name: name.to_string(),
            record: Mutex::new(TaskRunRecord {
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
                reason: None,
                error: None,
            }),
            started: Instant::now(),
            executions: Mutex::new(Vec::new()),
            awaits_stream: AtomicBool::new(false),
            superseded_by: Mutex::new(None),
        })
    }

    /// The body starts running.
    pub(crate) fn start(&self) {
        let mut record = self.lock();
        if record.state == TaskState::Pending {
            record.state = TaskState::Running;
        }
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

    /// A physical plan starts executing this task's output over `partitions` partitions.
    pub(crate) fn new_execution(
        &self,
        partitions: usize,
        from_checkpoint: bool,
    ) -> Arc<ExecutionState> {
        let execution = Arc::new(ExecutionState {
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
        match execution.outcome() {
            ExecutionOutcome::Completed
                if matches!(record.state, TaskState::Running | TaskState::Cancelled) =>
            {
                record.reason = None;
                self.finish_locked(&mut record, TaskState::Completed, None);
            }
            ExecutionOutcome::Dropped if record.state == TaskState::Running => {
                record.reason = Some(
                    "its output stream was dropped before its end (a downstream limit, \
                     or a sink that stopped)"
                        .into(),
                );
                self.finish_locked(&mut record, TaskState::Cancelled, None);
            }
            _ => {}
        }
    }

    /// The body returned a lazy frame: the run stays Running until it has streamed.
    pub(crate) fn expect_stream(&self) {
        self.awaits_stream.store(true, Ordering::Relaxed);
    }

    /// The body returned successfully.
    pub(crate) fn body_done(&self) {
        if self.awaits_stream.load(Ordering::Relaxed) {
            return;
        }
        let mut record = self.lock();
        if record.state == TaskState::Running {
            self.finish_locked(&mut record, TaskState::Completed, None);
        }
    }

    /// Records a sink's figures (rows written, bytes written).
    pub(crate) fn record_written(&self, rows: u64, bytes: u64) {
        let mut record = self.lock();
        record.rows = Some(rows);
        record.bytes = Some(bytes);
    }

    pub(crate) fn fail(&self, error: &Error) {
        let mut record = self.lock();
        if record.state != TaskState::Failed {
            self.finish_locked(&mut record, TaskState::Failed, Some(error.to_string()));
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
        let executions: Vec<TaskExecution> = self
            .executions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|e| e.record())
            .collect();
        let mut record = self.lock();
        if closing && matches!(record.state, TaskState::Pending | TaskState::Running) {
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
        }
        let mut out = record.clone();
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
