//! The error type of Sluice's core, and how DataFusion's errors map onto it.

use std::error::Error as StdError;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::SchemaError;
use datafusion::error::DataFusionError;
use sluice_store::StoreError;

mod text;
pub use text::one_line;
pub(crate) use text::*;

/// A `Result` whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in a flow.
///
/// Variants fall in groups by whose fault they are:
/// - the data or the flow definition: [`SourceNotFound`](Self::SourceNotFound),
///   [`InvalidParquet`](Self::InvalidParquet), [`SchemaMismatch`](Self::SchemaMismatch),
///   [`AmbiguousColumnNames`](Self::AmbiguousColumnNames),
///   [`MissingColumn`](Self::MissingColumn), [`Plan`](Self::Plan),
///   [`InvalidOption`](Self::InvalidOption), [`InvalidName`](Self::InvalidName),
///   [`DestinationOverlapsSource`](Self::DestinationOverlapsSource),
///   [`ColumnChunkTooLarge`](Self::ColumnChunkTooLarge);
/// - a task's own code: [`Task`](Self::Task) wraps whatever a task failed with,
///   [`Custom`](Self::Custom) is an error a task body raised itself;
/// - storage and execution: [`Store`](Self::Store), [`Read`](Self::Read),
///   [`Write`](Self::Write), [`Execution`](Self::Execution),
///   [`MemoryLimitExceeded`](Self::MemoryLimitExceeded);
/// - ours: [`Internal`](Self::Internal) (the message asks for an issue).
///
/// Messages name the task and the object and say what to do next; they never carry
/// credentials.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A source location matched no object.
    #[error(
        "no {format} data found at {url}: check the path or URL \
         (a directory or glob must match at least one .{format} file)"
    )]
    SourceNotFound {
        /// The location as resolved.
        url: String,
        /// The file format looked for (`parquet`, `csv`, `json`).
        format: &'static str,
    },
    /// An object is not a readable Parquet file (not Parquet, truncated, corrupt).
    #[error(
        "{url} is not a readable Parquet file ({reason}); check that it is Parquet \
         and was written completely"
    )]
    InvalidParquet {
        /// The file.
        url: String,
        /// What the Parquet reader said.
        reason: String,
    },
    /// Two files of one source have types for a column that do not unify, by the rule
    /// on [`ParquetRead`](crate::ParquetRead) (a string and an integer, a timestamp and
    /// a double, timestamps in different time zones, ...).
    ///
    /// ```
    /// use sluice_core::Error;
    /// use datafusion::arrow::datatypes::DataType;
    /// let err = Error::SchemaMismatch {
    ///     column: "fare_amount".into(),
    ///     first_url: "file:///data/a.parquet".into(),
    ///     first_type: DataType::Float64,
    ///     second_url: "file:///data/b.parquet".into(),
    ///     second_type: DataType::Utf8,
    /// };
    /// assert!(err.to_string().starts_with(
    ///     "column \"fare_amount\" is Float64 in file:///data/a.parquet but Utf8 in \
    ///      file:///data/b.parquet"
    /// ));
    /// ```
    #[error(
        "column {column:?} is {first_type} in {first_url} but {second_type} in {second_url}, \
         and the two types do not unify (see \"Schema evolution across files\"); read the \
         files separately and cast the column to one type before combining them, or narrow \
         the path or glob to leave one of them out"
    )]
    SchemaMismatch {
        /// The column, spelled as in the unified schema.
        column: String,
        /// A file with the column's first type.
        first_url: String,
        /// The column's type in `first_url`.
        first_type: DataType,
        /// The file whose type does not unify with it.
        second_url: String,
        /// The column's type in `second_url`.
        second_type: DataType,
    },
    /// With case-insensitive names, a file has two columns whose names differ only in
    /// case, so which one to read is ambiguous.
    #[error(
        "{url} has columns {first:?} and {second:?}, whose names differ only in case, so it \
         cannot be read with case-insensitive names; read it with case-sensitive names \
         (the default), where they are two columns"
    )]
    AmbiguousColumnNames {
        /// The file.
        url: String,
        /// One spelling.
        first: String,
        /// The other.
        second: String,
    },
    /// An expression refers to a column the data does not have.
    #[error(
        "column {column:?} is not in the data{}; available columns: {}",
        from_sources(sources),
        available.join(", ")
    )]
    MissingColumn {
        /// The missing column.
        column: String,
        /// Where the data came from.
        sources: Vec<String>,
        /// The columns that exist.
        available: Vec<String>,
    },
    /// The plan is invalid: a type error, an ambiguous name, bad SQL.
    #[error("invalid query plan: {}", message(source))]
    Plan {
        /// DataFusion's error.
        #[source]
        source: DataFusionError,
    },
    /// An option value is out of range or inconsistent.
    #[error("invalid option {option}: {reason}")]
    InvalidOption {
        /// The option.
        option: &'static str,
        /// Why it is invalid.
        reason: String,
    },
    /// Reading a source failed while the data streamed.
    #[error("reading {} failed: {}", sources.join(", "), message(source))]
    Read {
        /// The sources being read.
        sources: Vec<String>,
        /// DataFusion's error.
        #[source]
        source: DataFusionError,
    },
    /// Writing a sink failed; nothing was published at the destination.
    #[error("writing {url} failed, nothing was published there: {source}")]
    Write {
        /// The destination.
        url: String,
        /// Why.
        #[source]
        source: Box<Error>,
    },
    /// An object store operation failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The store refused the credentials or the permissions (HTTP 401 / 403).
    #[error(
        "access to {url} was denied ({reason}); check the credentials \
         (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) and their permissions"
    )]
    AccessDenied {
        /// The object or prefix.
        url: String,
        /// The store's answer.
        reason: String,
    },
    /// The endpoint could not be reached, even after retries.
    #[error("cannot reach the store for {url} ({reason}); check the endpoint and the network")]
    Unreachable {
        /// The object or prefix.
        url: String,
        /// The connection error.
        reason: String,
    },
    /// The bucket does not exist.
    #[error("the bucket of {url} does not exist; create it or fix the URL")]
    BucketNotFound {
        /// The object or prefix.
        url: String,
    },
    /// The server answered a range request with the whole object, so a Parquet file
    /// cannot be read in parts.
    #[error(
        "the server of {url} does not support range requests; \
         serve the file from a server that does, or download it first"
    )]
    RangeNotSupported {
        /// The object.
        url: String,
    },
    /// Executing a plan failed.
    #[error("query execution failed: {}", message(source))]
    Execution {
        /// DataFusion's error.
        #[source]
        source: DataFusionError,
    },
    /// A checkpoint turned out corrupt while it streamed (a part that does not decode
    /// or does not match its checksum). It has been invalidated: the next run
    /// recomputes the task.
    #[error(
        "the checkpoint of task {task:?} at {checkpoint} is corrupt ({reason}); it has been \
         invalidated, run the flow again to recompute it"
    )]
    CorruptCheckpoint {
        /// The task.
        task: String,
        /// The checkpoint's directory.
        checkpoint: String,
        /// What was wrong.
        reason: String,
    },
    /// A persisted task's plan calls a function that its cache key cannot cover: one
    /// whose result depends on when or where it runs (`random()`, `uuid()`, `now()`,
    /// `current_date()`, ...), or a user-defined function registered without a version.
    /// Refused before anything is read or written.
    #[error("task {task:?} is persisted, but its plan calls {function}, {reason}")]
    UncacheableFunction {
        /// The task.
        task: String,
        /// The function, as the plan names it (`random()`).
        function: String,
        /// Why the key cannot cover it, and what to do.
        reason: String,
    },
    /// A source object changed (or went) between the listing that built its frame (and
    /// made the cache keys of the tasks over it) and a read of it: the run stops rather
    /// than mix versions or write a checkpoint under a key that names other objects.
    #[error(
        "the source object {url} changed after its frame was built ({reason}); nothing \
         was written from it: run the flow again to read the new version"
    )]
    SourceChanged {
        /// The object.
        url: String,
        /// What changed.
        reason: String,
    },
    /// A checkpoint could not be looked up, written or committed: the store is
    /// unreachable, denies access, or failed. A persisted task never runs silently
    /// unpersisted.
    #[error(
        "cannot use the checkpoint of task {task:?} at {checkpoint}: {source}; check the \
         result store's URL and credentials, or run without persisting the task"
    )]
    Checkpoint {
        /// The task.
        task: String,
        /// The checkpoint's directory.
        checkpoint: String,
        /// Why.
        #[source]
        source: Box<Error>,
    },
    /// A task name, flow name or run id cannot be one component of an object key (see
    /// [`validate_name`](crate::validate_name)); refused before anything is written.
    #[error("invalid {what} {}: {reason}", shown(name))]
    InvalidName {
        /// What is named (`task name`, `flow name`, `run id`).
        what: &'static str,
        /// The name as given.
        name: String,
        /// Why it is refused.
        reason: String,
    },
    /// A task failed; `source` says why.
    #[error("{}", task_failed(task, source))]
    Task {
        /// The task's name.
        task: String,
        /// Why it failed.
        #[source]
        source: Box<Error>,
    },
    /// A task could not finish because a task upstream of it failed.
    #[error("task {task:?} did not finish because upstream task {upstream:?} failed")]
    UpstreamFailed {
        /// The task that could not finish.
        task: String,
        /// The task that failed.
        upstream: String,
    },
    /// An error raised by a task's own code.
    #[error(transparent)]
    Custom(Box<dyn StdError + Send + Sync + 'static>),
    /// An error raised by a task's own code that a new attempt may fix: the task's
    /// retries apply to it (see [`Error::retryable`]).
    #[error(transparent)]
    Retryable(Box<dyn StdError + Send + Sync + 'static>),
    /// A task or flow ran longer than its timeout. Its plans were stopped and nothing
    /// it was writing was published.
    #[error(
        "{scope} {name:?} timed out after {limit:?}; nothing it was writing was published; \
         raise its timeout or make the work smaller"
    )]
    Timeout {
        /// `task` or `flow`.
        scope: &'static str,
        /// The task's or flow's name.
        name: String,
        /// The timeout.
        limit: std::time::Duration,
    },
    /// The flow run was cancelled (a cancellation token, Ctrl-C). Its plans were stopped
    /// and nothing it was writing was published.
    #[error("flow run {run_id} of {flow:?} was cancelled; nothing it was writing was published")]
    Cancelled {
        /// The flow's name.
        flow: String,
        /// The run's id.
        run_id: String,
    },
    /// A sink's destination is one of the frame's sources, or inside (or around) one:
    /// refused before anything is written.
    #[error(
        "refusing to write {dest}: it overlaps {source_location}, which the frame reads; \
         write somewhere else (a rerun would read its own output, or the write would replace its input)"
    )]
    DestinationOverlapsSource {
        /// The destination.
        dest: String,
        /// The source it overlaps.
        source_location: String,
    },
    /// No run in the run store has this id.
    #[error(
        "no flow run {run_id:?} in {store}{detail}; `sluice runs ls --store {store}` lists them"
    )]
    RunNotFound {
        /// The id (or prefix) asked for.
        run_id: String,
        /// The run store.
        store: String,
        /// More (several runs match the prefix).
        detail: String,
    },
    /// A Parquet column chunk declares more bytes uncompressed than the session's cap
    /// ([`SessionBuilder::with_max_column_chunk_bytes`](crate::SessionBuilder::with_max_column_chunk_bytes)):
    /// a decompression bomb, a corrupt footer, or an unusually large chunk. It is refused
    /// before a byte of it is fetched or decompressed.
    #[error(
        "{url}: column {column:?} of row group {row_group} inflates to {} uncompressed, over \
         the session's limit of {} per column chunk, so it was not decoded (a file that \
         inflates this much may be a decompression bomb); if the file is trusted, raise the \
         limit with SessionBuilder::with_max_column_chunk_bytes or the \
         SLUICE_MAX_COLUMN_CHUNK_BYTES environment variable",
        HumanBytes(*size),
        HumanBytes(*limit)
    )]
    ColumnChunkTooLarge {
        /// The file.
        url: String,
        /// The column's path (`trip.fare`).
        column: String,
        /// The row group's index in the file.
        row_group: usize,
        /// The chunk's uncompressed size, as the footer declares it.
        size: u64,
        /// The session's cap.
        limit: u64,
    },
    /// An operator (a sort, an aggregation, a join, the Parquet writer) needed more
    /// memory than the session's memory pool
    /// ([`SessionBuilder::with_memory_limit`](crate::SessionBuilder::with_memory_limit))
    /// had left.
    #[error(
        "the query needed more memory than the session's memory pool allows{}: {reason}; \
         raise the limit with SessionBuilder::with_memory_limit or the SLUICE_MEMORY_LIMIT \
         environment variable (default 4 GiB), or make the work smaller (smaller row groups, \
         fewer partitions)",
        from_sources(sources)
    )]
    MemoryLimitExceeded {
        /// The sources being read.
        sources: Vec<String>,
        /// DataFusion's account of the pool.
        reason: String,
    },
    /// The cluster a flow runs on (see [`Runner`](crate::Runner)) could not be reached,
    /// had no executor, cannot run this plan, or failed the job.
    ///
    /// ```
    /// let err = sluice_core::Error::Cluster {
    ///     address: "df://10.0.0.5:50050".into(),
    ///     reason: "nothing listens there".into(),
    /// };
    /// assert!(err.to_string().starts_with("running on the cluster at df://10.0.0.5:50050 failed"));
    /// ```
    #[error("running on the cluster at {address} failed: {reason}")]
    Cluster {
        /// The scheduler's URL (`df://host:port`).
        address: String,
        /// What happened and what to do.
        reason: String,
    },
    /// A cluster's executor failed a task's work: its message, the kind of error it
    /// raised (the name of the variant a local run raises), the object that names, and
    /// whether a retry may fix it.
    ///
    /// ```
    /// let err = sluice_core::Error::OnExecutor {
    ///     cluster: "df://10.0.0.5:50050".into(),
    ///     kind: "Read".into(),
    ///     object: Some("s3://bucket/in/part-2.parquet".into()),
    ///     message: "reading s3://bucket/in/part-2.parquet failed: invalid page".into(),
    ///     retryable: false,
    /// };
    /// assert!(err.to_string().ends_with("(on the cluster at df://10.0.0.5:50050)"));
    /// ```
    #[error("{message} (on the cluster at {cluster})")]
    OnExecutor {
        /// The scheduler's URL (`df://host:port`).
        cluster: String,
        /// The name of the error's variant, as a local run would raise it.
        kind: String,
        /// The object, source or checkpoint it names.
        object: Option<String>,
        /// What the executor reported.
        message: String,
        /// Whether a retry may fix it.
        retryable: bool,
    },
    /// A bug in Sluice.
    #[error("internal error in sluice: {message}; please report it as an issue")]
    Internal {
        /// What went wrong.
        message: String,
    },
}

