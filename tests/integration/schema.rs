//! Schema evolution across files: several files read as one source, whose schemas
//! differ compatibly (widened types, timestamp units, string types, added columns,
//! names in another case) or not (a typed error naming both files).
//!
//! The real NYC taxi samples in `../shared/data/nyc_taxi/parquet` are read in place
//! (or through symlinks); every other file is written here, one rule per test.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BinaryArray, Float32Array, Float64Array, Int32Array, Int64Array, LargeBinaryArray,
    LargeStringArray, RecordBatch, StringArray, TimestampMicrosecondArray,
    TimestampNanosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::assert_batches_sorted_eq;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::prelude::SessionConfig;
use object_store::local::LocalFileSystem;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use sluice::prelude::*;
use sluice::{CachePolicy, FlowOptions, FlowRun};
use sluice_testkit::counting_store::CountingStore;

use crate::common::shared_data;
use crate::remote::S3Target;

/// The six real samples, by file name.
const SAMPLES: [&str; 6] = [
    "nyctaxi_2016-01-02_derived_zip_10k.parquet",
    "yellow_2022-01_100k.parquet",
    "yellow_2023-q1_sample_3k_lowercase.parquet",
    "yellow_2025-01_10k_ts_ns.parquet",
    "yellow_2025-01_5rows.parquet",
    "yellow_2025-02_sample_5k.parquet",
];

fn samples_dir() -> PathBuf {
    shared_data("nyc_taxi/parquet")
}

fn case_insensitive() -> ParquetRead {
    ParquetRead::default().with_case_insensitive_names(true)
}

/// Writes one batch of `columns` (name, array, nullable) as `dir/name`.
fn write_file(dir: &Path, name: &str, columns: Vec<(&str, ArrayRef, bool)>) -> PathBuf {
    let fields: Vec<Field> = columns
        .iter()
        .map(|(n, a, nullable)| Field::new(*n, a.data_type().clone(), *nullable))
        .collect();
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns.into_iter().map(|(_, a, _)| a).collect(),
    )
    .unwrap();
    let path = dir.join(name);
    let mut writer =
        ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), batch.schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    path
}

fn glob(dir: &Path, pattern: &str) -> String {
    format!("{}/{pattern}", dir.display())
}

/// The file URL Sluice names a local file by.
fn file_url(path: &Path) -> String {
    url::Url::from_file_path(path).unwrap().to_string()
}

/// `(name, type, nullable)` of each column.
fn shape(frame: &Frame) -> Vec<(String, DataType, bool)> {
    frame
        .schema()
        .fields()
        .iter()
        .map(|f| (f.name().clone(), f.data_type().clone(), f.is_nullable()))
        .collect()
}

fn column_type(frame: &Frame, name: &str) -> DataType {
    frame
        .schema()
        .field_with_name(name)
        .unwrap_or_else(|_| panic!("no column {name:?} in {:?}", frame.columns()))
        .data_type()
        .clone()
}

async fn count_of(frame: &Frame, expr: Expr) -> i64 {
    let batches = frame
        .aggregate(Vec::<Expr>::new(), [expr])
        .unwrap()
        .collect()
        .await
        .unwrap();
    batches[0]
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap()
        .value(0)
}

/// A temporary directory of symlinks to the real samples named, beside which a test
/// may write files of its own.
fn linked_samples(names: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for name in names {
        std::os::unix::fs::symlink(samples_dir().join(name), dir.path().join(name)).unwrap();
    }
    dir
}

/// The error a read failed with, or a panic naming what it read instead.
async fn read_error(session: &Session, location: &str, options: ParquetRead) -> sluice::Error {
    match session.read_parquet_with(location, options).await {
        Ok(frame) => panic!("read {location} as {:?}", shape(&frame)),
        Err(e) => e,
    }
}

// ---------------------------------------------------------------------------
// The real samples

