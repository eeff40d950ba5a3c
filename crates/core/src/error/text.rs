//! Errors as text and as chains: the one-line message, causes found in a chain,
//! store failures classified, panics caught.

use std::error::Error as StdError;
use std::fmt;

use datafusion::error::DataFusionError;

use super::*;

/// Maps what an object store said into the errors users can act on; `None` for
/// the rest. The meaning is decided by [`sluice_store::classify`], once for every
/// caller.
pub(crate) fn classify_store_error(error: &object_store::Error, urls: &[String]) -> Option<Error> {
    use sluice_store::StoreErrorKind as Kind;
    let url = urls.join(", ");
    Some(match sluice_store::classify(error) {
        Kind::AccessDenied => Error::AccessDenied {
            url,
            reason: sluice_store::brief(&error.to_string()),
        },
        Kind::BucketNotFound => Error::BucketNotFound { url },
        Kind::RangeNotSupported => Error::RangeNotSupported { url },
        Kind::Unreachable => Error::Unreachable {
            url,
            reason: innermost_cause(error),
        },
        Kind::Conflict => Error::Store(sluice_store::StoreError::Conflict { url }),
        _ => return None,
    })
}

/// Whether a store error means the store failed (a 5xx, throttling, a connection or
/// a body cut short, after the client's retries), as opposed to the object being bad.
pub(crate) fn store_failed(error: &object_store::Error) -> bool {
    use sluice_store::StoreErrorKind as Kind;
    matches!(
        sluice_store::classify(error),
        Kind::Transient | Kind::Unreachable
    )
}

/// The innermost cause of an error, in its own words (`Connection refused (os error
/// 111)`): what a person can act on, without the wrappers' request and retry details.
pub(super) fn innermost_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut innermost = error;
    while let Some(next) = innermost.source() {
        innermost = next;
    }
    match sluice_store::brief(&innermost.to_string()) {
        text if text.is_empty() => sluice_store::brief(&error.to_string()),
        text => text,
    }
}

/// The `Display` prefixes that name an error's type rather than say anything: DataFusion
/// puts one before each wrapped error (`Arrow error: `, `Parquet error: `, ...), and
/// arrow and parquet repeat theirs when one wraps the other's text
/// (`Arrow error: Parquet argument error: Parquet error: ...`). Matched on text because
/// the inner ones are inside strings, not in the source chain.
pub(super) const TYPE_PREFIXES: &[&str] = &[
    "Arrow error: ",
    "Parquet error: ",
    "Parquet argument error: ",
    "External error: ",
    "External: ",
    "Execution error: ",
    "IO error: ",
    "Object Store error: ",
    "Parser error: ",
    "Csv error: ",
    "Json error: ",
];

/// `text` without its leading type-name prefixes ([`TYPE_PREFIXES`]).
pub(crate) fn plain(text: &str) -> &str {
    let mut text = text.trim();
    while let Some(rest) = TYPE_PREFIXES.iter().find_map(|p| text.strip_prefix(p)) {
        text = rest.trim_start();
    }
    text
}

/// What a DataFusion error says, without the prefixes that only name wrapper types
/// (`Execution error: Arrow error: Parquet argument error: External: snappy: corrupt
/// input` says `snappy: corrupt input`), and with a SQL parser error in its own words
/// rather than DataFusion's `Debug` print of it.
pub(crate) fn message(error: &DataFusionError) -> String {
    match error {
        DataFusionError::SQL(parser, _) => parser.to_string(),
        DataFusionError::Context(context, inner) => format!("{context}: {}", message(inner)),
        DataFusionError::Diagnostic(_, inner) => message(inner),
        DataFusionError::Shared(inner) => message(inner),
        other => plain(&other.to_string()).to_string(),
    }
}

/// A DataFusion error whose cause is reading source data (as opposed to evaluating
/// an expression or writing a sink).
pub(super) fn is_read_error(error: &DataFusionError) -> bool {
    use datafusion::arrow::error::ArrowError;
    find_in_chain::<parquet::errors::ParquetError>(error).is_some()
        // What the CSV and JSON readers say of a row they cannot parse.
        || find_in_chain::<ArrowError>(error).is_some_and(|e| {
            matches!(
                e,
                ArrowError::CsvError(_) | ArrowError::JsonError(_) | ArrowError::ParseError(_)
            )
        })
        || find_in_chain::<object_store::Error>(error).is_some()
        || find_in_chain::<std::io::Error>(error).is_some()
        || matches!(root_cause(error), DataFusionError::ParquetError(_))
        || format!("{error}").contains("Parquet")
}

