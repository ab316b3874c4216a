//! Lists of items from outside (a registry's instances, a key set's keys) read one item at a
//! time.
//!
//! Reading such a list into a `Vec` first costs memory by the item, not by the byte: a
//! 16 MiB body of `[0,0,0,…]` is eight million items, a quarter of a gigabyte as
//! `serde_json::Value`s before any is looked at, and as much again in the records of their
//! rejection. Here each item is handed on as soon as it is read and dropped after, and a
//! list longer than its limit is refused as soon as the limit is passed.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// Reads a JSON array, handing each element to `each` with its index; more than `max`
/// elements is an error, raised when the element past the limit is met. With `lone`, a
/// single object stands for an array of one and `null` for an empty array (Eureka's JSON,
/// converted from XML, writes a lone instance so).
pub(crate) struct Elements<F> {
    pub(crate) each: F,
    pub(crate) max: usize,
    pub(crate) lone: bool,
}

impl<'de, F: FnMut(usize, serde_json::Value)> DeserializeSeed<'de> for Elements<F> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de, F: FnMut(usize, serde_json::Value)> Visitor<'de> for Elements<F> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lone {
            f.write_str("an array or an object")
        } else {
            f.write_str("an array")
        }
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0;
        while let Some(element) = seq.next_element::<serde_json::Value>()? {
            if i == self.max {
                return Err(de::Error::custom(format_args!(
                    "more than {} elements, the limit",
                    self.max
                )));
            }
            (self.each)(i, element);
            i += 1;
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(mut self, map: A) -> Result<(), A::Error> {
        if !self.lone {
            return Err(de::Error::invalid_type(de::Unexpected::Map, &self));
        }
        let element = serde::Deserialize::deserialize(de::value::MapAccessDeserializer::new(map))?;
        if self.max > 0 {
            (self.each)(0, element);
        }
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        if self.lone {
            Ok(())
        } else {
            Err(de::Error::invalid_type(de::Unexpected::Unit, &self))
        }
    }
}

/// Reads a JSON object's member `name` with `inner`, skipping every other member; an
/// object without it gives `None` (the member's own `null` is handed to `inner`).
pub(crate) struct Member<S> {
    pub(crate) name: &'static str,
    pub(crate) inner: S,
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Member<S> {
    type Value = Option<S::Value>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de, S: DeserializeSeed<'de>> Visitor<'de> for Member<S> {
    type Value = Option<S::Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an object with a member `{}`", self.name)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut inner = Some(self.inner);
        let mut found = None;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match inner.take_if(|_| key == self.name) {
                Some(seed) => found = Some(map.next_value_seed(seed)?),
                None => {
                    if found.is_some() && key == self.name {
                        return Err(de::Error::duplicate_field(self.name));
                    }
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(found)
    }
}

/// Reads `body`, a JSON document, with `seed`; text after the document is an error.
pub(crate) fn read<'de, S: DeserializeSeed<'de>>(
    body: &'de [u8],
    seed: S,
) -> Result<S::Value, serde_json::Error> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value = seed.deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(value)
}

/// `text` in at most `max` bytes (at least 3): cut at a character's boundary and ended with
/// `…` when too long. For messages that may quote what was received (serde's errors quote
/// the offending string).
pub(crate) fn clip(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max.saturating_sub('…'.len_utf8());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
        // The cut text must not keep the long one's allocation.
        text.shrink_to_fit();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(body: &str, max: usize, lone: bool) -> Result<Vec<serde_json::Value>, String> {
        let mut seen = Vec::new();
        let each = |i: usize, v| {
            assert_eq!(i, seen.len());
            seen.push(v);
        };
        read(body.as_bytes(), Elements { each, max, lone }).map_err(|e| e.to_string())?;
        Ok(seen)
    }

    #[test]
    fn elements_are_handed_on_in_order_up_to_the_limit() {
        assert_eq!(
            collect("[1, {\"a\": 2}, null]", 3, false)
                .expect("read")
                .len(),
            3
        );
        assert_eq!(collect("[]", 0, false).expect("read").len(), 0);
        let error = collect("[1, 2, 3, 4]", 3, false).expect_err("an error");
        assert!(error.contains("more than 3 elements"), "{error}");
        assert!(collect("{\"a\": 1}", 3, false).is_err());
        assert!(collect("null", 3, false).is_err());
        assert!(collect("[1] 2", 3, false).is_err(), "trailing text");
        assert!(collect("[1, 2", 3, false).is_err(), "truncated");
    }

    #[test]
    fn a_lone_object_is_an_array_of_one() {
        let one = collect("{\"a\": 1}", 3, true).expect("read");
        assert_eq!(one, vec![serde_json::json!({"a": 1})]);
        assert!(collect("null", 3, true).expect("read").is_empty());
        assert_eq!(collect("[1, 2]", 3, true).expect("read").len(), 2);
        assert!(collect("7", 3, true).is_err());
    }

    #[test]
    fn a_member_is_found_among_others_or_missing() {
        let body = br#"{"x": [1, {"y": 2}], "list": [1, 2], "z": "w"}"#;
        let mut n = 0;
        let seed = Member {
            name: "list",
            inner: Elements {
                each: |_, _| n += 1,
                max: 10,
                lone: false,
            },
        };
        assert_eq!(read(body, seed).expect("read"), Some(()));
        assert_eq!(n, 2);
        let seed = Member {
            name: "absent",
            inner: std::marker::PhantomData::<IgnoredAny>,
        };
        assert!(read(body, seed).expect("read").is_none());
        let seed = Member {
            name: "x",
            inner: std::marker::PhantomData::<IgnoredAny>,
        };
        assert!(read(br#"{"x": 1, "x": 2}"#, seed).is_err(), "duplicate");
        let seed = Member {
            name: "x",
            inner: std::marker::PhantomData::<IgnoredAny>,
        };
        assert!(read(b"[1]", seed).is_err(), "not an object");
    }

    #[test]
    fn clipped_text_ends_on_a_character() {
        assert_eq!(clip("abc".into(), 5), "abc");
        assert_eq!(clip("abcdefgh".into(), 6), "abc…");
        assert_eq!(clip("abcdefgh".into(), 6).len(), 6);
        // 'é' is two bytes: a cut inside it moves before it.
        assert_eq!(clip("aébcdef".into(), 5), "a…");
    }
}
