//! One object on S3 composed from ranges of others by the server: a multipart upload
//! whose parts are `UploadPartCopy` requests (the server copies a byte range of an
//! existing object into the part) or, where a range is too short to be a part of its
//! own, bytes the client reads and sends.
//!
//! A cluster writes one output file this way from its executors' parts: each part's row
//! groups are a range of a staged object, and only the new footer (and the few ranges
//! under S3's 5 MiB minimum part size) pass through the client. object_store 0.13 has
//! no `UploadPartCopy` of a range in its API, so the request is signed here with its
//! [`AwsAuthorizer`](object_store::aws::AwsAuthorizer) and sent with its HTTP client;
//! creating, completing and aborting the upload go through its
//! [`MultipartStore`](object_store::multipart::MultipartStore). Parts are numbered
//! 1..n in order, as `complete_multipart` numbers them.

use std::ops::Range;

use bytes::Bytes;
use object_store::path::Path;

/// S3's smallest part but the last: parts are never smaller.
pub const MIN_PART_BYTES: usize = 5 << 20;

/// A piece of a composed object, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Bytes `range` of the object at `path` (in the same store and bucket).
    Range {
        /// The object, relative to the store as its other paths are.
        path: Path,
        /// The bytes of it, end exclusive.
        range: Range<u64>,
    },
    /// Bytes given here.
    Bytes(Bytes),
}

impl Piece {
    pub(crate) fn len(&self) -> u64 {
        match self {
            Piece::Range { range, .. } => range.end.saturating_sub(range.start),
            Piece::Bytes(bytes) => bytes.len() as u64,
        }
    }
}

/// How [`InPlace::compose`](crate::InPlace::compose) sends its parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ComposeOptions {
    /// Bytes per server-side copied part (a long range is split into parts of about
    /// this size, copied at once by the server); at least [`MIN_PART_BYTES`].
    pub copy_part_bytes: u64,
    /// Parts in flight.
    pub in_flight: usize,
}

impl Default for ComposeOptions {
    /// 64 MiB copied parts, four in flight.
    fn default() -> Self {
        ComposeOptions {
            copy_part_bytes: 64 << 20,
            in_flight: 4,
        }
    }
}

/// What a composition did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Composed {
    /// The object's size.
    pub size: u64,
    /// Parts of the upload.
    pub parts: usize,
    /// Bytes the server copied from other objects.
    pub copied_bytes: u64,
    /// Bytes the client sent in parts: the given bytes and the ranges it read to make
    /// parts of at least 5 MiB.
    pub sent_bytes: u64,
    /// Of those, the bytes the client read from other objects.
    pub read_bytes: u64,
}

/// One part of the upload, as planned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Part {
    /// Copied by the server.
    Copy { path: Path, range: Range<u64> },
    /// Sent by the client: these pieces, concatenated.
    Send(Vec<Piece>),
}

