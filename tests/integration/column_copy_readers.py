"""Reads a column copy's output with pyarrow, DuckDB and Polars, and checks each sees
what it sees in DataFusion's rewrite of the same frame, and the input's order.

Usage: column_copy_readers.py COPY.parquet REWRITE.parquet INPUT.parquet
Prints "<reader>: ok" per reader; exits non-zero on the first disagreement.
"""
import sys

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

copy, rewrite, source = sys.argv[1:4]

# pyarrow: the whole table, the metadata, the page index, statistics.
table = pq.read_table(copy)
reference = pq.read_table(rewrite)
original = pq.read_table(source)
assert table.num_rows == reference.num_rows == original.num_rows
assert table.column_names == reference.column_names, (table.column_names, reference.column_names)
for name in original.column_names:
    assert table.column(name).equals(original.column(name)), f"{name} is not the input's, in order"
    assert table.schema.field(name).type == original.schema.field(name).type
sort = [(c, "ascending") for c in table.column_names]


def canonical(t):
    # NaN (0 / 0) is not equal to itself: compare it as a sentinel.
    columns = []
    for name in t.column_names:
        column = t.column(name)
        if pa.types.is_floating(column.type):
            column = pc.if_else(pc.is_nan(column), -1e300, column)
        columns.append(column)
    return pa.table(columns, names=t.column_names).sort_by(sort)


assert canonical(table).equals(canonical(reference.cast(table.schema))), "rows differ"
meta = pq.ParquetFile(copy).metadata
for g in range(meta.num_row_groups):
    group = meta.row_group(g)
    for c in range(group.num_columns):
        column = group.column(c)
        assert column.has_offset_index, (g, c)
        stats = column.statistics
        assert stats is not None and stats.has_min_max, (g, column.path_in_schema)
# Filters with statistics and the page index.
filtered = pq.read_table(copy, filters=[("tip_amount", ">", 5.0)])
expected = original.filter(pc.greater(original["tip_amount"], 5.0))
assert filtered.num_rows == expected.num_rows, (filtered.num_rows, expected.num_rows)
print("pyarrow: ok")

# DuckDB: the same multiset, and its own view of the footer.
con = duckdb.connect()
difference = con.execute(
    f"SELECT (SELECT count(*) FROM (SELECT * FROM '{copy}' EXCEPT ALL SELECT * FROM '{rewrite}')),"
    f" (SELECT count(*) FROM (SELECT * FROM '{rewrite}' EXCEPT ALL SELECT * FROM '{copy}')),"
    f" (SELECT count(*) FROM '{copy}' WHERE tip_amount > 5.0)"
).fetchone()
assert difference[:2] == (0, 0), difference
assert difference[2] == expected.num_rows, difference
print("duckdb: ok")

# Polars: eager and streaming reads.
frame = pl.read_parquet(copy)
assert frame.height == original.num_rows
assert frame.drop("tip_fraction").equals(pl.read_parquet(source)), "polars sees other rows"
lazy = pl.scan_parquet(copy).filter(pl.col("tip_amount") > 5.0).select(pl.len()).collect()
assert lazy.item() == expected.num_rows
print("polars: ok")
