//! [`SettingsError`]: invalid configuration, naming the key, for every check in `settings` and
//! every file `prepare` reads for a setting.

use thiserror::Error;

/// Invalid configuration, naming the offending key.
#[derive(Debug, Error)]
pub enum SettingsError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration key `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
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
            load => load,
        }
    }
}
