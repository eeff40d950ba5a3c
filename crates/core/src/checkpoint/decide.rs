//! The checkpoint decision: what a persisted task's output becomes.
//!
//! Once a persisted task's body has returned its plan, [`decide`] computes the key
//! (the task's lineage, the session's result settings, the versions of the functions
//! the plan calls), looks the key up in the result store, and returns the plan the
//! task hands on:
//!
//! - a **hit**: a boundary over a scan of the checkpoint (the upstream tasks it
//!   replaces are marked superseded);
//! - a **miss**, persisted as a **tee**: a boundary over the computed plan, teed into a
//!   new checkpoint while it streams;
//! - a **miss**, persisted as a **barrier**: the same teed plan, which the runtime
//!   drains; [`Barrier::read_back`] then returns a boundary over the checkpoint just
//!   written (or over the one another run committed first).
//!
//! The runtime records the decision ([`Decision::key`], [`Decision::record`]) and wraps
//! the plan in a frame; nothing here runs a plan.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::{Extension, LogicalPlan, Volatility};
use datafusion::prelude::SessionContext;

use super::key::{FunctionUse, FunctionVersion};
use super::lineage::Lineage;
use super::{
    CacheKeyInputs, CachePolicy, CheckpointFormat, CheckpointRead, CheckpointStore,
    CheckpointTarget, CheckpointTee, Clock, Expected, Lookup, Persist, Tee,
};
use crate::plan::boundary::{CheckpointSource, TaskBoundary};
use crate::record::CacheRecord;
use crate::seam::TaskHandle;
use crate::{Error, Result};

/// A persisted task's output, as the checkpoint decision sees it.
pub(crate) struct Persisted<'a> {
    /// The task run.
    pub(crate) task: &'a TaskHandle,
    pub(crate) version: Option<String>,
    pub(crate) parameters: serde_json::Value,
    /// The lineage of the body's output (its sources and upstream tasks).
    pub(crate) lineage: &'a Lineage,
    /// The body's output plan, the sources it reads, and its schema.
    pub(crate) plan: &'a LogicalPlan,
    pub(crate) sources: &'a [String],
    pub(crate) schema: SchemaRef,
    /// When and how the checkpoint is written, and where.
    pub(crate) mode: Persist,
    pub(crate) policy: &'a CachePolicy,
    pub(crate) store: CheckpointStore,
    pub(crate) format: CheckpointFormat,
    /// The session: its context (to plan a checkpoint's scan), its result settings, and
    /// how it covers the functions the plan calls.
    pub(crate) context: &'a SessionContext,
    pub(crate) settings: BTreeMap<String, String>,
    pub(crate) functions: &'a (dyn Fn(&FunctionUse) -> FunctionVersion + Sync),
    /// The flow run, and its clock.
    pub(crate) flow_run: &'a str,
    pub(crate) clock: &'a Clock,
}

/// What a persisted task's output becomes: its key, the cache record of the decision,
/// and the plan to hand on.
#[derive(Debug)]
pub(crate) struct Decision {
    pub(crate) key: String,
    pub(crate) record: CacheRecord,
    pub(crate) outcome: Outcome,
}

/// The plan a decision hands on.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Read from the checkpoint: `plan` is a boundary over its scan.
    Hit {
        plan: LogicalPlan,
        sources: Vec<String>,
        lineage: Lineage,
    },
    /// Computed and teed into a new checkpoint while it streams.
    Tee { plan: LogicalPlan, lineage: Lineage },
    /// Computed into a new checkpoint before anything reads it: drain `plan` (the
    /// teed plan), then [`read_back`](Barrier::read_back).
    Barrier(Box<Barrier>),
}

/// A barrier-persisted task's miss: the teed plan to drain, and how to read the
/// checkpoint back.
#[derive(Debug)]
pub(crate) struct Barrier {
    pub(crate) plan: LogicalPlan,
    target: Arc<CheckpointTarget>,
    task: TaskHandle,
    downstream: Downstream,
    schema: SchemaRef,
    policy: CachePolicy,
    now: DateTime<Utc>,
}

/// What downstream tasks see of a persisted task's output: its lineage with the key
/// the task's checkpoint has whether it was computed or read, and the id of the
/// checkpoint it was read from or written to, so that a refreshed or recomputed
/// checkpoint changes their keys. A policy without lookups gives the key its inputs
/// would give, and no checkpoint: its output is recomputed from the same inputs every
/// time.
#[derive(Debug)]
struct Downstream {
    task: String,
    version: Option<String>,
    parameters: serde_json::Value,
    upstream: Lineage,
    key: String,
    looks_up: bool,
}

