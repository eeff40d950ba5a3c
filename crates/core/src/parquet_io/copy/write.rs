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
    /// row groups of its files, and the checkpoint beside.
    pub(super) async fn write_outputs(
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
        Arc::clone(&plan.output_root),
        Arc::clone(&plan.props),
    )
    .map_err(parquet)?;
    let mut units = Vec::new();
    for &f in files {
        let descr = plan.files[f].metadata.file_metadata().schema_descr_ptr();
        for &g in &plan.files[f].groups {
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
    let result: Result<ParquetMetaData, Stop> = async {
        for &f in files {
            let file = &plan.files[f];
            let descr = file.metadata.file_metadata().schema_descr_ptr();
            for &g in &file.groups {
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
                    put(upload.as_mut(), part.as_mut(), buffer.take().into()).await?;
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
        let footer = writer.finish().map_err(parquet)?;
        put(upload.as_mut(), part.as_mut(), buffer.take().into()).await?;
        // Taken: once finishing, the upload is finished or failed whole.
        if let Some(upload) = upload.take() {
            upload.finish().await?;
        }
        Ok(footer)
    }
    .await;
    match result {
        Ok(footer) => {
            let part = match part {
                Some(part) => Some(part.finish(rows, footer).await?),
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
        // With its row count: a column computed from no column (`lit(1)`, `random()`)
        // reads a batch of no columns.
        let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
        let batch =
            RecordBatch::try_new_with_options(Arc::clone(&plan.needed_schema), columns, &options)
                .map_err(|e| read_failed(DataFusionError::ArrowError(Box::new(e), None)))?;
        let mut leaf = 0;
        for (n, (expr, field)) in plan
            .exprs
            .iter()
            .zip(plan.computed_arrow.fields())
            .enumerate()
        {
            let value = expr
                .evaluate(&batch)
                .and_then(|v| v.into_array(batch.num_rows()))
                .map_err(|e| Stop::Failed(plan.attribute(file, e, Cause::Computing(n))))?;
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
