//! Sessions: a DataFusion context with Sluice's stores and planner.

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::memory::{
    MemoryCatalogProvider, MemoryCatalogProviderList, MemorySchemaProvider,
};
use datafusion::catalog::{CatalogProvider, CatalogProviderList};
use datafusion::datasource::MemTable;
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::file_format::options::ReadOptions;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::error::DataFusionError;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::context::{SQLOptions, SessionContext, SessionState};
use datafusion::prelude::DataFrame;
use datafusion::prelude::{CsvReadOptions, JsonReadOptions, ParquetReadOptions};
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use object_store::{ObjectMeta, ObjectStore};
use sluice_store::StoreRegistry;
use url::Url;

use crate::identity::{object_base, object_url};

use crate::checkpoint::CheckpointStore;
use crate::checkpoint::lineage::{Lineage, SourceObject};
use crate::error::guarded;
use crate::parquet_io::evolution::{
    CaseInsensitiveAdapterFactory, CaseInsensitiveFormat, FileSchema,
};
use crate::parquet_io::pins::{Pins, SourceFormat};
use crate::{Error, Frame, ParquetRead, Result, Runner};

use super::SessionBuilder;
use super::builder::{address, cluster_of};
use crate::cluster::Cluster;

/// A DataFusion session with Sluice's object stores (created per URL on first use) and
/// query planner. Cloning is O(1); clones share stores and configuration.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> sluice_core::Result<()> {
/// use sluice_core::Session;
/// let session = Session::new();
/// let frame = session.sql("SELECT 1 AS one", []).await?;
/// assert_eq!(frame.count().await?, 1);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Session {
    pub(super) inner: Arc<SessionInner>,
}

pub(super) struct SessionInner {
    pub(super) ctx: SessionContext,
    pub(super) stores: Arc<StoreRegistry>,
    pub(super) read_limits: crate::parquet_io::limits::ReadLimits,
    pub(super) column_copy: bool,
    pub(super) runner: Runner,
    // Without the feature `ballista` only its check is kept (it is `()`).
    #[cfg_attr(not(feature = "ballista"), allow(dead_code))]
    pub(super) cluster: Option<Cluster>,
    /// Why the runner `SLUICE_RUNNER` names cannot be used: reported when a plan runs,
    /// since `Session::new` cannot fail.
    pub(super) unusable_runner: Option<String>,
    /// DataFusion's own functions and the versions of user-defined ones, for keys
    /// (shared by sessions over the same context).
    pub(super) functions: Arc<std::sync::RwLock<Functions>>,
}

/// What cache keys know of a session's functions.
#[derive(Debug, Default)]
pub(super) struct Functions {
    /// DataFusion's functions as the session was built with them, by kind and name: the
    /// address of each function object.
    pub(super) builtin: std::collections::HashMap<(&'static str, String), usize>,
    /// The versions user-defined functions were registered with, by kind and name.
    pub(super) versions: std::collections::HashMap<(&'static str, String), String>,
}

impl std::fmt::Debug for SessionInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("session_id", &self.ctx.session_id())
            .field("stores", &self.stores)
            .field("read_limits", &self.read_limits)
            .field("column_copy", &self.column_copy)
            .field("runner", &self.runner)
            .finish()
    }
}

impl Default for Session {
    fn default() -> Self {
        Self::new()
    }
}

impl Session {
    /// A session with default settings: as many partitions as cores, 8192-row batches,
    /// a 4 GiB memory pool and a 1 GiB cap on Parquet column chunks (see
    /// [`limits`](crate::parquet_io::limits); both also read from the environment).
    pub fn new() -> Self {
        // Only a custom disk manager or cache configuration can make the runtime fail to
        // build, and the default has neither.
        SessionBuilder::default()
            .build()
            .expect("the default DataFusion runtime always builds")
    }

    /// A builder for a session with custom settings or stores.
    pub fn builder() -> SessionBuilder {
        SessionBuilder::default()
    }

    /// The DataFusion context, for what Sluice does not wrap.
    pub fn context(&self) -> &SessionContext {
        &self.inner.ctx
    }

    /// The session's object stores.
    pub fn stores(&self) -> &Arc<StoreRegistry> {
        &self.inner.stores
    }

    /// The storage settings: named stores and default result and run stores (see
    /// [`SessionBuilder::with_settings`](crate::SessionBuilder::with_settings)); an error
    /// when the discovered settings files could not be read.
    pub fn settings(&self) -> Result<&sluice_store::Settings> {
        Ok(self.inner.stores.settings()?)
    }

