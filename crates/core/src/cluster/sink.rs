//! A Parquet sink on a cluster: every partition written where it runs, no funnel.
//!
//! DataFusion 55's `DataSinkExec` wants one input partition, so a cluster would gather
//! every row on one executor before writing (a shuffle and one task). On the scheduler,
//! [`PartitionedParquetSinks`] replaces the sink of a Sluice output by a
//! [`PartSinkExec`]: each partition of its input writes one Parquet part (DataFusion's
//! Parquet writer, the session's options) under the output's parts directory, with a
//! receipt beside it once the part is whole. The stage that reads the sources writes
//! the output: every executor writes the share its tasks read.
//!
//! The client then [gathers](gather) the parts from the receipts (one per slice of
//! input: a task Ballista ran again after losing its executor left a second attempt,
//! which is deleted) and checks that they hold every row the job reported. A directory
//! output publishes the parts as its files; one file is assembled from them by the
//! client (see `Frame::write_parquet`).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, OnceLock};

use datafusion::arrow::array::UInt64Array;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::config::{ConfigOptions, TableParquetOptions};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::datasource::listing::ListingTableUrl;
use datafusion::datasource::physical_plan::parquet::ParquetSink;
use datafusion::datasource::physical_plan::{FileOutputMode, FileSink, FileSinkConfig};
use datafusion::datasource::sink::{DataSink, DataSinkExec};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};

use super::ClusterOptions;
use super::parts::{RECEIPT_SUFFIX, Receipt, one_per_slice};
use crate::parquet_io::copy::{self, ExecutorCopy, Stop};
use crate::{Error, Result, WriteMethod, WriterShare};

/// The address this process serves at, when it is an executor (`sluice executor`).
static EXECUTOR: OnceLock<String> = OnceLock::new();

/// Names this process, an executor, in the run records of the outputs it writes: the
/// address it serves data at (`sluice executor --bind`). Set once, at start-up.
///
/// ```
/// sluice_core::cluster::set_executor_address("10.0.0.7:50051");
/// ```
pub fn set_executor_address(address: impl Into<String>) {
    let _ = EXECUTOR.set(address.into());
}

fn executor_address() -> String {
    EXECUTOR
        .get()
        .cloned()
        .unwrap_or_else(|| format!("process {}", std::process::id()))
}

/// The physical optimizer rule a scheduler plans with: the Parquet sink of a Sluice
/// output (its directory is a staging name) becomes a [`PartSinkExec`] over the sink's
/// input partitions, instead of one task after a shuffle.
///
/// ```
/// use datafusion::physical_optimizer::PhysicalOptimizerRule;
/// let rule = sluice_core::cluster::PartitionedParquetSinks;
/// assert_eq!(rule.name(), "sluice_partitioned_parquet_sinks");
/// ```
#[derive(Debug, Default, Clone, Copy)]
pub struct PartitionedParquetSinks;

impl PhysicalOptimizerRule for PartitionedParquetSinks {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some(exec) = node.downcast_ref::<DataSinkExec>() else {
                return Ok(Transformed::no(node));
            };
            let Some(sink) = exec.sink().downcast_ref::<ParquetSink>() else {
                return Ok(Transformed::no(node));
            };
            let config = sink.config();
            let ours = config.table_paths.first().is_some_and(|dir| {
                dir.as_str().contains(sluice_store::STAGING_MARKER) && dir.is_collection()
            });
            if !ours {
                return Ok(Transformed::no(node));
            }
            // The shuffle DataFusion put in front of the sink for its one partition; a
            // sort's merge stays (its one partition keeps the order).
            let input = match exec.input().downcast_ref::<CoalescePartitionsExec>() {
                Some(coalesce) => Arc::clone(coalesce.input()),
                None => Arc::clone(exec.input()),
            };
            let part = PartSinkExec::new(input, config.clone(), sink.parquet_options().clone());
            Ok(Transformed::yes(Arc::new(part) as Arc<dyn ExecutionPlan>))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "sluice_partitioned_parquet_sinks"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// A scheduler's query planner: Sluice's, with [`PartitionedParquetSinks`] applied to
/// every physical plan it makes. Ballista 55's adaptive planner (on by default) plans
/// with its own list of physical optimizer rules, not the session's, but with the
/// session's query planner: the sink is replaced here, before its rules run (none of
/// them then puts a shuffle in front of it), and after the session's rules in the
/// static planner (where the shuffle DataFusion put there is taken out).
#[derive(Debug, Default)]
pub(crate) struct SchedulerPlanner;

#[async_trait::async_trait]
impl datafusion::execution::context::QueryPlanner for SchedulerPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &datafusion::logical_expr::LogicalPlan,
        session: &dyn datafusion::catalog::Session,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let plan = crate::planner::SluiceQueryPlanner
            .create_physical_plan(logical_plan, session)
            .await?;
        PartitionedParquetSinks.optimize(plan, session.config_options())
    }
}

