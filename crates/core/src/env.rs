//! Reading config from env vars: one place for "set and not empty, else the default".
//!
//! Settings fetched at startup (secrets from Secrets Manager, `connect-secrets`) are given once
//! with [`resolve`] and read like env vars, before them.

use std::collections::HashMap;
use std::sync::OnceLock;

static RESOLVED: OnceLock<HashMap<String, String>> = OnceLock::new();

/// Settings that take the place of env vars of the same name from now on; once per process
/// (`Err` with the values when something was resolved already).
pub fn resolve(values: HashMap<String, String>) -> Result<(), HashMap<String, String>> {
    RESOLVED.set(values)
}

/// `name` if resolved or set, and not empty.
pub fn optional(name: &str) -> Option<String> {
    RESOLVED
        .get()
        .and_then(|r| r.get(name).cloned())
        .or_else(|| std::env::var(name).ok())
        .filter(|v| !v.is_empty())
}

/// `name`, or `default` when unset or empty.
pub fn string(name: &str, default: &str) -> String {
    optional(name).unwrap_or_else(|| default.to_owned())
}

/// `name` parsed as `T`, or `default` when unset or empty; the error names the variable.
pub fn parsed<T>(name: &str, default: T) -> Result<T, String>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    match optional(name) {
        Some(v) => v.parse().map_err(|e| format!("{name}={v:?}: {e}")),
        None => Ok(default),
    }
}

/// Whether `CONNECT_ENV=local`: the local stack, said explicitly. Only there are the documented
/// development secrets and the test switches accepted.
pub fn local() -> bool {
    optional("CONNECT_ENV").is_some_and(|v| v == "local")
}

/// Whether production's checks apply: everywhere but [`local`] (`CONNECT_ENV` unset, `production`,
/// `staging`, …). A deployment that forgets a secret fails to start rather than running with the
/// public development value.
pub fn production() -> bool {
    !local()
}
