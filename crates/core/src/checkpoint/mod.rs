//! Checkpoints: a task's output written as Parquet to an object store, with a manifest
//! committed last, and read back instead of recomputing when its cache key comes again.
//!
//! ```text
//! <store>/checkpoints/<task>/<key>/_manifest.json        committed last, create-if-absent
//! <store>/checkpoints/<task>/<key>/data-<id>/part-<n>.parquet   one part per partition
//! <store>/checkpoints/<task>/<key>/_last_hit              when it was last read
//! <store>/schemas/<digest>.json                           source schemas, by source identity
//! ```
//!
//! A checkpoint exists only through its manifest: parts are written under a directory
//! of their own writer (`data-<id>`), never renamed (a rename on S3 is a copy), and
//! become part of a checkpoint when a manifest naming them, with their sizes and
//! checksums, is committed. A run that fails, is dropped or stops early commits no
//! manifest; its parts are orphans that [`CheckpointStore::gc`] removes after a grace
//! period. Two runs racing on one key both write their own parts; the first manifest
//! wins, and the loser deletes its parts.
//!
//! See [`Persist`] for when a checkpoint is written, [`CachePolicy`] for how its key is
//! made, and [`CheckpointStore`] for listing, showing and collecting checkpoints.

mod decide;
pub(crate) mod gc;
pub(crate) mod key;
pub(crate) mod lineage;
mod manifest;
pub(crate) mod read;
pub(crate) mod store;
pub(crate) mod tee;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub(crate) use decide::{Outcome, Persisted, decide};
pub use gc::GcReport;
pub use manifest::{BLOCK_SIZE, MANIFEST_FORMAT_VERSION, Manifest, ManifestFile};
pub(crate) use read::CheckpointRead;
pub use store::{CacheEntry, CheckpointStore, LEASE_TTL, SCHEMA_CACHE_TTL};
pub(crate) use store::{Expected, Lookup, store_error, store_root, url_in};
pub(crate) use tee::{CheckpointTarget, CheckpointTee, CheckpointTeePlanner, Tee};

use crate::checkpoint::lineage::{SourceObject, UpstreamTask};
use crate::write::Compression;

/// When a persisted task's checkpoint is written.
///
/// - [`Tee`](Self::Tee) (the default) writes it **while the output streams** to its
///   consumer: the upstream runs once, the consumer does not wait, and the checkpoint
///   is committed when every partition has streamed to its end. Pick it for the
///   common case: a later run (or a retry) reads the checkpoint instead of the
///   source. A failed or early-stopped consumer commits nothing, so a load that fails
///   half-way leaves no checkpoint to resume from; and a frame consumed by two sinks
///   is computed twice, unless the second sink is planned after the first one's
///   checkpoint committed (it then reads the checkpoint).
/// - [`Barrier`](Self::Barrier) writes the checkpoint **in full when the task is
///   called**, then hands downstream a scan of it. Slower (the output is written and
///   read back), but a load that fails mid-write resumes from the checkpoint on the
///   next run without reading a source byte, and one frame feeding several sinks is
///   computed once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Persist {
    /// Written while the output streams past (a tee in the physical plan).
    #[default]
    Tee,
    /// Written in full before anything downstream reads it.
    Barrier,
}

/// A user's key function: given the key inputs of a call, its cache key.
pub type KeyFn = Arc<dyn Fn(&CacheKeyInputs) -> String + Send + Sync>;

#[derive(Clone)]
enum KeyKind {
    Inputs,
    Function(KeyFn),
    None,
}

/// How a persisted task's cache key is made, how long a checkpoint stays valid, and
/// whether to recompute anyway. As Prefect's `cache_policy`, `cache_expiration` and
/// `refresh_cache`.
///
/// ```
/// use std::time::Duration;
/// use sluice_core::CachePolicy;
///
/// let daily = CachePolicy::inputs().expire_after(Duration::from_secs(24 * 3600));
/// let by_month = CachePolicy::key_fn(|inputs| {
///     format!("{}", inputs.parameters["month"])
/// });
/// let recompute = CachePolicy::inputs().refresh(true);
/// # let _ = (daily, by_month, recompute);
/// ```
#[derive(Clone)]
pub struct CachePolicy {
    kind: KeyKind,
    expire_after: Option<Duration>,
    refresh: bool,
    verify: bool,
    allow_volatile: bool,
}

