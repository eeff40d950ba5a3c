//! Writing: the units of work (a copied chunk, a row group's computed columns) in
//! flight, their results appended in order, each output file uploaded as it grows.

use super::*;

impl CopyPlan {
    /// Writes the output to `staging` (one file, or one part per input file), or, for
    /// one file given `in_place`, to its destination in an upload the publish completes;
    /// returns the rows written and how.
    pub(crate) async fn write(
        self,
        store: Arc<dyn ObjectStore>,
        staging: &url::Url,
        directory: bool,
        in_place: Option<InPlace>,
    ) -> Result<(u64, WriteMethod), Stop> {
        let files = self.files.len();
        let in_flight = self.uploads_in_flight(crate::parquet_io::is_remote(staging.as_str()));
        let staged = |path: Path| Output::Staged {
            store: Arc::clone(&store),
            path,
            in_flight,
        };
        let outputs: Vec<(Option<Output>, Vec<usize>)> = if directory {
            (0..files)
                .map(|i| {
                    let path = sluice_store::object_path(staging)
                        .map(|p| p.join(format!("part-{i:05}.parquet").as_str()));
                    path.map(|p| (Some(staged(p)), vec![i]))
                })
                .collect::<Result<_, _>>()
        } else if let Some(in_place) = in_place {
            let output = Output::InPlace {
                in_place,
                in_flight,
            };
            Ok(vec![(Some(output), (0..files).collect())])
        } else {
            sluice_store::object_path(staging)
                .map(|p| vec![(Some(staged(p)), (0..files).collect())])
        }
        .map_err(|e| Stop::Failed(DataFusionError::External(Box::new(e))))?;
        self.write_outputs(outputs).await
    }

    /// Multipart parts in flight in an upload: two to local disk or memory, where a part
    /// is a copy in memory; to a remote store, as many as half the remote read-ahead
    /// budget holds (the reads' rule, bandwidth × latency, bounded by memory: a part's
    /// bytes are held until the store acknowledges them), from 2 to 8: 2 parts of 10 MiB
    /// at the default budget. Measured on the seed ETL S3 → S3 at 12M rows: parts in
    /// flight by the whole budget of 64 MiB (6) took 0.74 times the wall of 2 at 0 ms and
    /// 0.88 at 100 ms in one pass, but peaked at 215–235 MiB; 3 were no faster than 2
    /// in interleaved runs.
    pub(super) fn uploads_in_flight(&self, remote: bool) -> usize {
        if !remote {
            return 2;
        }
        (self.read_ahead / 2 / self.part_bytes.max(1) as u64).clamp(2, 8) as usize
    }

    /// Writes the checkpoint of the persisted task whose output the plan is, and
    /// nothing else (a barrier's drain): one part of every input file's row groups.
    pub(crate) async fn write_checkpoint(self) -> Result<(u64, WriteMethod), Stop> {
        if self.checkpoint.is_none() {
            return Err(Stop::Unsupported(
                "no checkpoint is written of the plan".into(),
            ));
        }
        let outputs = vec![(None, (0..self.files.len()).collect())];
        self.write_outputs(outputs).await
    }

    /// Writes each output (none when only the checkpoint's part is written) from the
    /// row groups of its files, and the checkpoint beside, on a task of its own: the
    /// write is a deep future (its poll frames are large in debug builds) and the sink
    /// that awaits it may be deep already. Dropped, it stops the write.
    pub(super) async fn write_outputs(
        self,
        outputs: Vec<(Option<Output>, Vec<usize>)>,
    ) -> Result<(u64, WriteMethod), Stop> {
        use tracing::Instrument;
        let mut task = AbortOnDrop(tokio::spawn(
            self.write_outputs_here(outputs).in_current_span(),
        ));
        match (&mut task.0).await {
            Ok(written) => written,
            Err(e) => match e.try_into_panic() {
                // As if it had run here: the sink's guard reports it.
                Ok(payload) => std::panic::resume_unwind(payload),
                Err(e) => Err(Stop::Failed(DataFusionError::External(Box::new(e)))),
            },
        }
    }