/// `task "x" failed: <why>`, unless the reason names the task already (its own timeout).
fn task_failed(task: &str, source: &Error) -> String {
    match source {
        Error::Timeout {
            scope: "task",
            name,
            ..
        } if name == task => source.to_string(),
        _ => format!("task {task:?} failed: {source}"),
    }
}

fn from_sources(sources: &[String]) -> String {
    if sources.is_empty() {
        String::new()
    } else {
        format!(" read from {}", sources.join(", "))
    }
}

impl Error {
    /// Wraps an error raised by a task's own code.
    ///
    /// ```
    /// let err = sluice_core::Error::custom(std::io::Error::other("quota exceeded"));
    /// assert_eq!(err.to_string(), "quota exceeded");
    /// ```
    pub fn custom(error: impl Into<Box<dyn StdError + Send + Sync + 'static>>) -> Self {
        Error::Custom(error.into())
    }

    /// Wraps an error raised by a task's own code that a new attempt may fix (a rate
    /// limit of an API it calls, say): the task's retries apply to it.
    ///
    /// ```
    /// let err = sluice_core::Error::retryable(std::io::Error::other("429 from the API"));
    /// assert!(err.is_retryable());
    /// assert!(!sluice_core::Error::custom("bad input").is_retryable());
    /// ```
    pub fn retryable(error: impl Into<Box<dyn StdError + Send + Sync + 'static>>) -> Self {
        Error::Retryable(error.into())
    }

