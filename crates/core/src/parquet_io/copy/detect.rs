//! Detection: whether a plan only keeps, drops or adds columns of Parquet scans, and
//! its output columns as expressions over the scanned table's.

use super::*;

/// One output column, in terms of the scanned table's columns.
#[derive(Debug, Clone)]
pub(super) struct ShapeColumn {
    pub(super) field: Field,
    /// The expression over unqualified table columns.
    pub(super) expr: Expr,
}

/// A Parquet input a copy reads, with the task boundaries its rows pass.
#[derive(Debug, Clone)]
pub(super) struct Branch {
    pub(super) source: BranchSource,
    /// The table's schema.
    pub(super) schema: SchemaRef,
    pub(super) boundaries: Vec<Arc<TaskBoundary>>,
    /// Each boundary's output columns, as expressions over the table's: a computed
    /// column that fails is the error of the innermost task whose output has it.
    pub(super) outputs: Vec<Vec<Expr>>,
}

/// Where a branch's files come from.
#[derive(Debug, Clone)]
pub(super) enum BranchSource {
    /// A [`ListingTable`]'s files.
    Listing(Arc<dyn TableProvider>),
    /// A task's checkpoint (a cache hit), read through its verifying reads.
    Checkpoint(Arc<dyn CheckpointSource>),
}

/// The shape of a plan the copy can serve: its scans, its output columns, and the
/// checkpoint written of exactly that output, if any.
#[derive(Debug, Clone)]
pub(crate) struct Shape {
    pub(super) branches: Vec<Branch>,
    pub(super) table_schema: SchemaRef,
    pub(super) columns: Vec<ShapeColumn>,
    /// A persisted task whose rows are the plan's: the copy writes its checkpoint from
    /// the units that write the output.
    pub(super) checkpoint: Option<Tee>,
    /// The checkpoint's columns, when they are not the output's (the sink writes some of
    /// the task's columns, or adds to them): the copy writes it as a file of its own.
    pub(super) checkpoint_columns: Option<Vec<ShapeColumn>>,
}

/// A checkpoint tee met on the way down: its task's output columns over the table.
struct Teed {
    tee: Tee,
    exprs: Vec<Expr>,
    fields: Fields,
}

impl Shape {
    /// The plan's shape, or why the copy cannot serve it.
    pub(crate) fn of(plan: &LogicalPlan) -> Result<Shape, String> {
        let mut teed = None;
        let (branches, table_schema, exprs) = walk(plan, &mut teed)?;
        let fields = plan.schema().fields();
        let shape_columns = |exprs: Vec<Expr>, fields: &Fields| -> Vec<ShapeColumn> {
            exprs
                .into_iter()
                .zip(fields.iter())
                .map(|(expr, field)| ShapeColumn {
                    field: field.as_ref().clone(),
                    expr,
                })
                .collect()
        };
        let (checkpoint, checkpoint_columns) = match teed {
            None => (None, None),
            Some(teed) if teed.exprs == exprs && teed.fields == *fields => (Some(teed.tee), None),
            Some(teed) => {
                let columns = shape_columns(teed.exprs, &teed.fields);
                (Some(teed.tee), Some(columns))
            }
        };
        let shape = Shape {
            branches,
            table_schema,
            columns: shape_columns(exprs, fields),
            checkpoint,
            checkpoint_columns,
        };
        if shape.copied().next().is_none() {
            return Err("no column is kept unchanged".into());
        }
        Ok(shape)
    }

    /// The table index of each output column that is a table column unchanged.
    pub(super) fn copied(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.copied_of(&self.columns)
    }

