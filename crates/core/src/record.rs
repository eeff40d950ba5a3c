//! Run records: what ran, in what state, with which figures, and what sinks wrote.
//!
//! Plain data (serialisable, compared in tests, stored by [`RunStore`](crate::RunStore)):
//! the plan layer, the runtime and the command line all read them, and none of them is
//! imported here.

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
    /// How it was written: unchanged columns copied, or every column encoded again
    /// (`path` in the record's JSON, as before the field was named `method`).
    #[serde(default, rename = "path")]
    pub method: WriteMethod,
    /// On a cluster, what each executor wrote of it (empty for a local run).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub writers: Vec<WriterShare>,
    /// On a cluster writing one file: how the executors' parts became it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assembly: Option<Assembly>,
}

/// How a cluster's parts became one output file: part of a [`WriteSummary`]. On S3 the
/// store copies the parts' row groups into the file itself and the client sends the
/// footer; elsewhere the client reads the parts and writes the file.
///
/// ```
/// let assembly = sluice_core::Assembly { by_store: 190 << 20, through_client: 40 << 10 };
/// assert!(assembly.through_client < assembly.by_store);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assembly {
    /// Bytes the store copied from the parts itself (S3's `UploadPartCopy`).
    pub by_store: u64,
    /// Bytes sent by the client: the footer, and what it read of the parts and wrote
    /// again (ranges under S3's 5 MiB part minimum, or every byte where the store
    /// cannot copy).
    pub through_client: u64,
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
    /// Where its plans ran: `local`, or the cluster's `df://HOST:PORT`.
    #[serde(default)]
    pub runner: Option<String>,
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

    /// The task runs in order of their start, each with the row of a timeline it is
    /// drawn on: the first row free when it starts (a task still running occupies its
    /// row to the run's end, or now). `sluice ui`'s timeline and the Chrome trace use it.
    ///
    /// ```
    /// # use sluice_core::*;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<()> {
    /// let run = Flow::new("noop")
    ///     .with_run_history(false)
    ///     .run(serde_json::json!({}), async { Ok(()) })
    ///     .await;
    /// assert!(run.record.timeline().is_empty());
    /// # Ok(())
    /// # }
    /// ```
    pub fn timeline(&self) -> Vec<(usize, &TaskRunRecord)> {
        let end = self.end.unwrap_or_else(Utc::now);
        let mut order: Vec<&TaskRunRecord> = self.tasks.iter().collect();
        order.sort_by_key(|t| t.start);
        // Each row's end; a task takes the first row free when it starts.
        let mut rows: Vec<DateTime<Utc>> = Vec::new();
        order
            .into_iter()
            .map(|task| {
                let stop = task.end.unwrap_or(end).max(task.start);
                let row = match rows.iter().position(|&free| free <= task.start) {
                    Some(row) => row,
                    None => {
                        rows.push(task.start);
                        rows.len() - 1
                    }
                };
                rows[row] = stop;
                (row, task)
            })
            .collect()
    }

    /// The run as a Chrome trace (the JSON `chrome://tracing` and Perfetto open): the
    /// flow on the first row, each task run as a span on the first row free at its
    /// start, its state, rows, bytes, busy time, cache lookup and error as arguments.
    /// A task still running ends at the flow's end (or now). For runs too large to draw
    /// in a page: `sluice runs trace ID > run.json`.
    ///
    /// ```
    /// # use sluice_core::*;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<()> {
    /// let run = Flow::new("noop")
    ///     .with_run_history(false)
    ///     .run(serde_json::json!({}), async { Ok(()) })
    ///     .await;
    /// let trace = run.record.chrome_trace();
    /// assert_eq!(trace["traceEvents"][0]["name"], "flow noop");
    /// # Ok(())
    /// # }
    /// ```
    pub fn chrome_trace(&self) -> serde_json::Value {
        use serde_json::json;
        let end = self.end.unwrap_or_else(Utc::now);
        let micros = |t: DateTime<Utc>| (t - self.start).num_microseconds().unwrap_or(0).max(0);
        let mut events = vec![json!({
            "name": format!("flow {}", self.flow),
            "cat": "flow",
            "ph": "X",
            "ts": 0,
            "dur": micros(end),
            "pid": 1,
            "tid": 0,
            "args": {"run_id": self.run_id, "state": self.state, "error": self.error},
        })];
        for (row, task) in self.timeline() {
            let start = micros(task.start);
            let stop = micros(task.end.unwrap_or(end)).max(start);
            events.push(json!({
                "name": task.name,
                "cat": "task",
                "ph": "X",
                "ts": start,
                "dur": stop - start,
                "pid": 1,
                "tid": row + 1,
                "args": {
                    "id": task.id,
                    "state": task.state,
                    "rows": task.rows,
                    "bytes": task.bytes,
                    "busy_ms": task.busy_ms,
                    "attempts": task.attempts.len(),
                    "cache": task.cache.as_ref().map(|c| c.lookup.as_str()),
                    "error": task.error,
                },
            }));
        }
        json!({ "traceEvents": events, "displayTimeUnit": "ms" })
    }
}

