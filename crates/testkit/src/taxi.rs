//! A deterministic generator of NYC yellow-taxi trips, written as Parquet.
//!
//! The rows follow the schema of the TLC's 2023 `yellow_tripdata` files
//! ([`taxi_schema`]) and imitate their distributions: September 2023 pickups with the
//! daily rhythm of the city, a few popular zones, airport trips with flat fares and
//! tolls, fares built from distance and time, card tips of about 20%, and totals that
//! are the sum of their parts to the cent.
//!
//! # Determinism
//!
//! Row `i` is a pure function of `(seed, i, rows)`: each row draws from its own
//! SplitMix64 stream, seeded by hashing `seed` with the global row index. `rows` only
//! enters through the pickup time, which spreads the rows over the month in roughly
//! increasing order. Hence
//!
//! - the same `(rows, seed)` always gives the same rows, whatever the batch size, the
//!   number of files or the number of threads;
//! - the same [`TaxiGenOptions`] give byte-identical Parquet files;
//! - the `K` part files of a split output, read in name order, hold exactly the rows of
//!   the single-file output.
//!
//! # Awkward rows
//!
//! Real TLC data is not clean, and queries over it must cope. Rows are made awkward by
//! their global index: in each aligned block of `period` rows, exactly one row, at an
//! offset drawn from `(seed, block)`, is of the kind below (when two kinds pick the same
//! row, the rarer one wins). Any output of at least 20,000 rows therefore contains every
//! kind.
//!
//! | kind | period | share | what the row looks like |
//! | --- | --- | --- | --- |
//! | null pattern | 29 | ~3.4% | `passenger_count`, `RatecodeID`, `store_and_fwd_flag`, `congestion_surcharge`, `Airport_fee` are NULL, `payment_type` is 0 |
//! | refund | 83 | ~1.2% | every money column negated, so `total_amount < 0`; `payment_type` 3 or 4 |
//! | zero total | 3,333 | ~0.03% | every money column 0, so `tip_amount / total_amount` is NaN |
//! | tip on zero total | 20,000 | 0.005% | `tip_amount > 0` but every other money column and `total_amount` are 0, so the tip share is infinite |
//!
//! Outside the last kind, `total_amount` is the sum of the other money columns
//! (NULLs count as 0), rounded to the cent.
//!
//! # Files on disk
//!
//! Each file is written under a hidden temporary name in its final directory and
//! renamed when complete, so a reader listing `*.parquet` never sees half a file:
//!
//! ```text
//! .part-00001.parquet.<pid>.tmp ──(written, closed)──rename──▶ part-00001.parquet
//! ```
//!
//! The files are not `fsync`ed: after a machine crash a file may be empty or missing,
//! and stray `.tmp` files may remain. If one file of a split output fails, the others
//! already renamed stay in place, and the error names the failed file.
//!
//! # Example
//!
//! ```
//! use sluice_testkit::taxi::{TaxiGenOptions, generate_batches, write_taxi_parquet};
//!
//! # fn main() -> sluice_testkit::Result<()> {
//! // In memory:
//! let rows: usize = generate_batches(&TaxiGenOptions::new(1_000)).map(|b| b.num_rows()).sum();
//! assert_eq!(rows, 1_000);
//!
//! // On disk, as four part files:
//! let dir = tempfile::TempDir::new().unwrap();
//! let summary = write_taxi_parquet(dir.path(), &TaxiGenOptions::new(1_000).with_files(4))?;
//! assert_eq!(summary.files.len(), 4);
//! assert!(summary.files[0].ends_with("part-00000.parquet"));
//! # Ok(())
//! # }
//! ```

use std::fs::{self, File};
use std::num::NonZeroUsize;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, mpsc};
use std::thread;

use arrow::array::{
    ArrayRef, Float64Array, Int32Array, Int64Array, StringArray, TimestampMicrosecondArray,
};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;

/// The Parquet compression codec, re-exported so that callers of
/// [`TaxiGenOptions::with_compression`] need no direct `parquet` dependency.
///
/// # Example
///
/// ```
/// use sluice_testkit::taxi::{Compression, TaxiGenOptions};
///
/// let opts = TaxiGenOptions::new(10).with_compression(Compression::UNCOMPRESSED);
/// assert_eq!(opts.compression, Compression::UNCOMPRESSED);
/// ```
pub use parquet::basic::Compression;

use crate::{Result, TestkitError};

/// `2023-09-01T00:00:00Z` in microseconds since the Unix epoch.
const START_US: i64 = 1_693_526_400_000_000;
/// September has 30 days.
const MONTH_DAYS: usize = 30;
const MONTH_HOURS: usize = MONTH_DAYS * 24;
/// Pickups stray up to this many seconds either side of their place in the month, so
/// the file is sorted by pickup time only roughly, like the real files.
const PICKUP_JITTER_S: f64 = 300.0;

/// The schema of the TLC's 2023 yellow-taxi trip files: 19 columns.
///
/// The five columns of the TLC's NULL pattern (`passenger_count`, `RatecodeID`,
/// `store_and_fwd_flag`, `congestion_surcharge`, `Airport_fee`) are nullable; the
/// generator never writes NULL elsewhere, so the other columns are declared
/// non-nullable. (The real files, written by pandas, declare every column nullable.)
///
/// # Example
///
/// ```
/// use arrow::datatypes::{DataType, TimeUnit};
/// use sluice_testkit::taxi::taxi_schema;
///
/// let schema = taxi_schema();
/// assert_eq!(schema.fields().len(), 19);
/// assert_eq!(
///     schema.field_with_name("tpep_pickup_datetime").unwrap().data_type(),
///     &DataType::Timestamp(TimeUnit::Microsecond, None),
/// );
/// assert!(schema.field_with_name("Airport_fee").unwrap().is_nullable());
/// ```
pub fn taxi_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let ts = DataType::Timestamp(TimeUnit::Microsecond, None);
            let money = |name: &str, nullable: bool| Field::new(name, DataType::Float64, nullable);
            Arc::new(Schema::new(vec![
                Field::new("VendorID", DataType::Int32, false),
                Field::new("tpep_pickup_datetime", ts.clone(), false),
                Field::new("tpep_dropoff_datetime", ts, false),
                Field::new("passenger_count", DataType::Int64, true),
                Field::new("trip_distance", DataType::Float64, false),
                Field::new("RatecodeID", DataType::Int64, true),
                Field::new("store_and_fwd_flag", DataType::Utf8, true),
                Field::new("PULocationID", DataType::Int32, false),
                Field::new("DOLocationID", DataType::Int32, false),
                Field::new("payment_type", DataType::Int64, false),
                money("fare_amount", false),
                money("extra", false),
                money("mta_tax", false),
                money("tip_amount", false),
                money("tolls_amount", false),
                money("improvement_surcharge", false),
                money("total_amount", false),
                money("congestion_surcharge", true),
                money("Airport_fee", true),
            ]))
        })
        .clone()
}

