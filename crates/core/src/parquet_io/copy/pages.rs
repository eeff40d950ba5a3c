//! Pages: a copied chunk's pages walked from their headers, moved byte for byte or
//! decompressed and compressed again with the output codec, and validated.

use super::*;

/// Decodes a copied chunk's values, as a rewrite would, and drops them: a chunk whose
/// values do not decode (invalid UTF-8, dictionary indices out of range, ...) is not
/// copied into an output that looks whole.
pub(super) fn validate(
    file: &InputFile,
    g: usize,
    leaf: usize,
    fetched: &Located,
) -> Result<(), String> {
    let mask = ProjectionMask::leaves(file.reader.parquet_schema(), [leaf]);
    let reader =
        ParquetRecordBatchReaderBuilder::new_with_metadata(fetched.clone(), file.reader.clone())
            .with_row_groups(vec![g])
            .with_projection(mask)
            .with_batch_size(64 * 1024)
            .build()
            .map_err(|e| e.to_string())?;
    for batch in reader {
        batch.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The byte ranges of a chunk's pages, from their headers; `Err` when they do not add up
/// to the chunk the footer declares.
pub(super) fn page_ranges(
    chunk: &ColumnChunkMetaData,
    bytes: &[u8],
    max_uncompressed: u64,
) -> Result<Vec<Range<u64>>, String> {
    let mut pages = Vec::new();
    let mut position = 0usize;
    while position < bytes.len() {
        let sizes = page_sizes(&bytes[position..]).ok_or("a page header does not parse")?;
        if sizes.compressed < 0 || sizes.uncompressed < 0 {
            return Err("a page header has a negative size".into());
        }
        if sizes.uncompressed as u64 > max_uncompressed {
            return Err("a page claims more bytes than its chunk".into());
        }
        let end = position + sizes.header_len + sizes.compressed as usize;
        if end > bytes.len() {
            return Err("a page runs past its chunk".into());
        }
        pages.push(position as u64..end as u64);
        position = end;
    }
    if pages.is_empty() && chunk.num_values() > 0 {
        return Err("the chunk has no pages".into());
    }
    Ok(pages)
}

/// A chunk moved byte for byte.
pub(super) fn copy_chunk(
    fetched: &Located,
    chunk: &ColumnChunkMetaData,
    rows: i64,
    offsets: Option<OffsetIndexMetaData>,
    column_index: Option<ColumnIndexMetaData>,
) -> Result<(Located, ColumnCloseResult), String> {
    let (start, length) = chunk.byte_range();
    let bytes = fetched.find(start, length).map_err(|e| e.to_string())?;
    let declared = chunk.uncompressed_size().max(0) as u64;
    let pages = page_ranges(chunk, &bytes, declared.max(1))?;
    let offsets = match offsets {
        Some(offsets) => Some(offsets),
        None => flat_offsets(fetched, chunk, rows, start, &pages)?,
    };
    Ok((
        fetched.clone(),
        ColumnCloseResult {
            bytes_written: length,
            rows_written: rows.max(0) as u64,
            metadata: match chunk.statistics() {
                Some(statistics) => chunk
                    .clone()
                    .into_builder()
                    .set_statistics(as_written(chunk, statistics))
                    .build()
                    .map_err(|e| e.to_string())?,
                None => chunk.clone(),
            },
            bloom_filter: None,
            column_index: offsets.as_ref().and(column_index),
            offset_index: offsets,
        },
    ))
}

/// A chunk's statistics as the parquet crate's writer states them: min and max in the
/// deprecated fields too where the column's sort order is signed. (A footer read back
/// does not say whether they were there, and the writer of a computed column puts them:
/// so a chunk copied from a checkpoint is stated as the miss wrote it.)
fn as_written(chunk: &ColumnChunkMetaData, statistics: &Statistics) -> Statistics {
    let signed = chunk.column_descr().sort_order().is_signed();
    match statistics.clone() {
        Statistics::Boolean(s) => s.with_backwards_compatible_min_max(signed).into(),
        Statistics::Int32(s) => s.with_backwards_compatible_min_max(signed).into(),
        Statistics::Int64(s) => s.with_backwards_compatible_min_max(signed).into(),
        Statistics::Int96(s) => s.with_backwards_compatible_min_max(signed).into(),
        Statistics::Float(s) => s.with_backwards_compatible_min_max(signed).into(),
        Statistics::Double(s) => s.with_backwards_compatible_min_max(signed).into(),
        Statistics::ByteArray(s) => s.with_backwards_compatible_min_max(signed).into(),
        Statistics::FixedLenByteArray(s) => s.with_backwards_compatible_min_max(signed).into(),
    }
}

/// An offset index built from the page headers of a chunk whose file has none: only for
/// non-repeated columns, where a page's values are its rows.
pub(super) fn flat_offsets(
    fetched: &Located,
    chunk: &ColumnChunkMetaData,
    rows: i64,
    start: u64,
    pages: &[Range<u64>],
) -> Result<Option<OffsetIndexMetaData>, String> {
    if chunk.column_descr().max_rep_level() > 0 {
        return Err("a nested column without an offset index".into());
    }
    let reader = page_reader(fetched, chunk, rows, false).map_err(|e| e.to_string())?;
    let mut locations = Vec::with_capacity(pages.len());
    let mut first_row = 0i64;
    for (page, range) in reader.zip(pages) {
        let page = page.map_err(|e| e.to_string())?;
        if matches!(page, Page::DictionaryPage { .. }) {
            continue;
        }
        locations.push(PageLocation {
            offset: (start + range.start) as i64,
            compressed_page_size: (range.end - range.start) as i32,
            first_row_index: first_row,
        });
        first_row += i64::from(page.num_values());
    }
    Ok(Some(OffsetIndexMetaData {
        page_locations: locations,
        unencoded_byte_array_data_bytes: None,
    }))
}

pub(super) fn page_reader(
    fetched: &Located,
    chunk: &ColumnChunkMetaData,
    rows: i64,
    statistics: bool,
) -> parquet::errors::Result<SerializedPageReader<Located>> {
    let properties = ReaderProperties::builder()
        .set_read_page_statistics(statistics)
        .build();
    SerializedPageReader::new_with_properties(
        Arc::new(fetched.clone()),
        chunk,
        rows.max(0) as usize,
        None,
        Arc::new(properties),
    )
}

/// A chunk whose pages are decompressed and compressed again with `codec`: values,
/// encodings, levels and page statistics are the input's.
pub(super) fn recompress_chunk(
    fetched: &Located,
    chunk: &ColumnChunkMetaData,
    rows: i64,
    offsets: Option<OffsetIndexMetaData>,
    column_index: Option<ColumnIndexMetaData>,
    codec: Codec,
) -> parquet::errors::Result<Result<(Located, ColumnCloseResult), String>> {
    let (start, length) = chunk.byte_range();
    let bytes = fetched.find(start, length)?;
    let declared = chunk.uncompressed_size().max(0) as u64;
    if let Err(reason) = page_ranges(chunk, &bytes, declared.max(1)) {
        return Ok(Err(reason));
    }
    let mut reader = page_reader(fetched, chunk, rows, true)?;
    let mut compressor = PageCompressor::new(codec)?;
    let mut sink = TrackedWrite::new(Vec::with_capacity(length as usize));
    let mut dictionary_offset = None;
    let mut data_offset = None;
    let mut uncompressed_total = 0i64;
    let mut locations = Vec::new();
    let mut first_row = 0i64;
    {
        let mut writer = SerializedPageWriter::new(&mut sink);
        while let Some(page) = reader.get_next_page()? {
            let page_rows = match &page {
                Page::DataPageV2 { num_rows, .. } => i64::from(*num_rows),
                other => i64::from(other.num_values()),
            };
            let is_dictionary = matches!(page, Page::DictionaryPage { .. });
            let (page, uncompressed) = compress_page(page, &mut compressor)?;
            let spec = writer.write_page(CompressedPage::new(page, uncompressed))?;
            uncompressed_total += spec.uncompressed_size as i64;
            if is_dictionary {
                dictionary_offset = Some(spec.offset as i64);
            } else {
                data_offset.get_or_insert(spec.offset as i64);
                locations.push(PageLocation {
                    offset: spec.offset as i64,
                    compressed_page_size: spec.compressed_size as i32,
                    first_row_index: first_row,
                });
                first_row += page_rows;
            }
        }
        writer.close()?;
    }
    // Page boundaries are the input's: take the first rows from its index when it has one.
    if let Some(input) = &offsets {
        if input.page_locations.len() != locations.len() {
            return Ok(Err("its offset index does not match its pages".into()));
        }
        for (ours, theirs) in locations.iter_mut().zip(&input.page_locations) {
            ours.first_row_index = theirs.first_row_index;
        }
    }
    let written = sink.bytes_written() as i64;
    let data = Bytes::from(sink.into_inner()?);
    let mut builder = ColumnChunkMetaData::builder(chunk.column_descr_ptr())
        .set_compression_codec(codec.into())
        .set_encodings_mask(*chunk.encodings_mask())
        .set_total_compressed_size(written)
        .set_total_uncompressed_size(uncompressed_total)
        .set_num_values(chunk.num_values())
        .set_data_page_offset(data_offset.unwrap_or(0))
        .set_dictionary_page_offset(dictionary_offset)
        .set_unencoded_byte_array_data_bytes(chunk.unencoded_byte_array_data_bytes());
    if let Some(statistics) = chunk.statistics() {
        builder = builder.set_statistics(as_written(chunk, statistics));
    }
    if let Some(stats) = chunk.page_encoding_stats() {
        builder = builder.set_page_encoding_stats(stats.clone());
    }
    if let Some(histogram) = chunk.repetition_level_histogram() {
        builder = builder.set_repetition_level_histogram(Some(histogram.clone()));
    }
    if let Some(histogram) = chunk.definition_level_histogram() {
        builder = builder.set_definition_level_histogram(Some(histogram.clone()));
    }
    let offset_index = OffsetIndexMetaData {
        page_locations: locations,
        unencoded_byte_array_data_bytes: offsets.and_then(|o| o.unencoded_byte_array_data_bytes),
    };
    Ok(Ok((
        Located {
            ranges: Arc::from(vec![(0u64, data)]),
        },
        ColumnCloseResult {
            bytes_written: written as u64,
            rows_written: rows.max(0) as u64,
            metadata: builder.build()?,
            bloom_filter: None,
            column_index,
            offset_index: Some(offset_index),
        },
    )))
}

/// Compresses a decompressed page with `codec`; returns it and its uncompressed size.
/// A v2 page's levels stay uncompressed, as the format has them.
pub(super) fn compress_page(
    page: Page,
    compressor: &mut PageCompressor,
) -> parquet::errors::Result<(Page, usize)> {
    Ok(match page {
        Page::DataPage {
            buf,
            num_values,
            encoding,
            def_level_encoding,
            rep_level_encoding,
            statistics,
        } => {
            let uncompressed = buf.len();
            let buf = compressor.compress(&buf)?;
            (
                Page::DataPage {
                    buf,
                    num_values,
                    encoding,
                    def_level_encoding,
                    rep_level_encoding,
                    statistics,
                },
                uncompressed,
            )
        }
        Page::DataPageV2 {
            buf,
            num_values,
            encoding,
            num_nulls,
            num_rows,
            def_levels_byte_len,
            rep_levels_byte_len,
            statistics,
            ..
        } => {
            let uncompressed = buf.len();
            let levels = (def_levels_byte_len + rep_levels_byte_len) as usize;
            if levels > buf.len() {
                return Err(ParquetError::General(
                    "a v2 page's levels run past it".into(),
                ));
            }
            let is_compressed = compressor.codec != Codec::UNCOMPRESSED;
            let buf = if is_compressed {
                let values = compressor.compress(&buf[levels..])?;
                let mut whole = Vec::with_capacity(levels + values.len());
                whole.extend_from_slice(&buf[..levels]);
                whole.extend_from_slice(&values);
                Bytes::from(whole)
            } else {
                buf
            };
            (
                Page::DataPageV2 {
                    buf,
                    num_values,
                    encoding,
                    num_nulls,
                    num_rows,
                    def_levels_byte_len,
                    rep_levels_byte_len,
                    is_compressed,
                    statistics,
                },
                uncompressed,
            )
        }
        Page::DictionaryPage {
            buf,
            num_values,
            encoding,
            is_sorted,
        } => {
            let uncompressed = buf.len();
            (
                Page::DictionaryPage {
                    buf: compressor.compress(&buf)?,
                    num_values,
                    encoding,
                    is_sorted,
                },
                uncompressed,
            )
        }
    })
}

/// Compresses pages as Parquet's `codec` frames them, reusing the codec's state (a
/// zstd context costs more to create than a small page to compress).
pub(super) struct PageCompressor {
    pub(super) codec: Codec,
    pub(super) zstd: Option<zstd::bulk::Compressor<'static>>,
    pub(super) snappy: snap::raw::Encoder,
}

impl PageCompressor {
    pub(super) fn new(codec: Codec) -> parquet::errors::Result<Self> {
        let zstd = match codec {
            Codec::ZSTD(level) => Some(
                zstd::bulk::Compressor::new(level.compression_level())
                    .map_err(|e| ParquetError::External(Box::new(e)))?,
            ),
            _ => None,
        };
        Ok(PageCompressor {
            codec,
            zstd,
            snappy: snap::raw::Encoder::new(),
        })
    }

    pub(super) fn compress(&mut self, data: &[u8]) -> parquet::errors::Result<Bytes> {
        let external = |e: std::io::Error| ParquetError::External(Box::new(e));
        Ok(Bytes::from(match (self.codec, self.zstd.as_mut()) {
            (Codec::UNCOMPRESSED, _) => data.to_vec(),
            (Codec::SNAPPY, _) => self
                .snappy
                .compress_vec(data)
                .map_err(|e| ParquetError::External(Box::new(e)))?,
            (Codec::ZSTD(_), Some(zstd)) => zstd.compress(data).map_err(external)?,
            (Codec::LZ4_RAW, _) => lz4_flex::block::compress(data),
            (Codec::GZIP(level), _) => {
                let mut encoder = flate2::write::GzEncoder::new(
                    Vec::with_capacity(data.len() / 2),
                    flate2::Compression::new(level.compression_level()),
                );
                encoder.write_all(data).map_err(external)?;
                encoder.finish().map_err(external)?
            }
            (other, _) => {
                return Err(ParquetError::NYI(format!(
                    "Sluice does not write {other} (choose Snappy, LZ4, zstd, gzip or none)"
                )));
            }
        }))
    }
}
