//! The checkpoint tee: a plan node that writes every batch of a task's output to its
//! checkpoint while passing it on, and commits the manifest when every partition has
//! streamed to its end.
//!
//! It is a materialization point: it declares that it needs every column of its input
//! and lets no filter or limit through, so the checkpoint holds the task's whole
//! output whatever reads it downstream. (The task boundary below it, by contrast,
//! lets push-downs through.)
//!
//! Each partition's batches go to a writer task of their own through a channel of two
//! batches: encoding and uploading run beside the stream, and a slow store slows the
//! stream down instead of filling memory. A partition's part is complete when its
//! input ended (`Ready(None)`) and its writer closed the file; the last partition to
//! complete commits the manifest before it ends its own stream, so a sink has not
//! finished before the checkpoint is committed. A partition that fails or is dropped
//! marks the write failed: nothing is committed, and its parts are deleted.

use std::collections::HashMap;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::Session as DfSession;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{
    Expr, LogicalPlan, UserDefinedLogicalNode, UserDefinedLogicalNodeCore,
};
use datafusion::physical_plan::metrics::{
    BaselineMetrics, Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet,
};
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use datafusion::physical_planner::{ExtensionPlanner, PhysicalPlanner};
use futures::future::BoxFuture;
use futures::{FutureExt, Stream};
use object_store::buffered::BufWriter;
use object_store::path::Path;
use parquet::arrow::AsyncArrowWriter;
use parquet::arrow::async_writer::AsyncFileWriter;
use parquet::file::metadata::ParquetMetaData;
use tokio::sync::mpsc;

use super::gc::Lease;
use super::manifest::{BLOCK_SIZE, BlockHasher, encode_schema};
use super::{CacheKeyInputs, CheckpointFormat, CheckpointStore, Clock, Manifest, ManifestFile};
use crate::plan::boundary::CheckpointSource;
use crate::seam::TaskHandle;
use crate::{Error, Result};

/// Everything a tee needs to write and commit one task run's checkpoint.
#[derive(Debug)]
pub(crate) struct CheckpointTarget {
    pub(crate) store: CheckpointStore,
    pub(crate) task_run: TaskHandle,
    pub(crate) task: String,
    pub(crate) key: String,
    pub(crate) code_version: Option<String>,
    /// The checkpoint's id (its manifest's `id`), chosen before it is written: the
    /// keys of downstream tasks name it.
    pub(crate) id: String,
    pub(crate) key_inputs: CacheKeyInputs,
    pub(crate) policy: &'static str,
    pub(crate) flow_run: String,
    pub(crate) ttl: Option<Duration>,
    pub(crate) clock: Clock,
    /// Overwrite an existing manifest (refresh) instead of create-if-absent.
    pub(crate) replace: bool,
    pub(crate) format: CheckpointFormat,
    pub(crate) plan_text: String,
    /// The task output's schema, as the manifest records it.
    pub(crate) schema: SchemaRef,
    /// Set once this run committed the checkpoint: later sinks of the same frame read
    /// it instead of computing the task again.
    pub(crate) committed: OnceLock<Manifest>,
    /// The footers of the committed parts, by object path, when the column copy wrote
    /// them (it has them from its writer): a later sink's copy reads the parts without
    /// reading their footers again.
    pub(crate) footers: OnceLock<HashMap<Path, Arc<ParquetMetaData>>>,
    /// Whether a checkpoint the tee stream writes is marked for sinks to encode again
    /// ([`Manifest::reencode`]): the task is persisted with the tee, beside the sink
    /// that consumes its output (a barrier's sinks copy out of its checkpoint).
    pub(crate) tee_reencodes: bool,
}

