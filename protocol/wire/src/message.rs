//! Message envelopes exchanged on the control stream: [`AgentMsg`] from agent to aggregator and [`ServerMsg`]
//! back, each a versioned enum. The `V1` arm holds the messages of protocol versions 1 and 2, frozen (its
//! golden vectors under `schemas/wire/v1/` pin them); the `V2` arm holds those of protocol version 3, which
//! changed two structs: [`Hello`] carries the agent's `instance_id` and [`BatchAck`] reports `conflicts`.
//! Messages whose shape did not change are shared by both arms.
//!
//! Conversation (one request, one reply, in order):
//! - `Hello` -> `Welcome` (or `Error`); `Hello` is the first message on the control stream.
//! - `PollBundle` -> `Bundle` when a bundle newer than `have_epoch` is assigned, else `NoNewBundle` at `wait_ms`.
//! - `RecordBatch` -> `BatchAck`, sent only after the batch is committed; the agent deletes acked records only.
//! - `BundleReport` -> no reply.
//! - `RenewCertificate` -> `Certificate` (or `Error`), for the identity of the connection's certificate.
//!
//! The aggregator never trusts tenancy claimed in a message: org/project/env/agent id come from the verified
//! client certificate and are echoed in `Welcome`.

use crate::{Digest, Record};
use serde::{Deserialize, Serialize};

/// Agent -> aggregator envelope.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum AgentMsg {
    /// Protocol versions 1 and 2 (frozen; a version 3 peer answers it with `Error(Unsupported)`).
    V1(AgentMsgV1),
    /// Protocol version 3.
    V2(AgentMsgV2),
}

/// Agent -> aggregator messages of protocol versions 1 and 2. Frozen: new messages go into [`AgentMsgV2`].
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum AgentMsgV1 {
    /// First message on the control stream.
    Hello(HelloV1),
    /// Long-poll: answer when a bundle newer than `have_epoch` exists, or after `wait_ms`.
    PollBundle(PollBundle),
    /// A batch of outbox records, oldest first.
    RecordBatch(RecordBatch),
    /// What the agent received, applied or refused.
    BundleReport(BundleReport),
}

/// Agent -> aggregator messages of protocol version 3. Append new variants at the end only.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum AgentMsgV2 {
    /// First message on the control stream; carries the agent's instance id.
    Hello(Hello),
    /// Long-poll: answer when a bundle newer than `have_epoch` exists, or after `wait_ms`.
    PollBundle(PollBundle),
    /// A batch of outbox records, oldest first.
    RecordBatch(RecordBatch),
    /// What the agent received, applied or refused.
    BundleReport(BundleReport),
    /// Ask for a new certificate for the connection's own identity (renewal before expiry).
    RenewCertificate(RenewCertificate),
    /// The approvals issued for the agent's approval requests (reply `Approvals`).
    FetchApprovals(crate::approval::FetchApprovals),
    /// Artifact bytes to upload (reply `BlobStatus` or `BlobStored`), see [`crate::blob`].
    BlobOffer(crate::blob::BlobOffer),
    /// A piece of an offered upload (reply `BlobStatus` or `BlobStored`), see [`crate::blob`].
    BlobChunk(crate::blob::BlobChunk),
}

/// Asks the aggregator to certify a key for the identity of the connection's verified client certificate.
///
/// `csr_der` is a PKCS#10 request signed by the key to certify (a fresh key: agents rotate their key at each
/// renewal; the mutual-TLS session already proves possession of the current one). Its URI SAN, if any, must
/// be the connection's identity. Answered with [`ServerMsgV2::Certificate`] or `Error` (`Forbidden`: revoked
/// or another identity; `BadRequest`: the CSR does not verify; `Unsupported`: this aggregator cannot renew).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct RenewCertificate {
    /// DER PKCS#10 certificate signing request, at most [`crate::limits::MAX_CSR_BYTES`].
    pub csr_der: Vec<u8>,
}

