//! Enqueueing verified artifacts exactly once: the one code path `gait-agent push` (in its own process or
//! through the daemon's `POST /v1/artifacts`) and the directory watcher share.
//!
//! Each offered file is verified ([`super::verify`]); the valid ones become `RecordClass::ArtifactDigest`
//! records of kind `artifact.<kind>` whose payload is the [`ArtifactRecord`] JSON (digests and projection,
//! never the file's bytes). The records and the `capture_imported` digest table (`crate::db::CAPTURE_IMPORTED`)
//! are written in ONE outbox commit, so a digest is known exactly when its record is in the outbox: offering
//! the same bytes again, under any name, by push or by the watcher, before or after a restart, enqueues
//! nothing and answers the seq of the first record.

use gait_artifact::evidence::{ArtifactKind, ArtifactRecord, ArtifactSource};
use gait_wire::{BundleRef, RecordClass};
use redb::ReadableTable;
use serde::Serialize;

use super::verify::{InvalidArtifact, TraceKeys};
use crate::db::CAPTURE_IMPORTED;
use crate::outbox::{AppendOutcome, NewRecord, Outbox, OutboxError};

/// One file offered for import.
#[derive(Debug, Clone)]
pub struct Offered {
    /// The file's name as shown to the user (a path for push, the file name in the record).
    pub name: String,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// What happened to one offered file.
#[derive(Debug)]
pub enum Outcome {
    /// Verified and enqueued under `seq`.
    Enqueued {
        /// The record's seq.
        seq: u64,
        /// The record's payload.
        record: Box<ArtifactRecord>,
    },
    /// Verified, and the same bytes were enqueued before under `seq` (perhaps already committed).
    Duplicate {
        /// The earlier record's seq.
        seq: u64,
        /// The payload this file would have had.
        record: Box<ArtifactRecord>,
    },
    /// Not valid: never enqueued.
    Invalid(InvalidArtifact),
}

impl Outcome {
    /// The seq the caller waits for, when there is a record.
    pub fn seq(&self) -> Option<u64> {
        match self {
            Outcome::Enqueued { seq, .. } | Outcome::Duplicate { seq, .. } => Some(*seq),
            Outcome::Invalid(_) => None,
        }
    }

