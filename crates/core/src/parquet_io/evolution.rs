//! Schema evolution across files: one schema for a source whose files' schemas differ
//! compatibly, and the hooks that make DataFusion read each file under it.
//!
//! [`unify`] computes the source's schema from each file's own (read from its footer)
//! by the rule documented on [`ParquetRead`](crate::ParquetRead). DataFusion's
//! `ListingTable` then does the per-file work: its default physical expression adapter
//! casts a file's column to the unified type and reads a column a file lacks as nulls.
//!
//! DataFusion matches a file's columns to the table's by exact name, everywhere it
//! does so (the expression adapter, the statistics it collects per file, the
//! string-view read hints). For case-insensitive names two hooks map a file's spelling
//! onto the unified one:
//!
//! - [`CaseInsensitiveAdapterFactory`], a `PhysicalExprAdapterFactory` (the
//!   `SchemaAdapterFactory` of earlier versions is gone in DataFusion 55), rewrites the
//!   scan's projection and predicate to the file's spelling before DataFusion's
//!   default adapter adds the casts and nulls;
//! - [`CaseInsensitiveFormat`] wraps the Parquet format so that a file's statistics are
//!   computed under its own spelling. Without it DataFusion takes a differently spelled
//!   column for a missing one and records it as all null, which a predicate on it or a
//!   `count(column)` answered from statistics would then believe.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::Session as DfSession;
use datafusion::common::Statistics;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::datasource::file_format::FileFormat;
use datafusion::error::DataFusionError;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr_adapter::{
    DefaultPhysicalExprAdapterFactory, PhysicalExprAdapter, PhysicalExprAdapterFactory,
};
use object_store::{ObjectMeta, ObjectStore};

use crate::parquet_io::format::{FormatHooks, WrappedFormat};
use crate::{Error, Result};

/// One file's schema, as read from its footer.
#[derive(Debug, Clone)]
pub(crate) struct FileSchema {
    /// The file's URL, without credentials.
    pub url: String,
    /// Its schema.
    pub schema: SchemaRef,
}

/// The name a column is matched by.
fn match_key(name: &str, case_insensitive: bool) -> String {
    if case_insensitive {
        name.to_lowercase()
    } else {
        name.to_string()
    }
}

/// A column of the unified schema while it is being built.
struct UnifiedColumn {
    field: Field,
    /// Each file that has the column: its index in `files` and its type there.
    seen_in: Vec<(usize, DataType)>,
}

/// The schema of a source made of `files`, taken in the order given (the caller sorts
/// them by URL), by the rule documented on [`ParquetRead`](crate::ParquetRead):
/// columns in order of first appearance, spelled as in the first file that has them,
/// types unified by [`unify_types`], nullable when nullable or missing in any file.
pub(crate) fn unify(files: &[FileSchema], case_insensitive: bool) -> Result<Schema> {
    let mut columns: Vec<UnifiedColumn> = Vec::new();
    let mut by_key: HashMap<String, usize> = HashMap::new();
    let mut metadata = HashMap::new();
    let mut warned_case = std::collections::HashSet::new();
    for (i, file) in files.iter().enumerate() {
        for (key, value) in file.schema.metadata() {
            metadata.entry(key.clone()).or_insert_with(|| value.clone());
        }
        let mut present = vec![false; columns.len()];
        let mut in_file: HashMap<String, &str> = HashMap::new();
        for field in file.schema.fields() {
            let key = match_key(field.name(), case_insensitive);
            if let Some(other) = in_file.insert(key.clone(), field.name())
                && case_insensitive
            {
                return Err(Error::AmbiguousColumnNames {
                    url: file.url.clone(),
                    first: other.to_string(),
                    second: field.name().clone(),
                });
            }
            let Some(&index) = by_key.get(&key) else {
                if !case_insensitive {
                    warn_on_case_only_difference(&columns, files, file, field, &mut warned_case);
                }
                by_key.insert(key, columns.len());
                // Missing from the files before this one: nulls there.
                let nullable = field.is_nullable() || i > 0;
                columns.push(UnifiedColumn {
                    field: field.as_ref().clone().with_nullable(nullable),
                    seen_in: vec![(i, field.data_type().clone())],
                });
                present.push(true);
                continue;
            };
            let column = &mut columns[index];
            let Some(unified) = unify_types(column.field.data_type(), field.data_type()) else {
                // Name the file whose own type conflicts (the unified type may have
                // come from several).
                let (first, first_type) = column
                    .seen_in
                    .iter()
                    .find(|(_, t)| unify_types(t, field.data_type()).is_none())
                    .unwrap_or(&column.seen_in[0]);
                return Err(Error::SchemaMismatch {
                    column: column.field.name().clone(),
                    first_url: files[*first].url.clone(),
                    first_type: first_type.clone(),
                    second_url: file.url.clone(),
                    second_type: field.data_type().clone(),
                });
            };
            let nullable = column.field.is_nullable() || field.is_nullable();
            column.field = column
                .field
                .clone()
                .with_data_type(unified)
                .with_nullable(nullable);
            column.seen_in.push((i, field.data_type().clone()));
            present[index] = true;
        }
        for (column, present) in columns.iter_mut().zip(present) {
            if !present {
                column.field.set_nullable(true);
            }
        }
    }
    let fields: Fields = columns.into_iter().map(|c| c.field).collect();
    Ok(Schema::new_with_metadata(fields, metadata))
}

