//! [`Frame`]: a cheap handle on a lazy logical plan.

mod builder;
pub(crate) mod session;

pub use builder::SessionBuilder;

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::JoinType;
use datafusion::common::config::TableParquetOptions;
use datafusion::dataframe::DataFrameWriteOptions;
use datafusion::datasource::MemTable;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::functions_aggregate::expr_fn::count;
use datafusion::logical_expr::{Expr, LogicalPlan, SortExpr, lit};

use crate::col;
use datafusion::prelude::DataFrame;
use serde::{Deserialize, Serialize};
use sluice_store::{OutputKind, PublishedFile, StagedOutput};
use tracing::Instrument;

use crate::checkpoint::key;
use crate::checkpoint::lineage::Lineage;
use crate::error::guarded;
use crate::parquet_io::copy::{Route, Stop};
use crate::record::{WriteMethod, WriteSummary, WrittenFile};
use crate::write::{CsvWrite, ParquetWrite, WriteLayout};
use crate::{Error, Result, Session};

/// A cheap handle on a lazy logical plan: what tasks pass between them.
///
/// Cloning is O(1) whatever the data size. Transformations build a bigger plan and
/// read nothing; sinks ([`write_parquet`](Self::write_parquet),
/// [`write_csv`](Self::write_csv), [`collect`](Self::collect), [`count`](Self::count),
/// [`info`](Self::info)) turn the plan into one physical plan and stream it.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> sluice_core::Result<()> {
/// use sluice_core::{Session, col, lit};
/// let session = Session::new();
/// let trips = session
///     .sql("SELECT * FROM (VALUES (1, 10.0, 2.0), (2, 0.0, 0.0)) AS t(id, total, tip)", [])
///     .await?;
/// let out = trips
///     .with_column("tip_fraction", col("tip") / col("total"))?
///     .filter(col("id").gt(lit(1)))?;
/// let batches = out.collect().await?;
/// assert_eq!(batches[0].num_rows(), 1);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Frame {
    inner: Arc<FrameInner>,
}

struct FrameInner {
    session: Session,
    plan: LogicalPlan,
    /// The sources the data comes from, for error messages and run records.
    sources: Arc<[String]>,
    /// How the frame was made, for cache keys.
    lineage: Lineage,
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frame")
            .field("sources", &self.inner.sources)
            .field("plan", &self.inner.plan.display_indent().to_string())
            .finish()
    }
}

impl Frame {
    pub(crate) fn from_dataframe(
        session: Session,
        df: DataFrame,
        sources: Vec<String>,
        lineage: Lineage,
    ) -> Self {
        let (_, plan) = df.into_parts();
        Self::from_plan(session, plan, sources, lineage)
    }

    pub(crate) fn from_plan(
        session: Session,
        plan: LogicalPlan,
        sources: Vec<String>,
        lineage: Lineage,
    ) -> Self {
        let mut unique: Vec<String> = Vec::with_capacity(sources.len());
        for s in sources {
            if !unique.contains(&s) {
                unique.push(s);
            }
        }
        Frame {
            inner: Arc::new(FrameInner {
                session,
                plan,
                sources: unique.into(),
                lineage,
            }),
        }
    }

    /// The same data under a new plan (for the task wrapper's boundary nodes, and
    /// eager mode's in-memory copies).
    pub(crate) fn with_plan(&self, plan: LogicalPlan) -> Frame {
        self.with_plan_and_lineage(plan, self.inner.lineage.clone())
    }

    /// A frame under a new plan and lineage (a task's output), over the same sources.
    pub(crate) fn with_plan_and_lineage(&self, plan: LogicalPlan, lineage: Lineage) -> Frame {
        Frame {
            inner: Arc::new(FrameInner {
                session: self.inner.session.clone(),
                plan,
                sources: Arc::clone(&self.inner.sources),
                lineage,
            }),
        }
    }

    pub(crate) fn lineage(&self) -> &Lineage {
        &self.inner.lineage
    }

    /// The session this frame plans and runs in.
    pub fn session(&self) -> &Session {
        &self.inner.session
    }

    /// The logical plan.
    pub fn logical_plan(&self) -> &LogicalPlan {
        &self.inner.plan
    }

    /// The sources (URLs) the data is read from.
    pub fn sources(&self) -> &[String] {
        &self.inner.sources
    }

    /// A DataFusion `DataFrame` over the same plan, for what Sluice does not wrap.
    pub fn to_dataframe(&self) -> DataFrame {
        DataFrame::new(self.inner.session.state(), self.inner.plan.clone())
    }

    /// The output schema, as Arrow sees it.
    pub fn schema(&self) -> SchemaRef {
        Arc::clone(self.inner.plan.schema().inner())
    }

    /// The output column names, in order.
    pub fn columns(&self) -> Vec<String> {
        self.schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect()
    }

    /// A frame made by `apply` from this one; `op` and `args` describe it in the
    /// lineage.
    fn derive(
        &self,
        op: &'static str,
        args: serde_json::Value,
        apply: impl FnOnce(DataFrame) -> datafusion::error::Result<DataFrame>,
    ) -> Result<Frame> {
        let df = apply(self.to_dataframe()).map_err(|e| self.error(e))?;
        let (_, plan) = df.into_parts();
        Ok(self.with_plan_and_lineage(plan, self.inner.lineage.op(op, args)))
    }

