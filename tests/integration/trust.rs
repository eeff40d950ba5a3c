//! Checkpoints you can trust: each way a checkpoint, its key or its sources could hand
//! a run wrong data, or leave a cache stuck, tried as it happens, on an in-memory store,
//! local disk and S3 (the in-process server; CI runs `trust::remote::s3` against moto
//! too, as its filter `remote::s3` matches it).
//!
//! Each test shows its reason: where the old behaviour published short or stale data,
//! the test checks the rows (or the values) that come out, and the race tests count
//! what each run read, not only which manifest stands.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use object_store::{ObjectStore, ObjectStoreExt};
use sluice::prelude::*;
use sluice::{CheckpointFormat, Clock, Compression, FlowRun, SessionBuilder};

use crate::cache::{
    Backend, Harness, builder_flow, checkpoint_objects, content, data_dirs, read, rewrite, state,
};

#[task]
async fn extract(cx: &TaskContext, source: &str) -> Result<Frame> {
    cx.read_parquet(source).await
}

#[task]
async fn load(df: Frame, dest: &str) -> Result<WriteSummary> {
    df.write_parquet(dest, ParquetWrite::zstd(1)).await
}

/// The result store's object store, for reaching into checkpoints.
fn result_store(h: &Harness) -> Arc<dyn ObjectStore> {
    let url = sluice::store::resolve_url(&h.store_url).unwrap();
    h.session.stores().store_for(&url).unwrap()
}

/// The checkpoint parts in the result store, in path order.
async fn parts(h: &Harness) -> Vec<object_store::path::Path> {
    checkpoint_objects(h)
        .await
        .into_iter()
        .filter(|m| m.location.as_ref().ends_with(".parquet"))
        .map(|m| m.location)
        .collect()
}

fn failed<T: std::fmt::Debug>(run: &FlowRun<T>) -> &sluice::Error {
    run.output.as_ref().expect_err("the run must fail")
}

fn is_corrupt_checkpoint(error: &sluice::Error) -> bool {
    format!("{error:?}").contains("CorruptCheckpoint")
}

/// The tip-fraction transform, persisted as `mode`, with a checkpoint format.
async fn transform_as(
    raw: &Frame,
    mode: Persist,
    policy: CachePolicy,
    format: CheckpointFormat,
) -> Result<Frame> {
    let raw = raw.clone();
    Task::new("transform")
        .with_version("v1")
        .persist(mode)
        .cache(policy)
        .with_checkpoint_format(format)
        .run(move |_cx| {
            let raw = raw.clone();
            async move { raw.with_column("tip_fraction", col("tip_amount") / col("total_amount")) }
        })
        .await
}

fn flow(h: &Harness, name: &str) -> Flow {
    flow_at(h, name, Clock::default())
}

fn flow_at(h: &Harness, name: &str, clock: Clock) -> Flow {
    Flow::new(name)
        .with_options(
            FlowOptions::default()
                .with_session(h.session.clone())
                .with_clock(clock),
        )
        .with_result_store(&h.store_url)
}

// ---------------------------------------------------------------------------
// 1. Reads of a checkpoint read exactly the manifest.
// ---------------------------------------------------------------------------

/// A barrier over four source files committed its parts; one part is deleted before
/// the sink reads them (as a concurrent `gc` or a person could). The old read listed
/// the parts and skipped the missing one: the flow completed with half the rows.
async fn a_part_deleted_before_a_barriers_sink_fails_the_run_naming_the_checkpoint(
    backend: Backend,
) {
    let h = Harness::new(backend, "deleted-part").await;
    for (i, name) in ["a", "b", "c", "d"].iter().enumerate() {
        h.source(&format!("{name}.parquet"), 10_000, i as u64 + 1);
    }
    let glob = format!("{}/src/*.parquet", h.dir.path().display());
    let dest = h.dest("out.parquet");
    let barrier_then = |delete_a_part: bool| {
        let (h, glob, dest) = (&h, glob.clone(), dest.clone());
        async move {
            flow(h, "barrier")
                .run(serde_json::json!({}), async move {
                    let raw = extract(&glob).await?;
                    let df = transform_as(
                        &raw,
                        Persist::Barrier,
                        CachePolicy::inputs(),
                        CheckpointFormat::default(),
                    )
                    .await?;
                    if delete_a_part {
                        let part = parts(h).await.remove(0);
                        result_store(h).delete(&part).await.unwrap();
                    }
                    Ok(load(df, &dest).await?.rows)
                })
                .await
        }
    };
    let run = barrier_then(true).await;
    let error = failed(&run);
    assert!(is_corrupt_checkpoint(error), "{error:?}");
    assert_eq!(error.task(), Some("transform"), "{error:?}");
    let text = error.to_string();
    assert!(text.contains("checkpoints/transform/"), "{text}");
    assert!(text.contains("is missing"), "{text}");
    assert!(!Path::new(&dest).exists(), "a short output was published");
    assert!(h.valid_checkpoints().await.is_empty(), "not invalidated");
    // The next run recomputes, and writes every row.
    let rerun = barrier_then(false).await;
    assert_eq!(*rerun.output.as_ref().unwrap(), 40_000);
    assert_eq!(state(&rerun, "transform"), TaskState::Completed);
}

