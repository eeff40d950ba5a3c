//! The column copy's stages, each on its own: detection on DataFusion plans, fetch
//! planning, page walking, the copy of a chunk and its recompression, on Parquet files
//! written here.

use std::sync::Arc;

use bytes::Bytes;
use datafusion::arrow::array::{Float64Array, Int64Array, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::functions_aggregate::expr_fn::sum;
use datafusion::prelude::{DataFrame, ParquetReadOptions, SessionContext, col, lit};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression as Codec, ZstdLevel};
use parquet::column::page::PageReader;
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};
use parquet::file::properties::WriterProperties;
use parquet::file::serialized_reader::SerializedPageReader;

use super::detect::Shape;
use super::fetch::{Located, coalesce, pieces};
use super::pages::{copy_chunk, page_ranges, page_reader, recompress_chunk};

const ROWS: usize = 2_000;

/// A file of `ROWS` rows (`id`, `fare`, `zone`) in one row group of many small pages.
fn file(codec: Codec) -> Bytes {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("fare", DataType::Float64, true),
        Field::new("zone", DataType::Utf8, false),
    ]));
    let ids: Vec<i64> = (0..ROWS as i64).collect();
    let fares: Vec<Option<f64>> = (0..ROWS)
        .map(|i| (i % 7 != 0).then_some(i as f64 * 0.25))
        .collect();
    let zones: Vec<String> = (0..ROWS).map(|i| format!("zone-{}", i % 13)).collect();
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![
            Arc::new(Int64Array::from(ids)),
            Arc::new(Float64Array::from(fares)),
            Arc::new(StringArray::from(zones)),
        ],
    )
    .unwrap();
    let props = WriterProperties::builder()
        .set_compression(codec)
        .set_data_page_row_count_limit(128)
        .set_write_batch_size(128)
        .build();
    let mut out = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut out, schema, Some(props)).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    Bytes::from(out)
}

fn metadata(bytes: &Bytes) -> ParquetMetaData {
    ParquetMetaDataReader::new()
        .with_page_index_policy(parquet::file::metadata::PageIndexPolicy::Optional)
        .parse_and_finish(bytes)
        .unwrap()
}

fn whole(bytes: &Bytes) -> Located {
    Located {
        ranges: Arc::from(vec![(0u64, bytes.clone())]),
    }
}

/// The decompressed bodies of a chunk's pages, in order.
fn page_bodies(mut reader: impl PageReader) -> Vec<Bytes> {
    let mut bodies = Vec::new();
    while let Some(page) = reader.get_next_page().unwrap() {
        bodies.push(page.buffer().clone());
    }
    bodies
}

async fn frame_plan(
    edit: impl FnOnce(DataFrame) -> DataFrame,
) -> datafusion::logical_expr::LogicalPlan {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("taxi.parquet");
    std::fs::write(&path, file(Codec::SNAPPY)).unwrap();
    let ctx = SessionContext::new();
    let df = ctx
        .read_parquet(path.to_str().unwrap(), ParquetReadOptions::default())
        .await
        .unwrap();
    edit(df).logical_plan().clone()
}

#[tokio::test]
async fn a_plan_that_adds_a_column_copies_every_other_one() {
    let plan = frame_plan(|df| df.with_column("tip", col("fare") * lit(0.1)).unwrap()).await;
    let shape = Shape::of(&plan).unwrap();
    let copied: Vec<usize> = shape.copied().map(|(output, _)| output).collect();
    assert_eq!(copied, [0, 1, 2]);
    let described = shape.describe();
    assert!(
        described.contains("3 column(s) moved as compressed pages, 1 computed: tip"),
        "{described}"
    );
}

#[tokio::test]
async fn a_column_replaced_under_its_own_name_is_computed_and_a_dropped_one_is_not_read() {
    let plan = frame_plan(|df| {
        df.with_column("fare", col("fare") * lit(2.0))
            .unwrap()
            .drop_columns(&["zone"])
            .unwrap()
    })
    .await;
    let shape = Shape::of(&plan).unwrap();
    let copied: Vec<(usize, usize)> = shape.copied().collect();
    assert_eq!(copied, [(0, 0)], "only `id` moves unchanged");
    assert!(
        shape.describe().contains("1 computed: fare"),
        "{}",
        shape.describe()
    );
}

