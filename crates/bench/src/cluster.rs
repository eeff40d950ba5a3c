//! `sluice-bench cluster`: the seed ETL on a Ballista cluster of this machine beside the
//! same flow run locally.
//!
//! A cluster is one `sluice scheduler` and `--executors` `sluice executor`s, each its own
//! process of the `sluice` binary beside this one (built with the cargo feature
//! `ballista`), started afresh for every measured run so that each process's peak RSS
//! (`VmHWM`) is that run's. The client is `sluice-bench case etl lazy --runner df://…`,
//! measured as `run`'s cases are (wall, peak RSS); the bytes each executor wrote come
//! from the run's record (`WriteSummary::writers`). With `--store s3` the input and the
//! output are on an S3 server of this process that every process reaches through the
//! testkit's fault proxy, adding `--latency-ms` to each request (the proxy counts the
//! requests). Writes `bench/cluster.md` (`bench/cluster-s3.md` for S3) under `--out`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sluice::{FlowRunRecord, WriterShare};

use crate::cases::Workload;
use crate::measure::{Sample, measure_child};
use crate::remote::{Endpoints, RemoteStore, place};
use crate::report::Stats;
use crate::runner::ensure_taxi_data;
use sluice_testkit::faults::{FaultRule, ProxyFault};

/// `sluice-bench cluster`.
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterArgs {
    /// Input rows, one series each.
    #[arg(long, value_delimiter = ',', default_values = ["12000000", "48000000"])]
    pub rows: Vec<u64>,
    /// Workloads to run (`etl`, `aggregate`: a shuffle of partial aggregates).
    #[arg(long, value_delimiter = ',', default_values = ["etl", "aggregate"])]
    pub workloads: Vec<Workload>,
    /// Executors in the cluster.
    #[arg(long, default_value_t = 2)]
    pub executors: usize,
    /// Task slots per executor (`sluice executor --slots`).
    #[arg(long, default_value_t = 1)]
    pub slots: usize,
    /// Measured runs per case (medians are reported).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Where the generated taxi data (kept between runs) and the outputs go.
    #[arg(long, default_value = "data/bench")]
    pub data_dir: PathBuf,
    /// The report goes to `<out>/bench/cluster.md`.
    #[arg(long, default_value = "docs")]
    pub out: PathBuf,
    /// The codec of the generated input: `zstd` (level 3, as `run`'s) or `snappy`.
    #[arg(long, default_value = "zstd", value_parser = ["snappy", "zstd"])]
    pub input_codec: String,
    /// Where the input is read and the output written: `local` disk, or `s3`: the
    /// input placed in a `sluice serve-s3`-like server of this process, reached by
    /// every process (client, scheduler, executors) through a latency proxy as the
    /// named store `bench`.
    #[arg(long, default_value = "local", value_parser = ["local", "s3"])]
    pub store: String,
    /// With `--store s3`: the latency the proxy adds to each request, one series each.
    #[arg(long, value_delimiter = ',', default_values = ["0"])]
    pub latency_ms: Vec<u64>,
}

/// One measured run.
#[derive(Debug, Clone)]
struct ClusterRun {
    client: Sample,
    /// Peak RSS of the scheduler, then of each executor, in MiB (empty locally).
    cluster_rss_mib: Vec<f64>,
    writers: Vec<WriterShare>,
    /// Requests the S3 server answered during the run, from every process (S3 only).
    requests: Option<u64>,
}

/// The runs of one series on one runner.
#[derive(Debug, Clone)]
struct Series {
    workload: Workload,
    rows: u64,
    /// The latency added per S3 request (S3 only).
    latency_ms: Option<u64>,
    runner: &'static str,
    runs: Vec<ClusterRun>,
}

