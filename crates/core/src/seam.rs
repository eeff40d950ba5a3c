//! The one seam between the plan layer and the task runtime.
//!
//! Whatever executes a task's output (the boundary node's stream, the column copy, a
//! cluster's executors whose metrics come back to the client) reports it here, and only
//! here: an execution [started](TaskHandle::execution), its [output](Partition::add_output),
//! its [deadline](Partition::deadline), an [error attributed](TaskHandle::attribute) to
//! the task, and how each partition [ended](Partition::end) (to its end, dropped,
//! failed). The runtime implements [`TaskRecorder`] and turns these reports into the
//! task run's state and record; the plan layer never sees the runtime, only a
//! [`TaskHandle`].
//!
//! Sinks inside a task's body report through the same handle, found with [`current`]:
//! what they published (so that a retry does not write it again) and the log lines
//! emitted inside the body.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use datafusion::error::DataFusionError;

use crate::Error;
use crate::record::{ExecutionOutcome, LogLine, TaskExecution, WriteSummary};

/// What the runtime does with the reports of a task run: implemented by the runtime's
/// task run state. Every method is called by the seam's own types, never by the plan
/// layer directly. The defaults record nothing: what a boundary does on a cluster's
/// executor, where the task run does not live.
pub(crate) trait TaskRecorder: Send + Sync + fmt::Debug {
    /// An execution of the task's output started.
    fn execution_started(&self, _execution: &Arc<Execution>) {}
    /// One partition of `execution` ended (its counters already say how).
    fn partition_ended(&self, _execution: &Execution) {}
    /// The task failed with `error`.
    fn failed(&self, _error: &Error) {}
    /// An execution failed with `error`, which a rerun of the sink may fix: returns
    /// whether the task has a retry left (the run then waits for the sink's decision).
    fn failed_retryably(&self, _error: &Error) -> bool {
        false
    }
    /// This run committed a checkpoint of the task's output.
    fn checkpoint_committed(&self) {}
    /// A downstream task was read from its checkpoint: unless something else executes
    /// this task's output, it is not executed.
    fn superseded(&self, _by: &str) {}
    /// What a sink of this run published at `url` before (an earlier attempt).
    fn published(&self, _url: &str) -> Option<WriteSummary> {
        None
    }
    /// A sink of this run published `summary`.
    fn record_published(&self, _summary: &WriteSummary) {}
    /// A log line emitted inside the run.
    fn log(&self, _line: LogLine) {}
    /// What an error attributed to the task becomes as it leaves the boundary: itself,
    /// unless this process only runs the boundary for a client elsewhere (a cluster's
    /// executor), where it leaves as the text the client reads back.
    fn outgoing(&self, error: DataFusionError) -> DataFusionError {
        error
    }
}

/// A task run as the plan layer sees it: its name, its timeout, and where executions
/// of its output are reported. Cheap to clone.
#[derive(Clone)]
pub(crate) struct TaskHandle {
    id: u64,
    name: Arc<str>,
    timeout: Option<Duration>,
    recorder: Arc<dyn TaskRecorder>,
}

