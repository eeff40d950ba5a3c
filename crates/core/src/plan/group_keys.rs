//! Grouping on several small integer keys as on one.
//!
//! DataFusion groups on a single primitive column with a hash table of its values
//! (`GroupValuesPrimitive`), and on several columns with a table of rows that it
//! compares column by column (`GroupValuesColumn`): interning a row costs a hash of
//! each column and an equality check per column and candidate. On the taxi aggregation
//! (the mean tip by pickup zone and pickup hour, 12M rows), that grouping was 19% of the
//! query's CPU.
//!
//! [`PackGroupKeys`] is a logical optimizer rule of Sluice's sessions: an aggregation
//! whose group keys are all integers of at most 32 bits (`Int8`..`Int32`,
//! `UInt8`..`UInt32`), two or more, groups instead on one key that holds them all side by
//! side (each key's bits, and a bit per nullable key that says it is null), a `UInt64`
//! when they fit in 64 bits and a `Decimal128` when they fit in 126, and a projection
//! above it unpacks the keys again. A date part with a bounded range (the hour, the
//! month, ...) takes only the bits of its range ([`bounded_bits`]), each value checked.
//! The groups are the same (two rows share a packed key exactly when they share every
//! key, nulls included), and so are the output's columns, names, types and nullability;
//! the order of a hash aggregation's groups was never defined. Grouping sets, keys of
//! other types or with field metadata, and a plan sent to a cluster (whose executors do
//! not know these functions) are left as they are. The task plans that cache keys are
//! taken from are never rewritten: only the plan a session optimizes to run.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Decimal128Array, PrimitiveArray, UInt64Array};
use arrow::buffer::{BooleanBuffer, NullBuffer};
use arrow::datatypes::{
    ArrowPrimitiveType, DataType, Decimal128Type, Int8Type, Int16Type, Int32Type, UInt8Type,
    UInt16Type, UInt32Type, UInt64Type,
};
use datafusion::common::tree_node::Transformed;
use datafusion::common::{Column, Result, internal_err};
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::{
    Aggregate, ColumnarValue, Expr, LogicalPlan, Projection, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature, Volatility,
};
use datafusion::optimizer::optimizer::ApplyOrder;
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};

use super::date_part::bounded_bits;

/// The name of the packed key's column between the aggregation and the projection.
const PACKED: &str = "__sluice_packed_group_key";

/// The widest packed key: a `Decimal128(38, 0)` holds every value below 10^38, and so
/// every 126-bit one.
const MAX_BITS: u32 = 126;

/// The optimizer rule that groups on several small integer keys as on one (see the
/// module's documentation).
#[derive(Debug, Default)]
pub(crate) struct PackGroupKeys;

impl PackGroupKeys {
    /// The rule's name, by which a cluster's session leaves it out.
    pub(crate) const NAME: &'static str = "sluice_pack_group_keys";
}

impl OptimizerRule for PackGroupKeys {
    fn name(&self) -> &str {
        Self::NAME
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
        let LogicalPlan::Aggregate(aggregate) = plan else {
            return Ok(Transformed::no(plan));
        };
        let Some(layout) = Layout::of(&aggregate) else {
            return Ok(Transformed::no(LogicalPlan::Aggregate(aggregate)));
        };
        let layout = Arc::new(layout);
        let pack = ScalarUDF::new_from_impl(PackKeys {
            layout: Arc::clone(&layout),
        });
        let packed = Expr::ScalarFunction(ScalarFunction::new_udf(
            Arc::new(pack),
            aggregate.group_expr.clone(),
        ))
        .alias(PACKED);
        let inner = Aggregate::try_new(
            Arc::clone(&aggregate.input),
            vec![packed],
            aggregate.aggr_expr.clone(),
        )?;
        let mut exprs = Vec::with_capacity(aggregate.schema.fields().len());
        for index in 0..layout.keys.len() {
            let (qualifier, field) = aggregate.schema.qualified_field(index);
            let unpack = ScalarUDF::new_from_impl(UnpackKey {
                layout: Arc::clone(&layout),
                index,
            });
            let key = Expr::ScalarFunction(ScalarFunction::new_udf(
                Arc::new(unpack),
                vec![Expr::Column(Column::new_unqualified(PACKED))],
            ));
            exprs.push(key.alias_qualified(qualifier.cloned(), field.name()));
        }
        for index in 1..inner.schema.fields().len() {
            exprs.push(Expr::Column(Column::from(
                inner.schema.qualified_field(index),
            )));
        }
        let projection = Projection::try_new(exprs, Arc::new(LogicalPlan::Aggregate(inner)))?;
        Ok(Transformed::yes(LogicalPlan::Projection(projection)))
    }
}

