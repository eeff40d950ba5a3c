//! Checkpoints and caching: one behaviour suite, run against an in-memory store, local
//! disk and S3 (the in-process server, or the endpoint named by `SLUICE_TEST_S3_*`; CI
//! runs it against moto too, as `cache::remote::s3::*` matches `remote::s3`).
//!
//! Sources are generated on local disk behind a byte-counting store that counts only
//! reads under the test's source directory, so "a hit reads no source byte" is counted,
//! not assumed, whatever store the checkpoints are on.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use sluice::prelude::*;
use sluice::{CheckpointStore, Clock, FlowRun, SessionBuilder, TaskRunRecord};
use sluice_testkit::counting_store::CountingStore;
use sluice_testkit::taxi::{TaxiGenOptions, write_taxi_parquet};

use crate::column_copy::read_in_order;
use crate::remote::S3Target;

#[task]
async fn extract(cx: &TaskContext, source: &str) -> Result<Frame> {
    cx.read_parquet(source).await
}

#[task(persist)]
async fn transform(df: Frame) -> Result<Frame> {
    df.with_column("tip_fraction", col("tip_amount") / col("total_amount"))
}

#[task]
async fn load(df: Frame, dest: &str) -> Result<WriteSummary> {
    df.write_parquet(dest, ParquetWrite::zstd(1)).await
}

/// The seed ETL with `transform` persisted (tee). Its `extract` and `transform` are the
/// example's token for token: they compute the same cache keys.
#[flow]
pub async fn cached_etl(source: &str, dest: &str) -> Result<WriteSummary> {
    let raw = extract(source).await?;
    let df = transform(raw).await?;
    load(df, dest).await
}

#[derive(Debug, Clone, Copy)]
pub enum Backend {
    Memory,
    Local,
    S3,
}

/// One test's world: a source directory behind a counting store, and a result store
/// on the backend under test.
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub session: Session,
    pub counting: Arc<CountingStore>,
    pub store_url: String,
    _s3: Option<S3Target>,
}

impl Harness {
    pub async fn new(backend: Backend, test: &str) -> Harness {
        Self::new_with(backend, test, |builder| builder).await
    }

    /// [`new`](Self::new), with the session's builder adjusted by `adjust`.
    pub async fn new_with(
        backend: Backend,
        test: &str,
        adjust: impl FnOnce(SessionBuilder) -> SessionBuilder,
    ) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("src")).unwrap();
        let source_prefix = format!(
            "{}/",
            dir.path()
                .join("src")
                .display()
                .to_string()
                .trim_start_matches('/')
        );
        let counting = Arc::new(
            CountingStore::new(Arc::new(LocalFileSystem::new())).counting_only_under(source_prefix),
        );
        let mut builder = Session::builder().with_object_store(
            &url::Url::parse("file:///").unwrap(),
            Arc::clone(&counting) as Arc<dyn ObjectStore>,
        );
        let (store_url, s3) = match backend {
            Backend::Memory => (format!("memory://cache-{test}/"), None),
            Backend::Local => (format!("{}/", dir.path().join("cache").display()), None),
            Backend::S3 => {
                let target = S3Target::new(&format!("cache-{test}")).await;
                builder = builder.with_object_store(
                    &url::Url::parse(&format!("s3://{}/", target.bucket)).unwrap(),
                    target.store(),
                );
                (target.url("cache/"), Some(target))
            }
        };
        Harness {
            dir,
            session: adjust(builder).build().unwrap(),
            counting,
            store_url,
            _s3: s3,
        }
    }

    /// Generates `rows` taxi rows (with `seed`) as `src/<name>`.
    pub fn source(&self, name: &str, rows: u64, seed: u64) -> String {
        let path = self.dir.path().join("src").join(name);
        write_taxi_parquet(
            &path,
            &TaxiGenOptions::new(rows)
                .with_seed(seed)
                .with_row_group_rows(10_000),
        )
        .unwrap();
        path.display().to_string()
    }

    pub fn dest(&self, name: &str) -> String {
        self.dir.path().join("out").join(name).display().to_string()
    }

    pub fn store(&self) -> CheckpointStore {
        CheckpointStore::open(&self.session, &self.store_url).unwrap()
    }

    /// Runs the cached seed ETL; returns the run and the source bytes it read.
    pub async fn etl(
        &self,
        source: &str,
        dest: &str,
        clock: Clock,
    ) -> (FlowRun<WriteSummary>, u64) {
        self.counting.reset();
        let run = cached_etl(source, dest)
            .with_session(self.session.clone())
            .with_result_store(&self.store_url)
            .with_clock(clock)
            .run()
            .await;
        (run, self.counting.bytes_read())
    }

    /// Runs `body` as flow `name` in this harness's session and result store; returns
    /// the run and the source bytes it read.
    pub async fn run_flow<T>(
        &self,
        name: &str,
        body: impl std::future::Future<Output = Result<T>>,
    ) -> (FlowRun<T>, u64) {
        self.counting.reset();
        let run = Flow::new(name)
            .with_options(FlowOptions::default().with_session(self.session.clone()))
            .with_result_store(&self.store_url)
            .run(serde_json::json!({}), body)
            .await;
        (run, self.counting.bytes_read())
    }

    /// The source bytes the plain seed ETL (no cache: the column copy of the task's
    /// whole output) reads of `source`.
    pub async fn plain_etl_bytes(&self, source: &str) -> u64 {
        self.counting.reset();
        crate::common::etl(source, &self.dest("reference.parquet"))
            .with_session(self.session.clone())
            .await
            .unwrap();
        self.counting.bytes_read()
    }

    /// The valid checkpoints in the store.
    pub async fn valid_checkpoints(&self) -> Vec<sluice::CacheEntry> {
        let entries = self.store().list().await.unwrap();
        entries.into_iter().filter(|e| e.state == "valid").collect()
    }
}

fn now() -> Clock {
    Clock::default()
}

fn task<'a>(run: &'a FlowRun<WriteSummary>, name: &str) -> &'a TaskRunRecord {
    run.record
        .task(name)
        .unwrap_or_else(|| panic!("no task {name} in {:?}", run.record))
}

fn ok(run: &FlowRun<WriteSummary>) -> &WriteSummary {
    run.output
        .as_ref()
        .unwrap_or_else(|e| panic!("flow failed: {e}\n{:#?}", run.record))
}

/// What an output holds, as a comparable summary: rows, columns, and sums (floats
/// rounded: partial sums add up in any order).
pub async fn content(session: &Session, path: &str) -> String {
    use datafusion::arrow::array::Float64Array;
    use datafusion::arrow::datatypes::DataType;
    let frame = session.read_parquet(path).await.unwrap();
    let columns = frame.columns().join(",");
    let sums = frame
        .aggregate(
            Vec::<Expr>::new(),
            [
                count(lit(1)),
                sum(col("tip_amount")),
                sum(col("total_amount")),
                count(col("tip_fraction")),
                sum(col("PULocationID")),
                sum(col("trip_distance")),
            ],
        )
        .unwrap()
        .collect()
        .await
        .unwrap();
    let batch = &sums[0];
    let values: Vec<String> = batch
        .columns()
        .iter()
        .map(|c| {
            let c = datafusion::arrow::compute::cast(c, &DataType::Float64).unwrap();
            let v = c.as_any().downcast_ref::<Float64Array>().unwrap().value(0);
            format!("{v:.3}")
        })
        .collect();
    format!("{columns}\n{}", values.join(" "))
}

// ---------------------------------------------------------------------------
// The behaviour suite: each function runs against one backend.
// ---------------------------------------------------------------------------

async fn a_second_run_reads_the_checkpoint_and_no_source_byte(backend: Backend) {
    let h = Harness::new(backend, "hit").await;
    let source = h.source("in.parquet", 30_000, 1);
    let (first, first_bytes) = h.etl(&source, &h.dest("a.parquet"), now()).await;
    assert_eq!(ok(&first).rows, 30_000);
    assert!(first_bytes > 0);
    let t = task(&first, "transform");
    assert_eq!(t.state, TaskState::Completed, "{t:?}");
    let cache = t.cache.as_ref().unwrap();
    assert_eq!(cache.lookup, "miss");
    assert!(cache.committed, "{t:?}");
    assert_eq!(h.valid_checkpoints().await.len(), 1);

    let (second, second_bytes) = h.etl(&source, &h.dest("b.parquet"), now()).await;
    assert_eq!(ok(&second).rows, 30_000);
    let t = task(&second, "transform");
    assert_eq!(t.state, TaskState::Cached, "{t:?}");
    assert_eq!(t.cache.as_ref().unwrap().lookup, "hit");
    assert_eq!(t.rows, Some(30_000));
    assert!(t.executions[0].from_checkpoint);
    assert_eq!(t.cache_key, task(&first, "transform").cache_key);
    let e = task(&second, "extract");
    assert_eq!(e.state, TaskState::Skipped, "{e:?}");
    assert!(e.reason.as_ref().unwrap().contains("transform"), "{e:?}");
    assert!(e.executions.is_empty());
    assert_eq!(task(&second, "load").state, TaskState::Completed);
    assert_eq!(second_bytes, 0, "a cache hit read source bytes");
    assert_eq!(
        content(&h.session, &h.dest("a.parquet")).await,
        content(&h.session, &h.dest("b.parquet")).await
    );
    // The sink took the column copy, so the copy wrote the checkpoint: its one part is
    // the output's bytes, in the output's codec (the default format follows the sink).
    match &ok(&first).method {
        WriteMethod::ColumnCopy { computed, .. } => {
            assert_eq!(computed, &["tip_fraction".to_string()])
        }
        other => panic!("the miss's sink was not a column copy: {other:?}"),
    }
    let parts = checkpoint_parts(&h).await;
    assert_eq!(parts.len(), 1, "{parts:?}");
    let output = std::fs::read(h.dest("a.parquet")).unwrap();
    assert!(
        read(&h, &parts[0].location).await == output,
        "the part is not the output"
    );
    let key = task(&first, "transform").cache_key.clone().unwrap();
    let manifest = h.store().show("transform", &key[..8]).await.unwrap();
    assert_eq!(manifest.compression, "Zstd(1)");
    assert_eq!(manifest.files[0].size, output.len() as u64);
    assert_eq!(manifest.files[0].rows, 30_000);
    // The hit's sink copies every chunk of the checkpoint verbatim: the same file, byte
    // for byte (rows, order, schema, metadata, row groups, statistics).
    verbatim_copy_of(ok(&second), &h.dest("a.parquet"));
    // The hit time is recorded in the background.
    let mut entry = h.valid_checkpoints().await.remove(0);
    for _ in 0..100 {
        if entry.last_hit.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        entry = h.valid_checkpoints().await.remove(0);
    }
    assert!(entry.last_hit.is_some(), "{entry:?}");
    assert_eq!(entry.rows, Some(30_000));
}