impl Downstream {
    /// The lineage of the output read from, or written to, the checkpoint `checkpoint`.
    fn lineage(&self, checkpoint: Option<String>) -> Lineage {
        Lineage::task(
            &self.task,
            self.version.clone(),
            self.parameters.clone(),
            &self.upstream,
            Some(self.key.clone()),
            checkpoint.filter(|_| self.looks_up),
        )
    }
}

/// Decides what `persisted` becomes: a hit, or a miss teed into a new checkpoint.
pub(crate) async fn decide(persisted: Persisted<'_>) -> Result<Decision> {
    let name = persisted.task.name().to_string();
    let policy = persisted.policy;
    // What the key covers beyond the lineage: the user-defined functions the plan
    // calls (a volatile one is refused unless the policy allows it), and the session's
    // result settings.
    let functions = if policy.keys_by_inputs() {
        keyed_functions(
            persisted.functions,
            &name,
            persisted.plan,
            policy.allows_volatile(),
        )?
    } else {
        BTreeMap::new()
    };
    let inputs = persisted.lineage.key_inputs(
        &name,
        persisted.version.clone(),
        persisted.parameters.clone(),
        persisted.settings.clone(),
        functions,
    );
    let key = policy.key(&inputs);
    // What downstream keys use (see `Downstream`).
    let looks_up = policy.looks_up();
    let lineage_key = if looks_up {
        key.clone()
    } else {
        CachePolicy::inputs().key(&inputs)
    };
    let store = persisted.store.clone();
    let checkpoint_url = store.key_url(&name, &key);
    let now = persisted.clock.now();
    let (lookup, label) = if !looks_up {
        (Lookup::Miss { reason: None }, "disabled")
    } else if policy.refreshes() {
        (Lookup::Miss { reason: None }, "refresh")
    } else {
        let by_inputs = policy.keys_by_inputs().then_some(&inputs);
        let expected = expected(policy, by_inputs, &persisted.schema);
        let found = store
            .lookup(&name, &key, &expected, now)
            .await
            .map_err(|e| store.checkpoint_error(&name, &key, e))?;
        (found, "miss")
    };
    let downstream = Downstream {
        task: name.clone(),
        version: persisted.version.clone(),
        parameters: persisted.parameters.clone(),
        upstream: persisted.lineage.clone(),
        key: lineage_key,
        looks_up,
    };
    match lookup {
        Lookup::Hit(read) => {
            tracing::info!(task = %name, key = %key, rows = read.manifest().rows, "cache hit");
            supersede_upstream(persisted.plan, &name);
            // The last-hit time, for `sluice cache ls`, off the critical path: a local
            // put alone costs about what the rest of a hit does.
            {
                let (store, name, key) = (store.clone(), name.clone(), key.clone());
                tokio::spawn(async move { store.touch(&name, &key, now).await });
            }
            let lineage = downstream.lineage(Some(read.manifest().id.clone()));
            let scan = read.scan_plan(persisted.context)?;
            let sources = vec![checkpoint_url.clone()];
            Ok(Decision {
                record: CacheRecord::new(&checkpoint_url, "hit", None),
                key,
                outcome: Outcome::Hit {
                    plan: boundary(persisted.task, sources.clone(), Some(read), scan),
                    sources,
                    lineage,
                },
            })
        }
        Lookup::Miss { reason } => {
            tracing::info!(task = %name, key = %key, lookup = label, reason = reason.as_deref().unwrap_or(""), "cache miss: computing the task");
            let record = CacheRecord::new(&checkpoint_url, label, reason);
            let id = uuid::Uuid::new_v4().simple().to_string();
            let target = Arc::new(CheckpointTarget {
                store,
                task_run: persisted.task.clone(),
                task: name.clone(),
                key: key.clone(),
                code_version: persisted.version.clone(),
                id: id.clone(),
                key_inputs: inputs,
                policy: policy.describe(),
                flow_run: persisted.flow_run.to_string(),
                ttl: policy.expiry(),
                clock: persisted.clock.clone(),
                replace: policy.refreshes(),
                format: persisted.format,
                plan_text: persisted.plan.display_indent().to_string(),
                schema: Arc::clone(&persisted.schema),
                committed: std::sync::OnceLock::new(),
                footers: std::sync::OnceLock::new(),
                tee_reencodes: persisted.mode == Persist::Tee,
            });
            let plan = LogicalPlan::Extension(Extension {
                node: Arc::new(CheckpointTee {
                    tee: Arc::clone(&target) as Tee,
                    input: boundary(
                        persisted.task,
                        persisted.sources.to_vec(),
                        None,
                        persisted.plan.clone(),
                    ),
                }),
            });
            let outcome = match persisted.mode {
                Persist::Tee => Outcome::Tee {
                    plan,
                    lineage: downstream.lineage(Some(id)),
                },
                Persist::Barrier => Outcome::Barrier(Box::new(Barrier {
                    plan,
                    target,
                    task: persisted.task.clone(),
                    downstream,
                    schema: persisted.schema,
                    policy: policy.clone(),
                    now,
                })),
            };
            Ok(Decision {
                key,
                record,
                outcome,
            })
        }
    }
}