/// Logs, once per pair, two columns whose names differ only in case while names are
/// case-sensitive: they stay two columns, which is rarely what the files meant.
fn warn_on_case_only_difference(
    columns: &[UnifiedColumn],
    files: &[FileSchema],
    file: &FileSchema,
    field: &Field,
    warned: &mut std::collections::HashSet<(String, String)>,
) {
    let lower = field.name().to_lowercase();
    for column in columns {
        if column.field.name().to_lowercase() == lower
            && warned.insert((column.field.name().clone(), field.name().clone()))
        {
            tracing::warn!(
                column = %column.field.name(),
                first_file = %files[column.seen_in[0].0].url,
                other = %field.name(),
                other_file = %file.url,
                "columns whose names differ only in case are read as two columns; \
                 read with ParquetRead::with_case_insensitive_names(true) to read them as one"
            );
        }
    }
}

/// The type two files' types for one column unify to, or `None` when they do not:
///
/// - equal types, and `Null` (a column of nulls) with anything, give that type;
/// - integers give the smallest integer type that holds both (`Int32` + `Int64` →
///   `Int64`, `Int8` + `UInt8` → `Int16`; `UInt64` with a signed type does not unify);
/// - floats give the wider float; an integer and a float give `Float64`;
/// - decimals give the smallest decimal that holds both (precision at most 38 for
///   `Decimal128`, 76 for `Decimal256`);
/// - timestamps with the same time zone (or none in both) give the coarser unit;
/// - `Utf8`, `LargeUtf8` and `Utf8View` give `Utf8View` if either is a view,
///   `LargeUtf8` otherwise; binary types likewise;
/// - a dictionary unifies as its value type;
/// - anything else (nested types included) must be equal.
pub(crate) fn unify_types(a: &DataType, b: &DataType) -> Option<DataType> {
    use DataType::*;
    if a == b {
        return Some(a.clone());
    }
    Some(match (a, b) {
        (Null, other) | (other, Null) => other.clone(),
        (Dictionary(_, value), other) | (other, Dictionary(_, value)) => {
            return unify_types(value, other);
        }
        _ if a.is_integer() && b.is_integer() => unify_integers(a, b)?,
        _ if a.is_floating() && b.is_floating() => {
            if float_bits(a) >= float_bits(b) {
                a.clone()
            } else {
                b.clone()
            }
        }
        _ if (a.is_integer() && b.is_floating()) || (a.is_floating() && b.is_integer()) => Float64,
        (Decimal128(p1, s1), Decimal128(p2, s2)) => {
            let (p, s) = unify_decimals((*p1, *s1), (*p2, *s2), 38)?;
            Decimal128(p, s)
        }
        (Decimal128(p1, s1) | Decimal256(p1, s1), Decimal128(p2, s2) | Decimal256(p2, s2)) => {
            let (p, s) = unify_decimals((*p1, *s1), (*p2, *s2), 76)?;
            Decimal256(p, s)
        }
        (Timestamp(u1, tz1), Timestamp(u2, tz2)) if tz1 == tz2 => {
            Timestamp(coarser(*u1, *u2), tz1.clone())
        }
        (Utf8 | LargeUtf8 | Utf8View, Utf8 | LargeUtf8 | Utf8View) => {
            if matches!(a, Utf8View) || matches!(b, Utf8View) {
                Utf8View
            } else {
                LargeUtf8
            }
        }
        (Binary | LargeBinary | BinaryView, Binary | LargeBinary | BinaryView) => {
            if matches!(a, BinaryView) || matches!(b, BinaryView) {
                BinaryView
            } else {
                LargeBinary
            }
        }
        _ if a.equals_datatype(b) => a.clone(),
        _ => return None,
    })
}