/// A part replaced (same size, other bytes in its first block) after the lookup read
/// and checked its footer: the read path checks the block it fetches, and the run
/// fails before a sink publishes.
async fn a_part_changed_between_the_lookup_and_the_scan_fails_the_run(backend: Backend) {
    let h = Harness::new(backend, "changed-part").await;
    let source = h.source("in.parquet", 40_000, 1);
    let run = |dest: String, damage: bool| {
        let (h, source) = (&h, source.clone());
        async move {
            flow(h, "late")
                .run(serde_json::json!({}), async move {
                    let raw = extract(&source).await?;
                    let df = transform_as(
                        &raw,
                        Persist::Tee,
                        CachePolicy::inputs(),
                        CheckpointFormat::default(),
                    )
                    .await?;
                    if damage {
                        for part in parts(h).await {
                            let mut bytes = read(h, &part).await;
                            bytes[100] ^= 0x01;
                            rewrite(h, &part, bytes).await;
                        }
                    }
                    Ok(load(df, &dest).await?.rows)
                })
                .await
        }
    };
    assert_eq!(
        *run(h.dest("a.parquet"), false)
            .await
            .output
            .as_ref()
            .unwrap(),
        40_000
    );
    let dest = h.dest("b.parquet");
    let damaged = run(dest.clone(), true).await;
    assert_eq!(
        damaged.record.task("transform").unwrap().state,
        TaskState::Failed
    );
    let error = failed(&damaged);
    assert!(is_corrupt_checkpoint(error), "{error:?}");
    assert!(
        error.to_string().contains("does not match its checksum"),
        "{error}"
    );
    assert!(!Path::new(&dest).exists());
    let rerun = run(h.dest("c.parquet"), false).await;
    assert_eq!(*rerun.output.as_ref().unwrap(), 40_000);
    assert_eq!(state(&rerun, "transform"), TaskState::Completed);
}

// ---------------------------------------------------------------------------
// 2. Verified on the read path.
// ---------------------------------------------------------------------------

/// A value byte changed in an uncompressed, plain-encoded part, read under `limit(10)`:
/// the old check ran when the stream ended, and a limit dropped the stream first, so
/// the changed value was served. Without verification the changed value comes out
/// (which shows the byte lands in the first rows); with it, the run fails.
async fn a_value_byte_changed_under_a_limit_fails_before_any_row_is_served(backend: Backend) {
    // One partition: `limit(10)` takes the first rows of the one part, in order.
    let h = Harness::new_with(backend, "limit", |b| b.with_target_partitions(1)).await;
    let source = h.source("in.parquet", 40_000, 1);
    let plain = CheckpointFormat::default()
        .with_compression(Compression::Uncompressed)
        .with_dictionary(false);
    let first_fares = |verify: bool| {
        let (h, source) = (&h, source.clone());
        async move {
            flow(h, "limit")
                .run(serde_json::json!({}), async move {
                    let raw = extract(&source).await?;
                    let policy = CachePolicy::inputs().verify_checksums(verify);
                    let df = transform_as(&raw, Persist::Tee, policy, plain).await?;
                    let batches = df
                        .select_columns(&["fare_amount"])?
                        .limit(10)?
                        .collect()
                        .await?;
                    let fares = batches[0]
                        .column(0)
                        .as_any()
                        .downcast_ref::<datafusion::arrow::array::Float64Array>()
                        .unwrap()
                        .values()
                        .to_vec();
                    Ok(fares)
                })
                .await
        }
    };
    // Computed once, so that the next runs hit.
    let computed = flow(&h, "limit")
        .run(serde_json::json!({}), {
            let source = source.clone();
            async move {
                let raw = extract(&source).await?;
                transform_as(&raw, Persist::Tee, CachePolicy::inputs(), plain)
                    .await?
                    .count()
                    .await
            }
        })
        .await;
    assert_eq!(*computed.output.as_ref().unwrap(), 40_000);
    let reference = first_fares(true).await;
    let reference = reference.output.as_ref().unwrap().clone();
    assert_eq!(reference.len(), 10);
    // The first fare's bytes, plainly encoded in the first part's first data page:
    // change its lowest mantissa byte.
    let part = parts(&h).await.remove(0);
    let mut bytes = read(&h, &part).await;
    let chunk = {
        use parquet::file::reader::{FileReader, SerializedFileReader};
        let reader = SerializedFileReader::new(bytes::Bytes::from(bytes.clone())).unwrap();
        let group = reader.metadata().row_group(0);
        let column = group
            .columns()
            .iter()
            .find(|c| c.column_path().string() == "fare_amount")
            .unwrap();
        let (start, length) = column.byte_range();
        start as usize..(start + length) as usize
    };
    let needle = reference[0].to_le_bytes();
    let at = chunk.start
        + bytes[chunk]
            .windows(8)
            .position(|w| w == needle)
            .expect("the first fare is plainly encoded in its column chunk");
    bytes[at] ^= 0x01;
    rewrite(&h, &part, bytes).await;
    let unverified = first_fares(false).await;
    let served = unverified.output.as_ref().unwrap();
    assert_eq!(state(&unverified, "transform"), TaskState::Cached);
    assert_ne!(
        served, &reference,
        "the changed byte is not among the first rows"
    );
    let verified = first_fares(true).await;
    let error = failed(&verified);
    assert!(is_corrupt_checkpoint(error), "{error:?}");
    assert!(
        error.to_string().contains("does not match its checksum"),
        "{error}"
    );
    // Invalidated: the next run recomputes the right values (its stream stopped by the
    // limit, the task is cancelled and commits nothing).
    let again = first_fares(true).await;
    assert_eq!(again.output.as_ref().unwrap(), &reference);
    let recomputed = again.record.task("transform").unwrap();
    assert_eq!(recomputed.state, TaskState::Cancelled, "{recomputed:?}");
    assert_eq!(recomputed.cache.as_ref().unwrap().lookup, "miss");
}

