//! The agent<->aggregator wire protocol: versioned message envelopes, the outbox record hash chain, the
//! limits and codes both ends share, and length-prefixed postcard framing. No I/O: callers own the streams
//! and feed bytes in and out.
//!
//! This module documentation is the one description of the exchange; `docs/protocol.md` is rendered from it
//! (the test `protocol_doc` in this crate fails when the two differ: regenerate with
//! `GAIT_UPDATE_PROTOCOL_DOC=1 cargo test -p gait-wire --test protocol_doc`).
//!
//! # Transport
//! One QUIC connection per agent, mutual TLS 1.3, ALPN [`ALPN`] (`gait-fleet/3`). The agent always dials
//! out. The aggregator takes the agent's identity (org, project, env, agent id) from its verified client
//! certificate, never from a message. Each request/reply exchange uses its own bidirectional stream: the
//! agent writes one framed [`AgentMsg`], finishes its side and reads one framed [`ServerMsg`]. A
//! `BundleReport` goes on a unidirectional stream and has no reply.
//!
//! # Layers
//! - [`frame`]: a frame is a `u32` big-endian body length followed by that many body bytes. The body length is
//!   capped by [`MAX_FRAME_LEN`] and by a caller-chosen limit; [`FrameDecoder`] reassembles frames from arbitrary
//!   chunks and refuses an oversized frame as soon as its header arrives.
//! - [`message`]: the body is one postcard-encoded envelope, [`AgentMsg`] (agent -> aggregator) or [`ServerMsg`]
//!   (aggregator -> agent). The first postcard varint of a body is the envelope version tag (0 = `V1`,
//!   1 = `V2`), the second is the variant tag inside that version. Protocol version 3 speaks `V2` only.
//! - [`record`]: outbox records, their BLAKE3 hash chain (the hash input is documented there) and
//!   [`Record::validate`].
//! - [`limits`]: record kind and payload, seq, batch size and poll wait, one value each.
//! - [`refusal`]: [`RefusalCode`], why a record or batch is refused, and whether that is permanent.
//! - [`close`]: every QUIC application close code; [`shutdown`]: the redial hint of [`CLOSE_SHUTDOWN`].
//!
//! # Conversation
//! 1. `Hello` -> `Welcome` (or `Error`). `Hello` is the first exchange; any other request before it is
//!    answered with `Error(BadRequest)`. `Hello` carries the agent's [`InstanceId`], a random 128-bit id
//!    made once per agent data directory (see "One live instance per identity"). `Welcome` carries the tenancy from the certificate and the agent's
//!    committed head (`committed_seq`, `committed_hash`): the agent deletes its outbox records up to it (or,
//!    when its outbox is empty and behind, continues its sequence after it).
//! 2. `PollBundle` -> `Bundle` when a bundle newer than `have_epoch` is assigned, else `NoNewBundle` once
//!    `wait_ms` (within [`limits::POLL_WAIT_MS`]) elapsed. The agent verifies a bundle against its own trust
//!    root and scope, then reports on a unidirectional stream: `BundleReport` (received, applied or refused
//!    with a stable code).
//! 3. `RecordBatch` -> `BatchAck`, `RecordRefused` or `Error`. A batch holds at most
//!    [`limits::MAX_BATCH_RECORDS`] records in ascending `seq` order, each passing [`Record::validate`] and
//!    [`Record::verify_hash`]. `BatchAck` is sent only after the batch is committed; its `committed_through`
//!    means every seq up to it is stored, recorded as a gap, or listed in `conflicts`; the agent deletes
//!    those records except the ones in `conflicts` (see "Conflicts"). Several batches may be in flight; replies come back in order. Delivery is at-least-once: a
//!    redelivered record is recognised by (agent, seq) and counted as a duplicate, never stored twice.
//!    `gait-agent` keeps up to 4 batches in flight, but while one is waiting for its ack it sends another only
//!    once 64 records wait or the waiting ones are 10 ms old, so a busy agent sends fuller batches. It deletes
//!    acknowledged records without an fsync (the next durable append, or a clean stop, persists the deletion):
//!    after a crash it may send acknowledged records again, which the rule above answers as duplicates.
//! 4. `RenewCertificate { csr_der }` -> `Certificate { chain_pem, ca_bundle_pem, not_after_unix }` or
//!    `Error`. The aggregator certifies the CSR's key for the identity of the connection's verified client
//!    certificate (a URI SAN in the CSR must name that same identity; a revoked certificate renews nothing).
//!    The agent makes a fresh key for each renewal, writes key, chain and CA bundle atomically and presents
//!    the new certificate from its next connection on. Added at the end of the `V2` enums (protocol version
//!    3 unchanged): an aggregator that predates it answers `Error(Unsupported)` and the agent keeps its
//!    certificate.
//! 5. `Error { code, message }` answers any request that failed as a whole: a retryable [`ErrorCode`] is
//!    retried after a pause, any other ends the connection. A request that is oversized, malformed or not
//!    read in time closes the connection with [`close::CLOSE_PROTOCOL_VIOLATION`].
//! 5. `FetchApprovals { after_request_id }` -> `Approvals` (or `Error`): the Gait approval tokens
//!    (`gait.gate.approval_token` documents, one per approver) the aggregator issued for this agent's approval
//!    requests with an id above `after_request_id` and still valid. A request is raised by an
//!    `approval.request` record ([`approval`]): its tenancy is the certificate's, never the payload's. An
//!    aggregator that predates the exchange answers `Error(Unsupported)`; the agent then stops asking on that
//!    connection. Appended to `V2` (protocol version 3, same ALPN): older peers are unaffected.
//! 7. `BlobOffer { sha256, size }` -> `BlobStatus { sha256, have }`, `BlobStored` or `Error`; then
//!    `BlobChunk { sha256, offset, bytes }` -> `BlobStatus` (continue from `have`) or, after the last byte,
//!    `BlobStored { sha256, size }`: artifact bytes uploaded to the aggregator's blob store, resumable
//!    ([`blob`]). The aggregator keeps a partial upload per agent and digest and answers each offer with the
//!    offset to resume from; it checks SHA-256 and size against the offer before it stores anything. A chunk
//!    holds at most [`MAX_BLOB_CHUNK_BYTES`]. `Forbidden`: uploads are not enabled for the environment;
//!    `TooLarge`: above the blob size cap or the agent's quota; `BadRequest`: digest or size mismatch. An
//!    aggregator that predates the exchange answers `Error(Unsupported)`. Appended to `V2` like `FetchApprovals`.
//!
//! # Refused records
//! When a record breaks a rule, the aggregator answers `RecordRefused { batch_id, seq, code, message }` and
//! commits nothing of that batch. A retryable code ([`RefusalCode::is_retryable`]) means "send it again
//! later". A permanent one means the record will never be accepted: the agent first ships and gets
//! acknowledged every record before `seq`, then moves record `seq` into its durable quarantine (kept,
//! counted, logged at ERROR, exportable with `gait-agent quarantine`) and counts it as done in its outbox.
//! The records after it are shipped as usual; their chain still links through the quarantined record's hash,
//! so the aggregator sees a one-record gap at `seq` and a chain it can check again from `seq + 1` on. The
//! agent applies the same [`Record::validate`] before storing a record, and again before shipping one (a
//! record written by an older build under older limits is quarantined locally with the same code).
//!
//! # Conflicts
//! A record whose seq the aggregator already holds with a different hash (another instance of the identity
//! wrote that seq) is not stored: `BatchAck.conflicts` lists those seqs apart from `inserted` and
//! `duplicates`. The agent never deletes a record the aggregator did not commit: it moves each conflicting
//! record into its quarantine (the same one as permanently refused records, code `record_seq_conflict`),
//! counts it, reports it in `gait-agent status` and logs an ERROR naming the range.
//!
//! # One live instance per identity
//! The aggregator keeps at most one live session per identity (tenant + agent id). A `Hello` whose
//! instance id differs from the live session's is refused: the aggregator closes the new connection with
//! [`close::CLOSE_IDENTITY_IN_USE`], logs an ERROR naming the agent, both instance ids and both peer
//! addresses, stores a durable alert and counts it. A `Hello` with the live session's own instance id (a
//! redial after a network blip, the old connection not yet noticed dead) replaces the old session, which is
//! closed. The aggregator also remembers the last instance that wrote each identity's records; a new instance
//! whose `last_seq` is behind the committed head (a wiped or copied data directory reusing a certificate)
//! is accepted but raises the same kind of alert. The refused agent logs an ERROR (then rate-limited) and
//! keeps deciding locally; its outbox keeps its records.
//!
//! # Outbox export files
//! A site with no network path carries its outbox out on a file instead ([`export`], schema
//! `gait.fleet.outbox_export` version 1): the waiting records unchanged, in consecutive seq order, in canonical
//! JSON, with a header (agent URI, first/last seq, count, first `prev_hash`, last hash, creation time, a BLAKE3
//! digest over the records' seqs and hashes) signed with the agent's mTLS private key, and the agent's
//! certificate chain embedded. The aggregator (`gait-aggregator ingest-file`) verifies the signature, the chain
//! against its trusted CAs at the creation time, revocation now, and every record and link, takes the identity
//! from the certificate only, and commits the records as a batch would be: by (agent, seq), so a repeated or
//! overlapping file doubles nothing. The agent deletes them when the next `Welcome.committed_seq` covers them.
//!
//! ### Format (schema `gait.fleet.outbox_export`, version 1)
//! One JSON object, UTF-8, in exactly the canonical form [`export::OutboxExport::encode`] writes (compact,
//! the field order below, one trailing newline). A reader refuses any other spelling of the same content, so a file
//! either verifies byte for byte or is refused:
//!
//! ```text
//! {"schema_id":"gait.fleet.outbox_export","schema_version":1,
//!  "header":{"agent_uri":"spiffe://…/agent/<id>","first_seq":N,"last_seq":M,"count":M-N+1,
//!            "first_prev_hash":"<hex>","last_hash":"<hex>","created_unix_ms":T,"records_digest":"<hex>"},
//!  "signature":{"algorithm":"ecdsa_p256_sha256"|"ecdsa_p384_sha384"|"ed25519","value":"<base64>"},
//!  "certificate_chain":["<base64 DER, the agent's certificate>","<base64 DER, intermediates…>"],
//!  "records":[{"seq":N,"prev_hash":"<hex>","hash":"<hex>","class":"block","kind":"gate.decision",
//!              "created_unix_ms":…,"bundle":null|{"epoch":…,"digest":"<hex>","since_unix_ms":…},
//!              "payload":"<base64>"}, …]}
//! ```
//!
//! Hex is lowercase, 64 digits per digest; base64 is the standard alphabet with padding. Records are the
//! outbox's records unchanged ([`Record`]), in ascending, consecutive `seq` order, each passing
//! [`Record::validate`] and [`Record::verify_hash`], each `prev_hash` the previous record's `hash`.
//!
//! ### Digests and signature
//! `records_digest = BLAKE3(u64 len(tag) || "gait.wire.outbox_export.records.v1" || u64 count ||
//! (u64 seq || hash) for each record)`. Every record hash covers all of its fields, so the digest binds every
//! byte of every record. The signature is made with the private key of the agent's mTLS certificate (the
//! first certificate of `certificate_chain`) over the signing input ([`export::OutboxExport::signing_input`]):
//!
//! ```text
//! u64 len("gait.wire.outbox_export.v1") || "gait.wire.outbox_export.v1"
//! u64 len(schema_id) || schema_id || u64 schema_version
//! u64 len(agent_uri) || agent_uri
//! u64 first_seq || u64 last_seq || u64 count || first_prev_hash || last_hash || i64 created_unix_ms
//! records_digest
//! SHA-256(u64 n || (u64 len(der) || der) for each certificate of certificate_chain)
//! ```
//!
//! Integers are big-endian. ECDSA signatures are ASN.1 DER (as in TLS), Ed25519 signatures 64 bytes.
//!
//! ### Verification (what a reader must do, in this order)
//! 1. Refuse a file over [`export::MAX_EXPORT_BYTES`] (256 MiB) before reading it (decoding refuses it too).
//! 2. [`export::OutboxExport::decode`]: canonical JSON, the schema id and version, the caps (at most 500,000
//!    records, 8 certificates of 16 KiB, a 1 KiB signature), every record's rule and hash, the chain of
//!    `prev_hash` links, the header's counts, hashes and digest.
//! 3. [`export::OutboxExport::verify_signature`]: the signature over the signing input with the first
//!    certificate's public key.
//! 4. [`export::OutboxExport::verify_certificate_chain`]: the certificates chain to a trusted CA for client
//!    authentication at the header's `created_unix_ms` (an export may be carried out after the certificate
//!    expired; a reader also refuses a creation time in the future, see the aggregator's rule in ADR 0005).
//! 5. The identity (org, project, env, agent id) is the one in the verified certificate, never the header's
//!    `agent_uri`, which is there for humans and must equal the certificate's URI SAN.
//!
//! # Close codes
//! [`close::CLOSE_NORMAL`] (0), [`close::CLOSE_PROTOCOL_VIOLATION`] (1), [`close::CLOSE_REVOKED`] (2),
//! [`close::CLOSE_UNAUTHORIZED`] (3), [`CLOSE_SHUTDOWN`] (4, with a `reconnect_spread_ms=N` hint that
//! agents use to spread their redials) and [`close::CLOSE_IDENTITY_IN_USE`] (5).
//!
//! Before any of these, an aggregator working on as many handshakes as it takes at a time answers a new
//! attempt from an address it has validated by holding it (up to 16 attempts per handshake slot, each for at most
//! 2 seconds) and starting it when a slot frees, and with the QUIC transport error `CONNECTION_REFUSED` (one packet,
//! no handshake) when that queue is full or the attempt waited its time; a copy of a refused attempt's `Initial`
//! that arrives afterwards (sent before the refusal reached the client) is refused again at once. From half the bound
//! it asks an address it has not validated yet for a stateless QUIC Retry first, so only validated addresses wait;
//! with the queue full, a newcomer is refused at once, validated or not. A refused agent is not at
//! fault: it draws its next dial from what is left of the redial window it was last given (at most three draws),
//! else from its ordinary backoff. The refusal carries no reason phrase; the window the aggregator announced at shutdown,
//! sized from the handshake rate it measured under load, is the retry-after hint.
//!
//! # Versions
//! [`PROTOCOL_VERSION`] 2 changed the record hash from SHA-256 (`gait.wire.record.v1`) to BLAKE3
//! (`gait.wire.record.v2`) and added `RecordRefused`. Peers of different versions refuse each other before
//! any record moves: the ALPN changed with the version (`gait-fleet/1` -> `gait-fleet/2`), so the TLS
//! handshake fails with "no application protocol", and `Hello.protocol_version` is checked as a second
//! guard. [`PROTOCOL_VERSION`] 3 added `Hello.instance_id` and `BatchAck.conflicts`; changing two
//! structs needs a new envelope (rules below), so it speaks envelope `V2` and ALPN `gait-fleet/3`. The `V1`
//! envelope and its golden vectors are kept unchanged: a version 3 peer still decodes a `V1` body and answers
//! it with `Error(Unsupported)`, though the ALPN already keeps older peers out at the handshake.
//!
//! # Compatibility rules
//! postcard is not self-describing: field order and types *are* the format. Inside `V1`, never reorder, remove
//! or retype a field or variant. New messages are appended as new variants at the end (an older peer answers
//! them with [`ErrorCode::Unsupported`] after [`DecodeError::UnknownVariant`]); a change to an existing struct
//! needs a new envelope (as `V2` did). The golden vectors under `schemas/wire/v1/` and `schemas/wire/v2/`
//! (named for the envelope) fail the build on any drift. The same rules now hold for `V2`; `V1` is frozen.

