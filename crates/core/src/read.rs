//! Options for sources: [`ParquetRead`].

use serde::{Deserialize, Serialize};

/// How [`Session::read_parquet_with`](crate::Session::read_parquet_with) reads a
/// Parquet source (one file, a directory or a glob, on any store).
///
/// # Schema evolution across files
///
/// When the files of a source have different schemas, Sluice reads each file's
/// schema from its footer (concurrently; no row data) and unifies them by this rule:
///
/// - **Columns** are matched by name, case-sensitively unless
///   [`with_case_insensitive_names`](Self::with_case_insensitive_names) is set. They
///   come in order of first appearance, taking the files in URL order.
/// - **Missing columns** read as nulls in the files that lack them; such a column is
///   nullable. A column is also nullable when it is nullable in any file.
/// - **Types** unify pairwise:
///   - integers give the smallest integer type that holds both (`Int32` + `Int64` →
///     `Int64`, `Int8` + `UInt8` → `Int16`; `UInt64` with a signed type conflicts);
///   - floats give the wider float (`Float32` + `Float64` → `Float64`);
///   - an integer and a float give `Float64` (integers beyond 2⁵³ lose precision);
///   - decimals give the smallest decimal that holds both;
///   - timestamps must have the same time zone (or none in both), and give the
///     **coarser** unit (µs + ns → µs): nanoseconds only span the
///     years 1677–2262, so a microsecond file with a date outside them could not be
///     read as nanoseconds, while digits below a microsecond are truncated;
///   - `Utf8`, `LargeUtf8` and `Utf8View` give `Utf8View` if either is a view and
///     `LargeUtf8` otherwise (binary types likewise; DataFusion reads Parquet strings as
///     `Utf8View` by default, so this is usually `Utf8View`);
///   - a column of nulls (`Null`) takes the other file's type, and a dictionary
///     unifies as its value type;
///   - any other pair (nested types included) must be equal, or the read fails with
///     [`Error::SchemaMismatch`](crate::Error::SchemaMismatch), which names both files,
///     the column and both types.
///
/// **Names that differ only in case** (`Airport_fee` and `airport_fee`) are two
/// columns by default, as in DataFusion (a warning is logged). With case-insensitive
/// names they are one column, spelled as in the first file (in URL order) that has
/// it; a file that has both spellings fails with
/// [`Error::AmbiguousColumnNames`](crate::Error::AmbiguousColumnNames).
///
/// DataFusion then casts each file's columns to the unified types while it streams.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> sluice_core::Result<()> {
/// use sluice_core::{col, ParquetRead, ParquetWrite, Session};
///
/// let session = Session::new();
/// let dir = tempfile::tempdir().unwrap();
/// // Two files: `VendorID` as Int32, then `vendorid` as Int64 with a new column.
/// let a = session.sql("SELECT arrow_cast(1, 'Int32') AS \"VendorID\"", []).await?;
/// a.write_parquet(&format!("{}/a.parquet", dir.path().display()), ParquetWrite::default()).await?;
/// let b = session.sql("SELECT arrow_cast(2, 'Int64') AS vendorid, 1.5 AS fee", []).await?;
/// b.write_parquet(&format!("{}/b.parquet", dir.path().display()), ParquetWrite::default()).await?;
///
/// let options = ParquetRead::default().with_case_insensitive_names(true);
/// let frame = session.read_parquet_with(&format!("{}/*.parquet", dir.path().display()), options).await?;
/// assert_eq!(frame.columns(), ["VendorID", "fee"]);
/// let schema = frame.schema();
/// assert_eq!(schema.field(0).data_type(), &datafusion::arrow::datatypes::DataType::Int64);
/// assert!(schema.field(1).is_nullable()); // a.parquet has no `fee`: nulls there
/// assert_eq!(frame.filter(col("VendorID").gt(sluice_core::lit(0)))?.count().await?, 2);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParquetRead {
    pub(crate) case_insensitive_names: bool,
}

impl ParquetRead {
    /// The defaults: case-sensitive names.
    pub fn new() -> Self {
        Self::default()
    }

    /// Matches columns across files by name regardless of case (`VendorID` and
    /// `vendorid` are one column, spelled as in the first file, in URL order, that has
    /// it). Off by default, as in DataFusion.
    ///
    /// It is part of a read's identity: a checkpoint computed from a case-insensitive
    /// read is not reused for a case-sensitive one of the same files.
    pub fn with_case_insensitive_names(mut self, on: bool) -> Self {
        self.case_insensitive_names = on;
        self
    }

    /// Whether names are matched regardless of case.
    pub fn case_insensitive_names(&self) -> bool {
        self.case_insensitive_names
    }

    /// The options as they enter a read's lineage (and so cache keys): empty for the
    /// defaults, so that keys made before this option existed stay valid.
    pub(crate) fn describe(&self) -> String {
        if self.case_insensitive_names {
            "case_insensitive_names".into()
        } else {
            String::new()
        }
    }
}
