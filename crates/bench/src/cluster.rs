//! `sluice-bench cluster`: the seed ETL on a Ballista cluster of this machine beside the
//! same flow run locally.
//!
//! A cluster is one `sluice scheduler` and `--executors` `sluice executor`s, each its own
//! process of the `sluice` binary beside this one (built with the cargo feature
//! `ballista`), started afresh for every measured run so that each process's peak RSS
//! (`VmHWM`) is that run's. The client is `sluice-bench case etl lazy --runner df://…`,
//! measured as `run`'s cases are (wall, peak RSS); the bytes each executor wrote come
//! from the run's record (`WriteSummary::writers`). Writes `bench/cluster.md` under `--out`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sluice::{FlowRunRecord, WriterShare};

use crate::cases::Workload;
use crate::measure::{Sample, measure_child};
use crate::report::Stats;
use crate::runner::ensure_taxi_data;

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
}

/// One measured run.
#[derive(Debug, Clone)]
struct ClusterRun {
    client: Sample,
    /// Peak RSS of the scheduler, then of each executor, in MiB (empty locally).
    cluster_rss_mib: Vec<f64>,
    writers: Vec<WriterShare>,
}

/// The runs of one series on one runner.
#[derive(Debug, Clone)]
struct Series {
    workload: Workload,
    rows: u64,
    runner: &'static str,
    runs: Vec<ClusterRun>,
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
    fn start(sluice: &Path, executors: usize, slots: usize) -> anyhow::Result<Self> {
        let work = tempfile::tempdir()?;
        let port = free_port()?;
        let mut scheduler = Command::new(sluice)
            .args(["scheduler", "--bind", &format!("127.0.0.1:{port}")])
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
    let mut series = Vec::new();
    for (&rows, &workload) in args
        .rows
        .iter()
        .flat_map(|rows| args.workloads.iter().map(move |w| (rows, w)))
    {
        let input = ensure_taxi_data(&args.data_dir, rows, &args.input_codec)?;
        let output = args.data_dir.join("cluster-out.parquet");
        let record = args.data_dir.join("cluster-record.json");
        let case = |runner: Option<String>| -> anyhow::Result<(Sample, Vec<WriterShare>)> {
            let mut command: Vec<String> = vec![
                exe.display().to_string(),
                "case".into(),
                workload.to_string(),
            ];
            command.extend(["lazy".into(), "--input".into()]);
            command.push(input.display().to_string());
            command.extend(["--output".into(), output.display().to_string()]);
            command.extend(["--record".into(), record.display().to_string()]);
            if let Some(runner) = runner {
                command.extend(["--runner".into(), runner]);
            }
            let sample = measure_child(exe, &command, &[])?;
            Ok((sample, writers(&record)?))
        };
        // One unmeasured run each: the page cache holds the input for both.
        case(None)?;
        let mut local = Vec::new();
        for _ in 0..args.runs {
            let (client, writers) = case(None)?;
            local.push(ClusterRun {
                client,
                cluster_rss_mib: Vec::new(),
                writers,
            });
        }
        let mut on_cluster = Vec::new();
        for _ in 0..args.runs {
            let cluster = LocalCluster::start(&sluice, args.executors, args.slots)?;
            let (client, writers) = case(Some(format!("df://127.0.0.1:{}", cluster.port)))?;
            on_cluster.push(ClusterRun {
                client,
                cluster_rss_mib: cluster.peak_rss_mib(),
                writers,
            });
        }
        eprintln!("cluster series: {workload} at {rows} rows done");
        series.push(Series {
            workload,
            rows,
            runner: "local",
            runs: local,
        });
        series.push(Series {
            workload,
            rows,
            runner: "cluster",
            runs: on_cluster,
        });
    }
    let md = render(&series, args);
    let dir = args.out.join("bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("cluster.md");
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
         output: one Parquet file on local disk. Medians of {} runs; peak RSS is each \
         process's `VmHWM`.\n\n\
         | workload | rows | runner | wall | vs local | client RSS | scheduler RSS | executors' RSS | each executor wrote |\n\
         |---|---:|---|---:|---:|---:|---:|---:|---|\n",
        args.executors, args.slots, args.input_codec, args.runs
    );
    for s in series {
        let wall = median(s.runs.iter().map(|r| r.client.wall_s));
        let local = series
            .iter()
            .find(|l| l.workload == s.workload && l.rows == s.rows && l.runner == "local")
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
        md.push_str(&format!(
            "| {} | {} | {} | {wall:.2} s | {:.2}× | {client:.0} MiB | {scheduler} | {executors} | {wrote} |\n",
            s.workload,
            s.rows,
            s.runner,
            wall / local,
        ));
    }
    md
}