    /// The wire form of this outcome for `name` ([`FileResult`]).
    pub fn to_result(&self, name: &str) -> FileResult {
        let (status, seq, record, reason) = match self {
            Outcome::Enqueued { seq, record } => ("enqueued", Some(*seq), Some(record), None),
            Outcome::Duplicate { seq, record } => ("duplicate", Some(*seq), Some(record), None),
            Outcome::Invalid(e) if e.is_unknown_kind() => {
                ("not_artifact", None, None, Some(e.to_string()))
            }
            Outcome::Invalid(e) => ("invalid", None, None, Some(e.to_string())),
        };
        FileResult {
            file: name.to_owned(),
            status: status.to_owned(),
            seq,
            kind: record.map(|r| r.artifact_kind),
            sha256: record.map(|r| r.sha256.clone()),
            signature_status: record.map(|r| r.signature_status.clone()),
            reason,
        }
    }
}

/// One file's result as `POST /v1/artifacts` answers it and `gait-agent push --json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct FileResult {
    /// The file as offered.
    pub file: String,
    /// `enqueued`, `duplicate` (the same bytes were enqueued before), `invalid` (never enqueued, see
    /// `reason`), `not_artifact` (not a Gait artifact at all), `skipped` (not offered: see `reason`).
    pub status: String,
    /// The record's seq in the agent's outbox (`enqueued`, `duplicate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// The artifact kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<ArtifactKind>,
    /// SHA-256 of the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// `verified`, `skipped`, `missing` or `not_applicable`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature_status: Option<String>,
    /// Why the file is invalid or was skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The file name part of `name` (the record keeps no directories).
fn base_name(name: &str) -> &str {
    name.rsplit(['/', '\\']).next().unwrap_or(name)
}

/// Verifies every offered file and enqueues the valid ones not enqueued before, in one durable commit.
/// Blocks on verification and on the commit's fsync: async callers use `spawn_blocking`. Outcomes are in the
/// order offered. An error means nothing of this call was stored.
pub fn import(
    outbox: &Outbox,
    offered: &[Offered],
    source: ArtifactSource,
    keys: &TraceKeys,
    bundle: Option<BundleRef>,
    now_unix_ms: i64,
) -> Result<Vec<Outcome>, OutboxError> {
    let verified: Vec<Result<ArtifactRecord, InvalidArtifact>> = offered
        .iter()
        .map(|o| super::verify::verify(&o.bytes, base_name(&o.name), source, keys))
        .collect();
    if verified.iter().all(Result::is_err) {
        return Ok(verified
            .into_iter()
            .filter_map(Result::err)
            .map(Outcome::Invalid)
            .collect());
    }
    let db = outbox.db();
    outbox.append_in_transaction(|txn, append| {
        let mut table = txn
            .open_table(CAPTURE_IMPORTED)
            .map_err(|e| OutboxError::Db(db.err(e)))?;
        let mut outcomes = Vec::with_capacity(verified.len());
        for v in verified {
            let record = match v {
                Ok(record) => record,
                Err(e) => {
                    outcomes.push(Outcome::Invalid(e));
                    continue;
                }
            };
            let known = table
                .get(record.sha256.as_str())
                .map_err(|e| OutboxError::Db(db.err(e)))?
                .map(|v| v.value());
            if let Some(value) = known {
                let seq = u64::from_be_bytes(value[..8].try_into().unwrap_or([0; 8]));
                outcomes.push(Outcome::Duplicate {
                    seq,
                    record: Box::new(record),
                });
                continue;
            }
            let payload = serde_json::to_vec(&record).map_err(|e| OutboxError::Corrupt {
                path: db.path().display().to_string(),
                seq: 0,
                detail: format!("cannot encode an artifact record: {e}"),
            })?;
            if payload.len() > crate::outbox::MAX_PAYLOAD_BYTES {
                outcomes.push(Outcome::Invalid(InvalidArtifact::RecordTooLarge {
                    bytes: payload.len(),
                    max: crate::outbox::MAX_PAYLOAD_BYTES,
                }));
                continue;
            }
            let outcome = append(NewRecord {
                class: RecordClass::ArtifactDigest,
                kind: record.artifact_kind.record_kind().to_owned(),
                created_unix_ms: now_unix_ms,
                bundle: bundle.clone(),
                payload,
            })?;
            // Only `Allow` records are ever shed; an artifact record is stored or refused with an error.
            let AppendOutcome::Appended { seq } = outcome else {
                return Err(OutboxError::Corrupt {
                    path: db.path().display().to_string(),
                    seq: 0,
                    detail: "the outbox shed an artifact record".to_owned(),
                });
            };
            let mut value = [0u8; 16];
            value[..8].copy_from_slice(&seq.to_be_bytes());
            value[8..].copy_from_slice(&now_unix_ms.to_be_bytes());
            table
                .insert(record.sha256.as_str(), value)
                .map_err(|e| OutboxError::Db(db.err(e)))?;
            outcomes.push(Outcome::Enqueued {
                seq,
                record: Box::new(record),
            });
        }
        Ok(outcomes)
    })
}

/// Whether `sha256` was enqueued before, and under which seq (a read; no lock on writers).
pub fn imported_seq(outbox: &Outbox, sha256: &str) -> Result<Option<u64>, OutboxError> {
    let db = outbox.db();
    let read = db
        .redb()
        .begin_read()
        .map_err(|e| OutboxError::Db(db.err(e)))?;
    let table = match read.open_table(CAPTURE_IMPORTED) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(OutboxError::Db(db.err(e))),
    };
    Ok(table
        .get(sha256)
        .map_err(|e| OutboxError::Db(db.err(e)))?
        .map(|v| u64::from_be_bytes(v.value()[..8].try_into().unwrap_or([0; 8]))))
}