// ---------------------------------------------------------------------------
// 3. A bad checkpoint is a miss, not a wall.
// ---------------------------------------------------------------------------

/// One byte of a part's footer changed (in its `ARROW:schema`): the old lookup did not
/// read footers, and every run failed on it until the cache was cleared by hand. Now
/// the lookup checks the footer's block: a miss that recomputes in the same run, and
/// the next run hits the new checkpoint.
async fn a_changed_footer_byte_is_a_miss_that_recomputes_then_hits_again(backend: Backend) {
    let h = Harness::new(backend, "footer").await;
    let source = h.source("in.parquet", 20_000, 1);
    let (first, _) = h
        .etl(&source, &h.dest("ref.parquet"), Clock::default())
        .await;
    first.output.as_ref().unwrap();
    let reference = content(&h.session, &h.dest("ref.parquet")).await;
    for part in parts(&h).await {
        let mut bytes = read(&h, &part).await;
        let key = b"ARROW:schema";
        let at = bytes
            .windows(key.len())
            .rposition(|w| w == key)
            .expect("a part's footer holds its Arrow schema");
        // A byte of the base64 value after the key.
        bytes[at + key.len() + 40] ^= 0x02;
        rewrite(&h, &part, bytes).await;
    }
    let (second, _) = h
        .etl(&source, &h.dest("second.parquet"), Clock::default())
        .await;
    second.output.as_ref().unwrap();
    let t = second.record.task("transform").unwrap();
    assert_eq!(t.state, TaskState::Completed, "{t:?}");
    let cache = t.cache.as_ref().unwrap();
    assert!(
        cache.reason.as_ref().unwrap().contains("checksum"),
        "{cache:?}"
    );
    assert!(cache.committed);
    assert_eq!(
        content(&h.session, &h.dest("second.parquet")).await,
        reference
    );
    let (third, bytes) = h
        .etl(&source, &h.dest("third.parquet"), Clock::default())
        .await;
    assert_eq!(
        third.record.task("transform").unwrap().state,
        TaskState::Cached
    );
    assert_eq!(bytes, 0);
    assert_eq!(
        content(&h.session, &h.dest("third.parquet")).await,
        reference
    );
}

// ---------------------------------------------------------------------------
// 5. One listing.
// ---------------------------------------------------------------------------

/// A source file replaced, or deleted, after its frame was built (its listing made the
/// key): the old scan listed again and read the new file (a checkpoint under a key that
/// names other objects), or skipped the deleted one (a short output). Now the run fails
/// naming the object, whatever the write path, and commits and publishes nothing.
async fn a_source_changed_after_its_frame_was_built_fails_naming_it(backend: Backend) {
    let h = Harness::new(backend, "changed-source").await;
    h.source("a.parquet", 10_000, 1);
    let b = h.source("b.parquet", 10_000, 2);
    let glob = format!("{}/src/*.parquet", h.dir.path().display());
    let run = |dest: String, persisted: bool, change: &'static str| {
        let (h, glob, b) = (&h, glob.clone(), b.clone());
        async move {
            flow(h, "changed")
                .run(serde_json::json!({}), async move {
                    let raw = extract(&glob).await?;
                    let df = if persisted {
                        transform_as(
                            &raw,
                            Persist::Tee,
                            CachePolicy::inputs(),
                            CheckpointFormat::default(),
                        )
                        .await?
                    } else {
                        raw
                    };
                    match change {
                        "replace" => {
                            // Another file of the same rows under the same name.
                            let other = h.source("other.parquet", 12_000, 7);
                            std::fs::rename(&other, &b).unwrap();
                        }
                        "delete" => std::fs::remove_file(&b).unwrap(),
                        "add" | "add under a filter" => {
                            h.source("c.parquet", 1_000, 3);
                        }
                        _ => {}
                    }
                    // A filter keeps the column copy off: DataFusion's scan runs.
                    let df = if change == "add under a filter" {
                        df.filter(col("VendorID").gt_eq(lit(0)))?
                    } else {
                        df
                    };
                    load(df, &dest).await
                })
                .await
        }
    };
    for (persisted, change) in [
        (true, "replace"),
        (false, "replace"),
        (true, "delete"),
        (false, "delete"),
        (true, "add under a filter"),
    ] {
        let dest = h.dest(&format!("{persisted}-{change}.parquet"));
        let result = run(dest.clone(), persisted, change).await;
        let error = failed(&result);
        let text = error.to_string();
        assert!(
            format!("{error:?}").contains("SourceChanged"),
            "{persisted} {change}: {error:?}"
        );
        let named = if change == "add under a filter" {
            "c.parquet"
        } else {
            "b.parquet"
        };
        assert!(text.contains(named), "{text}");
        match change {
            "delete" => assert!(text.contains("no longer there"), "{text}"),
            "add under a filter" => assert!(
                text.contains("appeared after the frame was built"),
                "{text}"
            ),
            _ => {}
        }
        assert!(
            !Path::new(&dest).exists(),
            "{persisted} {change}: published"
        );
        assert!(
            h.valid_checkpoints().await.is_empty(),
            "{persisted} {change}: committed"
        );
        // The sources as they were, for the next case.
        h.source("b.parquet", 10_000, 2);
        let _ = std::fs::remove_file(h.dir.path().join("src/c.parquet"));
    }
    // A file added after the listing, under the column copy (which writes the persisted
    // task's checkpoint too): the copy reads exactly the objects the frame was built
    // from, which its cache key names (DataFusion's scan lists again, and fails).
    for persisted in [false, true] {
        let added = run(
            h.dest(&format!("added-{persisted}.parquet")),
            persisted,
            "add",
        )
        .await;
        let summary = added.output.as_ref().unwrap();
        assert!(summary.method.is_column_copy(), "{:?}", summary.method);
        assert_eq!(summary.rows, 20_000, "the added file was read");
        let _ = std::fs::remove_file(h.dir.path().join("src/c.parquet"));
    }
    assert_eq!(h.valid_checkpoints().await.len(), 1);
    h.store().clear(None).await.unwrap();
    // Unchanged, the same flows run; the non-persisted one takes the column copy.
    let copied = run(h.dest("copied.parquet"), false, "none").await;
    let summary = copied.output.as_ref().unwrap();
    assert_eq!(summary.rows, 20_000);
    assert!(summary.method.is_column_copy(), "{:?}", summary.method);
}

