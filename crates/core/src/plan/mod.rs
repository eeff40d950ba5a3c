//! The plan layer: Sluice's nodes in DataFusion plans.
//!
//! A task's fragment ends in a [`boundary`] node that reports every execution of the
//! task's output through the seam ([`crate::seam`]); [`concat`] stacks frames;
//! [`date_part`] evaluates DataFusion's `date_part` faster where it can; [`group_keys`]
//! groups on several small integer keys as on one. The
//! checkpoint tee, also a plan node, lives with the checkpoints
//! ([`crate::checkpoint`]). Nothing here imports the runtime.

pub mod boundary;
pub mod concat;
pub(crate) mod date_part;
pub(crate) mod group_keys;

/// The one input (or child) a single-input node of Sluice's is rebuilt with, or
/// DataFusion's internal error naming the node.
/// The key of the identity count of a task boundary's metrics: `sluice_task=NAME`.
pub(crate) const TASK_IDENTITY: &str = "sluice_task";

/// Counts, in `metrics`, one execution of `partition` under the named count
/// `KEY=VALUE`, which says whose the operator's metrics are. A cluster's executors
/// report an operator's named metrics to the client (their labels they drop), which
/// finds its task boundaries and checkpoint writes by this count rather than by the
/// text an operator displays.
pub(crate) fn count_identity(
    metrics: &datafusion::physical_plan::metrics::ExecutionPlanMetricsSet,
    key: &str,
    value: &str,
    partition: usize,
) {
    datafusion::physical_plan::metrics::MetricBuilder::new(metrics)
        .counter(format!("{key}={value}"), partition)
        .add(1);
}

pub(crate) fn only_one<T>(node: &str, items: Vec<T>) -> datafusion::error::Result<T> {
    let count = items.len();
    let mut items = items.into_iter();
    match (items.next(), count) {
        (Some(item), 1) => Ok(item),
        _ => Err(datafusion::error::DataFusionError::Internal(format!(
            "{node} takes exactly one input, not {count}"
        ))),
    }
}

/// The parts of `ExecutionPlan` that Sluice's single-child nodes (the task boundary,
/// the checkpoint tee, the concatenation) write alike: the name, the `properties`
/// field, the one child in the `input` field, no expressions, and no wish for
/// repartitioned input. Invoked inside their `impl ExecutionPlan` blocks.
macro_rules! single_child_exec {
    ($name:literal) => {
        fn name(&self) -> &str {
            $name
        }

        fn properties(&self) -> &std::sync::Arc<datafusion::physical_plan::PlanProperties> {
            &self.properties
        }

        fn children(&self) -> Vec<&std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
            vec![&self.input]
        }

        fn benefits_from_input_partitioning(&self) -> Vec<bool> {
            vec![false]
        }

        fn apply_expressions(
            &self,
            _f: &mut dyn FnMut(
                &std::sync::Arc<dyn datafusion::physical_expr::PhysicalExpr>,
            ) -> datafusion::error::Result<
                datafusion::common::tree_node::TreeNodeRecursion,
            >,
        ) -> datafusion::error::Result<datafusion::common::tree_node::TreeNodeRecursion> {
            Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
        }
    };
}
pub(crate) use single_child_exec;

/// Equality, hashing and order for a single-input logical node of Sluice's, which
/// DataFusion needs of every `UserDefinedLogicalNodeCore`: by what tells two nodes over
/// the same input apart (`$identity`, a method returning something `Ord + Hash`), then
/// by the `input` field.
macro_rules! single_input_node {
    ($node:ty, $identity:ident) => {
        impl PartialEq for $node {
            fn eq(&self, other: &Self) -> bool {
                self.$identity() == other.$identity() && self.input == other.input
            }
        }

        impl Eq for $node {}

        impl std::hash::Hash for $node {
            fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
                self.$identity().hash(state);
                self.input.hash(state);
            }
        }

        impl PartialOrd for $node {
            fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
                match self.$identity().cmp(&other.$identity()) {
                    std::cmp::Ordering::Equal => self.input.partial_cmp(&other.input),
                    unequal => Some(unequal),
                }
            }
        }
    };
}
pub(crate) use single_input_node;

/// The parts of `UserDefinedLogicalNodeCore` that Sluice's single-input logical nodes
/// write alike: the name, the one input in the `input` field, its schema as theirs, no
/// expressions. Invoked inside their `impl UserDefinedLogicalNodeCore` blocks.
macro_rules! single_input_logical {
    ($name:literal) => {
        fn name(&self) -> &str {
            $name
        }

        fn inputs(&self) -> Vec<&datafusion::logical_expr::LogicalPlan> {
            vec![&self.input]
        }

        fn schema(&self) -> &datafusion::common::DFSchemaRef {
            self.input.schema()
        }

        fn expressions(&self) -> Vec<datafusion::logical_expr::Expr> {
            vec![]
        }
    };
}
pub(crate) use single_input_logical;

#[cfg(test)]
mod tests {
    #[test]
    fn a_single_input_node_takes_exactly_one() {
        assert_eq!(super::only_one("N", vec![7]).unwrap(), 7);
        let none = super::only_one::<u8>("N", vec![]).unwrap_err().to_string();
        assert!(none.contains("N takes exactly one input, not 0"), "{none}");
        assert!(super::only_one("N", vec![1, 2]).is_err());
    }
}
