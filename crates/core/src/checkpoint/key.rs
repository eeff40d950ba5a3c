//! What cache keys are made of: a canonical, versioned encoding of expressions and
//! values (never DataFusion's display text, which is ambiguous: it does not escape string
//! literals, so `a IN ('x"), Utf8("y')` and `a IN ('x', 'y')` print alike), the session
//! settings that can change results, and the functions a plan calls.
//!
//! The encoding is a JSON value built field by field from DataFusion's expression tree:
//! objects whose keys serde_json sorts, strings escaped, floats by their bits. Its
//! format is [`KEY_FORMAT`]; a key also names the DataFusion major version
//! ([`engine`]) and Sluice's [`SEMANTICS_VERSION`], bumped by hand when a Sluice
//! release can change what a plan computes (not with every release: that would empty
//! every cache).

use std::collections::BTreeMap;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::expr::{
    AggregateFunction, Alias, Exists, InList, InSubquery, ScalarFunction, WindowFunction,
    WindowFunctionDefinition,
};
use datafusion::logical_expr::{Expr, LogicalPlan, SortExpr, Volatility};
use serde_json::{Value, json};

/// The format of cache-key inputs. Bump it when the encoding below changes.
pub const KEY_FORMAT: u32 = 1;

/// Sluice's semantics version: bump it by hand when a release can change what a plan
/// computes (a fix in schema unification, say), so that checkpoints of the old
/// behaviour are misses.
pub const SEMANTICS_VERSION: u32 = 1;

/// The engine whose semantics a key covers: DataFusion's major version.
pub fn engine() -> String {
    let major = datafusion::DATAFUSION_VERSION
        .split('.')
        .next()
        .unwrap_or(datafusion::DATAFUSION_VERSION);
    format!("datafusion {major}")
}

/// Session settings (DataFusion configuration keys) that can change what a plan
/// computes or how its sources read; they enter every key by their values. Settings
/// that change only how a plan runs (partitions, batch sizes, memory, optimizer
/// switches) do not.
pub const RESULT_SETTINGS: &[&str] = &[
    "datafusion.execution.time_zone",
    "datafusion.execution.enable_ansi_mode",
    "datafusion.execution.parquet.binary_as_string",
    "datafusion.execution.parquet.coerce_int96",
    "datafusion.execution.parquet.coerce_int96_tz",
    "datafusion.execution.parquet.schema_force_view_types",
    "datafusion.execution.parquet.skip_metadata",
    "datafusion.sql_parser.parse_float_as_decimal",
    "datafusion.sql_parser.enable_ident_normalization",
    "datafusion.sql_parser.dialect",
    "datafusion.sql_parser.support_varchar_with_length",
    "datafusion.sql_parser.map_string_types_to_utf8view",
    "datafusion.sql_parser.default_null_ordering",
    "datafusion.sql_parser.enable_subquery_sort_elimination",
];

/// The values of [`RESULT_SETTINGS`] in `options`.
pub(crate) fn settings(
    options: &datafusion::common::config::ConfigOptions,
) -> BTreeMap<String, String> {
    options
        .entries()
        .into_iter()
        .filter(|entry| RESULT_SETTINGS.contains(&entry.key.as_str()))
        .map(|entry| (entry.key, entry.value.unwrap_or_else(|| "null".into())))
        .collect()
}

/// A value that matches no other: what an expression whose inputs cannot be told (a
/// subquery, a placeholder) encodes to, so that its frame is never taken from a cache.
fn uncacheable(what: &str) -> Value {
    json!({ "uncacheable": what, "nonce": uuid::Uuid::new_v4().simple().to_string() })
}

fn data_type(t: &DataType) -> Value {
    Value::String(format!("{t:?}"))
}

fn boxed(e: &Expr) -> Value {
    expr(e)
}

/// Expressions, in order.
pub(crate) fn exprs<'a>(exprs: impl IntoIterator<Item = &'a Expr>) -> Value {
    Value::Array(exprs.into_iter().map(expr).collect())
}

/// Sort expressions, in order.
pub(crate) fn sorts<'a>(sorts: impl IntoIterator<Item = &'a SortExpr>) -> Value {
    Value::Array(
        sorts
            .into_iter()
            .map(|s| json!({ "sort": expr(&s.expr), "asc": s.asc, "nulls_first": s.nulls_first }))
            .collect(),
    )
}