/// A certificate issued by renewal: the chain to present from the next connection on and the CA bundle to
/// verify the aggregator with (it carries a new CA during a CA rotation).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct IssuedCertificate {
    /// The certificate chain, PEM, leaf first.
    pub chain_pem: String,
    /// The CA certificates to trust, PEM.
    pub ca_bundle_pem: String,
    /// The new certificate's `notAfter`, Unix seconds.
    pub not_after_unix: i64,
}

/// Opening message of an agent session in protocol versions 1 and 2 (envelope `V1`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct HelloV1 {
    /// Agent build version (semver string).
    pub agent_version: String,
    /// Highest wire protocol version the agent speaks.
    pub protocol_version: u16,
    /// The bundle the agent enforces now.
    pub active: Option<BundleRef>,
    /// The newest verified bundle the agent has stored (may be newer than `active` mid-activation).
    pub received: Option<BundleRef>,
    /// Records waiting in the outbox.
    pub outbox_depth: u64,
    /// Records shed (dropped under pressure) since the agent's outbox was created.
    pub shed_total: u64,
    /// Sequence number of the newest record the agent has written.
    pub last_seq: u64,
}

/// Length of an [`InstanceId`] in bytes.
pub const INSTANCE_ID_LEN: usize = 16;

/// The random 128-bit id of one agent data directory, made once at its first start. Two processes that
/// present the same certificate with different instance ids are two copies of one identity; the aggregator
/// keeps only one of them connected. Not a secret (it authenticates nothing; the certificate does).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceId(pub [u8; INSTANCE_ID_LEN]);

impl InstanceId {
    /// The id as 32 lowercase hex digits (its form in logs, alerts and status output).
    pub fn to_hex(&self) -> String {
        use std::fmt::Write;
        let mut out = String::with_capacity(INSTANCE_ID_LEN * 2);
        for b in self.0 {
            let _ = write!(out, "{b:02x}");
        }
        out
    }

    /// Inverse of [`InstanceId::to_hex`] (either case); `None` unless exactly 32 hex digits.
    pub fn from_hex(s: &str) -> Option<Self> {
        let bytes = s.as_bytes();
        if bytes.len() != INSTANCE_ID_LEN * 2 {
            return None;
        }
        let mut out = [0u8; INSTANCE_ID_LEN];
        for (i, pair) in bytes.chunks(2).enumerate() {
            let hi = (pair[0] as char).to_digit(16)?;
            let lo = (pair[1] as char).to_digit(16)?;
            out[i] = (hi * 16 + lo) as u8;
        }
        Some(InstanceId(out))
    }
}

impl std::fmt::Display for InstanceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Opening message of an agent session (protocol version 3).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Agent build version (semver string).
    pub agent_version: String,
    /// Highest wire protocol version the agent speaks.
    pub protocol_version: u16,
    /// The bundle the agent enforces now.
    pub active: Option<BundleRef>,
    /// The newest verified bundle the agent has stored (may be newer than `active` mid-activation).
    pub received: Option<BundleRef>,
    /// Records waiting in the outbox.
    pub outbox_depth: u64,
    /// Records shed (dropped under pressure) since the agent's outbox was created.
    pub shed_total: u64,
    /// Sequence number of the newest record the agent has written.
    pub last_seq: u64,
    /// This agent data directory's instance id (see [`InstanceId`]).
    pub instance_id: InstanceId,
}

/// Identifies one policy bundle and when it came into force locally.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct BundleRef {
    /// Bundle epoch, monotonic per scope.
    pub epoch: u64,
    /// Bundle digest (DigestJCS of the manifest, raw bytes).
    pub digest: Digest,
    /// When the agent received/activated it, milliseconds since the Unix epoch.
    pub since_unix_ms: i64,
}

/// Long-poll for a newer bundle.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct PollBundle {
    /// The newest epoch the agent already has (0 = none).
    pub have_epoch: u64,
    /// How long the aggregator may hold the request before answering `NoNewBundle`.
    pub wait_ms: u32,
}

