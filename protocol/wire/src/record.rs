//! Outbox records as they travel on the wire, their priority classes, the per-agent BLAKE3 hash chain and
//! the one validation rule ([`Record::validate`]) that the agent's outbox, ingest and the store all apply.
//!
//! # Record hash (protocol version 2)
//! Each record carries `hash = BLAKE3(input)` (the default 32-byte BLAKE3 hash, unkeyed) and the `prev_hash`
//! of the record before it in the same agent's sequence; the first record of an agent uses [`GENESIS_HASH`]
//! (32 zero bytes). `input` is the concatenation below. Every integer is big-endian; every variable-length
//! field is preceded by its byte length as a `u64` so no two distinct records share an input:
//!
//! ```text
//! u64 len("gait.wire.record.v2") || "gait.wire.record.v2"      domain separation tag
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
//!
//! Protocol version 1 used SHA-256 over the same layout with the tag `gait.wire.record.v1`;
//! [`Record::compute_hash_v1`] keeps that function only so an agent can re-seal records written by an older
//! build (see the agent's outbox). The chain is this project's own: Gait's artifacts and digests (bundle
//! digests, `DigestJCS`) stay SHA-256 as Gait defines them. A `prev_hash` is an opaque link to the stored
//! `hash` of the previous record, so a chain may cross from a v1 hash to a v2 one.

use crate::limits::{self, KindViolation};
use crate::refusal::RefusalCode;
use crate::{BundleRef, Digest};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// `prev_hash` of the first record in an agent's sequence.
pub const GENESIS_HASH: Digest = [0; 32];

/// Domain separation tag that starts every record hash input.
const RECORD_HASH_DOMAIN: &[u8] = b"gait.wire.record.v2";

/// Domain separation tag of the protocol version 1 (SHA-256) record hash.
const RECORD_HASH_DOMAIN_V1: &[u8] = b"gait.wire.record.v1";

/// Why a record breaks a limit of [`crate::limits`]. Each variant names the field; [`RecordError::field`]
/// gives it as a string and [`RecordError::refusal_code`] the code the aggregator answers with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// `seq` is 0 (sequences start at 1).
    #[error("record seq 0 is reserved: sequences start at 1")]
    SeqZero,
    /// `seq` is above [`limits::MAX_SEQ`].
    #[error("record seq {seq} is above the limit {max}", max = limits::MAX_SEQ)]
    SeqTooLarge {
        /// The offending seq.
        seq: u64,
    },
    /// `kind` breaks the kind rule.
    #[error("record {seq} kind {violation}: a kind is 1-{max} bytes of UTF-8 without control characters", max = limits::MAX_KIND_BYTES)]
    Kind {
        /// Seq of the record (0 before the outbox assigned one).
        seq: u64,
        /// What is wrong with the kind.
        violation: KindViolation,
    },
    /// `payload` is over [`limits::MAX_PAYLOAD_BYTES`].
    #[error(
        "record {seq} payload is {len} bytes, over the {max}-byte limit: store the artifact elsewhere and \
         record its digest",
        max = limits::MAX_PAYLOAD_BYTES
    )]
    PayloadTooLarge {
        /// Seq of the record (0 before the outbox assigned one).
        seq: u64,
        /// Payload length in bytes.
        len: usize,
    },
    /// `bundle.epoch` is above [`limits::MAX_BUNDLE_EPOCH`].
    #[error("record {seq} bundle.epoch {epoch} is above the limit {max}", max = limits::MAX_BUNDLE_EPOCH)]
    BundleEpochTooLarge {
        /// Seq of the record.
        seq: u64,
        /// The offending epoch.
        epoch: u64,
    },
}

impl RecordError {
    /// Name of the offending field: `seq`, `kind`, `payload` or `bundle.epoch`.
    pub fn field(&self) -> &'static str {
        match self {
            RecordError::SeqZero | RecordError::SeqTooLarge { .. } => "seq",
            RecordError::Kind { .. } => "kind",
            RecordError::PayloadTooLarge { .. } => "payload",
            RecordError::BundleEpochTooLarge { .. } => "bundle.epoch",
        }
    }

    /// The refusal code an aggregator answers a record with this error with.
    pub fn refusal_code(&self) -> RefusalCode {
        match self {
            RecordError::SeqZero | RecordError::SeqTooLarge { .. } => RefusalCode::RecordSeqInvalid,
            RecordError::Kind { .. } => RefusalCode::RecordKindInvalid,
            RecordError::PayloadTooLarge { .. } => RefusalCode::RecordPayloadTooLarge,
            RecordError::BundleEpochTooLarge { .. } => RefusalCode::RecordBundleInvalid,
        }
    }
}

