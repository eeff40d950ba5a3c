//! The cluster in a build without the cargo feature `ballista`: a type with no values,
//! so that a session's runner is never a cluster here and the code that hands plans
//! to one compiles unchanged in both builds. Naming a cluster is a clear error.

use std::future::Future;

use datafusion::error::Result as DfResult;
use datafusion::execution::SessionState;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::DataFrame;

use crate::{Error, Result};

/// A Ballista cluster; none can exist in this build.
#[derive(Debug, Clone)]
pub(crate) enum Cluster {}

impl Cluster {
    /// Fails: this build cannot run plans on a cluster.
    pub(crate) fn new(url: &str) -> Result<Self> {
        Err(Error::Cluster {
            address: url.to_string(),
            reason: "this build of Sluice has no Ballista support; build it with the cargo \
                     feature `ballista` (`--features ballista`)"
                .into(),
        })
    }

    /// Never called: no cluster exists.
    pub(crate) async fn run<T, F, Fut>(
        &self,
        _local: SessionState,
        _settings: &sluice_store::Settings,
        _plan: &LogicalPlan,
        _body: F,
    ) -> Result<T>
    where
        F: FnOnce(DataFrame) -> Fut,
        Fut: Future<Output = DfResult<T>>,
    {
        match *self {}
    }

    /// Never called: no cluster exists.
    pub(crate) fn with_parquet_copy(
        &self,
        _state: SessionState,
        _copy: &crate::parquet_io::copy::ExecutorCopy,
    ) -> SessionState {
        match *self {}
    }

    /// Never called: no cluster exists.
    pub(crate) async fn gather_parts(
        &self,
        _store: &std::sync::Arc<dyn object_store::ObjectStore>,
        _dir: &url::Url,
        _rows: u64,
    ) -> Result<(
        Vec<object_store::ObjectMeta>,
        Vec<crate::WriterShare>,
        Option<crate::WriteMethod>,
    )> {
        match *self {}
    }
}
