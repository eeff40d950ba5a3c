//! Planning: every input file's footer read and checked against the table, the
//! output's schema and the computed columns' writers.

use super::detect::ShapeColumn;
use super::*;
use datafusion::common::config::TableParquetOptions;
use datafusion::logical_expr::simplify::SimplifyContext;
use datafusion::optimizer::simplify_expressions::ExprSimplifier;
use datafusion::physical_expr::expressions::Column as PhysicalColumn;

impl CopyPlan {
    pub(super) async fn new(
        state: &SessionState,
        limits: ReadLimits,
        options: &ParquetWrite,
        shape: Shape,
    ) -> Result<Self, String> {
        let codec = options
            .compression
            .to_parquet()
            .map_err(|e| e.to_string())?;
        let checkpoint = match &shape.checkpoint {
            Some(tee) => Some(copied_checkpoint(tee, options)?),
            None => None,
        };
        // Unique boundaries, by identity.
        let mut boundaries: Vec<Arc<TaskBoundary>> = Vec::new();
        let mut boundary_outputs = Vec::new();
        let mut files = Vec::new();
        for branch in &shape.branches {
            let indices: Vec<usize> = branch
                .boundaries
                .iter()
                .zip(&branch.outputs)
                .map(|(b, output)| {
                    match boundaries
                        .iter()
                        .position(|known| known.task.id() == b.task.id())
                    {
                        Some(i) => i,
                        None => {
                            boundaries.push(Arc::clone(b));
                            boundary_outputs.push(output.clone());
                            boundaries.len() - 1
                        }
                    }
                })
                .collect();
            if branch.schema.fields() != shape.table_schema.fields() {
                return Err("the concatenated sources differ in their schemas".into());
            }
            match &branch.source {
                BranchSource::Listing(table) => {
                    files.extend(listed(state, table, &indices).await?);
                }
                BranchSource::Checkpoint(checkpoint) => {
                    let parts = checkpoint
                        .parts()
                        .ok_or("the checkpoint's footers were not read")?;
                    let opened = futures::stream::iter(parts)
                        .map(|part| open_part(checkpoint, part, indices.clone()))
                        .buffered(FOOTERS_IN_FLIGHT)
                        .try_collect::<Vec<_>>()
                        .await?;
                    files.extend(opened);
                }
            }
        }
        let table_df =
            DFSchema::try_from(shape.table_schema.as_ref().clone()).map_err(|e| e.to_string())?;
        // Simplified as DataFusion's optimizer simplifies a query's expressions: `now()`
        // and its kin become this write's start time (they cannot be evaluated).
        let simplifier = ExprSimplifier::new(
            SimplifyContext::builder()
                .with_schema(Arc::new(table_df.clone()))
                .with_config_options(Arc::clone(state.config_options()))
                .with_query_execution_start_time(Some(chrono::Utc::now()))
                .build(),
        );
        // A file's columns: a table column unchanged is copied, any other computed (once
        // for both files: a checkpoint's column computed as an output's is that one).
        let mut computed_exprs: Vec<Expr> = Vec::new();
        let mut plan_columns =
            |columns: &[ShapeColumn], beside: bool| -> Result<Vec<(Field, Wanted)>, String> {
                let copied: Vec<(usize, usize)> = shape.copied_of(columns).collect();
                let output_computed = computed_exprs.len();
                let mut planned = Vec::with_capacity(columns.len());
                for (i, column) in columns.iter().enumerate() {
                    let expr = &column.expr;
                    let wanted = match copied.iter().find(|(c, _)| *c == i) {
                        Some(&(_, table_index)) => Wanted::Copy(table_index),
                        None => match computed_exprs[..output_computed]
                            .iter()
                            .position(|e| e == expr)
                            .filter(|_| beside)
                        {
                            Some(n) => Wanted::Same(n),
                            None => {
                                let physical = simplifier
                                    .coerce(expr.clone(), &table_df)
                                    .and_then(|e| simplifier.simplify(e))
                                    .and_then(|e| state.create_physical_expr(e, &table_df))
                                    .map_err(|e| format!("cannot plan {expr}: {e}"))?;
                                computed_exprs.push(expr.clone());
                                Wanted::Compute(physical)
                            }
                        },
                    };
                    planned.push((column.field.clone(), wanted));
                }
                Ok(planned)
            };
        let columns = plan_columns(&shape.columns, false)?;
        // The checkpoint is a file of its own when it has other columns or another codec.
        let beside = match (&checkpoint, &shape.checkpoint_columns) {
            (Some((_, codec)), Some(columns)) => Some((columns.as_slice(), *codec)),
            (Some((_, codec)), None) if *codec != options.compression => {
                Some((shape.columns.as_slice(), *codec))
            }
            _ => None,
        };
        let beside = match beside {
            Some((columns, codec)) => Some(Beside {
                columns: plan_columns(columns, true)?,
                codec: codec.to_parquet().map_err(|e| e.to_string())?,
            }),
            None => None,
        };
        let settings = Settings {
            codec,
            recompress: options.recompress,
            validate: options.validate,
            table_options: options.table_options(state).map_err(|e| e.to_string())?,
            part_bytes: state
                .config_options()
                .execution
                .objectstore_writer_buffer_size,
            pool: Arc::clone(&state.runtime_env().memory_pool),
            limits,
            batch_size: state.config().batch_size(),
        };
        let mut plan = CopyPlan::build(files, &shape.table_schema, columns, beside, settings)?;
        plan.boundaries = boundaries;
        plan.boundary_outputs = boundary_outputs;
        plan.computed_exprs = computed_exprs;
        plan.checkpoint = checkpoint;
        Ok(plan)
    }

