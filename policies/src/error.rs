//! Errors from parsing and validating a configuration file.

use std::fmt;

/// One semantic problem in a configuration file, located by the TOML path of
/// the offending key (the same for a JSON file).
///
/// Paths use the TOML names: `nats.url`, `tiers.<name>.<field>`,
/// `policy[<index>].<field>` (zero-based index into the `[[policy]]` array),
/// `policy[<index>].buckets[<index>]`, `metrics.listen`,
/// `upload.part_size_mib`, ...
///
/// Displays as `{path}: {message}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Problem {
    /// TOML path of the offending key, e.g. `policy[0].after`.
    pub path: String,
    /// What is wrong, e.g. `"3x" is not a duration (examples: "10m", "30d", "0s")`.
    pub message: String,
}

impl Problem {
    /// A problem at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl std::error::Error for Problem {}

/// Why a configuration could not be loaded.
///
/// `Display` starts with the source name (usually the file path). For
/// [`ConfigError::Invalid`] it lists every problem, one per line:
///
/// ```text
/// /etc/cim/cim.toml: 2 problems
///   policy[0].to: no tier named "wasabii" (tiers: hub, leaf, wasabi)
///   policy[1].after: "3x" is not a duration (examples: "10m", "30d", "0s")
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file name does not say whether the file is TOML or JSON.
    #[error(
        "{source_name}: unknown configuration file type (the name must end in .toml or .json)"
    )]
    UnknownFormat {
        /// The file path.
        source_name: String,
    },
    /// TOML or JSON syntax or shape error (unknown field, wrong type, missing
    /// required key). Only the first such error is reported; the message
    /// comes from the parser and includes the line and column.
    #[error("{source_name}: {message}")]
    Syntax {
        /// Where the text came from (usually the file path).
        source_name: String,
        /// The parser's message, including line and column.
        message: String,
    },
    /// The file is well-formed TOML or JSON of the right shape but has semantic
    /// problems: all of them are listed, each with its path.
    #[error("{source_name}: {}", render_problems(.problems))]
    Invalid {
        /// Where the text came from (usually the file path).
        source_name: String,
        /// Every problem found, in file order (sections, then keys).
        problems: Vec<Problem>,
    },
}

impl ConfigError {
    /// The semantic problems (empty for a syntax error or an unknown format).
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::UnknownFormat { .. } | ConfigError::Syntax { .. } => &[],
            ConfigError::Invalid { problems, .. } => problems,
        }
    }

    /// Where the text came from (usually the file path).
    pub fn source_name(&self) -> &str {
        match self {
            ConfigError::UnknownFormat { source_name }
            | ConfigError::Syntax { source_name, .. }
            | ConfigError::Invalid { source_name, .. } => source_name,
        }
    }
}

fn render_problems(problems: &[Problem]) -> String {
    let mut out = match problems.len() {
        1 => "1 problem".to_owned(),
        n => format!("{n} problems"),
    };
    for problem in problems {
        out.push_str("\n  ");
        out.push_str(&problem.to_string());
    }
    out
}
