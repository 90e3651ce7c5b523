//! Shared by the client tools and benchmarks.

pub mod client;
pub mod procs;
