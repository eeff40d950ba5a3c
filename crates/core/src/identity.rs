//! The identity of a stored object, as a listing or a read saw it: what a read of the
//! same object must find again (a pinned source object, a checkpoint's manifest).

use chrono::{DateTime, Utc};
use datafusion::datasource::listing::ListingTableUrl;
use object_store::ObjectMeta;
use serde::{Deserialize, Serialize};

/// An object's size, ETag and modification time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ObjectIdentity {
    pub(crate) size: u64,
    pub(crate) e_tag: Option<String>,
    pub(crate) last_modified: DateTime<Utc>,
}

impl ObjectIdentity {
    pub(crate) fn of(meta: &ObjectMeta) -> Self {
        Self {
            size: meta.size,
            e_tag: meta.e_tag.clone(),
            last_modified: meta.last_modified,
        }
    }

    /// Why `found` is not this object, if it is not. The size must match; the ETags must
    /// match when both sides have one; otherwise the modification times, to the second
    /// (a listing and a read of the same S3 object give it with different precision).
    pub(crate) fn differs(&self, found: &ObjectMeta) -> Option<String> {
        if found.size != self.size {
            return Some(format!(
                "it had {} bytes and now has {}",
                self.size, found.size
            ));
        }
        match (&self.e_tag, &found.e_tag) {
            (Some(expected), Some(now)) if expected != now => {
                Some(format!("its ETag was {expected} and is now {now}"))
            }
            (Some(_), Some(_)) => None,
            _ if self.last_modified.timestamp() != found.last_modified.timestamp() => {
                Some(format!(
                    "it was last modified at {} and now at {}",
                    self.last_modified.to_rfc3339(),
                    found.last_modified.to_rfc3339()
                ))
            }
            _ => None,
        }
    }
}

/// The URL of the store `url` is in, without credentials, ending in `/`.
pub(crate) fn object_base(url: &ListingTableUrl) -> String {
    let mut base = url::Url::parse(url.object_store().as_str())
        .map(|u| sluice_store::redact(&u))
        .unwrap_or_default();
    if !base.ends_with('/') {
        base.push('/');
    }
    base
}

/// An object's URL, under a base from [`object_base`], as errors name it.
pub(crate) fn object_url(base: &str, meta: &ObjectMeta) -> String {
    format!("{base}{}", meta.location)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(size: u64, e_tag: Option<&str>, seconds: i64, nanos: u32) -> ObjectMeta {
        ObjectMeta {
            location: "a/b".into(),
            last_modified: DateTime::from_timestamp(seconds, nanos).unwrap(),
            size,
            e_tag: e_tag.map(String::from),
            version: None,
        }
    }

    #[test]
    fn identities_compare_by_size_then_etag_then_time_to_the_second() {
        let pinned = ObjectIdentity::of(&meta(10, Some("e1"), 1_700_000_000, 123_000_000));
        assert_eq!(
            pinned.differs(&meta(10, Some("e1"), 1_700_000_999, 0)),
            None
        );
        assert!(
            pinned
                .differs(&meta(11, Some("e1"), 1_700_000_000, 0))
                .unwrap()
                .contains("bytes")
        );
        assert!(
            pinned
                .differs(&meta(10, Some("e2"), 1_700_000_000, 0))
                .unwrap()
                .contains("ETag")
        );
        // Without an ETag on one side, the time decides, to the second.
        assert_eq!(pinned.differs(&meta(10, None, 1_700_000_000, 0)), None);
        assert!(
            pinned
                .differs(&meta(10, None, 1_700_000_001, 0))
                .unwrap()
                .contains("modified")
        );
    }
}
