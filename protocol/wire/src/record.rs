//! Outbox records as they travel on the wire, their priority classes, and the per-agent SHA-256 hash chain.
//!
//! # Record hash (version 1)
//! Each record carries `hash = SHA-256(input)` and the `prev_hash` of the record before it in the same agent's
//! sequence; the first record of an agent uses [`GENESIS_HASH`] (32 zero bytes). `input` is the concatenation
//! below. Every integer is big-endian; every variable-length field is preceded by its byte length as a `u64`
//! so no two distinct records share an input:
//!
//! ```text
//! u64 len("gait.wire.record.v1") || "gait.wire.record.v1"      domain separation tag
//! u64 seq
//! prev_hash                                                    32 bytes
//! u64 len(class) || class                                      RecordClass::as_str(), ASCII, e.g. "block"
//! u64 len(kind)  || kind                                       UTF-8
//! i64 created_unix_ms                                          two's complement
//! 0x00                                                         bundle = None
//!   | 0x01 || u64 epoch || digest (32 bytes) || i64 since_unix_ms
//! u64 len(payload) || payload
//! ```
//!
//! The `hash` field itself is not part of the input. The input does not depend on postcard, so a verifier in
//! another language (or over an exported JSON projection) can recompute it. `schemas/wire/v1/record_hash.hex`
//! pins one worked example.

use crate::{BundleRef, Digest};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// `prev_hash` of the first record in an agent's sequence.
pub const GENESIS_HASH: Digest = [0; 32];

/// Domain separation tag that starts every record hash input.
const RECORD_HASH_DOMAIN: &[u8] = b"gait.wire.record.v1";

/// Priority class of a record. The outbox sheds the lowest class first under pressure, and only
/// [`RecordClass::Allow`] may be shed at all. Declaration order is priority order, highest first.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordClass {
    /// A gate decision that blocked an intent.
    Block,
    /// An approval request, grant or denial.
    Approval,
    /// A digest reference to an imported artifact (runpack, trace, regress result).
    ArtifactDigest,
    /// A gate decision that allowed an intent; the only sheddable class.
    Allow,
    /// Agent health and status snapshots.
    Status,
}

impl RecordClass {
    /// Every class, highest priority first.
    pub const ALL: [RecordClass; 5] = [
        RecordClass::Block,
        RecordClass::Approval,
        RecordClass::ArtifactDigest,
        RecordClass::Allow,
        RecordClass::Status,
    ];

    /// Whether the outbox may drop records of this class when it is full (only `Allow`).
    pub fn is_sheddable(self) -> bool {
        matches!(self, RecordClass::Allow)
    }

    /// Stable lowercase name, used in the record hash, in storage and in the HTTP API.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordClass::Block => "block",
            RecordClass::Approval => "approval",
            RecordClass::ArtifactDigest => "artifact_digest",
            RecordClass::Allow => "allow",
            RecordClass::Status => "status",
        }
    }

    /// Inverse of [`RecordClass::as_str`]; `None` for any other string (exact, case-sensitive match).
    pub fn parse(s: &str) -> Option<Self> {
        RecordClass::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// Priority rank, 0 = highest (`Block`).
    pub fn priority(self) -> u8 {
        match self {
            RecordClass::Block => 0,
            RecordClass::Approval => 1,
            RecordClass::ArtifactDigest => 2,
            RecordClass::Allow => 3,
            RecordClass::Status => 4,
        }
    }
}

impl std::fmt::Display for RecordClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One outbox record: a decision, an artifact reference or a status snapshot, chained by hash per agent.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Per-agent sequence number, strictly increasing, starting at 1.
    pub seq: u64,
    /// `hash` of the previous record of this agent, or [`GENESIS_HASH`] for the first one.
    pub prev_hash: Digest,
    /// SHA-256 over the input documented in the module header.
    pub hash: Digest,
    /// Priority class.
    pub class: RecordClass,
    /// What the payload is, e.g. `"gate.decision"`, `"artifact.trace"`, `"agent.status"`.
    pub kind: String,
    /// Creation time on the agent's clock, milliseconds since the Unix epoch.
    pub created_unix_ms: i64,
    /// The policy bundle in force when the record was made.
    pub bundle: Option<BundleRef>,
    /// JSON document bytes; its schema depends on `kind`.
    #[serde(with = "crate::byte_buf")]
    pub payload: Vec<u8>,
}

impl Record {
    /// Build a record and fill in its `hash` from the other fields.
    pub fn sealed(
        seq: u64,
        prev_hash: Digest,
        class: RecordClass,
        kind: impl Into<String>,
        created_unix_ms: i64,
        bundle: Option<BundleRef>,
        payload: Vec<u8>,
    ) -> Record {
        let mut record = Record {
            seq,
            prev_hash,
            hash: [0; 32],
            class,
            kind: kind.into(),
            created_unix_ms,
            bundle,
            payload,
        };
        record.hash = record.compute_hash();
        record
    }

