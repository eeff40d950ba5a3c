//! The shared base of Sluice's wrappers of a source's file format: a
//! [`WrappedFormat`] is DataFusion's format, with the few steps a wrapper changes
//! ([`FormatHooks`]) in between. A source's pins ([`pins`](super::pins)) and
//! case-insensitive reads ([`evolution`](super::evolution)) are such hooks.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::Session as DfSession;
use datafusion::common::Statistics;
use datafusion::datasource::file_format::file_compression_type::FileCompressionType;
use datafusion::datasource::file_format::{FileFormat, FileMeta};
use datafusion::datasource::physical_plan::{FileScanConfig, FileSinkConfig, FileSource};
use datafusion::datasource::table_schema::TableSchema;
use datafusion::error::Result as DfResult;
use datafusion::physical_expr::{LexOrdering, LexRequirement};
use datafusion::physical_plan::ExecutionPlan;
use object_store::{ObjectMeta, ObjectStore};

/// The steps of a file format that a wrapper may change; each defaults to the wrapped
/// format's own.
#[async_trait]
pub(crate) trait FormatHooks: fmt::Debug + Send + Sync + 'static {
    /// The statistics of `object` under `table_schema`.
    async fn infer_stats(
        &self,
        inner: &dyn FileFormat,
        state: &dyn DfSession,
        store: &Arc<dyn ObjectStore>,
        table_schema: SchemaRef,
        object: &ObjectMeta,
    ) -> DfResult<Statistics> {
        inner.infer_stats(state, store, table_schema, object).await
    }

    /// The statistics and ordering of `object` under `table_schema`.
    async fn infer_stats_and_ordering(
        &self,
        inner: &dyn FileFormat,
        state: &dyn DfSession,
        store: &Arc<dyn ObjectStore>,
        table_schema: SchemaRef,
        object: &ObjectMeta,
    ) -> DfResult<FileMeta> {
        inner
            .infer_stats_and_ordering(state, store, table_schema, object)
            .await
    }

    /// The scan of `conf`.
    async fn create_physical_plan(
        &self,
        inner: &dyn FileFormat,
        state: &dyn DfSession,
        conf: FileScanConfig,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        inner.create_physical_plan(state, conf).await
    }
}

/// A source's file format with `hooks` around it: every step not in [`FormatHooks`]
/// is the wrapped format's.
#[derive(Debug)]
pub(crate) struct WrappedFormat<H> {
    pub(crate) inner: Arc<dyn FileFormat>,
    pub(crate) hooks: H,
}

impl<H: FormatHooks> WrappedFormat<H> {
    pub(crate) fn new(inner: Arc<dyn FileFormat>, hooks: H) -> Self {
        Self { inner, hooks }
    }
}

#[async_trait]
impl<H: FormatHooks> FileFormat for WrappedFormat<H> {
    fn get_ext(&self) -> String {
        self.inner.get_ext()
    }

    fn get_ext_with_compression(
        &self,
        file_compression_type: &FileCompressionType,
    ) -> DfResult<String> {
        self.inner.get_ext_with_compression(file_compression_type)
    }

    fn compression_type(&self) -> Option<FileCompressionType> {
        self.inner.compression_type()
    }

    async fn infer_schema(
        &self,
        state: &dyn DfSession,
        store: &Arc<dyn ObjectStore>,
        objects: &[ObjectMeta],
    ) -> DfResult<SchemaRef> {
        self.inner.infer_schema(state, store, objects).await
    }

    async fn infer_stats(
        &self,
        state: &dyn DfSession,
        store: &Arc<dyn ObjectStore>,
        table_schema: SchemaRef,
        object: &ObjectMeta,
    ) -> DfResult<Statistics> {
        self.hooks
            .infer_stats(self.inner.as_ref(), state, store, table_schema, object)
            .await
    }

    async fn infer_ordering(
        &self,
        state: &dyn DfSession,
        store: &Arc<dyn ObjectStore>,
        table_schema: SchemaRef,
        object: &ObjectMeta,
    ) -> DfResult<Option<LexOrdering>> {
        self.inner
            .infer_ordering(state, store, table_schema, object)
            .await
    }

    async fn infer_stats_and_ordering(
        &self,
        state: &dyn DfSession,
        store: &Arc<dyn ObjectStore>,
        table_schema: SchemaRef,
        object: &ObjectMeta,
    ) -> DfResult<FileMeta> {
        self.hooks
            .infer_stats_and_ordering(self.inner.as_ref(), state, store, table_schema, object)
            .await
    }

    async fn create_physical_plan(
        &self,
        state: &dyn DfSession,
        conf: FileScanConfig,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.hooks
            .create_physical_plan(self.inner.as_ref(), state, conf)
            .await
    }

    async fn create_writer_physical_plan(
        &self,
        input: Arc<dyn ExecutionPlan>,
        state: &dyn DfSession,
        conf: FileSinkConfig,
        order_requirements: Option<LexRequirement>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.inner
            .create_writer_physical_plan(input, state, conf, order_requirements)
            .await
    }

    fn file_source(&self, table_schema: TableSchema) -> Arc<dyn FileSource> {
        self.inner.file_source(table_schema)
    }
}