#[tokio::test]
async fn all_six_real_samples_read_as_one_source_with_case_insensitive_names() {
    let session = Session::new();
    let frame = session
        .read_parquet_with(&glob(&samples_dir(), "*.parquet"), case_insensitive())
        .await
        .unwrap();

    // Rows: the files' own counts, summed.
    let mut expected_rows = 0;
    for name in SAMPLES {
        let one = session
            .read_parquet(samples_dir().join(name).to_str().unwrap())
            .await
            .unwrap();
        expected_rows += one.count().await.unwrap();
    }
    assert_eq!(expected_rows, 128_029);
    assert_eq!(frame.count().await.unwrap(), expected_rows);

    // One column per name whatever its case, spelled as in the first file by URL
    // (the 2016 file, then the 2022 one: `VendorID`, `airport_fee`).
    let columns = frame.columns();
    for name in ["VendorID", "RatecodeID", "PULocationID", "airport_fee"] {
        assert!(columns.contains(&name.to_string()), "{columns:?}");
    }
    for name in ["vendorid", "ratecodeid", "Airport_fee"] {
        assert!(!columns.contains(&name.to_string()), "{columns:?}");
    }
    assert_eq!(columns.len(), 22, "{columns:?}");
    assert_eq!(
        &columns[..6],
        [
            "tpep_pickup_datetime",
            "tpep_dropoff_datetime",
            "trip_distance",
            "fare_amount",
            "pickup_zip",
            "dropoff_zip"
        ]
    );

    // Unified types: int64 IDs (int32 in 2025), float64 counts (int64 in the 5-row
    // file), one timestamp unit (ns in the 10k file), one string type.
    let micros = DataType::Timestamp(TimeUnit::Microsecond, None);
    for (name, expected) in [
        ("VendorID", DataType::Int64),
        ("PULocationID", DataType::Int64),
        ("DOLocationID", DataType::Int64),
        ("passenger_count", DataType::Float64),
        ("RatecodeID", DataType::Float64),
        ("tpep_pickup_datetime", micros.clone()),
        ("tpep_dropoff_datetime", micros),
        ("store_and_fwd_flag", DataType::Utf8View),
        ("airport_fee", DataType::Float64),
        ("pickup_zip", DataType::Int32),
    ] {
        assert_eq!(column_type(&frame, name), expected, "{name}");
    }
    // Missing from some files: nullable, and null there.
    let schema = frame.schema();
    for name in [
        "airport_fee",
        "cbd_congestion_fee",
        "pickup_zip",
        "VendorID",
    ] {
        assert!(
            schema.field_with_name(name).unwrap().is_nullable(),
            "{name}"
        );
    }
    // airport_fee: every TLC file has it (in either spelling) but the 2016 one; nulls
    // in 97 rows of the 2023 sample and 1,125 of the 2025-02 one.
    assert_eq!(
        count_of(&frame, count(col("airport_fee"))).await,
        100_000 + 3_024 + 10_000 + 5 + 5_000 - 97 - 1_125
    );
    assert_eq!(count_of(&frame, count(col("VendorID"))).await, 118_029);
    assert_eq!(
        count_of(&frame, count(col("cbd_congestion_fee"))).await,
        15_005
    );
    assert_eq!(count_of(&frame, count(col("pickup_zip"))).await, 10_000);
    // The lower-case 2023 file's rows are there under the unified names.
    let q1_2023 = frame
        .filter(
            col("tpep_pickup_datetime")
                .gt_eq(lit("2023-01-01T00:00:00"))
                .and(col("tpep_pickup_datetime").lt(lit("2023-04-01T00:00:00"))),
        )
        .unwrap();
    assert_eq!(count_of(&q1_2023, count(col("VendorID"))).await, 3_024);
    assert_eq!(count_of(&q1_2023, count(col("PULocationID"))).await, 3_024);
}

/// DataFusion takes a column a file spells differently for a missing one when it
/// collects the file's statistics (all nulls), and then answers `count(column)` and
/// prunes whole files by those statistics: the rows of the lower-case file vanish
/// unless its statistics are read under its own spelling.
#[tokio::test]
async fn statistics_of_a_file_spelled_in_another_case_count_its_rows() {
    let session = Session::new();
    let frame = session
        .read_parquet_with(
            &glob(&samples_dir(), "yellow_202[23]-*.parquet"),
            case_insensitive(),
        )
        .await
        .unwrap();
    assert_eq!(column_type(&frame, "VendorID"), DataType::Int64);
    // Answered from statistics alone (the plan has no scan).
    let counted = frame
        .aggregate(Vec::<Expr>::new(), [count(col("VendorID"))])
        .unwrap();
    assert!(
        !counted.explain().await.unwrap().contains("DataSourceExec"),
        "expected count(VendorID) to be answered from statistics"
    );
    assert_eq!(count_of(&frame, count(col("VendorID"))).await, 103_024);
    // File pruning by statistics keeps the lower-case file.
    let positive = frame.filter(col("VendorID").gt(lit(0))).unwrap();
    assert_eq!(positive.count().await.unwrap(), 103_024);
}

