//! One agent connection: the checks after the handshake (identity, revocation, expiry), the per-connection
//! [`Session`], and the loop that hands each stream to [`super::request`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use gait_runtime::Tasks;
use gait_store::{AgentKey, CertSerial};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::batch_order::BatchOrder;
use super::endpoint::IngestState;
use super::request::{handle_report, handle_request};
use super::{CLOSE_PROTOCOL_VIOLATION, CLOSE_REVOKED, CLOSE_SHUTDOWN, CLOSE_UNAUTHORIZED};
use crate::clock::unix_ms;
use crate::fleet::presence::SEEN_REFRESH;
use crate::ingest::tls::peer_identity;
use crate::metrics;

/// Serves one incoming connection until it ends or `shutdown` is cancelled; its request streams run as tasks
/// of `tasks`, counted here so the connection waits for them (at most 2 s) before it is forgotten. `permit` is
/// its handshake slot ([`super::admission`]), given back when the handshake ends.
pub(super) async fn handle_incoming(
    incoming: quinn::Incoming,
    permit: super::admission::Permit,
    state: Arc<IngestState>,
    shutdown: CancellationToken,
    tasks: Tasks,
) {
    let remote = incoming.remote_address();
    // Dropping the unfinished handshake at the deadline closes it and frees the slot (admission).
    let handshake = tokio::time::timeout(state.limits.handshake_deadline, incoming)
        .await
        .ok();
    let capacity = permit.completed();
    state
        .metrics
        .handshakes_in_flight
        .set(state.admission.in_flight() as i64);
    if let Some(rate) = capacity {
        state.metrics.handshake_capacity.set(i64::from(rate));
    }
    let conn = match handshake {
        None => {
            metrics::inc_labelled(&state.metrics.connections_refused, "stage", "handshake");
            info!(%remote, deadline_ms = state.limits.handshake_deadline.as_millis() as u64,
                "agent handshake abandoned at its deadline");
            return;
        }
        Some(Ok(conn)) => conn,
        Some(Err(e)) if is_version_skew(&e) => {
            metrics::inc_labelled(&state.metrics.connections_refused, "stage", "version");
            warn!(%remote, error = %e, speaks = %String::from_utf8_lossy(gait_wire::ALPN),
                "agent connection refused: the agent speaks another protocol version (no ALPN in common)");
            return;
        }
        Some(Err(e)) => {
            metrics::inc_labelled(&state.metrics.connections_refused, "stage", "handshake");
            info!(%remote, error = %e, "agent connection refused during handshake");
            return;
        }
    };
    let identity = match peer_identity(&conn) {
        Ok(found) => found,
        Err(e) => {
            metrics::inc_labelled(&state.metrics.connections_refused, "stage", "identity");
            warn!(%remote, error = %e, "agent certificate has no usable identity; closing");
            conn.close(CLOSE_UNAUTHORIZED.into(), b"certificate identity unusable");
            return;
        }
    };
    // A certificate revoked after the handshake verifier last looked is still caught here, and so is one a
    // resumed session (crate::ingest::tickets) brought back without running the verifier at all.
    if state.revoked.contains(identity.serial.as_str()) {
        metrics::inc_labelled(&state.metrics.connections_refused, "stage", "revoked");
        info!(%remote, serial = %identity.serial, "revoked agent certificate; closing");
        conn.close(CLOSE_REVOKED.into(), b"certificate revoked");
        return;
    }
    if identity.not_after_unix < unix_ms() / 1000 {
        metrics::inc_labelled(&state.metrics.connections_refused, "stage", "expired");
        info!(%remote, serial = %identity.serial, not_after_unix = identity.not_after_unix,
            "expired agent certificate (resumed session); closing");
        conn.close(CLOSE_UNAUTHORIZED.into(), b"certificate expired");
        return;
    }
    state.metrics.connections_accepted.inc();
    state
        .metrics
        .agent_certificate_expiry
        .observe((identity.not_after_unix - unix_ms() / 1000).max(0) as f64);
    state.metrics.connections_open.inc();
    let conn_id = state.live.insert(identity.serial.as_str(), conn.clone());
    // Listed now, so a revocation from here on is caught by the scan that follows it; one that landed between the
    // check above and the listing (a scan runs only when the list gains a serial) is caught here.
    if state.revoked.contains(identity.serial.as_str()) {
        metrics::inc_labelled(&state.metrics.connections_refused, "stage", "revoked");
        conn.close(CLOSE_REVOKED.into(), b"certificate revoked");
    }
    debug!(%remote, agent = %identity.spiffe, serial = %identity.serial, "agent connected");
    let key = identity.key();
    let spiffe = identity.spiffe.clone();
    let cert_serial = identity.serial;

    let session = Arc::new(Session {
        key,
        spiffe,
        cert_serial,
        cert_not_after_unix_ms: identity.not_after_unix.saturating_mul(1000),
        cert_issuer: identity.issuer,
        remote,
        hello_done: AtomicBool::new(false),
        last_seen_ms: AtomicU64::new(0),
        conn: conn.clone(),
        batch_order: BatchOrder::new(),
    });
    let streams = TaskTracker::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                conn.close(CLOSE_SHUTDOWN.into(), state.shutdown_reason());
                break;
            }
            bi = conn.accept_bi() => match bi {
                Ok((send, recv)) => {
                    let request = handle_request(state.clone(), session.clone(), send, recv, shutdown.clone());
                    tasks.spawn("quic-request", streams.track_future(request));
                }
                Err(e) => {
                    debug!(%remote, reason = %e, "agent connection ended");
                    break;
                }
            },
            uni = conn.accept_uni() => match uni {
                Ok(recv) => {
                    let report = handle_report(state.clone(), session.clone(), recv);
                    tasks.spawn("quic-report", streams.track_future(report));
                }
                Err(e) => {
                    debug!(%remote, reason = %e, "agent connection ended");
                    break;
                }
            },
        }
    }
    streams.close();
    let _ = tokio::time::timeout(Duration::from_secs(2), streams.wait()).await;
    state.live.remove(conn_id);
    state.identities.release(&session.key, conn.stable_id());
    state.metrics.connections_open.dec();
}

