//! One audit log entry and its one byte form: an RFC 8785 canonical JSON object, which is both a line of
//! `entries.jsonl` (without its newline) and the RFC 6962 leaf data.
//!
//! ```json
//! {"action":"bundle.publish","actor":"admin-token","after":"sha256:…","before":null,
//!  "details":{"epoch":3},"prev":"…64 hex…","seq":7,
//!  "target":{"env":"prod","id":"3","kind":"bundle","org":"acme","project":"web"},
//!  "time":"2026-12-05T05:10:00.123Z","v":1}
//! ```
//! - `v`: format version, 1.
//! - `seq`: the entry's leaf index, from 0, without gaps.
//! - `time`: when it was appended, RFC 3339 UTC with milliseconds.
//! - `actor`: who did it (`admin-token`, `oidc:<issuer>#<subject>`, `agent:<spiffe id>`).
//! - `action`: what was done, dotted lowercase (`bundle.publish`, `pki.revoke`).
//! - `target`: the object (`kind`, `id`) and the tenancy it belongs to (`org`, `project`, `env`, each only where
//!   the object has one).
//! - `before` / `after`: `sha256:<hex>` digests of the object before and after, or `null`.
//! - `prev`: the RFC 6962 leaf hash (hex) of entry `seq - 1`, `null` for entry 0. The chain lets a verifier
//!   name the first altered entry, where the signed root alone would only say that some entry changed.
//! - `details`: optional object with anything else worth keeping (never secrets).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::hash::{Hash, from_hex, leaf_hash, to_hex};

/// The entry format version this crate writes and reads.
pub const ENTRY_VERSION: u64 = 1;
/// The largest entry line accepted, in bytes.
pub const MAX_ENTRY_BYTES: usize = 64 * 1024;
/// The longest `actor`, `action`, target `kind` or `id`, in bytes.
pub const MAX_FIELD_BYTES: usize = 512;

/// What an entry is about: an object and the tenancy it belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// The organisation, where the object belongs to one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    /// The project, where the object belongs to one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// The environment, where the object belongs to one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// The kind of object (`bundle`, `certificate`, `binding`, …).
    pub kind: String,
    /// The object's identifier within its kind and tenancy (an epoch, a serial, …).
    pub id: String,
}

impl Target {
    /// A target outside any tenancy (deployment-wide objects such as a CA).
    pub fn global(kind: impl Into<String>, id: impl Into<String>) -> Self {
        Self {
            org: None,
            project: None,
            env: None,
            kind: kind.into(),
            id: id.into(),
        }
    }

    /// A target in an environment.
    pub fn in_env(
        org: impl Into<String>,
        project: impl Into<String>,
        env: impl Into<String>,
        kind: impl Into<String>,
        id: impl Into<String>,
    ) -> Self {
        Self {
            org: Some(org.into()),
            project: Some(project.into()),
            env: Some(env.into()),
            kind: kind.into(),
            id: id.into(),
        }
    }
}

/// One audit log entry. Build it with [`Entry::new`], write it with [`Entry::to_line`], read it with
/// [`Entry::parse_line`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Format version ([`ENTRY_VERSION`]).
    pub v: u64,
    /// Leaf index, from 0.
    pub seq: u64,
    /// RFC 3339 UTC time with milliseconds (`2026-12-05T05:10:00.123Z`).
    pub time: String,
    /// Who did it.
    pub actor: String,
    /// What was done (`bundle.publish`).
    pub action: String,
    /// What it was done to.
    pub target: Target,
    /// `sha256:<hex>` of the object before, or `None`.
    pub before: Option<String>,
    /// `sha256:<hex>` of the object after, or `None`.
    pub after: Option<String>,
    /// Hex leaf hash of the previous entry; `None` for entry 0.
    pub prev: Option<String>,
    /// Anything else worth keeping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Map<String, Value>>,
}

/// The caller's part of an entry: everything but its position in the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryDraft {
    /// Who did it.
    pub actor: String,
    /// What was done.
    pub action: String,
    /// What it was done to.
    pub target: Target,
    /// `sha256:<hex>` of the object before, or `None`.
    pub before: Option<String>,
    /// `sha256:<hex>` of the object after, or `None`.
    pub after: Option<String>,
    /// Anything else worth keeping.
    pub details: Option<Map<String, Value>>,
}

