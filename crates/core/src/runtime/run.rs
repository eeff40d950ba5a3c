//! The live state of task runs: what the seam reports becomes a run's state, figures and
//! record ([`TaskRunState`], the seam's [`TaskRecorder`]); hooks fire when a run ends.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::{DateTime, Utc};

use crate::Error;
use crate::record::{
    CacheRecord, ExecutionOutcome, LogLine, MAX_LOG_LINES, SinkRecord, TaskAttempt, TaskExecution,
    TaskRunRecord, TaskState, WriteSummary,
};
use crate::seam::{Execution, TaskHandle, TaskRecorder};

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
    executions: Mutex<Vec<Arc<Execution>>>,
    /// Set when the body returned a lazy frame: the run completes when it has streamed.
    awaits_stream: AtomicBool,
    /// Set when a call of the body ended (returned, failed, or was read from a
    /// checkpoint); a run closed without it was stopped mid-call.
    body_ended: AtomicBool,
    /// The downstream task whose checkpoint made this task's output unnecessary.
    superseded_by: Mutex<Option<String>>,
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
        })
    }

    /// This run as the plan layer sees it: the seam its executions report through.
    pub(crate) fn handle(self: &Arc<Self>) -> TaskHandle {
        TaskHandle::new(
            self.id,
            &self.name,
            self.timeout,
            Arc::clone(self) as Arc<dyn TaskRecorder>,
        )
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
            Some(e) => (e.rows(), e.bytes(), e.started().elapsed()),
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

    /// The rows its sources hold, for progress.
    pub(crate) fn set_expected_rows(&self, rows: u64) {
        let mut record = self.lock();
        record.expected_rows = Some(record.expected_rows.unwrap_or(0) + rows);
    }

    /// Whether a retry of this task's policy is left (without spending it).
    fn has_retry_left(&self) -> bool {
        self.retry
            .as_ref()
            .is_some_and(|r| self.retries_used.load(Ordering::Acquire) < r.retries())
    }

    /// An execution of this task's output failed with an error that a rerun of the
    /// sink may fix, and a retry is left: the run is `Retrying` until the sink decides.
    fn execution_failed_retryably(&self, error: &Error) {
        let mut record = self.lock();
        if !record.state.is_final() {
            record.state = TaskState::Retrying;
            record.error = Some(error.to_string());
        }
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

    /// The output was read from a checkpoint: the run is `Cached`, and final.
    pub(crate) fn cached(&self) {
        let mut record = self.lock();
        if matches!(record.state, TaskState::Pending | TaskState::Running) {
            self.finish_locked(&mut record, TaskState::Cached, None);
            drop(record);
            self.fire_hooks(TaskState::Cached);
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

/// The runtime's side of the seam: what the plan layer reports becomes this run's state
/// and record.
impl TaskRecorder for TaskRunState {
    fn execution_started(&self, execution: &Arc<Execution>) {
        self.executions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::clone(execution));
    }

    /// One partition of `execution` ended. When every partition of it has ended, the
    /// run completes if they all ran to their end; it is `Cancelled` if one was dropped
    /// (unless an earlier execution completed it).
    fn partition_ended(&self, execution: &Execution) {
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

    /// A downstream task was read from its checkpoint: unless something else executes
    /// this task's output, the run ends `Skipped`.
    fn superseded(&self, by: &str) {
        let mut superseded = self.superseded_by.lock().unwrap_or_else(|p| p.into_inner());
        if superseded.is_none() {
            *superseded = Some(by.to_string());
        }
    }

    fn failed(&self, error: &Error) {
        self.fail(error);
    }

    fn failed_retryably(&self, error: &Error) -> bool {
        if !self.has_retry_left() {
            return false;
        }
        self.execution_failed_retryably(error);
        true
    }

    /// A checkpoint of this task's output was committed by this run.
    fn checkpoint_committed(&self) {
        if let Some(cache) = self.lock().cache.as_mut() {
            cache.committed = true;
        }
    }

    /// What a sink of this run published at `url` before, if it did.
    fn published(&self, url: &str) -> Option<WriteSummary> {
        self.published
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|w| w.url == url)
            .cloned()
    }

    /// A sink of this run published `summary`.
    fn record_published(&self, summary: &WriteSummary) {
        self.published
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(summary.clone());
        self.lock().sinks.push(SinkRecord {
            url: summary.url.clone(),
            rows: summary.rows,
            bytes: summary.bytes,
            method: summary.method.clone(),
            writers: summary.writers.clone(),
            assembly: summary.assembly,
        });
    }

    /// Keeps a log line emitted inside the run (the first [`MAX_LOG_LINES`]).
    fn log(&self, line: LogLine) {
        let mut logs = self.logs.lock().unwrap_or_else(|p| p.into_inner());
        if logs.0.len() < MAX_LOG_LINES {
            logs.0.push(line);
        } else {
            logs.1 += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seam::StreamEnd;

    /// Ends one partition of `execution` per entry of `ends`, in order.
    fn end(run: &Arc<TaskRunState>, execution: &Arc<Execution>, ends: &[StreamEnd]) {
        let task = run.handle();
        for &e in ends {
            task.partition(execution).end(e);
        }
    }

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
        let execution = run.handle().execution(3, false);
        execution.add_output(10, 100, 1_000);
        end(&run, &execution, &[StreamEnd::Ended]);
        end(&run, &execution, &[StreamEnd::Ended]);
        assert_eq!(run.state(), TaskState::Running);
        execution.add_output(5, 50, 1_000);
        end(&run, &execution, &[StreamEnd::Ended]);
        assert_eq!(run.state(), TaskState::Completed);
        let record = run.snapshot(true);
        assert_eq!(record.rows, Some(15));
        assert_eq!(record.executions.len(), 1);
        assert_eq!(record.executions[0].outcome, ExecutionOutcome::Completed);
    }

    #[test]
    fn a_dropped_stream_is_not_a_finished_one() {
        let run = lazy_run();
        let execution = run.handle().execution(2, false);
        end(&run, &execution, &[StreamEnd::Ended]);
        end(&run, &execution, &[StreamEnd::Dropped]);
        assert_eq!(run.state(), TaskState::Cancelled);
        let record = run.snapshot(true);
        assert_eq!(record.state, TaskState::Cancelled);
        assert!(record.reason.unwrap().contains("dropped"));
        assert_eq!(record.executions[0].outcome, ExecutionOutcome::Dropped);
    }

    #[test]
    fn executions_are_recorded_separately_and_rows_do_not_accumulate() {
        let run = lazy_run();
        let first = run.handle().execution(1, false);
        first.add_output(7, 70, 0);
        end(&run, &first, &[StreamEnd::Dropped]);
        assert_eq!(run.state(), TaskState::Cancelled);
        let second = run.handle().execution(2, false);
        second.add_output(20, 200, 0);
        end(&run, &second, &[StreamEnd::Ended]);
        end(&run, &second, &[StreamEnd::Ended]);
        // A later execution that ran to the end completes the run.
        assert_eq!(run.state(), TaskState::Completed);
        let third = run.handle().execution(2, false);
        third.add_output(20, 200, 0);
        end(&run, &third, &[StreamEnd::Ended]);
        end(&run, &third, &[StreamEnd::Ended]);
        let record = run.snapshot(true);
        assert_eq!(record.rows, Some(20), "the first complete execution's rows");
        let rows: Vec<u64> = record.executions.iter().map(|e| e.rows).collect();
        assert_eq!(rows, [7, 20, 20]);
    }

    #[test]
    fn a_failed_partition_fails_the_execution_and_completion_does_not_override_failure() {
        let run = lazy_run();
        let execution = run.handle().execution(2, false);
        run.fail(&Error::Internal {
            message: "boom".into(),
        });
        end(&run, &execution, &[StreamEnd::Failed]);
        end(&run, &execution, &[StreamEnd::Ended]);
        assert_eq!(run.state(), TaskState::Failed);
        let record = run.snapshot(true);
        assert_eq!(record.executions[0].outcome, ExecutionOutcome::Failed);
    }

    #[test]
    fn unconsumed_fragments_complete_and_superseded_ones_are_skipped() {
        let unconsumed = lazy_run();
        assert_eq!(unconsumed.snapshot(true).state, TaskState::Completed);
        let superseded = lazy_run();
        superseded.handle().superseded("transform");
        let record = superseded.snapshot(true);
        assert_eq!(record.state, TaskState::Skipped);
        assert!(record.reason.unwrap().contains("transform"));
        assert_eq!(record.rows, None);
        // Superseded but executed by another consumer: completed, not skipped.
        let used = lazy_run();
        used.handle().superseded("transform");
        let execution = used.handle().execution(1, false);
        end(&used, &execution, &[StreamEnd::Ended]);
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
        let execution = run.handle().execution(1, true);
        execution.add_output(3, 30, 0);
        end(&run, &execution, &[StreamEnd::Ended]);
        let record = run.snapshot(true);
        assert_eq!(record.state, TaskState::Cached);
        assert_eq!(record.rows, Some(3));
        assert!(record.executions[0].from_checkpoint);
    }
}