    async fn write_outputs_here(
        self,
        outputs: Vec<(Option<Output>, Vec<usize>)>,
    ) -> Result<(u64, WriteMethod), Stop> {
        let plan = Arc::new(self);
        let taps = Taps::new(&plan.boundaries);
        let deadline = taps.deadline();
        // The checkpoint written beside: one part per output file, deleted unless
        // committed (a failed, stopped or dropped copy commits nothing).
        let checkpoint = plan.checkpoint.as_ref().map(|(target, codec)| Uncommitted {
            write: Some(target.begin(outputs.len())),
            in_flight: plan
                .uploads_in_flight(crate::parquet_io::is_remote(target.store.url().as_str())),
            target: Arc::clone(target),
            codec: *codec,
        });
        let mut rows = 0;
        let mut counts = (0u64, 0u64);
        let mut parts = Vec::new();
        for (n, (output, files)) in outputs.into_iter().enumerate() {
            let part = checkpoint.as_ref().and_then(|c| c.part(n, plan.part_bytes));
            // Boxed: a file's write is a large future, which would otherwise sit in
            // every future awaiting the sink.
            let upload = output.map(|output| output.start(plan.part_bytes));
            let written = Box::pin(write_file(&plan, &taps, upload, &files, part, deadline)).await;
            match written {
                Ok((n, verbatim, recompressed, part)) => {
                    rows += n;
                    counts.0 += verbatim;
                    counts.1 += recompressed;
                    parts.extend(part);
                }
                Err(stop) => {
                    taps.close(StreamEnd::Failed);
                    return Err(stop);
                }
            }
        }
        if let Some(checkpoint) = checkpoint
            && let Err(e) = checkpoint.commit(parts).await
        {
            taps.close(StreamEnd::Failed);
            return Err(Stop::Failed(e));
        }
        taps.close(StreamEnd::Ended);
        Ok((rows, plan.method(counts)))
    }

    #[cfg(feature = "ballista")]
    /// One output file of every input file's row groups at `output`, and the same
    /// bytes as `part`, a checkpoint's part that a cluster's client commits: the rows
    /// written, how, and what the manifest records of the part.
    pub(super) async fn write_with_part(
        self,
        output: Output,
        part: PartUpload,
    ) -> Result<(u64, WriteMethod, ManifestFile), Stop> {
        let plan = Arc::new(self);
        let taps = Taps::new(&[]);
        let files: Vec<usize> = (0..plan.files.len()).collect();
        let upload = output.start(plan.part_bytes);
        let written = Box::pin(write_file(
            &plan,
            &taps,
            Some(upload),
            &files,
            Some(part),
            None,
        ))
        .await?;
        let (rows, verbatim, recompressed, part) = written;
        let (file, _, _) = part.ok_or_else(|| {
            Stop::Failed(DataFusionError::Internal(
                "the copy's checkpoint part went missing".into(),
            ))
        })?;
        Ok((rows, plan.method((verbatim, recompressed)), file))
    }

