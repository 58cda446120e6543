//! The values that cross the store boundary: keys, inputs, stored rows, and the checks applied to inputs.
//!
//! u64 values (sequence numbers, epochs, counters) are kept as signed 64-bit integers in both backends. The store
//! refuses inputs above `i64::MAX` with [`StoreError::InvalidInput`] instead of wrapping them, and reports a
//! stored negative value as [`StoreError::Corrupt`]; `i64::MAX` (9.2e18) is far beyond any real sequence.

use serde::{Deserialize, Serialize, Serializer};

use crate::error::StoreError;

/// Longest accepted record class or bundle refusal code, in bytes. (Record kinds follow the wire kind rule,
/// [`gait_wire::limits::MAX_KIND_BYTES`].)
pub const MAX_LABEL_BYTES: usize = 64;
/// Longest accepted free text (remote address, agent version, reason, created_by), in bytes.
pub const MAX_TEXT_BYTES: usize = 1024;
/// Longest accepted refusal message; longer messages from agents are cut to this length, not refused.
pub const MAX_REFUSAL_MESSAGE_BYTES: usize = 1024;
/// Most records one `commit_batch` call accepts: the wire limit of one batch.
pub const MAX_BATCH_RECORDS: usize = gait_wire::limits::MAX_BATCH_RECORDS;
/// Most records one `records` page returns; larger limits are clamped to it.
pub const MAX_RECORDS_PAGE: u32 = 1_000;

/// The tenancy every row is scoped by, and one agent inside one tenant: `gait-identity`'s types, so a value
/// the store holds satisfies the same identifier rule as HTTP paths, certificates and bundles.
pub use gait_identity::{AgentId, AgentKey, CertSerial, Env, Org, Project, Tenant};

/// A bundle an agent holds, named by epoch and manifest digest (64 lowercase hex characters).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleRef {
    pub epoch: u64,
    pub digest: String,
}

/// The bundle an agent enforces, and since when (unix ms).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActiveBundle {
    pub epoch: u64,
    pub digest: String,
    pub since_unix_ms: i64,
}

/// What an agent says about itself when it connects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentHello {
    /// Serial of the verified client certificate.
    pub cert_serial: CertSerial,
    /// Its `notAfter` (unix ms).
    pub cert_not_after_unix_ms: i64,
    /// Its issuer's distinguished name (RFC 4514 text): which CA it chains to.
    pub cert_issuer: String,
    pub remote_addr: String,
    pub agent_version: String,
    pub active_bundle: Option<ActiveBundle>,
    pub received_bundle: Option<BundleRef>,
    pub outbox_depth: u64,
    pub shed_total: u64,
}

/// What the aggregator already holds of an agent's record stream: every seq up to `committed_seq` is stored
/// or recorded as a gap, and `committed_hash` is the hash of record `committed_seq` (zeros when it is 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AgentCursor {
    pub committed_seq: u64,
    pub committed_hash: [u8; 32],
}

/// An agent's report about a bundle it was sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BundleReportRow {
    /// Verified and stored, not yet enforced.
    Received(BundleRef),
    /// Now enforced.
    Activated(ActiveBundle),
    /// Refused (bad signature, rollback, stale...); `message` longer than [`MAX_REFUSAL_MESSAGE_BYTES`] is cut.
    Refused {
        epoch: u64,
        code: String,
        message: String,
    },
}

/// One outbox record as the agent sent it. Sequence numbers start at 1; the first record's `prev_hash` is
/// 32 zero bytes and every later one's is the `hash` of the record before it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewRecord {
    pub seq: u64,
    pub prev_hash: [u8; 32],
    pub hash: [u8; 32],
    pub class: String,
    pub kind: String,
    pub created_unix_ms: i64,
    pub bundle_epoch: Option<u64>,
    pub bundle_digest: Option<String>,
    pub bundle_since_ms: Option<i64>,
    /// JSON bytes, stored as given.
    pub payload: Vec<u8>,
}

