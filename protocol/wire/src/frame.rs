//! Length-prefixed framing and message (de)serialization: `u32` big-endian body length, then a postcard body.
//!
//! Limits: a body is at most [`MAX_FRAME_LEN`] bytes, or less when the caller asks. [`FrameDecoder`] checks a
//! frame's declared length as soon as its 4-byte header arrives, before buffering the body, so a hostile peer
//! cannot make it hold more than one maximal frame plus whatever the caller pushed in one call. Inside a body,
//! every postcard length prefix (strings, byte strings, vectors) is checked against the bytes actually left in
//! that body before anything is copied, so decoding allocates at most a small multiple of the body size.

use crate::{AgentMsg, ErrorCode, MAX_FRAME_LEN, ServerMsg};
use bytes::{Buf, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Bytes in a frame header (the big-endian body length).
pub const FRAME_HEADER_LEN: usize = 4;

/// Why a message could not be framed.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The encoded body is larger than the limit; split the message (e.g. a smaller record batch).
    #[error("encoded message is {size} bytes, over the frame limit of {limit} bytes")]
    TooLarge {
        /// Encoded body size in bytes.
        size: usize,
        /// The limit that applied.
        limit: u32,
    },
    /// postcard refused the value (cannot happen for this crate's message types).
    #[error("message could not be serialized: {0}")]
    Serialize(#[source] postcard::Error),
}

/// Why bytes from the peer could not be turned into a frame or a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A frame header declared a body longer than the limit. The stream is unusable after this.
    #[error("peer sent a frame of {len} bytes, over the limit of {limit} bytes")]
    FrameTooLarge {
        /// Declared body length.
        len: u32,
        /// The limit that applied.
        limit: u32,
    },
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame: {buffered} of {needed} bytes received")]
    TruncatedFrame {
        /// Bytes of the unfinished frame received (header included).
        buffered: usize,
        /// Bytes needed to finish it (header included; 4 while the header itself is incomplete).
        needed: usize,
    },
    /// The body ended before the message was complete.
    #[error("message body ended before the message was complete")]
    Truncated,
    /// The body is a message envelope of a version this build does not speak.
    #[error("peer sent envelope version {version}; this build speaks envelope version {supported}")]
    UnknownVersion {
        /// The envelope version the tag stands for (tag + 1).
        version: u64,
        /// [`ENVELOPE_VERSION`] (the envelope, not [`crate::PROTOCOL_VERSION`]: protocol versions 1 and 2
        /// use envelope `V1`, protocol version 3 envelope `V2`).
        supported: u16,
    },
    /// An enum tag in the body is out of range: an unknown message variant (peer speaks a newer protocol) or
    /// corrupt data.
    #[error("message body has an unknown message variant or enum tag (newer peer or corrupt data)")]
    UnknownVariant,
    /// The body is not a valid encoding of the expected type.
    #[error("malformed message body: {reason}")]
    Malformed {
        /// What was wrong.
        reason: &'static str,
    },
    /// The message decoded but bytes were left over in the body.
    #[error("message body has {count} trailing bytes after the message")]
    TrailingBytes {
        /// Number of bytes left over.
        count: usize,
    },
}

impl DecodeError {
    /// The [`ErrorCode`] to answer the peer with before closing the stream.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            DecodeError::FrameTooLarge { .. } => ErrorCode::TooLarge,
            DecodeError::UnknownVersion { .. } | DecodeError::UnknownVariant => {
                ErrorCode::Unsupported
            }
            DecodeError::TruncatedFrame { .. }
            | DecodeError::Truncated
            | DecodeError::Malformed { .. }
            | DecodeError::TrailingBytes { .. } => ErrorCode::BadRequest,
        }
    }
}

/// Encode `msg` as one frame (header + postcard body), with the body limited to [`MAX_FRAME_LEN`].
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, EncodeError> {
    encode_frame_with_limit(msg, MAX_FRAME_LEN)
}

/// Encode `msg` as one frame with the body limited to `min(limit, MAX_FRAME_LEN)` bytes, e.g. to honour the
/// peer's smaller limit.
pub fn encode_frame_with_limit<T: Serialize>(msg: &T, limit: u32) -> Result<Vec<u8>, EncodeError> {
    let limit = limit.min(MAX_FRAME_LEN);
    let out =
        postcard::to_extend(msg, vec![0u8; FRAME_HEADER_LEN]).map_err(EncodeError::Serialize)?;
    let size = out.len() - FRAME_HEADER_LEN;
    let body_len = u32::try_from(size)
        .ok()
        .filter(|&n| n <= limit)
        .ok_or(EncodeError::TooLarge { size, limit })?;
    let mut out = out;
    out[..FRAME_HEADER_LEN].copy_from_slice(&body_len.to_be_bytes());
    Ok(out)
}

/// Decode one message from a frame body. The whole body must be consumed.
pub fn decode_msg<T: DeserializeOwned>(body: &[u8]) -> Result<T, DecodeError> {
    match postcard::take_from_bytes::<T>(body) {
        Ok((msg, [])) => Ok(msg),
        Ok((_, rest)) => Err(DecodeError::TrailingBytes { count: rest.len() }),
        Err(e) => Err(map_postcard_error(e)),
    }
}

