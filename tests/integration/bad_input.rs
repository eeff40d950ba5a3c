//! Bad input: a typed error naming the task and the object, and nothing published.

use std::path::Path;

use sluice::prelude::*;

use crate::common::{dir_entries, etl, shared_data, taxi_file};

/// Runs the seed ETL into a fresh `out/` folder and returns the error, after checking
/// that nothing at all was left there.
async fn failing_etl(source: &str) -> Error {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let dest = out.join("result.parquet");
    let run = etl(source, dest.to_str().unwrap()).run().await;
    let error = run.output.expect_err("the flow must fail");
    assert_eq!(run.record.state, FlowState::Failed);
    assert_eq!(
        run.record.error.as_deref(),
        Some(error.to_string().as_str())
    );
    assert!(!dest.exists(), "output published despite {error}");
    assert_eq!(
        dir_entries(&out),
        Vec::<String>::new(),
        "leftovers after {error}"
    );
    error
}

fn assert_names(error: &Error, task: &str, object: &str) {
    assert_eq!(error.task(), Some(task), "{error}");
    let text = error.to_string();
    assert!(
        text.contains(object),
        "error does not name {object}: {text}"
    );
    assert!(!text.contains('\n'), "error is not one line: {text}");
}

#[tokio::test]
async fn a_missing_file_is_a_source_not_found_error_from_extract() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.parquet");
    let error = failing_etl(missing.to_str().unwrap()).await;
    assert_names(&error, "extract", "nope.parquet");
    assert!(
        matches!(&error, Error::Task { source, .. } if matches!(**source, Error::SourceNotFound { .. })),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_directory_without_parquet_files_is_a_source_not_found_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("readme.txt"), "not data").unwrap();
    let error = failing_etl(&format!("{}/", dir.path().display())).await;
    assert_names(&error, "extract", &dir.path().display().to_string());
}