/// What one `commit_batch` did. Every record of the batch is counted exactly once in `inserted`,
/// `duplicates` or `conflicts`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Records newly stored.
    pub inserted: u64,
    /// Records already stored with the same hash (redelivery), including repeats inside the batch.
    pub duplicates: u64,
    /// Records whose seq is stored (or repeated in the batch) with a different hash; the stored one is kept.
    pub conflicts: u64,
    /// The seqs counted in `conflicts`, ascending, one entry per conflicting record.
    pub conflict_seqs: Vec<u64>,
    /// Cursor after the batch.
    pub committed_seq: u64,
    pub committed_hash: [u8; 32],
    /// `missing` gaps found by this batch, as inclusive (first_seq, last_seq) ranges.
    pub gaps: Vec<(u64, u64)>,
    /// Seqs whose `prev_hash` did not match the hash of the record before them (`chain_break` gaps).
    pub chain_breaks: Vec<u64>,
    /// Skipped seqs the aggregator had refused for good ([`RefusedRecord`]): the agent quarantined them, so
    /// they are accounted for and not counted in `gaps`. Ascending.
    pub refused: Vec<u64>,
    /// The evidence index rows this batch wrote, as (seq, evidence id), ascending by seq: what an in-process
    /// upkeep feed needs to account for exactly the ids the index holds (`commit_batch_indexed` only).
    pub indexed: Vec<(u64, u64)>,
}

/// A record the aggregator refused for good (a permanent [`gait_wire::RefusalCode`]): the agent quarantines
/// it and ships the records after it, so its seq never arrives and is not recorded as a `missing` gap.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RefusedRecord {
    /// The refused record's seq.
    pub seq: u64,
    /// The refusal code ([`gait_wire::RefusalCode::as_str`]).
    pub code: String,
    /// What the agent was told, cut to [`MAX_REFUSAL_MESSAGE_BYTES`].
    pub message: String,
    /// When the (latest) refusal was recorded.
    pub refused_unix_ms: i64,
}

/// A published policy bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredBundle {
    pub epoch: u64,
    pub digest: String,
    pub bytes: Vec<u8>,
    pub created_unix_ms: i64,
    pub created_by: String,
}

/// Agents returned per page when the caller names no limit.
pub const DEFAULT_AGENT_PAGE: u32 = 500;
/// Largest page of agents.
pub const MAX_AGENT_PAGE: u32 = 5_000;

/// Which agents to list: `org` is required, `project` and `env` narrow the list when set. Pages follow the
/// order (project, env, agent_id): `after` is the last agent of the previous page.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentFilter {
    pub org: Org,
    #[serde(default)]
    pub project: Option<Project>,
    #[serde(default)]
    pub env: Option<Env>,
    /// Start after this agent (exclusive).
    #[serde(default)]
    pub after: Option<AgentPosition>,
    /// Page size, 1..=[`MAX_AGENT_PAGE`]; `None` is [`DEFAULT_AGENT_PAGE`].
    #[serde(default)]
    pub limit: Option<u32>,
}

impl AgentFilter {
    /// Every agent of `org`, first page of the default size.
    pub fn for_org(org: Org) -> Self {
        AgentFilter {
            org,
            project: None,
            env: None,
            after: None,
            limit: None,
        }
    }

    /// The page size to use.
    pub fn page_size(&self) -> u32 {
        self.limit
            .unwrap_or(DEFAULT_AGENT_PAGE)
            .clamp(1, MAX_AGENT_PAGE)
    }
}

/// An agent's place in the listing order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentPosition {
    pub project: Project,
    pub env: Env,
    pub agent_id: AgentId,
}

impl AgentRow {
    /// This agent's place in the listing order (the cursor of a page that ends with it).
    pub fn position(&self) -> AgentPosition {
        AgentPosition {
            project: self.tenant.project.clone(),
            env: self.tenant.env.clone(),
            agent_id: self.agent_id.clone(),
        }
    }
}

impl AgentPosition {
    /// The cursor text `project/env/agent_id` (identifiers never contain `/`).
    pub fn to_cursor(&self) -> String {
        format!("{}/{}/{}", self.project, self.env, self.agent_id)
    }

