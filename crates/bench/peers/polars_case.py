#!/usr/bin/env python3
"""A sluice-bench case in Polars' streaming engine: scan_parquet -> ... -> sink_parquet.

Usage: polars_case.py {etl,aggregate,rewrite} INPUT OUTPUT
(SLUICE_BENCH_CODEC=snappy for Snappy output; zstd(3) otherwise)
"""
import os
import sys

import polars as pl

workload, inp, out = sys.argv[1:4]
lf = pl.scan_parquet(inp)
if workload in ("etl", "aggregate"):
    lf = lf.with_columns((pl.col("tip_amount") / pl.col("total_amount")).alias("tip_fraction"))
if workload == "aggregate":
    lf = lf.group_by(
        pl.col("PULocationID"), pl.col("tpep_pickup_datetime").dt.hour().alias("pickup_hour")
    ).agg(pl.col("tip_fraction").mean().alias("mean_tip_fraction"))
elif workload != "etl" and workload != "rewrite":
    sys.exit(f"unknown workload {workload!r}")
if os.environ.get("SLUICE_BENCH_CODEC") == "snappy":
    lf.sink_parquet(out, compression="snappy")
else:
    lf.sink_parquet(out, compression="zstd", compression_level=3)
