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
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::TableProvider;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, DFSchema};
use datafusion::datasource::DefaultTableSource;
use datafusion::datasource::listing::ListingTable;
use datafusion::error::DataFusionError;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryPool};
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::physical_expr::PhysicalExpr;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
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
use parquet::file::writer::{SerializedFileWriter, SerializedPageWriter, TrackedWrite};
use parquet::schema::types::{SchemaDescPtr, Type};
use tokio::io::AsyncWriteExt;

use crate::boundary::TaskBoundary;
use crate::limits::page_sizes;
use crate::record::WritePath;
use crate::seam::{Partition, StreamEnd};
use crate::{Error, Frame, ParquetWrite};

/// Row groups whose compressed columns together exceed this are left to the rewrite: a
/// unit of the copy holds a whole compressed column chunk (a computed one, every chunk
/// its expressions read), and several are in flight.
const MAX_ROW_GROUP_BYTES: u64 = 256 << 20;

/// New columns are buffered encoded until their row group is complete: the copy is not
/// taken when a row group's new columns would exceed this, at their in-memory size.
const MAX_COMPUTED_BYTES: u64 = 256 << 20;

/// Footers read at once when a copy is planned.
const FOOTERS_IN_FLIGHT: usize = 8;

/// Column chunks fewer bytes apart than this are fetched in one request.
const COALESCE_GAP: u64 = 1 << 20;

/// One output column, in terms of the scanned table's columns.
#[derive(Debug, Clone)]
struct ShapeColumn {
    field: Field,
    /// The expression over unqualified table columns.
    expr: Expr,
}

/// A Parquet listing a copy reads, with the task boundaries its rows pass.
#[derive(Debug, Clone)]
struct Branch {
    /// A [`ListingTable`].
    table: Arc<dyn TableProvider>,
    boundaries: Vec<Arc<TaskBoundary>>,
}

/// The shape of a plan the copy can serve: its scans and its output columns.
#[derive(Debug, Clone)]
pub(crate) struct Shape {
    branches: Vec<Branch>,
    table_schema: SchemaRef,
    columns: Vec<ShapeColumn>,
}

impl Shape {
    /// The plan's shape, or why the copy cannot serve it.
    pub(crate) fn of(plan: &LogicalPlan) -> Result<Shape, String> {
        let (branches, table_schema, exprs) = walk(plan)?;
        let schema = plan.schema();
        let mut columns = Vec::with_capacity(exprs.len());
        for (i, expr) in exprs.into_iter().enumerate() {
            let field = schema.field(i).as_ref().clone();
            columns.push(ShapeColumn { field, expr });
        }
        let shape = Shape {
            branches,
            table_schema,
            columns,
        };
        if shape.copied().next().is_none() {
            return Err("no column is kept unchanged".into());
        }
        Ok(shape)
    }

    /// The table index of each output column that is a table column unchanged.
    fn copied(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.columns.iter().enumerate().filter_map(|(i, c)| {
            let Expr::Column(column) = &c.expr else {
                return None;
            };
            let index = self.table_schema.index_of(&column.name).ok()?;
            let table_field = self.table_schema.field(index);
            (column.name == *c.field.name() && table_field.data_type() == c.field.data_type())
                .then_some((i, index))
        })
    }

    /// One line for `explain`: what a Parquet sink would do with this plan.
    pub(crate) fn describe(&self) -> String {
        let copied: Vec<usize> = self.copied().map(|(i, _)| i).collect();
        let computed: Vec<&str> = self
            .columns
            .iter()
            .enumerate()
            .filter(|(i, _)| !copied.contains(i))
            .map(|(_, c)| c.field.name().as_str())
            .collect();
        format!(
            "column copy: {} column(s) moved as compressed pages, {} computed{}{} \
             (if the files allow it: same schemas, not encrypted)",
            copied.len(),
            computed.len(),
            if computed.is_empty() { "" } else { ": " },
            computed.join(", ")
        )
    }
}

type Walked = (Vec<Branch>, SchemaRef, Vec<Expr>);

