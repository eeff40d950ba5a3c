//! `sluice`: the Sluice command line.
//!
//! A thin shell over the libraries: it parses arguments, installs a log subscriber
//! (logs go to stderr, results to stdout) and prints errors as one line.
//!
//! ```text
//! sluice gen-taxi --rows 3_000_000 --out /tmp/taxi.parquet
//! sluice gen-taxi --rows 10_000_000 --files 8 --out /tmp/taxi/
//! sluice serve-s3 --root /tmp/buckets --port 9000    # prints the AWS_* exports
//! sluice serve-http --root /tmp/files
//! ```

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use sluice_testkit::taxi::{Compression, TaxiGenOptions, write_taxi_parquet};
use tracing_subscriber::EnvFilter;

/// Sluice: lazy dataflows on Apache DataFusion.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about, propagate_version = true)]
struct Cli {
    /// Log more to stderr (-v: info, -vv: debug); `RUST_LOG` overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate deterministic NYC yellow-taxi trips (2023 TLC schema) as Parquet.
    GenTaxi(GenTaxiArgs),
    /// Serve a directory as an S3-compatible endpoint on loopback (each folder a
    /// bucket), for trying S3 flows locally. Runs until interrupted.
    ServeS3(ServeArgs),
    /// Serve a directory over HTTP with range requests on loopback. Runs until interrupted.
    ServeHttp(ServeArgs),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// The directory to serve.
    #[arg(long)]
    root: PathBuf,
    /// The loopback port (0: any free port).
    #[arg(long, default_value_t = 0)]
    port: u16,
}

#[derive(Debug, Args)]
struct GenTaxiArgs {
    /// Number of rows in total; `_` separators allowed (3_000_000).
    #[arg(long, value_parser = parse_count)]
    rows: u64,

    /// Number of files. With 1 and an `--out` ending in `.parquet`, `--out` is the file;
    /// otherwise `--out` is a directory receiving part-00000.parquet, ...
    #[arg(long, default_value_t = 1)]
    files: usize,

    /// Output file or directory.
    #[arg(long)]
    out: PathBuf,

    /// Seed: the same rows and seed always give the same data.
    #[arg(long, default_value_t = TaxiGenOptions::default().seed)]
    seed: u64,

    /// Rows per record batch handed to the Parquet writer.
    #[arg(long, value_parser = parse_count, default_value_t = TaxiGenOptions::default().batch_rows as u64)]
    batch_rows: u64,

    /// Maximum rows per Parquet row group.
    #[arg(long, value_parser = parse_count, default_value_t = TaxiGenOptions::default().row_group_rows as u64)]
    row_group_rows: u64,

    /// Parquet compression: snappy, zstd(LEVEL), lz4_raw, gzip(LEVEL), uncompressed, ...
    #[arg(long, default_value = "snappy", value_parser = parse_compression)]
    compression: Compression,
}

fn parse_count(s: &str) -> Result<u64, String> {
    s.replace('_', "")
        .parse()
        .map_err(|err| format!("expected a whole number such as 3_000_000: {err}"))
}

fn parse_compression(s: &str) -> Result<Compression, String> {
    s.parse().map_err(|err| format!("{err}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::GenTaxi(args) => gen_taxi(args),
        Command::ServeS3(args) => serve(args, true),
        Command::ServeHttp(args) => serve(args, false),
    }
}

fn serve(args: ServeArgs, s3: bool) -> anyhow::Result<()> {
    use sluice_testkit::servers::{HttpFileServer, S3Server};
    let runtime = tokio::runtime::Runtime::new().context("could not start a runtime")?;
    runtime.block_on(async {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], args.port));
        // Keep the server alive until interrupted.
        let _server: Box<dyn std::fmt::Debug> = if s3 {
            let server = S3Server::start_at(&args.root, addr).await?;
            println!(
                "S3 endpoint {} serving {}",
                server.endpoint(),
                args.root.display()
            );
            for (key, value) in server.env() {
                println!("export {key}={value}");
            }
            Box::new(server)
        } else {
            let server = HttpFileServer::start_on(&args.root, addr, true).await?;
            println!(
                "HTTP server {} serving {}",
                server.url(""),
                args.root.display()
            );
            Box::new(server)
        };
        tokio::signal::ctrl_c()
            .await
            .context("waiting for Ctrl-C")?;
        anyhow::Ok(())
    })
}

fn gen_taxi(args: GenTaxiArgs) -> anyhow::Result<()> {
    let to_usize = |name: &str, value: u64| {
        usize::try_from(value).with_context(|| format!("--{name} {value} is too large"))
    };
    let opts = TaxiGenOptions::new(args.rows)
        .with_files(args.files)
        .with_seed(args.seed)
        .with_batch_rows(to_usize("batch-rows", args.batch_rows)?)
        .with_row_group_rows(to_usize("row-group-rows", args.row_group_rows)?)
        .with_compression(args.compression);
    let started = Instant::now();
    let summary = write_taxi_parquet(&args.out, &opts)
        .with_context(|| format!("could not generate taxi data into {}", args.out.display()))?;
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "wrote {} rows in {} file(s), {} bytes ({:.1} MiB) to {} in {:.2} s ({:.2} M rows/s)",
        summary.rows,
        summary.files.len(),
        summary.bytes,
        summary.bytes as f64 / (1024.0 * 1024.0),
        args.out.display(),
        seconds,
        summary.rows as f64 / seconds.max(1e-9) / 1e6,
    );
    Ok(())
}
