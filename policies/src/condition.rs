//! What a policy asks of one object besides its bucket and age: object-name globs or a prefix,
//! a size range, metadata and header values, time since the last read (`idle`). Pure: the caller describes the object
//! ([`Object`]); [`Conditions::check`] says whether it matches and, if not, which condition
//! failed and why ([`Miss`]), so `plan` and `explain` can show it.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use globset::GlobSet;

use crate::error::Problem;

/// One object as the evaluation sees it. `metadata` and `headers` are `None` when the caller
/// did not keep them (the manager keeps them only for buckets whose policies test them); a
/// condition on them then does not match, and says so.
#[derive(Debug, Clone, Copy)]
pub struct Object<'a> {
    /// The object-store bucket.
    pub bucket: &'a str,
    /// The object's name.
    pub name: &'a str,
    /// Its size at ingest, in bytes.
    pub size: u64,
    /// How long ago the tier being evaluated stored this version.
    pub age: Duration,
    /// The object-store `metadata` (key → value), if known.
    pub metadata: Option<&'a BTreeMap<String, String>>,
    /// The object-store `headers` (name → first value), if known. Names compare
    /// case-insensitively.
    pub headers: Option<&'a BTreeMap<String, String>>,
    /// How long ago the object was last read (`cim-gateway get`, the ensure service), if it
    /// ever was as far as the caller knows; `None` = never read.
    pub last_read: Option<Duration>,
}

impl Object<'_> {
    /// How long the object has gone unread on this tier: since its last read, or since the
    /// tier stored it if that is later (never read: its age). A copy stored after its last
    /// read is as fresh as the store, so an `idle` policy never acts before `after` would.
    pub fn idle(&self) -> Duration {
        self.last_read.map_or(self.age, |read| read.min(self.age))
    }
}

/// The object conditions of one policy (all optional; all given ones must hold).
#[derive(Debug, Clone, Default)]
pub struct Conditions {
    /// Globs over the whole object name (`*` matches `/` too), as written; empty = any name.
    pub names: Vec<String>,
    names_matcher: Option<GlobSet>,
    /// The object name must start with this (case-sensitive).
    pub prefix: Option<String>,
    /// At least this many bytes.
    pub min_size: Option<u64>,
    /// At most this many bytes.
    pub max_size: Option<u64>,
    /// Every key must be present in the object's metadata with exactly this value.
    pub metadata: BTreeMap<String, String>,
    /// Every header must be present (name case-insensitive) with exactly this value.
    pub headers: BTreeMap<String, String>,
    /// The object must not have been read for at least this long ([`Object::idle`]).
    pub idle: Option<Duration>,
}

impl PartialEq for Conditions {
    fn eq(&self, other: &Self) -> bool {
        // `names_matcher` is a function of `names`.
        self.names == other.names
            && self.prefix == other.prefix
            && self.min_size == other.min_size
            && self.max_size == other.max_size
            && self.metadata == other.metadata
            && self.headers == other.headers
            && self.idle == other.idle
    }
}

impl Eq for Conditions {}

/// Why an object does not meet a policy's conditions: the first condition that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Miss {
    /// No bucket glob matches.
    Bucket,
    /// No name glob matches.
    Name,
    /// The name does not start with the prefix.
    Prefix,
    /// Smaller than `min_size`.
    TooSmall,
    /// Larger than `max_size`.
    TooLarge,
    /// A metadata key is missing or has another value (the key).
    Metadata(String),
    /// A header is missing or has another value (the header name).
    Header(String),
    /// The caller did not keep the object's metadata or headers.
    Unknown(&'static str),
    /// Read more recently than `idle`: unread for this long, due in `left` if not read again.
    ReadRecently {
        /// [`Object::idle`].
        idle: Duration,
        /// `idle` of the policy minus the object's.
        left: Duration,
    },
}

impl Miss {
    /// The condition's key, as written in the configuration (`buckets`, `names`, ...).
    pub fn field(&self) -> &'static str {
        match self {
            Miss::Bucket => "buckets",
            Miss::Name => "names",
            Miss::Prefix => "prefix",
            Miss::TooSmall => "min_size",
            Miss::TooLarge => "max_size",
            Miss::Metadata(_) => "metadata",
            Miss::Header(_) => "headers",
            Miss::Unknown(field) => field,
            Miss::ReadRecently { .. } => "idle",
        }
    }
}

