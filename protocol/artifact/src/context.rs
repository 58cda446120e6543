//! The context evidence envelope (`gait.context.envelope`, contract §1.2 "Context-evidence caveat", §3.7):
//! references to the documents an agent retrieved, sealed by `context_set_digest` = DigestJCS of the sorted,
//! normalized records. `gate eval --context-envelope` verifies it and binds its digest, mode, refs and age
//! into the intent before evaluation.
//!
//! Decoding follows Gait's `ParseEnvelope`: keys match in any case (Go), but unknown fields are an error there
//! (`DisallowUnknownFields`), so they are here too.

use gait_canon::gojson::{self, Node};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::GoTime;
use crate::check::{is_hex64, is_zero_i64};

/// `schema_id` of a context envelope.
pub const ENVELOPE_SCHEMA_ID: &str = "gait.context.envelope";
/// Largest envelope file Gait reads.
pub const MAX_ENVELOPE_BYTES: usize = 1024 * 1024;
/// `evidence_mode` values.
pub const EVIDENCE_MODES: [&str; 2] = ["best_effort", "required"];

const ENVELOPE_FIELDS: &[&str] = &[
    "schema_id",
    "schema_version",
    "created_at",
    "producer_version",
    "context_set_id",
    "context_set_digest",
    "evidence_mode",
    "records",
];
const RECORD_FIELDS: &[&str] = &[
    "ref_id",
    "source_type",
    "source_locator",
    "query_digest",
    "content_digest",
    "retrieved_at",
    "redaction_mode",
    "immutability",
    "sensitivity_label",
    "freshness_sla_seconds",
    "retrieval_params",
];

/// One retrieved document, by reference (`context/reference_record.schema.json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReferenceRecord {
    /// Reference id.
    #[serde(default)]
    pub ref_id: String,
    /// Kind of source (`doc_store`, …).
    #[serde(default)]
    pub source_type: String,
    /// Where it came from.
    #[serde(default)]
    pub source_locator: String,
    /// Hex SHA-256 of the query.
    #[serde(default)]
    pub query_digest: String,
    /// Hex SHA-256 of the content.
    #[serde(default)]
    pub content_digest: String,
    /// When it was retrieved.
    #[serde(default)]
    pub retrieved_at: GoTime,
    /// How the content is redacted.
    #[serde(default)]
    pub redaction_mode: String,
    /// `unknown`, `mutable` or `immutable`.
    #[serde(default)]
    pub immutability: String,
    /// Sensitivity label.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sensitivity_label: String,
    /// Freshness SLA in seconds.
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub freshness_sla_seconds: i64,
    /// Free-form retrieval parameters.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub retrieval_params: Map<String, Value>,
}

/// A context evidence envelope (`context/envelope.schema.json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ContextEnvelope {
    /// `gait.context.envelope`.
    #[serde(default)]
    pub schema_id: String,
    /// `1.0.0`.
    #[serde(default)]
    pub schema_version: String,
    /// When the envelope was built.
    #[serde(default)]
    pub created_at: GoTime,
    /// Producer version.
    #[serde(default)]
    pub producer_version: String,
    /// Id of the context set.
    #[serde(default)]
    pub context_set_id: String,
    /// DigestJCS of the sorted, normalized records.
    #[serde(default)]
    pub context_set_digest: String,
    /// `best_effort` or `required`.
    #[serde(default)]
    pub evidence_mode: String,
    /// The references.
    #[serde(default)]
    pub records: Vec<ReferenceRecord>,
}