    fn error(&self, error: datafusion::error::DataFusionError) -> Error {
        Error::from_datafusion(error, &self.inner.sources)
    }

    /// Keeps the given expressions as columns (`col("a")`, `(col("a") + lit(1)).alias("b")`).
    pub fn select(&self, exprs: impl IntoIterator<Item = Expr>) -> Result<Frame> {
        let exprs: Vec<Expr> = exprs.into_iter().collect();
        let args = key::exprs(&exprs);
        self.derive("select", args, |df| df.select(exprs))
    }

    /// Keeps the named columns.
    pub fn select_columns(&self, columns: &[&str]) -> Result<Frame> {
        let args = serde_json::json!(columns);
        self.derive("select_columns", args, |df| df.select_columns(columns))
    }

    /// Drops the named columns.
    pub fn drop_columns(&self, columns: &[&str]) -> Result<Frame> {
        let args = serde_json::json!(columns);
        self.derive("drop_columns", args, |df| df.drop_columns(columns))
    }

    /// Keeps the rows where `predicate` is true.
    pub fn filter(&self, predicate: Expr) -> Result<Frame> {
        let args = key::expr(&predicate);
        self.derive("filter", args, |df| df.filter(predicate))
    }

    /// Adds a column, or replaces the column of that name, keeping every other column.
    pub fn with_column(&self, name: &str, expr: Expr) -> Result<Frame> {
        use datafusion::common::Column;
        use datafusion::logical_expr::LogicalPlanBuilder;
        use datafusion::logical_expr::utils::find_window_exprs;
        let args = serde_json::json!([name, key::expr(&expr)]);
        self.derive("with_column", args, |df| {
            if !find_window_exprs([&expr]).is_empty() {
                return df.with_column(name, expr);
            }
            // DataFusion's `with_column` on a new `DataFrame` validates every column,
            // and each validation walks the whole plan below (`using_columns`): over a
            // chain of tasks, each a fresh `DataFrame`, planning grew with the cube of
            // its length. The columns of a frame are resolved already: only the new
            // expression is validated, as DataFusion does within one chain.
            let (state, plan) = df.into_parts();
            let new_column = expr.alias(name);
            let mut replaced = false;
            let mut fields: Vec<(Expr, bool)> = plan
                .schema()
                .iter()
                .map(|(qualifier, field)| {
                    if field.name() == name {
                        replaced = true;
                        (new_column.clone(), true)
                    } else {
                        (Expr::Column(Column::from((qualifier, field))), false)
                    }
                })
                .collect();
            if !replaced {
                fields.push((new_column, true));
            }
            let plan = LogicalPlanBuilder::from(plan)
                .project_with_validation(fields)?
                .build()?;
            Ok(DataFrame::new(state, plan))
        })
    }

    /// Renames a column.
    pub fn rename(&self, old: &str, new: &str) -> Result<Frame> {
        if !self.columns().iter().any(|c| c == old) {
            return Err(Error::MissingColumn {
                column: old.to_string(),
                sources: self.sources().to_vec(),
                available: self.columns(),
            });
        }
        // Not `DataFrame::with_column_renamed`: it parses `old` as an SQL identifier,
        // lowercasing it, and silently renames nothing when that spelling is not a column
        // (`VendorID`).
        let args = serde_json::json!([old, new]);
        self.derive("rename", args, |df| {
            let exprs: Vec<Expr> = df
                .schema()
                .columns()
                .into_iter()
                .map(|c| {
                    if c.name == old {
                        Expr::Column(c).alias(new)
                    } else {
                        Expr::Column(c)
                    }
                })
                .collect();
            df.select(exprs)
        })
    }

    /// Groups by `group_by` and computes `aggregates` (`avg(col("x")).alias("mean_x")`).
    pub fn aggregate(
        &self,
        group_by: impl IntoIterator<Item = Expr>,
        aggregates: impl IntoIterator<Item = Expr>,
    ) -> Result<Frame> {
        let group_by: Vec<Expr> = group_by.into_iter().collect();
        let aggregates: Vec<Expr> = aggregates.into_iter().collect();
        let args = serde_json::json!([key::exprs(&group_by), key::exprs(&aggregates)]);
        self.derive("aggregate", args, |df| df.aggregate(group_by, aggregates))
    }

    /// Joins with `right` on equal key columns, like Polars' `join(other, left_on, right_on, how)`.
    pub fn join(
        &self,
        right: &Frame,
        how: JoinType,
        left_on: &[&str],
        right_on: &[&str],
    ) -> Result<Frame> {
        let args = serde_json::json!([format!("{how:?}"), left_on, right_on]);
        self.combine(right, "join", args, |df, right_df| {
            df.join(right_df, how, left_on, right_on, None)
        })
    }

    /// Appends the rows of `other`, matching columns by position (SQL `UNION ALL`).
    pub fn union(&self, other: &Frame) -> Result<Frame> {
        self.combine(other, "union", serde_json::json!([]), DataFrame::union)
    }

