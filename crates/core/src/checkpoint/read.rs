//! Reading a checkpoint: a scan of exactly the manifest's parts, with the manifest's
//! schema and sizes (no listing, no footer inference), whose bytes are checked against
//! the manifest's block checksums as they are fetched, before a decoder sees them.
//!
//! - [`VerifiedParts`] reads the checkpoint's parts: a read of any
//!   byte range fetches the whole blocks around it (each once: the blocks at the edges
//!   of a read are kept for the next), checks each against its BLAKE3, and hands over
//!   the range. A part that is missing, or that the store says is of another size, is
//!   a [`CorruptCheckpoint`](Error::CorruptCheckpoint) error, as is a block that does
//!   not match. A `limit` above a cache hit can therefore never publish an unchecked
//!   byte, and a hit reads each byte once.
//! - [`CheckpointRead::open`] checks, before anything streams, what can be checked
//!   cheaply: every part's footer (its last block or two, verified), its rows against
//!   the manifest's and its schema against the manifest's. Anything wrong there is a
//!   miss; the footers it read are handed to the scan, which reads them no more.
//! - The scan's readers check each part's rows again when they read its footer.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::catalog::{Session as DfSession, TableProvider};
use datafusion::datasource::TableType;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::parquet::ParquetFileReaderFactory;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::table_schema::TableSchema;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use datafusion::prelude::SessionContext;
use futures::FutureExt;
use futures::future::BoxFuture;
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore};
use parquet::arrow::arrow_reader::ArrowReaderOptions;
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::errors::ParquetError;
use parquet::file::metadata::{PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader};

use super::manifest::block_digest;
use super::{CheckpointStore, Manifest, ManifestFile};
use crate::plan::boundary::{CheckpointPart, CheckpointSource};
use crate::seam::TaskHandle;
use crate::{Error, Result};

fn known_corrupt() -> &'static Mutex<std::collections::HashSet<String>> {
    static KNOWN: std::sync::OnceLock<Mutex<std::collections::HashSet<String>>> =
        std::sync::OnceLock::new();
    KNOWN.get_or_init(Default::default)
}

/// Blocks kept between reads of a scan (the edges of the last reads): about 4 MiB.
const CACHED_BLOCKS: usize = 16;

/// A read spanning more blocks than this fetches all of them, the cached ones too
/// (2 MiB: a row group's piece of the column copy's hit is up to 8 MiB).
const WHOLE_READ_BLOCKS: u64 = 8;

/// A checkpoint being read: its manifest, the footers the lookup checked, and what a
/// task boundary over its scan needs to invalidate it if it turns out corrupt.
#[derive(Debug)]
pub(crate) struct CheckpointRead {
    pub(crate) store: CheckpointStore,
    task: String,
    pub(crate) manifest: Manifest,
    pub(crate) parts: Arc<VerifiedParts>,
    /// Each part's footer, by object path, as the lookup read and checked it.
    footers: HashMap<Path, Arc<ParquetMetaData>>,
    invalidated: AtomicBool,
    /// Read by a cluster's executor: a corrupt checkpoint is reported to the client,
    /// which invalidates it.
    pub(crate) on_executor: bool,
}

impl CheckpointRead {
    /// A read of `manifest`'s checkpoint, with no footer read yet; `verify`: whether to
    /// check the parts' block checksums (not for a checkpoint this run has just written
    /// and hashed).
    pub(crate) fn new(store: CheckpointStore, manifest: Manifest, verify: bool) -> Arc<Self> {
        Arc::new(Self::unshared(store, manifest, verify))
    }

    pub(crate) fn unshared(store: CheckpointStore, manifest: Manifest, verify: bool) -> Self {
        let parts = Arc::new(VerifiedParts::new(&store, &manifest, verify));
        Self {
            task: manifest.task.clone(),
            store,
            manifest,
            parts,
            footers: HashMap::new(),
            invalidated: AtomicBool::new(false),
            on_executor: false,
        }
    }

    /// A verified read of a checkpoint this run has just written, whose parts' footers
    /// (by object path) its writer gave.
    pub(crate) fn with_footers(
        store: CheckpointStore,
        manifest: Manifest,
        footers: HashMap<Path, Arc<ParquetMetaData>>,
    ) -> Arc<Self> {
        let mut read = Self::unshared(store, manifest, true);
        read.footers = footers;
        Arc::new(read)
    }