/// Why a context envelope was refused (Gait's messages, plus where the problem is).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Not JSON, or a field of the wrong type.
    #[error("parse context envelope: {0}")]
    Parse(String),
    /// A member Gait's strict decoder does not know.
    #[error(
        "parse context envelope: json: unknown field {field:?} (remove it; envelopes allow only the schema's fields)"
    )]
    UnknownField {
        /// Dotted path of the member.
        field: String,
    },
    /// `schema_id` is not `gait.context.envelope`.
    #[error("unsupported context envelope schema_id: {0}")]
    SchemaId(String),
    /// `schema_version` is not `1.0.0`.
    #[error("unsupported context envelope schema_version: {0}")]
    SchemaVersion(String),
    /// `context_set_id` is empty.
    #[error("context_set_id is required")]
    ContextSetIdMissing,
    /// `evidence_mode` is not a known mode.
    #[error("context evidence mode must be best_effort or required")]
    EvidenceMode,
    /// A record lacks a required text field.
    #[error(
        "records[{index}]: context record fields ref_id/source_type/source_locator/redaction_mode are required"
    )]
    RecordFieldsMissing {
        /// Record index (document order).
        index: usize,
    },
    /// A record digest is not 64 hex characters.
    #[error("records[{index}]: context record digests must be sha256 hex")]
    RecordDigest {
        /// Record index (document order).
        index: usize,
    },
    /// A record's immutability is not a known value.
    #[error("records[{index}]: context record immutability must be unknown|mutable|immutable")]
    RecordImmutability {
        /// Record index (document order).
        index: usize,
    },
    /// A record's freshness SLA is negative.
    #[error("records[{index}]: context record freshness_sla_seconds must be >= 0")]
    RecordFreshness {
        /// Record index (document order).
        index: usize,
    },
    /// The declared digest is not 64 hex characters.
    #[error("context_set_digest must be sha256 hex")]
    DigestFormat,
    /// The declared digest does not seal these records.
    #[error(
        "context_set_digest mismatch: envelope declares {declared} but its records digest to {computed}"
    )]
    DigestMismatch {
        /// Digest in the file.
        declared: String,
        /// Digest of the normalized records.
        computed: String,
    },
}

fn time_1980() -> GoTime {
    GoTime::from_datetime(time::macros::datetime!(1980-01-01 00:00:00 UTC))
}

/// Parse and verify an envelope (Gait's `ParseEnvelope` + `NormalizeEnvelope`): the normalized envelope, whose
/// `context_set_digest` is verified (or computed when the file leaves it empty).
pub fn parse_context_envelope(bytes: &[u8]) -> Result<ContextEnvelope, EnvelopeError> {
    let node = gojson::parse_node(bytes).map_err(|e| EnvelopeError::Parse(e.to_string()))?;
    reject_unknown_fields(&node)?;
    let envelope: ContextEnvelope =
        gojson::from_node(&node).map_err(|e| EnvelopeError::Parse(e.to_string()))?;
    envelope.normalized()
}

fn reject_unknown_fields(node: &Node) -> Result<(), EnvelopeError> {
    let Node::Object(members) = node else {
        return Ok(());
    };
    for (key, value) in members {
        let Some(index) = gojson::match_field(key, ENVELOPE_FIELDS) else {
            return Err(EnvelopeError::UnknownField { field: key.clone() });
        };
        if ENVELOPE_FIELDS[index] != "records" {
            continue;
        }
        let Node::Array(records) = value else {
            continue;
        };
        for (i, record) in records.iter().enumerate() {
            let Node::Object(fields) = record else {
                continue;
            };
            for (field, _) in fields {
                if gojson::match_field(field, RECORD_FIELDS).is_none() {
                    return Err(EnvelopeError::UnknownField {
                        field: format!("records[{i}].{field}"),
                    });
                }
            }
        }
    }
    Ok(())
}

fn normalize_record(
    index: usize,
    record: &ReferenceRecord,
) -> Result<ReferenceRecord, EnvelopeError> {
    let mut out = record.clone();
    out.ref_id = record.ref_id.trim().to_owned();
    out.source_type = record.source_type.trim().to_owned();
    out.source_locator = record.source_locator.trim().to_owned();
    out.query_digest = record.query_digest.trim().to_lowercase();
    out.content_digest = record.content_digest.trim().to_lowercase();
    out.redaction_mode = record.redaction_mode.trim().to_owned();
    out.immutability = record.immutability.trim().to_lowercase();
    if out.ref_id.is_empty()
        || out.source_type.is_empty()
        || out.source_locator.is_empty()
        || out.redaction_mode.is_empty()
    {
        return Err(EnvelopeError::RecordFieldsMissing { index });
    }
    if !is_hex64(&out.query_digest) || !is_hex64(&out.content_digest) {
        return Err(EnvelopeError::RecordDigest { index });
    }
    match out.immutability.as_str() {
        "" | "unknown" => out.immutability = "unknown".into(),
        "mutable" | "immutable" => {}
        _ => return Err(EnvelopeError::RecordImmutability { index }),
    }
    out.retrieved_at = if record.retrieved_at.is_zero() {
        time_1980()
    } else {
        record.retrieved_at.to_utc()
    };
    if out.freshness_sla_seconds < 0 {
        return Err(EnvelopeError::RecordFreshness { index });
    }
    Ok(out)
}