/// Writes each partition of its input as one Parquet part under a directory, with a
/// receipt beside it; returns one row per partition: the rows it wrote (`count`, as
/// DataFusion's sink).
#[derive(Debug)]
pub(crate) struct PartSinkExec {
    input: Arc<dyn ExecutionPlan>,
    /// The parts' directory and the output's schema (as DataFusion planned the sink).
    pub(crate) config: FileSinkConfig,
    pub(crate) options: TableParquetOptions,
    properties: Arc<PlanProperties>,
}

impl PartSinkExec {
    pub(crate) fn new(
        input: Arc<dyn ExecutionPlan>,
        config: FileSinkConfig,
        options: TableParquetOptions,
    ) -> Self {
        let partitions = input.properties().partitioning.partition_count();
        let properties = PlanProperties::new(
            EquivalenceProperties::new(count_schema()),
            Partitioning::UnknownPartitioning(partitions),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        Self {
            input,
            config,
            options,
            properties: Arc::new(properties),
        }
    }

    /// The parts' directory.
    fn dir(&self) -> DfResult<&ListingTableUrl> {
        self.config
            .table_paths
            .first()
            .ok_or_else(|| DataFusionError::Internal("a part sink without a directory".into()))
    }
}

fn count_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(
        "count",
        DataType::UInt64,
        false,
    )]))
}

impl DisplayAs for PartSinkExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "PartSinkExec: dir={}",
            self.dir().map_or("?", |d| d.as_str())
        )
    }
}

impl ExecutionPlan for PartSinkExec {
    crate::plan::single_child_exec!("PartSinkExec");

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let input = crate::plan::only_one("PartSinkExec", children)?;
        Ok(Arc::new(Self::new(
            input,
            self.config.clone(),
            self.options.clone(),
        )))
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![false]
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let dir = self.dir()?.clone();
        // An attempt of its own: a task Ballista runs again never overwrites a part
        // another attempt may still be writing. Short: keys stay within what
        // file-system-backed S3 servers can name.
        let attempt = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let name = format!("part-{partition:05}-{attempt}.parquet");
        let files = super::partition_files(&self.input, partition);
        let receipt = SinkReceipt {
            slice: super::slice_identity(&self.input, partition),
            first: files.as_ref().and_then(|files| {
                files.first().map(|f| {
                    (
                        f.object_meta.location.to_string(),
                        f.range.as_ref().map_or(0, |r| r.start.max(0) as u64),
                    )
                })
            }),
            file: name.clone(),
            rows: 0,
            size: 0,
            executor: executor_address(),
            method: None,
        };
        let part = ListingTableUrl::parse(format!("{}{name}", dir.as_str()))?;
        let path = part.prefix().clone();
        let config = FileSinkConfig {
            table_paths: vec![part],
            file_output_mode: FileOutputMode::SingleFile,
            ..self.config.clone()
        };
        let sink = ParquetSink::new(config, self.options.clone());
        let store_url = self.config.object_store_url.clone();
        let input = Arc::clone(&self.input);
        let options = self.options.clone();
        let written = async move {
            let store = context.runtime_env().object_store(&store_url)?;
            let remote = crate::parquet_io::is_remote(store_url.as_str());
            let choices = copy_choices(&context);
            let copied = match copy::partition(&input, partition, &context, &options, choices).await
            {
                Ok(copy) => match copy.write(Arc::clone(&store), path.clone(), remote).await {
                    Ok(written) => Ok(written),
                    Err(Stop::Failed(e)) => return Err(e),
                    Err(Stop::Unsupported(reason)) => {
                        match store.delete(&path).await {
                            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                            Err(e) => return Err(e.into()),
                        }
                        Err(reason)
                    }
                },
                Err(reason) => Err(reason),
            };
            let (rows, method) = match copied {
                Ok(written) => written,
                Err(reason) => {
                    tracing::debug!(%reason, partition, "a cluster's part is encoded again");
                    let stream = input.execute(partition, Arc::clone(&context))?;
                    let rows = DataSink::write_all(&sink, stream, &context).await?;
                    (rows, WriteMethod::Rewrite { reason })
                }
            };
            let size = store.head(&path).await?.size;
            let receipt = SinkReceipt {
                rows,
                size,
                method: Some(method),
                ..receipt
            };
            let body =
                serde_json::to_vec(&receipt).map_err(|e| DataFusionError::External(Box::new(e)))?;
            let receipt_path = Path::from(format!("{path}{RECEIPT_SUFFIX}"));
            store.put(&receipt_path, body.into()).await?;
            tracing::debug!(part = %path, rows, size, "wrote a part of a cluster's output");
            Ok(RecordBatch::try_new(
                count_schema(),
                vec![Arc::new(UInt64Array::from(vec![rows]))],
            )?)
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            count_schema(),
            futures::stream::once(written),
        )))
    }
}