    /// The table index of each of `columns` that is a table column unchanged.
    pub(super) fn copied_of<'a>(
        &'a self,
        columns: &'a [ShapeColumn],
    ) -> impl Iterator<Item = (usize, usize)> + 'a {
        columns.iter().enumerate().filter_map(|(i, c)| {
            let Expr::Column(column) = &c.expr else {
                return None;
            };
            let index = self.table_schema.index_of(&column.name).ok()?;
            let table_field = self.table_schema.field(index);
            (column.name == *c.field.name() && table_field.data_type() == c.field.data_type())
                .then_some((i, index))
        })
    }

    /// One line for `explain`: what a Parquet sink would do with this plan.
    pub(crate) fn describe(&self) -> String {
        let copied: Vec<usize> = self.copied().map(|(i, _)| i).collect();
        let computed: Vec<&str> = self
            .columns
            .iter()
            .enumerate()
            .filter(|(i, _)| !copied.contains(i))
            .map(|(_, c)| c.field.name().as_str())
            .collect();
        let checkpoint = match (&self.checkpoint, &self.checkpoint_columns) {
            (None, _) => String::new(),
            (Some(tee), None) => format!(", written also as task {}'s checkpoint", tee.task()),
            (Some(tee), Some(columns)) => format!(
                ", and task {}'s checkpoint ({} columns) from the same units",
                tee.task(),
                columns.len()
            ),
        };
        format!(
            "column copy: {} column(s) moved as compressed pages, {} computed{}{}{checkpoint} \
             (if the files allow it: same schemas, not encrypted)",
            copied.len(),
            computed.len(),
            if computed.is_empty() { "" } else { ": " },
            computed.join(", ")
        )
    }
}

pub(super) type Walked = (Vec<Branch>, SchemaRef, Vec<Expr>);

/// The table a scan reads, and its output columns as the table's: a scan that filters
/// or limits rows is refused.
fn scanned(scan: &datafusion::logical_expr::TableScan) -> Result<(SchemaRef, Vec<Expr>), String> {
    if !scan.filters.is_empty() || scan.fetch.is_some() {
        return Err("the scan filters or limits rows".into());
    }
    let schema = scan.source.schema();
    let exprs = match &scan.projection {
        Some(p) => columns(&schema, p.iter().copied()),
        None => columns(&schema, 0..schema.fields().len()),
    };
    Ok((schema, exprs))
}

/// Columns `indices` of `schema`, as unqualified column expressions.
fn columns(schema: &Schema, indices: impl Iterator<Item = usize>) -> Vec<Expr> {
    indices
        .map(|i| Expr::Column(Column::new_unqualified(schema.field(i).name())))
        .collect()
}

/// A branch that reads a checkpoint's parts (a hit, or a checkpoint this run wrote),
/// whose table has `schema`.
fn checkpoint_branch(checkpoint: Arc<dyn CheckpointSource>, schema: &SchemaRef) -> Branch {
    Branch {
        source: BranchSource::Checkpoint(checkpoint),
        schema: Arc::clone(schema),
        boundaries: Vec::new(),
        outputs: Vec::new(),
    }
}

