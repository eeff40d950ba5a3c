//! Where plans execute: in this process (DataFusion, the default) or on an Apache
//! DataFusion Ballista cluster.

use crate::{Error, Result};

/// The environment variable that picks the runner of sessions built without one:
/// `local`, or a scheduler's URL `df://host:port` (which needs the cargo feature
/// `ballista`).
pub const RUNNER_ENV: &str = "SLUICE_RUNNER";

/// Where a session's plans execute.
///
/// Plans are built the same way on every runner, and tasks do not change; what differs
/// is who runs the physical plan. [`Runner::Local`] streams it in this process.
/// [`Runner::Ballista`] sends it to a Ballista scheduler, whose executors read the
/// sources and write sinks straight to their object stores (see `docs/cluster.md`);
/// this process only plans, waits and publishes.
///
/// ```
/// use sluice_core::Runner;
/// let runner = Runner::ballista("df://127.0.0.1:50050");
/// assert_eq!(runner.to_string(), "df://127.0.0.1:50050");
/// assert_eq!(Runner::parse("local")?, Runner::Local);
/// assert_eq!(Runner::parse("df://scheduler:50050")?, Runner::ballista("df://scheduler:50050"));
/// assert!(Runner::parse("http://scheduler:50050").is_err());
/// # Ok::<(), sluice_core::Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Runner {
    /// DataFusion in this process.
    #[default]
    Local,
    /// A Ballista cluster, by its scheduler's URL (`df://host:port`).
    Ballista {
        /// The scheduler's URL.
        url: String,
    },
}

impl Runner {
    /// A Ballista cluster whose scheduler listens at `url` (`df://host:port`). Running
    /// on it needs Sluice built with the cargo feature `ballista`.
    pub fn ballista(url: impl Into<String>) -> Self {
        Runner::Ballista { url: url.into() }
    }

    /// Parses a runner as [`RUNNER_ENV`] and `--runner` take it: `local`, or
    /// `df://host:port`.
    pub fn parse(text: &str) -> Result<Self> {
        let text = text.trim();
        if text.is_empty() || text.eq_ignore_ascii_case("local") {
            return Ok(Runner::Local);
        }
        let invalid = |reason: String| Error::InvalidOption {
            option: "runner",
            reason,
        };
        let url = url::Url::parse(text).map_err(|e| {
            invalid(format!(
                "{text:?} is not `local` or a URL df://host:port ({e})"
            ))
        })?;
        if url.scheme() != "df" {
            return Err(invalid(format!(
                "{text:?}: a cluster's URL starts with df:// (a Ballista scheduler, df://host:port)"
            )));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(invalid(format!("{text:?} names no host (df://host:port)")));
        }
        Ok(Runner::ballista(text))
    }

    /// The runner [`RUNNER_ENV`] names, or [`Runner::Local`] when it is unset.
    pub fn from_env() -> Result<Self> {
        match std::env::var(RUNNER_ENV) {
            Ok(text) => Self::parse(&text),
            Err(_) => Ok(Runner::Local),
        }
    }

    /// Whether plans run in this process.
    pub fn is_local(&self) -> bool {
        matches!(self, Runner::Local)
    }
}

impl std::fmt::Display for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Runner::Local => f.write_str("local"),
            Runner::Ballista { url } => f.write_str(url),
        }
    }
}