pub(super) fn root_cause(error: &DataFusionError) -> &DataFusionError {
    let mut current = error;
    loop {
        current = match current {
            DataFusionError::Context(_, inner) | DataFusionError::Diagnostic(_, inner) => inner,
            DataFusionError::Shared(inner) => inner,
            _ => return current,
        };
    }
}

/// Whether an error's source chain holds an object store error or an I/O error that
/// `sluice_store` classifies as unreachable or transient.
pub(super) fn chain_is_transient(error: &(dyn StdError + 'static)) -> bool {
    use sluice_store::StoreErrorKind as Kind;
    let transient = |kind: Kind| matches!(kind, Kind::Unreachable | Kind::Transient);
    find_in_chain::<object_store::Error>(error)
        .is_some_and(|e| transient(sluice_store::classify(e)))
        || find_in_chain::<std::io::Error>(error)
            .and_then(sluice_store::classify_io)
            .is_some_and(transient)
}

pub(crate) fn find_in_chain<'a, T: StdError + 'static>(
    error: &'a (dyn StdError + 'static),
) -> Option<&'a T> {
    chain(error).find_map(|e| e.downcast_ref::<T>())
}

/// An error and its causes, outermost first.
pub(crate) fn chain<'a>(
    error: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(error), |&e| e.source())
}

pub(crate) fn find_store_error(error: &DataFusionError) -> Option<&object_store::Error> {
    if find_sluice_error(error).is_some() {
        // Attributed to a task already: keep that attribution.
        return None;
    }
    find_in_chain::<object_store::Error>(error)
}

/// What DataFusion said when a memory reservation failed, anywhere in the chain.
pub(super) fn resources_exhausted(error: &DataFusionError) -> Option<&str> {
    let mut current: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(e) = current {
        if let Some(DataFusionError::ResourcesExhausted(reason)) = e.downcast_ref() {
            return Some(reason);
        }
        current = e.source();
    }
    None
}

pub(super) fn find_sluice_error(error: &DataFusionError) -> Option<&Error> {
    find_in_chain::<Error>(error)
}