    /// The record hash over every field except `hash` (encoding in the module header).
    pub fn compute_hash(&self) -> Digest {
        let mut h = Sha256::new();
        put_bytes(&mut h, RECORD_HASH_DOMAIN);
        h.update(self.seq.to_be_bytes());
        h.update(self.prev_hash);
        put_bytes(&mut h, self.class.as_str().as_bytes());
        put_bytes(&mut h, self.kind.as_bytes());
        h.update(self.created_unix_ms.to_be_bytes());
        match &self.bundle {
            None => h.update([0u8]),
            Some(b) => {
                h.update([1u8]);
                h.update(b.epoch.to_be_bytes());
                h.update(b.digest);
                h.update(b.since_unix_ms.to_be_bytes());
            }
        }
        put_bytes(&mut h, &self.payload);
        h.finalize().into()
    }

    /// Whether `hash` matches the other fields.
    pub fn verify_hash(&self) -> bool {
        self.compute_hash() == self.hash
    }
}

/// Length-prefixed (u64 big-endian) byte string.
fn put_bytes(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_be_bytes());
    h.update(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        Record::sealed(
            7,
            [0x11; 32],
            RecordClass::Block,
            "gate.decision",
            1_700_000_000_000,
            Some(BundleRef {
                epoch: 3,
                digest: [0x22; 32],
                since_unix_ms: 1_699_999_000_000,
            }),
            br#"{"verdict":"block"}"#.to_vec(),
        )
    }

    #[test]
    fn class_names_round_trip_and_unknown_names_are_refused() {
        for class in RecordClass::ALL {
            assert_eq!(RecordClass::parse(class.as_str()), Some(class));
        }
        assert_eq!(RecordClass::parse("Block"), None);
        assert_eq!(RecordClass::parse(""), None);
    }

    #[test]
    fn only_allow_records_are_sheddable() {
        let sheddable: Vec<_> = RecordClass::ALL
            .into_iter()
            .filter(|c| c.is_sheddable())
            .collect();
        assert_eq!(sheddable, vec![RecordClass::Allow]);
    }

    #[test]
    fn priority_follows_declaration_order() {
        for (i, class) in RecordClass::ALL.into_iter().enumerate() {
            assert_eq!(usize::from(class.priority()), i);
        }
    }

    #[test]
    fn sealed_record_verifies_and_any_field_change_breaks_the_hash() {
        let r = sample();
        assert!(r.verify_hash());
        let mutations: [fn(&mut Record); 10] = [
            |r| r.seq += 1,
            |r| r.prev_hash[31] ^= 1,
            |r| r.class = RecordClass::Allow,
            |r| r.kind.push('x'),
            |r| r.created_unix_ms -= 1,
            |r| r.bundle = None,
            |r| {
                if let Some(b) = r.bundle.as_mut() {
                    b.epoch += 1
                }
            },
            |r| {
                if let Some(b) = r.bundle.as_mut() {
                    b.digest[0] ^= 1
                }
            },
            |r| {
                if let Some(b) = r.bundle.as_mut() {
                    b.since_unix_ms += 1
                }
            },
            |r| r.payload.push(b' '),
        ];
        for (i, mutate) in mutations.iter().enumerate() {
            let mut m = r.clone();
            mutate(&mut m);
            assert!(!m.verify_hash(), "mutation {i} kept the hash valid");
        }
    }

    #[test]
    fn hash_matches_the_encoding_documented_in_the_module_header() {
        let r = sample();
        let mut input = Vec::new();
        input.extend_from_slice(&19u64.to_be_bytes());
        input.extend_from_slice(b"gait.wire.record.v1");
        input.extend_from_slice(&7u64.to_be_bytes());
        input.extend_from_slice(&[0x11; 32]);
        for field in [&b"block"[..], b"gate.decision"] {
            input.extend_from_slice(&(field.len() as u64).to_be_bytes());
            input.extend_from_slice(field);
        }
        input.extend_from_slice(&1_700_000_000_000i64.to_be_bytes());
        input.push(1);
        input.extend_from_slice(&3u64.to_be_bytes());
        input.extend_from_slice(&[0x22; 32]);
        input.extend_from_slice(&1_699_999_000_000i64.to_be_bytes());
        let payload = br#"{"verdict":"block"}"#;
        input.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        input.extend_from_slice(payload);
        let expected: Digest = Sha256::digest(&input).into();
        assert_eq!(r.hash, expected);

        let bare = Record::sealed(
            1,
            GENESIS_HASH,
            RecordClass::Status,
            "",
            -1,
            None,
            Vec::new(),
        );
        let mut input = Vec::new();
        input.extend_from_slice(&19u64.to_be_bytes());
        input.extend_from_slice(b"gait.wire.record.v1");
        input.extend_from_slice(&1u64.to_be_bytes());
        input.extend_from_slice(&[0; 32]);
        input.extend_from_slice(&6u64.to_be_bytes());
        input.extend_from_slice(b"status");
        input.extend_from_slice(&0u64.to_be_bytes());
        input.extend_from_slice(&(-1i64).to_be_bytes());
        input.push(0);
        input.extend_from_slice(&0u64.to_be_bytes());
        let expected: Digest = Sha256::digest(&input).into();
        assert_eq!(bare.hash, expected);
    }
}
