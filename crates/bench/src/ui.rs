//! The web view's series: how long `sluice ui` takes to serve the run list of a store
//! holding many runs and the page of a run of many mapped task calls, on the server
//! (HTTP request to last byte, over loopback) and in a browser (headless Chromium's load,
//! scripts included, less its own start-up measured on `about:blank`).

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use sluice::{
    ExecutionMode, FlowRunRecord, FlowState, RunStore, Session, TaskRunRecord, TaskState,
};

/// `sluice-bench ui`.
#[derive(Debug, clap::Args)]
pub struct UiArgs {
    /// Runs in the store.
    #[arg(long, default_value_t = 10_000)]
    pub runs: usize,
    /// Mapped calls in the largest run.
    #[arg(long, default_value_t = 1_000)]
    pub calls: usize,
    /// Timed requests per page (the median is reported).
    #[arg(long, default_value_t = 20)]
    pub samples: usize,
    /// Browser loads per page.
    #[arg(long, default_value_t = 5)]
    pub browser_samples: usize,
    /// Where the run store is written (kept between invocations: filling 10,000 runs
    /// takes a while).
    #[arg(long, default_value = "data/bench-ui")]
    pub data_dir: PathBuf,
    /// The report goes to `<out>/bench/ui.md`.
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
    /// The Chromium binary.
    #[arg(long, default_value = "chromium")]
    pub chromium: String,
}

fn uuid_of(n: usize) -> String {
    format!("{:08x}-0000-4000-8000-{:012x}", n, n)
}

fn task(name: &str, id: u64, start: DateTime<Utc>, ms: i64) -> TaskRunRecord {
    let end = start + chrono::Duration::milliseconds(ms);
    serde_json::from_value(serde_json::json!({
        "name": name, "id": id, "state": TaskState::Completed, "version": null,
        "start": start, "end": end, "duration_ms": ms as f64, "busy_ms": ms as f64 / 2.0,
        "rows": 1000, "bytes": 8000, "sources": ["s3://bench/in.parquet"], "cache_key": null,
        "cache": null, "executions": [], "reason": null, "error": null,
        "logs": [{"time": start, "level": "INFO", "target": "bench", "message": "working"}]
    }))
    .expect("a task record")
}

fn run(n: usize, calls: usize) -> FlowRunRecord {
    let start = DateTime::from_timestamp(1_760_000_000 + n as i64 * 60, 0).unwrap();
    let tasks: Vec<TaskRunRecord> = (0..calls.max(3))
        .map(|i| {
            let name = if calls > 3 {
                "square"
            } else {
                ["extract", "transform", "load"][i]
            };
            task(
                name,
                i as u64,
                start + chrono::Duration::milliseconds(i as i64),
                40,
            )
        })
        .collect();
    serde_json::from_value(serde_json::json!({
        "flow": if n.is_multiple_of(3) { "etl" } else { "report" },
        "run_id": uuid_of(n),
        "state": if n.is_multiple_of(17) { FlowState::Failed } else { FlowState::Completed },
        "mode": ExecutionMode::Lazy,
        "version": "3f2a9c1e",
        "runner": "local",
        "parameters": {"month": n % 12},
        "start": start,
        "end": start + chrono::Duration::seconds(5),
        "duration_ms": 5_000.0,
        "tasks": tasks,
        "error": null,
    }))
    .expect("a run record")
}

/// Fills the store once (skipped when it already holds the runs).
async fn fill(store: &RunStore, dir: &Path, runs: usize, calls: usize) -> anyhow::Result<String> {
    let marker = dir.join(format!(".filled-{runs}-{calls}"));
    let big = uuid_of(runs);
    if marker.exists() {
        return Ok(big);
    }
    for chunk in (0..runs).collect::<Vec<_>>().chunks(64) {
        let writes: Vec<_> = chunk
            .iter()
            .map(|&n| async move { store.write(&run(n, 3)).await })
            .collect();
        for written in futures::future::join_all(writes).await {
            written?;
        }
    }
    store.write(&run(runs, calls)).await?;
    std::fs::write(&marker, b"")?;
    Ok(big)
}

/// One GET over a fresh connection: the time to the response's last byte, and the
/// response.
fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(Duration, String)> {
    let started = Instant::now();
    let mut stream = std::net::TcpStream::connect(addr)?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let elapsed = started.elapsed();
    let response = String::from_utf8_lossy(&response).into_owned();
    anyhow::ensure!(
        response.starts_with("HTTP/1.1 200"),
        "GET {path}: {}",
        &response[..response.len().min(200)]
    );
    Ok((elapsed, response))
}