/// An error and its causes as one line, outermost first, each cause printed once.
///
/// Sluice's messages already include their cause's text, and so do many of
/// DataFusion's; printing the whole source chain after them (as `anyhow`'s `{:#}` does)
/// repeats it. This skips a cause whose text the line already holds, once the prefixes
/// that only name an error type (`Arrow error: `, `External error: `, ...) are left off.
///
/// ```
/// use sluice_core::{Error, one_line};
/// let error = Error::Task {
///     task: "extract".into(),
///     source: Box::new(Error::custom("the file is empty")),
/// };
/// assert_eq!(one_line(&error), r#"task "extract" failed: the file is empty"#);
/// ```
pub fn one_line(error: &(dyn StdError + 'static)) -> String {
    let mut line = String::new();
    let mut current = Some(error);
    while let Some(e) = current {
        // DataFusion's own `Display` of a SQL error is a `Debug` print: say it as
        // `message` does.
        let text = match e.downcast_ref::<DataFusionError>() {
            Some(datafusion) => message(datafusion),
            None => e.to_string(),
        }
        .replace('\n', " ");
        let text = plain(&text);
        if !text.is_empty() && !line.contains(text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(text);
        }
        current = e.source();
    }
    line
}

/// A copy of a borrowed error (errors that hold DataFusion errors cannot be cloned):
/// structure is kept where it matters for callers (task names, URLs, columns), and
/// wrapped DataFusion errors become their message.
pub(super) fn duplicate(error: &Error) -> Error {
    match error {
        Error::Task { task, source } => Error::Task {
            task: task.clone(),
            source: Box::new(duplicate(source)),
        },
        Error::UpstreamFailed { task, upstream } => Error::UpstreamFailed {
            task: task.clone(),
            upstream: upstream.clone(),
        },
        Error::SourceNotFound { url, format } => Error::SourceNotFound {
            url: url.clone(),
            format,
        },
        Error::InvalidParquet { url, reason } => Error::InvalidParquet {
            url: url.clone(),
            reason: reason.clone(),
        },
        Error::SchemaMismatch {
            column,
            first_url,
            first_type,
            second_url,
            second_type,
        } => Error::SchemaMismatch {
            column: column.clone(),
            first_url: first_url.clone(),
            first_type: first_type.clone(),
            second_url: second_url.clone(),
            second_type: second_type.clone(),
        },
        Error::AmbiguousColumnNames { url, first, second } => Error::AmbiguousColumnNames {
            url: url.clone(),
            first: first.clone(),
            second: second.clone(),
        },
        Error::MissingColumn {
            column,
            sources,
            available,
        } => Error::MissingColumn {
            column: column.clone(),
            sources: sources.clone(),
            available: available.clone(),
        },
        Error::Read { sources, source } => Error::Read {
            sources: sources.clone(),
            source: DataFusionError::Execution(message(source)),
        },
        Error::Execution { source } => Error::Execution {
            source: DataFusionError::Execution(message(source)),
        },
        Error::Plan { source } => Error::Plan {
            source: DataFusionError::Execution(message(source)),
        },
        Error::Write { url, source } => Error::Write {
            url: url.clone(),
            source: Box::new(duplicate(source)),
        },
        Error::InvalidOption { option, reason } => Error::InvalidOption {
            option,
            reason: reason.clone(),
        },
        Error::DestinationOverlapsSource {
            dest,
            source_location,
        } => Error::DestinationOverlapsSource {
            dest: dest.clone(),
            source_location: source_location.clone(),
        },
        Error::Internal { message } => Error::Internal {
            message: message.clone(),
        },
        Error::Custom(source) => Error::Custom(source.to_string().into()),
        Error::AccessDenied { url, reason } => Error::AccessDenied {
            url: url.clone(),
            reason: reason.clone(),
        },
        Error::Unreachable { url, reason } => Error::Unreachable {
            url: url.clone(),
            reason: reason.clone(),
        },
        Error::BucketNotFound { url } => Error::BucketNotFound { url: url.clone() },
        Error::RangeNotSupported { url } => Error::RangeNotSupported { url: url.clone() },
        Error::CorruptCheckpoint {
            task,
            checkpoint,
            reason,
        } => Error::CorruptCheckpoint {
            task: task.clone(),
            checkpoint: checkpoint.clone(),
            reason: reason.clone(),
        },
        Error::Checkpoint {
            task,
            checkpoint,
            source,
        } => Error::Checkpoint {
            task: task.clone(),
            checkpoint: checkpoint.clone(),
            source: Box::new(duplicate(source)),
        },
        Error::UncacheableFunction {
            task,
            function,
            reason,
        } => Error::UncacheableFunction {
            task: task.clone(),
            function: function.clone(),
            reason: reason.clone(),
        },
        Error::SourceChanged { url, reason } => Error::SourceChanged {
            url: url.clone(),
            reason: reason.clone(),
        },
        Error::Timeout { scope, name, limit } => Error::Timeout {
            scope,
            name: name.clone(),
            limit: *limit,
        },
        Error::Cancelled { flow, run_id } => Error::Cancelled {
            flow: flow.clone(),
            run_id: run_id.clone(),
        },
        Error::ColumnChunkTooLarge {
            url,
            column,
            row_group,
            size,
            limit,
        } => Error::ColumnChunkTooLarge {
            url: url.clone(),
            column: column.clone(),
            row_group: *row_group,
            size: *size,
            limit: *limit,
        },
        Error::MemoryLimitExceeded { sources, reason } => Error::MemoryLimitExceeded {
            sources: sources.clone(),
            reason: reason.clone(),
        },
        Error::Retryable(source) => Error::Retryable(source.to_string().into()),
        other => Error::Execution {
            source: DataFusionError::Execution(other.to_string()),
        },
    }
}

/// The message of a panic payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string())
}

/// Runs a DataFusion future, turning a panic in it (an upstream bug, such as a decoder
/// choking on a malformed file) into an error.
pub(crate) async fn guarded<T>(
    future: impl std::future::Future<Output = datafusion::error::Result<T>>,
) -> datafusion::error::Result<T> {
    use futures::FutureExt;
    std::panic::AssertUnwindSafe(future)
        .catch_unwind()
        .await
        .unwrap_or_else(|payload| {
            Err(DataFusionError::Execution(format!(
                "execution panicked: {}",
                panic_message(payload.as_ref())
            )))
        })
}

/// A byte count as a person reads it (`1.5 GiB`, `512 B`).
pub(crate) struct HumanBytes(pub u64);

impl fmt::Display for HumanBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
        let mut value = self.0 as f64;
        let mut unit = 0;
        while value >= 1024.0 && unit + 1 < UNITS.len() {
            value /= 1024.0;
            unit += 1;
        }
        if unit == 0 {
            write!(f, "{} B", self.0)
        } else {
            write!(f, "{value:.1} {}", UNITS[unit])
        }
    }
}

/// A name as an error message shows it: quoted and escaped, and cut short when long.
pub(crate) fn shown(name: &str) -> String {
    const SHOWN: usize = 64;
    match name.char_indices().nth(SHOWN) {
        Some((at, _)) => format!("{:?}… ({} bytes)", &name[..at], name.len()),
        None => format!("{name:?}"),
    }
}