    /// The cap on a Parquet column chunk's uncompressed size that reads decode (see
    /// [`SessionBuilder::with_max_column_chunk_bytes`]).
    pub fn max_column_chunk_bytes(&self) -> u64 {
        self.inner.read_limits.max_column_chunk_bytes
    }

    /// The bytes remote Parquet reads may fetch ahead (see
    /// [`SessionBuilder::with_remote_read_ahead_bytes`]).
    pub fn remote_read_ahead_bytes(&self) -> u64 {
        self.inner.read_limits.remote_read_ahead_bytes
    }

    /// The caps of the session's Parquet reads.
    pub(crate) fn read_limits(&self) -> crate::parquet_io::limits::ReadLimits {
        self.inner.read_limits
    }

    /// Whether Parquet sinks may copy unchanged column chunks (see
    /// [`SessionBuilder::with_column_copy`]).
    pub fn column_copy(&self) -> bool {
        self.inner.column_copy
    }

    /// The size of the session's memory pool, in bytes, if it is bounded.
    pub fn memory_limit(&self) -> Option<usize> {
        match self.inner.ctx.runtime_env().memory_pool.memory_limit() {
            datafusion::execution::memory_pool::MemoryLimit::Finite(n) => Some(n),
            _ => None,
        }
    }

    /// Registers a user-defined scalar function, with the version cache keys know it
    /// by: a persisted task calling it is keyed by that version (bump it when the
    /// function's results change), and one calling a function registered without a
    /// version (through the DataFusion context) is refused. See also
    /// [`SessionBuilder::with_udf`].
    ///
    /// ```
    /// use datafusion::logical_expr::{ColumnarValue, Volatility, create_udf};
    /// use datafusion::arrow::datatypes::DataType;
    /// let double = create_udf(
    ///     "double",
    ///     vec![DataType::Float64],
    ///     DataType::Float64,
    ///     Volatility::Immutable,
    ///     std::sync::Arc::new(|args: &[ColumnarValue]| Ok(args[0].clone())),
    /// );
    /// let session = sluice_core::Session::new();
    /// session.register_udf(double, "2");
    /// ```
    pub fn register_udf(&self, udf: datafusion::logical_expr::ScalarUDF, version: &str) {
        self.record_version("scalar", udf.name(), udf.aliases(), version);
        self.inner.ctx.register_udf(udf);
    }

    /// Registers a user-defined aggregate function with its version (see
    /// [`register_udf`](Self::register_udf)).
    pub fn register_udaf(&self, udaf: datafusion::logical_expr::AggregateUDF, version: &str) {
        self.record_version("aggregate", udaf.name(), udaf.aliases(), version);
        self.inner.ctx.register_udaf(udaf);
    }

    /// Registers a user-defined window function with its version (see
    /// [`register_udf`](Self::register_udf)).
    pub fn register_udwf(&self, udwf: datafusion::logical_expr::WindowUDF, version: &str) {
        self.record_version("window", udwf.name(), udwf.aliases(), version);
        self.inner.ctx.register_udwf(udwf);
    }

    pub(super) fn record_version(
        &self,
        kind: &'static str,
        name: &str,
        aliases: &[String],
        version: &str,
    ) {
        let mut functions = self
            .inner
            .functions
            .write()
            .unwrap_or_else(|p| p.into_inner());
        for name in std::iter::once(name).chain(aliases.iter().map(String::as_str)) {
            functions
                .versions
                .insert((kind, name.to_string()), version.to_string());
        }
    }

    /// How a cache key covers `used`: DataFusion's own function (not one a user
    /// registered over it), a user-defined function with a version, or without.
    pub(crate) fn function_version(
        &self,
        used: &crate::checkpoint::key::FunctionUse,
    ) -> crate::checkpoint::key::FunctionVersion {
        use crate::checkpoint::key::FunctionVersion;
        let functions = self
            .inner
            .functions
            .read()
            .unwrap_or_else(|p| p.into_inner());
        let name = (used.kind, used.name.clone());
        if let Some(version) = functions.versions.get(&name) {
            return FunctionVersion::Versioned(version.clone());
        }
        let Some(&builtin) = functions.builtin.get(&name) else {
            return FunctionVersion::Unversioned;
        };
        // The plan's function is DataFusion's own, or DataFusion made another instance
        // of it (the session still has its own under that name): not a user's.
        let state = self.inner.ctx.state();
        let current = match used.kind {
            "scalar" => state.scalar_functions().get(&used.name).map(address),
            "aggregate" => state.aggregate_functions().get(&used.name).map(address),
            _ => state.window_functions().get(&used.name).map(address),
        };
        if used.address == builtin || current == Some(builtin) {
            FunctionVersion::BuiltIn
        } else {
            FunctionVersion::Unversioned
        }
    }