    /// The rows the frame will produce, when its statistics know them exactly (a scan
    /// of Parquet files: the row counts in their footers). Plans the frame; reads no
    /// data.
    pub(crate) async fn footer_rows(&self) -> Option<u64> {
        use datafusion::physical_plan::statistics::{StatisticsArgs, StatisticsContext};
        let plan = self.to_dataframe().create_physical_plan().await.ok()?;
        let stats = StatisticsContext::new()
            .compute(plan.as_ref(), &StatisticsArgs::new())
            .ok()?;
        match stats.num_rows {
            datafusion::common::stats::Precision::Exact(rows) => Some(rows as u64),
            _ => None,
        }
    }

    /// The rows of every frame, one after the other (SQL `UNION ALL`, by position), as
    /// one lazy plan: how the frames of a [`map`](crate::map) come together.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> sluice_core::Result<()> {
    /// let session = sluice_core::Session::new();
    /// let a = session.sql("SELECT 1 AS n", []).await?;
    /// let b = session.sql("SELECT 2 AS n", []).await?;
    /// let both = sluice_core::Frame::concat([a, b])?;
    /// assert_eq!(both.count().await?, 2);
    /// # Ok(())
    /// # }
    /// ```
    pub fn concat(frames: impl IntoIterator<Item = Frame>) -> Result<Frame> {
        let mut frames = frames.into_iter();
        let first = frames.next().ok_or_else(|| Error::InvalidOption {
            option: "frames",
            reason: "concat needs at least one frame".into(),
        })?;
        frames.try_fold(first, |all, next| all.union(&next))
    }

    /// Appends the rows of `other`, matching columns by name; missing columns are null.
    pub fn union_by_name(&self, other: &Frame) -> Result<Frame> {
        self.combine(
            other,
            "union_by_name",
            serde_json::json!([]),
            DataFrame::union_by_name,
        )
    }

    /// A frame built from this one and `other`, reading the sources of both.
    fn combine(
        &self,
        other: &Frame,
        op: &'static str,
        args: serde_json::Value,
        apply: impl FnOnce(DataFrame, DataFrame) -> datafusion::error::Result<DataFrame>,
    ) -> Result<Frame> {
        let other_df = other.to_dataframe();
        let df = apply(self.to_dataframe(), other_df).map_err(|e| self.error(e))?;
        let (_, plan) = df.into_parts();
        let mut sources = self.sources().to_vec();
        sources.extend(other.sources().iter().cloned());
        Ok(Frame::from_plan(
            self.inner.session.clone(),
            plan,
            sources,
            self.inner.lineage.combine(&other.inner.lineage, op, args),
        ))
    }

    /// Sorts by the given keys (`col("a").sort(true, false)` is ascending, nulls last).
    pub fn sort(&self, keys: impl IntoIterator<Item = SortExpr>) -> Result<Frame> {
        let keys: Vec<SortExpr> = keys.into_iter().collect();
        let args = key::sorts(&keys);
        self.derive("sort", args, |df| df.sort(keys))
    }

    /// Sorts ascending by the named columns, nulls last.
    pub fn sort_by(&self, columns: &[&str]) -> Result<Frame> {
        self.sort(columns.iter().map(|c| col(*c).sort(true, false)))
    }

    /// Keeps the first `n` rows.
    pub fn limit(&self, n: usize) -> Result<Frame> {
        let args = serde_json::json!(n);
        self.derive("limit", args, |df| df.limit(0, Some(n)))
    }

    /// Skips `offset` rows, then keeps up to `len` rows.
    pub fn slice(&self, offset: usize, len: usize) -> Result<Frame> {
        let args = serde_json::json!([offset, len]);
        self.derive("slice", args, |df| df.limit(offset, Some(len)))
    }

    /// Removes duplicate rows.
    pub fn distinct(&self) -> Result<Frame> {
        self.derive("distinct", serde_json::json!([]), |df| df.distinct())
    }

    /// The optimized logical plan and the physical plan, as `EXPLAIN` prints them, and a
    /// last line on how a Parquet sink would write the frame: by copying the columns it
    /// leaves unchanged, or by encoding every column again (and why).
    pub async fn explain(&self) -> Result<String> {
        let batches = self
            .to_dataframe()
            .explain(false, false)
            .map_err(|e| self.error(e))?
            .collect()
            .await
            .map_err(|e| self.error(e))?;
        let mut text =
            datafusion::arrow::util::pretty::pretty_format_batches(&batches)?.to_string();
        let sink = match crate::parquet_io::copy::Shape::of(&self.inner.plan) {
            Ok(shape) => shape.describe(),
            Err(reason) => format!("rewrite: every column decoded and encoded again ({reason})"),
        };
        text.push_str(&format!("\nParquet sink: {sink}\n"));
        Ok(text)
    }

    /// Runs the plan and returns its output as a stream of record batches. On a
    /// cluster the executors' output is gathered first (so that the run record is
    /// complete when the stream starts), then streamed from memory.
    pub async fn execute_stream(&self) -> Result<SendableRecordBatchStream> {
        self.inner.session.usable()?;
        if self.inner.session.cluster().is_some() {
            let batches = self.collect().await?;
            let stream = futures::stream::iter(batches.into_iter().map(Ok));
            return Ok(Box::pin(
                datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(
                    self.schema(),
                    stream,
                ),
            ));
        }
        self.to_dataframe()
            .execute_stream()
            .await
            .map_err(|e| self.error(e))
    }