/// The content rule of a record apart from its seq: kind and payload limits. [`Record::validate`] applies it
/// after the seq check; the agent's outbox applies it to a record before it has a seq (`seq` is then 0 in
/// the error).
pub fn check_content(seq: u64, kind: &str, payload_len: usize) -> Result<(), RecordError> {
    if let Some(violation) = limits::kind_violation(kind) {
        return Err(RecordError::Kind { seq, violation });
    }
    if payload_len > limits::MAX_PAYLOAD_BYTES {
        return Err(RecordError::PayloadTooLarge {
            seq,
            len: payload_len,
        });
    }
    Ok(())
}

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
    /// BLAKE3 over the input documented in the module header.
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

    /// The record hash (BLAKE3) over every field except `hash` (encoding in the module header).
    pub fn compute_hash(&self) -> Digest {
        let mut h = blake3::Hasher::new();
        self.feed_coalesced(RECORD_HASH_DOMAIN, &mut |bytes| {
            h.update(bytes);
        });
        h.finalize().into()
    }

    /// The protocol version 1 record hash (SHA-256, tag `gait.wire.record.v1`). Only for recognising and
    /// re-sealing records written by an older agent; never used for new records.
    pub fn compute_hash_v1(&self) -> Digest {
        let mut h = Sha256::new();
        self.feed_coalesced(RECORD_HASH_DOMAIN_V1, &mut |bytes| h.update(bytes));
        h.finalize().into()
    }

    /// Whether `hash` matches the other fields.
    pub fn verify_hash(&self) -> bool {
        self.compute_hash() == self.hash
    }

    /// Checks every limit of [`crate::limits`] a single record is subject to: `seq` in 1..=`MAX_SEQ`, the
    /// kind rule, the payload size and the bundle epoch. The one rule the outbox (before storing), ingest
    /// and the store (before committing) apply; it does not check the hash (see [`Record::verify_hash`]).
    pub fn validate(&self) -> Result<(), RecordError> {
        if self.seq == 0 {
            return Err(RecordError::SeqZero);
        }
        if self.seq > limits::MAX_SEQ {
            return Err(RecordError::SeqTooLarge { seq: self.seq });
        }
        check_content(self.seq, &self.kind, self.payload.len())?;
        if let Some(b) = &self.bundle
            && b.epoch > limits::MAX_BUNDLE_EPOCH
        {
            return Err(RecordError::BundleEpochTooLarge {
                seq: self.seq,
                epoch: b.epoch,
            });
        }
        Ok(())
    }

    /// Feeds the hash input (module header) for `domain` to `put`, piece by piece.
    /// Feeds the hash input to `update` in as few calls as it can: the short fields go through one stack
    /// buffer, so a typical record is hashed in one or two calls instead of sixteen (per-call overhead dominates
    /// BLAKE3 on inputs of a few hundred bytes). The bytes fed are exactly [`Record::hash_input`]'s.
    fn feed_coalesced(&self, domain: &[u8], update: &mut dyn FnMut(&[u8])) {
        let mut buf = [0u8; HASH_BUF_LEN];
        let mut len = 0usize;
        self.hash_input(domain, &mut |bytes| {
            if len + bytes.len() <= HASH_BUF_LEN {
                buf[len..len + bytes.len()].copy_from_slice(bytes);
                len += bytes.len();
            } else {
                if len > 0 {
                    update(&buf[..len]);
                    len = 0;
                }
                if bytes.len() <= HASH_BUF_LEN {
                    buf[..bytes.len()].copy_from_slice(bytes);
                    len = bytes.len();
                } else {
                    update(bytes);
                }
            }
        });
        if len > 0 {
            update(&buf[..len]);
        }
    }

    fn hash_input(&self, domain: &[u8], put: &mut dyn FnMut(&[u8])) {
        put_bytes(put, domain);
        put(&self.seq.to_be_bytes());
        put(&self.prev_hash);
        put_bytes(put, self.class.as_str().as_bytes());
        put_bytes(put, self.kind.as_bytes());
        put(&self.created_unix_ms.to_be_bytes());
        match &self.bundle {
            None => put(&[0u8]),
            Some(b) => {
                put(&[1u8]);
                put(&b.epoch.to_be_bytes());
                put(&b.digest);
                put(&b.since_unix_ms.to_be_bytes());
            }
        }
        put_bytes(put, &self.payload);
    }
}

/// Bytes of hash input gathered before one hasher update (see [`Record::feed_coalesced`]).
const HASH_BUF_LEN: usize = 1024;