    /// The copy of `files` (every input file, its footer read) into `columns`, the
    /// output's fields in order, each a column of the table (whose schema is
    /// `table_schema`) or computed over it, and into a file `beside` it; no task
    /// boundary is passed and no checkpoint written (the logical plan's route adds
    /// them).
    pub(super) fn build(
        files: Vec<InputFile>,
        table_schema: &SchemaRef,
        columns: Vec<(Field, Wanted)>,
        beside: Option<Beside>,
        settings: Settings,
    ) -> Result<Self, String> {
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
            check_file(file, table_schema, settings.limits.max_column_chunk_bytes)?;
        }
        let file_schema = Arc::clone(first.reader.schema());
        if !columns
            .iter()
            .any(|(_, wanted)| matches!(wanted, Wanted::Copy(_)))
        {
            return Err("no column is kept unchanged".into());
        }

        // Every file's computed columns, each once: the output's, then those only the
        // file beside has.
        let mut table_exprs: Vec<Arc<dyn PhysicalExpr>> = Vec::new();
        let mut computed_fields: Vec<Field> = Vec::new();
        let mut names = (Vec::new(), Vec::new());
        for (field, wanted) in &columns {
            match wanted {
                Wanted::Copy(_) => names.0.push(field.name().clone()),
                _ => names.1.push(field.name().clone()),
            }
        }
        let output_columns = columns_of(columns, &mut table_exprs, &mut computed_fields, &[])?;
        let output_computed: Vec<usize> = (0..table_exprs.len()).collect();
        let beside_columns = match beside {
            Some(beside) => Some((
                columns_of(
                    beside.columns,
                    &mut table_exprs,
                    &mut computed_fields,
                    &output_computed,
                )?,
                beside.codec,
            )),
            None => None,
        };