/// An expression, canonically.
pub(crate) fn expr(e: &Expr) -> Value {
    let unary = |name: &str, inner: &Expr| json!({ name: boxed(inner) });
    match e {
        Expr::Alias(Alias {
            expr: inner,
            relation,
            name,
            metadata,
        }) => json!({
            "alias": name,
            "relation": relation.as_ref().map(|r| format!("{r:?}")),
            "metadata": metadata.as_ref().map(|m| format!("{m:?}")),
            "expr": boxed(inner),
        }),
        Expr::Column(c) => json!({
            "column": c.name,
            "relation": c.relation.as_ref().map(|r| format!("{r:?}")),
        }),
        Expr::ScalarVariable(field, names) => json!({
            "variable": names,
            "type": data_type(field.data_type()),
        }),
        Expr::Literal(value, metadata) => json!({
            "literal": scalar(value),
            "metadata": metadata.as_ref().map(|m| format!("{m:?}")),
        }),
        Expr::BinaryExpr(b) => json!({
            "op": b.op.to_string(),
            "left": boxed(&b.left),
            "right": boxed(&b.right),
        }),
        Expr::Like(l) | Expr::SimilarTo(l) => json!({
            "like": if matches!(e, Expr::Like(_)) { "like" } else { "similar_to" },
            "negated": l.negated,
            "case_insensitive": l.case_insensitive,
            "escape": l.escape_char.map(String::from),
            "expr": boxed(&l.expr),
            "pattern": boxed(&l.pattern),
        }),
        Expr::Not(inner) => unary("not", inner),
        Expr::IsNotNull(inner) => unary("is_not_null", inner),
        Expr::IsNull(inner) => unary("is_null", inner),
        Expr::IsTrue(inner) => unary("is_true", inner),
        Expr::IsFalse(inner) => unary("is_false", inner),
        Expr::IsUnknown(inner) => unary("is_unknown", inner),
        Expr::IsNotTrue(inner) => unary("is_not_true", inner),
        Expr::IsNotFalse(inner) => unary("is_not_false", inner),
        Expr::IsNotUnknown(inner) => unary("is_not_unknown", inner),
        Expr::Negative(inner) => unary("negative", inner),
        Expr::Between(b) => json!({
            "between": boxed(&b.expr),
            "negated": b.negated,
            "low": boxed(&b.low),
            "high": boxed(&b.high),
        }),
        Expr::Case(c) => json!({
            "case": c.expr.as_deref().map(expr),
            "when_then": c.when_then_expr.iter().map(|(w, t)| json!([expr(w), expr(t)])).collect::<Vec<_>>(),
            "else": c.else_expr.as_deref().map(expr),
        }),
        Expr::Cast(c) => json!({
            "cast": data_type(c.field.data_type()),
            "metadata": format!("{:?}", c.field.metadata()),
            "expr": boxed(&c.expr),
        }),
        Expr::TryCast(c) => json!({
            "try_cast": data_type(c.field.data_type()),
            "metadata": format!("{:?}", c.field.metadata()),
            "expr": boxed(&c.expr),
        }),
        Expr::ScalarFunction(ScalarFunction { func, args }) => json!({
            "function": func.name(),
            "args": exprs(args),
        }),
        Expr::AggregateFunction(AggregateFunction { func, params }) => json!({
            "aggregate": func.name(),
            "args": exprs(&params.args),
            "distinct": params.distinct,
            "filter": params.filter.as_deref().map(expr),
            "order_by": sorts(&params.order_by),
            "null_treatment": params.null_treatment.map(|n| format!("{n:?}")),
        }),
        Expr::WindowFunction(window) => {
            let WindowFunction { fun, params } = window.as_ref();
            let name = match fun {
                WindowFunctionDefinition::AggregateUDF(f) => format!("aggregate:{}", f.name()),
                WindowFunctionDefinition::WindowUDF(f) => format!("window:{}", f.name()),
            };
            json!({
                "window": name,
                "args": exprs(&params.args),
                "partition_by": exprs(&params.partition_by),
                "order_by": sorts(&params.order_by),
                "frame": format!("{:?}", params.window_frame),
                "filter": params.filter.as_deref().map(expr),
                "null_treatment": params.null_treatment.map(|n| format!("{n:?}")),
                "distinct": params.distinct,
            })
        }
        Expr::InList(InList {
            expr: inner,
            list,
            negated,
        }) => json!({
            "in_list": boxed(inner),
            "list": exprs(list),
            "negated": negated,
        }),
        Expr::GroupingSet(set) => {
            json!({ "grouping_set": format!("{:?}", std::mem::discriminant(set)), "exprs": exprs(set.distinct_expr()) })
        }
        Expr::Unnest(u) => json!({ "unnest": boxed(&u.expr), "outer": u.outer }),
        Expr::Exists(Exists { .. }) => uncacheable("exists"),
        Expr::InSubquery(InSubquery { .. }) => uncacheable("in_subquery"),
        Expr::SetComparison(_) => uncacheable("set_comparison"),
        Expr::ScalarSubquery(_) => uncacheable("scalar_subquery"),
        Expr::Placeholder(p) => uncacheable(&p.id),
        Expr::OuterReferenceColumn(_, c) => uncacheable(&format!("outer reference {}", c.name)),
        // Lambdas and the functions that take them (new in DataFusion 55): by their
        // structure, as DataFusion's `Debug` gives it (strings escaped).
        other => json!({ "expr": format!("{other:?}") }),
    }
}