/// DigestJCS of the records as Go marshals them (a JSON array, `[]` when empty).
pub fn context_set_digest(records: &[ReferenceRecord]) -> String {
    gait_canon::digest_jcs(&crate::signed::to_value(&records))
}

impl ContextEnvelope {
    /// Gait's `NormalizeEnvelope`: header defaults, trimmed and checked records sorted by (ref_id, source_type,
    /// source_locator, content_digest), and the declared digest checked against the records (filled in when
    /// empty).
    pub fn normalized(&self) -> Result<ContextEnvelope, EnvelopeError> {
        let mut out = self.clone();
        if out.schema_id.trim().is_empty() {
            out.schema_id = ENVELOPE_SCHEMA_ID.into();
        }
        if out.schema_id != ENVELOPE_SCHEMA_ID {
            return Err(EnvelopeError::SchemaId(out.schema_id));
        }
        if out.schema_version.trim().is_empty() {
            out.schema_version = crate::SCHEMA_VERSION.into();
        }
        if out.schema_version != crate::SCHEMA_VERSION {
            return Err(EnvelopeError::SchemaVersion(out.schema_version));
        }
        out.created_at = if out.created_at.is_zero() {
            time_1980()
        } else {
            out.created_at.to_utc()
        };
        if out.producer_version.trim().is_empty() {
            out.producer_version = "0.0.0-dev".into();
        }
        out.context_set_id = out.context_set_id.trim().to_owned();
        if out.context_set_id.is_empty() {
            return Err(EnvelopeError::ContextSetIdMissing);
        }
        let mode = out.evidence_mode.trim().to_lowercase();
        out.evidence_mode = match mode.as_str() {
            "" => "best_effort".into(),
            m if EVIDENCE_MODES.contains(&m) => mode,
            _ => return Err(EnvelopeError::EvidenceMode),
        };
        let mut records = self
            .records
            .iter()
            .enumerate()
            .map(|(i, r)| normalize_record(i, r))
            .collect::<Result<Vec<_>, _>>()?;
        records.sort_by(|a, b| {
            (
                &a.ref_id,
                &a.source_type,
                &a.source_locator,
                &a.content_digest,
            )
                .cmp(&(
                    &b.ref_id,
                    &b.source_type,
                    &b.source_locator,
                    &b.content_digest,
                ))
        });
        let computed = context_set_digest(&records);
        out.records = records;
        let declared = out.context_set_digest.trim().to_lowercase();
        if declared.is_empty() {
            out.context_set_digest = computed;
            return Ok(out);
        }
        if !is_hex64(&declared) {
            return Err(EnvelopeError::DigestFormat);
        }
        if declared != computed {
            return Err(EnvelopeError::DigestMismatch { declared, computed });
        }
        out.context_set_digest = declared;
        Ok(out)
    }

    /// Record reference ids, trimmed, de-duplicated and sorted (what the intent's `context_refs` become).
    pub fn context_refs(&self) -> Vec<String> {
        let mut refs: Vec<String> = self
            .records
            .iter()
            .map(|r| r.ref_id.trim().to_owned())
            .filter(|r| !r.is_empty())
            .collect();
        refs.sort_unstable();
        refs.dedup();
        refs
    }

    /// Whole seconds between `now` and the oldest record's `retrieved_at` (the envelope's `created_at` when it
    /// has no records); zero or future times count as age 0.
    pub fn age_seconds(&self, now: OffsetDateTime) -> i64 {
        let age = |t: &GoTime| -> i64 {
            if t.is_zero() || t.datetime() > now {
                return 0;
            }
            (now - t.datetime()).whole_seconds()
        };
        if self.records.is_empty() {
            return age(&self.created_at);
        }
        self.records
            .iter()
            .map(|r| age(&r.retrieved_at))
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests;
