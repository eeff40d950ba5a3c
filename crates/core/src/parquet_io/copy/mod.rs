//! Writing only what changed: a Parquet sink that moves unchanged column chunks.
//!
//! When a frame only keeps, drops or adds columns of Parquet scans (no filter, limit,
//! sort, join, aggregation or reordering of rows), its output has exactly the input's
//! rows in the input's order. Then [`Frame::write_parquet`](crate::Frame::write_parquet)
//! writes one output row group per input row group:
//!
//! - a column kept unchanged moves as compressed pages: copied byte for byte when the
//!   output codec is the input's (Parquet records no compression level, so a zstd(1)
//!   chunk is kept under a zstd(3) write unless [`ParquetWrite::with_recompression`]
//!   asks otherwise), or else decompressed and compressed again page by page, its
//!   encodings (dictionary, RLE, ...) and page statistics kept;
//! - a computed column is evaluated from the input columns it needs only, decoded row
//!   group by row group in batches, and encoded as DataFusion's sink would encode it;
//! - a copied chunk's page headers are walked and (unless turned off) its values decoded
//!   and dropped, so that a malformed input fails as a rewrite would.
//!
//! The work goes column chunk by column chunk, a few in flight, each chunk uploaded once
//! appended: memory holds a few compressed chunks, never a row group.
//!
//! Everything else, and every input the copy cannot serve exactly (encrypted files,
//! files whose schemas differ, row groups too large to hold compressed), goes through
//! DataFusion's sink as before: [`Route::Rewrite`] says why.

use std::collections::BTreeSet;
use std::io::Write;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::catalog::TableProvider;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, DFSchema};
use datafusion::datasource::DefaultTableSource;
use datafusion::datasource::listing::ListingTable;
use datafusion::error::DataFusionError;
use datafusion::execution::SessionState;
use datafusion::execution::cache::cache_manager::FileMetadataCache;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryPool};
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::physical_expr::PhysicalExpr;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore};
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
};
use parquet::arrow::arrow_writer::{ArrowColumnChunk, ArrowRowGroupWriterFactory, compute_leaves};
use parquet::arrow::async_reader::MetadataFetch;
use parquet::arrow::{ArrowSchemaConverter, ProjectionMask};
use parquet::basic::{Compression as Codec, CompressionCodec};
use parquet::column::page::{CompressedPage, Page, PageReader, PageWriter};
use parquet::column::writer::ColumnCloseResult;
use parquet::errors::ParquetError;
use parquet::file::metadata::{
    ColumnChunkMetaData, PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader,
};
use parquet::file::page_index::column_index::ColumnIndexMetaData;
use parquet::file::page_index::offset_index::{OffsetIndexMetaData, PageLocation};
use parquet::file::properties::{ReaderProperties, WriterPropertiesPtr};
use parquet::file::reader::{ChunkReader, Length};
use parquet::file::serialized_reader::SerializedPageReader;
use parquet::file::statistics::Statistics;
use parquet::file::writer::{SerializedFileWriter, SerializedPageWriter, TrackedWrite};
use parquet::schema::types::{SchemaDescPtr, Type};
use sluice_store::{InPlace, InPlaceUpload, PartOptions};
use tokio::io::AsyncWriteExt;

use crate::checkpoint::ManifestFile;
use crate::checkpoint::tee::{CheckpointTarget, CheckpointWrite, Encoded, PartWriter, TeeSink};
use crate::checkpoint::{CheckpointTee, Tee};
use crate::parquet_io::format::WrappedFormat;
use crate::parquet_io::limits::{ReadLimits, page_sizes};
use crate::parquet_io::pins::SourceFormat;
use crate::plan::boundary::{CheckpointPart, CheckpointSource, TaskBoundary};
use crate::record::WriteMethod;
use crate::seam::{Partition, StreamEnd};
use crate::{Compression, Error, ParquetWrite};

mod detect;
mod fetch;
mod pages;
#[cfg(feature = "ballista")]
mod physical;
mod plan;
mod write;

#[cfg(test)]
mod tests;

use detect::BranchSource;
pub(crate) use detect::Shape;
use fetch::*;
use pages::*;
#[cfg(feature = "ballista")]
pub(crate) use physical::partition;
pub(crate) use write::clear;
use write::*;

/// Row groups whose compressed columns together exceed this are left to the rewrite: a
/// unit of the copy holds a whole compressed column chunk (a computed one, every chunk
/// its expressions read), and several are in flight.
const MAX_ROW_GROUP_BYTES: u64 = 256 << 20;

/// New columns are buffered encoded until their row group is complete: the copy is not
/// taken when a row group's new columns would exceed this, at their in-memory size.
const MAX_COMPUTED_BYTES: u64 = 256 << 20;

/// Footers read at once when a copy is planned.
const FOOTERS_IN_FLIGHT: usize = 8;

