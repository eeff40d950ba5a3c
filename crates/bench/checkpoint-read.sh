#!/usr/bin/env bash
# What reading a checkpoint costs: the seed ETL's cache hit (transform read from its
# checkpoint, extract skipped), each run as its own process through `sluice-bench measure`
# (wall, peak RSS).
#
#   - local disk: a hit with the checkpoint's block checksums checked, and without
#     (`SLUICE_BENCH_VERIFY=0`): what verification costs;
#   - S3 (`sluice serve-s3` on loopback) through `sluice serve-proxy` adding LATENCY to
#     every request: a persisted run writing its checkpoint there, then the hit; the
#     wall, the requests and bytes the proxy relayed, and the CPU time the server and
#     the proxy spent meanwhile (on this machine they share its cores with the run);
#   - the plain run (no checkpoint, local disk) beside them, for ratios within one run.
#
# The checkpoint's format is SLUICE_BENCH_CHECKPOINT_CODEC's (see `sluice-bench`'s
# cases; `snappy+dict+stats` makes the hit a column copy), Sluice's default without it.
#
# Usage (after the release build: `cargo build --release --workspace --features
# ballista,sluice-cli/ballista --bins --examples`):
#   crates/bench/checkpoint-read.sh [ROWS] [RUNS] [LATENCY...]
#   crates/bench/checkpoint-read.sh 12000000 3 0ms 25ms
# Environment: BIN (the release directory whose `sluice-bench` and `examples/etl` are
# measured; default $CARGO_TARGET_DIR/release), TOOLS (the release directory whose
# `sluice` serves S3 and the proxy; default BIN).
set -euo pipefail
cd "$(dirname "$0")/../.."

ROWS="${1:-3000000}"
RUNS="${2:-3}"
shift 2 2>/dev/null || true
LATENCIES=("${@:-0ms}")
BIN="${BIN:-${CARGO_TARGET_DIR:-target}/release}"
TOOLS="${TOOLS:-$BIN}"
ROOT="$(mktemp -d "${TMPDIR:-/tmp}/sluice-checkpoint-bench.XXXXXX")"
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; rm -rf "$ROOT"' EXIT

json() { python3 -c "import json,sys; print(json.loads(sys.argv[1])['$2'])" "$1"; }
# median_row LABEL VALUES...: "label | median wall | range | median RSS".
row() {
  python3 - "$@" <<'PY'
import statistics, sys
label, walls, rss = sys.argv[1], [float(x) for x in sys.argv[2].split()], [float(x) for x in sys.argv[3].split()]
extra = " | ".join(sys.argv[4:])
print(f"| {label} | {statistics.median(walls):.2f} s | {min(walls):.2f}-{max(walls):.2f} s | {statistics.median(rss):.0f} MiB | {extra} |")
PY
}

mkdir -p "$ROOT/buckets/bench"
"$TOOLS/sluice" gen-taxi --rows "$ROWS" --out "$ROOT/taxi.parquet" >/dev/null

echo "| case | wall (median) | range | peak RSS | requests, bytes | server + proxy CPU |"
echo "|---|---:|---:|---:|---|---:|"

# Local disk: persist once, then hits with and without the checksums.
CASE=("$BIN/sluice-bench" case etl)
walls=() rss=()
for _ in $(seq "$RUNS"); do
  out=$("$BIN/sluice-bench" measure -- "${CASE[@]}" lazy --input "$ROOT/taxi.parquet" \
    --output "$ROOT/plain.parquet")
  walls+=("$(json "$out" wall_s)"); rss+=("$(json "$out" peak_rss_mib)")
