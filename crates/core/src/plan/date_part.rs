//! `date_part` at the speed of integer arithmetic.
//!
//! DataFusion's `date_part` (and `extract`) on a timestamp goes through chrono for every
//! value: each one becomes a calendar date and time before its hour, day or year is
//! read. On the taxi aggregation (the mean tip by zone and pickup hour, 12M rows) that
//! was a fifth of the query's CPU. For a timestamp without a time zone (or in UTC) every
//! part is arithmetic on the value: the hour is the seconds of the day over 3600, the
//! date comes from the day number by Howard Hinnant's `civil_from_days`.
//!
//! [`FastDateParts`] is a logical optimizer rule of Sluice's sessions: it swaps
//! DataFusion's own `date_part` in a plan for [`FastDatePart`], which answers year,
//! quarter, month, day, hour, minute, second, day of year and day of week (`dow`,
//! `isodow`) of such timestamp arrays itself, with DataFusion's results (the values
//! chrono cannot represent are null in both, and an array holding any such value is
//! left to DataFusion whole), and hands everything else to DataFusion's function:
//! other parts, other types, time zones, scalars. Everything that describes the
//! function (its name, return type, simplification, ordering) is DataFusion's. The
//! task plans that cache keys are taken from are never rewritten, and a plan sent to a
//! cluster names the function as DataFusion does.

use std::str::FromStr;
use std::sync::{Arc, LazyLock};

use arrow::array::{Array, ArrayRef, AsArray, Int32Array, PrimitiveArray};
use arrow::compute::kernels::cast_utils::IntervalUnit;
use arrow::datatypes::{
    ArrowPrimitiveType, DataType, FieldRef, TimeUnit, TimestampMicrosecondType,
    TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType,
};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Result, ScalarValue};
use datafusion::functions::datetime::date_part::DatePartFunc;
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::sort_properties::{ExprProperties, SortProperties};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Expr, LogicalPlan, ReturnFieldArgs, ScalarFunctionArgs,
    ScalarUDF, ScalarUDFImpl, Signature,
};
use datafusion::optimizer::optimizer::ApplyOrder;
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};

/// The optimizer rule that gives a plan's `date_part` calls [`FastDatePart`] (see the
/// module's documentation). A `date_part` registered over DataFusion's is left alone.
#[derive(Debug, Default)]
pub(crate) struct FastDateParts;

impl OptimizerRule for FastDateParts {
    fn name(&self) -> &str {
        "sluice_fast_date_part"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::BottomUp)
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        plan.map_expressions(|expr| {
            expr.transform_up(|expr| match expr {
                Expr::ScalarFunction(call)
                    if call.func.inner().downcast_ref::<DatePartFunc>().is_some() =>
                {
                    let fast = ScalarUDF::new_from_impl(FastDatePart {
                        inner: Arc::clone(&call.func),
                    });
                    Ok(Transformed::yes(Expr::ScalarFunction(ScalarFunction {
                        func: Arc::new(fast),
                        args: call.args,
                    })))
                }
                other => Ok(Transformed::no(other)),
            })
        })
    }
}

/// The bits that hold every value of `expr`, when it is `date_part` (DataFusion's, or
/// [`FastDatePart`]) of a part with a bounded range (the hour: 0 to 23, the month: 1 to
/// 12, ...) of a timestamp or a date (its type in `input`, the schema `expr` is
/// evaluated against); `None` otherwise.
pub(crate) fn bounded_bits(expr: &Expr, input: &datafusion::common::DFSchema) -> Option<u32> {
    use datafusion::logical_expr::ExprSchemable as _;
    let mut expr = expr;
    while let Expr::Alias(alias) = expr {
        expr = &alias.expr;
    }
    let Expr::ScalarFunction(call) = expr else {
        return None;
    };
    let inner = call.func.inner();
    if inner.downcast_ref::<DatePartFunc>().is_none()
        && inner.downcast_ref::<FastDatePart>().is_none()
    {
        return None;
    }
    let [Expr::Literal(part, _), value] = call.args.as_slice() else {
        return None;
    };
    let part = match part {
        ScalarValue::Utf8(Some(p))
        | ScalarValue::Utf8View(Some(p))
        | ScalarValue::LargeUtf8(Some(p)) => Part::parse(p)?,
        _ => return None,
    };
    match value.get_type(input).ok()? {
        DataType::Timestamp(..) | DataType::Date32 | DataType::Date64 => {}
        _ => return None,
    }
    part.max().map(|max| u32::BITS - max.leading_zeros())
}

