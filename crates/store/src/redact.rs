//! Locations as they may be shown: in errors, logs and records, without credentials.

use url::Url;

/// A URL as it may appear in logs, errors, run records and manifests: without user
/// name or password.
///
/// ```
/// let url = url::Url::parse("https://user:secret@host/a.parquet").unwrap();
/// assert_eq!(sluice_store::redact(&url), "https://host/a.parquet");
/// ```
pub fn redact(url: &Url) -> String {
    let mut url = url.clone();
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.to_string()
}

/// A location a user gave (a path or a URL) as it may be shown: a URL loses its user
/// name and password, anything else is kept.
///
/// ```
/// assert_eq!(sluice_store::redact_location("s3://k:s@b/x"), "s3://b/x");
/// assert_eq!(sluice_store::redact_location("data/in.parquet"), "data/in.parquet");
/// ```
pub fn redact_location(location: &str) -> String {
    match Url::parse(location) {
        Ok(url) if !url.username().is_empty() || url.password().is_some() => redact(&url),
        _ => location.to_string(),
    }
}