/// Where each key's bits lie in the packed key.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Layout {
    keys: Vec<Key>,
    /// `UInt64`, or `Decimal128(38, 0)` past 64 bits.
    packed: DataType,
}

/// One key: its type, and its bits in the packed key.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Key {
    data_type: DataType,
    nullable: bool,
    /// The bits its values take: the type's width, or fewer for a key whose values are
    /// known to lie in `0..2^width` (a date part: see [`bounded_bits`]).
    width: u32,
    /// Whether `width` is narrower than the type: each value is checked to fit.
    bounded: bool,
    /// Its value's lowest bit.
    shift: u32,
    /// The bit set when it is null (nullable keys).
    null_bit: u32,
}

impl Layout {
    /// The packed key of `aggregate`'s group keys, if they can be packed.
    fn of(aggregate: &Aggregate) -> Option<Self> {
        let groups = &aggregate.group_expr;
        if groups.len() < 2
            || groups.iter().any(|e| matches!(e, Expr::GroupingSet(_)))
            || aggregate.schema.fields().iter().any(|f| f.name() == PACKED)
        {
            return None;
        }
        let mut bits = 0;
        let mut keys = Vec::with_capacity(groups.len());
        for (expr, field) in groups.iter().zip(aggregate.schema.fields().iter()) {
            // A key's field metadata would not survive the unpacking.
            if !field.metadata().is_empty() {
                return None;
            }
            let full = width(field.data_type())?;
            let width = bounded_bits(expr, aggregate.input.schema()).map_or(full, |b| b.min(full));
            let shift = bits;
            bits += width;
            let null_bit = bits;
            bits += u32::from(field.is_nullable());
            keys.push(Key {
                data_type: field.data_type().clone(),
                nullable: field.is_nullable(),
                width,
                bounded: width < full,
                shift,
                null_bit,
            });
        }
        let packed = match bits {
            ..=64 => DataType::UInt64,
            65..=MAX_BITS => DataType::Decimal128(38, 0),
            _ => return None,
        };
        Some(Self { keys, packed })
    }
}

/// The bits a key of `data_type` takes, for the types that are packed.
fn width(data_type: &DataType) -> Option<u32> {
    match data_type {
        DataType::Int8 | DataType::UInt8 => Some(8),
        DataType::Int16 | DataType::UInt16 => Some(16),
        DataType::Int32 | DataType::UInt32 => Some(32),
        _ => None,
    }
}

/// Calls `$body` with `$t` the Arrow type of `$data_type` and `$u` the unsigned integer
/// of its width.
macro_rules! with_key_type {
    ($data_type:expr, $t:ident, $u:ident, $body:expr) => {
        with_key_type!(@arms $data_type, $t, $u, $body;
            Int8 => Int8Type, u8; Int16 => Int16Type, u16; Int32 => Int32Type, u32;
            UInt8 => UInt8Type, u8; UInt16 => UInt16Type, u16; UInt32 => UInt32Type, u32)
    };
    (@arms $data_type:expr, $t:ident, $u:ident, $body:expr;
        $($variant:ident => $arrow:ty, $unsigned:ty);*) => {
        match $data_type {
            $(DataType::$variant => {
                type $t = $arrow;
                type $u = $unsigned;
                $body
            })*
            other => return internal_err!("a group key of type {other} cannot be packed"),
        }
    };
}

/// Packs the group keys (its arguments, in order) into one value per row.
#[derive(Debug, PartialEq, Eq, Hash)]
struct PackKeys {
    layout: Arc<Layout>,
}

