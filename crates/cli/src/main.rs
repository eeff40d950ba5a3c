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
//! sluice cache ls --store s3://bucket/sluice/         # checkpoints: task, key, rows, size, ...
//! sluice cache show --store .sluice/ transform 3f2a    # one manifest (a key prefix will do)
//! sluice cache gc --store .sluice/ --grace 90m         # expired, orphaned and stale objects
//! sluice cache clear --store .sluice/ --task transform
//! sluice runs ls --flow etl --state failed --since 1d   # recorded flow runs, newest first
//! sluice runs show 3f2a9c1e                             # one run: tasks, attempts, errors
//! sluice runs trace 3f2a9c1e > run.json                 # the run as a Chrome trace (Perfetto)
//! sluice stores ls                                      # named stores from sluice.toml
//! sluice stores show lake                               # one store: each setting and its origin
//! sluice config view                                    # every setting, secrets redacted
//! sluice ui --bind 127.0.0.1:4040                       # a web view of runs and checkpoints
//! sluice scheduler --bind 0.0.0.0:50050                 # a Ballista cluster (feature `ballista`)
//! sluice executor --scheduler 10.0.0.5:50050 --bind 0.0.0.0:50051 --slots 8
//! ```

#[cfg(feature = "ballista")]
mod cluster;

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use sluice_testkit::taxi::{Compression, TaxiGenOptions, write_taxi_parquet};
use tracing_subscriber::EnvFilter;

/// `println!` for results: a reader that stops early (`sluice runs ls | head`) ends the
/// command quietly instead of making `println!` panic on the closed pipe.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            eprintln!("error: cannot write to standard output: {e}");
            std::process::exit(1);
        }
    }};
}

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
    /// Relay a loopback endpoint (`serve-s3`, `serve-http`) with latency added to each
    /// request, counting requests and bytes: how remote reads are measured here. Prints
    /// the counts as JSON when interrupted.
    ServeProxy(ProxyArgs),
    /// List, show, collect and clear the checkpoints in a result store.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// List and show recorded flow runs.
    #[command(subcommand)]
    Runs(RunsCommand),
    /// List and show the named stores of the settings (`[stores.NAME]` in sluice.toml).
    #[command(subcommand)]
    Stores(StoresCommand),
    /// Show the settings.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Serve a web view of the runs and checkpoints in the run and result stores, on
    /// loopback. Runs until interrupted.
    Ui(UiArgs),
    /// Run a Ballista scheduler that runs Sluice's plans; flows reach it with the
    /// runner `df://HOST:PORT`. Runs until interrupted.
    #[cfg(feature = "ballista")]
    Scheduler(cluster::SchedulerArgs),
    /// Run a Ballista executor for a `sluice scheduler`. Runs until interrupted.
    #[cfg(feature = "ballista")]
    Executor(cluster::ExecutorArgs),
}

#[derive(Debug, Args)]
struct UiArgs {
    /// The run store. Default: the settings' `run_store` (`$SLUICE_RUN_STORE`,
    /// sluice.toml), or `.sluice/`.
    #[arg(long)]
    runs: Option<String>,
    /// The result store whose checkpoints are shown. Default: the settings'
    /// `result_store` (`$SLUICE_RESULT_STORE`, sluice.toml), or `.sluice/`.
    #[arg(long)]
    cache: Option<String>,
    /// The address to listen at (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:4040")]
    bind: std::net::SocketAddr,
    /// Allow a bind address other than loopback (the view has no authentication).
    #[arg(long)]
    allow_remote: bool,
    /// Runs per page of the run list.
    #[arg(long, default_value_t = 50)]
    page_size: usize,
}

