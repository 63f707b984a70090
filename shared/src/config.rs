//! Typed settings from environment variables. A missing or malformed variable fails at
//! start with an `Error::Config` that names it, so a bad deployment says what to fix.
//!
//! Settings structs read themselves through [`Vars`], which is the process environment
//! in Lambda and a map in tests.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use crate::{Error, Result};

/// Where settings come from.
pub trait Vars {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Vars for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Vars for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

impl Vars for [(&str, &str)] {
    fn var(&self, name: &str) -> Option<String> {
        self.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    }
}

impl<const N: usize> Vars for [(&str, &str); N] {
    fn var(&self, name: &str) -> Option<String> {
        self.as_slice().var(name)
    }
}

/// A set, non-blank variable (surrounding whitespace trimmed).
pub fn optional(vars: &(impl Vars + ?Sized), name: &str) -> Option<String> {
    vars.var(name)
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// A variable that must be set and not blank.
pub fn required(vars: &(impl Vars + ?Sized), name: &str) -> Result<String> {
    optional(vars, name).ok_or_else(|| Error::config(name, "is not set"))
}

/// A variable parsed as `T`, or `default` when unset.
pub fn parsed_or<T>(vars: &(impl Vars + ?Sized), name: &str, default: T) -> Result<T>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    match optional(vars, name) {
        None => Ok(default),
        Some(raw) => raw
            .parse()
            .map_err(|e| Error::config(name, format!("cannot parse {raw:?}: {e}"))),
    }
}

/// Whole seconds, or `default` when unset.
pub fn seconds_or(vars: &(impl Vars + ?Sized), name: &str, default: Duration) -> Result<Duration> {
    match optional(vars, name) {
        None => Ok(default),
        Some(raw) => raw
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| Error::config(name, format!("{raw:?} is not a whole number of seconds"))),
    }
}

/// `true`/`false` (also `1`/`0`, `yes`/`no`), or `default` when unset.
pub fn flag_or(vars: &(impl Vars + ?Sized), name: &str, default: bool) -> Result<bool> {
    match optional(vars, name).map(|v| v.to_ascii_lowercase()) {
        None => Ok(default),
        Some(v) if matches!(v.as_str(), "true" | "1" | "yes") => Ok(true),
        Some(v) if matches!(v.as_str(), "false" | "0" | "no") => Ok(false),
        Some(v) => Err(Error::config(name, format!("{v:?} is not true or false"))),
    }
}

/// A comma-separated list (blank items dropped); empty when unset.
pub fn list(vars: &(impl Vars + ?Sized), name: &str) -> Vec<String> {
    optional(vars, name)
        .map(|v| {
            v.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// An `http://` or `https://` base URL without a trailing slash.
pub fn base_url_or(vars: &(impl Vars + ?Sized), name: &str, default: &str) -> Result<String> {
    let url = optional(vars, name).unwrap_or_else(|| default.to_string());
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err(Error::config(
            name,
            format!("{url:?} is not an http(s) URL"),
        ));
    }
    Ok(url.trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_variable_that_is_wrong() {
        let vars = [
            ("POINTS_CAP", "lots"),
            ("BLANK", "  "),
            ("SYNC_MARGIN_SECONDS", "-3"),
        ];
        let e = parsed_or(&vars, "POINTS_CAP", 10u64).unwrap_err();
        assert!(e.to_string().contains("POINTS_CAP"), "{e}");
        assert!(
            required(&vars, "BLANK")
                .unwrap_err()
                .to_string()
                .contains("BLANK: is not set")
        );
        assert!(seconds_or(&vars, "SYNC_MARGIN_SECONDS", Duration::ZERO).is_err());
        assert_eq!(parsed_or(&vars, "UNSET", 7u64).unwrap(), 7);
    }

    #[test]
    fn lists_flags_and_urls() {
        let vars = [
            ("L", " a, ,b "),
            ("F", "Yes"),
            ("U", "http://127.0.0.1:9/v1/"),
            ("BAD", "ftp://x"),
        ];
        assert_eq!(list(&vars, "L"), ["a", "b"]);
        assert!(flag_or(&vars, "F", false).unwrap());
        assert_eq!(
            base_url_or(&vars, "U", "https://x").unwrap(),
            "http://127.0.0.1:9/v1"
        );
        assert!(base_url_or(&vars, "BAD", "https://x").is_err());
    }
}
