//! Why the aggregator refuses a record or a batch: [`RefusalCode`], one stable string per reason, and the
//! predicate that tells the agent what to do about it. A permanent refusal of a named record means that record
//! will never be accepted as it is: the agent moves it into its quarantine and the stream goes on. A retryable
//! refusal means the same batch may succeed later.
//!
//! On the wire a code travels as its string form ([`RefusalCode::as_str`]) inside
//! [`crate::RecordRefusal`], so an aggregator may add codes without breaking older agents: an agent that
//! does not know a code treats it as permanent (see [`RefusalCode::parse_or_permanent`]), because resending a
//! record the aggregator explicitly refused would stall the stream, while a quarantined record is kept.

use crate::record::RecordError;

/// A stable reason for refusing a record or a batch. Append new codes at the end; never rename one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusalCode {
    /// `seq` is 0 or above [`crate::limits::MAX_SEQ`].
    RecordSeqInvalid,
    /// `kind` is empty, too long or holds a control character.
    RecordKindInvalid,
    /// `payload` is over [`crate::limits::MAX_PAYLOAD_BYTES`].
    RecordPayloadTooLarge,
    /// `bundle` references an epoch the aggregator cannot store.
    RecordBundleInvalid,
    /// `hash` does not match the record's content.
    RecordHashMismatch,
    /// The store refused the record for a reason of its own (an input rule not covered above).
    RecordStoreRefused,
    /// The batch holds more than [`crate::limits::MAX_BATCH_RECORDS`] records (names no record).
    BatchTooLarge,
    /// The aggregator cannot take records now (store down, overload); send the batch again later.
    Unavailable,
    /// The aggregator already holds a different record at this seq (another instance of the agent identity
    /// wrote it). Reported in `BatchAck.conflicts`, not in `RecordRefused`; the agent quarantines the record
    /// under this code.
    RecordSeqConflict,
}

impl RefusalCode {
    /// Every code, in declaration order.
    pub const ALL: [RefusalCode; 9] = [
        RefusalCode::RecordSeqInvalid,
        RefusalCode::RecordKindInvalid,
        RefusalCode::RecordPayloadTooLarge,
        RefusalCode::RecordBundleInvalid,
        RefusalCode::RecordHashMismatch,
        RefusalCode::RecordStoreRefused,
        RefusalCode::BatchTooLarge,
        RefusalCode::Unavailable,
        RefusalCode::RecordSeqConflict,
    ];

    /// Stable snake_case form, used on the wire, in logs, metric labels and the agent's quarantine.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalCode::RecordSeqInvalid => "record_seq_invalid",
            RefusalCode::RecordKindInvalid => "record_kind_invalid",
            RefusalCode::RecordPayloadTooLarge => "record_payload_too_large",
            RefusalCode::RecordBundleInvalid => "record_bundle_invalid",
            RefusalCode::RecordHashMismatch => "record_hash_mismatch",
            RefusalCode::RecordStoreRefused => "record_store_refused",
            RefusalCode::BatchTooLarge => "batch_too_large",
            RefusalCode::Unavailable => "unavailable",
            RefusalCode::RecordSeqConflict => "record_seq_conflict",
        }
    }

    /// Inverse of [`RefusalCode::as_str`] (exact match); `None` for a code this version does not know.
    pub fn parse(s: &str) -> Option<Self> {
        RefusalCode::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// Whether a record refused with this code will never be accepted as it is: the agent must quarantine
    /// it rather than send it again. `BatchTooLarge` is permanent too but names no record (the agent sends
    /// smaller batches).
    pub fn is_permanent(self) -> bool {
        !self.is_retryable()
    }

    /// Whether sending the same batch again later may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(self, RefusalCode::Unavailable)
    }

    /// Whether the refusal is about one record (so a permanent one sends that record to quarantine).
    pub fn names_record(self) -> bool {
        !matches!(self, RefusalCode::BatchTooLarge | RefusalCode::Unavailable)
    }

    /// Whether a code received as a string is permanent: a known code answers for itself, an unknown one
    /// is treated as permanent (module docs).
    pub fn parse_or_permanent(s: &str) -> bool {
        RefusalCode::parse(s).is_none_or(RefusalCode::is_permanent)
    }
}

impl std::fmt::Display for RefusalCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&RecordError> for RefusalCode {
    fn from(e: &RecordError) -> Self {
        e.refusal_code()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_code_round_trips_through_its_string() {
        for code in RefusalCode::ALL {
            assert_eq!(RefusalCode::parse(code.as_str()), Some(code));
            assert_eq!(code.to_string(), code.as_str());
        }
    }

    #[test]
    fn only_unavailable_is_retryable() {
        let retryable: Vec<_> = RefusalCode::ALL
            .into_iter()
            .filter(|c| c.is_retryable())
            .collect();
        assert_eq!(retryable, vec![RefusalCode::Unavailable]);
        assert!(RefusalCode::RecordKindInvalid.is_permanent());
        assert!(RefusalCode::RecordKindInvalid.names_record());
        assert!(!RefusalCode::BatchTooLarge.names_record());
    }

    #[test]
    fn unknown_codes_are_treated_as_permanent() {
        assert!(RefusalCode::parse_or_permanent("record_from_the_future"));
        assert!(!RefusalCode::parse_or_permanent("unavailable"));
        assert!(RefusalCode::parse_or_permanent("record_kind_invalid"));
    }

    proptest! {
        #[test]
        fn parse_accepts_exactly_the_stable_strings(s in "[a-z_]{0,32}") {
            match RefusalCode::parse(&s) {
                Some(code) => prop_assert_eq!(code.as_str(), s.as_str()),
                None => prop_assert!(RefusalCode::ALL.iter().all(|c| c.as_str() != s)),
            }
        }
    }
}