/// What the client's write asks of the column copy (see [`ClusterOptions`]): the
/// defaults when it says nothing (a client of an earlier version) or what it says does
/// not parse.
fn copy_choices(context: &TaskContext) -> ExecutorCopy {
    let sent = context
        .session_config()
        .options()
        .extensions
        .get::<ClusterOptions>()
        .map(|options| options.parquet_copy.clone())
        .unwrap_or_default();
    if sent.is_empty() {
        return ExecutorCopy::default();
    }
    serde_json::from_str(&sent).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "the job's column-copy settings do not parse; using the defaults");
        ExecutorCopy::default()
    })
}

/// What an executor leaves beside a part it has written completely.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SinkReceipt {
    /// What the partition read (see [`slice_identity`](super::slice_identity)): two
    /// attempts of one slice are one part.
    slice: Option<String>,
    /// The first object the slice read and where in it: parts are put in this order.
    first: Option<(String, u64)>,
    /// The part's name in the directory.
    file: String,
    rows: u64,
    size: u64,
    executor: String,
    /// How the part was written (absent from an executor of an earlier version).
    #[serde(default)]
    method: Option<WriteMethod>,
}

impl Receipt for SinkReceipt {
    fn part(&self) -> (&str, u64) {
        (&self.file, self.size)
    }

    fn slice(&self) -> &str {
        self.slice.as_deref().unwrap_or(&self.file)
    }
}

/// The parts a job wrote under `dir`, in the order of the input they read, what each
/// executor wrote and how the parts were written (see [`method_of`]); every other
/// object there (another attempt's part, a part whose
/// writer died, the receipts) deleted. Fails when the parts do not hold the `rows` the
/// job reported: a destination the executors wrote where this process does not see
/// (a local path on another machine).
pub(crate) async fn gather(
    store: &Arc<dyn ObjectStore>,
    dir: &url::Url,
    rows: u64,
    cluster: &str,
) -> Result<(
    Vec<object_store::ObjectMeta>,
    Vec<WriterShare>,
    Option<WriteMethod>,
)> {
    use futures::TryStreamExt;
    let prefix = sluice_store::object_path(dir)?;
    let store_error = |operation: &'static str, source| {
        Error::Store(sluice_store::StoreError::ObjectStore {
            operation,
            url: sluice_store::redact(dir),
            source,
        })
    };
    let listed: Vec<object_store::ObjectMeta> = store
        .list(Some(&prefix))
        .try_collect()
        .await
        .map_err(|e| store_error("list", e))?;
    let mut parts: Vec<SinkReceipt> =
        one_per_slice(store.as_ref(), &listed, |_, e| store_error("get", e)).await?;
    parts.sort_by(|a, b| (&a.first, &a.file).cmp(&(&b.first, &b.file)));
    let written: u64 = parts.iter().map(|p| p.rows).sum();
    if written != rows {
        let reason = if written < rows {
            format!(
                "the executors reported {rows} rows written but the parts this process finds \
                 under {} hold {written}: write to a location every executor and this \
                 process reach (S3, or a file system they all mount), not a local path of \
                 another machine",
                sluice_store::redact(dir)
            )
        } else {
            format!(
                "the parts under {} hold {written} rows but the executors reported {rows}: \
                 a task ran twice over input that cannot be told apart (its partition mixes \
                 others'); nothing is published",
                sluice_store::redact(dir)
            )
        };
        return Err(Error::Cluster {
            address: cluster.to_string(),
            reason,
        });
    }
    let keep: std::collections::HashSet<&str> = parts.iter().map(|p| p.file.as_str()).collect();
    // At once (each a round trip on a remote store), with the uploads an executor killed
    // mid-part left open: nobody writes here any more.
    let deletes = listed
        .iter()
        .filter(|meta| !keep.contains(meta.location.filename().unwrap_or_default()))
        .map(|meta| store.delete(&meta.location));
    let (deleted, ()) = futures::join!(
        futures::future::join_all(deletes),
        sluice_store::sweep_pending_uploads(store, &prefix)
    );
    for result in deleted {
        match result {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(store_error("delete", e)),
        }
    }
    let mut shares: BTreeMap<&str, WriterShare> = BTreeMap::new();
    for part in &parts {
        let share = shares
            .entry(part.executor.as_str())
            .or_insert_with(|| WriterShare {
                executor: part.executor.clone(),
                parts: 0,
                rows: 0,
                bytes: 0,
            });
        share.parts += 1;
        share.rows += part.rows;
        share.bytes += part.size;
    }
    let shares = shares.into_values().collect();
    let method = method_of(&parts);
    // As listed: their sizes and versions read their footers without a `HEAD`.
    let by_name: std::collections::HashMap<&str, &object_store::ObjectMeta> = listed
        .iter()
        .filter_map(|m| Some((m.location.filename()?, m)))
        .collect();
    let parts = parts
        .iter()
        .filter_map(|p| by_name.get(p.file.as_str()).map(|m| (*m).clone()))
        .collect();
    Ok((parts, shares, method))
}