/// A checkpoint the tee wrote (in a codec set apart from the output's) with statistics
/// is a source of the column copy: a hit's sink moves every column (`tip_fraction`
/// included) as compressed pages out of the parts, checked against the manifest, and
/// gives the miss's rows in the miss's order, with column statistics.
async fn a_hit_with_statistics_is_a_column_copy_of_the_checkpoint(backend: Backend) {
    // A barrier: its sinks copy out of its checkpoint in the run that writes it too (a
    // tee's checkpoint written beside an encoding sink is encoded again, see
    // `a_hit_of_a_tee_written_beside_an_encoding_sink_gives_that_sinks_row_groups`).
    async fn transform(df: Frame) -> Result<Frame> {
        Task::new("transform")
            .persist(Persist::Barrier)
            .with_checkpoint_format(
                CheckpointFormat::default()
                    .with_compression(Compression::Snappy)
                    .with_statistics(true),
            )
            .run(move |_cx| {
                let df = df.clone();
                async move { df.with_column("tip_fraction", col("tip_amount") / col("total_amount")) }
            })
            .await
    }
    let h = Harness::new(backend, "copied-hit").await;
    let source = h.source("in.parquet", 30_000, 1);
    // `damage`: change a byte of every part after the lookup checked their footers.
    let run_damaged = |dest: String, damage: bool| {
        let (h, source) = (&h, source.clone());
        async move {
            h.counting.reset();
            let run = Flow::new("copied-hit")
                .with_options(FlowOptions::default().with_session(h.session.clone()))
                .with_result_store(&h.store_url)
                .run(serde_json::json!({}), async move {
                    let raw = extract(&source).await?;
                    let df = transform(raw).await?;
                    if damage {
                        for part in checkpoint_objects(h).await {
                            if part.location.as_ref().ends_with(".parquet") {
                                let mut bytes = read(h, &part.location).await;
                                bytes[100] ^= 0x01;
                                rewrite(h, &part.location, bytes).await;
                            }
                        }
                    }
                    load(df, &dest).await
                })
                .await;
            (run, h.counting.bytes_read())
        }
    };
    let run = |dest: String| run_damaged(dest, false);
    let (first, _) = run(h.dest("a.parquet")).await;
    assert_eq!(ok(&first).rows, 30_000);
    assert_eq!(
        task(&first, "transform").cache.as_ref().unwrap().lookup,
        "miss"
    );
    // The barrier's checkpoint is Snappy, the output zstd: the sink copies out of it,
    // every chunk recompressed.
    let recompressed = |summary: &WriteSummary| match &summary.method {
        WriteMethod::ColumnCopy {
            copied,
            computed,
            chunks_verbatim,
            chunks_recompressed,
        } => {
            assert!(copied.contains(&"tip_fraction".to_string()), "{copied:?}");
            assert!(computed.is_empty(), "{computed:?}");
            assert_eq!(*chunks_verbatim, 0);
            assert!(*chunks_recompressed > 0);
        }
        other => panic!("the sink was not a column copy of the checkpoint: {other:?}"),
    };
    recompressed(ok(&first));
    let (second, source_bytes) = run(h.dest("b.parquet")).await;
    assert_eq!(ok(&second).rows, 30_000);
    let t = task(&second, "transform");
    assert_eq!(t.state, TaskState::Cached, "{t:?}");
    assert_eq!(t.rows, Some(30_000));
    assert!(t.executions[0].from_checkpoint);
    assert_eq!(source_bytes, 0, "a cache hit read source bytes");
    recompressed(ok(&second));
    assert_eq!(
        read_in_order(Path::new(&h.dest("a.parquet"))).await,
        read_in_order(Path::new(&h.dest("b.parquet"))).await
    );
    // A part changed after the lookup checked its footer: the copy's verified reads
    // catch it, the run fails naming the checkpoint, publishes nothing, and the
    // checkpoint is invalidated so that the next run recomputes it.
    let (damaged, _) = run_damaged(h.dest("c.parquet"), true).await;
    let error = damaged
        .output
        .as_ref()
        .expect_err("a damaged part was copied");
    assert!(
        format!("{error:?}").contains("CorruptCheckpoint"),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("does not match its checksum"),
        "{error}"
    );
    assert!(!Path::new(&h.dest("c.parquet")).exists());
    let (rerun, _) = run(h.dest("d.parquet")).await;
    assert_eq!(ok(&rerun).rows, 30_000);
    assert_eq!(task(&rerun, "transform").state, TaskState::Completed);

    let file = std::fs::File::open(h.dest("b.parquet")).unwrap();
    let footer = parquet::file::reader::SerializedFileReader::new(file).unwrap();
    use parquet::file::reader::FileReader;
    for group in footer.metadata().row_groups() {
        for chunk in group.columns() {
            assert!(
                chunk.statistics().is_some(),
                "{} has no statistics",
                chunk.column_path()
            );
        }
    }
}

/// A persisted task whose checkpoint format sets another codec than the output's: the
/// copy writes the checkpoint beside the output, every copied chunk recompressed for it
/// once fetched, and a hit copies out of it (recompressing back) the miss's rows and row
/// groups.
async fn a_checkpoint_in_another_codec_is_written_by_the_copy_beside_the_output(backend: Backend) {
    let h = Harness::new(backend, "other-codec").await;
    let source = h.source("in.parquet", 30_000, 1);
    let run = |dest: String| {
        h.run_flow("other-codec", {
            let source = source.clone();
            async move {
                let raw = extract(&source).await?;
                let df = Task::new("transform")
                    .persist(Persist::Tee)
                    .with_checkpoint_format(
                        CheckpointFormat::default().with_compression(Compression::Lz4),
                    )
                    .run(move |_cx| {
                        let raw = raw.clone();
                        async move {
                            raw.with_column("tip_fraction", col("tip_amount") / col("total_amount"))
                        }
                    })
                    .await?;
                load(df, &dest).await
            }
        })
    };
    // Each chunk fetched once for both codecs: no more read than by the plain copy.
    let reference_bytes = h.plain_etl_bytes(&source).await;
    let (miss, source_bytes) = run(h.dest("miss.parquet")).await;
    assert!(ok(&miss).method.is_column_copy(), "{:?}", ok(&miss).method);
    assert!(
        source_bytes <= reference_bytes,
        "{source_bytes} > {reference_bytes}"
    );
    let key = task(&miss, "transform").cache_key.clone().unwrap();
    let manifest = h.store().show("transform", &key[..8]).await.unwrap();
    assert_eq!(manifest.compression, "Lz4");
    assert!(!manifest.reencode);
    for group in first_part_footer(&h).await.row_groups() {
        assert_eq!(group.num_rows(), 10_000);
        for chunk in group.columns() {
            assert_eq!(chunk.compression(), parquet::basic::Compression::LZ4_RAW);
        }
    }
    let (hit, source_bytes) = run(h.dest("hit.parquet")).await;
    assert_eq!(task(&hit, "transform").state, TaskState::Cached);
    assert_eq!(source_bytes, 0);
    match &ok(&hit).method {
        WriteMethod::ColumnCopy {
            chunks_verbatim,
            chunks_recompressed,
            ..
        } => {
            assert_eq!(*chunks_verbatim, 0);
            assert!(*chunks_recompressed > 0);
        }
        other => panic!("the hit's sink was not a column copy: {other:?}"),
    }
    assert_eq!(
        read_in_order(Path::new(&h.dest("hit.parquet"))).await,
        read_in_order(Path::new(&h.dest("miss.parquet"))).await
    );
    assert_eq!(
        row_groups(&h.dest("hit.parquet")),
        row_groups(&h.dest("miss.parquet"))
    );
}