    /// Runs `body` on the frame's data frame: here, or on the session's cluster.
    async fn run<T, F, Fut>(&self, body: F) -> Result<T>
    where
        F: FnOnce(DataFrame) -> Fut,
        Fut: std::future::Future<Output = datafusion::error::Result<T>>,
    {
        self.inner.session.usable()?;
        if let Some(cluster) = self.inner.session.cluster() {
            let settings = self.inner.session.stores().settings()?;
            return cluster
                .run(self.inner.session.state(), settings, &self.inner.plan, body)
                .await;
        }
        guarded(body(self.to_dataframe()))
            .await
            .map_err(|e| self.error(e))
    }

    /// Runs the plan to its end, dropping the batches (a barrier checkpoint). On a
    /// cluster the rows are counted there: nothing comes back to this process.
    pub(crate) async fn drain(&self) -> Result<u64> {
        use futures::StreamExt;
        if self.inner.session.cluster().is_some() {
            return self.count().await;
        }
        if let Some(rows) = self.checkpoint_by_copy().await? {
            return Ok(rows);
        }
        let mut stream = self.execute_stream().await?;
        let mut rows = 0;
        while let Some(batch) = guarded(async { Ok(stream.next().await) }).await? {
            rows += batch.map_err(|e| self.error(e))?.num_rows() as u64;
        }
        Ok(rows)
    }

    /// When the frame is a persisted task's output whose checkpoint is still to write
    /// and its plan only adds or drops columns of Parquet scans, here, with the column
    /// copy on: the copy writes the checkpoint (without decoding what it keeps) and
    /// commits it; returns its rows. Later plans of the frame read the checkpoint (the
    /// tee's planner scans what this run committed). `None` when the copy cannot serve
    /// the plan: the tee writes the checkpoint as the rows stream past.
    async fn checkpoint_by_copy(&self) -> Result<Option<u64>> {
        if self.inner.session.cluster().is_some() || !self.inner.session.column_copy() {
            return Ok(None);
        }
        let state = self.inner.session.state();
        let limits = self.inner.session.read_limits();
        let copied = crate::parquet_io::copy::checkpoint(&self.inner.plan, &state, limits);
        match guarded(async { Ok(Box::pin(copied).await) }).await? {
            Ok(rows) => Ok(Some(rows)),
            Err(Stop::Failed(e)) => Err(self.error(e)),
            Err(Stop::Unsupported(reason)) => {
                tracing::debug!(%reason, "checkpoint: the tee's stream writes it");
                Ok(None)
            }
        }
    }

    /// Runs the plan and collects every batch in memory. A persisted task's output
    /// whose plan the column copy serves is checkpointed by the copy first, and
    /// collected from the checkpoint.
    pub async fn collect(&self) -> Result<Vec<RecordBatch>> {
        self.checkpoint_by_copy().await?;
        self.run(DataFrame::collect).await
    }

    /// Runs the plan, keeping it in memory as a new frame over those batches (what
    /// eager mode does between tasks). Returns the frame, its rows and in-memory bytes.
    pub(crate) async fn materialize(&self) -> Result<(Frame, u64, u64)> {
        let schema = self.schema();
        self.inner.session.usable()?;
        self.inner.session.refuse_eager()?;
        let partitions = guarded(self.to_dataframe().collect_partitioned())
            .await
            .map_err(|e| self.error(e))?;
        let rows = partitions
            .iter()
            .flatten()
            .map(|b| b.num_rows() as u64)
            .sum();
        let bytes = partitions
            .iter()
            .flatten()
            .map(|b| b.get_array_memory_size() as u64)
            .sum();
        let table = MemTable::try_new(schema, partitions)?;
        let df = self
            .inner
            .session
            .context()
            .read_table(Arc::new(table))
            .map_err(|e| self.error(e))?;
        let (_, plan) = df.into_parts();
        Ok((self.with_plan(plan), rows, bytes))
    }

    /// Counts the rows (reading no column data where the source knows its row counts).
    /// A persisted task's output whose plan the column copy serves is checkpointed by
    /// the copy, which counts the rows as it writes.
    pub async fn count(&self) -> Result<u64> {
        if let Some(rows) = self.checkpoint_by_copy().await? {
            return Ok(rows);
        }
        Ok(self.run(DataFrame::count).await? as u64)
    }

    /// Rows, and per column its type and non-null count: pandas' `df.info()`. Runs one
    /// aggregation over the data.
    pub async fn info(&self) -> Result<FrameInfo> {
        let schema = self.schema();
        let mut aggregates = vec![count(lit(1)).alias("__rows")];
        for (i, field) in schema.fields().iter().enumerate() {
            aggregates.push(
                count(Expr::Column(datafusion::common::Column::from_name(
                    field.name(),
                )))
                .alias(format!("__c{i}")),
            );
        }
        let batches = self
            .aggregate(Vec::<Expr>::new(), aggregates)?
            .collect()
            .await?;
        let batch = batches.first().ok_or_else(|| Error::Internal {
            message: "a global aggregate returned no batch".into(),
        })?;
        let value = |i: usize| -> Result<u64> {
            let array = datafusion::arrow::compute::cast(batch.column(i), &DataType::UInt64)?;
            Ok(array
                .as_any()
                .downcast_ref::<datafusion::arrow::array::UInt64Array>()
                .map(|a| a.value(0))
                .unwrap_or(0))
        };
        let rows = value(0)?;
        let mut columns = Vec::with_capacity(schema.fields().len());
        for (i, field) in schema.fields().iter().enumerate() {
            columns.push(ColumnInfo {
                name: field.name().clone(),
                data_type: field.data_type().to_string(),
                nullable: field.is_nullable(),
                non_null: value(i + 1)?,
            });
        }
        Ok(FrameInfo { rows, columns })
    }