        // The columns the computed ones read, and their expressions over those alone.
        let needed: Vec<usize> = table_exprs
            .iter()
            .flat_map(datafusion::physical_expr::utils::collect_columns)
            .map(|column| column.index())
            .collect::<BTreeSet<usize>>()
            .into_iter()
            .collect();
        let needed_schema = Arc::new(table_schema.project(&needed).map_err(|e| e.to_string())?);
        let mut exprs = Vec::with_capacity(table_exprs.len());
        for (expr, field) in table_exprs.into_iter().zip(&computed_fields) {
            let over_needed = Arc::clone(&expr)
                .transform(|node| {
                    let Some(column) = node.downcast_ref::<PhysicalColumn>() else {
                        return Ok(Transformed::no(node));
                    };
                    let index = needed
                        .iter()
                        .position(|&i| i == column.index())
                        .ok_or_else(|| {
                            DataFusionError::Internal(format!("{column} is not read"))
                        })?;
                    Ok(Transformed::yes(
                        Arc::new(PhysicalColumn::new(column.name(), index)) as _,
                    ))
                })
                .map_err(|e| format!("cannot plan {expr}: {e}"))?
                .data;
            let data_type = over_needed
                .data_type(&needed_schema)
                .map_err(|e| e.to_string())?;
            if &data_type != field.data_type() {
                return Err(format!(
                    "{expr} evaluates to {data_type}, the plan says {}",
                    field.data_type()
                ));
            }
            exprs.push(over_needed);
        }
        // Memory: new columns of one row group are held encoded until it is complete.
        let computed_width: u64 = computed_fields
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
        // metadata (pandas', ...) and each file's Arrow schema.
        let mut table_options = settings.table_options;
        if let Some(kv) = first.metadata.file_metadata().key_value_metadata() {
            for pair in kv {
                table_options
                    .key_value_metadata
                    .entry(pair.key.clone())
                    .or_insert_with(|| pair.value.clone());
            }
        }
        let layout = |columns: Vec<(OutputColumn, Field, Option<usize>)>, codec: Codec| {
            FileLayout::new(
                columns,
                codec,
                &table_options,
                &file_schema,
                &first_parquet,
                &computed_fields,
                &files,
            )
        };
        let output = layout(output_columns, settings.codec)?;
        let beside = match beside_columns {
            Some((columns, codec)) => Some(layout(columns, codec)?),
            None => None,
        };
        // Every leaf the copy reads: those it copies and those the expressions read.
        let read_leaves: Vec<usize> = output
            .columns
            .iter()
            .chain(beside.iter().flat_map(|b| b.columns.iter()))
            .filter_map(|column| match column {
                OutputColumn::Copy { root } => Some(*root),
                OutputColumn::Compute { .. } => None,
            })
            .chain(needed.iter().copied())
            .flat_map(|root| leaves(&first_parquet, root).collect::<Vec<_>>())
            .collect::<BTreeSet<usize>>()
            .into_iter()
            .collect();
        Ok(CopyPlan {
            files,
            output,
            beside,
            names,
            computed_width: computed_width as usize,
            exprs,
            read_leaves,
            needed_leaves: needed
                .iter()
                .flat_map(|&root| leaves(&first_parquet, root).collect::<Vec<_>>())
                .collect(),
            needed,
            needed_schema,
            recompress: settings.recompress,
            validate: settings.validate,
            part_bytes: settings.part_bytes,
            pool: settings.pool,
            max_chunk: settings.limits.max_column_chunk_bytes,
            read_ahead: settings.limits.remote_read_ahead_bytes,
            batch_size: settings.batch_size,
            boundaries: Vec::new(),
            boundary_outputs: Vec::new(),
            computed_exprs: Vec::new(),
            row_groups: RowGroupFetches::default(),
            checkpoint: None,
        })
    }
}

