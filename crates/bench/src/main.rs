//! `sluice-bench`: Sluice's benchmark runner.
//!
//! Runs the seed ETL, an aggregation and a plain rewrite of generated taxi data in
//! Sluice's lazy and eager modes, in plain DataFusion (the overhead floor), and in
//! Polars and DuckDB (the peers), each run as its own process, and writes
//! `docs/BENCHMARKS.md` with tables, goals and two SVG plots.
//!
//! ```text
//! cargo run --release -p sluice-bench -- run                 # 3M and 12M rows, curve to 48M
//! cargo run --release -p sluice-bench -- run --rows 1000000 --curve-rows --runs 1
//! cargo run --release -p sluice-bench -- report              # re-render from docs/bench/results.json
//! cargo run --release -p sluice-bench -- case etl lazy --input in.parquet --output out.parquet
//! ```
//!
//! The per-task micro-benchmarks are criterion benches: `cargo bench -p sluice-bench`.

mod cases;
mod cluster;
mod measure;
mod plots;
mod remote;
mod report;
mod runner;
mod ui;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::cases::{Engine, Workload};

/// Sluice's benchmarks: wall time and peak RSS of whole processes, with a report.
#[derive(Debug, Parser)]
#[command(name = "sluice-bench", about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run every case (each as its own process, several times), write the report and
    /// print its path.
    Run(runner::RunArgs),
    /// Re-render the report from the results a `run` saved.
    Report {
        /// The report directory of that run.
        #[arg(long, default_value = "docs")]
        out: PathBuf,
    },
    /// Run one case of Sluice or plain DataFusion in this process (what `run` spawns).
    Case {
        /// What to compute.
        workload: Workload,
        /// `lazy`, `eager` or `datafusion`.
        engine: Engine,
        /// Input Parquet.
        #[arg(long)]
        input: PathBuf,
        /// Output Parquet file.
        #[arg(long)]
        output: PathBuf,
        /// Result store of the `persisted` and `cache-hit` engines.
        #[arg(long)]
        cache: Option<PathBuf>,
        /// Where Sluice's plans run: a Ballista cluster's scheduler `df://HOST:PORT`
        /// (the `lazy` and `eager` engines; a build with the feature `ballista`).
        #[arg(long, value_parser = sluice::Runner::parse)]
        runner: Option<sluice::Runner>,
        /// Write the flow-run record as JSON here (the `lazy` and `eager` engines).
        #[arg(long)]
        record: Option<PathBuf>,
    },
    /// The cluster series: the seed ETL on one scheduler and two executors of this
    /// machine (each a process of the `sluice` binary beside this one) against the same
    /// flow run locally, on local disk or on S3 with latency added (`--store s3
    /// --latency-ms 0,25,100`); writes `bench/cluster.md` (`bench/cluster-s3.md`) under
    /// `--out` and prints its path.
    Cluster(cluster::ClusterArgs),
    /// The remote series: the seed ETL and the aggregation over S3 and HTTP with latency
    /// added per request, beside Polars and DuckDB, requests and bytes counted; writes
    /// `bench/remote.md` and its plot under `--out` and prints the table's path.
    Remote(remote::RemoteArgs),
    /// The web view's series: server and browser load times of `sluice ui`'s run list
    /// with 10,000 runs in the store and of a run of 1,000 mapped calls; writes
    /// `bench/ui.md` under `--out` and prints its path.
    Ui(ui::UiArgs),
    /// Run a command as this process's only child; print its wall time and peak RSS as JSON.
    Measure {
        /// The command and its arguments.
        #[arg(trailing_var_arg = true, required = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
}

fn main() -> ExitCode {
    // Before any thread starts, as Sluice's other binaries (see `tune_allocator`): the
    // engines measured in other processes (Polars, DuckDB, pandas) are not affected.
    sluice::tune_allocator();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match dispatch(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let error: &(dyn std::error::Error + 'static) = e.as_ref();
            eprintln!("error: {}", sluice::one_line(error));
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => {
            let exe = std::env::current_exe()?;
            let results = runner::run(&exe, &args)?;
            report::write(&results, &args.out)?;
            println!("{}", args.out.join("BENCHMARKS.md").display());
        }
        Command::Report { out } => {
            let results = runner::Results::load(&out)?;
            report::write(&results, &out)?;
            println!("{}", out.join("BENCHMARKS.md").display());
        }
        Command::Case {
            workload,
            engine,
            input,
            output,
            cache,
            runner,
            record,
        } => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(cases::run_case(
                workload,
                engine,
                &input,
                &output,
                cache.as_deref(),
                runner,
                record.as_deref(),
            ))?;
        }
        Command::Cluster(args) => {
            let exe = std::env::current_exe()?;
            println!("{}", cluster::run_series(&exe, &args)?.display());
        }
        Command::Remote(args) => {
            let exe = std::env::current_exe()?;
            let results = remote::run(&exe, &args)?;
            remote::write(&results, &args.out)?;
            let bench = args.out.join("bench");
            plots::wall_vs_latency(&results, &bench.join(remote::LATENCY_PLOT))?;
            println!("{}", bench.join("remote.md").display());
        }
        Command::Ui(args) => {
            println!("{}", ui::run_series(&args)?.display());
        }
        Command::Measure { command } => {
            let measured = measure::measure_here(&command)?;
            println!("{}", serde_json::to_string(&measured)?);
        }
    }
    Ok(())
}
