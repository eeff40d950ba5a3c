//! Error text a person can read: every kind of error, caused by the operation that
//! causes it wherever a test can cause it (a missing file, a bucket the S3 server does
//! not have, a 404 from the HTTP server, a malformed file from `../shared/data`, a real
//! timeout or cancellation), printed as the example and the CLI print it
//! (`error: ` + [`sluice::one_line`]) and snapshotted with `insta`, so that a change of
//! wording, or a cause printed twice, shows in review.
//!
//! What changes from run to run (temporary directories, ports, run ids, staging ids)
//! is replaced with placeholders by [`Scrub`] before a snapshot is taken.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{Field, Schema};
use datafusion::parquet::arrow::ArrowWriter;
use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use sluice::prelude::*;
use sluice::store::{
    OutputKind, RetryPolicy, StagedOutput, StoreBuilder, StoreError, StoreErrorKind, StoreRegistry,
    classify,
};
use sluice::{CheckpointStore, RunStore, one_line};
use sluice_testkit::servers::{Fault, HttpFileServer, S3Server};

use crate::common::{files_under, shared_data, taxi_file};
use crate::example::example_binary;

/// Replaces the parts of a message that change from run to run with placeholders.
#[derive(Default)]
struct Scrub {
    replacements: Vec<(String, String)>,
}

impl Scrub {
    /// Scrubs the temporary directory `dir` (as a path, and so also inside `file://` URLs).
    fn new(dir: &Path) -> Scrub {
        Scrub::default()
            .with(dir.display().to_string(), "[TMP]")
            .with(data_dir().display().to_string(), "[DATA]")
    }

    fn with(mut self, from: impl Into<String>, to: impl Into<String>) -> Scrub {
        let from = from.into();
        if !from.is_empty() {
            self.replacements.push((from, to.into()));
        }
        self
    }

    /// The text with every known value, and every loopback port, replaced.
    fn apply(&self, text: &str) -> String {
        let mut replacements = self.replacements.clone();
        // Longest first, so that a path inside another is not half-replaced.
        replacements.sort_by_key(|(from, _)| std::cmp::Reverse(from.len()));
        let mut text = text.to_string();
        for (from, to) in &replacements {
            text = text.replace(from, to);
        }
        scrub_ids(&scrub_durations(&scrub_ports(&text)))
    }
}

/// ` in 3.578895ms` → ` in [DURATION]` (how long a request took, as object_store says).
fn scrub_durations(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(" in ") {
        out.push_str(&rest[..at + 4]);
        rest = &rest[at + 4..];
        let number = rest
            .bytes()
            .take_while(|b| b.is_ascii_digit() || *b == b'.')
            .count();
        let unit = ["ns", "µs", "ms", "s"]
            .into_iter()
            .find(|u| number > 0 && rest[number..].starts_with(u));
        if let Some(unit) = unit {
            out.push_str("[DURATION]");
            rest = &rest[number + unit.len()..];
        }
    }
    out.push_str(rest);
    out
}

/// Runs of exactly 32 hex digits (staging ids, cache keys) → `[ID]`.
fn scrub_ids(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    for c in text.chars() {
        if c.is_ascii_hexdigit() {
            run.push(c);
            continue;
        }
        out.push_str(if run.len() == 32 { "[ID]" } else { &run });
        run.clear();
        out.push(c);
    }
    out.push_str(if run.len() == 32 { "[ID]" } else { &run });
    out
}