/// DataFusion's `date_part`, evaluated by integer arithmetic where that gives its
/// results (see the module's documentation).
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct FastDatePart {
    /// DataFusion's function: everything but the arrays this one evaluates.
    inner: Arc<ScalarUDF>,
}

/// A part [`FastDatePart`] computes itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Year,
    Quarter,
    Month,
    Day,
    Hour,
    Minute,
    Second,
    DayOfYear,
    /// Sunday 0 to Saturday 6 (`dow`).
    DayOfWeek,
    /// Monday 1 to Sunday 7 (`isodow`).
    IsoDayOfWeek,
}

impl Part {
    /// The part `date_part`'s first argument names, as DataFusion reads it (quotes
    /// stripped, units by Arrow's interval names and their synonyms); `None` for the
    /// parts left to DataFusion.
    fn parse(text: &str) -> Option<Self> {
        let text = text
            .strip_prefix(['\'', '"'])
            .and_then(|s| s.strip_suffix(['\'', '"']))
            .unwrap_or(text);
        if let Ok(unit) = IntervalUnit::from_str(text) {
            return match unit {
                IntervalUnit::Year => Some(Self::Year),
                IntervalUnit::Month => Some(Self::Month),
                IntervalUnit::Day => Some(Self::Day),
                IntervalUnit::Hour => Some(Self::Hour),
                IntervalUnit::Minute => Some(Self::Minute),
                IntervalUnit::Second => Some(Self::Second),
                _ => None,
            };
        }
        match text.to_lowercase().as_str() {
            "qtr" | "quarter" => Some(Self::Quarter),
            "doy" => Some(Self::DayOfYear),
            "dow" => Some(Self::DayOfWeek),
            "isodow" => Some(Self::IsoDayOfWeek),
            _ => None,
        }
    }

    /// The largest value the part takes; `None` for the year, which has no bound.
    fn max(self) -> Option<u32> {
        match self {
            Self::Year => None,
            Self::Quarter => Some(4),
            Self::Month => Some(12),
            Self::Day => Some(31),
            Self::Hour => Some(23),
            Self::Minute | Self::Second => Some(59),
            Self::DayOfYear => Some(366),
            Self::DayOfWeek => Some(6),
            Self::IsoDayOfWeek => Some(7),
        }
    }

    /// The part of the instant `days` after 1970-01-01 plus `second` seconds (of that
    /// day, `0..86400`).
    #[inline(always)]
    fn of(self, days: i64, second: i64) -> i32 {
        match self {
            Self::Hour => (second / 3600) as i32,
            Self::Minute => (second / 60 % 60) as i32,
            Self::Second => (second % 60) as i32,
            Self::DayOfWeek => (days + 4).rem_euclid(7) as i32,
            Self::IsoDayOfWeek => ((days + 3).rem_euclid(7) + 1) as i32,
            Self::Year => civil_from_days(days).0 as i32,
            Self::Quarter => ((civil_from_days(days).1 - 1) / 3 + 1) as i32,
            Self::Month => civil_from_days(days).1 as i32,
            Self::Day => civil_from_days(days).2 as i32,
            Self::DayOfYear => {
                let year = civil_from_days(days).0;
                (days - days_from_civil(year, 1, 1) + 1) as i32
            }
        }
    }
}

/// The proleptic Gregorian `(year, month, day)` of the day `days` after 1970-01-01
/// (Howard Hinnant's `civil_from_days`).
#[inline(always)]
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// The day number (after 1970-01-01) of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468
}

