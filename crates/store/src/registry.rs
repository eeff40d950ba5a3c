//! URL → object store, created on first use.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use datafusion::error::DataFusionError;
use datafusion::execution::object_store::ObjectStoreRegistry;
use object_store::ObjectStore;
use url::Url;

use crate::location::{object_path, resolve_url, store_key};
use crate::redact::redact;
use crate::{NAMED_SCHEME, Result, Settings, SettingsError, StoreBuilder, StoreError};

/// The object stores of a session, keyed by `scheme://authority`, created on first use.
///
/// It implements DataFusion's [`ObjectStoreRegistry`], so every scan and sink of a
/// session finds its store here. `file://` maps to the local file system,
/// `memory://NAME` to one in-memory store per name that lives as long as the registry,
/// `s3://BUCKET` to S3 configured from the environment, `http(s)://HOST` to a read-only
/// HTTP store (see [`StoreBuilder`]). With [`Settings`], `store://NAME/…` is the named
/// store (each name its own store, so two endpoints whose buckets share a name never
/// meet), and a store defined for a whole bucket configures plain URLs of that bucket.
///
/// ```
/// use std::sync::Arc;
/// use sluice_store::StoreRegistry;
///
/// let registry = StoreRegistry::new();
/// let url = url::Url::parse("memory://scratch/").unwrap();
/// let a = registry.store_for(&url).unwrap();
/// let b = registry.store_for(&url).unwrap();
/// assert!(Arc::ptr_eq(&a, &b));
/// ```
#[derive(Debug, Default)]
pub struct StoreRegistry {
    stores: RwLock<HashMap<String, Arc<dyn ObjectStore>>>,
    settings: Arc<Settings>,
    /// Why the settings could not be read: every location fails with it.
    broken: Option<SettingsError>,
}

impl StoreRegistry {
    /// An empty registry with no named stores; stores are created as URLs are used.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty registry whose stores follow `settings`.
    ///
    /// ```
    /// use sluice_store::{Settings, StoreRegistry};
    /// let settings = Settings::from_toml("[stores.scratch]\nurl = \"memory://scratch/area\"")?;
    /// let registry = StoreRegistry::with_settings(settings);
    /// let url = registry.resolve("store://scratch/x.parquet")?;
    /// assert_eq!(url.as_str(), "memory://scratch/area/x.parquet");
    /// # Ok::<(), sluice_store::StoreError>(())
    /// ```
    pub fn with_settings(settings: Settings) -> Self {
        Self {
            settings: Arc::new(settings),
            ..Self::default()
        }
    }

    /// A registry whose settings could not be read: every location fails with `error`
    /// (what an infallible constructor of a session keeps for its first use).
    pub fn with_broken_settings(error: SettingsError) -> Self {
        Self {
            broken: Some(error),
            ..Self::default()
        }
    }

    /// The settings the stores follow.
    pub fn settings(&self) -> Result<&Settings> {
        match &self.broken {
            Some(e) => Err(e.clone().into()),
            None => Ok(&self.settings),
        }
    }

    /// Turns a location into the URL Sluice works with: [`resolve_url`], then a named
    /// store on local disk or in memory becomes its `file://` or `memory://` URL (so it
    /// is published as local files are); a remote one stays `store://NAME/…`.
    pub fn resolve(&self, location: &str) -> Result<Url> {
        let settings = self.settings()?;
        let url = resolve_url(location)?;
        if url.scheme() != NAMED_SCHEME {
            return Ok(url);
        }
        let target = settings.target(&url)?;
        Ok(if matches!(target.scheme(), "file" | "memory") {
            target
        } else {
            url
        })
    }

    /// Where `url` really is: for `store://NAME/…`, the store's URL joined with the path
    /// (its scheme says what the store is: read-only HTTP, S3, …); otherwise `url`.
    pub fn target(&self, url: &Url) -> Result<Url> {
        if url.scheme() == NAMED_SCHEME {
            Ok(self.settings()?.target(url)?)
        } else {
            Ok(url.clone())
        }
    }

    /// `url` as records and cache keys name it, with the store's real URL and endpoint
    /// instead of an alias (see [`Settings::canonical`]).
    pub fn canonical(&self, url: &Url) -> String {
        match &self.broken {
            Some(_) => redact(url),
            None => self.settings.canonical(url),
        }
    }

    /// Puts `store` in front of every URL with the same `scheme://authority` as `url`,
    /// returning the store it replaces. Use it for stores built by hand (an
    /// instrumented store in a test, a store with custom options).
    pub fn register(&self, url: &Url, store: Arc<dyn ObjectStore>) -> Option<Arc<dyn ObjectStore>> {
        self.stores
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(store_key(url), store)
    }

    /// Removes the store in front of `url`'s `scheme://authority`, returning it; the
    /// next use of such a URL creates a store again.
    pub fn deregister(&self, url: &Url) -> Option<Arc<dyn ObjectStore>> {
        self.stores
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&store_key(url))
    }

    /// The store for `url`, created on first use.
    pub fn store_for(&self, url: &Url) -> Result<Arc<dyn ObjectStore>> {
        let key = store_key(url);
        if let Some(store) = self
            .stores
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&key)
        {
            return Ok(Arc::clone(store));
        }
        let mut stores = self
            .stores
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(store) = stores.get(&key) {
            return Ok(Arc::clone(store));
        }
        let store = self.build(url)?;
        tracing::debug!(store = %key, "created object store");
        stores.insert(key, Arc::clone(&store));
        Ok(store)
    }

    /// A new store for `url`'s scheme and authority, as the settings say.
    fn build(&self, url: &Url) -> Result<Arc<dyn ObjectStore>> {
        let settings = self.settings()?;
        if url.scheme() == NAMED_SCHEME {
            let (name, store) = settings.named(url)?;
            let root = Url::parse(&store.url).map_err(|e| StoreError::InvalidUrl {
                location: store.url.clone(),
                reason: e.to_string(),
            })?;
            return settings
                .builder(name, store)?
                .with_prefix(object_path(&root)?)
                .build();
        }
        match settings.for_bucket(url)? {
            Some((name, store)) => settings.builder(name, store)?.build(),
            None => StoreBuilder::from_env(url).build(),
        }
    }
}

impl ObjectStoreRegistry for StoreRegistry {
    fn register_store(
        &self,
        url: &Url,
        store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        self.register(url, store)
    }

    fn deregister_store(&self, url: &Url) -> datafusion::error::Result<Arc<dyn ObjectStore>> {
        self.deregister(url).ok_or_else(|| {
            DataFusionError::Execution(format!("no object store registered for {}", redact(url)))
        })
    }

    fn get_store(&self, url: &Url) -> datafusion::error::Result<Arc<dyn ObjectStore>> {
        self.store_for(url)
            .map_err(|e| DataFusionError::External(Box::new(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsupported_schemes_are_a_typed_error_without_credentials() {
        let registry = StoreRegistry::new();
        let url = Url::parse("ftp://user:secret@host/x").unwrap();
        let err = registry.store_for(&url).unwrap_err();
        assert!(matches!(err, StoreError::UnsupportedScheme { .. }));
        assert!(!err.to_string().contains("secret"), "{err}");
    }

    #[test]
    fn registered_stores_take_precedence() {
        use object_store::memory::InMemory;
        let registry = StoreRegistry::new();
        let url = Url::parse("file:///").unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        registry.register(&url, Arc::clone(&store));
        assert!(Arc::ptr_eq(&registry.store_for(&url).unwrap(), &store));
    }
}