impl CheckpointTarget {
    /// A new write of `parts` parts in a directory of its own, leased until it is
    /// committed or deleted.
    pub(crate) fn begin(&self, parts: usize) -> Arc<CheckpointWrite> {
        let dir = self
            .store
            .key_dir(&self.task, &self.key)
            .join(format!("data-{}", uuid::Uuid::new_v4().simple()));
        Arc::new(CheckpointWrite {
            lease: tokio::sync::Mutex::new(Some(self.store.lease(&dir, self.clock.clone()))),
            dir,
            state: Mutex::new(WriteState {
                parts: vec![None; parts],
                closed: 0,
            }),
            failed: AtomicBool::new(false),
        })
    }

    /// The checkpoint this run committed, as a read: through the checksums with its
    /// parts' footers when the column copy wrote them (a sink's copy then moves its
    /// chunks), else without verifying (the tee hashed what it wrote).
    pub(crate) fn committed_read(&self) -> Option<Arc<super::CheckpointRead>> {
        let manifest = self.committed.get()?.clone();
        Some(match self.footers.get() {
            Some(footers) => {
                super::CheckpointRead::with_footers(self.store.clone(), manifest, footers.clone())
            }
            None => super::CheckpointRead::new(self.store.clone(), manifest, false),
        })
    }

    fn url(&self) -> String {
        self.store.key_url(&self.task, &self.key)
    }

    pub(crate) fn error(&self, source: Error) -> Error {
        self.store.checkpoint_error(&self.task, &self.key, source)
    }
}

/// The logical tee node: where it writes, and who commits ([`Tee`]).
#[derive(Debug, Clone)]
pub(crate) struct CheckpointTee {
    pub(crate) tee: Tee,
    pub(crate) input: LogicalPlan,
}

crate::plan::single_input_node!(CheckpointTee, identity);

impl CheckpointTee {
    /// What tells two tees over one input apart: the checkpoint's key, then the write
    /// (this process's checkpoint id, or a cluster's `data-<id>` directory).
    fn identity(&self) -> (&str, &str) {
        (self.tee.key(), self.tee.write_id())
    }
}

impl UserDefinedLogicalNodeCore for CheckpointTee {
    crate::plan::single_input_logical!("CheckpointTee");

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "CheckpointTee: {}", self.tee)
    }

    fn with_exprs_and_inputs(&self, _exprs: Vec<Expr>, inputs: Vec<LogicalPlan>) -> DfResult<Self> {
        let input = crate::plan::only_one("CheckpointTee", inputs)?;
        Ok(Self {
            tee: self.tee.clone(),
            input,
        })
    }

    // The defaults are what a materialization point needs: every input column is
    // necessary (`necessary_children_exprs` is `None`), no filter may pass
    // (`prevent_predicate_push_down_columns` is every column), no limit may pass.
}

/// Where a tee writes, and who commits what it wrote.
pub(crate) type Tee = Arc<dyn TeeSink>;

/// Where a tee's parts go and who commits them: this process, when the last partition
/// has ended ([`CheckpointTarget`]); or, on a cluster's executors, the client, once the
/// job has succeeded (the cluster's parts write).
pub(crate) trait TeeSink: std::any::Any + fmt::Debug + Send + Sync {
    fn store(&self) -> &CheckpointStore;
    fn task(&self) -> &str;
    fn key(&self) -> &str;
    /// This write's identity: two tees over one input with the same key differ by it.
    fn write_id(&self) -> &str;
    /// The checkpoint when this run has committed it already: a later sink reads it.
    fn committed(&self) -> Option<Manifest>;
    fn format(&self) -> CheckpointFormat;
    /// A write or commit error, naming the task and the checkpoint, as DataFusion
    /// carries it.
    fn error(&self, source: Error) -> DataFusionError;
    /// The checkpoint this run committed, as a source of the column copy (its parts'
    /// footers known), with its schema.
    fn written(&self) -> Option<(Arc<dyn CheckpointSource>, SchemaRef)> {
        None
    }
    /// What `Display` shows after `task=… key=…`.
    fn describe(&self, _f: &mut fmt::Formatter) -> fmt::Result {
        Ok(())
    }
    /// Partition `partition` (of `partitions`) of `input` starts: the path of its part,
    /// and what its end does. `execution` holds what the partitions of one plan
    /// instance share.
    fn open(
        self: Arc<Self>,
        execution: &OnceLock<Arc<CheckpointWrite>>,
        input: &Arc<dyn ExecutionPlan>,
        partition: usize,
        partitions: usize,
    ) -> (Path, Arc<dyn PartEnd>);
}