async fn a_changed_source_file_is_a_miss(backend: Backend) {
    let h = Harness::new(backend, "source").await;
    let source = h.source("in.parquet", 20_000, 1);
    let (first, _) = h.etl(&source, &h.dest("a.parquet"), now()).await;
    ok(&first);
    // Same path, new content (and size).
    std::fs::remove_file(&source).unwrap();
    let source = h.source("in.parquet", 25_000, 2);
    let (second, bytes) = h.etl(&source, &h.dest("b.parquet"), now()).await;
    assert_eq!(ok(&second).rows, 25_000);
    assert_eq!(task(&second, "transform").state, TaskState::Completed);
    assert_eq!(task(&second, "extract").state, TaskState::Completed);
    assert!(bytes > 0);
    assert_ne!(
        task(&first, "transform").cache_key,
        task(&second, "transform").cache_key
    );
    // The output is the new source's, as a run without cache computes it.
    let reference = h.dest("reference.parquet");
    crate::common::etl(&source, &reference)
        .with_session(h.session.clone())
        .await
        .unwrap();
    assert_eq!(
        content(&h.session, &h.dest("b.parquet")).await,
        content(&h.session, &reference).await
    );
}

/// A persisted task built without macros, so that version, plan and parameters can
/// vary.
pub(crate) async fn builder_flow(
    h: &Harness,
    source: &str,
    version: &str,
    factor: f64,
    tag: &str,
    policy: CachePolicy,
    clock: Clock,
) -> FlowRun<u64> {
    let source = source.to_string();
    let (version, tag) = (version.to_string(), tag.to_string());
    Flow::new("builder")
        .with_result_store(&h.store_url)
        .with_options(
            FlowOptions::default()
                .with_session(h.session.clone())
                .with_result_store(&h.store_url)
                .with_clock(clock),
        )
        .run(serde_json::json!({}), async move {
            let raw = Task::new("raw")
                .run(|cx| {
                    let source = source.clone();
                    async move { cx.read_parquet(&source).await }
                })
                .await?;
            let scaled = Task::new("scaled")
                .with_version(version)
                .with_parameter("tag", serde_json::json!(tag))
                .cache(policy)
                .run(|_cx| {
                    let raw = raw.clone();
                    async move { raw.with_column("scaled", col("fare_amount") * lit(factor)) }
                })
                .await?;
            scaled.count().await
        })
        .await
}

pub(crate) fn state<T>(run: &FlowRun<T>, name: &str) -> TaskState {
    run.output
        .as_ref()
        .unwrap_or_else(|e| panic!("flow failed: {e}"));
    run.record.task(name).unwrap().state
}

async fn changed_code_parameters_or_plan_are_misses(backend: Backend) {
    let h = Harness::new(backend, "inputs").await;
    let source = h.source("in.parquet", 10_000, 1);
    let run = |version: &'static str, factor: f64, tag: &'static str| {
        builder_flow(
            &h,
            &source,
            version,
            factor,
            tag,
            CachePolicy::inputs(),
            now(),
        )
    };
    use TaskState::{Cached, Completed};
    for (version, factor, tag, expected, what) in [
        ("v1", 2.0, "a", Completed, "the first run"),
        ("v1", 2.0, "a", Cached, "the same call"),
        ("v2", 2.0, "a", Completed, "another code version"),
        ("v1", 3.0, "a", Completed, "another expression (a literal)"),
        (
            "v1",
            2.0,
            "b",
            Completed,
            "a parameter the plan does not show",
        ),
        ("v2", 2.0, "a", Cached, "each of those, again"),
        ("v1", 3.0, "a", Cached, "each of those, again"),
        ("v1", 2.0, "b", Cached, "each of those, again"),
    ] {
        let run = run(version, factor, tag).await;
        assert_eq!(state(&run, "scaled"), expected, "{what}");
    }
    assert_eq!(h.valid_checkpoints().await.len(), 4);
}

