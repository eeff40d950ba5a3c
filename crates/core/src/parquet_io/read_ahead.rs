//! Scans that read ahead: DataFusion's Parquet scan asks for one row group's column
//! chunks, waits for them, decodes them, and only then asks for the next row group's.
//! On a store a round trip away (20–100 ms to S3 from another region or a public HTTPS
//! server) each row group then costs a round trip of idle decoder, and each of the
//! scan's partitions has one request in flight.
//!
//! [`ReadAheadFactory`] wraps the scan's reader factory for remote files: when a reader
//! is asked for whole column chunks of a row group, it starts fetching the same columns'
//! chunks of the next row groups its partition reads (those whose first page lies in
//! the partition's byte range, as DataFusion assigns them), within its share of the
//! session's [`remote_read_ahead_bytes`](crate::SessionBuilder::with_remote_read_ahead_bytes),
//! and answers the scan's next asks from them. Asks it did not foresee (a page
//! selection, other columns) go to the wrapped reader as before.
//!
//! A scan that skips row groups (pruned by statistics or a page index, which the reader
//! is not told of) would make every row group read ahead a wasted fetch: a reader reads
//! ahead only while the scan asks for its partition's row groups one after the other,
//! whole, from the first; the first ask that skips one, or asks for part of a chunk,
//! stops it for good. What a pruned scan wastes is one budget's worth at most.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::parquet::ParquetFileReaderFactory;
use datafusion::execution::cache::cache_manager::FileMetadataCache;
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use object_store::{ObjectMeta, ObjectStore};
use parquet::arrow::arrow_reader::ArrowReaderOptions;
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::errors::ParquetError;
use parquet::file::metadata::ParquetMetaData;

use crate::parquet_io::footer::cached_footer;

/// Makes [`ReadAheadReader`]s around another factory's readers, fetching ahead from
/// `store` (the same store the wrapped readers read, with the same checks).
#[derive(Debug)]
pub(crate) struct ReadAheadFactory {
    pub(crate) inner: Arc<dyn ParquetFileReaderFactory>,
    pub(crate) store: Arc<dyn ObjectStore>,
    /// The session's file metadata cache, where a reader finds its file's footer when the
    /// scan did not ask the reader for it (DataFusion reads it through the cache when the
    /// scan has a predicate).
    pub(crate) footers: Arc<FileMetadataCache>,
    /// The bytes each reader may have under way or waiting ahead.
    pub(crate) budget: u64,
}

impl ParquetFileReaderFactory for ReadAheadFactory {
    fn create_reader(
        &self,
        partition_index: usize,
        partitioned_file: PartitionedFile,
        metadata_size_hint: Option<usize>,
        metrics: &ExecutionPlanMetricsSet,
    ) -> datafusion::error::Result<Box<dyn AsyncFileReader + Send>> {
        let object = partitioned_file.object_meta.clone();
        let range = partitioned_file
            .range
            .as_ref()
            .map(|r| r.start.max(0) as u64..r.end.max(0) as u64);
        let inner = self.inner.create_reader(
            partition_index,
            partitioned_file,
            metadata_size_hint,
            metrics,
        )?;
        Ok(Box::new(ReadAheadReader {
            inner,
            store: Arc::clone(&self.store),
            footers: Arc::clone(&self.footers),
            object,
            range,
            budget: self.budget,
            metadata: None,
            ahead: VecDeque::new(),
            next: None,
            stopped: false,
        }))
    }
}

type SharedFetch = Shared<BoxFuture<'static, Result<Vec<Bytes>, Arc<ParquetError>>>>;

/// A row group's chunks being fetched ahead: the ranges (in the order the scan asked for
/// the previous row group's), their bytes, the fetch and the task that drives it.
struct Ahead {
    row_group: usize,
    ranges: Vec<Range<u64>>,
    bytes: u64,
    fetch: SharedFetch,
    driver: tokio::task::AbortHandle,
}

/// A reader that reads the next row groups' chunks ahead (see the module's
/// documentation).
struct ReadAheadReader {
    inner: Box<dyn AsyncFileReader + Send>,
    store: Arc<dyn ObjectStore>,
    footers: Arc<FileMetadataCache>,
    /// The file, as the scan's listing found it.
    object: ObjectMeta,
    /// The byte range of the file the reader's partition scans (the whole file when
    /// none).
    range: Option<Range<u64>>,
    budget: u64,
    /// The footer, once read (the decoder always asks for it before any data).
    metadata: Option<Arc<ParquetMetaData>>,
    ahead: VecDeque<Ahead>,
    /// The row group the scan asks for next if it skips none.
    next: Option<usize>,
    /// Whether the scan skipped a row group or asked for part of a chunk: nothing more
    /// is read ahead.
    stopped: bool,
}

impl Drop for ReadAheadReader {
    /// A scan that ends (done, a limit reached, failed) stops its reads ahead.
    fn drop(&mut self) {
        self.stop();
    }
}

impl ReadAheadReader {
    /// Reads nothing more ahead, and lets go of what was.
    fn stop(&mut self) {
        self.stopped = true;
        for ahead in self.ahead.drain(..) {
            ahead.driver.abort();
        }
    }