// ---------------------------------------------------------------------------
// 6. Refresh and expiry propagate.
// ---------------------------------------------------------------------------

/// A checkpoint written with a 24-hour expiry, read later under a 1-hour policy: the
/// earlier of the two applies.
async fn a_shortened_expiry_applies_to_checkpoints_already_written(backend: Backend) {
    let h = Harness::new(backend, "shortened").await;
    let source = h.source("in.parquet", 10_000, 1);
    let t0: DateTime<Utc> = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
    let at = |hours: i64| Clock::fixed(t0 + chrono::Duration::hours(hours));
    let policy = |hours: u64| CachePolicy::inputs().expire_after(Duration::from_secs(hours * 3600));
    let run = |clock: Clock, policy: CachePolicy| {
        builder_flow(&h, &source, "v1", 2.0, "a", policy, clock)
    };
    assert_eq!(
        state(&run(at(0), policy(24)).await, "scaled"),
        TaskState::Completed
    );
    assert_eq!(
        state(&run(at(2), policy(24)).await, "scaled"),
        TaskState::Cached
    );
    let shortened = run(at(2), policy(1)).await;
    assert_eq!(state(&shortened, "scaled"), TaskState::Completed);
    let cache = shortened
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
}

/// An upstream checkpoint refreshed: the downstream key names the upstream checkpoint
/// it read, so the downstream task recomputes instead of serving results of the
/// replaced upstream output.
async fn a_refreshed_upstream_checkpoint_is_a_miss_downstream(backend: Backend) {
    let h = Harness::new(backend, "upstream").await;
    let source = h.source("in.parquet", 10_000, 1);
    let run = |refresh: bool| {
        let (h, source) = (&h, source.clone());
        async move {
            flow(h, "chain")
                .run(serde_json::json!({}), async move {
                    let raw = extract(&source).await?;
                    let up =
                        Task::new("up")
                            .cache(CachePolicy::inputs().refresh(refresh))
                            .run(|_cx| {
                                let raw = raw.clone();
                                async move {
                                    raw.with_column("double_fare", col("fare_amount") * lit(2.0))
                                }
                            })
                            .await?;
                    let down = Task::new("down")
                        .persist(Persist::Tee)
                        .run(|_cx| {
                            let up = up.clone();
                            async move { up.filter(col("double_fare").gt(lit(20.0))) }
                        })
                        .await?;
                    down.count().await
                })
                .await
        }
    };
    let states = |run: &FlowRun<u64>| (state(run, "up"), state(run, "down"));
    use TaskState::*;
    assert_eq!(states(&run(false).await), (Completed, Completed));
    let hit = run(false).await;
    assert_eq!(states(&hit), (Cached, Cached));
    let refreshed = run(true).await;
    assert_eq!(states(&refreshed), (Completed, Completed));
    assert_eq!(
        refreshed.output.as_ref().unwrap(),
        hit.output.as_ref().unwrap()
    );
    assert_eq!(states(&run(false).await), (Cached, Cached));
}

// ---------------------------------------------------------------------------
// 7. gc, refresh and invalidation beside live runs.
// ---------------------------------------------------------------------------