#[tokio::test]
async fn the_five_row_file_and_the_head_of_the_10k_file_agree_after_unification() {
    // The same five trips, once with ns timestamps, int32 IDs, double counts and
    // string flags, once with µs, int32, int64 and large strings.
    let session = Session::builder()
        .with_target_partitions(1)
        .build()
        .unwrap();
    let both = session
        .read_parquet(&glob(&samples_dir(), "yellow_2025-01_*.parquet"))
        .await
        .unwrap();
    assert_eq!(both.count().await.unwrap(), 10_005);
    assert_eq!(
        column_type(&both, "tpep_pickup_datetime"),
        DataType::Timestamp(TimeUnit::Microsecond, None)
    );
    assert_eq!(column_type(&both, "passenger_count"), DataType::Float64);
    assert_eq!(column_type(&both, "RatecodeID"), DataType::Float64);
    assert_eq!(column_type(&both, "VendorID"), DataType::Int32);

    // After the casts, each of the five rows equals its copy in the other file in
    // every column: grouped by all columns, exactly those five rows count twice.
    let all: Vec<Expr> = both.columns().iter().map(col).collect();
    let twice = both
        .aggregate(all, [count(lit(1)).alias("n")])
        .unwrap()
        .filter(col("n").eq(lit(2i64)))
        .unwrap()
        .select([
            col("VendorID"),
            col("tpep_pickup_datetime"),
            col("passenger_count"),
            col("RatecodeID"),
            col("store_and_fwd_flag"),
            col("total_amount"),
            col("Airport_fee"),
            col("n"),
        ])
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_batches_sorted_eq!(
        [
            "+----------+----------------------+-----------------+------------+--------------------+--------------+-------------+---+",
            "| VendorID | tpep_pickup_datetime | passenger_count | RatecodeID | store_and_fwd_flag | total_amount | Airport_fee | n |",
            "+----------+----------------------+-----------------+------------+--------------------+--------------+-------------+---+",
            "| 1        | 2025-01-01T00:18:38  | 1.0             | 1.0        | N                  | 18.0         | 0.0         | 2 |",
            "| 1        | 2025-01-01T00:32:40  | 1.0             | 1.0        | N                  | 12.12        | 0.0         | 2 |",
            "| 1        | 2025-01-01T00:44:04  | 1.0             | 1.0        | N                  | 12.1         | 0.0         | 2 |",
            "| 2        | 2025-01-01T00:14:27  | 3.0             | 1.0        | N                  | 9.7          | 0.0         | 2 |",
            "| 2        | 2025-01-01T00:21:34  | 3.0             | 1.0        | N                  | 8.3          | 0.0         | 2 |",
            "+----------+----------------------+-----------------+------------+--------------------+--------------+-------------+---+",
        ],
        &twice
    );

    // And they are the 10k file's first five rows.
    let head = session
        .read_parquet(
            samples_dir()
                .join("yellow_2025-01_10k_ts_ns.parquet")
                .to_str()
                .unwrap(),
        )
        .await
        .unwrap()
        .limit(5)
        .unwrap()
        .select([col("tpep_pickup_datetime")])
        .unwrap()
        .collect()
        .await
        .unwrap();
    let five = session
        .read_parquet(
            samples_dir()
                .join("yellow_2025-01_5rows.parquet")
                .to_str()
                .unwrap(),
        )
        .await
        .unwrap()
        .select([col("tpep_pickup_datetime")])
        .unwrap()
        .collect()
        .await
        .unwrap();
    let text = |batches: &[RecordBatch]| {
        datafusion::arrow::util::pretty::pretty_format_batches(batches)
            .unwrap()
            .to_string()
    };
    assert_eq!(text(&head), text(&five));
}