/// A batch of outbox records.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct RecordBatch {
    /// Agent-chosen id echoed in the `BatchAck`.
    pub batch_id: u64,
    /// Records in ascending `seq` order.
    pub records: Vec<Record>,
}

/// Bundle state report: any combination of fields may be set.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct BundleReport {
    /// A bundle that was received and verified.
    pub received: Option<BundleRef>,
    /// A bundle that became active.
    pub applied: Option<BundleRef>,
    /// A bundle that was refused.
    pub refusal: Option<Refusal>,
}

/// Why an offered bundle was refused.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Epoch of the refused bundle as offered.
    pub epoch: u64,
    /// Digest of the refused bundle as offered.
    pub digest: Digest,
    /// Stable machine code, e.g. `"bundle_signature_invalid"` (see `gait_bundle::BundleError::code`).
    pub code: String,
    /// Human-readable detail.
    pub message: String,
}

/// Aggregator -> agent envelope.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum ServerMsg {
    /// Protocol versions 1 and 2 (frozen).
    V1(ServerMsgV1),
    /// Protocol version 3.
    V2(ServerMsgV2),
}

/// Aggregator -> agent messages of protocol versions 1 and 2. Frozen: new messages go into [`ServerMsgV2`].
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum ServerMsgV1 {
    /// Reply to `Hello`.
    Welcome(Welcome),
    /// Reply to `PollBundle` when a newer bundle is assigned.
    Bundle(BundleOffer),
    /// Reply to `PollBundle` when the wait elapsed without a newer bundle.
    NoNewBundle {
        /// Echo of the poll's `have_epoch`.
        have_epoch: u64,
    },
    /// Reply to `RecordBatch`, sent after the batch is committed.
    BatchAck(BatchAckV1),
    /// The request failed; see the code.
    Error(WireError),
    /// Reply to `RecordBatch` when the aggregator refuses one record of it (protocol version 2).
    RecordRefused(RecordRefusal),
}

/// Aggregator -> agent messages of protocol version 3. Append new variants at the end only.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum ServerMsgV2 {
    /// Reply to `Hello`.
    Welcome(Welcome),
    /// Reply to `PollBundle` when a newer bundle is assigned.
    Bundle(BundleOffer),
    /// Reply to `PollBundle` when the wait elapsed without a newer bundle.
    NoNewBundle {
        /// Echo of the poll's `have_epoch`.
        have_epoch: u64,
    },
    /// Reply to `RecordBatch`, sent after the batch is committed; reports conflicts apart.
    BatchAck(BatchAck),
    /// The request failed; see the code.
    Error(WireError),
    /// Reply to `RecordBatch` when the aggregator refuses one record of it (protocol version 2). Nothing of
    /// the batch is committed; see [`RecordRefusal`].
    RecordRefused(RecordRefusal),
    /// Reply to `RenewCertificate`: the renewed certificate.
    Certificate(IssuedCertificate),
    /// Reply to `FetchApprovals`: the issued Gait approval tokens.
    Approvals(crate::approval::ApprovalDelivery),
    /// Reply to `BlobOffer` / `BlobChunk`: the offset to continue the upload from.
    BlobStatus(crate::blob::BlobStatus),
    /// Reply to `BlobOffer` / `BlobChunk`: the content is stored; nothing more to send.
    BlobStored(crate::blob::BlobStored),
}

/// The aggregator refuses the record `seq` of batch `batch_id` and commits nothing of that batch.
///
/// `code` is a [`crate::RefusalCode`] string. When it is permanent (or unknown to the agent) the agent moves
/// that record into its quarantine once every record before it is acknowledged, and ships the records after
/// it; the aggregator then sees a gap at `seq`. When it is retryable the agent sends the batch again later.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct RecordRefusal {
    /// Echo of `RecordBatch::batch_id`.
    pub batch_id: u64,
    /// The refused record.
    pub seq: u64,
    /// Stable refusal code ([`crate::RefusalCode::as_str`]).
    pub code: String,
    /// Human-readable detail naming the field and the limit; never contains secrets.
    pub message: String,
}