/// A run reading a checkpoint while another refreshes it: the refresher computes (it
/// reads the source) and commits, the replaced parts are released, not deleted, and
/// the reader finishes with every row. A reader that then finds the replaced
/// checkpoint corrupt invalidates that one only: the refresher's stands.
async fn a_refresh_beside_a_reader_breaks_neither(backend: Backend) {
    use futures::StreamExt;
    let h = Harness::new(backend, "refresh").await;
    let source = h.source("in.parquet", 60_000, 1);
    let hit_then = |refresh: bool| {
        let (h, source) = (&h, source.clone());
        async move {
            flow(h, "refresh")
                .run(serde_json::json!({}), async move {
                    let raw = extract(&source).await?;
                    transform_as(
                        &raw,
                        Persist::Tee,
                        CachePolicy::inputs().refresh(refresh),
                        CheckpointFormat::default(),
                    )
                    .await?
                    .count()
                    .await
                })
                .await
        }
    };
    assert_eq!(*hit_then(false).await.output.as_ref().unwrap(), 60_000);
    let old_dirs = data_dirs(&checkpoint_objects(&h).await);

    // The reader looks the checkpoint up and starts streaming; the refresher runs to
    // its end; then the reader reads the rest.
    let (looked_up, wait_lookup) = tokio::sync::oneshot::channel::<()>();
    let (go_on, wait_go) = tokio::sync::oneshot::channel::<()>();
    let reader = {
        let (h, source) = (&h, source.clone());
        async move {
            flow(h, "reader")
                .run(serde_json::json!({}), async move {
                    let raw = extract(&source).await?;
                    let df = transform_as(
                        &raw,
                        Persist::Tee,
                        CachePolicy::inputs(),
                        CheckpointFormat::default(),
                    )
                    .await?;
                    let mut stream = df.execute_stream().await?;
                    let mut rows = stream.next().await.unwrap()?.num_rows() as u64;
                    looked_up.send(()).unwrap();
                    wait_go.await.unwrap();
                    while let Some(batch) = stream.next().await {
                        rows += batch?.num_rows() as u64;
                    }
                    Ok(rows)
                })
                .await
        }
    };
    let refresher = async {
        wait_lookup.await.unwrap();
        h.counting.reset();
        let refreshed = hit_then(true).await;
        let read_from_source = h.counting.bytes_read();
        go_on.send(()).unwrap();
        (refreshed, read_from_source)
    };
    let (reading, (refreshed, read_from_source)) = futures::join!(reader, refresher);
    assert_eq!(*refreshed.output.as_ref().unwrap(), 60_000);
    assert_eq!(state(&refreshed, "transform"), TaskState::Completed);
    assert!(read_from_source > 0, "the refresher did not compute");
    assert_eq!(
        *reading.output.as_ref().unwrap(),
        60_000,
        "the reader lost its parts"
    );
    let reader_task = reading.record.task("transform").unwrap();
    assert_eq!(reader_task.state, TaskState::Cached);
    assert!(reader_task.executions.iter().all(|e| e.from_checkpoint));
    // The replaced parts are still there (released), and the refresher's manifest
    // stands.
    let now_dirs = data_dirs(&checkpoint_objects(&h).await);
    assert!(old_dirs.is_subset(&now_dirs), "{old_dirs:?} {now_dirs:?}");
    assert_eq!(h.valid_checkpoints().await.len(), 1);

    // A reader of the replaced checkpoint that finds it corrupt invalidates it alone.
    let (looked_up, wait_lookup) = tokio::sync::oneshot::channel::<()>();
    let (go_on, wait_go) = tokio::sync::oneshot::channel::<()>();
    let reader = {
        let (h, source) = (&h, source.clone());
        async move {
            flow(h, "reader")
                .run(serde_json::json!({}), async move {
                    let raw = extract(&source).await?;
                    let df = transform_as(
                        &raw,
                        Persist::Tee,
                        CachePolicy::inputs(),
                        CheckpointFormat::default(),
                    )
                    .await?;
                    looked_up.send(()).unwrap();
                    wait_go.await.unwrap();
                    // Every column's values, not a count (a count reads no data page).
                    let batches = df.collect().await?;
                    Ok(batches.iter().map(|b| b.num_rows() as u64).sum::<u64>())
                })
                .await
        }
    };
    let refresher = async {
        wait_lookup.await.unwrap();
        let refreshed = hit_then(true).await;
        // The parts the reader is about to read, now released, get damaged.
        for dir in &now_dirs {
            for part in parts(&h)
                .await
                .into_iter()
                .filter(|p| p.as_ref().contains(dir.as_str()))
            {
                let mut bytes = read(&h, &part).await;
                bytes[100] ^= 0x01;
                rewrite(&h, &part, bytes).await;
            }
        }
        go_on.send(()).unwrap();
        refreshed
    };
    let (reading, refreshed) = futures::join!(reader, refresher);
    assert_eq!(state(&refreshed, "transform"), TaskState::Completed);
    assert!(is_corrupt_checkpoint(failed(&reading)));
    sluice::store::cleanup::drain(Duration::from_secs(10)).await;
    assert_eq!(
        h.valid_checkpoints().await.len(),
        1,
        "the refresher's checkpoint went too"
    );
    let after = hit_then(false).await;
    assert_eq!(state(&after, "transform"), TaskState::Cached);
    assert_eq!(*after.output.as_ref().unwrap(), 60_000);
    // The released parts go once gc's grace has passed since their release.
    let later = Utc::now() + chrono::Duration::hours(2);
    h.store()
        .gc(later, Duration::from_secs(3600))
        .await
        .unwrap();
    let left = data_dirs(&checkpoint_objects(&h).await);
    assert_eq!(left.len(), 1, "{left:?}");
}

/// Whether a writer's lease in the result store was renewed at `at` or later.
async fn lease_seen(h: &Harness, at: DateTime<Utc>) -> bool {
    let store = result_store(h);
    for object in checkpoint_objects(h).await {
        if object.location.filename() == Some("_lease") {
            let text = store
                .get(&object.location)
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            let renewed =
                DateTime::parse_from_rfc3339(std::str::from_utf8(&text).unwrap()).unwrap();
            if renewed >= at {
                return true;
            }
        }
    }
    false
}

/// A clock the test moves.
#[derive(Clone)]
struct TestClock(Arc<AtomicI64>);

impl TestClock {
    fn starting_now() -> Self {
        Self(Arc::new(AtomicI64::new(Utc::now().timestamp())))
    }
    fn advance(&self, seconds: i64) {
        self.0.fetch_add(seconds, Ordering::SeqCst);
    }
    fn now(&self) -> DateTime<Utc> {
        DateTime::from_timestamp(self.0.load(Ordering::SeqCst), 0).unwrap()
    }
    fn clock(&self) -> Clock {
        let seconds = Arc::clone(&self.0);
        Clock::new(move || DateTime::from_timestamp(seconds.load(Ordering::SeqCst), 0).unwrap())
    }
}

