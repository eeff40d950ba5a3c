//! The Frame vocabulary and its sinks, on small in-memory data.

use datafusion::arrow::array::{Array, Float64Array, Int64Array, StringArray};
use datafusion::arrow::record_batch::RecordBatch;
use sluice::prelude::*;
use sluice::{JoinType, WriteLayout};

use crate::common::dir_entries;

async fn trips(session: &Session) -> Frame {
    session
        .sql(
            "SELECT * FROM (VALUES \
               (1, 'a', 2.0, 10.0), (2, 'b', 0.0, 0.0), (3, 'a', NULL, 5.0), \
               (4, 'c', 1.0, 0.0), (5, 'b', -1.0, 0.0), (5, 'b', -1.0, 0.0)) \
             AS t(id, zone, tip_amount, total_amount)",
            [],
        )
        .await
        .unwrap()
}

fn f64s(batches: &[RecordBatch], column: &str) -> Vec<Option<f64>> {
    batches
        .iter()
        .flat_map(|b| {
            let a = b.column_by_name(column).unwrap();
            let a = a.as_any().downcast_ref::<Float64Array>().unwrap().clone();
            (0..a.len()).map(move |i| a.is_valid(i).then(|| a.value(i)))
        })
        .collect()
}

fn i64s(batches: &[RecordBatch], column: &str) -> Vec<i64> {
    batches
        .iter()
        .flat_map(|b| {
            let a = b.column_by_name(column).unwrap();
            a.as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .values()
                .to_vec()
        })
        .collect()
}

#[tokio::test]
async fn division_follows_ieee_semantics_like_pandas() {
    let session = Session::new();
    let out = trips(&session)
        .await
        .with_column("tip_fraction", col("tip_amount") / col("total_amount"))
        .unwrap()
        .sort_by(&["id"])
        .unwrap()
        .collect()
        .await
        .unwrap();
    let got = f64s(&out, "tip_fraction");
    assert_eq!(got[0], Some(0.2));
    assert!(got[1].unwrap().is_nan(), "0/0 is NaN: {got:?}");
    assert_eq!(got[2], None, "null in, null out");
    assert_eq!(got[3], Some(f64::INFINITY));
    assert_eq!(got[4], Some(f64::NEG_INFINITY));
}

#[tokio::test]
async fn the_frame_vocabulary_composes_lazily() {
    let session = Session::new();
    let t = trips(&session).await;
    assert_eq!(t.columns(), ["id", "zone", "tip_amount", "total_amount"]);

    let selected = t
        .select([col("id"), (col("total_amount") * lit(2.0)).alias("double")])
        .unwrap();
    assert_eq!(selected.columns(), ["id", "double"]);
    assert_eq!(t.select_columns(&["zone"]).unwrap().columns(), ["zone"]);
    assert_eq!(
        t.drop_columns(&["zone"]).unwrap().columns(),
        ["id", "tip_amount", "total_amount"]
    );
    assert_eq!(
        t.filter(col("zone").eq(lit("b")))
            .unwrap()
            .count()
            .await
            .unwrap(),
        3
    );
    assert_eq!(t.distinct().unwrap().count().await.unwrap(), 5);
    assert_eq!(t.limit(2).unwrap().count().await.unwrap(), 2);
    assert_eq!(t.slice(4, 10).unwrap().count().await.unwrap(), 2);
    assert_eq!(t.union(&t).unwrap().count().await.unwrap(), 12);
    assert_eq!(
        t.union_by_name(&t.select_columns(&["id"]).unwrap())
            .unwrap()
            .count()
            .await
            .unwrap(),
        12
    );

    let renamed = t.rename("zone", "pu_zone").unwrap();
    assert_eq!(
        renamed.columns(),
        ["id", "pu_zone", "tip_amount", "total_amount"]
    );
    let err = t.rename("nope", "x").unwrap_err();
    assert!(matches!(err, Error::MissingColumn { .. }), "{err}");

    let sorted = t
        .sort([col("id").sort(false, false)])
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(i64s(&sorted, "id"), [5, 5, 4, 3, 2, 1]);

    let per_zone = t
        .aggregate([col("zone")], [count(col("id")).alias("n")])
        .unwrap()
        .sort_by(&["zone"])
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(i64s(&per_zone, "n"), [2, 3, 1]);

    let names = session
        .sql(
            "SELECT * FROM (VALUES ('a', 'Airport'), ('b', 'Bronx')) AS z(code, name)",
            [],
        )
        .await
        .unwrap();
    let joined = t
        .join(&names, JoinType::Inner, &["zone"], &["code"])
        .unwrap()
        .sort_by(&["id"])
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(i64s(&joined, "id"), [1, 2, 3, 5, 5]);
    let joined_names: Vec<_> = joined
        .iter()
        .flat_map(|b| {
            let a = b
                .column_by_name("name")
                .unwrap()
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap()
                .clone();
            (0..a.len()).map(move |i| a.value(i).to_string())
        })
        .collect();
    assert_eq!(
        joined_names,
        ["Airport", "Bronx", "Airport", "Bronx", "Bronx"]
    );
}