#[derive(Debug, Subcommand)]
enum StoresCommand {
    /// Every named store: name, URL, endpoint, credentials, where it is defined.
    Ls,
    /// One store's settings, each with where it came from (secrets redacted).
    Show {
        /// The store's name (`lake` in `store://lake/…`).
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Every setting after layering, each with where it came from (secrets redacted),
    /// and the files read.
    View,
}

#[derive(Debug, Subcommand)]
enum RunsCommand {
    /// Flow runs, newest first: id, flow, state, start, duration, tasks, error.
    Ls {
        #[command(flatten)]
        store: RunStoreArgs,
        /// Only runs of this flow.
        #[arg(long)]
        flow: Option<String>,
        /// Only runs in this state: running, completed, failed, cancelled.
        #[arg(long)]
        state: Option<sluice_core::FlowState>,
        /// Only runs that started within this long (`1h`, `2d`) or since this time
        /// (RFC 3339, `2026-11-27T10:00:00Z`).
        #[arg(long, value_parser = parse_since)]
        since: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// One flow run's record: parameters, task runs, states, attempts, errors.
    Show {
        #[command(flatten)]
        store: RunStoreArgs,
        /// The run id, or a prefix of it that names one run.
        run_id: String,
    },
    /// One flow run as a Chrome trace (JSON that Perfetto and chrome://tracing open):
    /// a span per task run, for runs too large to draw in `sluice ui`.
    Trace {
        #[command(flatten)]
        store: RunStoreArgs,
        /// The run id, or a prefix of it that names one run.
        run_id: String,
    },
}

impl RunStoreArgs {
    /// `--store`, else the settings' run store (`$SLUICE_RUN_STORE`, sluice.toml), else
    /// the default.
    fn location(&self, settings: &sluice_store::Settings) -> String {
        self.store
            .clone()
            .or_else(|| settings.run_store().map(String::from))
            .unwrap_or_else(|| sluice_core::DEFAULT_RUN_STORE.to_string())
    }
}

#[derive(Debug, Args)]
struct RunStoreArgs {
    /// The run store: a path or URL (`s3://bucket/prefix/`, `store://NAME/prefix/`).
    /// Default: the settings' `run_store` (`$SLUICE_RUN_STORE`, sluice.toml), or `.sluice/`.
    #[arg(long)]
    store: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

fn parse_since(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    let ago = humantime::parse_duration(text)
        .map_err(|e| format!("expected a duration (`1h`) or an RFC 3339 time: {e}"))?;
    let ago = chrono::Duration::from_std(ago).map_err(|e| e.to_string())?;
    Ok(chrono::Utc::now() - ago)
}

#[derive(Debug, Subcommand)]
enum CacheCommand {
    /// Every checkpoint: task, key, state, rows, size, created, expires, last hit.
    Ls(CacheArgs),
    /// One checkpoint's manifest.
    Show {
        #[command(flatten)]
        store: CacheArgs,
        /// The task.
        task: String,
        /// The cache key, or a prefix of it that names one checkpoint.
        key: String,
    },
    /// Remove expired checkpoints, parts no manifest names (failed or killed runs) and
    /// stale staging objects, all older than the grace period.
    Gc {
        #[command(flatten)]
        store: CacheArgs,
        /// Keep anything younger than this (`0s`, `90m`, `1h`): a run in progress may
        /// still be writing it.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        grace: std::time::Duration,
    },
    /// Remove every checkpoint, or every checkpoint of one task.
    Clear {
        #[command(flatten)]
        store: CacheArgs,
        /// Only this task's checkpoints.
        #[arg(long)]
        task: Option<String>,
    },
}

#[derive(Debug, Args)]
struct CacheArgs {
    /// The result store: a path or URL (`s3://bucket/prefix/`, `store://NAME/prefix/`).
    /// Default: the settings' `result_store` (`$SLUICE_RESULT_STORE`, sluice.toml), or
    /// `.sluice/`.
    #[arg(long)]
    store: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
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
struct ProxyArgs {
    /// The endpoint relayed: `http://127.0.0.1:9000`.
    #[arg(long)]
    upstream: String,
    /// The loopback port (0: any free port).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Latency added to every request (humantime: `25ms`, `0s`).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    latency: std::time::Duration,
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
    // Before any thread starts: one heap arena per four cores (see `tune_allocator`).
    sluice_core::tune_allocator();
    let cli = Cli::parse();
    init_logging(cli.verbose);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let error: &(dyn std::error::Error + 'static) = err.as_ref();
            eprintln!("error: {}", sluice_core::one_line(error));
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
        Command::ServeProxy(args) => serve_proxy(args),
        Command::Cache(command) => cache(command),
        Command::Runs(command) => runs(command),
        Command::Stores(command) => stores(command),
        Command::Ui(args) => ui(args),
        Command::Config(ConfigCommand::View) => {
            let settings = sluice_store::Settings::load()?;
            if settings.files().is_empty() {
                outln!(
                    "# no settings file (sluice.toml here or in a parent, $SLUICE_CONFIG, or the user's file)"
                );
            }
            for file in settings.files() {
                outln!("# read {}", file.display());
            }
            outln!("{}", settings.view().trim_end());
            Ok(())
        }
        #[cfg(feature = "ballista")]
        Command::Scheduler(args) => cluster::scheduler(args),
        #[cfg(feature = "ballista")]
        Command::Executor(args) => cluster::executor(args),
    }
}

fn ui(args: UiArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("could not start a runtime")?;
    runtime.block_on(async {
        let session = sluice_core::Session::new();
        let settings = session.settings()?;
        let default = |given: Option<String>, set: Option<&str>, fallback: &str| {
            given
                .or_else(|| set.map(String::from))
                .unwrap_or_else(|| fallback.to_string())
        };
        let options = sluice_ui::UiOptions::new(
            default(
                args.runs,
                settings.run_store(),
                sluice_core::DEFAULT_RUN_STORE,
            ),
            default(
                args.cache,
                settings.result_store(),
                sluice_core::DEFAULT_RESULT_STORE,
            ),
        )
        .with_bind(args.bind)
        .with_allow_remote(args.allow_remote)
        .with_page_size(args.page_size);
        let server = sluice_ui::UiServer::start(session.clone(), options).await?;
        outln!("sluice ui: http://{}/", server.addr());
        tokio::select! {
            () = server.wait() => {}
            stopped = interrupted() => stopped?,
        }
        anyhow::Ok(())
    })
}

fn stores(command: StoresCommand) -> anyhow::Result<()> {
    let settings = sluice_store::Settings::load()?;
    match command {
        StoresCommand::Ls => {
            let rows: Vec<[String; 5]> = settings
                .stores()
                .map(|(name, store)| {
                    [
                        name.to_string(),
                        store.url.clone(),
                        store.endpoint().unwrap_or_else(|| "-".into()),
                        store.credentials(),
                        settings
                            .origin(&format!("stores.{name}.url"))
                            .map_or_else(|| "-".into(), ToString::to_string),
                    ]
                })
                .collect();
            if rows.is_empty() {
                outln!(
                    "no named stores: define [stores.NAME] in sluice.toml (see `sluice config view`)"
                );
                return Ok(());
            }
            print_table(
                &["NAME", "URL", "ENDPOINT", "CREDENTIALS", "DEFINED IN"],
                &rows,
            );
        }
        StoresCommand::Show { name } => {
            let store =
                settings
                    .store(&name)
                    .ok_or_else(|| sluice_store::SettingsError::UnknownStore {
                        location: format!("store://{name}/"),
                        name: name.clone(),
                        known: settings.stores().map(|(n, _)| n.to_string()).collect(),
                    })?;
            outln!("[stores.{name}]");
            outln!("{}", settings.describe_store(&name, store).trim_end());
        }
    }
    Ok(())
}

/// Prints rows under a header, columns padded to their widest cell.
fn print_table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) {
    let mut widths = header.map(str::len);
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    outln!("{}", line(header.to_vec()));
    for row in rows {
        outln!("{}", line(row.iter().map(String::as_str).collect()));
    }
}

fn runs(command: RunsCommand) -> anyhow::Result<()> {
    use sluice_core::{RunFilter, RunStore, Session};
    let runtime = tokio::runtime::Runtime::new().context("could not start a runtime")?;
    runtime.block_on(async {
        let session = Session::new();
        let settings = session.settings()?;
        match command {
            RunsCommand::Ls {
                store,
                flow,
                state,
                since,
            } => {
                let mut filter = RunFilter::default();
                if let Some(flow) = flow {
                    filter = filter.with_flow(flow);
                }
                if let Some(state) = state {
                    filter = filter.with_state(state);
                }
                if let Some(since) = since {
                    filter = filter.with_since(since);
                }
                let records = RunStore::open(&session, &store.location(settings))?
                    .list(&filter)
                    .await?;
                if store.json {
                    outln!("{}", serde_json::to_string_pretty(&records)?);
                } else {
                    print_runs(&records);
                }
            }
            RunsCommand::Show { store, run_id } => {
                let record = RunStore::open(&session, &store.location(settings))?
                    .get(&run_id)
                    .await?;
                if store.json {
                    outln!("{}", serde_json::to_string_pretty(&record)?);
                } else {
                    print_run(&record);
                }
            }
            RunsCommand::Trace { store, run_id } => {
                let record = RunStore::open(&session, &store.location(settings))?
                    .get(&run_id)
                    .await?;
                outln!("{}", serde_json::to_string(&record.chrome_trace())?);
            }
        }
        anyhow::Ok(())
    })
}

fn millis(ms: Option<f64>) -> String {
    match ms {
        Some(ms) if ms >= 1000.0 => format!("{:.1} s", ms / 1000.0),
        Some(ms) => format!("{ms:.0} ms"),
        None => "-".into(),
    }
}

fn print_runs(records: &[sluice_core::FlowRunRecord]) {
    if records.is_empty() {
        outln!("no flow runs");
        return;
    }
    let flow_width = records
        .iter()
        .map(|r| r.flow.len())
        .max()
        .unwrap_or(4)
        .max(4);
    outln!(
        "{:<8}  {:<flow_width$}  {:<9}  {:<19}  {:>9}  {:>5}  ERROR",
        "RUN",
        "FLOW",
        "STATE",
        "START",
        "DURATION",
        "TASKS"
    );
    for r in records {
        let error = r.error.as_deref().unwrap_or("");
        outln!(
            "{:<8}  {:<flow_width$}  {:<9}  {:<19}  {:>9}  {:>5}  {}",
            &r.run_id[..r.run_id.len().min(8)],
            r.flow,
            r.state.to_string(),
            time(Some(r.start)),
            millis(r.duration_ms),
            r.tasks.len(),
            error.chars().take(80).collect::<String>(),
        );
    }
}

fn print_run(r: &sluice_core::FlowRunRecord) {
    outln!("run         {}", r.run_id);
    outln!("flow        {}", r.flow);
    outln!("state       {}", r.state);
    outln!("mode        {}", r.mode);
    outln!("version     {}", r.version.as_deref().unwrap_or("-"));
    outln!("start       {}", time(Some(r.start)));
    outln!("end         {}", time(r.end));
    outln!("duration    {}", millis(r.duration_ms));
    outln!("parameters  {}", r.parameters);
    if let Some(error) = &r.error {
        outln!("error       {error}");
    }
    let name_width = r
        .tasks
        .iter()
        .map(|t| t.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    outln!(
        "\n{:<name_width$}  {:<9}  {:>12}  {:>10}  {:>9}  {:>8}  NOTE",
        "TASK",
        "STATE",
        "ROWS",
        "BYTES",
        "DURATION",
        "ATTEMPTS"
    );
    for t in &r.tasks {
        let note = t
            .error
            .as_deref()
            .or(t.reason.as_deref())
            .or(t.cache.as_ref().map(|c| c.lookup.as_str()))
            .unwrap_or("");
        outln!(
            "{:<name_width$}  {:<9}  {:>12}  {:>10}  {:>9}  {:>8}  {}",
            t.name,
            format!("{:?}", t.state),
            t.rows.map(|n| n.to_string()).unwrap_or_else(|| "-".into()),
            t.bytes.map(human_bytes).unwrap_or_else(|| "-".into()),
            millis(t.duration_ms),
            t.attempts.len().max(1),
            note,
        );
        for a in t.attempts.iter().filter(|a| a.error.is_some()) {
            outln!(
                "{:<name_width$}    attempt {} failed after {}: {}",
                "",
                a.attempt,
                millis(Some(a.duration_ms)),
                a.error.as_deref().unwrap_or("")
            );
        }
    }
}

fn cache(command: CacheCommand) -> anyhow::Result<()> {
    use sluice_core::{CheckpointStore, Session};
    let runtime = tokio::runtime::Runtime::new().context("could not start a runtime")?;
    runtime.block_on(async {
        let session = Session::new();
        let settings = session.settings()?;
        let open = |args: &CacheArgs| {
            let location = args
                .store
                .clone()
                .or_else(|| settings.result_store().map(String::from))
                .unwrap_or_else(|| sluice_core::DEFAULT_RESULT_STORE.to_string());
            CheckpointStore::open(&session, &location)
        };
        match command {
            CacheCommand::Ls(args) => {
                let entries = open(&args)?.list().await?;
                if args.json {
                    outln!("{}", serde_json::to_string_pretty(&entries)?);
                } else {
                    print_entries(&entries);
                }
            }
            CacheCommand::Show { store, task, key } => {
                let manifest = open(&store)?.show(&task, &key).await?;
                if store.json {
                    outln!("{}", serde_json::to_string_pretty(&manifest)?);
                } else {
                    print_manifest(&manifest);
                }
            }
            CacheCommand::Gc { store, grace } => {
                let report = open(&store)?.gc(chrono::Utc::now(), grace).await?;
                if store.json {
                    outln!("{}", serde_json::to_string_pretty(&report)?);
                } else {
                    outln!(
                        "removed {} expired checkpoint(s), {} orphaned part(s), {} stale object(s): {}",
                        report.expired.len(),
                        report.orphans.len(),
                        report.stale.len(),
                        human_bytes(report.bytes)
                    );
                    for line in report.expired.iter().chain(&report.orphans).chain(&report.stale) {
                        outln!("  {line}");
                    }
                }
            }
            CacheCommand::Clear { store, task } => {
                let bytes = open(&store)?.clear(task.as_deref()).await?;
                if store.json {
                    outln!("{}", serde_json::json!({ "bytes": bytes }));
                } else {
                    outln!("removed {}", human_bytes(bytes));
                }
            }
        }
        anyhow::Ok(())
    })
}

fn human_bytes(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
    } else if bytes >= 1 << 10 {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    } else {
        format!("{bytes} B")
    }
}

fn time(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "-".into())
}

fn print_entries(entries: &[sluice_core::CacheEntry]) {
    if entries.is_empty() {
        outln!("no checkpoints");
        return;
    }
    let task_width = entries
        .iter()
        .map(|e| e.task.len())
        .max()
        .unwrap_or(4)
        .max(4);
    outln!(
        "{:<task_width$}  {:<16}  {:<10}  {:>12}  {:>10}  {:<19}  {:<19}  {:<19}",
        "TASK",
        "KEY",
        "STATE",
        "ROWS",
        "SIZE",
        "CREATED",
        "EXPIRES",
        "LAST HIT"
    );
    for e in entries {
        outln!(
            "{:<task_width$}  {:<16}  {:<10}  {:>12}  {:>10}  {:<19}  {:<19}  {:<19}",
            e.task,
            &e.key[..e.key.len().min(16)],
            e.state,
            e.rows.map(|r| r.to_string()).unwrap_or_else(|| "-".into()),
            human_bytes(e.bytes),
            time(e.created),
            time(e.expires),
            time(e.last_hit),
        );
    }
}

fn print_manifest(m: &sluice_core::Manifest) {
    outln!("task        {}", m.task);
    outln!("key         {}", m.key);
    outln!("id          {}", m.id);
    outln!("version     {}", m.code_version.as_deref().unwrap_or("-"));
    outln!("policy      {}", m.policy);
    outln!("flow run    {}", m.flow_run);
    outln!("created     {}", time(Some(m.created)));
    outln!("expires     {}", time(m.expires));
    outln!("rows        {}", m.rows);
    outln!(
        "size        {} in {} part(s), {}",
        human_bytes(m.bytes()),
        m.files.len(),
        m.compression
    );
    outln!("columns     {}", m.columns.join(", "));
    outln!("parameters  {}", m.key_inputs.parameters);
    for source in &m.key_inputs.sources {
        outln!(
            "source      {} ({} bytes, etag {}, modified {})",
            source.url,
            source.size,
            source.e_tag.as_deref().unwrap_or("-"),
            source.last_modified
        );
    }
    for upstream in &m.key_inputs.upstream {
        outln!(
            "upstream    {} key {} checkpoint {}",
            upstream.task,
            upstream.key,
            upstream.checkpoint.as_deref().unwrap_or("-")
        );
    }
    outln!(
        "key format  {} ({}, semantics {})",
        m.key_inputs.key_format,
        m.key_inputs.engine,
        m.key_inputs.semantics
    );
    for (setting, value) in &m.key_inputs.settings {
        outln!("setting     {setting} = {value}");
    }
    for (function, version) in &m.key_inputs.functions {
        outln!("function    {function} version {version}");
    }
    outln!("plan");
    for line in m.plan.lines() {
        outln!("  {line}");
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
            outln!(
                "S3 endpoint {} serving {}",
                server.endpoint(),
                args.root.display()
            );
            for (key, value) in server.env() {
                outln!("export {key}={value}");
            }
            // The same endpoint as a named store, its keys by reference to the exports.
            let bucket = std::fs::read_dir(&args.root)
                .ok()
                .and_then(|entries| {
                    entries
                        .filter_map(|e| e.ok())
                        .filter(|e| e.path().is_dir())
                        .filter_map(|e| e.file_name().into_string().ok())
                        .filter(|name| !name.starts_with('.'))
                        .min()
                })
                .unwrap_or_else(|| "BUCKET".into());
            outln!(
                "# or, in sluice.toml (then store://local/KEY):\n[stores.local]\nurl = \"s3://{bucket}\"\n\
                 endpoint = \"{}\"\nregion = \"{}\"\nallow_http = true\n\
                 access_key_id = {{ env = \"AWS_ACCESS_KEY_ID\" }}\n\
                 secret_access_key = {{ env = \"AWS_SECRET_ACCESS_KEY\" }}",
                server.endpoint(),
                S3Server::REGION
            );
            Box::new(server)
        } else {
            let server = HttpFileServer::start_on(&args.root, addr, true).await?;
            outln!(
                "HTTP server {} serving {}",
                server.url(""),
                args.root.display()
            );
            Box::new(server)
        };
        // Ctrl-C or SIGTERM stops the server cleanly.
        interrupted().await
    })
}

/// Waits for Ctrl-C or SIGTERM.
async fn interrupted() -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("listening for SIGTERM")?;
    tokio::select! {
        interrupted = tokio::signal::ctrl_c() => interrupted.context("waiting for Ctrl-C")?,
        _ = terminate.recv() => {}
    }
    Ok(())
}

fn serve_proxy(args: ProxyArgs) -> anyhow::Result<()> {
    use sluice_testkit::faults::{FaultProxy, FaultRule, ProxyFault};
    let runtime = tokio::runtime::Runtime::new().context("could not start a runtime")?;
    runtime.block_on(async {
        let mut builder = FaultProxy::builder(&args.upstream).port(args.port);
        if !args.latency.is_zero() {
            builder = builder.rule(FaultRule::new(ProxyFault::Latency(args.latency)));
        }
        let proxy = builder.start().await?;
        outln!(
            "proxy {} relaying {} with {:?} added per request",
            proxy.endpoint(),
            args.upstream,
            args.latency
        );
        interrupted().await?;
        let stats = proxy.stats();
        outln!(
            "{}",
            serde_json::json!({
                "requests": stats.requests,
                "body_bytes": stats.body_bytes,
                "max_in_flight": stats.max_in_flight,
            })
        );
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
    outln!(
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