    /// Opens a checkpoint the lookup found: reads and checks every part's footer (its
    /// size, checksums, rows and schema) and the manifest's schema against `planned`,
    /// the schema this run's plan gives the task's output. `Ok(Err(reason))` is a miss;
    /// `Err` an error of the store (access denied, unreachable), which is no miss.
    pub(crate) async fn open(
        store: CheckpointStore,
        manifest: Manifest,
        verify: bool,
        planned: Option<&Schema>,
    ) -> Result<std::result::Result<Arc<Self>, String>> {
        let schema = match manifest.schema() {
            Ok(schema) => schema,
            Err(e) => return Ok(Err(e.to_string())),
        };
        if let Some(planned) = planned
            && let Some(difference) = schema_difference(&schema, planned)
        {
            return Ok(Err(format!(
                "its schema is not the one this run plans for the task: {difference}"
            )));
        }
        let mut read = Self::unshared(store, manifest, verify);
        let footers = futures::future::join_all(read.manifest.files.iter().map(|file| {
            let parts = Arc::clone(&read.parts);
            let path = read.part_path(file);
            async move {
                let footer = parts.footer(&path, file).await;
                (path, footer)
            }
        }))
        .await;
        for (path, footer) in footers {
            match footer {
                Ok(footer) => {
                    if let Some(difference) = footer_difference(&footer, &schema) {
                        return Ok(Err(format!(
                            "part {} does not hold the manifest's schema: {difference}",
                            relative(&path)
                        )));
                    }
                    read.footers.insert(path, footer);
                }
                Err(e) => match corrupt_reason(&e) {
                    Some(reason) => return Ok(Err(reason)),
                    None => {
                        return Err(super::store_error(read.store.url(), &path, "get", e));
                    }
                },
            }
        }
        Ok(Ok(Arc::new(read)))
    }

    /// The manifest read.
    pub(crate) fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The identity of a checkpoint as the known-corrupt set names it: its directory
    /// and its id.
    fn known_as(store: &CheckpointStore, manifest: &Manifest) -> String {
        format!(
            "{}@{}",
            store.key_url(&manifest.task, &manifest.key),
            manifest.id
        )
    }

    /// Whether a stream in this process found this checkpoint corrupt.
    pub(crate) fn is_known_corrupt(store: &CheckpointStore, manifest: &Manifest) -> bool {
        let identity = Self::known_as(store, manifest);
        known_corrupt()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&identity)
    }

    /// The checkpoint directory's URL.
    pub(crate) fn url(&self) -> String {
        self.store.key_url(&self.task, &self.manifest.key)
    }

    fn part_path(&self, file: &ManifestFile) -> Path {
        self.parts.path_of(file)
    }

    /// A table over exactly the checkpoint's parts, with the manifest's schema.
    pub(crate) fn table(self: &Arc<Self>) -> Result<Arc<dyn TableProvider>> {
        Ok(Arc::new(CheckpointTable {
            read: Arc::clone(self),
            schema: self.manifest.schema()?,
        }))
    }

    /// A scan of the checkpoint, as a logical plan.
    pub(crate) fn scan_plan(self: &Arc<Self>, context: &SessionContext) -> Result<LogicalPlan> {
        Ok(context.read_table(self.table()?)?.into_parts().1)
    }

    /// The reader of this checkpoint's parts (through its verifying store), for its
    /// scan here and for one a cluster's executor decoded (DataFusion's protobuf does
    /// not encode a reader).
    pub(crate) fn reader_factory(self: &Arc<Self>) -> Arc<dyn ParquetFileReaderFactory> {
        Arc::new(CheckpointReaderFactory {
            read: Arc::clone(self),
        })
    }
}

/// How footers are decoded, the checkpoint's parts' and the column copy's inputs': with
/// each chunk's page encoding statistics kept as written (not as a mask), so that a
/// chunk the copy moves states them as its input did.
pub(crate) fn footer_options() -> parquet::file::metadata::ParquetMetaDataOptions {
    parquet::file::metadata::ParquetMetaDataOptions::new().with_encoding_stats_as_mask(false)
}

