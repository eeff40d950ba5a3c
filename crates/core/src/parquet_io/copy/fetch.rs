//! Fetching: the byte ranges a unit reads, coalesced, and a chunk reader over them.

use super::*;

/// The leaves (column chunks) of top-level field `root`.
pub(super) fn leaves(descr: &SchemaDescPtr, root: usize) -> impl Iterator<Item = usize> + '_ {
    (0..descr.num_columns()).filter(move |&leaf| descr.get_column_root_idx(leaf) == root)
}

/// The compressed bytes of some column chunks of a file, at their file offsets.
#[derive(Clone)]
pub(super) struct Located {
    pub(super) ranges: Arc<[(u64, Bytes)]>,
}

impl Located {
    pub(super) fn find(&self, start: u64, length: u64) -> Result<Bytes, ParquetError> {
        for (at, bytes) in self.ranges.iter() {
            if start >= *at && start + length <= at + bytes.len() as u64 {
                let from = (start - at) as usize;
                return Ok(bytes.slice(from..from + length as usize));
            }
        }
        Err(ParquetError::General(format!(
            "bytes {start}..{} were not fetched",
            start + length
        )))
    }
}

impl Length for Located {
    fn len(&self) -> u64 {
        self.ranges
            .iter()
            .map(|(at, b)| at + b.len() as u64)
            .max()
            .unwrap_or(0)
    }
}

impl ChunkReader for Located {
    type T = bytes::buf::Reader<Bytes>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        for (at, bytes) in self.ranges.iter() {
            if start >= *at && start <= at + bytes.len() as u64 {
                use bytes::Buf;
                return Ok(bytes.slice((start - at) as usize..).reader());
            }
        }
        Err(ParquetError::General(format!(
            "byte {start} was not fetched"
        )))
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        self.find(start, length as u64)
    }
}

/// The requests that fetch `chunks`: in file order, chunks fewer than `gap` bytes
/// apart (or overlapping) in one request.
pub(super) fn coalesce(chunks: impl IntoIterator<Item = Range<u64>>, gap: u64) -> Vec<Range<u64>> {
    let mut chunks: Vec<Range<u64>> = chunks.into_iter().collect();
    chunks.sort_by_key(|r| r.start);
    let mut ranges: Vec<Range<u64>> = Vec::with_capacity(chunks.len());
    for chunk in chunks {
        match ranges.last_mut() {
            Some(last) if chunk.start <= last.end.saturating_add(gap) => {
                last.end = last.end.max(chunk.end);
            }
            _ => ranges.push(chunk),
        }
    }
    ranges
}

/// Fetches the column chunks a unit reads: the chunk it copies, or those the computed
/// columns read (chunks close together in one request, which the decoder may also read
/// across).
pub(super) async fn fetch(plan: &CopyPlan, unit: Unit) -> Result<Located, Stop> {
    let (f, g) = match unit {
        Unit::Compute { f, g } | Unit::Copy { f, g, .. } => (f, g),
    };
    let file = &plan.files[f];
    let group = file.metadata.row_group(g);
    let range = |leaf: usize| {
        let (start, length) = group.column(leaf).byte_range();
        start..start + length
    };
    let leaves_read: &[usize] = match unit {
        Unit::Copy { ref leaf, .. } => std::slice::from_ref(leaf),
        Unit::Compute { .. } => &plan.needed_leaves,
    };
    let ranges = coalesce(leaves_read.iter().map(|&leaf| range(leaf)), COALESCE_GAP);
    let fetched = file
        .reads
        .get_ranges(&file.location, &ranges, &file.url)
        .await
        .map_err(|error| Stop::Failed(plan.attribute(file, error, true)))?;
    for (range, bytes) in ranges.iter().zip(&fetched) {
        if bytes.len() as u64 != range.end - range.start {
            return Err(Stop::Unsupported(format!(
                "the store returned {} bytes of {} for {}",
                bytes.len(),
                range.end - range.start,
                file.url
            )));
        }
    }
    let located = Located {
        ranges: ranges.into_iter().map(|r| r.start).zip(fetched).collect(),
    };
    // Page headers are walked before anything is decompressed or decoded: a header that
    // claims more than its chunk (or the session's cap) is left to the rewrite, which
    // refuses it with its typed error.
    for &leaf in leaves_read {
        let chunk = group.column(leaf);
        let (start, length) = chunk.byte_range();
        let bytes = located
            .find(start, length)
            .map_err(|e| Stop::Unsupported(e.to_string()))?;
        let declared = chunk.uncompressed_size().max(0) as u64;
        let allowed = if declared > 0 {
            declared.min(plan.max_chunk)
        } else {
            plan.max_chunk
        };
        page_ranges(chunk, &bytes, allowed).map_err(|reason| {
            Stop::Unsupported(format!(
                "column {} of row group {g} of {}: {reason}",
                chunk.column_path(),
                file.url
            ))
        })?;
    }
    Ok(located)
}
