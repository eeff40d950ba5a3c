//! The query planner of Sluice's sessions: DataFusion's, plus Sluice's extension
//! nodes (the task boundary of the plan layer and the checkpoint tee), with the
//! listings of pinned remote objects answered by their pins (see
//! [`planned`](crate::parquet_io::planned)).

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::Session as DfSession;
use datafusion::error::Result as DfResult;
use datafusion::execution::context::QueryPlanner;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_planner::{DefaultPhysicalPlanner, PhysicalPlanner};

use crate::checkpoint::CheckpointTeePlanner;
use crate::plan::boundary::BoundaryPlanner;

/// DataFusion's query planner plus Sluice's extension nodes.
#[derive(Debug, Default)]
pub(crate) struct SluiceQueryPlanner;

#[async_trait]
impl QueryPlanner for SluiceQueryPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session: &dyn DfSession,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let planner = DefaultPhysicalPlanner::with_extension_planners(vec![
            Arc::new(BoundaryPlanner),
            Arc::new(CheckpointTeePlanner),
        ]);
        // The scans' listings of objects the plan's sources pinned are the pins.
        crate::parquet_io::planned::with_pins(
            logical_plan,
            planner.create_physical_plan(logical_plan, session),
        )
        .await
    }
}