impl Barrier {
    /// The checkpoint the drained plan committed (or, when another run committed the
    /// same key first, theirs), as a boundary over its scan, with the lineage
    /// downstream tasks see.
    pub(crate) async fn read_back(
        self,
        context: &SessionContext,
    ) -> Result<(LogicalPlan, Lineage)> {
        let target = &self.target;
        let (name, key) = (target.task.as_str(), target.key.as_str());
        let read = match target.committed_read() {
            // Just written by this run.
            Some(read) => read,
            // Another run committed the same key first: read theirs.
            None => {
                let expected = expected(&self.policy, None, &self.schema);
                match target
                    .store
                    .lookup(name, key, &expected, self.now)
                    .await
                    .map_err(|e| target.store.checkpoint_error(name, key, e))?
                {
                    Lookup::Hit(read) => read,
                    Lookup::Miss { reason } => {
                        return Err(target.store.checkpoint_error(
                            name,
                            key,
                            Error::Internal {
                                message: format!(
                                    "the barrier checkpoint is not readable after its commit: {}",
                                    reason.unwrap_or_default()
                                ),
                            },
                        ));
                    }
                }
            }
        };
        let lineage = self.downstream.lineage(Some(read.manifest().id.clone()));
        let scan = read.scan_plan(context)?;
        let checkpoint_url = target.store.key_url(name, key);
        let plan = boundary(&self.task, vec![checkpoint_url], Some(read), scan);
        Ok((plan, lineage))
    }
}

/// What a lookup expects of the checkpoint: its key inputs (when the policy keys by
/// them), its expiry under the current policy, the planned schema and whether to verify.
fn expected<'a>(
    policy: &CachePolicy,
    inputs: Option<&'a CacheKeyInputs>,
    schema: &'a SchemaRef,
) -> Expected<'a> {
    Expected {
        inputs,
        ttl: policy.expiry(),
        schema: Some(schema.as_ref()),
        verify: policy.verifies(),
    }
}

/// A task boundary for `task` over `input`.
fn boundary(
    task: &TaskHandle,
    sources: Vec<String>,
    checkpoint: Option<Arc<CheckpointRead>>,
    input: LogicalPlan,
) -> LogicalPlan {
    LogicalPlan::Extension(Extension {
        node: Arc::new(TaskBoundary {
            task: task.clone(),
            sources: sources.into(),
            checkpoint: checkpoint.map(|read| read as Arc<dyn CheckpointSource>),
            input,
        }),
    })
}