/// Column chunks fewer bytes apart than this are fetched in one request: a request
/// costs a round trip, and 1 MiB more on the way costs less than a round trip on any
/// link worth reading from (as object_store's `get_ranges` coalesces).
const COALESCE_GAP: u64 = 1 << 20;

/// What a client's write asks of the copy on the executors: its `ParquetWrite`'s
/// choices and the session's read limits. It crosses as JSON in the job's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub(crate) struct ExecutorCopy {
    /// Whether the copy is taken at all.
    pub(crate) column_copy: bool,
    pub(crate) recompress: bool,
    pub(crate) validate: bool,
    pub(crate) max_column_chunk_bytes: u64,
    pub(crate) remote_read_ahead_bytes: u64,
}

impl Default for ExecutorCopy {
    fn default() -> Self {
        Self {
            column_copy: true,
            recompress: false,
            validate: true,
            max_column_chunk_bytes: crate::parquet_io::limits::DEFAULT_MAX_COLUMN_CHUNK_BYTES,
            remote_read_ahead_bytes: crate::parquet_io::limits::DEFAULT_REMOTE_READ_AHEAD_BYTES,
        }
    }
}

impl ExecutorCopy {
    /// What `options` ask of a write in a session whose reads are bounded by `limits`
    /// and whose copy is on when `session_copy`.
    pub(crate) fn of(options: &ParquetWrite, limits: ReadLimits, session_copy: bool) -> Self {
        Self {
            column_copy: session_copy && options.column_copy,
            recompress: options.recompress,
            validate: options.validate,
            max_column_chunk_bytes: limits.max_column_chunk_bytes,
            remote_read_ahead_bytes: limits.remote_read_ahead_bytes,
        }
    }
}

/// What a Parquet sink does with a frame.
pub(crate) enum Route {
    /// Copy unchanged columns.
    Copy(Box<CopyPlan>),
    /// DataFusion's sink, for the reason given.
    Rewrite(String),
}

/// An input file of a copy.
struct InputFile {
    url: String,
    reads: Reads,
    location: Path,
    metadata: Arc<ParquetMetaData>,
    reader: ArrowReaderMetadata,
    /// Indices into [`CopyPlan::boundaries`], innermost first.
    boundaries: Vec<usize>,
    /// The row groups copied, in order: all of them, or the slice of the file a
    /// cluster's task reads.
    groups: Vec<usize>,
}

impl InputFile {
    /// Whether the file's bytes are a round trip away: on any store but local disk and
    /// memory.
    fn remote(&self) -> bool {
        crate::parquet_io::is_remote(&self.url)
    }
}

/// Where an input file's bytes are read.
#[derive(Clone)]
enum Reads {
    /// A source object, from its store.
    Store(Arc<dyn ObjectStore>),
    /// A checkpoint's part, through the checkpoint's verifying reads.
    Checkpoint(Arc<dyn CheckpointSource>),
}

impl Reads {
    /// Whether every byte read is one Sluice wrote, checked against its checksum (a
    /// verified checkpoint's part): decoding its values again to check them proves
    /// nothing more.
    fn checked(&self) -> bool {
        matches!(self, Reads::Checkpoint(checkpoint) if checkpoint.verified())
    }

    /// `ranges` of the object at `location` (`url`, for errors): from a store, its
    /// errors classified as Sluice's; from a checkpoint, bytes checked against its
    /// manifest.
    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
        url: &str,
    ) -> Result<Vec<Bytes>, DataFusionError> {
        match self {
            Reads::Store(store) => store.get_ranges(location, ranges).await.map_err(|e| {
                crate::error::classify_store_error(&e, &[url.to_string()])
                    .map(|classified| DataFusionError::External(Box::new(classified)))
                    .unwrap_or_else(|| DataFusionError::ObjectStore(Box::new(e)))
            }),
            Reads::Checkpoint(checkpoint) => checkpoint.read_ranges(location, ranges).await,
        }
    }
}

/// One column of a file the copy writes, in order.
enum OutputColumn {
    /// A table column moved as compressed pages: the file's top-level field.
    Copy { root: usize },
    /// The file's `n`-th computed column (see [`FileLayout::computed`]).
    Compute { n: usize },
}

/// A file the copy writes from its units: the output, or a checkpoint written beside it
/// with other columns or another codec.
struct FileLayout {
    columns: Vec<OutputColumn>,
    /// The file's Parquet schema (copied fields are the input's own types).
    root: Arc<Type>,
    props: WriterPropertiesPtr,
    codec: Codec,
    /// Its computed columns, in order, as indices into [`CopyPlan::exprs`].
    computed: Vec<usize>,
    /// Its computed columns alone: their Arrow and Parquet schemas (as this file names
    /// them), and column writers for them, as DataFusion's sink configures them.
    computed_arrow: SchemaRef,
    computed_parquet: SchemaDescPtr,
    writers: ArrowRowGroupWriterFactory,
}