fn browser_load(chromium: &str, url: &str) -> anyhow::Result<Duration> {
    let profile = tempfile::tempdir()?;
    let started = Instant::now();
    let output = std::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(["--dump-dom", url])
        .output()
        .with_context(|| format!("cannot run {chromium}"))?;
    anyhow::ensure!(output.status.success(), "{chromium} failed on {url}");
    Ok(started.elapsed())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Runs the series and writes `<out>/bench/ui.md`; returns its path.
pub fn run_series(args: &UiArgs) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(&args.data_dir)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let location = args.data_dir.display().to_string();
    let (server, big) = runtime.block_on(async {
        let session = Session::new();
        let store = RunStore::open(&session, &location)?;
        let filling = Instant::now();
        let big = fill(&store, &args.data_dir, args.runs, args.calls).await?;
        tracing::info!(seconds = filling.elapsed().as_secs_f64(), "run store ready");
        let options = sluice_ui::UiOptions::new(&location, &location)
            .with_bind("127.0.0.1:0".parse().unwrap());
        let server = sluice_ui::UiServer::start(session, options).await?;
        anyhow::Ok((server, big))
    })?;
    let addr = server.addr();
    // The first request indexes a store written without an index; none here.
    get(addr, "/runs")?;
    // Page 100 of the list: follow the "older runs" links.
    let mut deep = "/runs".to_string();
    for _ in 0..99 {
        let (_, body) = get(addr, &deep)?;
        let marker = "class=\"next\" href=\"";
        let at = body.find(marker).context("no next page")? + marker.len();
        let end = at + body[at..].find('"').context("an unterminated link")?;
        deep = body[at..end].replace("&amp;", "&");
    }
    let pages = [
        ("run list, first page of 50", "/runs".to_string()),
        ("run list, page 100", deep),
        ("run of 1,000 mapped calls", format!("/runs/{big}")),
    ];
    let mut rows = Vec::new();
    let baseline = if which(&args.chromium) {
        Some(median(
            (0..args.browser_samples)
                .map(|_| browser_load(&args.chromium, "about:blank").map(|d| d.as_secs_f64() * 1e3))
                .collect::<anyhow::Result<Vec<_>>>()?,
        ))
    } else {
        None
    };
    for (label, path) in pages {
        let mut server_ms = Vec::new();
        let mut size = 0;
        for _ in 0..args.samples {
            let (elapsed, body) = get(addr, &path)?;
            server_ms.push(elapsed.as_secs_f64() * 1e3);
            size = body.len();
        }
        let browser = match baseline {
            Some(blank) => {
                let url = format!("http://{addr}{path}");
                let loads = (0..args.browser_samples)
                    .map(|_| browser_load(&args.chromium, &url).map(|d| d.as_secs_f64() * 1e3))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                Some((median(loads) - blank).max(0.0))
            }
            None => None,
        };
        rows.push((label, median(server_ms), size, browser));
    }
    drop(server);
    let mut md = format!(
        "# sluice ui: page load times\n\n{} runs in a local run store, one of them with {} mapped task calls. \
         Server: GET over loopback to the last byte, median of {}. Browser: headless Chromium's \
         `--dump-dom` of the page (load, scripts run), median of {}, less its start-up on \
         `about:blank`{}.\n\n| page | server | HTML | browser |\n|---|---:|---:|---:|\n",
        args.runs,
        args.calls,
        args.samples,
        args.browser_samples,
        baseline
            .map(|b| format!(" ({b:.0} ms)"))
            .unwrap_or_default(),
    );
    for (label, server_ms, size, browser) in rows {
        md.push_str(&format!(
            "| {label} | {server_ms:.1} ms | {:.0} KiB | {} |\n",
            size as f64 / 1024.0,
            browser
                .map(|b| format!("{b:.0} ms"))
                .unwrap_or_else(|| "no Chromium".into())
        ));
    }
    let path = args.out.join("bench").join("ui.md");
    std::fs::create_dir_all(path.parent().unwrap())?;
    std::fs::write(&path, md)?;
    Ok(path)
}

fn which(program: &str) -> bool {
    std::process::Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}
