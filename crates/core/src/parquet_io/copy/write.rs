//! Writing: the units of work (a copied chunk, a row group's computed columns) in
//! flight, their results appended in order, each output file uploaded as it grows.

use super::*;

impl CopyPlan {
    /// Writes the output to `staging` (one file, or one part per input file), and
    /// returns the rows written and how.
    pub(crate) async fn write(
        self,
        store: Arc<dyn ObjectStore>,
        staging: &url::Url,
        directory: bool,
    ) -> Result<(u64, WriteMethod), Stop> {
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
            WriteMethod::ColumnCopy {
                copied,
                computed,
                chunks_verbatim: counts.0,
                chunks_recompressed: counts.1,
            },
        ))
    }

    /// What a unit holds at most: the compressed chunks it reads and, decoded or
    /// recompressed, as much again; the computed columns of a row group in memory.
    pub(super) fn unit_bytes(&self, unit: Unit) -> usize {
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

    /// Attributes an error in `file` to the tasks its rows pass, innermost first, as the
    /// boundaries of a streamed plan do. `read`: the error came from reading or
    /// decoding the file's bytes; when the file is a checkpoint's part, the checkpoint
    /// judges such an error first, as a cache hit's boundary does for its scan (a block
    /// that does not match, a page that does not decode make it corrupt). An error in
    /// evaluating a computed column is no judgement on it.
    pub(super) fn attribute(
        &self,
        file: &InputFile,
        error: DataFusionError,
        read: bool,
    ) -> DataFusionError {
        let mut error = error;
        for &i in &file.boundaries {
            let boundary = &self.boundaries[i];
            let checkpoint = boundary.checkpoint.as_deref().filter(|_| read);
            error = crate::plan::boundary::attribute(
                &boundary.task,
                &boundary.sources,
                checkpoint,
                error,
            );
        }
        error
    }

    /// Stops the copy on an error in decoding `file`'s values: a read error naming the
    /// file, attributed as a read (see [`attribute`](Self::attribute)).
    pub(super) fn read_failed(&self, file: &InputFile, source: DataFusionError) -> Stop {
        let error = DataFusionError::External(Box::new(Error::Read {
            sources: vec![file.url.clone()],
            source,
        }));
        Stop::Failed(self.attribute(file, error, true))
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

/// Rows flowing through the task boundaries of a copied plan: each gets one execution
/// of one partition, as a streamed plan's boundaries do (dropped before its end, it
/// reports so).
pub(super) struct Taps(Vec<Partition>);

impl Taps {
    pub(super) fn new(boundaries: &[Arc<TaskBoundary>]) -> Self {
        Taps(
            boundaries
                .iter()
                .map(|b| {
                    let execution = b.task.execution(1, b.checkpoint.is_some());
                    b.task.partition(&execution)
                })
                .collect(),
        )
    }

    pub(super) fn add(&self, boundaries: &[usize], rows: u64, bytes: u64, nanos: u64) {
        for &i in boundaries {
            self.0[i].add_output(rows, bytes, nanos);
        }
    }

    /// The earliest deadline of the tasks, and the tap it is of.
    pub(super) fn deadline(&self) -> Option<(Instant, &Partition)> {
        self.0
            .iter()
            .filter_map(|tap| Some((tap.deadline()?, tap)))
            .min_by_key(|(at, _)| *at)
    }

    pub(super) fn close(&self, end: StreamEnd) {
        for tap in &self.0 {
            tap.end(end);
        }
    }
}

/// A buffer the file writer writes into and the upload drains.
#[derive(Clone, Default)]
pub(super) struct SharedBuffer(Arc<Mutex<Vec<u8>>>);

impl SharedBuffer {
    pub(super) fn take(&self) -> Vec<u8> {
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
pub(super) enum Unit {
    Compute { f: usize, g: usize },
    Copy { f: usize, g: usize, leaf: usize },
}

/// A unit's result.
pub(super) enum Done {
    Computed(Vec<Vec<ArrowColumnChunk>>),
    /// Compressed pages at the offsets the `ColumnCloseResult` names in the reader; and
    /// whether they are the input's bytes unchanged.
    Copied(Located, Box<ColumnCloseResult>, bool),
}

/// One output file from the row groups of `files`, in order.
///
/// The work goes column chunk by column chunk, a few in flight, and each chunk is
/// uploaded once appended: memory holds a few compressed chunks, never a row group.
pub(super) async fn write_file(
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

/// The CPU work of a unit: the new columns computed and encoded, or a copied chunk
/// checked (and recompressed when the codec changes).
pub(super) fn run(plan: &CopyPlan, unit: Unit, fetched: Located) -> Result<Done, Stop> {
    let (f, g, leaf) = match unit {
        Unit::Compute { f, g } => {
            return compute(plan, &plan.files[f], g, &fetched).map(Done::Computed);
        }
        Unit::Copy { f, g, leaf } => (f, g, leaf),
    };
    let file = &plan.files[f];
    let group = file.metadata.row_group(g);
    let chunk = group.column(leaf);
    if plan.validate && !file.reads.checked() {
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
        .map_err(|e| plan.read_failed(file, DataFusionError::ParquetError(Box::new(e))))?
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
pub(super) fn compute(
    plan: &CopyPlan,
    file: &InputFile,
    g: usize,
    fetched: &Located,
) -> Result<Vec<Vec<ArrowColumnChunk>>, Stop> {
    if plan.exprs.is_empty() {
        return Ok(Vec::new());
    }
    let read_failed = |e: DataFusionError| plan.read_failed(file, e);
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
                .map_err(|e| Stop::Failed(plan.attribute(file, e, false)))?;
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
