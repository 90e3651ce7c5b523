//! Shared by the client tools and benchmarks.

pub mod client;
pub mod procs;

/// The tool's settings: its environment (the stack's, as `scripts/bench-*.sh` give it).
pub fn settings() -> connect_config::Settings {
    connect_config::Settings::from_process()
}
