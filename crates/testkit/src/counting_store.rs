//! An object store wrapper that counts the bytes and requests read through it.
//!
//! Put it in front of a real store (local disk, memory, S3) to prove what a plan reads:
//! that building a lazy frame reads no row data, or that a projection fetches only the
//! needed columns.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use std::sync::Arc;
//! use object_store::{ObjectStoreExt, PutPayload, memory::InMemory, path::Path};
//! use sluice_testkit::counting_store::CountingStore;
//!
//! let store = CountingStore::new(Arc::new(InMemory::new()));
//! store.put(&Path::from("a"), PutPayload::from("hello")).await.unwrap();
//! store.get_range(&Path::from("a"), 1..3).await.unwrap();
//! assert_eq!(store.bytes_read(), 2);
//! assert_eq!(store.get_requests(), 1);
//! # }
//! ```

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};

/// Wraps a store and counts what is read through it (see the module docs).
#[derive(Debug)]
pub struct CountingStore {
    inner: Arc<dyn ObjectStore>,
    only_under: Option<String>,
    bytes_read: AtomicU64,
    get_requests: AtomicU64,
}

impl CountingStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        Self {
            inner,
            only_under: None,
            bytes_read: AtomicU64::new(0),
            get_requests: AtomicU64::new(0),
        }
    }

    /// Counts only reads of objects whose path starts with `prefix` (the sources of a
    /// test, say, and not the checkpoints beside them on the same store).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use std::sync::Arc;
    /// use object_store::{ObjectStoreExt, PutPayload, memory::InMemory, path::Path};
    /// use sluice_testkit::counting_store::CountingStore;
    ///
    /// let store = CountingStore::new(Arc::new(InMemory::new())).counting_only_under("src/");
    /// store.put(&Path::from("src/a"), PutPayload::from("hello")).await.unwrap();
    /// store.put(&Path::from("cache/b"), PutPayload::from("hello")).await.unwrap();
    /// store.get(&Path::from("cache/b")).await.unwrap();
    /// assert_eq!(store.bytes_read(), 0);
    /// store.get(&Path::from("src/a")).await.unwrap();
    /// assert_eq!(store.bytes_read(), 5);
    /// # }
    /// ```
    pub fn counting_only_under(mut self, prefix: impl Into<String>) -> Self {
        self.only_under = Some(prefix.into());
        self
    }

    fn counts(&self, location: &Path) -> bool {
        self.only_under
            .as_ref()
            .is_none_or(|prefix| location.as_ref().starts_with(prefix.as_str()))
    }

    /// Bytes returned by `get` and range requests so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read.load(Ordering::SeqCst)
    }

    /// `get` and range requests so far (a multi-range request counts once per range).
    pub fn get_requests(&self) -> u64 {
        self.get_requests.load(Ordering::SeqCst)
    }

    /// Sets both counters back to zero.
    pub fn reset(&self) {
        self.bytes_read.store(0, Ordering::SeqCst);
        self.get_requests.store(0, Ordering::SeqCst);
    }

    fn count(&self, range: &Range<u64>) {
        self.get_requests.fetch_add(1, Ordering::SeqCst);
        self.bytes_read
            .fetch_add(range.end.saturating_sub(range.start), Ordering::SeqCst);
    }
}

impl fmt::Display for CountingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CountingStore({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for CountingStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let head = options.head;
        let result = self.inner.get_opts(location, options).await?;
        if !head && self.counts(location) {
            self.count(&result.range);
        }
        Ok(result)
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        let out = self.inner.get_ranges(location, ranges).await?;
        if self.counts(location) {
            for range in ranges {
                self.count(range);
            }
        }
        Ok(out)
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}