/// The user-defined functions a persisted task's plan calls, with their versions,
/// for its key. Refuses a function DataFusion marks volatile or stable (unless
/// `allow_volatile`) and a user-defined function registered without a version. The
/// walk stops at checkpoints (a cache hit's scan, a tee): what is below them does not
/// run, and was keyed where it was persisted.
fn keyed_functions(
    versions: &(dyn Fn(&FunctionUse) -> FunctionVersion + Sync),
    task: &str,
    plan: &LogicalPlan,
    allow_volatile: bool,
) -> Result<BTreeMap<String, String>> {
    let stop = |node: &LogicalPlan| match node {
        LogicalPlan::Extension(extension) => {
            let node = extension.node.as_any();
            node.downcast_ref::<CheckpointTee>().is_some()
                || node
                    .downcast_ref::<TaskBoundary>()
                    .is_some_and(|b| b.checkpoint.is_some())
        }
        _ => false,
    };
    let mut keyed = BTreeMap::new();
    for used in super::key::functions(plan, &stop) {
        let refused = |reason: &str| Error::UncacheableFunction {
            task: task.to_string(),
            function: format!("{}()", used.name),
            reason: reason.to_string(),
        };
        let opt_in = "opt in with `CachePolicy::inputs().allow_volatile()` (with an expiry), \
                      or give the task a `key_fn`";
        match used.volatility {
            Volatility::Immutable => {}
            _ if allow_volatile => {}
            Volatility::Volatile => {
                return Err(refused(&format!(
                    "whose result changes on every call (DataFusion marks it volatile): a \
                     cache hit would serve the values of the run that wrote the checkpoint; \
                     {opt_in}"
                )));
            }
            Volatility::Stable => {
                return Err(refused(&format!(
                    "whose result depends on when the query runs (DataFusion evaluates it \
                     once per query): a cache hit would serve the values of the run that \
                     wrote the checkpoint (a filter on the last 7 days would keep that run's \
                     window); {opt_in}"
                )));
            }
        }
        match versions(&used) {
            FunctionVersion::BuiltIn => {}
            FunctionVersion::Versioned(version) => {
                keyed.insert(format!("{}:{}", used.kind, used.name), version);
            }
            FunctionVersion::Unversioned => {
                return Err(refused(
                    "a user-defined function registered without a version: a cache key cannot \
                     tell when its results change; register it with \
                     `Session::builder().with_udf(udf, \"1\")` (or `with_udaf`, `with_udwf`) \
                     and bump the version when its results change",
                ));
            }
        }
    }
    Ok(keyed)
}

/// Marks the task runs whose boundaries appear in `plan` (the fragment a cache hit
/// replaced) as superseded by `by`: unless something else executes them, they are
/// `Skipped`.
fn supersede_upstream(plan: &LogicalPlan, by: &str) {
    let _ = plan.apply(|node| {
        match node {
            LogicalPlan::Extension(ext) => {
                if let Some(boundary) = ext.node.as_any().downcast_ref::<TaskBoundary>() {
                    boundary.task.superseded(by);
                }
            }
            LogicalPlan::TableScan(scan) => {
                // A SQL task's inputs are views whose plans hold the upstream tasks.
                if let Some(view) = scan.source.get_logical_plan() {
                    supersede_upstream(&view, by);
                }
            }
            _ => {}
        }
        Ok(TreeNodeRecursion::Continue)
    });
}

#[cfg(test)]
mod tests {
    use datafusion::execution::SessionStateBuilder;
    use datafusion::execution::runtime_env::RuntimeEnvBuilder;
    use sluice_store::StoreRegistry;

    use super::*;

    /// A session that plans Sluice's nodes and reads the stores of `registry`, a
    /// checkpoint store in memory, and the plan of `sql` as a task's output.
    struct Setup {
        context: SessionContext,
        store: CheckpointStore,
        task: TaskHandle,
        clock: Clock,
        plan: LogicalPlan,
        schema: SchemaRef,
        lineage: Lineage,
    }

    async fn setup(sql: &str) -> Setup {
        let registry = Arc::new(StoreRegistry::new());
        let runtime = RuntimeEnvBuilder::new()
            .with_object_store_registry(registry.clone())
            .build_arc()
            .unwrap();
        let state = SessionStateBuilder::new()
            .with_default_features()
            .with_runtime_env(runtime)
            .with_query_planner(Arc::new(crate::planner::SluiceQueryPlanner))
            .build();
        let context = SessionContext::new_with_state(state);
        let frame = context.sql(sql).await.unwrap();
        let schema = Arc::new(frame.schema().as_arrow().clone());
        Setup {
            store: CheckpointStore::in_registry(&registry, "memory://decide/").unwrap(),
            task: crate::seam::silent("transform"),
            clock: Clock::fixed(Utc::now()),
            plan: frame.logical_plan().clone(),
            schema,
            lineage: Lineage::sql(sql, Vec::new()),
            context,
        }
    }

    const BUILT_IN: &(dyn Fn(&FunctionUse) -> FunctionVersion + Sync) =
        &|_| FunctionVersion::BuiltIn;