/// The day numbers chrono represents (its `NaiveDate::MIN` to `MAX`): Arrow's
/// `date_part` is null outside them.
static DAYS: LazyLock<std::ops::RangeInclusive<i64>> = LazyLock::new(|| {
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).expect("a valid date");
    let days = |d: chrono::NaiveDate| d.signed_duration_since(epoch).num_days();
    days(chrono::NaiveDate::MIN)..=days(chrono::NaiveDate::MAX)
});

/// `part` of every value of a timestamp array of `T` with `PER_SECOND` values a second,
/// or `None` when a value lies outside chrono's dates (DataFusion's function answers).
fn extract<T, const PER_SECOND: i64>(array: &dyn Array, part: Part) -> Option<Int32Array>
where
    T: ArrowPrimitiveType<Native = i64>,
{
    let array: &PrimitiveArray<T> = array.as_primitive();
    let in_range = |v: i64| DAYS.contains(&v.div_euclid(PER_SECOND).div_euclid(86_400));
    let (min, max) = (
        arrow::compute::min(array).unwrap_or(0),
        arrow::compute::max(array).unwrap_or(0),
    );
    if !(in_range(min) && in_range(max)) {
        return None;
    }
    // One loop per part and unit, each dividing by constants (multiplications), not by
    // a unit and a part known only at run time.
    macro_rules! each_part {
        ($($part:ident),*) => {
            match part {
                $(Part::$part => by_day_and_second::<T, PER_SECOND>(array, |days, second| {
                    Part::$part.of(days, second)
                }),)*
            }
        };
    }
    Some(each_part!(
        Year,
        Quarter,
        Month,
        Day,
        Hour,
        Minute,
        Second,
        DayOfYear,
        DayOfWeek,
        IsoDayOfWeek
    ))
}

/// `part(days, second)` of every value of `array` (`PER_SECOND` values a second): the
/// day after 1970-01-01 and the second of that day. Null slots hold any value: the
/// arithmetic cannot overflow on any i64, and their results stay null.
#[inline(always)]
fn by_day_and_second<T, const PER_SECOND: i64>(
    array: &PrimitiveArray<T>,
    part: impl Fn(i64, i64) -> i32,
) -> Int32Array
where
    T: ArrowPrimitiveType<Native = i64>,
{
    array.unary(|v| {
        let seconds = v.div_euclid(PER_SECOND);
        part(seconds.div_euclid(86_400), seconds.rem_euclid(86_400))
    })
}

impl FastDatePart {
    /// The result this function computes itself, `None` for what it leaves to
    /// DataFusion's.
    fn evaluate(args: &[ColumnarValue]) -> Option<ArrayRef> {
        let [ColumnarValue::Scalar(part), ColumnarValue::Array(array)] = args else {
            return None;
        };
        let part = match part {
            ScalarValue::Utf8(Some(p))
            | ScalarValue::Utf8View(Some(p))
            | ScalarValue::LargeUtf8(Some(p)) => Part::parse(p)?,
            _ => return None,
        };
        let DataType::Timestamp(unit, zone) = array.data_type() else {
            return None;
        };
        if zone
            .as_deref()
            .is_some_and(|z| !matches!(z, "UTC" | "+00:00"))
        {
            return None;
        }
        let values = match unit {
            TimeUnit::Second => extract::<TimestampSecondType, 1>(array, part),
            TimeUnit::Millisecond => extract::<TimestampMillisecondType, 1_000>(array, part),
            TimeUnit::Microsecond => extract::<TimestampMicrosecondType, 1_000_000>(array, part),
            TimeUnit::Nanosecond => extract::<TimestampNanosecondType, 1_000_000_000>(array, part),
        }?;
        Some(Arc::new(values))
    }
}

impl ScalarUDFImpl for FastDatePart {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn schema_name(&self, args: &[Expr]) -> Result<String> {
        self.inner.inner().schema_name(args)
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        match Self::evaluate(&args.args) {
            Some(values) => Ok(ColumnarValue::Array(values)),
            None => self.inner.invoke_with_args(args),
        }
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn simplify(&self, args: Vec<Expr>, info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        self.inner.simplify(args, info)
    }