#[tokio::test]
async fn info_reports_rows_types_and_non_null_counts() {
    let session = Session::new();
    let info = trips(&session).await.info().await.unwrap();
    assert_eq!(info.rows, 6);
    let tip = &info.columns[2];
    assert_eq!(tip.name, "tip_amount");
    assert_eq!(tip.data_type, "Float64");
    assert_eq!(tip.non_null, 5);
    let text = info.to_string();
    assert!(text.starts_with("6 rows, 4 columns"), "{text}");
    assert!(text.contains("tip_amount"), "{text}");
}

#[tokio::test]
async fn parquet_and_csv_sinks_write_files_and_directories() {
    let dir = tempfile::tempdir().unwrap();
    let session = Session::builder()
        .with_target_partitions(2)
        .build()
        .unwrap();
    let t = trips(&session).await.union(&trips(&session).await).unwrap();

    let file = dir.path().join("one.parquet");
    let summary = t
        .write_parquet(
            file.to_str().unwrap(),
            ParquetWrite::snappy().with_row_group_rows(4),
        )
        .await
        .unwrap();
    assert_eq!(summary.rows, 12);
    assert_eq!(summary.files.len(), 1);
    assert_eq!(summary.bytes, std::fs::metadata(&file).unwrap().len());

    let parts = format!("{}/parts/", dir.path().display());
    let summary = t
        .write_parquet(
            &parts,
            ParquetWrite::zstd(5).with_layout(WriteLayout::Directory),
        )
        .await
        .unwrap();
    assert_eq!(summary.rows, 12);
    assert!(!summary.files.is_empty());
    assert_eq!(
        session
            .read_parquet(&parts)
            .await
            .unwrap()
            .count()
            .await
            .unwrap(),
        12
    );

    let csv = dir.path().join("out.csv");
    let summary = t
        .write_csv(csv.to_str().unwrap(), CsvWrite::default())
        .await
        .unwrap();
    assert_eq!(summary.rows, 12);
    let text = std::fs::read_to_string(&csv).unwrap();
    assert!(
        text.starts_with("id,zone,tip_amount,total_amount\n"),
        "{text}"
    );
    assert_eq!(text.lines().count(), 13);
    let back = session
        .read_csv(csv.to_str().unwrap(), CsvReadOptions::new())
        .await
        .unwrap();
    assert_eq!(back.count().await.unwrap(), 12);

    // Nothing but the outputs: no staging names left behind.
    assert_eq!(dir_entries(dir.path()), ["one.parquet", "out.csv", "parts"]);
}

