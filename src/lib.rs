//! Sluice: a dataflow engine for big-data ETL on Apache DataFusion.
//!
//! Write a pipeline as **tasks** in a **flow**, as Prefect users do with `@task` and
//! `@flow`. A task returns a [`Frame`], a lazy DataFusion plan fragment, not a
//! materialized result; fragments compose, and when a sink runs, data streams in Arrow
//! record batches through extract → transform → load with bounded memory, whatever the
//! size of the data. [`ExecutionMode::Eager`] collects each task's output in memory
//! instead (Prefect's default), for comparison.
//!
//! ```
//! use sluice::prelude::*;
//!
//! #[task]
//! async fn extract(cx: &TaskContext, query: &str) -> Result<Frame> {
//!     cx.sql(query, []).await // lazy: nothing runs yet
//! }
//!
//! #[task]
//! async fn transform(df: Frame) -> Result<Frame> {
//!     df.with_column("tip_fraction", col("tip_amount") / col("total_amount"))
//! }
//!
//! #[task]
//! async fn load(df: Frame, dest: &str) -> Result<WriteSummary> {
//!     df.write_parquet(dest, ParquetWrite::zstd(3)).await // the whole chain runs here
//! }
//!
//! #[flow]
//! async fn etl(query: &str, dest: &str) -> Result<WriteSummary> {
//!     let raw = extract(query).await?;
//!     let df = transform(raw).await?;
//!     load(df, dest).await
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<()> {
//! let dir = tempfile::tempdir().unwrap();
//! let dest = dir.path().join("out.parquet").display().to_string();
//! let query = "SELECT * FROM (VALUES (2.0, 10.0), (0.0, 0.0)) AS t(tip_amount, total_amount)";
//!
//! // Await the flow for its result...
//! let written = etl(query, &dest).await?;
//! assert_eq!(written.rows, 2);
//!
//! // ...or run it for the result and the run record.
//! let run = etl(query, &dest).with_mode(ExecutionMode::Eager).run().await;
//! assert_eq!(run.record.flow, "etl");
//! assert_eq!(run.record.tasks.len(), 3);
//! assert!(run.record.tasks.iter().all(|t| t.state == TaskState::Completed));
//! # Ok(())
//! # }
//! ```
//!
//! Persist a task, and the next run reads its checkpoint instead of computing it (and
//! skips what is upstream of it):
//!
//! ```
//! use std::time::Duration;
//! use sluice::prelude::*;
//!
//! #[task]
//! async fn numbers(cx: &TaskContext) -> Result<Frame> {
//!     cx.sql("SELECT * FROM (VALUES (1.0, 4.0), (2.0, 8.0)) AS t(tip, total)", []).await
//! }
//!
//! #[task(persist, cache = CachePolicy::inputs().expire_after(Duration::from_secs(3600)))]
//! async fn ratios(df: Frame, column: &str) -> Result<Frame> {
//!     df.with_column(column, col("tip") / col("total"))
//! }
//!
//! #[flow]
//! async fn pipeline(column: &str) -> Result<usize> {
//!     let df = ratios(numbers().await?, column).await?;
//!     Ok(df.collect().await?.iter().map(|b| b.num_rows()).sum())
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<()> {
//! let store = tempfile::tempdir().unwrap();
//! let store = store.path().display().to_string();
//! let first = pipeline("ratio").with_result_store(&store).run().await;
//! assert_eq!(first.record.task("ratios").unwrap().state, TaskState::Completed);
//! let second = pipeline("ratio").with_result_store(&store).run().await;
//! assert_eq!(*second.output.as_ref().unwrap(), 2);
//! assert_eq!(second.record.task("ratios").unwrap().state, TaskState::Cached);
//! assert_eq!(second.record.task("numbers").unwrap().state, TaskState::Skipped);
//! // Another parameter is another key.
//! let other = pipeline("share").with_result_store(&store).run().await;
//! assert_eq!(other.record.task("ratios").unwrap().state, TaskState::Completed);
//! # Ok(())
//! # }
//! ```
//!
//! The crates behind the facade: `sluice-core` (frames, tasks, flows, execution),
//! `sluice-store` (object stores by URL, staged publishing), `sluice-macros`.

extern crate self as sluice;

pub use sluice_core::*;
pub use sluice_macros::{flow, task};

/// Object stores named by URL, and outputs published whole.
pub mod store {
    pub use sluice_store::*;
}

/// DataFusion, for expressions and APIs Sluice does not wrap.
pub use datafusion;

/// Runs a program's async `main` as `#[tokio::main]` does (a multi-threaded runtime), with
/// the allocator tuned first ([`tune_allocator`]), before the runtime's threads start.
/// Fails only when the runtime cannot be built.
///
/// ```
/// fn main() -> std::process::ExitCode {
///     sluice::block_on(async { std::process::ExitCode::SUCCESS }).unwrap_or_else(|e| {
///         eprintln!("error: {e}");
///         std::process::ExitCode::FAILURE
///     })
/// }
/// # main();
/// ```
pub fn block_on<F: std::future::Future>(main: F) -> std::io::Result<F::Output> {
    tune_allocator();
    Ok(tokio::runtime::Runtime::new()?.block_on(main))
}

/// Everything a flow usually needs: `use sluice::prelude::*;`.
pub mod prelude {
    pub use crate::{flow, task};
    pub use datafusion::functions_aggregate::expr_fn::{avg, count, max, min, sum};
    /// The name [`WriteMethod`] had before.
    #[allow(deprecated)]
    pub use sluice_core::WritePath;
    pub use sluice_core::{
        CachePolicy, CancellationToken, CheckpointFormat, Compression, CsvReadOptions, CsvWrite,
        Error, ExecutionMode, Expr, Flow, FlowOptions, FlowRun, FlowRunRecord, FlowState, Frame,
        JoinType, ParquetRead, ParquetWrite, Persist, Progress, ProgressWriter, Result, Retry,
        RetryDelay, RunLogLayer, Runner, Session, Task, TaskContext, TaskOutput, TaskState,
        WriteLayout, WriteMethod, WriteSummary, col, lit, map, one_line, submit,
    };
}
