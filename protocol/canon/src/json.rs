//! Strict JSON parsing for artifacts that get hashed: duplicate keys, deep nesting, trailing bytes and
//! non-finite numbers are errors with a line and column, never silently accepted.

use std::cell::RefCell;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Deepest array/object nesting [`parse_json`] accepts; the top-level container is level 1.
pub const MAX_DEPTH: usize = 64;

/// Why a document could not be turned into a JSON value.
#[derive(Debug, thiserror::Error)]
pub enum CanonError {
    /// An object repeats a key; JCS (and Gait) treat this as an error.
    #[error(
        "duplicate object key {key:?} at line {line} column {column}: each key may appear once per object"
    )]
    DuplicateKey {
        /// The repeated key.
        key: String,
        /// 1-based line of the second occurrence.
        line: usize,
        /// 1-based column of the second occurrence.
        column: usize,
    },
    /// Arrays/objects nest deeper than [`MAX_DEPTH`].
    #[error("json nests deeper than {max} levels at line {line} column {column}")]
    TooDeep {
        /// The limit that was exceeded.
        max: usize,
        /// 1-based line where the limit was crossed.
        line: usize,
        /// 1-based column where the limit was crossed.
        column: usize,
    },
    /// Not valid JSON: syntax error, invalid UTF-8, trailing bytes, number out of range, truncated input.
    #[error("invalid json: {message}")]
    Syntax {
        /// serde_json's description, including the position.
        message: String,
        /// 1-based line, 0 when unknown.
        line: usize,
        /// 1-based column, 0 when unknown.
        column: usize,
    },
    /// A Rust value could not be represented as JSON (e.g. a map with non-string keys).
    #[error("value cannot be represented as json: {message}")]
    Unrepresentable {
        /// serde_json's description.
        message: String,
    },
}

impl CanonError {
    /// 1-based (line, column) of the problem in the input, when known.
    pub fn position(&self) -> Option<(usize, usize)> {
        match self {
            Self::DuplicateKey { line, column, .. }
            | Self::TooDeep { line, column, .. }
            | Self::Syntax { line, column, .. } => (*line > 0).then_some((*line, *column)),
            Self::Unrepresentable { .. } => None,
        }
    }
}

/// Parse `bytes` as exactly one JSON value, strictly.
///
/// Rejects duplicate object keys at any depth, nesting deeper than [`MAX_DEPTH`], invalid UTF-8, bytes after the
/// value (other than whitespace) and numbers outside the f64 range. Integers that fit `u64`/`i64` stay integers in
/// the returned value; canonicalization still treats every number as an IEEE-754 double, as Gait does.
pub fn parse_json(bytes: &[u8]) -> Result<Value, CanonError> {
    let problem = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = ValueSeed {
        depth: 0,
        problem: &problem,
    }
    .deserialize(&mut de)
    .and_then(|value| de.end().map(|()| value));
    parsed.map_err(|err| {
        let (line, column) = (err.line(), err.column());
        match problem.into_inner() {
            Some(Problem::DuplicateKey(key)) => CanonError::DuplicateKey { key, line, column },
            Some(Problem::TooDeep) => CanonError::TooDeep {
                max: MAX_DEPTH,
                line,
                column,
            },
            None => CanonError::Syntax {
                message: err.to_string(),
                line,
                column,
            },
        }
    })
}

/// Convert a serializable Rust value to a JSON value (what Go's `json.Marshal` would produce for the same
/// fields), ready for [`crate::canonical_bytes`] / [`crate::digest_jcs`].
pub fn to_canonical_value<T: serde::Serialize>(v: &T) -> Result<Value, CanonError> {
    serde_json::to_value(v).map_err(|err| CanonError::Unrepresentable {
        message: err.to_string(),
    })
}

/// The structured reason behind a custom serde error raised while visiting.
enum Problem {
    DuplicateKey(String),
    TooDeep,
}

/// Builds a [`Value`] while counting depth and checking keys; `depth` is the nesting level of the value's parent.
struct ValueSeed<'a> {
    depth: usize,
    problem: &'a RefCell<Option<Problem>>,
}

