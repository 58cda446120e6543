//! The agent<->aggregator wire protocol: versioned message envelopes, the outbox record hash chain and
//! length-prefixed postcard framing. No I/O: callers own the streams and feed bytes in and out.
//!
//! # Layers
//! - [`frame`]: a frame is a `u32` big-endian body length followed by that many body bytes. The body length is
//!   capped by [`MAX_FRAME_LEN`] and by a caller-chosen limit; [`FrameDecoder`] reassembles frames from arbitrary
//!   chunks and refuses an oversized frame as soon as its header arrives.
//! - [`message`]: the body is one postcard-encoded envelope, [`AgentMsg`] (agent -> aggregator) or [`ServerMsg`]
//!   (aggregator -> agent). The first postcard varint of a body is the envelope version tag (0 = `V1`), the
//!   second is the variant tag inside that version.
//! - [`record`]: outbox records and their SHA-256 hash chain (the hash input is documented there).
//!
//! # Compatibility rules
//! postcard is not self-describing: field order and types *are* the format. Inside `V1`, never reorder, remove
//! or retype a field or variant. New messages are appended as new variants at the end (an older peer answers
//! them with [`ErrorCode::Unsupported`] after [`DecodeError::UnknownVariant`]); a change to an existing struct
//! needs a `V2` envelope. The golden vectors under `schemas/wire/v1/` fail the build on any drift.

mod byte_buf;
pub mod frame;
pub mod message;
pub mod record;
pub mod shutdown;

pub use frame::{
    DecodeError, EncodeError, FRAME_HEADER_LEN, FrameDecoder, decode_agent_msg, decode_msg,
    decode_server_msg, encode_frame, encode_frame_with_limit,
};
pub use message::{
    AgentMsg, AgentMsgV1, BatchAck, BundleOffer, BundleRef, BundleReport, ErrorCode, Hello,
    PollBundle, RecordBatch, Refusal, SeqRange, ServerMsg, ServerMsgV1, Welcome, WireError,
};
pub use record::{GENESIS_HASH, Record, RecordClass};
pub use shutdown::CLOSE_SHUTDOWN;

/// The protocol version this crate speaks; sent in `Hello` and `Welcome`.
pub const PROTOCOL_VERSION: u16 = 1;

/// TLS ALPN identifier of the QUIC connection between agent and aggregator.
pub const ALPN: &[u8] = b"gait-fleet/1";

/// Hard ceiling on a frame body in bytes; decoders may be given a smaller limit, never a larger one.
pub const MAX_FRAME_LEN: u32 = 8 * 1024 * 1024;

/// A raw SHA-256 digest.
pub type Digest = [u8; 32];