/// What to generate and how to write it.
///
/// The rows depend only on [`rows`](Self::rows) and [`seed`](Self::seed); the other
/// options change how they are cut into batches and files.
///
/// # Example
///
/// ```
/// use sluice_testkit::taxi::{Compression, TaxiGenOptions};
///
/// let opts = TaxiGenOptions::new(3_000_000)
///     .with_files(8)
///     .with_seed(7)
///     .with_batch_rows(8_192)
///     .with_row_group_rows(500_000)
///     .with_compression(Compression::LZ4_RAW);
/// assert_eq!((opts.rows, opts.files, opts.seed), (3_000_000, 8, 7));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct TaxiGenOptions {
    /// Number of rows in total, over all files.
    pub rows: u64,
    /// Number of files to split the rows into, evenly and in order.
    pub files: usize,
    /// Seed of the pseudo-random streams.
    pub seed: u64,
    /// Rows per generated [`RecordBatch`] (the last one may be shorter).
    pub batch_rows: usize,
    /// Maximum rows per Parquet row group.
    pub row_group_rows: usize,
    /// Parquet compression codec.
    pub compression: Compression,
}

impl Default for TaxiGenOptions {
    /// One million rows in one file, seed 42, batches of 65,536 rows, row groups of
    /// 1,048,576 rows (the Parquet writer's default), Snappy compression like the TLC
    /// files.
    ///
    /// # Example
    ///
    /// ```
    /// use sluice_testkit::taxi::{Compression, TaxiGenOptions};
    ///
    /// let opts = TaxiGenOptions::default();
    /// assert_eq!((opts.rows, opts.files, opts.seed), (1_000_000, 1, 42));
    /// assert_eq!(opts.compression, Compression::SNAPPY);
    /// ```
    fn default() -> Self {
        Self {
            rows: 1_000_000,
            files: 1,
            seed: 42,
            batch_rows: 65_536,
            row_group_rows: 1_048_576,
            compression: Compression::SNAPPY,
        }
    }
}

impl TaxiGenOptions {
    /// The [default](Self::default) options with `rows` rows.
    ///
    /// # Example
    ///
    /// ```
    /// use sluice_testkit::taxi::TaxiGenOptions;
    ///
    /// assert_eq!(TaxiGenOptions::new(500).rows, 500);
    /// ```
    pub fn new(rows: u64) -> Self {
        Self {
            rows,
            ..Self::default()
        }
    }

    /// Sets the number of rows.
    ///
    /// # Example
    ///
    /// ```
    /// use sluice_testkit::taxi::TaxiGenOptions;
    ///
    /// assert_eq!(TaxiGenOptions::default().with_rows(10).rows, 10);
    /// ```
    pub fn with_rows(mut self, rows: u64) -> Self {
        self.rows = rows;
        self
    }

    /// Sets the number of files; with more than one, the output path is a directory.
    ///
    /// # Example
    ///
    /// ```
    /// use sluice_testkit::taxi::TaxiGenOptions;
    ///
    /// assert_eq!(TaxiGenOptions::new(10).with_files(3).files, 3);
    /// ```
    pub fn with_files(mut self, files: usize) -> Self {
        self.files = files;
        self
    }

    /// Sets the seed.
    ///
    /// # Example
    ///
    /// ```
    /// use sluice_testkit::taxi::TaxiGenOptions;
    ///
    /// assert_eq!(TaxiGenOptions::new(10).with_seed(1).seed, 1);
    /// ```
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Sets the rows per generated batch.
    ///
    /// # Example
    ///
    /// ```
    /// use sluice_testkit::taxi::{TaxiGenOptions, generate_batches};
    ///
    /// let opts = TaxiGenOptions::new(10).with_batch_rows(4);
    /// let sizes: Vec<usize> = generate_batches(&opts).map(|b| b.num_rows()).collect();
    /// assert_eq!(sizes, [4, 4, 2]);
    /// ```
    pub fn with_batch_rows(mut self, batch_rows: usize) -> Self {
        self.batch_rows = batch_rows;
        self
    }

    /// Sets the maximum rows per Parquet row group.
    ///
    /// # Example
    ///
    /// ```
    /// use sluice_testkit::taxi::TaxiGenOptions;
    ///
    /// assert_eq!(TaxiGenOptions::new(10).with_row_group_rows(5).row_group_rows, 5);
    /// ```
    pub fn with_row_group_rows(mut self, row_group_rows: usize) -> Self {
        self.row_group_rows = row_group_rows;
        self
    }

    /// Sets the Parquet compression codec.
    ///
    /// # Example
    ///
    /// ```
    /// use parquet::basic::ZstdLevel;
    /// use sluice_testkit::taxi::{Compression, TaxiGenOptions};
    ///
    /// let zstd = Compression::ZSTD(ZstdLevel::try_new(3).unwrap());
    /// assert_eq!(TaxiGenOptions::new(10).with_compression(zstd).compression, zstd);
    /// ```
    pub fn with_compression(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }

    fn validate(&self) -> Result<()> {
        for (option, value) in [
            ("files", self.files),
            ("batch_rows", self.batch_rows),
            ("row_group_rows", self.row_group_rows),
        ] {
            if value == 0 {
                return Err(TestkitError::InvalidOption { option, value: 0 });
            }
        }
        Ok(())
    }
}

/// What [`write_taxi_parquet`] wrote.
///
/// # Example
///
/// ```
/// use sluice_testkit::taxi::{TaxiGenOptions, write_taxi_parquet};
///
/// # fn main() -> sluice_testkit::Result<()> {
/// let dir = tempfile::TempDir::new().unwrap();
/// let summary = write_taxi_parquet(dir.path(), &TaxiGenOptions::new(100).with_files(2))?;
/// assert_eq!(summary.rows, 100);
/// let on_disk: u64 = summary.files.iter().map(|f| f.metadata().unwrap().len()).sum();
/// assert_eq!(summary.bytes, on_disk);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TaxiGenSummary {
    /// Rows written, over all files.
    pub rows: u64,
    /// Bytes written, over all files.
    pub bytes: u64,
    /// The files written, in row order.
    pub files: Vec<PathBuf>,
}

/// Generates the rows of `opts` in memory, in order, as batches of
/// [`batch_rows`](TaxiGenOptions::batch_rows) rows.
///
/// This runs on the calling thread; [`write_taxi_parquet`] generates and writes in
/// parallel. [`files`](TaxiGenOptions::files) is ignored, and a `batch_rows` of 0 is
/// taken as 1.
///
/// # Example
///
/// ```
/// use sluice_testkit::taxi::{TaxiGenOptions, generate_batches, taxi_schema};
///
/// let batches: Vec<_> = generate_batches(&TaxiGenOptions::new(150_000)).collect();
/// assert_eq!(batches.len(), 3);
/// assert_eq!(batches[0].num_rows(), 65_536);
/// assert_eq!(batches[0].schema(), taxi_schema());
/// ```
pub fn generate_batches(opts: &TaxiGenOptions) -> TaxiBatches {
    TaxiBatches::new(opts.seed, opts.rows, 0..opts.rows, opts.batch_rows)
}

