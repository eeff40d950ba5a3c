//! Footers in one request: a Parquet file's metadata (its footer and page index) read
//! once per object and session, with one ranged GET of the file's end.
//!
//! Reading a footer the textbook way takes three round trips (the last 8 bytes for the
//! footer's length, the footer, the page index), and a scan, the schema inference and
//! the column copy each read it again: on a store 100 ms away, most of a second spent
//! waiting before the first data byte. Here the file's last bytes are fetched at once
//! (see [`prefetch`]: the footer and page index of any file whose footer is not huge),
//! their tail is checked before the decoder sees them (see [`check_tail`]), and the
//! result goes into DataFusion's file metadata cache, where its scans, its schema and
//! statistics inference and the column copy all find it.

use std::sync::Arc;

use bytes::Bytes;
use datafusion::datasource::physical_plan::parquet::metadata::CachedParquetMetaData;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::cache::cache_manager::{CachedFileMetadataEntry, FileMetadataCache};
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use parquet::DecodeResult;
use parquet::file::metadata::{PageIndexPolicy, ParquetMetaData, ParquetMetaDataPushDecoder};

use crate::Error;
use crate::checkpoint::read::footer_options;

/// The bytes at the end of a file fetched to read its footer, in one request, at most:
/// the footer and page index of a file of thousands of column chunks fit (DataFusion's
/// own hint is 512 KiB); a larger footer costs one more request. A round trip costs
/// more than a megabyte on any link worth reading from.
const FOOTER_PREFETCH: u64 = 1 << 20;

/// What is fetched of a file of `size` bytes to read its footer: a sixteenth of it
/// between 64 KiB and [`FOOTER_PREFETCH`], so that the bytes of a small file are not
/// fetched twice (footer and data) for most of it.
fn prefetch(size: u64) -> u64 {
    (size / 16).clamp(64 << 10, FOOTER_PREFETCH)
}

/// The smallest Parquet file: the leading magic, a footer length and the trailing magic.
const SMALLEST_PARQUET_FILE: u64 = 12;

/// The metadata of the Parquet file `object` (`url`, to name it in errors) of `store`:
/// from `cache` when an entry for this version of the object (size, modification time
/// and ETag) holds it with its page
/// index and with page encoding statistics as written (see
/// [`footer_options`]); otherwise read with one ranged GET of the file's end (more only
/// for a footer larger than [`prefetch`]'s) and put in `cache`.
///
/// A file whose last 8 bytes cannot be a footer fails with [`Error::InvalidParquet`]
/// naming it, before the decoder sees them (see [`check_tail`]).
pub(crate) async fn read_footer(
    store: &dyn ObjectStore,
    url: &str,
    object: &ObjectMeta,
    cache: &FileMetadataCache,
) -> Result<Arc<ParquetMetaData>> {
    if let Some(cached) = cached_footer(cache, object)
        && complete(&cached)
    {
        return Ok(cached);
    }
    let invalid = |reason: String| {
        DataFusionError::External(Box::new(Error::InvalidParquet {
            url: url.to_string(),
            reason,
        }))
    };
    let size = object.size;
    if size < SMALLEST_PARQUET_FILE {
        return Err(invalid(format!(
            "the file has {size} bytes, fewer than the {SMALLEST_PARQUET_FILE} of the \
             smallest Parquet file"
        )));
    }
    let suffix = size.saturating_sub(prefetch(size))..size;
    let bytes = store.get_range(&object.location, suffix.clone()).await?;
    decode_tail(store, object, suffix, bytes, cache, invalid).await
}

