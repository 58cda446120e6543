//! Decoding and typed validation shared by all artifacts: strict JSON in, Go-style tolerant struct decoding,
//! then the rules the contract and JSON Schemas state, reported per dotted field.

use std::fmt;

use gait_canon::CanonError;
use gait_canon::gojson::{self, Node};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::GoTime;

/// One rule an artifact field breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path of the field, e.g. `relationship.entity_refs[0].kind`.
    pub field: String,
    /// What is wrong and what is expected.
    pub problem: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.problem)
    }
}

/// An artifact decoded but breaks the contract's rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {schema_id}: {}", join(.errors))]
pub struct InvalidArtifact {
    /// Which artifact type.
    pub schema_id: &'static str,
    /// Every broken rule, in field order.
    pub errors: Vec<FieldError>,
}

impl InvalidArtifact {
    /// Whether `field` is among the broken fields.
    pub fn mentions(&self, field: &str) -> bool {
        self.errors.iter().any(|e| e.field == field)
    }
}

fn join(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Bytes could not be turned into a valid artifact.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not strict JSON (syntax, duplicate key, nesting, ...).
    #[error(transparent)]
    Json(#[from] CanonError),
    /// JSON, but not shaped like the artifact (not an object, wrong field type).
    #[error("{schema_id}: {message}")]
    Shape {
        /// Which artifact type was expected.
        schema_id: &'static str,
        /// What did not fit.
        message: String,
    },
    /// Decoded, but breaks the contract's rules.
    #[error(transparent)]
    Invalid(#[from] InvalidArtifact),
}

/// Decode `bytes` into the raw object and the typed artifact, the way Go's `json.Unmarshal` fills a struct
/// (`gait_canon::gojson`): keys matched case-insensitively, unknown members ignored, a repeated key resolved as
/// Go resolves it. The raw object keeps the keys as written (a repeated key keeps its last value, as Go's
/// `map[string]json.RawMessage` does); it is only used for digests over the document as written.
pub(crate) fn decode<T: DeserializeOwned>(
    schema_id: &'static str,
    bytes: &[u8],
) -> Result<(Map<String, Value>, T), DecodeError> {
    let node = gojson::parse_node(bytes)?;
    let Node::Object(_) = &node else {
        return Err(DecodeError::Shape {
            schema_id,
            message: "document must be a JSON object".into(),
        });
    };
    let typed = gojson::from_node(&node).map_err(|err| DecodeError::Shape {
        schema_id,
        message: err.to_string(),
    })?;
    Ok((node.to_map().unwrap_or_default(), typed))
}

/// Typed decode of an already parsed node (see [`decode`]).
pub(crate) fn decode_node<T: DeserializeOwned>(
    schema_id: &'static str,
    node: &Node,
) -> Result<T, DecodeError> {
    let Node::Object(_) = node else {
        return Err(DecodeError::Shape {
            schema_id,
            message: "document must be a JSON object".into(),
        });
    };
    gojson::from_node(node).map_err(|err| DecodeError::Shape {
        schema_id,
        message: err.to_string(),
    })
}

/// [`decode`] without the raw object (cheaper: nothing is copied).
pub(crate) fn decode_typed<T: DeserializeOwned>(
    schema_id: &'static str,
    bytes: &[u8],
) -> Result<T, DecodeError> {
    decode_node(schema_id, &gojson::parse_node(bytes)?)
}

/// Collects [`FieldError`]s for one artifact.
pub(crate) struct Checker {
    schema_id: &'static str,
    errors: Vec<FieldError>,
}

pub(crate) const VERDICTS: &[&str] = &["allow", "block", "dry_run", "require_approval"];
pub(crate) const EVIDENCE_MODES: &[&str] = &["best_effort", "required"];

impl Checker {
    pub(crate) fn new(schema_id: &'static str) -> Self {
        Self {
            schema_id,
            errors: Vec::new(),
        }
    }

    pub(crate) fn fail(&mut self, field: impl Into<String>, problem: impl Into<String>) {
        self.errors.push(FieldError {
            field: field.into(),
            problem: problem.into(),
        });
    }

    /// `schema_id` must be this checker's id and `schema_version` must be `1.0.0`.
    pub(crate) fn header(&mut self, schema_id: &str, schema_version: &str) {
        if schema_id != self.schema_id {
            let want = self.schema_id;
            self.fail("schema_id", format!("must be {want:?}, got {schema_id:?}"));
        }
        if schema_version != crate::SCHEMA_VERSION {
            self.fail(
                "schema_version",
                format!("must be \"1.0.0\", got {schema_version:?}"),
            );
        }
    }

    pub(crate) fn non_empty(&mut self, field: &str, value: &str) {
        if value.trim().is_empty() {
            self.fail(field, "must not be empty");
        }
    }

    pub(crate) fn time_set(&mut self, field: &str, value: &GoTime) {
        if value.is_zero() {
            self.fail(field, "must be an RFC 3339 timestamp");
        }
    }

    /// 64 hex characters; `required` says whether empty is an error.
    pub(crate) fn hex64(&mut self, field: &str, value: &str, required: bool) {
        if value.is_empty() {
            if required {
                self.fail(field, "must be a 64-character hex sha-256 digest");
            }
        } else if !is_hex64(value) {
            self.fail(
                field,
                format!("must be a 64-character hex sha-256 digest, got {value:?}"),
            );
        }
    }

    /// One of `allowed`; empty is accepted unless `required`.
    pub(crate) fn one_of(&mut self, field: &str, value: &str, allowed: &[&str], required: bool) {
        if value.is_empty() && !required {
            return;
        }
        if !allowed.contains(&value) {
            self.fail(
                field,
                format!("must be one of {}, got {value:?}", allowed.join(", ")),
            );
        }
    }

    pub(crate) fn non_negative(&mut self, field: &str, value: i64) {
        if value < 0 {
            self.fail(field, format!("must be >= 0, got {value}"));
        }
    }

    pub(crate) fn unique<T: PartialEq>(&mut self, field: &str, items: &[T]) {
        for (i, item) in items.iter().enumerate() {
            if items[..i].contains(item) {
                self.fail(format!("{field}[{i}]"), "duplicates an earlier item");
            }
        }
    }

    pub(crate) fn finish(self) -> Result<(), InvalidArtifact> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(InvalidArtifact {
                schema_id: self.schema_id,
                errors: self.errors,
            })
        }
    }
}

/// Exactly 64 hex digits (either case, as the schemas allow).
pub fn is_hex64(value: &str) -> bool {
    value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit())
}

/// First 12 bytes of SHA-256 over `text`, as 24 lowercase hex characters (Gait's short ids).
pub(crate) fn short_id(text: &str) -> String {
    hex::encode(&gait_canon::sha256(text.as_bytes())[..12])
}

// Go `omitempty` predicates for serde `skip_serializing_if`.
pub(crate) fn is_zero_i64(v: &i64) -> bool {
    *v == 0
}

pub(crate) fn is_zero_f64(v: &f64) -> bool {
    *v == 0.0
}

pub(crate) fn is_false(v: &bool) -> bool {
    !*v
}