#[tokio::test]
async fn an_incompatible_file_among_the_real_samples_fails_naming_both_files_and_the_column() {
    let dir = linked_samples(&SAMPLES);
    // A March file whose sampler wrote the fare as text.
    let bad = write_file(
        dir.path(),
        "yellow_2025-03_fare_as_text.parquet",
        vec![
            (
                "VendorID",
                Arc::new(Int32Array::from(vec![2])) as ArrayRef,
                true,
            ),
            (
                "fare_amount",
                Arc::new(StringArray::from(vec!["12.50"])) as ArrayRef,
                true,
            ),
        ],
    );
    let session = Session::new();
    let error = read_error(&session, &glob(dir.path(), "*.parquet"), case_insensitive()).await;
    let message = error.to_string();
    match error {
        sluice::Error::SchemaMismatch {
            column,
            first_url,
            first_type,
            second_url,
            second_type,
        } => {
            assert_eq!(column, "fare_amount");
            // The first file (by URL) with the column.
            assert_eq!(
                first_url,
                file_url(
                    &dir.path()
                        .join("nyctaxi_2016-01-02_derived_zip_10k.parquet")
                )
            );
            assert_eq!(first_type, DataType::Float64);
            assert_eq!(second_url, file_url(&bad));
            assert_eq!(second_type, DataType::Utf8View);
        }
        other => panic!("expected a schema mismatch, got {other:?}"),
    }
    assert!(message.contains("fare_amount"), "{message}");
    assert!(
        message.contains("nyctaxi_2016-01-02_derived_zip_10k.parquet"),
        "{message}"
    );
    assert!(
        message.contains("yellow_2025-03_fare_as_text.parquet"),
        "{message}"
    );
    assert!(message.contains("cast the column"), "{message}");

    // Without the bad file, the same directory reads (in a new session: DataFusion
    // caches a directory's listing for the session's life).
    std::fs::remove_file(&bad).unwrap();
    let frame = Session::new()
        .read_parquet_with(&glob(dir.path(), "*.parquet"), case_insensitive())
        .await
        .unwrap();
    assert_eq!(frame.count().await.unwrap(), 128_029);
}

// ---------------------------------------------------------------------------
// One rule per test, on files written here

/// Writes `a.parquet` and `b.parquet` and reads them as one source. The frame is lazy:
/// the directory must outlive its reads.
async fn read_pair(
    a: Vec<(&str, ArrayRef, bool)>,
    b: Vec<(&str, ArrayRef, bool)>,
) -> (tempfile::TempDir, Frame) {
    let dir = tempfile::tempdir().unwrap();
    write_file(dir.path(), "a.parquet", a);
    write_file(dir.path(), "b.parquet", b);
    let frame = Session::new()
        .read_parquet(&glob(dir.path(), "*.parquet"))
        .await
        .unwrap();
    (dir, frame)
}

fn array(a: impl datafusion::arrow::array::Array + 'static) -> ArrayRef {
    Arc::new(a)
}

#[tokio::test]
async fn int32_and_int64_unify_to_int64() {
    let (_dir, frame) = read_pair(
        vec![("id", array(Int32Array::from(vec![1, i32::MAX])), false)],
        vec![("id", array(Int64Array::from(vec![i64::MAX])), false)],
    )
    .await;
    assert_eq!(shape(&frame), [("id".into(), DataType::Int64, false)]);
    assert_batches_sorted_eq!(
        [
            "+---------------------+",
            "| id                  |",
            "+---------------------+",
            "| 1                   |",
            "| 2147483647          |",
            "| 9223372036854775807 |",
            "+---------------------+",
        ],
        &frame.collect().await.unwrap()
    );
}

