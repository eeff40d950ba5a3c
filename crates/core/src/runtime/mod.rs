//! The task runtime: tasks, flows, their runs and records, retries, concurrency,
//! history, logs and progress.
//!
//! The runtime builds each task's plan fragment (with the checkpoint decision, see
//! [`crate::checkpoint`]) and records what the plan layer reports through the seam
//! ([`crate::seam`]); the plan layer never imports it.

pub(crate) mod concurrency;
pub(crate) mod flow;
pub(crate) mod history;
pub(crate) mod logging;
pub(crate) mod progress;
pub(crate) mod retry;
pub(crate) mod run;
pub(crate) mod task;