impl ValueSeed<'_> {
    fn enter<E: de::Error>(&self) -> Result<usize, E> {
        let depth = self.depth + 1;
        if depth > MAX_DEPTH {
            *self.problem.borrow_mut() = Some(Problem::TooDeep);
            return Err(E::custom(format_args!(
                "json nests deeper than {MAX_DEPTH} levels"
            )));
        }
        Ok(depth)
    }
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("number out of range"))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let depth = self.enter()?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(ValueSeed {
            depth,
            problem: self.problem,
        })? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let depth = self.enter()?;
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                let message = format!("duplicate object key {key:?}");
                *self.problem.borrow_mut() = Some(Problem::DuplicateKey(key));
                return Err(de::Error::custom(message));
            }
            let value = map.next_value_seed(ValueSeed {
                depth,
                problem: self.problem,
            })?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_key_is_rejected_with_its_name_and_position() {
        let err = parse_json(b"{\"a\":1,\n \"b\":{\"x\":1,\"x\":2}}").unwrap_err();
        match err {
            CanonError::DuplicateKey { key, line, .. } => {
                assert_eq!(key, "x");
                assert_eq!(line, 2);
            }
            other => panic!("expected duplicate key error, got {other}"),
        }
    }

    #[test]
    fn duplicate_key_inside_an_array_element_is_rejected() {
        let err = parse_json(br#"[1,[{"k":true,"k":false}]]"#).unwrap_err();
        assert!(err.to_string().contains("\"k\""), "{err}");
    }

    #[test]
    fn nesting_at_the_limit_is_accepted_and_one_more_level_is_rejected() {
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(parse_json(ok.as_bytes()).is_ok());
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert!(matches!(
            parse_json(deep.as_bytes()),
            Err(CanonError::TooDeep { max: MAX_DEPTH, .. })
        ));
        let objects = format!(
            "{}1{}",
            "{\"a\":".repeat(MAX_DEPTH + 1),
            "}".repeat(MAX_DEPTH + 1)
        );
        assert!(matches!(
            parse_json(objects.as_bytes()),
            Err(CanonError::TooDeep { .. })
        ));
    }

    #[test]
    fn a_million_open_brackets_is_an_error_not_a_stack_overflow() {
        let hostile = "[".repeat(1_000_000);
        assert!(matches!(
            parse_json(hostile.as_bytes()),
            Err(CanonError::TooDeep { .. })
        ));
    }

    #[test]
    fn trailing_garbage_is_rejected_but_trailing_whitespace_is_not() {
        assert!(parse_json(b"{} x").is_err());
        assert!(parse_json(b"{}{}").is_err());
        assert!(parse_json(b" {} \n").is_ok());
    }

    #[test]
    fn invalid_utf8_inside_a_string_is_rejected() {
        let err = parse_json(b"{\"a\":\"\xff\"}").unwrap_err();
        assert!(matches!(err, CanonError::Syntax { .. }), "{err}");
    }

    #[test]
    fn numbers_beyond_f64_are_rejected_and_huge_integers_become_doubles() {
        let err = parse_json(b"[1e400]").unwrap_err();
        assert_eq!(err.position(), Some((1, 6)), "{err}");
        assert!(parse_json(b"-1e400").is_err());
        let big = parse_json(b"123456789012345678901234567890").unwrap();
        assert_eq!(big.as_f64(), Some(1.2345678901234568e29));
    }

    #[test]
    fn lone_surrogate_escape_is_rejected() {
        assert!(parse_json(br#""\ud800""#).is_err());
        assert_eq!(
            parse_json(br#""\ud83d\ude00""#).unwrap(),
            Value::String("\u{1F600}".into())
        );
    }

    #[test]
    fn integers_stay_integers_in_the_parsed_value() {
        let v = parse_json(br#"{"n":42,"m":-7,"f":1.5}"#).unwrap();
        assert_eq!(v["n"].as_u64(), Some(42));
        assert_eq!(v["m"].as_i64(), Some(-7));
        assert_eq!(v["f"].as_f64(), Some(1.5));
    }
}
