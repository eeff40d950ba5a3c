//! Sluice's core: frames, tasks, flows, run records and lazy or eager execution on
//! Apache DataFusion.
//!
//! A [`Task`] returns a [`Frame`], a lazy DataFusion plan fragment; fragments compose
//! into one plan and a sink ([`Frame::write_parquet`], [`Frame::collect`], ...) streams
//! it in Arrow record batches. A [`Flow`] run records every task run: its state, timings,
//! rows and bytes. Each task's fragment ends in a pass-through boundary node
//! ([`boundary`]) that counts its output while it streams and attributes errors to it.
//! In [`ExecutionMode::Eager`] each task's output is collected in memory instead, as
//! Prefect does by default.
//!
//! The facade crate `sluice` re-exports all of this together with the `#[task]` and
//! `#[flow]` macros; this crate holds the plain API they expand to.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> sluice_core::Result<()> {
//! use sluice_core::*;
//!
//! let dir = tempfile::tempdir().unwrap();
//! let dest = dir.path().join("out.parquet").display().to_string();
//! let run = Flow::new("etl")
//!     .run(serde_json::json!({}), async {
//!         let raw = Task::new("extract")
//!             .run(|cx| async move {
//!                 cx.sql("SELECT * FROM (VALUES (1.0, 10.0), (3.0, 0.0)) AS t(tip, total)", [])
//!                     .await
//!             })
//!             .await?;
//!         // A task's body may be called again (retries): it clones what it moves.
//!         let df = Task::new("transform")
//!             .run(|_cx| {
//!                 let raw = raw.clone();
//!                 async move { raw.with_column("tip_fraction", col("tip") / col("total")) }
//!             })
//!             .await?;
//!         Task::new("load")
//!             .run(|_cx| {
//!                 let (df, dest) = (df.clone(), dest.clone());
//!                 async move { df.write_parquet(&dest, ParquetWrite::zstd(3)).await }
//!             })
//!             .await
//!     })
//!     .await;
//! let summary = run.output?;
//! assert_eq!(summary.rows, 2);
//! assert_eq!(run.record.task("transform").unwrap().rows, Some(2));
//! # Ok(())
//! # }
//! ```

pub mod checkpoint;
#[cfg(feature = "ballista")]
pub mod cluster;
/// The cluster in a build without Ballista: a runner naming one is an error.
#[cfg(not(feature = "ballista"))]
#[path = "cluster/absent.rs"]
mod cluster;
mod error;
mod frame;
mod hex;
mod identity;
mod names;
mod overlap;
mod parquet_io;
mod plan;
mod planner;
mod read;
mod record;
mod runner;
mod runtime;
mod seam;
mod write;

pub use parquet_io::limits;
pub use plan::{boundary, concat};
pub use sluice_allocator::tune_allocator;

pub use checkpoint::key::{KEY_FORMAT, RESULT_SETTINGS, SEMANTICS_VERSION, engine};
pub use checkpoint::lineage::{SourceObject, UpstreamTask};
pub use checkpoint::{
    BLOCK_SIZE, CacheEntry, CacheKeyInputs, CachePolicy, CheckpointFormat, CheckpointStore, Clock,
    GcReport, LEASE_TTL, Manifest, ManifestFile, Persist, SCHEMA_CACHE_TTL,
};
pub use error::{Error, Result, one_line};
pub use frame::SessionBuilder;
pub use frame::session::{COLUMN_COPY_ENV, Session};
pub use frame::{ColumnInfo, Frame, FrameInfo};
pub use names::{MAX_NAME_LEN, validate_name};
pub use parquet_io::limits::{
    DEFAULT_MAX_COLUMN_CHUNK_BYTES, DEFAULT_MEMORY_LIMIT, DEFAULT_REMOTE_READ_AHEAD_BYTES,
};
pub use read::ParquetRead;
#[allow(deprecated)]
pub use record::WritePath;
pub use record::{
    Assembly, CacheRecord, ExecutionMode, ExecutionOutcome, FlowRunRecord, FlowState, LogLine,
    MAX_LOG_LINES, SinkRecord, TaskAttempt, TaskExecution, TaskRunRecord, TaskState, WriteMethod,
    WriteSummary, WriterShare, WrittenFile,
};
pub use runner::{RUNNER_ENV, Runner};
pub use runtime::concurrency::{TaskFuture, map, submit};
pub use runtime::flow::{DEFAULT_RUN_STORE, Flow, FlowCall, FlowFuture, FlowOptions, FlowRun};
pub use runtime::history::{RunFilter, RunStore};
pub use runtime::logging::RunLogLayer;
pub use runtime::progress::{Progress, ProgressWriter};
pub use runtime::retry::{Retry, RetryDelay};
pub use runtime::task::{DEFAULT_RESULT_STORE, Task, TaskContext, TaskOutput};
pub use write::{Compression, CsvWrite, ParquetWrite, WriteLayout};

pub use datafusion::common::JoinType;
pub use datafusion::logical_expr::{Expr, SortExpr, lit};
pub use tokio_util::sync::CancellationToken;

/// A column by its exact name, case and all (`col("VendorID")`), as in Polars.
///
/// DataFusion's own `col` parses its argument as a SQL identifier, which lower-cases
/// unquoted names; Sluice's does not.
///
/// ```
/// use sluice_core::col;
/// assert_eq!(col("VendorID").to_string(), "VendorID");
/// ```
pub fn col(name: impl Into<String>) -> Expr {
    datafusion::logical_expr::ident(name)
}
pub use datafusion::prelude::CsvReadOptions;

/// Support for the `#[task]` and `#[flow]` macros. Not public API.
#[doc(hidden)]
pub mod __private {
    pub use serde_json;

    /// Probes whether a flow argument can be recorded as a JSON parameter.
    pub struct ParamProbe<'a, T: ?Sized>(pub &'a T);

    /// Arguments that serialize are recorded as their JSON value.
    pub trait ViaSerialize {
        /// The parameter's JSON value.
        fn param_value(&self) -> serde_json::Value;
    }

    impl<T: serde::Serialize + ?Sized> ViaSerialize for ParamProbe<'_, T> {
        fn param_value(&self) -> serde_json::Value {
            serde_json::to_value(self.0).unwrap_or(serde_json::Value::Null)
        }
    }

    /// Other arguments are recorded by type name.
    pub trait ViaTypeName {
        /// The parameter's type name.
        fn param_value(&self) -> serde_json::Value;
    }

    impl<T: ?Sized> ViaTypeName for &ParamProbe<'_, T> {
        fn param_value(&self) -> serde_json::Value {
            serde_json::Value::String(format!("<{}>", std::any::type_name::<T>()))
        }
    }
}
