//! Locations: what users write (paths, URLs), as absolute URLs, store keys and object
//! paths.

use std::path::{Component, Path as FsPath, PathBuf};

use object_store::path::Path;
use url::Url;

use crate::redact::redact;
use crate::{Result, StoreError};

/// Turns what a user wrote (a plain path, relative or absolute, or a URL) into an
/// absolute URL.
///
/// A plain path is taken relative to the current directory and normalized without
/// touching the file system (it need not exist yet: destinations usually don't). A
/// trailing `/` is kept: it marks a directory.
///
/// ```
/// let url = sluice_store::resolve_url("/data/taxi/../out.parquet").unwrap();
/// assert_eq!(url.as_str(), "file:///data/out.parquet");
/// let url = sluice_store::resolve_url("memory://bucket/a/b.parquet").unwrap();
/// assert_eq!(url.scheme(), "memory");
/// ```
pub fn resolve_url(location: &str) -> Result<Url> {
    let invalid = |reason: String| StoreError::InvalidUrl {
        location: location.to_string(),
        reason,
    };
    if location.is_empty() {
        return Err(invalid("the location is empty".into()));
    }
    if let Some((scheme, _)) = location.split_once("://")
        && scheme.len() > 1
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    {
        return Url::parse(location).map_err(|e| invalid(e.to_string()));
    }
    let path = FsPath::new(location);
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| invalid(format!("cannot read the current directory: {e}")))?
            .join(path)
    };
    let normalized = normalize(&absolute);
    let url = if location.ends_with('/') {
        Url::from_directory_path(&normalized)
    } else {
        Url::from_file_path(&normalized)
    };
    url.map_err(|()| invalid("not an absolute local path".into()))
}

/// Removes `.` and `..` components lexically.
fn normalize(path: &FsPath) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// The key a store is registered under: `scheme://authority` (no credentials, no path).
///
/// ```
/// let url = url::Url::parse("s3://bucket/a/b.parquet").unwrap();
/// assert_eq!(sluice_store::store_key(&url), "s3://bucket");
/// ```
pub fn store_key(url: &Url) -> String {
    format!(
        "{}://{}",
        url.scheme(),
        &url[url::Position::BeforeHost..url::Position::AfterPort]
    )
}

/// The object path of a URL inside its store.
///
/// ```
/// let url = url::Url::parse("memory://bucket/a/b%20c.parquet").unwrap();
/// assert_eq!(sluice_store::object_path(&url).unwrap().as_ref(), "a/b c.parquet");
/// ```
pub fn object_path(url: &Url) -> Result<Path> {
    Path::from_url_path(url.path()).map_err(|e| StoreError::InvalidUrl {
        location: redact(url),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_resolve_against_the_current_directory() {
        let url = resolve_url("some/dir/").unwrap();
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(url, Url::from_directory_path(cwd.join("some/dir")).unwrap());
        assert!(url.as_str().ends_with('/'));
    }
}
