//! The plan layer: Sluice's nodes in DataFusion plans.
//!
//! A task's fragment ends in a [`boundary`] node that reports every execution of the
//! task's output through the seam ([`crate::seam`]); [`concat`] stacks frames. The
//! checkpoint tee, also a plan node, lives with the checkpoints
//! ([`crate::checkpoint`]). Nothing here imports the runtime.

pub mod boundary;
pub mod concat;