    /// Whether a new attempt may succeed: the endpoint was unreachable, the server
    /// failed or throttled (after the object store's own request retries), a timeout
    /// hit, a checkpoint was corrupt (it is invalidated, so a new attempt recomputes
    /// it), or a task marked its error [`retryable`](Self::retryable). Bad data (an
    /// invalid file, a missing column), bad code or settings (a plan error, an invalid
    /// option), missing objects, denied access and cancellation are not.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Unreachable { .. }
            | Error::Retryable(_)
            | Error::Timeout { .. }
            | Error::CorruptCheckpoint { .. } => true,
            Error::OnExecutor { retryable, .. } => *retryable,
            Error::Task { source, .. }
            | Error::Write { source, .. }
            | Error::Checkpoint { source, .. } => source.is_retryable(),
            Error::Store(store) => chain_is_transient(store),
            Error::Read { source, .. } | Error::Execution { source } => chain_is_transient(source),
            _ => false,
        }
    }

    /// The name of the task this error is attributed to, if any.
    ///
    /// ```
    /// use sluice_core::Error;
    /// let err = Error::Task { task: "extract".into(), source: Box::new(Error::custom("boom")) };
    /// assert_eq!(err.task(), Some("extract"));
    /// ```
    pub fn task(&self) -> Option<&str> {
        match self {
            Error::Task { task, .. } | Error::UncacheableFunction { task, .. } => Some(task),
            Error::Write { source, .. } => source.task(),
            _ => None,
        }
    }

    /// Attributes this error to `task`, unless it already names a task.
    pub(crate) fn in_task(self, task: &str) -> Error {
        if self.task().is_some() {
            self
        } else {
            Error::Task {
                task: task.to_string(),
                source: Box::new(self),
            }
        }
    }

    /// Maps a DataFusion error raised while planning or running a query over data read
    /// from `sources`. An error a task boundary already attributed is unwrapped.
    pub(crate) fn from_datafusion(error: DataFusionError, sources: &[String]) -> Error {
        let error = match error {
            DataFusionError::External(boxed) => match boxed.downcast::<Error>() {
                Ok(ours) => return *ours,
                Err(other) => DataFusionError::External(other),
            },
            other => other,
        };
        if let Some(found) = find_sluice_error(&error) {
            return duplicate(found);
        }
        if let Some(reason) = resources_exhausted(&error) {
            return Error::MemoryLimitExceeded {
                sources: sources.to_vec(),
                reason: reason.to_string(),
            };
        }
        let root = root_cause(&error);
        if let DataFusionError::SchemaError(schema_error, _) = root
            && let SchemaError::FieldNotFound {
                field,
                valid_fields,
            } = schema_error.as_ref()
        {
            return Error::MissingColumn {
                column: field.name().to_string(),
                sources: sources.to_vec(),
                available: valid_fields.iter().map(|c| c.name().to_string()).collect(),
            };
        }
        if matches!(
            root,
            DataFusionError::Plan(_) | DataFusionError::SchemaError(..) | DataFusionError::SQL(..)
        ) {
            return Error::Plan { source: error };
        }
        if let Some(store_error) = find_in_chain::<object_store::Error>(&error)
            && let Some(classified) = classify_store_error(store_error, sources)
        {
            return classified;
        }
        if !sources.is_empty() && is_read_error(&error) {
            // A store that failed after its retries is not a file that is invalid, even
            // when the parquet reader carried the store's error.
            let failed_store =
                find_in_chain::<object_store::Error>(&error).is_some_and(store_failed);
            if let Some(parquet) = find_in_chain::<parquet::errors::ParquetError>(&error)
                && !failed_store
            {
                return Error::InvalidParquet {
                    url: sources.join(", "),
                    reason: plain(&parquet.to_string()).to_string(),
                };
            }
            return Error::Read {
                sources: sources.to_vec(),
                source: error,
            };
        }
        Error::Execution { source: error }
    }
}