fn float_bits(t: &DataType) -> u8 {
    match t {
        DataType::Float16 => 16,
        DataType::Float32 => 32,
        _ => 64,
    }
}

/// `(signed, bits)` of an integer type.
fn integer_shape(t: &DataType) -> (bool, u8) {
    use DataType::*;
    match t {
        Int8 => (true, 8),
        Int16 => (true, 16),
        Int32 => (true, 32),
        Int64 => (true, 64),
        UInt8 => (false, 8),
        UInt16 => (false, 16),
        UInt32 => (false, 32),
        _ => (false, 64),
    }
}

fn integer_type(signed: bool, bits: u8) -> DataType {
    use DataType::*;
    match (signed, bits) {
        (true, 8) => Int8,
        (true, 16) => Int16,
        (true, 32) => Int32,
        (true, _) => Int64,
        (false, 8) => UInt8,
        (false, 16) => UInt16,
        (false, 32) => UInt32,
        (false, _) => UInt64,
    }
}

fn unify_integers(a: &DataType, b: &DataType) -> Option<DataType> {
    let (sa, ba) = integer_shape(a);
    let (sb, bb) = integer_shape(b);
    if sa == sb {
        return Some(integer_type(sa, ba.max(bb)));
    }
    let (signed_bits, unsigned_bits) = if sa { (ba, bb) } else { (bb, ba) };
    // A signed type holds an unsigned one of half its width.
    let bits = signed_bits.max(unsigned_bits.checked_mul(2)?);
    (bits <= 64).then(|| integer_type(true, bits))
}

fn unify_decimals(a: (u8, i8), b: (u8, i8), max_precision: u8) -> Option<(u8, i8)> {
    let scale = a.1.max(b.1);
    let integer_digits = (i16::from(a.0) - i16::from(a.1)).max(i16::from(b.0) - i16::from(b.1));
    let precision = integer_digits + i16::from(scale);
    (precision <= i16::from(max_precision)).then_some((precision as u8, scale))
}

fn coarser(a: TimeUnit, b: TimeUnit) -> TimeUnit {
    a.min(b)
}

/// For each of `table`'s columns that `file` spells differently (in case only), the
/// file's spelling, by the table column's index. Errors when a file has two spellings
/// of one column.
fn file_spellings(
    table: &Schema,
    file: &Schema,
) -> datafusion::error::Result<Vec<(usize, String)>> {
    let mut by_lower: HashMap<String, Vec<&str>> = HashMap::new();
    for field in file.fields() {
        by_lower
            .entry(field.name().to_lowercase())
            .or_default()
            .push(field.name());
    }
    let mut renames = Vec::new();
    for (index, field) in table.fields().iter().enumerate() {
        if file.index_of(field.name()).is_ok() {
            continue;
        }
        match by_lower
            .get(&field.name().to_lowercase())
            .map(Vec::as_slice)
        {
            Some([spelling]) => renames.push((index, spelling.to_string())),
            Some([first, second, ..]) => {
                // The schema was unified from files without such pairs: this file
                // changed since.
                return Err(DataFusionError::Execution(format!(
                    "a file has columns {first:?} and {second:?}, whose names differ only \
                     in case, so it cannot be read with case-insensitive names"
                )));
            }
            _ => {}
        }
    }
    Ok(renames)
}

/// `schema` with the columns at the given indices renamed.
fn renamed(schema: &Schema, renames: &[(usize, String)]) -> Schema {
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    for (index, name) in renames {
        fields[*index] = fields[*index].clone().with_name(name);
    }
    Schema::new_with_metadata(fields, schema.metadata().clone())
}

/// A [`PhysicalExprAdapterFactory`] that matches a file's columns to the table's by
/// name regardless of case, then adapts types and missing columns as DataFusion's
/// default adapter does.
#[derive(Debug, Default)]
pub(crate) struct CaseInsensitiveAdapterFactory;