    pub(crate) fn state(&self) -> SessionState {
        self.inner.ctx.state()
    }

    /// Where the session's plans execute (see [`SessionBuilder::with_runner`]).
    pub fn runner(&self) -> &Runner {
        &self.inner.runner
    }

    /// This session (its stores, configuration and tables), with plans executing on
    /// `runner` instead.
    #[deprecated(
        since = "0.2.0",
        note = "choose the runner where it is used: `Session::builder().with_runner(..)` \
                for a session, `FlowOptions::with_runner` for a flow's runs"
    )]
    pub fn with_runner(&self, runner: Runner) -> Result<Session> {
        self.on_runner(runner)
    }

    /// This session with plans executing on `runner`: how a flow run applies
    /// [`FlowOptions::with_runner`](crate::FlowOptions::with_runner).
    pub(crate) fn on_runner(&self, runner: Runner) -> Result<Session> {
        Ok(Session {
            inner: Arc::new(SessionInner {
                ctx: self.inner.ctx.clone(),
                stores: Arc::clone(&self.inner.stores),
                read_limits: self.inner.read_limits,
                column_copy: self.inner.column_copy,
                cluster: cluster_of(&runner)?,
                runner,
                unusable_runner: None,
                functions: Arc::clone(&self.inner.functions),
            }),
        })
    }

    /// Fails when the session's runner came from `SLUICE_RUNNER` and cannot be used (a
    /// malformed value, or a cluster in a build without the feature `ballista`).
    pub(crate) fn usable(&self) -> Result<()> {
        match &self.inner.unusable_runner {
            None => Ok(()),
            Some(reason) => Err(Error::InvalidOption {
                option: crate::RUNNER_ENV,
                reason: reason.clone(),
            }),
        }
    }

    /// The cluster plans execute on, if the runner is one.
    pub(crate) fn cluster(&self) -> Option<&Cluster> {
        self.inner.cluster.as_ref()
    }

    /// Whether plans execute on a cluster (nothing below runs in this process then).
    pub(crate) fn on_cluster(&self) -> bool {
        !self.inner.runner.is_local()
    }

    /// Fails on a cluster: eager mode keeps task outputs in this process.
    pub(crate) fn refuse_eager(&self) -> Result<()> {
        if !self.on_cluster() {
            return Ok(());
        }
        Err(Error::Cluster {
            address: self.runner().to_string(),
            reason: "eager mode keeps every task's output in this process, which a cluster's \
                     tasks cannot read; run the flow in lazy mode (the default)"
                .into(),
        })
    }

    /// A lazy frame over Parquet data: one file, a directory (every `.parquet` file in
    /// it) or a glob (`data/*.parquet`), as a path or URL.
    ///
    /// Building the frame lists the files and reads their footers for the schema; no
    /// row data is read until a sink runs. Files whose schemas differ compatibly are
    /// read under one schema (see [`ParquetRead`] for the rule); column names are
    /// case-sensitive ([`read_parquet_with`](Self::read_parquet_with) takes options).
    pub async fn read_parquet(&self, location: &str) -> Result<Frame> {
        self.read_parquet_with(location, ParquetRead::default())
            .await
    }

    /// [`read_parquet`](Self::read_parquet) with options, such as case-insensitive
    /// column names across files.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> sluice_core::Result<()> {
    /// use sluice_core::{ParquetRead, ParquetWrite, Session};
    /// let session = Session::new();
    /// let dir = tempfile::tempdir().unwrap();
    /// let path = |name: &str| format!("{}/{name}", dir.path().display());
    /// let old = session.sql("SELECT 1.5 AS airport_fee", []).await?;
    /// old.write_parquet(&path("2022.parquet"), ParquetWrite::default()).await?;
    /// let new = session.sql("SELECT 2.5 AS \"Airport_fee\"", []).await?;
    /// new.write_parquet(&path("2025.parquet"), ParquetWrite::default()).await?;
    ///
    /// // Case-sensitive (the default): two columns, each null in the other file.
    /// let frame = session.read_parquet(&path("*.parquet")).await?;
    /// assert_eq!(frame.columns(), ["airport_fee", "Airport_fee"]);
    /// // Case-insensitive: one column, spelled as in the first file.
    /// let options = ParquetRead::default().with_case_insensitive_names(true);
    /// let frame = session.read_parquet_with(&path("*.parquet"), options).await?;
    /// assert_eq!(frame.columns(), ["airport_fee"]);
    /// assert_eq!(frame.count().await?, 2);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn read_parquet_with(&self, location: &str, options: ParquetRead) -> Result<Frame> {
        self.read_parquet_with_schema_cache(location, &options, None)
            .await
    }

    /// [`read_parquet_with`](Self::read_parquet_with), taking the schema from `cache`
    /// when the objects listed are the same (same URLs, sizes, ETags, modification
    /// times) and read with the same options as when it was cached: then no footer is
    /// read. A schema inferred is cached there.
    pub(crate) async fn read_parquet_with_schema_cache(
        &self,
        location: &str,
        read: &ParquetRead,
        cache: Option<&CheckpointStore>,
    ) -> Result<Frame> {
        let (url, extension) = self.source_url(location, "parquet")?;
        let options = ParquetReadOptions {
            file_extension: &extension,
            ..Default::default()
        };
        let schema = match cache {
            Some(cache) => SchemaSource::Cache(cache),
            None => SchemaSource::Infer,
        };
        match guarded(self.read_listing(&url, options, schema, Some(read))).await {
            Ok((df, objects)) => {
                Ok(self.listed_frame(&url, "parquet", read.describe(), df, objects))
            }
            // Schemas that do not unify: the error names the files already.
            Err(DataFusionError::External(boxed)) => match boxed.downcast::<Error>() {
                Ok(ours) => Err(*ours),
                Err(other) => Err(self
                    .diagnose(
                        &url,
                        &extension,
                        "parquet",
                        DataFusionError::External(other),
                    )
                    .await),
            },
            Err(e) => Err(self.diagnose(&url, &extension, "parquet", e).await),
        }
    }

    /// A frame over a listing table, with its lineage.
    pub(super) fn listed_frame(
        &self,
        url: &ListingTableUrl,
        format: &'static str,
        options: String,
        df: DataFrame,
        objects: Vec<ObjectMeta>,
    ) -> Frame {
        // Object URLs go into cache keys and manifests: never with credentials, and a
        // named store's objects by where they are (its bucket and endpoint), not by its
        // alias. (Local objects come out as `file:/path`: kept so, for the keys already
        // made.)
        let stores = &self.inner.stores;
        let base = Url::parse(url.object_store().as_str())
            .map(|u| stores.canonical(&u))
            .unwrap_or_default();
        let base = base.trim_end_matches('/');
        let objects = objects
            .into_iter()
            .map(|meta| SourceObject {
                url: format!("{base}/{}", meta.location),
                size: meta.size,
                e_tag: meta.e_tag,
                last_modified: meta.last_modified,
            })
            .collect();
        let shown = match Url::parse(url.as_str()) {
            Ok(u) if u.scheme() == sluice_store::NAMED_SCHEME => {
                let mut shown = stores.canonical(&u);
                if let Some(glob) = url.get_glob() {
                    if !shown.ends_with('/') {
                        shown.push('/');
                    }
                    shown.push_str(glob.as_str());
                }
                shown
            }
            _ => shown_url(url),
        };
        let lineage = Lineage::read(format, &shown, options, objects);
        Frame::from_dataframe(self.clone(), df, vec![shown], lineage)
    }

    /// A lazy frame over CSV data (a file, a directory or a glob). The schema is
    /// inferred from the first rows.
    pub async fn read_csv(&self, location: &str, options: CsvReadOptions<'_>) -> Result<Frame> {
        let (url, extension) = self.source_url(location, "csv")?;
        let options = options.file_extension(&extension);
        let described = format!(
            "header={} delimiter={} quote={} terminator={:?} escape={:?} comment={:?} \
             newlines_in_values={} schema={} infer_rows={} compression={:?} null_regex={:?} \
             truncated_rows={}",
            options.has_header,
            options.delimiter,
            options.quote,
            options.terminator,
            options.escape,
            options.comment,
            options.newlines_in_values,
            describe_schema(options.schema),
            options.schema_infer_max_records,
            options.file_compression_type.get_variant(),
            options.null_regex,
            options.truncated_rows,
        );
        let schema = match options.schema {
            Some(schema) => SchemaSource::Given(Arc::new(schema.clone())),
            None => SchemaSource::Infer,
        };
        match guarded(self.read_listing(&url, options, schema, None)).await {
            Ok((df, objects)) => Ok(self.listed_frame(&url, "csv", described, df, objects)),
            Err(e) => Err(self.diagnose(&url, &extension, "csv", e).await),
        }
    }

    /// A lazy frame over newline-delimited JSON (a file, a directory or a glob).
    pub async fn read_json(&self, location: &str) -> Result<Frame> {
        let (url, extension) = self.source_url(location, "json")?;
        let options = JsonReadOptions::default().file_extension(&extension);
        match guarded(self.read_listing(&url, options, SchemaSource::Infer, None)).await {
            Ok((df, objects)) => Ok(self.listed_frame(&url, "json", String::new(), df, objects)),
            Err(e) => Err(self.diagnose(&url, &extension, "json", e).await),
        }
    }

    /// A frame over batches already in memory.
    pub fn from_batches(&self, batches: Vec<RecordBatch>) -> Result<Frame> {
        let Some(first) = batches.first() else {
            return Err(Error::InvalidOption {
                option: "batches",
                reason: "at least one batch is needed for the schema".into(),
            });
        };
        let lineage = Lineage::batches(&batches);
        let table = MemTable::try_new(first.schema(), vec![batches])?;
        let df = self.inner.ctx.read_table(Arc::new(table))?;
        Ok(Frame::from_dataframe(self.clone(), df, vec![], lineage))
    }

    /// A frame defined by a SQL query over frames given by name: the task body of a
    /// SQL task. Only queries are allowed (no DDL or DML).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> sluice_core::Result<()> {
    /// use sluice_core::Session;
    /// let session = Session::new();
    /// let numbers = session.sql("SELECT * FROM (VALUES (1), (2), (3)) AS t(n)", []).await?;
    /// let big = session.sql("SELECT n FROM numbers WHERE n > 1", [("numbers", &numbers)]).await?;
    /// assert_eq!(big.count().await?, 2);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn sql<'a>(
        &self,
        query: &str,
        frames: impl IntoIterator<Item = (&'a str, &'a Frame)>,
    ) -> Result<Frame> {
        let state = self.state();
        let (catalog, schema) = {
            let options = state.config().options();
            (
                options.catalog.default_catalog.clone(),
                options.catalog.default_schema.clone(),
            )
        };
        // A catalog of its own, so that the names live only as long as this query.
        let catalogs = Arc::new(MemoryCatalogProviderList::new());
        let default_catalog = Arc::new(MemoryCatalogProvider::new());
        default_catalog.register_schema(&schema, Arc::new(MemorySchemaProvider::new()))?;
        catalogs.register_catalog(catalog, default_catalog);
        let scoped = SessionStateBuilder::new_from_existing(state)
            .with_catalog_list(catalogs)
            .build();
        let ctx = SessionContext::new_with_state(scoped);
        let mut sources = Vec::new();
        let mut inputs = Vec::new();
        for (name, frame) in frames {
            ctx.register_table(name, frame.to_dataframe().into_view())?;
            sources.extend(frame.sources().iter().cloned());
            inputs.push((name.to_string(), frame.lineage().clone()));
        }
        let options = SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false);
        let df = ctx
            .sql_with_options(query, options)
            .await
            .map_err(|e| Error::from_datafusion(e, &sources))?;
        let (_, plan) = df.into_parts();
        Ok(Frame::from_plan(
            self.clone(),
            plan,
            sources,
            Lineage::sql(query, inputs),
        ))
    }

    /// A listing table over `url` (a file, a prefix, or a prefix and a glob), as
    /// DataFusion's `read_*` build them, but keeping the glob of a URL, which
    /// `SessionContext::read_*` would drop.
    ///
    /// Returns the objects listed too: their identities make the frame's lineage. The
    /// schema is inferred from those objects (skipping empty files) unless it is
    /// given: with `evolution`, by unifying each file's schema (see [`ParquetRead`]);
    /// without, as DataFusion's `infer_schema` does.
    pub(super) async fn read_listing<'a>(
        &self,
        url: &ListingTableUrl,
        options: impl ReadOptions<'a>,
        schema: SchemaSource<'_>,
        evolution: Option<&ParquetRead>,
    ) -> datafusion::error::Result<(DataFrame, Vec<ObjectMeta>)> {
        let ctx = &self.inner.ctx;
        let state = ctx.state();
        let config = ctx.copied_config();
        let mut listing = options.to_listing_options(&config, ctx.copied_table_options());
        let store = state.runtime_env().object_store(url)?;
        // One remote Parquet file: its listing and its footer in one request.
        let single = evolution.is_some()
            && !url.is_collection()
            && url.get_glob().is_none()
            && crate::parquet_io::is_remote(url.as_str())
            && url.prefix().as_ref().ends_with(&listing.file_extension);
        let listed = if single {
            let cache = ctx.runtime_env().cache_manager.get_file_metadata_cache();
            crate::parquet_io::footer::listed_with_footer(
                store.as_ref(),
                url.prefix(),
                cache.as_ref(),
            )
            .await
        } else {
            None
        };
        let objects: Vec<ObjectMeta> = match listed {
            Some(object) => vec![object],
            None => {
                url.list_all_files(&state, store.as_ref(), &listing.file_extension)
                    .await?
                    .try_collect()
                    .await?
            }
        };
        if objects.is_empty() {
            return Err(DataFusionError::Plan(format!(
                "no files found at {}",
                shown_url(url)
            )));
        }
        // Empty files are skipped when a schema is inferred (writers leave them behind);
        // but when there is nothing else, the source is not Parquet at all.
        if evolution.is_some()
            && let Some(empty) = objects
                .first()
                .filter(|_| objects.iter().all(|o| o.size == 0))
        {
            return Err(DataFusionError::External(Box::new(Error::InvalidParquet {
                url: object_url(&object_base(url), empty),
                reason: "the file is empty (0 bytes)".into(),
            })));
        }
        let infer = || async {
            let files: Vec<ObjectMeta> = objects.iter().filter(|o| o.size > 0).cloned().collect();
            match evolution {
                Some(read) => {
                    unified_schema(url, &state, &store, &listing.format, &files, read).await
                }
                None => listing.format.infer_schema(&state, &store, &files).await,
            }
        };
        let schema = match schema {
            SchemaSource::Given(schema) => schema,
            SchemaSource::Infer => infer().await?,
            SchemaSource::Cache(cache) => {
                let digest = schema_digest(listing.format.get_ext().as_str(), evolution, &objects);
                match cache.cached_schema(&digest).await {
                    Some(schema) => {
                        tracing::debug!(source = %shown_url(url), "source schema from the schema cache");
                        schema
                    }
                    None => {
                        let schema = infer().await?;
                        cache.cache_schema(&digest, &schema).await;
                        schema
                    }
                }
            }
        };
        // The scan reads exactly the objects listed here, whose identities go into the
        // keys of the tasks over it (see `pins`).
        let pins = Pins::new(&object_base(url), &objects);
        listing.format = Arc::new(if evolution.is_some() {
            // Parquet: refuse column chunks that would inflate past the session's cap
            // before they are fetched (see `limits`).
            SourceFormat::parquet(listing.format, pins, self.inner.read_limits)
        } else {
            SourceFormat::new(listing.format, pins)
        });
        let mut table_config = ListingTableConfig::new(url.clone());
        let mut statistics_cache = ctx.runtime_env().cache_manager.get_file_statistic_cache();
        if evolution.is_some_and(ParquetRead::case_insensitive_names) {
            // DataFusion matches a file's columns by exact name: map each file's
            // spelling onto the table's, in the scan and in the statistics.
            listing.format = Arc::new(CaseInsensitiveFormat::wrap(listing.format));
            table_config =
                table_config.with_expr_adapter_factory(Arc::new(CaseInsensitiveAdapterFactory));
            // Its entries are keyed by file and table schema, not by how names match.
            statistics_cache = None;
        }
        let table = ListingTable::try_new(
            table_config
                .with_listing_options(listing)
                .with_schema(schema),
        )?
        .with_cache(statistics_cache);
        Ok((ctx.read_table(Arc::new(table))?, objects))
    }

    /// Resolves a source location; returns its URL and the file extension to list by.
    pub(super) fn source_url(
        &self,
        location: &str,
        format: &str,
    ) -> Result<(ListingTableUrl, String)> {
        let url = if location.contains("://") {
            // A named store on local disk or in memory is read at its own URL.
            let named = location
                .starts_with("store://")
                .then(|| self.inner.stores.resolve(location))
                .transpose()?
                .filter(|url| url.scheme() != sluice_store::NAMED_SCHEME);
            parse_remote(named.as_ref().map_or(location, Url::as_str))
        } else {
            let absolute = sluice_store::resolve_url(location)?;
            // Keep glob characters unescaped: the listing URL splits them off itself.
            let path = absolute.to_file_path().map_err(|()| {
                Error::Store(sluice_store::StoreError::InvalidUrl {
                    location: location.to_string(),
                    reason: "not a local path".into(),
                })
            })?;
            let mut text = path.display().to_string();
            if location.ends_with('/') && !text.ends_with('/') {
                text.push('/');
            }
            ListingTableUrl::parse(text)
        }
        .map_err(|e| {
            Error::Store(sluice_store::StoreError::InvalidUrl {
                location: location.to_string(),
                reason: crate::error::message(&e),
            })
        })?;
        // A single named object is read whatever its extension; a collection or a glob
        // picks the files with the format's extension.
        let single =
            !url.is_collection() && url.get_glob().is_none() && url.file_extension().is_some();
        let extension = if single {
            String::new()
        } else {
            format!(".{format}")
        };
        Ok((url, extension))
    }

    /// Finds out why DataFusion could not open a source, to name the object at fault.
    pub(super) async fn diagnose(
        &self,
        url: &ListingTableUrl,
        extension: &str,
        format: &'static str,
        error: DataFusionError,
    ) -> Error {
        let state = self.state();
        let store = match state.runtime_env().object_store(url.object_store()) {
            Ok(store) => store,
            Err(e) => return Error::from_datafusion(e, &[shown_url(url)]),
        };
        // One named object: ask for it directly (HTTP servers cannot list).
        if !url.is_collection() && url.get_glob().is_none() {
            match store.head(url.prefix()).await {
                Err(object_store::Error::NotFound { .. }) => {
                    return self.not_found(url, &store, format).await;
                }
                Err(e) => {
                    if let Some(classified) =
                        crate::error::classify_store_error(&e, &[shown_url(url)])
                    {
                        return classified;
                    }
                }
                Ok(_) => {}
            }
        }
        let listed = match url.list_all_files(&state, store.as_ref(), extension).await {
            Ok(stream) => stream.try_collect::<Vec<_>>().await,
            Err(e) => Err(e),
        };
        let files = match listed {
            Ok(files) => files,
            Err(e) => return Error::from_datafusion(e, &[shown_url(url)]),
        };
        if files.is_empty() {
            return self.not_found(url, &store, format).await;
        }
        if format == "parquet" {
            for meta in &files {
                let file_url = format!("{}{}", url.object_store().as_str(), meta.location);
                if let Err(e) = guarded(ParquetFormat::default().infer_schema(
                    &state,
                    &store,
                    std::slice::from_ref(meta),
                ))
                .await
                {
                    if let Some(store) = crate::error::find_store_error(&e) {
                        if let Some(classified) = crate::error::classify_store_error(
                            store,
                            std::slice::from_ref(&file_url),
                        ) {
                            return classified;
                        }
                        // The store failed (5xx, throttling, a body cut short) after
                        // its retries: the file may well be fine, so do not call it
                        // invalid Parquet.
                        if crate::error::store_failed(store) {
                            return Error::Read {
                                sources: vec![file_url],
                                source: e,
                            };
                        }
                    }
                    return Error::InvalidParquet {
                        url: file_url,
                        reason: crate::error::message(&e),
                    };
                }
            }
        }
        Error::from_datafusion(error, &[shown_url(url)])
    }
}