/// Walks a plan down to its scans; returns the output columns as expressions over the
/// scanned table's unqualified columns. A checkpoint tee met on the way goes to
/// `teed` (one at most: a second checkpoint holds other rows or columns).
fn walk(plan: &LogicalPlan, teed: &mut Option<Teed>) -> Result<Walked, String> {
    match plan {
        LogicalPlan::TableScan(scan) => {
            let (schema, exprs) = scanned(scan)?;
            let table = Arc::clone(
                &scan
                    .source
                    .downcast_ref::<DefaultTableSource>()
                    .ok_or("the scan is not of a table Sluice reads")?
                    .table_provider,
            );
            let listing = table
                .downcast_ref::<ListingTable>()
                .ok_or("the source is not a file listing")?;
            if listing.options().format.get_ext() != "parquet" {
                return Err("the source is not Parquet".into());
            }
            if !listing.options().table_partition_cols.is_empty() {
                return Err("the source has partition columns".into());
            }
            let branch = Branch {
                source: BranchSource::Listing(table),
                schema: Arc::clone(&schema),
                boundaries: Vec::new(),
                outputs: Vec::new(),
            };
            Ok((vec![branch], schema, exprs))
        }
        LogicalPlan::Extension(extension) => {
            if let Some(tee) = extension.node.as_any().downcast_ref::<CheckpointTee>() {
                // A later sink of a frame whose checkpoint this run has written: its
                // parts are the input, as a hit's are.
                if let Some((checkpoint, schema)) = tee.tee.written() {
                    let exprs = columns(&schema, 0..schema.fields().len());
                    return Ok((vec![checkpoint_branch(checkpoint, &schema)], schema, exprs));
                }
                let walked = walk(&tee.input, teed)?;
                if teed.is_some() {
                    return Err("two checkpoints are written of one output".into());
                }
                *teed = Some(Teed {
                    tee: tee.tee.clone(),
                    exprs: walked.2.clone(),
                    fields: tee.input.schema().fields().clone(),
                });
                return Ok(walked);
            }
            let boundary = extension
                .node
                .as_any()
                .downcast_ref::<TaskBoundary>()
                .ok_or_else(|| format!("the plan has a {} node", extension.node.name()))?;
            let (mut branches, schema, exprs) = match &boundary.checkpoint {
                // A cache hit: the checkpoint's parts are the input.
                Some(checkpoint) => {
                    if checkpoint.reencode() {
                        return Err(format!(
                            "task {}'s checkpoint was written beside a sink that encoded \
                             its rows: they are encoded again, to give that output's row \
                             groups",
                            boundary.task.name()
                        ));
                    }
                    let LogicalPlan::TableScan(scan) = &boundary.input else {
                        return Err("a task's checkpoint is read by a plan of its own".into());
                    };
                    let (schema, exprs) = scanned(scan)?;
                    (
                        vec![checkpoint_branch(Arc::clone(checkpoint), &schema)],
                        schema,
                        exprs,
                    )
                }
                None => walk(&boundary.input, teed)?,
            };
            let boundary = Arc::new(boundary.clone());
            for branch in &mut branches {
                branch.boundaries.push(Arc::clone(&boundary));
                branch.outputs.push(exprs.clone());
            }
            Ok((branches, schema, exprs))
        }
        LogicalPlan::SubqueryAlias(alias) => walk(&alias.input, teed),
        LogicalPlan::Projection(projection) => {
            let (branches, schema, base) = walk(&projection.input, teed)?;
            let input_schema = projection.input.schema();
            let mut exprs = Vec::with_capacity(projection.expr.len());
            for expr in &projection.expr {
                let inlined = expr
                    .clone()
                    .transform_up(|e| match e {
                        Expr::Column(column) => {
                            let index = input_schema.index_of_column(&column)?;
                            Ok(Transformed::yes(base[index].clone()))
                        }
                        Expr::ScalarSubquery(_)
                        | Expr::InSubquery(_)
                        | Expr::Exists(_)
                        | Expr::OuterReferenceColumn(..)
                        | Expr::Placeholder(_)
                        | Expr::AggregateFunction(_)
                        | Expr::WindowFunction(_) => Err(DataFusionError::Plan(
                            "an expression the copy cannot evaluate row by row".into(),
                        )),
                        other => Ok(Transformed::no(other)),
                    })
                    .map_err(|e| format!("a projection cannot be inlined: {e}"))?
                    .data;
                exprs.push(inlined.unalias_nested().data);
            }
            Ok((branches, schema, exprs))
        }
        LogicalPlan::Union(union) => {
            let mut all = Vec::new();
            let mut first: Option<(SchemaRef, Vec<Expr>)> = None;
            for input in &union.inputs {
                let (branches, schema, exprs) = walk(input, teed)?;
                if teed.is_some() {
                    return Err("a checkpoint is written of one of the concatenated inputs".into());
                }
                match &first {
                    None => first = Some((schema, exprs)),
                    Some((first_schema, first_exprs)) => {
                        if first_schema.fields() != schema.fields() || *first_exprs != exprs {
                            return Err("the concatenated inputs differ in their columns".into());
                        }
                    }
                }
                all.extend(branches);
            }
            let (schema, exprs) = first.ok_or("an empty union")?;
            if exprs.iter().any(|e| !matches!(e, Expr::Column(_))) {
                return Err("a concatenated input computes columns".into());
            }
            Ok((all, schema, exprs))
        }
        other => Err(format!(
            "the plan has a {} (rows are not the input's, in its order)",
            other.display()
        )),
    }
}