impl fmt::Debug for TaskHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskHandle")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl TaskHandle {
    /// The handle of the task run `id` (unique in this process, 0 for one that
    /// records nowhere), reporting to `recorder`.
    pub(crate) fn new(
        id: u64,
        name: &str,
        timeout: Option<Duration>,
        recorder: Arc<dyn TaskRecorder>,
    ) -> Self {
        Self {
            id,
            name: name.into(),
            timeout,
            recorder,
        }
    }

    /// The task run's id.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// The task's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// How long one execution of the task's output may take.
    pub(crate) fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// An execution of the task's output starts over `partitions` partitions (reading
    /// the task's checkpoint when `from_checkpoint`). Each partition reports through
    /// its own [`Partition`] ([`partition`](Self::partition)).
    pub(crate) fn execution(&self, partitions: usize, from_checkpoint: bool) -> Arc<Execution> {
        let execution = Arc::new(Execution {
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
        self.recorder.execution_started(&execution);
        execution
    }

    /// The task failed with `error` (found outside a stream of its output: a
    /// corrupt checkpoint, a cluster's failed job).
    pub(crate) fn fail(&self, error: &Error) {
        self.recorder.failed(error);
    }

    /// This run committed a checkpoint of the task's output.
    pub(crate) fn checkpoint_committed(&self) {
        self.recorder.checkpoint_committed();
    }

    /// A downstream task (`by`) was read from its checkpoint, which replaced the plan
    /// holding this task's output.
    pub(crate) fn superseded(&self, by: &str) {
        self.recorder.superseded(by);
    }

    /// Attributes an error that reached the task's output, reading `sources`: one
    /// that an upstream task's boundary already attributed passes through (this task
    /// failed because of it, and records so); a retryable one leaves the run waiting
    /// for the sink's retry when a retry is left; any other is this task's own.
    pub(crate) fn attribute(&self, sources: &[String], error: DataFusionError) -> DataFusionError {
        let ours = Error::from_datafusion(error, sources);
        let attributed = if ours.task().is_none()
            && ours.is_retryable()
            && self.recorder.failed_retryably(&ours)
        {
            self.own(ours)
        } else if let Some(upstream) = ours.task() {
            self.recorder.failed(&Error::UpstreamFailed {
                task: self.name.to_string(),
                upstream: upstream.to_string(),
            });
            ours
        } else {
            self.recorder.failed(&ours);
            self.own(ours)
        };
        self.leaving(attributed.into())
    }

    /// `error`, attributed to this task elsewhere (a corrupt checkpoint), as it
    /// leaves the boundary.
    pub(crate) fn leaving(&self, error: DataFusionError) -> DataFusionError {
        self.recorder.outgoing(error)
    }

    fn own(&self, error: Error) -> Error {
        Error::Task {
            task: self.name.to_string(),
            source: Box::new(error),
        }
    }

    /// The error of an execution that outlived the task's timeout.
    pub(crate) fn timed_out(&self) -> Error {
        Error::Timeout {
            scope: "task",
            name: self.name.to_string(),
            limit: self.timeout().unwrap_or_default(),
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

/// One execution of a task's output: the partitions of one physical plan's boundary
/// node (or one column copy). Counted by the streams of those partitions.
///
/// The runtime keeps it in the task run's state, so it holds no handle back to the
/// task (that would be a cycle no run's end breaks): its partitions do.
#[derive(Debug)]
pub(crate) struct Execution {
    started: Instant,
    partitions: usize,
    from_checkpoint: bool,
    rows: AtomicU64,
    bytes: AtomicU64,
    busy_nanos: AtomicU64,
    ended: AtomicUsize,
    dropped: AtomicUsize,
    failed: AtomicBool,
}

impl Execution {
    /// A batch of `rows` rows and `bytes` bytes left the task, `nanos` after it was asked for.
    pub(crate) fn add_output(&self, rows: u64, bytes: u64, nanos: u64) {
        self.rows.fetch_add(rows, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.busy_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// When the execution started.
    pub(crate) fn started(&self) -> Instant {
        self.started
    }

    /// Rows out so far.
    pub(crate) fn rows(&self) -> u64 {
        self.rows.load(Ordering::Relaxed)
    }

    /// Bytes out so far (in memory).
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// How the execution stands: running until every partition ended; failed if one
    /// failed; dropped if one was dropped; completed when all ran to their end.
    pub(crate) fn outcome(&self) -> ExecutionOutcome {
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

    /// The execution as the run record shows it.
    pub(crate) fn record(&self) -> TaskExecution {
        TaskExecution {
            outcome: self.outcome(),
            partitions: self.partitions,
            rows: self.rows(),
            bytes: self.bytes(),
            busy_ms: self.busy_nanos.load(Ordering::Relaxed) as f64 / 1e6,
            from_checkpoint: self.from_checkpoint,
        }
    }
}

/// One partition's stream of an execution: ends once, as [`Dropped`](StreamEnd::Dropped)
/// when dropped before it ended otherwise.
#[derive(Debug)]
pub(crate) struct Partition {
    task: TaskHandle,
    execution: Arc<Execution>,
    closed: AtomicBool,
}

impl TaskHandle {
    /// A partition of `execution`, one of this task's.
    pub(crate) fn partition(&self, execution: &Arc<Execution>) -> Partition {
        Partition {
            task: self.clone(),
            execution: Arc::clone(execution),
            closed: AtomicBool::new(false),
        }
    }
}

impl Partition {
    /// The task whose output this partition carries.
    pub(crate) fn task(&self) -> &TaskHandle {
        &self.task
    }

    /// A batch of `rows` rows and `bytes` bytes left the task, `nanos` after it was asked for.
    pub(crate) fn add_output(&self, rows: u64, bytes: u64, nanos: u64) {
        self.execution.add_output(rows, bytes, nanos);
    }

    /// When the execution times out: the task's timeout after it started.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        let timeout = self.task.timeout()?;
        Some(self.execution.started + timeout)
    }

    /// The partition ended (the first call counts; later ones and the drop do not).
    pub(crate) fn end(&self, end: StreamEnd) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let execution = &self.execution;
        match end {
            StreamEnd::Ended => execution.ended.fetch_add(1, Ordering::AcqRel),
            StreamEnd::Failed => {
                execution.failed.store(true, Ordering::Release);
                execution.ended.fetch_add(1, Ordering::AcqRel)
            }
            StreamEnd::Dropped => execution.dropped.fetch_add(1, Ordering::AcqRel),
        };
        self.task.recorder.partition_ended(execution);
    }

    /// Whether it has ended.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        self.end(StreamEnd::Dropped);
    }
}

tokio::task_local! {
    /// The task run whose body is running: sinks inside it report through it.
    static CURRENT: TaskHandle;
}

/// The task run whose body is running on this tokio task, if any.
pub(crate) fn current() -> Option<TaskHandle> {
    CURRENT.try_with(TaskHandle::clone).ok()
}

/// Runs `body` as the body of `task`: [`current`] returns it inside.
pub(crate) async fn scope<F: Future>(task: TaskHandle, body: F) -> F::Output {
    CURRENT.scope(task, body).await
}

impl TaskHandle {
    /// What a sink of this run published at `url` before (an earlier attempt).
    pub(crate) fn published(&self, url: &str) -> Option<WriteSummary> {
        self.recorder.published(url)
    }

    /// A sink of this run published `summary`.
    pub(crate) fn record_published(&self, summary: &WriteSummary) {
        self.recorder.record_published(summary);
    }

    /// A log line emitted inside the run.
    pub(crate) fn log(&self, line: LogLine) {
        self.recorder.log(line);
    }
}

/// A handle whose reports go nowhere, for unit tests of the layers that report.
#[cfg(test)]
pub(crate) fn silent(name: &str) -> TaskHandle {
    #[derive(Debug)]
    struct Silent;
    impl TaskRecorder for Silent {}
    TaskHandle::new(1, name, None, Arc::new(Silent))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Records what the seam reports, as the runtime would see it.
    #[derive(Debug, Default)]
    struct Log {
        events: Mutex<Vec<String>>,
        retry_left: AtomicBool,
    }

    impl Log {
        fn push(&self, event: String) {
            self.events.lock().unwrap().push(event);
        }
        fn take(&self) -> Vec<String> {
            std::mem::take(&mut *self.events.lock().unwrap())
        }
    }

    impl TaskRecorder for Log {
        fn execution_started(&self, execution: &Arc<Execution>) {
            self.push(format!("started {}", execution.partitions));
        }
        fn partition_ended(&self, execution: &Execution) {
            self.push(format!("ended {:?}", execution.outcome()));
        }
        fn failed(&self, error: &Error) {
            self.push(format!("failed {error}"));
        }
        fn failed_retryably(&self, error: &Error) -> bool {
            let left = self.retry_left.load(Ordering::Acquire);
            self.push(format!("retryable {left} {error}"));
            left
        }
        fn checkpoint_committed(&self) {
            self.push("committed".into());
        }
        fn superseded(&self, by: &str) {
            self.push(format!("superseded by {by}"));
        }
        fn published(&self, _url: &str) -> Option<WriteSummary> {
            None
        }
        fn record_published(&self, summary: &WriteSummary) {
            self.push(format!("published {}", summary.url));
        }
        fn log(&self, line: LogLine) {
            self.push(format!("log {}", line.message));
        }
    }

    fn task(timeout: Option<Duration>) -> (TaskHandle, Arc<Log>) {
        let log = Arc::new(Log::default());
        (TaskHandle::new(7, "t", timeout, log.clone()), log)
    }

    #[test]
    fn an_execution_is_running_until_its_last_partition_ends() {
        let (task, log) = task(None);
        let execution = task.execution(3, false);
        let parts: Vec<Partition> = (0..3).map(|_| task.partition(&execution)).collect();
        parts[0].add_output(10, 100, 5);
        parts[0].end(StreamEnd::Ended);
        parts[1].end(StreamEnd::Ended);
        assert_eq!(execution.outcome(), ExecutionOutcome::Running);
        parts[2].add_output(5, 50, 5);
        parts[2].end(StreamEnd::Ended);
        assert_eq!(execution.outcome(), ExecutionOutcome::Completed);
        assert_eq!(
            log.take(),
            [
                "started 3",
                "ended Running",
                "ended Running",
                "ended Completed"
            ]
        );
        let record = execution.record();
        assert_eq!((record.rows, record.bytes, record.partitions), (15, 150, 3));
    }

    #[test]
    fn an_execution_does_not_keep_its_task_alive() {
        // The runtime keeps its executions: one holding its task's recorder would be a
        // cycle, and no task run's state would ever be freed.
        let (task, log) = task(None);
        let execution = task.execution(1, false);
        task.partition(&execution).end(StreamEnd::Ended);
        drop(task);
        assert_eq!(Arc::strong_count(&log), 1);
        assert_eq!(execution.outcome(), ExecutionOutcome::Completed);
    }

    #[test]
    fn a_partition_ends_once_and_a_drop_before_its_end_counts_as_dropped() {
        let (task, log) = task(None);
        let execution = task.execution(2, true);
        let first = task.partition(&execution);
        first.end(StreamEnd::Ended);
        first.end(StreamEnd::Failed);
        drop(first);
        drop(task.partition(&execution));
        assert_eq!(execution.outcome(), ExecutionOutcome::Dropped);
        assert!(execution.record().from_checkpoint);
        assert_eq!(log.take(), ["started 2", "ended Running", "ended Dropped"]);
    }

    #[test]
    fn a_failed_partition_fails_the_execution_whatever_the_others_do() {
        let (task, _log) = task(None);
        let execution = task.execution(2, false);
        task.partition(&execution).end(StreamEnd::Failed);
        task.partition(&execution).end(StreamEnd::Ended);
        assert_eq!(execution.outcome(), ExecutionOutcome::Failed);
    }

    #[test]
    fn the_deadline_is_the_timeout_after_the_execution_started() {
        let (task, _log) = task(Some(Duration::from_secs(5)));
        let execution = task.execution(1, false);
        let partition = task.partition(&execution);
        assert_eq!(
            partition.deadline(),
            Some(execution.started() + Duration::from_secs(5))
        );
        let (untimed, _log) = self::task(None);
        assert_eq!(
            untimed.partition(&untimed.execution(1, false)).deadline(),
            None
        );
        assert!(task.timed_out().to_string().contains("\"t\""));
    }

    #[test]
    fn an_error_is_the_tasks_own_unless_an_upstream_task_is_named() {
        let (task, log) = task(None);
        let own = task.attribute(&[], DataFusionError::Execution("boom".into()));
        assert_eq!(Error::from(own).task(), Some("t"));
        assert!(log.take()[0].starts_with("failed "));
        let upstream = Error::Task {
            task: "up".into(),
            source: Box::new(Error::Internal {
                message: "x".into(),
            }),
        };
        let passed = task.attribute(&[], upstream.into());
        assert_eq!(Error::from(passed).task(), Some("up"));
        let events = log.take();
        assert!(events[0].contains("upstream"), "{events:?}");
    }

    #[test]
    fn a_retryable_error_waits_for_the_sink_when_a_retry_is_left() {
        let (task, log) = task(None);
        let throttled = || {
            DataFusionError::External(Box::new(Error::Timeout {
                scope: "request",
                name: "s3://b/k".into(),
                limit: Duration::from_secs(1),
            }))
        };
        log.retry_left.store(true, Ordering::Release);
        let _ = task.attribute(&["s3://b/k".into()], throttled());
        let events = log.take();
        assert_eq!(events.len(), 1, "{events:?}");
        assert!(events[0].starts_with("retryable true"), "{events:?}");
        log.retry_left.store(false, Ordering::Release);
        let _ = task.attribute(&["s3://b/k".into()], throttled());
        let events = log.take();
        assert!(events[1].starts_with("failed "), "{events:?}");
    }

    #[tokio::test]
    async fn sinks_inside_a_body_find_its_task() {
        let (task, log) = task(None);
        assert!(current().is_none());
        scope(task, async {
            let current = current().expect("inside the scope");
            current.record_published(&WriteSummary {
                url: "file:///out".into(),
                rows: 1,
                bytes: 1,
                files: Vec::new(),
                method: Default::default(),
                writers: Vec::new(),
                assembly: None,
            });
        })
        .await;
        assert_eq!(log.take(), ["published file:///out"]);
    }
}