async fn checkpoints_expire_by_the_injected_clock_and_refresh_replaces_them(backend: Backend) {
    let h = Harness::new(backend, "expiry").await;
    let source = h.source("in.parquet", 10_000, 1);
    let t0: DateTime<Utc> = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
    let at = |minutes: i64| Clock::fixed(t0 + chrono::Duration::minutes(minutes));
    let hourly = || CachePolicy::inputs().expire_after(Duration::from_secs(3600));
    let run = |clock: Clock, policy: CachePolicy| {
        builder_flow(&h, &source, "v1", 2.0, "a", policy, clock)
    };
    assert_eq!(
        state(&run(at(0), hourly()).await, "scaled"),
        TaskState::Completed
    );
    assert_eq!(
        state(&run(at(30), hourly()).await, "scaled"),
        TaskState::Cached
    );
    let expired = run(at(61), hourly()).await;
    assert_eq!(state(&expired, "scaled"), TaskState::Completed);
    let cache = expired
        .record
        .task("scaled")
        .unwrap()
        .cache
        .clone()
        .unwrap();
    assert!(
        cache.reason.as_ref().unwrap().contains("expired"),
        "{cache:?}"
    );
    assert!(cache.committed);
    // The new checkpoint counts from its own creation.
    assert_eq!(
        state(&run(at(100), hourly()).await, "scaled"),
        TaskState::Cached
    );
    // Refresh recomputes and replaces a valid checkpoint.
    let refreshed = run(at(101), hourly().refresh(true)).await;
    assert_eq!(state(&refreshed, "scaled"), TaskState::Completed);
    let cache = refreshed
        .record
        .task("scaled")
        .unwrap()
        .cache
        .clone()
        .unwrap();
    assert_eq!(cache.lookup, "refresh");
    assert!(cache.committed);
    let entries = h.valid_checkpoints().await;
    assert_eq!(entries.len(), 1);
    // The replaced and the expired checkpoints' parts were released when their
    // manifests stopped standing (at 61 and 101 minutes, by the flow's clock): a run
    // still reading them keeps them for a grace period, then gc collects them and one
    // data directory is left.
    h.store()
        .gc(t0 + chrono::Duration::minutes(100), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(data_dirs(&checkpoint_objects(&h).await).len(), 2);
    h.store()
        .gc(t0 + chrono::Duration::minutes(102), Duration::from_secs(60))
        .await
        .unwrap();
    let dirs = data_dirs(&checkpoint_objects(&h).await);
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    assert_eq!(
        entries[0].created,
        Some(t0 + chrono::Duration::minutes(101))
    );
    // gc at a time when it has expired removes it whole.
    let report = h
        .store()
        .gc(t0 + chrono::Duration::minutes(200), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(report.expired.len(), 1, "{report:?}");
    assert!(h.store().list().await.unwrap().is_empty());
}

/// Where a checkpoint's objects are, through the object store (any backend).
pub(crate) async fn checkpoint_objects(h: &Harness) -> Vec<object_store::ObjectMeta> {
    use futures::TryStreamExt;
    let url = sluice::store::resolve_url(&h.store_url).unwrap();
    let store = h.session.stores().store_for(&url).unwrap();
    let prefix = sluice::store::object_path(&url).unwrap();
    let mut all: Vec<_> = store.list(Some(&prefix)).try_collect().await.unwrap();
    all.sort_by(|a, b| a.location.cmp(&b.location));
    all
}

/// Asserts that `written` copied every chunk of a checkpoint verbatim (nothing computed,
/// nothing recompressed) into a file that is `original`, byte for byte.
fn verbatim_copy_of(written: &WriteSummary, original: &str) {
    match &written.method {
        WriteMethod::ColumnCopy {
            computed,
            chunks_recompressed,
            ..
        } => {
            assert!(computed.is_empty(), "{computed:?}");
            assert_eq!(*chunks_recompressed, 0);
        }
        other => panic!("{} was not a column copy: {other:?}", written.url),
    }
    let copied = std::fs::read(written.url.trim_start_matches("file://")).unwrap();
    assert!(
        copied == std::fs::read(original).unwrap(),
        "{} is not {original}",
        written.url
    );
}

/// The checkpoint parts (Parquet objects) in the result store, in path order.
/// The footer of the first part of the harness's checkpoint.
async fn first_part_footer(h: &Harness) -> parquet::file::metadata::ParquetMetaData {
    let part = checkpoint_parts(h).await.remove(0);
    parquet::file::metadata::ParquetMetaDataReader::new()
        .parse_and_finish(&bytes::Bytes::from(read(h, &part.location).await))
        .unwrap()
}

/// The rows of each row group of the Parquet file at `path`.
fn row_groups(path: &str) -> Vec<i64> {
    use parquet::file::reader::FileReader;
    let file = std::fs::File::open(path).unwrap();
    let reader = parquet::file::reader::SerializedFileReader::new(file).unwrap();
    reader
        .metadata()
        .row_groups()
        .iter()
        .map(|g| g.num_rows())
        .collect()
}

pub(crate) async fn checkpoint_parts(h: &Harness) -> Vec<object_store::ObjectMeta> {
    checkpoint_objects(h)
        .await
        .into_iter()
        .filter(|o| o.location.as_ref().ends_with(".parquet"))
        .collect()
}

/// The writers' directories (`data-<id>`) that hold parts.
pub(crate) fn data_dirs(
    objects: &[object_store::ObjectMeta],
) -> std::collections::BTreeSet<String> {
    objects
        .iter()
        .filter(|m| m.location.as_ref().ends_with(".parquet"))
        .filter_map(|m| {
            m.location
                .parts()
                .nth_back(1)
                .map(|p| p.as_ref().to_string())
        })
        .collect()
}

pub(crate) async fn rewrite(h: &Harness, location: &object_store::path::Path, bytes: Vec<u8>) {
    use object_store::ObjectStoreExt;
    let url = sluice::store::resolve_url(&h.store_url).unwrap();
    let store = h.session.stores().store_for(&url).unwrap();
    store
        .put(location, object_store::PutPayload::from(bytes))
        .await
        .unwrap();
}

pub(crate) async fn read(h: &Harness, location: &object_store::path::Path) -> Vec<u8> {
    use object_store::ObjectStoreExt;
    let url = sluice::store::resolve_url(&h.store_url).unwrap();
    let store = h.session.stores().store_for(&url).unwrap();
    store
        .get(location)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec()
}

async fn corrupt_checkpoints_are_misses_or_typed_errors_never_wrong_data(backend: Backend) {
    let h = Harness::new(backend, "corrupt").await;
    let source = h.source("in.parquet", 20_000, 1);
    let (first, _) = h.etl(&source, &h.dest("ref.parquet"), now()).await;
    ok(&first);
    let reference = content(&h.session, &h.dest("ref.parquet")).await;
    let manifest_of = |objects: &[object_store::ObjectMeta]| {
        objects
            .iter()
            .find(|m| m.location.as_ref().ends_with("_manifest.json"))
            .map(|m| m.location.clone())
    };
    let parts_of = |objects: &[object_store::ObjectMeta]| -> Vec<object_store::path::Path> {
        objects
            .iter()
            .filter(|m| m.location.as_ref().ends_with(".parquet"))
            .map(|m| m.location.clone())
            .collect()
    };
    let rerun_expecting_a_miss = |label: &'static str| {
        let h = &h;
        let source = source.clone();
        let reference = reference.clone();
        async move {
            let dest = h.dest(&format!("{label}.parquet"));
            let (run, _) = h.etl(&source, &dest, now()).await;
            ok(&run);
            let t = task(&run, "transform");
            assert_eq!(t.state, TaskState::Completed, "{label}: {t:?}");
            assert!(t.cache.as_ref().unwrap().committed, "{label}: {t:?}");
            assert_eq!(content(&h.session, &dest).await, reference, "{label}");
        }
    };

    // 1. The manifest is gone: a plain miss.
    let objects = checkpoint_objects(&h).await;
    use object_store::ObjectStoreExt;
    let url = sluice::store::resolve_url(&h.store_url).unwrap();
    let store = h.session.stores().store_for(&url).unwrap();
    store.delete(&manifest_of(&objects).unwrap()).await.unwrap();
    rerun_expecting_a_miss("no-manifest").await;

    // 2. The manifest does not parse.
    let objects = checkpoint_objects(&h).await;
    rewrite(
        &h,
        &manifest_of(&objects).unwrap(),
        b"{\"format_version\": 1, \"task\"".to_vec(),
    )
    .await;
    rerun_expecting_a_miss("unparseable").await;

    // Orphans of the replaced checkpoints go, so that every part left is referenced.
    let collect = || async { h.store().gc(Utc::now(), Duration::ZERO).await.unwrap() };

    // 3. A part is truncated.
    collect().await;
    let objects = checkpoint_objects(&h).await;
    let part = parts_of(&objects)[0].clone();
    let mut bytes = read(&h, &part).await;
    bytes.truncate(bytes.len() / 2);
    rewrite(&h, &part, bytes).await;
    rerun_expecting_a_miss("truncated").await;

    // 4. A part is missing.
    collect().await;
    let objects = checkpoint_objects(&h).await;
    store.delete(&parts_of(&objects)[0]).await.unwrap();
    rerun_expecting_a_miss("missing-part").await;

    // 5. A manifest of a newer format: a miss, left in place for the newer build.
    let objects = checkpoint_objects(&h).await;
    let manifest_path = manifest_of(&objects).unwrap();
    let text = String::from_utf8(read(&h, &manifest_path).await).unwrap();
    rewrite(
        &h,
        &manifest_path,
        text.replacen("\"format_version\": 2", "\"format_version\": 99", 1)
            .into_bytes(),
    )
    .await;
    let (run, _) = h.etl(&source, &h.dest("newer.parquet"), now()).await;
    ok(&run);
    let t = task(&run, "transform");
    assert_eq!(t.state, TaskState::Completed);
    assert!(
        t.cache
            .as_ref()
            .unwrap()
            .reason
            .as_ref()
            .unwrap()
            .contains("newer")
    );
    assert!(
        !t.cache.as_ref().unwrap().committed,
        "the newer manifest stays"
    );
    assert!(
        String::from_utf8(read(&h, &manifest_path).await)
            .unwrap()
            .contains("99")
    );
    store.delete(&manifest_path).await.unwrap();
    rerun_expecting_a_miss("after-newer").await;

    // 6. Same size, other bytes (a bit flip in every page of the parts' first half,
    // away from the footer's block, which the lookup checks): found while streaming, a
    // typed error naming the checkpoint; nothing published; the next run recomputes.
    collect().await;
    let objects = checkpoint_objects(&h).await;
    let mut flipped = 0;
    for part in parts_of(&objects) {
        let mut bytes = read(&h, &part).await;
        let end = (bytes.len() / 2).min(bytes.len().saturating_sub(sluice::BLOCK_SIZE as usize));
        if end > 4 {
            for b in &mut bytes[4..end] {
                *b ^= 0x5a;
            }
            flipped += 1;
        }
        rewrite(&h, &part, bytes).await;
    }
    assert!(flipped > 0, "no part spans more than one block");
    let dest = h.dest("flipped.parquet");
    let (run, _) = h.etl(&source, &dest, now()).await;
    let error = run
        .output
        .as_ref()
        .expect_err("a corrupt checkpoint must fail the run");
    assert_eq!(error.task(), Some("transform"), "{error:?}");
    assert!(
        format!("{error:?}").contains("CorruptCheckpoint"),
        "{error:?}"
    );
    assert!(error.to_string().contains("is corrupt"), "{error}");
    assert!(
        error.to_string().contains("checkpoints/transform/"),
        "{error}"
    );
    assert!(
        !Path::new(&dest).exists(),
        "a run over a corrupt checkpoint published output"
    );
    assert_eq!(task(&run, "transform").state, TaskState::Failed);
    rerun_expecting_a_miss("after-corruption").await;
}

async fn racing_runs_leave_one_valid_checkpoint(backend: Backend) {
    let h = Harness::new(backend, "race").await;
    let source = h.source("in.parquet", 40_000, 1);
    let runs = futures::future::join_all((0..4).map(|i| {
        let dest = h.dest(&format!("race-{i}.parquet"));
        let source = source.clone();
        let h = &h;
        async move {
            let (run, _) = h.etl(&source, &dest, now()).await;
            (run, dest)
        }
    }))
    .await;
    let reference = content(&h.session, &runs[0].1).await;
    let mut committed = 0;
    for (run, dest) in &runs {
        ok(run);
        if task(run, "transform").cache.as_ref().unwrap().committed {
            committed += 1;
        }
        assert_eq!(content(&h.session, dest).await, reference);
    }
    assert!(committed >= 1);
    assert_eq!(h.valid_checkpoints().await.len(), 1);
    // The losers deleted their parts: only the winner's remain (plus the manifest). A
    // server whose create-if-absent put is not atomic (s3s-fs checks, then writes) can
    // let two creates through; each writer then reads back its own manifest before the
    // other's lands, both count as committed, and the first one's parts are orphans
    // that gc collects. Never a wrong checkpoint: the standing manifest names its parts.
    let objects = checkpoint_objects(&h).await;
    assert!(
        data_dirs(&objects).len() <= committed,
        "{committed} committed: {objects:#?}"
    );
    h.store().gc(Utc::now(), Duration::ZERO).await.unwrap();
    let objects = checkpoint_objects(&h).await;
    assert_eq!(data_dirs(&objects).len(), 1, "{objects:#?}");
    let (hit, bytes) = h.etl(&source, &h.dest("after.parquet"), now()).await;
    assert_eq!(task(&hit, "transform").state, TaskState::Cached);
    assert_eq!(bytes, 0);
}

async fn an_early_stop_commits_nothing_and_leaves_no_parts(backend: Backend) {
    let h = Harness::new(backend, "early").await;
    let source = h.source("in.parquet", 50_000, 1);
    let run = Flow::new("early")
        .with_options(FlowOptions::default().with_session(h.session.clone()))
        .with_result_store(&h.store_url)
        .run(serde_json::json!({}), async {
            let raw = extract(&source).await?;
            let df = transform(raw).await?;
            // A limit above the tee: it stops the stream early.
            let mut stream = df.execute_stream().await?;
            use futures::StreamExt;
            let first = stream.next().await.unwrap()?;
            drop(stream);
            Ok(first.num_rows() as u64)
        })
        .await;
    assert!(run.output.unwrap() > 0);
    let t = run.record.task("transform").unwrap();
    assert_eq!(t.state, TaskState::Cancelled, "{t:?}");
    assert!(!t.cache.as_ref().unwrap().committed);
    assert!(h.valid_checkpoints().await.is_empty());
    // The dropped write's parts are deleted in the background.
    no_parts_left(&h).await;
}

/// A copy that writes a checkpoint and fails (a computed column that does not
/// evaluate) commits nothing, publishes nothing and leaves no
/// part; the error names the task.
async fn a_failed_copy_commits_no_checkpoint_and_leaves_no_parts(backend: Backend) {
    async fn flag_code(df: Frame) -> Result<Frame> {
        Task::new("flag_code")
            .persist(Persist::Tee)
            .run(move |_cx| {
                let df = df.clone();
                // The flag (`N` or `Y`) casts to no number.
                async move {
                    use datafusion::arrow::datatypes::DataType;
                    let flag =
                        datafusion::prelude::cast(col("store_and_fwd_flag"), DataType::Int32);
                    df.with_column("flag_code", flag)
                }
            })
            .await
    }
    let h = Harness::new(backend, "failed-copy").await;
    let source = h.source("in.parquet", 30_000, 1);
    let dest = h.dest("out.parquet");
    let run = Flow::new("failed-copy")
        .with_options(FlowOptions::default().with_session(h.session.clone()))
        .with_result_store(&h.store_url)
        .run(serde_json::json!({}), async {
            let raw = extract(&source).await?;
            load(flag_code(raw).await?, &dest).await
        })
        .await;
    let error = run
        .output
        .as_ref()
        .expect_err("a value that does not cast was written");
    assert!(error.to_string().contains("flag_code"), "{error}");
    assert!(!Path::new(&dest).exists());
    let t = run.record.task("flag_code").unwrap();
    assert!(!t.cache.as_ref().unwrap().committed, "{t:?}");
    assert!(h.valid_checkpoints().await.is_empty());
    no_parts_left(&h).await;
}

/// Waits for an uncommitted write's parts, deleted in the background, to be gone.
async fn no_parts_left(h: &Harness) {
    for _ in 0..100 {
        if checkpoint_parts(h).await.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("parts left behind: {:#?}", checkpoint_objects(h).await);
}

/// The seed ETL's `transform` (adds `tip_fraction`), version `v1`, persisted in `mode`.
async fn persisted_transform(raw: Frame, mode: Persist) -> sluice::Result<Frame> {
    Task::new("transform")
        .with_version("v1")
        .persist(mode)
        .run(|_cx| {
            let raw = raw.clone();
            async move { raw.with_column("tip_fraction", col("tip_amount") / col("total_amount")) }
        })
        .await
}

/// A flow whose persisted (tee) task only adds a column, its output counted or
/// collected with no sink: returns the rows counted, or collected.
async fn count_or_collect_flow(h: &Harness, source: &str, collect: bool) -> FlowRun<u64> {
    let source = source.to_string();
    Flow::new("no-sink")
        .with_options(FlowOptions::default().with_session(h.session.clone()))
        .with_result_store(&h.store_url)
        .run(serde_json::json!({}), async move {
            let raw = extract(&source).await?;
            let df = persisted_transform(raw, Persist::Tee).await?;
            if collect {
                let batches = df.collect().await?;
                assert!(
                    batches
                        .iter()
                        .all(|b| b.schema().field_with_name("tip_fraction").is_ok())
                );
                Ok(batches.iter().map(|b| b.num_rows() as u64).sum())
            } else {
                df.count().await
            }
        })
        .await
}

/// `count` and `collect` of a persisted task's output that only adds a column write
/// its checkpoint with the column copy (the source's row groups kept; the tee's stream
/// would write one row group of 30,000 rows), and a rerun is a hit reading no source
/// byte.
async fn count_and_collect_of_a_persisted_output_write_its_checkpoint_with_the_copy(
    backend: Backend,
) {
    for collect in [false, true] {
        let h = Harness::new(backend, if collect { "collect" } else { "count" }).await;
        let source = h.source("in.parquet", 30_000, 1);
        let run = count_or_collect_flow(&h, &source, collect).await;
        assert_eq!(run.output.unwrap(), 30_000, "collect: {collect}");
        let t = run.record.task("transform").unwrap();
        assert!(t.cache.as_ref().unwrap().committed, "{t:?}");
        let parts = checkpoint_parts(&h).await;
        assert_eq!(parts.len(), 1, "{parts:?}");
        let footer = parquet::file::metadata::ParquetMetaDataReader::new()
            .parse_and_finish(&bytes::Bytes::from(read(&h, &parts[0].location).await))
            .unwrap();
        let groups: Vec<i64> = footer.row_groups().iter().map(|g| g.num_rows()).collect();
        assert_eq!(groups, [10_000, 10_000, 10_000], "collect: {collect}");
        h.counting.reset();
        let again = count_or_collect_flow(&h, &source, collect).await;
        assert_eq!(again.output.unwrap(), 30_000);
        assert_eq!(
            again.record.task("transform").unwrap().state,
            TaskState::Cached
        );
        assert_eq!(h.counting.bytes_read(), 0);
    }
}

/// A barrier task feeding a load that fails: the rerun resumes from the checkpoint.
async fn barrier_flow(h: &Harness, source: &str, dests: Vec<String>) -> FlowRun<u64> {
    let source = source.to_string();
    Flow::new("barrier")
        .with_options(FlowOptions::default().with_session(h.session.clone()))
        .with_result_store(&h.store_url)
        .run(serde_json::json!({}), async move {
            let raw = extract(&source).await?;
            let df = persisted_transform(raw, Persist::Barrier).await?;
            let mut rows = 0;
            for dest in dests {
                rows += load(df.clone(), &dest).await?.rows;
            }
            Ok(rows)
        })
        .await
}

async fn barrier_mode_resumes_after_a_failed_load_and_computes_fan_out_once(backend: Backend) {
    let h = Harness::new(backend, "barrier").await;
    let source = h.source("in.parquet", 30_000, 1);
    // A load that fails: its destination's parent is a file.
    std::fs::create_dir_all(h.dir.path().join("out")).unwrap();
    std::fs::write(h.dir.path().join("out/blocker"), b"x").unwrap();
    h.counting.reset();
    let failed = barrier_flow(&h, &source, vec![h.dest("blocker/x.parquet")]).await;
    assert!(failed.output.is_err());
    let source_bytes = h.counting.bytes_read();
    assert!(source_bytes > 0);
    assert_eq!(
        failed.record.task("transform").unwrap().state,
        TaskState::Completed
    );
    assert_eq!(failed.record.task("load").unwrap().state, TaskState::Failed);
    assert_eq!(h.valid_checkpoints().await.len(), 1);
    // The barrier's plan only adds a column: the column copy wrote the checkpoint, one
    // part keeping the source's row groups (the tee's would be 65,536 rows each), in the
    // tee's default codec.
    let parts = checkpoint_parts(&h).await;
    assert_eq!(parts.len(), 1, "{parts:?}");
    let footer = parquet::file::metadata::ParquetMetaDataReader::new()
        .parse_and_finish(&bytes::Bytes::from(read(&h, &parts[0].location).await))
        .unwrap();
    let groups: Vec<i64> = footer.row_groups().iter().map(|g| g.num_rows()).collect();
    assert_eq!(groups, [10_000, 10_000, 10_000]);
    let key = failed
        .record
        .task("transform")
        .unwrap()
        .cache_key
        .clone()
        .unwrap();
    assert_eq!(
        h.store()
            .show("transform", &key[..8])
            .await
            .unwrap()
            .compression,
        "Zstd(3)"
    );

    // The rerun reads the checkpoint: no source byte.
    h.counting.reset();
    let resumed = barrier_flow(&h, &source, vec![h.dest("ok.parquet")]).await;
    assert_eq!(resumed.output.unwrap(), 30_000);
    assert_eq!(
        resumed.record.task("transform").unwrap().state,
        TaskState::Cached
    );
    assert_eq!(
        resumed.record.task("extract").unwrap().state,
        TaskState::Skipped
    );
    assert_eq!(h.counting.bytes_read(), 0);

    // Fan-out on a fresh store: two sinks, the source read once.
    let fresh = Harness::new(backend, "fanout").await;
    let source = fresh.source("in.parquet", 30_000, 1);
    fresh.counting.reset();
    let two = barrier_flow(
        &fresh,
        &source,
        vec![fresh.dest("one.parquet"), fresh.dest("two.parquet")],
    )
    .await;
    assert_eq!(two.output.unwrap(), 60_000);
    let once = fresh.counting.bytes_read();
    fresh.counting.reset();
    let single = Harness::new(backend, "fanout-ref").await;
    let reference_source = single.source("in.parquet", 30_000, 1);
    single.counting.reset();
    let one = barrier_flow(&single, &reference_source, vec![single.dest("one.parquet")]).await;
    assert_eq!(one.output.unwrap(), 30_000);
    assert_eq!(
        once,
        single.counting.bytes_read(),
        "two sinks read the source twice"
    );
    let extract = two.record.task("extract").unwrap();
    assert_eq!(extract.executions.len(), 1, "{extract:?}");
    // The copy wrote the checkpoint, and each sink copied out of it.
    let loads: Vec<_> = two
        .record
        .tasks
        .iter()
        .filter(|t| t.name == "load")
        .collect();
    assert_eq!(loads.len(), 2);
    for load in loads {
        assert!(load.sinks[0].method.is_column_copy(), "{load:?}");
    }
    let transform = two.record.task("transform").unwrap();
    // One execution computed it (the barrier); each sink read the checkpoint.
    let computed: Vec<bool> = transform
        .executions
        .iter()
        .map(|e| e.from_checkpoint)
        .collect();
    assert_eq!(computed, [false, true, true], "{transform:?}");
}

async fn an_unusable_result_store_is_a_typed_error_naming_it(backend: Backend) {
    // S3: a wrong secret on the in-process server (which checks signatures; moto does
    // not), a bucket that does not exist elsewhere. Local disk and memory: a result store
    // under a file.
    let h = Harness::new(backend, "denied").await;
    let source = h.source("in.parquet", 5_000, 1);
    let bad_store = match backend {
        Backend::S3 => {
            let target = S3Target::new("cache-denied-bad").await;
            let mut cases = Vec::new();
            if target.server.is_none() {
                // s3s-fs creates a missing bucket on write; S3 and moto do not.
                cases.push((
                    target
                        .store_builder("no-such-bucket-sluice")
                        .build()
                        .unwrap(),
                    "s3://no-such-bucket-sluice/cache/".to_string(),
                    "no-such-bucket-sluice",
                ));
            } else {
                cases.push((
                    target
                        .store_builder(&target.bucket)
                        .with_credentials(&target.access_key, "not-the-secret", None)
                        .build()
                        .unwrap(),
                    target.url("cache/"),
                    "checkpoints/transform/",
                ));
            }
            for (store, url, named) in cases {
                let bucket = url::Url::parse(&url).unwrap();
                let session = Session::builder()
                    .with_object_store(&bucket, store)
                    .build()
                    .unwrap();
                let run = cached_etl(&source, &h.dest("x.parquet"))
                    .with_session(session)
                    .with_result_store(&url)
                    .run()
                    .await;
                let error = run
                    .output
                    .expect_err("an unusable result store must fail the run");
                assert!(
                    matches!(&error, Error::Task { source, .. } if matches!(source.as_ref(), Error::Checkpoint { .. })),
                    "{error:?}"
                );
                let text = error.to_string();
                assert!(text.contains(named), "{text}");
                assert!(!text.contains("not-the-secret"), "{text}");
                assert!(!Path::new(&h.dest("x.parquet")).exists());
            }
            return;
        }
        Backend::Local | Backend::Memory => {
            std::fs::write(h.dir.path().join("a-file"), b"x").unwrap();
            format!("{}/", h.dir.path().join("a-file").display())
        }
    };
    let run = cached_etl(&source, &h.dest("x.parquet"))
        .with_session(h.session.clone())
        .with_result_store(&bad_store)
        .run()
        .await;
    let error = run.output.expect_err("an unusable store must fail the run");
    assert!(error.to_string().contains("a-file"), "{error}");
    assert!(!Path::new(&h.dest("x.parquet")).exists());
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Memory).await
                }
            )*
        }
        mod local {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Local).await
                }
            )*
        }
        /// Named so that `remote::s3` (CI's filter for the moto run) selects it.
        mod remote {
            mod s3 {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        super::super::$name(super::super::Backend::S3).await
                    }
                )*
            }
        }
    };
}

