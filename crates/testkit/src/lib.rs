//! Test fixtures for Sluice.
//!
//! This crate is `publish = false`: it holds what Sluice's own tests, examples and
//! benches share, so that each of them does not grow its own copy.
//!
//! - [`taxi`]: a deterministic generator of NYC yellow-taxi trip data with the real
//!   2023 TLC schema, written as Parquet. The same `(rows, seed)` always gives the
//!   same rows, and the same options give byte-identical files, so benches compare
//!   like with like and tests can assert exact numbers. The rows include the awkward
//!   cases of the real data (the all-NULL pattern, refunds, zero totals).
//! - [`counting_store`]: an instrumented object store that counts the requests and
//!   bytes a query makes, for tests that assert how much Sluice reads.
//! - [`servers`]: real servers on loopback for the storage tests: an S3-compatible
//!   server (`s3s-fs`, in-process) and an HTTP file server with range requests, both
//!   counting the bytes they send and able to inject faults.
//! - [`faults`]: a fault-injecting HTTP proxy in front of either server: 500, 503,
//!   S3 `SlowDown`, latency, resets and bodies cut short, on chosen requests or at a
//!   seeded rate, counted by kind.
//!
//! The `sluice gen-taxi` command of the `sluice-cli` crate is a thin shell over
//! [`taxi::write_taxi_parquet`].
//!
//! # Example
//!
//! ```
//! use sluice_testkit::taxi::{TaxiGenOptions, write_taxi_parquet};
//!
//! # fn main() -> sluice_testkit::Result<()> {
//! let dir = tempfile::TempDir::new().unwrap();
//! let out = dir.path().join("trips.parquet");
//! let summary = write_taxi_parquet(&out, &TaxiGenOptions::new(10_000))?;
//! assert_eq!(summary.rows, 10_000);
//! assert_eq!(summary.files, vec![out]);
//! # Ok(())
//! # }
//! ```

pub mod counting_store;
pub mod faults;
mod s3_backend;
pub mod servers;
pub mod taxi;

use std::path::PathBuf;

/// Errors of the test kit.
///
/// I/O and Parquet failures are infrastructure problems (a missing or read-only
/// directory, a full disk); [`TestkitError::InvalidOption`] and
/// [`TestkitError::StaleOutput`] are the caller's; [`TestkitError::Arrow`] is a bug in
/// this crate.
///
/// # Example
///
/// ```
/// use sluice_testkit::TestkitError;
/// use sluice_testkit::taxi::{TaxiGenOptions, write_taxi_parquet};
///
/// let dir = tempfile::TempDir::new().unwrap();
/// let err = write_taxi_parquet(dir.path(), &TaxiGenOptions::new(10).with_files(0)).unwrap_err();
/// assert!(matches!(err, TestkitError::InvalidOption { option: "files", .. }));
/// ```
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    /// Reading or writing a local file or directory failed.
    #[error("I/O error on {path}; check the path and its permissions")]
    Io {
        /// The file or directory being accessed.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The Parquet writer failed.
    #[error("could not write Parquet file {path}")]
    Parquet {
        /// The file being written (its final name, not the temporary one).
        path: PathBuf,
        /// The underlying error.
        source: parquet::errors::ParquetError,
    },
    /// Building an Arrow record batch failed. This is a bug in `sluice-testkit`:
    /// please report it with the options used.
    #[error(
        "could not build a record batch for {path}; this is a bug in sluice-testkit, please report it"
    )]
    Arrow {
        /// The file the batch was meant for.
        path: PathBuf,
        /// The underlying error.
        source: arrow::error::ArrowError,
    },
    /// An option has a value the generator cannot use.
    #[error("taxi generator option `{option}` must be at least 1, got {value}")]
    InvalidOption {
        /// The option's name, as in `TaxiGenOptions::with_<option>`.
        option: &'static str,
        /// The rejected value.
        value: u64,
    },
    /// The output directory holds a part file that this run would not overwrite,
    /// left over from an earlier run with more files. Reading the directory would mix
    /// the two runs, so nothing was written.
    #[error(
        "{path} is left over from an earlier run with more files; remove it or write to an empty directory"
    )]
    StaleOutput {
        /// The stale file.
        path: PathBuf,
    },
    /// A test server could not start (binding a loopback port, creating its root).
    #[error("could not start a test server: {source}")]
    Server {
        /// The underlying error.
        source: std::io::Error,
    },
    /// The S3 server library refused its configuration.
    #[error("could not start the S3 test server: {message}")]
    S3 {
        /// Its error (s3s-fs errors implement only `Debug`).
        message: String,
    },
}

/// The result type of this crate.
pub type Result<T, E = TestkitError> = std::result::Result<T, E>;