/// What the end of a tee's partition does with its part.
pub(crate) trait PartEnd: Send + Sync {
    /// This process's write, whose lease the part's progress renews and which a
    /// partition that ends without its part fails.
    fn write(&self) -> Option<&Arc<CheckpointWrite>> {
        None
    }
    /// The part is complete (`Ok`), or its writer failed.
    fn finish(
        self: Arc<Self>,
        partition: usize,
        part: Result<ManifestFile>,
    ) -> BoxFuture<'static, DfResult<()>>;
}

/// This process commits: the last partition to end commits the manifest.
impl TeeSink for CheckpointTarget {
    fn store(&self) -> &CheckpointStore {
        &self.store
    }

    fn task(&self) -> &str {
        &self.task
    }

    fn key(&self) -> &str {
        &self.key
    }

    fn write_id(&self) -> &str {
        &self.id
    }

    fn committed(&self) -> Option<Manifest> {
        self.committed.get().cloned()
    }

    fn written(&self) -> Option<(Arc<dyn CheckpointSource>, SchemaRef)> {
        self.footers.get()?;
        let read = self.committed_read()?;
        let schema = read.manifest().schema().ok()?;
        Some((read as Arc<dyn CheckpointSource>, schema))
    }

    fn format(&self) -> CheckpointFormat {
        self.format
    }

    fn error(&self, source: Error) -> DataFusionError {
        CheckpointTarget::error(self, source).into()
    }

    fn open(
        self: Arc<Self>,
        execution: &OnceLock<Arc<CheckpointWrite>>,
        _input: &Arc<dyn ExecutionPlan>,
        partition: usize,
        partitions: usize,
    ) -> (Path, Arc<dyn PartEnd>) {
        let write = Arc::clone(execution.get_or_init(|| self.begin(partitions)));
        let path = write.part(partition);
        (
            path,
            Arc::new(CommitEnd {
                target: self,
                write,
            }),
        )
    }
}

/// The end of a partition whose part this process commits.
struct CommitEnd {
    target: Arc<CheckpointTarget>,
    write: Arc<CheckpointWrite>,
}

impl PartEnd for CommitEnd {
    fn write(&self) -> Option<&Arc<CheckpointWrite>> {
        Some(&self.write)
    }

    /// Hands the part to the write; the last partition commits the manifest (or, when
    /// a partition failed, deletes the parts).
    fn finish(
        self: Arc<Self>,
        partition: usize,
        part: Result<ManifestFile>,
    ) -> BoxFuture<'static, DfResult<()>> {
        async move {
            let (target, write) = (&self.target, &self.write);
            let part = match part {
                Ok(part) => part,
                Err(e) => {
                    write.close(partition, None);
                    if write.all_closed() {
                        write.delete(&target.store).await;
                    }
                    return Err(TeeSink::error(target.as_ref(), e));
                }
            };
            let Some(parts) = write.close(partition, Some(part)) else {
                if write.failed.load(Ordering::Acquire) && write.all_closed() {
                    write.delete(&target.store).await;
                }
                return Ok(());
            };
            let encoded = Encoded {
                codec: target.format.tee_compression(),
                reencode: target.tee_reencodes,
            };
            write
                .commit(target, parts, encoded)
                .await
                .map(drop)
                .map_err(|e| TeeSink::error(target.as_ref(), e))
        }
        .boxed()
    }
}

