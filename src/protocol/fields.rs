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

// For any `'a` the input outlives, so that a derived struct can borrow a `Text` field.
impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TextVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for TextVisitor<'a> {
            type Value = Text<'a>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Borrowed(s)))
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(s.to_owned())))
            }

            fn visit_string<E: de::Error>(self, s: String) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(s)))
            }
        }
        d.deserialize_str(TextVisitor(std::marker::PhantomData))
    }
}

/// A JSON object's entries in the order given, for a caller that checks each one and builds its
/// own map: a subscribe's `since` was read into a `HashMap` of names and then into another of
/// topics, hashing every name twice and growing both tables entry by entry (callgrind: about a
/// third of a reconnecting client's subscribe).
pub(super) struct Entries<'a, V>(pub(super) Vec<(Text<'a>, V)>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Entries<'de, V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct EntriesVisitor<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for EntriesVisitor<V> {
            type Value = Entries<'de, V>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }

            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(Entries(entries))
            }
        }
        d.deserialize_map(EntriesVisitor(std::marker::PhantomData))
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
