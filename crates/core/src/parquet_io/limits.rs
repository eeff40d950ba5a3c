//! Limits that keep a hostile or corrupt file from exhausting memory.
//!
//! Two limits bound what one session may hold while it reads and writes:
//!
//! - **The memory pool** ([`SessionBuilder::with_memory_limit`], default
//!   [`DEFAULT_MEMORY_LIMIT`]): DataFusion's pool, from which sorts, aggregations, joins
//!   and the Parquet writer reserve memory. Past it they spill or fail with
//!   [`Error::MemoryLimitExceeded`]. Scans do not reserve from it, so it cannot stop a
//!   page that decompresses to gigabytes; the next limit does.
//! - **The column-chunk cap** ([`SessionBuilder::with_max_column_chunk_bytes`], default
//!   [`DEFAULT_MAX_COLUMN_CHUNK_BYTES`]): before a Parquet column chunk is fetched and
//!   decoded, its uncompressed size, as the file's footer declares it, is checked against
//!   the cap; a chunk over it fails the read with [`Error::ColumnChunkTooLarge`], which
//!   names the file, the column and the row group. A decompression bomb (a few kilobytes
//!   of zstd or brotli that inflate to gigabytes) is refused this way before a byte of it
//!   is decompressed. Only the chunks a query reads are checked: a huge column that a
//!   query projects away does not fail it.
//!
//! Both can also be set without code, by the environment variables
//! `SLUICE_MEMORY_LIMIT` and `SLUICE_MAX_COLUMN_CHUNK_BYTES` (bytes, or a number with a
//! `KiB`, `MiB`, `GiB` or `TiB` suffix), which a session builder reads when its own
//! setting is not given.
//!
//! A page header can lie where the footer does not: parquet's decoder allocates what a
//! page header claims (`uncompressed_page_size`, up to 2 GiB) before decompressing, and
//! an allocation that fails aborts the process. So when a whole column chunk has been
//! fetched, its page headers are walked (with a small Thrift reader) before
//! the decoder sees them, and a page that claims more than its whole chunk, as the
//! footer declares it, or more than the cap, fails the read with
//! [`Error::InvalidParquet`].
//!
//! Before a footer is parsed at all, its last 8 bytes are checked (the trailing magic,
//! and a footer length that fits in the file): parquet's footer decoder panics on a
//! length that points before the file's start (caught, but a corrupt file is not a
//! crash). An empty file named as a source is `InvalidParquet` too.
//!
//! Not covered: pages of a chunk fetched only in part (reads that a page index narrows)
//! are not walked, so there the decoder's own checks apply; and a dictionary page that
//! many values repeat is not counted twice (DataFusion reads strings as views into the
//! dictionary, so a batch holds it once).
//!
//! [`SessionBuilder::with_memory_limit`]: crate::SessionBuilder::with_memory_limit
//! [`SessionBuilder::with_max_column_chunk_bytes`]: crate::SessionBuilder::with_max_column_chunk_bytes
//! [`Error::MemoryLimitExceeded`]: crate::Error::MemoryLimitExceeded
//! [`Error::ColumnChunkTooLarge`]: crate::Error::ColumnChunkTooLarge
//! [`Error::InvalidParquet`]: crate::Error::InvalidParquet

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{
    FileScanConfigBuilder, ParquetFileReaderFactory, ParquetSource,
};
use datafusion::datasource::source::DataSourceExec;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use futures::FutureExt;
use futures::future::BoxFuture;
use parquet::arrow::arrow_reader::ArrowReaderOptions;
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::errors::ParquetError;
use parquet::file::metadata::ParquetMetaData;

use crate::Error;
use crate::error::HumanBytes;

/// The default size of a session's memory pool: 4 GiB.
pub const DEFAULT_MEMORY_LIMIT: usize = 4 << 30;

/// The default cap on a Parquet column chunk's uncompressed size: 1 GiB. Row groups of
/// a million rows of 100-byte strings make chunks of about 100 MiB; a chunk ten times
/// that is rare in honest files.
pub const DEFAULT_MAX_COLUMN_CHUNK_BYTES: u64 = 1 << 30;

/// The default read-ahead budget of remote reads: 48 MiB (see
/// [`SessionBuilder::with_remote_read_ahead_bytes`](crate::SessionBuilder::with_remote_read_ahead_bytes)).
pub const DEFAULT_REMOTE_READ_AHEAD_BYTES: u64 = 48 << 20;

/// The environment variable that sets the remote read-ahead budget when the builder
/// does not.
pub const REMOTE_READ_AHEAD_ENV: &str = "SLUICE_REMOTE_READ_AHEAD";

/// What a session's Parquet reads may decode and hold: the column-chunk cap, and the
/// bytes read ahead of what is decoded when the file is remote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ReadLimits {
    pub(crate) max_column_chunk_bytes: u64,
    pub(crate) remote_read_ahead_bytes: u64,
}