impl fmt::Display for Miss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Miss::Bucket => f.write_str("bucket matches no glob of `buckets`"),
            Miss::Name => f.write_str("name matches no glob of `names`"),
            Miss::Prefix => f.write_str("name does not start with `prefix`"),
            Miss::TooSmall => f.write_str("smaller than `min_size`"),
            Miss::TooLarge => f.write_str("larger than `max_size`"),
            Miss::Metadata(key) => write!(f, "metadata {key:?} missing or different"),
            Miss::Header(name) => write!(f, "header {name:?} missing or different"),
            Miss::Unknown(field) => write!(f, "the object's {field} are not known here"),
            Miss::ReadRecently { idle, left } => write!(
                f,
                "unread for {} only, less than `idle`: due in {} unless read again",
                crate::evaluate::format_duration(*idle),
                crate::evaluate::format_duration(*left)
            ),
        }
    }
}

/// The conditions as `plan` and `explain` show them: `names *.csv, prefix "cold/", size
/// 2048..=8192 B, metadata class=cold`.
impl fmt::Display for Conditions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if !self.names.is_empty() {
            parts.push(format!("names {}", self.names.join(" ")));
        }
        if let Some(prefix) = &self.prefix {
            parts.push(format!("prefix {prefix:?}"));
        }
        match (self.min_size, self.max_size) {
            (None, None) => {}
            (min, max) => parts.push(format!(
                "size {}..={} B",
                min.unwrap_or(0),
                max.map(|m| m.to_string()).unwrap_or_default()
            )),
        }
        for (what, map) in [("metadata", &self.metadata), ("header", &self.headers)] {
            for (key, value) in map {
                parts.push(format!("{what} {key}={value}"));
            }
        }
        if let Some(idle) = self.idle {
            parts.push(format!("idle {}", crate::evaluate::format_duration(idle)));
        }
        f.write_str(&parts.join(", "))
    }
}

impl Conditions {
    /// Whether any object condition is set.
    pub fn is_empty(&self) -> bool {
        *self == Conditions::default()
    }

    /// Whether the conditions test the object's metadata or headers (the manager keeps them
    /// only for the buckets of such policies).
    pub fn needs_attributes(&self) -> bool {
        !self.metadata.is_empty() || !self.headers.is_empty()
    }

    /// Whether the conditions test the time since the last read (the manager follows the
    /// access records only when an enabled policy does).
    pub fn needs_access(&self) -> bool {
        self.idle.is_some()
    }

    /// Checks the conditions on `object` in the order of [`Miss`]; the first that fails is
    /// returned. The bucket is the caller's (see [`crate::Policy::check`]).
    pub fn check(&self, object: &Object<'_>) -> Result<(), Miss> {
        if let Some(matcher) = &self.names_matcher {
            if !matcher.is_match(object.name) {
                return Err(Miss::Name);
            }
        }
        if let Some(prefix) = &self.prefix {
            if !object.name.starts_with(prefix.as_str()) {
                return Err(Miss::Prefix);
            }
        }
        if self.min_size.is_some_and(|min| object.size < min) {
            return Err(Miss::TooSmall);
        }
        if self.max_size.is_some_and(|max| object.size > max) {
            return Err(Miss::TooLarge);
        }
        if !self.metadata.is_empty() {
            let Some(metadata) = object.metadata else {
                return Err(Miss::Unknown("metadata"));
            };
            for (key, value) in &self.metadata {
                if metadata.get(key) != Some(value) {
                    return Err(Miss::Metadata(key.clone()));
                }
            }
        }
        if !self.headers.is_empty() {
            let Some(headers) = object.headers else {
                return Err(Miss::Unknown("headers"));
            };
            for (name, value) in &self.headers {
                let found = headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v);
                if found != Some(value) {
                    return Err(Miss::Header(name.clone()));
                }
            }
        }
        if let Some(wanted) = self.idle {
            let idle = object.idle();
            if idle < wanted {
                return Err(Miss::ReadRecently {
                    idle,
                    left: wanted - idle,
                });
            }
        }
        Ok(())
    }

    /// Builds validated conditions; problems go to `{base}.{field}`. `None` if any.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn build(
        base: &str,
        names: Vec<String>,
        prefix: Option<String>,
        min_size: Option<u64>,
        max_size: Option<u64>,
        metadata: BTreeMap<String, String>,
        headers: BTreeMap<String, String>,
        idle: Option<Duration>,
        problems: &mut Vec<Problem>,
    ) -> Option<Conditions> {
        let before = problems.len();
        let at = |field: &str| {
            if base.is_empty() {
                field.to_owned()
            } else {
                format!("{base}.{field}")
            }
        };
        let names_matcher = if names.is_empty() {
            None
        } else {
            compile_names(&names, &at("names"), problems)
        };
        if prefix.as_deref() == Some("") {
            problems.push(Problem::new(
                at("prefix"),
                "must not be empty (omit the key instead)",
            ));
        }
        if let (Some(min), Some(max)) = (min_size, max_size) {
            if min > max {
                problems.push(Problem::new(
                    at("max_size"),
                    format!("{max} bytes is less than `min_size` ({min} bytes)"),
                ));
            }
        }
        for (field, map) in [("metadata", &metadata), ("headers", &headers)] {
            if map.keys().any(String::is_empty) {
                problems.push(Problem::new(at(field), "a key must not be empty"));
            }
        }
        if idle == Some(Duration::ZERO) {
            problems.push(Problem::new(
                at("idle"),
                "must be longer than 0s (omit the key instead)",
            ));
        }
        if problems.len() != before {
            return None;
        }
        Some(Conditions {
            names,
            names_matcher,
            prefix,
            min_size,
            max_size,
            metadata,
            headers,
            idle,
        })
    }
}

