//! Running task calls concurrently: [`map`] over inputs, [`submit`] for a handle, and
//! the limits that bound how many task bodies run at once (per flow and per tag).
//!
//! A task call is a future; futures awaited together run at the same time. In lazy
//! mode a task's body only builds a plan fragment, so what a limit bounds is the work
//! bodies do themselves: sinks (a `load` task's body is its write), API calls, eager
//! collection. Nested calls (a task called inside another task's body) take no permit,
//! so a limit of 1 cannot deadlock.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::runtime::flow::FlowRunShared;
use crate::{Error, Result};

/// The concurrency limits of one flow run.
#[derive(Debug, Default)]
pub(crate) struct Limits {
    flow: Option<Arc<Semaphore>>,
    tags: HashMap<String, Arc<Semaphore>>,
}

impl Limits {
    pub(crate) fn new(flow: Option<usize>, tags: &[(String, usize)]) -> Self {
        Self {
            flow: flow.map(|n| Arc::new(Semaphore::new(n.max(1)))),
            tags: tags
                .iter()
                .map(|(tag, n)| (tag.clone(), Arc::new(Semaphore::new((*n).max(1)))))
                .collect(),
        }
    }

    /// Waits for a permit of the flow's limit and of each of `tags`' limits.
    pub(crate) async fn acquire(&self, tags: &[String]) -> Vec<OwnedSemaphorePermit> {
        let mut permits = Vec::new();
        let mut semaphores: Vec<&Arc<Semaphore>> = self.flow.iter().collect();
        // Always in the same order (the flow's, then tags sorted), so that two tasks
        // with overlapping tags cannot each hold what the other waits for.
        let mut sorted: Vec<&String> = tags.iter().collect();
        sorted.sort();
        sorted.dedup();
        semaphores.extend(sorted.into_iter().filter_map(|t| self.tags.get(t)));
        for semaphore in semaphores {
            if let Ok(permit) = Arc::clone(semaphore).acquire_owned().await {
                permits.push(permit);
            }
        }
        permits
    }
}

/// Runs `call` on each input at the same time and returns the results in input order,
/// like Prefect's `task.map`. The flow's concurrency limits bound how many run at once.
/// On the first error the calls still running are dropped (their task runs end
/// `Cancelled`) and the error is returned.
///
/// Mapped frames compose like any others: [`Frame::concat`](crate::Frame::concat)
/// unions them lazily into one plan.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> sluice_core::Result<()> {
/// use sluice_core::{Flow, Frame, Task, map};
/// let run = Flow::new("months")
///     .with_run_history(false)
///     .run(serde_json::json!({}), async {
///         let months = map([1, 2, 3], |m| {
///             Task::new("extract").run(move |cx| async move {
///                 cx.sql(&format!("SELECT {m} AS month"), []).await
///             })
///         })
///         .await?;
///         Frame::concat(months)?.count().await
///     })
///     .await;
/// assert_eq!(run.output?, 3);
/// assert_eq!(run.record.tasks.len(), 3);
/// # Ok(())
/// # }
/// ```
pub async fn map<I, F, Fut, T>(inputs: I, call: F) -> Result<Vec<T>>
where
    I: IntoIterator,
    F: FnMut(I::Item) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    futures::future::try_join_all(inputs.into_iter().map(call)).await
}

/// Starts a task call (or any future of the flow) in the background, in the current
/// flow run, and returns a handle to await for its result, like Prefect's
/// `task.submit`. It runs on the runtime's worker threads, beside the flow body.
///
/// The call must own what it uses (`'static`): pass owned arguments (`String`, a
/// `Frame`). A call still running when the flow run ends is stopped (its task run ends
/// `Cancelled`): await the handles you start.
///
/// ```
/// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
/// # async fn main() -> sluice_core::Result<()> {
/// use sluice_core::{Flow, Task, submit};
/// let run = Flow::new("background")
///     .with_run_history(false)
///     .run(serde_json::json!({}), async {
///         let a = submit(Task::new("a").run(|_cx| async { Ok(1u64) }));
///         let b = submit(Task::new("b").run(|_cx| async { Ok(2u64) }));
///         Ok(a.await? + b.await?)
///     })
///     .await;
/// assert_eq!(run.output?, 3);
/// # Ok(())
/// # }
/// ```
pub fn submit<F, T>(call: F) -> TaskFuture<T>
where
    F: Future<Output = Result<T>> + Send + 'static,
    T: Send + 'static,
{
    let flow = FlowRunShared::current();
    let handle = match &flow {
        Some(flow) => {
            let scoped = FlowRunShared::scope(Arc::clone(flow), call);
            let handle = tokio::spawn(scoped);
            flow.track(handle.abort_handle());
            handle
        }
        None => tokio::spawn(call),
    };
    TaskFuture {
        handle,
        flow: flow.map(|f| (f.name.clone(), f.run_id.clone())),
    }
}

/// A task call started with [`submit`]: await it for the call's result.
#[must_use = "a submitted call runs anyway; await it for its result"]
#[derive(Debug)]
pub struct TaskFuture<T> {
    handle: tokio::task::JoinHandle<Result<T>>,
    flow: Option<(String, String)>,
}

impl<T> Future for TaskFuture<T> {
    type Output = Result<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let joined = std::task::ready!(Pin::new(&mut self.handle).poll(cx));
        Poll::Ready(match joined {
            Ok(result) => result,
            Err(e) if e.is_panic() => Err(Error::custom(format!(
                "a submitted task panicked: {}",
                crate::error::panic_message(e.into_panic().as_ref())
            ))),
            Err(_) => {
                let (flow, run_id) = self.flow.clone().unwrap_or_default();
                Err(Error::Cancelled { flow, run_id })
            }
        })
    }
}

/// The background calls of a flow run, stopped when it ends.
#[derive(Debug, Default)]
pub(crate) struct Submitted(Mutex<Vec<tokio::task::AbortHandle>>);

impl Submitted {
    pub(crate) fn push(&self, handle: tokio::task::AbortHandle) {
        let mut handles = self.0.lock().unwrap_or_else(|p| p.into_inner());
        handles.retain(|h| !h.is_finished());
        handles.push(handle);
    }

    /// Stops every call still running; returns how many there were.
    pub(crate) fn abort_all(&self) -> usize {
        let handles = std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()));
        let running: Vec<_> = handles.into_iter().filter(|h| !h.is_finished()).collect();
        for handle in &running {
            handle.abort();
        }
        running.len()
    }
}