/// The environment variable that sets the memory pool's size when the builder does not.
pub const MEMORY_LIMIT_ENV: &str = "SLUICE_MEMORY_LIMIT";

/// The environment variable that sets the column-chunk cap when the builder does not.
pub const MAX_COLUMN_CHUNK_BYTES_ENV: &str = "SLUICE_MAX_COLUMN_CHUNK_BYTES";

/// Parses a size: bytes (`1048576`), or a number with a binary suffix (`512MiB`,
/// `1.5 GiB`; `K`, `M`, `G`, `T` and `KB`... are read as binary units too).
pub(crate) fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return None,
    };
    let bytes = number * (1u64 << shift) as f64;
    (bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

#[cfg(feature = "ballista")]
/// The column-chunk cap this process sets for itself: `SLUICE_MAX_COLUMN_CHUNK_BYTES`,
/// else the default (what an executor's reads take, whatever its clients ask).
pub(crate) fn max_column_chunk_bytes_from_env() -> u64 {
    size_from_env(MAX_COLUMN_CHUNK_BYTES_ENV).unwrap_or(DEFAULT_MAX_COLUMN_CHUNK_BYTES)
}

/// A size from the environment variable `name`, if set and valid (an invalid value is
/// logged and ignored).
pub(crate) fn size_from_env(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    let size = parse_size(&text);
    if size.is_none() {
        tracing::warn!(
            variable = name,
            value = %text,
            "ignoring an invalid size (use bytes, or a number with KiB, MiB, GiB or TiB)"
        );
    }
    size
}

/// `plan` with its Parquet scan's reader factory (or `replace`) wrapped in a
/// [`LimitedReaderFactory`]. A plan that is not a Parquet scan is returned as it is.
pub(crate) fn limit_scan(
    plan: Arc<dyn ExecutionPlan>,
    max_column_chunk_bytes: u64,
    replace: Option<Arc<dyn ParquetFileReaderFactory>>,
) -> Arc<dyn ExecutionPlan> {
    let Some(exec) = plan.downcast_ref::<DataSourceExec>() else {
        return plan;
    };
    let Some((conf, source)) = exec.downcast_to_file_source::<ParquetSource>() else {
        return plan;
    };
    let Some(inner) = replace.or_else(|| source.parquet_file_reader_factory().cloned()) else {
        return plan;
    };
    let mut base = conf.object_store_url.as_str().to_string();
    if !base.ends_with('/') {
        base.push('/');
    }
    let factory = LimitedReaderFactory {
        inner,
        base,
        max_column_chunk_bytes,
    };
    let source = source
        .clone()
        .with_parquet_file_reader_factory(Arc::new(factory));
    let conf = FileScanConfigBuilder::from(conf.clone())
        .with_source(Arc::new(source))
        .build();
    DataSourceExec::from_data_source(conf)
}

/// Makes [`LimitedReader`]s around another factory's readers.
#[derive(Debug)]
struct LimitedReaderFactory {
    inner: Arc<dyn ParquetFileReaderFactory>,
    /// The store's URL (`file:///`, `s3://bucket/`), to name files in errors.
    base: String,
    max_column_chunk_bytes: u64,
}

impl ParquetFileReaderFactory for LimitedReaderFactory {
    fn create_reader(
        &self,
        partition_index: usize,
        partitioned_file: PartitionedFile,
        metadata_size_hint: Option<usize>,
        metrics: &ExecutionPlanMetricsSet,
    ) -> datafusion::error::Result<Box<dyn AsyncFileReader + Send>> {
        // `file:///` + `tmp/x.parquet`, `s3://bucket/` + `key`.
        let url = format!("{}{}", self.base, partitioned_file.object_meta.location);
        let inner = self.inner.create_reader(
            partition_index,
            partitioned_file,
            metadata_size_hint,
            metrics,
        )?;
        Ok(Box::new(LimitedReader {
            inner,
            url,
            max_column_chunk_bytes: self.max_column_chunk_bytes,
            metadata: None,
        }))
    }
}

/// A Parquet reader that checks every byte range it is asked for against the column
/// chunks it overlaps, as the footer declares them, before fetching it.
struct LimitedReader {
    inner: Box<dyn AsyncFileReader + Send>,
    url: String,
    max_column_chunk_bytes: u64,
    /// The footer, once read (the decoder always asks for it before any data).
    metadata: Option<Arc<ParquetMetaData>>,
}

impl LimitedReader {
    /// Fails when a column chunk that `range` overlaps inflates past the cap.
    fn check(&self, range: &Range<u64>) -> parquet::errors::Result<()> {
        let Some(metadata) = &self.metadata else {
            return Ok(());
        };
        for (row_group, group) in metadata.row_groups().iter().enumerate() {
            for column in group.columns() {
                let size = u64::try_from(column.uncompressed_size()).unwrap_or(u64::MAX);
                if size <= self.max_column_chunk_bytes {
                    continue;
                }
                let (start, length) = column.byte_range();
                let overlaps = start < range.end && range.start < start.saturating_add(length);
                if overlaps {
                    return Err(ParquetError::External(Box::new(
                        Error::ColumnChunkTooLarge {
                            url: self.url.clone(),
                            column: column.column_path().string(),
                            row_group,
                            size,
                            limit: self.max_column_chunk_bytes,
                        },
                    )));
                }
            }
        }
        Ok(())
    }
}

impl LimitedReader {
    /// Walks the page headers of every column chunk that `bytes` (fetched for `range`)
    /// holds whole, and fails on a page that claims more bytes uncompressed than its
    /// chunk or the cap. A header it cannot parse is left to the decoder, which reports
    /// it.
    fn check_pages(&self, range: &Range<u64>, bytes: &Bytes) -> parquet::errors::Result<()> {
        let Some(metadata) = &self.metadata else {
            return Ok(());
        };
        for (row_group, group) in metadata.row_groups().iter().enumerate() {
            for column in group.columns() {
                let (start, length) = column.byte_range();
                let end = start.saturating_add(length);
                if start < range.start || end > range.end {
                    continue;
                }
                let offset = (start - range.start) as usize;
                let Some(chunk) = bytes.get(offset..offset + length as usize) else {
                    continue;
                };
                let declared = column.uncompressed_size().max(0) as u64;
                // A chunk whose footer declares no size (some writers) is held to the cap.
                let allowed = if declared > 0 {
                    declared.min(self.max_column_chunk_bytes)
                } else {
                    self.max_column_chunk_bytes
                };
                let mut position = 0;
                while position < chunk.len() {
                    let Some(page) = page_sizes(&chunk[position..]) else {
                        break;
                    };
                    if page.uncompressed < 0 || page.compressed < 0 {
                        break;
                    }
                    if page.uncompressed as u64 > allowed {
                        return Err(ParquetError::External(Box::new(Error::InvalidParquet {
                            url: self.url.clone(),
                            reason: format!(
                                "a page of column {:?} in row group {row_group} claims {} \
                                 uncompressed, more than its whole column chunk ({} as the \
                                 footer declares it) or the session's limit ({}); its page \
                                 header is corrupt or forged, and it was not decoded",
                                column.column_path().string(),
                                HumanBytes(page.uncompressed as u64),
                                HumanBytes(declared),
                                HumanBytes(self.max_column_chunk_bytes),
                            ),
                        })));
                    }
                    position += page.header_len + page.compressed as usize;
                }
            }
        }
        Ok(())
    }
}

/// The sizes in a Parquet page header.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct PageSizes {
    /// `uncompressed_page_size`.
    pub uncompressed: i32,
    /// `compressed_page_size`.
    pub compressed: i32,
    /// The header's own length in bytes.
    pub header_len: usize,
}

