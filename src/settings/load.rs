//! The layering: compiled-in defaults, the optional files, the environment (and `RUST_LOG`,
//! which replaces `log.level`). Every layer is merged as a TOML tree and checked key by key, so
//! that all unknown keys and bad values are reported at once, each with where it came from;
//! then the values that depend on others are filled in and everything is validated.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use toml::{Table, Value};

use crate::settings::env;
use crate::settings::error::{Problem, SettingsError, Source};
use crate::settings::sections::{Settings, FRAME_ENVELOPE_BYTES};
use crate::settings::tree::{self, defaults, TABLE_LISTS};

/// The working directory's optional file, loaded after the built-in defaults.
const LOCAL_FILE: &str = "config/default.toml";

/// The settings as the layers set them, before they are typed.
struct Layers {
    merged: Table,
    origins: BTreeMap<String, Source>,
    problems: Vec<Problem>,
}

impl Settings {
    /// The full layering used by the binary: defaults ← ./config/default.toml ← `file` ← env.
    pub fn load(file: Option<&Path>) -> Result<Settings, SettingsError> {
        let mut layers = Layers::new();
        layers.file(Path::new(LOCAL_FILE), false);
        if let Some(file) = file {
            layers.file(file, true);
        }
        // Not `env::vars()`, which panics on a value that is not UTF-8 (of any variable).
        let vars =
            std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
        layers.env(vars);
        let mut settings = layers.settings()?;
        settings.config_file = file.map(Path::to_path_buf);
        Ok(settings)
    }

    /// Built-in defaults overlaid with `extra` TOML text; no files, no environment.
    /// For embedding and tests.
    pub fn from_toml(extra: &str) -> Result<Settings, SettingsError> {
        let mut layers = Layers::new();
        layers.text(extra, Source::File(PathBuf::from("<TOML text>")));
        layers.settings()
    }

    /// Fills in the values that depend on others, then validates: every failed check.
    fn finish(&mut self) -> Vec<Problem> {
        // Lists from env vars are split on commas as is: "BTC-USD, ETH-USD" must still work.
        let lists = [
            &mut self.feed.symbols,
            &mut self.server.allowed_origins,
            &mut self.server.trusted_proxies,
            &mut self.auth.anonymous.subscribe,
            &mut self.auth.anonymous.publish,
        ];
        for list in lists {
            list.iter_mut().for_each(|item| *item = item.trim().to_string());
        }
        if self.http.max_message_bytes == 0 {
            let room = self.queue.max_bytes.saturating_sub(FRAME_ENVELOPE_BYTES);
            self.http.max_message_bytes = room.max(1);
        }
        let errors = self.validate();
        errors.into_iter().flat_map(|e| self.problems(e)).collect()
    }
}

/// In key order (a file's own problems first), so a report reads the same every time.
fn sorted(mut problems: Vec<Problem>) -> SettingsError {
    problems.sort_by(|a, b| a.key.cmp(&b.key));
    SettingsError::Problems(problems)
}

fn typed(table: Table) -> Result<Settings, toml::de::Error> {
    Value::Table(table).try_into()
}

/// The defaults with only `key` set to `value`, typed.
fn alone(key: &str, value: Value) -> Result<Settings, toml::de::Error> {
    let mut alone = defaults().clone();
    tree::set(&mut alone, key, value);
    typed(alone)
}

impl Layers {
    fn new() -> Layers {
        Layers {
            merged: defaults().clone(),
            origins: BTreeMap::new(),
            problems: Vec::new(),
        }
    }

    fn file(&mut self, path: &Path, required: bool) {
        let source = Source::File(path.to_path_buf());
        let message = match std::fs::read_to_string(path) {
            Ok(text) => return self.text(&text, source),
            Err(e) if e.kind() == ErrorKind::NotFound && !required => return,
            Err(e) if e.kind() == ErrorKind::NotFound => "not found".to_string(),
            Err(e) => format!("cannot be read: {e}"),
        };
        self.problems.push(Problem {
            key: String::new(),
            value: None,
            source,
            message,
        });
    }

    fn text(&mut self, text: &str, source: Source) {
        match text.parse::<Table>() {
            Ok(table) => tree::merge(&mut self.merged, table, &source, &mut self.origins, ""),
            Err(e) => {
                let at = e.span().map_or(0, |span| span.start).min(text.len());
                let line = text[..at].matches('\n').count() + 1;
                let column = at - text[..at].rfind('\n').map_or(0, |n| n + 1) + 1;
                self.problems.push(Problem {
                    key: String::new(),
                    value: None,
                    source,
                    message: format!(
                        "not valid TOML at line {line}, column {column}: {}",
                        e.message().trim()
                    ),
                });
            }
        }
    }