/// How two schemas differ in names, types or nullability (metadata aside), if they do.
pub(crate) fn schema_difference(stored: &Schema, planned: &Schema) -> Option<String> {
    let line = |f: &datafusion::arrow::datatypes::Field| {
        format!(
            "{}: {}{}",
            f.name(),
            f.data_type(),
            if f.is_nullable() { "" } else { " not null" }
        )
    };
    let stored: Vec<String> = stored.fields().iter().map(|f| line(f)).collect();
    let planned: Vec<String> = planned.fields().iter().map(|f| line(f)).collect();
    (stored != planned).then(|| {
        format!(
            "the checkpoint holds ({}), the plan gives ({})",
            stored.join(", "),
            planned.join(", ")
        )
    })
}

/// How a part's footer disagrees with the manifest's schema, if it does. Strings and
/// binaries are told apart from other types, not by their Arrow layout: a part the
/// column copy wrote keeps its source's `Utf8` where the plan reads `Utf8View`, the
/// same Parquet column either way, read as the manifest says.
fn footer_difference(footer: &ParquetMetaData, schema: &Schema) -> Option<String> {
    let file = footer.file_metadata();
    match parquet::arrow::parquet_to_arrow_schema(file.schema_descr(), file.key_value_metadata()) {
        Ok(found) => schema_difference(&as_views(&found), &as_views(schema)),
        Err(e) => Some(format!("its schema does not convert to Arrow: {e}")),
    }
}

/// `schema` with every top-level string and binary column as its view type.
fn as_views(schema: &Schema) -> Schema {
    use datafusion::arrow::datatypes::DataType;
    let fields: Vec<_> = schema
        .fields()
        .iter()
        .map(|f| {
            let view = match f.data_type() {
                DataType::Utf8 | DataType::LargeUtf8 => DataType::Utf8View,
                DataType::Binary | DataType::LargeBinary => DataType::BinaryView,
                other => other.clone(),
            };
            f.as_ref().clone().with_data_type(view)
        })
        .collect();
    Schema::new(fields)
}

/// A part's path relative to its checkpoint's directory (`data-<id>/part-<n>.parquet`).
fn relative(path: &Path) -> String {
    let parts: Vec<_> = path.parts().collect();
    let n = parts.len();
    parts[n.saturating_sub(2)..]
        .iter()
        .map(|p| p.as_ref())
        .collect::<Vec<_>>()
        .join("/")
}

/// The reason of a `CorruptCheckpoint` error inside a store error, if there is one.
fn corrupt_reason(error: &object_store::Error) -> Option<String> {
    find_corrupt(error).map(|(_, reason)| reason)
}

/// What a cache hit's boundary asks of the checkpoint it reads.
impl CheckpointSource for CheckpointRead {
    fn reencode(&self) -> bool {
        self.manifest.reencode
    }

    /// A [`CorruptCheckpoint`](Error::CorruptCheckpoint) under the scan (a block that
    /// does not match its checksum, a missing or resized part), or any other error but
    /// the store's own (a page that does not decode): the checkpoint is corrupt.
    fn corruption(&self, error: &DataFusionError) -> Option<String> {
        if let Some((_, reason)) = find_corrupt(error) {
            return Some(reason);
        }
        if crate::error::find_in_chain::<object_store::Error>(error).is_some() {
            return None;
        }
        Some(crate::error::message(error))
    }

    /// The checkpoint turned out corrupt while streaming: invalidates it (once, and
    /// only the manifest that was judged), fails the task run, and returns the error to
    /// raise.
    fn corrupt(&self, task: &TaskHandle, reason: String) -> Error {
        // On an executor the client invalidates it when the job's error comes back.
        if !self.on_executor && !self.invalidated.swap(true, Ordering::AcqRel) {
            // Known bad in this process at once; removed from the store in the
            // background (the stream that found it cannot wait), and counted: the
            // failed flow run waits for it before it returns.
            known_corrupt()
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(Self::known_as(&self.store, &self.manifest));
            let store = self.store.clone();
            let (task, key) = (self.task.clone(), self.manifest.key.clone());
            let judged = self.manifest.id.clone();
            sluice_store::cleanup::spawn("invalidate a corrupt checkpoint", async move {
                store.invalidate(&task, &key, Some(&judged)).await
            });
        }
        let error = Error::CorruptCheckpoint {
            task: self.task.clone(),
            checkpoint: self.url(),
            reason,
        };
        task.fail(&error);
        Error::Task {
            task: self.task.clone(),
            source: Box::new(error),
        }
    }

