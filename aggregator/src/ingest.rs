//! QUIC ingest: accepts mutually authenticated agent connections and serves the exchange protocol.
//!
//! The exchange itself (streams, messages, their order, refusals and close codes) is described once, in the
//! `gait-wire` crate documentation, rendered as `docs/protocol.md`; the agent's side links to the same page. What
//! this side adds to it:
//! - The agent's identity and tenancy come only from its verified certificate
//!   ([`crate::ingest::tls::peer_identity`]); nothing a message claims is used for authorization.
//! - Long-polls wait at most [`MAX_POLL_WAIT`]. A request that is oversized, malformed or not read within
//!   [`REQUEST_READ_TIMEOUT`] closes the connection with [`CLOSE_PROTOCOL_VIOLATION`] and a logged reason; other
//!   connections are unaffected.
//! - A record over this aggregator's payload limit (`ingest.max_record_payload_bytes`) is refused for good; the
//!   refused seq is recorded in the store, so the gap the agent's stream shows there reads as "refused", not
//!   "lost".
//!
//! Layout: `admission` bounds the handshakes in flight and answers the excess with a Retry or a refusal;
//! `endpoint` accepts connections and holds the shared [`IngestState`]; `connection` checks one agent after
//! the handshake and runs its streams; `request` reads, dispatches and answers one request; `records`
//! checks and commits record batches; `batch_order` keeps a connection's batches in order; `upload` takes
//! artifact bytes (`BlobOffer`, `BlobChunk`) to [`crate::evidence::Uploads`].

pub mod admission;
mod batch_order;
mod connection;
mod endpoint;
mod identity;
mod records;
mod renew;
mod request;
pub mod tickets;
pub mod tls;
mod upload;

use std::time::Duration;

pub use connection::is_version_skew;
pub use endpoint::{DEFAULT_RECONNECT_RATE, IngestLimits, IngestState, serve};

/// Longest a bundle long-poll is held open.
pub const MAX_POLL_WAIT: Duration = Duration::from_secs(60);
/// Time allowed to receive a complete request once its stream is open.
pub const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(15);
/// QUIC application close codes: the wire crate's.
pub use gait_wire::close::{
    CLOSE_NORMAL, CLOSE_PROTOCOL_VIOLATION, CLOSE_REVOKED, CLOSE_SHUTDOWN, CLOSE_UNAUTHORIZED,
};
/// Most records accepted in one batch: the wire limit.
pub use gait_wire::limits::MAX_BATCH_RECORDS;