/// Why an entry was refused; the field is named in the dotted form of the entry's JSON.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EntryError {
    /// The line is not JSON, or not an entry of this version.
    #[error("not an audit entry: {0}")]
    Malformed(String),
    /// A field breaks its rule.
    #[error("{field}: {reason}")]
    Field {
        /// Dotted field name.
        field: &'static str,
        /// What is wrong and what is expected.
        reason: String,
    },
    /// The line is valid JSON but not its canonical (RFC 8785) form, so its bytes are not the entry's bytes.
    #[error(
        "the line is not in canonical JSON form (RFC 8785); entries are written canonically and never reformatted"
    )]
    NotCanonical,
    /// The line is longer than [`MAX_ENTRY_BYTES`].
    #[error("the entry is {0} bytes, more than the {MAX_ENTRY_BYTES}-byte limit")]
    TooLarge(usize),
}

/// `sha256:<hex>` of `bytes`: the form of `before` / `after`.
pub fn content_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", gait_canon::sha256_hex(bytes))
}

/// Formats unix milliseconds as an entry's `time`; `None` outside years 0000–9999.
pub fn format_time(unix_ms: i64) -> Option<String> {
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000).ok()?;
    if !(0..=9999).contains(&t.year()) {
        return None;
    }
    Some(format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    ))
}

fn check_time(text: &str) -> Result<(), EntryError> {
    let parsed = OffsetDateTime::parse(text, &Rfc3339).ok();
    let round_trip = parsed.and_then(|t| {
        let ms = t.unix_timestamp_nanos() / 1_000_000;
        format_time(i64::try_from(ms).ok()?)
    });
    if round_trip.as_deref() == Some(text) {
        Ok(())
    } else {
        Err(EntryError::Field {
            field: "time",
            reason: format!(
                "{text:?} is not RFC 3339 UTC with milliseconds (2026-12-05T05:10:00.123Z)"
            ),
        })
    }
}

fn check_text(field: &'static str, value: &str) -> Result<(), EntryError> {
    if value.is_empty() || value.len() > MAX_FIELD_BYTES || value.chars().any(char::is_control) {
        return Err(EntryError::Field {
            field,
            reason: format!("must be 1 to {MAX_FIELD_BYTES} bytes without control characters"),
        });
    }
    Ok(())
}

fn check_action(value: &str) -> Result<(), EntryError> {
    let ok = !value.is_empty()
        && value.len() <= MAX_FIELD_BYTES
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.')
        && !value.starts_with('.')
        && !value.ends_with('.');
    if ok {
        Ok(())
    } else {
        Err(EntryError::Field {
            field: "action",
            reason: format!(
                "{value:?} must be dotted lowercase words of a-z, 0-9 and _ (e.g. bundle.publish)"
            ),
        })
    }
}

fn check_digest(field: &'static str, value: Option<&str>) -> Result<(), EntryError> {
    let Some(value) = value else {
        return Ok(());
    };
    let ok = value.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    });
    if ok {
        Ok(())
    } else {
        Err(EntryError::Field {
            field,
            reason: format!("{value:?} must be sha256: and 64 lowercase hex characters, or null"),
        })
    }
}

impl EntryDraft {
    /// Checks every field the caller supplies, so a bad draft fails before anything is appended.
    pub fn validate(&self) -> Result<(), EntryError> {
        check_text("actor", &self.actor)?;
        check_action(&self.action)?;
        check_text("target.kind", &self.target.kind)?;
        check_text("target.id", &self.target.id)?;
        for (field, value) in [
            ("target.org", &self.target.org),
            ("target.project", &self.target.project),
            ("target.env", &self.target.env),
        ] {
            if let Some(v) = value {
                check_text(field, v)?;
            }
        }
        check_digest("before", self.before.as_deref())?;
        check_digest("after", self.after.as_deref())
    }
}

impl Entry {
    /// The entry at leaf index `seq`, appended at `unix_ms`, after the entry whose leaf hash is `prev`.
    pub fn new(
        draft: EntryDraft,
        seq: u64,
        unix_ms: i64,
        prev: Option<&Hash>,
    ) -> Result<Self, EntryError> {
        draft.validate()?;
        let time = format_time(unix_ms).ok_or_else(|| EntryError::Field {
            field: "time",
            reason: format!("{unix_ms} ms since the epoch is outside years 0000-9999"),
        })?;
        let entry = Entry {
            v: ENTRY_VERSION,
            seq,
            time,
            actor: draft.actor,
            action: draft.action,
            target: draft.target,
            before: draft.before,
            after: draft.after,
            prev: prev.map(to_hex),
            details: draft.details,
        };
        let size = entry.to_line().len();
        if size > MAX_ENTRY_BYTES {
            return Err(EntryError::TooLarge(size));
        }
        Ok(entry)
    }

