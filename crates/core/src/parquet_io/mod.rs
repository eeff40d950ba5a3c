//! Parquet I/O: what Sluice adds to DataFusion's reading and writing of Parquet.
//!
//! [`limits`] caps what a hostile file can make a reader hold; [`evolution`] unifies
//! the schemas of a source's files; [`pins`] holds a source to the objects its listing
//! found; [`copy`] is the column copy, the Parquet sink that moves unchanged column
//! chunks as compressed pages.

pub(crate) mod copy;
pub(crate) mod evolution;
pub(crate) mod format;
pub mod limits;
pub(crate) mod pins;
