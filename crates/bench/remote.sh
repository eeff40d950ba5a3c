#!/usr/bin/env bash
# The seed ETL in the mission's own setting: S3 -> S3, against an S3 server run as its
# own process (`sluice serve-s3`, the s3s-fs server the tests embed) on loopback.
#
# Measures, each as its own process through `sluice-bench measure` (wall, peak RSS):
#   - Sluice lazy, cold (no cache);
#   - Sluice lazy with `transform` persisted to an S3 result store (the tee), cold;
#   - the same again: a cache hit (transform read from S3, extract skipped);
#   - Polars' streaming engine, `scan_parquet` -> `sink_parquet` on the same endpoint.
#
# Usage (after `cargo build --release --workspace --bins --examples`):
#   crates/bench/remote.sh [ROWS] [RUNS]
# Environment: CARGO_TARGET_DIR (default: target), SLUICE_BENCH_PYTHON (a Python with
# polars; the Polars case is skipped without it).
set -euo pipefail
cd "$(dirname "$0")/../.."

ROWS="${1:-3000000}"
RUNS="${2:-3}"
BIN="${CARGO_TARGET_DIR:-target}/release"
PY="${SLUICE_BENCH_PYTHON:-python3}"
ROOT="$(mktemp -d "${TMPDIR:-/tmp}/sluice-remote-bench.XXXXXX")"
PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

mkdir -p "$ROOT/bench"
"$BIN/sluice" gen-taxi --rows "$ROWS" --out "$ROOT/bench/taxi.parquet" >/dev/null
"$BIN/sluice" serve-s3 --root "$ROOT" --port "$PORT" >"$ROOT/server.out" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; rm -rf "$ROOT"' EXIT
for _ in $(seq 50); do grep -q '^export' "$ROOT/server.out" 2>/dev/null && break; sleep 0.1; done
# The endpoint and the key pair the server accepts, as `export AWS_...=...` lines.
eval "$(grep '^export' "$ROOT/server.out")"

field() { "$PY" -c "import json,sys; print(json.loads(sys.argv[1])['$2'])" "$1"; }
none() { :; }
fresh_cache() { CACHE="s3://bench/cache-$RANDOM$RANDOM/"; }
# case LABEL SETUP COMMAND...: one unmeasured run, then RUNS measured ones, SETUP before
# each; prints a table row with the median wall, its range and the median peak RSS.
case_row() {
  local label=$1 setup=$2; shift 2
  local walls=() rss=() out
  $setup
  "$@" ${CACHE:+--cache "$CACHE"} >/dev/null 2>&1 || { echo "| $label | failed | | |"; return; }
  for _ in $(seq "$RUNS"); do
    $setup
    out=$("$BIN/sluice-bench" measure -- "$@" ${CACHE:+--cache "$CACHE"})
    walls+=("$(field "$out" wall_s)")
    rss+=("$(field "$out" peak_rss_mib)")
  done
  "$PY" - "$label" "${walls[*]}" "${rss[*]}" <<'PY'
import statistics, sys
label = sys.argv[1]
walls = [float(x) for x in sys.argv[2].split()]
rss = [float(x) for x in sys.argv[3].split()]
print(f"| {label} | {statistics.median(walls):.2f} s | {min(walls):.2f}-{max(walls):.2f} s | {statistics.median(rss):.0f} MiB |")
PY
}

SRC="s3://bench/taxi.parquet"
ETL=("$BIN/examples/etl" --source "$SRC")
echo "S3 -> S3 seed ETL, $ROWS rows, median of $RUNS runs after one unmeasured run"
echo
echo "| case | wall | wall min-max | peak RSS |"
echo "|---|---:|---:|---:|"
CACHE=""
case_row "Sluice lazy, cold" none "${ETL[@]}" --dest s3://bench/out/sluice.parquet
# Each persisted run gets an empty result store: a miss that writes the checkpoint.
case_row "Sluice lazy, transform persisted to S3 (tee), cold" fresh_cache \
  "${ETL[@]}" --dest s3://bench/out/persisted.parquet
CACHE="s3://bench/cache/"
case_row "Sluice lazy, S3 cache hit" none "${ETL[@]}" --dest s3://bench/out/hit.parquet
CACHE=""
if "$PY" -c 'import polars' 2>/dev/null; then
  case_row "Polars streaming" none \
    "$PY" crates/bench/peers/polars_case.py etl "$SRC" s3://bench/out/polars.parquet
else
  echo "| Polars streaming | skipped: no polars in $PY | | |"
fi
