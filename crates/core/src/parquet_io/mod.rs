//! Parquet I/O: what Sluice adds to DataFusion's reading and writing of Parquet.
//!
//! [`limits`] caps what a hostile file can make a reader hold; [`footer`] reads a
//! file's metadata in one request, once; [`evolution`] unifies
//! the schemas of a source's files; [`pins`] holds a source to the objects its listing
//! found, and [`planned`] spares a scan of them a second listing (both through a
//! [`read_hook`] around the store); [`read_ahead`] keeps a remote scan's next row groups under way; [`copy`] is
//! the column copy, the Parquet sink that moves unchanged column
//! chunks as compressed pages.

pub(crate) mod concat;
pub(crate) mod copy;
pub(crate) mod evolution;
pub(crate) mod footer;
pub(crate) mod format;
pub mod limits;
pub(crate) mod pins;
pub(crate) mod planned;
pub(crate) mod read_ahead;
pub(crate) mod read_hook;

/// Whether the objects under `url` (a store's or an object's URL) are a round trip away:
/// on any store but local disk and memory.
pub(crate) fn is_remote(url: &str) -> bool {
    !(url.starts_with("file:") || url.starts_with("memory:"))
}