#[tokio::test]
async fn float32_and_float64_unify_to_float64_and_an_integer_with_a_float_too() {
    let (_dir, frame) = read_pair(
        vec![
            ("fare", array(Float32Array::from(vec![1.5])), true),
            ("count", array(Int32Array::from(vec![2])), true),
        ],
        vec![
            ("fare", array(Float64Array::from(vec![0.1])), true),
            ("count", array(Float64Array::from(vec![2.5])), true),
        ],
    )
    .await;
    assert_eq!(
        shape(&frame),
        [
            ("fare".into(), DataType::Float64, true),
            ("count".into(), DataType::Float64, true),
        ]
    );
    assert_batches_sorted_eq!(
        [
            "+------+-------+",
            "| fare | count |",
            "+------+-------+",
            "| 0.1  | 2.5   |",
            "| 1.5  | 2.0   |",
            "+------+-------+",
        ],
        &frame.collect().await.unwrap()
    );
}

#[tokio::test]
async fn microsecond_and_nanosecond_timestamps_unify_to_microseconds() {
    // 2025-01-01T00:18:38.123456789 in ns; 2008-12-31T23:03:01 in µs.
    let (_dir, frame) = read_pair(
        vec![(
            "pickup",
            array(TimestampNanosecondArray::from(vec![
                1_735_690_718_123_456_789,
            ])),
            true,
        )],
        vec![(
            "pickup",
            array(TimestampMicrosecondArray::from(vec![1_230_764_581_000_000])),
            true,
        )],
    )
    .await;
    assert_eq!(
        shape(&frame),
        [(
            "pickup".into(),
            DataType::Timestamp(TimeUnit::Microsecond, None),
            true
        )]
    );
    // Digits below the microsecond are truncated.
    assert_batches_sorted_eq!(
        [
            "+----------------------------+",
            "| pickup                     |",
            "+----------------------------+",
            "| 2008-12-31T23:03:01        |",
            "| 2025-01-01T00:18:38.123456 |",
            "+----------------------------+",
        ],
        &frame.collect().await.unwrap()
    );
}

#[tokio::test]
async fn string_and_large_string_unify_to_one_string_type() {
    let a = || {
        vec![
            ("flag", array(StringArray::from(vec!["N"])), true),
            ("raw", array(BinaryArray::from(vec![b"ab".as_ref()])), true),
        ]
    };
    let b = || {
        vec![
            ("flag", array(LargeStringArray::from(vec!["Y"])), true),
            (
                "raw",
                array(LargeBinaryArray::from(vec![b"cd".as_ref()])),
                true,
            ),
        ]
    };
    let expected = [
        "+------+------+",
        "| flag | raw  |",
        "+------+------+",
        "| N    | 6162 |",
        "| Y    | 6364 |",
        "+------+------+",
    ];
    // DataFusion reads Parquet strings as views by default: both files give views.
    let (_dir, frame) = read_pair(a(), b()).await;
    assert_eq!(column_type(&frame, "flag"), DataType::Utf8View);
    assert_eq!(column_type(&frame, "raw"), DataType::BinaryView);
    assert_batches_sorted_eq!(expected, &frame.collect().await.unwrap());

    // Without views, string + large string give large string (and binary likewise).
    let dir = tempfile::tempdir().unwrap();
    write_file(dir.path(), "a.parquet", a());
    write_file(dir.path(), "b.parquet", b());
    let config = SessionConfig::new().set_bool(
        "datafusion.execution.parquet.schema_force_view_types",
        false,
    );
    let session = Session::builder().with_config(config).build().unwrap();
    let frame = session
        .read_parquet(&glob(dir.path(), "*.parquet"))
        .await
        .unwrap();
    assert_eq!(column_type(&frame, "flag"), DataType::LargeUtf8);
    assert_eq!(column_type(&frame, "raw"), DataType::LargeBinary);
    assert_batches_sorted_eq!(expected, &frame.collect().await.unwrap());
}

#[tokio::test]
async fn a_column_missing_from_a_file_reads_as_nulls() {
    let (_dir, frame) = read_pair(
        vec![("id", array(Int64Array::from(vec![1])), false)],
        vec![
            ("id", array(Int64Array::from(vec![2])), false),
            (
                "cbd_congestion_fee",
                array(Float64Array::from(vec![0.75])),
                false,
            ),
        ],
    )
    .await;
    // Non-nullable in the one file that has it, nullable in the unified schema.
    assert_eq!(
        shape(&frame),
        [
            ("id".into(), DataType::Int64, false),
            ("cbd_congestion_fee".into(), DataType::Float64, true),
        ]
    );
    assert_batches_sorted_eq!(
        [
            "+----+--------------------+",
            "| id | cbd_congestion_fee |",
            "+----+--------------------+",
            "| 1  |                    |",
            "| 2  | 0.75               |",
            "+----+--------------------+",
        ],
        &frame.collect().await.unwrap()
    );
}

