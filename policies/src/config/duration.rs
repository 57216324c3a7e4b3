//! The duration grammar, shared with the NixOS module.
//!
//! `nixos/durations.json` defines which strings are durations, once, as
//! data: a regular expression (POSIX extended syntax, matched against the
//! whole string; the Nix module uses it unchanged with `builtins.match`)
//! and lists of strings that must and must not be accepted. A duration key
//! is valid if the whole string matches that expression *and* humantime
//! parses it; the expression is what keeps out the spellings humantime
//! accepts but the Nix module would not (fractions, `"10 m"`, months, a
//! bare `"0"`, ...). The tests check every listed example against both.

use std::sync::LazyLock;
use std::time::Duration;

use regex::Regex;
use serde::Deserialize;

/// `nixos/durations.json`.
#[derive(Deserialize)]
pub(super) struct Grammar {
    /// The expression, without anchors.
    pub regex: String,
    /// Strings that are durations.
    #[cfg_attr(not(test), allow(dead_code))]
    pub valid: Vec<String>,
    /// Strings that are not.
    #[cfg_attr(not(test), allow(dead_code))]
    pub invalid: Vec<String>,
}

/// The grammar, parsed once.
pub(super) static GRAMMAR: LazyLock<Grammar> = LazyLock::new(|| {
    serde_json::from_str(include_str!("../../../nixos/durations.json"))
        .expect("nixos/durations.json is valid (checked by the tests)")
});

/// The grammar's expression, matching whole strings only.
pub(super) static PATTERN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!("^(?:{})$", GRAMMAR.regex))
        .expect("the regex of nixos/durations.json compiles (checked by the tests)")
});

/// `text` as a duration, if it is one.
pub(super) fn parse(text: &str) -> Option<Duration> {
    if !PATTERN.is_match(text) {
        return None;
    }
    humantime::parse_duration(text).ok()
}
