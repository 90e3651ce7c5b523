//! Config from env vars: each value parsed once at start, with a named default.

use std::str::FromStr;

/// `name` parsed as `T`, or `default` when unset or empty.
pub fn var<T>(name: &str, default: T) -> anyhow::Result<T>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    connect_core::env::parsed(name, default).map_err(anyhow::Error::msg)
}

pub use connect_core::env::{optional, production, string};