pub mod approval;
pub mod blob;
mod byte_buf;
pub mod close;
pub mod export;
pub mod frame;
pub mod limits;
pub mod message;
pub mod record;
pub mod refusal;
pub mod shutdown;
pub mod trace_key;

pub use approval::{
    APPROVAL_REQUEST_KIND, ApprovalDelivery, ApprovalRequestPayload, DeliveredApproval,
    FetchApprovals, TokenDocument,
};
pub use blob::{BlobChunk, BlobOffer, BlobStatus, BlobStored, MAX_BLOB_CHUNK_BYTES};
pub use frame::{
    DecodeError, ENVELOPE_VERSION, EncodeError, FRAME_HEADER_LEN, FrameDecoder, decode_agent_msg,
    decode_msg, decode_server_msg, encode_frame, encode_frame_with_limit,
};
pub use message::{
    AgentMsg, AgentMsgV1, AgentMsgV2, BatchAck, BatchAckV1, BundleOffer, BundleRef, BundleReport,
    ErrorCode, Hello, HelloV1, INSTANCE_ID_LEN, InstanceId, IssuedCertificate, PollBundle,
    RecordBatch, RecordRefusal, Refusal, RenewCertificate, SeqRange, ServerMsg, ServerMsgV1,
    ServerMsgV2, Welcome, WireError, ranges_of,
};
pub use record::{GENESIS_HASH, Record, RecordClass, RecordError};
pub use refusal::RefusalCode;
pub use shutdown::CLOSE_SHUTDOWN;

/// The protocol version this crate speaks; sent in `Hello` and `Welcome`.
/// Version 2: BLAKE3 record hash and `RecordRefused`; version 3: envelope `V2` with `Hello.instance_id` and
/// `BatchAck.conflicts` (see "Versions" above).
pub const PROTOCOL_VERSION: u16 = 3;

/// TLS ALPN identifier of the QUIC connection between agent and aggregator.
/// Changes with [`PROTOCOL_VERSION`], so peers of different versions fail the handshake.
pub const ALPN: &[u8] = b"gait-fleet/3";

/// Hard ceiling on a frame body in bytes; decoders may be given a smaller limit, never a larger one.
pub const MAX_FRAME_LEN: u32 = 8 * 1024 * 1024;

/// A raw 32-byte digest: SHA-256 for Gait's bundle digests, BLAKE3 for record hashes.
pub type Digest = [u8; 32];