    fn output_ordering(&self, inputs: &[ExprProperties]) -> Result<SortProperties> {
        self.inner.output_ordering(inputs)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, RecordBatch};
    use arrow::datatypes::{Field, Schema};
    use datafusion::config::ConfigOptions;

    const PARTS: &[&str] = &[
        "year", "quarter", "month", "day", "hour", "minute", "second", "doy", "dow", "isodow",
        "'hour'", "HOURS", "qtr", "y", "mon", "min", "sec",
    ];

    /// Evaluates `date_part(part, values)` through `udf`.
    fn call(udf: &ScalarUDF, part: &str, values: &ArrayRef) -> Result<ArrayRef> {
        let fields = [
            Arc::new(Field::new("part", DataType::Utf8, false)),
            Arc::new(Field::new("t", values.data_type().clone(), true)),
        ];
        let part = ScalarValue::Utf8(Some(part.to_string()));
        let return_field = udf.return_field_from_args(ReturnFieldArgs {
            arg_fields: &fields,
            scalar_arguments: &[Some(&part), None],
        })?;
        let result = udf.invoke_with_args(ScalarFunctionArgs {
            args: vec![
                ColumnarValue::Scalar(part),
                ColumnarValue::Array(Arc::clone(values)),
            ],
            arg_fields: fields.to_vec(),
            number_rows: values.len(),
            return_field,
            config_options: Arc::new(ConfigOptions::default()),
        })?;
        result.into_array(values.len())
    }

