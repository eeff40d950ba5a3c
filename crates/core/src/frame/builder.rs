//! Building a session: its configuration, stores, functions, runner and planner.

use std::sync::Arc;

use datafusion::execution::SessionStateBuilder;
use datafusion::execution::cache::cache_manager::CacheManagerConfig;
use datafusion::execution::context::{SessionContext, SessionState};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::SessionConfig;
use object_store::ObjectStore;
use sluice_store::StoreRegistry;
use url::Url;

use super::session::*;
use crate::cluster::Cluster;
use crate::planner::SluiceQueryPlanner;
use crate::{Result, Runner};

/// DataFusion's physical optimizer rules, with Sluice's [`ConcatUnions`] right after
/// the first (which records the output's requirements), before the distribution and
/// sorting rules plan around the partitions it removes.
///
/// [`ConcatUnions`]: crate::plan::concat::ConcatUnions
pub(super) fn physical_optimizer_rules()
-> Vec<Arc<dyn datafusion::physical_optimizer::PhysicalOptimizerRule + Send + Sync>> {
    let mut rules = datafusion::physical_optimizer::optimizer::PhysicalOptimizer::new().rules;
    rules.insert(
        1.min(rules.len()),
        Arc::new(crate::plan::concat::ConcatUnions),
    );
    rules
}

/// Builds a [`Session`].
///
/// ```
/// use sluice_core::Session;
/// let session = Session::builder().with_target_partitions(2).with_batch_size(4096).build()?;
/// assert_eq!(session.context().state().config().target_partitions(), 2);
/// # Ok::<(), sluice_core::Error>(())
/// ```
#[derive(Debug, Default)]
pub struct SessionBuilder {
    pub(super) target_partitions: Option<usize>,
    pub(super) batch_size: Option<usize>,
    pub(super) memory_limit: Option<usize>,
    pub(super) max_column_chunk_bytes: Option<u64>,
    pub(super) remote_read_ahead_bytes: Option<u64>,
    pub(super) column_copy: Option<bool>,
    pub(super) stores: Vec<(Url, Arc<dyn ObjectStore>)>,
    pub(super) config: Option<SessionConfig>,
    pub(super) runner: Option<Runner>,
    pub(super) settings: Option<sluice_store::Settings>,
    pub(super) udfs: Vec<(datafusion::logical_expr::ScalarUDF, String)>,
    pub(super) udafs: Vec<(datafusion::logical_expr::AggregateUDF, String)>,
    pub(super) udwfs: Vec<(datafusion::logical_expr::WindowUDF, String)>,
}

impl SessionBuilder {
    /// Registers a user-defined scalar function with the version cache keys know it
    /// by (see [`Session::register_udf`]).
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
    /// let session = sluice_core::Session::builder().with_udf(double, "1").build()?;
    /// # let _ = session;
    /// # Ok::<(), sluice_core::Error>(())
    /// ```
    pub fn with_udf(mut self, udf: datafusion::logical_expr::ScalarUDF, version: &str) -> Self {
        self.udfs.push((udf, version.to_string()));
        self
    }

    /// Registers a user-defined aggregate function with its version.
    pub fn with_udaf(
        mut self,
        udaf: datafusion::logical_expr::AggregateUDF,
        version: &str,
    ) -> Self {
        self.udafs.push((udaf, version.to_string()));
        self
    }

    /// Registers a user-defined window function with its version.
    pub fn with_udwf(mut self, udwf: datafusion::logical_expr::WindowUDF, version: &str) -> Self {
        self.udwfs.push((udwf, version.to_string()));
        self
    }

    /// Partitions (and so threads) per plan; defaults to the number of cores.
    pub fn with_target_partitions(mut self, partitions: usize) -> Self {
        self.target_partitions = Some(partitions.max(1));
        self
    }

    /// Rows per record batch; defaults to 8192.
    pub fn with_batch_size(mut self, rows: usize) -> Self {
        self.batch_size = Some(rows.max(1));
        self
    }

