//! Reading config from env vars: one place for "set and not empty, else the default".

/// `name` if set and not empty.
pub fn optional(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// `name`, or `default` when unset or empty.
pub fn string(name: &str, default: &str) -> String {
    optional(name).unwrap_or_else(|| default.to_owned())
}