impl ScalarUDFImpl for PackKeys {
    fn name(&self) -> &str {
        "sluice_pack_group_keys"
    }

    fn signature(&self) -> &Signature {
        static SIGNATURE: std::sync::LazyLock<Signature> =
            std::sync::LazyLock::new(|| Signature::variadic_any(Volatility::Immutable));
        &SIGNATURE
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(self.layout.packed.clone())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = args
            .args
            .iter()
            .map(|arg| arg.to_array(args.number_rows))
            .collect::<Result<Vec<_>>>()?;
        if arrays.len() != self.layout.keys.len() {
            return internal_err!("{} keys packed as {}", arrays.len(), self.layout.keys.len());
        }
        let array: ArrayRef = match self.layout.packed {
            DataType::UInt64 => Arc::new(UInt64Array::new(self.pack::<u64>(&arrays)?.into(), None)),
            _ => Arc::new(
                Decimal128Array::new(self.pack::<i128>(&arrays)?.into(), None)
                    .with_precision_and_scale(38, 0)?,
            ),
        };
        Ok(ColumnarValue::Array(array))
    }
}

impl PackKeys {
    /// The packed keys of `arrays` (the keys, in order, of as many rows), as `W`s.
    fn pack<W: Word>(&self, arrays: &[ArrayRef]) -> Result<Vec<W>> {
        let mut packed = Vec::new();
        for (key, array) in self.layout.keys.iter().zip(arrays) {
            with_key_type!(&key.data_type, T, U, {
                let values = array.as_primitive::<T>();
                let nulls = array.nulls().filter(|n| n.null_count() > 0);
                if key.bounded {
                    check_bounded::<T>(values, key.width)?;
                }
                let values = values.values();
                let bits = |v: <T as ArrowPrimitiveType>::Native| W::bits(v as U as u64, key.shift);
                if packed.is_empty() {
                    // The first key's bits are where the packed keys start.
                    packed = match nulls {
                        None => values.iter().map(|&v| bits(v)).collect(),
                        Some(nulls) => {
                            let null = W::bits(1, key.null_bit);
                            values
                                .iter()
                                .zip(nulls.iter())
                                .map(|(&v, valid)| if valid { bits(v) } else { null })
                                .collect()
                        }
                    };
                    continue;
                }
                match nulls {
                    None => {
                        for (p, &v) in packed.iter_mut().zip(values) {
                            *p |= bits(v);
                        }
                    }
                    Some(nulls) => {
                        let null = W::bits(1, key.null_bit);
                        for ((p, &v), valid) in packed.iter_mut().zip(values).zip(nulls.iter()) {
                            *p |= if valid { bits(v) } else { null };
                        }
                    }
                }
            });
        }
        Ok(packed)
    }
}

/// An error unless every value of `values` (a key of a bounded range) lies in
/// `0..2^width`: a value outside it would share its packed bits with another group's.
fn check_bounded<T: ArrowPrimitiveType>(values: &PrimitiveArray<T>, width: u32) -> Result<()> {
    use arrow::datatypes::ArrowNativeType as _;
    let outside = |v: &T::Native| v.to_i64().is_none_or(|v| !(0..1i64 << width).contains(&v));
    let found = match values.nulls() {
        None => values.values().iter().find(|v| outside(v)),
        Some(nulls) => values
            .values()
            .iter()
            .zip(nulls.iter())
            .find(|(v, valid)| *valid && outside(v))
            .map(|(v, _)| v),
    };
    match found {
        Some(v) => internal_err!("a group key of {width} bits holds {v:?}"),
        None => Ok(()),
    }
}

/// A packed key's word: `u64`, or the `i128` of a `Decimal128`.
trait Word: Copy + std::ops::BitOrAssign + arrow::datatypes::ArrowNativeType {
    /// `value` (at most 32 bits) shifted left by `shift`.
    fn bits(value: u64, shift: u32) -> Self;
    /// The word's bits.
    fn to_u128(self) -> u128;
}

impl Word for u64 {
    #[inline(always)]
    fn bits(value: u64, shift: u32) -> Self {
        value << shift
    }

    fn to_u128(self) -> u128 {
        u128::from(self)
    }
}

