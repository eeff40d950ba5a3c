//! `sluice-bench run` end to end at a small size: every in-process case runs as its own
//! process through `measure`, the report, the plots and the raw results are written,
//! and a missing Python peer is skipped with a note instead of failing the run. The
//! cache-hit cases read no source byte (they fail otherwise).

use std::process::Command;

#[test]
fn run_writes_the_report() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let out = dir.path().join("docs");
    let status = Command::new(env!("CARGO_BIN_EXE_sluice-bench"))
        .args(["run", "--rows", "20000", "--curve-rows", "40000"])
        .args(["--runs", "2", "--warmup", "1"])
        .arg("--data-dir")
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .args(["--python", "/nonexistent/python3"])
        .status()
        .expect("sluice-bench starts");
    assert!(status.success());

    let report = std::fs::read_to_string(out.join("BENCHMARKS.md")).expect("report");
    for heading in [
        "## Goals",
        "## etl at 20k rows",
        "## aggregate at 20k rows",
        "## rewrite at 20k rows",
        "## Memory curve: the seed ETL from 20k to 40k rows",
    ] {
        assert!(report.contains(heading), "no {heading:?} in\n{report}");
    }
    assert!(report.contains("- Note: Polars streaming skipped: cannot run `/nonexistent/python3`"));
    assert!(report.contains("- Note: DuckDB COPY skipped"));
    // Every engine wrote the whole input in the ETL.
    let etl_rows: Vec<&str> = report
        .split("## etl at 20k rows")
        .nth(1)
        .and_then(|s| s.split("\n\n").nth(2))
        .expect("the ETL table")
        .lines()
        .filter(|l| l.starts_with("| Sluice") || l.starts_with("| DataFusion"))
        .collect();
    // Lazy (the column copy, off, unvalidated), eager, DataFusion, persisted, cache hit
    // and mapped.
    assert_eq!(etl_rows.len(), 8, "{etl_rows:?}");
    assert!(
        etl_rows.iter().all(|l| l.contains("| 20000 | ")),
        "{etl_rows:?}"
    );

    let results: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out.join("bench/results.json")).expect("results.json"),
    )
    .expect("JSON");
    let cases = results["cases"].as_array().expect("cases");
    // 3 workloads x 8 engines at 20k, and the curve's 5 engines at 40k (lazy three ways,
    // eager, DataFusion).
    assert_eq!(cases.len(), 29);
    assert!(report.contains("Persisted seed ETL"), "{report}");
    assert!(
        report.contains("0 bytes in every cache-hit run"),
        "{report}"
    );
    for case in cases {
        let samples = case["samples"].as_array().expect("samples");
        let expected = if case["series"] == "main" { 2 } else { 1 };
        assert_eq!(samples.len(), expected, "{case}");
        for sample in samples {
            let rss = sample["peak_rss_mib"].as_f64().expect("rss");
            assert!(rss > 10.0 && rss < 4096.0, "{case}");
        }
    }
    for plot in ["peak_rss_vs_rows.svg", "wall_by_case.svg"] {
        let svg = std::fs::read_to_string(out.join("bench").join(plot)).expect("plot");
        assert!(svg.contains("Sluice eager"), "{plot}");
    }
    // Outputs are removed after each run; the generated input is kept for the next.
    let left: Vec<_> = std::fs::read_dir(data.join("out"))
        .expect("out dir")
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(data.join("taxi_20000.parquet").is_file());
}