impl Session {
    /// Nothing at `url`: says whether the bucket itself is missing (a HEAD answer has
    /// no body to tell NoSuchKey from NoSuchBucket, so ask the bucket).
    pub(super) async fn not_found(
        &self,
        url: &ListingTableUrl,
        store: &Arc<dyn ObjectStore>,
        format: &'static str,
    ) -> Error {
        if matches!(url.scheme(), "s3" | "s3a" | "gs" | "az" | "abfs" | "abfss")
            && let Err(e) = store.list_with_delimiter(None).await
            && matches!(
                sluice_store::classify(&e),
                sluice_store::StoreErrorKind::NotFound
                    | sluice_store::StoreErrorKind::BucketNotFound
            )
        {
            return Error::BucketNotFound {
                url: shown_url(url),
            };
        }
        Error::SourceNotFound {
            url: shown_url(url),
            format,
        }
    }
}

/// Parses a URL with a scheme, splitting off a glob in its path (`s3://b/2023/*.parquet`):
/// DataFusion's own parser takes globs in local paths only.
pub(super) fn parse_remote(location: &str) -> datafusion::error::Result<ListingTableUrl> {
    let url = Url::parse(location).map_err(|e| DataFusionError::External(Box::new(e)))?;
    let path = url.path();
    let Some(first_glob) = path.find(['*', '?', '[']) else {
        return ListingTableUrl::parse(location);
    };
    let split = path[..first_glob].rfind('/').map_or(0, |i| i + 1);
    let pattern = percent_decode(&path[split..]);
    let mut base = url.clone();
    base.set_path(&path[..split]);
    let glob = glob::Pattern::new(&pattern).map_err(|e| DataFusionError::External(Box::new(e)))?;
    ListingTableUrl::try_new(base, Some(glob))
}

