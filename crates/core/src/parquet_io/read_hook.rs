//! An object store whose reads go through a hook and everything else to the store
//! behind: what a source's pins put around its store ([`pins`](super::pins) checks every
//! read against them, [`planned`](super::planned) answers a planned scan's `HEAD` with
//! them).

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

/// What a [`HookedStore`] does with a read (a `GET`, ranged or not, or a `HEAD`).
#[async_trait]
pub(crate) trait ReadHook: fmt::Debug + Send + Sync + 'static {
    /// The store's name in its `Display` (`PinnedStore(…)`).
    const NAME: &'static str;

    /// Reads `location` with `options`, from `inner` or not.
    async fn get_opts(
        &self,
        inner: &dyn ObjectStore,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult>;
}

/// `inner`, with its reads through `hook` (see the module's documentation).
#[derive(Debug)]
pub(crate) struct HookedStore<H> {
    pub(crate) inner: Arc<dyn ObjectStore>,
    pub(crate) hook: H,
}

impl<H: ReadHook> fmt::Display for HookedStore<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", H::NAME, self.inner)
    }
}

#[async_trait]
impl<H: ReadHook> ObjectStore for HookedStore<H> {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.hook
            .get_opts(self.inner.as_ref(), location, options)
            .await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}
