//! The two syntaxes of a configuration file, TOML and JSON.

use std::path::Path;

use crate::error::ConfigError;

/// The syntax of a configuration file, told by its name's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `.toml`
    Toml,
    /// `.json`
    Json,
}

impl Format {
    /// Every format with its extension (without the dot).
    pub const ALL: [(Format, &'static str); 2] = [(Format::Toml, "toml"), (Format::Json, "json")];

    /// The format of the file at `path`, from its extension (`.toml` or
    /// `.json`, lowercase); anything else is
    /// [`ConfigError::UnknownFormat`].
    pub fn from_path(path: &Path) -> Result<Format, ConfigError> {
        let extension = path.extension().and_then(|e| e.to_str());
        Format::ALL
            .iter()
            .find(|(_, ext)| Some(*ext) == extension)
            .map(|(format, _)| *format)
            .ok_or_else(|| ConfigError::UnknownFormat {
                source_name: path.display().to_string(),
            })
    }
}

/// A serde_json error as the TOML parser words its own: position, the
/// offending line with a caret, then what is wrong.
pub(super) fn json_message(text: &str, err: &serde_json::Error) -> String {
    let full = err.to_string();
    let (line, column) = (err.line(), err.column());
    if line == 0 {
        // No position (serde_json reports none for some errors).
        return format!("JSON parse error: {full}");
    }
    let message = full
        .strip_suffix(&format!(" at line {line} column {column}"))
        .unwrap_or(&full);
    let source_line = text.lines().nth(line - 1).unwrap_or("");
    let number = line.to_string();
    let gutter = " ".repeat(number.len());
    // serde_json counts bytes; the caret goes under the character.
    let before = column.saturating_sub(1);
    let width = source_line
        .get(..before)
        .map_or(before, |prefix| prefix.chars().count());
    let caret = " ".repeat(width);
    format!(
        "JSON parse error at line {line}, column {column}\n{gutter} |\n{number} | {source_line}\n\
         {gutter} | {caret}^\n{message}"
    )
}