pub(super) fn percent_decode(text: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", text.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| text.to_string())
}

/// Where a read's schema comes from.
pub(super) enum SchemaSource<'a> {
    /// Inferred from the files (footers, or the first rows of CSV and JSON).
    Infer,
    /// Given by the caller.
    Given(SchemaRef),
    /// From a schema cache when the same objects were read before; inferred and
    /// cached otherwise.
    Cache(&'a CheckpointStore),
}

/// The schema of a Parquet source from each file's footer (read concurrently, as
/// DataFusion's `infer_schema` does), unified by the rule on [`ParquetRead`].
pub(super) async fn unified_schema(
    url: &ListingTableUrl,
    state: &SessionState,
    store: &Arc<dyn ObjectStore>,
    format: &Arc<dyn FileFormat>,
    files: &[ObjectMeta],
    read: &ParquetRead,
) -> datafusion::error::Result<SchemaRef> {
    let base = object_base(url);
    let concurrency = state
        .config_options()
        .execution
        .meta_fetch_concurrency
        .get();
    let mut schemas: Vec<FileSchema> = futures::stream::iter(files)
        .map(|object| {
            let base = &base;
            async move {
                // One request for the footer, whose tail is checked first; DataFusion's
                // inference, statistics and scans then find it in the session's cache.
                crate::parquet_io::footer::read_footer(
                    store.as_ref(),
                    &object_url(base, object),
                    object,
                    state
                        .runtime_env()
                        .cache_manager
                        .get_file_metadata_cache()
                        .as_ref(),
                )
                .await?;
                let schema = format
                    .infer_schema(state, store, std::slice::from_ref(object))
                    .await?;
                Ok::<_, DataFusionError>(FileSchema {
                    url: object_url(base, object),
                    schema,
                })
            }
        })
        .buffer_unordered(concurrency)
        .try_collect()
        .await?;
    // Listing order is not deterministic on every store; "first" means first by URL.
    schemas.sort_by(|a, b| a.url.cmp(&b.url));
    let schema = crate::parquet_io::evolution::unify(&schemas, read.case_insensitive_names())
        .map_err(|e| DataFusionError::External(Box::new(e)))?;
    Ok(Arc::new(schema))
}

