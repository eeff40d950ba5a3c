//! Pinned sources: the objects a source's listing found when its frame was built (their
//! identities are in the cache keys of the tasks over it) are the objects its scan
//! reads, and each read checks that it still reads them.
//!
//! - [`Pins::check_scan`]: a scan lists its source again when it is planned
//!   (DataFusion's listing table does); an object that appeared, changed or went since
//!   the frame was built fails the scan with [`Error::SourceChanged`] naming it, before
//!   a byte of data is read. (A deleted file would otherwise be skipped silently.)
//! - [`Pins::guard`]: an object store over the source's that checks every read of a
//!   pinned object against its identity (size, and the ETag, or the modification time
//!   when there is none), and asks the server to do so too (`If-Match`, where it
//!   honours it): an object replaced while the scan reads it fails the run with
//!   `SourceChanged` instead of mixing versions. Parquet sources read through it (the
//!   scan's reader and the column copy); CSV and JSON get the planning-time check only.
//!
//! [`SourceFormat`] is the file format of every source Sluice reads: it does both, and
//! caps Parquet column chunks (see [`limits`](crate::parquet_io::limits)).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use object_store::path::Path;
use object_store::{GetOptions, GetResult, ObjectMeta, ObjectStore, ObjectStoreExt};

use datafusion::catalog::Session as DfSession;
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::physical_plan::parquet::{
    CachedParquetFileReaderFactory, ParquetFileReaderFactory,
};
use datafusion::physical_plan::ExecutionPlan;

use crate::Error;
use crate::identity::ObjectIdentity;
use crate::parquet_io::format::{FormatHooks, WrappedFormat};
use crate::parquet_io::limits::ReadLimits;
use crate::parquet_io::read_ahead::ReadAheadFactory;
use crate::parquet_io::read_hook::{HookedStore, ReadHook};

/// The objects a source's listing found, by object path, and the store's URL (to name
/// them in errors).
#[derive(Debug)]
pub(crate) struct Pins {
    base: String,
    objects: BTreeMap<Path, (ObjectMeta, ObjectIdentity)>,
}

impl Pins {
    /// Pins the non-empty objects of a listing (DataFusion's scans skip empty ones) of
    /// the store whose URL is `base` (`file:///`, `s3://bucket/`).
    pub(crate) fn new(base: &str, objects: &[ObjectMeta]) -> Arc<Self> {
        Arc::new(Self {
            base: base.to_string(),
            objects: objects
                .iter()
                .filter(|o| o.size > 0)
                .map(|o| (o.location.clone(), (o.clone(), ObjectIdentity::of(o))))
                .collect(),
        })
    }

    /// The pinned objects, in path order.
    pub(crate) fn objects(&self) -> Vec<ObjectMeta> {
        self.objects
            .values()
            .map(|(meta, _)| meta.clone())
            .collect()
    }

    fn url(&self, location: &Path) -> String {
        format!("{}{location}", self.base)
    }

    fn changed(&self, location: &Path, reason: String) -> Error {
        Error::SourceChanged {
            url: self.url(location),
            reason,
        }
    }

