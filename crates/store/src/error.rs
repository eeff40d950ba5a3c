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
    Settings(#[from] SettingsError),
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

/// What went wrong reading or using the settings. Names what to fix, never a secret.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsError {
    /// A settings file is not valid TOML.
    #[error("{} line {line}, column {column}: {reason}", file.display())]
    Syntax {
        /// The file.
        file: PathBuf,
        /// The line, from 1.
        line: usize,
        /// The column, from 1.
        column: usize,
        /// What the parser expected.
        reason: String,
    },
    /// A file named by a variable does not exist or cannot be read.
    #[error("cannot read the settings file {} (named by {variable}): {reason}", file.display())]
    Unreadable {
        /// The file.
        file: PathBuf,
        /// The variable that named it, or `the project`.
        variable: String,
        /// The operating system's error.
        reason: String,
    },
    /// A value has the wrong type or shape.
    #[error("{key} (from {origin}): {reason}")]
    Invalid {
        /// The setting, as a dotted path (`stores.lake.url`).
        key: String,
        /// Where it came from.
        origin: String,
        /// What is wrong and what to write instead.
        reason: String,
    },
    /// A location names a store that no settings file defines.
    #[error(
        "{location} names the store `{name}`, which is not defined{}; define it as \
         [stores.{name}] in sluice.toml (`sluice stores ls` lists them)",
        if known.is_empty() { String::new() } else { format!(" (defined: {})", known.join(", ")) }
    )]
    UnknownStore {
        /// The location as written.
        location: String,
        /// The name.
        name: String,
        /// The names that are defined.
        known: Vec<String>,
    },
    /// A setting refers to an environment variable that is not set.
    #[error(
        "store `{store}`: {key} is read from the environment variable {variable}, which is \
         not set; set it, or change stores.{store}.{key} (from {origin})"
    )]
    UnsetVariable {
        /// The store.
        store: String,
        /// The setting.
        key: String,
        /// The variable.
        variable: String,
        /// Where the reference was written.
        origin: String,
    },
    /// A store names an AWS profile that the shared credentials file does not have.
    #[error(
        "store `{store}`: the profile `{profile}` is not in {}: {reason}",
        file.display()
    )]
    Profile {
        /// The store.
        store: String,
        /// The profile.
        profile: String,
        /// The credentials file read.
        file: PathBuf,
        /// What is missing.
        reason: String,
    },
    /// Two stores are defined for the same whole bucket, so a plain URL of the bucket
    /// cannot pick one.
    #[error(
        "{url} is the URL of the stores {}: name one with store://NAME/… or keep one",
        names.join(" and ")
    )]
    Ambiguous {
        /// The bucket's URL.
        url: String,
        /// The stores defining it.
        names: Vec<String>,
    },
    /// A store whose secret is written in the file is not sent to a cluster's
    /// executors (settings travel there by reference only), so a task there cannot
    /// open it.
    #[error(
        "store `{store}`: {key} is written in the settings ({origin}); executors receive \
         credentials by reference only: write {key} = {{ env = \"VARIABLE\" }} (or a profile) \
         and set the variable on every executor"
    )]
    LiteralSecret {
        /// The store.
        store: String,
        /// The setting.
        key: String,
        /// Where it was written.
        origin: String,
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
