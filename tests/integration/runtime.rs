//! The task runtime: retries, timeouts, cancellation, hooks and run history, against
//! real sources (local files, the in-process S3 and HTTP servers) and real processes.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sluice::prelude::*;
use sluice::{RunFilter, RunStore, TaskRunRecord};
use sluice_store::{RetryPolicy, StoreBuilder};
use sluice_testkit::servers::{Fault, HttpFileServer, S3Server};

use crate::common::{dir_entries, extract, files_under, shared_data, taxi_file};
use crate::example::example_binary;

#[task(retries = 3, retry_delay = RetryDelay::Fixed(Duration::from_millis(20)))]
async fn load_with_retries(df: Frame, dest: &str) -> Result<WriteSummary> {
    df.write_parquet(dest, ParquetWrite::zstd(1)).await
}

#[task(retries = 3)]
async fn extract_with_retries(cx: &TaskContext, source: &str) -> Result<Frame> {
    cx.read_parquet(source).await
}

/// A session whose HTTP store does not retry on its own, so that the task's retries
/// are what recovers.
fn session_without_store_retries(server: &HttpFileServer) -> Session {
    let base = url::Url::parse(&server.url("")).unwrap();
    let store = StoreBuilder::from_url(&base)
        .with_retry(RetryPolicy::default().with_max_retries(0))
        .build()
        .unwrap();
    Session::builder()
        .with_object_store(&base, store)
        .build()
        .unwrap()
}

