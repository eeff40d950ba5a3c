//! One Parquet file as a concatenation of other files' row groups, byte for byte: the
//! new file is the first file's magic and row groups, each other file's row groups
//! after them, and a footer (with the page index) whose offsets are shifted to where
//! each row group landed. Nothing is decoded or encoded, and the row groups' bytes can
//! be moved by anyone: on S3 the server copies them (see
//! [`InPlace::compose`](sluice_store::InPlace::compose)), so only the footer passes
//! through the process that plans it.
//!
//! A cluster's single-file output is its executors' parts concatenated so. The parts
//! must share one schema and carry no bloom filters (Sluice's parts carry none); other
//! parts are assembled by the column copy instead (see `frame::assemble`).

use std::io::Write;
use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path;
use parquet::file::metadata::{
    ColumnChunkMetaData, FileMetaData, ParquetMetaData, ParquetMetaDataBuilder,
    ParquetMetaDataWriter, RowGroupMetaData,
};
use parquet::file::page_index::offset_index::{OffsetIndexMetaData, PageLocation};
use parquet::file::writer::TrackedWrite;
use sluice_store::Piece;

/// A concatenation's layout: its pieces in order, the footer last.
#[derive(Debug)]
pub(crate) struct Concat {
    pub(crate) pieces: Vec<Piece>,
    /// Rows of the new file.
    pub(crate) rows: u64,
}

/// The layout of the file made of `parts`' row groups in order (each part's path and
/// footer, page index included where written), or why it cannot be made so.
pub(crate) fn concat(parts: &[(Path, Arc<ParquetMetaData>)]) -> Result<Concat, String> {
    let parts: Vec<&(Path, Arc<ParquetMetaData>)> = parts
        .iter()
        .filter(|(_, m)| !m.row_groups().is_empty())
        .collect();
    let Some((_, first)) = parts.first() else {
        return Err("the parts hold no row group".into());
    };
    let schema = first.file_metadata().schema_descr_ptr();
    let key_values = first.file_metadata().key_value_metadata();
    let indexed = parts.iter().all(|(_, m)| m.offset_index().is_some());
    let mut row_groups = Vec::new();
    let mut column_index = Vec::new();
    let mut offset_index = Vec::new();
    let mut pieces = Vec::with_capacity(parts.len() + 1);
    // Where the next part's bytes go in the new file (the first part's start with the
    // magic, which the new file keeps).
    let mut at = 0u64;
    for (n, (path, metadata)) in parts.iter().enumerate() {
        let file = metadata.file_metadata();
        if file.schema_descr().root_schema() != schema.root_schema()
            || file.key_value_metadata() != key_values
        {
            return Err(format!("{path} has another schema than the first part"));
        }
        let mut start = u64::MAX;
        let mut end = 0u64;
        for group in metadata.row_groups() {
            for chunk in group.columns() {
                if chunk.bloom_filter_offset().is_some() {
                    return Err(format!("{path} has bloom filters"));
                }
                let (from, len) = chunk.byte_range();
                start = start.min(from);
                end = end.max(from + len);
            }
        }
        if start < 4 || start > end {
            return Err(format!(
                "{path}'s row groups are not where a Parquet file has them"
            ));
        }
        // The first part's magic is the new file's.
        let from = if n == 0 { 0 } else { start };
        let shift = at as i64 - from as i64;
        pieces.push(Piece::Range {
            path: path.clone(),
            range: from..end,
        });
        at += end - from;
        for (g, group) in metadata.row_groups().iter().enumerate() {
            row_groups.push(shifted_group(group, shift, row_groups.len())?);
            if indexed {
                let offsets = metadata
                    .offset_index()
                    .and_then(|o| o.get(g))
                    .ok_or_else(|| format!("{path} lacks the offset index of row group {g}"))?;
                offset_index.push(
                    offsets
                        .iter()
                        .map(|o| shifted_offsets(o, shift))
                        .collect::<Vec<_>>(),
                );
                column_index.push(
                    metadata
                        .column_index()
                        .and_then(|c| c.get(g).cloned())
                        .unwrap_or_else(|| {
                            vec![
                                parquet::file::page_index::column_index::ColumnIndexMetaData::NONE;
                                group.num_columns()
                            ]
                        }),
                );
            }
        }
    }
    let rows: i64 = row_groups.iter().map(RowGroupMetaData::num_rows).sum();
    let file = FileMetaData::new(
        first.file_metadata().version(),
        rows,
        first.file_metadata().created_by().map(str::to_string),
        key_values.cloned(),
        schema,
        first.file_metadata().column_orders().cloned(),
    );
    let mut builder = ParquetMetaDataBuilder::new(file).set_row_groups(row_groups);
    if indexed {
        builder = builder
            .set_column_index(Some(column_index))
            .set_offset_index(Some(offset_index));
    }
    let footer = footer_at(&builder.build(), at).map_err(|e| e.to_string())?;
    pieces.push(Piece::Bytes(footer));
    Ok(Concat {
        pieces,
        rows: rows.max(0) as u64,
    })
}