/// `127.0.0.1:PORT` → `127.0.0.1:[PORT]`.
fn scrub_ports(text: &str) -> String {
    const HOST: &str = "127.0.0.1:";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(HOST) {
        out.push_str(&rest[..at + HOST.len()]);
        rest = &rest[at + HOST.len()..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 {
            out.push_str("[PORT]");
        }
        rest = &rest[digits..];
    }
    out.push_str(rest);
    out
}

#[test]
fn scrub_replaces_paths_longest_first_and_ports() {
    let scrub = Scrub::default()
        .with("/tmp/a", "[A]")
        .with("/tmp/a/b", "[B]");
    assert_eq!(
        scrub.apply("/tmp/a/b/x and /tmp/a/y at http://127.0.0.1:40123/z, 127.0.0.1:"),
        "[B]/x and [A]/y at http://127.0.0.1:[PORT]/z, 127.0.0.1:"
    );
    assert_eq!(
        Scrub::default()
            .apply("GET x in 3.5ms, in 10µs, in 2 retries, key 0123456789abcdef0123456789abcdef/"),
        "GET x in [DURATION], in [DURATION], in 2 retries, key [ID]/"
    );
}

/// `../shared/data`, without the `..`.
fn data_dir() -> PathBuf {
    shared_data("").canonicalize().unwrap()
}

fn data(relative: &str) -> String {
    data_dir().join(relative).display().to_string()
}

/// What the example printed on standard error after `error: `, checking that it failed
/// with exactly one line and no panic message.
fn example_error(args: &[&str], env: &[(&'static str, String)]) -> String {
    let output = Command::new(example_binary())
        .args(args)
        .args(["--progress", "off"])
        .envs(env.iter().cloned())
        .env("RUST_LOG", "error")
        .output()
        .expect("run the example");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "not one line: {stderr}");
    lines[0].to_string()
}

/// Environment variables of a child process.
type Env = Vec<(&'static str, String)>;

/// The example's arguments for one run in `dir`: its run record goes there too.
fn example_args(dir: &Path, source: &str, dest: &str) -> Vec<String> {
    vec![
        "--source".into(),
        source.into(),
        "--dest".into(),
        dest.into(),
        "--run-store".into(),
        dir.join("runs").display().to_string(),
    ]
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// Asserts what a message must never do, whatever its wording: repeat a cause.
fn assert_no_repeats(text: &str) {
    for prefix in [
        "Arrow error: Arrow error",
        "Parquet error: Parquet error",
        "External error: External error",
        "query execution failed: query execution failed",
    ] {
        assert!(!text.contains(prefix), "{prefix:?} in {text}");
    }
    // No clause of three words or more said twice on one line.
    for line in text.lines() {
        let clauses: Vec<&str> = line.split(": ").map(str::trim).collect();
        for (i, clause) in clauses.iter().enumerate() {
            if clause.split_whitespace().count() >= 3 {
                assert!(
                    !clauses[i + 1..].contains(clause),
                    "{clause:?} is said twice in {line}"
                );
            }
        }
    }
}

/// Snapshots the text as the example prints it (`error: ...`), scrubbed.
fn snapshot(name: &str, text: &str, scrub: &Scrub) {
    let text = scrub.apply(text);
    assert_no_repeats(&text);
    insta::assert_snapshot!(name, text);
}

fn printed(error: &(dyn std::error::Error + 'static)) -> String {
    format!("error: {}", one_line(error))
}

/// A file of one batch of `columns`.
fn write_file(path: &Path, columns: Vec<(&str, ArrayRef)>) {
    let fields: Vec<Field> = columns
        .iter()
        .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
        .collect();
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns.into_iter().map(|(_, a)| a).collect(),
    )
    .unwrap();
    let mut writer =
        ArrowWriter::try_new(std::fs::File::create(path).unwrap(), batch.schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

/// A taxi file whose footer is valid and whose data pages are garbled, so that it fails
/// while it streams, not when the frame is built.
fn garbled_pages(dir: &Path) -> PathBuf {
    let path = taxi_file(dir, "garbled.parquet", 20_000, 20_000);
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    for byte in &mut bytes[middle - 20_000..middle + 20_000] {
        *byte = 0xA5;
    }
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Retries fast enough for tests that provoke failures.
fn quick_retries() -> RetryPolicy {
    RetryPolicy::default()
        .with_max_retries(2)
        .with_timeout(Duration::from_secs(10))
        .with_backoff(Duration::from_millis(10), Duration::from_millis(50))
}

/// A port nothing listens on any more.
fn dead_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// The seed example, as a new user runs it, against local files.
#[test]
fn the_example_prints_each_local_error_once() {
    let dir = tempfile::tempdir().unwrap();
    let scrub = Scrub::new(dir.path());
    let tmp = |name: &str| dir.path().join(name).display().to_string();
    let good = taxi_file(dir.path(), "good.parquet", 2_000, 2_000)
        .display()
        .to_string();
    let out = tmp("out/result.parquet");
    std::fs::write(dir.path().join("a-file"), b"x").unwrap();
    std::fs::create_dir(dir.path().join("no-parquet")).unwrap();
    std::fs::write(dir.path().join("no-parquet/readme.txt"), b"not data").unwrap();
    std::fs::create_dir(dir.path().join("mixed")).unwrap();
    write_file(
        &dir.path().join("mixed/a.parquet"),
        vec![("tip_amount", Arc::new(Float64Array::from(vec![1.5])))],
    );
    write_file(
        &dir.path().join("mixed/b.parquet"),
        vec![("tip_amount", Arc::new(StringArray::from(vec!["1.5"])))],
    );
    let garbled = garbled_pages(dir.path()).display().to_string();
    let cases: Vec<(&str, Vec<String>)> = vec![
        (
            "example_source_not_found",
            example_args(dir.path(), &tmp("nope.parquet"), &out),
        ),
        (
            "example_directory_without_parquet",
            example_args(dir.path(), &tmp("no-parquet/"), &out),
        ),
        (
            "example_not_parquet",
            example_args(
                dir.path(),
                &data("nyc_taxi/csv/gx_yellow_2021_sample_1k.csv"),
                &out,
            ),
        ),
        (
            "example_garbled_footer",
            example_args(
                dir.path(),
                &data("duckdb-parquet-testing/footer_broken/garbledfooter.parquet"),
                &out,
            ),
        ),
        (
            "example_garbled_pages",
            example_args(dir.path(), &garbled, &out),
        ),
        (
            "example_missing_column",
            example_args(
                dir.path(),
                &data("nyc_taxi/parquet/nyctaxi_2016-01-02_derived_zip_10k.parquet"),
                &out,
            ),
        ),
        (
            "example_schema_mismatch",
            example_args(dir.path(), &tmp("mixed/"), &out),
        ),
        (
            "example_destination_is_the_source",
            example_args(dir.path(), &good, &good),
        ),
        (
            "example_destination_under_a_file",
            example_args(dir.path(), &good, &tmp("a-file/out.parquet")),
        ),
        (
            "example_result_store_under_a_file",
            [
                example_args(dir.path(), &good, &out),
                vec!["--cache".into(), tmp("a-file/cache/")],
            ]
            .concat(),
        ),
        (
            "example_invalid_zstd_level",
            [
                example_args(dir.path(), &good, &out),
                vec!["--zstd-level".into(), "99".into()],
            ]
            .concat(),
        ),
        (
            "example_unsupported_scheme",
            example_args(dir.path(), &good, "gs://bucket/out.parquet"),
        ),
        (
            "example_invalid_url",
            example_args(dir.path(), "http://bad host/x.parquet", &out),
        ),
        (
            "example_destination_without_a_name",
            example_args(dir.path(), &good, "memory://bucket/"),
        ),
        (
            "example_flow_timeout",
            [
                example_args(dir.path(), &good, &out),
                vec!["--timeout".into(), "1ms".into()],
            ]
            .concat(),
        ),
    ];
    for (name, args) in &cases {
        let line = example_error(&strs(args), &[]);
        snapshot(name, &line, &scrub);
    }
    assert!(!Path::new(&out).exists());
    // The run record keeps each task's own error: the failing one, and those that
    // could not finish because of it.
    let summary = dir.path().join("run.json");
    let mut args = example_args(dir.path(), &garbled, &out);
    args.extend(["--summary".into(), summary.display().to_string()]);
    example_error(&strs(&args), &[]);
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&summary).unwrap()).unwrap();
    let mut tasks = String::new();
    for task in record["tasks"].as_array().unwrap() {
        tasks.push_str(&format!(
            "{} {}: {}\n",
            task["name"].as_str().unwrap(),
            task["state"].as_str().unwrap(),
            task["error"].as_str().unwrap_or("-"),
        ));
    }
    snapshot("example_task_errors_in_the_run_record", &tasks, &scrub);
    eprintln!("{} example runs snapshotted", cases.len() + 1);
}

/// The seed example against the in-process S3 server and the HTTP file server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_prints_each_remote_error_once() {
    let dir = tempfile::tempdir().unwrap();
    let scrub = Scrub::new(dir.path());
    let files = dir.path().join("served");
    std::fs::create_dir(&files).unwrap();
    taxi_file(&files, "yellow.parquet", 2_000, 2_000);
    let s3 = S3Server::start().await.unwrap();
    s3.create_bucket("sluice").unwrap();
    let http = HttpFileServer::start(&files).await.unwrap();
    let no_ranges = HttpFileServer::start_without_ranges(&files).await.unwrap();
    let out = dir.path().join("out/result.parquet").display().to_string();
    let mut wrong_secret = s3.env();
    for (key, value) in &mut wrong_secret {
        if *key == "AWS_SECRET_ACCESS_KEY" {
            *value = "not-the-secret".into();
        }
    }
    let cases: Vec<(&str, Vec<String>, Env)> = vec![
        (
            "example_s3_bucket_not_found",
            example_args(dir.path(), "s3://no-such-bucket/x.parquet", &out),
            s3.env(),
        ),
        (
            "example_s3_object_not_found",
            example_args(dir.path(), "s3://sluice/nope.parquet", &out),
            s3.env(),
        ),
        (
            "example_s3_access_denied",
            example_args(dir.path(), "s3://sluice/x.parquet", &out),
            wrong_secret,
        ),
        (
            "example_http_not_found",
            example_args(dir.path(), &http.url("missing.parquet"), &out),
            vec![],
        ),
        (
            "example_http_without_ranges",
            example_args(dir.path(), &no_ranges.url("yellow.parquet"), &out),
            vec![],
        ),
        (
            "example_http_destination_is_read_only",
            example_args(
                dir.path(),
                &http.url("yellow.parquet"),
                &http.url("out.parquet"),
            ),
            vec![],
        ),
    ];
    for (name, args, env) in cases {
        let line = tokio::task::spawn_blocking(move || example_error(&strs(&args), &env))
            .await
            .unwrap();
        snapshot(name, &line, &scrub);
    }
    assert!(!Path::new(&out).exists());
    assert!(!files.join("out.parquet").exists());
}

#[task]
async fn read(cx: &TaskContext, source: &str) -> Result<Frame> {
    cx.read_parquet(source).await
}

/// A lazy frame that takes far longer to stream than any test waits.
async fn endless(cx: &TaskContext) -> Result<Frame> {
    cx.sql(
        "SELECT v, random() AS a FROM generate_series(1, 1000000000) AS t(v)",
        [],
    )
    .await
}

/// Errors of the library API, as a program using Sluice prints them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn library_errors_print_each_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let scrub = Scrub::new(dir.path());
    let session = Session::new();
    let out = dir.path().join("out.parquet").display().to_string();

    // A plan that does not type-check, SQL that does not parse, an expression that fails
    // on the data.
    let numbers = session
        .sql("SELECT v FROM generate_series(1, 3) AS t(v)", [])
        .await
        .unwrap();
    let error = numbers
        .with_column("w", col("v") + lit("x"))
        .and_then(|f| f.select_columns(&["w"]))
        .err();
    let error = match error {
        Some(error) => error,
        None => numbers
            .with_column("w", col("v") + lit("x"))
            .unwrap()
            .collect()
            .await
            .unwrap_err(),
    };
    snapshot("library_plan_type_error", &printed(&error), &scrub);
    let error = session.sql("SELEC 1", []).await.unwrap_err();
    snapshot("library_plan_bad_sql", &printed(&error), &scrub);
    let error = session
        .sql(
            "SELECT CAST(concat('x', v) AS INT) AS n FROM generate_series(1, 3) AS t(v)",
            [],
        )
        .await
        .unwrap()
        .collect()
        .await
        .unwrap_err();
    snapshot("library_execution_cast", &printed(&error), &scrub);

    // A CSV source whose fifth row does not parse as the type inferred from the first.
    let csv = dir.path().join("bad.csv");
    std::fs::write(&csv, "n\n1\n2\n3\n4\noops\n").unwrap();
    let error = session
        .read_csv(
            csv.to_str().unwrap(),
            CsvReadOptions::new().schema_infer_max_records(2),
        )
        .await
        .unwrap()
        .collect()
        .await
        .unwrap_err();
    snapshot("library_read_csv_bad_row", &printed(&error), &scrub);

    // Garbled data pages under a valid footer, read by a sink: a failed write.
    let garbled = garbled_pages(dir.path());
    let error = session
        .read_parquet(garbled.to_str().unwrap())
        .await
        .unwrap()
        .write_parquet(&out, ParquetWrite::default())
        .await
        .unwrap_err();
    snapshot("library_write_of_garbled_pages", &printed(&error), &scrub);

    // Two spellings of one column, read case-insensitively.
    let cased = dir.path().join("cased.parquet");
    write_file(
        &cased,
        vec![
            ("Fare", Arc::new(Float64Array::from(vec![1.0]))),
            ("fare", Arc::new(Float64Array::from(vec![2.0]))),
        ],
    );
    let error = session
        .read_parquet_with(
            cased.to_str().unwrap(),
            ParquetRead::default().with_case_insensitive_names(true),
        )
        .await
        .unwrap_err();
    snapshot("library_ambiguous_column_names", &printed(&error), &scrub);

    // A run id no run has.
    let runs = RunStore::open(&session, dir.path().join("runs").to_str().unwrap()).unwrap();
    let error = runs.get("deadbeef").await.unwrap_err();
    snapshot("library_run_not_found", &printed(&error), &scrub);

    // Errors a task's own code raises, and a task that ran out of time.
    let run = Flow::new("own")
        .with_run_history(false)
        .run(serde_json::json!({}), async {
            let custom: Result<()> = Task::new("parse")
                .run(|_cx| async { Err(Error::custom("line 3 has 4 fields, expected 5")) })
                .await;
            snapshot("library_custom", &printed(&custom.unwrap_err()), &scrub);
            let retryable: Result<()> = Task::new("call_api")
                .with_retries(Retry::new(1))
                .run(|_cx| async {
                    Err(Error::retryable(std::io::Error::other(
                        "429 Too Many Requests",
                    )))
                })
                .await;
            snapshot(
                "library_retryable_after_retries",
                &printed(&retryable.unwrap_err()),
                &scrub,
            );
            let rows = Task::new("rows")
                .with_timeout(Duration::from_millis(200))
                .run(|cx| async move { endless(&cx).await })
                .await?;
            rows.write_parquet(&out, ParquetWrite::snappy()).await
        })
        .await;
    snapshot(
        "library_task_timeout",
        &printed(&run.output.unwrap_err()),
        &scrub,
    );

    // A flow run cancelled while it writes.
    let token = CancellationToken::new();
    let cancel = token.clone();
    let run = Flow::new("cancelled")
        .with_run_history(false)
        .configure(|o| o.with_cancellation(token))
        .run(serde_json::json!({}), async {
            let rows = Task::new("rows")
                .run(|cx| async move { endless(&cx).await })
                .await?;
            cancel.cancel();
            rows.write_parquet(&out, ParquetWrite::snappy()).await
        })
        .await;
    let scrub_run = Scrub::new(dir.path()).with(run.record.run_id.clone(), "[RUN]");
    snapshot(
        "library_cancelled",
        &printed(&run.output.unwrap_err()),
        &scrub_run,
    );
    assert!(!Path::new(&out).exists());

    // A bug of ours is never caused on purpose.
    let internal = Error::Internal {
        message: "a task run was completed twice".into(),
    };
    snapshot("constructed_internal", &printed(&internal), &scrub);
}

/// A checkpoint whose parts were bit-flipped after it was committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_checkpoint_is_named_once() {
    let dir = tempfile::tempdir().unwrap();
    let source = taxi_file(dir.path(), "in.parquet", 20_000, 10_000)
        .display()
        .to_string();
    let cache = dir.path().join("cache");
    let run_once = |dest: &str| {
        let (source, dest) = (source.clone(), dest.to_string());
        let cache = cache.display().to_string();
        async move {
            Flow::new("cached")
                .with_run_history(false)
                .with_result_store(&cache)
                .run(serde_json::json!({}), async {
                    let raw = read(&source).await?;
                    let doubled = Task::new("double")
                        .persist(Persist::Tee)
                        .run(|_cx| {
                            let raw = raw.clone();
                            async move { raw.with_column("twice", col("tip_amount") * lit(2.0)) }
                        })
                        .await?;
                    doubled.write_parquet(&dest, ParquetWrite::default()).await
                })
                .await
        }
    };
    let first = run_once(&dir.path().join("a.parquet").display().to_string()).await;
    first.output.unwrap();
    // Before the second run, which invalidates the checkpoint (and may delete its
    // folder before the error is returned, or after).
    let key = checkpoint_key(&cache);
    assert!(!key.is_empty(), "no checkpoint under {}", cache.display());
    let mut flipped = 0;
    for entry in files_under(&cache) {
        if entry.extension().is_some_and(|e| e == "parquet") {
            // Away from the footer's block, which the lookup checks (a miss there).
            let mut bytes = std::fs::read(&entry).unwrap();
            let end =
                (bytes.len() / 2).min(bytes.len().saturating_sub(sluice::BLOCK_SIZE as usize));
            if end > 4 {
                for b in &mut bytes[4..end] {
                    *b ^= 0x5a;
                }
                flipped += 1;
            }
            std::fs::write(&entry, bytes).unwrap();
        }
    }
    assert!(flipped > 0, "no checkpoint part under {}", cache.display());
    let second = run_once(&dir.path().join("b.parquet").display().to_string()).await;
    let error = second.output.unwrap_err();
    // "It has been invalidated": done when the failed run returns, not some time after.
    assert_eq!(checkpoint_key(&cache), "", "the manifest is still there");
    // Whichever part a partition reads first is the one named.
    snapshot(
        "checkpoint_corrupt",
        &printed(&error),
        &Scrub::new(dir.path())
            .with(key, "[KEY]")
            .with("/part-0.parquet", "/part-[N].parquet")
            .with("/part-1.parquet", "/part-[N].parquet"),
    );
}

/// The cache key directory of the one checkpoint under `cache`.
fn checkpoint_key(cache: &Path) -> String {
    files_under(cache)
        .into_iter()
        .find(|p| p.file_name().is_some_and(|n| n == "_manifest.json"))
        .and_then(|p| {
            p.parent()
                .and_then(|k| k.file_name())
                .map(|k| k.to_string_lossy().into_owned())
        })
        .unwrap_or_default()
}

/// The storage layer's own errors, and the checkpoint store's, by the operations that
/// raise them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_errors_print_each_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let registry = StoreRegistry::new();
    // A staged file never written: publishing it renames nothing.
    let dest = url::Url::parse("memory://bucket/out.parquet").unwrap();
    let staged = StagedOutput::new(&registry, &dest, OutputKind::File).unwrap();
    let scrub = Scrub::new(dir.path()).with(
        staged
            .staging_url()
            .path()
            .trim_start_matches('/')
            .to_string(),
        "[STAGING]",
    );
    let error = staged.publish().await.unwrap_err();
    assert!(matches!(error, StoreError::ObjectStore { .. }), "{error:?}");
    snapshot("store_object_store", &printed(&error), &scrub);
    // A directory on local disk under a file: the file system refuses to create it.
    std::fs::write(dir.path().join("a-file"), b"x").unwrap();
    let local = url::Url::from_directory_path(dir.path().join("a-file/parts")).unwrap();
    let staged = StagedOutput::new(&registry, &local, OutputKind::Directory).unwrap();
    let scrub = Scrub::new(dir.path()).with(
        staged
            .staging_url()
            .to_file_path()
            .unwrap()
            .display()
            .to_string(),
        "[STAGING]",
    );
    let error = staged.publish().await.unwrap_err();
    assert!(matches!(error, StoreError::Io { .. }), "{error:?}");
    snapshot("store_io", &printed(&error), &scrub);
    // A location that is no URL.
    let error = sluice::store::resolve_url("").unwrap_err();
    snapshot("store_invalid_url", &printed(&error), &scrub);
    // Lost a create-if-absent race: raised from object_store's `AlreadyExists`, which
    // only a race makes; constructed here.
    let conflict = sluice::Error::Store(StoreError::Conflict {
        url: "s3://bucket/cache/checkpoints/t/k/_manifest.json".into(),
    });
    snapshot("constructed_store_conflict", &printed(&conflict), &scrub);

    // A checkpoint store in a bucket that does not exist.
    let s3 = S3Server::start().await.unwrap();
    s3.create_bucket("sluice").unwrap();
    let builder = |bucket: &str, secret: &str| {
        StoreBuilder::from_url(&url::Url::parse(&format!("s3://{bucket}/")).unwrap())
            .with_endpoint(s3.endpoint())
            .with_region("us-east-1")
            .with_credentials(S3Server::ACCESS_KEY, secret, None)
            .with_allow_http(true)
            .with_retry(quick_retries())
            .build()
            .unwrap()
    };
    let session = Session::builder()
        .with_object_store(
            &url::Url::parse("s3://no-such-bucket/").unwrap(),
            builder("no-such-bucket", S3Server::SECRET_KEY),
        )
        .build()
        .unwrap();
    let error = CheckpointStore::open(&session, "s3://no-such-bucket/cache/")
        .unwrap()
        .list()
        .await
        .unwrap_err();
    snapshot(
        "checkpoint_store_bucket_not_found",
        &printed(&error),
        &scrub,
    );

    // What each kind of object store error reads as, by the request that causes it.
    let store = builder("sluice", S3Server::SECRET_KEY);
    let missing = builder("no-such-bucket", S3Server::SECRET_KEY);
    let denied = builder("sluice", "not-the-secret");
    let path = object_store::path::Path::from("k/x.bin");
    store
        .put(&path, PutPayload::from_static(b"abc"))
        .await
        .unwrap();
    let create = PutOptions::from(PutMode::Create);
    let stale = PutOptions::from(PutMode::Update(object_store::UpdateVersion {
        e_tag: Some("\"0000\"".into()),
        version: None,
    }));
    let files = dir.path().join("served");
    std::fs::create_dir(&files).unwrap();
    std::fs::write(files.join("x.bin"), b"0123456789").unwrap();
    let no_ranges = HttpFileServer::start_without_ranges(&files).await.unwrap();
    let no_ranges_store = StoreBuilder::from_url(&url::Url::parse(&no_ranges.url("")).unwrap())
        .with_retry(quick_retries())
        .build()
        .unwrap();
    let dead = format!("http://127.0.0.1:{}/", dead_port());
    let dead_store = StoreBuilder::from_url(&url::Url::parse(&dead).unwrap())
        .with_retry(quick_retries())
        .build()
        .unwrap();
    let failing = HttpFileServer::start(&files).await.unwrap();
    let failing_store = StoreBuilder::from_url(&url::Url::parse(&failing.url("")).unwrap())
        .with_retry(RetryPolicy::default().with_max_retries(0))
        .build()
        .unwrap();
    failing.stats().fail_next(1, Fault::Unavailable);
    let local: Arc<dyn ObjectStore> = Arc::new(object_store::local::LocalFileSystem::new());
    let on_disk = object_store::path::Path::from_filesystem_path(files.join("x.bin")).unwrap();
    let x = object_store::path::Path::from("x.bin");
    let memory = object_store::memory::InMemory::new();
    memory
        .put(&x, PutPayload::from_static(b"0123456789"))
        .await
        .unwrap();
    let results: Vec<(StoreErrorKind, object_store::Result<()>)> = vec![
        (
            StoreErrorKind::NotFound,
            store.get(&"k/nope.bin".into()).await.map(drop),
        ),
        (
            StoreErrorKind::BucketNotFound,
            missing.list(None).try_collect::<Vec<_>>().await.map(drop),
        ),
        (
            StoreErrorKind::Conflict,
            store
                .put_opts(&path, PutPayload::from_static(b"abc"), create)
                .await
                .map(drop),
        ),
        (
            StoreErrorKind::PreconditionFailed,
            store
                .put_opts(&path, PutPayload::from_static(b"abc"), stale)
                .await
                .map(drop),
        ),
        (
            StoreErrorKind::AccessDenied,
            denied.get(&path).await.map(drop),
        ),
        (
            StoreErrorKind::Unreachable,
            dead_store.get(&x).await.map(drop),
        ),
        (
            StoreErrorKind::Transient,
            failing_store.get(&x).await.map(drop),
        ),
        (
            StoreErrorKind::RangeNotSupported,
            no_ranges_store.get_range(&x, 2..4).await.map(drop),
        ),
        (
            StoreErrorKind::NotSupported,
            local
                .put_opts(&on_disk, PutPayload::from_static(b"abc"), stale_local())
                .await
                .map(drop),
        ),
        (
            StoreErrorKind::Other,
            memory.get_range(&x, 20..30).await.map(drop),
        ),
    ];
    let mut kinds = String::new();
    for (expected, result) in results {
        let error = result.expect_err(&format!("{expected:?}: the request must fail"));
        let kind = classify(&error);
        assert_eq!(kind, expected, "{error}");
        // Without the XML body S3 appends (it holds request ids).
        let line = one_line(&error);
        let line = line.split("<?xml").next().unwrap().trim_end();
        kinds.push_str(&format!("{kind:?}: {line}\n"));
    }
    snapshot("store_error_kinds", &kinds, &scrub);
}

fn stale_local() -> PutOptions {
    PutOptions::from(PutMode::Update(object_store::UpdateVersion {
        e_tag: Some("0".into()),
        version: None,
    }))
}

/// An endpoint nothing listens on, through a read (the store retries quickly).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_endpoint_is_named_once() {
    let dead = format!("http://127.0.0.1:{}/yellow.parquet", dead_port());
    let url = url::Url::parse(&dead).unwrap();
    let error = Session::builder()
        .with_object_store(
            &url,
            StoreBuilder::from_url(&url)
                .with_retry(quick_retries())
                .build()
                .unwrap(),
        )
        .build()
        .unwrap()
        .read_parquet(&dead)
        .await
        .unwrap_err();
    snapshot("library_unreachable", &printed(&error), &Scrub::default());
}