impl Word for i128 {
    #[inline(always)]
    fn bits(value: u64, shift: u32) -> Self {
        (u128::from(value) << shift) as i128
    }

    fn to_u128(self) -> u128 {
        self as u128
    }
}

/// Unpacks key `index` of a packed group key.
#[derive(Debug, PartialEq, Eq, Hash)]
struct UnpackKey {
    layout: Arc<Layout>,
    index: usize,
}

impl ScalarUDFImpl for UnpackKey {
    fn name(&self) -> &str {
        "sluice_unpack_group_key"
    }

    fn signature(&self) -> &Signature {
        static SIGNATURE: std::sync::LazyLock<Signature> =
            std::sync::LazyLock::new(|| Signature::any(1, Volatility::Immutable));
        &SIGNATURE
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(self.layout.keys[self.index].data_type.clone())
    }

    fn return_field_from_args(
        &self,
        _args: datafusion::logical_expr::ReturnFieldArgs,
    ) -> Result<arrow::datatypes::FieldRef> {
        let key = &self.layout.keys[self.index];
        Ok(Arc::new(arrow::datatypes::Field::new(
            self.name(),
            key.data_type.clone(),
            key.nullable,
        )))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [packed] = args.args.as_slice() else {
            return internal_err!("a packed key unpacked from {} arguments", args.args.len());
        };
        let packed = packed.to_array(args.number_rows)?;
        // Few rows: one per group.
        let words: Vec<u128> = match packed.data_type() {
            DataType::UInt64 => words(packed.as_primitive::<UInt64Type>().values()),
            DataType::Decimal128(..) => words(packed.as_primitive::<Decimal128Type>().values()),
            other => return internal_err!("a packed group key of type {other}"),
        };
        let key = &self.layout.keys[self.index];
        let nulls = key.nullable.then(|| {
            NullBuffer::new(BooleanBuffer::from_iter(
                words.iter().map(|w| (w >> key.null_bit) & 1 == 0),
            ))
        });
        let mask = (1u128 << key.width) - 1;
        let array: ArrayRef = with_key_type!(&key.data_type, T, U, {
            let values = words.iter().map(|w| {
                let bits = ((w >> key.shift) & mask) as U;
                bits as <T as ArrowPrimitiveType>::Native
            });
            Arc::new(PrimitiveArray::<T>::new(values.collect(), nulls))
        });
        Ok(ColumnarValue::Array(array))
    }
}