/// The physical tee.
#[derive(Debug)]
pub struct CheckpointExec {
    input: Arc<dyn ExecutionPlan>,
    pub(crate) tee: Tee,
    properties: Arc<PlanProperties>,
    write: OnceLock<Arc<CheckpointWrite>>,
    /// The rows that streamed through (`output_rows`): on a cluster, the client
    /// commits only when the parts' receipts hold as many.
    metrics: ExecutionPlanMetricsSet,
}

impl CheckpointExec {
    pub(crate) fn new(input: Arc<dyn ExecutionPlan>, tee: Tee) -> Self {
        let properties = Arc::clone(input.properties());
        Self {
            input,
            tee,
            properties,
            write: OnceLock::new(),
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }
}

#[cfg(feature = "ballista")]
impl CheckpointExec {
    /// Counts into partition `partition`'s metrics the `rows` a column copy on an
    /// executor wrote to this tee's part without running it, under this write's
    /// identity: the client's commit gate compares them with the parts' receipts.
    pub(crate) fn count_copied(&self, partition: usize, rows: u64) {
        crate::plan::count_identity(
            &self.metrics,
            WRITE_IDENTITY,
            self.tee.write_id(),
            partition,
        );
        MetricBuilder::new(&self.metrics)
            .output_rows(partition)
            .add(rows as usize);
    }
}

/// `task=… key=…`, and on a cluster the write's directory (`write=data-…`).
impl fmt::Display for dyn TeeSink {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "task={} key={}", self.task(), self.key())?;
        self.describe(f)
    }
}

impl DisplayAs for CheckpointExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "CheckpointExec: {}", self.tee)
    }
}

impl ExecutionPlan for CheckpointExec {
    crate::plan::single_child_exec!("CheckpointExec");

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let input = crate::plan::only_one("CheckpointExec", children)?;
        Ok(Arc::new(Self::new(input, self.tee.clone())))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let schema = self.input.schema();
        let partitions = self.properties.partitioning.partition_count().max(1);
        let (path, close) =
            Arc::clone(&self.tee).open(&self.write, &self.input, partition, partitions);
        let props = self
            .tee
            .format()
            .writer_properties()
            .map_err(DataFusionError::from)?;
        crate::plan::count_identity(
            &self.metrics,
            WRITE_IDENTITY,
            self.tee.write_id(),
            partition,
        );
        let (sender, receiver) = mpsc::channel(2);
        let writer = tokio::spawn(write_part(
            Arc::clone(self.tee.store().object_store()),
            path,
            Arc::clone(&schema),
            props,
            receiver,
            close.write().cloned(),
        ));
        Ok(Box::pin(TeeStream {
            baseline: BaselineMetrics::new(&self.metrics, partition),
            abandoned: MetricBuilder::new(&self.metrics).counter(ABANDONED_PARTITIONS, partition),
            schema,
            input,
            tee: self.tee.clone(),
            close,
            partition,
            sender: Some(sender),
            writer: Some(writer),
            pending: None,
            finishing: None,
            done: false,
        }))
    }
}

/// The tee's metric counting partitions that ended without their part (failed, or
/// dropped by a downstream limit): a cluster job's checkpoint is committed only when
/// its successful tasks counted none.
pub(crate) const ABANDONED_PARTITIONS: &str = "abandoned_partitions";

/// The key of the identity count of a tee's metrics: `sluice_checkpoint_write=ID`,
/// the id of the write its parts go under.
pub(crate) const WRITE_IDENTITY: &str = "sluice_checkpoint_write";

/// What one partition sends its writer.
enum Message {
    Batch(RecordBatch),
    End,
}

/// The write of one execution of the tee: its parts and whether it failed.
#[derive(Debug)]
pub(crate) struct CheckpointWrite {
    /// `checkpoints/<task>/<key>/data-<id>`, this write's own directory.
    dir: Path,
    /// The writer's lease on `dir` until the manifest is committed or the parts are
    /// deleted (whoever ends the write takes it).
    lease: tokio::sync::Mutex<Option<Lease>>,
    state: Mutex<WriteState>,
    failed: AtomicBool,
}