impl Default for CachePolicy {
    /// [`CachePolicy::inputs`].
    fn default() -> Self {
        Self::inputs()
    }
}

impl fmt::Debug for CachePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachePolicy")
            .field("key", &self.describe())
            .field("expire_after", &self.expire_after)
            .field("refresh", &self.refresh)
            .field("verify", &self.verify)
            .field("allow_volatile", &self.allow_volatile)
            .finish()
    }
}

impl CachePolicy {
    /// The key covers everything that can change the output: the task's name and
    /// code version, the lineage of its output (every operation in a canonical
    /// encoding, and the identity of every source object: URL, size, ETag,
    /// last-modified), its parameters, the session settings that can change results,
    /// the version of every user-defined function it calls, and the upstream tasks it
    /// reads (by key and by the checkpoint they were read from or wrote). The default.
    ///
    /// A task whose plan calls a function whose result depends on when or where it
    /// runs (`random()`, `uuid()`, `now()`, `current_date()`, `current_time()`: any
    /// function DataFusion marks volatile or stable) is refused with
    /// [`Error::UncacheableFunction`](crate::Error::UncacheableFunction), unless the
    /// policy opts in with [`allow_volatile`](Self::allow_volatile) or is a
    /// [`key_fn`](Self::key_fn); so is one calling a user-defined function registered
    /// without a version (see [`SessionBuilder::with_udf`](crate::SessionBuilder::with_udf)).
    pub fn inputs() -> Self {
        Self {
            kind: KeyKind::Inputs,
            expire_after: None,
            refresh: false,
            verify: true,
            allow_volatile: false,
        }
    }

    /// The key is what `key` returns for the call's [`CacheKeyInputs`] (hashed with the
    /// task's name): calls with equal keys share a checkpoint, whatever else differs.
    pub fn key_fn(key: impl Fn(&CacheKeyInputs) -> String + Send + Sync + 'static) -> Self {
        Self {
            kind: KeyKind::Function(Arc::new(key)),
            expire_after: None,
            refresh: false,
            verify: true,
            allow_volatile: false,
        }
    }

    /// No lookup: the task is recomputed on every call. A persisted task still writes
    /// a checkpoint (under a key of its own run) for a barrier to read from.
    pub fn none() -> Self {
        Self {
            kind: KeyKind::None,
            expire_after: None,
            refresh: false,
            verify: true,
            allow_volatile: false,
        }
    }

    /// Checkpoints older than `ttl` are a miss (and are replaced).
    pub fn expire_after(mut self, ttl: Duration) -> Self {
        self.expire_after = Some(ttl);
        self
    }

    /// Recompute even when a valid checkpoint exists, and replace it.
    pub fn refresh(mut self, refresh: bool) -> Self {
        self.refresh = refresh;
        self
    }

    /// Whether a hit checks every block it reads against the manifest's BLAKE3 (the
    /// default). Off, a part corrupted in place (same size, other bytes) is caught
    /// only if it fails to decode; missing parts, parts of another size and footers
    /// that do not hold the manifest's rows and schema are still caught.
    pub fn verify_checksums(mut self, verify: bool) -> Self {
        self.verify = verify;
        self
    }

    /// Caches a task that calls volatile or time functions (`random()`, `now()`, ...):
    /// a hit then serves the values of the run that wrote the checkpoint (a filter on
    /// "the last 7 days" keeps the window of that run) until it expires. Pair it with
    /// [`expire_after`](Self::expire_after).
    ///
    /// ```
    /// use std::time::Duration;
    /// use sluice_core::CachePolicy;
    /// let daily_snapshot = CachePolicy::inputs()
    ///     .allow_volatile()
    ///     .expire_after(Duration::from_secs(24 * 3600));
    /// # let _ = daily_snapshot;
    /// ```
    pub fn allow_volatile(mut self) -> Self {
        self.allow_volatile = true;
        self
    }

    /// Whether the key may be made over volatile or time functions.
    pub(crate) fn allows_volatile(&self) -> bool {
        self.allow_volatile || matches!(self.kind, KeyKind::Function(_))
    }

    pub(crate) fn verifies(&self) -> bool {
        self.verify
    }