    /// Caps the memory that sorts, aggregations, joins and the Parquet writer may
    /// reserve from DataFusion's memory pool; past it they spill to disk or fail with
    /// [`Error::MemoryLimitExceeded`]. Default: the environment variable
    /// `SLUICE_MEMORY_LIMIT` (`8GiB`, or bytes) if set, else
    /// [`DEFAULT_MEMORY_LIMIT`](crate::DEFAULT_MEMORY_LIMIT) (4 GiB). Scans do not
    /// reserve from the pool; [`with_max_column_chunk_bytes`](Self::with_max_column_chunk_bytes)
    /// bounds what they decode.
    pub fn with_memory_limit(mut self, bytes: usize) -> Self {
        self.memory_limit = Some(bytes);
        self
    }

    /// Caps the uncompressed size of a Parquet column chunk that reads may decode, as
    /// the file's footer declares it: a chunk over it is refused, before it is fetched,
    /// with [`Error::ColumnChunkTooLarge`] naming the file, the column and the row group.
    /// This is what stops a decompression bomb (kilobytes of brotli or zstd that inflate
    /// to gigabytes). Default: the environment variable `SLUICE_MAX_COLUMN_CHUNK_BYTES`
    /// if set, else [`DEFAULT_MAX_COLUMN_CHUNK_BYTES`](crate::DEFAULT_MAX_COLUMN_CHUNK_BYTES)
    /// (1 GiB). See the [`limits`](crate::parquet_io::limits) module.
    ///
    /// ```
    /// use sluice_core::Session;
    /// let session = Session::builder().with_max_column_chunk_bytes(256 << 20).build()?;
    /// assert_eq!(session.max_column_chunk_bytes(), 256 << 20);
    /// # Ok::<(), sluice_core::Error>(())
    /// ```
    pub fn with_max_column_chunk_bytes(mut self, bytes: u64) -> Self {
        self.max_column_chunk_bytes = Some(bytes);
        self
    }

    /// How many bytes of a remote Parquet file (S3, HTTP, any store but local disk and
    /// memory) reads may fetch ahead of what is being decoded or copied. Each request
    /// to a remote store waits a round trip (20–100 ms to S3 from another region or a
    /// public HTTPS server), so the requests in flight must hold about the link's
    /// bandwidth × latency to keep it busy; this bounds them, and with them the memory
    /// that reads hold. The column copy reads whole row groups ahead within it; scans
    /// the next row group's columns. Default: the environment variable
    /// `SLUICE_REMOTE_READ_AHEAD` (`128MiB`, or bytes) if set, else
    /// [`DEFAULT_REMOTE_READ_AHEAD_BYTES`](crate::DEFAULT_REMOTE_READ_AHEAD_BYTES)
    /// (48 MiB: on the seed ETL over S3 and HTTP at 100 ms per request, 64 MiB was no
    /// faster and held up to 15 MiB more). Uploads of the column copy to a remote store
    /// keep half as many bytes in flight. 0 reads nothing ahead.
    ///
    /// ```
    /// use sluice_core::Session;
    /// let session = Session::builder().with_remote_read_ahead_bytes(128 << 20).build()?;
    /// assert_eq!(session.remote_read_ahead_bytes(), 128 << 20);
    /// # Ok::<(), sluice_core::Error>(())
    /// ```
    pub fn with_remote_read_ahead_bytes(mut self, bytes: u64) -> Self {
        self.remote_read_ahead_bytes = Some(bytes);
        self
    }

    /// Whether Parquet sinks may copy the column chunks a plan leaves unchanged instead
    /// of decoding and encoding them again (on unless set, or unless the environment
    /// variable `SLUICE_COLUMN_COPY` is `0`/`false`/`off`). Each write can also turn it
    /// off with [`ParquetWrite::with_column_copy`](crate::ParquetWrite::with_column_copy).
    ///
    /// ```
    /// let session = sluice_core::Session::builder().with_column_copy(false).build()?;
    /// assert!(!session.column_copy());
    /// # Ok::<(), sluice_core::Error>(())
    /// ```
    pub fn with_column_copy(mut self, on: bool) -> Self {
        self.column_copy = Some(on);
        self
    }