/// A file's columns as the copy writes them, its computed ones added to `exprs` (with
/// their `fields`) unless they are the output's (`Wanted::Same`, whose indices into
/// `exprs` are `same`).
fn columns_of(
    columns: Vec<(Field, Wanted)>,
    exprs: &mut Vec<Arc<dyn PhysicalExpr>>,
    fields: &mut Vec<Field>,
    same: &[usize],
) -> Result<Vec<(OutputColumn, Field, Option<usize>)>, String> {
    let mut computed = 0;
    columns
        .into_iter()
        .map(|(field, wanted)| {
            let index = match wanted {
                Wanted::Copy(root) => return Ok((OutputColumn::Copy { root }, field, None)),
                Wanted::Compute(expr) => {
                    exprs.push(expr);
                    fields.push(field.clone());
                    exprs.len() - 1
                }
                Wanted::Same(n) => *same
                    .get(n)
                    .ok_or_else(|| format!("{} is computed by no output column", field.name()))?,
            };
            let n = computed;
            computed += 1;
            Ok((OutputColumn::Compute { n }, field, Some(index)))
        })
        .collect()
}

impl FileLayout {
    /// A file of `columns` (each with its field and, when computed, its index into the
    /// copy's expressions, whose fields are `computed_fields`) encoded with `codec` and
    /// DataFusion's sink's `table_options`.
    fn new(
        columns: Vec<(OutputColumn, Field, Option<usize>)>,
        codec: Codec,
        table_options: &TableParquetOptions,
        file_schema: &SchemaRef,
        first_parquet: &SchemaDescPtr,
        computed_fields: &[Field],
        files: &[InputFile],
    ) -> Result<FileLayout, String> {
        let mut fields = Vec::with_capacity(columns.len());
        let mut computed = Vec::new();
        // Its computed columns' own fields: a column computed as an output column of
        // another name is named as this file names it.
        let mut computed_own = Vec::new();
        let mut layout_columns = Vec::with_capacity(columns.len());
        for (column, field, index) in columns {
            match &column {
                OutputColumn::Copy { root } => fields.push(file_schema.field(*root).clone()),
                OutputColumn::Compute { .. } => {
                    let index = index.ok_or("a computed column without its expression")?;
                    if computed_fields[index].data_type() != field.data_type() {
                        return Err(format!(
                            "{} is computed as {}, the file says {}",
                            field.name(),
                            computed_fields[index].data_type(),
                            field.data_type()
                        ));
                    }
                    computed.push(index);
                    computed_own.push(field.clone());
                    fields.push(field);
                }
            }
            layout_columns.push(column);
        }
        let computed_arrow = Arc::new(Schema::new(computed_own));
        let computed_parquet = Arc::new(
            ArrowSchemaConverter::new()
                .convert(&computed_arrow)
                .map_err(|e| format!("a new column has no Parquet type: {e}"))?,
        );
        let input_roots = first_parquet.root_schema().get_fields();
        let root_fields = layout_columns
            .iter()
            .map(|column| match column {
                OutputColumn::Copy { root } => Arc::clone(&input_roots[*root]),
                OutputColumn::Compute { n } => {
                    Arc::clone(&computed_parquet.root_schema().get_fields()[*n])
                }
            })
            .collect();
        let root = Arc::new(
            Type::group_type_builder(first_parquet.root_schema().name())
                .with_fields(root_fields)
                .build()
                .map_err(|e| e.to_string())?,
        );
        let arrow = Arc::new(Schema::new_with_metadata(
            fields,
            file_schema.metadata().clone(),
        ));
        let mut table_options = table_options.clone();
        table_options.arrow_schema(&arrow);
        let props = parquet::file::properties::WriterPropertiesBuilder::try_from(&table_options)
            .map_err(|e| e.to_string())?
            .set_compression(codec)
            .build();
        let props = Arc::new(props);
        unstated_statistics(files, &props)?;
        // The factory of column writers takes its schemas from a file writer.
        let template = SerializedFileWriter::new(
            std::io::sink(),
            computed_parquet.root_schema_ptr(),
            Arc::clone(&props),
        )
        .map_err(|e| e.to_string())?;
        let writers = ArrowRowGroupWriterFactory::new(&template, Arc::clone(&computed_arrow));
        Ok(FileLayout {
            columns: layout_columns,
            root,
            props,
            codec,
            computed,
            computed_arrow,
            computed_parquet,
            writers,
        })
    }
}

