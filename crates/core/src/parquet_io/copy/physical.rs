//! The copy on a cluster's executor: one partition of a Parquet sink's input, planned
//! from the physical plan the executor runs rather than from the client's logical one.
//!
//! A partition that scans Parquet files (byte ranges of them, as DataFusion splits a
//! large file) through projections and task boundaries only has exactly the rows of
//! the row groups its ranges hold, in order: the row groups whose first page lies in a
//! range, as DataFusion's Parquet opener chooses them. Its part of the output is then
//! those row groups, copied as locally: unchanged columns moved as compressed pages,
//! computed ones evaluated from the columns they read.

use datafusion::common::config::TableParquetOptions;
use datafusion::datasource::physical_plan::{FileScanConfig, FileSource, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::TaskContext;
use datafusion::physical_expr::projection::ProjectionExprs;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::projection::ProjectionExec;

use super::plan::{Settings, Wanted};
use super::*;
use crate::checkpoint::tee::CheckpointExec;
use crate::parquet_io::limits;
use crate::parquet_io::pins::Pins;
use crate::plan::boundary::TaskBoundaryExec;

/// The copy of one partition of a sink's input, ready to write.
pub(crate) struct PartitionCopy {
    plan: CopyPlan,
    /// The task boundaries the partition's rows pass, outermost first: the copy does
    /// not run them, so it counts its rows into them.
    boundaries: Vec<Arc<dyn ExecutionPlan>>,
    /// The tee of a persisted task whose output the sink writes: the copy writes its
    /// part with the output's bytes, and its receipt.
    checkpoint: Option<Arc<dyn ExecutionPlan>>,
    partition: usize,
}

/// Plans the copy of partition `partition` of `input` (the plan under a Parquet sink,
/// as an executor decoded it) with the sink's `table_options`, or says why the copy
/// cannot serve it (the sink's rewrite then writes it).
pub(crate) async fn partition(
    input: &Arc<dyn ExecutionPlan>,
    partition: usize,
    context: &TaskContext,
    table_options: &TableParquetOptions,
    choices: ExecutorCopy,
) -> Result<PartitionCopy, String> {
    if !choices.column_copy {
        return Err("turned off for the write".into());
    }
    // A persisted task's tee right under the sink: its checkpoint is the output's
    // bytes, written a second time (as locally).
    let mut node = Arc::clone(input);
    let checkpoint = match node.downcast_ref::<CheckpointExec>() {
        Some(exec) => {
            if exec.tee.committed().is_some() {
                return Err(format!(
                    "this run committed task {}'s checkpoint already: the sink reads it",
                    exec.tee.task()
                ));
            }
            let next = Arc::clone(node.children()[0]);
            let tee = std::mem::replace(&mut node, next);
            Some(tee)
        }
        None => None,
    };
    // Down to the scan: projections (outermost first) and task boundaries only.
    let mut projections: Vec<ProjectionExprs> = Vec::new();
    let mut boundaries = Vec::new();
    let scan = loop {
        if let Some(projection) = node.downcast_ref::<ProjectionExec>() {
            projections.push(projection.projection_expr().clone());
            let next = Arc::clone(projection.input());
            node = next;
        } else if let Some(boundary) = node.downcast_ref::<TaskBoundaryExec>() {
            if boundary.checkpoint.is_some() {
                return Err("a task's result comes from its checkpoint".into());
            }
            let next = Arc::clone(node.children()[0]);
            boundaries.push(node);
            node = next;
        } else if let Some(source) = node.downcast_ref::<DataSourceExec>() {
            break source
                .data_source()
                .downcast_ref::<FileScanConfig>()
                .ok_or("the source is not a file scan")?
                .clone();
        } else {
            return Err(format!("the plan has a {} node", node.name()));
        }
    };
    let source = scan
        .file_source()
        .downcast_ref::<ParquetSource>()
        .ok_or("the source is not Parquet")?;
    if source.filter().is_some() {
        return Err("the scan filters rows".into());
    }
    if scan.limit.is_some() {
        return Err("the scan has a limit".into());
    }
    if !scan.table_partition_cols().is_empty() {
        return Err("the table has partition columns".into());
    }
    let table_schema = Arc::clone(scan.file_schema());
    // The output's columns over the table's: each projection over the one below it.
    let mut exprs = source.projection().cloned().unwrap_or_else(|| {
        let all: Vec<usize> = (0..table_schema.fields().len()).collect();
        ProjectionExprs::from_indices(&all, &table_schema)
    });
    for outer in projections.iter().rev() {
        exprs = exprs.try_merge(outer).map_err(|e| e.to_string())?;
    }
    let output = input.schema();
    if exprs.as_ref().len() != output.fields().len() {
        return Err("the projection does not give the sink's columns".into());
    }
    let columns = exprs
        .iter()
        .zip(output.fields())
        .map(|(projected, field)| {
            let copied = projected
                .expr
                .downcast_ref::<datafusion::physical_expr::expressions::Column>()
                .map(|column| column.index())
                .filter(|&i| {
                    let table_field = table_schema.field(i);
                    table_field.name() == field.name()
                        && table_field.data_type() == field.data_type()
                });
            let wanted = match copied {
                Some(index) => Wanted::Copy(index),
                None => Wanted::Compute(Arc::clone(&projected.expr)),
            };
            (field.as_ref().clone(), wanted)
        })
        .collect();

    // The row groups the partition's ranges hold, their footers read (or cached).
    let files = scan
        .file_groups
        .get(partition)
        .map(|group| group.files().to_vec())
        .unwrap_or_default();
    if files.iter().any(|f| !f.extensions.is_empty()) {
        return Err("a file's scan is narrowed by an access plan".into());
    }
    let base = scan.object_store_url.as_str().to_string();
    let objects: Vec<ObjectMeta> = files.iter().map(|f| f.object_meta.clone()).collect();
    // Every read checked against the object the scheduler's listing found.
    let store = Pins::new(&base, &objects).guard(
        context
            .runtime_env()
            .object_store(&scan.object_store_url)
            .map_err(|e| e.to_string())?,
    );
    let cache = context
        .runtime_env()
        .cache_manager
        .get_file_metadata_cache();
    let mut inputs = Vec::with_capacity(files.len());
    for file in files {
        let url = format!("{base}{}", file.object_meta.location);
        let mut input =
            super::plan::open(&store, file.object_meta, url, Vec::new(), cache.as_ref()).await?;
        if let Some(range) = &file.range {
            input.groups.retain(|&g| {
                let column = input.metadata.row_group(g).column(0);
                let first_page = column
                    .dictionary_page_offset()
                    .unwrap_or_else(|| column.data_page_offset());
                range.contains(first_page)
            });
        }
        if !input.groups.is_empty() {
            inputs.push(input);
        }
    }

    let config = context.session_config();
    // The sink's codec, parsed as its writer parses it (none set: the writer's default).
    let codec = match &table_options.global.compression {
        Some(text) => {
            datafusion::common::file_options::parquet_writer::parse_compression_string(text)
                .map_err(|e| e.to_string())?
        }
        None => Codec::UNCOMPRESSED,
    };
    let settings = Settings {
        codec,
        recompress: choices.recompress,
        validate: choices.validate,
        table_options: table_options.clone(),
        part_bytes: config.options().execution.objectstore_writer_buffer_size,
        pool: Arc::clone(&context.runtime_env().memory_pool),
        limits: ReadLimits {
            // The lower of the client's cap and this executor's, as its scans take.
            max_column_chunk_bytes: choices
                .max_column_chunk_bytes
                .min(limits::max_column_chunk_bytes_from_env()),
            remote_read_ahead_bytes: choices.remote_read_ahead_bytes,
        },
        batch_size: config.batch_size(),
    };
    if let Some(exec) = checkpoint
        .as_ref()
        .and_then(|c| c.downcast_ref::<CheckpointExec>())
    {
        let codec = exec.tee.format().tee_compression();
        if codec.to_parquet().ok() != Some(settings.codec) {
            return Err(format!(
                "task {}'s checkpoint is {codec:?}, the output is {:?}: the tee writes it",
                exec.tee.task(),
                settings.codec
            ));
        }
    }
    let plan = CopyPlan::build(inputs, &table_schema, columns, None, settings)?;
    Ok(PartitionCopy {
        plan,
        boundaries,
        checkpoint,
        partition,
    })
}

impl PartitionCopy {
    /// Writes the part to `path` in `store` (on a remote store when `remote`): the
    /// rows written and how. The task boundaries count the rows, bytes and time as
    /// they would have streaming.
    pub(crate) async fn write(
        self,
        store: Arc<dyn ObjectStore>,
        path: Path,
        remote: bool,
    ) -> Result<(u64, WriteMethod), Stop> {
        let bytes: u64 = self
            .plan
            .files
            .iter()
            .flat_map(|file| {
                file.groups
                    .iter()
                    .map(|&g| file.metadata.row_group(g).total_byte_size().max(0) as u64)
            })
            .sum();
        let in_flight = self.plan.uploads_in_flight(remote);
        let output = Output::Staged {
            store,
            path,
            in_flight,
        };
        let files = (0..self.plan.files.len()).collect();
        let started = Instant::now();
        let boundaries = || {
            self.boundaries
                .iter()
                .filter_map(|b| b.downcast_ref::<TaskBoundaryExec>())
        };
        let tee = self
            .checkpoint
            .as_ref()
            .and_then(|c| Some((c, c.downcast_ref::<CheckpointExec>()?)));
        let written = match tee {
            // The tee's part beside the output, and its receipt once both are whole.
            Some((node, exec)) => {
                let tee_input = Arc::clone(node.children()[0]);
                let partitions = tee_input.properties().partitioning.partition_count();
                let (part_path, end) = Arc::clone(&exec.tee).open(
                    &std::sync::OnceLock::new(),
                    &tee_input,
                    self.partition,
                    partitions,
                );
                let part = PartUpload::new(
                    Arc::clone(&exec.tee),
                    part_path,
                    self.plan.part_bytes,
                    in_flight,
                );
                match self.plan.write_with_part(output, part).await {
                    Ok((rows, method, file)) => end
                        .finish(self.partition, Ok(file))
                        .await
                        .map(|()| {
                            exec.count_copied(self.partition, rows);
                            (rows, method)
                        })
                        .map_err(Stop::Failed),
                    Err(stop) => Err(stop),
                }
            }
            None => self.plan.write_outputs(vec![(Some(output), files)]).await,
        };
        let (rows, method) = match written {
            Ok(written) => written,
            // Attributed as the boundaries attribute a stream's errors, innermost first.
            Err(Stop::Failed(error)) => {
                let attributed = boundaries()
                    .rev()
                    .fold(error, |error, boundary| boundary.attribute(error));
                return Err(Stop::Failed(attributed));
            }
            Err(stop) => return Err(stop),
        };
        let nanos = started.elapsed().as_nanos() as u64;
        for boundary in boundaries() {
            boundary.count_copied(self.partition, rows, bytes, nanos);
        }
        Ok((rows, method))
    }
}