/// `group` moved by `shift` bytes, as row group `ordinal` of the new file.
fn shifted_group(
    group: &RowGroupMetaData,
    shift: i64,
    ordinal: usize,
) -> Result<RowGroupMetaData, String> {
    let columns = group
        .columns()
        .iter()
        .map(|chunk| shifted_chunk(chunk, shift))
        .collect::<Result<Vec<_>, _>>()?;
    let mut builder = group
        .clone()
        .into_builder()
        .set_column_metadata(columns)
        .set_ordinal(i16::try_from(ordinal).map_err(|_| "more than 32,767 row groups")?);
    if let Some(offset) = group.file_offset() {
        builder = builder.set_file_offset(offset + shift);
    }
    builder.build().map_err(|e| e.to_string())
}

/// `chunk` moved by `shift` bytes; its page index is placed by the footer's writer.
fn shifted_chunk(chunk: &ColumnChunkMetaData, shift: i64) -> Result<ColumnChunkMetaData, String> {
    chunk
        .clone()
        .into_builder()
        .set_data_page_offset(chunk.data_page_offset() + shift)
        .set_dictionary_page_offset(chunk.dictionary_page_offset().map(|o| o + shift))
        .set_index_page_offset(chunk.index_page_offset().map(|o| o + shift))
        .set_column_index_offset(None)
        .set_column_index_length(None)
        .set_offset_index_offset(None)
        .set_offset_index_length(None)
        .build()
        .map_err(|e| e.to_string())
}

fn shifted_offsets(offsets: &OffsetIndexMetaData, shift: i64) -> OffsetIndexMetaData {
    OffsetIndexMetaData {
        page_locations: offsets
            .page_locations()
            .iter()
            .map(|p| PageLocation {
                offset: p.offset + shift,
                compressed_page_size: p.compressed_page_size,
                first_row_index: p.first_row_index,
            })
            .collect(),
        unencoded_byte_array_data_bytes: offsets.unencoded_byte_array_data_bytes().cloned(),
    }
}

/// The page index, footer and closing magic of `metadata` written at byte `at` of a
/// file: the bytes that follow its row groups.
fn footer_at(metadata: &ParquetMetaData, at: u64) -> parquet::errors::Result<Bytes> {
    let mut after = After {
        skip: at,
        bytes: Vec::new(),
    };
    let mut out = TrackedWrite::new(&mut after);
    // The writer places the page index by the bytes it has seen: count the row groups'.
    static ZEROS: [u8; 1 << 16] = [0; 1 << 16];
    let mut left = at;
    while left > 0 {
        let n = left.min(ZEROS.len() as u64) as usize;
        out.write_all(&ZEROS[..n])?;
        left -= n as u64;
    }
    ParquetMetaDataWriter::new_with_tracked(out, metadata).finish()?;
    Ok(after.bytes.into())
}

/// A writer that drops its first `skip` bytes and keeps the rest.
struct After {
    skip: u64,
    bytes: Vec<u8>,
}

impl Write for After {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let dropped = (self.skip.min(buf.len() as u64)) as usize;
        self.skip -= dropped as u64;
        self.bytes.extend_from_slice(&buf[dropped..]);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