    /// `inputs`, `key_fn` or `none`.
    pub fn describe(&self) -> &'static str {
        match self.kind {
            KeyKind::Inputs => "inputs",
            KeyKind::Function(_) => "key_fn",
            KeyKind::None => "none",
        }
    }

    pub(crate) fn expiry(&self) -> Option<Duration> {
        self.expire_after
    }

    pub(crate) fn refreshes(&self) -> bool {
        self.refresh
    }

    pub(crate) fn looks_up(&self) -> bool {
        !matches!(self.kind, KeyKind::None)
    }

    /// Whether the key is made from the inputs (so a manifest's inputs must match).
    pub(crate) fn keys_by_inputs(&self) -> bool {
        matches!(self.kind, KeyKind::Inputs)
    }

    /// The cache key of a call with these inputs.
    pub(crate) fn key(&self, inputs: &CacheKeyInputs) -> String {
        match &self.kind {
            KeyKind::Inputs => {
                // serde_json writes struct fields in declaration order and map keys in
                // a fixed order: the bytes are the same in every process.
                let bytes = serde_json::to_vec(inputs).unwrap_or_default();
                crate::checkpoint::lineage::digest(&bytes)
            }
            KeyKind::Function(f) => {
                let user = f(inputs);
                crate::checkpoint::lineage::digest(
                    format!(
                        "{}\u{0}{}\u{0}{}\u{0}{}\u{0}{user}",
                        inputs.key_format, inputs.engine, inputs.semantics, inputs.task
                    )
                    .as_bytes(),
                )
            }
            KeyKind::None => uuid::Uuid::new_v4().simple().to_string(),
        }
    }
}

/// How a checkpoint's Parquet parts are encoded.
///
/// The default follows the sink, so that a cache hit is a verbatim copy of the
/// checkpoint's column chunks (see `docs/checkpoints.md`): where the column copy writes
/// the output, the checkpoint is the output's own bytes, written once and uploaded
/// twice; where the tee writes it (plans the copy cannot serve: filters, joins,
/// aggregations), it is Zstandard level 3, the Parquet sink's default codec, with
/// dictionary encoding and page statistics (which the copy needs to move a chunk into an
/// output that states them), in row groups of 65,536 rows. Setting a codec makes every
/// write use it: a copy whose output has another codec writes the checkpoint as a file
/// of its own beside the output, each copied chunk recompressed once fetched. The
/// measurements behind the choice are in `docs/BENCHMARKS.md`.
///
/// ```
/// use sluice_core::{CheckpointFormat, Compression};
/// let faster_to_write = CheckpointFormat::default()
///     .with_compression(Compression::Lz4)
///     .with_dictionary(false);
/// # let _ = faster_to_write;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointFormat {
    pub(crate) compression: Option<Compression>,
    pub(crate) dictionary: bool,
    pub(crate) statistics: bool,
    pub(crate) row_group_rows: usize,
}

impl Default for CheckpointFormat {
    fn default() -> Self {
        Self {
            compression: None,
            dictionary: true,
            statistics: true,
            row_group_rows: Self::DEFAULT_ROW_GROUP_ROWS,
        }
    }
}

impl CheckpointFormat {
    /// The codec the tee writes when none is set: the Parquet sink's default.
    ///
    /// ```
    /// use sluice_core::{CheckpointFormat, Compression};
    /// assert_eq!(CheckpointFormat::DEFAULT_TEE_COMPRESSION, Compression::Zstd(3));
    /// ```
    pub const DEFAULT_TEE_COMPRESSION: Compression = Compression::Zstd(3);

    /// Rows per row group unless set: 65,536. The writer holds a row group's encoded
    /// pages until it is complete, per partition.
    ///
    /// ```
    /// assert_eq!(sluice_core::CheckpointFormat::DEFAULT_ROW_GROUP_ROWS, 1 << 16);
    /// ```
    pub const DEFAULT_ROW_GROUP_ROWS: usize = 65_536;

    /// The codec (and level) of the parts, for every write: unset, a checkpoint the
    /// column copy writes has the output's codec and one the tee writes
    /// [`DEFAULT_TEE_COMPRESSION`](Self::DEFAULT_TEE_COMPRESSION).
    pub fn with_compression(mut self, compression: Compression) -> Self {
        self.compression = Some(compression);
        self
    }

