//! A scan's `HEAD` answered by its source's pins while the plan is planned.
//!
//! DataFusion's listing table lists its files again when a scan is planned: for a
//! source that names one object, a `HEAD` request. On a remote store that is a round
//! trip (20–100 ms to S3 from another region or a public HTTPS server) before the first
//! byte of data, for an object whose size, time and ETag the source's frame pinned
//! when it was built (see [`pins`](super::pins)) and whose every read is checked
//! against that pin anyway (`If-Match`, and the identity of each response).
//!
//! While Sluice's query planner plans a plan, [`PlanningStores`] (the session's object
//! store registry) answers a `HEAD` of an object that one of the plan's own remote
//! sources pinned with the pin; everything else goes to the store. The scan then reads
//! the pinned object, as it would have, and a change is caught by its first read
//! instead of at planning: a replaced object fails it with
//! [`SourceChanged`](crate::Error::SourceChanged) (the store refuses `If-Match`, or the
//! response's size or ETag is not the pin's), a deleted one too ("no longer there").
//! Objects two sources of the plan pinned differently are left to the store, and so is
//! everything else: the listing of a directory or glob (a `LIST`), a new frame's
//! listing, a read.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::listing::ListingTable;
use datafusion::datasource::source_as_provider;
use datafusion::execution::object_store::ObjectStoreRegistry;
use datafusion::logical_expr::LogicalPlan;
use object_store::path::Path;
use object_store::{GetOptions, GetResult, ObjectMeta, ObjectStore};
use url::Url;

use crate::parquet_io::format::WrappedFormat;
use crate::parquet_io::pins::SourceFormat;
use crate::parquet_io::read_hook::{HookedStore, ReadHook};

tokio::task_local! {
    /// The pins of the remote sources of the plan being planned.
    static PLANNING: Arc<Planned>;
}

/// The objects a plan's remote sources pinned, by store (`s3://bucket`, as
/// [`sluice_store::store_key`] names it: DataFusion asks the registry with the table's
/// whole URL) and path; `None` where two sources pinned one object differently.
#[derive(Debug, Default)]
struct Planned {
    stores: HashMap<String, Arc<HashMap<Path, Option<ObjectMeta>>>>,
}

impl Planned {
    fn of(plan: &LogicalPlan) -> Self {
        let mut stores: HashMap<String, HashMap<Path, Option<ObjectMeta>>> = HashMap::new();
        // Only table scans are visited, and they cannot fail.
        let _ = plan.apply_with_subqueries(|node| {
            let LogicalPlan::TableScan(scan) = node else {
                return Ok(TreeNodeRecursion::Continue);
            };
            let Ok(provider) = source_as_provider(&scan.source) else {
                return Ok(TreeNodeRecursion::Continue);
            };
            let Some(listing) = provider.downcast_ref::<ListingTable>() else {
                return Ok(TreeNodeRecursion::Continue);
            };
            let Some(format) = listing
                .options()
                .format
                .downcast_ref::<WrappedFormat<SourceFormat>>()
            else {
                return Ok(TreeNodeRecursion::Continue);
            };
            for url in listing.table_paths() {
                let store = sluice_store::store_key(url.as_ref());
                if !super::is_remote(&store) {
                    continue;
                }
                let objects = stores.entry(store).or_default();
                for pinned in format.hooks.pins().objects() {
                    objects
                        .entry(pinned.location.clone())
                        .and_modify(|known| {
                            if known.as_ref() != Some(&pinned) {
                                *known = None;
                            }
                        })
                        .or_insert_with(|| Some(pinned.clone()));
                }
            }
            Ok(TreeNodeRecursion::Continue)
        });
        Self {
            stores: stores
                .into_iter()
                .map(|(store, objects)| (store, Arc::new(objects)))
                .collect(),
        }
    }
}

/// Runs `planning` (the physical planning of `plan`) with `HEAD`s of the objects that
/// `plan`'s remote sources pinned answered by their pins (see the module's
/// documentation).
pub(crate) async fn with_pins<F: Future>(plan: &LogicalPlan, planning: F) -> F::Output {
    let planned = Planned::of(plan);
    if planned.stores.is_empty() {
        return planning.await;
    }
    PLANNING.scope(Arc::new(planned), planning).await
}

/// The session's object store registry: its stores, whose `HEAD`s of pinned objects
/// are answered by the pins while a plan over them is planned (see the module's
/// documentation).
#[derive(Debug)]
pub(crate) struct PlanningStores {
    inner: Arc<dyn ObjectStoreRegistry>,
}

impl PlanningStores {
    pub(crate) fn new(inner: Arc<dyn ObjectStoreRegistry>) -> Self {
        Self { inner }
    }
}

impl ObjectStoreRegistry for PlanningStores {
    fn register_store(
        &self,
        url: &Url,
        store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        self.inner.register_store(url, store)
    }

    fn deregister_store(&self, url: &Url) -> datafusion::error::Result<Arc<dyn ObjectStore>> {
        self.inner.deregister_store(url)
    }

    fn get_store(&self, url: &Url) -> datafusion::error::Result<Arc<dyn ObjectStore>> {
        let store = self.inner.get_store(url)?;
        let pinned = PLANNING
            .try_with(|planned| planned.stores.get(&sluice_store::store_key(url)).cloned())
            .ok()
            .flatten();
        Ok(match pinned {
            Some(pinned) => Arc::new(HookedStore {
                inner: store,
                hook: PinnedHeads(pinned),
            }),
            None => store,
        })
    }
}

/// The `HEAD`s of pinned objects, answered by their pins.
struct PinnedHeads(Arc<HashMap<Path, Option<ObjectMeta>>>);

impl fmt::Debug for PinnedHeads {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PinnedHeads").field(&self.0.len()).finish()
    }
}

#[async_trait]
impl ReadHook for PinnedHeads {
    const NAME: &'static str = "PlannedStore";

    async fn get_opts(
        &self,
        inner: &dyn ObjectStore,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        // A plain `HEAD`, as the listing sends it: nothing conditional, no range.
        let plain_head = options.head
            && options.range.is_none()
            && options.version.is_none()
            && options.if_match.is_none()
            && options.if_none_match.is_none()
            && options.if_modified_since.is_none()
            && options.if_unmodified_since.is_none();
        if plain_head && let Some(Some(meta)) = self.0.get(location) {
            tracing::debug!(%location, "a planned scan's HEAD answered by its pin");
            return Ok(GetResult {
                payload: object_store::GetResultPayload::Stream(Box::pin(futures::stream::empty())),
                meta: meta.clone(),
                range: 0..meta.size,
                attributes: Default::default(),
            });
        }
        inner.get_opts(location, options).await
    }
}
