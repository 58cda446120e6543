//! The limits both ends enforce on what travels between agent and aggregator. One value each: the agent's
//! outbox refuses a record that breaks one before it gets a seq, ingest and the store refuse it with the same
//! rule ([`crate::Record::validate`]), so a record either passes everywhere or is refused at its producer.
//!
//! Why each value was chosen is recorded in `docs/adr/0002-reshape-decisions.md` (section `reshape-wire`).

use std::ops::RangeInclusive;

/// Largest record `kind`, in bytes (UTF-8). A kind is also non-empty and free of control characters.
pub const MAX_KIND_BYTES: usize = 64;

/// Largest record payload, in bytes. Bigger artifacts are stored elsewhere and referenced by digest.
pub const MAX_PAYLOAD_BYTES: usize = 1024 * 1024;

/// Largest record sequence number: the aggregator's databases hold it as a signed 64-bit integer.
pub const MAX_SEQ: u64 = i64::MAX as u64;

/// Largest bundle epoch a record may reference (same reason as [`MAX_SEQ`]).
pub const MAX_BUNDLE_EPOCH: u64 = i64::MAX as u64;

/// Largest CSR a `RenewCertificate` may carry, in bytes (a P-256 CSR is about 300).
pub const MAX_CSR_BYTES: usize = 16 * 1024;

/// Most records in one `RecordBatch`.
pub const MAX_BATCH_RECORDS: usize = 10_000;

/// The `wait_ms` a `PollBundle` may carry. The aggregator may answer sooner (it holds a poll at most as
/// long as its own cap), never later.
pub const POLL_WAIT_MS: RangeInclusive<u32> = 1_000..=120_000;

/// Why a `kind` string breaks the kind rule, or `None` when it is acceptable.
pub fn kind_violation(kind: &str) -> Option<KindViolation> {
    if kind.is_empty() {
        Some(KindViolation::Empty)
    } else if kind.len() > MAX_KIND_BYTES {
        Some(KindViolation::TooLong { len: kind.len() })
    } else if kind.chars().any(char::is_control) {
        Some(KindViolation::ControlCharacter)
    } else {
        None
    }
}

/// How a record `kind` breaks the kind rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KindViolation {
    /// The kind is the empty string.
    #[error("is empty")]
    Empty,
    /// The kind is longer than [`MAX_KIND_BYTES`].
    #[error("is {len} bytes, over the {MAX_KIND_BYTES}-byte limit")]
    TooLong {
        /// Length of the kind in bytes.
        len: usize,
    },
    /// The kind contains a control character (newline, NUL, ...).
    #[error("contains a control character")]
    ControlCharacter,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_rule_accepts_the_kinds_producers_write_today() {
        for kind in [
            "gate.decision",
            "artifact.trace",
            "agent.status",
            "x",
            &"k".repeat(64),
        ] {
            assert_eq!(kind_violation(kind), None, "{kind}");
        }
    }

    #[test]
    fn kind_rule_refuses_empty_long_and_control_characters() {
        assert_eq!(kind_violation(""), Some(KindViolation::Empty));
        assert_eq!(
            kind_violation(&"k".repeat(65)),
            Some(KindViolation::TooLong { len: 65 })
        );
        assert_eq!(
            kind_violation(&"é".repeat(33)),
            Some(KindViolation::TooLong { len: 66 })
        );
        assert_eq!(
            kind_violation("gate\ndecision"),
            Some(KindViolation::ControlCharacter)
        );
    }

    #[test]
    fn poll_wait_bounds_are_ordered() {
        assert!(POLL_WAIT_MS.start() < POLL_WAIT_MS.end());
    }
}