/// Decode an [`AgentMsg`], reporting an envelope of another protocol version as
/// [`DecodeError::UnknownVersion`].
pub fn decode_agent_msg(body: &[u8]) -> Result<AgentMsg, DecodeError> {
    check_envelope_tag(body)?;
    decode_msg(body)
}

/// Decode a [`ServerMsg`], reporting an envelope of another protocol version as
/// [`DecodeError::UnknownVersion`].
pub fn decode_server_msg(body: &[u8]) -> Result<ServerMsg, DecodeError> {
    check_envelope_tag(body)?;
    decode_msg(body)
}

/// Newest message envelope this build decodes (`V2`, tag 1; `V1`, tag 0, still decodes so that a peer can
/// answer it with [`ErrorCode::Unsupported`] naming the version).
pub const ENVELOPE_VERSION: u16 = 2;

/// The envelope tag is the body's first postcard varint (u32); `V1` is tag 0, `V2` tag 1.
fn check_envelope_tag(body: &[u8]) -> Result<(), DecodeError> {
    let mut tag: u64 = 0;
    for (i, &b) in body.iter().take(5).enumerate() {
        tag |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            if tag > u64::from(u32::MAX) {
                return Err(DecodeError::Malformed {
                    reason: "envelope tag does not fit in 32 bits",
                });
            }
            return match tag {
                0 | 1 => Ok(()),
                other => Err(DecodeError::UnknownVersion {
                    version: other + 1,
                    supported: ENVELOPE_VERSION,
                }),
            };
        }
    }
    if body.len() < 5 {
        Err(DecodeError::Truncated)
    } else {
        Err(DecodeError::Malformed {
            reason: "envelope tag varint is longer than 5 bytes",
        })
    }
}

fn map_postcard_error(e: postcard::Error) -> DecodeError {
    use postcard::Error as P;
    match e {
        P::DeserializeUnexpectedEnd => DecodeError::Truncated,
        // Derived enum visitors reject an out-of-range variant index through `de::Error::invalid_value`, which
        // postcard reports as a custom error; the message types have no other source of custom errors.
        P::SerdeDeCustom => DecodeError::UnknownVariant,
        P::DeserializeBadVarint => DecodeError::Malformed {
            reason: "invalid or overlong varint",
        },
        P::DeserializeBadBool => DecodeError::Malformed {
            reason: "boolean byte is neither 0 nor 1",
        },
        P::DeserializeBadChar => DecodeError::Malformed {
            reason: "invalid unicode scalar value",
        },
        P::DeserializeBadUtf8 => DecodeError::Malformed {
            reason: "string is not valid utf-8",
        },
        P::DeserializeBadOption => DecodeError::Malformed {
            reason: "option tag is neither 0 nor 1",
        },
        P::DeserializeBadEnum => DecodeError::Malformed {
            reason: "enum tag does not fit in 32 bits",
        },
        _ => DecodeError::Malformed {
            reason: "body is not a valid postcard encoding of the message",
        },
    }
}

/// Incremental frame reassembly over a byte stream.
///
/// Feed received bytes with [`push`](Self::push), then call [`next_frame`](Self::next_frame) until it returns
/// `Ok(None)`. After an error the stream is out of sync: every later call returns the same error and pushed
/// bytes are discarded. At end of stream, [`finish`](Self::finish) tells a clean close from a cut-off frame.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    max_len: u32,
    failed: Option<DecodeError>,
}

impl FrameDecoder {
    /// A decoder that accepts bodies up to `min(max_len, MAX_FRAME_LEN)` bytes.
    pub fn new(max_len: u32) -> Self {
        FrameDecoder {
            buf: BytesMut::new(),
            max_len: max_len.min(MAX_FRAME_LEN),
            failed: None,
        }
    }

    /// The effective body limit.
    pub fn max_len(&self) -> u32 {
        self.max_len
    }

    /// Append received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_none() {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered_len(&self) -> usize {
        self.buf.len()
    }

    /// The next complete frame body, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, DecodeError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let Some(header) = self.buf.first_chunk::<FRAME_HEADER_LEN>() else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(*header);
        if len > self.max_len {
            let e = DecodeError::FrameTooLarge {
                len,
                limit: self.max_len,
            };
            self.failed = Some(e.clone());
            self.buf = BytesMut::new();
            return Err(e);
        }
        // len <= MAX_FRAME_LEN, so this fits in usize on every supported target.
        let needed = FRAME_HEADER_LEN + len as usize;
        if self.buf.len() < needed {
            // No reserve here: memory follows bytes actually received, not what a header claims.
            return Ok(None);
        }
        self.buf.advance(FRAME_HEADER_LEN);
        let body = self.buf.split_to(len as usize);
        Ok(Some(body.to_vec()))
    }

    /// Check for a clean end of stream: `Ok` when no partial frame is buffered.
    pub fn finish(&self) -> Result<(), DecodeError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let buffered = self.buf.len();
        if buffered == 0 {
            return Ok(());
        }
        let needed = match self.buf.first_chunk::<FRAME_HEADER_LEN>() {
            Some(header) => FRAME_HEADER_LEN + u32::from_be_bytes(*header) as usize,
            None => FRAME_HEADER_LEN,
        };
        Err(DecodeError::TruncatedFrame { buffered, needed })
    }
}
