//! Options for sinks: [`ParquetWrite`] and [`CsvWrite`].

use datafusion::common::config::{CsvOptions, TableParquetOptions};
use datafusion::execution::SessionState;
use serde::{Deserialize, Serialize};
use sluice_store::OutputKind;
use url::Url;

use crate::{Error, Result};

/// Whether a sink writes one file or a directory of part files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteLayout {
    /// One file when the destination has a file extension and no trailing `/`;
    /// otherwise a directory of parts.
    #[default]
    Auto,
    /// Exactly one file at the destination.
    SingleFile,
    /// A directory of part files (written in parallel, one per partition).
    Directory,
}

impl WriteLayout {
    pub(crate) fn resolve(self, url: &Url, _extension: &str) -> OutputKind {
        match self {
            WriteLayout::SingleFile => OutputKind::File,
            WriteLayout::Directory => OutputKind::Directory,
            WriteLayout::Auto => {
                let path = url.path();
                let last = path.rsplit('/').next().unwrap_or("");
                if path.ends_with('/') || !last.contains('.') {
                    OutputKind::Directory
                } else {
                    OutputKind::File
                }
            }
        }
    }
}

/// A Parquet compression codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Compression {
    /// No compression.
    Uncompressed,
    /// Snappy.
    Snappy,
    /// LZ4 (raw).
    Lz4,
    /// Zstandard at a level from 1 to 22.
    Zstd(i32),
    /// Gzip at a level from 0 to 9.
    Gzip(u32),
}

impl Compression {
    /// The codec as the parquet crate names it, for writers Sluice drives itself.
    pub(crate) fn to_parquet(self) -> Result<parquet::basic::Compression> {
        use parquet::basic::{Compression as Pq, GzipLevel, ZstdLevel};
        let invalid = |e: parquet::errors::ParquetError| Error::InvalidOption {
            option: "compression",
            reason: e.to_string(),
        };
        Ok(match self {
            Compression::Uncompressed => Pq::UNCOMPRESSED,
            Compression::Snappy => Pq::SNAPPY,
            Compression::Lz4 => Pq::LZ4_RAW,
            Compression::Zstd(level) => Pq::ZSTD(ZstdLevel::try_new(level).map_err(invalid)?),
            Compression::Gzip(level) => Pq::GZIP(GzipLevel::try_new(level).map_err(invalid)?),
        })
    }

    fn as_option(self) -> Result<String> {
        Ok(match self {
            Compression::Uncompressed => "uncompressed".into(),
            Compression::Snappy => "snappy".into(),
            Compression::Lz4 => "lz4_raw".into(),
            Compression::Zstd(level) if (1..=22).contains(&level) => format!("zstd({level})"),
            Compression::Gzip(level) if level <= 9 => format!("gzip({level})"),
            other => {
                return Err(Error::InvalidOption {
                    option: "compression",
                    reason: format!("{other:?} has a level out of range (zstd: 1-22, gzip: 0-9)"),
                });
            }
        })
    }
}

/// How [`Frame::write_parquet`](crate::Frame::write_parquet) writes: codec and level,
/// row-group size, one file or a directory of parts.
///
/// ```
/// use sluice_core::{ParquetWrite, WriteLayout};
/// let options = ParquetWrite::zstd(3).with_row_group_rows(500_000).with_layout(WriteLayout::SingleFile);
/// # let _ = options;
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParquetWrite {
    pub(crate) compression: Compression,
    pub(crate) row_group_rows: usize,
    pub(crate) layout: WriteLayout,
    #[serde(default = "on")]
    pub(crate) column_copy: bool,
    #[serde(default)]
    pub(crate) recompress: bool,
    #[serde(default = "on")]
    pub(crate) validate: bool,
}

fn on() -> bool {
    true
}

impl Default for ParquetWrite {
    /// Zstandard level 3, row groups of [`DEFAULT_ROW_GROUP_ROWS`](Self::DEFAULT_ROW_GROUP_ROWS),
    /// layout from the URL.
    fn default() -> Self {
        Self::zstd(3)
    }
}

impl ParquetWrite {
    /// Rows per row group unless set: 262,144 (2¹⁸). The writer holds the
    /// encoded row group in memory until it is complete, so this bounds a sink's
    /// memory; DataFusion's own default (1,048,576) costs about 30 MiB more peak RSS
    /// on the seed ETL at no gain in speed (see `docs/BENCHMARKS.md`).
    ///
    /// ```
    /// assert_eq!(sluice_core::ParquetWrite::DEFAULT_ROW_GROUP_ROWS, 1 << 18);
    /// ```
    pub const DEFAULT_ROW_GROUP_ROWS: usize = 262_144;