/// How a job's parts were written, as one sink's [`WriteMethod`]: the column copy when
/// every part was copied (its chunks summed), else the first reason a part was encoded
/// again; `None` when no receipt says (no parts, or executors of an earlier version).
fn method_of(parts: &[SinkReceipt]) -> Option<WriteMethod> {
    let methods: Vec<&WriteMethod> = parts.iter().filter_map(|p| p.method.as_ref()).collect();
    if methods.len() < parts.len() || methods.is_empty() {
        return None;
    }
    let rewritten = methods.iter().find_map(|method| match method {
        WriteMethod::Rewrite { reason } => Some(reason),
        WriteMethod::ColumnCopy { .. } => None,
    });
    if let Some(reason) = rewritten {
        let count = methods.iter().filter(|m| !m.is_column_copy()).count();
        return Some(WriteMethod::Rewrite {
            reason: format!(
                "{count} of {} parts were encoded again on the executors: {reason}",
                methods.len()
            ),
        });
    }
    let mut combined = methods[0].clone();
    if let WriteMethod::ColumnCopy {
        chunks_verbatim,
        chunks_recompressed,
        ..
    } = &mut combined
    {
        for method in &methods[1..] {
            if let WriteMethod::ColumnCopy {
                chunks_verbatim: verbatim,
                chunks_recompressed: recompressed,
                ..
            } = method
            {
                *chunks_verbatim += verbatim;
                *chunks_recompressed += recompressed;
            }
        }
    }
    Some(combined)
}

/// The bytes of a [`PartSinkExec`] as it crosses to the executors: DataFusion's own
/// protobuf of its Parquet sink (the parts' directory, schema and writer options).
pub(crate) fn encode(exec: &PartSinkExec) -> DfResult<Vec<u8>> {
    use prost::Message;
    let sink = ParquetSink::new(exec.config.clone(), exec.options.clone());
    let proto = datafusion_proto::protobuf::ParquetSink::try_from(&sink)?;
    Ok(proto.encode_to_vec())
}