/// Reads the Thrift (compact protocol) `PageHeader` at the start of `data`: its two
/// sizes and its length. `None` when it does not parse (truncated, malformed, nested
/// too deep, or without both sizes).
pub(crate) fn page_sizes(data: &[u8]) -> Option<PageSizes> {
    let mut reader = Compact { data, position: 0 };
    let (mut uncompressed, mut compressed) = (None, None);
    let mut field = 0i16;
    loop {
        let header = reader.byte()?;
        if header == 0 {
            break;
        }
        let kind = header & 0x0F;
        let delta = i16::from(header >> 4);
        field = if delta == 0 {
            zigzag(reader.varint()?) as i16
        } else {
            field.checked_add(delta)?
        };
        match (field, kind) {
            (2, 5) => uncompressed = Some(zigzag(reader.varint()?) as i32),
            (3, 5) => compressed = Some(zigzag(reader.varint()?) as i32),
            _ => reader.skip(kind, 0)?,
        }
    }
    Some(PageSizes {
        uncompressed: uncompressed?,
        compressed: compressed?,
        header_len: reader.position,
    })
}

fn zigzag(n: u64) -> i64 {
    (n >> 1) as i64 ^ -((n & 1) as i64)
}

/// Just enough of Thrift's compact protocol to skip what a page header holds.
struct Compact<'a> {
    data: &'a [u8],
    position: usize,
}