/// Two files spelling one column `Airport_fee` and `airport_fee`, and `VendorID` as
/// `VendorID` (int32) and `vendorid` (int64).
fn case_pair(dir: &Path) {
    write_file(
        dir,
        "2022.parquet",
        vec![
            ("VendorID", array(Int32Array::from(vec![1])), true),
            ("airport_fee", array(Float64Array::from(vec![0.0])), true),
        ],
    );
    write_file(
        dir,
        "2025.parquet",
        vec![
            ("vendorid", array(Int64Array::from(vec![2])), true),
            ("Airport_fee", array(Float64Array::from(vec![1.75])), true),
        ],
    );
}

#[tokio::test]
async fn names_differing_only_in_case_are_two_columns_by_default() {
    let dir = tempfile::tempdir().unwrap();
    case_pair(dir.path());
    let frame = Session::new()
        .read_parquet(&glob(dir.path(), "*.parquet"))
        .await
        .unwrap();
    assert_eq!(
        frame.columns(),
        ["VendorID", "airport_fee", "vendorid", "Airport_fee"]
    );
    assert_batches_sorted_eq!(
        [
            "+----------+-------------+----------+-------------+",
            "| VendorID | airport_fee | vendorid | Airport_fee |",
            "+----------+-------------+----------+-------------+",
            "|          |             | 2        | 1.75        |",
            "| 1        | 0.0         |          |             |",
            "+----------+-------------+----------+-------------+",
        ],
        &frame.collect().await.unwrap()
    );
}

#[tokio::test]
async fn names_differing_only_in_case_are_one_column_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    case_pair(dir.path());
    let frame = Session::new()
        .read_parquet_with(&glob(dir.path(), "*.parquet"), case_insensitive())
        .await
        .unwrap();
    // Spelled as in the first file by URL (2022.parquet); types unified as ever.
    assert_eq!(
        shape(&frame),
        [
            ("VendorID".into(), DataType::Int64, true),
            ("airport_fee".into(), DataType::Float64, true),
        ]
    );
    assert_batches_sorted_eq!(
        [
            "+----------+-------------+",
            "| VendorID | airport_fee |",
            "+----------+-------------+",
            "| 1        | 0.0         |",
            "| 2        | 1.75        |",
            "+----------+-------------+",
        ],
        &frame.collect().await.unwrap()
    );
    // Predicates reach each file under its own spelling.
    let late = frame.filter(col("airport_fee").gt(lit(1.0))).unwrap();
    assert_batches_sorted_eq!(
        [
            "+----------+-------------+",
            "| VendorID | airport_fee |",
            "+----------+-------------+",
            "| 2        | 1.75        |",
            "+----------+-------------+",
        ],
        &late.collect().await.unwrap()
    );
}

#[tokio::test]
async fn a_file_with_two_spellings_of_a_column_cannot_be_read_case_insensitively() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(
        dir.path(),
        "both.parquet",
        vec![
            ("airport_fee", array(Float64Array::from(vec![0.0])), true),
            ("Airport_fee", array(Float64Array::from(vec![1.75])), true),
        ],
    );
    let session = Session::new();
    let location = path.to_str().unwrap();
    assert_eq!(
        session
            .read_parquet(location)
            .await
            .unwrap()
            .columns()
            .len(),
        2
    );
    match read_error(&session, location, case_insensitive()).await {
        sluice::Error::AmbiguousColumnNames { url, first, second } => {
            assert_eq!(url, file_url(&path));
            assert_eq!(
                (first.as_str(), second.as_str()),
                ("airport_fee", "Airport_fee")
            );
        }
        other => panic!("expected ambiguous column names, got {other:?}"),
    }
}

