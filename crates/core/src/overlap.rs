//! Whether a sink's destination touches what a frame reads: the same object, an object
//! inside a source directory, a directory around a source, or an object a source glob
//! matches.
//!
//! Locations are compared as a store (`scheme://authority`) and the components of
//! their object path, decoded, not as text: `file:///d/x` and `/d/./x`, `s3://b/a b`
//! and `s3://b/a%20b` are one object. Local paths are compared after resolving
//! symbolic links (of the longest part that exists: a destination usually does not),
//! so a destination reached through a link to a source directory is caught too.

use glob::{MatchOptions, Pattern};
use url::Url;

/// A location as compared: its store, its object path's components, and the glob over
/// the rest of the path, if any.
#[derive(Debug, PartialEq)]
struct Place {
    store: String,
    parts: Vec<String>,
    glob: Option<String>,
}

/// The first character that starts a glob, as listings split them off (DataFusion's
/// `ListingTableUrl` and [`Session`](crate::Session)'s remote URLs alike).
const GLOB_START: [char; 3] = ['*', '?', '['];

/// Whether writing `dest` (a resolved destination URL) touches what `source` (a
/// frame's source as recorded: a URL, maybe followed by a glob) reads.
pub(crate) fn overlaps(source: &str, dest: &Url) -> bool {
    let (Some(source), Some(dest)) = (source_place(source), place(dest, None)) else {
        // Not comparable as locations: only the same text is known to overlap.
        return source.trim_end_matches('/') == dest.as_str().trim_end_matches('/');
    };
    if source.store != dest.store {
        return false;
    }
    let (src, dst) = (&source.parts, &dest.parts);
    let prefix = |outer: &[String], inner: &[String]| inner.starts_with(outer);
    match &source.glob {
        None => prefix(src, dst) || prefix(dst, src),
        Some(glob) => {
            // The destination holds the globbed directory, or is it.
            if prefix(dst, src) {
                return true;
            }
            if !prefix(src, dst) {
                return false;
            }
            // Below the globbed directory: match the glob's components one by one, so
            // that a directory holding matches counts as well as a match. Partition
            // directories (`key=value`) are skipped, as DataFusion's listing skips them
            // before it matches the glob: `raw/*.parquet` reads `raw/k=v/x.parquet`.
            let options = MatchOptions {
                require_literal_separator: true,
                ..Default::default()
            };
            let patterns: Vec<&str> = glob.split('/').filter(|p| !p.is_empty()).collect();
            let below = dst[src.len()..].iter().filter(|part| !part.contains('='));
            for (i, part) in below.enumerate() {
                let Some(pattern) = patterns.get(i) else {
                    // Inside an object the glob matches.
                    return true;
                };
                if *pattern == "**" {
                    return true;
                }
                let matched = Pattern::new(pattern)
                    .map(|p| p.matches_with(part, options))
                    .unwrap_or(pattern == part);
                if !matched {
                    return false;
                }
            }
            true
        }
    }
}

/// A frame's source (`display` of its listing URL: a URL, then the glob as written).
fn source_place(source: &str) -> Option<Place> {
    let (base, glob) = match source.find(GLOB_START) {
        Some(at) => {
            let split = source[..at].rfind('/').map_or(0, |i| i + 1);
            (&source[..split], Some(source[split..].to_string()))
        }
        None => (source, None),
    };
    let url = Url::parse(base).ok()?;
    place(&url, glob)
}

fn place(url: &Url, glob: Option<String>) -> Option<Place> {
    let url = match url.scheme() {
        "file" => canonical(url)?,
        _ => url.clone(),
    };
    let path = sluice_store::object_path(&url).ok()?;
    Some(Place {
        store: sluice_store::store_key(&url),
        parts: path.parts().map(|p| p.as_ref().to_string()).collect(),
        glob,
    })
}

/// A local URL with the symbolic links of its longest existing ancestor resolved.
fn canonical(url: &Url) -> Option<Url> {
    let path = url.to_file_path().ok()?;
    let mut existing = path.as_path();
    let mut rest = Vec::new();
    let resolved = loop {
        if let Ok(resolved) = std::fs::canonicalize(existing) {
            break resolved;
        }
        rest.push(existing.file_name()?);
        existing = existing.parent()?;
    };
    let full = rest
        .iter()
        .rev()
        .fold(resolved, |path, part| path.join(part));
    Url::from_file_path(full).ok()
}

#[cfg(test)]
mod tests {
    use super::overlaps;

    fn url(text: &str) -> url::Url {
        url::Url::parse(text).unwrap()
    }

    #[test]
    fn destinations_overlapping_a_source_are_recognized() {
        let file = "memory://data/in.parquet";
        assert!(
            overlaps(file, &url("memory://data/in.parquet")),
            "the same file"
        );
        assert!(
            !overlaps(file, &url("memory://data/out.parquet")),
            "a sibling"
        );
        assert!(
            overlaps(file, &url("memory://data/")),
            "a directory around it"
        );
        assert!(
            !overlaps(file, &url("memory://other/in.parquet")),
            "another store"
        );
        let dir = "memory://data/trips/";
        assert!(
            overlaps(dir, &url("memory://data/trips/out.parquet")),
            "inside"
        );
        assert!(
            overlaps(dir, &url("memory://data/trips")),
            "the directory itself"
        );
        assert!(
            !overlaps(dir, &url("memory://data/trips-out/x.parquet")),
            "a prefix, not a parent"
        );
        let glob = "s3://b/raw/*.parquet";
        assert!(overlaps(glob, &url("s3://b/raw/out.parquet")), "a match");
        assert!(
            !overlaps(glob, &url("s3://b/raw/out/x.parquet")),
            "`*` stops at `/`"
        );
        assert!(!overlaps(glob, &url("s3://b/clean/x.parquet")));
        assert!(overlaps(glob, &url("s3://b/raw")), "the globbed directory");
        assert!(overlaps(glob, &url("s3://b/")), "the bucket");
        assert!(overlaps(
            "s3://b/raw/**/*.parquet",
            &url("s3://b/raw/a/b.parquet")
        ));
        assert!(
            overlaps(glob, &url("s3://b/raw/year=2023/x.parquet")),
            "the listing reads partition directories"
        );
        assert!(!overlaps(glob, &url("s3://b/raw/year=2023/x.csv")));
        let nested = "s3://b/raw/2023-*/part.parquet";
        assert!(
            overlaps(nested, &url("s3://b/raw/2023-01/")),
            "a directory of matches"
        );
        assert!(!overlaps(nested, &url("s3://b/raw/2024-01/")));
        assert!(
            overlaps(
                "s3://b/my dir/a b*.parquet",
                &url("s3://b/my%20dir/a%20b1.parquet")
            ),
            "encoded and decoded spellings are one object"
        );
    }
}
