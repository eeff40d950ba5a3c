//! `sluice-bench remote`: the seed ETL and the aggregation with their source a round trip
//! away, against Polars (and DuckDB, where its `httpfs` extension loads), with requests
//! and bytes counted per run.
//!
//! The runner serves the generated taxi file itself, on loopback: the testkit's S3 server
//! (`s3s-fs`, what `sluice serve-s3` runs) and its HTTP file server (`sluice serve-http`'s),
//! each behind the testkit's fault proxy, which adds the latency to every request and
//! counts the requests, the body bytes and the most in flight at once. Each case runs as
//! its own process through `sluice-bench measure` (wall, peak RSS), as `run`'s do:
//!
//! - S3 → S3: read `s3://bench/taxi.parquet`, write `s3://bench/out/…` (Sluice names the
//!   endpoint as the store `bench` of a generated sluice.toml: `store://bench/…`; both through the
//!   proxy: the requests counted are the reads' and the upload's);
//! - HTTP → local: read `http://…/bench/taxi.parquet`, write a local file.
//!
//! `sluice-bench remote` writes `bench/remote.json`, `bench/remote.md` (the tables, with
//! [`write`]) and `bench/wall_vs_latency.svg` (the plot) under `--out`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use sluice_testkit::faults::{FaultProxy, FaultRule, ProxyFault};
use sluice_testkit::servers::{HttpFileServer, S3Server};

use crate::cases::{Engine, Workload};
use crate::measure::{Sample, measure_child};
use crate::report::Stats;
use crate::runner::{ensure_taxi_data, parquet_rows, python_module_version};

/// Where the source is served from.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum RemoteStore {
    /// S3 → S3 on the testkit's S3 server.
    S3,
    /// HTTP → local disk on the testkit's HTTP file server.
    Http,
}

impl RemoteStore {
    fn label(self) -> &'static str {
        match self {
            RemoteStore::S3 => "S3 → S3",
            RemoteStore::Http => "HTTP → local",
        }
    }
}

impl std::fmt::Display for RemoteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RemoteStore::S3 => "s3",
            RemoteStore::Http => "http",
        })
    }
}

/// Options of `sluice-bench remote`.
#[derive(Debug, Clone, clap::Args)]
pub struct RemoteArgs {
    /// Input rows.
    #[arg(long, default_value_t = 12_000_000)]
    pub rows: u64,
    /// Latencies added to every request (`0ms`, `25ms`, `100ms`).
    #[arg(long, value_delimiter = ',', value_parser = humantime::parse_duration,
          default_values = ["0ms", "25ms", "100ms"])]
    pub latencies: Vec<Duration>,
    /// Where the source is served from.
    #[arg(long, value_delimiter = ',', default_values = ["s3", "http"])]
    pub stores: Vec<RemoteStore>,
    /// Workloads to run (`etl`, `aggregate`).
    #[arg(long, value_delimiter = ',', default_values = ["etl", "aggregate"])]
    pub workloads: Vec<Workload>,
    /// Engines to run: Sluice's `lazy`, `polars`, `duckdb`.
    #[arg(long, value_delimiter = ',', default_values = ["lazy", "polars", "duckdb"])]
    pub engines: Vec<Engine>,
    /// Measured runs per case (medians are reported).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Unmeasured runs per case before the measured ones.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Where the generated taxi data (kept between runs), the served directory and the
    /// outputs go.
    #[arg(long, default_value = "data/bench")]
    pub data_dir: PathBuf,
    /// Where the report goes (`bench/remote.md`, `bench/remote.json`,
    /// `bench/wall_vs_latency.svg`).
    #[arg(long, default_value = "docs")]
    pub out: PathBuf,
    /// The codec of the generated input: `snappy` (the TLC files') or `zstd` (level 3).
    #[arg(long, default_value = "snappy", value_parser = ["snappy", "zstd"])]
    pub input_codec: String,
    /// The Python that runs the peers (with `polars` and `duckdb` installed).
    #[arg(long, env = "SLUICE_BENCH_PYTHON", default_value = "python3")]
    pub python: String,
}