/// What a sink wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteSummary {
    /// The destination.
    pub url: String,
    /// Rows written.
    pub rows: u64,
    /// Bytes written, summed over files.
    pub bytes: u64,
    /// The files written.
    pub files: Vec<WrittenFile>,
    /// How it was written: unchanged columns copied, or every column encoded again
    /// (`path` in the record's JSON, as before the field was named `method`).
    #[serde(default, rename = "path")]
    pub method: WriteMethod,
    /// On a cluster, what each executor wrote of it (empty for a local run).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub writers: Vec<WriterShare>,
    /// On a cluster writing one file: how the executors' parts became it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assembly: Option<Assembly>,
}

/// What one of a cluster's executors wrote of a sink's output: part of a
/// [`WriteSummary`] and of the task's [`SinkRecord`].
///
/// ```
/// let share = sluice_core::WriterShare { executor: "10.0.0.7:50051".into(), parts: 2, rows: 6_000_000, bytes: 120 << 20 };
/// assert_eq!(share.parts, 2);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriterShare {
    /// The executor, by the address it serves data at (`sluice executor --bind`).
    pub executor: String,
    /// Parts it wrote (one per partition of the sink it ran).
    pub parts: u64,
    /// Rows in those parts.
    pub rows: u64,
    /// Bytes of those parts, as written.
    pub bytes: u64,
}

/// One file a sink wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrittenFile {
    /// Where it is.
    pub url: String,
    /// Its size in bytes.
    pub size: u64,
}

/// How a Parquet sink wrote its output: in [`WriteSummary`](WriteSummary) and
/// the task's run record.
///
/// ```
/// use sluice_core::WriteMethod;
/// let method = WriteMethod::Rewrite { reason: "a filter reorders nothing but drops rows".into() };
/// assert!(!method.is_column_copy());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WriteMethod {
    /// Unchanged columns were moved as compressed pages; only the new ones were encoded.
    ColumnCopy {
        /// Columns moved without decoding their values.
        copied: Vec<String>,
        /// Columns computed and encoded.
        computed: Vec<String>,
        /// Column chunks copied byte for byte.
        chunks_verbatim: u64,
        /// Column chunks whose pages were compressed again with the output codec.
        chunks_recompressed: u64,
    },
    /// Every column was decoded and encoded again by DataFusion's sink.
    Rewrite {
        /// Why the column copy was not taken.
        reason: String,
    },
}

/// The name [`WriteMethod`] had before it said what it names: how a sink wrote, not
/// where.
#[deprecated(since = "0.2.0", note = "renamed `WriteMethod`")]
pub type WritePath = WriteMethod;

impl WriteMethod {
    /// Whether unchanged columns were copied.
    pub fn is_column_copy(&self) -> bool {
        matches!(self, WriteMethod::ColumnCopy { .. })
    }
}

impl Default for WriteMethod {
    fn default() -> Self {
        WriteMethod::Rewrite {
            reason: String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_records_json_keeps_the_name_path_for_how_a_sink_wrote() {
        let old = r#"{"url":"file:///out.parquet","rows":3,"bytes":10,
                      "path":{"kind":"rewrite","reason":"a filter"}}"#;
        let sink: SinkRecord = serde_json::from_str(old).unwrap();
        assert_eq!(
            sink.method,
            WriteMethod::Rewrite {
                reason: "a filter".into()
            }
        );
        let written = serde_json::to_value(&sink).unwrap();
        assert_eq!(written["path"]["kind"], "rewrite");
        let summary: WriteSummary = serde_json::from_str(
            r#"{"url":"u","rows":1,"bytes":1,"files":[],"path":{"kind":"column_copy","copied":["a"],"computed":[],"chunks_verbatim":1,"chunks_recompressed":0}}"#,
        )
        .unwrap();
        assert!(summary.method.is_column_copy());
    }
}
