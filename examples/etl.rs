//! The seed ETL: read taxi trips from Parquet, add `tip_fraction = tip_amount /
//! total_amount` (every input column kept), write Parquet (zstd).
//!
//! This is the Prefect program from the "Big data with Prefect" guide, as a Sluice flow:
//! three tasks and one flow. In lazy mode (the default) the three tasks compose into one
//! DataFusion plan that streams when `load` writes; in eager mode each task's output is
//! collected in memory first, as Prefect does.
//!
//! ```text
//! cargo run --release --example etl                 # 3M generated rows in ./data
//! cargo run --release --example etl -- --source data/in.parquet --dest out.parquet \
//!     --mode eager --summary run.json
//! cargo run --release --example etl -- --cache .sluice/   # transform's output checkpointed;
//!                                                        # the next run reads it instead
//! cargo run --release --example etl -- --source store://nyc/2023/09.parquet \
//!     --dest store://nyc/tips/2023/09.parquet   # a store named in sluice.toml
//! cargo run --release --features ballista --example etl -- --runner df://127.0.0.1:50050 \
//!     --source s3://taxi/in/ --dest s3://taxi/out/tip.parquet   # on a Ballista cluster
//! ```
//!
//! Locations may name a store of the settings (`store://NAME/…`, with `[stores.NAME]` in a
//! `sluice.toml` here or in a parent: endpoint, region, credentials by reference; see
//! docs/settings.md), as the Prefect original loads its storage by block name.
//!
//! With no `--source`, it generates `--rows` rows (3,000,000 by default) of taxi data
//! once into `data/`. On failure it exits non-zero with a one-line error that names the
//! task and the object; nothing is left at the destination.
//!
//! Every run is recorded in `.sluice/` (or `--run-store URL`): `sluice runs ls` lists
//! them. Ctrl-C (or SIGTERM) stops the run within a second, publishes nothing, records
//! it `Cancelled` and exits 130 (143 for SIGTERM). `--timeout 10m` bounds the run.
//! Progress shows as bars on a terminal and as a line every 5 s otherwise
//! (`--progress`); `--source` may be given more than once.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use sluice::prelude::*;

#[task]
async fn extract(cx: &TaskContext, source: &str) -> Result<Frame> {
    cx.read_parquet(source).await // lazy: reads footers only
}

// Persisted (with `--cache`): the output is checkpointed while it streams to `load`,
// and a later run with the same source and code reads the checkpoint instead.
#[task(persist)]
async fn transform(df: Frame) -> Result<Frame> {
    // IEEE division, as pandas: x/0 = ±inf, 0/0 = NaN, null in → null out.
    df.with_column("tip_fraction", col("tip_amount") / col("total_amount"))
}

// Retried on errors a new attempt may fix (network, throttling): the write reruns the
// plan; a checkpoint `transform` committed is read, not recomputed.
#[task(retries = 2, retry_delay = RetryDelay::exponential(Duration::from_secs(1)))]
async fn load(df: Frame, dest: &str, options: ParquetWrite) -> Result<WriteSummary> {
    df.write_parquet(dest, options).await // the whole chain runs here, streaming
}

#[flow]
async fn etl(sources: Vec<String>, dest: &str, options: ParquetWrite) -> Result<WriteSummary> {
    // One `extract` per source, run concurrently; their frames union lazily into one plan.
    let parts = map(&sources, |source| extract(source)).await?;
    let raw = Frame::concat(parts)?;
    let df = transform(raw).await?;
    load(df, dest, options).await
}

#[derive(Parser, Debug)]
#[command(about = "The seed ETL: taxi Parquet → tip_fraction → Parquet (zstd)")]
struct Args {
    /// Input: a Parquet file, a directory or a glob, as a path or URL; give it more
    /// than once to map `extract` over several (twelve monthly files, say). Default:
    /// generated taxi data in `data/`.
    #[arg(long)]
    source: Vec<String>,
    /// Output: a `.parquet` file, or a directory (trailing `/`), as a path or URL.
    #[arg(long, default_value = "data/out/yellow_tripdata_tip_fraction.parquet")]
    dest: String,
    /// `lazy` (stream the whole chain) or `eager` (collect each task's output).
    #[arg(long, default_value = "lazy")]
    mode: ExecutionMode,
    /// Write the flow-run record as JSON to this file.
    #[arg(long)]
    summary: Option<PathBuf>,
    /// Rows to generate when no `--source` is given.
    #[arg(long, default_value_t = 3_000_000)]
    rows: u64,
    /// Rows per output row group (default: 262,144, `ParquetWrite::DEFAULT_ROW_GROUP_ROWS`).
    #[arg(long)]
    row_group_rows: Option<usize>,
    /// zstd level of the output.
    #[arg(long, default_value_t = 3)]
    zstd_level: i32,
    /// Checkpoint `transform` to this result store (a path or URL: `s3://bucket/prefix/`)
    /// and read it from there on the next run. Without it nothing is persisted.
    #[arg(long)]
    cache: Option<String>,
    /// Progress on standard error: `auto` (bars on a terminal, else a line every 5 s),
    /// `bars`, `lines`, `lines:2s` or `off`.
    #[arg(long, default_value = "auto")]
    progress: Progress,
    /// Record the run in this run store (a path or URL) instead of `.sluice/`.
    #[arg(long)]
    run_store: Option<String>,
    /// Fail the run if it takes longer than this (`90s`, `10m`).
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// Where the plans run: `local`, or a Ballista cluster's scheduler `df://HOST:PORT`
    /// (a build with the cargo feature `ballista`; see docs/cluster.md).
    /// Default: `$SLUICE_RUNNER`, else local.
    #[arg(long, value_parser = sluice::Runner::parse)]
    runner: Option<sluice::Runner>,
}