/// Decodes the footer of `object` from `bytes`, its `suffix` range (reading more only
/// for a footer or page index that starts before it), and puts it in `cache`. Bytes
/// that cannot be the file's end fail with `invalid` of the reason.
async fn decode_tail(
    store: &dyn ObjectStore,
    object: &ObjectMeta,
    suffix: std::ops::Range<u64>,
    bytes: Bytes,
    cache: &FileMetadataCache,
    invalid: impl Fn(String) -> DataFusionError,
) -> Result<Arc<ParquetMetaData>> {
    let size = object.size;
    if bytes.len() as u64 != suffix.end - suffix.start || bytes.len() < 8 {
        return Err(invalid(format!(
            "the store returned {} bytes for the file's last {}",
            bytes.len(),
            suffix.end - suffix.start
        )));
    }
    check_tail(&bytes[bytes.len() - 8..], size).map_err(&invalid)?;
    let mut decoder = ParquetMetaDataPushDecoder::try_new(size)?
        .with_page_index_policy(PageIndexPolicy::Optional)
        .with_metadata_options(Some(Arc::new(footer_options())));
    decoder.push_ranges(vec![suffix], vec![bytes])?;
    let metadata = loop {
        match decoder.try_decode()? {
            DecodeResult::Data(metadata) => break Arc::new(metadata),
            DecodeResult::NeedsData(ranges) => {
                let fetched: Vec<Bytes> = store.get_ranges(&object.location, &ranges).await?;
                decoder.push_ranges(ranges, fetched)?;
            }
            DecodeResult::Finished => {
                return Err(invalid("the footer decoder ended without a footer".into()));
            }
        }
    };
    cache.put(
        &object.location,
        CachedFileMetadataEntry::new(
            object.clone(),
            Arc::new(CachedParquetMetaData::new(Arc::clone(&metadata))),
        ),
    );
    Ok(metadata)
}

/// The end of a file fetched with its listing, its size unknown yet: DataFusion's own
/// footer hint. The taxi files' footer and page index (416 KB for 12M rows) fit; a
/// larger one costs one more request, as a `HEAD` did.
const LISTED_PREFETCH: u64 = 512 << 10;

/// A single remote Parquet file's metadata as a listing has it (size, modification
/// time, ETag), with its footer, in one request: a GET of its last
/// [`LISTED_PREFETCH`] bytes (the whole file when smaller), whose answer names the
/// object's size and version, instead of a `HEAD` and then a GET of its end: one round
/// trip less per source, for at most 512 KiB read twice (the part of the last row group
/// in that range). The footer goes into `cache` for the schema, the statistics, the
/// scan and the column copy.
///
/// `None` when the GET fails (the object is not there, the server ignores ranges, any
/// error): the caller lists it as before. When the end it got is not a readable footer,
/// the listing stands and nothing is cached: the footer is read again the usual way,
/// which gives its error.
pub(crate) async fn listed_with_footer(
    store: &dyn ObjectStore,
    location: &object_store::path::Path,
    cache: &FileMetadataCache,
) -> Option<ObjectMeta> {
    let options = object_store::GetOptions {
        range: Some(object_store::GetRange::Suffix(LISTED_PREFETCH)),
        ..Default::default()
    };
    let got = store.get_opts(location, options).await.ok()?;
    let (meta, range) = (got.meta.clone(), got.range.clone());
    let bytes = got.bytes().await.ok()?;
    if meta.size >= SMALLEST_PARQUET_FILE {
        let decoded = decode_tail(store, &meta, range, bytes, cache, |reason| {
            DataFusionError::Execution(reason)
        })
        .await;
        if decoded.is_err() {
            tracing::debug!(%location, "the prefetched end is not a readable footer: read again");
        }
    }
    Some(meta)
}

/// The footer `cache` holds for this version of `object`, if any. DataFusion keys the
/// cache by path alone and checks size and modification time: the ETag too here, so that
/// same-named objects of two buckets written in the same second (S3's times have
/// seconds) never share a footer.
pub(crate) fn cached_footer(
    cache: &FileMetadataCache,
    object: &ObjectMeta,
) -> Option<Arc<ParquetMetaData>> {
    let cached = cache.get(&object.location)?;
    if !cached.is_valid_for(object) || cached.meta.e_tag != object.e_tag {
        return None;
    }
    let footer = cached
        .file_metadata
        .as_any()
        .downcast_ref::<CachedParquetMetaData>()?;
    Some(Arc::clone(footer.parquet_metadata()))
}