/// The environment variable that turns the column copy off for sessions that do not
/// set it (`0`, `false`, `off` or `no`).
pub const COLUMN_COPY_ENV: &str = "SLUICE_COLUMN_COPY";

/// The digest a source's schema is cached under: the format, how schemas are unified
/// (the rule's version and the read's options) and every object's identity.
pub(super) fn schema_digest(
    format: &str,
    evolution: Option<&ParquetRead>,
    objects: &[ObjectMeta],
) -> String {
    let mut text = format!("{format}\n");
    if let Some(read) = evolution {
        // Schemas cached before files were unified by Sluice's rule are not reused.
        text.push_str(&format!("unified v1 [{}]\n", read.describe()));
    }
    let mut listed: Vec<String> = objects
        .iter()
        .map(|o| {
            format!(
                "{} {} {:?} {}",
                o.location,
                o.size,
                o.e_tag,
                o.last_modified.timestamp_nanos_opt().unwrap_or_default()
            )
        })
        .collect();
    listed.sort();
    text.push_str(&listed.join("\n"));
    crate::checkpoint::lineage::digest(text.as_bytes())
}

/// A schema as text, for lineages: fields in order with their types.
pub(super) fn describe_schema(schema: Option<&datafusion::arrow::datatypes::Schema>) -> String {
    match schema {
        None => "inferred".into(),
        Some(schema) => schema
            .fields()
            .iter()
            .map(|f| format!("{}:{}:{}", f.name(), f.data_type(), f.is_nullable()))
            .collect::<Vec<_>>()
            .join(","),
    }
}