/// A writer slower than gc's grace period: its lease (renewed as its parts make
/// progress, by the flow's clock) keeps gc off its parts, where the old gc judged
/// them by age alone and deleted the early ones. The writer then commits a checkpoint
/// with every row, and a later run hits it.
async fn gc_beside_a_slow_writer_keeps_its_parts(backend: Backend) {
    use futures::StreamExt;
    let h = Harness::new(backend, "slow").await;
    let source = h.source("in.parquet", 200_000, 1);
    let clock = TestClock::starting_now();
    let writer = flow_at(&h, "slow", clock.clock())
        .run(serde_json::json!({}), {
            let (h, source, clock) = (&h, source.clone(), clock.clone());
            async move {
                let raw = extract(&source).await?;
                let df = transform_as(
                    &raw,
                    Persist::Tee,
                    CachePolicy::inputs(),
                    CheckpointFormat::default().with_row_group_rows(8192),
                )
                .await?;
                let mut stream = df.execute_stream().await?;
                let mut rows = 0u64;
                // Some batches, then two hours pass (by the flow's clock).
                for _ in 0..4 {
                    rows += stream.next().await.unwrap()?.num_rows() as u64;
                }
                clock.advance(2 * 3600);
                let renewed_at = clock.now();
                // The next batch's progress renews the lease (written by the lease's own
                // task: wait for it while the stream stands still).
                rows += stream.next().await.unwrap()?.num_rows() as u64;
                let mut renewed = false;
                for _ in 0..500 {
                    if lease_seen(h, renewed_at).await {
                        renewed = true;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                assert!(
                    renewed,
                    "the lease was not renewed while the parts were written"
                );
                // Parts written two hours ago by the clock; grace one hour.
                let report = h
                    .store()
                    .gc(clock.now(), Duration::from_secs(3600))
                    .await
                    .unwrap();
                assert!(
                    report.orphans.is_empty(),
                    "gc took a live writer's parts: {report:?}"
                );
                while let Some(batch) = stream.next().await {
                    rows += batch?.num_rows() as u64;
                }
                Ok(rows)
            }
        })
        .await;
    assert_eq!(*writer.output.as_ref().unwrap(), 200_000);
    assert_eq!(h.valid_checkpoints().await.len(), 1);
    let hit = flow(&h, "slow")
        .run(serde_json::json!({}), {
            let source = source.clone();
            async move {
                let raw = extract(&source).await?;
                transform_as(
                    &raw,
                    Persist::Tee,
                    CachePolicy::inputs(),
                    CheckpointFormat::default().with_row_group_rows(8192),
                )
                .await?
                .count()
                .await
            }
        })
        .await;
    assert_eq!(*hit.output.as_ref().unwrap(), 200_000);
    assert_eq!(state(&hit, "transform"), TaskState::Cached);
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(crate::cache::Backend::Memory).await
                }
            )*
        }
        mod local {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(crate::cache::Backend::Local).await
                }
            )*
        }
        /// Named so that `remote::s3` (CI's filter for the moto run) selects it.
        mod remote {
            mod s3 {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        super::super::$name(crate::cache::Backend::S3).await
                    }
                )*
            }
        }
    };
}

suite!(
    a_part_deleted_before_a_barriers_sink_fails_the_run_naming_the_checkpoint,
    a_part_changed_between_the_lookup_and_the_scan_fails_the_run,
    a_value_byte_changed_under_a_limit_fails_before_any_row_is_served,
    a_changed_footer_byte_is_a_miss_that_recomputes_then_hits_again,
    a_source_changed_after_its_frame_was_built_fails_naming_it,
    a_shortened_expiry_applies_to_checkpoints_already_written,
    a_refreshed_upstream_checkpoint_is_a_miss_downstream,
    a_refresh_beside_a_reader_breaks_neither,
    gc_beside_a_slow_writer_keeps_its_parts,
);

// ---------------------------------------------------------------------------
// 4. Complete, unambiguous keys (independent of the store: local disk).
// ---------------------------------------------------------------------------

/// A persisted task over `body`, counted, in `session`.
async fn keyed_run<F>(h: &Harness, session: &Session, policy: CachePolicy, body: F) -> FlowRun<u64>
where
    F: Fn(Frame) -> Result<Frame> + Send + Sync + Clone + 'static,
{
    let source = format!("{}/src/in.parquet", h.dir.path().display());
    Flow::new("keyed")
        .with_options(FlowOptions::default().with_session(session.clone()))
        .with_result_store(&h.store_url)
        .run(serde_json::json!({}), async move {
            let raw = extract(&source).await?;
            let out = Task::new("keyed")
                .cache(policy)
                .run(move |_cx| {
                    let (raw, body) = (raw.clone(), body.clone());
                    async move { body(raw) }
                })
                .await?;
            out.count().await
        })
        .await
}