impl RecordRefusal {
    /// A refusal of record `seq` in batch `batch_id`.
    pub fn new(
        batch_id: u64,
        seq: u64,
        code: crate::RefusalCode,
        message: impl Into<String>,
    ) -> Self {
        RecordRefusal {
            batch_id,
            seq,
            code: code.as_str().to_owned(),
            message: message.into(),
        }
    }

    /// Whether the agent must quarantine the record rather than resend it (unknown codes count as
    /// permanent, see [`crate::refusal`]).
    pub fn is_permanent(&self) -> bool {
        crate::RefusalCode::parse_or_permanent(&self.code)
    }
}

/// Reply to `Hello`: who the aggregator thinks the agent is, and how far its records are committed.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// Aggregator build version.
    pub server_version: String,
    /// Protocol version the session will use (at most the agent's).
    pub protocol_version: u16,
    /// Tenancy from the verified client certificate.
    pub org: String,
    /// Tenancy from the verified client certificate.
    pub project: String,
    /// Tenancy from the verified client certificate.
    pub env: String,
    /// Agent identity from the verified client certificate.
    pub agent_id: String,
    /// Highest sequence number committed for this agent (0 = none).
    pub committed_seq: u64,
    /// Hash of that record ([`crate::GENESIS_HASH`] when none).
    pub committed_hash: Digest,
}

/// A signed bundle assigned to the agent.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct BundleOffer {
    /// Epoch the aggregator claims; the agent trusts only the verified manifest.
    pub epoch: u64,
    /// Digest the aggregator claims; the agent trusts only the verified manifest.
    pub digest: Digest,
    /// The signed bundle document (see `schemas/bundle/README.md`).
    #[serde(with = "crate::byte_buf")]
    pub signed_bundle: Vec<u8>,
}

/// Acknowledges a committed batch (protocol versions 1 and 2, envelope `V1`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct BatchAckV1 {
    /// Echo of `RecordBatch::batch_id`.
    pub batch_id: u64,
    /// Every record of this agent with `seq <= committed_through` is durably stored (or known missing, see
    /// `gaps`); the agent may delete them.
    pub committed_through: u64,
    /// Records newly stored from this batch.
    pub inserted: u32,
    /// Records of this batch that were already stored (redelivery).
    pub duplicates: u32,
    /// Sequence ranges the aggregator has never seen below `committed_through` (shed or lost records).
    pub gaps: Vec<SeqRange>,
}

/// Acknowledges a committed batch (protocol version 3).
///
/// `inserted + duplicates + (records in conflicts)` is the batch's record count. Only inserted records and
/// duplicates (the aggregator holds the same record: same seq and hash) are committed; a record in
/// `conflicts` was NOT stored because the aggregator already holds a different record at that seq (another
/// instance of this identity wrote it). The agent deletes records up to `committed_through` except those in
/// `conflicts`, which it moves to its quarantine.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct BatchAck {
    /// Echo of `RecordBatch::batch_id`.
    pub batch_id: u64,
    /// Every record of this agent with `seq <= committed_through` is durably stored (or known missing, see
    /// `gaps`); the agent may delete them.
    pub committed_through: u64,
    /// Records newly stored from this batch.
    pub inserted: u32,
    /// Records of this batch that were already stored (redelivery).
    pub duplicates: u32,
    /// Sequence ranges the aggregator has never seen below `committed_through` (shed or lost records).
    pub gaps: Vec<SeqRange>,
    /// Sequence ranges of this batch that were not stored because the aggregator already holds a different
    /// record at those seqs, ascending.
    pub conflicts: Vec<SeqRange>,
}

impl BatchAck {
    /// Whether `seq` lies in one of the `conflicts` ranges.
    pub fn is_conflict(&self, seq: u64) -> bool {
        self.conflicts
            .iter()
            .any(|r| r.first <= seq && seq <= r.last)
    }

    /// Number of records in the `conflicts` ranges.
    pub fn conflict_count(&self) -> u64 {
        self.conflicts
            .iter()
            .map(|r| r.last.saturating_sub(r.first).saturating_add(1))
            .sum()
    }
}