    /// Parses [`AgentPosition::to_cursor`] output; `None` unless it is three valid identifiers.
    pub fn from_cursor(text: &str) -> Option<AgentPosition> {
        let mut parts = text.split('/');
        let (Some(project), Some(env), Some(agent_id), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        Some(AgentPosition {
            project: project.parse().ok()?,
            env: env.parse().ok()?,
            agent_id: agent_id.parse().ok()?,
        })
    }
}

/// The last bundle an agent refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Refusal {
    pub code: String,
    pub message: String,
    pub epoch: u64,
    pub at_unix_ms: i64,
}

/// One agent as the HTTP API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AgentRow {
    #[serde(flatten)]
    pub tenant: Tenant,
    pub agent_id: AgentId,
    pub cert_serial: CertSerial,
    /// `notAfter` (unix ms) of the certificate presented at the last connection; `None` before one was
    /// recorded (an agent not connected since the upgrade that added it).
    pub cert_not_after_unix_ms: Option<i64>,
    /// Issuer (RFC 4514 text) of that certificate; `None` as above.
    pub cert_issuer: Option<String>,
    pub first_seen_unix_ms: i64,
    pub last_seen_unix_ms: i64,
    pub remote_addr: String,
    pub agent_version: String,
    pub active_bundle: Option<ActiveBundle>,
    pub received_bundle: Option<BundleRef>,
    pub last_refusal: Option<Refusal>,
    pub committed_seq: u64,
    #[serde(serialize_with = "hex_bytes")]
    pub committed_hash: [u8; 32],
    pub outbox_depth: u64,
    pub shed_total: u64,
    pub gap_count: u64,
    /// The agent data directory (instance id, 32 hex digits) that last said hello; empty before any did.
    pub instance_id: String,
    /// Records not stored because the aggregator already held a different record at their seq (another
    /// instance of this identity wrote them), over the agent's life. Durable: never resets.
    pub conflict_count: u64,
}

/// Why a gap row exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GapKind {
    /// Seqs the agent skipped: they were never delivered and never will be (shed, or lost on the agent).
    Missing,
    /// A record whose `prev_hash` is not the hash of the stored record before it.
    ChainBreak,
}

impl GapKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::ChainBreak => "chain_break",
        }
    }

    pub(crate) fn parse(s: &str) -> Result<Self, StoreError> {
        match s {
            "missing" => Ok(Self::Missing),
            "chain_break" => Ok(Self::ChainBreak),
            other => Err(StoreError::corrupt(
                "record_gaps",
                format!("unknown gap kind {other:?}"),
            )),
        }
    }
}

/// One recorded gap in an agent's stream (inclusive seq range).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct GapRow {
    pub first_seq: u64,
    pub last_seq: u64,
    pub kind: GapKind,
    pub detected_unix_ms: i64,
}

/// One stored record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRecord {
    pub seq: u64,
    pub class: String,
    pub kind: String,
    pub record_hash: [u8; 32],
    pub prev_hash: [u8; 32],
    pub created_unix_ms: i64,
    pub bundle_epoch: Option<u64>,
    pub bundle_digest: Option<String>,
    pub bundle_since_ms: Option<i64>,
    pub payload: Vec<u8>,
    pub received_unix_ms: i64,
}

/// A revoked client certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// The revoked certificate's serial.
    pub cert_serial: CertSerial,
    /// The agent the certificate belongs to: every stored row is tenancy-scoped, so an operator revoking a bare
    /// serial must name (or let the store find) its agent.
    pub agent: AgentKey,
    /// Why the certificate was revoked, as the operator gave it.
    pub reason: String,
    /// Who revoked it (the operator's OS user for `pki revoke`); must not be empty.
    pub revoked_by: String,
}

/// A revocation as stored: what was revoked, and when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredRevocation {
    /// The revoked certificate's serial.
    pub cert_serial: CertSerial,
    /// The agent the certificate belongs to.
    pub agent: AgentKey,
    /// Why the certificate was revoked.
    pub reason: String,
    /// Who revoked it; `None` for a revocation recorded before the store kept that.
    pub revoked_by: Option<String>,
    /// When it was recorded (Unix milliseconds).
    pub revoked_unix_ms: i64,
}