suite!(
    a_second_run_reads_the_checkpoint_and_no_source_byte,
    a_hit_with_statistics_is_a_column_copy_of_the_checkpoint,
    a_checkpoint_in_another_codec_is_written_by_the_copy_beside_the_output,
    a_changed_source_file_is_a_miss,
    changed_code_parameters_or_plan_are_misses,
    checkpoints_expire_by_the_injected_clock_and_refresh_replaces_them,
    corrupt_checkpoints_are_misses_or_typed_errors_never_wrong_data,
    racing_runs_leave_one_valid_checkpoint,
    an_early_stop_commits_nothing_and_leaves_no_parts,
    a_failed_copy_commits_no_checkpoint_and_leaves_no_parts,
    barrier_mode_resumes_after_a_failed_load_and_computes_fan_out_once,
    count_and_collect_of_a_persisted_output_write_its_checkpoint_with_the_copy,
    an_unusable_result_store_is_a_typed_error_naming_it,
);

// ---------------------------------------------------------------------------
// Backend-independent tests.
// ---------------------------------------------------------------------------

/// A checkpoint the copy wrote keeps its source's row groups, which may be large: a hit
/// fetches each in pieces (several column chunks up to 4 MiB each, at once) and writes
/// the miss's file again, byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hit_over_large_row_groups_fetches_them_in_pieces_and_gives_the_miss_file() {
    let h = Harness::new(Backend::Local, "large-groups").await;
    let source = h.dir.path().join("src/large.parquet");
    write_taxi_parquet(
        &source,
        &TaxiGenOptions::new(400_000)
            .with_seed(5)
            .with_row_group_rows(200_000),
    )
    .unwrap();
    let source = source.display().to_string();
    let (miss, _) = h.etl(&source, &h.dest("a.parquet"), now()).await;
    assert!(ok(&miss).method.is_column_copy(), "{:?}", ok(&miss).method);
    let parts = checkpoint_parts(&h).await;
    let footer = parquet::file::metadata::ParquetMetaDataReader::new()
        .parse_and_finish(&bytes::Bytes::from(read(&h, &parts[0].location).await))
        .unwrap();
    let group_bytes = footer.row_group(0).compressed_size();
    assert!(group_bytes > 4 << 20, "a row group of {group_bytes} bytes");
    let (hit, bytes) = h.etl(&source, &h.dest("b.parquet"), now()).await;
    assert_eq!(task(&hit, "transform").state, TaskState::Cached);
    assert_eq!(bytes, 0);
    assert!(ok(&hit).method.is_column_copy(), "{:?}", ok(&hit).method);
    assert!(
        std::fs::read(h.dest("b.parquet")).unwrap() == std::fs::read(h.dest("a.parquet")).unwrap(),
        "the hit's output is not the miss's"
    );
}