    /// Zstandard at `level` (1-22).
    pub fn zstd(level: i32) -> Self {
        Self::with_compression(Compression::Zstd(level))
    }

    /// Snappy, the codec of the NYC TLC files.
    pub fn snappy() -> Self {
        Self::with_compression(Compression::Snappy)
    }

    /// Any codec.
    pub fn with_compression(compression: Compression) -> Self {
        Self {
            compression,
            row_group_rows: Self::DEFAULT_ROW_GROUP_ROWS,
            layout: WriteLayout::Auto,
            column_copy: true,
            recompress: false,
            validate: true,
        }
    }

    /// Rows per row group. A write that copies unchanged columns (see
    /// [`with_column_copy`](Self::with_column_copy)) keeps the input's row groups instead.
    pub fn with_row_group_rows(mut self, rows: usize) -> Self {
        self.row_group_rows = rows.max(1);
        self
    }

    /// One file or a directory of parts.
    pub fn with_layout(mut self, layout: WriteLayout) -> Self {
        self.layout = layout;
        self
    }

    /// Whether columns the plan leaves unchanged may be moved as compressed pages
    /// instead of decoded and encoded again (on by default; the session can turn it off
    /// too, see [`SessionBuilder::with_column_copy`](crate::SessionBuilder::with_column_copy)).
    ///
    /// The copy serves plans that keep, drop or add columns of Parquet scans: one output
    /// row group per input row group, the same rows in the same order. Anything else is
    /// written by DataFusion's sink; [`WriteSummary::path`](crate::WriteSummary::path)
    /// says which ran and why.
    ///
    /// ```
    /// let options = sluice_core::ParquetWrite::default().with_column_copy(false);
    /// # let _ = options;
    /// ```
    pub fn with_column_copy(mut self, on: bool) -> Self {
        self.column_copy = on;
        self
    }

    /// Whether copied column chunks whose codec is already the output's are compressed
    /// again (off by default). Parquet records a chunk's codec but not its level: a
    /// chunk written with zstd(1) is kept as it is under a zstd(3) write unless this
    /// is on. A chunk in another codec is always compressed again, page by page.
    ///
    /// ```
    /// let options = sluice_core::ParquetWrite::zstd(9).with_recompression(true);
    /// # let _ = options;
    /// ```
    pub fn with_recompression(mut self, on: bool) -> Self {
        self.recompress = on;
        self
    }

    /// Whether copied columns are decoded (and their values dropped) to check them
    /// before they are written (on by default). A value that does not decode (invalid
    /// UTF-8, a dictionary index out of range) then fails the write as a rewrite would,
    /// instead of being copied into an output that looks whole. Turning it off saves
    /// about a sixth of the copy's time on the seed ETL; do it only for inputs you
    /// trust, such as files Sluice wrote.
    ///
    /// ```
    /// let options = sluice_core::ParquetWrite::default().with_validation(false);
    /// # let _ = options;
    /// ```
    pub fn with_validation(mut self, on: bool) -> Self {
        self.validate = on;
        self
    }

    pub(crate) fn table_options(&self, state: &SessionState) -> Result<TableParquetOptions> {
        let mut options = state.default_table_options().parquet.clone();
        options.global.compression = Some(self.compression.as_option()?);
        options.global.max_row_group_size = self.row_group_rows;
        Ok(options)
    }
}

/// How [`Frame::write_csv`](crate::Frame::write_csv) writes.
///
/// ```
/// let options = sluice_core::CsvWrite::default().with_delimiter(b';');
/// # let _ = options;
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CsvWrite {
    pub(crate) header: bool,
    pub(crate) delimiter: u8,
    pub(crate) layout: WriteLayout,
}

impl Default for CsvWrite {
    /// A header row, comma-separated, layout from the URL.
    fn default() -> Self {
        Self {
            header: true,
            delimiter: b',',
            layout: WriteLayout::Auto,
        }
    }
}

impl CsvWrite {
    /// Whether to write a header row.
    pub fn with_header(mut self, header: bool) -> Self {
        self.header = header;
        self
    }

    /// The field delimiter.
    pub fn with_delimiter(mut self, delimiter: u8) -> Self {
        self.delimiter = delimiter;
        self
    }

    /// One file or a directory of parts.
    pub fn with_layout(mut self, layout: WriteLayout) -> Self {
        self.layout = layout;
        self
    }

    pub(crate) fn csv_options(&self) -> CsvOptions {
        CsvOptions::default()
            .with_has_header(self.header)
            .with_delimiter(self.delimiter)
    }
}