    fn parts(&self) -> Option<Vec<CheckpointPart>> {
        let url = self.url();
        self.manifest
            .files
            .iter()
            .map(|file| {
                let location = self.part_path(file);
                Some(CheckpointPart {
                    url: format!("{url}/{}", file.path),
                    metadata: Arc::clone(self.footers.get(&location)?),
                    location,
                })
            })
            .collect()
    }

    fn verified(&self) -> bool {
        self.parts.verify
    }

    fn read_ranges<'a>(
        &'a self,
        location: &'a Path,
        ranges: &'a [Range<u64>],
    ) -> BoxFuture<'a, DfResult<Vec<Bytes>>> {
        async move {
            let file = self.parts.part(location).ok_or_else(|| {
                DataFusionError::External(Box::new(
                    self.parts
                        .corrupt(format!("{} is not one of its parts", relative(location))),
                ))
            })?;
            let reads = ranges
                .iter()
                .map(|range| self.parts.read(location, file, range.clone()));
            futures::future::try_join_all(reads)
                .await
                .map_err(|e| DataFusionError::ObjectStore(Box::new(e)))
        }
        .boxed()
    }
}

/// The task and reason of the first [`Error::CorruptCheckpoint`] in `error`'s chain.
pub(crate) fn find_corrupt(error: &(dyn std::error::Error + 'static)) -> Option<(String, String)> {
    crate::error::chain(error).find_map(|e| match e.downcast_ref::<Error>() {
        Some(Error::CorruptCheckpoint { task, reason, .. }) => Some((task.clone(), reason.clone())),
        _ => None,
    })
}

/// A table over a checkpoint's parts.
#[derive(Debug)]
pub(crate) struct CheckpointTable {
    pub(crate) read: Arc<CheckpointRead>,
    schema: SchemaRef,
}

#[async_trait]
impl TableProvider for CheckpointTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn DfSession,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.read.scan(state, projection, limit)
    }
}

impl CheckpointRead {
    /// A Parquet scan of exactly the manifest's parts, through [`VerifiedParts`]. The
    /// parts are spread over the session's target partitions (DataFusion may split them
    /// further by byte range).
    pub(crate) fn scan(
        self: &Arc<Self>,
        state: &dyn DfSession,
        projection: Option<&Vec<usize>>,
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let schema = self.manifest.schema().map_err(DataFusionError::from)?;
        let groups = state.config().target_partitions().max(1);
        let mut files: Vec<Vec<PartitionedFile>> = vec![Vec::new(); groups];
        for (i, file) in self.manifest.files.iter().enumerate() {
            files[i % groups].push(PartitionedFile::new(
                self.part_path(file).to_string(),
                file.size,
            ));
        }
        let file_groups: Vec<FileGroup> = files
            .into_iter()
            .filter(|g| !g.is_empty())
            .map(FileGroup::new)
            .collect();
        let source = ParquetSource::new(TableSchema::from(schema))
            .with_parquet_file_reader_factory(self.reader_factory());
        let url = ObjectStoreUrl::parse(self.store.store_url())?;
        let conf = FileScanConfigBuilder::new(url, Arc::new(source))
            .with_file_groups(file_groups)
            .with_projection_indices(projection.cloned())?
            .with_limit(limit)
            .build();
        Ok(DataSourceExec::from_data_source(conf))
    }
}

/// Makes readers of a checkpoint's parts over its [`VerifiedParts`].
#[derive(Debug)]
struct CheckpointReaderFactory {
    read: Arc<CheckpointRead>,
}

impl ParquetFileReaderFactory for CheckpointReaderFactory {
    fn create_reader(
        &self,
        _partition_index: usize,
        partitioned_file: PartitionedFile,
        _metadata_size_hint: Option<usize>,
        _metrics: &ExecutionPlanMetricsSet,
    ) -> DfResult<Box<dyn AsyncFileReader + Send>> {
        let location = partitioned_file.object_meta.location;
        let parts = &self.read.parts;
        let file = parts.part(&location).cloned().ok_or_else(|| {
            DataFusionError::External(Box::new(parts.corrupt(format!(
                "the scan reads {location}, which the manifest does not list"
            ))))
        })?;
        Ok(Box::new(CheckpointReader {
            footer: self.read.footers.get(&location).cloned(),
            parts: Arc::clone(parts),
            location,
            file,
        }))
    }
}

/// Reads one part through its checkpoint's [`VerifiedParts`], with the footer the
/// lookup read.
struct CheckpointReader {
    footer: Option<Arc<ParquetMetaData>>,
    parts: Arc<VerifiedParts>,
    location: Path,
    file: ManifestFile,
}