/// Iterator over generated taxi batches, returned by [`generate_batches`].
///
/// # Example
///
/// ```
/// use sluice_testkit::taxi::{TaxiGenOptions, generate_batches};
///
/// let mut batches = generate_batches(&TaxiGenOptions::new(100).with_batch_rows(30));
/// assert_eq!(batches.len(), 4);
/// assert_eq!(batches.next().unwrap().num_rows(), 30);
/// assert_eq!(batches.len(), 3);
/// ```
#[derive(Debug, Clone)]
pub struct TaxiBatches {
    seed: u64,
    total_rows: u64,
    next: u64,
    end: u64,
    batch_rows: u64,
}

impl TaxiBatches {
    fn new(seed: u64, total_rows: u64, rows: Range<u64>, batch_rows: usize) -> Self {
        Self {
            seed,
            total_rows,
            next: rows.start,
            end: rows.end,
            batch_rows: (batch_rows as u64).max(1),
        }
    }

    /// The global row indices of the next batch, without generating it.
    fn next_range(&mut self) -> Option<Range<u64>> {
        if self.next >= self.end {
            return None;
        }
        let start = self.next;
        self.next = self.end.min(start.saturating_add(self.batch_rows));
        Some(start..self.next)
    }

    fn try_next(&mut self) -> Option<Result<RecordBatch, ArrowError>> {
        let range = self.next_range()?;
        Some(build_batch(self.seed, self.total_rows, range))
    }
}

impl Iterator for TaxiBatches {
    type Item = RecordBatch;

    fn next(&mut self) -> Option<RecordBatch> {
        self.try_next().map(|batch| {
            // The columns are built to match `taxi_schema()`; a mismatch is our bug.
            batch.expect("generated columns match taxi_schema(); this is a bug in sluice-testkit")
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = (self.end.saturating_sub(self.next)).div_ceil(self.batch_rows);
        let left = usize::try_from(left).unwrap_or(usize::MAX);
        (left, Some(left))
    }
}

impl ExactSizeIterator for TaxiBatches {}

impl std::iter::FusedIterator for TaxiBatches {}

/// Generates the rows of `opts` and writes them as Parquet, returning what was written.
///
/// With [`files`](TaxiGenOptions::files) = 1 and `out` ending in `.parquet`, `out` is
/// the file. Otherwise `out` is a directory (created if missing) that receives
/// `part-00000.parquet`, `part-00001.parquet`, ... with the rows split evenly and in
/// order. Existing files of those names are replaced; other `part-*.parquet` files in
/// the directory make the call fail with [`TestkitError::StaleOutput`] before anything
/// is written, as reading the directory would mix two outputs.
///
/// Files are generated and written in parallel, one per available core, each with a
/// generating thread feeding its Parquet writer. See the [module docs](self) for the
/// crash guarantees.
///
/// # Errors
///
/// [`TestkitError::InvalidOption`] if `files`, `batch_rows` or `row_group_rows` is 0;
/// [`TestkitError::Io`] or [`TestkitError::Parquet`] if writing fails.
///
/// # Example
///
/// ```
/// use parquet::file::reader::{FileReader, SerializedFileReader};
/// use sluice_testkit::taxi::{TaxiGenOptions, write_taxi_parquet};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::TempDir::new()?;
/// let out = dir.path().join("yellow_tripdata_2023-09.parquet");
/// let summary = write_taxi_parquet(&out, &TaxiGenOptions::new(20_000).with_seed(7))?;
/// assert_eq!(summary.files, vec![out.clone()]);
///
/// let reader = SerializedFileReader::new(std::fs::File::open(&out)?)?;
/// assert_eq!(reader.metadata().file_metadata().num_rows(), 20_000);
/// # Ok(())
/// # }
/// ```
pub fn write_taxi_parquet(out: &Path, opts: &TaxiGenOptions) -> Result<TaxiGenSummary> {
    opts.validate()?;
    let single = opts.files == 1 && out.extension().is_some_and(|ext| ext == "parquet");
    let dir = if single {
        out.parent().unwrap_or(Path::new(""))
    } else {
        out
    };
    if !dir.as_os_str().is_empty() {
        fs::create_dir_all(dir).map_err(|source| TestkitError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    if !single {
        check_no_stale_parts(dir, opts.files)?;
    }

    let plan: Vec<(PathBuf, Range<u64>)> = (0..opts.files)
        .map(|k| {
            let path = if single {
                out.to_path_buf()
            } else {
                dir.join(format!("part-{k:05}.parquet"))
            };
            (path, file_rows(opts.rows, opts.files, k))
        })
        .collect();
    let props = WriterProperties::builder()
        .set_compression(opts.compression)
        .set_max_row_group_row_count(Some(opts.row_group_rows))
        .build();
    let props = Arc::new(props);

    let workers = thread::available_parallelism()
        .map_or(1, NonZeroUsize::get)
        .min(plan.len());
    tracing::info!(
        rows = opts.rows,
        files = opts.files,
        seed = opts.seed,
        workers,
        out = %out.display(),
        "generating taxi trips"
    );
    let next_file = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let mut results: Vec<Option<Result<u64>>> = plan.iter().map(|_| None).collect();
    thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    // Stop taking files after a failure: the call fails anyway.
                    while !failed.load(Ordering::Relaxed) {
                        let k = next_file.fetch_add(1, Ordering::Relaxed);
                        let Some((path, rows)) = plan.get(k) else {
                            break;
                        };
                        let result = write_file(path, rows.clone(), opts, &props);
                        if result.is_err() {
                            failed.store(true, Ordering::Relaxed);
                        }
                        done.push((k, result));
                    }
                    done
                })
            })
            .collect();
        for handle in handles {
            let done = handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            for (k, result) in done {
                results[k] = Some(result);
            }
        }
    });

    let mut bytes = 0;
    for result in results.into_iter().flatten() {
        bytes += result?;
    }
    Ok(TaxiGenSummary {
        rows: opts.rows,
        bytes,
        files: plan.into_iter().map(|(path, _)| path).collect(),
    })
}

/// The global rows of file `k` out of `files`: an even split, in order.
fn file_rows(rows: u64, files: usize, k: usize) -> Range<u64> {
    let bound = |k: usize| (u128::from(rows) * k as u128 / files as u128) as u64;
    bound(k)..bound(k + 1)
}

fn check_no_stale_parts(dir: &Path, files: usize) -> Result<()> {
    let io = |source| TestkitError::Io {
        path: dir.to_path_buf(),
        source,
    };
    for entry in fs::read_dir(dir).map_err(io)? {
        let name = entry.map_err(io)?.file_name();
        let index = name
            .to_str()
            .and_then(|name| name.strip_prefix("part-"))
            .and_then(|name| name.strip_suffix(".parquet"))
            .filter(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|digits| digits.parse::<usize>().ok());
        let ours = index.is_some_and(|index| {
            index < files && dir.join(format!("part-{index:05}.parquet")).file_name() == Some(&name)
        });
        if index.is_some() && !ours {
            return Err(TestkitError::StaleOutput {
                path: dir.join(name),
            });
        }
    }
    Ok(())
}