#[tokio::test]
async fn an_existing_output_is_replaced_whole() {
    let dir = tempfile::tempdir().unwrap();
    let session = Session::new();
    let t = trips(&session).await;
    let dest = dir.path().join("out.parquet");
    std::fs::write(&dest, b"old content").unwrap();
    t.write_parquet(dest.to_str().unwrap(), ParquetWrite::default())
        .await
        .unwrap();
    assert_eq!(
        session
            .read_parquet(dest.to_str().unwrap())
            .await
            .unwrap()
            .count()
            .await
            .unwrap(),
        6
    );
    assert_eq!(dir_entries(dir.path()), ["out.parquet"]);
}

#[tokio::test]
async fn memory_urls_work_for_reading_and_writing() {
    let session = Session::new();
    let t = trips(&session).await;
    t.write_parquet("memory://scratch/trips.parquet", ParquetWrite::default())
        .await
        .unwrap();
    let back = session
        .read_parquet("memory://scratch/trips.parquet")
        .await
        .unwrap();
    assert_eq!(back.count().await.unwrap(), 6);
}

#[tokio::test]
async fn csv_and_json_sources_read_files_directories_and_globs() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.json"),
        "{\"n\": 1, \"s\": \"x\"}\n{\"n\": 2, \"s\": \"y\"}\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("b.json"), "{\"n\": 3, \"s\": \"z\"}\n").unwrap();
    std::fs::write(dir.path().join("c.csv"), "n,s\n4,w\n").unwrap();
    let session = Session::new();
    let one = session
        .read_json(dir.path().join("a.json").to_str().unwrap())
        .await
        .unwrap();
    assert_eq!(one.columns(), ["n", "s"]);
    assert_eq!(one.count().await.unwrap(), 2);
    let all = session
        .read_json(&format!("{}/", dir.path().display()))
        .await
        .unwrap();
    assert_eq!(all.count().await.unwrap(), 3);
    let glob = session
        .read_json(&format!("{}/b*.json", dir.path().display()))
        .await
        .unwrap();
    assert_eq!(glob.count().await.unwrap(), 1);
    let csv = session
        .read_csv(
            &format!("{}/*.csv", dir.path().display()),
            CsvReadOptions::new(),
        )
        .await
        .unwrap();
    assert_eq!(csv.count().await.unwrap(), 1);
    let missing = session
        .read_csv(
            &format!("{}/*.tsv", dir.path().display()),
            CsvReadOptions::new(),
        )
        .await;
    assert!(
        matches!(missing, Err(Error::SourceNotFound { .. })),
        "{missing:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_write_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let source = crate::common::taxi_file(dir.path(), "in.parquet", 500_000, 65_536);
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let dest = out.join("result.parquet");
    let session = Session::new();
    let frame = session
        .read_parquet(source.to_str().unwrap())
        .await
        .unwrap();
    // zstd level 19 on 500k rows takes seconds: the write is surely cut short.
    let write = frame.write_parquet(dest.to_str().unwrap(), ParquetWrite::zstd(19));
    let outcome = tokio::time::timeout(std::time::Duration::from_millis(300), write).await;
    assert!(
        outcome.is_err(),
        "the write finished before it could be cancelled"
    );
    for _ in 0..100 {
        if dir_entries(&out).is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(dir_entries(&out), Vec::<String>::new());
}

/// DataFusion 55 caches listings per session, keyed without the store: Sluice turns
/// that cache off, so two buckets with the same prefix, and files added later, read right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_are_not_cached_across_buckets_or_over_time() {
    let session = Session::new();
    let rows = |n: i64| {
        let batch = RecordBatch::try_from_iter([(
            "n",
            std::sync::Arc::new(Int64Array::from_iter_values(0..n)) as _,
        )])
        .unwrap();
        session.from_batches(vec![batch]).unwrap()
    };
    let options = ParquetWrite::snappy();
    rows(3)
        .write_parquet("memory://one/data/a.parquet", options.clone())
        .await
        .unwrap();
    rows(1)
        .write_parquet("memory://two/data/a.parquet", options.clone())
        .await
        .unwrap();
    let one = session.read_parquet("memory://one/data/").await.unwrap();
    assert_eq!(one.count().await.unwrap(), 3);
    let two = session.read_parquet("memory://two/data/").await.unwrap();
    assert_eq!(
        two.count().await.unwrap(),
        1,
        "bucket two read as bucket one"
    );
    rows(5)
        .write_parquet("memory://one/data/b.parquet", options)
        .await
        .unwrap();
    let again = session.read_parquet("memory://one/data/").await.unwrap();
    assert_eq!(
        again.count().await.unwrap(),
        8,
        "a file written later is seen"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_overlapping_the_source_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("trips");
    std::fs::create_dir(&data).unwrap();
    crate::common::taxi_file(&data, "a.parquet", 1_000, 1_000);
    let session = Session::new();
    let whole = session
        .read_parquet(&format!("{}/", data.display()))
        .await
        .unwrap();
    let inside = data.join("out.parquet").display().to_string();
    let error = whole
        .write_parquet(&inside, ParquetWrite::snappy())
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::DestinationOverlapsSource { .. }),
        "{error}"
    );
    assert!(
        error.to_string().contains("write somewhere else"),
        "{error}"
    );
    let file = data.join("a.parquet").display().to_string();
    let one = session.read_parquet(&file).await.unwrap();
    let error = one
        .write_parquet(&file, ParquetWrite::snappy())
        .await
        .unwrap_err();
    assert!(matches!(error, Error::DestinationOverlapsSource { .. }));
    // Nothing was written, not even staged.
    assert_eq!(dir_entries(&data), ["a.parquet"]);
    // Beside the source is fine.
    let beside = dir.path().join("out.parquet").display().to_string();
    assert_eq!(
        whole
            .write_parquet(&beside, ParquetWrite::snappy())
            .await
            .unwrap()
            .rows,
        1_000
    );
}

