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
        // The range that holds byte `start` (not one that ends there: ranges may be
        // adjacent, as the pieces of a row group are).
        for (at, bytes) in self.ranges.iter() {
            if start >= *at && start < at + bytes.len() as u64 {
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
    pieces(chunks, gap, u64::MAX)
}

/// As [`coalesce`], but a request grows past `most` bytes only by a single chunk larger
/// than that (a chunk is never split: each is read from one piece).
pub(super) fn pieces(
    chunks: impl IntoIterator<Item = Range<u64>>,
    gap: u64,
    most: u64,
) -> Vec<Range<u64>> {
    let mut chunks: Vec<Range<u64>> = chunks.into_iter().collect();
    chunks.sort_by_key(|r| r.start);
    let mut ranges: Vec<Range<u64>> = Vec::with_capacity(chunks.len());
    for chunk in chunks {
        match ranges.last_mut() {
            Some(last)
                if chunk.start <= last.end.saturating_add(gap)
                    && chunk.end.max(last.end) - last.start <= most =>
            {
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
    let located = match row_group_pieces(plan, f, g) {
        Some(pieces) => plan
            .row_groups
            .get(plan, (f, g), pieces)
            .await
            .map_err(|error| {
                Stop::Failed(plan.attribute(file, DataFusionError::Shared(error), Cause::Read))
            })?,
        None => {
            let ranges = coalesce(leaves_read.iter().map(|&leaf| range(leaf)), COALESCE_GAP);
            let fetched = file
                .reads
                .get_ranges(&file.location, &ranges, &file.url)
                .await
                .map_err(|error| Stop::Failed(plan.attribute(file, error, Cause::Read)))?;
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
            Located {
                ranges: ranges.into_iter().map(|r| r.start).zip(fetched).collect(),
            }
        }
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

/// Row groups whose chunks a copy reads add up to this at most are fetched whole (when
/// they are remote or a checkpoint's, see [`row_group_pieces`]), once for all their units.
const WHOLE_ROW_GROUP_BYTES: u64 = 64 << 20;

/// A row group fetched whole is fetched in pieces of consecutive column chunks up to
/// this size (a larger chunk is a piece of its own), all at once: several requests in
/// flight, and no allocation of a whole large row group. Measured on the 12M-row seed
/// ETL over S3 and HTTP with 100 ms per request (see BENCHMARKS.md): 8 MiB pieces take
/// about as few requests as DataFusion's scan (one per row group) and keep several
/// running.
const PIECE_BYTES: u64 = 8 << 20;

/// The bytes of the row groups read ahead of the one the units ask for, at most, for a
/// checkpoint's part on local disk or in memory (whose reads are checked block by
/// block). A remote file's are the session's
/// [`remote_read_ahead_bytes`](crate::SessionBuilder::with_remote_read_ahead_bytes):
/// requests in flight by the link's bandwidth × latency, not by cores. Measured on the
/// seed ETL's hit (12M and 48M rows, row groups of 15–18 MB, interleaved passes): 32 MiB
/// peaked at 162–179 MiB, 16 MiB at 133–163 MiB in the same wall, none at 118–133 MiB
/// but 20–60% slower.
const LOCAL_READ_AHEAD_BYTES: u64 = 16 << 20;

/// The pieces (byte ranges) row group `g` of file `f` is fetched in, when it is fetched
/// whole:
///
/// - a remote file (S3, HTTP, ...), where each fetch is a round trip: every chunk the
///   copy reads of the row group (copied, or read for a computed column: each byte
///   once) is fetched at once, in [`PIECE_BYTES`] pieces, and the following row groups
///   are read ahead within the session's read-ahead budget;
/// - a checkpoint's part, each of whose reads fetches the whole checked blocks around
///   it, so that reading chunk by chunk would fetch the blocks between chunks again
///   for every unit, each a request.
///
/// A local source file is read chunk by chunk, a few at a time: its reads cost no round
/// trip, and memory holds a few chunks, not row groups.
pub(super) fn row_group_pieces(plan: &CopyPlan, f: usize, g: usize) -> Option<Vec<Range<u64>>> {
    let file = &plan.files[f];
    if (!file.remote() && !matches!(file.reads, Reads::Checkpoint(_)))
        || g >= file.metadata.num_row_groups()
    {
        return None;
    }
    let group = file.metadata.row_group(g);
    let chunks: Vec<Range<u64>> = plan
        .read_leaves
        .iter()
        .map(|&leaf| {
            let (at, length) = group.column(leaf).byte_range();
            at..at + length
        })
        .collect();
    let total: u64 = chunks.iter().map(|r| r.end - r.start).sum();
    if chunks.is_empty() || total > WHOLE_ROW_GROUP_BYTES {
        return None;
    }
    Some(pieces(chunks, COALESCE_GAP, PIECE_BYTES))
}

type SharedFetch = futures::future::Shared<
    futures::future::BoxFuture<'static, Result<Located, Arc<DataFusionError>>>,
>;

/// A row group being fetched, or fetched: its key (file, group), its bytes, the fetch,
/// the task that drives it when it was read ahead, and whether a unit has asked for it
/// yet.
struct Kept {
    key: (usize, usize),
    bytes: u64,
    fetch: SharedFetch,
    driver: Option<tokio::task::AbortHandle>,
    asked: bool,
}

/// Row groups fetched whole (see [`row_group_pieces`]), shared by the units that read
/// them: each fetched once, the next ones read ahead within the read-ahead budget, the
/// earlier ones let go.
#[derive(Default)]
pub(super) struct RowGroupFetches(Mutex<std::collections::VecDeque<Kept>>);

impl RowGroupFetches {
    /// The fetch of row group `key` (file, group) of `plan`, in `pieces`: started by the
    /// first unit that asks (or read ahead), awaited by the others. The first unit to
    /// ask lets the earlier row groups go and starts the reads ahead.
    fn get(&self, plan: &CopyPlan, key: (usize, usize), pieces: Vec<Range<u64>>) -> SharedFetch {
        let file = &plan.files[key.0];
        let mut kept = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let fetch = Self::keep(&mut kept, file, key, pieces, false);
        let first = kept
            .iter_mut()
            .find(|k| k.key == key)
            .is_some_and(|k| !std::mem::replace(&mut k.asked, true));
        if !first {
            return fetch;
        }
        // Units ask in the order they run (each asks before its first wait), so no unit
        // asks for an earlier row group after this one: those are let go (a unit that
        // holds one keeps it until it is done), so that large ones are not held for
        // nothing.
        while kept.front().is_some_and(|k| k.key < key) {
            if let Some(driver) = kept.pop_front().and_then(|old| old.driver) {
                driver.abort();
            }
        }
        // Read ahead: the following row groups of the file, started now, as many as
        // the budget holds (those already under way count).
        let budget = if file.remote() {
            plan.read_ahead
        } else {
            LOCAL_READ_AHEAD_BYTES
        };
        let mut ahead = 0;
        for g in file.groups.iter().copied().filter(|&g| g > key.1) {
            let bytes = match kept.iter().find(|k| k.key == (key.0, g)) {
                Some(known) => known.bytes,
                None => match row_group_pieces(plan, key.0, g) {
                    Some(pieces) => {
                        let bytes = pieces.iter().map(|r| r.end - r.start).sum::<u64>();
                        if ahead + bytes > budget {
                            break;
                        }
                        // Driven by its own task: the handle is not needed here.
                        drop(Self::keep(&mut kept, file, (key.0, g), pieces, true));
                        bytes
                    }
                    None => break,
                },
            };
            ahead += bytes;
            if ahead >= budget {
                break;
            }
        }
        fetch
    }

    /// The fetch of `key`, started (and driven by a task of its own when `ahead`) if
    /// it is not kept yet.
    fn keep(
        kept: &mut std::collections::VecDeque<Kept>,
        file: &InputFile,
        key: (usize, usize),
        pieces: Vec<Range<u64>>,
        ahead: bool,
    ) -> SharedFetch {
        use futures::FutureExt;
        if let Some(known) = kept.iter().find(|k| k.key == key) {
            return known.fetch.clone();
        }
        let bytes = pieces.iter().map(|r| r.end - r.start).sum();
        let (reads, location, url) = (file.reads.clone(), file.location.clone(), file.url.clone());
        let fetch = async move {
            let bytes = reads
                .get_ranges(&location, &pieces, &url)
                .await
                .map_err(Arc::new)?;
            // A short piece leaves chunks unfound: the unit's walk of their pages
            // stops the copy (the rewrite takes over), as for a short chunk.
            Ok(Located {
                ranges: pieces.iter().map(|r| r.start).zip(bytes).collect(),
            })
        }
        .boxed()
        .shared();
        let driver = ahead.then(|| tokio::spawn(fetch.clone().map(drop)).abort_handle());
        kept.push_back(Kept {
            key,
            bytes,
            fetch: fetch.clone(),
            driver,
            asked: false,
        });
        fetch
    }
}

impl Drop for RowGroupFetches {
    /// A copy that stops (failed, cancelled, done) stops its reads ahead.
    fn drop(&mut self) {
        let kept = self.0.get_mut().unwrap_or_else(|p| p.into_inner());
        for driver in kept.drain(..).filter_map(|k| k.driver) {
            driver.abort();
        }
    }
}