/// A literal value, canonically: its type and its value (numbers as text, floats by
/// their bits as well, strings as they are, bytes in hex).
pub(crate) fn scalar(value: &ScalarValue) -> Value {
    let v = match value {
        ScalarValue::Null => Value::Null,
        ScalarValue::Boolean(v) => json!(v),
        ScalarValue::Int8(v) => json!(v.map(|v| v.to_string())),
        ScalarValue::Int16(v) => json!(v.map(|v| v.to_string())),
        ScalarValue::Int32(v) => json!(v.map(|v| v.to_string())),
        ScalarValue::Int64(v) => json!(v.map(|v| v.to_string())),
        ScalarValue::UInt8(v) => json!(v.map(|v| v.to_string())),
        ScalarValue::UInt16(v) => json!(v.map(|v| v.to_string())),
        ScalarValue::UInt32(v) => json!(v.map(|v| v.to_string())),
        ScalarValue::UInt64(v) => json!(v.map(|v| v.to_string())),
        ScalarValue::Float16(v) => json!(v.map(|v| format!("{v:?} {:04x}", v.to_bits()))),
        ScalarValue::Float32(v) => json!(v.map(|v| format!("{v:?} {:08x}", v.to_bits()))),
        ScalarValue::Float64(v) => json!(v.map(|v| format!("{v:?} {:016x}", v.to_bits()))),
        ScalarValue::Utf8(v) | ScalarValue::LargeUtf8(v) | ScalarValue::Utf8View(v) => json!(v),
        ScalarValue::Binary(v)
        | ScalarValue::LargeBinary(v)
        | ScalarValue::BinaryView(v)
        | ScalarValue::FixedSizeBinary(_, v) => json!(v.as_deref().map(crate::hex::encode)),
        ScalarValue::Decimal128(v, _, _) => json!(v.map(|v| v.to_string())),
        ScalarValue::Decimal256(v, _, _) => json!(v.map(|v| v.to_string())),
        // Dates, times, durations, intervals, nested and dictionary values: their
        // structure, as `Debug` gives it (deterministic, strings escaped).
        other => Value::String(format!("{other:?}")),
    };
    json!({ "type": data_type(&value.data_type()), "value": v })
}

/// How a cache key covers a function a plan calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FunctionVersion {
    /// One of DataFusion's: the engine's version in the key covers it.
    BuiltIn,
    /// A user-defined function registered with this version.
    Versioned(String),
    /// A user-defined function registered without a version.
    Unversioned,
}

/// A function a plan calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FunctionUse {
    /// `scalar`, `aggregate` or `window`.
    pub(crate) kind: &'static str,
    pub(crate) name: String,
    pub(crate) volatility: Volatility,
    /// The address of the function object, to tell DataFusion's own from one a user
    /// registered under the same name.
    pub(crate) address: usize,
}