#[tokio::test]
async fn incompatible_types_fail_with_a_typed_error_naming_both_files_and_the_column() {
    let micros = |tz: Option<&str>| {
        let a = TimestampMicrosecondArray::from(vec![1_735_690_718_000_000]);
        array(match tz {
            Some(tz) => a.with_timezone(tz),
            None => a,
        })
    };
    let cases: Vec<(&str, ArrayRef, ArrayRef, DataType, DataType)> = vec![
        (
            "a string and an int64",
            array(StringArray::from(vec!["1"])),
            array(Int64Array::from(vec![1])),
            DataType::Utf8View,
            DataType::Int64,
        ),
        (
            "a timestamp and a double",
            micros(None),
            array(Float64Array::from(vec![1.5])),
            DataType::Timestamp(TimeUnit::Microsecond, None),
            DataType::Float64,
        ),
        (
            "timestamps in different time zones",
            micros(Some("UTC")),
            micros(None),
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            DataType::Timestamp(TimeUnit::Microsecond, None),
        ),
    ];
    for (case, in_a, in_b, type_a, type_b) in cases {
        let dir = tempfile::tempdir().unwrap();
        let a = write_file(
            dir.path(),
            "a.parquet",
            vec![
                ("id", array(Int64Array::from(vec![1])), true),
                ("value", in_a, true),
            ],
        );
        let b = write_file(
            dir.path(),
            "b.parquet",
            vec![
                ("id", array(Int64Array::from(vec![2])), true),
                ("VALUE", in_b, true),
            ],
        );
        let error = read_error(
            &Session::new(),
            &glob(dir.path(), "*.parquet"),
            case_insensitive(),
        )
        .await;
        let message = error.to_string();
        match error {
            sluice::Error::SchemaMismatch {
                column,
                first_url,
                first_type,
                second_url,
                second_type,
            } => {
                assert_eq!(column, "value", "{case}");
                assert_eq!((first_url, first_type), (file_url(&a), type_a), "{case}");
                assert_eq!((second_url, second_type), (file_url(&b), type_b), "{case}");
            }
            other => panic!("{case}: expected a schema mismatch, got {other:?}"),
        }
        assert!(message.contains(&file_url(&a)), "{case}: {message}");
        assert!(message.contains(&file_url(&b)), "{case}: {message}");
    }
}

// ---------------------------------------------------------------------------
// Caches and stores

/// A flow whose persisted task counts airport fees over `source`, read with `options`.
/// The options reach the read only, not any task's parameters: if a key differs, it
/// is the read's lineage that tells them apart.
async fn fee_count(
    session: &Session,
    store: &str,
    source: &str,
    options: ParquetRead,
) -> FlowRun<i64> {
    let source = source.to_string();
    Flow::new("fees")
        .with_options(
            FlowOptions::default()
                .with_session(session.clone())
                .with_result_store(store),
        )
        .run(serde_json::json!({}), async move {
            let raw = Task::new("extract")
                .run(|cx| {
                    let (source, options) = (source.clone(), options.clone());
                    async move { cx.read_parquet_with(&source, options).await }
                })
                .await?;
            let fees = Task::new("fees")
                .cache(CachePolicy::inputs())
                .run(|_cx| {
                    let raw = raw.clone();
                    async move {
                        raw.aggregate(Vec::<Expr>::new(), [count(col("airport_fee")).alias("n")])
                    }
                })
                .await?;
            Ok(count_of(&fees, max(col("n"))).await)
        })
        .await
}

