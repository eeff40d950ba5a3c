//! Flows on a Ballista cluster: a scheduler and two executors started as separate
//! processes (`sluice scheduler`, `sluice executor`) on loopback ports, reading and
//! writing S3 (the in-process s3s server, or `SLUICE_TEST_S3_ENDPOINT`).
//!
//! Needs the cargo feature `ballista` (the README's test command turns it on).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sluice::prelude::*;
use sluice::{CheckpointStore, FlowRun, Runner, TaskExecution};

use crate::common::{etl, taxi_file};
use crate::remote::S3Target;

/// `target/<profile>/sluice`, which `cargo test --workspace` builds.
fn cli_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let path = profile_dir.join(format!("sluice{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace --features ballista,sluice-cli/ballista`",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Two free ports in a row (an executor's Flight port and its gRPC port).
fn free_port_pair() -> u16 {
    loop {
        let port = free_port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

fn wait_for_port(port: u16, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the {what} exited before listening: {status}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the {what} did not listen on port {port} within 60 s");
}

/// A scheduler and executors, each its own process, killed on drop.
struct TestCluster {
    scheduler: Child,
    scheduler_port: u16,
    executors: Vec<Child>,
    work_dirs: Vec<tempfile::TempDir>,
    logs: tempfile::TempDir,
}

impl TestCluster {
    fn start(executors: usize, env: &[(&'static str, String)]) -> TestCluster {
        let logs = tempfile::tempdir().unwrap();
        let scheduler_port = free_port();
        let log = |name: &str| std::fs::File::create(logs.path().join(name)).unwrap();
        let mut scheduler = Command::new(cli_binary())
            .args([
                "scheduler",
                "--bind",
                &format!("127.0.0.1:{scheduler_port}"),
            ])
            .args(["--executor-timeout", "4", "--no-executor-timeout", "3"])
            .envs(env.iter().cloned())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log("scheduler.log"))
            .spawn()
            .unwrap();
        wait_for_port(scheduler_port, &mut scheduler, "scheduler");
        let mut cluster = TestCluster {
            scheduler,
            scheduler_port,
            executors: Vec::new(),
            work_dirs: Vec::new(),
            logs,
        };
        for i in 0..executors {
            cluster.add_executor(i, env);
        }
        // Executors register on start; give the scheduler a moment to take them in.
        std::thread::sleep(Duration::from_millis(500));
        cluster
    }

    fn add_executor(&mut self, i: usize, env: &[(&'static str, String)]) {
        let port = free_port_pair();
        let work_dir = tempfile::tempdir().unwrap();
        let log =
            std::fs::File::create(self.logs.path().join(format!("executor-{i}.log"))).unwrap();
        let mut child = Command::new(cli_binary())
            .args(["executor", "--scheduler"])
            .arg(format!("127.0.0.1:{}", self.scheduler_port))
            .args(["--bind", &format!("127.0.0.1:{port}"), "--slots", "2"])
            .args(["--heartbeat-interval", "1", "--work-dir"])
            .arg(work_dir.path())
            .envs(env.iter().cloned())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        wait_for_port(port, &mut child, "executor");
        self.executors.push(child);
        self.work_dirs.push(work_dir);
    }

    fn runner(&self) -> Runner {
        Runner::ballista(format!("df://127.0.0.1:{}", self.scheduler_port))
    }

    /// Whether the executor `i` ran tasks: Ballista keeps each job's stage output in
    /// a folder per job under the executor's work directory.
    fn ran_tasks(&self, i: usize) -> bool {
        std::fs::read_dir(self.work_dirs[i].path())
            .map(|entries| entries.count() > 0)
            .unwrap_or(false)
    }

    /// Whether the executor `i` has started a task (its log says so).
    fn started_a_task(&self, i: usize) -> bool {
        std::fs::read_to_string(self.logs.path().join(format!("executor-{i}.log")))
            .is_ok_and(|log| log.contains("Execute task"))
    }

    fn logs(&self) -> String {
        let mut text = String::new();
        for entry in std::fs::read_dir(self.logs.path()).unwrap().flatten() {
            let body = std::fs::read_to_string(entry.path()).unwrap_or_default();
            let tail: Vec<&str> = body.lines().rev().take(30).collect();
            text.push_str(&format!("--- {}\n", entry.file_name().to_string_lossy()));
            for line in tail.into_iter().rev() {
                text.push_str(line);
                text.push('\n');
            }
        }
        text
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for child in self.executors.iter_mut().chain([&mut self.scheduler]) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Four taxi files (rows each) uploaded under `prefix/in/`; their local copies' folder.
async fn upload_taxi(s3: &S3Target, dir: &Path, rows: u64) -> String {
    use object_store::ObjectStoreExt;
    let store = s3.store();
    for i in 0..4 {
        let file = taxi_file(dir, &format!("part-{i}.parquet"), rows, 50_000);
        let bytes = std::fs::read(&file).unwrap();
        let path = object_store::path::Path::from(format!("{}/in/part-{i}.parquet", s3.prefix));
        store.put(&path, bytes.into()).await.unwrap();
    }
    s3.url("in/")
}

/// A session whose `s3://bucket` is the target, planning 4 partitions (one per file of
/// [`upload_taxi`]), so that two executors with two slots each both get tasks.
fn four_partitions(s3: &S3Target) -> Session {
    Session::builder()
        .with_target_partitions(4)
        .with_object_store(
            &url::Url::parse(&format!("s3://{}/", s3.bucket)).unwrap(),
            s3.store(),
        )
        .build()
        .unwrap()
}

/// The objects under `prefix/folder`.
async fn objects_under(s3: &S3Target, folder: &str) -> Vec<String> {
    use futures::TryStreamExt;
    use object_store::ObjectStore;
    s3.store()
        .list(Some(&object_store::path::Path::from(format!(
            "{}/{folder}",
            s3.prefix
        ))))
        .map_ok(|meta| meta.location.to_string())
        .try_collect()
        .await
        .unwrap()
}

/// The bytes of the object at `url` (an `s3://` URL of the test's bucket).
async fn object_bytes(s3: &S3Target, url: &str) -> bytes::Bytes {
    use object_store::ObjectStoreExt;
    let key = url
        .strip_prefix(&format!("s3://{}/", s3.bucket))
        .unwrap_or_else(|| panic!("{url} is not in the test's bucket"));
    let path = object_store::path::Path::from(key);
    s3.store().get(&path).await.unwrap().bytes().await.unwrap()
}

/// The seed ETL of `source` run locally to `local_dest`, then on `cluster` to `dest`:
/// both runs, the cluster's known to have succeeded (else its logs are shown).
async fn etl_here_then_there(
    session: &Session,
    cluster: &TestCluster,
    source: &str,
    local_dest: &str,
    dest: &str,
) -> (FlowRun<WriteSummary>, FlowRun<WriteSummary>) {
    let local = etl(source, local_dest)
        .with_session(session.clone())
        .run()
        .await;
    let (on_cluster, _) = etl_there(session, cluster, source, dest).await;
    (local, on_cluster)
}

/// The seed ETL from `source` to `dest` on `cluster`: the run and its summary (a failed
/// run panics, with the executors' logs).
async fn etl_there(
    session: &Session,
    cluster: &TestCluster,
    source: &str,
    dest: &str,
) -> (FlowRun<WriteSummary>, WriteSummary) {
    let run = etl(source, dest)
        .with_session(session.clone())
        .with_runner(cluster.runner())
        .run()
        .await;
    let summary = match &run.output {
        Ok(summary) => summary.clone(),
        Err(e) => panic!("the cluster run failed: {e}\n{}", cluster.logs()),
    };
    (run, summary)
}

/// Whether two frames hold the same rows, as multisets (a cluster does not keep row
/// order).
async fn same_rows(a: &Frame, b: &Frame) -> bool {
    let (a, b) = (a.to_dataframe(), b.to_dataframe());
    for (x, y) in [(a.clone(), b.clone()), (b, a)] {
        let rows: usize = x
            .except(y)
            .unwrap()
            .collect()
            .await
            .unwrap()
            .iter()
            .map(|batch| batch.num_rows())
            .sum();
        if rows != 0 {
            return false;
        }
    }
    true
}

fn completed_rows(record: &FlowRunRecord, task: &str) -> u64 {
    let task = record
        .task(task)
        .unwrap_or_else(|| panic!("no task {task} in {record:#?}"));
    assert_eq!(task.state, TaskState::Completed, "{task:#?}");
    assert!(
        task.executions
            .iter()
            .all(|e: &TaskExecution| e.bytes > 0 || e.rows == 0),
        "{task:#?}"
    );
    task.executions.iter().map(|e: &TaskExecution| e.rows).sum()
}

#[flow]
async fn fares_by_vendor_and_zone(
    source: &str,
) -> Result<Vec<datafusion::arrow::record_batch::RecordBatch>> {
    let raw = crate::common::extract(source).await?;
    // Two integer keys: grouped on one packed key locally, as written on the cluster.
    raw.aggregate(
        [col("VendorID"), col("PULocationID")],
        [
            count(lit(1)).alias("trips"),
            sum(col("fare_amount")).alias("fares"),
        ],
    )?
    .sort_by(&["VendorID", "PULocationID"])?
    .collect()
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_etl_and_an_aggregation_run_on_two_executors_as_they_do_locally() {
    let s3 = S3Target::new("cluster-etl").await;
    let dir = tempfile::tempdir().unwrap();
    let source = upload_taxi(&s3, dir.path(), 60_000).await;
    let cluster = TestCluster::start(2, &s3.env());
    let session = four_partitions(&s3);

    // Local first, then the same flow on the cluster.
    let local_dest = s3.url("out/local.parquet");
    let cluster_dest = s3.url("out/cluster.parquet");
    let (local, on_cluster) =
        etl_here_then_there(&session, &cluster, &source, &local_dest, &cluster_dest).await;
    let local_summary = local.output.as_ref().unwrap().clone();
    let summary = on_cluster.output.as_ref().unwrap().clone();
    assert_eq!(summary.rows, 240_000);
    assert_eq!(summary.rows, local_summary.rows);
    // The executors copied the unchanged columns, chunk for chunk as the local run did.
    match &local_summary.method {
        WriteMethod::ColumnCopy {
            computed,
            chunks_verbatim,
            chunks_recompressed,
            ..
        } => {
            assert_eq!(computed, &["tip_fraction"]);
            assert!(chunks_verbatim + chunks_recompressed > 0);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(summary.method, local_summary.method, "{}", cluster.logs());
    // No funnel: each executor wrote the share its tasks read, as the run record says.
    let writers = &summary.writers;
    assert_eq!(writers.len(), 2, "{writers:?}\n{}", cluster.logs());
    assert!(
        writers
            .iter()
            .all(|w| w.rows > 0 && w.bytes > 0 && w.parts > 0),
        "{writers:?}"
    );
    assert_eq!(writers.iter().map(|w| w.rows).sum::<u64>(), 240_000);
    let load = on_cluster.record.task("load").unwrap();
    assert_eq!(load.sinks[0].writers, *writers);
    // One file on S3, its parts under the 5 MiB a part of an S3 upload needs: the
    // client sent it whole, in one part.
    let assembly = summary
        .assembly
        .expect("one file on a cluster says who assembled it");
    assert_eq!(
        (assembly.by_store, assembly.through_client),
        (0, summary.bytes),
        "{assembly:?}"
    );
    assert_eq!(local_summary.assembly, None);
    // Row for row, as multisets.
    let written = session.read_parquet(&cluster_dest).await.unwrap();
    let expected = session.read_parquet(&local_dest).await.unwrap();
    assert_eq!(written.count().await.unwrap(), 240_000);
    assert!(
        same_rows(&written, &expected).await,
        "the cluster's output differs"
    );
    // The run record counts per task as a local run does, from the executors' metrics.
    for task in ["extract", "transform"] {
        assert_eq!(completed_rows(&on_cluster.record, task), 240_000, "{task}");
        assert_eq!(completed_rows(&local.record, task), 240_000, "{task}");
    }
    assert!(
        cluster.ran_tasks(0) && cluster.ran_tasks(1),
        "both executors must have run tasks\n{}",
        cluster.logs()
    );

    // A directory output: the executors' parts are its files.
    let dir_dest = s3.url("out/cluster-dir/");
    let (_, summary) = etl_there(&session, &cluster, &source, &dir_dest).await;
    assert_eq!(summary.rows, 240_000);
    assert_eq!(
        summary.files.len(),
        4,
        "one part per partition: {:?}",
        summary.files
    );
    assert_eq!(summary.writers.len(), 2, "{:?}", summary.writers);
    let written = session.read_parquet(&dir_dest).await.unwrap();
    assert!(
        same_rows(&written, &expected).await,
        "the directory differs"
    );

    // An aggregation (a shuffle between the executors), against the local answer.
    let local = fares_by_vendor_and_zone(&source)
        .with_session(session.clone())
        .await
        .unwrap();
    let run = fares_by_vendor_and_zone(&source)
        .with_session(session.clone())
        .with_runner(cluster.runner())
        .run()
        .await;
    let remote = run.output.unwrap();
    // Groups and counts exactly; float sums up to their summation order, which
    // differs with the partitioning.
    let columns = |batches: &[datafusion::arrow::record_batch::RecordBatch]| {
        let batch =
            datafusion::arrow::compute::concat_batches(&batches[0].schema(), batches).unwrap();
        let text = |i: usize| {
            let array = datafusion::arrow::compute::cast(
                batch.column(i),
                &datafusion::arrow::datatypes::DataType::Utf8,
            )
            .unwrap();
            array
                .as_any()
                .downcast_ref::<datafusion::arrow::array::StringArray>()
                .unwrap()
                .iter()
                .map(|v| v.unwrap_or_default().to_string())
                .collect::<Vec<_>>()
        };
        let fares = datafusion::arrow::compute::cast(
            batch.column(3),
            &datafusion::arrow::datatypes::DataType::Float64,
        )
        .unwrap();
        let fares = fares
            .as_any()
            .downcast_ref::<datafusion::arrow::array::Float64Array>()
            .unwrap()
            .values()
            .to_vec();
        let keys: Vec<String> = text(0)
            .into_iter()
            .zip(text(1))
            .map(|(vendor, zone)| format!("{vendor}/{zone}"))
            .collect();
        (keys, text(2), fares)
    };
    let (local_vendors, local_trips, local_fares) = columns(&local);
    let (vendors, trips, fares) = columns(&remote);
    assert_eq!(vendors, local_vendors);
    assert_eq!(trips, local_trips);
    for (fare, local_fare) in fares.iter().zip(&local_fares) {
        assert!((fare - local_fare).abs() <= 1e-9 * local_fare.abs().max(1.0));
    }
    assert_eq!(completed_rows(&run.record, "extract"), 240_000);
    // Nothing but the outputs under out/ (two files, four parts and the directory's
    // marker): staging objects, parts and receipts were published or removed.
    let listed = objects_under(&s3, "out").await;
    assert_eq!(listed.len(), 7, "{listed:?}");
}

/// One taxi file of `rows` in row groups of `group_rows` uploaded as `prefix/in/trips.parquet`,
/// and a session that splits it into 4 byte ranges (DataFusion splits any file over
/// 1 byte here): each range a task, each task the row groups whose first page its
/// range holds. Returns the file's URL and the session.
async fn one_file_in_four_ranges(s3: &S3Target, rows: u64, group_rows: usize) -> (String, Session) {
    use object_store::ObjectStoreExt;
    let dir = tempfile::tempdir().unwrap();
    let file = taxi_file(dir.path(), "trips.parquet", rows, group_rows);
    let path = object_store::path::Path::from(format!("{}/in/trips.parquet", s3.prefix));
    let bytes = std::fs::read(&file).unwrap();
    s3.store().put(&path, bytes.into()).await.unwrap();
    (s3.url("in/trips.parquet"), split_session(s3, s3.store()))
}

/// A session of 4 partitions that splits even a small file by byte ranges, whose
/// `s3://` bucket is `s3`'s through `store`.
fn split_session(s3: &S3Target, store: std::sync::Arc<dyn object_store::ObjectStore>) -> Session {
    let mut config = datafusion::prelude::SessionConfig::new();
    config.options_mut().optimizer.repartition_file_min_size = 1;
    Session::builder()
        .with_config(config)
        .with_target_partitions(4)
        .with_object_store(
            &url::Url::parse(&format!("s3://{}/", s3.bucket)).unwrap(),
            store,
        )
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_file_is_split_by_row_groups_across_executors_and_each_copies_its_share() {
    let s3 = S3Target::new("cluster-split").await;
    // One file of 24 row groups, split into 4 byte ranges.
    let (source, session) = one_file_in_four_ranges(&s3, 240_000, 10_000).await;
    let cluster = TestCluster::start(2, &s3.env());

    let local_dest = s3.url("out/local.parquet");
    let dest = s3.url("out/split/");
    let (local, run) = etl_here_then_there(&session, &cluster, &source, &local_dest, &dest).await;
    let local_summary = local.output.unwrap();
    let summary = run.output.as_ref().unwrap().clone();
    assert_eq!(summary.rows, 240_000);
    assert_eq!(summary.files.len(), 4, "{:?}", summary.files);
    // Every chunk of the file copied once, by one executor or the other.
    assert_eq!(summary.method, local_summary.method, "{}", cluster.logs());
    assert_eq!(summary.writers.len(), 2, "{:?}", summary.writers);
    assert!(
        summary.writers.iter().all(|w| w.rows > 0),
        "{:?}",
        summary.writers
    );
    let written = session.read_parquet(&dest).await.unwrap();
    let expected = session.read_parquet(&local_dest).await.unwrap();
    assert_eq!(written.count().await.unwrap(), 240_000);
    assert!(same_rows(&written, &expected).await, "the parts differ");
    // The source's row groups, each once: 24 of 10,000 rows across the parts.
    let mut groups = Vec::new();
    for file in &summary.files {
        let bytes = object_bytes(&s3, &file.url).await;
        let reader = parquet::file::serialized_reader::SerializedFileReader::new(bytes).unwrap();
        use parquet::file::reader::FileReader;
        let metadata = reader.metadata();
        groups.extend(metadata.row_groups().iter().map(|g| g.num_rows()));
    }
    assert_eq!(groups, vec![10_000; 24], "{groups:?}");
    for task in ["extract", "transform"] {
        assert_eq!(completed_rows(&run.record, task), 240_000, "{task}");
    }

    // Plans the copy cannot serve, and a write that turns it off, are encoded again by
    // the executors, and say why.
    let flow = Flow::new("rewritten").with_options(
        FlowOptions::default()
            .with_session(session.clone())
            .with_runner(cluster.runner()),
    );
    let (filtered_dest, off_dest) = (s3.url("out/filtered/"), s3.url("out/off/"));
    let run = flow
        .run(serde_json::json!({}), {
            let (source, filtered_dest, off_dest) =
                (source.clone(), filtered_dest.clone(), off_dest.clone());
            async move {
                let raw = crate::common::extract(&source).await?;
                let filtered = raw
                    .filter(col("fare_amount").gt(lit(10.0)))?
                    .write_parquet(&filtered_dest, ParquetWrite::default())
                    .await?;
                let off = raw
                    .write_parquet(&off_dest, ParquetWrite::default().with_column_copy(false))
                    .await?;
                Ok((filtered, off))
            }
        })
        .await;
    let (filtered, off) = match run.output {
        Ok(written) => written,
        Err(e) => panic!("the cluster run failed: {e}\n{}", cluster.logs()),
    };
    assert!(
        matches!(&filtered.method, WriteMethod::Rewrite { reason }
            if reason.contains("on the executors") && reason.contains("FilterExec")),
        "{:?}",
        filtered.method
    );
    assert!(
        matches!(&off.method, WriteMethod::Rewrite { reason } if reason.contains("turned off")),
        "{:?}",
        off.method
    );
    assert_eq!(off.rows, 240_000);
}

/// The chunks of every row group of the Parquet file `bytes`, in order, with the
/// pages' offsets relative to their chunk.
fn chunks_of(bytes: &bytes::Bytes) -> Vec<(bytes::Bytes, Vec<i64>)> {
    use parquet::file::metadata::{PageIndexPolicy, ParquetMetaDataReader};
    let metadata = ParquetMetaDataReader::new()
        .with_page_index_policy(PageIndexPolicy::Required)
        .parse_and_finish(bytes)
        .unwrap();
    let offsets = metadata.offset_index().expect("a page index");
    let mut chunks = Vec::new();
    for (g, group) in metadata.row_groups().iter().enumerate() {
        for (c, chunk) in group.columns().iter().enumerate() {
            let (start, len) = chunk.byte_range();
            let pages = offsets[g][c]
                .page_locations()
                .iter()
                .map(|p| p.offset - start as i64)
                .collect();
            chunks.push((bytes.slice(start as usize..(start + len) as usize), pages));
        }
    }
    chunks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_file_on_s3_is_composed_by_the_server_from_the_executors_parts() {
    let s3 = S3Target::new("cluster-compose").await;
    // One file of 20 row groups split into 4 byte ranges: 4 parts of more than S3's
    // 5 MiB part minimum, so that the server copies them.
    let (source, session) = one_file_in_four_ranges(&s3, 2_000_000, 100_000).await;
    let cluster = TestCluster::start(2, &s3.env());
    let local_dest = s3.url("out/local.parquet");
    let dest = s3.url("out/one.parquet");
    let (local, run) = etl_here_then_there(&session, &cluster, &source, &local_dest, &dest).await;
    let local_summary = local.output.unwrap();
    let summary = run.output.as_ref().unwrap().clone();
    assert_eq!(summary.rows, 2_000_000);
    assert_eq!(summary.writers.len(), 2, "{:?}", summary.writers);
    // The server copied the parts' row groups; the client sent the footer and the few
    // bytes that make the parts' boundaries 5 MiB parts.
    let assembly = summary
        .assembly
        .expect("one file on a cluster says who assembled it");
    assert!(
        assembly.by_store > summary.bytes / 2,
        "{assembly:?} of {} bytes",
        summary.bytes
    );
    assert!(
        assembly.through_client < summary.bytes / 2,
        "{assembly:?} of {} bytes",
        summary.bytes
    );
    assert_eq!(
        run.record.task("load").unwrap().sinks[0].assembly,
        Some(assembly)
    );
    // The output is the local run's chunk for chunk, in the input's order, and its page
    // index points at the same pages.
    let composed = object_bytes(&s3, &dest).await;
    let expected = object_bytes(&s3, &local_dest).await;
    let (got, want) = (chunks_of(&composed), chunks_of(&expected));
    assert_eq!(got.len(), want.len());
    assert!(
        got == want,
        "the composed file's chunks differ from the local run's"
    );
    assert_eq!(summary.method, local_summary.method);
    // DataFusion reads it, pruning pages by the page index as in the local file.
    let count = |url: String| {
        let session = session.clone();
        async move {
            session
                .read_parquet(&url)
                .await
                .unwrap()
                .filter(col("fare_amount").gt(lit(60.0)))
                .unwrap()
                .count()
                .await
                .unwrap()
        }
    };
    assert_eq!(count(dest.clone()).await, count(local_dest.clone()).await);
    // Nothing but the two outputs under out/.
    let listed = objects_under(&s3, "out").await;
    assert_eq!(listed.len(), 2, "{listed:?}");
    s3.assert_no_pending_uploads().await;
}

/// A store that fails every `UploadPartCopy` (after its retries) does not fail the
/// write: the client assembles the one file from the executors' parts itself, and no
/// upload is left open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_store_does_not_copy_parts_the_client_assembles_the_one_file() {
    use sluice_testkit::faults::{FaultKind, FaultProxy, FaultRule, ProxyFault};
    let s3 = S3Target::new("cluster-no-copy").await;
    let (source, _) = one_file_in_four_ranges(&s3, 2_000_000, 100_000).await;
    let proxy = FaultProxy::builder(&s3.endpoint)
        .rule(
            FaultRule::new(ProxyFault::InternalError)
                .method("PUT")
                .header("x-amz-copy-source"),
        )
        .start()
        .await
        .unwrap();
    let store = s3
        .store_builder(&s3.bucket)
        .with_endpoint(proxy.endpoint())
        .build()
        .unwrap();
    let session = split_session(&s3, store);
    let cluster = TestCluster::start(2, &s3.env());
    let dest = s3.url("out/one.parquet");
    let (_, summary) = etl_there(&session, &cluster, &source, &dest).await;
    assert!(proxy.stats().injected(FaultKind::InternalError) > 0);
    assert_eq!(summary.rows, 2_000_000);
    let assembly = summary.assembly.expect("who assembled it");
    assert_eq!(
        (assembly.by_store, assembly.through_client),
        (0, summary.bytes),
        "{assembly:?}"
    );
    let written = session.read_parquet(&dest).await.unwrap();
    assert_eq!(written.count().await.unwrap(), 2_000_000);
    s3.assert_no_pending_uploads().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_killed_mid_write_is_replaced_and_every_row_is_written_once() {
    let s3 = S3Target::new("cluster-kill").await;
    let dir = tempfile::tempdir().unwrap();
    let source = upload_taxi(&s3, dir.path(), 300_000).await;
    let mut cluster = TestCluster::start(2, &s3.env());
    let session = four_partitions(&s3);
    let dest = s3.url("out/killed.parquet");
    let runner = cluster.runner();
    let started = Instant::now();
    let flow = etl(&source, &dest)
        .with_session(session.clone())
        .with_runner(runner)
        .run();
    // SIGKILL executor 1 while its tasks write their parts: a moment after it starts one.
    let killer = async {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !cluster.started_a_task(1) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let task_started = started.elapsed();
        tokio::time::sleep(Duration::from_millis(300)).await;
        cluster.executors[1].kill().unwrap();
        cluster.executors[1].wait().unwrap();
        (task_started, started.elapsed())
    };
    let (run, (task_started, killed)) =
        tokio::join!(tokio::time::timeout(Duration::from_secs(180), flow), killer);
    let run = run.expect("the run neither completed nor failed within 180 s");
    let ended = started.elapsed();
    let summary = match &run.output {
        Ok(summary) => summary.clone(),
        Err(e) => panic!("the run failed after the kill: {e}\n{}", cluster.logs()),
    };
    eprintln!(
        "timeline: executor 1 started a task at {task_started:?}, was killed at {killed:?}; \
         the run completed at {ended:?} (writers {:?})",
        summary.writers
    );
    // Ballista ran the lost tasks again on the other executor: every row once.
    assert_eq!(summary.rows, 1_200_000);
    let written = session.read_parquet(&dest).await.unwrap();
    assert_eq!(written.count().await.unwrap(), 1_200_000);
    let input = session.read_parquet(&source).await.unwrap();
    let input = input
        .with_column("tip_fraction", col("tip_amount") / col("total_amount"))
        .unwrap();
    assert!(same_rows(&written, &input).await);
    assert_eq!(
        summary.writers.iter().map(|w| w.rows).sum::<u64>(),
        1_200_000
    );
    // Nothing but the whole output under out/: the killed attempts' parts, the
    // receipts and the parts' directory are gone, and no upload is left open.
    let listed = objects_under(&s3, "out").await;
    assert_eq!(listed.len(), 1, "{listed:?}\n{}", cluster.logs());
    s3.assert_no_pending_uploads().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_page_read_by_an_executor_names_the_task_and_the_object_and_publishes_nothing() {
    let s3 = S3Target::new("cluster-error").await;
    let dir = tempfile::tempdir().unwrap();
    let source = upload_taxi(&s3, dir.path(), 10_000).await;
    let cluster = TestCluster::start(1, &s3.env());
    let session = s3.session();
    let dest = s3.url("out/never.parquet");
    let run = Flow::new("vanishing")
        .with_options(
            FlowOptions::default()
                .with_session(session)
                .with_runner(cluster.runner()),
        )
        .run(serde_json::json!({}), {
            let (source, dest, store, prefix) =
                (source.clone(), dest.clone(), s3.store(), s3.prefix.clone());
            async move {
                let raw = crate::common::extract(&source).await?;
                // The footers were read while planning; the executors find the data
                // pages in the middle of one file overwritten.
                use object_store::ObjectStoreExt;
                let path = object_store::path::Path::from(format!("{prefix}/in/part-2.parquet"));
                let mut bytes = store
                    .get(&path)
                    .await
                    .unwrap()
                    .bytes()
                    .await
                    .unwrap()
                    .to_vec();
                let middle = bytes.len() / 2;
                bytes[middle - 2000..middle + 2000].fill(0xA5);
                store.put(&path, bytes.into()).await.unwrap();
                crate::common::load(raw, &dest).await
            }
        })
        .await;
    let error = run.output.unwrap_err();
    let text = error.to_string();
    assert!(text.contains("task \"extract\""), "{text}");
    // The source, as a local run names it, and no debug formatting.
    assert!(text.contains(&format!("reading {source} failed")), "{text}");
    assert!(!text.contains("DataFusionError("), "{text}");
    assert!(text.contains(&cluster.runner().to_string()), "{text}");
    assert_eq!(
        run.record.task("extract").unwrap().state,
        TaskState::Failed,
        "{:#?}",
        run.record
    );
    assert!(!s3.exists("out/never.parquet").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executors_refuse_column_chunks_over_their_cap_as_a_local_read_does() {
    let s3 = S3Target::new("cluster-cap").await;
    let dir = tempfile::tempdir().unwrap();
    let source = upload_taxi(&s3, dir.path(), 10_000).await;
    let mut env = s3.env();
    env.push(("SLUICE_MAX_COLUMN_CHUNK_BYTES", "4096".into()));
    let cluster = TestCluster::start(1, &env);
    let dest = s3.url("out/capped.parquet");
    let run = etl(&source, &dest)
        .with_session(s3.session())
        .with_runner(cluster.runner())
        .run()
        .await;
    let text = run.output.unwrap_err().to_string();
    assert!(text.contains("task \"extract\""), "{text}");
    assert!(
        text.contains("per column chunk, so it was not decoded"),
        "{text}"
    );
    assert!(text.contains(&s3.url("in/part-")), "{text}");
    assert!(!s3.exists("out/capped.parquet").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_nobody_listens_on_fails_within_seconds_naming_the_address() {
    let dir = tempfile::tempdir().unwrap();
    let source = taxi_file(dir.path(), "in.parquet", 1_000, 1_000);
    let port = free_port();
    let started = Instant::now();
    let run = etl(
        source.to_str().unwrap(),
        dir.path().join("out.parquet").to_str().unwrap(),
    )
    .with_runner(Runner::ballista(format!("df://127.0.0.1:{port}")))
    .run()
    .await;
    let error = run.output.unwrap_err().to_string();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(error.contains(&format!("df://127.0.0.1:{port}")), "{error}");
    assert!(error.contains("sluice scheduler"), "{error}");
    assert!(!dir.path().join("out.parquet").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_with_no_executor_fails_the_run_within_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let source = taxi_file(dir.path(), "in.parquet", 1_000, 1_000);
    let cluster = TestCluster::start(0, &[]);
    let started = Instant::now();
    let run = etl(
        source.to_str().unwrap(),
        dir.path().join("out.parquet").to_str().unwrap(),
    )
    .with_runner(cluster.runner())
    .run()
    .await;
    let error = run.output.unwrap_err().to_string();
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert!(error.contains("no executor"), "{error}\n{}", cluster.logs());
    assert!(!dir.path().join("out.parquet").exists());
}

#[tokio::test]
async fn what_a_cluster_cannot_run_is_refused_before_anything_is_sent() {
    // Nothing listens: the refusal must come before any connection attempt.
    let runner = Runner::ballista(format!("df://127.0.0.1:{}", free_port()));
    let dir = tempfile::tempdir().unwrap();
    let source = taxi_file(dir.path(), "in.parquet", 1_000, 1_000);
    let run = etl(
        source.to_str().unwrap(),
        dir.path().join("out.parquet").to_str().unwrap(),
    )
    .with_mode(ExecutionMode::Eager)
    .with_runner(runner.clone())
    .run()
    .await;
    let error = run.output.unwrap_err().to_string();
    assert!(error.contains("eager mode"), "{error}");

    let session = Session::builder()
        .with_runner(runner.clone())
        .build()
        .unwrap();
    let frame = session
        .sql("SELECT 1 AS one", std::iter::empty())
        .await
        .unwrap();
    let frame = session
        .from_batches(frame.to_dataframe().collect().await.unwrap())
        .unwrap();
    let error = frame.count().await.unwrap_err().to_string();
    assert!(error.contains("in-memory data"), "{error}");

    // A checkpoint store in this process's memory: the executors cannot write it.
    let run = crate::cache::cached_etl(
        source.to_str().unwrap(),
        dir.path().join("out.parquet").to_str().unwrap(),
    )
    .with_result_store("memory://checkpoints/")
    .with_runner(runner)
    .run()
    .await;
    let error = run.output.unwrap_err().to_string();
    assert!(error.contains("memory://checkpoints/"), "{error}");
    assert!(error.contains("executors cannot write it"), "{error}");
}

#[task(persist)]
async fn transform(df: Frame) -> Result<Frame> {
    df.with_column("tip_fraction", col("tip_amount") / col("total_amount"))
}

/// The seed ETL with `transform` persisted, its output in the checkpoint's codec
/// (zstd(3), the default of both): the executors' column copy writes the checkpoint as
/// the output's own bytes.
#[flow]
async fn persisted_etl(source: &str, dest: &str) -> Result<WriteSummary> {
    let raw = crate::common::extract(source).await?;
    let df = transform(raw).await?;
    crate::common::load(df, dest).await
}

/// The record of `task` in `run`, in `state`.
fn task_in<'a, T>(
    run: &'a sluice::FlowRun<T>,
    task: &str,
    state: TaskState,
) -> &'a sluice::TaskRunRecord {
    let record = run
        .record
        .task(task)
        .unwrap_or_else(|| panic!("no task {task} in {:#?}", run.record));
    assert_eq!(record.state, state, "{task}: {record:#?}");
    record
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executors_write_a_persisted_tasks_checkpoint_and_a_rerun_reads_it_instead_of_the_source() {
    let s3 = S3Target::new("cluster-persist").await;
    let dir = tempfile::tempdir().unwrap();
    let source = upload_taxi(&s3, dir.path(), 60_000).await;
    let cluster = TestCluster::start(2, &s3.env());
    let session = four_partitions(&s3);
    // Checkpoints on a disk every executor mounts (here: the same machine).
    let checkpoints = dir.path().join("checkpoints-store");
    let store_url = format!("{}/", checkpoints.display());
    let run = |dest: String, runner: Option<Runner>| {
        let (source, session, store_url) = (source.clone(), session.clone(), store_url.clone());
        async move {
            let call = persisted_etl(&source, &dest)
                .with_session(session)
                .with_result_store(&store_url);
            match runner {
                Some(runner) => call.with_runner(runner).run().await,
                None => call.run().await,
            }
        }
    };
    let served = |s3: &S3Target| s3.server.as_ref().map(|server| server.stats().bytes_sent());
    let reset = |s3: &S3Target| {
        if let Some(server) = &s3.server {
            server.stats().reset()
        }
    };

    reset(&s3);
    // Directory outputs: their parts are published by renames on the server (one file
    // would be assembled by this process, reading the parts back from S3).
    let first_dest = s3.url("out/first/");
    let first = run(first_dest.clone(), Some(cluster.runner())).await;
    if let Err(e) = &first.output {
        panic!("the cluster run failed: {e}\n{}", cluster.logs());
    }
    assert_eq!(first.output.as_ref().unwrap().rows, 240_000);
    let first_bytes = served(&s3);
    let transform = task_in(&first, "transform", TaskState::Completed);
    assert!(
        transform.cache.as_ref().unwrap().committed,
        "{transform:#?}"
    );
    let key = transform.cache_key.clone().unwrap();

    // One valid checkpoint, its parts written by the executors (one per partition),
    // nothing else beside them: the receipts are gone.
    let store = CheckpointStore::open(&session, &store_url).unwrap();
    let entries = store.list().await.unwrap();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].state, "valid");
    let manifest = store.show("transform", &key).await.unwrap();
    assert_eq!(
        entries[0].rows,
        Some(240_000),
        "{:#?}\n{}",
        manifest.files,
        cluster.logs()
    );
    assert_eq!(manifest.files.len(), 4, "{:?}", manifest.files);
    let key_dir = checkpoints.join("checkpoints/transform").join(&key);
    let mut on_disk: Vec<String> = crate::common::files_under(&key_dir)
        .iter()
        .map(|p| p.strip_prefix(&key_dir).unwrap().display().to_string())
        .collect();
    on_disk.sort();
    let mut expected: Vec<String> = manifest.files.iter().map(|f| f.path.clone()).collect();
    expected.push("_manifest.json".into());
    expected.sort();
    assert_eq!(on_disk, expected);
    // The executors' column copy wrote the checkpoint as the output's own bytes: each
    // part of the checkpoint is a part of the output, byte for byte.
    let summary = first.output.as_ref().unwrap();
    assert!(
        summary.method.is_column_copy(),
        "{:?}\n{}",
        summary.method,
        cluster.logs()
    );
    let mut checkpoint_parts: Vec<Vec<u8>> = manifest
        .files
        .iter()
        .map(|f| std::fs::read(key_dir.join(&f.path)).unwrap())
        .collect();
    let mut output_parts = Vec::new();
    for file in &summary.files {
        output_parts.push(object_bytes(&s3, &file.url).await.to_vec());
    }
    checkpoint_parts.sort();
    output_parts.sort();
    assert!(
        checkpoint_parts == output_parts,
        "the checkpoint's parts are not the output's"
    );

    // The rerun on the cluster: a hit read on the executors, no source byte.
    reset(&s3);
    let second_dest = s3.url("out/second/");
    let second = run(second_dest.clone(), Some(cluster.runner())).await;
    if let Err(e) = &second.output {
        panic!("the cached cluster run failed: {e}\n{}", cluster.logs());
    }
    assert_eq!(second.output.as_ref().unwrap().rows, 240_000);
    let transform = task_in(&second, "transform", TaskState::Cached);
    assert_eq!(transform.cache.as_ref().unwrap().lookup, "hit");
    assert_eq!(transform.rows, Some(240_000), "{transform:#?}");
    assert!(
        !transform.executions.is_empty() && transform.executions.iter().all(|e| e.from_checkpoint),
        "{transform:#?}"
    );
    let extract = task_in(&second, "extract", TaskState::Skipped);
    assert!(extract.executions.is_empty(), "{extract:#?}");
    if let (Some(first_bytes), Some(second_bytes)) = (first_bytes, served(&s3)) {
        // The S3 server sent the first run the source; the second only listings
        // (the source's, for its identity in the cache key) and the sink's replies.
        eprintln!("S3 bytes sent: {first_bytes} computing, {second_bytes} on the hit");
        assert!(first_bytes > 4_000_000, "{first_bytes}");
        assert!(
            second_bytes < 64 * 1024,
            "the hit read the source: {second_bytes} bytes"
        );
    }
    let first_frame = session.read_parquet(&first_dest).await.unwrap();
    let second_frame = session.read_parquet(&second_dest).await.unwrap();
    assert!(same_rows(&first_frame, &second_frame).await);

    // The checkpoint the executors wrote is a valid one for a local run too (which
    // verifies every part's checksum).
    let third_dest = s3.url("out/third.parquet");
    let third = run(third_dest.clone(), None).await;
    assert_eq!(third.output.as_ref().unwrap().rows, 240_000);
    task_in(&third, "transform", TaskState::Cached);
    let third_frame = session.read_parquet(&third_dest).await.unwrap();
    assert!(same_rows(&first_frame, &third_frame).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_checkpoint_on_s3_is_caught_by_the_executors_invalidated_and_recomputed() {
    use object_store::ObjectStoreExt;
    let s3 = S3Target::new("cluster-corrupt").await;
    let dir = tempfile::tempdir().unwrap();
    // Parts of more than one checksummed block each, in the default (zstd) format.
    let source = upload_taxi(&s3, dir.path(), 30_000).await;
    let cluster = TestCluster::start(2, &s3.env());
    let session = four_partitions(&s3);
    let store_url = s3.url("cache/");
    let run = |dest: String| {
        let (source, session, store_url) = (source.clone(), session.clone(), store_url.clone());
        let runner = cluster.runner();
        async move {
            crate::cache::cached_etl(&source, &dest)
                .with_session(session)
                .with_result_store(&store_url)
                .with_runner(runner)
                .run()
                .await
        }
    };
    let first = run(s3.url("out/first.parquet")).await;
    if let Err(e) = &first.output {
        panic!("the cluster run failed: {e}\n{}", cluster.logs());
    }
    // A zstd(1) output of a zstd(3) checkpoint: the executors' tees write the
    // checkpoint, and the output is encoded beside it.
    assert!(
        matches!(&first.output.as_ref().unwrap().method, WriteMethod::Rewrite { reason }
            if reason.contains("task transform's checkpoint is Zstd(3)")),
        "{:?}",
        first.output.as_ref().unwrap().method
    );
    assert!(
        task_in(&first, "transform", TaskState::Completed)
            .cache
            .as_ref()
            .unwrap()
            .committed
    );

    // Same size, other bytes.
    let parts: Vec<String> = objects_under(&s3, "cache/checkpoints/transform")
        .await
        .into_iter()
        .filter(|p| p.ends_with(".parquet"))
        .collect();
    assert_eq!(parts.len(), 4, "{parts:?}");
    let store = s3.store();
    for part in &parts {
        let path = object_store::path::Path::from(part.as_str());
        let mut bytes = store
            .get(&path)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .to_vec();
        // A byte of the first data page, in the part's first block: the footer (which
        // the client's lookup checks) is intact, so the executors' reads are what
        // must catch it, before a row of that block is decoded.
        assert!(
            bytes.len() as u64 > sluice::BLOCK_SIZE,
            "a part of one block"
        );
        bytes[100] ^= 0x01;
        store.put(&path, bytes.into()).await.unwrap();
    }
    let second = run(s3.url("out/second.parquet")).await;
    let error = second
        .output
        .as_ref()
        .expect_err("a corrupt checkpoint must fail the run");
    assert_eq!(error.task(), Some("transform"), "{error:?}");
    assert!(
        format!("{error:?}").contains("CorruptCheckpoint"),
        "{error:?}"
    );
    let text = error.to_string();
    assert!(text.contains("is corrupt"), "{text}");
    assert!(text.contains("checkpoints/transform/"), "{text}");
    assert!(text.contains("does not match its checksum"), "{text}");
    assert!(text.contains(&cluster.runner().to_string()), "{text}");
    assert!(!text.contains("DataFusionError("), "{text}");
    task_in(&second, "transform", TaskState::Failed);
    assert!(
        !s3.exists("out/second.parquet").await,
        "a run over a corrupt checkpoint published"
    );
    // Invalidated by the client: the manifest is gone, so the next run recomputes.
    let manifests: Vec<String> = objects_under(&s3, "cache/checkpoints")
        .await
        .into_iter()
        .filter(|p| p.ends_with("_manifest.json"))
        .collect();
    assert!(manifests.is_empty(), "{manifests:?}");
    let third = run(s3.url("out/third.parquet")).await;
    assert_eq!(third.output.as_ref().unwrap().rows, 120_000);
    let transform = task_in(&third, "transform", TaskState::Completed);
    assert!(
        transform.cache.as_ref().unwrap().committed,
        "{transform:#?}"
    );
}

/// The seed ETL's `transform` as a task persisted in `mode`, inside a flow.
async fn persisted_transform(raw: Frame, mode: Persist) -> Result<Frame> {
    Task::new("transform")
        .with_version("v1")
        .persist(mode)
        .run(|_cx| {
            let raw = raw.clone();
            async move { raw.with_column("tip_fraction", col("tip_amount") / col("total_amount")) }
        })
        .await
}

/// A barrier task feeding one load per destination, on `runner`.
async fn barrier_flow(
    session: &Session,
    runner: Runner,
    store_url: &str,
    source: &str,
    dests: Vec<String>,
) -> sluice::FlowRun<u64> {
    let source = source.to_string();
    Flow::new("barrier")
        .with_options(
            FlowOptions::default()
                .with_session(session.clone())
                .with_runner(runner),
        )
        .with_result_store(store_url)
        .run(serde_json::json!({}), async move {
            let raw = crate::common::extract(&source).await?;
            let df = persisted_transform(raw, Persist::Barrier).await?;
            let mut rows = 0;
            for dest in dests {
                rows += crate::common::load(df.clone(), &dest).await?.rows;
            }
            Ok(rows)
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_barrier_on_a_cluster_computes_once_for_two_sinks_and_a_failed_job_commits_nothing() {
    let s3 = S3Target::new("cluster-barrier").await;
    let dir = tempfile::tempdir().unwrap();
    let source = upload_taxi(&s3, dir.path(), 10_000).await;
    let cluster = TestCluster::start(2, &s3.env());
    let session = four_partitions(&s3);
    let store_url = s3.url("cache/");
    let run = barrier_flow(
        &session,
        cluster.runner(),
        &store_url,
        &source,
        vec![s3.url("out/one.parquet"), s3.url("out/two.parquet")],
    )
    .await;
    if let Err(e) = &run.output {
        panic!("the barrier run failed: {e}\n{}", cluster.logs());
    }
    assert_eq!(*run.output.as_ref().unwrap(), 80_000);
    let extract = task_in(&run, "extract", TaskState::Completed);
    assert_eq!(extract.executions.len(), 1, "{extract:#?}");
    let transform = task_in(&run, "transform", TaskState::Completed);
    // One execution computed it (the barrier's job); each sink read the checkpoint.
    let computed: Vec<bool> = transform
        .executions
        .iter()
        .map(|e| e.from_checkpoint)
        .collect();
    assert_eq!(computed, [false, true, true], "{transform:#?}");
    let one = session
        .read_parquet(&s3.url("out/one.parquet"))
        .await
        .unwrap();
    let two = session
        .read_parquet(&s3.url("out/two.parquet"))
        .await
        .unwrap();
    assert_eq!(one.count().await.unwrap(), 40_000);
    assert!(same_rows(&one, &two).await);

    // A job that fails half-way (a corrupt page in one source file) commits nothing;
    // what its other tasks wrote is removed, or left for `gc` as an incomplete write.
    let store_url = s3.url("cache-failed/");
    use object_store::ObjectStoreExt;
    let corrupt = {
        let path = object_store::path::Path::from(format!("{}/in/part-2.parquet", s3.prefix));
        let store = s3.store();
        let mut bytes = store
            .get(&path)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .to_vec();
        let middle = bytes.len() / 2;
        bytes[middle - 2000..middle + 2000].fill(0xA5);
        (store, path, bytes)
    };
    // The footers stay readable: planning succeeds, the executors find the pages.
    corrupt.0.put(&corrupt.1, corrupt.2.into()).await.unwrap();
    let failed = barrier_flow(
        &session,
        cluster.runner(),
        &store_url,
        &source,
        vec![s3.url("out/never.parquet")],
    )
    .await;
    let error = failed
        .output
        .as_ref()
        .expect_err("the corrupt page must fail the job");
    assert_eq!(error.task(), Some("extract"), "{error}");
    assert!(!s3.exists("out/never.parquet").await);
    let store = CheckpointStore::open(&session, &store_url).unwrap();
    let entries = store.list().await.unwrap();
    assert!(entries.iter().all(|e| e.state != "valid"), "{entries:?}");
    // Tasks of the failed job that Ballista had not yet cancelled may still be ending.
    tokio::time::sleep(Duration::from_secs(1)).await;
    store.gc(chrono::Utc::now(), Duration::ZERO).await.unwrap();
    let left = objects_under(&s3, "cache-failed/checkpoints").await;
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_an_early_stop_commits_nothing_and_a_second_sink_reads_the_checkpoint() {
    let s3 = S3Target::new("cluster-tee").await;
    let dir = tempfile::tempdir().unwrap();
    let source = upload_taxi(&s3, dir.path(), 10_000).await;
    let cluster = TestCluster::start(2, &s3.env());
    let session = four_partitions(&s3);
    let store_url = s3.url("cache/");
    let run = Flow::new("tee-sinks")
        .with_options(
            FlowOptions::default()
                .with_session(session.clone())
                .with_runner(cluster.runner()),
        )
        .with_result_store(&store_url)
        .run(serde_json::json!({}), {
            let source = source.clone();
            async move {
                let raw = crate::common::extract(&source).await?;
                let df = persisted_transform(raw, Persist::Tee).await?;
                // A limit above the tee stops its partitions early on the executors:
                // were that committed, the next sink would read 10 rows from it.
                let limited = df.limit(10)?.count().await?;
                let all = df.count().await?;
                let again = df.count().await?;
                Ok([limited, all, again])
            }
        })
        .await;
    let counts = match &run.output {
        Ok(counts) => *counts,
        Err(e) => panic!("the flow failed: {e}\n{}", cluster.logs()),
    };
    assert_eq!(counts, [10, 40_000, 40_000]);
    let transform = task_in(&run, "transform", TaskState::Completed);
    assert!(
        transform.cache.as_ref().unwrap().committed,
        "{transform:#?}"
    );
    // The limited job and the full one computed it; the third sink read the
    // checkpoint the second committed (as locally, a read of the checkpoint this run
    // committed is not an execution of the task; a recomputation would be).
    let from_checkpoint: Vec<bool> = transform
        .executions
        .iter()
        .map(|e| e.from_checkpoint)
        .collect();
    assert_eq!(from_checkpoint, [false, false], "{transform:#?}");
    let store = CheckpointStore::open(&session, &store_url).unwrap();
    let entries = store.list().await.unwrap();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].rows, Some(40_000));
    // The early-stopped job's parts were deleted: only the committed write is left.
    let writes: std::collections::BTreeSet<String> = objects_under(&s3, "cache/checkpoints")
        .await
        .iter()
        .filter_map(|p| {
            p.split('/')
                .find(|part| part.starts_with("data-"))
                .map(str::to_string)
        })
        .collect();
    assert_eq!(writes.len(), 1, "{writes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executors_resolve_named_stores_with_credentials_from_their_own_environment() {
    let s3 = S3Target::new("cluster-named").await;
    let dir = tempfile::tempdir().unwrap();
    upload_taxi(&s3, dir.path(), 20_000).await;
    // The executors know the keys only as LAKE_KEY_ID and LAKE_SECRET: no AWS_* variable.
    let cluster = TestCluster::start(
        2,
        &[
            ("LAKE_KEY_ID", s3.access_key.clone()),
            ("LAKE_SECRET", s3.secret_key.clone()),
        ],
    );
    let settings = sluice::store::Settings::from_toml(&format!(
        "[stores.lake]\nurl = \"s3://{}/{}\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\n\
         allow_http = true\naccess_key_id = {{ env = \"LAKE_KEY_ID\" }}\n\
         secret_access_key = {{ env = \"LAKE_SECRET\" }}\n",
        s3.bucket, s3.prefix, s3.endpoint
    ))
    .unwrap();
    // This process has no such variables: its own `store://lake` is built by hand (with
    // Sluice's builder: object_store's bare `PrefixStore` answers a HEAD with the
    // prefixed location, which a listing of one file then filters out).
    let prefixed = s3
        .store_builder(&s3.bucket)
        .with_prefix(s3.prefix.as_str())
        .build()
        .unwrap();
    let session = Session::builder()
        .with_target_partitions(4)
        .with_settings(settings)
        .with_object_store(&url::Url::parse("store://lake/").unwrap(), prefixed)
        .build()
        .unwrap();
    let run = etl("store://lake/in/", "store://lake/out/named.parquet")
        .with_session(session.clone())
        .with_runner(cluster.runner())
        .run()
        .await;
    match &run.output {
        Ok(summary) => assert_eq!(summary.rows, 80_000),
        Err(e) => panic!("the cluster run failed: {e}\n{}", cluster.logs()),
    }
    assert!(s3.exists("out/named.parquet").await);
    assert!(
        cluster.ran_tasks(0) || cluster.ran_tasks(1),
        "{}",
        cluster.logs()
    );
    let tasks = serde_json::to_string(&run.record.tasks).unwrap();
    assert!(!tasks.contains("store://lake"), "{tasks}");
}