/// A sink that writes some columns of a persisted task's output in another order (one
/// renamed), and adds one, is a column copy that writes the task's checkpoint from the
/// same units, as a file of its own: every column of the task in its order and with its
/// names, the output's four; each source chunk fetched once, the task's computed column
/// evaluated once for both. A hit's sink copies the output out of the checkpoint, and
/// gives the miss's file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_of_some_columns_of_a_persisted_task_writes_its_checkpoint_beside() {
    let h = Harness::new(Backend::Local, "projected").await;
    let source = h.source("in.parquet", 30_000, 1);
    let run = |dest: String| {
        h.run_flow("projected", {
            let source = source.clone();
            async move {
                let df = transform(extract(&source).await?).await?;
                let out = df
                    .select([
                        col("tip_fraction").alias("tf"),
                        col("total_amount"),
                        col("VendorID"),
                    ])?
                    .with_column("double_tip", col("tf") * lit(2.0))?;
                load(out, &dest).await
            }
        })
    };
    // What the plain copy of the task's whole output reads: the miss reads no more.
    let reference_bytes = h.plain_etl_bytes(&source).await;
    let (miss, source_bytes) = run(h.dest("miss.parquet")).await;
    match &ok(&miss).method {
        WriteMethod::ColumnCopy {
            copied, computed, ..
        } => {
            assert_eq!(copied, &["total_amount", "VendorID"], "{copied:?}");
            assert_eq!(computed, &["tf", "double_tip"], "{computed:?}");
        }
        other => panic!("the sink was not a column copy: {other:?}"),
    }
    // One set of units for both files: no more read than for the task's output alone.
    assert!(
        source_bytes <= reference_bytes,
        "{source_bytes} > {reference_bytes}"
    );
    let key = task(&miss, "transform").cache_key.clone().unwrap();
    let manifest = h.store().show("transform", &key[..8]).await.unwrap();
    assert_eq!(manifest.columns.len(), 20, "{:?}", manifest.columns);
    assert_eq!(manifest.rows, 30_000);
    assert!(!manifest.reencode);
    // The checkpoint is the task's output: the source's row groups, every column.
    let footer = first_part_footer(&h).await;
    let groups: Vec<i64> = footer.row_groups().iter().map(|g| g.num_rows()).collect();
    assert_eq!(groups, [10_000, 10_000, 10_000]);
    assert_eq!(footer.file_metadata().schema_descr().num_columns(), 20);
    let part = checkpoint_parts(&h).await.remove(0);
    assert_eq!(
        read_in_order(Path::new(&h.dest("reference.parquet"))).await,
        read_in_order(Path::new(&format!("/{}", part.location))).await,
        "the checkpoint is not the task's output"
    );

    let (hit, source_bytes) = run(h.dest("hit.parquet")).await;
    assert_eq!(task(&hit, "transform").state, TaskState::Cached);
    assert_eq!(source_bytes, 0);
    assert!(ok(&hit).method.is_column_copy(), "{:?}", ok(&hit).method);
    assert!(
        std::fs::read(h.dest("hit.parquet")).unwrap()
            == std::fs::read(h.dest("miss.parquet")).unwrap(),
        "the hit's output is not the miss's"
    );
}