    /// Checks the files a scan was planned with against the pins (see the module's
    /// documentation). Files a `limit` kept the scan from listing are looked up to tell
    /// them from deleted ones.
    pub(crate) async fn check_scan(
        &self,
        conf: &FileScanConfig,
        store: &dyn ObjectStore,
    ) -> datafusion::error::Result<()> {
        let external = |e: Error| datafusion::error::DataFusionError::External(Box::new(e));
        let mut seen = std::collections::BTreeSet::new();
        for file in conf.file_groups.iter().flat_map(|g| g.files()) {
            let meta = &file.object_meta;
            let Some((_, pin)) = self.objects.get(&meta.location) else {
                return Err(external(self.changed(
                    &meta.location,
                    "it appeared after the frame was built".into(),
                )));
            };
            if let Some(reason) = pin.differs(meta) {
                return Err(external(self.changed(&meta.location, reason)));
            }
            seen.insert(&meta.location);
        }
        for (location, (_, pin)) in &self.objects {
            if seen.contains(location) {
                continue;
            }
            if conf.limit.is_none() {
                return Err(external(
                    self.changed(location, "it is no longer there".into()),
                ));
            }
            match store.head(location).await {
                Ok(meta) => {
                    if let Some(reason) = pin.differs(&meta) {
                        return Err(external(self.changed(location, reason)));
                    }
                }
                Err(object_store::Error::NotFound { .. }) => {
                    return Err(external(
                        self.changed(location, "it is no longer there".into()),
                    ));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// `store` with every read of a pinned object checked against its pin.
    pub(crate) fn guard(self: &Arc<Self>, store: Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore> {
        Arc::new(HookedStore {
            inner: store,
            hook: PinCheck(Arc::clone(self)),
        })
    }
}

/// The check of every read of a pinned object (see [`Pins::guard`]).
struct PinCheck(Arc<Pins>);

impl fmt::Debug for PinCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinCheck")
            .field("base", &self.0.base)
            .field("objects", &self.0.objects.len())
            .finish()
    }
}

impl PinCheck {
    fn changed(&self, location: &Path, reason: String) -> object_store::Error {
        object_store::Error::Generic {
            store: "source",
            source: Box::new(self.0.changed(location, reason)),
        }
    }
}

#[async_trait]
impl ReadHook for PinCheck {
    const NAME: &'static str = "PinnedStore";

    async fn get_opts(
        &self,
        inner: &dyn ObjectStore,
        location: &Path,
        mut options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let Some((_, pin)) = self.0.objects.get(location) else {
            return inner.get_opts(location, options).await;
        };
        // A weak ETag never matches `If-Match` (RFC 9110): only a strong one is sent.
        if options.if_match.is_none()
            && let Some(e_tag) = pin.e_tag.as_ref().filter(|e| !e.starts_with("W/"))
        {
            options.if_match = Some(e_tag.clone());
        }
        match inner.get_opts(location, options).await {
            Ok(result) => match pin.differs(&result.meta) {
                Some(reason) => Err(self.changed(location, reason)),
                None => Ok(result),
            },
            Err(object_store::Error::Precondition { .. }) => {
                Err(self.changed(location, "the store says its ETag no longer matches".into()))
            }
            Err(object_store::Error::NotFound { .. }) => {
                Err(self.changed(location, "it is no longer there".into()))
            }
            Err(e) => Err(e),
        }
    }
}

/// The file format of a source Sluice read: the wrapped format, whose scans check their
/// files against the source's [`Pins`] before anything is read, and, for Parquet, read
/// through them with the session's column-chunk cap (see [`limits`](crate::parquet_io::limits)).
/// CSV and JSON scans read through DataFusion's readers: they get the planning-time
/// check only. Everything else is the wrapped format's.
#[derive(Debug)]
pub(crate) struct SourceFormat {
    pins: Arc<Pins>,
    /// The read limits of a Parquet source.
    limits: Option<ReadLimits>,
}

impl SourceFormat {
    /// A CSV or JSON source's format.
    pub(crate) fn new(inner: Arc<dyn FileFormat>, pins: Arc<Pins>) -> WrappedFormat<Self> {
        WrappedFormat::new(inner, Self { pins, limits: None })
    }

    /// A Parquet source's format, read within `limits`.
    pub(crate) fn parquet(
        inner: Arc<dyn FileFormat>,
        pins: Arc<Pins>,
        limits: ReadLimits,
    ) -> WrappedFormat<Self> {
        WrappedFormat::new(
            inner,
            Self {
                pins,
                limits: Some(limits),
            },
        )
    }

    /// The objects the source's frame was built from.
    pub(crate) fn pins(&self) -> &Arc<Pins> {
        &self.pins
    }
}

#[async_trait]
impl FormatHooks for SourceFormat {
    async fn create_physical_plan(
        &self,
        inner: &dyn FileFormat,
        state: &dyn DfSession,
        conf: FileScanConfig,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let store = state
            .runtime_env()
            .object_store(conf.object_store_url.clone())?;
        let remote = crate::parquet_io::is_remote(conf.object_store_url.as_str());
        self.pins.check_scan(&conf, store.as_ref()).await?;
        let plan = inner.create_physical_plan(state, conf).await?;
        let Some(limits) = self.limits else {
            return Ok(plan);
        };
        let store = self.pins.guard(store);
        let footers = state.runtime_env().cache_manager.get_file_metadata_cache();
        let mut reader: Arc<dyn ParquetFileReaderFactory> = Arc::new(
            CachedParquetFileReaderFactory::new(Arc::clone(&store), Arc::clone(&footers)),
        );
        // A remote file's next row groups are fetched while one is decoded, each
        // partition's reader within its share of the budget.
        if remote && limits.remote_read_ahead_bytes > 0 {
            let partitions = state.config_options().execution.target_partitions.max(1) as u64;
            reader = Arc::new(ReadAheadFactory {
                inner: reader,
                store,
                footers,
                budget: limits.remote_read_ahead_bytes / partitions,
            });
        }
        Ok(crate::parquet_io::limits::limit_scan(
            plan,
            limits.max_column_chunk_bytes,
            Some(reader),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use object_store::memory::InMemory;

    #[tokio::test]
    async fn a_read_of_a_replaced_object_fails_naming_it() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let path = Path::from("src/a.parquet");
        store
            .put(&path, Bytes::from_static(b"version one").into())
            .await
            .unwrap();
        let meta = store.head(&path).await.unwrap();
        let pins = Pins::new("memory://bucket/", &[meta]);
        let guarded = pins.guard(Arc::clone(&store));
        assert_eq!(guarded.get_range(&path, 0..7).await.unwrap(), "version");
        store
            .put(&path, Bytes::from_static(b"version two").into())
            .await
            .unwrap();
        let error = guarded
            .get_range(&path, 0..7)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("memory://bucket/src/a.parquet changed"),
            "{error}"
        );
        store.delete(&path).await.unwrap();
        let error = guarded
            .get_range(&path, 0..7)
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("no longer there"), "{error}");
    }
}