/// Writes the global rows `rows` to `path` through a temporary file, returning its size.
fn write_file(
    path: &Path,
    rows: Range<u64>,
    opts: &TaxiGenOptions,
    props: &Arc<WriterProperties>,
) -> Result<u64> {
    let _span = tracing::info_span!("taxi.write_file", path = %path.display(), rows = rows.end - rows.start)
        .entered();
    let file_name = path.file_name().map_or_else(
        || "taxi.parquet".into(),
        |name| name.to_string_lossy().into_owned(),
    );
    let tmp = path.with_file_name(format!(".{file_name}.{}.tmp", std::process::id()));
    let result = write_to(&tmp, path, rows.clone(), opts, props);
    match result {
        Ok(bytes) => {
            fs::rename(&tmp, path).map_err(|source| {
                let _ = fs::remove_file(&tmp);
                TestkitError::Io {
                    path: path.to_path_buf(),
                    source,
                }
            })?;
            tracing::info!(rows = rows.end - rows.start, bytes, "wrote taxi file");
            Ok(bytes)
        }
        Err(err) => {
            // Best effort: the write error matters more than a failed clean-up.
            let _ = fs::remove_file(&tmp);
            Err(err)
        }
    }
}

fn write_to(
    tmp: &Path,
    path: &Path,
    rows: Range<u64>,
    opts: &TaxiGenOptions,
    props: &Arc<WriterProperties>,
) -> Result<u64> {
    let parquet_err = |source| TestkitError::Parquet {
        path: path.to_path_buf(),
        source,
    };
    let file = File::create(tmp).map_err(|source| TestkitError::Io {
        path: tmp.to_path_buf(),
        source,
    })?;
    let mut writer = ArrowWriter::try_new(file, taxi_schema(), Some(props.as_ref().clone()))
        .map_err(parquet_err)?;

    // Encoding and compressing cost more than generating, so one thread generates ahead
    // while this one writes. A bound of 2 batches keeps memory flat.
    thread::scope(|s| -> Result<()> {
        let (tx, rx) = mpsc::sync_channel(2);
        let mut batches = TaxiBatches::new(opts.seed, opts.rows, rows, opts.batch_rows);
        s.spawn(move || {
            while let Some(batch) = batches.try_next() {
                // A closed channel means the writer failed and stopped listening.
                if tx.send(batch).is_err() {
                    break;
                }
            }
        });
        for batch in rx {
            let batch = batch.map_err(|source| TestkitError::Arrow {
                path: path.to_path_buf(),
                source,
            })?;
            writer.write(&batch).map_err(parquet_err)?;
        }
        Ok(())
    })?;
    writer.close().map_err(parquet_err)?;
    let meta = fs::metadata(tmp).map_err(|source| TestkitError::Io {
        path: tmp.to_path_buf(),
        source,
    })?;
    Ok(meta.len())
}

// ---------------------------------------------------------------------------------------
// Pseudo-random numbers

/// The SplitMix64 finaliser: a bijection on `u64` that mixes every input bit into every
/// output bit.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// SplitMix64 (Steele, Lea and Flood 2014). One stream per row: seeding costs one
/// hash, and rows need a few dozen draws, well within the quality SplitMix64 offers.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn for_row(seed: u64, row: u64) -> Self {
        // Distinct rows get distinct states: the multiplier is odd and `mix64` is a
        // bijection.
        Self(mix64(mix64(seed) ^ row.wrapping_mul(0xD1B5_4A32_D192_ED03)))
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.0)
    }

    /// Uniform in `[0, 1)`.
    fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    fn chance(&mut self, p: f64) -> bool {
        self.f64() < p
    }

    /// Uniform in `0..n` (Lemire's multiply-shift; the bias is below 2^-40 here).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Standard normal, by Box-Muller.
    fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.f64();
        let u2 = self.f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Log-normal with the given median and log-space standard deviation.
    fn lognormal(&mut self, median: f64, sigma: f64) -> f64 {
        median * (sigma * self.normal()).exp()
    }
}

// ---------------------------------------------------------------------------------------
// The model of a month of taxi trips

/// The awkward kinds of row; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Special {
    None,
    NullPattern,
    Refund,
    ZeroTotal,
    TipOnZeroTotal,
}

/// `(kind, period, salt)`, rarest first: the first kind to claim a row wins.
const SPECIALS: [(Special, u64, u64); 4] = [
    (Special::TipOnZeroTotal, 20_000, 0x7469_705F_7A65_726F),
    (Special::ZeroTotal, 3_333, 0x7A65_726F_5F74_6F74),
    (Special::Refund, 83, 0x7265_6675_6E64_7321),
    (Special::NullPattern, 29, 0x6E75_6C6C_5F70_6174),
];