/// A tee written beside a sink that encoded its own output (the task filters rows: the
/// copy cannot serve it) is marked in its manifest; a hit's sink encodes its rows again
/// rather than copying the tee's 65,536-row groups, and gives the miss's output: its
/// row groups (the sink's `row_group_rows`), statistics and rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hit_of_a_tee_written_beside_an_encoding_sink_gives_that_sinks_row_groups() {
    let h = Harness::new(Backend::Local, "beside").await;
    let source = h.source("in.parquet", 200_000, 3);
    let run = |dest: String| {
        h.run_flow("beside", {
            let source = source.clone();
            async move {
                let raw = extract(&source).await?;
                let kept = Task::new("kept")
                    .persist(Persist::Tee)
                    .run(move |_cx| {
                        let raw = raw.clone();
                        async move {
                            raw.filter((col("PULocationID") % lit(10)).not_eq(lit(0)))?
                                .with_column(
                                    "tip_fraction",
                                    col("tip_amount") / col("total_amount"),
                                )
                        }
                    })
                    .await?;
                kept.write_parquet(&dest, ParquetWrite::zstd(3).with_row_group_rows(50_000))
                    .await
            }
        })
    };
    let (miss, _) = run(h.dest("miss.parquet")).await;
    let rows = ok(&miss).rows;
    assert!(rows > 100_000 && rows < 200_000, "{rows} rows kept");
    assert!(!ok(&miss).method.is_column_copy(), "{:?}", ok(&miss).method);
    let key = task(&miss, "kept").cache_key.clone().unwrap();
    let manifest = h.store().show("kept", &key[..8]).await.unwrap();
    assert!(manifest.reencode, "the tee's manifest is not marked");
    let miss_groups = row_groups(&h.dest("miss.parquet"));
    assert!(miss_groups.len() >= 3, "{miss_groups:?}");
    assert!(
        miss_groups[..miss_groups.len() - 1]
            .iter()
            .all(|&g| g == 50_000),
        "{miss_groups:?}"
    );
    // The checkpoint's own row groups are the tee's, not the output's: a copy of them
    // would give another file.
    assert_eq!(first_part_footer(&h).await.row_group(0).num_rows(), 65_536);

    let (hit, source_bytes) = run(h.dest("hit.parquet")).await;
    assert_eq!(task(&hit, "kept").state, TaskState::Cached);
    assert_eq!(source_bytes, 0);
    match &ok(&hit).method {
        WriteMethod::Rewrite { reason } => {
            assert!(reason.contains("written beside a sink"), "{reason}")
        }
        other => panic!("the hit copied the tee's row groups: {other:?}"),
    }
    assert_eq!(row_groups(&h.dest("hit.parquet")), miss_groups);
    let file = std::fs::File::open(h.dest("hit.parquet")).unwrap();
    let reader = parquet::file::reader::SerializedFileReader::new(file).unwrap();
    use parquet::file::reader::FileReader;
    for group in reader.metadata().row_groups() {
        for chunk in group.columns() {
            assert!(chunk.statistics().is_some(), "{}", chunk.column_path());
        }
    }
    assert_eq!(
        content(&h.session, &h.dest("hit.parquet")).await,
        content(&h.session, &h.dest("miss.parquet")).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tee_keeps_every_column_and_row_while_push_downs_stop_above_it() {
    let h = Harness::new(Backend::Local, "explain").await;
    let source = h.source("in.parquet", 10_000, 1);
    let explained = Flow::new("explain")
        .with_options(FlowOptions::default().with_session(h.session.clone()))
        .with_result_store(&h.store_url)
        .run(serde_json::json!({}), async {
            let raw = extract(&source).await?;
            let df = transform(raw).await?;
            df.select_columns(&["tip_fraction"])?
                .filter(col("tip_fraction").gt(lit(0.1)))?
                .limit(5)?
                .explain()
                .await
        })
        .await
        .output
        .unwrap();
    let physical = explained
        .split("physical_plan")
        .nth(1)
        .unwrap_or_else(|| panic!("{explained}"));
    let tee_line = physical
        .lines()
        .position(|l| l.contains("CheckpointExec: task=transform"))
        .unwrap_or_else(|| panic!("no CheckpointExec in {explained}"));
    let below: Vec<&str> = physical.lines().skip(tee_line + 1).collect();
    let scan = below
        .iter()
        .find(|l| l.contains("DataSourceExec"))
        .unwrap_or_else(|| panic!("{explained}"));
    // Below the tee the scan reads every column, with no predicate and no limit.
    for column in ["VendorID", "tip_amount", "total_amount", "Airport_fee"] {
        assert!(
            scan.contains(column),
            "{column} not scanned below the tee: {scan}"
        );
    }
    assert!(!scan.contains("predicate"), "{scan}");
    assert!(!scan.contains("limit"), "{scan}");
    assert!(
        below.iter().all(|l| !l.contains("FilterExec")),
        "{explained}"
    );
    // Above it, the filter and the limit.
    let above = physical
        .lines()
        .take(tee_line)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        above.contains("FilterExec") || above.contains("tip_fraction@"),
        "{explained}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_names_that_would_escape_their_prefix_fail_before_anything_runs() {
    let h = Harness::new(Backend::Local, "names").await;
    for bad in ["../x", "a/b", "", ".."] {
        let name = bad.to_string();
        let run = Flow::new("names")
            .with_options(FlowOptions::default().with_session(h.session.clone()))
            .with_result_store(&h.store_url)
            .run(serde_json::json!({}), async move {
                Task::new(name)
                    .persist(Persist::Tee)
                    .run(|cx| async move { cx.sql("SELECT 1 AS one", []).await })
                    .await?
                    .count()
                    .await
            })
            .await;
        let error = run.output.expect_err("a bad name must fail");
        assert!(
            error.to_string().contains("invalid task name"),
            "{bad:?}: {error}"
        );
    }
    assert!(!h.dir.path().join("cache").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eager_mode_reads_and_writes_the_same_checkpoints() {
    let h = Harness::new(Backend::Local, "eager").await;
    let source = h.source("in.parquet", 20_000, 1);
    async fn eager(h: &Harness, source: &str, dest: String) -> FlowRun<WriteSummary> {
        cached_etl(source, &dest)
            .with_mode(ExecutionMode::Eager)
            .with_session(h.session.clone())
            .with_result_store(&h.store_url)
            .run()
            .await
    }
    let first = eager(&h, &source, h.dest("a.parquet")).await;
    assert_eq!(task(&first, "transform").state, TaskState::Completed);
    assert!(task(&first, "transform").cache.as_ref().unwrap().committed);
    // A lazy run hits the checkpoint the eager run wrote, and vice versa.
    let (lazy, bytes) = h.etl(&source, &h.dest("b.parquet"), now()).await;
    assert_eq!(task(&lazy, "transform").state, TaskState::Cached);
    assert_eq!(bytes, 0);
    let second = eager(&h, &source, h.dest("c.parquet")).await;
    assert_eq!(task(&second, "transform").state, TaskState::Cached);
    let a = content(&h.session, &h.dest("a.parquet")).await;
    assert_eq!(a, content(&h.session, &h.dest("b.parquet")).await);
    assert_eq!(a, content(&h.session, &h.dest("c.parquet")).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_removes_orphaned_parts_and_clear_removes_checkpoints() {
    let h = Harness::new(Backend::Local, "gc").await;
    let source = h.source("in.parquet", 10_000, 1);
    let (run, _) = h.etl(&source, &h.dest("a.parquet"), now()).await;
    ok(&run);
    // An orphan, as a killed run leaves it: parts without a manifest naming them.
    let key = task(&run, "transform").cache_key.clone().unwrap();
    let orphan_dir: PathBuf = h
        .dir
        .path()
        .join("cache/checkpoints/transform")
        .join(&key)
        .join("data-killed");
    std::fs::create_dir_all(&orphan_dir).unwrap();
    std::fs::write(orphan_dir.join("part-0.parquet"), b"half a file").unwrap();
    // Young orphans are kept (a run may still be writing them)...
    let report = h
        .store()
        .gc(Utc::now(), Duration::from_secs(3600))
        .await
        .unwrap();
    assert!(report.orphans.is_empty(), "{report:?}");
    // ...old ones go; the valid checkpoint stays.
    let report = h.store().gc(Utc::now(), Duration::ZERO).await.unwrap();
    assert_eq!(report.orphans.len(), 1, "{report:?}");
    assert!(report.orphans[0].contains("data-killed"));
    assert_eq!(h.valid_checkpoints().await.len(), 1);
    let (hit, _) = h.etl(&source, &h.dest("b.parquet"), now()).await;
    assert_eq!(task(&hit, "transform").state, TaskState::Cached);
    let manifest = h.store().show("transform", &key[..8]).await.unwrap();
    assert_eq!(manifest.rows, 10_000);
    assert_eq!(manifest.key, key);
    // extract's sources enter through its key; transform reads no source itself.
    assert_eq!(manifest.key_inputs.upstream[0].task, "extract");
    assert!(manifest.key_inputs.sources.is_empty());
    assert!(
        manifest
            .key_inputs
            .lineage
            .to_string()
            .contains("with_column"),
        "{}",
        manifest.key_inputs.lineage
    );
    assert!(h.store().clear(Some("transform")).await.unwrap() > 0);
    assert!(h.store().list().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_consumed_twice_records_each_execution() {
    let h = Harness::new(Backend::Local, "twice").await;
    let source = h.source("in.parquet", 10_000, 1);
    let run = Flow::new("twice")
        .with_options(FlowOptions::default().with_session(h.session.clone()))
        .run(serde_json::json!({}), async {
            let raw = extract(&source).await?;
            let a: usize = raw
                .select_columns(&["VendorID"])?
                .collect()
                .await?
                .iter()
                .map(|b| b.num_rows())
                .sum();
            let a = a as u64;
            let b = raw
                .write_parquet(&h.dest("x.parquet"), ParquetWrite::default())
                .await?;
            Ok(a + b.rows)
        })
        .await;
    assert_eq!(run.output.unwrap(), 20_000);
    let e = run.record.task("extract").unwrap();
    assert_eq!(e.state, TaskState::Completed);
    assert_eq!(e.executions.len(), 2, "{e:?}");
    assert_eq!(e.executions[1].rows, 10_000);
    assert_eq!(e.rows, Some(e.executions[0].rows), "rows do not accumulate");
}

// ---------------------------------------------------------------------------
// Across processes: the seed example with `--cache`.
// ---------------------------------------------------------------------------

mod processes {
    use std::process::{Command, Stdio};

    use super::*;
    use crate::common::files_under;
    use crate::example::{example_binary, run_example};

    fn summary(path: &Path) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    }

    fn task_json<'a>(record: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
        record["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .unwrap()
    }

    fn run_ok(args: &[&str]) {
        let output = run_example(args);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn manifests(cache: &Path) -> Vec<PathBuf> {
        files_under(cache)
            .into_iter()
            .filter(|p| p.file_name().is_some_and(|n| n == "_manifest.json"))
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_example_caches_transform_across_processes_with_the_same_key() {
        let h = Harness::new(Backend::Local, "example").await;
        let source = h.source("in.parquet", 30_000, 1);
        let cache = h.dir.path().join("cache").display().to_string();
        let (s1, s2) = (h.dir.path().join("s1.json"), h.dir.path().join("s2.json"));
        let (d1, d2) = (h.dest("one.parquet"), h.dest("two.parquet"));
        let args = |dest: &str, summary: &Path| {
            vec![
                "--source".to_string(),
                source.clone(),
                "--dest".into(),
                dest.to_string(),
                "--cache".into(),
                cache.clone(),
                "--summary".into(),
                summary.display().to_string(),
            ]
        };
        let run = |dest: &str, summary: &Path| {
            let args = args(dest, summary);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run_ok(&args);
        };
        run(&d1, &s1);
        run(&d2, &s2);
        let (first, second) = (summary(&s1), summary(&s2));
        assert_eq!(task_json(&first, "transform")["state"], "Completed");
        assert_eq!(task_json(&second, "transform")["state"], "Cached");
        assert_eq!(task_json(&second, "extract")["state"], "Skipped");
        // The key computed in two processes is the same.
        let key = task_json(&first, "transform")["cache_key"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(key.len(), 32);
        assert_eq!(task_json(&second, "transform")["cache_key"], key.as_str());
        assert_eq!(
            content(&h.session, &d1).await,
            content(&h.session, &d2).await
        );

        // A truncated checkpoint part: a miss, recomputed, correct output.
        let part = std::fs::read_dir(Path::new(&cache).join("checkpoints/transform").join(&key))
            .unwrap()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().starts_with("data-"))
            .unwrap()
            .path()
            .join("part-0.parquet");
        let bytes = std::fs::read(&part).unwrap();
        std::fs::write(&part, &bytes[..bytes.len() - 100]).unwrap();
        let d3 = h.dest("three.parquet");
        run(&d3, &s1);
        assert_eq!(task_json(&summary(&s1), "transform")["state"], "Completed");
        assert_eq!(
            content(&h.session, &d1).await,
            content(&h.session, &d3).await
        );

        // A new source file at the same path: a miss with the new data.
        std::fs::remove_file(&source).unwrap();
        h.source("in.parquet", 31_000, 7);
        let d4 = h.dest("four.parquet");
        run(&d4, &s1);
        let record = summary(&s1);
        assert_eq!(task_json(&record, "transform")["state"], "Completed");
        assert_eq!(task_json(&record, "load")["rows"], 31_000);
        assert_ne!(task_json(&record, "transform")["cache_key"], key.as_str());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_processes_racing_on_one_key_both_succeed_and_one_manifest_stands() {
        let h = Harness::new(Backend::Local, "processes").await;
        let source = h.source("in.parquet", 200_000, 1);
        let cache = h.dir.path().join("cache");
        let children: Vec<_> = (0..2)
            .map(|i| {
                Command::new(example_binary())
                    .args([
                        "--source",
                        &source,
                        "--dest",
                        &h.dest(&format!("p{i}.parquet")),
                    ])
                    .arg("--cache")
                    .arg(&cache)
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for child in children {
            let output = child.wait_with_output().unwrap();
            assert!(
                output.status.success(),
                "{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        assert_eq!(manifests(&cache).len(), 1);
        let a = content(&h.session, &h.dest("p0.parquet")).await;
        assert_eq!(a, content(&h.session, &h.dest("p1.parquet")).await);
        // Whatever the loser left, gc leaves exactly the winner's parts.
        h.store().gc(Utc::now(), Duration::ZERO).await.unwrap();
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&manifests(&cache)[0]).unwrap()).unwrap();
        let named = manifest["files"].as_array().unwrap().len();
        let dir = manifests(&cache)[0].parent().unwrap().to_path_buf();
        let mut parts = 0;
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            if entry.path().is_dir() {
                parts += std::fs::read_dir(entry.path()).unwrap().count();
            }
        }
        assert_eq!(parts, named);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_run_killed_while_writing_its_checkpoint_commits_nothing() {
        let h = Harness::new(Backend::Local, "killed").await;
        let source = h.source("in.parquet", 600_000, 1);
        let cache = h.dir.path().join("cache");
        let dest = h.dest("out.parquet");
        let example = |cache: &Path, dest: &str| {
            let mut command = Command::new(example_binary());
            command
                .args(["--source", &source, "--dest", dest, "--cache"])
                .arg(cache)
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            command
        };
        // A whole run, timed: the checkpoint streams for most of it and is committed at
        // its very end.
        let reference = h.dest("reference.parquet");
        let started = std::time::Instant::now();
        assert!(
            example(&h.dir.path().join("timing-cache"), &reference)
                .status()
                .unwrap()
                .success()
        );
        let whole = started.elapsed();
        let reference = content(&h.session, &reference).await;
        // Kills at points spread over the run, the last ones well into the streaming.
        let mut killed_before_commit = 0;
        for fraction in [0.25, 0.5, 0.7, 0.85] {
            let mut child = example(&cache, &dest).spawn().unwrap();
            std::thread::sleep(whole.mul_f64(fraction));
            if child.try_wait().unwrap().is_none() {
                child.kill().unwrap();
                child.wait().unwrap();
                if manifests(&cache).is_empty() {
                    killed_before_commit += 1;
                }
            }
            // No manifest of a killed run; nothing half-written at the destination.
            if let Some(manifest) = manifests(&cache).first() {
                let m = sluice::Manifest::parse(&std::fs::read(manifest).unwrap()).unwrap();
                assert_eq!(m.rows, 600_000, "a manifest for a partial checkpoint");
                std::fs::remove_file(manifest).unwrap();
            }
            if Path::new(&dest).exists() {
                assert_eq!(content(&h.session, &dest).await, reference);
            }
        }
        assert!(
            killed_before_commit > 0,
            "no kill landed before the commit (a whole run took {whole:?})"
        );
        // The rerun computes a correct output and commits.
        run_ok(&[
            "--source",
            &source,
            "--dest",
            &dest,
            "--cache",
            cache.to_str().unwrap(),
        ]);
        assert_eq!(content(&h.session, &dest).await, reference);
        assert_eq!(manifests(&cache).len(), 1);
        // gc then leaves exactly the parts the manifest names: no orphan of a killed run,
        // once the killed writers' leases have lapsed (a live writer's are renewed).
        let lapsed = Utc::now() + chrono::Duration::from_std(sluice::LEASE_TTL).unwrap();
        h.store().gc(lapsed, Duration::ZERO).await.unwrap();
        let manifest =
            sluice::Manifest::parse(&std::fs::read(&manifests(&cache)[0]).unwrap()).unwrap();
        let dir = manifests(&cache)[0].parent().unwrap().to_path_buf();
        let mut named: Vec<String> = manifest
            .files
            .iter()
            .map(|f| dir.join(&f.path).display().to_string())
            .collect();
        let mut parts: Vec<String> = files_under(&cache)
            .into_iter()
            .map(|p| p.display().to_string())
            .filter(|p| p.contains("/data-"))
            .collect();
        named.sort();
        parts.sort();
        assert_eq!(parts, named);
        let out = run_example(&[
            "--source",
            &source,
            "--dest",
            &h.dest("hit.parquet"),
            "--cache",
            cache.to_str().unwrap(),
        ]);
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains("Cached"));
        assert_eq!(content(&h.session, &h.dest("hit.parquet")).await, reference);
    }
}

/// Two sinks of one persisted frame: the first's copy writes the checkpoint, the second
/// copies out of it (the footers its writer gave, every byte checked against the
/// manifest) and reads no source byte: the same file twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_tee_a_second_sink_planned_after_the_commit_reads_the_checkpoint() {
    let h = Harness::new(Backend::Local, "tee-twice").await;
    let source = h.source("in.parquet", 20_000, 1);
    let (first_dest, second_dest) = (h.dest("one.parquet"), h.dest("two.parquet"));
    let counting = Arc::clone(&h.counting);
    let run = Flow::new("tee-twice")
        .with_options(FlowOptions::default().with_session(h.session.clone()))
        .with_result_store(&h.store_url)
        .run(serde_json::json!({}), async {
            let df = transform(extract(&source).await?).await?;
            counting.reset();
            let one = df
                .write_parquet(&first_dest, ParquetWrite::default())
                .await?;
            let first = counting.bytes_read();
            counting.reset();
            let two = df
                .write_parquet(&second_dest, ParquetWrite::default())
                .await?;
            Ok((first, counting.bytes_read(), one, two))
        })
        .await;
    let (first, second, one, two) = run.output.unwrap();
    assert!(first > 0);
    assert_eq!(second, 0, "the second sink recomputed the teed task");
    assert!(one.method.is_column_copy(), "{:?}", one.method);
    verbatim_copy_of(&two, &first_dest);
    assert_eq!(h.valid_checkpoints().await.len(), 1);
}
