//! The Parquet sink's column copy: unchanged column chunks moved as compressed pages.
//!
//! Every test writes the same frame twice, with the copy and without it (DataFusion's
//! sink), and compares: the same rows as a multiset, the input's row order kept by the
//! copy, the same types, nullability and metadata; and checks which path ran and why.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::{DataType, Schema};
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use parquet::basic::Compression as Codec;
use parquet::file::reader::{FileReader, SerializedFileReader};
use sluice::datafusion;
use sluice::prelude::*;
use sluice::{Compression, WriteMethod};
use sluice_testkit::taxi::{TaxiGenOptions, write_taxi_parquet};

use crate::common::{shared_data, taxi_file};

/// A session with the copy on or off.
fn session(copy: bool) -> Session {
    Session::builder().with_column_copy(copy).build().unwrap()
}

/// Reads a Parquet file or directory in file order, as one batch (one partition, so
/// rows come in the files' order).
pub(crate) async fn read_in_order(path: &Path) -> RecordBatch {
    let ctx =
        SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1).set_bool(
            "datafusion.execution.parquet.schema_force_view_types",
            false,
        ));
    let df = ctx
        .read_parquet(path.to_str().unwrap(), ParquetReadOptions::default())
        .await
        .unwrap();
    let schema = Arc::new(df.schema().as_arrow().clone());
    let batches = df.collect().await.unwrap();
    concat_batches(&schema, &batches).unwrap()
}

/// How many rows of `a` are not in `b` and of `b` not in `a` (as multisets), and the
/// row counts.
async fn difference(a: &Path, b: &Path) -> (u64, u64, u64, u64) {
    let ctx = SessionContext::new();
    ctx.register_parquet("a", a.to_str().unwrap(), ParquetReadOptions::default())
        .await
        .unwrap();
    ctx.register_parquet("b", b.to_str().unwrap(), ParquetReadOptions::default())
        .await
        .unwrap();
    let one = |sql: &'static str| {
        let ctx = ctx.clone();
        async move {
            let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
            let column = batches[0].column(0);
            datafusion::arrow::compute::cast(column, &DataType::UInt64)
                .unwrap()
                .as_any()
                .downcast_ref::<datafusion::arrow::array::UInt64Array>()
                .unwrap()
                .value(0)
        }
    };
    (
        one("SELECT count(*) FROM (SELECT * FROM a EXCEPT ALL SELECT * FROM b)").await,
        one("SELECT count(*) FROM (SELECT * FROM b EXCEPT ALL SELECT * FROM a)").await,
        one("SELECT count(*) FROM a").await,
        one("SELECT count(*) FROM b").await,
    )
}

/// The Arrow schema a file declares (its `ARROW:schema`), field metadata included.
fn file_schema(path: &Path) -> Schema {
    let file = std::fs::File::open(path).unwrap();
    let builder =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
    builder.schema().as_ref().clone()
}

/// The key-value metadata a file carries, without the Arrow schema.
fn key_values(path: &Path) -> Vec<(String, Option<String>)> {
    let reader = SerializedFileReader::new(std::fs::File::open(path).unwrap()).unwrap();
    let mut kv: Vec<(String, Option<String>)> = reader
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .map(|kv| {
            kv.iter()
                .filter(|kv| kv.key != "ARROW:schema")
                .map(|kv| (kv.key.clone(), kv.value.clone()))
                .collect()
        })
        .unwrap_or_default();
    kv.sort();
    kv
}

/// The codec of every column chunk of a file, and its row group sizes.
fn layout(path: &Path) -> (Vec<Codec>, Vec<i64>) {
    let reader = SerializedFileReader::new(std::fs::File::open(path).unwrap()).unwrap();
    let metadata = reader.metadata();
    let codecs = metadata
        .row_groups()
        .iter()
        .flat_map(|g| g.columns().iter().map(|c| c.compression()))
        .collect();
    let rows = metadata.row_groups().iter().map(|g| g.num_rows()).collect();
    (codecs, rows)
}

/// Writes `frame` of `copy`'s session to `dest`.
async fn write(frame: &Frame, dest: &Path, options: ParquetWrite) -> WriteSummary {
    frame
        .write_parquet(dest.to_str().unwrap(), options)
        .await
        .unwrap()
}

