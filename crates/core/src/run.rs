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

/// What one task run did. Part of a [`FlowRunRecord`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// of its fragment, including everything upstream of it, in lazy mode).
    pub busy_ms: f64,
    /// Rows out of the task: rows that streamed past its boundary, or rows a sink wrote.
    pub rows: Option<u64>,
    /// In-memory Arrow bytes out of the task, or bytes a sink wrote.
    pub bytes: Option<u64>,
    /// Sources the task's output was read from.
    pub sources: Vec<String>,
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

/// The live state of one task run, shared by the task wrapper and the boundary node
/// that counts the task's output while it streams.
#[derive(Debug)]
pub(crate) struct TaskRunState {
    pub(crate) id: u64,
    pub(crate) name: String,
    record: Mutex<TaskRunRecord>,
    started: Instant,
    rows: AtomicU64,
    bytes: AtomicU64,
    busy_nanos: AtomicU64,
    closed_streams: AtomicUsize,
    /// Set once any stream went through the boundary.
    streamed: AtomicBool,
    /// Set when the body returned a lazy frame: the run completes when it has streamed.
    awaits_stream: AtomicBool,
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
                error: None,
            }),
            started: Instant::now(),
            rows: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            busy_nanos: AtomicU64::new(0),
            closed_streams: AtomicUsize::new(0),
            streamed: AtomicBool::new(false),
            awaits_stream: AtomicBool::new(false),
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

    /// A batch of `rows` rows and `bytes` bytes left the task, `nanos` after it was asked for.
    pub(crate) fn add_output(&self, rows: u64, bytes: u64, nanos: u64) {
        self.rows.fetch_add(rows, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.busy_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    pub(crate) fn stream_opened(&self) {
        self.streamed.store(true, Ordering::Relaxed);
    }

    /// One of the `partitions` output streams of the boundary ended (at its end, or
    /// dropped). When every partition of an execution has ended, the task is complete
    /// unless it failed.
    pub(crate) fn stream_closed(&self, partitions: usize) {
        let closed = self.closed_streams.fetch_add(1, Ordering::AcqRel) + 1;
        if closed.is_multiple_of(partitions.max(1)) {
            let mut record = self.lock();
            if record.state == TaskState::Running {
                self.finish_locked(&mut record, TaskState::Completed, None);
            }
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
            rows = self.rows.load(Ordering::Relaxed),
            duration_ms = record.duration_ms,
            "task run finished"
        );
    }

    /// The record as of now; a task still Running when its flow ends is closed as
    /// Completed (a lazy fragment that no sink consumed).
    pub(crate) fn snapshot(&self, closing: bool) -> TaskRunRecord {
        let mut record = self.lock();
        if closing && matches!(record.state, TaskState::Pending | TaskState::Running) {
            self.finish_locked(&mut record, TaskState::Completed, None);
        }
        let mut out = record.clone();
        if self.streamed.load(Ordering::Relaxed) {
            out.rows = Some(self.rows.load(Ordering::Relaxed));
            out.bytes = Some(self.bytes.load(Ordering::Relaxed));
        }
        out.busy_ms = self.busy_nanos.load(Ordering::Relaxed) as f64 / 1e6;
        out
    }
}