    /// The column copy's write method, with `counts` chunks (verbatim, recompressed).
    fn method(&self, counts: (u64, u64)) -> WriteMethod {
        let (copied, computed) = self.names.clone();
        WriteMethod::ColumnCopy {
            copied,
            computed,
            chunks_verbatim: counts.0,
            chunks_recompressed: counts.1,
        }
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
    /// boundaries of a streamed plan do. An error in reading or decoding the file's
    /// bytes is every task's; when the file is a checkpoint's part, the checkpoint
    /// judges it first, as a cache hit's boundary does for its scan (a block that does
    /// not match, a page that does not decode make it corrupt). An error in evaluating
    /// a computed column is no judgement on the checkpoint, and is the error of the
    /// innermost task whose output has the column (the tasks below it never computed
    /// it).
    pub(super) fn attribute(
        &self,
        file: &InputFile,
        error: DataFusionError,
        cause: Cause,
    ) -> DataFusionError {
        let from = match cause {
            Cause::Read => 0,
            Cause::Computing(n) => file
                .boundaries
                .iter()
                .position(|&i| self.boundary_outputs[i].contains(&self.computed_exprs[n]))
                .unwrap_or(file.boundaries.len()),
        };
        let mut error = error;
        for &i in &file.boundaries[from..] {
            let boundary = &self.boundaries[i];
            let checkpoint = boundary
                .checkpoint
                .as_deref()
                .filter(|_| matches!(cause, Cause::Read));
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
        Stop::Failed(self.attribute(file, error, Cause::Read))
    }
}

/// What an error of the copy came from, for [`CopyPlan::attribute`].
#[derive(Clone, Copy)]
pub(super) enum Cause {
    /// Reading or decoding an input file's bytes.
    Read,
    /// Evaluating the `n`-th computed column.
    Computing(usize),
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

/// A spawned task, aborted when its handle is dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A checkpoint the copy writes as its output's bytes, until committed: dropped
/// uncommitted (the copy failed, stopped or was cancelled), its parts are deleted.
struct Uncommitted {
    target: Arc<CheckpointTarget>,
    write: Option<Arc<CheckpointWrite>>,
    codec: Compression,
    /// Parts in flight in each part's upload.
    in_flight: usize,
}

impl Uncommitted {
    /// The upload of part `n`, in parts of `part_bytes`.
    fn part(&self, n: usize, part_bytes: usize) -> Option<PartUpload> {
        let write = self.write.as_ref()?;
        let sink = Arc::clone(&self.target) as Tee;
        let mut part = PartUpload::new(sink, write.part(n), part_bytes, self.in_flight);
        part.write = Some(Arc::clone(write));
        Some(part)
    }

    /// Commits the manifest of `parts`; when this write's manifest is the one that
    /// stands, keeps the parts' footers for later sinks of the frame.
    async fn commit(mut self, parts: Vec<WrittenPart>) -> Result<(), DataFusionError> {
        let Some(write) = self.write.take() else {
            return Ok(());
        };
        let (files, footers): (Vec<ManifestFile>, std::collections::HashMap<_, _>) = parts
            .into_iter()
            .map(|(file, path, footer)| (file, (path, footer)))
            .unzip();
        let stands = write
            .commit(
                &self.target,
                files,
                Encoded {
                    codec: self.codec,
                    // Its row groups are the output's: a sink copies them.
                    reencode: false,
                },
            )
            .await
            .map_err(|e| TeeSink::error(self.target.as_ref(), e))?;
        if stands {
            let _ = self.target.footers.set(footers);
        }
        Ok(())
    }
}

impl Drop for Uncommitted {
    fn drop(&mut self) {
        if let Some(write) = self.write.take() {
            let store = self.target.store.clone();
            sluice_store::cleanup::spawn("delete uncommitted checkpoint parts", async move {
                write.delete(&store).await;
            });
        }
    }
}

/// A checkpoint part the copy wrote: what the manifest records, its path and footer.
type WrittenPart = (ManifestFile, Path, Arc<ParquetMetaData>);

/// One part of a checkpoint the copy writes: the output file's bytes, uploaded again.
pub(super) struct PartUpload {
    writer: PartWriter,
    /// The checkpoint's writer, which names its errors.
    sink: Tee,
    /// This process's write of it, whose lease the part's progress renews (none on a
    /// cluster's executor: the client holds the lease).
    write: Option<Arc<CheckpointWrite>>,
}

impl PartUpload {
    /// The upload of a part of `sink`'s checkpoint at `path`, in parts of `part_bytes`,
    /// `in_flight` at once.
    pub(super) fn new(sink: Tee, path: Path, part_bytes: usize, in_flight: usize) -> Self {
        let upload = object_store::buffered::BufWriter::with_capacity(
            Arc::clone(sink.store().object_store()),
            path.clone(),
            part_bytes,
        )
        .with_max_concurrency(in_flight);
        Self {
            writer: PartWriter::new(upload, path),
            sink,
            write: None,
        }
    }

    async fn put(&mut self, bytes: Bytes) -> Result<(), Stop> {
        if let Some(write) = &self.write {
            write.progress();
        }
        let put = self.writer.put(bytes).await;
        put.map_err(|e| {
            let path = self.writer.path().to_string();
            self.failed(crate::error::classify_store_error(&e, &[path]).unwrap_or(
                Error::Execution {
                    source: DataFusionError::ObjectStore(Box::new(e)),
                },
            ))
        })
    }

    /// Completes the part of `rows` rows: what the manifest records, its path and the
    /// footer the copy wrote.
    async fn finish(self, rows: u64, footer: ParquetMetaData) -> Result<WrittenPart, Stop> {
        let path = self.writer.path().clone();
        match self.writer.finish(rows).await {
            Ok(file) => Ok((file, path, Arc::new(footer))),
            Err(e) => Err(Stop::Failed(self.sink.error(e))),
        }
    }

    /// The checkpoint's error for `error`.
    fn failed(&self, error: Error) -> Stop {
        Stop::Failed(self.sink.error(error))
    }
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
    /// Room for `bytes` more: a chunk appended whole grows the buffer once, instead of
    /// doubling it through its size (the doubled capacity is freed heap glibc keeps).
    pub(super) fn reserve(&self, bytes: usize) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .reserve(bytes);
    }

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

/// A row group's computed columns in one file, by their index among the file's
/// computed columns (a column's leaves in order).
pub(super) type Computed = Vec<Vec<ArrowColumnChunk>>;

/// A unit's result.
pub(super) enum Done {
    /// A row group's computed columns, by their index among the output's and among the
    /// file beside's.
    Computed(Computed, Computed),
    /// A copied chunk, as the output has it and as the file beside has it (each when the
    /// file has the column).
    Copied(Option<CopiedChunk>, Option<CopiedChunk>),
}

/// A copied chunk: compressed pages at the offsets the `ColumnCloseResult` names in the
/// reader, and whether they are the input's bytes unchanged.
#[derive(Clone)]
pub(super) struct CopiedChunk {
    reader: Located,
    close: Box<ColumnCloseResult>,
    verbatim: bool,
}

/// One output file (at `output`, if any) from the row groups of `files`, in order, and
/// the same bytes as `part` of a checkpoint when one is written.
///
/// The work goes column chunk by column chunk, a few in flight, and each chunk is
/// uploaded once appended: memory holds a few compressed chunks, never a row group.
pub(super) async fn write_file(
    plan: &Arc<CopyPlan>,
    taps: &Taps,
    mut upload: Option<Upload>,
    files: &[usize],
    mut part: Option<PartUpload>,
    deadline: Option<(Instant, &Partition)>,
) -> Result<(u64, u64, u64, Option<WrittenPart>), Stop> {
    let parquet = |e: ParquetError| Stop::Failed(DataFusionError::ParquetError(Box::new(e)));
    let internal = || {
        Stop::Failed(DataFusionError::Internal(
            "the column copy's work came back out of order".into(),
        ))
    };
    let buffer = SharedBuffer::default();
    let mut writer = SerializedFileWriter::new(
        buffer.clone(),
        Arc::clone(&plan.output.root),
        Arc::clone(&plan.output.props),
    )
    .map_err(parquet)?;
    // The checkpoint's part as a file of its own, when it is not the output's bytes.
    let beside_buffer = SharedBuffer::default();
    let mut beside = match (&plan.beside, &part) {
        (Some(layout), Some(_)) => Some((
            layout,
            SerializedFileWriter::new(
                beside_buffer.clone(),
                Arc::clone(&layout.root),
                Arc::clone(&layout.props),
            )
            .map_err(parquet)?,
        )),
        _ => None,
    };
    let beside_layout = beside.as_ref().map(|(layout, _)| *layout);
    let beside_only = |descr: &SchemaDescPtr| -> Vec<usize> {
        let Some(layout) = beside_layout else {
            return Vec::new();
        };
        layout
            .columns
            .iter()
            .filter_map(|c| match c {
                OutputColumn::Copy { root } if !plan.output.copies(*root) => Some(*root),
                _ => None,
            })
            .flat_map(|root| leaves(descr, root).collect::<Vec<_>>())
            .collect()
    };
    let mut units = Vec::new();
    for &f in files {
        let descr = plan.files[f].metadata.file_metadata().schema_descr_ptr();
        let only = beside_only(&descr);
        for &g in &plan.files[f].groups {
            if !plan.exprs.is_empty() {
                units.push(Unit::Compute { f, g });
            }
            for column in &plan.output.columns {
                if let OutputColumn::Copy { root } = column {
                    for leaf in leaves(&descr, *root) {
                        units.push(Unit::Copy { f, g, leaf });
                    }
                }
            }
            units.extend(only.iter().map(|&leaf| Unit::Copy { f, g, leaf }));
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
    // The output's bytes go to the checkpoint's part too, unless it is a file of its own.
    let same_bytes = beside.is_none();
    let mut rows = 0u64;
    let mut counts = (0u64, 0u64);
    let result: Result<(ParquetMetaData, Option<ParquetMetaData>), Stop> = async {
        for &f in files {
            let file = &plan.files[f];
            let descr = file.metadata.file_metadata().schema_descr_ptr();
            let only = beside_only(&descr);
            let items = beside_layout.map(|layout| beside_items(layout, &descr));
            for &g in &file.groups {
                let started = Instant::now();
                let (mut computed, beside_computed) = if plan.exprs.is_empty() {
                    (Vec::new(), Vec::new())
                } else {
                    match done.next().await.ok_or_else(internal)?? {
                        Done::Computed(output, beside) => (output, beside),
                        Done::Copied(..) => return Err(internal()),
                    }
                };
                // The file beside's row group is written as its columns come: the chunks
                // it has that came before their turn wait here, by leaf.
                let mut kept: Vec<(usize, CopiedChunk)> = Vec::new();
                let mut side = match (&mut beside, &items) {
                    (Some((_, writer)), Some(items)) => Some(BesideGroup {
                        group: writer.next_row_group().map_err(parquet)?,
                        buffer: beside_buffer.clone(),
                        items,
                        next: 0,
                        computed: beside_computed,
                    }),
                    _ => None,
                };
                let mut row_group = writer.next_row_group().map_err(parquet)?;
                for column in &plan.output.columns {
                    match column {
                        OutputColumn::Compute { n } => {
                            append_computed(&mut row_group, &mut computed[*n])?;
                        }
                        OutputColumn::Copy { root } => {
                            for leaf in leaves(&descr, *root) {
                                let Done::Copied(Some(chunk), also) =
                                    done.next().await.ok_or_else(internal)??
                                else {
                                    return Err(internal());
                                };
                                append_copied(&mut row_group, &buffer, chunk, &mut counts)?;
                                kept.extend(also.map(|also| (leaf, also)));
                            }
                        }
                    }
                    let same = part.as_mut().filter(|_| same_bytes);
                    put(upload.as_mut(), same, buffer.take().into()).await?;
                    if let Some(side) = &mut side
                        && side.advance(&mut kept)?
                    {
                        put(None, part.as_mut(), beside_buffer.take().into()).await?;
                    }
                }
                row_group.close().map_err(parquet)?;
                if let Some(mut side) = side {
                    for &leaf in &only {
                        let Done::Copied(_, Some(chunk)) =
                            done.next().await.ok_or_else(internal)??
                        else {
                            return Err(internal());
                        };
                        kept.push((leaf, chunk));
                        if side.advance(&mut kept)? {
                            put(None, part.as_mut(), beside_buffer.take().into()).await?;
                        }
                    }
                    if side.next < side.items.len() {
                        return Err(internal());
                    }
                    side.group.close().map_err(parquet)?;
                    put(None, part.as_mut(), beside_buffer.take().into()).await?;
                }
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
        let footer = writer.finish().map_err(parquet)?;
        let part_bytes = part.as_mut().filter(|_| same_bytes);
        put(upload.as_mut(), part_bytes, buffer.take().into()).await?;
        let beside_footer = match beside.take() {
            Some((_, mut writer)) => {
                let footer = writer.finish().map_err(parquet)?;
                put(None, part.as_mut(), beside_buffer.take().into()).await?;
                Some(footer)
            }
            None => None,
        };
        // Taken: once finishing, the upload is finished or failed whole.
        if let Some(upload) = upload.take() {
            upload.finish().await?;
        }
        Ok((footer, beside_footer))
    }
    .await;
    match result {
        Ok((footer, beside_footer)) => {
            let part = match part {
                Some(part) => Some(part.finish(rows, beside_footer.unwrap_or(footer)).await?),
                None => None,
            };
            Ok((rows, counts.0, counts.1, part))
        }
        Err(stop) => {
            if let Some(upload) = upload {
                upload.abort().await;
            }
            if let Some(part) = part {
                part.writer.abort().await;
            }
            Err(stop)
        }
    }
}

/// Appends a computed column's chunks to `row_group`.
fn append_computed<W: Write + Send>(
    row_group: &mut parquet::file::writer::SerializedRowGroupWriter<'_, W>,
    chunks: &mut Vec<ArrowColumnChunk>,
) -> Result<(), Stop> {
    for chunk in chunks.drain(..) {
        chunk
            .append_to_row_group(row_group)
            .map_err(|e| Stop::Failed(DataFusionError::ParquetError(Box::new(e))))?;
    }
    Ok(())
}

/// Appends a copied chunk to `row_group`, which writes into `buffer`, counting it
/// (verbatim, recompressed).
fn append_copied<W: Write + Send>(
    row_group: &mut parquet::file::writer::SerializedRowGroupWriter<'_, W>,
    buffer: &SharedBuffer,
    chunk: CopiedChunk,
    counts: &mut (u64, u64),
) -> Result<(), Stop> {
    buffer.reserve(chunk.close.bytes_written as usize);
    row_group
        .append_column(&chunk.reader, *chunk.close)
        .map_err(|e| Stop::Failed(DataFusionError::ParquetError(Box::new(e))))?;
    if chunk.verbatim {
        counts.0 += 1;
    } else {
        counts.1 += 1;
    }
    Ok(())
}

/// What the file beside the output writes of a row group, in order: a computed column
/// (by its index among the file's), or a copied leaf.
enum BesideItem {
    Computed(usize),
    Leaf(usize),
}

/// The file beside's columns as [`BesideItem`]s, leaves as `descr` has them.
fn beside_items(layout: &FileLayout, descr: &SchemaDescPtr) -> Vec<BesideItem> {
    layout
        .columns
        .iter()
        .flat_map(|column| match column {
            OutputColumn::Compute { n } => vec![BesideItem::Computed(*n)],
            OutputColumn::Copy { root } => leaves(descr, *root).map(BesideItem::Leaf).collect(),
        })
        .collect()
}

/// A row group of the file beside the output, being written.
struct BesideGroup<'a, 'w> {
    group: parquet::file::writer::SerializedRowGroupWriter<'w, SharedBuffer>,
    /// What the group writes into.
    buffer: SharedBuffer,
    items: &'a [BesideItem],
    /// The first item not written yet.
    next: usize,
    computed: Computed,
}

impl BesideGroup<'_, '_> {
    /// Appends the items whose turn it is and whose chunks are here (computed columns
    /// are; a copied leaf is once in `kept`). Returns whether it appended any.
    fn advance(&mut self, kept: &mut Vec<(usize, CopiedChunk)>) -> Result<bool, Stop> {
        let start = self.next;
        while let Some(item) = self.items.get(self.next) {
            match item {
                BesideItem::Computed(n) => {
                    append_computed(&mut self.group, &mut self.computed[*n])?;
                }
                BesideItem::Leaf(leaf) => {
                    let Some(at) = kept.iter().position(|(l, _)| l == leaf) else {
                        break;
                    };
                    let chunk = kept.swap_remove(at).1;
                    append_copied(&mut self.group, &self.buffer, chunk, &mut (0, 0))?;
                }
            }
            self.next += 1;
        }
        Ok(self.next > start)
    }
}

/// Appends `bytes` to the output's upload and to the checkpoint's part, each if written.
async fn put(
    upload: Option<&mut Upload>,
    part: Option<&mut PartUpload>,
    bytes: Bytes,
) -> Result<(), Stop> {
    if let Some(part) = part {
        part.put(bytes.clone()).await?;
    }
    match upload {
        Some(upload) => upload.put(bytes).await,
        None => Ok(()),
    }
}

/// Where an output file of the copy goes.
pub(super) enum Output {
    /// Under the output's staging name in `store`, published by a rename.
    Staged {
        store: Arc<dyn ObjectStore>,
        path: Path,
        /// Parts uploading at once.
        in_flight: usize,
    },
    /// One file on a remote store, uploaded at its destination and completed by the
    /// publish (no server-side copy).
    InPlace {
        in_place: InPlace,
        /// Parts uploading at once.
        in_flight: usize,
    },
}

impl Output {
    /// Starts its upload: parts of `part_bytes` (the session's writer buffer size, 10 MiB
    /// unless set), as many in flight as `uploads_in_flight` says.
    fn start(self, part_bytes: usize) -> Upload {
        match self {
            Output::Staged {
                store,
                path,
                in_flight,
            } => Upload::Staged(
                object_store::buffered::BufWriter::with_capacity(store, path, part_bytes)
                    .with_max_concurrency(in_flight),
            ),
            Output::InPlace {
                in_place,
                in_flight,
            } => Upload::InPlace(in_place.start(PartOptions {
                part_bytes,
                in_flight,
            })),
        }
    }
}

/// An output file's upload.
pub(super) enum Upload {
    /// Completed when finished.
    Staged(object_store::buffered::BufWriter),
    /// Left for the publish to complete when finished.
    InPlace(InPlaceUpload),
}

impl Upload {
    async fn put(&mut self, bytes: Bytes) -> Result<(), Stop> {
        match self {
            Upload::Staged(upload) => upload
                .put(bytes)
                .await
                .map_err(|e| Stop::Failed(DataFusionError::ObjectStore(Box::new(e)))),
            Upload::InPlace(upload) => upload
                .put(bytes)
                .await
                .map_err(|e| Stop::Failed(DataFusionError::External(Box::new(e)))),
        }
    }

    /// Every byte acknowledged: the staged file complete, the in-place upload waiting
    /// for the publish.
    async fn finish(self) -> Result<(), Stop> {
        match self {
            Upload::Staged(mut upload) => upload
                .shutdown()
                .await
                .map_err(|e| Stop::Failed(DataFusionError::IoError(e))),
            Upload::InPlace(upload) => upload
                .finish()
                .await
                .map(|_| ())
                .map_err(|e| Stop::Failed(DataFusionError::External(Box::new(e)))),
        }
    }

    async fn abort(self) {
        match self {
            Upload::Staged(mut upload) => {
                if let Err(e) = upload.abort().await {
                    tracing::debug!(error = %e, "could not abort the copy's upload");
                }
            }
            // Aborted when dropped.
            Upload::InPlace(upload) => drop(upload),
        }
    }
}

/// The CPU work of a unit: the new columns computed and encoded, or a copied chunk
/// checked (and recompressed when the codec changes), for the output and the file
/// beside it.
pub(super) fn run(plan: &CopyPlan, unit: Unit, fetched: Located) -> Result<Done, Stop> {
    let (f, g, leaf) = match unit {
        Unit::Compute { f, g } => {
            let (output, beside) = compute(plan, &plan.files[f], g, &fetched)?;
            return Ok(Done::Computed(output, beside));
        }
        Unit::Copy { f, g, leaf } => (f, g, leaf),
    };
    let file = &plan.files[f];
    let chunk = file.metadata.row_group(g).column(leaf);
    if plan.validate && !file.reads.checked() {
        validate(file, g, leaf, &fetched).map_err(|reason| {
            Stop::Unsupported(format!(
                "column {} of row group {g} of {} does not decode: {reason}",
                chunk.column_path(),
                file.url
            ))
        })?;
    }
    let root = file
        .metadata
        .file_metadata()
        .schema_descr()
        .get_column_root_idx(leaf);
    let output = if plan.output.copies(root) {
        Some(copied(plan, file, g, leaf, &fetched, plan.output.codec)?)
    } else {
        None
    };
    let beside = match (&plan.beside, &output) {
        (Some(layout), Some(output))
            if layout.copies(root) && layout.codec == plan.output.codec =>
        {
            Some(output.clone())
        }
        (Some(layout), _) if layout.copies(root) => {
            Some(copied(plan, file, g, leaf, &fetched, layout.codec)?)
        }
        _ => None,
    };
    Ok(Done::Copied(output, beside))
}

/// Column `leaf` of row group `g` of `file`, fetched, as a file encoded with `codec`
/// has it: its bytes unchanged when the codec is its own (unless recompression is
/// asked), else recompressed page by page.
fn copied(
    plan: &CopyPlan,
    file: &InputFile,
    g: usize,
    leaf: usize,
    fetched: &Located,
    codec: Codec,
) -> Result<CopiedChunk, Stop> {
    let group = file.metadata.row_group(g);
    let chunk = group.column(leaf);
    let offsets = file
        .metadata
        .offset_index()
        .and_then(|o| o.get(g)?.get(leaf).cloned());
    let column_index = file
        .metadata
        .column_index()
        .and_then(|c| c.get(g)?.get(leaf).cloned())
        .filter(|c| !matches!(c, ColumnIndexMetaData::NONE));
    let same_codec = chunk.compression_codec() == CompressionCodec::from(codec);
    let verbatim = same_codec && !plan.recompress;
    let copied = if verbatim {
        copy_chunk(fetched, chunk, group.num_rows(), offsets, column_index)
    } else {
        recompress_chunk(
            fetched,
            chunk,
            group.num_rows(),
            offsets,
            column_index,
            codec,
        )
        .map_err(|e| plan.read_failed(file, DataFusionError::ParquetError(Box::new(e))))?
    };
    match copied {
        Ok((reader, close)) => Ok(CopiedChunk {
            reader,
            close: Box::new(close),
            verbatim,
        }),
        Err(reason) => Err(Stop::Unsupported(format!(
            "column {} of row group {g} of {}: {reason}",
            chunk.column_path(),
            file.url
        ))),
    }
}

/// The computed columns of row group `g` for the output and for the file beside it:
/// the input columns they read are decoded in batches, each column evaluated once per
/// batch and encoded for each file that has it, and nothing else is decoded.
pub(super) fn compute(
    plan: &CopyPlan,
    file: &InputFile,
    g: usize,
    fetched: &Located,
) -> Result<(Computed, Computed), Stop> {
    if plan.exprs.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let read_failed = |e: DataFusionError| plan.read_failed(file, e);
    let parquet = |e: ParquetError| read_failed(DataFusionError::ParquetError(Box::new(e)));
    let writers_of = |layout: &FileLayout| {
        layout
            .writers
            .create_column_writers(g)
            .map_err(|e| Stop::Failed(DataFusionError::ParquetError(Box::new(e))))
    };
    let mut writers = writers_of(&plan.output)?;
    let mut beside_writers = match &plan.beside {
        Some(layout) => writers_of(layout)?,
        None => Vec::new(),
    };
    let mask = ProjectionMask::roots(file.reader.parquet_schema(), plan.needed.iter().copied());
    let reader =
        ParquetRecordBatchReaderBuilder::new_with_metadata(fetched.clone(), file.reader.clone())
            .with_row_groups(vec![g])
            .with_projection(mask)
            .with_batch_size(plan.batch_size)
            .build()
            .map_err(parquet)?;
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
        // With its row count: a column computed from no column (`lit(1)`, `random()`)
        // reads a batch of no columns.
        let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
        let batch =
            RecordBatch::try_new_with_options(Arc::clone(&plan.needed_schema), columns, &options)
                .map_err(|e| read_failed(DataFusionError::ArrowError(Box::new(e), None)))?;
        let values = plan
            .exprs
            .iter()
            .enumerate()
            .map(|(n, expr)| {
                expr.evaluate(&batch)
                    .and_then(|v| v.into_array(batch.num_rows()))
                    .map_err(|e| Stop::Failed(plan.attribute(file, e, Cause::Computing(n))))
            })
            .collect::<Result<Vec<ArrayRef>, Stop>>()?;
        let layouts = std::iter::once((&plan.output, &mut writers)).chain(
            plan.beside
                .as_ref()
                .map(|layout| (layout, &mut beside_writers)),
        );
        for (layout, writers) in layouts {
            let mut leaf = 0;
            for (&i, field) in layout.computed.iter().zip(layout.computed_arrow.fields()) {
                for column in compute_leaves(field, &values[i]).map_err(parquet)? {
                    writers[leaf].write(&column).map_err(parquet)?;
                    leaf += 1;
                }
            }
        }
    }
    let close = |layout: &FileLayout,
                 writers: Vec<parquet::arrow::arrow_writer::ArrowColumnWriter>| {
        let mut chunks: Computed = (0..layout.computed.len()).map(|_| Vec::new()).collect();
        for (leaf, writer) in writers.into_iter().enumerate() {
            let root = layout.computed_parquet.get_column_root_idx(leaf);
            chunks[root].push(writer.close().map_err(parquet)?);
        }
        Ok::<_, Stop>(chunks)
    };
    let output = close(&plan.output, writers)?;
    let beside = match &plan.beside {
        Some(layout) => close(layout, beside_writers)?,
        None => Vec::new(),
    };
    Ok((output, beside))
}