fn special_kind(seed: u64, row: u64) -> Special {
    for (kind, period, salt) in SPECIALS {
        let block = row / period;
        if row % period == mix64(mix64(seed ^ salt) ^ block) % period {
            return kind;
        }
    }
    Special::None
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trip {
    City,
    Jfk,
    Lga,
    Newark,
}

const JFK: i32 = 132;
const LGA: i32 = 138;
const NEWARK: i32 = 1;
const OUTSIDE_NYC: i32 = 265;

/// Relative pickup/dropoff frequency of a taxi zone, for trips that do not start or end
/// at an airport. Roughly the September 2023 counts in thousands; zones not listed are
/// rare (weight 1), and airports are drawn separately.
fn zone_weight(zone: i32) -> u64 {
    match zone {
        JFK | LGA | NEWARK => 0,
        // Islands and parks without taxi traffic.
        103..=105 | 110 | 199 => 0,
        161 => 140,
        237 => 135,
        236 => 120,
        162 => 105,
        186 | 230 => 100,
        142 => 95,
        170 => 90,
        163 | 239 => 85,
        234 => 80,
        68 | 141 => 75,
        48 | 79 => 70,
        140 | 107 => 65,
        164 | 249 => 60,
        100 | 229 | 238 => 55,
        90 | 113 => 50,
        233 | 246 | 262 | 263 => 45,
        43 | 114 => 40,
        50 | 75 | 137 => 35,
        143 | 231 => 30,
        74 | 144 | 148 | 151 | 166 => 25,
        13 | 87 | 125 | 158 | 211 | 264 => 20,
        24 | 41 => 15,
        261 => 12,
        4 | 42 | 224 => 10,
        45 | 88 | 209 => 8,
        12 | 265 => 5,
        _ => 1,
    }
}

/// Relative pickups per hour of day, Monday to Friday and at weekends.
const WEEKDAY_HOURS: [f64; 24] = [
    2.0, 1.2, 0.8, 0.55, 0.5, 0.7, 1.8, 3.3, 4.2, 4.3, 4.3, 4.5, 4.8, 4.9, 5.3, 5.6, 5.6, 6.2, 6.6,
    6.0, 5.3, 5.2, 4.9, 3.8,
];
const WEEKEND_HOURS: [f64; 24] = [
    4.0, 3.2, 2.4, 1.6, 1.0, 0.7, 0.8, 1.3, 2.0, 2.9, 3.8, 4.5, 4.9, 5.0, 5.0, 5.0, 5.0, 5.1, 5.3,
    5.0, 4.7, 4.8, 4.9, 4.6,
];

/// Day of week of day `day` of September 2023, Monday = 0. September 1 was a Friday.
fn weekday(day: usize) -> usize {
    (day + 4) % 7
}

/// Weekends, and Labor Day (Monday, September 4).
fn is_weekend_like(day: usize) -> bool {
    weekday(day) >= 5 || day == 3
}

/// Tables shared by all rows, built once.
#[derive(Debug)]
struct Model {
    /// Cumulative pickup weight at the start of each hour of the month, and the total.
    hour_cum: Vec<f64>,
    /// Cumulative zone weights: `zone_cum[z - 1]` is the weight of zones `1..=z`.
    zone_cum: Vec<u64>,
}

impl Model {
    fn get() -> &'static Model {
        static MODEL: OnceLock<Model> = OnceLock::new();
        MODEL.get_or_init(|| {
            const DAY_FACTOR: [f64; 7] = [0.88, 0.98, 1.03, 1.08, 1.05, 1.0, 0.85];
            let mut hour_cum = Vec::with_capacity(MONTH_HOURS + 1);
            let mut total = 0.0;
            for day in 0..MONTH_DAYS {
                let hours = if is_weekend_like(day) {
                    &WEEKEND_HOURS
                } else {
                    &WEEKDAY_HOURS
                };
                for weight in hours {
                    hour_cum.push(total);
                    total += weight * DAY_FACTOR[weekday(day)];
                }
            }
            hour_cum.push(total);
            let zone_cum = (1..=265)
                .scan(0, |sum, zone| {
                    *sum += zone_weight(zone);
                    Some(*sum)
                })
                .collect();
            Model { hour_cum, zone_cum }
        })
    }

    /// Seconds after the start of the month of the pickup of row `row` of `total_rows`.
    fn pickup_second(&self, row: u64, total_rows: u64, rng: &mut Rng) -> i64 {
        let total_weight = self.hour_cum[MONTH_HOURS];
        let target = (row as f64 + 0.5) / total_rows as f64 * total_weight;
        let hour = self
            .hour_cum
            .partition_point(|&cum| cum <= target)
            .saturating_sub(1)
            .min(MONTH_HOURS - 1);
        let width = self.hour_cum[hour + 1] - self.hour_cum[hour];
        let within = ((target - self.hour_cum[hour]) / width).clamp(0.0, 1.0);
        let jitter = (rng.f64() * 2.0 - 1.0) * PICKUP_JITTER_S;
        let second = (hour as f64 + within) * 3600.0 + jitter;
        second.round().clamp(0.0, (MONTH_HOURS * 3600 - 1) as f64) as i64
    }

    fn zone(&self, rng: &mut Rng) -> i32 {
        let total = self.zone_cum[self.zone_cum.len() - 1];
        let pick = rng.below(total);
        self.zone_cum.partition_point(|&cum| cum <= pick) as i32 + 1
    }
}

/// One generated row; money in cents, so that totals add up exactly.
#[derive(Debug)]
struct Row {
    vendor: i32,
    pickup_us: i64,
    dropoff_us: i64,
    passengers: i64,
    distance: f64,
    ratecode: i64,
    store_and_fwd: bool,
    pu: i32,
    dropoff_zone: i32,
    payment: i64,
    fare: i64,
    extra: i64,
    mta_tax: i64,
    tip: i64,
    tolls: i64,
    improvement: i64,
    total: i64,
    congestion: i64,
    airport_fee: i64,
    /// The TLC NULL pattern: the five nullable columns are NULL.
    nulls: bool,
}