/// The columns of a file the copy writes beside its output, as
/// [`CopyPlan::build`] takes them, and their codec.
pub(super) struct Beside {
    pub(super) columns: Vec<(Field, Wanted)>,
    pub(super) codec: Codec,
}

/// An output column of a copy, as [`CopyPlan::build`] takes it.
pub(super) enum Wanted {
    /// The table's column at this index, unchanged.
    Copy(usize),
    /// Computed by this expression over the table's columns.
    Compute(Arc<dyn PhysicalExpr>),
    /// In a file beside the output: the output's `n`-th computed column.
    Same(usize),
}

/// What a copy is written with, besides its inputs and columns.
pub(super) struct Settings {
    pub(super) codec: Codec,
    pub(super) recompress: bool,
    pub(super) validate: bool,
    /// DataFusion's sink's options: the writer's properties.
    pub(super) table_options: TableParquetOptions,
    /// The size of the upload's parts.
    pub(super) part_bytes: usize,
    /// The memory pool the copy's units reserve from.
    pub(super) pool: Arc<dyn MemoryPool>,
    pub(super) limits: ReadLimits,
    pub(super) batch_size: usize,
}

/// The checkpoint a copy writes beside its output: one this process commits, and its
/// codec (the task's format's, or else the output's).
fn copied_checkpoint(
    tee: &Tee,
    options: &ParquetWrite,
) -> Result<(Arc<CheckpointTarget>, Compression), String> {
    if tee.committed().is_some() {
        return Err(format!(
            "this run committed task {}'s checkpoint already: the sink reads it",
            tee.task()
        ));
    }
    let any: Arc<dyn std::any::Any + Send + Sync> = tee.clone();
    let target = any
        .downcast::<CheckpointTarget>()
        .map_err(|_| format!("task {}'s checkpoint is written by the cluster", tee.task()))?;
    let codec = target.format.compression().unwrap_or(options.compression);
    Ok((target, codec))
}

/// The files of a listing, in path order, with their footers: the objects the frame
/// was built from, read through their pins (see `pins`), exactly what the cache keys
/// over it name.
async fn listed(
    state: &SessionState,
    table: &Arc<dyn TableProvider>,
    boundaries: &[usize],
) -> Result<Vec<InputFile>, String> {
    let listing = table
        .downcast_ref::<ListingTable>()
        .ok_or("the source is not a file listing")?;
    let extension = listing.options().file_extension.clone();
    let pins = listing
        .options()
        .format
        .downcast_ref::<WrappedFormat<SourceFormat>>()
        .map(|format| Arc::clone(format.hooks.pins()));
    let mut files = Vec::new();
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
                .list_all_files(state, store.as_ref(), &extension)
                .await
                .map_err(|e| e.to_string())?
                .try_collect()
                .await
                .map_err(|e| e.to_string())?,
        };
        objects.sort_by(|a, b| a.location.cmp(&b.location));
        // Footers are read a few at a time, and kept in listing order.
        let cache = state.runtime_env().cache_manager.get_file_metadata_cache();
        let base = crate::identity::object_base(table_url);
        let opened: Vec<InputFile> = futures::stream::iter(objects)
            .map(|object| {
                let url = crate::identity::object_url(&base, &object);
                open(&store, object, url, boundaries.to_vec(), cache.as_ref())
            })
            .buffered(FOOTERS_IN_FLIGHT)
            .try_collect()
            .await?;
        files.extend(opened);
    }
    Ok(files)
}

/// A checkpoint's part, with the footer the lookup checked and its page index (read
/// through the checkpoint's verifying reads, when it has one).
async fn open_part(
    checkpoint: &Arc<dyn CheckpointSource>,
    part: CheckpointPart,
    boundaries: Vec<usize>,
) -> Result<InputFile, String> {
    let reads = Reads::Checkpoint(Arc::clone(checkpoint));
    let fetch = Fetch {
        reads: &reads,
        location: &part.location,
        url: &part.url,
    };
    let mut loader = ParquetMetaDataReader::new_with_metadata(part.metadata.as_ref().clone())
        .with_page_index_policy(PageIndexPolicy::Optional);
    let metadata = match loader.load_page_index(fetch).await {
        Ok(()) => loader.finish(),
        Err(e) => Err(e),
    }
    .map_err(|e| format!("cannot read the page index of {}: {e}", part.url))?;
    input_file(
        part.url,
        reads,
        part.location,
        Arc::new(metadata),
        boundaries,
    )
}