fn hex_bytes<S: Serializer>(bytes: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(bytes))
}

/// A label (record class, bundle refusal code): non-empty, at most [`MAX_LABEL_BYTES`], no control characters.
pub(crate) fn check_label(field: &str, value: &str) -> Result<(), StoreError> {
    if value.is_empty() {
        return Err(StoreError::invalid(field, "must not be empty"));
    }
    check_text(field, value, MAX_LABEL_BYTES)
}

pub(crate) fn check_text(field: &str, value: &str, max: usize) -> Result<(), StoreError> {
    if value.len() > max {
        return Err(StoreError::invalid(
            field,
            format!("is {} bytes, the limit is {max}", value.len()),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(StoreError::invalid(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// A manifest digest: SHA-256 as 64 lowercase hex characters, no prefix.
pub(crate) fn check_digest(field: &str, digest: &str) -> Result<(), StoreError> {
    let ok = digest.len() == 64
        && digest
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if ok {
        Ok(())
    } else {
        Err(StoreError::invalid(
            field,
            "must be a SHA-256 digest as 64 lowercase hex characters",
        ))
    }
}

/// A u64 as the i64 the databases hold; values above `i64::MAX` are refused.
pub(crate) fn to_i64(field: &str, value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| {
        StoreError::invalid(field, format!("{value} exceeds the maximum {}", i64::MAX))
    })
}

/// A stored i64 back to u64; a negative value means the row was not written by this store.
pub(crate) fn to_u64(table: &'static str, column: &str, value: i64) -> Result<u64, StoreError> {
    u64::try_from(value)
        .map_err(|_| StoreError::corrupt(table, format!("{column} is negative ({value})")))
}

pub(crate) fn to_hash(
    table: &'static str,
    column: &str,
    bytes: Vec<u8>,
) -> Result<[u8; 32], StoreError> {
    let len = bytes.len();
    bytes
        .try_into()
        .map_err(|_| StoreError::corrupt(table, format!("{column} is {len} bytes, expected 32")))
}

/// Cuts `s` to at most `max` bytes on a character boundary.
pub(crate) fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl AgentHello {
    pub(crate) fn validate(&self) -> Result<(), StoreError> {
        check_text("hello.remote_addr", &self.remote_addr, MAX_TEXT_BYTES)?;
        check_text("hello.agent_version", &self.agent_version, MAX_TEXT_BYTES)?;
        check_text("hello.cert_issuer", &self.cert_issuer, MAX_TEXT_BYTES)?;
        if let Some(b) = &self.active_bundle {
            to_i64("hello.active_bundle.epoch", b.epoch)?;
            check_digest("hello.active_bundle.digest", &b.digest)?;
        }
        if let Some(b) = &self.received_bundle {
            to_i64("hello.received_bundle.epoch", b.epoch)?;
            check_digest("hello.received_bundle.digest", &b.digest)?;
        }
        to_i64("hello.outbox_depth", self.outbox_depth)?;
        to_i64("hello.shed_total", self.shed_total)?;
        Ok(())
    }
}

impl NewRecord {
    /// The wire rule of one record ([`gait_wire::Record::validate`]: seq, kind, payload, bundle epoch) plus
    /// the store's own input rules (class label, bundle digest). `index` is the record's place in the batch.
    pub(crate) fn validate(&self, index: usize) -> Result<(), StoreError> {
        self.wire_check()
            .map_err(|source| StoreError::InvalidRecord {
                index,
                seq: self.seq,
                source,
            })?;
        let refused = |field: &'static str| {
            move |e: StoreError| StoreError::InvalidRecordField {
                index,
                seq: self.seq,
                field,
                reason: match e {
                    StoreError::InvalidInput { reason, .. } => reason,
                    other => other.to_string(),
                },
            }
        };
        check_label("class", &self.class).map_err(refused("class"))?;
        if let Some(digest) = &self.bundle_digest {
            check_digest("bundle_digest", digest).map_err(refused("bundle_digest"))?;
        }
        Ok(())
    }

    /// The checks of [`gait_wire::Record::validate`], in its order, on the store's form of the record.
    fn wire_check(&self) -> Result<(), gait_wire::RecordError> {
        use gait_wire::{RecordError, limits};
        if self.seq == 0 {
            return Err(RecordError::SeqZero);
        }
        if self.seq > limits::MAX_SEQ {
            return Err(RecordError::SeqTooLarge { seq: self.seq });
        }
        gait_wire::record::check_content(self.seq, &self.kind, self.payload.len())?;
        match self.bundle_epoch {
            Some(epoch) if epoch > limits::MAX_BUNDLE_EPOCH => {
                Err(RecordError::BundleEpochTooLarge {
                    seq: self.seq,
                    epoch,
                })
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_must_be_64_lowercase_hex() {
        assert!(check_digest("d", &"ab".repeat(32)).is_ok());
        assert!(check_digest("d", &"AB".repeat(32)).is_err());
        assert!(check_digest("d", &format!("sha256:{}", "ab".repeat(32))).is_err());
        assert!(check_digest("d", "abc").is_err());
    }

    #[test]
    fn u64_above_i64_max_is_refused_not_wrapped() {
        assert_eq!(to_i64("x", i64::MAX as u64).ok(), Some(i64::MAX));
        let err = to_i64("records[3].seq", u64::MAX)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("records[3].seq"), "{err}");
        assert!(to_u64("agents", "committed_seq", -1).is_err());
    }

    #[test]
    fn truncation_keeps_utf8_boundaries() {
        assert_eq!(truncate_utf8("héllo", 2), "h");
        assert_eq!(truncate_utf8("héllo", 3), "hé");
        assert_eq!(truncate_utf8("abc", 10), "abc");
    }

    #[test]
    fn labels_refuse_empty_oversized_and_control_characters() {
        assert!(check_label("class", "").is_err());
        assert!(check_label("class", &"c".repeat(MAX_LABEL_BYTES + 1)).is_err());
        assert!(check_label("class", "a\nb").is_err());
        assert!(check_label("class", "decision").is_ok());
    }

    fn record(seq: u64, kind: &str, payload_len: usize) -> NewRecord {
        NewRecord {
            seq,
            prev_hash: [0; 32],
            hash: [1; 32],
            class: "decision".into(),
            kind: kind.into(),
            created_unix_ms: 0,
            bundle_epoch: None,
            bundle_digest: None,
            bundle_since_ms: None,
            payload: vec![b'x'; payload_len],
        }
    }

    #[test]
    fn records_follow_the_wire_rule_and_name_their_refusal_code() {
        use gait_wire::{RefusalCode, limits};
        assert!(record(1, "gate.decision", 10).validate(0).is_ok());
        let cases = [
            (record(0, "k", 0), RefusalCode::RecordSeqInvalid),
            (
                record(limits::MAX_SEQ + 1, "k", 0),
                RefusalCode::RecordSeqInvalid,
            ),
            (
                record(1, &"k".repeat(limits::MAX_KIND_BYTES + 1), 0),
                RefusalCode::RecordKindInvalid,
            ),
            (
                record(1, "k", limits::MAX_PAYLOAD_BYTES + 1),
                RefusalCode::RecordPayloadTooLarge,
            ),
        ];
        for (index, (r, code)) in cases.into_iter().enumerate() {
            let err = r.validate(index).expect_err("refused");
            assert_eq!(err.refusal_code(), Some((index, code)), "{err}");
        }
        let mut epoch = record(2, "k", 0);
        epoch.bundle_epoch = Some(limits::MAX_BUNDLE_EPOCH + 1);
        assert_eq!(
            epoch.validate(7).expect_err("refused").refusal_code(),
            Some((7, RefusalCode::RecordBundleInvalid))
        );
        let mut class = record(3, "k", 0);
        class.class = String::new();
        // The store's own rules name the record too: the aggregator refuses it as `record_store_refused`.
        let err = class.validate(1).expect_err("refused");
        assert_eq!(
            err.refusal_code(),
            Some((1, RefusalCode::RecordStoreRefused))
        );
        assert_eq!(
            err.to_string(),
            "invalid records[1].class (seq 3): must not be empty"
        );
    }
}