fn gen_row(model: &Model, seed: u64, total_rows: u64, row: u64) -> Row {
    let special = special_kind(seed, row);
    let mut rng = Rng::for_row(seed, row);

    let vendor = if rng.chance(0.27) { 1 } else { 2 };
    let u = rng.f64();
    let trip = if u < 0.058 {
        Trip::Jfk
    } else if u < 0.10 {
        Trip::Lga
    } else if u < 0.103 {
        Trip::Newark
    } else {
        Trip::City
    };
    let ratecode = match trip {
        Trip::Jfk if rng.chance(0.75) => 2,
        Trip::Jfk | Trip::Lga => 1,
        Trip::Newark => 3,
        Trip::City => match rng.f64() {
            v if v < 0.002 => 4,
            v if v < 0.008 => 5,
            v if v < 0.009 => 99,
            _ => 1,
        },
    };
    let (pu, dropoff_zone) = match trip {
        Trip::Jfk | Trip::Lga => {
            let airport = if trip == Trip::Jfk { JFK } else { LGA };
            let other = model.zone(&mut rng);
            if rng.chance(0.6) {
                (airport, other)
            } else {
                (other, airport)
            }
        }
        Trip::Newark => (model.zone(&mut rng), NEWARK),
        Trip::City if ratecode == 4 => (model.zone(&mut rng), OUTSIDE_NYC),
        Trip::City => {
            let pu = model.zone(&mut rng);
            let dropoff = if rng.chance(0.06) {
                pu
            } else {
                model.zone(&mut rng)
            };
            (pu, dropoff)
        }
    };

    let miles = match trip {
        Trip::Jfk => rng.lognormal(17.0, 0.18),
        Trip::Lga => rng.lognormal(9.5, 0.3),
        Trip::Newark => rng.lognormal(18.0, 0.12),
        Trip::City if ratecode == 4 => rng.lognormal(22.0, 0.3),
        Trip::City if rng.chance(0.015) => 0.0,
        Trip::City => rng.lognormal(1.7, 0.75),
    };
    let distance = (miles.min(120.0) * 100.0).round() / 100.0;
    let mph = match trip {
        Trip::City => rng.lognormal(10.5, 0.3),
        _ => rng.lognormal(19.0, 0.25),
    };
    let minutes = if distance == 0.0 {
        rng.lognormal(4.0, 0.8)
    } else {
        1.5 + distance / mph * 60.0
    };
    let duration_s = (minutes * 60.0).round().clamp(30.0, 4.0 * 3600.0) as i64;
    let pickup_s = model.pickup_second(row, total_rows, &mut rng);
    let pickup_us = START_US + pickup_s * 1_000_000;
    let dropoff_us = pickup_us + duration_s * 1_000_000;

    let passengers = match rng.f64() {
        v if v < 0.755 => 1,
        v if v < 0.905 => 2,
        v if v < 0.943 => 3,
        v if v < 0.964 => 4,
        v if v < 0.983 => 5,
        _ => 6,
    };
    // Only vendor 1's devices store and forward.
    let store_and_fwd = vendor == 1 && rng.chance(0.018);
    let mut payment = match rng.f64() {
        v if v < 0.805 => 1,
        v if v < 0.983 => 2,
        v if v < 0.989 => 3,
        _ => 4,
    };

    // 2023 rates: $3 on entry plus $0.70 per fifth of a mile, or per minute in slow traffic.
    let units = (distance * 5.0 + minutes * 0.25).round() as i64;
    let metered = 300 + 70 * units;
    let mut fare = match ratecode {
        2 => 7_000,
        3 => metered + 2_000,
        4 => metered + 35 * units,
        5 => 500 * (rng.lognormal(12.0, 0.5).round() as i64).max(1),
        _ => metered,
    };
    let day = (pickup_s / 86_400) as usize;
    let hour = pickup_s % 86_400 / 3_600;
    let rush = !is_weekend_like(day) && (16..20).contains(&hour);
    let overnight = !(6..20).contains(&hour);
    let mut extra = match ratecode {
        2 if rush => 500,
        2 | 5 => 0,
        _ if rush => 250,
        _ if overnight => 100,
        _ => 0,
    };
    let mut mta_tax = 50;
    let mut improvement = 100;
    let congestion_chance = match trip {
        Trip::City => 0.95,
        Trip::Newark => 0.9,
        Trip::Jfk | Trip::Lga => 0.55,
    };
    let mut congestion = if rng.chance(congestion_chance) {
        250
    } else {
        0
    };
    let mut airport_fee = if pu == JFK || pu == LGA { 175 } else { 0 };
    let toll_chance = match trip {
        Trip::Jfk | Trip::Lga => 0.3,
        Trip::Newark => 0.9,
        Trip::City if ratecode == 4 => 0.5,
        Trip::City => 0.03,
    };
    let mut tolls = if !rng.chance(toll_chance) {
        0
    } else if trip == Trip::Newark {
        1_738
    } else if rng.chance(0.1) {
        1_388
    } else {
        694
    };
    // The null-pattern rows come from street-hail apps whose riders tip like card payers.
    let mut tip = if (payment == 1 || special == Special::NullPattern) && !rng.chance(0.1) {
        let pct = match rng.f64() {
            v if v < 0.45 => 0.20,
            v if v < 0.65 => 0.25,
            v if v < 0.75 => 0.30,
            _ => 0.10 + 0.25 * rng.f64(),
        };
        ((fare + extra) as f64 * pct).round() as i64
    } else {
        0
    };

    let mut nulls = false;
    match special {
        Special::None => {}
        Special::NullPattern => {
            nulls = true;
            payment = 0;
            congestion = 0;
            airport_fee = 0;
        }
        Special::Refund => {
            payment = if rng.chance(0.7) { 4 } else { 3 };
            tip = 0;
        }
        Special::ZeroTotal | Special::TipOnZeroTotal => {
            fare = 0;
            extra = 0;
            mta_tax = 0;
            tolls = 0;
            improvement = 0;
            congestion = 0;
            airport_fee = 0;
            tip = 0;
            if special == Special::TipOnZeroTotal {
                payment = 1;
                tip = 100 + rng.below(900) as i64;
            }
        }
    }
    let mut total = if special == Special::TipOnZeroTotal {
        0
    } else {
        fare + extra + mta_tax + tip + tolls + improvement + congestion + airport_fee
    };
    if special == Special::Refund {
        // Integer cents: negating 0 gives 0, never the -0.0 a float would.
        for amount in [
            &mut fare,
            &mut extra,
            &mut mta_tax,
            &mut tip,
            &mut tolls,
            &mut improvement,
            &mut congestion,
            &mut airport_fee,
            &mut total,
        ] {
            *amount = -*amount;
        }
    }

    Row {
        vendor,
        pickup_us,
        dropoff_us,
        passengers,
        distance,
        ratecode,
        store_and_fwd,
        pu,
        dropoff_zone,
        payment,
        fare,
        extra,
        mta_tax,
        tip,
        tolls,
        improvement,
        total,
        congestion,
        airport_fee,
        nulls,
    }
}

