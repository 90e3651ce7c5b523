//! Config from env vars: each value parsed once at start, with a named default.

use std::str::FromStr;

use anyhow::Context;

/// `name` parsed as `T`, or `default` when unset or empty.
pub fn var<T>(name: &str, default: T) -> anyhow::Result<T>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v
            .parse()
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("{name}={v:?}")),
        _ => Ok(default),
    }
}

pub use connect_core::env::{optional, string};

/// Whether `CONNECT_ENV` says production (stricter checks: no dev secret, no fault injection).
pub fn production() -> bool {
    optional("CONNECT_ENV").is_some_and(|v| v == "production")
}
