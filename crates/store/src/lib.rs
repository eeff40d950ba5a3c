//! Sluice's storage layer: object stores named by URL, created on first use, and
//! outputs that appear only when they are whole.
//!
//! Everything in Sluice that takes a path takes a URL: a plain path (`data/x.parquet`),
//! `file:///abs/path`, `memory://bucket/key`, `s3://bucket/key`, `http(s)://host/path`
//! (read-only), and `gs://` / `az://` with the `gcp` / `azure` features. [`StoreRegistry`] is the DataFusion
//! [`ObjectStoreRegistry`](datafusion::execution::object_store::ObjectStoreRegistry) behind every session: it builds the store for a URL the
//! first time the URL is used, so users never register stores by hand, and tests can
//! put an instrumented store in front of a scheme with [`StoreRegistry::register`].
//!
//! [`StagedOutput`] is how sinks publish: data is written under a hidden staging name
//! beside the destination and moved into place only after the last byte is written.
//!
//! ```text
//!  write parts ──► <parent>/.<name>.sluice-staging-<id>   (hidden: readers skip dot-files)
//!       │ failure / drop ──► staging deleted, destination untouched
//!       ▼ success
//!  publish ──► file: one rename (atomic on local disk)
//!              directory on local disk: one directory rename (atomic)
//!              directory elsewhere: each part renamed, then `_SUCCESS` written last
//! ```
//!
//! One file on a remote store skips the staging name: it is written at the destination
//! itself, invisible until the publish (no server-side copy, no 5 GiB CopyObject
//! limit). A writer that decides when its multipart upload completes uploads there
//! with [`StagedOutput::in_place`] (Sluice's column copy); one that completes its
//! uploads even when it fails (DataFusion's sinks) writes through
//! [`StagedOutput::register_writer`]'s store, which holds the completion (or a small
//! file's one put) for the publish. A failure or drop aborts what was held.
//!
//! # Example
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), sluice_store::StoreError> {
//! use object_store::{ObjectStoreExt, PutPayload};
//! use sluice_store::{StoreRegistry, resolve_url};
//!
//! let registry = StoreRegistry::new();
//! let url = resolve_url("memory://bucket/greeting.txt")?;
//! let store = registry.store_for(&url)?;
//! store
//!     .put(&object_store::path::Path::from("greeting.txt"), PutPayload::from("hi"))
//!     .await
//!     .unwrap();
//! // The same URL authority gives the same store back.
//! let again = registry.store_for(&url)?;
//! let bytes = again
//!     .get(&object_store::path::Path::from("greeting.txt"))
//!     .await
//!     .unwrap()
//!     .bytes()
//!     .await
//!     .unwrap();
//! assert_eq!(&bytes[..], b"hi");
//! # Ok(())
//! # }
//! ```

mod builder;
mod classify;
pub mod cleanup;
mod compose;
mod error;
mod in_place;
mod location;
mod redact;
mod registry;
#[cfg(feature = "s3")]
mod s3_requests;
mod settings;
mod staged;

pub use builder::{RetryPolicy, StoreBuilder};
pub use classify::{StoreErrorKind, classify, classify_io};
pub use compose::{ComposeOptions, Composed, MIN_PART_BYTES, Piece};
pub use error::{Result, SettingsError, StoreError, brief};
pub use in_place::{InPlace, InPlaceUpload, PartOptions};

/// The URL schemes this build can open, for error messages.
///
/// ```
/// assert!(sluice_store::supported_schemes().contains("file://"));
/// ```
pub fn supported_schemes() -> String {
    let mut schemes = String::from("plain paths, file://, memory://");
    for (enabled, scheme) in [
        (cfg!(feature = "s3"), ", s3://"),
        (cfg!(feature = "http"), ", http(s):// (read-only)"),
        (cfg!(feature = "gcp"), ", gs://"),
        (cfg!(feature = "azure"), ", az://"),
    ] {
        if enabled {
            schemes.push_str(scheme);
        }
    }
    schemes
}
pub use location::{object_path, resolve_url, store_key};
pub use redact::{redact, redact_location};
pub use registry::StoreRegistry;
pub use settings::{
    CONFIG_ENV, NAMED_SCHEME, Origin, PROJECT_FILE, SettingValue, Settings, SettingsSources,
    StoreSettings, USER_CONFIG_ENV,
};
pub use staged::{
    IN_PLACE_SCHEME, OutputKind, PublishedFile, PublishedOutput, RegisteredWriter, STAGING_MARKER,
    StagedOutput,
};

/// Aborts the multipart uploads left open under the folder `prefix` of `store`: the
/// uploads of a process killed while writing there (an executor of a cluster), which
/// object_store cannot list and no reader ever sees, but S3 keeps (and bills) until
/// they are aborted or a lifecycle rule removes them. Returns how many it aborted;
/// 0 on a store that has no multipart uploads to list (local disk, memory) or that
/// Sluice did not build.
///
/// Call it only when nothing writes under `prefix` any more: an upload still being
/// written there fails.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), sluice_store::StoreError> {
/// use object_store::path::Path;
/// let store = sluice_store::StoreBuilder::from_url(&url::Url::parse("memory://b/").unwrap())
///     .build()?;
/// let aborted = sluice_store::abort_pending_uploads(&store, &Path::from("out/parts")).await?;
/// assert_eq!(aborted, 0);
/// # Ok(())
/// # }
/// ```
pub async fn abort_pending_uploads(
    store: &std::sync::Arc<dyn object_store::ObjectStore>,
    prefix: &object_store::path::Path,
) -> Result<usize> {
    #[cfg(feature = "s3")]
    return s3_requests::abort_open_uploads(store, prefix).await;
    #[cfg(not(feature = "s3"))]
    {
        let _ = (store, prefix);
        Ok(0)
    }
}

/// [`abort_pending_uploads`], for cleanup that must not fail the work it follows: the
/// count is logged at `info`, a failure at `warn` (the bucket's lifecycle rule is the
/// last resort for what stays).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), sluice_store::StoreError> {
/// let store = sluice_store::StoreBuilder::from_url(&url::Url::parse("memory://b/").unwrap())
///     .build()?;
/// sluice_store::sweep_pending_uploads(&store, &object_store::path::Path::from("out/parts")).await;
/// # Ok(())
/// # }
/// ```
pub async fn sweep_pending_uploads(
    store: &std::sync::Arc<dyn object_store::ObjectStore>,
    prefix: &object_store::path::Path,
) {
    match abort_pending_uploads(store, prefix).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(%prefix, uploads = n, "aborted multipart uploads left open"),
        Err(e) => tracing::warn!(%prefix, error = %e, "could not abort the uploads left open"),
    }
}