impl From<DataFusionError> for Error {
    fn from(error: DataFusionError) -> Self {
        Error::from_datafusion(error, &[])
    }
}

impl From<datafusion::arrow::error::ArrowError> for Error {
    fn from(error: datafusion::arrow::error::ArrowError) -> Self {
        Error::from(DataFusionError::from(error))
    }
}

impl From<Error> for DataFusionError {
    fn from(error: Error) -> Self {
        DataFusionError::External(Box::new(error))
    }
}

impl From<std::io::Error> for Error {
    fn from(error: std::io::Error) -> Self {
        Error::Custom(Box::new(error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_are_shown_cut_short() {
        let long = "x".repeat(1000);
        let cut = shown(&long);
        assert!(cut.len() < 100, "{cut}");
        assert!(cut.ends_with("(1000 bytes)"), "{cut}");
        assert_eq!(shown("a\nb"), "\"a\\nb\"");
    }

    #[test]
    fn an_attributed_error_survives_a_round_trip_through_datafusion() {
        let ours = Error::Task {
            task: "extract".into(),
            source: Box::new(Error::InvalidParquet {
                url: "file:///x.parquet".into(),
                reason: "bad footer".into(),
            }),
        };
        let df = DataFusionError::Context("while writing".into(), Box::new(ours.into()));
        let back = Error::from(df);
        assert_eq!(back.task(), Some("extract"));
        assert!(back.to_string().contains("file:///x.parquet"), "{back}");
    }

    #[test]
    fn one_line_says_a_wrapped_parquet_error_once_without_type_names() {
        let parquet =
            parquet::errors::ParquetError::General("Invalid Parquet file. Corrupt footer".into());
        let error = Error::Execution {
            source: DataFusionError::Context(
                "reading the footer".into(),
                Box::new(DataFusionError::ParquetError(Box::new(parquet))),
            ),
        };
        let expected =
            "query execution failed: reading the footer: Invalid Parquet file. Corrupt footer";
        assert_eq!(error.to_string(), expected);
        assert_eq!(one_line(&error), expected);
    }

    #[test]
    fn text_nested_inside_arrow_errors_loses_its_type_names() {
        let arrow = datafusion::arrow::error::ArrowError::ParquetError(
            "External: snappy: corrupt input".into(),
        );
        let error = Error::Read {
            sources: vec!["file:///a.parquet".into()],
            source: DataFusionError::ArrowError(Box::new(arrow), None),
        };
        assert_eq!(
            one_line(&error),
            "reading file:///a.parquet failed: snappy: corrupt input"
        );
    }

    #[test]
    fn an_execution_error_that_crossed_datafusion_is_said_once() {
        let arrow = datafusion::arrow::error::ArrowError::CastError("cannot cast 'x'".into());
        let ours = Error::Execution {
            source: DataFusionError::ArrowError(Box::new(arrow), None),
        };
        let crossed = DataFusionError::Context("while writing".into(), Box::new(ours.into()));
        let back = Error::from(crossed);
        assert!(matches!(back, Error::Execution { .. }), "{back:?}");
        assert_eq!(
            one_line(&back),
            "query execution failed: Cast error: cannot cast 'x'"
        );
    }

    #[test]
    fn a_sql_syntax_error_is_said_once_in_its_own_words() {
        let parser = datafusion::sql::sqlparser::parser::ParserError::ParserError(
            "Expected: an SQL statement, found: SELEC".into(),
        );
        let error = Error::Plan {
            source: DataFusionError::SQL(Box::new(parser), None),
        };
        assert_eq!(
            one_line(&error),
            "invalid query plan: sql parser error: Expected: an SQL statement, found: SELEC"
        );
    }

    #[test]
    fn missing_fields_become_missing_column_errors() {
        let df = DataFusionError::SchemaError(
            Box::new(SchemaError::FieldNotFound {
                field: Box::new(datafusion::common::Column::from_name("tip_amount")),
                valid_fields: vec![datafusion::common::Column::from_name("fare")],
            }),
            Box::new(None),
        );
        let err = Error::from_datafusion(df, &["file:///a.parquet".to_string()]);
        assert_eq!(
            err.to_string(),
            "column \"tip_amount\" is not in the data read from file:///a.parquet; \
             available columns: fare"
        );
    }
}