/// Whether `metadata` is what [`read_footer`] reads: with its page index when the file
/// has one (a file written without one, as pyarrow writes by default, is complete
/// without it), and no column chunk's page encoding statistics reduced to a mask
/// (DataFusion's default, which the column copy cannot write back as the input stated
/// them).
fn complete(metadata: &ParquetMetaData) -> bool {
    let mut chunks = metadata
        .row_groups()
        .iter()
        .flat_map(|group| group.columns());
    let declared = chunks.clone().any(|chunk| {
        chunk.column_index_offset().is_some() || chunk.offset_index_offset().is_some()
    });
    let loaded = metadata.column_index().is_some() && metadata.offset_index().is_some();
    (loaded || !declared) && chunks.all(|chunk| chunk.page_encoding_stats_mask().is_none())
}

/// Checks the last 8 bytes of a Parquet file of `size` bytes (the footer's length and
/// the trailing magic) before the Parquet decoder parses the footer: a footer length
/// that points before the start of the file makes parquet 59's footer decoder panic (an
/// overflowing subtraction in `push_decoder.rs`: "attempt to subtract with overflow" in
/// debug builds, a byte range "start must not be greater than end" in release ones).
/// The panic is caught, but a corrupt file is not a crash: it gets the same typed error
/// as any other unreadable file, without one. The reason, when they cannot be a footer.
///
/// An encrypted footer (`PARE`) is left to the decoder, whose error says so.
fn check_tail(tail: &[u8], size: u64) -> std::result::Result<(), String> {
    let magic = &tail[4..8];
    if magic != b"PAR1" && magic != b"PARE" {
        return Err("the file does not end with the Parquet magic bytes PAR1".to_string());
    }
    let footer = u64::from(u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]));
    if footer + SMALLEST_PARQUET_FILE > size {
        return Err(format!(
            "its footer claims {footer} bytes but the file has only {size}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use datafusion::execution::cache::default_cache::DefaultCache;

    fn cache() -> Arc<FileMetadataCache> {
        Arc::new(DefaultCache::new(50 << 20))
    }

    /// The typed reason `read_footer` gives for `bytes` when their tail cannot be a
    /// footer, `None` when the tail passes (whatever the decoder then says).
    async fn tail_check(bytes: &[u8]) -> Option<String> {
        let store = object_store::memory::InMemory::new();
        let path = object_store::path::Path::from("x.parquet");
        store
            .put(&path, Bytes::copy_from_slice(bytes).into())
            .await
            .unwrap();
        let meta = store.head(&path).await.unwrap();
        match read_footer(&store, "memory:///x.parquet", &meta, cache().as_ref()).await {
            Ok(_) => None,
            Err(DataFusionError::External(e)) => match e.downcast::<Error>().map(|e| *e) {
                Ok(Error::InvalidParquet { url, reason }) => {
                    assert_eq!(url, "memory:///x.parquet");
                    Some(reason)
                }
                other => panic!("unexpected {other:?}"),
            },
            // The decoder's own error: the tail passed.
            Err(DataFusionError::ParquetError(_)) => None,
            Err(other) => panic!("unexpected {other}"),
        }
    }

    /// A Parquet file of one column and three rows, with a page index or without one.
    fn parquet_file(page_index: bool) -> Bytes {
        use datafusion::arrow::array::Int64Array;
        use datafusion::arrow::record_batch::RecordBatch;
        let batch = RecordBatch::try_from_iter([(
            "n",
            Arc::new(Int64Array::from(vec![1, 2, 3])) as datafusion::arrow::array::ArrayRef,
        )])
        .unwrap();
        let props = parquet::file::properties::WriterProperties::builder()
            .set_statistics_enabled(if page_index {
                parquet::file::properties::EnabledStatistics::Page
            } else {
                parquet::file::properties::EnabledStatistics::Chunk
            })
            .set_offset_index_disabled(!page_index)
            .build();
        let mut bytes = Vec::new();
        let mut writer =
            parquet::arrow::ArrowWriter::try_new(&mut bytes, batch.schema(), Some(props)).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        bytes.into()
    }

    #[tokio::test]
    async fn a_footer_is_read_once_per_version_of_its_object() {
        let cache = cache();
        let path = object_store::path::Path::from("x.parquet");
        let store = object_store::memory::InMemory::new();
        store.put(&path, parquet_file(true).into()).await.unwrap();
        let object = store.head(&path).await.unwrap();
        let read = read_footer(&store, "memory:///x.parquet", &object, cache.as_ref())
            .await
            .unwrap();
        assert_eq!(read.file_metadata().num_rows(), 3);
        assert!(read.offset_index().is_some(), "with its page index");
        // Found in the cache: a store that holds nothing is never asked.
        let empty = object_store::memory::InMemory::new();
        let again = read_footer(&empty, "memory:///x.parquet", &object, cache.as_ref())
            .await
            .unwrap();
        assert!(Arc::ptr_eq(&read, &again));
        // A file written without a page index is read once too.
        let bare = object_store::path::Path::from("bare.parquet");
        store.put(&bare, parquet_file(false).into()).await.unwrap();
        let bare_object = store.head(&bare).await.unwrap();
        let read = read_footer(
            &store,
            "memory:///bare.parquet",
            &bare_object,
            cache.as_ref(),
        )
        .await
        .unwrap();
        assert!(read.offset_index().is_none(), "it has no page index");
        let again = read_footer(
            &empty,
            "memory:///bare.parquet",
            &bare_object,
            cache.as_ref(),
        )
        .await
        .unwrap();
        assert!(Arc::ptr_eq(&read, &again));
        // Another object of the same path, size and time but another ETag (another
        // bucket's, written in the same second) is read, not taken from the cache.
        let other = ObjectMeta {
            e_tag: Some("another".into()),
            ..object
        };
        let error = read_footer(&empty, "memory:///x.parquet", &other, cache.as_ref())
            .await
            .unwrap_err();
        assert!(error.to_string().contains("not found"), "{error}");
    }

    #[tokio::test]
    async fn footer_tails_that_would_make_the_decoder_panic_are_refused() {
        let with_footer = |claimed: u32, body: usize| {
            let mut bytes = b"PAR1".to_vec();
            bytes.extend(std::iter::repeat_n(0u8, body));
            bytes.extend_from_slice(&claimed.to_le_bytes());
            bytes.extend_from_slice(b"PAR1");
            bytes
        };
        assert!(tail_check(b"PAR1").await.unwrap().contains("4 bytes"));
        assert!(tail_check(&[]).await.unwrap().contains("0 bytes"));
        let no_magic = tail_check(b"PAR1 not parquet at all, no").await.unwrap();
        assert!(no_magic.contains("magic"), "{no_magic}");
        // DuckDB's hugefooter.parquet: a footer longer than the file.
        let huge = tail_check(&with_footer(u32::MAX, 0)).await.unwrap();
        assert!(huge.contains("4294967295 bytes"), "{huge}");
        // One byte too long: it would start inside the leading magic.
        assert!(tail_check(&with_footer(11, 10)).await.is_some());
        assert_eq!(tail_check(&with_footer(10, 10)).await, None);
        assert_eq!(tail_check(&with_footer(0, 0)).await, None);
        // An encrypted footer is left to the decoder, which says so.
        let mut encrypted = with_footer(4, 4);
        let n = encrypted.len();
        encrypted[n - 4..].copy_from_slice(b"PARE");
        assert_eq!(tail_check(&encrypted).await, None);
    }
}