/// Builds the batch of global rows `rows` of an output of `total_rows` rows.
fn build_batch(seed: u64, total_rows: u64, rows: Range<u64>) -> Result<RecordBatch, ArrowError> {
    let model = Model::get();
    let n = (rows.end - rows.start) as usize;
    let mut vendor = Vec::with_capacity(n);
    let mut pickup = Vec::with_capacity(n);
    let mut dropoff = Vec::with_capacity(n);
    let mut passengers = Vec::with_capacity(n);
    let mut distance = Vec::with_capacity(n);
    let mut ratecode = Vec::with_capacity(n);
    let mut flag = Vec::with_capacity(n);
    let mut pu = Vec::with_capacity(n);
    let mut dropoff_zone = Vec::with_capacity(n);
    let mut payment = Vec::with_capacity(n);
    let mut valid = Vec::with_capacity(n);
    let mut money: [Vec<f64>; 9] = std::array::from_fn(|_| Vec::with_capacity(n));
    for row in rows {
        let r = gen_row(model, seed, total_rows, row);
        vendor.push(r.vendor);
        pickup.push(r.pickup_us);
        dropoff.push(r.dropoff_us);
        passengers.push(r.passengers);
        distance.push(r.distance);
        ratecode.push(r.ratecode);
        flag.push(match (r.nulls, r.store_and_fwd) {
            (true, _) => None,
            (false, true) => Some("Y"),
            (false, false) => Some("N"),
        });
        pu.push(r.pu);
        dropoff_zone.push(r.dropoff_zone);
        payment.push(r.payment);
        valid.push(!r.nulls);
        let cents = [
            r.fare,
            r.extra,
            r.mta_tax,
            r.tip,
            r.tolls,
            r.improvement,
            r.total,
            r.congestion,
            r.airport_fee,
        ];
        for (column, cents) in money.iter_mut().zip(cents) {
            // Division is correctly rounded: the nearest f64 to the decimal, as a parser
            // of "12.34" would give.
            column.push(cents as f64 / 100.0);
        }
    }
    let nulls = Some(NullBuffer::from(valid)).filter(|nulls| nulls.null_count() > 0);
    let [
        fare,
        extra,
        mta_tax,
        tip,
        tolls,
        improvement,
        total,
        congestion,
        airport_fee,
    ] = money;
    let float = |values: Vec<f64>| -> ArrayRef { Arc::new(Float64Array::new(values.into(), None)) };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int32Array::new(vendor.into(), None)),
        Arc::new(TimestampMicrosecondArray::new(pickup.into(), None)),
        Arc::new(TimestampMicrosecondArray::new(dropoff.into(), None)),
        Arc::new(Int64Array::new(passengers.into(), nulls.clone())),
        float(distance),
        Arc::new(Int64Array::new(ratecode.into(), nulls.clone())),
        Arc::new(StringArray::from(flag)),
        Arc::new(Int32Array::new(pu.into(), None)),
        Arc::new(Int32Array::new(dropoff_zone.into(), None)),
        Arc::new(Int64Array::new(payment.into(), None)),
        float(fare),
        float(extra),
        float(mta_tax),
        float(tip),
        float(tolls),
        float(improvement),
        float(total),
        Arc::new(Float64Array::new(congestion.into(), nulls.clone())),
        Arc::new(Float64Array::new(airport_fee.into(), nulls)),
    ];
    RecordBatch::try_new(taxi_schema(), columns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};
    use arrow::compute::concat_batches;
    use arrow::datatypes::{Float64Type, Int32Type, Int64Type, TimestampMicrosecondType};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    fn read_parquet(path: &Path) -> Vec<RecordBatch> {
        let file = File::open(path).unwrap();
        ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    fn read_all(paths: &[PathBuf]) -> RecordBatch {
        let batches: Vec<_> = paths.iter().flat_map(|p| read_parquet(p)).collect();
        concat_batches(&taxi_schema(), &batches).unwrap()
    }

    fn generate(opts: &TaxiGenOptions) -> RecordBatch {
        let batches: Vec<_> = generate_batches(opts).collect();
        concat_batches(&taxi_schema(), &batches).unwrap()
    }

    fn f64_col<'a>(batch: &'a RecordBatch, name: &str) -> &'a Float64Array {
        batch
            .column_by_name(name)
            .unwrap()
            .as_primitive::<Float64Type>()
    }

    fn i64_col<'a>(batch: &'a RecordBatch, name: &str) -> &'a Int64Array {
        batch
            .column_by_name(name)
            .unwrap()
            .as_primitive::<Int64Type>()
    }

    #[test]
    fn schema_has_the_19_tlc_columns_in_order() {
        let ts = DataType::Timestamp(TimeUnit::Microsecond, None);
        let expected = [
            ("VendorID", DataType::Int32, false),
            ("tpep_pickup_datetime", ts.clone(), false),
            ("tpep_dropoff_datetime", ts, false),
            ("passenger_count", DataType::Int64, true),
            ("trip_distance", DataType::Float64, false),
            ("RatecodeID", DataType::Int64, true),
            ("store_and_fwd_flag", DataType::Utf8, true),
            ("PULocationID", DataType::Int32, false),
            ("DOLocationID", DataType::Int32, false),
            ("payment_type", DataType::Int64, false),
            ("fare_amount", DataType::Float64, false),
            ("extra", DataType::Float64, false),
            ("mta_tax", DataType::Float64, false),
            ("tip_amount", DataType::Float64, false),
            ("tolls_amount", DataType::Float64, false),
            ("improvement_surcharge", DataType::Float64, false),
            ("total_amount", DataType::Float64, false),
            ("congestion_surcharge", DataType::Float64, true),
            ("Airport_fee", DataType::Float64, true),
        ];
        let schema = taxi_schema();
        assert_eq!(schema.fields().len(), 19);
        for (field, (name, data_type, nullable)) in schema.fields().iter().zip(expected) {
            assert_eq!(field.name(), name);
            assert_eq!(field.data_type(), &data_type, "{name}");
            assert_eq!(field.is_nullable(), nullable, "{name}");
        }
    }

    #[test]
    fn same_options_give_byte_identical_files() {
        let dir = tempfile::TempDir::new().unwrap();
        let opts = TaxiGenOptions::new(30_000).with_batch_rows(10_000);
        let a = dir.path().join("a.parquet");
        let b = dir.path().join("b.parquet");
        let c = dir.path().join("c.parquet");
        write_taxi_parquet(&a, &opts).unwrap();
        write_taxi_parquet(&b, &opts).unwrap();
        write_taxi_parquet(&c, &opts.with_seed(43)).unwrap();
        let a = fs::read(a).unwrap();
        assert_eq!(a, fs::read(b).unwrap());
        assert_ne!(a, fs::read(c).unwrap());
    }

    #[test]
    fn split_files_concatenate_to_the_single_file() {
        let dir = tempfile::TempDir::new().unwrap();
        let rows = 50_003;
        let single = dir.path().join("all.parquet");
        let single = write_taxi_parquet(&single, &TaxiGenOptions::new(rows)).unwrap();
        let split_opts = TaxiGenOptions::new(rows)
            .with_files(3)
            .with_batch_rows(7_000)
            .with_row_group_rows(10_000);
        let split = write_taxi_parquet(&dir.path().join("parts"), &split_opts).unwrap();

        let names: Vec<_> = split
            .files
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            names,
            [
                "part-00000.parquet",
                "part-00001.parquet",
                "part-00002.parquet"
            ]
        );
        let whole = read_all(&single.files);
        assert_eq!(whole.num_rows() as u64, rows);
        assert_eq!(whole, read_all(&split.files));
        assert_eq!(
            whole,
            generate(&TaxiGenOptions::new(rows).with_batch_rows(999))
        );
        // No temporary files are left behind.
        assert_eq!(fs::read_dir(dir.path().join("parts")).unwrap().count(), 3);
    }

    #[test]
    fn row_counts_are_exact_when_rows_do_not_divide_evenly() {
        let dir = tempfile::TempDir::new().unwrap();
        for (rows, files, batch_rows) in [(10_007, 4, 1_000), (3, 5, 2), (0, 1, 10), (0, 2, 10)] {
            let out = dir.path().join(format!("out-{rows}-{files}"));
            let opts = TaxiGenOptions::new(rows)
                .with_files(files)
                .with_batch_rows(batch_rows);
            let summary = write_taxi_parquet(&out, &opts).unwrap();
            assert_eq!(summary.rows, rows);
            assert_eq!(summary.files.len(), files);
            let per_file: Vec<u64> = summary
                .files
                .iter()
                .map(|p| read_parquet(p).iter().map(|b| b.num_rows() as u64).sum())
                .collect();
            assert_eq!(per_file.iter().sum::<u64>(), rows);
            let (min, max) = (
                per_file.iter().min().unwrap(),
                per_file.iter().max().unwrap(),
            );
            assert!(max - min <= 1, "uneven split {per_file:?}");
            let batches: Vec<_> = generate_batches(&opts).collect();
            assert_eq!(batches.len() as u64, rows.div_ceil(batch_rows as u64));
            assert!(batches.iter().all(|b| b.num_rows() <= batch_rows));
            assert_eq!(
                batches.iter().map(|b| b.num_rows() as u64).sum::<u64>(),
                rows
            );
        }
    }

    #[test]
    fn special_rows_are_present_in_100k_rows() {
        let batch = generate(&TaxiGenOptions::new(100_000).with_seed(1234));
        let passengers = i64_col(&batch, "passenger_count");
        let ratecode = i64_col(&batch, "RatecodeID");
        let flag = batch.column_by_name("store_and_fwd_flag").unwrap();
        let congestion = f64_col(&batch, "congestion_surcharge");
        let airport_fee = f64_col(&batch, "Airport_fee");
        let payment = i64_col(&batch, "payment_type");
        let fare = f64_col(&batch, "fare_amount");
        let tip = f64_col(&batch, "tip_amount");
        let total = f64_col(&batch, "total_amount");

        let (mut nulls, mut refunds, mut nan, mut inf) = (0, 0, 0, 0);
        for i in 0..batch.num_rows() {
            let null = passengers.is_null(i);
            assert_eq!(null, ratecode.is_null(i));
            assert_eq!(null, flag.is_null(i));
            assert_eq!(null, congestion.is_null(i));
            assert_eq!(null, airport_fee.is_null(i));
            assert_eq!(null, payment.value(i) == 0);
            nulls += usize::from(null);
            if total.value(i) < 0.0 {
                assert!(fare.value(i) <= 0.0 && tip.value(i) <= 0.0);
                refunds += 1;
            }
            let share = tip.value(i) / total.value(i);
            nan += usize::from(share.is_nan());
            inf += usize::from(share.is_infinite());
        }
        let share = |count: usize| count as f64 / batch.num_rows() as f64;
        assert!(
            (0.03..0.04).contains(&share(nulls)),
            "null share {}",
            share(nulls)
        );
        assert!(
            (0.01..0.014).contains(&share(refunds)),
            "refund share {}",
            share(refunds)
        );
        assert!((20..=40).contains(&nan), "{nan} rows with 0/0");
        assert_eq!(inf, 5, "one row with x/0 per 20,000");
    }

    #[test]
    fn values_look_like_september_2023_trips() {
        let batch = generate(&TaxiGenOptions::new(100_000));
        let n = batch.num_rows();
        let col = |name| batch.column_by_name(name).unwrap();
        let pickup = col("tpep_pickup_datetime").as_primitive::<TimestampMicrosecondType>();
        let dropoff = col("tpep_dropoff_datetime").as_primitive::<TimestampMicrosecondType>();
        let vendor = col("VendorID").as_primitive::<Int32Type>();
        let pu = col("PULocationID").as_primitive::<Int32Type>();
        let dropoff_zone = col("DOLocationID").as_primitive::<Int32Type>();
        let distance = f64_col(&batch, "trip_distance");
        let payment = i64_col(&batch, "payment_type");
        let end_us = START_US + MONTH_HOURS as i64 * 3_600_000_000;
        let money = [
            "fare_amount",
            "extra",
            "mta_tax",
            "tip_amount",
            "tolls_amount",
            "improvement_surcharge",
            "congestion_surcharge",
            "Airport_fee",
        ]
        .map(|name| f64_col(&batch, name));
        let total = f64_col(&batch, "total_amount");
        let tip = f64_col(&batch, "tip_amount");

        let mut out_of_order = 0;
        for i in 0..n {
            assert!((START_US..end_us).contains(&pickup.value(i)));
            assert!(dropoff.value(i) > pickup.value(i));
            assert!((1..=265).contains(&pu.value(i)) && (1..=265).contains(&dropoff_zone.value(i)));
            if i > 0 && pickup.value(i) < pickup.value(i - 1) {
                out_of_order += 1;
            }
            let sum: f64 = money
                .iter()
                .map(|c| if c.is_null(i) { 0.0 } else { c.value(i) })
                .sum();
            let tip_on_zero = total.value(i) == 0.0 && tip.value(i) > 0.0;
            assert!(
                tip_on_zero || (sum - total.value(i)).abs() < 0.005,
                "row {i}"
            );
        }
        // Roughly sorted: jittered, but neither sorted nor shuffled.
        assert!(out_of_order > 0 && out_of_order < n / 2, "{out_of_order}");
        let share =
            |pred: &dyn Fn(usize) -> bool| (0..n).filter(|&i| pred(i)).count() as f64 / n as f64;
        let vendor_1 = share(&|i| vendor.value(i) == 1);
        assert!((0.25..0.29).contains(&vendor_1), "{vendor_1}");
        let card = share(&|i| payment.value(i) == 1);
        assert!((0.74..0.80).contains(&card), "{card}");
        let mean_distance = distance.values().iter().sum::<f64>() / n as f64;
        assert!((3.0..4.0).contains(&mean_distance), "{mean_distance}");
    }

    #[test]
    fn zero_options_are_rejected() {
        let dir = tempfile::TempDir::new().unwrap();
        for (opts, name) in [
            (TaxiGenOptions::new(1).with_files(0), "files"),
            (TaxiGenOptions::new(1).with_batch_rows(0), "batch_rows"),
            (
                TaxiGenOptions::new(1).with_row_group_rows(0),
                "row_group_rows",
            ),
        ] {
            let err = write_taxi_parquet(dir.path(), &opts).unwrap_err();
            assert!(
                matches!(err, TestkitError::InvalidOption { option, value: 0 } if option == name),
                "{err}"
            );
        }
    }

    #[test]
    fn stale_part_files_fail_the_write_before_anything_is_written() {
        let dir = tempfile::TempDir::new().unwrap();
        write_taxi_parquet(dir.path(), &TaxiGenOptions::new(100).with_files(3)).unwrap();
        let before = fs::read(dir.path().join("part-00000.parquet")).unwrap();
        let err = write_taxi_parquet(
            dir.path(),
            &TaxiGenOptions::new(100).with_files(2).with_seed(1),
        )
        .unwrap_err();
        let TestkitError::StaleOutput { path } = err else {
            panic!("unexpected error {err}");
        };
        assert!(path.ends_with("part-00002.parquet"));
        assert_eq!(
            before,
            fs::read(dir.path().join("part-00000.parquet")).unwrap()
        );
        // Rewriting with as many files or more is fine.
        write_taxi_parquet(dir.path(), &TaxiGenOptions::new(100).with_files(4)).unwrap();
    }

    #[test]
    fn a_missing_parent_directory_is_created() {
        let dir = tempfile::TempDir::new().unwrap();
        let out = dir.path().join("a/b/trips.parquet");
        let summary = write_taxi_parquet(&out, &TaxiGenOptions::new(10)).unwrap();
        assert_eq!(summary.files, std::slice::from_ref(&out));
        assert_eq!(summary.bytes, fs::metadata(out).unwrap().len());
    }

    #[test]
    fn io_errors_name_the_path() {
        let dir = tempfile::TempDir::new().unwrap();
        let blocker = dir.path().join("not-a-dir");
        fs::write(&blocker, b"x").unwrap();
        let err =
            write_taxi_parquet(&blocker.join("t.parquet"), &TaxiGenOptions::new(10)).unwrap_err();
        let TestkitError::Io { path, .. } = &err else {
            panic!("unexpected error {err}");
        };
        assert_eq!(path, &blocker);
    }
}