/// A source URL as errors, records, lineage and logs show it: with its glob, without
/// credentials (`https://user:password@host/` shows as `https://host/`). (Not named
/// `display`: inside `tracing`'s macros that name is `tracing::field::display`.)
pub(super) fn shown_url(url: &ListingTableUrl) -> String {
    let mut text = Url::parse(url.as_str())
        .map(|u| sluice_store::redact(&u))
        .unwrap_or_else(|_| url.as_str().to_string());
    if let Some(glob) = url.get_glob() {
        if !text.ends_with('/') {
            text.push('/');
        }
        text.push_str(glob.as_str());
    }
    text
}

/// A session's object stores, where a store is opened by location
/// ([`CheckpointStore::open`](crate::CheckpointStore::open), ...).
impl AsRef<StoreRegistry> for Session {
    fn as_ref(&self) -> &StoreRegistry {
        &self.inner.stores
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_source_urls_carry_no_credentials() {
        for (location, shown) in [
            (
                "http://reader:pass-word@127.0.0.1:42273/in.parquet",
                "http://127.0.0.1:42273/in.parquet",
            ),
            (
                "s3://key:secret@bucket/a/*.parquet",
                "s3://bucket/a/*.parquet",
            ),
        ] {
            let url = parse_remote(location).unwrap();
            assert_eq!(shown_url(&url), shown);
        }
    }
}