/// Where a series reads and writes.
struct Place {
    input: String,
    output: String,
    /// What the client and the cluster's processes need in their environment.
    env: Vec<(&'static str, String)>,
}

/// A cluster of this machine, killed on drop.
struct LocalCluster {
    scheduler: Child,
    executors: Vec<Child>,
    port: u16,
    _work: tempfile::TempDir,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A port whose successor is free too (an executor's gRPC port is the next one).
fn free_port_pair() -> anyhow::Result<u16> {
    for _ in 0..50 {
        let port = free_port()?;
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return Ok(port);
        }
    }
    anyhow::bail!("no two free consecutive ports")
}

fn wait_for_port(port: u16, child: &mut Child, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("the {what} exited ({status}) before listening on {port}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    anyhow::bail!("the {what} did not listen on port {port} within 30 s")
}

impl LocalCluster {
    fn start(
        sluice: &Path,
        executors: usize,
        slots: usize,
        env: &[(&'static str, String)],
    ) -> anyhow::Result<Self> {
        let work = tempfile::tempdir()?;
        let port = free_port()?;
        let mut scheduler = Command::new(sluice)
            .args(["scheduler", "--bind", &format!("127.0.0.1:{port}")])
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", sluice.display()))?;
        wait_for_port(port, &mut scheduler, "scheduler")?;
        let mut cluster = LocalCluster {
            scheduler,
            executors: Vec::new(),
            port,
            _work: work,
        };
        for i in 0..executors {
            let bind = free_port_pair()?;
            let dir = cluster._work.path().join(format!("executor-{i}"));
            std::fs::create_dir_all(&dir)?;
            let mut child = Command::new(sluice)
                .args(["executor", "--scheduler", &format!("127.0.0.1:{port}")])
                .args(["--bind", &format!("127.0.0.1:{bind}")])
                .args(["--slots", &slots.to_string(), "--work-dir"])
                .arg(&dir)
                .envs(env.iter().map(|(k, v)| (k, v)))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            wait_for_port(bind, &mut child, "executor")?;
            cluster.executors.push(child);
        }
        // Executors register on start; give the scheduler a moment to take them in.
        std::thread::sleep(Duration::from_millis(500));
        Ok(cluster)
    }

    /// Peak RSS of the scheduler, then of each executor, in MiB.
    fn peak_rss_mib(&self) -> Vec<f64> {
        std::iter::once(&self.scheduler)
            .chain(&self.executors)
            .map(|child| vm_hwm_mib(child.id()).unwrap_or(f64::NAN))
            .collect()
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for child in self.executors.iter_mut().chain([&mut self.scheduler]) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A live process's peak resident set (`VmHWM` in `/proc/PID/status`), in MiB.
fn vm_hwm_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// What each executor wrote, from the record the client saved.
fn writers(record: &Path) -> anyhow::Result<Vec<WriterShare>> {
    let record: FlowRunRecord = serde_json::from_slice(&std::fs::read(record)?)?;
    Ok(record
        .tasks
        .iter()
        .flat_map(|t| &t.sinks)
        .flat_map(|s| s.writers.clone())
        .collect())
}

/// Runs the series and writes `<out>/bench/cluster.md`; returns its path.
pub fn run_series(exe: &Path, args: &ClusterArgs) -> anyhow::Result<PathBuf> {
    let sluice = exe.with_file_name("sluice");
    anyhow::ensure!(
        sluice.exists(),
        "{} is missing: build it beside sluice-bench (`cargo build --release --workspace \
         --features ballista,sluice-cli/ballista --bins --examples`)",
        sluice.display()
    );
    let s3 = args.store == "s3";
    let root = args.data_dir.join("cluster-remote");
    let endpoints = if s3 {
        std::fs::create_dir_all(root.join("bench").join("out"))?;
        Some(Endpoints::start(&root)?)
    } else {
        None
    };
    let latencies: Vec<Option<u64>> = if s3 {
        args.latency_ms.iter().map(|&ms| Some(ms)).collect()
    } else {
        vec![None]
    };
    let mut series = Vec::new();
    for (&rows, &workload) in args
        .rows
        .iter()
        .flat_map(|rows| args.workloads.iter().map(move |w| (rows, w)))
    {
        let input = ensure_taxi_data(&args.data_dir, rows, &args.input_codec)?;
        let record = args.data_dir.join("cluster-record.json");
        let place = match &endpoints {
            Some(endpoints) => {
                let name = format!("taxi-{rows}.parquet");
                place(&input, &root.join("bench").join(&name))?;
                Place {
                    input: format!("store://bench/{name}"),
                    output: "store://bench/out/cluster-out.parquet".into(),
                    env: endpoints.sluice_env(),
                }
            }
            None => Place {
                input: input.display().to_string(),
                output: args
                    .data_dir
                    .join("cluster-out.parquet")
                    .display()
                    .to_string(),
                env: Vec::new(),
            },
        };
        let proxy = endpoints.as_ref().map(|e| e.proxy(RemoteStore::S3));
        let case = |runner: Option<String>| -> anyhow::Result<ClusterRun> {
            let mut command: Vec<String> = vec![
                exe.display().to_string(),
                "case".into(),
                workload.to_string(),
            ];
            command.extend(["lazy".into(), "--input".into(), place.input.clone()]);
            command.extend(["--output".into(), place.output.clone()]);
            command.extend(["--record".into(), record.display().to_string()]);
            if let Some(runner) = runner {
                command.extend(["--runner".into(), runner]);
            }
            if let Some(proxy) = proxy {
                proxy.reset_stats();
            }
            let client = measure_child(exe, &command, &place.env)?;
            Ok(ClusterRun {
                client,
                cluster_rss_mib: Vec::new(),
                writers: writers(&record)?,
                requests: proxy.map(|p| p.stats().requests),
            })
        };
        for &latency_ms in &latencies {
            if let Some(proxy) = proxy {
                match latency_ms {
                    Some(ms) if ms > 0 => proxy.set_rules([FaultRule::new(ProxyFault::Latency(
                        Duration::from_millis(ms),
                    ))]),
                    _ => proxy.clear_rules(),
                }
            }
            // One unmeasured run each: the page cache holds the input for both.
            case(None)?;
            let local = (0..args.runs)
                .map(|_| case(None))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let mut on_cluster = Vec::new();
            for _ in 0..args.runs {
                let cluster = LocalCluster::start(&sluice, args.executors, args.slots, &place.env)?;
                let mut run = case(Some(format!("df://127.0.0.1:{}", cluster.port)))?;
                run.cluster_rss_mib = cluster.peak_rss_mib();
                on_cluster.push(run);
            }
            eprintln!("cluster series: {workload} at {rows} rows ({latency_ms:?} ms) done");
            for (runner, runs) in [("local", local), ("cluster", on_cluster)] {
                series.push(Series {
                    workload,
                    rows,
                    latency_ms,
                    runner,
                    runs,
                });
            }
        }
    }
    drop(endpoints);
    let md = render(&series, args);
    let dir = args.out.join("bench");
    std::fs::create_dir_all(&dir)?;
    // One report per store: the local series and the remote one are read side by side.
    let path = dir.join(if s3 { "cluster-s3.md" } else { "cluster.md" });
    std::fs::write(&path, md)?;
    Ok(path)
}

fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    Stats::of(values).map_or(f64::NAN, |s| s.median)
}

fn render(series: &[Series], args: &ClusterArgs) -> String {
    let mut md = format!(
        "# Sluice on a cluster of this machine\n\n\
         `sluice-bench cluster`: one `sluice scheduler` and {} `sluice executor --slots {}`, \
         each its own process, started afresh for each run; the client is \
         `sluice-bench case WORKLOAD lazy`, locally or with `--runner df://…`: the seed \
         ETL (`etl`) and the mean tip by zone and hour (`aggregate`: partial aggregates \
         shuffled between the executors). Input: one generated taxi file ({} codec), \
         output: one Parquet file, {}. Medians of {} runs; peak RSS is each \
         process's `VmHWM`; requests are those the S3 server answered during the run, \
         from every process.\n\n\
         | workload | rows | latency | runner | wall | vs local | client RSS | scheduler RSS | executors' RSS | requests | each executor wrote |\n\
         |---|---:|---:|---|---:|---:|---:|---:|---:|---:|---|\n",
        args.executors,
        args.slots,
        args.input_codec,
        if args.store == "s3" {
            "both on an S3 server of the bench's process (`store://bench/…`), every process \
             reaching it through a proxy that adds the latency given to each request"
        } else {
            "both on local disk"
        },
        args.runs
    );
    for s in series {
        let wall = median(s.runs.iter().map(|r| r.client.wall_s));
        let local = series
            .iter()
            .find(|l| {
                l.workload == s.workload
                    && l.rows == s.rows
                    && l.latency_ms == s.latency_ms
                    && l.runner == "local"
            })
            .map(|l| median(l.runs.iter().map(|r| r.client.wall_s)))
            .unwrap_or(f64::NAN);
        let client = median(s.runs.iter().map(|r| r.client.peak_rss_mib));
        let (scheduler, executors) = if s.runner == "local" {
            (String::new(), String::new())
        } else {
            let n = s.runs.first().map_or(0, |r| r.cluster_rss_mib.len());
            let scheduler = median(s.runs.iter().map(|r| r.cluster_rss_mib[0]));
            let executors: Vec<String> = (1..n)
                .map(|i| format!("{:.0}", median(s.runs.iter().map(|r| r.cluster_rss_mib[i]))))
                .collect();
            (
                format!("{scheduler:.0} MiB"),
                format!("{} MiB", executors.join(" / ")),
            )
        };
        let wrote = s
            .runs
            .last()
            .map(|r| {
                r.writers
                    .iter()
                    .map(|w| {
                        format!(
                            "{}: {} rows, {:.0} MB in {} part(s)",
                            w.executor,
                            w.rows,
                            w.bytes as f64 / 1e6,
                            w.parts
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .unwrap_or_default();
        let latency = s
            .latency_ms
            .map_or("local disk".into(), |ms| format!("{ms} ms"));
        let requests = s.runs.iter().filter_map(|r| r.requests).collect::<Vec<_>>();
        let requests = if requests.is_empty() {
            String::new()
        } else {
            format!("{:.0}", median(requests.iter().map(|&n| n as f64)))
        };
        md.push_str(&format!(
            "| {} | {} | {latency} | {} | {wall:.2} s | {:.2}× | {client:.0} MiB | {scheduler} | {executors} | {requests} | {wrote} |\n",
            s.workload,
            s.rows,
            s.runner,
            wall / local,
        ));
    }
    md
}
