//! An aggregation flow: trips, fares and tips by vendor and payment type, over taxi
//! Parquet. Locally or on a Ballista cluster (`--runner df://HOST:PORT`, with the cargo
//! feature `ballista`), where it runs as two stages with a shuffle between the executors.
//!
//! ```text
//! cargo run --release --example fares -- --source data/bench/taxi_12000000-4files/
//! cargo run --release --features ballista --example fares -- \
//!     --source s3://taxi/in/ --runner df://127.0.0.1:50050
//! ```

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use sluice::prelude::*;

#[task]
async fn extract(cx: &TaskContext, source: &str) -> Result<Frame> {
    cx.read_parquet(source).await
}

#[task]
async fn summarize(trips: Frame) -> Result<Frame> {
    trips
        .aggregate(
            [col("VendorID"), col("payment_type")],
            [
                count(lit(1)).alias("trips"),
                sum(col("fare_amount")).alias("fares"),
                avg(col("tip_amount")).alias("mean_tip"),
            ],
        )?
        .sort_by(&["VendorID", "payment_type"])
}

#[flow]
async fn fares(source: &str) -> Result<Vec<datafusion::arrow::record_batch::RecordBatch>> {
    let trips = extract(source).await?;
    summarize(trips).await?.collect().await
}

#[derive(Parser, Debug)]
#[command(about = "Trips, fares and tips by vendor and payment type")]
struct Args {
    /// Taxi Parquet: a file, a directory or a glob, as a path or URL.
    #[arg(long)]
    source: String,
    /// `local`, or a Ballista scheduler `df://HOST:PORT`. Default: `$SLUICE_RUNNER`, else local.
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let started = Instant::now();
    let mut call = fares(&args.source).configure(|options| options.with_run_history(false));
    if let Some(runner) = args.runner {
        call = call.with_runner(runner);
    }
    let run = call.run().await;
    let batches = match run.output {
        Ok(batches) => batches,
        Err(e) => {
            eprintln!("error: {}", sluice::one_line(&e));
            return ExitCode::FAILURE;
        }
    };
    match datafusion::arrow::util::pretty::pretty_format_batches(&batches) {
        Ok(table) => println!("{table}"),
        Err(e) => eprintln!("error: cannot print the result: {e}"),
    }
    for task in &run.record.tasks {
        println!(
            "  {:<10} {:?}  rows {:>10}",
            task.name,
            task.state,
            task.executions.iter().map(|e| e.rows).sum::<u64>()
        );
    }
    println!("wall: {:.2} s", started.elapsed().as_secs_f64());
    ExitCode::SUCCESS
}