#[tokio::test]
async fn a_cached_schema_reads_no_footer_and_case_options_never_share_a_checkpoint() {
    let dir = linked_samples(&[
        "yellow_2022-01_100k.parquet",
        "yellow_2025-01_10k_ts_ns.parquet",
    ]);
    let source = glob(dir.path(), "*.parquet");
    let prefix = format!(
        "{}/",
        dir.path().display().to_string().trim_start_matches('/')
    );
    let counting =
        Arc::new(CountingStore::new(Arc::new(LocalFileSystem::new())).counting_only_under(prefix));
    // A fresh session per run: DataFusion's own footer cache starts empty.
    let session = || {
        Session::builder()
            .with_object_store(
                &url::Url::parse("file:///").unwrap(),
                Arc::clone(&counting) as Arc<dyn ObjectStore>,
            )
            .build()
            .unwrap()
    };
    let results = tempfile::tempdir().unwrap();
    let store = format!("{}/", results.path().display());
    let fees = |run: &FlowRun<i64>| run.record.task("fees").unwrap().clone();

    // Case-insensitive: `airport_fee` and `Airport_fee` are one column.
    let first = fee_count(&session(), &store, &source, case_insensitive()).await;
    assert_eq!(*first.output.as_ref().unwrap(), 110_000);
    assert_eq!(fees(&first).state, TaskState::Completed);
    assert!(counting.bytes_read() > 0);

    // Again: the checkpoint hits and the source's schema comes from the schema
    // cache, so not a byte of the source is read, footers included.
    counting.reset();
    let again = fee_count(&session(), &store, &source, case_insensitive()).await;
    assert_eq!(*again.output.as_ref().unwrap(), 110_000);
    assert_eq!(fees(&again).state, TaskState::Cached);
    assert_eq!(counting.bytes_read(), 0, "a cache hit read the source");

    // Case-sensitive over the same files: another key, another schema.
    counting.reset();
    let sensitive = fee_count(&session(), &store, &source, ParquetRead::default()).await;
    assert_eq!(*sensitive.output.as_ref().unwrap(), 100_000);
    assert_eq!(fees(&sensitive).state, TaskState::Completed);
    assert_ne!(
        fees(&sensitive).cache.unwrap().checkpoint,
        fees(&first).cache.unwrap().checkpoint
    );
    assert!(counting.bytes_read() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_on_s3_unify_like_local_ones() {
    let target = S3Target::new("schema-evolution").await;
    let store = target.store();
    let names = [
        "yellow_2023-q1_sample_3k_lowercase.parquet",
        "yellow_2025-01_10k_ts_ns.parquet",
        "yellow_2025-01_5rows.parquet",
    ];
    for name in names {
        let bytes = std::fs::read(samples_dir().join(name)).unwrap();
        let key = object_store::path::Path::from(format!("{}/trips/{name}", target.prefix));
        store.put(&key, PutPayload::from(bytes)).await.unwrap();
    }
    let session = target.session();
    let frame = session
        .read_parquet_with(&target.url("trips/*.parquet"), case_insensitive())
        .await
        .unwrap();
    assert_eq!(frame.count().await.unwrap(), 13_029);
    // The first file by URL is the lower-case 2023 sample: its spelling wins.
    assert_eq!(column_type(&frame, "vendorid"), DataType::Int64);
    assert_eq!(column_type(&frame, "airport_fee"), DataType::Float64);
    assert_eq!(
        column_type(&frame, "tpep_pickup_datetime"),
        DataType::Timestamp(TimeUnit::Microsecond, None)
    );
    assert_eq!(count_of(&frame, count(col("vendorid"))).await, 13_029);
    assert_eq!(
        frame
            .filter(col("vendorid").gt(lit(0)))
            .unwrap()
            .count()
            .await
            .unwrap(),
        13_029
    );

    // An incompatible file: the error names both objects by their s3:// URLs.
    let local = tempfile::tempdir().unwrap();
    let bad = write_file(
        local.path(),
        "bad.parquet",
        vec![(
            "passenger_count",
            array(StringArray::from(vec!["two"])),
            true,
        )],
    );
    let bad = std::fs::read(bad).unwrap();
    let key = format!("{}/trips/yellow_2025-03_bad.parquet", target.prefix);
    store
        .put(&object_store::path::Path::from(key), PutPayload::from(bad))
        .await
        .unwrap();
    // A new session: DataFusion caches a prefix's listing for the session's life.
    let session = target.session();
    match read_error(&session, &target.url("trips/*.parquet"), case_insensitive()).await {
        sluice::Error::SchemaMismatch {
            column,
            first_url,
            second_url,
            ..
        } => {
            assert_eq!(column, "passenger_count");
            assert_eq!(
                first_url,
                target.url("trips/yellow_2023-q1_sample_3k_lowercase.parquet")
            );
            assert_eq!(second_url, target.url("trips/yellow_2025-03_bad.parquet"));
        }
        other => panic!("expected a schema mismatch, got {other:?}"),
    }
}
