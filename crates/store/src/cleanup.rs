//! Cleanups that run in the background, and a way to wait for them.
//!
//! Dropping a staged output deletes its staging objects, and dropping an unfinished
//! multipart upload aborts it. A `Drop` cannot await, so both are spawned on the
//! runtime. A process that stops right after (Ctrl-C, a timeout) must wait for them
//! before its runtime shuts down, or the staging objects and pending uploads stay
//! behind: [`drain`] is that wait.
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
    PENDING.fetch_add(1, Ordering::AcqRel);
    let guard = Pending;
    handle.spawn(async move {
        let _guard = guard;
        cleanup.await;
    });
    true
}

/// Decrements the count when the cleanup ends, or when the runtime drops it.
struct Pending;

impl Drop for Pending {
    fn drop(&mut self) {
        PENDING.fetch_sub(1, Ordering::AcqRel);
        DONE.notify_waiters();
    }
}

/// How many background cleanups are running.
pub fn pending() -> usize {
    PENDING.load(Ordering::Acquire)
}

/// Waits until no background cleanup is running, at most `limit`. Returns whether
/// they all ended.
pub async fn drain(limit: Duration) -> bool {
    let wait = async {
        loop {
            let notified = DONE.notified();
            if pending() == 0 {
                return;
            }
            notified.await;
        }
    };
    let done = tokio::time::timeout(limit, wait).await.is_ok();
    if !done {
        tracing::warn!(
            pending = pending(),
            "background cleanups (staging deletes, multipart aborts) did not end in time"
        );
    }
    done
}