    /// Writes the frame as Parquet to a path or URL: one file, or a directory of parts
    /// (see [`ParquetWrite`]). The whole plan runs here, streaming; the output appears
    /// only once complete (written under a hidden staging name, then published), and a
    /// failed write leaves nothing at the destination.
    pub async fn write_parquet(&self, dest: &str, options: ParquetWrite) -> Result<WriteSummary> {
        let state = self.inner.session.state();
        let table_options = options.table_options(&state)?;
        let route = if self.inner.session.on_cluster() {
            Route::Rewrite(format!(
                "the cluster's executors write it ({})",
                self.inner.session.runner()
            ))
        } else if !self.inner.session.column_copy() {
            Route::Rewrite("turned off for the session".into())
        } else {
            crate::parquet_io::copy::route(
                &self.inner.plan,
                &state,
                self.inner.session.read_limits(),
                &options,
            )
            .await
        };
        // Owned: a frame's futures stay `Send` for every lifetime (flows are spawned).
        let session = self.inner.session.clone();
        let layout = options.layout;
        self.write(dest, layout, "parquet", |df, target| async move {
            let reason = match route {
                Route::Rewrite(reason) if target.parts.is_some() => {
                    // Boxed: a local sink's future stays as small as it was.
                    return Box::pin(write_parts(
                        session,
                        df,
                        target,
                        table_options,
                        options,
                        reason,
                    ))
                    .await;
                }
                Route::Rewrite(reason) => reason,
                Route::Copy(plan) => {
                    let directory = target.kind == OutputKind::Directory;
                    match plan
                        .write(
                            Arc::clone(&target.store),
                            &target.url,
                            directory,
                            target.in_place.clone(),
                        )
                        .await
                    {
                        Ok((rows, method)) => return Ok(Written::here(rows, method)),
                        Err(Stop::Failed(e)) => return Err(e),
                        Err(Stop::Unsupported(reason)) => {
                            crate::parquet_io::copy::clear(&target.store, &target.url).await?;
                            reason
                        }
                    }
                }
            };
            tracing::debug!(%reason, "Parquet sink: every column is encoded again");
            df.write_parquet(&target.path, target.options, Some(table_options))
                .await
                .map(|batches| Written::here(count_from(&batches), WriteMethod::Rewrite { reason }))
        })
        .await
    }

    /// Writes the frame as CSV to a path or URL, published whole like
    /// [`write_parquet`](Self::write_parquet).
    pub async fn write_csv(&self, dest: &str, options: CsvWrite) -> Result<WriteSummary> {
        let csv_options = options.csv_options();
        self.write(dest, options.layout, "csv", |df, target| async move {
            df.write_csv(&target.path, target.options, Some(csv_options))
                .await
                .map(|batches| {
                    let reason = "CSV output".to_string();
                    Written::here(count_from(&batches), WriteMethod::Rewrite { reason })
                })
        })
        .await
    }

