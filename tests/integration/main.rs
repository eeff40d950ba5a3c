//! Sluice's integration tests: one binary, a module per area.

mod bad_input;
mod cache;
#[cfg(feature = "ballista")]
mod cluster;
mod column_copy;
mod common;
mod errors;
mod example;
mod faults;
mod flows;
mod frames;
mod fuzz;
mod hostile;
mod names;
mod reliability;
mod remote;
mod runtime;
mod schema;
mod settings;
mod trust;
