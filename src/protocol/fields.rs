//! The fields of a request as they arrive: the [`Envelope`] every message is read into, string
//! fields that borrow from the message unless escaped ([`Text`]), and the checks that name the
//! field a value is missing or wrong in. Shared by `parse_request` and `parse_publish`.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::protocol::error::RequestError;
use crate::topic::Topic;

/// Every field any request may carry; each is checked by the op that uses it.
#[derive(Deserialize)]
pub(super) struct Envelope<'a> {
    #[serde(borrow)]
    pub(super) op: Option<&'a RawValue>,
    #[serde(borrow)]
    pub(super) id: Option<&'a RawValue>,
    #[serde(borrow)]
    pub(super) topics: Option<&'a RawValue>,
    #[serde(borrow)]
    pub(super) topic: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    pub(super) data: Option<&'a RawValue>,
    #[serde(borrow)]
    pub(super) messages: Option<&'a RawValue>,
    #[serde(borrow)]
    pub(super) since: Option<&'a RawValue>,
    #[serde(borrow)]
    pub(super) token: Option<&'a RawValue>,
    #[serde(borrow)]
    pub(super) max_rate: Option<&'a RawValue>,
    #[serde(borrow)]
    pub(super) delta: Option<&'a RawValue>,
    #[serde(borrow)]
    pub(super) presence_events: Option<&'a RawValue>,
}

/// Makes `"data": null` count as present (null is a valid payload), unlike a plain `Option`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// A string field of a request. A `&str` cannot hold `"chat.\u003e"` unescaped (Go's
/// `encoding/json` escapes `<`, `>` and `&` by default), and serde's own `Cow<str>` is always
/// owned outside a derived struct field; this borrows from the request text when the string has
/// no escapes, the common case, and owns the unescaped copy only when it has.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(super) struct Text<'a>(pub(super) Cow<'a, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(s)))
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(s.to_owned())))
            }

            fn visit_string<E: de::Error>(self, s: String) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(s)))
            }
        }
        d.deserialize_str(TextVisitor)
    }
}

impl std::ops::Deref for Text<'_> {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

pub(super) fn bad(message: impl Into<String>) -> RequestError {
    RequestError::BadRequest(message.into())
}

pub(super) fn envelope(text: &str) -> Result<Envelope<'_>, RequestError> {
    // serde would also fill the struct from a JSON array, by position.
    if text.trim_start().starts_with('[') {
        return Err(bad("expected a JSON object, got an array"));
    }
    serde_json::from_str(text).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            bad(format!("not valid JSON: {e}"))
        } else {
            bad(format!("expected a JSON object with known fields: {e}"))
        }
    })
}

pub(super) fn field<'a, T: Deserialize<'a>>(
    raw: Option<&'a RawValue>,
    name: &str,
    expected: &str,
) -> Result<T, RequestError> {
    let raw = raw.ok_or_else(|| bad(format!("missing field `{name}`")))?;
    serde_json::from_str(raw.get()).map_err(|_| bad(format!("field `{name}` must be {expected}")))
}

pub(super) fn topic(raw: Option<&RawValue>) -> Result<Topic, RequestError> {
    let name: Text<'_> = field(raw, "topic", "a string")?;
    Topic::parse(&name).map_err(|e| RequestError::invalid_topic(&name, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn strings_borrow_unless_escaped() {
        let text = |json: &'static str| serde_json::from_str::<Text<'static>>(json).unwrap().0;
        assert!(matches!(text(r#""chat.x""#), Cow::Borrowed("chat.x")));
        assert!(matches!(text(r#""chat.\u003e""#), Cow::Owned(s) if s == "chat.>"));
        let list: Vec<Text<'_>> = serde_json::from_str(r#"["a.b","c\u002ed"]"#).unwrap();
        assert!(matches!(&list[0].0, Cow::Borrowed("a.b")));
        assert!(matches!(&list[1].0, Cow::Owned(s) if s == "c.d"));
        let map: HashMap<Text<'_>, u8> = serde_json::from_str(r#"{"a.b":1}"#).unwrap();
        assert!(map.keys().all(|k| matches!(k.0, Cow::Borrowed(_))));
    }
}
