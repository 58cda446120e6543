//! One request/response exchange on its own QUIC stream, and one-way messages on a uni stream.
//!
//! An exchange opens a bidirectional stream, writes exactly one framed [`AgentMsg`], finishes the send side
//! and reads exactly one framed [`ServerMsg`]. The whole exchange (open, write, read) runs under one
//! deadline, and the reply frame is bounded by [`gait_wire::MAX_FRAME_LEN`], so a silent or hostile
//! aggregator can hold neither a task nor unbounded memory.

use std::time::Duration;

use gait_wire::{AgentMsg, FrameDecoder, MAX_FRAME_LEN, ServerMsg};

/// Largest chunk read from a stream at once.
const READ_CHUNK: usize = 64 * 1024;

/// Why an exchange failed. Every variant ends the exchange; the connection may still be usable.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// No complete reply within the deadline.
    #[error("no reply from the aggregator within {0:?}")]
    Timeout(Duration),
    /// The connection failed or was closed.
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// Writing the request failed.
    #[error("sending the request failed: {0}")]
    Write(#[from] quinn::WriteError),
    /// The stream was closed before the request was finished.
    #[error("the request stream was closed early: {0}")]
    Closed(#[from] quinn::ClosedStream),
    /// Reading the reply failed.
    #[error("reading the reply failed: {0}")]
    Read(#[from] quinn::ReadError),
    /// The request could not be framed (too large).
    #[error("the request could not be encoded: {0}")]
    Encode(#[from] gait_wire::EncodeError),
    /// The reply was not a valid frame or message.
    #[error("the aggregator sent an invalid reply: {0}")]
    Decode(#[from] gait_wire::DecodeError),
    /// The aggregator finished the stream without sending a reply.
    #[error("the aggregator closed the stream without a reply")]
    NoReply,
}

impl ExchangeError {
    /// True when the connection itself is gone (as opposed to one failed stream).
    pub fn is_connection_lost(&self) -> bool {
        matches!(
            self,
            ExchangeError::Connection(_)
                | ExchangeError::Write(quinn::WriteError::ConnectionLost(_))
                | ExchangeError::Read(quinn::ReadError::ConnectionLost(_))
        )
    }
}

/// Sends `msg` on a new bidirectional stream and returns the single reply, all within `deadline`.
pub(crate) async fn request(
    conn: &quinn::Connection,
    msg: &AgentMsg,
    deadline: Duration,
) -> Result<ServerMsg, ExchangeError> {
    let frame = gait_wire::encode_frame(msg)?;
    let exchange = async {
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(&frame).await?;
        send.finish()?;
        read_reply(&mut recv).await
    };
    tokio::time::timeout(deadline, exchange)
        .await
        .map_err(|_| ExchangeError::Timeout(deadline))?
}

/// Sends `msg` on a new unidirectional stream; no reply is expected. Returns once the bytes are queued.
pub(crate) async fn send_one_way(
    conn: &quinn::Connection,
    msg: &AgentMsg,
    deadline: Duration,
) -> Result<(), ExchangeError> {
    let frame = gait_wire::encode_frame(msg)?;
    let send = async {
        let mut stream = conn.open_uni().await?;
        stream.write_all(&frame).await?;
        stream.finish()?;
        Ok(())
    };
    tokio::time::timeout(deadline, send)
        .await
        .map_err(|_| ExchangeError::Timeout(deadline))?
}

async fn read_reply(recv: &mut quinn::RecvStream) -> Result<ServerMsg, ExchangeError> {
    let mut decoder = FrameDecoder::new(MAX_FRAME_LEN);
    loop {
        if let Some(body) = decoder.next_frame()? {
            return Ok(gait_wire::decode_server_msg(&body)?);
        }
        match recv.read_chunk(READ_CHUNK, true).await? {
            Some(chunk) => decoder.push(&chunk.bytes),
            None => {
                decoder.finish()?;
                return Err(ExchangeError::NoReply);
            }
        }
    }
}