    /// Runs a sink here, or on the session's cluster; a cluster's error comes back as
    /// Sluice's, wrapped, for the sink's own classification.
    async fn run_sink<F, Fut>(
        &self,
        sink: F,
        target: SinkTarget,
    ) -> datafusion::error::Result<Written>
    where
        F: FnOnce(DataFrame, SinkTarget) -> Fut,
        Fut: std::future::Future<Output = datafusion::error::Result<Written>>,
    {
        self.inner
            .session
            .usable()
            .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
        if let Some(cluster) = self.inner.session.cluster() {
            let settings = self
                .inner
                .session
                .stores()
                .settings()
                .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
            return cluster
                .run(
                    self.inner.session.state(),
                    settings,
                    &self.inner.plan,
                    |df| sink(df, target),
                )
                .await
                .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)));
        }
        guarded(sink(self.to_dataframe(), target)).await
    }

    async fn write<F, Fut>(
        &self,
        dest: &str,
        layout: WriteLayout,
        extension: &str,
        sink: F,
    ) -> Result<WriteSummary>
    where
        F: FnOnce(DataFrame, SinkTarget) -> Fut,
        Fut: std::future::Future<Output = datafusion::error::Result<Written>>,
    {
        let stores = self.inner.session.stores();
        let url = stores.resolve(dest)?;
        self.refuse_overlap(&url)?;
        if let Some(published) =
            crate::seam::current().and_then(|task| task.published(&stores.canonical(&url)))
        {
            tracing::info!(dest = %sluice_store::redact(&url), "an earlier attempt of this task run published it; not written again");
            return Ok(published);
        }
        let kind = layout.resolve(&url, extension);
        let staged = StagedOutput::new(self.inner.session.stores(), &url, kind)?;
        // One file on a remote store, written here: DataFusion's writer writes it in
        // place too, through a store of its own whose upload waits for the publish.
        let writer = if self.inner.session.on_cluster() {
            None
        } else {
            staged.register_writer(self.inner.session.stores())
        };
        // A Parquet sink on a cluster: a part per partition, in the parts' directory.
        let parts = self
            .inner
            .session
            .cluster()
            .filter(|_| extension == "parquet")
            .map(|cluster| ClusterParts {
                url: staged.parts_url(),
                cluster: cluster.clone(),
            });
        let target = SinkTarget {
            path: writer.as_ref().map_or_else(
                || staged.staging_url().to_string(),
                |writer| writer.url().to_string(),
            ),
            url: staged.staging_url().clone(),
            options: DataFrameWriteOptions::new().with_single_file_output(kind == OutputKind::File),
            parts,
            store: self
                .inner
                .session
                .stores()
                .store_for(staged.staging_url())?,
            kind,
            in_place: staged.in_place().cloned(),
        };
        let span = tracing::info_span!("sink", dest = %staged.destination(), format = extension);
        let written = self.run_sink(sink, target).instrument(span).await;
        let Written {
            rows,
            method,
            writers,
            assembled,
        } = match written {
            Ok(written) => written,
            Err(e) => {
                let error = match crate::error::find_store_error(&e)
                    .and_then(|store| crate::error::classify_store_error(store, &[url.to_string()]))
                {
                    Some(classified) => classified,
                    // The sink's own I/O (its staging object or in-place writer), not a
                    // source's.
                    None if [sluice_store::STAGING_MARKER, sluice_store::IN_PLACE_SCHEME]
                        .iter()
                        .any(|marker| e.to_string().contains(marker)) =>
                    {
                        Error::Execution { source: e }
                    }
                    None => self.error(e),
                };
                if let Err(cleanup) = staged.abort().await {
                    tracing::warn!(error = %cleanup, "could not delete staged output");
                }
                return Err(Error::Write {
                    url: sluice_store::redact(&url),
                    source: Box::new(error),
                });
            }
        };
        let published = staged.publish().await?;
        tracing::info!(dest = %published.url, rows, bytes = published.bytes(), files = published.files.len(), column_copy = method.is_column_copy(), "published output");
        // Records name where the output is, not the alias it was written through.
        let bytes = published.bytes();
        let summary = WriteSummary {
            url: stores.canonical(&published.url),
            rows,
            bytes,
            files: published
                .files
                .into_iter()
                .map(|file| WrittenFile {
                    url: stores.canonical(&file.url),
                    ..WrittenFile::from(file)
                })
                .collect(),
            method,
            writers,
            assembly: assembled.map(|assembled| match assembled {
                Assembled::ByStore(composed) => crate::Assembly {
                    by_store: composed.copied_bytes,
                    through_client: composed.sent_bytes,
                },
                Assembled::ByClient => crate::Assembly {
                    by_store: 0,
                    through_client: bytes,
                },
            }),
        };
        if let Some(task) = crate::seam::current() {
            task.record_published(&summary);
        }
        Ok(summary)
    }
}

/// Where and how a sink writes: its staging location.
struct SinkTarget {
    /// Where DataFusion's writer writes: the staging URL, or the in-place writer's.
    path: String,
    /// The staging URL, in `store`.
    url: url::Url,
    options: DataFrameWriteOptions,
    store: Arc<dyn object_store::ObjectStore>,
    kind: OutputKind,
    /// One file on a remote store: its destination, for a writer that uploads there
    /// and leaves the upload for the publish to complete (the column copy).
    in_place: Option<sluice_store::InPlace>,
    /// On a cluster, a Parquet sink's parts' directory (see [`write_parts`]).
    parts: Option<ClusterParts>,
}

/// Where a cluster's executors write the parts of a Parquet output.
struct ClusterParts {
    url: url::Url,
    cluster: crate::cluster::Cluster,
}

/// What a sink wrote, before it is published.
struct Written {
    rows: u64,
    method: WriteMethod,
    /// On a cluster, each executor's share.
    writers: Vec<crate::WriterShare>,
    /// On a cluster writing one file, who assembled it.
    assembled: Option<Assembled>,
}

/// Who made one file of a cluster's parts.
enum Assembled {
    /// The store, copying their row groups (these bytes sent by the client).
    ByStore(sluice_store::Composed),
    /// The client, reading them and writing the file.
    ByClient,
}

impl Written {
    /// Written by this process.
    fn here(rows: u64, method: WriteMethod) -> Self {
        Self {
            rows,
            method,
            writers: Vec::new(),
            assembled: None,
        }
    }
}

impl Frame {
    /// Refuses a destination that is a source of this frame, lies inside one (a
    /// directory or glob it reads), or contains one.
    fn refuse_overlap(&self, dest: &url::Url) -> Result<()> {
        let dest_text = sluice_store::redact(dest);
        let dest_text = dest_text.trim_end_matches('/');
        // Sources are named canonically (a named store's real URL): compare alike.
        let canonical = url::Url::parse(&self.inner.session.stores().canonical(dest))
            .unwrap_or_else(|_| dest.clone());
        for source in self.sources() {
            if crate::overlap::overlaps(source, &canonical) {
                return Err(Error::DestinationOverlapsSource {
                    dest: dest_text.to_string(),
                    source_location: source.clone(),
                });
            }
        }
        Ok(())
    }
}