/// A persisted task over a time function, and a source replaced after its frame was
/// built: each refused with one line naming the task or the object, and what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncacheable_function_and_a_changed_source_are_named_once() {
    let dir = tempfile::tempdir().unwrap();
    let source = taxi_file(dir.path(), "in.parquet", 2_000, 1_000);
    let cache = dir.path().join("cache").display().to_string();
    let stamped = Flow::new("stamped")
        .with_run_history(false)
        .with_result_store(&cache)
        .run(serde_json::json!({}), async {
            let raw = read(&source.display().to_string()).await?;
            let stamped = Task::new("stamp")
                .persist(Persist::Tee)
                .run(|_cx| {
                    let raw = raw.clone();
                    async move { raw.with_column("at", datafusion::functions::expr_fn::now()) }
                })
                .await?;
            stamped.count().await
        })
        .await;
    let scrub = Scrub::new(dir.path());
    snapshot(
        "uncacheable_function",
        &printed(&stamped.output.unwrap_err()),
        &scrub,
    );

    let out = dir.path().join("out.parquet").display().to_string();
    let replaced = Flow::new("replaced")
        .with_run_history(false)
        .run(serde_json::json!({}), async {
            let raw = read(&source.display().to_string()).await?;
            taxi_file(dir.path(), "in.parquet", 3_000, 1_000);
            raw.write_parquet(&out, ParquetWrite::default()).await
        })
        .await;
    snapshot(
        "source_changed",
        &printed(&replaced.output.unwrap_err()),
        &scrub,
    );
    assert!(!Path::new(&out).exists());
}