/// Ranges closer than this are read as one (the column chunks of a row group are
/// next to each other).
const COALESCE_GAP: u64 = 1 << 20;

impl CheckpointReader {
    async fn read(&self, range: Range<u64>) -> parquet::errors::Result<Bytes> {
        self.parts
            .read(&self.location, &self.file, range)
            .await
            .map_err(|e| ParquetError::External(Box::new(e)))
    }
}

impl AsyncFileReader for CheckpointReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        async move { self.read(range).await }.boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        async move {
            // Merge ranges that are close, read the merged ones together, and hand each
            // range its slice.
            let mut order: Vec<usize> = (0..ranges.len()).collect();
            order.sort_by_key(|&i| ranges[i].start);
            let mut merged: Vec<Range<u64>> = Vec::new();
            for &i in &order {
                let range = &ranges[i];
                match merged.last_mut() {
                    Some(last) if range.start <= last.end.saturating_add(COALESCE_GAP) => {
                        last.end = last.end.max(range.end);
                    }
                    _ => merged.push(range.clone()),
                }
            }
            let fetched =
                futures::future::try_join_all(merged.iter().map(|r| self.read(r.clone()))).await?;
            Ok(ranges
                .iter()
                .map(|range| {
                    let (m, bytes) = merged
                        .iter()
                        .zip(&fetched)
                        .find(|(m, _)| m.start <= range.start && range.end <= m.end)
                        .expect("every range is inside a merged one");
                    bytes.slice((range.start - m.start) as usize..(range.end - m.start) as usize)
                })
                .collect())
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let wants_index = options.is_some_and(|o| {
                o.column_index_policy() != PageIndexPolicy::Skip
                    || o.offset_index_policy() != PageIndexPolicy::Skip
            });
            let metadata = match (&self.footer, wants_index) {
                (Some(footer), false) => Arc::clone(footer),
                _ => {
                    let mut reader = ParquetMetaDataReader::new().with_prefetch_hint(Some(
                        self.file.size.min(self.parts.block_size) as usize,
                    ));
                    if let Some(options) = options {
                        reader = reader
                            .with_metadata_options(Some(options.metadata_options().clone()))
                            .with_column_index_policy(options.column_index_policy())
                            .with_offset_index_policy(options.offset_index_policy());
                    }
                    let size = self.file.size;
                    Arc::new(reader.load_and_finish(&mut *self, size).await?)
                }
            };
            let rows = u64::try_from(metadata.file_metadata().num_rows()).unwrap_or(u64::MAX);
            if rows != self.file.rows {
                return Err(ParquetError::External(Box::new(self.parts.corrupt(
                    format!(
                        "part {} holds {rows} rows, the manifest says {}",
                        self.file.path, self.file.rows
                    ),
                ))));
            }
            Ok(metadata)
        }
        .boxed()
    }
}

/// Reads of a checkpoint's parts that fetch whole blocks and check each against the
/// manifest before handing any byte over (see the module's documentation).
pub(crate) struct VerifiedParts {
    inner: Arc<dyn ObjectStore>,
    /// `checkpoints/<task>/<key>`.
    dir: Path,
    task: String,
    /// The checkpoint's URL, for errors.
    url: String,
    block_size: u64,
    parts: HashMap<Path, ManifestFile>,
    pub(crate) verify: bool,
    /// Verified blocks at the edges of the last reads, by part and index.
    cache: Mutex<VecDeque<(Path, u64, Bytes)>>,
}

impl fmt::Debug for VerifiedParts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifiedParts")
            .field("checkpoint", &self.url)
            .field("parts", &self.parts.len())
            .field("verify", &self.verify)
            .finish()
    }
}

impl VerifiedParts {
    fn new(store: &CheckpointStore, manifest: &Manifest, verify: bool) -> Self {
        let dir = store.key_dir(&manifest.task, &manifest.key);
        let mut this = Self {
            inner: Arc::clone(store.object_store()),
            dir,
            task: manifest.task.clone(),
            url: store.key_url(&manifest.task, &manifest.key),
            block_size: manifest.block_size.max(1),
            parts: HashMap::new(),
            verify,
            cache: Mutex::new(VecDeque::new()),
        };
        this.parts = manifest
            .files
            .iter()
            .map(|f| (this.path_of(f), f.clone()))
            .collect();
        this
    }