/// The parts composing `pieces`: every part but the last at least `min` bytes, long
/// ranges copied by the server in parts of about `copy_part` bytes, everything else
/// read and sent. The bytes are the pieces' in order.
pub(crate) fn plan(pieces: Vec<Piece>, min: u64, copy_part: u64) -> Vec<Part> {
    let copy_part = copy_part.max(min);
    let mut parts = Vec::new();
    let mut pending: Vec<Piece> = Vec::new();
    let mut pending_len = 0u64;
    let flush = |pending: &mut Vec<Piece>, pending_len: &mut u64, parts: &mut Vec<Part>| {
        if !pending.is_empty() {
            parts.push(Part::Send(std::mem::take(pending)));
            *pending_len = 0;
        }
    };
    for piece in pieces {
        if piece.len() == 0 {
            continue;
        }
        match piece {
            Piece::Bytes(bytes) => {
                pending_len += bytes.len() as u64;
                pending.push(Piece::Bytes(bytes));
                if pending_len >= min {
                    flush(&mut pending, &mut pending_len, &mut parts);
                }
            }
            Piece::Range { path, range } => {
                let mut start = range.start;
                if pending_len > 0 {
                    // Fill the part being sent up to the minimum from this range.
                    let take = (range.end - start).min(min - pending_len);
                    pending.push(Piece::Range {
                        path: path.clone(),
                        range: start..start + take,
                    });
                    pending_len += take;
                    start += take;
                    if pending_len >= min {
                        flush(&mut pending, &mut pending_len, &mut parts);
                    }
                }
                let rest = range.end - start;
                if rest >= min {
                    let n = (rest / copy_part).max(1);
                    for i in 0..n {
                        let from = start + rest * i / n;
                        let to = start + rest * (i + 1) / n;
                        parts.push(Part::Copy {
                            path: path.clone(),
                            range: from..to,
                        });
                    }
                } else if rest > 0 {
                    pending.push(Piece::Range {
                        path,
                        range: start..range.end,
                    });
                    pending_len += rest;
                }
            }
        }
    }
    flush(&mut pending, &mut pending_len, &mut parts);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(path: &str, r: Range<u64>) -> Piece {
        Piece::Range {
            path: Path::from(path),
            range: r,
        }
    }

    /// Each byte of `pieces` as (object, offset), or ("", value) for given bytes.
    fn bytes_of(pieces: &[Piece]) -> Vec<(String, u64)> {
        pieces
            .iter()
            .flat_map(|p| match p {
                Piece::Range { path, range } => range
                    .clone()
                    .map(|i| (path.to_string(), i))
                    .collect::<Vec<_>>(),
                Piece::Bytes(b) => b.iter().map(|&x| (String::new(), u64::from(x))).collect(),
            })
            .collect()
    }

    /// Every part but the last holds at least `min` bytes, and the parts' bytes are the
    /// pieces' in order.
    fn check(parts: &[Part], pieces: &[Piece], min: u64) {
        let len = |part: &Part| match part {
            Part::Copy { range, .. } => range.end - range.start,
            Part::Send(p) => p.iter().map(Piece::len).sum(),
        };
        for part in &parts[..parts.len().saturating_sub(1)] {
            assert!(len(part) >= min, "{parts:?}");
        }
        let planned: Vec<Piece> = parts
            .iter()
            .flat_map(|part| match part {
                Part::Copy { path, range } => vec![Piece::Range {
                    path: path.clone(),
                    range: range.clone(),
                }],
                Part::Send(p) => p.clone(),
            })
            .collect();
        assert_eq!(bytes_of(&planned), bytes_of(pieces));
    }

    #[test]
    fn long_ranges_are_copied_and_short_ones_sent_with_their_neighbours() {
        let min = 10;
        let pieces = vec![
            range("a", 0..35),
            range("b", 4..7),
            range("c", 4..30),
            range("d", 4..6),
            Piece::Bytes(Bytes::from_static(b"footer")),
        ];
        let parts = plan(pieces.clone(), min, 16);
        check(&parts, &pieces, min);
        assert_eq!(
            parts,
            vec![
                Part::Copy {
                    path: "a".into(),
                    range: 0..17
                },
                Part::Copy {
                    path: "a".into(),
                    range: 17..35
                },
                // b is too short: sent, with the first bytes of c.
                Part::Send(vec![range("b", 4..7), range("c", 4..11)]),
                // The rest of c copied; d and the footer, the last part.
                Part::Copy {
                    path: "c".into(),
                    range: 11..30
                },
                Part::Send(vec![
                    range("d", 4..6),
                    Piece::Bytes(Bytes::from_static(b"footer"))
                ]),
            ]
        );
    }

    #[test]
    fn any_sizes_make_valid_parts() {
        let min = 8;
        for sizes in [
            vec![1u64, 1, 1, 1],
            vec![7, 9, 1, 20, 3],
            vec![0, 8, 0, 8],
            vec![50],
            vec![3, 3, 3, 3, 3, 3, 3],
        ] {
            let mut pieces: Vec<Piece> = sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| range(&format!("p{i}"), 4..4 + n))
                .collect();
            pieces.push(Piece::Bytes(Bytes::from_static(b"tail")));
            let parts = plan(pieces.clone(), min, 12);
            check(&parts, &pieces, min);
        }
    }
}