/// The measured runs of one engine on one workload, store and latency.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoteCase {
    /// Where the source was served from.
    pub store: RemoteStore,
    /// The latency added to every request, in milliseconds.
    pub latency_ms: u64,
    /// What was computed.
    pub workload: Workload,
    /// What computed it.
    pub engine: Engine,
    /// One sample per measured run.
    pub samples: Vec<Sample>,
    /// Requests the proxy relayed, per measured run.
    pub requests: Vec<u64>,
    /// Response body bytes the proxy relayed (what was read), per measured run.
    pub bytes_read: Vec<u64>,
    /// The most requests in flight at once, per measured run.
    pub max_in_flight: Vec<u64>,
}

/// Everything `remote` measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoteResults {
    /// When the run started (UTC, RFC 3339).
    pub date: String,
    /// Input rows.
    pub rows: u64,
    /// The source object's size, in bytes.
    pub source_bytes: u64,
    /// Measured runs per case.
    pub runs: usize,
    /// The versions of the peers, by name.
    pub versions: BTreeMap<String, String>,
    /// What was skipped or failed, and why.
    pub notes: Vec<String>,
    /// The figures.
    pub cases: Vec<RemoteCase>,
}

/// The median of `values` (0 for none).
fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    Stats::of(values).map_or(0.0, |stats| stats.median)
}

impl RemoteCase {
    fn wall(&self) -> f64 {
        median(self.samples.iter().map(|s| s.wall_s))
    }
    fn rss(&self) -> f64 {
        median(self.samples.iter().map(|s| s.peak_rss_mib))
    }
    fn requests(&self) -> f64 {
        median(self.requests.iter().map(|&r| r as f64))
    }
    fn bytes_read(&self) -> f64 {
        median(self.bytes_read.iter().map(|&b| b as f64))
    }
}

/// The servers and their proxies, on a runtime of their own while the cases run as
/// processes (fields drop in order: the servers stop before their runtime).
pub(crate) struct Endpoints {
    s3: S3Server,
    /// The settings file naming the S3 endpoint as the store `bench`.
    settings: PathBuf,
    s3_proxy: FaultProxy,
    http_proxy: FaultProxy,
    /// Served until dropped; reached through `http_proxy`.
    _http: HttpFileServer,
    _runtime: tokio::runtime::Runtime,
}

impl Endpoints {
    pub(crate) fn start(root: &Path) -> anyhow::Result<Endpoints> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let (s3, http, s3_proxy, http_proxy) = runtime.block_on(async {
            let s3 = S3Server::start_at(root, "127.0.0.1:0".parse()?).await?;
            let http = HttpFileServer::start(root).await?;
            let s3_proxy = FaultProxy::builder(&s3.endpoint()).start().await?;
            let http_proxy = FaultProxy::builder(&http.url("")).start().await?;
            anyhow::Ok((s3, http, s3_proxy, http_proxy))
        })?;
        let mut endpoints = Endpoints {
            s3,
            settings: PathBuf::new(),
            s3_proxy,
            http_proxy,
            _http: http,
            _runtime: runtime,
        };
        endpoints.settings = endpoints.write_settings(root)?;
        Ok(endpoints)
    }

    pub(crate) fn proxy(&self, store: RemoteStore) -> &FaultProxy {
        match store {
            RemoteStore::S3 => &self.s3_proxy,
            RemoteStore::Http => &self.http_proxy,
        }
    }

    /// The environment of a Sluice process that reaches the S3 server as the store
    /// `bench` through its proxy: the AWS variables and the settings file.
    pub(crate) fn sluice_env(&self) -> Vec<(&'static str, String)> {
        let mut env = self.s3_env();
        env.push(("SLUICE_CONFIG", self.settings.display().to_string()));
        env
    }

    /// Writes the settings file that names the S3 endpoint (through its proxy) as the
    /// store `bench`, as users name theirs: Sluice's cases read `store://bench/…` through
    /// it, with the keys by reference to the `AWS_*` variables the peers use.
    fn write_settings(&self, root: &Path) -> anyhow::Result<PathBuf> {
        // Beside the served folders, not among them (each folder there is a bucket).
        let path = root.with_file_name("remote-sluice.toml");
        let text = format!(
            "# Written by sluice-bench remote: the S3 server, through the latency proxy.\n\
             [stores.bench]\nurl = \"s3://bench\"\nendpoint = \"{}\"\nregion = \"{}\"\n\
             allow_http = true\naccess_key_id = {{ env = \"AWS_ACCESS_KEY_ID\" }}\n\
             secret_access_key = {{ env = \"AWS_SECRET_ACCESS_KEY\" }}\n",
            self.s3_proxy.endpoint(),
            S3Server::REGION
        );
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(path)
    }

    /// The environment a case needs to reach the S3 server through its proxy.
    pub(crate) fn s3_env(&self) -> Vec<(&'static str, String)> {
        let mut env = self.s3.env();
        for (name, value) in &mut env {
            if *name == "AWS_ENDPOINT_URL" {
                *value = self.s3_proxy.endpoint();
            }
        }
        env
    }
}

