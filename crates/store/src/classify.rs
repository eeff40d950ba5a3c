//! What an object store's error means, decided once, here, for every caller.
//!
//! object_store reports most failures as typed variants (`NotFound`, `AlreadyExists`,
//! `Precondition`, `PermissionDenied`, `Unauthenticated`, `NotSupported`); those are
//! matched by type. Three meanings have no variant of their own and are read from
//! what the store carries: a missing *bucket* (S3 answers 404 with the code
//! `NoSuchBucket`, which object_store keeps only in its message), a server that
//! ignores range requests (object_store's HTTP client says so in the message of a
//! `NotSupported` or `Generic` error),
//! and a connection that failed (an `io::Error` somewhere in the source chain, found
//! by type).

use std::error::Error as StdError;

/// The meaning of an object store error, as Sluice acts on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// The object does not exist.
    NotFound,
    /// The bucket (or container) does not exist.
    BucketNotFound,
    /// A create-if-absent put found the object there: another writer won the race.
    Conflict,
    /// A conditional request's precondition failed.
    PreconditionFailed,
    /// The store refused the credentials or the permissions.
    AccessDenied,
    /// The endpoint could not be reached (after retries).
    Unreachable,
    /// The server failed (5xx) or throttled the request (429, S3's `SlowDown`) after
    /// the client's own retries: a later attempt may succeed.
    Transient,
    /// The server does not answer range requests with ranges.
    RangeNotSupported,
    /// The store does not support the operation.
    NotSupported,
    /// Anything else.
    Other,
}

/// Classifies an object store error (see the module docs for how).
///
/// ```
/// use sluice_store::{StoreErrorKind, classify};
/// let lost = object_store::Error::AlreadyExists {
///     path: "cache/_manifest.json".into(),
///     source: "exists".into(),
/// };
/// assert_eq!(classify(&lost), StoreErrorKind::Conflict);
/// ```
pub fn classify(error: &object_store::Error) -> StoreErrorKind {
    use object_store::Error as E;
    let bucket = || error.to_string().contains("NoSuchBucket");
    let ranges = || {
        let text = error.to_string();
        text.contains("non-partial response when range requested")
            || text.contains("Range request not supported")
    };
    match error {
        E::NotFound { .. } if bucket() => StoreErrorKind::BucketNotFound,
        E::NotFound { .. } => StoreErrorKind::NotFound,
        E::AlreadyExists { .. } => StoreErrorKind::Conflict,
        E::Precondition { .. } => StoreErrorKind::PreconditionFailed,
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => StoreErrorKind::AccessDenied,
        _ if ranges() => StoreErrorKind::RangeNotSupported,
        E::NotSupported { .. } | E::NotImplemented { .. } => StoreErrorKind::NotSupported,
        _ => {
            if bucket() {
                StoreErrorKind::BucketNotFound
            } else if let Some(kind) = io_in_chain(error) {
                kind
            } else if server_failed(error) {
                StoreErrorKind::Transient
            } else {
                StoreErrorKind::Other
            }
        }
    }
}

/// Whether the server answered with a 5xx or a throttling status. object_store keeps
/// the status in its `RetryError`, which it does not export: its message is the one
/// place the status can be read ("Server returned non-2xx status code: 503 ...").
fn server_failed(error: &object_store::Error) -> bool {
    let text = error.to_string();
    let status = text
        .split("status code: ")
        .nth(1)
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse::<u16>().ok());
    matches!(status, Some(429 | 500..=599)) || text.contains("SlowDown")
}

/// What an I/O error met on the way to a store means: `Unreachable` for a connection
/// that could not be made or was lost, `Transient` for an exchange cut short (a broken
/// pipe, a body that ended early, an interrupted call), `None` for the rest.
///
/// ```
/// use sluice_store::{StoreErrorKind, classify_io};
/// let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
/// assert_eq!(classify_io(&refused), Some(StoreErrorKind::Unreachable));
/// let cut = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
/// assert_eq!(classify_io(&cut), Some(StoreErrorKind::Transient));
/// ```
pub fn classify_io(error: &std::io::Error) -> Option<StoreErrorKind> {
    use std::io::ErrorKind as K;
    match error.kind() {
        K::ConnectionRefused
        | K::ConnectionReset
        | K::ConnectionAborted
        | K::NotConnected
        | K::AddrNotAvailable
        | K::HostUnreachable
        | K::NetworkUnreachable
        | K::TimedOut => Some(StoreErrorKind::Unreachable),
        K::BrokenPipe | K::UnexpectedEof | K::Interrupted => Some(StoreErrorKind::Transient),
        _ => None,
    }
}

/// The meaning of the `io::Error`s in an error's source chain: `Unreachable` if one
/// says so, else `Transient` if one says so.
fn io_in_chain(error: &(dyn StdError + 'static)) -> Option<StoreErrorKind> {
    let mut found = None;
    let mut current = Some(error);
    while let Some(e) = current {
        match e.downcast_ref::<std::io::Error>().and_then(classify_io) {
            Some(StoreErrorKind::Unreachable) => return Some(StoreErrorKind::Unreachable),
            Some(kind) => found = Some(kind),
            None => {}
        }
        current = e.source();
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_variants_are_classified_by_type() {
        let not_found = object_store::Error::NotFound {
            path: "a".into(),
            source: "gone".into(),
        };
        assert_eq!(classify(&not_found), StoreErrorKind::NotFound);
        let no_bucket = object_store::Error::NotFound {
            path: "a".into(),
            source: "<Code>NoSuchBucket</Code>".into(),
        };
        assert_eq!(classify(&no_bucket), StoreErrorKind::BucketNotFound);
        let denied = object_store::Error::PermissionDenied {
            path: "a".into(),
            source: "403".into(),
        };
        assert_eq!(classify(&denied), StoreErrorKind::AccessDenied);
        let precondition = object_store::Error::Precondition {
            path: "a".into(),
            source: "412".into(),
        };
        assert_eq!(classify(&precondition), StoreErrorKind::PreconditionFailed);
        let refused = object_store::Error::Generic {
            store: "S3",
            source: Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
        };
        assert_eq!(classify(&refused), StoreErrorKind::Unreachable);
        let throttled = object_store::Error::Generic {
            store: "S3",
            source: "Server returned non-2xx status code: 503 Service Unavailable: <Code>SlowDown</Code>".into(),
        };
        assert_eq!(classify(&throttled), StoreErrorKind::Transient);
        let bad_request = object_store::Error::Generic {
            store: "S3",
            source: "Server returned non-2xx status code: 400 Bad Request".into(),
        };
        assert_eq!(classify(&bad_request), StoreErrorKind::Other);
        let other = object_store::Error::Generic {
            store: "S3",
            source: "boom".into(),
        };
        assert_eq!(classify(&other), StoreErrorKind::Other);
    }
}