/// A union of many inputs runs a few partitions at a time (`ConcatPartitionsExec`),
/// and keeps every row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concatenated_frames_keep_every_row_and_run_a_few_partitions_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let session = Session::new();
    let mut frames = Vec::new();
    for i in 0..4 {
        let file = crate::common::taxi_file(dir.path(), &format!("p{i}.parquet"), 20_000, 5_000);
        frames.push(
            session
                .read_parquet(&file.display().to_string())
                .await
                .unwrap(),
        );
    }
    let all = Frame::concat(frames.clone()).unwrap();
    let plan = all.explain().await.unwrap();
    assert!(plan.contains("ConcatPartitionsExec"), "{plan}");
    assert_eq!(all.count().await.unwrap(), 80_000);
    // The same rows as the files one by one, ids and all.
    let ids = |frame: &Frame| {
        let frame = frame.clone();
        async move {
            let mut out: Vec<i64> = Vec::new();
            for batch in frame
                .select([col("PULocationID")])
                .unwrap()
                .collect()
                .await
                .unwrap()
            {
                let column = batch
                    .column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .map(|a| a.values().to_vec())
                    .unwrap_or_else(|| {
                        let cast = sluice::datafusion::arrow::compute::cast(
                            batch.column(0),
                            &sluice::datafusion::arrow::datatypes::DataType::Int64,
                        )
                        .unwrap();
                        cast.as_any()
                            .downcast_ref::<Int64Array>()
                            .unwrap()
                            .values()
                            .to_vec()
                    });
                out.extend(column);
            }
            out.sort_unstable();
            out
        }
    };
    let mut expected = Vec::new();
    for frame in &frames {
        expected.extend(ids(frame).await);
    }
    expected.sort_unstable();
    assert_eq!(ids(&all).await, expected);
    // Sorting above it still sorts.
    let sorted = all.sort_by(&["PULocationID"]).unwrap().limit(5).unwrap();
    assert_eq!(ids(&sorted).await, expected[..5].to_vec());
}