/// A lazy frame of `rows` rows that takes a while to stream (random values do not
/// compress, so the write is real work).
async fn slow_rows(cx: &TaskContext, rows: u64) -> Result<Frame> {
    cx.sql(
        &format!(
            "SELECT v, random() AS a, random() AS b, random() AS c \
             FROM generate_series(1, {rows}) AS t(v)"
        ),
        [],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_is_retried_against_a_server_that_fails_its_first_requests() {
    let dir = tempfile::tempdir().unwrap();
    taxi_file(dir.path(), "yellow.parquet", 50_000, 10_000);
    let server = HttpFileServer::start(dir.path()).await.unwrap();
    let session = session_without_store_retries(&server);
    let dest = dir.path().join("out.parquet").display().to_string();
    let runs = dir.path().join("runs").display().to_string();
    let source = server.url("yellow.parquet");
    let stats = server.stats();
    let run = Flow::new("retried")
        .with_run_store(&runs)
        .call(serde_json::json!({}), async {
            let raw = extract(&source).await?;
            // The footer is read; the data requests fail: twice 503, then fine.
            stats.fail_next(2, Fault::Unavailable);
            load_with_retries(raw, &dest).await
        })
        .with_session(session.clone())
        .run()
        .await;
    let written = run.output.expect("the retries recover");
    assert_eq!(written.rows, 50_000);
    let load = run.record.task("load_with_retries").unwrap();
    assert_eq!(load.state, TaskState::Completed);
    assert!(load.attempts.len() >= 2, "{:?}", load.attempts);
    let failed = &load.attempts[0];
    assert!(
        failed.error.as_deref().unwrap().contains("503"),
        "{failed:?}"
    );
    assert!(load.attempts.last().unwrap().error.is_none());
    // The upstream task whose stream failed completed on the rerun.
    let extract = run.record.task("extract").unwrap();
    assert_eq!(extract.state, TaskState::Completed, "{extract:?}");
    assert_eq!(extract.rows, Some(50_000));
    // The record with its attempts is in the run store.
    let stored = RunStore::open(&session, &runs)
        .unwrap()
        .get(&run.record.run_id)
        .await
        .unwrap();
    // (Durations parse back to within an ulp: compare what matters.)
    assert_eq!(stored.state, FlowState::Completed);
    let stored_load = stored.task("load_with_retries").unwrap();
    assert_eq!(stored_load.attempts.len(), load.attempts.len());
    assert_eq!(stored_load.attempts[0].error, load.attempts[0].error);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_file_is_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let source = shared_data("duckdb-parquet-testing/invalid.parquet");
    let source = source.display().to_string();
    let started = Instant::now();
    let run = Flow::new("malformed")
        .with_run_history(false)
        .run(serde_json::json!({}), async {
            let raw = extract_with_retries(&source).await?;
            load_with_retries(raw, &dir.path().join("o.parquet").display().to_string()).await
        })
        .await;
    let error = run.output.unwrap_err();
    assert!(!error.is_retryable(), "{error}");
    let extract = run.record.task("extract_with_retries").unwrap();
    assert_eq!(extract.state, TaskState::Failed);
    assert_eq!(extract.attempts.len(), 1, "{:?}", extract.attempts);
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(dir_entries(dir.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_error_marked_retryable_is_retried_and_others_are_not() {
    let calls = AtomicUsize::new(0);
    let run = Flow::new("own_errors")
        .with_run_history(false)
        .run(serde_json::json!({}), async {
            let flaky = Task::new("flaky")
                .with_retries(Retry::new(2))
                .run(|cx| {
                    let n = calls.fetch_add(1, Ordering::SeqCst);
                    async move {
                        assert_eq!(cx.attempt() as usize, n + 1);
                        if n < 2 {
                            Err(Error::retryable(std::io::Error::other("quota")))
                        } else {
                            Ok(n as u64)
                        }
                    }
                })
                .await?;
            let broken: Result<u64> = Task::new("broken")
                .with_retries(Retry::new(5))
                .run(|_cx| async { Err(Error::custom("a bug")) })
                .await;
            assert!(broken.is_err());
            Ok(flaky)
        })
        .await;
    assert_eq!(run.output.unwrap(), 2);
    let flaky = run.record.task("flaky").unwrap();
    assert_eq!(flaky.state, TaskState::Completed);
    assert_eq!(flaky.attempts.len(), 3);
    let broken = run.record.task("broken").unwrap();
    assert_eq!(broken.state, TaskState::Failed);
    assert_eq!(broken.attempts.len(), 1, "not retryable: one attempt");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lazy_task_times_out_while_its_output_streams_and_nothing_is_published() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("out.parquet").display().to_string();
    let run = Flow::new("slow")
        .with_run_history(false)
        .run(serde_json::json!({}), async {
            let rows = Task::new("rows")
                .with_timeout(Duration::from_millis(300))
                .run(|cx| async move { slow_rows(&cx, 200_000_000).await })
                .await?;
            rows.write_parquet(&dest, ParquetWrite::snappy()).await
        })
        .await;
    let error = run.output.unwrap_err();
    assert!(
        matches!(error.task(), Some("rows")) && error.to_string().contains("timed out"),
        "{error}"
    );
    let rows = run.record.task("rows").unwrap();
    assert_eq!(rows.state, TaskState::Failed);
    assert!(
        rows.error
            .as_deref()
            .unwrap()
            .contains("timed out after 300ms")
    );
    assert!(
        dir_entries(dir.path()).is_empty(),
        "{:?}",
        dir_entries(dir.path())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_timeout_stops_the_plans_and_cancels_the_running_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("out.parquet").display().to_string();
    let started = Instant::now();
    let run = Flow::new("bounded")
        .with_run_history(false)
        .configure(|o| o.with_timeout(Duration::from_millis(500)))
        .run(serde_json::json!({}), async {
            let rows = Task::new("rows")
                .run(|cx| async move { slow_rows(&cx, 200_000_000).await })
                .await?;
            Task::new("write")
                .run(|_cx| {
                    let (rows, dest) = (rows.clone(), dest.clone());
                    async move { rows.write_parquet(&dest, ParquetWrite::snappy()).await }
                })
                .await
        })
        .await;
    let stopped = started.elapsed();
    assert!(
        matches!(run.output, Err(Error::Timeout { scope: "flow", .. })),
        "{:?}",
        run.output
    );
    assert_eq!(run.record.state, FlowState::Failed);
    for task in &run.record.tasks {
        assert_eq!(task.state, TaskState::Cancelled, "{task:?}");
        assert!(
            task.reason.as_deref().unwrap().contains("timed out"),
            "{task:?}"
        );
    }
    assert_eq!(dir_entries(dir.path()), Vec::<String>::new(), "leftovers");
    assert!(stopped < Duration::from_secs(20), "took {stopped:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_an_s3_multipart_write_leaves_nothing_on_the_server() {
    let server = S3Server::start().await.unwrap();
    server.create_bucket("out").unwrap();
    let bucket = url::Url::parse("s3://out/").unwrap();
    let store = StoreBuilder::from_url(&bucket)
        .with_endpoint(server.endpoint())
        .with_region("us-east-1")
        .with_credentials(S3Server::ACCESS_KEY, S3Server::SECRET_KEY, None)
        .with_allow_http(true)
        .build()
        .unwrap();
    let session = Session::builder()
        .with_object_store(&bucket, store)
        .build()
        .unwrap();
    let token = CancellationToken::new();
    let cancelled_tasks = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&cancelled_tasks);
    let flow_hooks = Arc::new(AtomicUsize::new(0));
    let flow_seen = Arc::clone(&flow_hooks);
    let flow = Flow::new("cancelled")
        .with_run_history(false)
        .configure(move |o| {
            o.on_cancellation(move |record| {
                assert_eq!(record.state, FlowState::Cancelled);
                flow_seen.fetch_add(1, Ordering::SeqCst);
            })
        })
        .call(serde_json::json!({}), async {
            let rows = Task::new("rows")
                .on_cancellation(move |_| {
                    seen.fetch_add(1, Ordering::SeqCst);
                })
                .run(|cx| async move { slow_rows(&cx, 300_000_000).await })
                .await?;
            rows.write_parquet("s3://out/big.parquet", ParquetWrite::snappy())
                .await
        })
        .with_session(session)
        .with_cancellation(token.clone());
    let flow = tokio::spawn(flow.run());
    // Cancel once a multipart upload is in flight on the server.
    let waited = Instant::now();
    while server.pending_uploads() == 0 {
        assert!(
            waited.elapsed() < Duration::from_secs(120),
            "no multipart upload started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cancelled_at = Instant::now();
    token.cancel();
    let run = flow.await.unwrap();
    let stopped = cancelled_at.elapsed();
    assert!(matches!(run.output, Err(Error::Cancelled { .. })));
    assert_eq!(run.record.state, FlowState::Cancelled);
    assert_eq!(run.record.tasks[0].state, TaskState::Cancelled);
    assert_eq!(
        cancelled_tasks.load(Ordering::SeqCst),
        1,
        "the hook fires once"
    );
    assert_eq!(flow_hooks.load(Ordering::SeqCst), 1);
    // No pending upload, no staging object, no output.
    assert_eq!(server.pending_uploads(), 0);
    let left: Vec<_> = files_under(&server.bucket_dir("out"));
    assert!(left.is_empty(), "left on the server: {left:?}");
    eprintln!("cancelled an S3 multipart write: the run reported {stopped:?} after cancel()");
    assert!(stopped < Duration::from_secs(15), "took {stopped:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_fire_once_with_the_final_record() {
    let completed: Arc<std::sync::Mutex<Vec<TaskRunRecord>>> = Arc::default();
    let failed = Arc::new(AtomicUsize::new(0));
    let flow_completed = Arc::new(AtomicUsize::new(0));
    let (c, f, fc) = (
        Arc::clone(&completed),
        Arc::clone(&failed),
        Arc::clone(&flow_completed),
    );
    let run = Flow::new("hooks")
        .with_run_history(false)
        .configure(move |o| {
            o.on_completion(move |r| {
                assert_eq!(r.state, FlowState::Completed);
                fc.fetch_add(1, Ordering::SeqCst);
            })
        })
        .run(serde_json::json!({}), async move {
            let c2 = Arc::clone(&c);
            let df = Task::new("numbers")
                .on_completion(move |r| c.lock().unwrap().push(r.clone()))
                .on_failure(move |_| {
                    f.fetch_add(1, Ordering::SeqCst);
                })
                .run(|cx| async move {
                    cx.sql("SELECT * FROM (VALUES (1), (2), (3)) AS t(n)", [])
                        .await
                })
                .await?;
            // Executed twice: the hook still fires once.
            let rows = |batches: Vec<sluice::datafusion::arrow::record_batch::RecordBatch>| {
                batches.iter().map(|b| b.num_rows() as u64).sum::<u64>()
            };
            let n = rows(df.collect().await?);
            assert_eq!(rows(df.collect().await?), n);
            drop(c2);
            Ok(n)
        })
        .await;
    assert_eq!(run.output.unwrap(), 3);
    let completed = completed.lock().unwrap();
    assert_eq!(completed.len(), 1);
    assert_eq!(completed[0].state, TaskState::Completed);
    assert_eq!(completed[0].rows, Some(3));
    assert_eq!(failed.load(Ordering::SeqCst), 0);
    assert_eq!(flow_completed.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_records_round_trip_and_filter() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().display().to_string();
    let ok = Flow::new("first")
        .with_run_store(&store)
        .run(
            serde_json::json!({"source": "https://user:hunter2@example.com/x.parquet"}),
            async { Ok(()) },
        )
        .await;
    let failed = Flow::new("second")
        .with_run_store(&store)
        .run(serde_json::json!({}), async {
            Task::new("boom")
                .run(|_cx| async { Err::<(), _>(Error::custom("boom")) })
                .await
        })
        .await;
    let runs = RunStore::open(&Session::new(), &store).unwrap();
    let all = runs.list(&RunFilter::default()).await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].run_id, failed.record.run_id, "newest first");
    assert_eq!(all[1].run_id, ok.record.run_id);
    assert_eq!(all[1].tasks, ok.record.tasks);
    let only_failed = runs
        .list(&RunFilter::default().with_state(FlowState::Failed))
        .await
        .unwrap();
    assert_eq!(only_failed.len(), 1);
    assert_eq!(only_failed[0].flow, "second");
    assert_eq!(only_failed[0].tasks[0].error.as_deref(), Some("boom"));
    let of_first = runs
        .list(&RunFilter::default().with_flow("first"))
        .await
        .unwrap();
    assert_eq!(of_first.len(), 1);
    // Credentials in parameters are not recorded.
    let text = std::fs::read_to_string(
        dir.path()
            .join("runs/first")
            .join(format!("{}.json", ok.record.run_id)),
    )
    .unwrap();
    assert!(!text.contains("hunter2"), "{text}");
    let missing = runs.get("no-such-run").await.unwrap_err();
    assert!(matches!(missing, Error::RunNotFound { .. }), "{missing}");
}

/// The example started on 1.5M generated rows in `dir`, recording its run in
/// `dir/runs`; returns once the run's first record is written (it is writing by then).
/// The run records under `runs`: complete ones only, not the staging file a local
/// store writes a record into before renaming it into place (`NAME.json#N`), which a
/// process killed at that moment leaves behind, empty.
fn run_records(runs: &Path) -> Vec<std::path::PathBuf> {
    files_under(runs)
        .into_iter()
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .collect()
}

fn example_started(dir: &Path, stderr: Stdio) -> std::process::Child {
    let source = taxi_file(dir, "in.parquet", 1_500_000, 100_000);
    let runs = dir.join("runs");
    let child = Command::new(example_binary())
        .arg("--source")
        .arg(&source)
        .arg("--dest")
        .arg(dir.join("out.parquet"))
        .arg("--run-store")
        .arg(&runs)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let waited = Instant::now();
    while run_records(&runs).is_empty() {
        assert!(waited.elapsed() < Duration::from_secs(60), "no run record");
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

#[test]
fn ctrl_c_cancels_the_example_which_exits_130_and_records_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("out.parquet");
    let runs = dir.path().join("runs");
    let child = example_started(dir.path(), Stdio::piped());
    std::thread::sleep(Duration::from_millis(200));
    let interrupted = Instant::now();
    // SIGINT, as Ctrl-C sends it.
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    let stopped = interrupted.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.code() == Some(0) {
        // The run finished before the signal arrived: nothing to check.
        eprintln!("the run ended before the interrupt ({stopped:?})");
        return;
    }
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("cancelled"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!dest.exists());
    assert_eq!(dir_entries(dir.path()), ["in.parquet", "runs"]);
    let records = run_records(&runs);
    assert_eq!(records.len(), 1);
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&records[0]).unwrap()).unwrap();
    assert_eq!(record["state"], "Cancelled");
    assert!(record["end"].is_string());
    eprintln!("SIGINT to exit: {stopped:?}");
    assert!(stopped < Duration::from_secs(10), "took {stopped:?}");
}

#[test]
fn a_killed_process_leaves_a_running_record() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let mut child = example_started(dir.path(), Stdio::null());
    child.kill().unwrap();
    child.wait().unwrap();
    let records = run_records(&runs);
    assert_eq!(records.len(), 1);
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&records[0]).unwrap()).unwrap();
    if record["state"] == "Running" {
        assert!(record["end"].is_null());
    } else {
        // The run ended before the kill.
        assert_eq!(record["state"], "Completed");
    }
}

/// A task that sleeps `ms` while counting how many run at once.
async fn counted(
    name: String,
    tags: &[&str],
    ms: u64,
    now: &AtomicUsize,
    max: &AtomicUsize,
) -> Result<u64> {
    let mut task = Task::new(name);
    for tag in tags {
        task = task.with_tag(*tag);
    }
    task.run(|_cx| async {
        let running = now.fetch_add(1, Ordering::SeqCst) + 1;
        max.fetch_max(running, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        now.fetch_sub(1, Ordering::SeqCst);
        Ok(ms)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_runs_calls_at_once_within_the_flow_and_tag_limits() {
    let (now, max) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let run = Flow::new("limited")
        .with_run_history(false)
        .configure(|o| o.with_task_concurrency(2).with_tag_concurrency("api", 1))
        .run(serde_json::json!({}), async {
            let all = map(0..6, |i| counted(format!("t{i}"), &[], 50, &now, &max)).await?;
            assert_eq!(all.len(), 6);
            let flow_max = max.swap(0, Ordering::SeqCst);
            map(0..3, |i| {
                counted(format!("api{i}"), &["api"], 30, &now, &max)
            })
            .await?;
            Ok(flow_max)
        })
        .await;
    assert_eq!(run.output.unwrap(), 2, "the flow's limit, reached");
    assert_eq!(max.load(Ordering::SeqCst), 1, "the tag's limit");
    assert_eq!(run.record.tasks.len(), 9);
    assert!(
        run.record
            .tasks
            .iter()
            .all(|t| t.state == TaskState::Completed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sinks_awaited_together_run_at_the_same_time() {
    let dir = tempfile::tempdir().unwrap();
    let source = taxi_file(dir.path(), "in.parquet", 300_000, 50_000)
        .display()
        .to_string();
    let (a, b) = (
        dir.path().join("a.parquet").display().to_string(),
        dir.path().join("b.parquet").display().to_string(),
    );
    let run = Flow::new("fan_out")
        .with_run_history(false)
        .run(serde_json::json!({}), async {
            let raw = extract(&source).await?;
            let (x, y) = futures::join!(
                load_with_retries(raw.clone(), &a),
                load_with_retries(raw.clone(), &b)
            );
            Ok(x?.rows + y?.rows)
        })
        .await;
    assert_eq!(run.output.unwrap(), 600_000);
    let loads: Vec<_> = run
        .record
        .tasks
        .iter()
        .filter(|t| t.name == "load_with_retries")
        .collect();
    let (first, second) = (loads[0], loads[1]);
    assert!(
        first.start < second.end.unwrap() && second.start < first.end.unwrap(),
        "the two writes did not overlap: {first:?} {second:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_mapped_call_stops_its_siblings_and_unawaited_submits_are_stopped() {
    let run = Flow::new("siblings")
        .with_run_history(false)
        .run(serde_json::json!({}), async {
            let background = submit(Task::new("awaited").run(|_cx| async { Ok(5u64) }));
            let _forgotten = submit(Task::new("forgotten").run(|_cx| async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok(0u64)
            }));
            assert_eq!(background.await?, 5);
            let mapped = map(0..3u64, |i| {
                Task::new(format!("m{i}")).run(move |_cx| async move {
                    if i == 1 {
                        // Once every call has started.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        Err(Error::custom("bad month"))
                    } else {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        Ok(i)
                    }
                })
            })
            .await;
            assert!(mapped.is_err());
            Ok(())
        })
        .await;
    run.output.unwrap();
    let names: Vec<_> = run
        .record
        .tasks
        .iter()
        .map(|t| (&t.name, t.state))
        .collect();
    let state = |name: &str| {
        run.record
            .task(name)
            .unwrap_or_else(|| panic!("no {name} in {names:?}"))
            .state
    };
    assert_eq!(state("awaited"), TaskState::Completed);
    assert_eq!(state("m1"), TaskState::Failed);
    for stopped in ["m0", "m2", "forgotten"] {
        assert_eq!(state(stopped), TaskState::Cancelled, "{stopped}");
        assert!(run.record.task(stopped).unwrap().reason.is_some());
    }
}

#[test]
fn the_example_maps_extract_over_several_sources() {
    let dir = tempfile::tempdir().unwrap();
    let a = taxi_file(dir.path(), "a.parquet", 30_000, 10_000);
    let b = taxi_file(dir.path(), "b.parquet", 20_000, 10_000);
    let dest = dir.path().join("out.parquet");
    let summary = dir.path().join("run.json");
    let output = Command::new(example_binary())
        .arg("--source")
        .arg(&a)
        .arg("--source")
        .arg(&b)
        .arg("--dest")
        .arg(&dest)
        .arg("--run-store")
        .arg(dir.path().join("runs"))
        .arg("--summary")
        .arg(&summary)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&summary).unwrap()).unwrap();
    let tasks = record["tasks"].as_array().unwrap();
    let extracts: Vec<_> = tasks.iter().filter(|t| t["name"] == "extract").collect();
    assert_eq!(extracts.len(), 2);
    assert_eq!(
        extracts[0]["rows"].as_u64().unwrap() + extracts[1]["rows"].as_u64().unwrap(),
        50_000
    );
    let load = tasks.iter().find(|t| t["name"] == "load").unwrap();
    assert_eq!(load["rows"], 50_000);
}

#[test]
fn the_example_prints_progress_lines_and_keeps_task_logs_in_its_record() {
    let dir = tempfile::tempdir().unwrap();
    let source = taxi_file(dir.path(), "in.parquet", 1_000_000, 100_000);
    let summary = dir.path().join("run.json");
    let output = Command::new(example_binary())
        .arg("--source")
        .arg(&source)
        .arg("--dest")
        .arg(dir.path().join("out.parquet"))
        .arg("--run-store")
        .arg(dir.path().join("runs"))
        .arg("--summary")
        .arg(&summary)
        .args(["--progress", "lines:50ms"])
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    // Not a terminal: plain lines, with the footer row count as the total.
    let lines: Vec<_> = stderr
        .lines()
        .filter(|l| l.starts_with("progress etl "))
        .collect();
    assert!(lines.len() >= 2, "{stderr}");
    assert!(
        lines.iter().any(|l| l.contains("of 1.0M (")),
        "no percentage: {lines:?}"
    );
    assert!(lines.last().unwrap().contains("(done,"), "{lines:?}");
    // Log lines carry the flow-run and task-run ids, from the task's span.
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&summary).unwrap()).unwrap();
    let run_id = record["run_id"].as_str().unwrap();
    assert!(
        stderr
            .lines()
            .any(|l| l.contains(&format!("flow_run={run_id}")) && l.contains("task_run=")),
        "{stderr}"
    );
    // And the ones emitted inside a task are in its record.
    let load = record["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "load")
        .unwrap();
    let logs = load["logs"].as_array().unwrap();
    assert!(
        logs.iter().any(|l| l["message"]
            .as_str()
            .unwrap()
            .starts_with("published output")),
        "{logs:?}"
    );
}
