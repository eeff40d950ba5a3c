#!/usr/bin/env python3
"""A sluice-bench case in DuckDB: one COPY (SELECT ...) TO ... (FORMAT parquet) statement,
with DuckDB's defaults (all cores, insertion order kept).

Usage: duckdb_case.py {etl,aggregate,rewrite} INPUT OUTPUT
(SLUICE_BENCH_CODEC=snappy for Snappy output; zstd(3) otherwise)
"""
import os
import sys

import duckdb

workload, inp, out = sys.argv[1:4]
queries = {
    "etl": "SELECT *, tip_amount / total_amount AS tip_fraction FROM read_parquet($1)",
    "aggregate": (
        "SELECT PULocationID, hour(tpep_pickup_datetime) AS pickup_hour, "
        "avg(tip_amount / total_amount) AS mean_tip_fraction "
        "FROM read_parquet($1) GROUP BY ALL"
    ),
    "rewrite": "SELECT * FROM read_parquet($1)",
}
if workload not in queries:
    sys.exit(f"unknown workload {workload!r}")
codec = (
    "COMPRESSION snappy"
    if os.environ.get("SLUICE_BENCH_CODEC") == "snappy"
    else "COMPRESSION zstd, COMPRESSION_LEVEL 3"
)
con = duckdb.connect()  # in-memory database
if inp.startswith(("s3://", "http://", "https://")):
    # Remote sources need httpfs (sluice-bench remote checks that it loads); S3 is
    # reached as the AWS_* variables say, path-style, as Sluice and Polars reach it.
    con.execute("LOAD httpfs")
    endpoint = os.environ.get("AWS_ENDPOINT_URL", "")
    if endpoint:
        quote = lambda v: "'" + v.replace("'", "''") + "'"
        con.execute(
            "CREATE SECRET (TYPE s3, KEY_ID {}, SECRET {}, REGION {}, ENDPOINT {}, "
            "URL_STYLE 'path', USE_SSL {})".format(
                quote(os.environ.get("AWS_ACCESS_KEY_ID", "")),
                quote(os.environ.get("AWS_SECRET_ACCESS_KEY", "")),
                quote(os.environ.get("AWS_REGION", "us-east-1")),
                quote(endpoint.split("://", 1)[-1]),
                "true" if endpoint.startswith("https://") else "false",
            )
        )
con.execute(
    "COPY ({}) TO '{}' (FORMAT parquet, {})".format(
        queries[workload], out.replace("'", "''"), codec
    ),
    [inp],
)