/// Every function `plan` calls, subqueries and the plans of views it scans included,
/// except under the nodes `stop` says to stop at (a checkpoint: what is below it does
/// not run).
pub(crate) fn functions(
    plan: &LogicalPlan,
    stop: &dyn Fn(&LogicalPlan) -> bool,
) -> Vec<FunctionUse> {
    let mut out = Vec::new();
    collect_functions(plan, stop, &mut out);
    out
}

fn collect_functions(
    plan: &LogicalPlan,
    stop: &dyn Fn(&LogicalPlan) -> bool,
    out: &mut Vec<FunctionUse>,
) {
    let _ = plan.apply_with_subqueries(|node| {
        if stop(node) {
            return Ok(TreeNodeRecursion::Jump);
        }
        if let LogicalPlan::TableScan(scan) = node
            && let Some(view) = scan.source.get_logical_plan()
        {
            collect_functions(&view, stop, out);
        }
        node.apply_expressions(|e| {
            e.apply(|e| {
                let used = match e {
                    Expr::ScalarFunction(f) => Some(FunctionUse {
                        kind: "scalar",
                        name: f.func.name().to_string(),
                        volatility: f.func.signature().volatility,
                        address: std::sync::Arc::as_ptr(&f.func) as *const () as usize,
                    }),
                    Expr::AggregateFunction(f) => Some(FunctionUse {
                        kind: "aggregate",
                        name: f.func.name().to_string(),
                        volatility: f.func.signature().volatility,
                        address: std::sync::Arc::as_ptr(&f.func) as *const () as usize,
                    }),
                    Expr::WindowFunction(w) => Some(match &w.fun {
                        WindowFunctionDefinition::AggregateUDF(f) => FunctionUse {
                            kind: "aggregate",
                            name: f.name().to_string(),
                            volatility: f.signature().volatility,
                            address: std::sync::Arc::as_ptr(f) as *const () as usize,
                        },
                        WindowFunctionDefinition::WindowUDF(f) => FunctionUse {
                            kind: "window",
                            name: f.name().to_string(),
                            volatility: f.signature().volatility,
                            address: std::sync::Arc::as_ptr(f) as *const () as usize,
                        },
                    }),
                    _ => None,
                };
                if let Some(used) = used
                    && !out.contains(&used)
                {
                    out.push(used);
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::logical_expr::{col, lit};

    #[test]
    fn in_lists_that_print_alike_encode_apart() {
        // A string literal is displayed unescaped: one value can print as two.
        let one = col("a").in_list(vec![lit(r#"x"), Utf8("y"#)], false);
        let two = col("a").in_list(vec![lit("x"), lit("y")], false);
        assert_eq!(one.to_string(), two.to_string());
        assert_ne!(expr(&one), expr(&two));
    }

    #[test]
    fn literals_carry_their_types_and_exact_values() {
        assert_ne!(
            scalar(&ScalarValue::Int32(Some(1))),
            scalar(&ScalarValue::Int64(Some(1)))
        );
        assert_ne!(
            scalar(&ScalarValue::Float64(Some(0.0))),
            scalar(&ScalarValue::Float64(Some(-0.0)))
        );
        assert_ne!(
            scalar(&ScalarValue::Utf8(Some("a'b".into()))),
            scalar(&ScalarValue::Utf8(Some("a\"b".into())))
        );
        assert_eq!(
            expr(&(col("x") + lit(1.5))),
            expr(&(col("x") + lit(1.5))),
            "the same expression encodes the same"
        );
    }

    #[test]
    fn subqueries_and_placeholders_never_encode_alike() {
        let p = Expr::Placeholder(datafusion::logical_expr::expr::Placeholder::new_with_field(
            "$1".into(),
            None,
        ));
        assert_ne!(expr(&p), expr(&p));
        let plan = datafusion::logical_expr::LogicalPlanBuilder::empty(true)
            .build()
            .unwrap();
        let subquery = datafusion::logical_expr::scalar_subquery(std::sync::Arc::new(plan));
        assert_ne!(expr(&subquery), expr(&subquery));
        assert_ne!(
            expr(&(col("x") + subquery.clone())),
            expr(&(col("x") + subquery)),
            "an expression holding a subquery never matches either"
        );
    }

    #[test]
    fn the_engine_is_datafusions_major_version() {
        assert_eq!(
            engine(),
            format!(
                "datafusion {}",
                datafusion::DATAFUSION_VERSION.split('.').next().unwrap()
            )
        );
    }
}