    /// The file's footer: the one the scan asked this reader for, or the one in the
    /// session's cache for this version of the file (size, time and ETag).
    fn footer(&mut self) -> Option<Arc<ParquetMetaData>> {
        if self.metadata.is_none() {
            self.metadata = cached_footer(self.footers.as_ref(), &self.object);
        }
        self.metadata.clone()
    }

    /// Whether the scan asks for row group `g` in order (the first of its partition's,
    /// or the one after the last): it reads on as it has.
    fn in_order(&mut self, g: usize) -> bool {
        let Some(metadata) = self.metadata.clone() else {
            return false;
        };
        let expected = self.next.unwrap_or_else(|| {
            (0..metadata.num_row_groups())
                .find(|&first| self.scans(&metadata, first))
                .unwrap_or(0)
        });
        self.next = Some(g + 1);
        g == expected
    }

    /// The row group whose column chunks `ranges` are, each whole, with the columns'
    /// indices; `None` when they are anything else (a page selection, a footer).
    fn chunks_of(&mut self, ranges: &[Range<u64>]) -> Option<(usize, Vec<usize>)> {
        let metadata = self.footer()?;
        let first = ranges.first()?;
        let (g, group) = metadata
            .row_groups()
            .iter()
            .enumerate()
            .find(|(_, group)| {
                group.columns().iter().any(|c| {
                    let (start, length) = c.byte_range();
                    start == first.start && start + length == first.end
                })
            })?;
        ranges
            .iter()
            .map(|range| {
                group.columns().iter().position(|c| {
                    let (start, length) = c.byte_range();
                    start == range.start && start + length == range.end
                })
            })
            .collect::<Option<Vec<usize>>>()
            .map(|columns| (g, columns))
    }

    /// Whether this reader's partition scans row group `g`: DataFusion's rule, the
    /// first page of its first column in the partition's range.
    fn scans(&self, metadata: &ParquetMetaData, g: usize) -> bool {
        let Some(range) = &self.range else {
            return true;
        };
        let column = metadata.row_group(g).column(0);
        let offset = column
            .dictionary_page_offset()
            .unwrap_or_else(|| column.data_page_offset())
            .max(0) as u64;
        range.contains(&offset)
    }

    /// Starts fetching `columns` of the row groups after `g` that this reader's
    /// partition scans, as many as the budget holds with those already under way.
    fn read_ahead(&mut self, g: usize, columns: &[usize]) {
        let Some(metadata) = self.metadata.clone() else {
            return;
        };
        // Those behind are not asked for any more.
        while self.ahead.front().is_some_and(|a| a.row_group <= g) {
            if let Some(old) = self.ahead.pop_front() {
                old.driver.abort();
            }
        }
        let mut under_way: u64 = self.ahead.iter().map(|a| a.bytes).sum();
        let next = self.ahead.back().map_or(g + 1, |a| a.row_group + 1);
        for row_group in next..metadata.num_row_groups() {
            // A partition scans consecutive row groups: past its range, none.
            if !self.scans(&metadata, row_group) {
                break;
            }
            let group = metadata.row_group(row_group);
            let ranges: Vec<Range<u64>> = columns
                .iter()
                .map(|&c| {
                    let (start, length) = group.column(c).byte_range();
                    start..start + length
                })
                .collect();
            let bytes: u64 = ranges.iter().map(|r| r.end - r.start).sum();
            if under_way + bytes > self.budget {
                break;
            }
            under_way += bytes;
            let (store, location, wanted) = (
                Arc::clone(&self.store),
                self.object.location.clone(),
                ranges.clone(),
            );
            let fetch = async move {
                store
                    .get_ranges(&location, &wanted)
                    .await
                    .map_err(|e| Arc::new(ParquetError::from(e)))
            }
            .boxed()
            .shared();
            let driver = tokio::spawn(fetch.clone().map(drop)).abort_handle();
            self.ahead.push_back(Ahead {
                row_group,
                ranges,
                bytes,
                fetch,
                driver,
            });
        }
    }
}

impl AsyncFileReader for ReadAheadReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        self.inner.get_bytes(range)
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        async move {
            if self.stopped {
                return self.inner.get_byte_ranges(ranges).await;
            }
            let chunks = self.chunks_of(&ranges);
            let Some((g, columns)) = chunks else {
                // Part of a chunk (a page selection): the scan prunes.
                if self.next.is_some() {
                    self.stop();
                }
                return self.inner.get_byte_ranges(ranges).await;
            };
            if !self.in_order(g) {
                // A row group skipped: the scan prunes.
                self.stop();
                return self.inner.get_byte_ranges(ranges).await;
            }
            let foreseen = self
                .ahead
                .iter()
                .position(|a| a.row_group == g && a.ranges == ranges)
                .and_then(|at| self.ahead.remove(at));
            // The next ones start before this one is awaited.
            self.read_ahead(g, &columns);
            match foreseen {
                Some(ahead) => match ahead.fetch.await {
                    Ok(bytes) => Ok(bytes),
                    // The fetch ahead failed (a transient fault after the store's own
                    // retries): asked again, as the scan would have.
                    Err(error) => {
                        tracing::debug!(%error, "a read ahead failed; fetching again");
                        self.inner.get_byte_ranges(ranges).await
                    }
                },
                None => self.inner.get_byte_ranges(ranges).await,
            }
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
