//! What the settings tell a person: a refused value with its value and source
//! ([`Settings::explain`]), and the effective configuration as TOML that loads back to the same
//! settings ([`Settings::to_toml`], what `check-config` prints).

use toml::Table;

use crate::settings::error::{Problem, SettingsError};
use crate::settings::sections::Settings;
use crate::settings::tree;

/// Longest value a message shows (a list of API keys can be long).
const MAX_SHOWN: usize = 200;

impl Settings {
    /// `error` with the value and the source of each key it names: for the errors of `prepare`,
    /// which know only the key.
    pub fn explain(&self, error: SettingsError) -> SettingsError {
        SettingsError::Problems(self.problems(error))
    }

    pub(crate) fn problems(&self, error: SettingsError) -> Vec<Problem> {
        match error {
            SettingsError::Invalid { key, message } => vec![self.problem(key, message)],
            SettingsError::Problems(problems) => problems,
        }
    }

    pub(crate) fn problem(&self, key: &str, message: String) -> Problem {
        let value = (self.table().ok())
            .and_then(|table| tree::get(&table, key).cloned())
            .filter(|value| !value.is_table())
            .map(|value| {
                let shown = tree::shown(key, &value);
                match shown.char_indices().nth(MAX_SHOWN) {
                    Some((cut, _)) => format!("{}…", &shown[..cut]),
                    None => shown,
                }
            });
        Problem {
            key: key.to_string(),
            value,
            source: tree::source_of(&self.origins, key),
            message,
        }
    }

    /// The settings as a TOML tree; secrets left out.
    fn table(&self) -> Result<Table, toml::ser::Error> {
        Table::try_from(self)
    }

    /// The effective configuration as TOML: pasted into a file, it loads to the same settings.
    /// Secrets are left out (their keys are named in a comment), so they load back as unset.
    pub fn to_toml(&self) -> String {
        let hidden = [
            ("auth.jwt.hs256_secret", self.auth.jwt.hs256_secret.is_set()),
            ("broker.redis_url", self.broker.redis_url.url_has_password()),
            (
                "broker.redis_cluster_urls",
                (self.broker.redis_cluster_urls.iter()).any(|u| u.url_has_password()),
            ),
        ];
        let hidden = hidden
            .into_iter()
            .filter(|(_, hidden)| *hidden)
            .map(|(key, _)| key);
        let mut out = String::from("# The effective configuration (defaults, files, environment).\n");
        for key in hidden {
            let source = tree::source_of(&self.origins, key);
            out.push_str(&format!("# {key} = <redacted> ({source}): not printed\n"));
        }
        out.push('\n');
        // Serializing plain data with string keys cannot fail; say so rather than panic.
        match toml::to_string(self) {
            Ok(text) => out.push_str(&text),
            Err(e) => out.push_str(&format!("# cannot print the settings: {e}\n")),
        }
        out
    }
}
