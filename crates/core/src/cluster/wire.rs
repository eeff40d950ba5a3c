//! Errors as they cross a cluster's wire.
//!
//! Ballista 55 carries a failed task's error to the client as text (the executor's
//! `DataFusionError`, formatted with `Debug` inside the job's status). So that the
//! client gets Sluice's error back rather than parsing wording, an executor appends a
//! versioned, structured payload to the plain message: `[sluice-error/1 HEX]`, the hex
//! of a JSON [`WireError`] (the task it is attributed to, the error's kind, the object
//! it names, whether a retry may fix it). Hex survives any quoting on the way; stock
//! tools still show the plain message before it.

use serde::{Deserialize, Serialize};

use crate::Error;

/// What opens a payload in an error's text; the number is the payload's version.
const OPEN: &str = "[sluice-error/1 ";

/// An executor's error, as the client decodes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct WireError {
    /// The task the error is attributed to (the innermost boundary it passed).
    pub(crate) task: Option<String>,
    /// The error's kind: the name of its [`Error`] variant (`Read`, `CorruptCheckpoint`, ...).
    pub(crate) kind: String,
    /// The object, source or checkpoint it names.
    pub(crate) object: Option<String>,
    /// Whether a retry may fix it.
    pub(crate) retryable: bool,
    /// Its one-line message, without the task.
    pub(crate) message: String,
    /// The reason a checkpoint was found corrupt (kind `CorruptCheckpoint`).
    pub(crate) reason: Option<String>,
}

impl WireError {
    /// The payload of `error`: a task's error is described by its source.
    pub(crate) fn of(error: &Error) -> Self {
        let (task, inner) = match error {
            Error::Task { task, source } => (Some(task.clone()), source.as_ref()),
            other => (other.task().map(str::to_string), other),
        };
        let reason = match inner {
            Error::CorruptCheckpoint { reason, .. } => Some(reason.clone()),
            _ => None,
        };
        Self {
            task,
            kind: kind(inner),
            object: object(inner),
            retryable: inner.is_retryable(),
            message: crate::one_line(inner),
            reason,
        }
    }

    /// `text` with this payload after it.
    pub(crate) fn attach(&self, text: &str) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        format!("{text} {OPEN}{}]", crate::hex::encode(&json))
    }

    /// The first payload in `text`, if it holds one that decodes.
    pub(crate) fn find(text: &str) -> Option<Self> {
        let start = text.find(OPEN)? + OPEN.len();
        let hex = &text[start..];
        let hex = &hex[..hex.find(']')?];
        let bytes = crate::hex::decode(hex).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

/// The name of `error`'s variant, from its `Debug` form.
fn kind(error: &Error) -> String {
    let debug = format!("{error:?}");
    debug
        .split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The object, source or checkpoint `error` names first.
fn object(error: &Error) -> Option<String> {
    match error {
        Error::SourceNotFound { url, .. }
        | Error::InvalidParquet { url, .. }
        | Error::AmbiguousColumnNames { url, .. }
        | Error::Write { url, .. }
        | Error::AccessDenied { url, .. }
        | Error::Unreachable { url, .. }
        | Error::BucketNotFound { url }
        | Error::RangeNotSupported { url }
        | Error::SourceChanged { url, .. }
        | Error::ColumnChunkTooLarge { url, .. } => Some(url.clone()),
        Error::SchemaMismatch { first_url, .. } => Some(first_url.clone()),
        Error::MissingColumn { sources, .. } | Error::Read { sources, .. } => {
            sources.first().cloned()
        }
        Error::CorruptCheckpoint { checkpoint, .. } | Error::Checkpoint { checkpoint, .. } => {
            Some(checkpoint.clone())
        }
        Error::MemoryLimitExceeded { sources, .. } => sources.first().cloned(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_survives_the_quoting_of_a_jobs_status_and_names_the_task() {
        let error = Error::Task {
            task: "extract".into(),
            source: Box::new(Error::CorruptCheckpoint {
                task: "extract".into(),
                checkpoint: "s3://b/checkpoints/extract/k/".into(),
                reason: "block 3 of part-0 does not match its checksum \"x\"".into(),
            }),
        };
        let wire = WireError::of(&error);
        let text = wire.attach(&crate::one_line(&error));
        // As Ballista shows it: inside a Debug-formatted string, quotes escaped.
        let shown = format!("Execution({text:?})");
        let found = WireError::find(&shown).unwrap();
        assert_eq!(found, wire);
        assert_eq!(found.task.as_deref(), Some("extract"));
        assert_eq!(found.kind, "CorruptCheckpoint");
        assert_eq!(
            found.object.as_deref(),
            Some("s3://b/checkpoints/extract/k/")
        );
        assert!(
            found
                .reason
                .unwrap()
                .contains("does not match its checksum")
        );
        assert!(
            found.retryable,
            "a corrupt checkpoint is recomputed on a retry"
        );
    }

    #[test]
    fn text_without_a_payload_or_with_a_damaged_one_has_none() {
        assert_eq!(WireError::find("task failed: boom"), None);
        assert_eq!(WireError::find("boom [sluice-error/1 zz]"), None);
        assert_eq!(WireError::find("boom [sluice-error/1 7b"), None);
    }
}
