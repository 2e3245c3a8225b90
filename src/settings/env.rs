//! The environment layer: each `TICKWIRE__SECTION__KEY` variable read as the type of the key it
//! sets, looked up in the defaults' tree, never guessed from the text: `007` for the string
//! `broker.prefix` stays `"007"`, `1234` for the list `feed.symbols` is the list `["1234"]`.

use toml::Value;

use crate::settings::error::{Problem, Source};
use crate::settings::tree::{defaults, expected, get, shown, unknown, TABLE_LISTS};

/// Names are case-insensitive: `tickwire__log__level` works too.
const PREFIX: &str = "TICKWIRE__";

/// One variable's key and typed value.
pub(super) struct EnvValue {
    pub key: String,
    pub value: Value,
    pub source: Source,
}

/// The settings `vars` set, in their keys' types, and a problem for each variable that names
/// no key or does not read as its key's type.
pub(super) fn layer(vars: impl IntoIterator<Item = (String, String)>) -> (Vec<EnvValue>, Vec<Problem>) {
    let (mut values, mut problems) = (Vec::new(), Vec::new());
    for (name, raw) in vars {
        let Some(rest) = name
            .get(..PREFIX.len())
            .filter(|p| p.eq_ignore_ascii_case(PREFIX))
        else {
            continue;
        };
        let key = name[rest.len()..].to_ascii_lowercase().replace("__", ".");
        let problem = |message: String| Problem {
            key: key.clone(),
            value: Some(shown(&key, &Value::String(raw.clone()))),
            source: Source::Env(name.clone()),
            message,
        };
        let Some(default) = get(defaults(), &key) else {
            problems.push(problem(unknown(&key)));
            continue;
        };
        match typed(&key, default, &raw) {
            Ok(value) => values.push(EnvValue {
                key: key.clone(),
                value,
                source: Source::Env(name.clone()),
            }),
            Err(message) => problems.push(problem(message)),
        }
    }
    (values, problems)
}

/// `raw` as a value of the default's type.
fn typed(key: &str, default: &Value, raw: &str) -> Result<Value, String> {
    let wrong = || expected(key, default).to_string();
    let trimmed = raw.trim();
    Ok(match default {
        // Verbatim: a secret or a prefix may well start or end with anything.
        Value::String(_) => Value::String(raw.to_string()),
        Value::Integer(_) => Value::Integer(trimmed.parse().ok().filter(|n| *n >= 0).ok_or_else(wrong)?),
        Value::Float(_) => Value::Float(trimmed.parse().map_err(|_| wrong())?),
        Value::Boolean(_) => match trimmed.to_ascii_lowercase().as_str() {
            "true" | "1" => Value::Boolean(true),
            "false" | "0" => Value::Boolean(false),
            _ => return Err("must be true or false (or 1 or 0)".to_string()),
        },
        Value::Array(_) if TABLE_LISTS.contains(&key) => {
            return Err("is a list of tables, which the environment cannot set: use a file".to_string())
        }
        // Comma-separated, spaces around entries trimmed; an empty value is an empty list.
        Value::Array(_) if trimmed.is_empty() => Value::Array(Vec::new()),
        Value::Array(_) => Value::Array(
            (raw.split(','))
                .map(|item| Value::String(item.trim().to_string()))
                .collect(),
        ),
        Value::Table(_) => {
            return Err(format!(
                "is a section, not a value: set its keys, e.g. TICKWIRE__{}__<KEY>",
                key.to_ascii_uppercase().replace('.', "__")
            ))
        }
        Value::Datetime(_) => return Err(wrong()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(name: &str, raw: &str) -> Result<Value, String> {
        let (mut values, mut problems) = layer([(name.to_string(), raw.to_string())]);
        match (values.pop(), problems.pop()) {
            (Some(v), None) => Ok(v.value),
            (None, Some(p)) => Err(p.to_string()),
            _ => panic!("one variable, one outcome"),
        }
    }

    #[test]
    fn values_take_the_type_of_their_key() {
        assert_eq!(one("TICKWIRE__BROKER__PREFIX", "007"), Ok(Value::from("007")));
        assert_eq!(
            one("TICKWIRE__FEED__SYMBOLS", "1234"),
            Ok(Value::Array(vec![Value::from("1234")]))
        );
        assert_eq!(
            one("tickwire__feed__symbols", "A, B"),
            Ok(Value::Array(vec![Value::from("A"), Value::from("B")]))
        );
        assert_eq!(
            one("TICKWIRE__SERVER__ALLOWED_ORIGINS", ""),
            Ok(Value::Array(vec![]))
        );
        assert_eq!(
            one("TICKWIRE__QUEUE__MAX_BYTES", "4096"),
            Ok(Value::Integer(4096))
        );
        assert_eq!(
            one("TICKWIRE__FEED__UPDATES_PER_SECOND", "3"),
            Ok(Value::Float(3.0))
        );
        assert_eq!(one("TICKWIRE__FEED__ENABLED", "FALSE"), Ok(Value::Boolean(false)));
        assert_eq!(one("TICKWIRE__FEED__ENABLED", "1"), Ok(Value::Boolean(true)));
        let err = one("TICKWIRE__QUEUE__MAX_BYTES", "lots").unwrap_err();
        assert!(
            err.contains("whole number") && err.contains("TICKWIRE__QUEUE__MAX_BYTES"),
            "{err}"
        );
        let err = one("TICKWIRE__QUEUE__POLICIES", "x").unwrap_err();
        assert!(err.contains("use a file"), "{err}");
        let err = one("TICKWIRE__SERVER__NOPE", "1").unwrap_err();
        assert!(
            err.contains("server.nope") && err.contains("[server] has: "),
            "{err}"
        );
        let err = one("TICKWIRE__AUTH__JWT__HS256_SECRET__X", "s3cr3t").unwrap_err();
        assert!(!err.contains("s3cr3t"), "{err}");
        assert!(layer([("TICKWIRE_URL".to_string(), "x".to_string())])
            .0
            .is_empty());
    }
}