/// Refuses a checkpoint's part whose column chunks carry no statistics when the output
/// wants them: the copy keeps a chunk's statistics as they are, so the hit's output would
/// lack what the run that computed it wrote (the source's statistics, copied) and what a
/// rewrite computes. A checkpoint written with `CheckpointFormat::with_statistics(true)`
/// has them.
fn unstated_statistics(
    files: &[InputFile],
    props: &parquet::file::properties::WriterProperties,
) -> Result<(), String> {
    use parquet::file::properties::EnabledStatistics;
    for file in files
        .iter()
        .filter(|f| matches!(f.reads, Reads::Checkpoint(_)))
    {
        for group in file.metadata.row_groups() {
            for chunk in group.columns() {
                let wanted =
                    props.statistics_enabled(chunk.column_path()) != EnabledStatistics::None;
                if wanted && chunk.statistics().is_none() {
                    return Err(format!(
                        "the checkpoint has no column statistics, which the output keeps \
                         (CheckpointFormat::with_statistics(true) writes them): {} has none \
                         for column {}",
                        file.url,
                        chunk.column_path()
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Reads a file's footer (with its page index, when it has one), or finds it in the
/// session's metadata cache (see [`read_footer`](crate::parquet_io::footer::read_footer)).
pub(super) async fn open(
    store: &Arc<dyn ObjectStore>,
    object: ObjectMeta,
    url: String,
    boundaries: Vec<usize>,
    cache: &FileMetadataCache,
) -> Result<InputFile, String> {
    if object.size == 0 {
        return Err(format!("{url} is empty"));
    }
    let metadata = crate::parquet_io::footer::read_footer(store.as_ref(), &url, &object, cache)
        .await
        .map_err(|e| {
            format!(
                "cannot read the footer of {url}: {}",
                crate::error::message(&e)
            )
        })?;
    let reads = Reads::Store(Arc::clone(store));
    input_file(url, reads, object.location, metadata, boundaries)
}

/// An input file, once its footer is read.
fn input_file(
    url: String,
    reads: Reads,
    location: Path,
    metadata: Arc<ParquetMetaData>,
    boundaries: Vec<usize>,
) -> Result<InputFile, String> {
    let reader = ArrowReaderMetadata::try_new(Arc::clone(&metadata), ArrowReaderOptions::new())
        .map_err(|e| format!("cannot read the schema of {url}: {e}"))?;
    Ok(InputFile {
        url,
        reads,
        location,
        groups: (0..metadata.num_row_groups()).collect(),
        metadata,
        reader,
        boundaries,
    })
}

/// Ranged reads of one input file, for the footer and page-index readers.
struct Fetch<'a> {
    reads: &'a Reads,
    location: &'a Path,
    url: &'a str,
}

impl MetadataFetch for Fetch<'_> {
    fn fetch(
        &mut self,
        range: Range<u64>,
    ) -> futures::future::BoxFuture<'_, parquet::errors::Result<Bytes>> {
        use futures::FutureExt;
        async move {
            let expected = range.end - range.start;
            let ranges = [range];
            let bytes = self
                .reads
                .get_ranges(self.location, &ranges, self.url)
                .await
                .map_err(|e| ParquetError::External(Box::new(e)))?
                .pop()
                .unwrap_or_default();
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
pub(super) fn check_file(file: &InputFile, table: &Schema, max_chunk: u64) -> Result<(), String> {
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
pub(super) fn same_values(file: &DataType, table: &DataType) -> bool {
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