/// The seed ETL's transform on `source`, written with and without the copy: returns
/// both outputs and their summaries.
async fn both_ways(
    source: &Path,
    dir: &Path,
    options: ParquetWrite,
    transform: impl Fn(Frame) -> Result<Frame>,
) -> ((PathBuf, WriteSummary), (PathBuf, WriteSummary)) {
    let mut out = Vec::new();
    for copy in [true, false] {
        let frame = transform(frame_of(source, copy).await).unwrap();
        let dest = dir.join(format!("out-{copy}.parquet"));
        let summary = write(&frame, &dest, options.clone()).await;
        out.push((dest, summary));
    }
    let slow = out.pop().unwrap();
    let fast = out.pop().unwrap();
    (fast, slow)
}

fn tip_fraction(df: Frame) -> Result<Frame> {
    df.with_column("tip_fraction", col("tip_amount") / col("total_amount"))
}

/// Checks that the copy ran and agrees with the rewrite: same rows as a multiset, the
/// input's order, the same schema as DataFusion's sink wrote it, the input's metadata.
async fn assert_same_answer(source: &Path, fast: &(PathBuf, WriteSummary), slow: &Path) {
    assert!(
        fast.1.method.is_column_copy(),
        "the copy did not run: {:?}",
        fast.1.method
    );
    let (only_fast, only_slow, rows_fast, rows_slow) = difference(&fast.0, slow).await;
    assert_eq!((only_fast, only_slow), (0, 0), "{}", source.display());
    assert_eq!(rows_fast, rows_slow);
    assert_eq!(fast.1.rows, rows_fast);
    // Row order: each input column the output keeps is the input's, value for value.
    let input = read_in_order(source).await;
    let output = read_in_order(&fast.0).await;
    for (i, field) in output.schema().fields().iter().enumerate() {
        if let Ok(j) = input.schema().index_of(field.name()) {
            assert_eq!(
                output.column(i).as_ref(),
                input.column(j).as_ref(),
                "column {} of {} is not the input's, in order",
                field.name(),
                source.display()
            );
        }
    }
    // Types, nullability and field metadata: those of DataFusion's sink.
    let (ours, theirs) = (file_schema(&fast.0), file_schema(slow));
    assert_eq!(ours.fields().len(), theirs.fields().len());
    for (a, b) in ours.fields().iter().zip(theirs.fields()) {
        let (a_type, b_type) = (unview(a.data_type()), unview(b.data_type()));
        assert_eq!(
            (a.name(), a_type, a.is_nullable(), a.metadata()),
            (b.name(), b_type, b.is_nullable(), b.metadata()),
            "{}",
            source.display()
        );
    }
    // The copied columns keep the input's declared types (`large_string` stays large).
    let input_schema = file_schema(source);
    for field in ours.fields() {
        if let Ok(input) = input_schema.field_with_name(field.name())
            && unview(input.data_type()) == unview(field.data_type())
        {
            assert_eq!(field.data_type(), input.data_type(), "{}", field.name());
        }
    }
    // The input's key-value metadata (pandas', ...) is kept.
    let input_kv = key_values(source);
    let output_kv = key_values(&fast.0);
    for pair in &input_kv {
        assert!(output_kv.contains(pair), "{pair:?} was dropped");
    }
}