impl FileLayout {
    /// Whether the file has the table column `root` copied.
    fn copies(&self, root: usize) -> bool {
        self.columns
            .iter()
            .any(|c| matches!(c, OutputColumn::Copy { root: r } if *r == root))
    }
}

/// Everything a copy needs, checked against every input file's footer.
pub(crate) struct CopyPlan {
    files: Vec<InputFile>,
    /// The output file.
    output: FileLayout,
    /// The checkpoint's part, when it is not the output's bytes (other columns or
    /// another codec): written beside it from the same units.
    beside: Option<FileLayout>,
    names: (Vec<String>, Vec<String>),
    /// Bytes per row of the computed columns in memory (32 for variable widths).
    computed_width: usize,
    /// The computed columns of every file written, each evaluated once, over
    /// [`needed_schema`](Self::needed_schema).
    exprs: Vec<Arc<dyn PhysicalExpr>>,
    /// The table columns the expressions read, and their table types.
    needed: Vec<usize>,
    /// Their leaves (column chunks): the same in every file, whose Parquet schemas are
    /// checked equal.
    needed_leaves: Vec<usize>,
    /// Every leaf the copy reads: those it copies and those the expressions read.
    read_leaves: Vec<usize>,
    needed_schema: SchemaRef,
    recompress: bool,
    /// The session's cap on a column chunk's uncompressed size.
    max_chunk: u64,
    /// The bytes of remote files read ahead (see [`row_group_pieces`]).
    read_ahead: u64,
    /// The session's memory pool, which the copy's units reserve from.
    pool: Arc<dyn MemoryPool>,
    /// The size of the upload's parts: the session's
    /// `datafusion.execution.objectstore_writer_buffer_size`, as DataFusion's sink.
    part_bytes: usize,
    /// Whether copied chunks are decoded (and their values dropped) to check them.
    validate: bool,
    batch_size: usize,
    boundaries: Vec<Arc<TaskBoundary>>,
    /// Each boundary's output columns over the table (see `Branch::outputs`).
    boundary_outputs: Vec<Vec<Expr>>,
    /// The computed columns' expressions over the table.
    computed_exprs: Vec<Expr>,
    /// Row groups fetched whole, shared by their units (see [`row_group_pieces`]).
    row_groups: RowGroupFetches,
    /// The persisted task whose checkpoint the copy writes (the output's bytes, or the
    /// file [`beside`](Self::beside)), and the checkpoint's codec.
    checkpoint: Option<(Arc<CheckpointTarget>, Compression)>,
}

/// Why a copy stopped: it cannot serve the input exactly (the normal path takes over),
/// or the write failed.
pub(crate) enum Stop {
    Unsupported(String),
    Failed(DataFusionError),
}

impl From<DataFusionError> for Stop {
    fn from(e: DataFusionError) -> Self {
        Stop::Failed(e)
    }
}

/// Decides how `plan` is written with `options` in a session whose state is `state`
/// and whose reads are bounded by `limits`: reads the footers of its files.
pub(crate) async fn route(
    plan: &LogicalPlan,
    state: &SessionState,
    limits: ReadLimits,
    options: &ParquetWrite,
) -> Route {
    if !options.column_copy {
        return Route::Rewrite("turned off by ParquetWrite::with_column_copy(false)".into());
    }
    let shape = match Shape::of(plan) {
        Ok(shape) => shape,
        Err(reason) => return Route::Rewrite(reason),
    };
    match CopyPlan::new(state, limits, options, shape).await {
        Ok(plan) => Route::Copy(Box::new(plan)),
        Err(reason) => Route::Rewrite(reason),
    }
}

/// Writes the checkpoint of the persisted task whose output `plan` is, with the copy and
/// nothing else (a barrier's drain, which no sink rides on), in the task's format's
/// codec (the tee's default unless set): the rows written, or why the copy cannot serve
/// it (the tee's stream then writes it).
pub(crate) async fn checkpoint(
    plan: &LogicalPlan,
    state: &SessionState,
    limits: ReadLimits,
) -> Result<u64, Stop> {
    let shape = Shape::of(plan).map_err(Stop::Unsupported)?;
    if shape.checkpoint_columns.is_some() {
        return Err(Stop::Unsupported(
            "the checkpoint holds other columns than the plan".into(),
        ));
    }
    let codec = match &shape.checkpoint {
        Some(tee) => tee.format().tee_compression(),
        None => {
            return Err(Stop::Unsupported(
                "no checkpoint is written of the plan".into(),
            ));
        }
    };
    let options = ParquetWrite::with_compression(codec);
    let plan = CopyPlan::new(state, limits, &options, shape)
        .await
        .map_err(Stop::Unsupported)?;
    plan.write_checkpoint().await.map(|(rows, _)| rows)
}