#[derive(Debug)]
struct WriteState {
    parts: Vec<Option<ManifestFile>>,
    closed: usize,
}

impl CheckpointWrite {
    /// Where part `n` goes.
    pub(crate) fn part(&self, n: usize) -> Path {
        self.dir.clone().join(format!("part-{n}.parquet"))
    }

    /// Commits the manifest of `parts`, encoded as `encoded` says, for `target` (see
    /// [`commit`]: whether this write's manifest stands), ending the lease; deletes the
    /// parts when the commit fails.
    pub(crate) async fn commit(
        &self,
        target: &CheckpointTarget,
        parts: Vec<ManifestFile>,
        encoded: Encoded,
    ) -> Result<bool> {
        let lease = self.lease.lock().await.take();
        let committed = commit(target, &self.dir, parts, encoded, lease).await;
        if committed.is_err() {
            self.delete(&target.store).await;
        }
        committed
    }

    /// One partition closed, with its part or without (failed or dropped). Returns the
    /// parts when this was the last partition and none failed: time to commit.
    fn close(&self, partition: usize, part: Option<ManifestFile>) -> Option<Vec<ManifestFile>> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match part {
            Some(part) => state.parts[partition] = Some(part),
            None => self.failed.store(true, Ordering::Release),
        }
        state.closed += 1;
        if state.closed < state.parts.len() || self.failed.load(Ordering::Acquire) {
            return None;
        }
        state.parts.iter().cloned().collect()
    }

    /// Whether every partition has closed (so a failed write can be cleaned up).
    fn all_closed(&self) -> bool {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.closed >= state.parts.len()
    }

    /// The write made progress: its lease may be due for renewal.
    pub(crate) fn progress(&self) {
        if let Ok(lease) = self.lease.try_lock()
            && let Some(lease) = lease.as_ref()
        {
            lease.progress();
        }
    }

    /// Ends the lease (no renewal in flight after this), then deletes the parts.
    pub(crate) async fn delete(&self, store: &CheckpointStore) {
        if let Some(lease) = self.lease.lock().await.take() {
            lease.end().await;
        }
        if let Err(e) = store.delete_prefix(&self.dir).await {
            tracing::warn!(error = %e, "could not delete an uncommitted checkpoint's parts");
        }
    }
}

/// Writes one partition's part: batches until `End`, then closes the file. A channel
/// that closes without `End` is an abort: the writer is dropped unfinished (the
/// store aborts its multipart upload), and nothing is returned.
async fn write_part(
    store: Arc<dyn object_store::ObjectStore>,
    path: Path,
    schema: SchemaRef,
    props: parquet::file::properties::WriterProperties,
    mut receiver: mpsc::Receiver<Message>,
    write: Option<Arc<CheckpointWrite>>,
) -> Result<Option<ManifestFile>> {
    let file = PartWriter::new(BufWriter::new(store, path.clone()), path.clone());
    let mut writer = AsyncArrowWriter::try_new(file, schema, Some(props))
        .map_err(|e| parquet_error(&path, e))?;
    let mut rows = 0u64;
    loop {
        match receiver.recv().await {
            Some(Message::Batch(batch)) => {
                if let Some(write) = &write {
                    write.progress();
                }
                rows += batch.num_rows() as u64;
                writer
                    .write(&batch)
                    .await
                    .map_err(|e| parquet_error(&path, e))?;
            }
            Some(Message::End) => break,
            None => return Ok(None),
        }
    }
    writer.finish().await.map_err(|e| parquet_error(&path, e))?;
    Ok(Some(writer.into_inner().written(rows)))
}

/// A writer's error: what the store said, when a store error is behind it (the
/// buffered writer hands them over inside an `io::Error`).
fn parquet_error(path: &Path, error: parquet::errors::ParquetError) -> Error {
    store_error_in(path, &error).unwrap_or_else(|| Error::Execution {
        source: DataFusionError::ParquetError(Box::new(error)),
    })
}