/// DataFusion reads strings as views and its sink declares them so; the copy declares
/// the file's own type. Both read back as the same values.
fn unview(t: &DataType) -> DataType {
    match t {
        DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
        DataType::BinaryView | DataType::LargeBinary => DataType::Binary,
        other => other.clone(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_etl_copies_nineteen_columns_and_computes_one() {
    let dir = tempfile::tempdir().unwrap();
    let source = taxi_file(dir.path(), "taxi.parquet", 60_000, 16_384);
    let (fast, slow) = both_ways(&source, dir.path(), ParquetWrite::zstd(3), tip_fraction).await;
    assert_same_answer(&source, &fast, &slow.0).await;
    match &fast.1.method {
        WriteMethod::ColumnCopy {
            copied,
            computed,
            chunks_verbatim,
            chunks_recompressed,
        } => {
            assert_eq!(copied.len(), 19);
            assert_eq!(computed, &["tip_fraction"]);
            // Snappy in, zstd out: every copied chunk recompressed, 4 row groups.
            assert_eq!((*chunks_verbatim, *chunks_recompressed), (0, 19 * 4));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(slow.1.method, WriteMethod::Rewrite { .. }));
    // One output row group per input row group, every chunk zstd.
    let (codecs, rows) = layout(&fast.0);
    assert_eq!(rows, [16_384, 16_384, 16_384, 10_848]);
    assert!(codecs.iter().all(|c| matches!(c, Codec::ZSTD(_))));
}

/// A column computed from no column of the input (a constant, `now()`) reads batches of
/// no columns, only rows: the copy computes it as the rewrite does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn columns_computed_from_no_column_are_copied_with_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let source = taxi_file(dir.path(), "taxi.parquet", 30_000, 16_384);
    let constant = |df: Frame| df.with_column("batch", lit(7_i64));
    let (fast, slow) = both_ways(&source, dir.path(), ParquetWrite::zstd(3), constant).await;
    assert_same_answer(&source, &fast, &slow.0).await;
    match &fast.1.method {
        WriteMethod::ColumnCopy { computed, .. } => assert_eq!(computed, &["batch"]),
        other => panic!("{other:?}"),
    }
    // A load time: `now()` is simplified to the write's start, as in a query, so every
    // row has the same value.
    let frame = frame_of(&source, true)
        .await
        .with_column("loaded_at", sluice::datafusion::functions::expr_fn::now())
        .unwrap();
    let dest = dir.path().join("loaded.parquet");
    let summary = write(&frame, &dest, ParquetWrite::zstd(3)).await;
    assert!(summary.method.is_column_copy(), "{:?}", summary.method);
    let distinct = Session::new()
        .read_parquet(dest.to_str().unwrap())
        .await
        .unwrap()
        .select([col("loaded_at")])
        .unwrap()
        .distinct()
        .unwrap()
        .count()
        .await
        .unwrap();
    assert_eq!(distinct, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_records_the_rows_of_every_task_and_the_path_its_sink_took() {
    let dir = tempfile::tempdir().unwrap();
    let source = taxi_file(dir.path(), "taxi.parquet", 30_000, 8_192);
    let dest = dir.path().join("out.parquet");
    let run = crate::common::etl(source.to_str().unwrap(), dest.to_str().unwrap())
        .run()
        .await;
    let summary = run.output.unwrap();
    assert!(summary.method.is_column_copy(), "{:?}", summary.method);
    for task in ["extract", "transform", "load"] {
        assert_eq!(run.record.task(task).unwrap().rows, Some(30_000), "{task}");
    }
    let sinks = &run.record.task("load").unwrap().sinks;
    assert_eq!(sinks.len(), 1);
    assert!(sinks[0].method.is_column_copy());
    let json = serde_json::to_value(&run.record).unwrap();
    let path = &json["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "load")
        .unwrap()["sinks"][0]["path"];
    assert_eq!(path["kind"], "column_copy");
    assert_eq!(path["computed"][0], "tip_fraction");
    // And explain says what a sink would do.
    let frame = tip_fraction(frame_of(&source, true).await).unwrap();
    let text = frame.explain().await.unwrap();
    assert!(
        text.contains("Parquet sink: column copy: 19 column(s) moved as compressed pages, 1 computed: tip_fraction"),
        "{text}"
    );
    let filtered = frame.filter(col("tip_amount").gt(lit(1.0))).unwrap();
    let text = filtered.explain().await.unwrap();
    assert!(text.contains("Parquet sink: rewrite"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_real_sample_and_bench_workload_gives_the_rewrites_answer() {
    let dir = tempfile::tempdir().unwrap();
    let samples = std::fs::read_dir(shared_data("nyc_taxi/parquet")).unwrap();
    let mut samples: Vec<PathBuf> = samples.map(|e| e.unwrap().path()).collect();
    samples.sort();
    assert!(samples.len() >= 6);
    for (i, source) in samples.iter().enumerate() {
        let dir = dir.path().join(i.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let columns = frame_of(source, true).await.columns();
        // The samples spell the amount columns in either case; one has other columns.
        let name = |n: &str| columns.iter().find(|c| c.eq_ignore_ascii_case(n)).cloned();
        let (first, last) = (columns[0].clone(), columns[columns.len() - 1].clone());
        let tip = name("tip_amount").unwrap_or(first);
        let total = name("total_amount").unwrap_or(last);
        // The bench's workloads: the seed ETL, the rewrite, a column subset.
        let etl = move |df: Frame| {
            df.with_column(
                "tip_fraction",
                datafusion::logical_expr::cast(col(tip.as_str()), DataType::Float64)
                    / datafusion::logical_expr::cast(col(total.as_str()), DataType::Float64),
            )
        };
        let (fast, slow) = both_ways(source, &dir.join("etl"), ParquetWrite::zstd(3), etl).await;
        assert_same_answer(source, &fast, &slow.0).await;
        let (fast, slow) = both_ways(source, &dir.join("rewrite"), ParquetWrite::zstd(3), Ok).await;
        assert_same_answer(source, &fast, &slow.0).await;
        let subset = |df: Frame| {
            let keep: Vec<String> = df.columns().into_iter().step_by(3).collect();
            let keep: Vec<&str> = keep.iter().map(String::as_str).collect();
            df.select_columns(&keep)
        };
        let (fast, slow) =
            both_ways(source, &dir.join("subset"), ParquetWrite::snappy(), subset).await;
        assert_same_answer(source, &fast, &slow.0).await;
        // The aggregation is not a copy: it falls back, and says why.
        let aggregate = |df: Frame| {
            df.aggregate(
                [col("PULocationID")],
                [count(col("PULocationID")).alias("n")],
            )
        };
        if columns.iter().any(|c| c == "PULocationID") {
            let (fast, _) = both_ways(
                source,
                &dir.join("aggregate"),
                ParquetWrite::zstd(3),
                aggregate,
            )
            .await;
            match &fast.1.method {
                WriteMethod::Rewrite { reason } => {
                    assert!(reason.contains("Aggregate"), "{reason}")
                }
                other => panic!("{other:?}"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codecs_are_kept_byte_for_byte_or_recompressed_page_by_page() {
    let dir = tempfile::tempdir().unwrap();
    let zstd_source = dir.path().join("zstd.parquet");
    write_taxi_parquet(
        &zstd_source,
        &TaxiGenOptions::new(20_000)
            .with_row_group_rows(8_192)
            .with_compression(Codec::ZSTD(parquet::basic::ZstdLevel::try_new(1).unwrap())),
    )
    .unwrap();
    // zstd(1) in, zstd(3) out: Parquet records no level, the chunks are kept as they are.
    let (fast, slow) = both_ways(
        &zstd_source,
        &dir.path().join("same"),
        ParquetWrite::zstd(3),
        tip_fraction,
    )
    .await;
    assert_same_answer(&zstd_source, &fast, &slow.0).await;
    assert!(
        matches!(
            fast.1.method,
            WriteMethod::ColumnCopy {
                chunks_verbatim: 57,
                chunks_recompressed: 0,
                ..
            }
        ),
        "{:?}",
        fast.1.method
    );
    // Unless recompression is asked for.
    let (fast, slow) = both_ways(
        &zstd_source,
        &dir.path().join("again"),
        ParquetWrite::zstd(9).with_recompression(true),
        tip_fraction,
    )
    .await;
    assert_same_answer(&zstd_source, &fast, &slow.0).await;
    assert!(
        matches!(
            fast.1.method,
            WriteMethod::ColumnCopy {
                chunks_verbatim: 0,
                chunks_recompressed: 57,
                ..
            }
        ),
        "{:?}",
        fast.1.method
    );
    // Every codec Sluice writes, from Snappy input.
    let source = taxi_file(dir.path(), "snappy.parquet", 20_000, 8_192);
    for (i, compression) in [
        Compression::Uncompressed,
        Compression::Lz4,
        Compression::Gzip(6),
        Compression::Zstd(1),
        Compression::Snappy,
    ]
    .into_iter()
    .enumerate()
    {
        let (fast, slow) = both_ways(
            &source,
            &dir.path().join(format!("codec-{i}")),
            ParquetWrite::with_compression(compression),
            tip_fraction,
        )
        .await;
        assert_same_answer(&source, &fast, &slow.0).await;
        let (codecs, _) = layout(&fast.0);
        let expected = layout(&slow.0).0[0];
        assert!(
            codecs
                .iter()
                .all(|c| std::mem::discriminant(c) == std::mem::discriminant(&expected)),
            "{compression:?}: {codecs:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_two_pages_nested_columns_and_files_without_a_page_index_are_copied() {
    let dir = tempfile::tempdir().unwrap();
    // A struct, a list, a map-like list of structs, strings with nulls, over 3 row groups.
    let query = "SELECT v AS id, \
                 named_struct('a', v, 'b', CASE WHEN v % 3 = 0 THEN NULL ELSE concat('s', v) END) AS s, \
                 CASE WHEN v % 5 = 0 THEN NULL ELSE make_array(v, v + 1, v * 2) END AS l, \
                 make_array(named_struct('k', concat('k', v % 7), 'x', v * 0.5)) AS kv, \
                 CASE WHEN v % 4 = 0 THEN NULL ELSE concat('name-', v % 11) END AS name, \
                 v * 1.5 AS amount \
                 FROM generate_series(1, 30000) AS t(v)";
    for (name, v2, page_index) in [("v2", true, true), ("noindex", false, false)] {
        let path = dir.path().join(format!("{name}.parquet"));
        let mut config = SessionConfig::new()
            .set_str("datafusion.execution.parquet.max_row_group_size", "10000")
            .set_str(
                "datafusion.execution.parquet.data_page_row_count_limit",
                "1000",
            );
        if v2 {
            config = config.set_str("datafusion.execution.parquet.writer_version", "2.0");
        }
        if !page_index {
            config = config.set_str("datafusion.execution.parquet.statistics_enabled", "none");
        }
        let writer = Session::builder()
            .with_config(config)
            .with_column_copy(false)
            .build()
            .unwrap();
        let df = writer.sql(query, []).await.unwrap();
        write(
            &df,
            &path,
            ParquetWrite::snappy().with_layout(WriteLayout::SingleFile),
        )
        .await;
        let add = |df: Frame| df.with_column("twice", col("amount") * lit(2.0));
        let (fast, slow) =
            both_ways(&path, &dir.path().join(name), ParquetWrite::zstd(3), add).await;
        assert_same_answer(&path, &fast, &slow.0).await;
        // Readers that use the page index find the same rows.
        let ctx = SessionContext::new_with_config(
            SessionConfig::new()
                .set_bool("datafusion.execution.parquet.pushdown_filters", true)
                .set_bool("datafusion.execution.parquet.enable_page_index", true),
        );
        ctx.register_parquet("t", fast.0.to_str().unwrap(), ParquetReadOptions::default())
            .await
            .unwrap();
        let batches = ctx
            .sql("SELECT count(*) AS n, sum(s.a) AS a FROM t WHERE id BETWEEN 12345 AND 12999 AND name IS NOT NULL")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let text = datafusion::arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string();
        let expected: i64 = (12345..=12999).filter(|v| v % 4 != 0).count() as i64;
        assert!(text.contains(&format!("| {expected} ")), "{name}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_copy_cannot_serve_exactly_falls_back_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let source = taxi_file(dir.path(), "taxi.parquet", 10_000, 4_096);
    let reason = |summary: &WriteSummary| match &summary.method {
        WriteMethod::Rewrite { reason } => reason.clone(),
        other => panic!("the copy ran: {other:?}"),
    };
    let frame = frame_of(&source, true).await;
    // Rows filtered, sorted, limited: not the input's rows in order.
    let cases: Vec<(Frame, &str)> = vec![
        (
            frame.filter(col("tip_amount").gt(lit(1.0))).unwrap(),
            "Filter",
        ),
        (
            frame.sort([col("tip_amount").sort(true, true)]).unwrap(),
            "Sort",
        ),
        (frame.limit(10).unwrap(), "Limit"),
        (frame.distinct().unwrap(), "Distinct"),
    ];
    for (i, (frame, expected)) in cases.into_iter().enumerate() {
        let summary = write(
            &frame,
            &dir.path().join(format!("c{i}.parquet")),
            ParquetWrite::zstd(3),
        )
        .await;
        assert!(
            reason(&summary).contains(expected),
            "{expected}: {}",
            reason(&summary)
        );
    }
    // Turned off, per write and per session.
    let summary = write(
        &frame,
        &dir.path().join("off.parquet"),
        ParquetWrite::zstd(3).with_column_copy(false),
    )
    .await;
    assert!(reason(&summary).contains("with_column_copy(false)"));
    let off = frame_of(&source, false).await;
    let summary = write(
        &off,
        &dir.path().join("off2.parquet"),
        ParquetWrite::zstd(3),
    )
    .await;
    assert!(reason(&summary).contains("session"));
    // Files whose schemas differ (read under one unified schema): the normal path.
    let mixed = dir.path().join("mixed");
    std::fs::create_dir_all(&mixed).unwrap();
    std::fs::copy(&source, mixed.join("a.parquet")).unwrap();
    let other = frame_of(&source, false)
        .await
        .select_columns(&["VendorID", "tip_amount"])
        .unwrap();
    write(&other, &mixed.join("b.parquet"), ParquetWrite::snappy()).await;
    let frame = frame_of(&mixed, true).await;
    let summary = write(
        &frame,
        &dir.path().join("mixed.parquet"),
        ParquetWrite::zstd(3),
    )
    .await;
    assert!(
        reason(&summary).contains("b.parquet"),
        "{}",
        reason(&summary)
    );
    assert_eq!(summary.rows, 20_000);
    // A renamed column is computed (its chunks would carry the old name), the rest copied.
    let renamed = frame_of(&source, true)
        .await
        .rename("VendorID", "vendor")
        .unwrap();
    let summary = write(
        &renamed,
        &dir.path().join("renamed.parquet"),
        ParquetWrite::zstd(3),
    )
    .await;
    match &summary.method {
        WriteMethod::ColumnCopy {
            computed, copied, ..
        } => {
            assert_eq!(computed, &["vendor"]);
            assert_eq!(copied.len(), 18);
        }
        other => panic!("{other:?}"),
    }
}

/// `source` read in a session with the copy on or off.
async fn frame_of(source: &Path, copy: bool) -> Frame {
    session(copy)
        .read_parquet(source.to_str().unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_file_fails_as_it_did_without_the_copy() {
    let dir = tempfile::tempdir().unwrap();
    let encrypted = shared_data("parquet-testing/data/uniform_encryption.parquet.encrypted");
    let mut errors = Vec::new();
    for copy in [true, false] {
        let session = session(copy);
        let error = match session.read_parquet(encrypted.to_str().unwrap()).await {
            Err(e) => e.to_string(),
            Ok(frame) => frame
                .write_parquet(
                    dir.path().join(format!("{copy}.parquet")).to_str().unwrap(),
                    ParquetWrite::zstd(3),
                )
                .await
                .unwrap_err()
                .to_string(),
        };
        errors.push(error);
    }
    assert_eq!(errors[0], errors[1]);
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concatenated_files_and_directory_outputs_are_copied_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let parts = dir.path().join("parts");
    write_taxi_parquet(
        &parts,
        &TaxiGenOptions::new(30_000)
            .with_files(3)
            .with_row_group_rows(4_096),
    )
    .unwrap();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&parts)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    // Three scans concatenated, as the example maps `extract` over its sources.
    let session = session(true);
    let mut frames = Vec::new();
    for file in &files {
        frames.push(session.read_parquet(file.to_str().unwrap()).await.unwrap());
    }
    let frame = tip_fraction(Frame::concat(frames).unwrap()).unwrap();
    let one = dir.path().join("one.parquet");
    let summary = write(&frame, &one, ParquetWrite::zstd(3)).await;
    assert!(summary.method.is_column_copy(), "{:?}", summary.method);
    assert_eq!(summary.rows, 30_000);
    let output = read_in_order(&one).await;
    let mut offset = 0;
    for file in &files {
        let input = read_in_order(file).await;
        let slice = output.slice(offset, input.num_rows());
        assert_eq!(slice.column(3).as_ref(), input.column(3).as_ref());
        offset += input.num_rows();
    }
    // A directory source written as a directory: one part per input file.
    let frame = tip_fraction(session.read_parquet(parts.to_str().unwrap()).await.unwrap()).unwrap();
    let out = dir.path().join("out/");
    let summary = write(&frame, &out, ParquetWrite::zstd(3)).await;
    assert!(summary.method.is_column_copy(), "{:?}", summary.method);
    assert_eq!(summary.files.len(), 3);
    let slow = dir.path().join("slow/");
    write(&frame, &slow, ParquetWrite::zstd(3).with_column_copy(false)).await;
    let (a, b, rows, _) = difference(&out, &slow).await;
    assert_eq!((a, b, rows), (0, 0, 30_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_to_s3_copies_the_columns_it_keeps_and_computes_the_new_one() {
    let target = crate::remote::S3Target::new("column-copy").await;
    let dir = tempfile::tempdir().unwrap();
    let local = taxi_file(dir.path(), "taxi.parquet", 40_000, 8_192);
    let store = target.store();
    let key = object_store::path::Path::from(format!("{}/in/taxi.parquet", target.prefix));
    use object_store::ObjectStoreExt;
    store
        .put(&key, std::fs::read(&local).unwrap().into())
        .await
        .unwrap();
    let session = target.session();
    let frame = session
        .read_parquet(&target.url("in/taxi.parquet"))
        .await
        .unwrap();
    // Only 4 of the 19 columns kept, one computed.
    let keep = || {
        [
            col("VendorID"),
            col("tip_amount"),
            col("total_amount"),
            col("PULocationID"),
            (col("tip_amount") / col("total_amount")).alias("tip_fraction"),
        ]
    };
    let frame = frame.select(keep()).unwrap();
    let summary = frame
        .write_parquet(&target.url("out/x.parquet"), ParquetWrite::zstd(3))
        .await
        .unwrap();
    assert!(summary.method.is_column_copy(), "{:?}", summary.method);
    assert_eq!(summary.rows, 40_000);
    let back = dir.path().join("back.parquet");
    let bytes = store
        .get(&object_store::path::Path::from(format!(
            "{}/out/x.parquet",
            target.prefix
        )))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    std::fs::write(&back, &bytes).unwrap();
    let slow_frame = frame_of(&local, false).await.select(keep()).unwrap();
    let slow = dir.path().join("slow.parquet");
    write(
        &slow_frame,
        &slow,
        ParquetWrite::zstd(3).with_column_copy(false),
    )
    .await;
    let (a, b, rows, _) = difference(&back, &slow).await;
    assert_eq!((a, b, rows), (0, 0, 40_000));
}

/// pyarrow, DuckDB and Polars read the copy's output (with its page index) as they read
/// the rewrite's. Runs when `SLUICE_READERS_PYTHON` names a Python with the three
/// (`.ci/run` installs them); skipped otherwise, saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyarrow_duckdb_and_polars_read_the_copied_files() {
    let Ok(python) = std::env::var("SLUICE_READERS_PYTHON") else {
        eprintln!("skipped: set SLUICE_READERS_PYTHON to a Python with pyarrow, duckdb, polars");
        assert!(
            std::env::var("CI").is_err(),
            "CI must set SLUICE_READERS_PYTHON"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let source = taxi_file(dir.path(), "taxi.parquet", 50_000, 16_384);
    let (fast, slow) = both_ways(&source, dir.path(), ParquetWrite::zstd(3), tip_fraction).await;
    assert!(fast.1.method.is_column_copy());
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/integration/column_copy_readers.py");
    let output = std::process::Command::new(python)
        .arg(&script)
        .arg(&fast.0)
        .arg(&slow.0)
        .arg(&source)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    for reader in ["pyarrow", "duckdb", "polars"] {
        assert!(
            stdout.contains(&format!("{reader}: ok")),
            "{stdout}\n{stderr}"
        );
    }
}