    fn persisted<'a>(
        setup: &'a Setup,
        policy: &'a CachePolicy,
        mode: Persist,
        functions: &'a (dyn Fn(&FunctionUse) -> FunctionVersion + Sync),
    ) -> Persisted<'a> {
        Persisted {
            task: &setup.task,
            version: Some("1".into()),
            parameters: serde_json::json!({}),
            lineage: &setup.lineage,
            plan: &setup.plan,
            sources: &[],
            schema: Arc::clone(&setup.schema),
            mode,
            policy,
            store: setup.store.clone(),
            format: CheckpointFormat::default(),
            context: &setup.context,
            settings: BTreeMap::new(),
            functions,
            flow_run: "run-1",
            clock: &setup.clock,
        }
    }

    async fn rows(context: &SessionContext, plan: LogicalPlan) -> usize {
        let batches = context
            .execute_logical_plan(plan)
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        batches.iter().map(|b| b.num_rows()).sum()
    }

    const SQL: &str = "SELECT * FROM (VALUES (1, 2.5), (2, 0.5), (3, 1.0)) AS t(id, tip)";

    #[tokio::test]
    async fn a_miss_tees_and_the_next_decision_hits_what_it_committed() {
        let setup = setup(SQL).await;
        let policy = CachePolicy::inputs();
        let first = decide(persisted(&setup, &policy, Persist::Tee, BUILT_IN))
            .await
            .unwrap();
        assert_eq!(first.record.lookup, "miss");
        let Outcome::Tee { plan, .. } = first.outcome else {
            panic!("expected a tee, got {:?}", first.outcome);
        };
        assert_eq!(rows(&setup.context, plan).await, 3);
        let second = decide(persisted(&setup, &policy, Persist::Tee, BUILT_IN))
            .await
            .unwrap();
        assert_eq!(second.key, first.key);
        assert_eq!(second.record.lookup, "hit");
        let Outcome::Hit { plan, sources, .. } = second.outcome else {
            panic!("expected a hit, got {:?}", second.outcome);
        };
        assert_eq!(sources, [setup.store.key_url("transform", &first.key)]);
        assert_eq!(rows(&setup.context, plan).await, 3);
    }

    #[tokio::test]
    async fn a_barrier_drains_then_reads_back_the_checkpoint() {
        let setup = setup(SQL).await;
        let policy = CachePolicy::inputs();
        let decision = decide(persisted(&setup, &policy, Persist::Barrier, BUILT_IN))
            .await
            .unwrap();
        let Outcome::Barrier(barrier) = decision.outcome else {
            panic!("expected a barrier, got {:?}", decision.outcome);
        };
        assert_eq!(rows(&setup.context, barrier.plan.clone()).await, 3);
        let (plan, _) = barrier.read_back(&setup.context).await.unwrap();
        assert_eq!(rows(&setup.context, plan).await, 3);
    }

    #[tokio::test]
    async fn refreshing_and_disabled_policies_do_not_look_up() {
        let setup = setup(SQL).await;
        for (policy, label) in [
            (CachePolicy::inputs().refresh(true), "refresh"),
            (CachePolicy::none(), "disabled"),
        ] {
            let decision = decide(persisted(&setup, &policy, Persist::Tee, BUILT_IN))
                .await
                .unwrap();
            assert_eq!(decision.record.lookup, label);
        }
    }

    #[tokio::test]
    async fn volatile_functions_are_refused_unless_the_policy_allows_them() {
        let setup = setup("SELECT random() AS r").await;
        let error = decide(persisted(
            &setup,
            &CachePolicy::inputs(),
            Persist::Tee,
            BUILT_IN,
        ))
        .await
        .unwrap_err();
        assert!(
            matches!(&error, Error::UncacheableFunction { function, .. } if function == "random()"),
            "{error}"
        );
        let allowed = CachePolicy::inputs().allow_volatile();
        decide(persisted(&setup, &allowed, Persist::Tee, BUILT_IN))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_user_functions_version_is_in_the_key_and_an_unversioned_one_is_refused() {
        let setup = setup("SELECT abs(id) AS a FROM (VALUES (-1), (2)) AS t(id)").await;
        let policy = CachePolicy::inputs();
        let key = |version: &'static str| {
            let versions = move |used: &FunctionUse| match used.name.as_str() {
                "abs" => FunctionVersion::Versioned(version.into()),
                _ => FunctionVersion::BuiltIn,
            };
            let setup = &setup;
            let policy = &policy;
            async move {
                decide(persisted(setup, policy, Persist::Tee, &versions))
                    .await
                    .unwrap()
                    .key
            }
        };
        let (one, two) = (key("1").await, key("2").await);
        assert_ne!(one, two);
        let built_in = decide(persisted(&setup, &policy, Persist::Tee, BUILT_IN))
            .await
            .unwrap()
            .key;
        assert_ne!(built_in, one);
        let unversioned = |_: &FunctionUse| FunctionVersion::Unversioned;
        let error = decide(persisted(&setup, &policy, Persist::Tee, &unversioned))
            .await
            .unwrap_err();
        assert!(error.to_string().contains("without a version"), "{error}");
    }
}