/// The store error behind `error` (through `io::Error`s, which the buffered writer
/// wraps them in), classified as Sluice's for the object at `path`, if there is one.
fn store_error_in(path: &Path, error: &(dyn std::error::Error + 'static)) -> Option<Error> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(store_error) = e.downcast_ref::<object_store::Error>() {
            return crate::error::classify_store_error(store_error, &[path.to_string()]);
        }
        current = match e.downcast_ref::<std::io::Error>() {
            Some(io) => io.get_ref().map(|inner| inner as _),
            None => e.source(),
        };
    }
    None
}

/// The upload of one checkpoint part, hashing its bytes block by block as they are
/// written: what the manifest records of it.
pub(crate) struct PartWriter {
    inner: BufWriter,
    hasher: BlockHasher,
    path: Path,
}

impl PartWriter {
    /// Writes through `upload`, whose object is the part at `path`.
    pub(crate) fn new(upload: BufWriter, path: Path) -> Self {
        Self {
            inner: upload,
            hasher: BlockHasher::default(),
            path,
        }
    }

    /// The part's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `bytes`.
    pub(crate) async fn put(
        &mut self,
        bytes: Bytes,
    ) -> std::result::Result<(), object_store::Error> {
        self.hasher.update(&bytes);
        self.inner.put(bytes).await
    }

    /// Completes the upload of a part of `rows` rows; an error names the part, classified
    /// as the store's when one is behind it.
    pub(crate) async fn finish(mut self, rows: u64) -> Result<ManifestFile> {
        use tokio::io::AsyncWriteExt;
        if let Err(e) = self.inner.shutdown().await {
            return Err(
                store_error_in(&self.path, &e).unwrap_or_else(|| Error::Execution {
                    source: DataFusionError::IoError(e),
                }),
            );
        }
        Ok(self.written(rows))
    }

    /// Abandons the upload: nothing of it remains.
    pub(crate) async fn abort(mut self) {
        if let Err(e) = self.inner.abort().await {
            tracing::debug!(error = %e, part = %self.path, "could not abort a checkpoint part's upload");
        }
    }

    /// What the manifest records of the part, once its upload is complete.
    fn written(self, rows: u64) -> ManifestFile {
        let name = self.path.filename().unwrap_or_default().to_string();
        let dir = self
            .path
            .parts()
            .collect::<Vec<_>>()
            .iter()
            .rev()
            .nth(1)
            .map(|p| p.as_ref().to_string())
            .unwrap_or_default();
        let (size, blake3, blocks) = self.hasher.finish();
        ManifestFile {
            path: format!("{dir}/{name}"),
            size,
            rows,
            blake3,
            blocks,
        }
    }
}

impl AsyncFileWriter for PartWriter {
    fn write(&mut self, bs: Bytes) -> BoxFuture<'_, parquet::errors::Result<()>> {
        Box::pin(async move {
            self.put(bs)
                .await
                .map_err(|e| parquet::errors::ParquetError::External(Box::new(e)))
        })
    }

    fn complete(&mut self) -> BoxFuture<'_, parquet::errors::Result<()>> {
        Box::pin(async move {
            use tokio::io::AsyncWriteExt;
            self.inner
                .shutdown()
                .await
                .map_err(|e| parquet::errors::ParquetError::External(Box::new(e)))
        })
    }
}

type ReserveFuture =
    BoxFuture<'static, std::result::Result<mpsc::OwnedPermit<Message>, mpsc::error::SendError<()>>>;

struct TeeStream {
    /// The rows that passed, as the node's `output_rows`.
    baseline: BaselineMetrics,
    /// Counts this partition if it ends without its part (see [`ABANDONED_PARTITIONS`]).
    abandoned: Count,
    schema: SchemaRef,
    input: SendableRecordBatchStream,
    tee: Tee,
    close: Arc<dyn PartEnd>,
    partition: usize,
    sender: Option<mpsc::Sender<Message>>,
    writer: Option<tokio::task::JoinHandle<Result<Option<ManifestFile>>>>,
    /// A batch waiting for room in the writer's channel, and the wait.
    pending: Option<(RecordBatch, ReserveFuture)>,
    /// The end of the partition: the writer closing its part, then (for the last
    /// partition) the commit.
    finishing: Option<BoxFuture<'static, DfResult<()>>>,
    done: bool,
}