    /// The entry's canonical bytes: its `entries.jsonl` line without the newline, and its RFC 6962 leaf data.
    pub fn to_line(&self) -> Vec<u8> {
        // Serializing plain strings, integers and a JSON map cannot fail.
        let value = serde_json::to_value(self).unwrap_or(Value::Null);
        gait_canon::canonical_bytes(&value)
    }

    /// The entry's RFC 6962 leaf hash.
    pub fn leaf_hash(&self) -> Hash {
        leaf_hash(&self.to_line())
    }

    /// The `prev` field as a hash.
    pub fn prev_hash(&self) -> Option<Hash> {
        self.prev.as_deref().and_then(from_hex)
    }

    /// Reads one line (without its newline), checking every field and that the bytes are canonical.
    pub fn parse_line(line: &[u8]) -> Result<Self, EntryError> {
        if line.len() > MAX_ENTRY_BYTES {
            return Err(EntryError::TooLarge(line.len()));
        }
        let value =
            gait_canon::parse_json(line).map_err(|e| EntryError::Malformed(e.to_string()))?;
        let entry: Entry =
            serde_json::from_value(value).map_err(|e| EntryError::Malformed(e.to_string()))?;
        if entry.v != ENTRY_VERSION {
            return Err(EntryError::Field {
                field: "v",
                reason: format!("version {} is not {ENTRY_VERSION}", entry.v),
            });
        }
        check_time(&entry.time)?;
        EntryDraft {
            actor: entry.actor.clone(),
            action: entry.action.clone(),
            target: entry.target.clone(),
            before: entry.before.clone(),
            after: entry.after.clone(),
            details: None,
        }
        .validate()?;
        if let Some(prev) = &entry.prev
            && (prev.len() != 64
                || prev.bytes().any(|b| b.is_ascii_uppercase())
                || from_hex(prev).is_none())
        {
            return Err(EntryError::Field {
                field: "prev",
                reason: format!("{prev:?} must be 64 lowercase hex characters or null"),
            });
        }
        if entry.to_line() != line {
            return Err(EntryError::NotCanonical);
        }
        Ok(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft() -> EntryDraft {
        EntryDraft {
            actor: "admin-token".into(),
            action: "bundle.publish".into(),
            target: Target::in_env("acme", "web", "prod", "bundle", "3"),
            before: None,
            after: Some(content_digest(b"bundle")),
            details: None,
        }
    }

    #[test]
    fn an_entry_reads_back_from_its_line_and_the_line_is_canonical() {
        let e = Entry::new(draft(), 7, 1_764_911_400_123, Some(&[7u8; 32])).unwrap();
        let line = e.to_line();
        let text = std::str::from_utf8(&line).unwrap();
        assert!(
            text.starts_with(
                r#"{"action":"bundle.publish","actor":"admin-token","after":"sha256:"#
            )
        );
        assert!(
            text.contains(r#""time":"2025-12-05T05:10:00.123Z""#),
            "{text}"
        );
        assert_eq!(Entry::parse_line(&line).unwrap(), e);
    }

    #[test]
    fn a_reformatted_or_altered_line_is_refused() {
        let e = Entry::new(draft(), 0, 0, None).unwrap();
        let text = String::from_utf8(e.to_line()).unwrap();
        let spaced = text.replace(",\"actor\"", ", \"actor\"");
        assert_eq!(
            Entry::parse_line(spaced.as_bytes()),
            Err(EntryError::NotCanonical)
        );
        let extra = text.replacen('{', "{\"x\":1,", 1);
        assert!(matches!(
            Entry::parse_line(extra.as_bytes()),
            Err(EntryError::Malformed(_))
        ));
        let bad_time = text.replace("1970-01-01T00:00:00.000Z", "1970-01-01T00:00:00Z");
        assert!(matches!(
            Entry::parse_line(bad_time.as_bytes()),
            Err(EntryError::Field { field: "time", .. })
        ));
    }

    #[test]
    fn drafts_with_bad_fields_name_the_field() {
        let mut d = draft();
        d.action = "Bundle Publish".into();
        assert!(matches!(
            d.validate(),
            Err(EntryError::Field {
                field: "action",
                ..
            })
        ));
        let mut d = draft();
        d.before = Some("md5:00".into());
        assert!(matches!(
            d.validate(),
            Err(EntryError::Field {
                field: "before",
                ..
            })
        ));
        let mut d = draft();
        d.actor = String::new();
        assert!(matches!(
            d.validate(),
            Err(EntryError::Field { field: "actor", .. })
        ));
    }
}