/// Walks a plan down to its scans; returns the output columns as expressions over the
/// scanned table's unqualified columns.
fn walk(plan: &LogicalPlan) -> Result<Walked, String> {
    match plan {
        LogicalPlan::TableScan(scan) => {
            if !scan.filters.is_empty() || scan.fetch.is_some() {
                return Err("the scan filters or limits rows".into());
            }
            let source = scan
                .source
                .downcast_ref::<DefaultTableSource>()
                .ok_or("the scan is not of a table Sluice reads")?;
            let table = Arc::clone(&source.table_provider);
            let listing = table
                .downcast_ref::<ListingTable>()
                .ok_or("the source is not a file listing")?;
            if listing.options().format.get_ext() != "parquet" {
                return Err("the source is not Parquet".into());
            }
            if !listing.options().table_partition_cols.is_empty() {
                return Err("the source has partition columns".into());
            }
            let schema = table.schema();
            let indices: Vec<usize> = match &scan.projection {
                Some(p) => p.clone(),
                None => (0..schema.fields().len()).collect(),
            };
            let exprs = indices
                .iter()
                .map(|&i| Expr::Column(Column::new_unqualified(schema.field(i).name())))
                .collect();
            Ok((
                vec![Branch {
                    table,
                    boundaries: Vec::new(),
                }],
                schema,
                exprs,
            ))
        }
        LogicalPlan::Extension(extension) => {
            let boundary = extension
                .node
                .as_any()
                .downcast_ref::<TaskBoundary>()
                .ok_or_else(|| format!("the plan has a {} node", extension.node.name()))?;
            if boundary.checkpoint.is_some() {
                return Err("a task's result comes from its checkpoint".into());
            }
            let (mut branches, schema, exprs) = walk(&boundary.input)?;
            let boundary = Arc::new(boundary.clone());
            for branch in &mut branches {
                branch.boundaries.push(Arc::clone(&boundary));
            }
            Ok((branches, schema, exprs))
        }
        LogicalPlan::SubqueryAlias(alias) => walk(&alias.input),
        LogicalPlan::Projection(projection) => {
            let (branches, schema, base) = walk(&projection.input)?;
            let input_schema = projection.input.schema();
            let mut exprs = Vec::with_capacity(projection.expr.len());
            for expr in &projection.expr {
                let inlined = expr
                    .clone()
                    .transform_up(|e| match e {
                        Expr::Column(column) => {
                            let index = input_schema.index_of_column(&column)?;
                            Ok(Transformed::yes(base[index].clone()))
                        }
                        Expr::ScalarSubquery(_)
                        | Expr::InSubquery(_)
                        | Expr::Exists(_)
                        | Expr::OuterReferenceColumn(..)
                        | Expr::Placeholder(_)
                        | Expr::AggregateFunction(_)
                        | Expr::WindowFunction(_) => Err(DataFusionError::Plan(
                            "an expression the copy cannot evaluate row by row".into(),
                        )),
                        other => Ok(Transformed::no(other)),
                    })
                    .map_err(|e| format!("a projection cannot be inlined: {e}"))?
                    .data;
                exprs.push(inlined.unalias_nested().data);
            }
            Ok((branches, schema, exprs))
        }
        LogicalPlan::Union(union) => {
            let mut all = Vec::new();
            let mut first: Option<(SchemaRef, Vec<Expr>)> = None;
            for input in &union.inputs {
                let (branches, schema, exprs) = walk(input)?;
                match &first {
                    None => first = Some((schema, exprs)),
                    Some((first_schema, first_exprs)) => {
                        if first_schema.fields() != schema.fields() || *first_exprs != exprs {
                            return Err("the concatenated inputs differ in their columns".into());
                        }
                    }
                }
                all.extend(branches);
            }
            let (schema, exprs) = first.ok_or("an empty union")?;
            if exprs.iter().any(|e| !matches!(e, Expr::Column(_))) {
                return Err("a concatenated input computes columns".into());
            }
            Ok((all, schema, exprs))
        }
        other => Err(format!(
            "the plan has a {} (rows are not the input's, in its order)",
            other.display()
        )),
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
    store: Arc<dyn ObjectStore>,
    location: Path,
    metadata: Arc<ParquetMetaData>,
    reader: ArrowReaderMetadata,
    /// Indices into [`CopyPlan::boundaries`], innermost first.
    boundaries: Vec<usize>,
}

/// One column of the output, in order.
enum OutputColumn {
    /// A table column moved as compressed pages: the file's top-level field.
    Copy { root: usize },
    /// The `n`-th computed column.
    Compute { n: usize },
}

/// Everything a copy needs, checked against every input file's footer.
pub(crate) struct CopyPlan {
    files: Vec<InputFile>,
    columns: Vec<OutputColumn>,
    names: (Vec<String>, Vec<String>),
    /// The output's Parquet schema (copied fields are the input's own types).
    output_root: Arc<Type>,
    /// The computed columns alone: their Arrow schema, Parquet schema and expressions.
    computed_arrow: SchemaRef,
    computed_parquet: SchemaDescPtr,
    /// Bytes per row of the computed columns in memory (32 for variable widths).
    computed_width: usize,
    /// Column writers for the computed columns, as DataFusion's sink configures them.
    writers: ArrowRowGroupWriterFactory,
    exprs: Vec<Arc<dyn PhysicalExpr>>,
    /// The table columns the expressions read, and their table types.
    needed: Vec<usize>,
    /// Their leaves (column chunks): the same in every file, whose Parquet schemas are
    /// checked equal.
    needed_leaves: Vec<usize>,
    needed_schema: SchemaRef,
    props: WriterPropertiesPtr,
    codec: Codec,
    recompress: bool,
    /// The session's cap on a column chunk's uncompressed size.
    max_chunk: u64,
    /// The session's memory pool, which the copy's units reserve from.
    pool: Arc<dyn MemoryPool>,
    /// The size of the upload's parts: the session's
    /// `datafusion.execution.objectstore_writer_buffer_size`, as DataFusion's sink.
    part_bytes: usize,
    /// Whether copied chunks are decoded (and their values dropped) to check them.
    validate: bool,
    batch_size: usize,
    boundaries: Vec<Arc<TaskBoundary>>,
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

/// Decides how `frame` is written with `options`: reads the footers of its files.
pub(crate) async fn route(frame: &Frame, options: &ParquetWrite) -> Route {
    if !options.column_copy {
        return Route::Rewrite("turned off by ParquetWrite::with_column_copy(false)".into());
    }
    if !frame.session().column_copy() {
        return Route::Rewrite("turned off for the session".into());
    }
    let shape = match Shape::of(frame.logical_plan()) {
        Ok(shape) => shape,
        Err(reason) => return Route::Rewrite(reason),
    };
    match CopyPlan::new(frame, options, shape).await {
        Ok(plan) => Route::Copy(Box::new(plan)),
        Err(reason) => Route::Rewrite(reason),
    }
}

impl CopyPlan {
    async fn new(frame: &Frame, options: &ParquetWrite, shape: Shape) -> Result<Self, String> {
        let session = frame.session();
        let state = session.state();
        let codec = options
            .compression
            .to_parquet()
            .map_err(|e| e.to_string())?;
        // Unique boundaries, by identity.
        let mut boundaries: Vec<Arc<TaskBoundary>> = Vec::new();
        let mut files = Vec::new();
        for branch in &shape.branches {
            let indices: Vec<usize> = branch
                .boundaries
                .iter()
                .map(|b| {
                    match boundaries
                        .iter()
                        .position(|known| known.task.id() == b.task.id())
                    {
                        Some(i) => i,
                        None => {
                            boundaries.push(Arc::clone(b));
                            boundaries.len() - 1
                        }
                    }
                })
                .collect();
            if branch.table.schema().fields() != shape.table_schema.fields() {
                return Err("the concatenated sources differ in their schemas".into());
            }
            let listing = branch
                .table
                .downcast_ref::<ListingTable>()
                .ok_or("the source is not a file listing")?;
            let extension = listing.options().file_extension.clone();
            // The objects the frame was built from, read through their pins (see
            // `pins`): exactly what the cache keys over it name.
            let pins = listing
                .options()
                .format
                .downcast_ref::<crate::pins::SourceFormat>()
                .map(|format| Arc::clone(format.pins()));
            for table_url in listing.table_paths() {
                let mut store = state
                    .runtime_env()
                    .object_store(table_url)
                    .map_err(|e| e.to_string())?;
                let mut objects: Vec<ObjectMeta> = match &pins {
                    Some(pins) => {
                        store = pins.guard(store);
                        pins.objects()
                    }
                    None => table_url
                        .list_all_files(&state, store.as_ref(), &extension)
                        .await
                        .map_err(|e| e.to_string())?
                        .try_collect()
                        .await
                        .map_err(|e| e.to_string())?,
                };
                objects.sort_by(|a, b| a.location.cmp(&b.location));
                // Footers are read a few at a time, and kept in listing order.
                let base = crate::session::object_base(table_url);
                let opened: Vec<InputFile> = futures::stream::iter(objects)
                    .map(|object| {
                        let url = crate::session::object_url(&base, &object);
                        open(&store, object, url, indices.clone())
                    })
                    .buffered(FOOTERS_IN_FLIGHT)
                    .try_collect()
                    .await?;
                files.extend(opened);
            }
        }
        let first = files.first().ok_or("the source has no files")?;
        let first_parquet = first.metadata.file_metadata().schema_descr_ptr();
        for file in &files {
            if file.metadata.file_metadata().schema_descr().root_schema()
                != first_parquet.root_schema()
            {
                return Err(format!(
                    "{} has another Parquet schema than {}",
                    file.url, first.url
                ));
            }
            check_file(file, &shape.table_schema, session.max_column_chunk_bytes())?;
        }
        let file_schema = Arc::clone(first.reader.schema());

        // The output's fields and Parquet types, column by column.
        let copied: Vec<(usize, usize)> = shape.copied().collect();
        let mut columns = Vec::with_capacity(shape.columns.len());
        let mut output_fields = Vec::with_capacity(shape.columns.len());
        let mut computed_fields = Vec::new();
        let mut computed_exprs = Vec::new();
        let mut names = (Vec::new(), Vec::new());
        for (i, column) in shape.columns.iter().enumerate() {
            match copied.iter().find(|(c, _)| *c == i) {
                Some(&(_, table_index)) => {
                    columns.push(OutputColumn::Copy { root: table_index });
                    output_fields.push(file_schema.field(table_index).clone());
                    names.0.push(column.field.name().clone());
                }
                None => {
                    columns.push(OutputColumn::Compute {
                        n: computed_fields.len(),
                    });
                    computed_fields.push(column.field.clone());
                    computed_exprs.push(column.expr.clone());
                    output_fields.push(column.field.clone());
                    names.1.push(column.field.name().clone());
                }
            }
        }
        let computed_arrow = Arc::new(Schema::new(computed_fields));
        let computed_parquet = Arc::new(
            ArrowSchemaConverter::new()
                .convert(&computed_arrow)
                .map_err(|e| format!("a new column has no Parquet type: {e}"))?,
        );
        let mut root_fields = Vec::with_capacity(columns.len());
        let input_roots = first_parquet.root_schema().get_fields();
        for column in &columns {
            root_fields.push(match column {
                OutputColumn::Copy { root } => Arc::clone(&input_roots[*root]),
                OutputColumn::Compute { n } => {
                    Arc::clone(&computed_parquet.root_schema().get_fields()[*n])
                }
            });
        }
        let output_root = Arc::new(
            Type::group_type_builder(first_parquet.root_schema().name())
                .with_fields(root_fields)
                .build()
                .map_err(|e| e.to_string())?,
        );

        // The columns the new ones read, and their physical expressions over them.
        let mut needed = BTreeSet::new();
        for expr in &computed_exprs {
            for column in expr.column_refs() {
                let index = shape
                    .table_schema
                    .index_of(&column.name)
                    .map_err(|e| e.to_string())?;
                needed.insert(index);
            }
        }
        let needed: Vec<usize> = needed.into_iter().collect();
        let needed_schema = Arc::new(
            shape
                .table_schema
                .project(&needed)
                .map_err(|e| e.to_string())?,
        );
        let df_schema =
            DFSchema::try_from(needed_schema.as_ref().clone()).map_err(|e| e.to_string())?;
        let mut exprs = Vec::with_capacity(computed_exprs.len());
        for (expr, field) in computed_exprs.iter().zip(computed_arrow.fields()) {
            let physical = state
                .create_physical_expr(expr.clone(), &df_schema)
                .map_err(|e| format!("cannot plan {expr}: {e}"))?;
            let data_type = physical
                .data_type(&needed_schema)
                .map_err(|e| e.to_string())?;
            if &data_type != field.data_type() {
                return Err(format!(
                    "{expr} evaluates to {data_type}, the plan says {}",
                    field.data_type()
                ));
            }
            exprs.push(physical);
        }
        // Memory: new columns of one row group are held encoded until it is complete.
        let computed_width: u64 = computed_arrow
            .fields()
            .iter()
            .map(|f| f.data_type().primitive_width().unwrap_or(32) as u64)
            .sum();
        for file in &files {
            for group in file.metadata.row_groups() {
                let rows = group.num_rows().max(0) as u64;
                if rows.saturating_mul(computed_width) > MAX_COMPUTED_BYTES {
                    return Err(format!(
                        "a row group of {} has {rows} rows; its new columns would be held \
                         whole",
                        file.url
                    ));
                }
            }
        }

        // Writer properties: DataFusion's sink's, with the first file's key-value
        // metadata (pandas', ...) and the output's Arrow schema.
        let mut table_options = options.table_options(session).map_err(|e| e.to_string())?;
        if let Some(kv) = first.metadata.file_metadata().key_value_metadata() {
            for pair in kv {
                table_options
                    .key_value_metadata
                    .entry(pair.key.clone())
                    .or_insert_with(|| pair.value.clone());
            }
        }
        let output_arrow = Arc::new(Schema::new_with_metadata(
            output_fields,
            file_schema.metadata().clone(),
        ));
        table_options.arrow_schema(&output_arrow);
        let props = parquet::file::properties::WriterPropertiesBuilder::try_from(&table_options)
            .map_err(|e| e.to_string())?
            .set_compression(codec)
            .build();
        let props = Arc::new(props);
        // The factory of column writers takes its schemas from a file writer.
        let computed_root = computed_parquet.root_schema_ptr();
        let template =
            SerializedFileWriter::new(std::io::sink(), computed_root, Arc::clone(&props))
                .map_err(|e| e.to_string())?;
        let writers = ArrowRowGroupWriterFactory::new(&template, Arc::clone(&computed_arrow));
        Ok(CopyPlan {
            files,
            columns,
            names,
            output_root,
            computed_arrow,
            computed_parquet,
            computed_width: computed_width as usize,
            writers,
            exprs,
            needed_leaves: needed
                .iter()
                .flat_map(|&root| leaves(&first_parquet, root).collect::<Vec<_>>())
                .collect(),
            needed,
            needed_schema,
            props,
            codec,
            recompress: options.recompress,
            validate: options.validate,
            part_bytes: state
                .config_options()
                .execution
                .objectstore_writer_buffer_size,
            pool: Arc::clone(&state.runtime_env().memory_pool),
            max_chunk: session.max_column_chunk_bytes(),
            batch_size: state.config().batch_size(),
            boundaries,
        })
    }

    /// Writes the output to `staging` (one file, or one part per input file), and
    /// returns the rows written and how.
    pub(crate) async fn write(
        self,
        store: Arc<dyn ObjectStore>,
        staging: &url::Url,
        directory: bool,
    ) -> Result<(u64, WritePath), Stop> {
        let plan = Arc::new(self);
        let taps = Taps::new(&plan.boundaries);
        let deadline = taps.deadline();
        let outputs: Vec<(Path, Vec<usize>)> = if directory {
            (0..plan.files.len())
                .map(|i| {
                    let path = sluice_store::object_path(staging)
                        .map(|p| p.join(format!("part-{i:05}.parquet").as_str()));
                    path.map(|p| (p, vec![i]))
                })
                .collect::<Result<_, _>>()
        } else {
            sluice_store::object_path(staging).map(|p| vec![(p, (0..plan.files.len()).collect())])
        }
        .map_err(|e| Stop::Failed(DataFusionError::External(Box::new(e))))?;
        let mut rows = 0;
        let mut counts = (0u64, 0u64);
        for (path, files) in outputs {
            let written = write_file(&plan, &taps, &store, &path, &files, deadline).await;
            match written {
                Ok((n, verbatim, recompressed)) => {
                    rows += n;
                    counts.0 += verbatim;
                    counts.1 += recompressed;
                }
                Err(stop) => {
                    taps.close(StreamEnd::Failed);
                    return Err(stop);
                }
            }
        }
        taps.close(StreamEnd::Ended);
        let (copied, computed) = plan.names.clone();
        Ok((
            rows,
            WritePath::ColumnCopy {
                copied,
                computed,
                chunks_verbatim: counts.0,
                chunks_recompressed: counts.1,
            },
        ))
    }

    /// What a unit holds at most: the compressed chunks it reads and, decoded or
    /// recompressed, as much again; the computed columns of a row group in memory.
    fn unit_bytes(&self, unit: Unit) -> usize {
        let chunk = |f: usize, g: usize, leaf: usize| {
            let column = self.files[f].metadata.row_group(g).column(leaf);
            (column.compressed_size().max(0) + column.uncompressed_size().max(0)) as usize
        };
        match unit {
            Unit::Copy { f, g, leaf } => chunk(f, g, leaf),
            Unit::Compute { f, g } => {
                let read: usize = self
                    .needed_leaves
                    .iter()
                    .map(|&leaf| chunk(f, g, leaf))
                    .sum();
                let rows = self.files[f].metadata.row_group(g).num_rows().max(0) as usize;
                read + rows * self.computed_width
            }
        }
    }

    /// Attributes an error in reading `file` to the tasks its rows pass, innermost
    /// first, as the boundaries of a streamed plan do.
    fn attribute(&self, file: &InputFile, error: DataFusionError) -> DataFusionError {
        let mut error = error;
        for &i in &file.boundaries {
            let boundary = &self.boundaries[i];
            error = boundary.task.attribute(&boundary.sources, error);
        }
        error
    }
}

/// Deletes what a copy that stopped left at `staging` (the parts of a directory it
/// completed), before the normal path writes there.
pub(crate) async fn clear(
    store: &Arc<dyn ObjectStore>,
    staging: &url::Url,
) -> datafusion::error::Result<()> {
    let external = |e: sluice_store::StoreError| DataFusionError::External(Box::new(e));
    let prefix = sluice_store::object_path(staging).map_err(external)?;
    let listed: Vec<ObjectMeta> = store.list(Some(&prefix)).try_collect().await?;
    for object in listed {
        use object_store::ObjectStoreExt;
        match store.delete(&object.location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Reads a file's footer (with its page index, when it has one).
async fn open(
    store: &Arc<dyn ObjectStore>,
    object: ObjectMeta,
    url: String,
    boundaries: Vec<usize>,
) -> Result<InputFile, String> {
    if object.size == 0 {
        return Err(format!("{url} is empty"));
    }
    crate::limits::check_footer_tail(store.as_ref(), &url, &object)
        .await
        .map_err(|e| crate::error::message(&e))?;
    let reader = Fetch {
        store: store.as_ref(),
        location: &object.location,
    };
    let metadata = ParquetMetaDataReader::new()
        .with_page_index_policy(PageIndexPolicy::Optional)
        .load_and_finish(reader, object.size)
        .await
        .map_err(|e| format!("cannot read the footer of {url}: {e}"))?;
    let metadata = Arc::new(metadata);
    let reader = ArrowReaderMetadata::try_new(Arc::clone(&metadata), ArrowReaderOptions::new())
        .map_err(|e| format!("cannot read the schema of {url}: {e}"))?;
    Ok(InputFile {
        url,
        store: Arc::clone(store),
        location: object.location,
        metadata,
        reader,
        boundaries,
    })
}

/// Ranged reads of one object, for the footer reader.
struct Fetch<'a> {
    store: &'a dyn ObjectStore,
    location: &'a Path,
}

impl MetadataFetch for Fetch<'_> {
    fn fetch(
        &mut self,
        range: Range<u64>,
    ) -> futures::future::BoxFuture<'_, parquet::errors::Result<Bytes>> {
        use futures::FutureExt;
        async move {
            let expected = range.end - range.start;
            let bytes = self
                .store
                .get_range(self.location, range)
                .await
                .map_err(|e| ParquetError::External(Box::new(e)))?;
            if bytes.len() as u64 != expected {
                return Err(ParquetError::General(format!(
                    "the store returned {} bytes of {expected}",
                    bytes.len()
                )));
            }
            Ok(bytes)
        }
        .boxed()
    }
}

/// Whether the copy can serve `file` exactly.
fn check_file(file: &InputFile, table: &Schema, max_chunk: u64) -> Result<(), String> {
    let schema = file.reader.schema();
    if schema.fields().len() != table.fields().len() {
        return Err(format!("{} has other columns than the table", file.url));
    }
    for (ours, theirs) in schema.fields().iter().zip(table.fields()) {
        if ours.name() != theirs.name() || !same_values(ours.data_type(), theirs.data_type()) {
            return Err(format!(
                "{}'s column {} is {} where the table has {} {}",
                file.url,
                ours.name(),
                ours.data_type(),
                theirs.name(),
                theirs.data_type()
            ));
        }
    }
    let descr = file.metadata.file_metadata().schema_descr();
    for (index, group) in file.metadata.row_groups().iter().enumerate() {
        if group.compressed_size().max(0) as u64 > MAX_ROW_GROUP_BYTES {
            return Err(format!(
                "row group {index} of {} is larger than {} MiB compressed",
                file.url,
                MAX_ROW_GROUP_BYTES >> 20
            ));
        }
        for (leaf, column) in group.columns().iter().enumerate() {
            if column.uncompressed_size().max(0) as u64 > max_chunk {
                return Err(format!("a column chunk of {} is over the cap", file.url));
            }
            let repeated = descr.column(leaf).max_rep_level() > 0;
            let indexed = file
                .metadata
                .offset_index()
                .is_some_and(|o| o.get(index).is_some_and(|g| g.get(leaf).is_some()));
            if repeated && !indexed {
                return Err(format!(
                    "{} has nested columns without an offset index",
                    file.url
                ));
            }
        }
    }
    Ok(())
}

/// Types whose values a reader of the file gets unchanged: the same type, or its
/// view flavour (DataFusion reads strings and binaries, large or not, as views).
fn same_values(file: &DataType, table: &DataType) -> bool {
    file == table
        || matches!(
            (file, table),
            (DataType::Utf8 | DataType::LargeUtf8, DataType::Utf8View)
                | (
                    DataType::Binary | DataType::LargeBinary,
                    DataType::BinaryView
                )
        )
}

/// Rows flowing through the task boundaries of a copied plan: each gets one execution
/// of one partition, as a streamed plan's boundaries do (dropped before its end, it
/// reports so).
struct Taps(Vec<Partition>);

impl Taps {
    fn new(boundaries: &[Arc<TaskBoundary>]) -> Self {
        Taps(
            boundaries
                .iter()
                .map(|b| Partition::new(&b.task.execution(1, false)))
                .collect(),
        )
    }

    fn add(&self, boundaries: &[usize], rows: u64, bytes: u64, nanos: u64) {
        for &i in boundaries {
            self.0[i].add_output(rows, bytes, nanos);
        }
    }

    /// The earliest deadline of the tasks, and the tap it is of.
    fn deadline(&self) -> Option<(Instant, &Partition)> {
        self.0
            .iter()
            .filter_map(|tap| Some((tap.deadline()?, tap)))
            .min_by_key(|(at, _)| *at)
    }

    fn close(&self, end: StreamEnd) {
        for tap in &self.0 {
            tap.end(end);
        }
    }
}

/// A buffer the file writer writes into and the upload drains.
#[derive(Clone, Default)]
struct SharedBuffer(Arc<Mutex<Vec<u8>>>);

impl SharedBuffer {
    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Write for SharedBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A piece of work of a copy: one copied column chunk, or the computed columns of one
/// row group.
#[derive(Clone, Copy)]
enum Unit {
    Compute { f: usize, g: usize },
    Copy { f: usize, g: usize, leaf: usize },
}

/// A unit's result.
enum Done {
    Computed(Vec<Vec<ArrowColumnChunk>>),
    /// Compressed pages at the offsets the `ColumnCloseResult` names in the reader; and
    /// whether they are the input's bytes unchanged.
    Copied(Located, Box<ColumnCloseResult>, bool),
}

/// One output file from the row groups of `files`, in order.
///
/// The work goes column chunk by column chunk, a few in flight, and each chunk is
/// uploaded once appended: memory holds a few compressed chunks, never a row group.
async fn write_file(
    plan: &Arc<CopyPlan>,
    taps: &Taps,
    store: &Arc<dyn ObjectStore>,
    path: &Path,
    files: &[usize],
    deadline: Option<(Instant, &Partition)>,
) -> Result<(u64, u64, u64), Stop> {
    let parquet = |e: ParquetError| Stop::Failed(DataFusionError::ParquetError(Box::new(e)));
    let store_failed =
        |e: object_store::Error| Stop::Failed(DataFusionError::ObjectStore(Box::new(e)));
    let internal = || {
        Stop::Failed(DataFusionError::Internal(
            "the column copy's work came back out of order".into(),
        ))
    };
    let buffer = SharedBuffer::default();
    let mut writer = SerializedFileWriter::new(
        buffer.clone(),
        Arc::clone(&plan.output_root),
        Arc::clone(&plan.props),
    )
    .map_err(parquet)?;
    // Parts of the session's writer buffer size (10 MiB unless set), two in flight.
    let mut upload = object_store::buffered::BufWriter::with_capacity(
        Arc::clone(store),
        path.clone(),
        plan.part_bytes,
    )
    .with_max_concurrency(2);
    let mut units = Vec::new();
    for &f in files {
        let descr = plan.files[f].metadata.file_metadata().schema_descr_ptr();
        for g in 0..plan.files[f].metadata.num_row_groups() {
            if !plan.exprs.is_empty() {
                units.push(Unit::Compute { f, g });
            }
            for column in &plan.columns {
                if let OutputColumn::Copy { root } = column {
                    for leaf in leaves(&descr, *root) {
                        units.push(Unit::Copy { f, g, leaf });
                    }
                }
            }
        }
    }
    let parallel = std::thread::available_parallelism().map_or(2, |n| n.get()) * 2;
    let mut done = futures::stream::iter(units)
        .map(|unit| {
            let plan = Arc::clone(plan);
            async move {
                // What the unit holds, from the session's memory pool as DataFusion's
                // operators do, until its chunk is appended.
                let reservation = MemoryConsumer::new("ColumnCopy").register(&plan.pool);
                reservation.try_grow(plan.unit_bytes(unit))?;
                let fetched = fetch(&plan, unit).await?;
                // On the runtime's workers, as DataFusion runs its operators: blocking
                // threads would each get an allocator arena and keep it.
                let done = tokio::spawn(async move { run(&plan, unit, fetched) })
                    .await
                    .map_err(|e| match e.try_into_panic() {
                        // A decoder's panic on a malformed file: the rewrite reports it.
                        Ok(payload) => Stop::Unsupported(format!(
                            "decoding panicked: {}",
                            crate::error::panic_message(payload.as_ref())
                        )),
                        Err(e) => Stop::Failed(DataFusionError::External(Box::new(e))),
                    })??;
                Ok::<_, Stop>((done, reservation))
            }
        })
        .buffered(parallel)
        .map_ok(|(done, _reservation)| done);
    let mut rows = 0u64;
    let mut counts = (0u64, 0u64);
    // Once shut down, the upload is complete or failed whole: nothing to abort.
    let mut shut_down = false;
    let result: Result<(), Stop> = async {
        for &f in files {
            let file = &plan.files[f];
            let descr = file.metadata.file_metadata().schema_descr_ptr();
            for g in 0..file.metadata.num_row_groups() {
                let started = Instant::now();
                let mut computed = if plan.exprs.is_empty() {
                    Vec::new()
                } else {
                    match done.next().await.ok_or_else(internal)?? {
                        Done::Computed(chunks) => chunks,
                        Done::Copied(..) => return Err(internal()),
                    }
                };
                let mut row_group = writer.next_row_group().map_err(parquet)?;
                for column in &plan.columns {
                    match column {
                        OutputColumn::Compute { n } => {
                            for chunk in computed[*n].drain(..) {
                                chunk.append_to_row_group(&mut row_group).map_err(parquet)?;
                            }
                        }
                        OutputColumn::Copy { root } => {
                            for _ in leaves(&descr, *root) {
                                let Done::Copied(reader, close, verbatim) =
                                    done.next().await.ok_or_else(internal)??
                                else {
                                    return Err(internal());
                                };
                                row_group.append_column(&reader, *close).map_err(parquet)?;
                                if verbatim {
                                    counts.0 += 1;
                                } else {
                                    counts.1 += 1;
                                }
                            }
                        }
                    }
                    upload
                        .put(buffer.take().into())
                        .await
                        .map_err(store_failed)?;
                }
                row_group.close().map_err(parquet)?;
                if let Some((at, tap)) = deadline
                    && Instant::now() > at
                {
                    let error = tap.task().timed_out();
                    return Err(Stop::Failed(DataFusionError::External(Box::new(error))));
                }
                let group = file.metadata.row_group(g);
                let n = group.num_rows().max(0) as u64;
                rows += n;
                taps.add(
                    &file.boundaries,
                    n,
                    group.total_byte_size().max(0) as u64,
                    started.elapsed().as_nanos() as u64,
                );
            }
        }
        writer.finish().map_err(parquet)?;
        upload
            .put(buffer.take().into())
            .await
            .map_err(store_failed)?;
        shut_down = true;
        upload
            .shutdown()
            .await
            .map_err(|e| Stop::Failed(DataFusionError::IoError(e)))?;
        Ok(())
    }
    .await;
    match result {
        Ok(()) => Ok((rows, counts.0, counts.1)),
        Err(stop) => {
            if !shut_down && let Err(e) = upload.abort().await {
                tracing::debug!(error = %e, "could not abort the copy's upload");
            }
            Err(stop)
        }
    }
}

/// The leaves (column chunks) of top-level field `root`.
fn leaves(descr: &SchemaDescPtr, root: usize) -> impl Iterator<Item = usize> + '_ {
    (0..descr.num_columns()).filter(move |&leaf| descr.get_column_root_idx(leaf) == root)
}

/// The compressed bytes of some column chunks of a file, at their file offsets.
#[derive(Clone)]
struct Located {
    ranges: Arc<[(u64, Bytes)]>,
}

impl Located {
    fn find(&self, start: u64, length: u64) -> Result<Bytes, ParquetError> {
        for (at, bytes) in self.ranges.iter() {
            if start >= *at && start + length <= at + bytes.len() as u64 {
                let from = (start - at) as usize;
                return Ok(bytes.slice(from..from + length as usize));
            }
        }
        Err(ParquetError::General(format!(
            "bytes {start}..{} were not fetched",
            start + length
        )))
    }
}

impl Length for Located {
    fn len(&self) -> u64 {
        self.ranges
            .iter()
            .map(|(at, b)| at + b.len() as u64)
            .max()
            .unwrap_or(0)
    }
}

impl ChunkReader for Located {
    type T = bytes::buf::Reader<Bytes>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        for (at, bytes) in self.ranges.iter() {
            if start >= *at && start <= at + bytes.len() as u64 {
                use bytes::Buf;
                return Ok(bytes.slice((start - at) as usize..).reader());
            }
        }
        Err(ParquetError::General(format!(
            "byte {start} was not fetched"
        )))
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        self.find(start, length as u64)
    }
}

/// Fetches the column chunks a unit reads: the chunk it copies, or those the computed
/// columns read (chunks close together in one request, which the decoder may also read
/// across).
async fn fetch(plan: &CopyPlan, unit: Unit) -> Result<Located, Stop> {
    let (f, g) = match unit {
        Unit::Compute { f, g } | Unit::Copy { f, g, .. } => (f, g),
    };
    let file = &plan.files[f];
    let group = file.metadata.row_group(g);
    let range = |leaf: usize| {
        let (start, length) = group.column(leaf).byte_range();
        start..start + length
    };
    let leaves_read: &[usize] = match unit {
        Unit::Copy { ref leaf, .. } => std::slice::from_ref(leaf),
        Unit::Compute { .. } => &plan.needed_leaves,
    };
    let mut chunks: Vec<Range<u64>> = leaves_read.iter().map(|&leaf| range(leaf)).collect();
    chunks.sort_by_key(|r| r.start);
    let mut ranges: Vec<Range<u64>> = Vec::with_capacity(chunks.len());
    for chunk in chunks {
        match ranges.last_mut() {
            Some(last) if chunk.start <= last.end.saturating_add(COALESCE_GAP) => {
                last.end = last.end.max(chunk.end);
            }
            _ => ranges.push(chunk),
        }
    }
    let fetched = file
        .store
        .get_ranges(&file.location, &ranges)
        .await
        .map_err(|e| {
            let error = crate::error::classify_store_error(&e, std::slice::from_ref(&file.url))
                .map(|classified| DataFusionError::External(Box::new(classified)))
                .unwrap_or_else(|| DataFusionError::ObjectStore(Box::new(e)));
            Stop::Failed(plan.attribute(file, error))
        })?;
    for (range, bytes) in ranges.iter().zip(&fetched) {
        if bytes.len() as u64 != range.end - range.start {
            return Err(Stop::Unsupported(format!(
                "the store returned {} bytes of {} for {}",
                bytes.len(),
                range.end - range.start,
                file.url
            )));
        }
    }
    let located = Located {
        ranges: ranges.into_iter().map(|r| r.start).zip(fetched).collect(),
    };
    // Page headers are walked before anything is decompressed or decoded: a header that
    // claims more than its chunk (or the session's cap) is left to the rewrite, which
    // refuses it with its typed error.
    for &leaf in leaves_read {
        let chunk = group.column(leaf);
        let (start, length) = chunk.byte_range();
        let bytes = located
            .find(start, length)
            .map_err(|e| Stop::Unsupported(e.to_string()))?;
        let declared = chunk.uncompressed_size().max(0) as u64;
        let allowed = if declared > 0 {
            declared.min(plan.max_chunk)
        } else {
            plan.max_chunk
        };
        page_ranges(chunk, &bytes, allowed).map_err(|reason| {
            Stop::Unsupported(format!(
                "column {} of row group {g} of {}: {reason}",
                chunk.column_path(),
                file.url
            ))
        })?;
    }
    Ok(located)
}

/// Decodes a copied chunk's values, as a rewrite would, and drops them: a chunk whose
/// values do not decode (invalid UTF-8, dictionary indices out of range, ...) is not
/// copied into an output that looks whole.
fn validate(file: &InputFile, g: usize, leaf: usize, fetched: &Located) -> Result<(), String> {
    let mask = ProjectionMask::leaves(file.reader.parquet_schema(), [leaf]);
    let reader =
        ParquetRecordBatchReaderBuilder::new_with_metadata(fetched.clone(), file.reader.clone())
            .with_row_groups(vec![g])
            .with_projection(mask)
            .with_batch_size(64 * 1024)
            .build()
            .map_err(|e| e.to_string())?;
    for batch in reader {
        batch.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The CPU work of a unit: the new columns computed and encoded, or a copied chunk
/// checked (and recompressed when the codec changes).
fn run(plan: &CopyPlan, unit: Unit, fetched: Located) -> Result<Done, Stop> {
    let (f, g, leaf) = match unit {
        Unit::Compute { f, g } => {
            return compute(plan, &plan.files[f], g, &fetched).map(Done::Computed);
        }
        Unit::Copy { f, g, leaf } => (f, g, leaf),
    };
    let file = &plan.files[f];
    let group = file.metadata.row_group(g);
    let chunk = group.column(leaf);
    if plan.validate {
        validate(file, g, leaf, &fetched).map_err(|reason| {
            Stop::Unsupported(format!(
                "column {} of row group {g} of {} does not decode: {reason}",
                chunk.column_path(),
                file.url
            ))
        })?;
    }
    let offsets = file
        .metadata
        .offset_index()
        .and_then(|o| o.get(g)?.get(leaf).cloned());
    let column_index = file
        .metadata
        .column_index()
        .and_then(|c| c.get(g)?.get(leaf).cloned())
        .filter(|c| !matches!(c, ColumnIndexMetaData::NONE));
    let same_codec = chunk.compression_codec() == CompressionCodec::from(plan.codec);
    let verbatim = same_codec && !plan.recompress;
    let copied = if verbatim {
        copy_chunk(&fetched, chunk, group.num_rows(), offsets, column_index)
    } else {
        recompress_chunk(
            &fetched,
            chunk,
            group.num_rows(),
            offsets,
            column_index,
            plan.codec,
        )
        .map_err(|e| {
            Stop::Failed(plan.attribute(
                file,
                DataFusionError::External(Box::new(Error::Read {
                    sources: vec![file.url.clone()],
                    source: DataFusionError::ParquetError(Box::new(e)),
                })),
            ))
        })?
    };
    match copied {
        Ok((reader, close)) => Ok(Done::Copied(reader, Box::new(close), verbatim)),
        Err(reason) => Err(Stop::Unsupported(format!(
            "column {} of row group {g} of {}: {reason}",
            chunk.column_path(),
            file.url
        ))),
    }
}

/// The new columns of row group `g`: the input columns they read are decoded in
/// batches, each batch's values evaluated and encoded, and nothing else is decoded.
fn compute(
    plan: &CopyPlan,
    file: &InputFile,
    g: usize,
    fetched: &Located,
) -> Result<Vec<Vec<ArrowColumnChunk>>, Stop> {
    if plan.exprs.is_empty() {
        return Ok(Vec::new());
    }
    let read_failed = |e: DataFusionError| {
        Stop::Failed(plan.attribute(
            file,
            DataFusionError::External(Box::new(Error::Read {
                sources: vec![file.url.clone()],
                source: e,
            })),
        ))
    };
    let parquet = |e: ParquetError| read_failed(DataFusionError::ParquetError(Box::new(e)));
    let mut writers = plan
        .writers
        .create_column_writers(g)
        .map_err(|e| Stop::Failed(DataFusionError::ParquetError(Box::new(e))))?;
    let mask = ProjectionMask::roots(file.reader.parquet_schema(), plan.needed.iter().copied());
    let reader =
        ParquetRecordBatchReaderBuilder::new_with_metadata(fetched.clone(), file.reader.clone())
            .with_row_groups(vec![g])
            .with_projection(mask)
            .with_batch_size(plan.batch_size)
            .build()
            .map_err(parquet)?;
    // Where each computed column's leaves start among the writers.
    let descr = &plan.computed_parquet;
    for batch in reader {
        let batch =
            batch.map_err(|e| read_failed(DataFusionError::ArrowError(Box::new(e), None)))?;
        let columns: Vec<ArrayRef> = batch
            .columns()
            .iter()
            .zip(plan.needed_schema.fields())
            .map(|(array, field)| {
                if array.data_type() == field.data_type() {
                    Ok(Arc::clone(array))
                } else {
                    datafusion::arrow::compute::cast(array, field.data_type())
                }
            })
            .collect::<Result<_, _>>()
            .map_err(|e| read_failed(DataFusionError::ArrowError(Box::new(e), None)))?;
        let batch = RecordBatch::try_new(Arc::clone(&plan.needed_schema), columns)
            .map_err(|e| read_failed(DataFusionError::ArrowError(Box::new(e), None)))?;
        let mut leaf = 0;
        for (expr, field) in plan.exprs.iter().zip(plan.computed_arrow.fields()) {
            let value = expr
                .evaluate(&batch)
                .and_then(|v| v.into_array(batch.num_rows()))
                .map_err(|e| Stop::Failed(plan.attribute(file, e)))?;
            for column in compute_leaves(field, &value).map_err(parquet)? {
                writers[leaf].write(&column).map_err(parquet)?;
                leaf += 1;
            }
        }
    }
    let mut chunks: Vec<Vec<ArrowColumnChunk>> =
        (0..plan.exprs.len()).map(|_| Vec::new()).collect();
    for (leaf, writer) in writers.into_iter().enumerate() {
        let root = descr.get_column_root_idx(leaf);
        chunks[root].push(writer.close().map_err(parquet)?);
    }
    Ok(chunks)
}

/// The byte ranges of a chunk's pages, from their headers; `Err` when they do not add up
/// to the chunk the footer declares.
fn page_ranges(
    chunk: &ColumnChunkMetaData,
    bytes: &[u8],
    max_uncompressed: u64,
) -> Result<Vec<Range<u64>>, String> {
    let mut pages = Vec::new();
    let mut position = 0usize;
    while position < bytes.len() {
        let sizes = page_sizes(&bytes[position..]).ok_or("a page header does not parse")?;
        if sizes.compressed < 0 || sizes.uncompressed < 0 {
            return Err("a page header has a negative size".into());
        }
        if sizes.uncompressed as u64 > max_uncompressed {
            return Err("a page claims more bytes than its chunk".into());
        }
        let end = position + sizes.header_len + sizes.compressed as usize;
        if end > bytes.len() {
            return Err("a page runs past its chunk".into());
        }
        pages.push(position as u64..end as u64);
        position = end;
    }
    if pages.is_empty() && chunk.num_values() > 0 {
        return Err("the chunk has no pages".into());
    }
    Ok(pages)
}

/// A chunk moved byte for byte.
fn copy_chunk(
    fetched: &Located,
    chunk: &ColumnChunkMetaData,
    rows: i64,
    offsets: Option<OffsetIndexMetaData>,
    column_index: Option<ColumnIndexMetaData>,
) -> Result<(Located, ColumnCloseResult), String> {
    let (start, length) = chunk.byte_range();
    let bytes = fetched.find(start, length).map_err(|e| e.to_string())?;
    let declared = chunk.uncompressed_size().max(0) as u64;
    let pages = page_ranges(chunk, &bytes, declared.max(1))?;
    let offsets = match offsets {
        Some(offsets) => Some(offsets),
        None => flat_offsets(fetched, chunk, rows, start, &pages)?,
    };
    Ok((
        fetched.clone(),
        ColumnCloseResult {
            bytes_written: length,
            rows_written: rows.max(0) as u64,
            metadata: chunk.clone(),
            bloom_filter: None,
            column_index: offsets.as_ref().and(column_index),
            offset_index: offsets,
        },
    ))
}

/// An offset index built from the page headers of a chunk whose file has none: only for
/// non-repeated columns, where a page's values are its rows.
fn flat_offsets(
    fetched: &Located,
    chunk: &ColumnChunkMetaData,
    rows: i64,
    start: u64,
    pages: &[Range<u64>],
) -> Result<Option<OffsetIndexMetaData>, String> {
    if chunk.column_descr().max_rep_level() > 0 {
        return Err("a nested column without an offset index".into());
    }
    let reader = page_reader(fetched, chunk, rows, false).map_err(|e| e.to_string())?;
    let mut locations = Vec::with_capacity(pages.len());
    let mut first_row = 0i64;
    for (page, range) in reader.zip(pages) {
        let page = page.map_err(|e| e.to_string())?;
        if matches!(page, Page::DictionaryPage { .. }) {
            continue;
        }
        locations.push(PageLocation {
            offset: (start + range.start) as i64,
            compressed_page_size: (range.end - range.start) as i32,
            first_row_index: first_row,
        });
        first_row += i64::from(page.num_values());
    }
    Ok(Some(OffsetIndexMetaData {
        page_locations: locations,
        unencoded_byte_array_data_bytes: None,
    }))
}

fn page_reader(
    fetched: &Located,
    chunk: &ColumnChunkMetaData,
    rows: i64,
    statistics: bool,
) -> parquet::errors::Result<SerializedPageReader<Located>> {
    let properties = ReaderProperties::builder()
        .set_read_page_statistics(statistics)
        .build();
    SerializedPageReader::new_with_properties(
        Arc::new(fetched.clone()),
        chunk,
        rows.max(0) as usize,
        None,
        Arc::new(properties),
    )
}

/// A chunk whose pages are decompressed and compressed again with `codec`: values,
/// encodings, levels and page statistics are the input's.
fn recompress_chunk(
    fetched: &Located,
    chunk: &ColumnChunkMetaData,
    rows: i64,
    offsets: Option<OffsetIndexMetaData>,
    column_index: Option<ColumnIndexMetaData>,
    codec: Codec,
) -> parquet::errors::Result<Result<(Located, ColumnCloseResult), String>> {
    let (start, length) = chunk.byte_range();
    let bytes = fetched.find(start, length)?;
    let declared = chunk.uncompressed_size().max(0) as u64;
    if let Err(reason) = page_ranges(chunk, &bytes, declared.max(1)) {
        return Ok(Err(reason));
    }
    let mut reader = page_reader(fetched, chunk, rows, true)?;
    let mut compressor = PageCompressor::new(codec)?;
    let mut sink = TrackedWrite::new(Vec::with_capacity(length as usize));
    let mut dictionary_offset = None;
    let mut data_offset = None;
    let mut uncompressed_total = 0i64;
    let mut locations = Vec::new();
    let mut first_row = 0i64;
    {
        let mut writer = SerializedPageWriter::new(&mut sink);
        while let Some(page) = reader.get_next_page()? {
            let page_rows = match &page {
                Page::DataPageV2 { num_rows, .. } => i64::from(*num_rows),
                other => i64::from(other.num_values()),
            };
            let is_dictionary = matches!(page, Page::DictionaryPage { .. });
            let (page, uncompressed) = compress_page(page, &mut compressor)?;
            let spec = writer.write_page(CompressedPage::new(page, uncompressed))?;
            uncompressed_total += spec.uncompressed_size as i64;
            if is_dictionary {
                dictionary_offset = Some(spec.offset as i64);
            } else {
                data_offset.get_or_insert(spec.offset as i64);
                locations.push(PageLocation {
                    offset: spec.offset as i64,
                    compressed_page_size: spec.compressed_size as i32,
                    first_row_index: first_row,
                });
                first_row += page_rows;
            }
        }
        writer.close()?;
    }
    // Page boundaries are the input's: take the first rows from its index when it has one.
    if let Some(input) = &offsets {
        if input.page_locations.len() != locations.len() {
            return Ok(Err("its offset index does not match its pages".into()));
        }
        for (ours, theirs) in locations.iter_mut().zip(&input.page_locations) {
            ours.first_row_index = theirs.first_row_index;
        }
    }
    let written = sink.bytes_written() as i64;
    let data = Bytes::from(sink.into_inner()?);
    let mut builder = ColumnChunkMetaData::builder(chunk.column_descr_ptr())
        .set_compression_codec(codec.into())
        .set_encodings_mask(*chunk.encodings_mask())
        .set_total_compressed_size(written)
        .set_total_uncompressed_size(uncompressed_total)
        .set_num_values(chunk.num_values())
        .set_data_page_offset(data_offset.unwrap_or(0))
        .set_dictionary_page_offset(dictionary_offset)
        .set_unencoded_byte_array_data_bytes(chunk.unencoded_byte_array_data_bytes());
    if let Some(statistics) = chunk.statistics() {
        builder = builder.set_statistics(statistics.clone());
    }
    if let Some(stats) = chunk.page_encoding_stats() {
        builder = builder.set_page_encoding_stats(stats.clone());
    }
    if let Some(histogram) = chunk.repetition_level_histogram() {
        builder = builder.set_repetition_level_histogram(Some(histogram.clone()));
    }
    if let Some(histogram) = chunk.definition_level_histogram() {
        builder = builder.set_definition_level_histogram(Some(histogram.clone()));
    }
    let offset_index = OffsetIndexMetaData {
        page_locations: locations,
        unencoded_byte_array_data_bytes: offsets.and_then(|o| o.unencoded_byte_array_data_bytes),
    };
    Ok(Ok((
        Located {
            ranges: Arc::from(vec![(0u64, data)]),
        },
        ColumnCloseResult {
            bytes_written: written as u64,
            rows_written: rows.max(0) as u64,
            metadata: builder.build()?,
            bloom_filter: None,
            column_index,
            offset_index: Some(offset_index),
        },
    )))
}

/// Compresses a decompressed page with `codec`; returns it and its uncompressed size.
/// A v2 page's levels stay uncompressed, as the format has them.
fn compress_page(
    page: Page,
    compressor: &mut PageCompressor,
) -> parquet::errors::Result<(Page, usize)> {
    Ok(match page {
        Page::DataPage {
            buf,
            num_values,
            encoding,
            def_level_encoding,
            rep_level_encoding,
            statistics,
        } => {
            let uncompressed = buf.len();
            let buf = compressor.compress(&buf)?;
            (
                Page::DataPage {
                    buf,
                    num_values,
                    encoding,
                    def_level_encoding,
                    rep_level_encoding,
                    statistics,
                },
                uncompressed,
            )
        }
        Page::DataPageV2 {
            buf,
            num_values,
            encoding,
            num_nulls,
            num_rows,
            def_levels_byte_len,
            rep_levels_byte_len,
            statistics,
            ..
        } => {
            let uncompressed = buf.len();
            let levels = (def_levels_byte_len + rep_levels_byte_len) as usize;
            if levels > buf.len() {
                return Err(ParquetError::General(
                    "a v2 page's levels run past it".into(),
                ));
            }
            let is_compressed = compressor.codec != Codec::UNCOMPRESSED;
            let buf = if is_compressed {
                let values = compressor.compress(&buf[levels..])?;
                let mut whole = Vec::with_capacity(levels + values.len());
                whole.extend_from_slice(&buf[..levels]);
                whole.extend_from_slice(&values);
                Bytes::from(whole)
            } else {
                buf
            };
            (
                Page::DataPageV2 {
                    buf,
                    num_values,
                    encoding,
                    num_nulls,
                    num_rows,
                    def_levels_byte_len,
                    rep_levels_byte_len,
                    is_compressed,
                    statistics,
                },
                uncompressed,
            )
        }
        Page::DictionaryPage {
            buf,
            num_values,
            encoding,
            is_sorted,
        } => {
            let uncompressed = buf.len();
            (
                Page::DictionaryPage {
                    buf: compressor.compress(&buf)?,
                    num_values,
                    encoding,
                    is_sorted,
                },
                uncompressed,
            )
        }
    })
}

/// Compresses pages as Parquet's `codec` frames them, reusing the codec's state (a
/// zstd context costs more to create than a small page to compress).
struct PageCompressor {
    codec: Codec,
    zstd: Option<zstd::bulk::Compressor<'static>>,
    snappy: snap::raw::Encoder,
}

impl PageCompressor {
    fn new(codec: Codec) -> parquet::errors::Result<Self> {
        let zstd = match codec {
            Codec::ZSTD(level) => Some(
                zstd::bulk::Compressor::new(level.compression_level())
                    .map_err(|e| ParquetError::External(Box::new(e)))?,
            ),
            _ => None,
        };
        Ok(PageCompressor {
            codec,
            zstd,
            snappy: snap::raw::Encoder::new(),
        })
    }

    fn compress(&mut self, data: &[u8]) -> parquet::errors::Result<Bytes> {
        let external = |e: std::io::Error| ParquetError::External(Box::new(e));
        Ok(Bytes::from(match (self.codec, self.zstd.as_mut()) {
            (Codec::UNCOMPRESSED, _) => data.to_vec(),
            (Codec::SNAPPY, _) => self
                .snappy
                .compress_vec(data)
                .map_err(|e| ParquetError::External(Box::new(e)))?,
            (Codec::ZSTD(_), Some(zstd)) => zstd.compress(data).map_err(external)?,
            (Codec::LZ4_RAW, _) => lz4_flex::block::compress(data),
            (Codec::GZIP(level), _) => {
                let mut encoder = flate2::write::GzEncoder::new(
                    Vec::with_capacity(data.len() / 2),
                    flate2::Compression::new(level.compression_level()),
                );
                encoder.write_all(data).map_err(external)?;
                encoder.finish().map_err(external)?
            }
            (other, _) => {
                return Err(ParquetError::NYI(format!(
                    "Sluice does not write {other} (choose Snappy, LZ4, zstd, gzip or none)"
                )));
            }
        }))
    }
}
