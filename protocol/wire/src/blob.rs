//! Artifact bytes from agent to aggregator, resumable: `BlobOffer` -> `BlobStatus` (or `BlobStored`, or
//! `Error`), then `BlobChunk`s -> `BlobStatus` ... until the last chunk is answered with `BlobStored`.
//!
//! Each message is one request/reply exchange on its own bidirectional stream, like every other request, so a
//! chunk is bounded by the frame limit and an interrupted upload loses at most the chunk in flight. The
//! aggregator keeps what it received (per agent and digest, under its data directory) and answers every offer
//! with the offset to continue from: a new connection resumes there, not at 0. A chunk whose `offset` is not
//! the aggregator's current offset is not applied; the reply's `have` tells the agent where to go on.
//!
//! When the last byte arrives the aggregator checks the SHA-256 and the size of the whole content against the
//! offer, then stores it in its blob store; a mismatch is `Error(BadRequest)` and nothing is stored. Refusals:
//! `Forbidden` (uploads not enabled for the agent's environment), `TooLarge` (above the aggregator's blob size
//! cap or the agent's quota), `BadRequest` (digest or size mismatch, a chunk past the offered size),
//! `Unavailable` (retry later). The uploader's identity is the connection's certificate, never a field.

use serde::{Deserialize, Serialize};

use crate::Digest;

/// Largest `BlobChunk::bytes` an agent sends and an aggregator accepts: 1 MiB, well inside the frame limit.
pub const MAX_BLOB_CHUNK_BYTES: usize = 1024 * 1024;

/// The agent has `size` bytes whose SHA-256 is `sha256` to upload (reply: `BlobStatus` or `BlobStored`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct BlobOffer {
    /// SHA-256 of the whole content.
    pub sha256: Digest,
    /// Length of the whole content in bytes.
    pub size: u64,
}

/// Bytes `offset .. offset + bytes.len()` of the content offered as `sha256` (reply: `BlobStatus`, or
/// `BlobStored` when this chunk completed it).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct BlobChunk {
    /// SHA-256 of the whole content (as offered).
    pub sha256: Digest,
    /// Where these bytes start in the content; must be the aggregator's current offset.
    pub offset: u64,
    /// At most [`MAX_BLOB_CHUNK_BYTES`] bytes.
    #[serde(with = "crate::byte_buf")]
    pub bytes: Vec<u8>,
}

/// The aggregator holds the first `have` bytes of `sha256` from this agent: send from `have` on.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct BlobStatus {
    /// The content being uploaded.
    pub sha256: Digest,
    /// Bytes received and kept so far (the offset of the next chunk).
    pub have: u64,
}

/// The content is stored, digest-checked, and recorded as uploaded by this agent: nothing more to send.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct BlobStored {
    /// The content stored.
    pub sha256: Digest,
    /// Its length in bytes.
    pub size: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AgentMsg, AgentMsgV2, ServerMsg, ServerMsgV2};

    #[test]
    fn a_full_chunk_round_trips_inside_the_frame_limit() {
        let chunk = AgentMsg::V2(AgentMsgV2::BlobChunk(BlobChunk {
            sha256: [7; 32],
            offset: u64::MAX - 1,
            bytes: vec![0xa5; MAX_BLOB_CHUNK_BYTES],
        }));
        let frame = crate::encode_frame(&chunk).expect("a full chunk fits a frame");
        assert!(frame.len() < crate::MAX_FRAME_LEN as usize / 4);
        let body = &frame[crate::FRAME_HEADER_LEN..];
        assert_eq!(crate::decode_agent_msg(body).expect("decodes"), chunk);
    }

    #[test]
    fn status_and_stored_round_trip() {
        for msg in [
            ServerMsg::V2(ServerMsgV2::BlobStatus(BlobStatus {
                sha256: [1; 32],
                have: 12_345,
            })),
            ServerMsg::V2(ServerMsgV2::BlobStored(BlobStored {
                sha256: [2; 32],
                size: 0,
            })),
        ] {
            let frame = crate::encode_frame(&msg).expect("encodes");
            let body = &frame[crate::FRAME_HEADER_LEN..];
            assert_eq!(crate::decode_server_msg(body).expect("decodes"), msg);
        }
    }
}
