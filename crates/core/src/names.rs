//! Names that become parts of object keys: task names (`checkpoints/<task>/…`), flow
//! names (`runs/<flow>/<run-id>.json`) and run ids.
//!
//! Every such name is checked before anything is written, so that no key can leave
//! its prefix and every key is one a local file system and every object store accept:
//!
//! ```text
//! <store>/checkpoints/<task>/<key>/…    task: validate_name; key: a hex digest (or a UUID)
//! <store>/runs/<flow>/<run-id>.json     flow: validate_name; run id: validate_name
//! <store>/schemas/<digest>.json         digest: hex, of the source objects' identities
//! ```
//!
//! Cache keys are never user text: the inputs policy hashes the key inputs, a
//! [`CachePolicy::key_fn`](crate::CachePolicy::key_fn) key is hashed with the task's
//! name (BLAKE3, in hex), and parameters enter keys only through those hashes.
//! [`Path::join`](object_store::path::Path::join) percent-encodes whatever it is given
//! as well, but a name it would have to encode is refused here with a clear error
//! instead of turning into a surprising key.

use crate::{Error, Result};

/// The longest name accepted, in bytes: a key holds a name once or twice, and local
/// file systems allow 255 bytes per path component.
pub const MAX_NAME_LEN: usize = 128;

/// Checks that `name` (a `what`: `"task name"`, `"flow name"`, `"run id"`) can be one
/// component of an object key: 1 to [`MAX_NAME_LEN`] bytes of letters, digits, `-`,
/// `_` and `.`, starting with a letter or a digit. That refuses the empty name, `.`
/// and `..`, path separators (`/`, `\`), absolute paths, control characters (NUL,
/// newlines), whitespace, and the characters object stores encode or reserve
/// (`%`, `*`, `?`, `#`, ...).
///
/// ```
/// use sluice_core::{Error, validate_name};
/// validate_name("task name", "transform_v2").unwrap();
/// validate_name("flow name", "nyc-taxi.2023").unwrap();
/// let err = validate_name("task name", "../escape").unwrap_err();
/// assert!(matches!(err, Error::InvalidName { what: "task name", .. }));
/// assert!(err.to_string().contains("path separator"), "{err}");
/// ```
pub fn validate_name(what: &'static str, name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        Some("it is empty".to_string())
    } else if name.len() > MAX_NAME_LEN {
        Some(format!(
            "it is {} bytes long, more than {MAX_NAME_LEN}",
            name.len()
        ))
    } else if name == "." || name == ".." {
        Some("it is a relative path component".to_string())
    } else if name.contains(['/', '\\']) {
        Some("it contains a path separator".to_string())
    } else if name.chars().any(char::is_control) {
        Some("it contains a control character".to_string())
    } else if let Some(first) = name.chars().next().filter(|c| !c.is_alphanumeric()) {
        Some(format!("it starts with {first:?}, not a letter or a digit"))
    } else {
        name.chars()
            .find(|c| !(c.is_alphanumeric() || matches!(c, '-' | '_' | '.')))
            .map(|c| format!("it contains {c:?}"))
    };
    match reason {
        Some(reason) => Err(Error::InvalidName {
            what,
            name: name.to_string(),
            reason: format!(
                "{reason}; use 1 to {MAX_NAME_LEN} letters, digits, `-`, `_` and `.`, \
                 starting with a letter or a digit"
            ),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_would_escape_their_prefix_are_refused() {
        let long = "a".repeat(MAX_NAME_LEN + 1);
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/../../b",
            "/abs",
            "a/b",
            "a\\b",
            "C:\\x",
            "x\ny",
            "nul\0byte",
            "tab\there",
            ".hidden",
            "_manifest",
            "-flag",
            "a b",
            "a%2Fb",
            "a*",
            "a?b",
            "a#b",
            "r#type",
            long.as_str(),
        ] {
            let err = validate_name("task name", bad).unwrap_err();
            let Error::InvalidName { what, name, reason } = &err else {
                panic!("{bad:?}: {err}");
            };
            assert_eq!((*what, name.as_str()), ("task name", bad));
            assert!(!reason.is_empty());
            assert!(
                !err.to_string().contains('\n') && !err.to_string().contains('\0'),
                "{err}"
            );
        }
        for good in [
            "transform_v2",
            "etl",
            "a",
            "nyc-taxi.2023",
            "données",
            "v1..2",
        ] {
            validate_name("task name", good).unwrap();
        }
        validate_name("task name", &"a".repeat(MAX_NAME_LEN)).unwrap();
    }
}