/// A [`PartSinkExec`] over `input` from the bytes of [`encode`].
pub(crate) fn decode(bytes: &[u8], input: Arc<dyn ExecutionPlan>) -> DfResult<PartSinkExec> {
    use prost::Message;
    let proto = datafusion_proto::protobuf::ParquetSink::decode(bytes)
        .map_err(|e| DataFusionError::Plan(format!("a part sink does not decode: {e}")))?;
    let sink = ParquetSink::try_from(&proto)?;
    Ok(PartSinkExec::new(
        input,
        sink.config().clone(),
        sink.parquet_options().clone(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    async fn put_part(store: &Arc<dyn ObjectStore>, dir: &Path, receipt: &SinkReceipt) {
        let part = dir.clone().join(receipt.file.as_str());
        store
            .put(&part, vec![0u8; receipt.size as usize].into())
            .await
            .unwrap();
        let path = Path::from(format!("{part}{RECEIPT_SUFFIX}"));
        let body = serde_json::to_vec(receipt).unwrap();
        store.put(&path, body.into()).await.unwrap();
    }

    fn receipt(slice: &str, file: &str, start: u64, rows: u64, executor: &str) -> SinkReceipt {
        SinkReceipt {
            slice: Some(slice.into()),
            first: Some(("in/trips.parquet".into(), start)),
            file: file.into(),
            rows,
            size: rows * 10,
            executor: executor.into(),
            method: None,
        }
    }

    #[tokio::test]
    async fn one_part_per_slice_in_input_order_and_everything_else_deleted() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let url = url::Url::parse("memory:///out/.t.parquet.sluice-staging-1.parts/").unwrap();
        let dir = sluice_store::object_path(&url).unwrap();
        // The second slice was written twice (its first executor died after the
        // receipt), a third attempt died mid-write (no receipt).
        put_part(
            &store,
            &dir,
            &receipt("b", "part-00000-bbbb1111.parquet", 900, 5, "e1"),
        )
        .await;
        put_part(
            &store,
            &dir,
            &receipt("b", "part-00001-bbbb2222.parquet", 900, 5, "e2"),
        )
        .await;
        put_part(
            &store,
            &dir,
            &receipt("a", "part-00000-aaaa1111.parquet", 4, 7, "e2"),
        )
        .await;
        store
            .put(
                &dir.clone().join("part-00002-cccc.parquet"),
                vec![1u8; 3].into(),
            )
            .await
            .unwrap();

        let (parts, shares, _) = gather(&store, &url, 12, "df://c:50050").await.unwrap();
        let names: Vec<_> = parts
            .iter()
            .map(|p| p.location.filename().unwrap().to_string())
            .collect();
        assert_eq!(
            names[0], "part-00000-aaaa1111.parquet",
            "input order: {names:?}"
        );
        assert!(names[1].contains("bbbb"), "{names:?}");
        assert_eq!(names.len(), 2);
        assert_eq!(shares.iter().map(|s| s.rows).sum::<u64>(), 12);
        use futures::TryStreamExt;
        let left: Vec<String> = store
            .list(Some(&dir))
            .map_ok(|m| m.location.filename().unwrap().to_string())
            .try_collect()
            .await
            .unwrap();
        let mut left = left;
        left.sort();
        let mut expected = names.clone();
        expected.sort();
        assert_eq!(left, expected, "other attempts and receipts deleted");
    }

    #[test]
    fn copied_parts_sum_their_chunks_and_a_rewritten_part_says_why() {
        let copied = |verbatim, recompressed| WriteMethod::ColumnCopy {
            copied: vec!["fare_amount".into()],
            computed: vec!["tip_fraction".into()],
            chunks_verbatim: verbatim,
            chunks_recompressed: recompressed,
        };
        let with = |method: Option<WriteMethod>| SinkReceipt {
            method,
            ..receipt("a", "part-00000-aaaa.parquet", 4, 7, "e1")
        };
        let both = [with(Some(copied(3, 1))), with(Some(copied(2, 0)))];
        assert_eq!(method_of(&both), Some(copied(5, 1)));
        let reason = "the plan has a FilterExec node".to_string();
        let mixed = [
            with(Some(copied(3, 1))),
            with(Some(WriteMethod::Rewrite { reason })),
        ];
        assert_eq!(
            method_of(&mixed),
            Some(WriteMethod::Rewrite {
                reason: "1 of 2 parts were encoded again on the executors: the plan has a \
                         FilterExec node"
                    .into()
            })
        );
        // An executor of an earlier version says nothing: the client's reason stands.
        assert_eq!(method_of(&[with(Some(copied(1, 0))), with(None)]), None);
        assert_eq!(method_of(&[]), None);
    }

    #[tokio::test]
    async fn parts_missing_here_fail_naming_where_to_write() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let url = url::Url::parse("memory:///out/.d.sluice-staging-2/").unwrap();
        let dir = sluice_store::object_path(&url).unwrap();
        put_part(
            &store,
            &dir,
            &receipt("a", "part-00000-aaaa.parquet", 4, 7, "e1"),
        )
        .await;
        let err = gather(&store, &url, 20, "df://c:50050").await.unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("20 rows") && text.contains("hold 7"),
            "{text}"
        );
        assert!(
            text.contains("every executor and this process reach"),
            "{text}"
        );
    }
}