    /// The codec set with [`with_compression`](Self::with_compression), if any.
    ///
    /// ```
    /// use sluice_core::{CheckpointFormat, Compression};
    /// assert_eq!(CheckpointFormat::default().compression(), None);
    /// let lz4 = CheckpointFormat::default().with_compression(Compression::Lz4);
    /// assert_eq!(lz4.compression(), Some(Compression::Lz4));
    /// ```
    pub fn compression(&self) -> Option<Compression> {
        self.compression
    }

    /// The codec the tee writes.
    pub(crate) fn tee_compression(&self) -> Compression {
        self.compression.unwrap_or(Self::DEFAULT_TEE_COMPRESSION)
    }

    /// Whether to dictionary-encode columns (smaller for repetitive data, slower to
    /// write).
    pub fn with_dictionary(mut self, dictionary: bool) -> Self {
        self.dictionary = dictionary;
        self
    }

    /// Rows per row group of a checkpoint the tee writes (one the column copy writes
    /// keeps its source's row groups, as the output does).
    pub fn with_row_group_rows(mut self, rows: usize) -> Self {
        self.row_group_rows = rows.max(1);
        self
    }

    /// Whether to write page statistics (min/max: they let a filter downstream of a
    /// cache hit skip pages, at a cost when writing).
    pub fn with_statistics(mut self, statistics: bool) -> Self {
        self.statistics = statistics;
        self
    }

    pub(crate) fn writer_properties(
        &self,
    ) -> crate::Result<parquet::file::properties::WriterProperties> {
        Ok(parquet::file::properties::WriterProperties::builder()
            .set_compression(self.tee_compression().to_parquet()?)
            .set_dictionary_enabled(self.dictionary)
            .set_statistics_enabled(if self.statistics {
                parquet::file::properties::EnabledStatistics::Page
            } else {
                parquet::file::properties::EnabledStatistics::None
            })
            .set_max_row_group_row_count(Some(self.row_group_rows))
            .build())
    }
}

/// What a cache key is computed from: it is stored in the checkpoint's manifest, and
/// given to a [`CachePolicy::key_fn`]. The key of [`CachePolicy::inputs`] is the
/// BLAKE3 of its JSON (fields in declaration order, object keys sorted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CacheKeyInputs {
    /// The format of these inputs ([`KEY_FORMAT`](crate::KEY_FORMAT)).
    pub key_format: u32,
    /// The engine whose semantics the key covers: `datafusion <major>`.
    pub engine: String,
    /// Sluice's semantics version ([`SEMANTICS_VERSION`](crate::SEMANTICS_VERSION)).
    pub semantics: u32,
    /// The task's name.
    pub task: String,
    /// Its code version.
    pub version: Option<String>,
    /// Its parameters other than frames (frames enter through `lineage`).
    pub parameters: serde_json::Value,
    /// The lineage of its output, in the canonical encoding of expressions and values:
    /// every read, operation and upstream task.
    pub lineage: serde_json::Value,
    /// Every source object read (upstream tasks excluded: they enter by their key).
    pub sources: Vec<SourceObject>,
    /// The upstream tasks read, by name, version, key and checkpoint.
    pub upstream: Vec<UpstreamTask>,
    /// The session settings that can change results
    /// ([`RESULT_SETTINGS`](crate::RESULT_SETTINGS)), by name.
    pub settings: std::collections::BTreeMap<String, String>,
    /// The user-defined functions the plan calls, with the versions they were
    /// registered with.
    pub functions: std::collections::BTreeMap<String, String>,
}

/// The time source for expiry: the wall clock unless a test injects another.
///
/// ```
/// use sluice_core::Clock;
/// let fixed = Clock::fixed(chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap());
/// assert_eq!(fixed.now().timestamp(), 1_700_000_000);
/// ```
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>);

impl Default for Clock {
    fn default() -> Self {
        Self(Arc::new(Utc::now))
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Clock({})", self.now())
    }
}

impl Clock {
    /// A clock that reads `now`.
    pub fn new(now: impl Fn() -> DateTime<Utc> + Send + Sync + 'static) -> Self {
        Self(Arc::new(now))
    }

    /// A clock that stands still at `at`.
    pub fn fixed(at: DateTime<Utc>) -> Self {
        Self::new(move || at)
    }

    /// The current time.
    pub fn now(&self) -> DateTime<Utc> {
        (self.0)()
    }
}