#[tokio::test]
async fn a_file_that_is_not_parquet_names_the_file() {
    let csv = shared_data("nyc_taxi/csv/gx_yellow_2021_sample_1k.csv");
    let error = failing_etl(csv.to_str().unwrap()).await;
    assert_names(&error, "extract", "gx_yellow_2021_sample_1k.csv");
    assert!(
        matches!(&error, Error::Task { source, .. } if matches!(**source, Error::InvalidParquet { .. })),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_truncated_parquet_file_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let whole = taxi_file(dir.path(), "whole.parquet", 20_000, 8_192);
    let bytes = std::fs::read(&whole).unwrap();
    let truncated = dir.path().join("truncated.parquet");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let error = failing_etl(truncated.to_str().unwrap()).await;
    assert_names(&error, "extract", "truncated.parquet");
}

#[tokio::test]
async fn one_corrupt_file_in_a_directory_is_named() {
    let dir = tempfile::tempdir().unwrap();
    taxi_file(dir.path(), "a.parquet", 5_000, 5_000);
    taxi_file(dir.path(), "b.parquet", 5_000, 5_000);
    std::fs::write(dir.path().join("c.parquet"), b"PAR1 definitely not parquet").unwrap();
    let error = failing_etl(&format!("{}/", dir.path().display())).await;
    assert_names(&error, "extract", "c.parquet");
}

/// The shared malformed files that the Parquet reader rejects: broken footers, schemas
/// and data pages, invalid UTF-8, fuzzer output. (A few files pyarrow rejects read fine
/// here, e.g. `page_size_corruption.parquet`; they are not listed.)
const MALFORMED: &[&str] = &[
    "duckdb-parquet-testing/broken-arrow.parquet",
    "duckdb-parquet-testing/empty.parquet",
    "duckdb-parquet-testing/invalid.parquet",
    "duckdb-parquet-testing/invalid_utf8_dba.parquet",
    "duckdb-parquet-testing/invalid_utf8_dictionary.parquet",
    "duckdb-parquet-testing/invalid_utf8_dlba.parquet",
    "parquet-testing/bad_data/ARROW-GH-41317.parquet",
    "parquet-testing/bad_data/ARROW-GH-41321.parquet",
    "parquet-testing/bad_data/ARROW-GH-45185.parquet",
    "parquet-testing/bad_data/ARROW-GH-47662.parquet",
    "parquet-testing/bad_data/ARROW-RS-GH-6229-DICTHEADER.parquet",
    "parquet-testing/bad_data/ARROW-RS-GH-6229-LEVELS.parquet",
    "parquet-testing/bad_data/PARQUET-1481.parquet",
];

#[tokio::test]
async fn every_malformed_shared_file_fails_naming_the_task_and_the_file() {
    let mut paths: Vec<_> = MALFORMED.iter().map(|name| shared_data(name)).collect();
    for folder in [
        "duckdb-parquet-testing/broken",
        "duckdb-parquet-testing/footer_broken",
    ] {
        for entry in std::fs::read_dir(shared_data(folder)).unwrap() {
            paths.push(entry.unwrap().path());
        }
    }
    assert_eq!(paths.len(), MALFORMED.len() + 20 + 8);
    for path in paths {
        // Footer errors surface when the frame is built, page errors while the sink
        // streams (some from a decoder panic, caught): either way the reading task is
        // named, with the file, and nothing is published.
        let error = read_all(&path).await;
        let name = path.file_name().unwrap().to_str().unwrap();
        assert_names(&error, "read", name);
    }
}

#[task]
async fn read(cx: &TaskContext, source: &str) -> Result<Frame> {
    cx.read_parquet(source).await
}

#[task]
async fn save(df: Frame, dest: &str) -> Result<WriteSummary> {
    df.write_parquet(dest, ParquetWrite::default()).await
}

#[flow]
async fn copy(source: &str, dest: &str) -> Result<WriteSummary> {
    save(read(source).await?, dest).await
}

/// Copies every column of `path`, expecting a failure; checks nothing is published.
async fn read_all(path: &Path) -> Error {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("copy.parquet");
    let run = copy(path.to_str().unwrap(), dest.to_str().unwrap())
        .run()
        .await;
    let error = run
        .output
        .expect_err(&format!("reading {} must fail", path.display()));
    assert!(!dest.exists());
    assert_eq!(dir_entries(dir.path()), Vec::<String>::new());
    let read = run.record.task("read").unwrap();
    assert_eq!(read.state, TaskState::Failed, "{error}");
    if let Some(save) = run.record.task("save") {
        assert_eq!(save.state, TaskState::Failed, "{error}");
    }
    error
}

#[tokio::test]
async fn a_file_without_the_needed_columns_fails_in_transform_naming_column_and_file() {
    let path = shared_data("nyc_taxi/parquet/nyctaxi_2016-01-02_derived_zip_10k.parquet");
    let error = failing_etl(path.to_str().unwrap()).await;
    assert_names(
        &error,
        "transform",
        "nyctaxi_2016-01-02_derived_zip_10k.parquet",
    );
    assert!(error.to_string().contains("tip_amount"), "{error}");
    assert!(
        matches!(&error, Error::Task { source, .. } if matches!(**source, Error::MissingColumn { .. })),
        "{error:?}"
    );
}

#[tokio::test]
async fn real_tlc_samples_with_other_schemas_run_through_the_seed_etl() {
    for name in [
        "yellow_2022-01_100k.parquet",
        "yellow_2025-01_10k_ts_ns.parquet",
        "yellow_2025-02_sample_5k.parquet",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.parquet");
        let path = shared_data(&format!("nyc_taxi/parquet/{name}"));
        let written = etl(path.to_str().unwrap(), dest.to_str().unwrap())
            .await
            .unwrap();
        let rows = Session::new()
            .read_parquet(path.to_str().unwrap())
            .await
            .unwrap()
            .count()
            .await
            .unwrap();
        assert_eq!(written.rows, rows, "{name}");
    }
}
