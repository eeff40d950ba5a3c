//! The error type of the storage layer.

use std::path::PathBuf;

/// A `Result` whose error is [`StoreError`].
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Everything that can go wrong naming, opening, writing or publishing an object.
///
/// URLs in these errors never carry credentials: user info is stripped before a URL
/// is stored in an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The text is neither a path nor a URL Sluice understands.
    #[error("invalid location {location:?}: {reason}")]
    InvalidUrl {
        /// The location as the user wrote it.
        location: String,
        /// Why it was rejected.
        reason: String,
    },
    /// The URL's scheme has no object store in this build.
    #[error(
        "no object store for {url}: the scheme `{scheme}` is not supported by this build \
         (supported: {})",
        crate::supported_schemes()
    )]
    UnsupportedScheme {
        /// The URL, without credentials.
        url: String,
        /// Its scheme.
        scheme: String,
    },
    /// The destination's store is read-only in Sluice (HTTP and HTTPS).
    #[error(
        "cannot write to {url}: {scheme}:// locations are read-only; write to a path, s3:// or memory:// instead"
    )]
    ReadOnly {
        /// The destination, without credentials.
        url: String,
        /// Its scheme.
        scheme: String,
    },
    /// An operation on an object store failed.
    #[error("{operation} {url} failed: {}", brief(&source.to_string()))]
    ObjectStore {
        /// What was being done: `list`, `rename`, `delete`, ...
        operation: &'static str,
        /// The object, without credentials.
        url: String,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },
    /// A create-if-absent write lost to another writer: the object exists now.
    #[error("{url} was created by another writer first")]
    Conflict {
        /// The object, without credentials.
        url: String,
    },
    /// A read ended before the bytes it asked for arrived: the server or the network
    /// cut the body short in a way HTTP did not reveal (a body delimited only by the
    /// connection closing). The bytes received are never handed on as data.
    #[error(
        "reading {location} ended after {received} of the {expected} bytes requested \
         (bytes {start}..{end}): the connection was cut short; retry the read"
    )]
    ShortRead {
        /// The object, as the store names it.
        location: String,
        /// The first byte requested.
        start: u64,
        /// One past the last byte requested.
        end: u64,
        /// Bytes requested.
        expected: u64,
        /// Bytes received.
        received: u64,
    },
    /// The storage settings are malformed, or a location names a store they do not
    /// define, or a store's settings cannot be used.
    #[error(transparent)]
    Settings(#[from] crate::SettingsError),
    /// A local file-system operation failed.
    #[error("{operation} {} failed: {source}", path.display())]
    Io {
        /// What was being done.
        operation: &'static str,
        /// The local path.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

/// The first line of a store's error message, without the response body some stores
/// append (S3's XML, with request ids) and without the `:` that introduced an empty one.
///
/// ```
/// let text = "Server returned non-2xx status code: 403 Forbidden: <?xml version=\"1.0\"?><Error/>";
/// assert_eq!(
///     sluice_store::brief(text),
///     "Server returned non-2xx status code: 403 Forbidden"
/// );
/// ```
pub fn brief(text: &str) -> String {
    let line = text.lines().next().unwrap_or(text);
    let line = match line.find("<?xml") {
        Some(i) => &line[..i],
        None => line,
    };
    line.trim_end().trim_end_matches(':').trim_end().to_string()
}