/// A Parquet sink on a cluster: each partition a part, written by the executor that
/// runs it (see `cluster::sink`); a directory output's files are the parts, one file
/// is assembled from them here.
async fn write_parts(
    session: Session,
    df: DataFrame,
    target: SinkTarget,
    table_options: TableParquetOptions,
    options: ParquetWrite,
    reason: String,
) -> datafusion::error::Result<Written> {
    let external = |e: Error| datafusion::error::DataFusionError::External(Box::new(e));
    let Some(parts) = &target.parts else {
        return Err(datafusion::error::DataFusionError::Internal(
            "a cluster's sink without its parts' directory".into(),
        ));
    };
    // The executors copy unchanged columns as this write and session would here.
    let copy = crate::parquet_io::copy::ExecutorCopy::of(
        &options,
        session.read_limits(),
        session.column_copy(),
    );
    let (state, plan) = df.into_parts();
    let df = DataFrame::new(parts.cluster.with_parquet_copy(state, &copy), plan);
    let written = df
        .write_parquet(
            parts.url.as_str(),
            DataFrameWriteOptions::new().with_single_file_output(false),
            Some(table_options),
        )
        .await?;
    let rows = count_from(&written);
    let (files, writers, method) = parts
        .cluster
        .gather_parts(&target.store, &parts.url, rows)
        .await
        .map_err(external)?;
    let one_file = target.kind == OutputKind::File;
    if one_file && let Some(in_place) = target.in_place.as_ref().filter(|p| p.can_compose()) {
        match compose_parts(&session, &target.store, &parts.url, &files, rows, in_place).await {
            Ok(Ok(composed)) => {
                return Ok(Written {
                    rows,
                    method: method.unwrap_or(WriteMethod::Rewrite { reason }),
                    writers,
                    assembled: Some(Assembled::ByStore(composed)),
                });
            }
            Ok(Err(why)) => {
                tracing::debug!(%why, "a cluster's parts are assembled here, not by the store");
            }
            Err(e) => return Err(external(e)),
        }
    }
    if one_file {
        let dir = parts.url.clone();
        // The assembly reads the parts as frames: DataFusion's listing and footer
        // reads make futures that are not `Send` for every lifetime (a rustc limit
        // with their stream combinators), which a flow's must be (flows are spawned).
        // So it runs on a thread of its own, driven by this runtime, and stops when
        // this future is dropped (its uploads abort as they do here).
        let cancel = tokio_util::sync::CancellationToken::new();
        let _stop_when_dropped = cancel.clone().drop_guard();
        let runtime = tokio::runtime::Handle::current();
        let assembled = tokio::task::spawn_blocking(move || {
            runtime.block_on(async move {
                let files = files.into_iter().map(|meta| meta.location).collect();
                let assembly = std::pin::pin!(assemble(session, files, dir, target, options));
                let cancelled = std::pin::pin!(cancel.cancelled());
                match futures::future::select(assembly, cancelled).await {
                    futures::future::Either::Left((done, _)) => done,
                    futures::future::Either::Right(_) => Err(Error::Internal {
                        message: "the assembly of a cluster's parts was cancelled".into(),
                    }),
                }
            })
        })
        .await
        .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
        assembled.map_err(external)?;
    }
    Ok(Written {
        rows,
        method: method.unwrap_or(WriteMethod::Rewrite { reason }),
        writers,
        assembled: one_file.then_some(Assembled::ByClient),
    })
}

/// One file on S3 from a cluster's parts, in order, composed by the store: the parts'
/// row groups are copied by the server into the parts of the destination's upload, and
/// only the new footer (and ranges too short to be parts, S3's minimum being 5 MiB)
/// are sent from here (see `parquet_io::concat`). The upload waits for the publish.
/// `Err(reason)` when the parts cannot be concatenated so (another schema in one part,
/// bloom filters, no rows) or the store does not compose them (it refuses
/// `UploadPartCopy`, or keeps failing it): the caller assembles them. Parts whose
/// footers do not hold the job's `rows` fail the write.
async fn compose_parts(
    session: &Session,
    store: &Arc<dyn object_store::ObjectStore>,
    dir: &url::Url,
    files: &[object_store::ObjectMeta],
    rows: u64,
    in_place: &sluice_store::InPlace,
) -> Result<std::result::Result<sluice_store::Composed, String>> {
    let cache = session
        .state()
        .runtime_env()
        .cache_manager
        .get_file_metadata_cache();
    // Owned futures, joined: a stream combinator over borrowed files makes a future
    // that is not `Send` for every lifetime (see `write_parts`).
    let reads = files.iter().map(|meta| {
        let (store, cache, meta) = (Arc::clone(store), Arc::clone(&cache), meta.clone());
        let url = dir
            .join(meta.location.filename().unwrap_or_default())
            .map_or_else(|_| meta.location.to_string(), |u| sluice_store::redact(&u));
        async move {
            let footer =
                crate::parquet_io::footer::read_footer(store.as_ref(), &url, &meta, cache.as_ref())
                    .await
                    .map_err(Error::from)?;
            Ok::<_, Error>((meta.location, footer))
        }
    });
    let footers = futures::future::try_join_all(reads).await?;
    let layout = match crate::parquet_io::concat::concat(&footers) {
        Ok(layout) => layout,
        Err(reason) => return Ok(Err(reason)),
    };
    // The receipts were checked against the job's count; the footers must agree.
    if layout.rows != rows {
        return Err(Error::Internal {
            message: format!(
                "the parts under {} hold {} rows by their footers but {rows} by their \
                 receipts; nothing is published",
                sluice_store::redact(dir),
                layout.rows
            ),
        });
    }
    // A store that refuses the copies (or keeps failing them after its retries) leaves
    // the file to the client's assembly: nothing of the composition is held (its upload
    // is aborted), and the parts are still there.
    let composed = match in_place
        .compose(layout.pieces, sluice_store::ComposeOptions::default())
        .await
    {
        Ok(composed) => composed,
        Err(e) => {
            tracing::warn!(
                parts = %sluice_store::redact(dir),
                error = %e,
                "the store did not compose the file from the parts; the client assembles it"
            );
            return Ok(Err(format!("the store did not compose it: {e}")));
        }
    };
    tracing::debug!(
        rows = layout.rows,
        parts = files.len(),
        size = composed.size,
        copied = composed.copied_bytes,
        sent = composed.sent_bytes,
        "a cluster's parts composed into one file by the store"
    );
    Ok(Ok(composed))
}