impl PhysicalExprAdapterFactory for CaseInsensitiveAdapterFactory {
    fn create(
        &self,
        logical_file_schema: SchemaRef,
        physical_file_schema: SchemaRef,
    ) -> datafusion::error::Result<Arc<dyn PhysicalExprAdapter>> {
        let renames = file_spellings(&logical_file_schema, &physical_file_schema)?;
        if renames.is_empty() {
            return DefaultPhysicalExprAdapterFactory
                .create(logical_file_schema, physical_file_schema);
        }
        // The default adapter, over the table's columns spelled as in the file: it
        // then finds them by name, casts and fills nulls as usual.
        let respelled = Arc::new(renamed(&logical_file_schema, &renames));
        let inner = DefaultPhysicalExprAdapterFactory.create(respelled, physical_file_schema)?;
        let renames = renames
            .into_iter()
            .map(|(index, spelling)| (logical_file_schema.field(index).name().clone(), spelling))
            .collect();
        Ok(Arc::new(CaseInsensitiveAdapter { renames, inner }))
    }
}

#[derive(Debug)]
struct CaseInsensitiveAdapter {
    /// Table column name → the file's spelling.
    renames: HashMap<String, String>,
    inner: Arc<dyn PhysicalExprAdapter>,
}

impl PhysicalExprAdapter for CaseInsensitiveAdapter {
    fn rewrite(
        &self,
        expr: Arc<dyn PhysicalExpr>,
    ) -> datafusion::error::Result<Arc<dyn PhysicalExpr>> {
        let respelled = expr
            .transform(|e| {
                if let Some(column) = e.downcast_ref::<Column>()
                    && let Some(spelling) = self.renames.get(column.name())
                {
                    let column: Arc<dyn PhysicalExpr> =
                        Arc::new(Column::new(spelling, column.index()));
                    return Ok(Transformed::yes(column));
                }
                Ok(Transformed::no(e))
            })
            .data()?;
        self.inner.rewrite(respelled)
    }
}

/// The Parquet format, computing each file's statistics under the file's own
/// spelling of the table's columns. Everything else is the wrapped format's.
#[derive(Debug)]
pub(crate) struct CaseInsensitiveFormat;

impl CaseInsensitiveFormat {
    /// `inner`, computing statistics under each file's spelling.
    pub(crate) fn wrap(inner: Arc<dyn FileFormat>) -> WrappedFormat<Self> {
        WrappedFormat::new(inner, Self)
    }

    /// `table_schema` spelled as `object` spells its columns. The footer comes from
    /// DataFusion's metadata cache when the scan or the schema inference read it.
    async fn respelled(
        &self,
        inner: &dyn FileFormat,
        state: &dyn DfSession,
        store: &Arc<dyn ObjectStore>,
        table_schema: SchemaRef,
        object: &ObjectMeta,
    ) -> datafusion::error::Result<SchemaRef> {
        let file_schema = inner
            .infer_schema(state, store, std::slice::from_ref(object))
            .await?;
        let renames = file_spellings(&table_schema, &file_schema)?;
        Ok(if renames.is_empty() {
            table_schema
        } else {
            Arc::new(renamed(&table_schema, &renames))
        })
    }
}

#[async_trait]
impl FormatHooks for CaseInsensitiveFormat {
    async fn infer_stats(
        &self,
        inner: &dyn FileFormat,
        state: &dyn DfSession,
        store: &Arc<dyn ObjectStore>,
        table_schema: SchemaRef,
        object: &ObjectMeta,
    ) -> datafusion::error::Result<Statistics> {
        // Statistics are positional (one per table column): computed under the
        // file's spelling they line up with the table's columns.
        let schema = self
            .respelled(inner, state, store, table_schema, object)
            .await?;
        inner.infer_stats(state, store, schema, object).await
    }

