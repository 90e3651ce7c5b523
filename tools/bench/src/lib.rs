//! Shared by the client tools and benchmarks.

pub mod procs;
