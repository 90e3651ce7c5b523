//! Reading config from env vars: one place for "set and not empty, else the default".
//!
//! Settings fetched at startup (secrets from Secrets Manager, `connect-secrets`) are given once
//! with [`resolve`] and read like env vars, before them.

use std::collections::HashMap;
use std::sync::OnceLock;

static RESOLVED: OnceLock<HashMap<String, String>> = OnceLock::new();

/// Settings that take the place of env vars of the same name from now on; once per process.
pub fn resolve(values: HashMap<String, String>) -> Result<(), AlreadyResolved> {
    RESOLVED.set(values).map_err(|_| AlreadyResolved)
}

/// [`resolve`] was called before in this process (its values stay).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("settings were resolved once already in this process")]
pub struct AlreadyResolved;

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

/// A setting that cannot be used: which, and why. Final: the process must not start with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name}: {reason}")]
pub struct ConfigError {
    /// The variable (or what it configures).
    pub name: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(name: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        Self {
            name: name.into(),
            reason: reason.to_string(),
        }
    }
}

/// `name` parsed as `T`, or `default` when unset or empty; the error names the variable.
pub fn parsed<T>(name: &str, default: T) -> Result<T, ConfigError>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    match optional(name) {
        Some(v) => v
            .parse()
            .map_err(|e| ConfigError::new(name, format!("{v:?}: {e}"))),
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
