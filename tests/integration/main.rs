//! Sluice's integration tests: one binary, a module per area.

mod bad_input;
mod cache;
mod common;
mod example;
mod flows;
mod frames;
mod fuzz;
mod names;
mod remote;
mod runtime;
mod schema;