    /// Serves every URL with the scheme and authority of `url` from `store`, instead of
    /// the store Sluice would create.
    pub fn with_object_store(mut self, url: &Url, store: Arc<dyn ObjectStore>) -> Self {
        self.stores.push((url.clone(), store));
        self
    }

    /// Where plans execute: [`Runner::Local`] (DataFusion in this process) or a Ballista
    /// cluster ([`Runner::ballista`], with the cargo feature `ballista`). Default: the
    /// environment variable [`SLUICE_RUNNER`](crate::RUNNER_ENV) if set, else local.
    ///
    /// ```
    /// use sluice_core::{Runner, Session};
    /// let session = Session::builder().with_runner(Runner::Local).build()?;
    /// assert!(session.runner().is_local());
    /// # Ok::<(), sluice_core::Error>(())
    /// ```
    pub fn with_runner(mut self, runner: Runner) -> Self {
        self.runner = Some(runner);
        self
    }

    /// The storage settings: named stores (`store://NAME/…`) and the default result
    /// and run stores. Default: [`Settings::load`](sluice_store::Settings::load), the
    /// `SLUICE_*` variables over `sluice.toml` (the working directory's or the nearest
    /// parent's, or `$SLUICE_CONFIG`) over the user's file. Discovered settings that
    /// cannot be read fail the session's first use of a location (or a flow run) with
    /// the file's line and column, since `Session::new` cannot fail.
    ///
    /// ```
    /// use sluice_core::Session;
    /// use sluice_store::Settings;
    /// let settings = Settings::from_toml(r#"
    ///     [stores.scratch]
    ///     url = "memory://scratch/area"
    /// "#)?;
    /// let session = Session::builder().with_settings(settings).build()?;
    /// assert!(session.settings()?.store("scratch").is_some());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_settings(mut self, settings: sluice_store::Settings) -> Self {
        self.settings = Some(settings);
        self
    }

    /// Starts from this DataFusion configuration.
    pub fn with_config(mut self, config: SessionConfig) -> Self {
        self.config = Some(config);
        self
    }

    /// Builds the session.
    pub fn build(self) -> Result<Session> {
        let stores = Arc::new(match self.settings {
            Some(settings) => StoreRegistry::with_settings(settings),
            None => match sluice_store::Settings::load() {
                Ok(settings) => StoreRegistry::with_settings(settings),
                Err(e) => StoreRegistry::with_broken_settings(e),
            },
        });
        for (url, store) in self.stores {
            stores.register(&url, store);
        }
        let mut config = self.config.unwrap_or_default();
        if let Some(n) = self.target_partitions {
            config = config.with_target_partitions(n);
        }
        if let Some(n) = self.batch_size {
            config = config.with_batch_size(n);
        }
        // DataFusion 55 caches directory listings per session with no expiry, keyed by
        // the path without the store: a file written later is not seen, and
        // `memory://two/data/` read after `memory://one/data/` lists bucket one's files.
        // Listings are cheap next to reading the data; correctness first.
        let mut runtime = RuntimeEnvBuilder::new()
            .with_object_store_registry(Arc::new(crate::parquet_io::planned::PlanningStores::new(
                Arc::clone(&stores) as _,
            )))
            .with_cache_manager(CacheManagerConfig::default().with_list_files_cache_limit(0));
        let memory_limit = self
            .memory_limit
            .or_else(|| {
                crate::parquet_io::limits::size_from_env(
                    crate::parquet_io::limits::MEMORY_LIMIT_ENV,
                )
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
            })
            .unwrap_or(crate::parquet_io::limits::DEFAULT_MEMORY_LIMIT);
        runtime = runtime.with_memory_limit(memory_limit, 1.0);
        let max_column_chunk_bytes = self
            .max_column_chunk_bytes
            .or_else(|| {
                crate::parquet_io::limits::size_from_env(
                    crate::parquet_io::limits::MAX_COLUMN_CHUNK_BYTES_ENV,
                )
            })
            .unwrap_or(crate::parquet_io::limits::DEFAULT_MAX_COLUMN_CHUNK_BYTES);
        let remote_read_ahead_bytes = self
            .remote_read_ahead_bytes
            .or_else(|| {
                crate::parquet_io::limits::size_from_env(
                    crate::parquet_io::limits::REMOTE_READ_AHEAD_ENV,
                )
            })
            .unwrap_or(crate::parquet_io::limits::DEFAULT_REMOTE_READ_AHEAD_BYTES);
        let column_copy = self.column_copy.unwrap_or_else(|| {
            std::env::var(COLUMN_COPY_ENV).map_or(true, |v| {
                !matches!(
                    v.trim().to_ascii_lowercase().as_str(),
                    "0" | "false" | "off" | "no"
                )
            })
        });
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(runtime.build_arc()?)
            .with_default_features()
            .with_physical_optimizer_rules(physical_optimizer_rules())
            .with_optimizer_rule(Arc::new(crate::plan::date_part::FastDateParts))
            .with_optimizer_rule(Arc::new(crate::plan::group_keys::PackGroupKeys))
            .with_query_planner(Arc::new(SluiceQueryPlanner))
            .build();
        // A runner given here must be usable; one from the environment that is not
        // fails the first plan that runs (and any flow run), since `Session::new`
        // cannot fail.
        let (cluster, runner, unusable_runner) = match self.runner {
            Some(runner) => (cluster_of(&runner)?, runner, None),
            None => match Runner::from_env().and_then(|r| Ok((cluster_of(&r)?, r))) {
                Ok((cluster, runner)) => (cluster, runner, None),
                Err(e) => (None, Runner::Local, Some(e.to_string())),
            },
        };
        let builtin = builtin_functions(&state);
        let session = Session {
            inner: Arc::new(SessionInner {
                ctx: SessionContext::new_with_state(state),
                stores,
                read_limits: crate::parquet_io::limits::ReadLimits {
                    max_column_chunk_bytes,
                    remote_read_ahead_bytes,
                },
                column_copy,
                runner,
                cluster,
                unusable_runner,
                functions: Arc::new(std::sync::RwLock::new(Functions {
                    builtin,
                    versions: Default::default(),
                })),
            }),
        };
        for (udf, version) in self.udfs {
            session.register_udf(udf, &version);
        }
        for (udaf, version) in self.udafs {
            session.register_udaf(udaf, &version);
        }
        for (udwf, version) in self.udwfs {
            session.register_udwf(udwf, &version);
        }
        Ok(session)
    }
}

/// The address of a function object (what tells DataFusion's own function from one
/// registered over it).
pub(super) fn address<T>(function: &Arc<T>) -> usize {
    Arc::as_ptr(function) as *const () as usize
}

/// DataFusion's functions in a state built with its defaults, by kind and name.
pub(super) fn builtin_functions(
    state: &SessionState,
) -> std::collections::HashMap<(&'static str, String), usize> {
    let scalar = state
        .scalar_functions()
        .iter()
        .map(|(name, f)| (("scalar", name.clone()), address(f)));
    let aggregate = state
        .aggregate_functions()
        .iter()
        .map(|(name, f)| (("aggregate", name.clone()), address(f)));
    let window = state
        .window_functions()
        .iter()
        .map(|(name, f)| (("window", name.clone()), address(f)));
    scalar.chain(aggregate).chain(window).collect()
}

/// The cluster `runner` names, checked: a malformed URL, or (without the feature
/// `ballista`) any cluster, is an error.
pub(super) fn cluster_of(runner: &Runner) -> Result<Option<Cluster>> {
    match runner {
        Runner::Local => Ok(None),
        Runner::Ballista { url } => Cluster::new(url).map(Some),
    }
}