/// Compiles object-name globs (any character; `*` also matches `/`; `\` escapes).
fn compile_names(names: &[String], path: &str, problems: &mut Vec<Problem>) -> Option<GlobSet> {
    crate::policy::compile_globs(names, path, true, |_| None, problems)
}

/// Parses a size: a whole number of bytes, or a number (fractions allowed) and a unit, with or
/// without a space: `"512"`, `"4 KiB"`, `"1.5MiB"`, `"10 MB"`. Units: `B`; `KB` `MB` `GB` `TB`
/// (powers of 1000); `KiB` `MiB` `GiB` `TiB` (powers of 1024). Case-sensitive, as written.
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let unit = unit.trim_start();
    let factor: u64 = match unit {
        "" | "B" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        _ => return None,
    };
    if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
        return None;
    }
    if let Ok(whole) = number.parse::<u64>() {
        return whole.checked_mul(factor);
    }
    let value: f64 = number.parse().ok()?;
    let bytes = value * factor as f64;
    (bytes.is_finite() && bytes < u64::MAX as f64 && bytes.fract() == 0.0).then_some(bytes as u64)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("0"), Some(0));
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("4 KiB"), Some(4096));
        assert_eq!(parse_size("4KiB"), Some(4096));
        assert_eq!(parse_size("1.5 MiB"), Some(1_572_864));
        assert_eq!(parse_size("10 MB"), Some(10_000_000));
        assert_eq!(parse_size("2 GiB"), Some(2 << 30));
        assert_eq!(parse_size("7 B"), Some(7));
        for bad in [
            "", "KiB", "4 kib", "4 K", "-1", "1.2.3 MB", "0.5 B", "4 KiB x", ".5 KiB",
        ] {
            assert_eq!(parse_size(bad), None, "{bad:?}");
        }
        assert_eq!(parse_size("99999999999 TiB"), None, "overflow");
    }

    fn conditions(f: impl FnOnce(&mut Conditions)) -> Conditions {
        let mut c = Conditions::default();
        f(&mut c);
        let mut problems = Vec::new();
        Conditions::build(
            "",
            c.names,
            c.prefix,
            c.min_size,
            c.max_size,
            c.metadata,
            c.headers,
            c.idle,
            &mut problems,
        )
        .unwrap()
    }

    fn object<'a>(
        name: &'a str,
        size: u64,
        metadata: Option<&'a BTreeMap<String, String>>,
        headers: Option<&'a BTreeMap<String, String>>,
    ) -> Object<'a> {
        Object {
            bucket: "b",
            name,
            size,
            age: Duration::ZERO,
            metadata,
            headers,
            last_read: None,
        }
    }

    #[test]
    fn each_condition_on_both_sides() {
        let names = conditions(|c| c.names = vec!["reports/*.csv".into(), "x".into()]);
        assert_eq!(
            names.check(&object("reports/a/b.csv", 0, None, None)),
            Ok(())
        );
        assert_eq!(names.check(&object("x", 0, None, None)), Ok(()));
        assert_eq!(
            names.check(&object("reports/a.txt", 0, None, None)),
            Err(Miss::Name)
        );

        let prefix = conditions(|c| c.prefix = Some("cam/".into()));
        assert_eq!(prefix.check(&object("cam/1", 0, None, None)), Ok(()));
        assert_eq!(
            prefix.check(&object("Cam/1", 0, None, None)),
            Err(Miss::Prefix)
        );

        let size = conditions(|c| {
            c.min_size = Some(10);
            c.max_size = Some(20);
        });
        assert_eq!(size.check(&object("a", 9, None, None)), Err(Miss::TooSmall));
        assert_eq!(size.check(&object("a", 10, None, None)), Ok(()));
        assert_eq!(size.check(&object("a", 20, None, None)), Ok(()));
        assert_eq!(
            size.check(&object("a", 21, None, None)),
            Err(Miss::TooLarge)
        );

        let meta = conditions(|c| {
            c.metadata.insert("class".into(), "cold".into());
            c.headers.insert("Content-Type".into(), "text/csv".into());
        });
        let cold: BTreeMap<String, String> = [("class".to_owned(), "cold".to_owned())].into();
        let hot: BTreeMap<String, String> = [("class".to_owned(), "hot".to_owned())].into();
        let csv: BTreeMap<String, String> =
            [("content-type".to_owned(), "text/csv".to_owned())].into();
        assert_eq!(meta.check(&object("a", 0, Some(&cold), Some(&csv))), Ok(()));
        assert_eq!(
            meta.check(&object("a", 0, Some(&hot), Some(&csv))),
            Err(Miss::Metadata("class".into()))
        );
        assert_eq!(
            meta.check(&object("a", 0, Some(&cold), Some(&BTreeMap::new()))),
            Err(Miss::Header("Content-Type".into()))
        );
        assert_eq!(
            meta.check(&object("a", 0, None, Some(&csv))),
            Err(Miss::Unknown("metadata"))
        );
    }

    #[test]
    fn idle_counts_from_the_last_read_or_the_store() {
        let day = Duration::from_secs(86_400);
        let idle = conditions(|c| c.idle = Some(30 * day));
        let at = |age: Duration, last_read: Option<Duration>| Object {
            age,
            last_read,
            ..object("a", 0, None, None)
        };
        // Never read: its age decides.
        assert_eq!(idle.check(&at(30 * day, None)), Ok(()));
        assert_eq!(
            idle.check(&at(29 * day, None)),
            Err(Miss::ReadRecently {
                idle: 29 * day,
                left: day
            })
        );
        // Read 2 days ago: not idle, however old.
        assert_eq!(
            idle.check(&at(400 * day, Some(2 * day))),
            Err(Miss::ReadRecently {
                idle: 2 * day,
                left: 28 * day
            })
        );
        assert_eq!(idle.check(&at(400 * day, Some(31 * day))), Ok(()));
        // Read before this tier stored it: counts from the store.
        assert!(idle.check(&at(3 * day, Some(300 * day))).is_err());
        assert_eq!(idle.to_string(), "idle 30d");
        assert_eq!(
            Miss::ReadRecently {
                idle: 2 * day,
                left: 28 * day
            }
            .to_string(),
            "unread for 2d only, less than `idle`: due in 28d unless read again"
        );
    }

    #[test]
    fn build_reports_every_problem() {
        let mut problems = Vec::new();
        let built = Conditions::build(
            "policy[0]",
            vec!["ok".into(), String::new(), "[x".into()],
            Some(String::new()),
            Some(5),
            Some(4),
            [(String::new(), "v".to_owned())].into(),
            BTreeMap::new(),
            Some(Duration::ZERO),
            &mut problems,
        );
        assert!(built.is_none());
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "policy[0].names[1]",
                "policy[0].names[2]",
                "policy[0].prefix",
                "policy[0].max_size",
                "policy[0].metadata",
                "policy[0].idle"
            ]
        );
    }
}