impl TeeStream {
    /// The partition ends without a part: the write is failed; the last partition to
    /// close deletes what the others wrote. (On a cluster the client deletes a failed
    /// job's parts.)
    fn abort(&mut self) {
        self.abandoned.add(1);
        self.sender = None;
        self.pending = None;
        if let Some(writer) = self.writer.take() {
            writer.abort();
        }
        let Some(write) = self.close.write() else {
            return;
        };
        write.close(self.partition, None);
        if write.all_closed() {
            let store = self.tee.store().clone();
            let write = Arc::clone(write);
            sluice_store::cleanup::spawn("delete uncommitted checkpoint parts", async move {
                write.delete(&store).await;
            });
        }
    }

    /// The input ended: tell the writer, wait for its part, and commit if this was
    /// the last partition (or leave the part's receipt, on a cluster).
    fn finish(&mut self) -> BoxFuture<'static, DfResult<()>> {
        let sender = self.sender.take();
        let writer = self.writer.take();
        let close = Arc::clone(&self.close);
        let partition = self.partition;
        async move {
            let part = async {
                let sender = sender.ok_or_else(|| Error::Internal {
                    message: "checkpoint partition finished twice".into(),
                })?;
                let writer = writer.ok_or_else(|| Error::Internal {
                    message: "checkpoint partition finished twice".into(),
                })?;
                // A send fails only when the writer has stopped: its result says why.
                let _ = sender.send(Message::End).await;
                drop(sender);
                match writer.await {
                    Ok(Ok(Some(part))) => Ok(part),
                    Ok(Ok(None)) => Err(Error::Internal {
                        message: "checkpoint writer stopped before the end".into(),
                    }),
                    Ok(Err(e)) => Err(e),
                    Err(e) => Err(Error::Internal {
                        message: format!("checkpoint writer task failed: {e}"),
                    }),
                }
            }
            .await;
            close.finish(partition, part).await
        }
        .boxed()
    }
}

/// How a checkpoint's parts were encoded, as its manifest records it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Encoded {
    pub(crate) codec: crate::Compression,
    /// [`Manifest::reencode`].
    pub(crate) reencode: bool,
}

/// Commits the manifest of a complete write whose parts are `encoded`, then ends the
/// writer's lease (the manifest holds the parts from then on). A lost
/// create-if-absent race is not an error: the winner's checkpoint holds the same data;
/// ours is deleted. Returns whether this write's manifest stands.
pub(crate) async fn commit(
    target: &CheckpointTarget,
    dir: &Path,
    files: Vec<ManifestFile>,
    encoded: Encoded,
    lease: Option<Lease>,
) -> Result<bool> {
    let created = target.clock.now();
    let schema = Arc::clone(&target.schema);
    let manifest = Manifest {
        format_version: super::MANIFEST_FORMAT_VERSION,
        id: target.id.clone(),
        task: target.task.clone(),
        key: target.key.clone(),
        code_version: target.code_version.clone(),
        key_inputs: target.key_inputs.clone(),
        policy: target.policy.to_string(),
        flow_run: target.flow_run.clone(),
        created,
        expires: target
            .ttl
            .and_then(|ttl| chrono::Duration::from_std(ttl).ok())
            // A TTL past the calendar's end never expires (`+` would panic).
            .and_then(|ttl| created.checked_add_signed(ttl)),
        rows: files.iter().map(|f| f.rows).sum(),
        schema_ipc: encode_schema(&schema)?,
        columns: schema
            .fields()
            .iter()
            .map(|f| super::manifest::column_line(f))
            .collect(),
        block_size: BLOCK_SIZE,
        files,
        plan: target.plan_text.clone(),
        compression: format!("{:?}", encoded.codec),
        reencode: encoded.reencode,
    };
    // Committed or not, the lease has ended when it returns, before anyone deletes the
    // parts.
    let committed = target
        .store
        .commit(&manifest, target.replace, created, lease)
        .await?;
    if committed.is_some() {
        tracing::info!(
            task = %target.task,
            key = %target.key,
            rows = manifest.rows,
            bytes = manifest.bytes(),
            checkpoint = %target.url(),
            "committed checkpoint"
        );
        target.task_run.checkpoint_committed();
        let _ = target.committed.set(manifest);
    } else {
        tracing::info!(
            task = %target.task,
            key = %target.key,
            "another run committed this checkpoint first; deleting this run's parts"
        );
        if let Err(e) = target.store.delete_prefix(dir).await {
            tracing::warn!(error = %e, "could not delete the losing run's parts");
        }
    }
    Ok(committed.is_some())
}