/// Inclusive range of sequence numbers.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SeqRange {
    /// First sequence number in the range.
    pub first: u64,
    /// Last sequence number in the range (inclusive).
    pub last: u64,
}

/// An error reply.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct WireError {
    /// Machine-readable category.
    pub code: ErrorCode,
    /// Human-readable detail; never contains secrets.
    pub message: String,
}

/// Category of a [`WireError`]. Append new codes at the end only.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The message was malformed or out of order.
    BadRequest,
    /// The peer's identity could not be established.
    Unauthorized,
    /// The identity is known but not allowed to do this.
    Forbidden,
    /// The frame or batch exceeded a limit.
    TooLarge,
    /// Unknown protocol version or message variant.
    Unsupported,
    /// A server-side failure.
    Internal,
    /// Temporarily unavailable (overload, shutting down, store down).
    Unavailable,
}

impl ErrorCode {
    /// Stable snake_case name for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::Internal => "internal",
            ErrorCode::Unavailable => "unavailable",
        }
    }

    /// Whether sending the same request again later may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorCode::Internal | ErrorCode::Unavailable)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl WireError {
    /// An error reply with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        WireError {
            code,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for WireError {}

impl From<AgentMsgV1> for AgentMsg {
    fn from(msg: AgentMsgV1) -> Self {
        AgentMsg::V1(msg)
    }
}

impl From<ServerMsgV1> for ServerMsg {
    fn from(msg: ServerMsgV1) -> Self {
        ServerMsg::V1(msg)
    }
}

impl From<AgentMsgV2> for AgentMsg {
    fn from(msg: AgentMsgV2) -> Self {
        AgentMsg::V2(msg)
    }
}

impl From<ServerMsgV2> for ServerMsg {
    fn from(msg: ServerMsgV2) -> Self {
        ServerMsg::V2(msg)
    }
}

/// Sorted, merged inclusive ranges covering `seqs` (which need not be sorted or distinct).
pub fn ranges_of(seqs: impl IntoIterator<Item = u64>) -> Vec<SeqRange> {
    let mut sorted: Vec<u64> = seqs.into_iter().collect();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out: Vec<SeqRange> = Vec::new();
    for seq in sorted {
        match out.last_mut() {
            Some(r) if r.last.checked_add(1) == Some(seq) => r.last = seq,
            _ => out.push(SeqRange {
                first: seq,
                last: seq,
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_of_merges_sorted_runs() {
        assert_eq!(ranges_of([]), vec![]);
        assert_eq!(
            ranges_of([7, 3, 4, 5, 9, 4, u64::MAX]),
            vec![
                SeqRange { first: 3, last: 5 },
                SeqRange { first: 7, last: 7 },
                SeqRange { first: 9, last: 9 },
                SeqRange {
                    first: u64::MAX,
                    last: u64::MAX
                },
            ]
        );
    }

    #[test]
    fn batch_ack_knows_its_conflicts() {
        let ack = BatchAck {
            batch_id: 1,
            committed_through: 9,
            inserted: 5,
            duplicates: 0,
            gaps: vec![],
            conflicts: ranges_of([2, 3, 7]),
        };
        assert!(ack.is_conflict(2) && ack.is_conflict(3) && ack.is_conflict(7));
        assert!(!ack.is_conflict(1) && !ack.is_conflict(4) && !ack.is_conflict(8));
        assert_eq!(ack.conflict_count(), 3);
    }

    #[test]
    fn instance_ids_round_trip_through_hex() {
        let id = InstanceId([0xab; INSTANCE_ID_LEN]);
        assert_eq!(id.to_hex(), "ab".repeat(16));
        assert_eq!(InstanceId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(InstanceId::from_hex(&"AB".repeat(16)), Some(id));
        assert_eq!(InstanceId::from_hex("ab"), None);
        assert_eq!(InstanceId::from_hex(&"zz".repeat(16)), None);
        assert_eq!(InstanceId::from_hex(&"é".repeat(16)), None);
    }
}
