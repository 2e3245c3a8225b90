//! [`SettingsError`]: invalid configuration, for every check in `settings` and every file
//! `prepare` reads for a setting; [`Problem`]: one finding as the user reads it (key, value,
//! where the value came from, what is allowed); [`Source`]: where a value came from.

use std::fmt;
use std::path::PathBuf;

use thiserror::Error;

/// Invalid configuration.
#[derive(Debug, Error)]
pub enum SettingsError {
    /// One value refused by a check that knows only the key (validation, `prepare`);
    /// `Settings::explain` adds its value and source.
    #[error("configuration key `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
    /// Everything found wrong with a configuration, each with its value and source.
    #[error("{}", list(.0))]
    Problems(Vec<Problem>),
}

fn list(problems: &[Problem]) -> String {
    match problems {
        [one] => one.to_string(),
        many => {
            let lines: Vec<String> = many.iter().map(|p| format!("  {p}")).collect();
            format!("{} configuration errors:\n{}", many.len(), lines.join("\n"))
        }
    }
}

impl SettingsError {
    pub(crate) fn invalid(key: &'static str, message: impl Into<String>) -> SettingsError {
        SettingsError::Invalid {
            key,
            message: message.into(),
        }
    }

    /// The same error with `prefix` before its message: what a list entry's failure says
    /// about the entry it is in (`"name: publish "`).
    pub(crate) fn prefixed(self, prefix: &str) -> SettingsError {
        match self {
            SettingsError::Invalid { key, message } => {
                SettingsError::invalid(key, format!("{prefix}{message}"))
            }
            problems => problems,
        }
    }
}

/// Where a value came from: what a user must edit to change it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The compiled-in defaults (`config/default.toml` of the build).
    Default,
    /// A configuration file, its path as given (`--config`, or `config/default.toml` in the
    /// working directory).
    File(PathBuf),
    /// An environment variable, by name.
    Env(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("built-in default"),
            Source::File(path) => write!(f, "set in {}", path.display()),
            Source::Env(name) => write!(f, "set by {name}"),
        }
    }
}

/// One thing wrong (or, as a warning, doubtful) in a configuration.
#[derive(Debug, Clone)]
pub struct Problem {
    /// Dotted key (`log.format`); empty for a whole file (not found, not TOML).
    pub key: String,
    /// The value as TOML (or as the environment gave it); `None` for a section, or hidden.
    pub value: Option<String>,
    pub source: Source,
    /// What is wrong and what is allowed.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            let file = match &self.source {
                Source::File(path) => path.display().to_string(),
                other => other.to_string(),
            };
            return write!(f, "configuration file {file}: {}", self.message);
        }
        write!(f, "configuration key `{}`", self.key)?;
        if let Some(value) = &self.value {
            write!(f, " = {value}")?;
        }
        if self.value.is_none() && self.source == Source::Default {
            // A section whose keys are all defaults: the message names what to set.
            return write!(f, ": {}", self.message);
        }
        write!(f, " ({}): {}", self.source, self.message)
    }
}