#[tokio::test]
async fn plans_that_change_rows_are_rewritten_saying_why() {
    type Edit = Box<dyn FnOnce(DataFrame) -> DataFrame>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "Filter",
            Box::new(|df| df.filter(col("id").gt(lit(5))).unwrap()),
        ),
        ("Limit", Box::new(|df| df.limit(0, Some(10)).unwrap())),
        (
            "Sort",
            Box::new(|df| df.sort(vec![col("fare").sort(true, true)]).unwrap()),
        ),
        (
            "Aggregate",
            Box::new(|df| {
                df.aggregate(vec![col("zone")], vec![sum(col("fare"))])
                    .unwrap()
            }),
        ),
    ];
    for (node, edit) in cases {
        let plan = frame_plan(edit).await;
        let reason = Shape::of(&plan).unwrap_err();
        assert!(reason.contains(node), "{node}: {reason}");
    }
    let plan = frame_plan(|df| df.select(vec![(col("id") + lit(1)).alias("next")]).unwrap()).await;
    assert_eq!(Shape::of(&plan).unwrap_err(), "no column is kept unchanged");
}

#[test]
fn chunks_closer_than_the_gap_are_fetched_in_one_request() {
    let ranges = coalesce([300..400, 0..100, 150..200, 1_000..1_100, 90..120], 40);
    assert_eq!(ranges, [0..200, 300..400, 1_000..1_100]);
    assert_eq!(coalesce([0..10, 10..20], 0), vec![0..20]);
    assert!(coalesce([], 1 << 20).is_empty());
}

#[test]
fn pieces_hold_whole_chunks_up_to_their_size() {
    // Chunks merge while the piece stays within 10 bytes; a gap over 5 starts another.
    assert_eq!(pieces([6..9, 0..3, 3..6, 20..30], 5, 10), [0..9, 20..30]);
    // A chunk is never split: one larger than a piece is a piece of its own.
    assert_eq!(pieces([0..4, 4..20, 20..22], 0, 8), [0..4, 4..20, 20..22]);
    assert_eq!(pieces([0..4, 4..8, 8..12], 0, 8), [0..8, 8..12]);
}

#[test]
fn a_chunks_pages_are_walked_from_their_headers_and_must_add_up() {
    let bytes = file(Codec::ZSTD(ZstdLevel::try_new(3).unwrap()));
    let metadata = metadata(&bytes);
    let chunk = metadata.row_group(0).column(0);
    let (start, length) = chunk.byte_range();
    let body = whole(&bytes).find(start, length).unwrap();
    let declared = chunk.uncompressed_size() as u64;
    let pages = page_ranges(chunk, &body, declared).unwrap();
    assert!(pages.len() > 10, "{} pages", pages.len());
    assert_eq!(pages.first().unwrap().start, 0);
    assert_eq!(pages.last().unwrap().end, length);
    assert!(pages.windows(2).all(|w| w[0].end == w[1].start));
    // One byte short: the last page runs past its chunk.
    let short = page_ranges(chunk, &body[..body.len() - 1], declared).unwrap_err();
    assert!(short.contains("runs past"), "{short}");
    // A page larger than the cap the caller allows.
    let capped = page_ranges(chunk, &body, 16).unwrap_err();
    assert!(capped.contains("claims more"), "{capped}");
    // Not a page header at all.
    let garbage = page_ranges(chunk, &[0xff; 64], declared).unwrap_err();
    assert!(garbage.contains("does not parse"), "{garbage}");
}