impl Compact<'_> {
    fn byte(&mut self) -> Option<u8> {
        let byte = *self.data.get(self.position)?;
        self.position += 1;
        Some(byte)
    }

    fn varint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..70).step_by(7) {
            let byte = self.byte()?;
            value |= u64::from(byte & 0x7F).checked_shl(shift)?;
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }

    fn advance(&mut self, n: usize) -> Option<()> {
        let end = self.position.checked_add(n)?;
        (end <= self.data.len()).then(|| self.position = end)
    }

    /// Skips a value of compact type `kind`.
    fn skip(&mut self, kind: u8, depth: u32) -> Option<()> {
        if depth > 16 {
            return None;
        }
        match kind {
            1 | 2 => Some(()),
            3 => self.advance(1),
            4..=6 => self.varint().map(drop),
            7 => self.advance(8),
            8 => {
                let n = usize::try_from(self.varint()?).ok()?;
                self.advance(n)
            }
            9 | 10 => {
                let header = self.byte()?;
                let elements = match header >> 4 {
                    15 => usize::try_from(self.varint()?).ok()?,
                    n => usize::from(n),
                };
                let element = header & 0x0F;
                for _ in 0..elements {
                    // Booleans in a list take a byte each.
                    if matches!(element, 1 | 2) {
                        self.advance(1)?;
                    } else {
                        self.skip(element, depth + 1)?;
                    }
                }
                Some(())
            }
            11 => {
                let entries = usize::try_from(self.varint()?).ok()?;
                if entries > 0 {
                    let types = self.byte()?;
                    for _ in 0..entries {
                        self.skip(types >> 4, depth + 1)?;
                        self.skip(types & 0x0F, depth + 1)?;
                    }
                }
                Some(())
            }
            12 => loop {
                let header = self.byte()?;
                if header == 0 {
                    return Some(());
                }
                if header >> 4 == 0 {
                    // A field id too far from the last one follows in full.
                    self.varint()?;
                }
                self.skip(header & 0x0F, depth + 1)?;
            },
            13 => self.advance(16),
            _ => None,
        }
    }
}

impl AsyncFileReader for LimitedReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        async move {
            self.check(&range)?;
            let bytes = self.inner.get_bytes(range.clone()).await?;
            self.check_pages(&range, &bytes)?;
            Ok(bytes)
        }
        .boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        async move {
            ranges.iter().try_for_each(|range| self.check(range))?;
            let fetched = self.inner.get_byte_ranges(ranges.clone()).await?;
            for (range, bytes) in ranges.iter().zip(&fetched) {
                self.check_pages(range, bytes)?;
            }
            Ok(fetched)
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let metadata = self.inner.get_metadata(options).await?;
            self.metadata = Some(Arc::clone(&metadata));
            Ok(metadata)
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("1048576"), Some(1 << 20));
        assert_eq!(parse_size("512MiB"), Some(512 << 20));
        assert_eq!(parse_size("1.5 GiB"), Some(3 << 29));
        assert_eq!(parse_size("2g"), Some(2 << 30));
        assert_eq!(parse_size("64 KB"), Some(64 << 10));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("12 parsecs"), None);
        assert_eq!(parse_size(""), None);
    }

    #[test]
    fn page_headers_give_their_sizes_and_length() {
        // type DATA_PAGE, uncompressed 100, compressed 50, a data_page_header struct
        // (num_values 10, three encodings), a list field and a binary field.
        let header: &[u8] = &[
            0x15, 0x00, // 1: type = 0
            0x15, 0xC8, 0x01, // 2: uncompressed_page_size = 100
            0x15, 0x64, // 3: compressed_page_size = 50
            0x2C, // 5: struct
            0x15, 0x14, 0x15, 0x00, 0x15, 0x00, 0x15, 0x00, 0x00, // its fields, stop
            0x19, 0x25, 0x02, 0x04, // 6 (made up): a list of two i32
            0x18, 0x03, b'a', b'b', b'c', // 7 (made up): binary "abc"
            0x00, // stop
        ];
        let mut data = header.to_vec();
        data.extend_from_slice(&[0xAB; 50]);
        assert_eq!(
            page_sizes(&data),
            Some(PageSizes {
                uncompressed: 100,
                compressed: 50,
                header_len: header.len(),
            })
        );
        // Cut short anywhere in the header, it does not parse.
        for cut in 0..header.len() {
            assert_eq!(page_sizes(&header[..cut]), None, "cut at {cut}");
        }
        // Without its sizes, neither.
        assert_eq!(page_sizes(&[0x15, 0x00, 0x00]), None);
        // Nesting past the depth limit.
        let mut deep = vec![0x1C; 40];
        deep.extend(vec![0x00; 41]);
        assert_eq!(page_sizes(&deep), None);
    }

    #[test]
    fn sizes_print_for_people() {
        assert_eq!(HumanBytes(512).to_string(), "512 B");
        assert_eq!(HumanBytes(1 << 30).to_string(), "1.0 GiB");
        assert_eq!(HumanBytes(3 << 29).to_string(), "1.5 GiB");
    }
}
