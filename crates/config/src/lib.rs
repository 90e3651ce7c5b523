//! Settings: the one place a Connect Chat process reads its environment.
//!
//! A binary takes a [`Settings`] once at start ([`Settings::from_process`]; the Lambdas then add
//! the secrets they fetched, `connect_secrets::load`), builds its one `Config` from it (each
//! library's settings struct has a `from_settings` constructor beside its defaults and docs),
//! and passes plain structs down from there. No library reads the environment, and nothing is
//! global: a test builds the `Settings` it wants ([`Settings::from_pairs`]).
//!
//! A setting is "set" when it is present and not empty; every reader names its default. The
//! reference of every setting is `docs/configuration.md`, checked against the code by
//! `tests/template.rs`.

use std::collections::HashMap;
use std::str::FromStr;

/// A snapshot of a process's settings: its environment, and what was fetched at start in place
/// of an environment variable of the same name (secrets).
#[derive(Debug, Clone, Default)]
pub struct Settings {
    vars: HashMap<String, String>,
}

impl Settings {
    /// The process's environment, read now (the only read of it).
    pub fn from_process() -> Self {
        Self {
            vars: std::env::vars().collect(),
        }
    }

    /// Exactly these settings (tests, tools that configure a client of their own).
    pub fn from_pairs<K, V>(pairs: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: Into<String>,
        V: Into<String>,
    {
        Self {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// These settings with `overrides` in place of the ones of the same names.
    #[must_use]
    pub fn with<K, V>(mut self, overrides: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: Into<String>,
        V: Into<String>,
    {
        self.vars
            .extend(overrides.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// `name` if set and not empty.
    pub fn optional(&self, name: &str) -> Option<String> {
        self.vars.get(name).filter(|v| !v.is_empty()).cloned()
    }

    /// `name`, or `default` when unset or empty.
    pub fn string(&self, name: &str, default: &str) -> String {
        self.optional(name).unwrap_or_else(|| default.to_owned())
    }

    /// `name` parsed as `T`, or `default` when unset or empty; the error names the setting.
    pub fn parsed<T>(&self, name: &str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        match self.optional(name) {
            Some(v) => v
                .parse()
                .map_err(|e| ConfigError::new(name, format!("{v:?}: {e}"))),
            None => Ok(default),
        }
    }

    /// Whether `CONNECT_ENV=local`: the local stack, said explicitly. Only there are the
    /// documented development secrets and the test switches accepted.
    pub fn local(&self) -> bool {
        self.optional("CONNECT_ENV").is_some_and(|v| v == "local")
    }

    /// Whether production's checks apply: everywhere but [`Self::local`] (`CONNECT_ENV` unset,
    /// `production`, `staging`, …). A deployment that forgets a secret fails to start rather
    /// than running with the public development value.
    pub fn production(&self) -> bool {
        !self.local()
    }
}

/// A setting that cannot be used: which, and why. Final: the process must not start with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name}: {reason}")]
pub struct ConfigError {
    /// The setting (or what it configures).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_is_unset_defaults_apply_and_a_bad_value_names_its_setting() {
        let s = Settings::from_pairs([("A", "7"), ("B", ""), ("C", "x")]);
        assert_eq!(s.parsed("A", 1u32), Ok(7));
        assert_eq!(s.parsed("B", 1u32), Ok(1));
        assert_eq!(s.string("B", "d"), "d");
        assert_eq!(s.parsed("unset", 3u32), Ok(3));
        let e = s.parsed("C", 1u32).unwrap_err();
        assert_eq!(e.name, "C");
        assert!(s.optional("B").is_none());
    }

    #[test]
    fn overrides_win_and_only_connect_env_local_is_local() {
        let s = Settings::from_pairs([("X", "env")]).with([("X", "secret")]);
        assert_eq!(s.string("X", ""), "secret");
        assert!(s.production());
        assert!(Settings::from_pairs([("CONNECT_ENV", "local")]).local());
        assert!(Settings::from_pairs([("CONNECT_ENV", "staging")]).production());
    }
}