#[test]
fn a_copied_chunk_without_an_offset_index_gets_one_from_its_page_headers() {
    let bytes = file(Codec::SNAPPY);
    let metadata = metadata(&bytes);
    let chunk = metadata.row_group(0).column(1);
    let (_, result) = copy_chunk(&whole(&bytes), chunk, ROWS as i64, None, None).unwrap();
    let index = result.offset_index.expect("an offset index");
    let firsts: Vec<i64> = index
        .page_locations
        .iter()
        .map(|p| p.first_row_index)
        .collect();
    assert_eq!(firsts.first(), Some(&0));
    assert!(firsts.windows(2).all(|w| w[0] < w[1]), "{firsts:?}");
    assert!(*firsts.last().unwrap() < ROWS as i64);
    assert_eq!(result.rows_written, ROWS as u64);
    // The chunk's metadata, its statistics stated as the writer states them (min and max
    // in the deprecated fields too, for a signed sort order).
    assert_eq!(result.metadata.byte_range(), chunk.byte_range());
    assert_eq!(result.metadata.num_values(), chunk.num_values());
    assert_eq!(result.metadata.compression(), chunk.compression());
    assert_eq!(
        stated(result.metadata.statistics()),
        stated(chunk.statistics())
    );
    let statistics = result.metadata.statistics().expect("statistics");
    assert_eq!(
        statistics.is_min_max_backwards_compatible(),
        chunk.column_descr().sort_order().is_signed()
    );
}

/// Min, max (as bytes) and null count.
type Stated = (Option<Vec<u8>>, Option<Vec<u8>>, Option<u64>);

/// A chunk's statistics as values.
fn stated(statistics: Option<&parquet::file::statistics::Statistics>) -> Option<Stated> {
    statistics.map(|s| {
        (
            s.min_bytes_opt().map(<[u8]>::to_vec),
            s.max_bytes_opt().map(<[u8]>::to_vec),
            s.null_count_opt(),
        )
    })
}

#[test]
fn a_recompressed_chunk_keeps_every_page_and_value() {
    let bytes = file(Codec::ZSTD(ZstdLevel::try_new(1).unwrap()));
    let metadata = metadata(&bytes);
    for leaf in 0..3 {
        let chunk = metadata.row_group(0).column(leaf);
        let located = whole(&bytes);
        let before = page_bodies(page_reader(&located, chunk, ROWS as i64, false).unwrap());
        let (recompressed, result) =
            recompress_chunk(&located, chunk, ROWS as i64, None, None, Codec::SNAPPY)
                .unwrap()
                .unwrap();
        assert_eq!(result.metadata.compression(), Codec::SNAPPY);
        assert_eq!(result.metadata.num_values(), chunk.num_values());
        assert_eq!(
            stated(result.metadata.statistics()),
            stated(chunk.statistics())
        );
        let after = page_bodies(
            SerializedPageReader::new(Arc::new(recompressed), &result.metadata, ROWS, None)
                .unwrap(),
        );
        assert_eq!(before, after, "leaf {leaf}: the pages' decompressed bodies");
        let locations = result.offset_index.unwrap().page_locations;
        assert_eq!(
            locations.len(),
            after.len() - usize::from(chunk.dictionary_page_offset().is_some())
        );
    }
}

#[test]
fn a_read_at_the_start_of_a_range_comes_from_that_range_not_the_one_ending_there() {
    use parquet::file::reader::ChunkReader;
    // The pieces of a row group fetched whole are adjacent: the second starts where the
    // first ends, and a chunk at that offset is in the second.
    let located = Located {
        ranges: Arc::from(vec![
            (100u64, Bytes::from_static(b"first")),
            (105u64, Bytes::from_static(b"second")),
        ]),
    };
    let mut read = Vec::new();
    std::io::Read::read_to_end(&mut located.get_read(105).unwrap(), &mut read).unwrap();
    assert_eq!(read, b"second");
    assert_eq!(
        located.get_bytes(103, 2).unwrap(),
        Bytes::from_static(b"st")
    );
    assert_eq!(
        located.get_bytes(105, 6).unwrap(),
        Bytes::from_static(b"second")
    );
    assert!(located.get_read(111).is_err());
}