fn main() -> ExitCode {
    // `#[tokio::main]`, with the allocator tuned before any thread starts.
    sluice::block_on(main_async()).unwrap_or_else(|e| {
        eprintln!("error: cannot start the async runtime: {e}");
        ExitCode::FAILURE
    })
}

async fn main_async() -> ExitCode {
    // Logs honour RUST_LOG and go around the progress bars; log lines emitted inside a
    // task (INFO and up) are also kept in the run record.
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_writer(ProgressWriter)
                .with_filter(filter),
        )
        .with(RunLogLayer::default())
        .init();
    // Sluice turns panics inside query execution (say, a decoder choking on a malformed
    // file) into errors that name the task and the file; keep them out of the output.
    std::panic::set_hook(Box::new(|info| tracing::debug!(%info, "caught panic")));
    // Ctrl-C and SIGTERM cancel the run; the exit status says which (128 + signal).
    let cancel = CancellationToken::new();
    let signal = Arc::new(AtomicU8::new(0));
    tokio::spawn(cancel_on_signal(cancel.clone(), Arc::clone(&signal)));
    match run(Args::parse(), cancel).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Each cause once, outermost first.
            let error: &(dyn std::error::Error + 'static) = e.as_ref();
            eprintln!("error: {}", sluice::one_line(error));
            match signal.load(Ordering::Acquire) {
                0 => ExitCode::FAILURE,
                signal => ExitCode::from(128 + signal),
            }
        }
    }
}

/// Cancels `token` on the first SIGINT or SIGTERM, noting which.
async fn cancel_on_signal(token: CancellationToken, signal: Arc<AtomicU8>) {
    use tokio::signal::unix::{SignalKind, signal as unix_signal};
    let (Ok(mut interrupt), Ok(mut terminate)) = (
        unix_signal(SignalKind::interrupt()),
        unix_signal(SignalKind::terminate()),
    ) else {
        tracing::warn!("cannot listen for signals; Ctrl-C will not stop the run cleanly");
        return;
    };
    let number = tokio::select! {
        _ = interrupt.recv() => 2,
        _ = terminate.recv() => 15,
    };
    signal.store(number, Ordering::Release);
    eprintln!("stopping: the run is cancelled, nothing it was writing will be published");
    token.cancel();
}

async fn run(args: Args, cancel: CancellationToken) -> anyhow::Result<()> {
    let sources = if args.source.is_empty() {
        vec![generated_source(args.rows).await?]
    } else {
        args.source.clone()
    };
    let mut options = ParquetWrite::zstd(args.zstd_level);
    if let Some(rows) = args.row_group_rows {
        options = options.with_row_group_rows(rows);
    }
    let started = Instant::now();
    let mut call = etl(sources, &args.dest, options)
        .with_mode(args.mode)
        .with_checkpoints(args.cache.is_some())
        .with_cancellation(cancel)
        .with_progress(args.progress);
    if let Some(store) = &args.cache {
        call = call.with_result_store(store);
    }
    if let Some(store) = &args.run_store {
        call = call.with_run_store(store);
    }
    if let Some(limit) = args.timeout {
        call = call.with_timeout(limit);
    }
    if let Some(runner) = args.runner.clone() {
        call = call.with_runner(runner);
    }
    let run = call.run().await;
    let wall = started.elapsed();
    if let Some(path) = &args.summary {
        std::fs::write(path, serde_json::to_vec_pretty(&run.record)?)
            .map_err(|e| anyhow::anyhow!("cannot write the summary to {}: {e}", path.display()))?;
    }
    println!(
        "run {} {:?} (`sluice runs show {}`)",
        run.record.run_id,
        run.record.state,
        &run.record.run_id[..8]
    );
    let written = run.output?;
    println!(
        "flow {} ({} mode) completed in {:.2} s: {} rows → {} ({:.1} MiB)",
        run.record.flow,
        run.record.mode,
        wall.as_secs_f64(),
        written.rows,
        written.url,
        written.bytes as f64 / (1 << 20) as f64,
    );
    for task in &run.record.tasks {
        println!(
            "  {:<10} {:<10} rows {:>12} busy {:>9.1} ms",
            task.name,
            format!("{:?}", task.state),
            task.rows
                .map(|r| r.to_string())
                .unwrap_or_else(|| "-".into()),
            task.busy_ms,
        );
    }
    if let Some(peak) = peak_rss_bytes() {
        println!("peak RSS: {:.1} MiB", peak as f64 / (1 << 20) as f64);
    }
    Ok(())
}

/// Generates taxi data once into `data/` and returns its path.
async fn generated_source(rows: u64) -> anyhow::Result<String> {
    let path = PathBuf::from(format!("data/yellow_tripdata_synthetic_{rows}.parquet"));
    if !path.exists() {
        std::fs::create_dir_all("data")?;
        eprintln!(
            "generating {rows} rows of taxi data into {}",
            path.display()
        );
        let out = path.clone();
        tokio::task::spawn_blocking(move || {
            sluice_testkit::taxi::write_taxi_parquet(
                &out,
                &sluice_testkit::taxi::TaxiGenOptions::new(rows),
            )
        })
        .await??;
    }
    Ok(path.display().to_string())
}

/// This process's peak resident set size (Linux's `VmHWM`, what `getrusage` reports
/// as `ru_maxrss`).
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
