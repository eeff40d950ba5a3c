//! The seed example as users run it: its flags, its errors, its memory.

use std::path::PathBuf;
use std::process::{Command, Output};

use crate::common::{shared_data, taxi_file};

/// `target/<profile>/examples/etl`, which `cargo test` builds with the tests.
pub fn example_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let path = profile_dir
        .join("examples")
        .join(format!("etl{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace`, which builds the examples",
        path.display()
    );
    path
}

pub fn run_example(args: &[&str]) -> Output {
    Command::new(example_binary())
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run the example")
}

/// The peak RSS the example prints, in MiB.
fn peak_rss_mib(output: &Output) -> f64 {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("peak RSS: "))
        .unwrap_or_else(|| panic!("no peak RSS in {stdout}"));
    line.trim_end_matches(" MiB").parse().unwrap()
}

#[test]
fn the_example_runs_with_source_dest_mode_and_summary() {
    let dir = tempfile::tempdir().unwrap();
    let source = taxi_file(dir.path(), "in.parquet", 30_000, 10_000);
    let dest = dir.path().join("out").join("tips.parquet");
    let summary = dir.path().join("run.json");
    for mode in ["lazy", "eager"] {
        let output = run_example(&[
            "--source",
            source.to_str().unwrap(),
            "--dest",
            dest.to_str().unwrap(),
            "--mode",
            mode,
            "--summary",
            summary.to_str().unwrap(),
        ]);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(dest.is_file());
        let record: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&summary).unwrap()).unwrap();
        assert_eq!(record["flow"], "etl");
        assert_eq!(record["state"], "Completed");
        assert_eq!(record["mode"], mode);
        assert!(record["run_id"].as_str().is_some_and(|id| !id.is_empty()));
        let tasks = record["tasks"].as_array().unwrap();
        let names: Vec<_> = tasks.iter().map(|t| t["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["extract", "transform", "load"]);
        for task in tasks {
            assert_eq!(task["state"], "Completed");
            assert_eq!(task["rows"], 30_000);
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(stdout.contains("30000 rows"), "{stdout}");
    }
}

#[test]
fn the_example_fails_with_one_line_naming_the_task_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("out.parquet");
    let summary = dir.path().join("run.json");
    let broken = shared_data("duckdb-parquet-testing/footer_broken/garbledfooter.parquet");
    let output = run_example(&[
        "--source",
        broken.to_str().unwrap(),
        "--dest",
        dest.to_str().unwrap(),
        "--summary",
        summary.to_str().unwrap(),
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    let lines: Vec<_> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].starts_with("error: task \"extract\" failed"),
        "{stderr}"
    );
    assert!(lines[0].contains("garbledfooter.parquet"), "{stderr}");
    // Each cause once: the file is named once, not again by a repeated cause.
    assert_eq!(
        lines[0].matches("garbledfooter.parquet").count(),
        1,
        "{stderr}"
    );
    assert!(!dest.exists());
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&summary).unwrap()).unwrap();
    assert_eq!(record["state"], "Failed");
    assert_eq!(record["tasks"][0]["state"], "Failed");
}

#[test]
fn the_example_rejects_an_unknown_mode() {
    let output = run_example(&["--mode", "turbo"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("turbo"));
}

#[test]
fn lazy_peak_memory_stays_flat_as_the_input_grows_while_eager_grows_with_it() {
    // Row groups of 64Ki rows in and out, so that the reader's and the writer's
    // per-row-group buffers are the same at both sizes.
    const N: u64 = 250_000;
    let dir = tempfile::tempdir().unwrap();
    let small = taxi_file(dir.path(), "small.parquet", N, 65_536);
    let large = taxi_file(dir.path(), "large.parquet", 4 * N, 65_536);
    let peak = |source: &PathBuf, mode: &str| {
        let dest = dir.path().join(format!("out-{mode}.parquet"));
        let output = run_example(&[
            "--source",
            source.to_str().unwrap(),
            "--dest",
            dest.to_str().unwrap(),
            "--mode",
            mode,
            "--row-group-rows",
            "65536",
        ]);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        peak_rss_mib(&output)
    };
    let lazy = (peak(&small, "lazy"), peak(&large, "lazy"));
    let eager = (peak(&small, "eager"), peak(&large, "eager"));
    eprintln!(
        "peak RSS (MiB) at {N} / {} rows: lazy {lazy:?}, eager {eager:?}",
        4 * N
    );
    assert!(lazy.1 < 1.5 * lazy.0, "lazy peak RSS grew: {lazy:?}");
    assert!(
        eager.1 > 1.5 * eager.0,
        "eager peak RSS did not grow: {eager:?}"
    );
    assert!(lazy.1 < eager.1, "lazy {lazy:?} vs eager {eager:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_runs_from_http_to_s3_and_from_s3_to_local_disk() {
    let dir = tempfile::tempdir().unwrap();
    taxi_file(
        dir.path(),
        "yellow_tripdata_2023-09.parquet",
        30_000,
        10_000,
    );
    let http = sluice_testkit::servers::HttpFileServer::start(dir.path())
        .await
        .unwrap();
    let target = crate::remote::S3Target::new("example").await;
    let on_s3 = target.url("nyc_yellow_tax_data/2023/09.parquet");
    let local = dir.path().join("local.parquet");
    let runs = [
        (http.url("yellow_tripdata_2023-09.parquet"), on_s3.clone()),
        (on_s3.clone(), local.to_str().unwrap().to_string()),
    ];
    for (source, dest) in runs {
        let env = target.env();
        let output = tokio::task::spawn_blocking(move || {
            Command::new(example_binary())
                .args(["--source", &source, "--dest", &dest])
                .envs(env)
                .output()
                .expect("run the example")
        })
        .await
        .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(String::from_utf8_lossy(&output.stdout).contains("30000 rows"));
    }
    assert!(local.is_file());
}

#[test]
fn a_malformed_runner_in_the_environment_fails_the_run_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let source = taxi_file(dir.path(), "in.parquet", 1_000, 1_000);
    let dest = dir.path().join("out.parquet");
    let output = Command::new(example_binary())
        .args([
            "--source",
            source.to_str().unwrap(),
            "--dest",
            dest.to_str().unwrap(),
        ])
        .args(["--progress", "off", "--run-store"])
        .arg(dir.path().join("runs"))
        .env("SLUICE_RUNNER", "http://scheduler:50050")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("SLUICE_RUNNER"), "{stderr}");
    assert!(stderr.contains("df://"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!dest.exists());
}