/// Puts `input` in a served folder at `served` (a hard link where the file system
/// allows it), replacing what was there.
pub(crate) fn place(input: &Path, served: &Path) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(served);
    if std::fs::hard_link(input, served).is_err() {
        std::fs::copy(input, served)
            .with_context(|| format!("cannot place the input at {}", served.display()))?;
    }
    Ok(())
}

/// Runs the remote series and writes its report under `args.out`.
pub fn run(exe: &Path, args: &RemoteArgs) -> anyhow::Result<RemoteResults> {
    let input = ensure_taxi_data(&args.data_dir, args.rows, &args.input_codec)?;
    let root = args.data_dir.join("remote");
    let bucket = root.join("bench");
    let out_dir = args.data_dir.join("out");
    for dir in [&bucket, &bucket.join("out"), &out_dir] {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let served = bucket.join("taxi.parquet");
    place(&input, &served)?;
    let mut results = RemoteResults {
        date: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        rows: args.rows,
        source_bytes: std::fs::metadata(&served)?.len(),
        runs: args.runs,
        versions: BTreeMap::new(),
        notes: Vec::new(),
        cases: Vec::new(),
    };
    let mut engines = Vec::new();
    for &engine in &args.engines {
        let usable = match engine {
            Engine::Lazy => Ok(()),
            Engine::Polars | Engine::DuckDb => {
                let module = engine.peer_module().unwrap_or_default();
                python_module_version(&args.python, module).and_then(|version| {
                    results.versions.insert(module.to_string(), version);
                    if engine == Engine::DuckDb {
                        duckdb_httpfs(&args.python)
                    } else {
                        Ok(())
                    }
                })
            }
            other => Err(format!("{} has no remote case", other.label())),
        };
        match usable {
            Ok(()) => engines.push(engine),
            Err(why) => {
                let note = format!("{} skipped: {why}", engine.label());
                eprintln!("note: {note}");
                results.notes.push(note);
            }
        }
    }
    let endpoints = Endpoints::start(&root)?;
    for &store in &args.stores {
        for &latency in &args.latencies {
            let proxy = endpoints.proxy(store);
            if latency.is_zero() {
                proxy.clear_rules();
            } else {
                proxy.set_rules([FaultRule::new(ProxyFault::Latency(latency))]);
            }
            for &workload in &args.workloads {
                let mut cases: Vec<RemoteCase> = engines
                    .iter()
                    .map(|&engine| RemoteCase {
                        store,
                        latency_ms: latency.as_millis() as u64,
                        workload,
                        engine,
                        samples: Vec::new(),
                        requests: Vec::new(),
                        bytes_read: Vec::new(),
                        max_in_flight: Vec::new(),
                    })
                    .collect();
                // Rounds of every engine once: drift spreads over all of them.
                for round in 0..args.warmup + args.runs {
                    for case in &mut cases {
                        let measured = run_case(exe, args, &endpoints, &bucket, &out_dir, case);
                        match measured {
                            Ok((sample, stats)) => {
                                eprintln!(
                                    "{store:<4} {:>4} ms {workload:<9} {:<18} {:>6.2} s {:>7.1} MiB {:>5} requests {:>7.1} MB",
                                    case.latency_ms,
                                    case.engine.label(),
                                    sample.wall_s,
                                    sample.peak_rss_mib,
                                    stats.requests,
                                    stats.body_bytes as f64 / 1e6
                                );
                                if round >= args.warmup {
                                    case.samples.push(sample);
                                    case.requests.push(stats.requests);
                                    case.bytes_read.push(stats.body_bytes);
                                    case.max_in_flight.push(stats.max_in_flight);
                                }
                            }
                            Err(e) => {
                                let note = format!(
                                    "{} failed on {workload} ({store}, {} ms): {e:#}",
                                    case.engine.label(),
                                    case.latency_ms
                                );
                                eprintln!("note: {note}");
                                results.notes.push(note);
                                break;
                            }
                        }
                    }
                }
                results
                    .cases
                    .extend(cases.into_iter().filter(|c| !c.samples.is_empty()));
            }
        }
    }
    drop(endpoints);
    Ok(results)
}

/// What the proxy counted during one run.
struct Counted {
    requests: u64,
    body_bytes: u64,
    max_in_flight: u64,
}

/// One run of `case`: its sample and what the proxy counted.
fn run_case(
    exe: &Path,
    args: &RemoteArgs,
    endpoints: &Endpoints,
    bucket: &Path,
    out_dir: &Path,
    case: &RemoteCase,
) -> anyhow::Result<(Sample, Counted)> {
    let name = format!("{}-{}.parquet", case.workload, case.engine);
    let (source, dest, written, env) = match case.store {
        // Sluice names the endpoint as a store of its settings file; the peers take
        // the AWS variables.
        RemoteStore::S3 if case.engine.peer_script().is_none() => {
            let env = endpoints.sluice_env();
            (
                "store://bench/taxi.parquet".to_string(),
                format!("store://bench/out/{name}"),
                bucket.join("out").join(&name),
                env,
            )
        }
        RemoteStore::S3 => (
            "s3://bench/taxi.parquet".to_string(),
            format!("s3://bench/out/{name}"),
            bucket.join("out").join(&name),
            endpoints.s3_env(),
        ),
        RemoteStore::Http => {
            let local = out_dir.join(&name);
            (
                endpoints.http_proxy.url("bench/taxi.parquet"),
                local.display().to_string(),
                local,
                Vec::new(),
            )
        }
    };
    let _ = std::fs::remove_file(&written);
    let command: Vec<String> = match case.engine.peer_script() {
        Some(script) => vec![
            args.python.clone(),
            script.to_string(),
            case.workload.to_string(),
            source,
            dest,
        ],
        None => vec![
            exe.display().to_string(),
            "case".into(),
            case.workload.to_string(),
            case.engine.to_string(),
            "--input".into(),
            source,
            "--output".into(),
            dest,
        ],
    };
    let proxy = endpoints.proxy(case.store);
    proxy.reset_stats();
    let sample = measure_child(exe, &command, &env)?;
    let stats = proxy.stats();
    let rows = parquet_rows(&written)?;
    anyhow::ensure!(rows > 0, "{} wrote no rows", case.engine.label());
    let _ = std::fs::remove_file(&written);
    Ok((
        sample,
        Counted {
            requests: stats.requests,
            body_bytes: stats.body_bytes,
            max_in_flight: stats.max_in_flight,
        },
    ))
}

/// Whether DuckDB's `httpfs` extension loads (offline, it must be installed already or
/// come from a registry package of the installed DuckDB's version).
fn duckdb_httpfs(python: &str) -> Result<(), String> {
    let output = std::process::Command::new(python)
        .args([
            "-c",
            "import duckdb; duckdb.connect().execute('LOAD httpfs')",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `{python}`: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(
            "DuckDB's httpfs extension does not load (it installs from the network, or from \
             the `duckdb-extension-httpfs` package, which has no release for this DuckDB)"
                .to_string(),
        )
    }
}

/// File name of the remote series' plot (drawn by `plots::wall_vs_latency`).
pub const LATENCY_PLOT: &str = "wall_vs_latency.svg";

/// Writes `bench/remote.json` and `bench/remote.md` under `out`.
pub fn write(results: &RemoteResults, out: &Path) -> anyhow::Result<()> {
    let dir = out.join("bench");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(
        dir.join("remote.json"),
        serde_json::to_string_pretty(results)?,
    )?;
    std::fs::write(dir.join("remote.md"), markdown(results))?;
    Ok(())
}

/// The tables: one per store and workload, a row per latency and engine.
pub fn markdown(results: &RemoteResults) -> String {
    let mut text = format!(
        "# Remote sources: wall against latency\n\n\
         {} rows ({:.0} MB of Parquet), served on loopback behind the testkit's fault proxy \
         adding the latency to every request; medians of {} runs, {}. Requests and bytes \
         are what the proxy relayed (for S3 → S3, the upload's too). Written by \
         `sluice-bench remote`.\n\n![wall against latency]({})\n",
        results.rows,
        results.source_bytes as f64 / 1e6,
        results.runs,
        results.date,
        LATENCY_PLOT,
    );
    let mut keys: Vec<(RemoteStore, Workload)> = results
        .cases
        .iter()
        .map(|c| (c.store, c.workload))
        .collect();
    keys.sort_by_key(|&(s, w)| (s, w.name()));
    keys.dedup();
    for (store, workload) in keys {
        text.push_str(&format!(
            "\n## {workload}, {}\n\n| latency | engine | wall | vs Polars | peak RSS | requests | MB read |\n|---:|---|---:|---:|---:|---:|---:|\n",
            store.label()
        ));
        let cases: Vec<&RemoteCase> = results
            .cases
            .iter()
            .filter(|c| c.store == store && c.workload == workload)
            .collect();
        for case in &cases {
            let polars = cases
                .iter()
                .find(|c| c.engine == Engine::Polars && c.latency_ms == case.latency_ms);
            let ratio = polars.map_or("".to_string(), |p| {
                format!("{:.2}×", case.wall() / p.wall())
            });
            text.push_str(&format!(
                "| {} ms | {} | {:.2} s | {ratio} | {:.0} MiB | {:.0} | {:.1} |\n",
                case.latency_ms,
                case.engine.label(),
                case.wall(),
                case.rss(),
                case.requests(),
                case.bytes_read() / 1e6,
            ));
        }
    }
    if !results.notes.is_empty() {
        text.push_str("\n## Notes\n\n");
        for note in &results.notes {
            text.push_str(&format!("- {note}\n"));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(engine: Engine, latency_ms: u64, wall_s: f64) -> RemoteCase {
        RemoteCase {
            store: RemoteStore::Http,
            latency_ms,
            workload: Workload::Etl,
            engine,
            samples: vec![Sample {
                wall_s,
                peak_rss_mib: 100.0,
            }],
            requests: vec![20],
            bytes_read: vec![210_000_000],
            max_in_flight: vec![4],
        }
    }

    #[test]
    fn the_tables_give_each_engine_its_ratio_to_polars_at_the_same_latency() {
        let results = RemoteResults {
            date: "2026-12-06T00:00:00Z".into(),
            rows: 12_000_000,
            source_bytes: 206_000_000,
            runs: 1,
            versions: BTreeMap::new(),
            notes: vec!["DuckDB skipped: no httpfs".into()],
            cases: vec![
                case(Engine::Lazy, 100, 2.0),
                case(Engine::Polars, 100, 4.0),
                case(Engine::Lazy, 0, 1.5),
                case(Engine::Polars, 0, 5.0),
            ],
        };
        let text = markdown(&results);
        assert!(text.contains("## etl, HTTP → local"), "{text}");
        assert!(
            text.contains("| 100 ms | Sluice lazy | 2.00 s | 0.50× | 100 MiB | 20 | 210.0 |"),
            "{text}"
        );
        assert!(
            text.contains("| 0 ms | Sluice lazy | 1.50 s | 0.30× |"),
            "{text}"
        );
        assert!(text.contains("- DuckDB skipped: no httpfs"), "{text}");
    }
}