    fn path_of(&self, file: &ManifestFile) -> Path {
        file.path
            .split('/')
            .filter(|p| !p.is_empty())
            .fold(self.dir.clone(), |p, part| p.join(part))
    }

    fn part(&self, location: &Path) -> Option<&ManifestFile> {
        self.parts.get(location)
    }

    fn corrupt(&self, reason: String) -> Error {
        Error::CorruptCheckpoint {
            task: self.task.clone(),
            checkpoint: self.url.clone(),
            reason,
        }
    }

    fn store_error(&self, reason: String) -> object_store::Error {
        object_store::Error::Generic {
            store: "checkpoint",
            source: Box::new(self.corrupt(reason)),
        }
    }

    /// Reads and checks a part's footer: its last block (or two, for a footer longer
    /// than a block), the Parquet magic and the footer's length, then decodes it.
    async fn footer(
        &self,
        location: &Path,
        file: &ManifestFile,
    ) -> object_store::Result<Arc<ParquetMetaData>> {
        const TAIL: u64 = 8;
        if file.size < 12 {
            return Err(self.store_error(format!(
                "part {} has {} bytes, too few for a Parquet file",
                file.path, file.size
            )));
        }
        // The last block: a footer is usually shorter.
        let mut start = (file.size - 1) / self.block_size * self.block_size;
        let mut bytes = self.read(location, file, start..file.size).await?;
        if (bytes.len() as u64) < TAIL {
            // A last block shorter than the tail: read from the block before.
            start = file.size - TAIL;
            bytes = self.read(location, file, start..file.size).await?;
        }
        let tail = &bytes[bytes.len() - TAIL as usize..];
        if &tail[4..] != b"PAR1" {
            return Err(self.store_error(format!(
                "part {} does not end with the Parquet magic bytes",
                file.path
            )));
        }
        let footer = u64::from(u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]));
        if footer + TAIL + 4 > file.size {
            return Err(self.store_error(format!(
                "part {}'s footer claims {footer} bytes of its {}",
                file.path, file.size
            )));
        }
        if footer + TAIL > bytes.len() as u64 {
            start = file.size - footer - TAIL;
            bytes = self.read(location, file, start..file.size).await?;
        }
        let end = bytes.len() - TAIL as usize;
        let metadata = bytes.slice(end - footer as usize..end);
        let options = footer_options();
        let decoded = std::panic::catch_unwind(|| {
            ParquetMetaDataReader::decode_metadata_with_options(&metadata, Some(&options))
        });
        let metadata = match decoded {
            Ok(Ok(metadata)) => metadata,
            Ok(Err(e)) => {
                return Err(
                    self.store_error(format!("part {}'s footer does not decode: {e}", file.path))
                );
            }
            Err(panic) => {
                return Err(self.store_error(format!(
                    "part {}'s footer does not decode: {}",
                    file.path,
                    crate::error::panic_message(panic.as_ref())
                )));
            }
        };
        let rows = u64::try_from(metadata.file_metadata().num_rows()).unwrap_or(u64::MAX);
        if rows != file.rows {
            return Err(self.store_error(format!(
                "part {} holds {rows} rows, the manifest says {}",
                file.path, file.rows
            )));
        }
        Ok(Arc::new(metadata))
    }

    /// `range` of a part, from whole blocks each checked against the manifest.
    async fn read(
        &self,
        location: &Path,
        file: &ManifestFile,
        range: Range<u64>,
    ) -> object_store::Result<Bytes> {
        if range.end > file.size || range.start > range.end {
            return Err(object_store::Error::Generic {
                store: "checkpoint",
                source: format!(
                    "a read of bytes {range:?} of part {}, which has {} bytes",
                    file.path, file.size
                )
                .into(),
            });
        }
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        let size = self.block_size;
        let first = range.start / size;
        let last = (range.end - 1) / size;
        let mut blocks: Vec<Option<Bytes>> =
            (first..=last).map(|i| self.cached(location, i)).collect();
        // One request for the blocks between the first and the last missing one.
        let missing: Vec<u64> = (first..=last)
            .filter(|i| blocks[(i - first) as usize].is_none())
            .collect();
        let mut whole = None;
        if let (Some(&from), Some(&to)) = (missing.first(), missing.last()) {
            // A long read fetches all its blocks, the cached ones too (those at its ends:
            // the block where the previous read ended): the range is then a slice of one
            // fetch, where piecing it together would copy all of it, and hold it twice
            // meanwhile.
            let (from, to) = if last - first > WHOLE_READ_BLOCKS {
                (first, last)
            } else {
                (from, to)
            };
            let fetch = from * size..((to + 1) * size).min(file.size);
            let fetched = self.fetch(location, file, fetch.clone()).await?;
            if from == first && to == last {
                // Every block from this one request: the range is a slice of it.
                whole = Some((fetch.start, fetched.clone()));
            }
            for i in from..=to {
                let start = ((i - from) * size) as usize;
                let end = (((i + 1) * size).min(file.size) - fetch.start) as usize;
                let block = fetched.slice(start..end);
                if self.verify {
                    let expected = file.blocks.get(i as usize).map(String::as_str);
                    if expected != Some(block_digest(&block).as_str()) {
                        return Err(self.store_error(format!(
                            "block {i} (bytes {}..{}) of part {} does not match its checksum",
                            i * size,
                            (i + 1) * size,
                            file.path
                        )));
                    }
                }
                blocks[(i - first) as usize] = Some(block);
            }
            // Keep the edges: the next read of this part most likely starts in the
            // block where this one ended (and a footer's read ends where data began).
            self.keep(location, from, blocks[(from - first) as usize].clone());
            self.keep(location, to, blocks[(to - first) as usize].clone());
        }
        let len = (range.end - range.start) as usize;
        if let Some((at, fetched)) = whole {
            let offset = (range.start - at) as usize;
            return Ok(fetched.slice(offset..offset + len));
        }
        let blocks: Vec<Bytes> = blocks.into_iter().flatten().collect();
        let offset = (range.start - first * size) as usize;
        if blocks.len() == 1 {
            return Ok(blocks[0].slice(offset..offset + len));
        }
        let mut out = BytesMut::with_capacity(len);
        let mut skip = offset;
        for block in &blocks {
            if skip >= block.len() {
                skip -= block.len();
                continue;
            }
            let take = (block.len() - skip).min(len - out.len());
            out.extend_from_slice(&block[skip..skip + take]);
            skip = 0;
            if out.len() == len {
                break;
            }
        }
        Ok(out.freeze())
    }

    /// One ranged read of a part from the store behind, checked for the part's size.
    async fn fetch(
        &self,
        location: &Path,
        file: &ManifestFile,
        range: Range<u64>,
    ) -> object_store::Result<Bytes> {
        let options = GetOptions {
            range: Some(GetRange::Bounded(range.clone())),
            ..Default::default()
        };
        let result = match self.inner.get_opts(location, options).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(self.store_error(format!("part {} is missing", file.path)));
            }
            Err(e) => {
                // A range past the end of a part that is shorter than it should be is an
                // error on some stores: say so, rather than how the store put it.
                use object_store::ObjectStoreExt;
                return match self.inner.head(location).await {
                    Ok(meta) if meta.size != file.size => Err(self.store_error(format!(
                        "part {} has {} bytes, the manifest says {}",
                        file.path, meta.size, file.size
                    ))),
                    Err(object_store::Error::NotFound { .. }) => {
                        Err(self.store_error(format!("part {} is missing", file.path)))
                    }
                    _ => Err(e),
                };
            }
        };
        if result.meta.size != file.size {
            return Err(self.store_error(format!(
                "part {} has {} bytes, the manifest says {}",
                file.path, result.meta.size, file.size
            )));
        }
        let bytes = result.bytes().await?;
        if bytes.len() as u64 != range.end - range.start {
            return Err(self.store_error(format!(
                "a read of bytes {range:?} of part {} returned {} bytes",
                file.path,
                bytes.len()
            )));
        }
        Ok(bytes)
    }

    fn cached(&self, location: &Path, index: u64) -> Option<Bytes> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .iter()
            .find(|(path, i, _)| *i == index && path == location)
            .map(|(_, _, bytes)| bytes.clone())
    }

    /// Keeps a copy of `block` (a slice would keep the whole fetch it came from).
    fn keep(&self, location: &Path, index: u64, block: Option<Bytes>) {
        let Some(block) = block else { return };
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache
            .iter()
            .any(|(path, i, _)| *i == index && path == location)
        {
            return;
        }
        if cache.len() >= CACHED_BLOCKS {
            cache.pop_front();
        }
        cache.push_back((location.clone(), index, Bytes::copy_from_slice(&block)));
    }
}