/// The state of the task of [`keyed_run`] under the inputs policy.
async fn keyed_state<F>(h: &Harness, session: &Session, body: F) -> TaskState
where
    F: Fn(Frame) -> Result<Frame> + Send + Sync + Clone + 'static,
{
    state(
        &keyed_run(h, session, CachePolicy::inputs(), body).await,
        "keyed",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volatile_and_time_functions_are_refused_in_a_persisted_task_unless_allowed() {
    use datafusion::functions::expr_fn::{current_date, current_time, now, random, uuid};
    let h = Harness::new(Backend::Local, "volatile").await;
    h.source("in.parquet", 1_000, 1);
    let cases: Vec<(&str, Expr)> = vec![
        ("random()", random()),
        ("uuid()", uuid()),
        ("now()", now()),
        ("current_date()", current_date()),
        ("current_time()", current_time()),
    ];
    for (name, expr) in cases {
        let with = |expr: Expr| move |raw: Frame| raw.with_column("x", expr.clone());
        let refused = keyed_run(&h, &h.session, CachePolicy::inputs(), with(expr.clone())).await;
        let error = failed(&refused);
        assert!(
            format!("{error:?}").contains("UncacheableFunction"),
            "{name}: {error:?}"
        );
        assert!(error.to_string().contains(name), "{name}: {error}");
        assert!(
            error.to_string().contains("allow_volatile"),
            "{name}: {error}"
        );
        // Refused before anything was written.
        let written: Vec<_> = checkpoint_objects(&h)
            .await
            .into_iter()
            .filter(|m| m.location.as_ref().contains("/checkpoints/"))
            .collect();
        assert!(written.is_empty(), "{name}: {written:?}");
        // Through SQL too.
        let sql = format!("SELECT *, {name} AS x FROM raw");
        let session = h.session.clone();
        let source = format!("{}/src/in.parquet", h.dir.path().display());
        let through_sql = Flow::new("keyed")
            .with_options(FlowOptions::default().with_session(session))
            .with_result_store(&h.store_url)
            .run(serde_json::json!({}), async move {
                let raw = extract(&source).await?;
                let out = Task::new("keyed")
                    .persist(Persist::Tee)
                    .run(move |cx| {
                        let (raw, sql) = (raw.clone(), sql.clone());
                        async move { cx.sql(&sql, [("raw", &raw)]).await }
                    })
                    .await?;
                out.count().await
            })
            .await;
        assert!(
            failed(&through_sql).to_string().contains(name),
            "{name} in SQL"
        );
        // Opted in, or keyed by the user: allowed.
        let allowed = keyed_run(
            &h,
            &h.session,
            CachePolicy::inputs().allow_volatile(),
            with(expr.clone()),
        )
        .await;
        assert_eq!(*allowed.output.as_ref().unwrap(), 1_000, "{name}");
        let keyed = keyed_run(
            &h,
            &h.session,
            CachePolicy::key_fn(|_| "daily".into()),
            with(expr),
        )
        .await;
        assert_eq!(*keyed.output.as_ref().unwrap(), 1_000, "{name}");
        h.store().clear(None).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_lists_that_print_alike_are_different_keys() {
    let h = Harness::new(Backend::Local, "in-lists").await;
    h.source("in.parquet", 10_000, 1);
    // One value that prints as two: `IN ([Utf8("N"), Utf8("Y")])` either way.
    let one = |raw: Frame| {
        raw.filter(col("store_and_fwd_flag").in_list(vec![lit(r#"N"), Utf8("Y"#)], false))
    };
    let two =
        |raw: Frame| raw.filter(col("store_and_fwd_flag").in_list(vec![lit("N"), lit("Y")], false));
    assert_eq!(
        col("f")
            .in_list(vec![lit(r#"N"), Utf8("Y"#)], false)
            .to_string(),
        col("f")
            .in_list(vec![lit("N"), lit("Y")], false)
            .to_string()
    );
    let first = keyed_run(&h, &h.session, CachePolicy::inputs(), one).await;
    assert_eq!(*first.output.as_ref().unwrap(), 0);
    let second = keyed_run(&h, &h.session, CachePolicy::inputs(), two).await;
    assert_eq!(
        state(&second, "keyed"),
        TaskState::Completed,
        "served the other list's rows"
    );
    assert!(*second.output.as_ref().unwrap() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_setting_or_function_version_is_a_miss_and_an_unversioned_function_is_refused() {
    use datafusion::arrow::datatypes::DataType;
    use datafusion::logical_expr::{ColumnarValue, ScalarUDF, Volatility, create_udf};
    let h = Harness::new(Backend::Local, "settings").await;
    h.source("in.parquet", 5_000, 1);
    // Sessions over the harness's sources.
    let session = |adjust: &dyn Fn(SessionBuilder) -> SessionBuilder| {
        adjust(Session::builder().with_object_store(
            &url::Url::parse("file:///").unwrap(),
            Arc::clone(&h.counting) as _,
        ))
        .build()
        .unwrap()
    };
    let session_with = |time_zone: &str| {
        let mut config = datafusion::prelude::SessionConfig::new();
        config.options_mut().execution.time_zone = Some(time_zone.to_string());
        session(&|b| b.with_config(config.clone()))
    };
    let as_text = |raw: Frame| raw.with_column("pickup", col("tpep_pickup_datetime"));
    let utc = session_with("+00:00");
    assert_eq!(keyed_state(&h, &utc, as_text).await, TaskState::Completed);
    assert_eq!(keyed_state(&h, &utc, as_text).await, TaskState::Cached);
    let other = session_with("+05:00");
    assert_eq!(keyed_state(&h, &other, as_text).await, TaskState::Completed);

    let double = || -> ScalarUDF {
        create_udf(
            "double_it",
            vec![DataType::Float64],
            DataType::Float64,
            Volatility::Immutable,
            Arc::new(|args: &[ColumnarValue]| Ok(args[0].clone())),
        )
    };
    let doubled = |raw: Frame| {
        use datafusion::execution::FunctionRegistry;
        let udf = raw.session().context().udf("double_it")?;
        raw.with_column("doubled", udf.call(vec![col("fare_amount")]))
    };
    let versioned = |version: &str| session(&|b| b.with_udf(double(), version));
    let v1 = versioned("1");
    assert_eq!(keyed_state(&h, &v1, doubled).await, TaskState::Completed);
    assert_eq!(keyed_state(&h, &v1, doubled).await, TaskState::Cached);
    let v2 = versioned("2");
    let bumped = keyed_run(&h, &v2, CachePolicy::inputs(), doubled).await;
    assert_eq!(state(&bumped, "keyed"), TaskState::Completed);
    let manifest = h.store().list().await.unwrap();
    assert!(!manifest.is_empty());
    // Registered through DataFusion, without a version: refused, naming it.
    let unversioned = session(&|b| b);
    unversioned.context().register_udf(double());
    let refused = keyed_run(&h, &unversioned, CachePolicy::inputs(), doubled).await;
    let error = failed(&refused);
    assert!(
        format!("{error:?}").contains("UncacheableFunction"),
        "{error:?}"
    );
    assert!(error.to_string().contains("double_it()"), "{error}");
    assert!(error.to_string().contains("with_udf"), "{error}");
    // A built-in function is covered by the engine's version in the key.
    let builtin =
        |raw: Frame| raw.with_column("a", datafusion::functions::expr_fn::abs(col("fare_amount")));
    assert_eq!(
        keyed_state(&h, &unversioned, builtin).await,
        TaskState::Completed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_collects_old_source_schemas_and_markers_without_a_checkpoint() {
    let h = Harness::new(Backend::Local, "gc-markers").await;
    let source = h.source("in.parquet", 5_000, 1);
    let (run, _) = h.etl(&source, &h.dest("a.parquet"), Clock::default()).await;
    run.output.as_ref().unwrap();
    let cache = h.dir.path().join("cache");
    assert!(cache.join("schemas").read_dir().unwrap().next().is_some());
    // A `_last_hit` left where no checkpoint stands (a hit's marker re-created after an
    // invalidation).
    let stray = cache.join("checkpoints/transform/0123456789abcdef");
    std::fs::create_dir_all(&stray).unwrap();
    std::fs::write(stray.join("_last_hit"), Utc::now().to_rfc3339()).unwrap();
    // Within the grace period, and younger than the schema cache's age: kept.
    let report = h
        .store()
        .gc(Utc::now(), Duration::from_secs(3600))
        .await
        .unwrap();
    assert!(report.stale.is_empty(), "{report:?}");
    let later = Utc::now()
        + chrono::Duration::from_std(sluice::SCHEMA_CACHE_TTL).unwrap()
        + chrono::Duration::hours(1);
    let report = h
        .store()
        .gc(later, Duration::from_secs(3600))
        .await
        .unwrap();
    assert!(
        report.stale.iter().any(|s| s.contains("/schemas/")),
        "{report:?}"
    );
    assert!(
        report
            .stale
            .iter()
            .any(|s| s.ends_with("0123456789abcdef/_last_hit")),
        "{report:?}"
    );
    assert!(!stray.join("_last_hit").exists());
    // The checkpoint itself had not expired: it stays valid.
    assert_eq!(h.valid_checkpoints().await.len(), 1);
}

/// A source on S3 or over HTTP replaced after its frame was built: the read of the new
/// object (its size, ETag or modification time differ) fails naming it, on the column
/// copy's path and on DataFusion's scan, and nothing is published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_source_replaced_after_its_frame_was_built_fails_naming_it() {
    use sluice_testkit::servers::HttpFileServer;
    let dir = tempfile::tempdir().unwrap();
    let generate = |name: &str, rows: u64, seed: u64| {
        let path = dir.path().join(name);
        sluice_testkit::taxi::write_taxi_parquet(
            &path,
            &sluice_testkit::taxi::TaxiGenOptions::new(rows).with_seed(seed),
        )
        .unwrap();
        std::fs::read(&path).unwrap()
    };
    let (first, second) = (
        generate("first.parquet", 5_000, 1),
        generate("second.parquet", 6_000, 2),
    );
    let s3 = crate::remote::S3Target::new("source-replaced").await;
    let key = object_store::path::Path::from(format!("{}/in.parquet", s3.prefix));
    let served = tempfile::tempdir().unwrap();
    let http = HttpFileServer::start(served.path()).await.unwrap();
    for (label, source) in [
        ("s3", s3.url("in.parquet")),
        ("http", http.url("in.parquet")),
    ] {
        for copy in [true, false] {
            // The first version in place.
            s3.store().put(&key, first.clone().into()).await.unwrap();
            std::fs::write(served.path().join("in.parquet"), &first).unwrap();
            let dest = dir
                .path()
                .join(format!("{label}-{copy}.parquet"))
                .display()
                .to_string();
            let session = s3.session();
            let run = Flow::new("remote")
                .with_options(FlowOptions::default().with_session(session))
                .run(serde_json::json!({}), {
                    let (source, dest) = (source.clone(), dest.clone());
                    let (s3, key, second, served) =
                        (&s3, key.clone(), second.clone(), served.path());
                    async move {
                        let raw = extract(&source).await?;
                        // Replaced after the listing that built the frame.
                        s3.store().put(&key, second.into()).await.unwrap();
                        std::fs::write(served.join("in.parquet"), generate_again()).unwrap();
                        let options = ParquetWrite::zstd(1).with_column_copy(copy);
                        raw.write_parquet(&dest, options).await
                    }
                })
                .await;
            let error = failed(&run);
            assert!(
                format!("{error:?}").contains("SourceChanged"),
                "{label} {copy}: {error:?}"
            );
            assert!(
                error.to_string().contains("in.parquet changed"),
                "{label} {copy}: {error}"
            );
            assert!(!Path::new(&dest).exists(), "{label} {copy}: published");
        }
    }

    fn generate_again() -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("other.parquet");
        sluice_testkit::taxi::write_taxi_parquet(
            &path,
            &sluice_testkit::taxi::TaxiGenOptions::new(7_000).with_seed(3),
        )
        .unwrap();
        std::fs::read(&path).unwrap()
    }
}