done
row "plain (no checkpoint)" "${walls[*]}" "${rss[*]}" "-" "-"
"${CASE[@]}" persisted --input "$ROOT/taxi.parquet" --output "$ROOT/out.parquet" --cache "$ROOT/cache"
for verify in 1 0; do
  walls=() rss=()
  for _ in $(seq "$RUNS"); do
    out=$(SLUICE_BENCH_VERIFY=$verify "$BIN/sluice-bench" measure -- "${CASE[@]}" cache-hit \
      --input "$ROOT/taxi.parquet" --output "$ROOT/out.parquet" --cache "$ROOT/cache")
    walls+=("$(json "$out" wall_s)"); rss+=("$(json "$out" peak_rss_mib)")
  done
  row "local hit, checksums $([ "$verify" = 1 ] && echo on || echo off)" "${walls[*]}" "${rss[*]}" "-" "-"
done

# S3 through the proxy.
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$TOOLS/sluice" serve-s3 --root "$ROOT/buckets" --port "$PORT" >"$ROOT/server.out" &
SERVER=$!
PIDS+=("$SERVER")
for _ in $(seq 50); do grep -q '^export' "$ROOT/server.out" 2>/dev/null && break; sleep 0.1; done
eval "$(grep '^export' "$ROOT/server.out")"
S3_ENDPOINT="$AWS_ENDPOINT_URL"
# The checkpoint, written straight to the server (in the format
# SLUICE_BENCH_CHECKPOINT_CODEC names, as the local cases').
"${CASE[@]}" persisted --input "$ROOT/taxi.parquet" --output "$ROOT/out.parquet" --cache s3://bench/cache/
PERSIST=("${CASE[@]}" persisted --input "$ROOT/taxi.parquet" --output "$ROOT/out.parquet" --cache s3://bench/cache/)
HIT=("${CASE[@]}" cache-hit --input "$ROOT/taxi.parquet" --output "$ROOT/out.parquet" --cache s3://bench/cache/)
# CPU seconds (user + system) process $1 has used.
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$1/stat"; }
# measure_through_proxy LATENCY CMD...: one run through a fresh proxy; sets OUT, COUNTS and
# SIDE_CPU (the server's and the proxy's CPU seconds during the run).
measure_through_proxy() {
  local latency=$1; shift
  "$TOOLS/sluice" serve-proxy --upstream "$S3_ENDPOINT" --latency "$latency" >"$ROOT/proxy.out" &
  local proxy=$!
  for _ in $(seq 50); do grep -q '^proxy' "$ROOT/proxy.out" 2>/dev/null && break; sleep 0.1; done
  local endpoint
  endpoint=$(sed -n 's/^proxy \([^ ]*\) .*/\1/p' "$ROOT/proxy.out")
  local server_before
  server_before=$(cpu_s "$SERVER")
  OUT=$(AWS_ENDPOINT_URL="$endpoint" "$BIN/sluice-bench" measure -- "$@")
  SIDE_CPU=$(python3 -c 'import sys; b, a, p = map(float, sys.argv[1:]); print(f"{a - b + p:.2f}")' \
    "$server_before" "$(cpu_s "$SERVER")" "$(cpu_s "$proxy")")
  kill -INT "$proxy"; wait "$proxy" || true
  COUNTS=$(tail -n 1 "$ROOT/proxy.out")
}
for latency in "${LATENCIES[@]}"; do
  # A persisted run writes the checkpoint to S3 (the last one stays for the hits).
  for label in persisted hit; do
    walls=() rss=() requests=() bytes=() side=()
    for _ in $(seq "$RUNS"); do
      if [ "$label" = persisted ]; then
        measure_through_proxy "$latency" "${PERSIST[@]}"
      else
        measure_through_proxy "$latency" "${HIT[@]}"
      fi
      walls+=("$(json "$OUT" wall_s)"); rss+=("$(json "$OUT" peak_rss_mib)")
      requests+=("$(json "$COUNTS" requests)"); bytes+=("$(json "$COUNTS" body_bytes)")
      side+=("$SIDE_CPU")
    done
    row "S3 ${label}, ${latency} per request" "${walls[*]}" "${rss[*]}" \
      "${requests[0]} requests, $((bytes[0] / 1048576)) MiB" \
      "$(printf '%s\n' "${side[@]}" | sort -n | sed -n "$(( (${#side[@]} + 1) / 2 ))p") s"
  done
done
