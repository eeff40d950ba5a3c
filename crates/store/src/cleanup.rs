//! Cleanups that run in the background, and a way to wait for them.
//!
//! Dropping a staged output deletes its staging objects, and dropping an unfinished
//! multipart upload aborts it. A `Drop` cannot await, so both are spawned on the
//! runtime. A process that stops right after (Ctrl-C, a timeout) must wait for them
//! before its runtime shuts down, or the staging objects and pending uploads stay
//! behind: [`drain`] is that wait. It also waits for every multipart upload that is
//! open: the writers of a cancelled plan run in tasks that tokio drops only when a
//! worker gets to them, and each one's upload is aborted then.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use std::time::Duration;
//! sluice_store::cleanup::spawn("example", async { /* delete something */ });
//! assert!(sluice_store::cleanup::drain(Duration::from_secs(5)).await);
//! assert_eq!(sluice_store::cleanup::pending(), 0);
//! # }
//! ```

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

static PENDING: AtomicUsize = AtomicUsize::new(0);
/// Of those, the spawned cleanups.
static CLEANUPS: AtomicUsize = AtomicUsize::new(0);
static DONE: Notify = Notify::const_new();

/// Runs `cleanup` in the background on the current runtime, counted until it ends.
/// Outside a runtime it cannot run: it is dropped with a warning, and `false` returned.
pub fn spawn(what: &'static str, cleanup: impl Future<Output = ()> + Send + 'static) -> bool {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        tracing::warn!(
            what,
            "a cleanup was due outside a tokio runtime; it did not run"
        );
        return false;
    };
    let guard = Cleanup::new();
    handle.spawn(async move {
        let _guard = guard;
        cleanup.await;
    });
    true
}

/// A spawned cleanup, counted by [`drain_cleanups`] and, as any [`Pending`] work, by
/// [`drain`].
struct Cleanup {
    _pending: Pending,
}

impl Cleanup {
    fn new() -> Self {
        CLEANUPS.fetch_add(1, Ordering::AcqRel);
        Cleanup {
            _pending: Pending::new(),
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        // Before the `Pending` field drops and wakes the waiters.
        CLEANUPS.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts one piece of work [`drain`] waits for (a cleanup, an open multipart upload)
/// from its creation until it is dropped.
#[derive(Debug)]
pub(crate) struct Pending;

impl Pending {
    pub(crate) fn new() -> Self {
        PENDING.fetch_add(1, Ordering::AcqRel);
        Pending
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        PENDING.fetch_sub(1, Ordering::AcqRel);
        DONE.notify_waiters();
    }
}

/// How many background cleanups are running, and multipart uploads are open.
pub fn pending() -> usize {
    PENDING.load(Ordering::Acquire)
}

/// Waits until no background cleanup is running and no multipart upload is open (in
/// this process: other writes in flight count too), at most `limit`. Returns whether
/// they all ended.
pub async fn drain(limit: Duration) -> bool {
    wait_for(limit, pending).await
}

/// Waits until no background cleanup (a staging delete, an abort, an invalidation) is
/// running, at most `limit`, without waiting for the multipart uploads still open in
/// this process; returns whether they all ended. A failed run waits so: what it
/// promised to remove is gone when it returns, even if the process exits right after.
pub async fn drain_cleanups(limit: Duration) -> bool {
    wait_for(limit, || CLEANUPS.load(Ordering::Acquire)).await
}

async fn wait_for(limit: Duration, count: impl Fn() -> usize) -> bool {
    let wait = async {
        loop {
            let notified = DONE.notified();
            if count() == 0 {
                return;
            }
            notified.await;
        }
    };
    let done = tokio::time::timeout(limit, wait).await.is_ok();
    if !done {
        tracing::warn!(
            pending = count(),
            "background cleanups (staging deletes, multipart aborts) did not end in time"
        );
    }
    done
}
