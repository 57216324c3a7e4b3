//! Which objects of a bucket a restore takes: every one, those under a name prefix, those whose
//! name matches one of a few globs, or both (prefix and glob).
//!
//! The globs follow rclone's filter rules, which is what people moving data between object
//! stores already type: `*` and `?` stay within one path element (`/` separates elements), `**`
//! crosses them, `{a,b}` and `[ab]` work; a pattern that starts with `/` is anchored at the start
//! of the name, any other matches whole trailing elements — `*.csv` takes `a.csv` and
//! `reports/2026/a.csv`, `2026/*.csv` takes `reports/2026/a.csv`. The prefix is a plain string
//! prefix of the name, as S3's and `mc ls`'s.

use std::fmt;

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};

use crate::Error;

/// A selection of object names (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct Selection {
    prefix: Option<String>,
    patterns: Vec<String>,
    globs: Option<GlobSet>,
}

/// Parses one `--match` pattern (see the module docs) into the globs that stand for it; the
/// message says what is wrong with it.
pub fn globs(pattern: &str) -> Result<Vec<Glob>, String> {
    if pattern.is_empty() {
        return Err("an empty pattern matches nothing".into());
    }
    let build = |glob: &str| {
        GlobBuilder::new(glob)
            .literal_separator(true)
            .backslash_escape(true)
            .build()
            .map_err(|e| e.kind().to_string())
    };
    match pattern.strip_prefix('/') {
        Some(anchored) => Ok(vec![build(anchored)?]),
        // Whole trailing path elements: the name itself, or any `…/pattern` (two globs, not one
        // `{p,**/p}`: globset allows no alternation inside another).
        None => Ok(vec![build(pattern)?, build(&format!("**/{pattern}"))?]),
    }
}

impl Selection {
    /// Every object.
    pub fn all() -> Selection {
        Selection::default()
    }

    /// Objects whose name starts with `prefix` (if any) and matches one of `patterns` (if any;
    /// each checked with [`glob`]).
    pub fn new(prefix: Option<String>, patterns: Vec<String>) -> Result<Selection, Error> {
        let globs = if patterns.is_empty() {
            None
        } else {
            let mut set = GlobSetBuilder::new();
            for pattern in &patterns {
                for glob in globs(pattern).map_err(|why| Error::Config {
                    message: format!("--match {pattern:?}: {why}"),
                })? {
                    set.add(glob);
                }
            }
            Some(set.build().map_err(|e| Error::Config {
                message: format!("--match {patterns:?}: {e}"),
            })?)
        };
        Ok(Selection {
            prefix: prefix.filter(|p| !p.is_empty()),
            patterns,
            globs,
        })
    }

    /// The name prefix every selected name starts with ("" for none).
    pub fn prefix(&self) -> &str {
        self.prefix.as_deref().unwrap_or("")
    }

    /// Whether the object named `name` is selected.
    pub fn matches(&self, name: &str) -> bool {
        name.starts_with(self.prefix()) && self.globs.as_ref().is_none_or(|g| g.is_match(name))
    }
}

impl fmt::Display for Selection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.prefix, self.patterns.as_slice()) {
            (None, []) => write!(f, "every object"),
            (Some(p), []) => write!(f, "prefix {p:?}"),
            (None, globs) => write!(f, "--match {}", globs.join(", ")),
            (Some(p), globs) => write!(f, "prefix {p:?} and --match {}", globs.join(", ")),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn select(prefix: Option<&str>, patterns: &[&str]) -> Selection {
        Selection::new(
            prefix.map(str::to_string),
            patterns.iter().map(|p| p.to_string()).collect(),
        )
        .unwrap()
    }

    #[test]
    fn globs_match_whole_trailing_elements_like_rclone() {
        let csv = select(None, &["*.csv"]);
        for name in ["a.csv", "reports/a.csv", "reports/2026/a b.csv"] {
            assert!(csv.matches(name), "{name}");
        }
        for name in ["a.csv.bak", "a.json", "reports/a.csv/x"] {
            assert!(!csv.matches(name), "{name}");
        }
        let dir = select(None, &["2026/*.csv"]);
        assert!(dir.matches("reports/2026/a.csv"));
        assert!(dir.matches("2026/a.csv"));
        assert!(!dir.matches("reports/x2026/a.csv"), "whole elements only");
        assert!(
            !dir.matches("reports/2026/deep/a.csv"),
            "* stays in one element"
        );
        let deep = select(None, &["2026/**/*.csv"]);
        assert!(deep.matches("reports/2026/deep/er/a.csv"));
    }

    #[test]
    fn a_leading_slash_anchors_at_the_start_of_the_name() {
        let anchored = select(None, &["/reports/*.csv"]);
        assert!(anchored.matches("reports/a.csv"));
        assert!(!anchored.matches("old/reports/a.csv"));
        assert!(!anchored.matches("reports/2026/a.csv"));
    }

    #[test]
    fn prefix_and_globs_combine_and_any_glob_will_do() {
        let s = select(Some("dir/"), &["*.csv", "*.json"]);
        assert!(s.matches("dir/a.csv") && s.matches("dir/x/b.json"));
        assert!(!s.matches("dir/a.txt"), "no glob matches");
        assert!(!s.matches("other/a.csv"), "outside the prefix");
        let prefix = select(Some("dir/a"), &[]);
        assert!(prefix.matches("dir/a") && prefix.matches("dir/abc/d"));
        assert!(!prefix.matches("dir/b"));
        assert!(Selection::all().matches("anything/at all"));
        assert_eq!(s.to_string(), "prefix \"dir/\" and --match *.csv, *.json");
    }

    #[test]
    fn bad_patterns_are_refused_with_the_reason() {
        assert!(globs("").is_err());
        let unclosed = globs("a[bc").unwrap_err();
        assert!(unclosed.contains("unclosed"), "{unclosed}");
        assert!(globs("{a,b").is_err());
        assert!(globs("literal \\* star").is_ok());
        assert!(globs("{a,b}/*.csv").is_ok(), "alternation works");
        assert!(select(None, &["{a,b}/*.csv"]).matches("x/b/c.csv"));
    }
}