    async fn infer_stats_and_ordering(
        &self,
        inner: &dyn FileFormat,
        state: &dyn DfSession,
        store: &Arc<dyn ObjectStore>,
        table_schema: SchemaRef,
        object: &ObjectMeta,
    ) -> datafusion::error::Result<datafusion::datasource::file_format::FileMeta> {
        let statistics = self
            .infer_stats(inner, state, store, Arc::clone(&table_schema), object)
            .await?;
        // Under the table's spelling: an ordering on a column the file spells
        // differently is not found, which only forgoes an optimization.
        let ordering = inner
            .infer_ordering(state, store, table_schema, object)
            .await?;
        Ok(datafusion::datasource::file_format::FileMeta::new(statistics).with_ordering(ordering))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DataType::*;

    fn tz(name: &str) -> Option<Arc<str>> {
        Some(Arc::from(name))
    }

    #[test]
    fn types_unify_by_the_documented_rule() {
        let cases: Vec<(DataType, DataType, Option<DataType>)> = vec![
            (Int32, Int64, Some(Int64)),
            (Int8, UInt8, Some(Int16)),
            (UInt32, Int32, Some(Int64)),
            (UInt64, Int8, None),
            (UInt16, UInt64, Some(UInt64)),
            (Float32, Float64, Some(Float64)),
            (Int32, Float32, Some(Float64)),
            (Int64, Float64, Some(Float64)),
            (Null, Utf8, Some(Utf8)),
            (Utf8, LargeUtf8, Some(LargeUtf8)),
            (LargeUtf8, Utf8View, Some(Utf8View)),
            (Binary, LargeBinary, Some(LargeBinary)),
            (Utf8, Binary, None),
            (Utf8, Int64, None),
            (Boolean, Int32, None),
            (
                Dictionary(Box::new(Int32), Box::new(Utf8)),
                LargeUtf8,
                Some(LargeUtf8),
            ),
            (
                Decimal128(10, 2),
                Decimal128(12, 4),
                Some(Decimal128(12, 4)),
            ),
            (Decimal128(38, 0), Decimal128(38, 10), None),
            (
                Decimal128(38, 0),
                Decimal256(40, 10),
                Some(Decimal256(48, 10)),
            ),
            (Decimal128(10, 2), Float64, None),
            (
                Timestamp(TimeUnit::Microsecond, None),
                Timestamp(TimeUnit::Nanosecond, None),
                Some(Timestamp(TimeUnit::Microsecond, None)),
            ),
            (
                Timestamp(TimeUnit::Millisecond, tz("UTC")),
                Timestamp(TimeUnit::Nanosecond, tz("UTC")),
                Some(Timestamp(TimeUnit::Millisecond, tz("UTC"))),
            ),
            (
                Timestamp(TimeUnit::Microsecond, tz("UTC")),
                Timestamp(TimeUnit::Microsecond, None),
                None,
            ),
            (Timestamp(TimeUnit::Microsecond, None), Float64, None),
            (Date32, Date64, None),
        ];
        for (a, b, expected) in cases {
            assert_eq!(unify_types(&a, &b), expected, "{a} + {b}");
            assert_eq!(unify_types(&b, &a), expected, "{b} + {a} (symmetric)");
        }
    }

    fn file(url: &str, fields: Vec<Field>) -> FileSchema {
        FileSchema {
            url: url.into(),
            schema: Arc::new(Schema::new(fields)),
        }
    }

    #[test]
    fn missing_columns_become_nullable_and_names_keep_the_first_spelling() {
        let files = [
            file(
                "a",
                vec![
                    Field::new("VendorID", Int32, false),
                    Field::new("airport_fee", Float64, false),
                ],
            ),
            file(
                "b",
                vec![
                    Field::new("vendorid", Int64, false),
                    Field::new("Airport_fee", Float64, false),
                    Field::new("cbd_congestion_fee", Float64, false),
                ],
            ),
        ];
        let schema = unify(&files, true).unwrap();
        let fields: Vec<_> = schema
            .fields()
            .iter()
            .map(|f| (f.name().as_str(), f.data_type().clone(), f.is_nullable()))
            .collect();
        assert_eq!(
            fields,
            [
                ("VendorID", Int64, false),
                ("airport_fee", Float64, false),
                ("cbd_congestion_fee", Float64, true),
            ]
        );
        // Case-sensitive: five columns, each missing from one file.
        let schema = unify(&files, false).unwrap();
        assert_eq!(schema.fields().len(), 5);
        assert!(schema.fields().iter().all(|f| f.is_nullable()));
    }

    #[test]
    fn a_conflict_names_the_file_whose_own_type_conflicts() {
        let files = [
            file("a", vec![Field::new("x", Null, true)]),
            file("b", vec![Field::new("x", Int32, true)]),
            file("c", vec![Field::new("x", Utf8, true)]),
        ];
        match unify(&files, false).unwrap_err() {
            Error::SchemaMismatch {
                column,
                first_url,
                first_type,
                second_url,
                second_type,
            } => {
                assert_eq!(column, "x");
                assert_eq!((first_url.as_str(), first_type), ("b", Int32));
                assert_eq!((second_url.as_str(), second_type), ("c", Utf8));
            }
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn two_spellings_in_one_file_are_ambiguous_only_without_case() {
        let files = [file(
            "a",
            vec![
                Field::new("fee", Float64, true),
                Field::new("Fee", Float64, true),
            ],
        )];
        assert_eq!(unify(&files, false).unwrap().fields().len(), 2);
        assert!(matches!(
            unify(&files, true).unwrap_err(),
            Error::AmbiguousColumnNames { .. }
        ));
    }
}