impl Stream for TeeStream {
    type Item = DfResult<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            if let Some(finishing) = self.finishing.as_mut() {
                let finished = std::task::ready!(finishing.as_mut().poll(cx));
                self.finishing = None;
                self.done = true;
                return Poll::Ready(finished.err().map(Err));
            }
            if let Some((_, reserve)) = self.pending.as_mut() {
                let reserved = std::task::ready!(reserve.as_mut().poll(cx));
                let (batch, _) = self.pending.take().expect("a pending batch");
                match reserved {
                    Ok(permit) => {
                        permit.send(Message::Batch(batch.clone()));
                        self.baseline.record_output(batch.num_rows());
                        return Poll::Ready(Some(Ok(batch)));
                    }
                    Err(_) => {
                        // The writer stopped: its result says why.
                        self.finishing = Some(self.finish());
                        continue;
                    }
                }
            }
            match std::task::ready!(self.input.as_mut().poll_next(cx)) {
                Some(Ok(batch)) if batch.num_rows() == 0 => return Poll::Ready(Some(Ok(batch))),
                Some(Ok(batch)) => {
                    let Some(sender) = self.sender.clone() else {
                        return Poll::Ready(Some(Ok(batch)));
                    };
                    self.pending = Some((batch, sender.reserve_owned().boxed()));
                }
                Some(Err(error)) => {
                    self.abort();
                    self.done = true;
                    return Poll::Ready(Some(Err(error)));
                }
                None => self.finishing = Some(self.finish()),
            }
        }
    }
}

impl RecordBatchStream for TeeStream {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }
}

impl Drop for TeeStream {
    fn drop(&mut self) {
        if !self.done && self.finishing.is_none() {
            self.abort();
        }
    }
}

/// Plans [`CheckpointTee`] nodes: as a [`CheckpointExec`], or, when this run already
/// committed the checkpoint (a second sink of the same frame), as a scan of it.
#[derive(Debug)]
pub(crate) struct CheckpointTeePlanner;

#[async_trait]
impl ExtensionPlanner for CheckpointTeePlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        session: &dyn DfSession,
        _planning_ctx: &datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext,
    ) -> DfResult<Option<Arc<dyn ExecutionPlan>>> {
        let Some(node) = node.as_any().downcast_ref::<CheckpointTee>() else {
            return Ok(None);
        };
        if let Some(manifest) = node.tee.committed() {
            tracing::debug!(task = %node.tee.task(), "reading the checkpoint this run committed");
            let read = super::CheckpointRead::new(node.tee.store().clone(), manifest, false);
            let table = read.table().map_err(DataFusionError::from)?;
            return Ok(Some(table.scan(session, None, &[], None).await?));
        }
        let input = crate::plan::only_one("CheckpointTee", physical_inputs.to_vec())?;
        Ok(Some(Arc::new(CheckpointExec::new(input, node.tee.clone()))))
    }
}