/// Length-prefixed (u64 big-endian) byte string.
fn put_bytes(put: &mut dyn FnMut(&[u8]), bytes: &[u8]) {
    put(&(bytes.len() as u64).to_be_bytes());
    put(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalesced_feeding_yields_exactly_the_documented_input_around_the_buffer_boundary() {
        for kind_len in [1usize, 64, 300, 2000] {
            for payload_len in [0usize, 1, 500, 700, 1023, 1024, 1025, 5000] {
                let r = Record::sealed(
                    9,
                    [3; 32],
                    RecordClass::Status,
                    "k".repeat(kind_len),
                    5,
                    None,
                    vec![0xAB; payload_len],
                );
                let mut plain = Vec::new();
                r.hash_input(RECORD_HASH_DOMAIN, &mut |b| plain.extend_from_slice(b));
                let mut coalesced = Vec::new();
                r.feed_coalesced(RECORD_HASH_DOMAIN, &mut |b| coalesced.extend_from_slice(b));
                assert_eq!(plain, coalesced, "kind {kind_len} payload {payload_len}");
                assert_eq!(r.compute_hash(), <[u8; 32]>::from(blake3::hash(&plain)));
            }
        }
    }

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
        input.extend_from_slice(b"gait.wire.record.v2");
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
        let expected: Digest = blake3::hash(&input).into();
        assert_eq!(r.hash, expected);
        let mut v1_input = input.clone();
        v1_input[8..27].copy_from_slice(b"gait.wire.record.v1");
        let v1: Digest = Sha256::digest(&v1_input).into();
        assert_eq!(r.compute_hash_v1(), v1);
        assert_ne!(r.compute_hash_v1(), r.hash);

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
        input.extend_from_slice(b"gait.wire.record.v2");
        input.extend_from_slice(&1u64.to_be_bytes());
        input.extend_from_slice(&[0; 32]);
        input.extend_from_slice(&6u64.to_be_bytes());
        input.extend_from_slice(b"status");
        input.extend_from_slice(&0u64.to_be_bytes());
        input.extend_from_slice(&(-1i64).to_be_bytes());
        input.push(0);
        input.extend_from_slice(&0u64.to_be_bytes());
        let expected: Digest = blake3::hash(&input).into();
        assert_eq!(bare.hash, expected);
    }

    fn with(seq: u64, kind: &str, payload_len: usize, epoch: Option<u64>) -> Record {
        let mut r = sample();
        r.seq = seq;
        r.kind = kind.to_owned();
        r.payload = vec![b'x'; payload_len];
        r.bundle = epoch.map(|epoch| BundleRef {
            epoch,
            digest: [0; 32],
            since_unix_ms: 0,
        });
        r
    }

    #[test]
    fn validate_names_the_field_and_the_limit() {
        assert_eq!(sample().validate(), Ok(()));
        let cases = [
            (with(0, "k", 1, None), "seq", RefusalCode::RecordSeqInvalid),
            (
                with(limits::MAX_SEQ + 1, "k", 1, None),
                "seq",
                RefusalCode::RecordSeqInvalid,
            ),
            (with(1, "", 1, None), "kind", RefusalCode::RecordKindInvalid),
            (
                with(1, &"k".repeat(65), 1, None),
                "kind",
                RefusalCode::RecordKindInvalid,
            ),
            (
                with(1, "a\u{0}b", 1, None),
                "kind",
                RefusalCode::RecordKindInvalid,
            ),
            (
                with(1, "k", limits::MAX_PAYLOAD_BYTES + 1, None),
                "payload",
                RefusalCode::RecordPayloadTooLarge,
            ),
            (
                with(1, "k", 1, Some(limits::MAX_BUNDLE_EPOCH + 1)),
                "bundle.epoch",
                RefusalCode::RecordBundleInvalid,
            ),
        ];
        for (record, field, code) in cases {
            let err = record.validate().expect_err(field);
            assert_eq!(err.field(), field);
            assert_eq!(err.refusal_code(), code);
            assert!(!err.to_string().is_empty());
        }
        let err = with(9, &"k".repeat(65), 1, None).validate().unwrap_err();
        assert_eq!(
            err.to_string(),
            "record 9 kind is 65 bytes, over the 64-byte limit: a kind is 1-64 bytes of UTF-8 without \
             control characters"
        );
    }

    #[test]
    fn validate_accepts_the_boundaries() {
        let at_limits = with(
            limits::MAX_SEQ,
            &"k".repeat(limits::MAX_KIND_BYTES),
            limits::MAX_PAYLOAD_BYTES,
            Some(limits::MAX_BUNDLE_EPOCH),
        );
        assert_eq!(at_limits.validate(), Ok(()));
    }

    proptest::proptest! {
        #[test]
        fn validate_agrees_with_the_limits(
            seq in proptest::prelude::any::<u64>(),
            kind in ".{0,80}",
            payload_len in 0usize..=(limits::MAX_PAYLOAD_BYTES + 8),
        ) {
            let mut r = sample();
            r.seq = seq;
            r.kind = kind.clone();
            r.payload = vec![0; payload_len];
            let ok = (1..=limits::MAX_SEQ).contains(&seq)
                && !kind.is_empty()
                && kind.len() <= limits::MAX_KIND_BYTES
                && !kind.chars().any(char::is_control)
                && payload_len <= limits::MAX_PAYLOAD_BYTES;
            proptest::prop_assert_eq!(r.validate().is_ok(), ok);
        }
    }
}