    fn env(&mut self, vars: impl IntoIterator<Item = (String, String)>) {
        let vars: Vec<(String, String)> = vars.into_iter().collect();
        let (values, problems) = env::layer(vars.iter().cloned());
        for v in values {
            self.set(&v.key, v.value, v.source);
        }
        self.problems.extend(problems);
        // RUST_LOG is the usual way to turn logs up; it replaces log.level, and an invalid one
        // is refused like an invalid log.level rather than ignored.
        if let Some((name, filter)) = vars
            .into_iter()
            .find(|(k, v)| k == "RUST_LOG" && !v.trim().is_empty())
        {
            self.set("log.level", Value::String(filter), Source::Env(name));
        }
    }

    fn set(&mut self, key: &str, value: Value, source: Source) {
        tree::set(&mut self.merged, key, value);
        self.origins.insert(key.to_string(), source);
    }

    /// Typed and validated settings, or every problem found.
    fn settings(mut self) -> Result<Settings, SettingsError> {
        tree::check(&self.merged, defaults(), "", &self.origins, &mut self.problems);
        let mut settings = match typed(self.merged.clone()) {
            Ok(settings) if self.problems.is_empty() => settings,
            whole => {
                self.isolate();
                if self.problems.is_empty() {
                    self.problems.push(Problem {
                        key: "(settings)".to_string(),
                        value: None,
                        source: Source::Default,
                        message: whole.err().map_or_else(String::new, |e| e.message().to_string()),
                    });
                }
                // The values that are fine go on to validation, so that one report holds every
                // problem, not only those of the first stage that found one.
                match typed(self.good()) {
                    Ok(settings) => settings,
                    Err(_) => return Err(sorted(self.problems)),
                }
            }
        };
        settings.origins = self.origins;
        let mut problems = self.problems;
        let bad: Vec<String> = problems.iter().map(|p| p.key.clone()).collect();
        let more = settings.finish().into_iter().filter(|p| !bad.contains(&p.key));
        problems.extend(more.collect::<Vec<_>>());
        if problems.is_empty() {
            Ok(settings)
        } else {
            Err(sorted(problems))
        }
    }

    /// Whether `key` is, holds or is held by a key already found bad.
    fn related(&self, key: &str) -> bool {
        (self.problems.iter()).any(|p| {
            let b = &p.key;
            b == key || key.starts_with(&format!("{b}.")) || b.starts_with(&format!("{key}."))
        })
    }

    /// The defaults with every value set that is not related to a problem.
    fn good(&self) -> Table {
        let mut good = defaults().clone();
        for key in self.origins.keys().filter(|key| !self.related(key)) {
            if let Some(value) = tree::get(&self.merged, key) {
                tree::set(&mut good, key, value.clone());
            }
        }
        good
    }

    /// Types each value set on its own over the defaults: the values that fail alone are the
    /// culprits, so every one of them is reported, not only the first serde meets.
    fn isolate(&mut self) {
        let suspects: Vec<(&String, &Source)> = self
            .origins
            .iter()
            .filter(|(key, _)| !self.related(key))
            .collect();
        let mut found = Vec::new();
        for (key, source) in suspects {
            let Some(value) = tree::get(&self.merged, key) else {
                continue;
            };
            let Err(e) = alone(key, value.clone()) else {
                continue;
            };
            // In a list of tables, the entries that fail alone, by index.
            let entries = (value.as_array().filter(|_| TABLE_LISTS.contains(&key.as_str())))
                .into_iter()
                .flatten()
                .enumerate()
                .filter_map(|(i, entry)| {
                    let e = alone(key, Value::Array(vec![entry.clone()])).err()?;
                    Some((format!("{key}[{i}]"), entry, e))
                });
            let mut culprits: Vec<(String, &Value, toml::de::Error)> = entries.collect();
            if culprits.is_empty() {
                culprits.push((key.clone(), value, e));
            }
            for (shown_key, value, e) in culprits {
                found.push(Problem {
                    value: Some(tree::shown(key, value)),
                    key: shown_key,
                    source: source.clone(),
                    message: e.message().trim().to_string(),
                });
            }
        }
        self.problems.extend(found);
    }
}