/// The bits of packed keys.
fn words<W: Word>(packed: &[W]) -> Vec<u128> {
    packed.iter().map(|&w| w.to_u128()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{
        Int8Array, Int16Array, Int32Array, Int64Array, RecordBatch, TimestampMicrosecondArray,
        UInt8Array, UInt32Array,
    };
    use arrow::datatypes::{Field, Schema};
    use datafusion::common::tree_node::TreeNode;
    use datafusion::config::ConfigOptions;
    use datafusion::functions::expr_fn::date_part;
    use datafusion::functions_aggregate::expr_fn::{count, sum};
    use datafusion::prelude::{SessionContext, col, lit};

    /// Pseudo-random u64s (xorshift), reproducible.
    fn randoms(seed: u64, n: usize) -> Vec<u64> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x
            })
            .collect()
    }

    /// `n` rows of keys of every packed type (a few distinct values each, negative
    /// ones, extremes, and nulls in the nullable ones), a wide key, a timestamp (years
    /// 1900 to 2100, nulls) and a value.
    fn batch(n: usize) -> RecordBatch {
        let r = randoms(7, n * 7);
        let pick = |i: usize, k: usize| r[i * 7 + k];
        let null = |i: usize, k: usize| pick(i, k) % 11 == 0;
        let i8s: Int8Array = (0..n)
            .map(|i| (!null(i, 0)).then(|| [i8::MIN, -1, 0, 1, i8::MAX][pick(i, 0) as usize % 5]))
            .collect();
        let i16s: Int16Array = (0..n)
            .map(|i| Some([i16::MIN, -300, 0, 7, i16::MAX][pick(i, 1) as usize % 5]))
            .collect();
        let i32s: Int32Array = (0..n)
            .map(|i| {
                (!null(i, 2))
                    .then(|| [i32::MIN, -70_000, -1, 0, 265, i32::MAX][pick(i, 2) as usize % 6])
            })
            .collect();
        let u8s: UInt8Array = (0..n)
            .map(|i| (!null(i, 3)).then(|| [0, 1, 23, u8::MAX][pick(i, 3) as usize % 4]))
            .collect();
        let u32s: UInt32Array = (0..n)
            .map(|i| Some([0, 1, 4_000_000_000, u32::MAX][pick(i, 4) as usize % 4]))
            .collect();
        let wide = Int64Array::from_iter_values((0..n).map(|i| (pick(i, 5) % 3) as i64));
        // 1900-01-01 to 2100-01-01, in microseconds.
        let (from, span) = (-2_208_988_800_000_000i64, 6_311_433_600_000_000u64);
        let t: TimestampMicrosecondArray = (0..n)
            .map(|i| (!null(i, 6)).then(|| from + (pick(i, 6) % span) as i64))
            .collect();
        let value = Int64Array::from_iter_values(0..n as i64);
        let schema = Schema::new(vec![
            Field::new("i8", DataType::Int8, true),
            Field::new("i16", DataType::Int16, false),
            Field::new("i32", DataType::Int32, true),
            Field::new("u8", DataType::UInt8, true),
            Field::new("u32", DataType::UInt32, false),
            Field::new("wide", DataType::Int64, false),
            Field::new("t", t.data_type().clone(), true),
            Field::new("v", DataType::Int64, false),
        ]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(i8s),
                Arc::new(i16s),
                Arc::new(i32s),
                Arc::new(u8s),
                Arc::new(u32s),
                Arc::new(wide),
                Arc::new(t),
                Arc::new(value),
            ],
        )
        .unwrap()
    }

    /// The type of the packed key `plan` groups on, if it packs one.
    fn packed_type(plan: &LogicalPlan) -> Option<DataType> {
        let mut found = None;
        plan.apply(|node| {
            if let LogicalPlan::Aggregate(aggregate) = node
                && let Some(field) = aggregate
                    .schema
                    .fields()
                    .iter()
                    .find(|f| f.name() == PACKED)
            {
                found = Some(field.data_type().clone());
            }
            Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
        })
        .unwrap();
        found
    }

    /// Groups the batch by `keys` in a Sluice session and in plain DataFusion's, and
    /// asserts the same rows (sorted by the keys) and schema; the type of the packed key
    /// Sluice's grouped on, if it packed them.
    async fn both(keys: Vec<Expr>) -> Option<DataType> {
        let batch = batch(20_000);
        let run = |ctx: SessionContext| {
            let batch = batch.clone();
            let keys = keys.clone();
            async move {
                let df = ctx.read_batch(batch)?.aggregate(
                    keys.clone(),
                    vec![sum(col("v")).alias("total"), count(lit(1)).alias("rows")],
                )?;
                let plan = df.clone().into_optimized_plan()?;
                let names: Vec<_> = df
                    .schema()
                    .columns()
                    .into_iter()
                    .take(keys.len())
                    .map(|c| Expr::Column(c).sort(true, true))
                    .collect();
                let batches = df.sort(names)?.collect().await?;
                Ok::<_, datafusion::error::DataFusionError>((plan, batches))
            }
        };
        let session = crate::Session::new();
        let (plan, ours) = run(session.context().clone()).await.unwrap();
        let (_, theirs) = run(SessionContext::new()).await.unwrap();
        let ours = arrow::compute::concat_batches(&ours[0].schema(), &ours).unwrap();
        let theirs = arrow::compute::concat_batches(&theirs[0].schema(), &theirs).unwrap();
        assert_eq!(ours.schema(), theirs.schema(), "{plan}");
        assert_eq!(ours, theirs, "{plan}");
        assert!(ours.num_rows() >= 7, "groups: {}", ours.num_rows());
        packed_type(&plan)
    }

    fn cols(names: &[&str]) -> Vec<Expr> {
        names.iter().map(|n| col(*n)).collect()
    }

    #[tokio::test]
    async fn keys_packed_in_64_bits_group_as_datafusion_groups_them() {
        let u64 = Some(DataType::UInt64);
        // 8 + 1 + 16 + 32 + 1 = 58 bits.
        assert_eq!(both(cols(&["i8", "i16", "i32"])).await, u64);
        // 8 + 1 + 32 + 1 = 42: the order of the keys is kept.
        assert_eq!(both(cols(&["u8", "i32"])).await, u64);
        assert_eq!(both(cols(&["i32", "u8"])).await, u64);
    }

    #[tokio::test]
    async fn keys_past_64_bits_are_packed_in_a_decimal() {
        // 32 + 1 + 32 + 8 + 1 + 16 + 8 + 1 = 99 bits.
        assert_eq!(
            both(cols(&["i32", "u32", "u8", "i16", "i8"])).await,
            Some(DataType::Decimal128(38, 0))
        );
    }

    #[tokio::test]
    async fn date_parts_take_the_bits_of_their_range() {
        let part = |p: &str, name: &str| date_part(lit(p), col("t")).alias(name);
        // A zone and the pickup hour: 32 + 1 + 5 + 1 = 39 bits, where the hour's Int32
        // would take 66, past a UInt64.
        let keys = vec![col("i32"), part("hour", "h")];
        assert_eq!(both(keys).await, Some(DataType::UInt64));
        // Every bounded part at once: 32 + 1 + (3 + 4 + 5 + 5 + 6 + 6 + 9 + 3 + 3) + 9.
        let keys = vec![
            col("i32"),
            part("quarter", "q"),
            part("month", "mo"),
            part("day", "d"),
            part("hour", "h"),
            part("minute", "mi"),
            part("second", "s"),
            part("doy", "doy"),
            part("dow", "dow"),
            part("isodow", "isodow"),
        ];
        assert_eq!(both(keys).await, Some(DataType::Decimal128(38, 0)));
        // The year has no bound: its type's 32 bits.
        let keys = vec![part("year", "y"), part("hour", "h"), col("u8")];
        assert_eq!(both(keys).await, Some(DataType::UInt64));
    }

    #[test]
    fn a_bounded_key_outside_its_range_is_an_error_not_a_wrong_group() {
        let key = |shift, width, bounded| Key {
            data_type: DataType::Int32,
            nullable: true,
            width,
            bounded,
            shift,
            null_bit: shift + width,
        };
        let pack = PackKeys {
            layout: Arc::new(Layout {
                keys: vec![key(0, 5, true), key(6, 32, false)],
                packed: DataType::UInt64,
            }),
        };
        let call = |hours: Vec<Option<i32>>| {
            let rows = hours.len();
            let hours: ArrayRef = Arc::new(Int32Array::from(hours));
            let zones: ArrayRef = Arc::new(Int32Array::from(vec![Some(-1); rows]));
            let field = Arc::new(Field::new("k", DataType::Int32, true));
            pack.invoke_with_args(ScalarFunctionArgs {
                args: vec![ColumnarValue::Array(hours), ColumnarValue::Array(zones)],
                arg_fields: vec![Arc::clone(&field), field],
                number_rows: rows,
                return_field: Arc::new(Field::new("p", DataType::UInt64, false)),
                config_options: Arc::new(ConfigOptions::default()),
            })
        };
        assert!(call(vec![Some(0), Some(23), None, Some(31)]).is_ok());
        for outside in [32, -1] {
            let error = call(vec![Some(1), Some(outside)]).unwrap_err();
            assert!(error.to_string().contains(&outside.to_string()), "{error}");
        }
    }

    #[tokio::test]
    async fn keys_that_cannot_be_packed_are_grouped_by_datafusion() {
        // A 64-bit key; one key; 4 × (32 + 1) = 132 bits.
        assert_eq!(both(cols(&["i32", "wide"])).await, None);
        assert_eq!(both(cols(&["i32"])).await, None);
        let keys = vec![
            col("i32"),
            col("i32").alias("a"),
            col("i32").alias("b"),
            col("i32").alias("c"),
        ];
        assert_eq!(both(keys).await, None);
    }
}