/// One file from a cluster's parts, in order, assembled here without decoding: the
/// column copy moves every chunk as it is (the parts have the output's codec) into
/// the output's staged or in-place upload, a few chunks in memory at a time. Parts
/// the copy cannot serve are encoded again here (DataFusion's writer).
async fn assemble(
    session: Session,
    files: Vec<object_store::path::Path>,
    dir: url::Url,
    target: SinkTarget,
    options: ParquetWrite,
) -> Result<()> {
    let mut parts = Vec::with_capacity(files.len());
    for file in &files {
        let url = dir
            .join(file.filename().unwrap_or_default())
            .map_err(|e| Error::Internal {
                message: format!("a part's URL under {dir}: {e}"),
            })?;
        parts.push(session.read_parquet(url.as_str()).await?);
    }
    let parts = Frame::concat(parts)?;
    let state = session.state();
    // Sluice wrote the parts a moment ago: their values need no second check.
    let options = options.with_validation(false);
    let limits = session.read_limits();
    let reason =
        match crate::parquet_io::copy::route(&parts.inner.plan, &state, limits, &options).await {
            Route::Copy(plan) => {
                let store = Arc::clone(&target.store);
                match plan
                    .write(store, &target.url, false, target.in_place.clone())
                    .await
                {
                    Ok(_) => return Ok(()),
                    Err(Stop::Failed(e)) => return Err(parts.error(e)),
                    Err(Stop::Unsupported(reason)) => {
                        crate::parquet_io::copy::clear(&target.store, &target.url).await?;
                        reason
                    }
                }
            }
            Route::Rewrite(reason) => reason,
        };
    tracing::debug!(%reason, "a cluster's parts are encoded again into one file here");
    let table_options = options.table_options(&state)?;
    parts
        .to_dataframe()
        .write_parquet(
            target.url.as_str(),
            DataFrameWriteOptions::new().with_single_file_output(true),
            Some(table_options),
        )
        .await
        .map_err(|e| parts.error(e))?;
    Ok(())
}

fn count_from(batches: &[RecordBatch]) -> u64 {
    batches
        .iter()
        .filter(|b| b.num_columns() > 0 && b.num_rows() > 0)
        .filter_map(|b| {
            b.column(0)
                .as_any()
                .downcast_ref::<datafusion::arrow::array::UInt64Array>()
                .map(|a| a.value(0))
        })
        .sum()
}

impl From<PublishedFile> for WrittenFile {
    fn from(file: PublishedFile) -> Self {
        WrittenFile {
            url: file.url.to_string(),
            size: file.size,
        }
    }
}

/// A frame's shape: what [`Frame::info`] returns. Its `Display` is a table like
/// pandas' `df.info()`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrameInfo {
    /// Number of rows.
    pub rows: u64,
    /// One entry per column, in order.
    pub columns: Vec<ColumnInfo>,
}

/// One column of a [`FrameInfo`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnInfo {
    /// Its name.
    pub name: String,
    /// Its Arrow type.
    pub data_type: String,
    /// Whether the schema allows nulls.
    pub nullable: bool,
    /// How many values are not null.
    pub non_null: u64,
}

impl fmt::Display for FrameInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} rows, {} columns", self.rows, self.columns.len())?;
        let width = self
            .columns
            .iter()
            .map(|c| c.name.len())
            .max()
            .unwrap_or(6)
            .max(6);
        writeln!(
            f,
            " #  {:<width$}  {:>14}  Dtype",
            "Column", "Non-Null Count"
        )?;
        for (i, c) in self.columns.iter().enumerate() {
            writeln!(
                f,
                "{:>2}  {:<width$}  {:>14}  {}",
                i,
                c.name,
                format!("{} non-null", c.non_null),
                c.data_type
            )?;
        }
        Ok(())
    }
}
