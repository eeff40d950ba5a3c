//! Shared fixtures: generated taxi data, the shared test data, the seed ETL's tasks.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use sluice::prelude::*;
use sluice_testkit::counting_store::CountingStore;
use sluice_testkit::taxi::{TaxiGenOptions, write_taxi_parquet};

/// `../shared/data`, beside the project.
pub fn shared_data(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data")
        .join(relative)
}

/// Generates `rows` taxi rows in row groups of `row_group_rows` into `dir/name`.
pub fn taxi_file(dir: &Path, name: &str, rows: u64, row_group_rows: usize) -> PathBuf {
    let path = dir.join(name);
    write_taxi_parquet(
        &path,
        &TaxiGenOptions::new(rows).with_row_group_rows(row_group_rows),
    )
    .expect("generate taxi data");
    path
}

/// A session whose local file system is behind a byte-counting store.
pub fn counting_session() -> (Session, Arc<CountingStore>) {
    let store = Arc::new(CountingStore::new(Arc::new(LocalFileSystem::new())));
    let session = Session::builder()
        .with_object_store(
            &url::Url::parse("file:///").unwrap(),
            Arc::clone(&store) as Arc<dyn ObjectStore>,
        )
        .build()
        .unwrap();
    (session, store)
}

/// Every file under `dir`, recursively (a symbolic link is listed, not followed), sorted.
/// A directory that does not exist holds none.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
            } else {
                found.push(entry.path());
            }
        }
    }
    found.sort();
    found
}

/// [`files_under`] as paths relative to `dir`, with `/`.
pub fn relative_files_under(dir: &Path) -> Vec<String> {
    files_under(dir)
        .iter()
        .map(|p| {
            let relative = p.strip_prefix(dir).unwrap();
            relative.to_string_lossy().replace('\\', "/")
        })
        .collect()
}

/// The arguments that make this test binary run `test` alone: a child-process entry
/// point, marked `#[ignore]` so that a normal run skips it, which reads what to do
/// from the environment its parent test sets.
pub fn child_test_args(test: &str) -> [&str; 5] {
    [
        test,
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ]
}

/// Everything left in `dir` (names), sorted.
pub fn dir_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[task]
pub async fn extract(cx: &TaskContext, source: &str) -> Result<Frame> {
    cx.read_parquet(source).await
}

#[task]
pub async fn transform(df: Frame) -> Result<Frame> {
    df.with_column("tip_fraction", col("tip_amount") / col("total_amount"))
}

#[task]
pub async fn load(df: Frame, dest: &str) -> Result<WriteSummary> {
    df.write_parquet(dest, ParquetWrite::zstd(3)).await
}

/// The seed ETL, as in `examples/etl.rs`.
#[flow]
pub async fn etl(source: &str, dest: &str) -> Result<WriteSummary> {
    let raw = extract(source).await?;
    let df = transform(raw).await?;
    load(df, dest).await
}
