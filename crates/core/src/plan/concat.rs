//! Concatenating many inputs without running them all at once.
//!
//! DataFusion runs a `UnionExec` as the sum of its inputs' partitions: four mapped
//! Parquet files of two partitions each are eight scans in flight, each with its
//! read-ahead and batches, where one scan over the same four files runs two. A sink
//! above it coalesces them all at once. [`ConcatPartitionsExec`] keeps the union's rows
//! and runs its partitions a few at a time: output partition `i` streams input
//! partitions `i`, `i + n`, `i + 2n`, ... one after the other, as a scan streams the files
//! of one of its file groups. A physical optimizer rule of every session puts it above every union with more
//! partitions than the session's target and no ordering to keep, before DataFusion
//! plans distribution and sorting around it.

use std::fmt;
use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::error::Result as DfResult;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, Partitioning};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use futures::{StreamExt, TryStreamExt};

/// Streams its input's partitions in `partitions` output partitions, each running its
/// share of the input partitions one after the other. Rows are kept; order across
/// input partitions is not (a union has none).
#[derive(Debug)]
pub struct ConcatPartitionsExec {
    input: Arc<dyn ExecutionPlan>,
    properties: Arc<PlanProperties>,
}

impl ConcatPartitionsExec {
    /// `input` in `partitions` output partitions (at least 1).
    pub fn new(input: Arc<dyn ExecutionPlan>, partitions: usize) -> Self {
        let properties = (**input.properties())
            .clone()
            .with_partitioning(Partitioning::UnknownPartitioning(partitions.max(1)))
            .with_eq_properties(EquivalenceProperties::new(input.schema()));
        Self {
            input,
            properties: Arc::new(properties),
        }
    }

    fn outputs(&self) -> usize {
        self.properties.partitioning.partition_count()
    }
}

impl DisplayAs for ConcatPartitionsExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "ConcatPartitionsExec: {} partitions in {}",
            self.input.properties().partitioning.partition_count(),
            self.outputs()
        )
    }
}

impl ExecutionPlan for ConcatPartitionsExec {
    crate::plan::single_child_exec!("ConcatPartitionsExec");

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![false]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let input = crate::plan::only_one("ConcatPartitionsExec", children)?;
        Ok(Arc::new(Self::new(input, self.outputs())))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let inputs = self.input.properties().partitioning.partition_count();
        let mine: Vec<usize> = (partition..inputs).step_by(self.outputs()).collect();
        let input = Arc::clone(&self.input);
        // Each input partition is executed only when the one before it has ended.
        let stream = futures::stream::iter(mine)
            .map(move |i| input.execute(i, Arc::clone(&context)))
            .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.input.schema(),
            stream,
        )))
    }
}

/// Puts a [`ConcatPartitionsExec`] above each `UnionExec` that has more partitions than
/// the session's target and no output ordering. Runs before DataFusion's distribution
/// and sorting rules, which then plan around the fewer partitions.
#[derive(Debug, Default)]
pub(crate) struct ConcatUnions;

impl PhysicalOptimizerRule for ConcatUnions {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        config: &ConfigOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let target = config.execution.target_partitions.max(1);
        plan.transform_up(|node| {
            let partitions = node.properties().partitioning.partition_count();
            if node.is::<UnionExec>()
                && partitions > target
                && node.properties().output_ordering().is_none()
            {
                let concat: Arc<dyn ExecutionPlan> =
                    Arc::new(ConcatPartitionsExec::new(node, target));
                Ok(Transformed::yes(concat))
            } else {
                Ok(Transformed::no(node))
            }
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "sluice_concat_unions"
    }

    fn schema_check(&self) -> bool {
        true
    }
}