    /// Pseudo-random i64s (xorshift), reproducible.
    fn values(seed: u64, n: usize, span: i64) -> Vec<i64> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (i128::from(x).rem_euclid(2 * i128::from(span)) - i128::from(span)) as i64
            })
            .collect()
    }

    fn timestamps(unit: TimeUnit, zone: Option<&str>, raw: Vec<Option<i64>>) -> ArrayRef {
        let zone: Option<Arc<str>> = zone.map(Into::into);
        let array = Int64Array::from(raw);
        arrow::compute::cast(&array, &DataType::Timestamp(unit, zone)).unwrap()
    }

    #[test]
    fn every_part_of_every_unit_is_datafusions() {
        let datafusion = datafusion::functions::datetime::date_part();
        let fast = ScalarUDF::new_from_impl(FastDatePart {
            inner: Arc::clone(&datafusion),
        });
        // Values a second: each unit's timestamps spread over years -5000 to 5000
        // (around 1.6e11 seconds from 1970), nanoseconds over their whole range, and
        // the instants where days, leap days and centuries turn.
        let edges: Vec<i64> = [
            "1970-01-01T00:00:00",
            "1969-12-31T23:59:59",
            "2000-02-29T12:00:00",
            "2000-03-01T00:00:00",
            "1900-02-28T23:59:59",
            "1900-03-01T00:00:00",
            "1600-12-31T23:59:59",
            "2024-12-31T23:59:59",
            "-0001-03-01T00:00:00",
            "0000-01-01T00:00:00",
        ]
        .iter()
        .map(|t| {
            chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S")
                .unwrap()
                .and_utc()
                .timestamp()
        })
        .collect();
        for (unit, per_second) in [
            (TimeUnit::Second, 1),
            (TimeUnit::Millisecond, 1_000),
            (TimeUnit::Microsecond, 1_000_000),
            (TimeUnit::Nanosecond, 1_000_000_000),
        ] {
            let span = if unit == TimeUnit::Nanosecond {
                i64::MAX
            } else {
                160_000_000_000 * per_second
            };
            let mut raw: Vec<Option<i64>> = values(per_second as u64 + 7, 20_000, span)
                .into_iter()
                .enumerate()
                .map(|(i, v)| (i % 11 != 0).then_some(v))
                .collect();
            if unit != TimeUnit::Nanosecond {
                raw.extend(edges.iter().flat_map(|s| {
                    [s * per_second, s * per_second - 1, s * per_second + 1].map(Some)
                }));
            }
            for zone in [None, Some("UTC"), Some("+00:00"), Some("America/New_York")] {
                let array = timestamps(unit, zone, raw.clone());
                for part in PARTS {
                    // Not DataFusion's answer twice: here it is computed here.
                    let args = [
                        ColumnarValue::Scalar(ScalarValue::Utf8(Some(part.to_string()))),
                        ColumnarValue::Array(Arc::clone(&array)),
                    ];
                    assert_eq!(
                        FastDatePart::evaluate(&args).is_some(),
                        zone != Some("America/New_York"),
                        "{part} of {unit:?} timestamps in {zone:?}"
                    );
                    let expected = call(&datafusion, part, &array).unwrap();
                    let actual = call(&fast, part, &array).unwrap();
                    assert_eq!(
                        expected.as_ref(),
                        actual.as_ref(),
                        "{part} of {unit:?} timestamps in {zone:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn only_naive_and_utc_timestamps_of_known_parts_are_computed_here() {
        let array = timestamps(TimeUnit::Microsecond, None, vec![Some(0), None]);
        let part = |p: &str| ColumnarValue::Scalar(ScalarValue::Utf8(Some(p.into())));
        let computed = |args: &[ColumnarValue]| FastDatePart::evaluate(args).is_some();
        assert!(computed(&[
            part("hour"),
            ColumnarValue::Array(array.clone())
        ]));
        assert!(!computed(&[
            part("week"),
            ColumnarValue::Array(array.clone())
        ]));
        assert!(!computed(&[
            part("epoch"),
            ColumnarValue::Array(array.clone())
        ]));
        let zoned = timestamps(TimeUnit::Microsecond, Some("Europe/Paris"), vec![Some(0)]);
        assert!(!computed(&[part("hour"), ColumnarValue::Array(zoned)]));
        let scalar = ColumnarValue::Scalar(ScalarValue::TimestampMicrosecond(Some(0), None));
        assert!(!computed(&[part("hour"), scalar]));
        // A value chrono cannot place: DataFusion's function answers for the array.
        let seconds = timestamps(TimeUnit::Second, None, vec![Some(0), Some(i64::MAX)]);
        assert!(!computed(&[part("hour"), ColumnarValue::Array(seconds)]));
    }

    #[tokio::test]
    async fn a_sessions_plans_compute_date_parts_here_with_datafusions_results() {
        let raw: Vec<Option<i64>> = values(3, 5_000, 4_000_000_000_000_000)
            .into_iter()
            .map(Some)
            .chain([None])
            .collect();
        let t = timestamps(TimeUnit::Microsecond, None, raw);
        let schema = Arc::new(Schema::new(vec![Field::new(
            "t",
            t.data_type().clone(),
            true,
        )]));
        let batch = RecordBatch::try_new(schema, vec![t]).unwrap();
        let query = |ctx: datafusion::prelude::SessionContext| {
            let batch = batch.clone();
            async move {
                use datafusion::prelude::*;
                let df = ctx.read_batch(batch)?.aggregate(
                    vec![
                        date_part(lit("hour"), col("t")).alias("h"),
                        date_part(lit("year"), col("t")).alias("y"),
                    ],
                    vec![datafusion::functions_aggregate::count::count(lit(1)).alias("n")],
                )?;
                let plan = df.clone().into_optimized_plan()?;
                let batches = df.sort_by(vec![col("h"), col("y")])?.collect().await?;
                Ok::<_, datafusion::error::DataFusionError>((plan, batches))
            }
        };
        let session = crate::Session::new();
        let (plan, ours) = query(session.context().clone()).await.unwrap();
        let (_, theirs) = query(datafusion::prelude::SessionContext::new())
            .await
            .unwrap();
        assert_eq!(ours, theirs);
        let mut fast = 0;
        plan.apply(|node| {
            node.apply_expressions(|e| {
                e.apply(|e| {
                    if let Expr::ScalarFunction(f) = e {
                        fast +=
                            usize::from(f.func.inner().downcast_ref::<FastDatePart>().is_some());
                    }
                    Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
                })
            })
        })
        .unwrap();
        assert!(fast >= 2, "{plan}");
    }
}