/// TLS alert `no_application_protocol` (RFC 8446 §6.2, RFC 7301 §3.2): the peers share no ALPN.
const ALERT_NO_APPLICATION_PROTOCOL: u8 = 120;

/// Whether a failed handshake means the peer speaks another protocol version: the ALPN changes with
/// [`gait_wire::PROTOCOL_VERSION`] (`gait-fleet/2` now), so a peer of another version shares no ALPN with this aggregator
/// and the handshake ends with TLS alert `no_application_protocol`, whichever side noticed it.
pub fn is_version_skew(error: &quinn::ConnectionError) -> bool {
    let code = match error {
        quinn::ConnectionError::TransportError(e) => e.code,
        quinn::ConnectionError::ConnectionClosed(close) => close.error_code,
        _ => return false,
    };
    code == quinn::TransportErrorCode::crypto(ALERT_NO_APPLICATION_PROTOCOL)
}

/// Per-connection facts.
pub(super) struct Session {
    /// The certificate serial in its `gait-identity` form.
    pub(super) cert_serial: CertSerial,
    /// The certificate's `notAfter` (unix ms) and issuer, recorded with the hello (expiry inventory, CA
    /// retirement).
    pub(super) cert_not_after_unix_ms: i64,
    pub(super) cert_issuer: String,
    pub(super) key: AgentKey,
    /// The verified certificate's SPIFFE id (the actor of what this connection does, e.g. a renewal).
    pub(super) spiffe: gait_identity::SpiffeId,
    pub(super) remote: SocketAddr,
    pub(super) hello_done: AtomicBool,
    pub(super) last_seen_ms: AtomicU64,
    pub(super) conn: quinn::Connection,
    pub(super) batch_order: BatchOrder,
}

impl Session {
    pub(super) fn protocol_violation(&self, state: &IngestState, reason: &str) {
        state.metrics.protocol_errors.inc();
        warn!(remote = %self.remote, org = %self.key.tenant.org, agent_id = %self.key.agent_id, reason,
            "protocol violation; closing agent connection");
        self.conn
            .close(CLOSE_PROTOCOL_VIOLATION.into(), reason.as_bytes());
    }
}

/// Refresh the agent's last-seen time, at most every [`SEEN_REFRESH`].
pub(super) fn touch(state: &IngestState, session: &Session) {
    let now = unix_ms();
    let last = session.last_seen_ms.load(Ordering::Relaxed) as i64;
    if now - last < SEEN_REFRESH.as_millis() as i64 {
        return;
    }
    if state.presence.seen(&session.key) {
        session.last_seen_ms.store(now as u64, Ordering::Relaxed);
    }
}
