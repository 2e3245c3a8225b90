//! The settings as a TOML tree, before they are typed: the defaults' tree is the schema (every
//! key exists there, with the TOML type it takes), layers are merged into a copy of it key by
//! key, and each value set is checked against the type of its default, so that every unknown
//! key and every value of the wrong type is found at once, with where it came from.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use toml::{Table, Value};

use crate::settings::error::{Problem, Source};
use crate::settings::sections::{Secret, DEFAULTS_TOML};

/// The keys that hold lists of tables: an empty default list cannot say so itself, and the
/// environment cannot set them.
pub(crate) const TABLE_LISTS: [&str; 4] = ["queue.policies", "history.policies", "auth.api_keys", "webhooks"];

/// The compiled-in defaults as a tree.
pub(crate) fn defaults() -> &'static Table {
    static DEFAULTS: OnceLock<Table> = OnceLock::new();
    DEFAULTS.get_or_init(|| DEFAULTS_TOML.parse().expect("the built-in defaults are TOML"))
}

pub(crate) fn get<'a>(table: &'a Table, key: &str) -> Option<&'a Value> {
    let mut parts = key.split('.');
    let mut value = table.get(parts.next()?)?;
    for part in parts {
        value = value.as_table()?.get(part)?;
    }
    Some(value)
}

/// Sets `key`, creating (or replacing with) tables on the way.
pub(crate) fn set(table: &mut Table, key: &str, value: Value) {
    match key.split_once('.') {
        None => {
            table.insert(key.to_string(), value);
        }
        Some((head, rest)) => {
            let entry = table
                .entry(head.to_string())
                .or_insert_with(|| Value::Table(Table::new()));
            if !entry.is_table() {
                *entry = Value::Table(Table::new());
            }
            if let Value::Table(inner) = entry {
                set(inner, rest, value);
            }
        }
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// Overlays `layer` on `base`: tables merge key by key, anything else (lists too) replaces.
/// Every value set is recorded in `origins` as coming from `source`.
pub(crate) fn merge(
    base: &mut Table,
    layer: Table,
    source: &Source,
    origins: &mut BTreeMap<String, Source>,
    prefix: &str,
) {
    for (k, v) in layer {
        let key = join(prefix, &k);
        match (base.get_mut(&k), v) {
            (Some(Value::Table(inner)), Value::Table(v)) => merge(inner, v, source, origins, &key),
            (_, v) => {
                origins.retain(|o, _| !(o == &key || o.starts_with(&format!("{key}."))));
                origins.insert(key, source.clone());
                base.insert(k, v);
            }
        }
    }
}

/// The value as a message shows it: TOML, with a secret hidden (the rules of [`Secret`]).
pub(crate) fn shown(key: &str, value: &Value) -> String {
    let hidden = match value.as_str() {
        Some(s) if key.starts_with("auth.jwt.hs256_secret") => !s.is_empty(),
        Some(s) if key.starts_with("broker.redis_url") => Secret(s.to_string()).url_has_password(),
        // A seed list, or one of its URLs (an environment variable gives the list as text).
        _ if key.starts_with("broker.redis_cluster_urls") => {
            let urls = value.as_array().map_or_else(|| vec![value.clone()], Clone::clone);
            (urls.iter()).any(|u| {
                u.as_str()
                    .is_none_or(|s| Secret(s.to_string()).url_has_password())
            })
        }
        _ => false,
    };
    if hidden {
        return "<redacted>".to_string();
    }
    value.to_string()
}

/// What a value of this key must be, from the type of its default.
pub(crate) fn expected(key: &str, default: &Value) -> &'static str {
    match default {
        Value::String(_) => "must be a string (in quotes in a file)",
        Value::Integer(_) => "must be a whole number, 0 or more",
        Value::Float(_) => "must be a number",
        Value::Boolean(_) => "must be true or false",
        Value::Array(_) if TABLE_LISTS.contains(&key) => "must be a list of tables",
        Value::Array(_) => "must be a list of strings, e.g. [\"a\", \"b\"]",
        Value::Table(_) => "is a section: set the keys in it, not the section itself",
        Value::Datetime(_) => "must be a date",
    }
}

fn fits(key: &str, default: &Value, value: &Value) -> bool {
    match (default, value) {
        (Value::String(_), Value::String(_)) | (Value::Boolean(_), Value::Boolean(_)) => true,
        (Value::Integer(_), Value::Integer(n)) => *n >= 0,
        (Value::Float(_), Value::Float(_) | Value::Integer(_)) => true,
        (Value::Array(_), Value::Array(items)) if TABLE_LISTS.contains(&key) => {
            items.iter().all(Value::is_table)
        }
        (Value::Array(_), Value::Array(items)) => items.iter().all(Value::is_str),
        (Value::Table(_), Value::Table(_)) => true,
        _ => false,
    }
}

/// Why `key` is not a key of the settings, and which keys there are.
pub(crate) fn unknown(key: &str) -> String {
    let parts: Vec<&str> = key.split('.').collect();
    // The deepest section that exists on the way to `key`.
    let (mut table, mut depth) = (defaults(), 0);
    while let Some(inner) = parts.get(depth).and_then(|p| table.get(*p)) {
        match inner.as_table() {
            Some(inner) => (table, depth) = (inner, depth + 1),
            None => {
                return format!(
                    "unknown key: `{}` is a value, not a section",
                    parts[..=depth].join(".")
                )
            }
        }
    }
    let names: Vec<&str> = table.keys().map(String::as_str).collect();
    if depth == 0 {
        format!(
            "unknown section `{}`; the sections are: {}",
            parts[0],
            names.join(", ")
        )
    } else {
        format!(
            "unknown key; [{}] has: {}",
            parts[..depth].join("."),
            names.join(", ")
        )
    }
}

/// Where the value at `key` (or the first value under it) came from.
pub(crate) fn source_of(origins: &BTreeMap<String, Source>, key: &str) -> Source {
    let under = format!("{key}.");
    (origins.get(key).or_else(|| {
        (origins.iter())
            .find(|(k, _)| k.starts_with(&under))
            .map(|(_, s)| s)
    }))
    .cloned()
    .unwrap_or(Source::Default)
}

/// Every unknown key and every value whose TOML type differs from its default's in `merged`.
pub(crate) fn check(
    merged: &Table,
    schema: &Table,
    prefix: &str,
    origins: &BTreeMap<String, Source>,
    problems: &mut Vec<Problem>,
) {
    for (k, value) in merged {
        let key = join(prefix, k);
        let problem = |message: String| Problem {
            key: key.clone(),
            value: (!value.is_table()).then(|| shown(&key, value)),
            source: source_of(origins, &key),
            message,
        };
        match schema.get(k) {
            None => problems.push(problem(unknown(&key))),
            Some(default) if !fits(&key, default, value) => {
                problems.push(problem(expected(&key, default).to_string()))
            }
            Some(Value::Table(inner)) => {
                check(value.as_table().unwrap_or(inner), inner, &key, origins, problems)
            }
            Some(_) => {}
        }
    }
}
