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

pub mod tickets;
pub mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gait_store::{
    ActiveBundle, AgentHello, AgentKey, BundleReportRow, CertSerial, NewRecord, Store,
};
use gait_wire::{
    AgentMsg, AgentMsgV1, BatchAck, BundleOffer, BundleRef, ErrorCode, FrameDecoder,
    PROTOCOL_VERSION, Record, RecordBatch, RecordRefusal, RefusalCode, SeqRange, ServerMsg,
    ServerMsgV1, Welcome, WireError,
};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::clock::unix_ms;
use crate::fleet::presence::Presence;
use crate::ingest::tls::{RevocationSet, peer_identity};
use crate::metrics::{self, Metrics};
use crate::registry::Registry;

/// Longest a bundle long-poll is held open.
pub const MAX_POLL_WAIT: Duration = Duration::from_secs(60);
/// Time allowed to receive a complete request once its stream is open.
pub const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(15);
/// Most records accepted in one batch: the wire limit.
pub use gait_wire::limits::MAX_BATCH_RECORDS;
/// Largest bundle report frame.
const MAX_REPORT_FRAME: u32 = 64 * 1024;

/// QUIC application close codes: the wire crate's.
pub use gait_wire::close::{
    CLOSE_NORMAL, CLOSE_PROTOCOL_VIOLATION, CLOSE_REVOKED, CLOSE_SHUTDOWN, CLOSE_UNAUTHORIZED,
};

/// Limits of the ingest endpoint.
#[derive(Clone, Debug)]
pub struct IngestLimits {
    /// Largest request frame body accepted.
    pub max_frame: u32,
    /// Handshakes per second the fleet is asked to come back at after this aggregator shuts down: the close
    /// reason announces a redial window of `open connections / reconnect_rate` ([`gait_wire::shutdown`]).
    pub reconnect_rate: u32,
    /// Largest record payload stored (`ingest.max_record_payload_bytes`), at most the wire limit. A larger
    /// record is refused for good with [`RefusalCode::RecordPayloadTooLarge`].
    pub max_record_payload_bytes: usize,
}

/// Default [`IngestLimits::reconnect_rate`]: what one aggregator core sustains with room to spare (a full
/// handshake, `Hello` and long-poll cost about 1.5 ms of aggregator CPU; docs/benchmarks.md).
pub const DEFAULT_RECONNECT_RATE: u32 = 1000;

impl Default for IngestLimits {
    fn default() -> Self {
        Self {
            max_frame: gait_wire::MAX_FRAME_LEN,
            reconnect_rate: DEFAULT_RECONNECT_RATE,
            max_record_payload_bytes: gait_wire::limits::MAX_PAYLOAD_BYTES,
        }
    }
}

/// Everything the ingest tasks share.
pub struct IngestState {
    pub store: Store,
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    pub revoked: RevocationSet,
    pub limits: IngestLimits,
    pub server_version: String,
    presence: Presence,
    live: LiveConnections,
    /// Fixed at the first close of shutdown, so every connection announces the same redial window.
    shutdown_reason: std::sync::OnceLock<Vec<u8>>,
}

impl IngestState {
    /// Must be called within a Tokio runtime: it starts the presence writer ([`crate::fleet::presence`]) on
    /// `tasks`.
    pub fn new(
        store: Store,
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
        revoked: RevocationSet,
        limits: IngestLimits,
        tasks: &gait_runtime::Tasks,
    ) -> Self {
        Self {
            presence: Presence::spawn(store.clone(), metrics.clone(), tasks),
            store,
            registry,
            metrics,
            revoked,
            limits,
            server_version: env!("CARGO_PKG_VERSION").to_owned(),
            live: LiveConnections::default(),
            shutdown_reason: std::sync::OnceLock::new(),
        }
    }

    /// The close reason of shutdown: announces a redial window sized by the connections being dropped and
    /// [`IngestLimits::reconnect_rate`] (see [`gait_wire::shutdown`]). Computed once, on first use.
    fn shutdown_reason(&self) -> &[u8] {
        self.shutdown_reason.get_or_init(|| {
            let open = self.live.len();
            let spread = gait_wire::shutdown::spread_for(open, self.limits.reconnect_rate);
            info!(
                open,
                reconnect_spread_ms = u64::try_from(spread.as_millis()).unwrap_or(u64::MAX),
                "shutting down: closing agent connections and announcing their redial window"
            );
            gait_wire::shutdown::shutdown_reason(spread)
        })
    }

    /// Number of agent connections currently open.
    pub fn open_connections(&self) -> usize {
        self.live.len()
    }

    /// Reload the revocation list from the store and close live connections of newly revoked certificates.
    pub async fn refresh_revocations(&self) -> Result<usize, gait_store::StoreError> {
        let serials = self.store.revoked_serials().await?;
        self.revoked.replace_all(serials);
        Ok(self.live.close_revoked(&self.revoked))
    }
}

/// Serve agents on `endpoint` until `shutdown` is cancelled, then drain connection tasks.
pub async fn serve(
    endpoint: quinn::Endpoint,
    state: Arc<IngestState>,
    shutdown: CancellationToken,
) {
    let tracker = TaskTracker::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                let state = state.clone();
                let shutdown = shutdown.clone();
                tracker.spawn(async move { handle_incoming(incoming, state, shutdown).await });
            }
        }
    }
    endpoint.close(CLOSE_SHUTDOWN.into(), state.shutdown_reason());
    tracker.close();
    if tokio::time::timeout(Duration::from_secs(5), tracker.wait())
        .await
        .is_err()
    {
        warn!(
            open = state.live.len(),
            "ingest drain timed out; connections dropped"
        );
    }
    // `close` only queues the CONNECTION_CLOSE frames; exiting before the endpoint sent them leaves agents to
    // find out from their idle timeout (15 s) instead of at once. Give the driver a short moment to send them;
    // waiting out the whole draining period instead would keep the port dark while the fleet redials.
    let _ = tokio::time::timeout(CLOSE_FLUSH, endpoint.wait_idle()).await;
}

/// How long shutdown lets the endpoint send the close frames of every connection (10,000 take well under
/// this on one core; the draining period that `wait_idle` would wait out in full is longer).
const CLOSE_FLUSH: Duration = Duration::from_millis(250);

async fn handle_incoming(
    incoming: quinn::Incoming,
    state: Arc<IngestState>,
    shutdown: CancellationToken,
) {
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(conn) => conn,
        Err(e) if is_version_skew(&e) => {
            state
                .metrics
                .inc_labeled(metrics::CONNECTIONS_REFUSED, "stage", "version", 1);
            warn!(%remote, error = %e, speaks = %String::from_utf8_lossy(gait_wire::ALPN),
                "agent connection refused: the agent speaks another protocol version (no ALPN in common)");
            return;
        }
        Err(e) => {
            state
                .metrics
                .inc_labeled(metrics::CONNECTIONS_REFUSED, "stage", "handshake", 1);
            info!(%remote, error = %e, "agent connection refused during handshake");
            return;
        }
    };
    let typed = peer_identity(&conn).and_then(|id| {
        let (key, serial) = id.typed()?;
        Ok((id, key, serial))
    });
    let (identity, key, cert_serial) = match typed {
        Ok(found) => found,
        Err(e) => {
            state
                .metrics
                .inc_labeled(metrics::CONNECTIONS_REFUSED, "stage", "identity", 1);
            warn!(%remote, error = %e, "agent certificate has no usable identity; closing");
            conn.close(CLOSE_UNAUTHORIZED.into(), b"certificate identity unusable");
            return;
        }
    };
    // A certificate revoked after the handshake verifier last looked is still caught here, and so is one a
    // resumed session (crate::ingest::tickets) brought back without running the verifier at all.
    if state.revoked.contains(&identity.serial_hex) {
        state
            .metrics
            .inc_labeled(metrics::CONNECTIONS_REFUSED, "stage", "revoked", 1);
        info!(%remote, serial = %identity.serial_hex, "revoked agent certificate; closing");
        conn.close(CLOSE_REVOKED.into(), b"certificate revoked");
        return;
    }
    if identity.not_after_unix < unix_ms() / 1000 {
        state
            .metrics
            .inc_labeled(metrics::CONNECTIONS_REFUSED, "stage", "expired", 1);
        info!(%remote, serial = %identity.serial_hex, not_after_unix = identity.not_after_unix,
            "expired agent certificate (resumed session); closing");
        conn.close(CLOSE_UNAUTHORIZED.into(), b"certificate expired");
        return;
    }
    state.metrics.inc(metrics::CONNECTIONS_ACCEPTED, 1);
    state.metrics.gauge_add(metrics::CONNECTIONS_OPEN, 1);
    let conn_id = state.live.insert(&identity.serial_hex, conn.clone());
    debug!(%remote, org = %identity.org, project = %identity.project, env = %identity.env,
        agent_id = %identity.agent_id, "agent connected");

    let session = Arc::new(Session {
        key,
        cert_serial,
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
                    let (state, session, shutdown) = (state.clone(), session.clone(), shutdown.clone());
                    streams.spawn(async move { handle_request(state, session, send, recv, shutdown).await });
                }
                Err(e) => {
                    debug!(%remote, reason = %e, "agent connection ended");
                    break;
                }
            },
            uni = conn.accept_uni() => match uni {
                Ok(recv) => {
                    let (state, session) = (state.clone(), session.clone());
                    streams.spawn(async move { handle_report(state, session, recv).await });
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
    state.metrics.gauge_add(metrics::CONNECTIONS_OPEN, -1);
}

/// TLS alert `no_application_protocol` (RFC 8446 §6.2, RFC 7301 §3.2): the peers share no ALPN.
const ALERT_NO_APPLICATION_PROTOCOL: u8 = 120;

/// Whether a failed handshake means the peer speaks another protocol version: the ALPN changes with
/// [`PROTOCOL_VERSION`] (`gait-fleet/2` now), so a peer of another version shares no ALPN with this aggregator
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
struct Session {
    /// The certificate serial in its `gait-identity` form.
    cert_serial: CertSerial,
    key: AgentKey,
    remote: SocketAddr,
    hello_done: AtomicBool,
    last_seen_ms: AtomicU64,
    conn: quinn::Connection,
    batch_order: BatchOrder,
}

/// Commits a connection's pipelined batches in `batch_id` order.
///
/// An agent may have several batches in flight on separate streams, and QUIC delivers streams independently,
/// so batch 3 can arrive before batch 2. Committing it first would make the store see a sequence gap that is
/// not a loss. Batch ids start at 1 on every connection.
///
/// A batch waits without a deadline while every earlier batch has *arrived* (they are being checked or
/// committed and will finish). Only while an earlier batch is still missing does the wait time out, after
/// [`BATCH_ORDER_WAIT`] without progress: a predecessor whose stream was lost never arrives, and the store then
/// records the gap it leaves. Committing time under load therefore never turns into false gaps.
struct BatchOrder {
    inner: Mutex<OrderState>,
    turn: tokio::sync::Notify,
}

struct OrderState {
    /// Every batch id below this one is committed (or was given up on).
    next: u64,
    /// Batch ids that have arrived and are not committed yet.
    arrived: std::collections::BTreeSet<u64>,
}

impl OrderState {
    /// Whether a batch id in `next..batch_id` has not arrived yet.
    fn predecessor_missing(&self, batch_id: u64) -> bool {
        let waiting = batch_id.saturating_sub(self.next);
        let present = self.arrived.range(self.next..batch_id).count() as u64;
        present < waiting
    }
}

/// Longest a batch waits, without any progress, for an earlier batch of the same connection to arrive.
const BATCH_ORDER_WAIT: Duration = Duration::from_secs(2);

/// Longest a batch waits for arrived predecessors to commit: only a safety net against a stuck store call,
/// well above the store's own timeouts.
const BATCH_COMMIT_WAIT: Duration = Duration::from_secs(120);

impl BatchOrder {
    fn new() -> Self {
        Self {
            inner: Mutex::new(OrderState {
                next: 1,
                arrived: std::collections::BTreeSet::new(),
            }),
            turn: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OrderState> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wait until every earlier batch is committed, or until an earlier one is given up on. The returned guard
    /// marks `batch_id` committed when it is dropped, also when the request is abandoned halfway.
    async fn wait_turn(&self, batch_id: u64) -> OrderTurn<'_> {
        self.lock().arrived.insert(batch_id);
        // From here on the guard owns the arrival: abandoning the wait marks the batch done.
        let turn = OrderTurn {
            order: self,
            batch_id,
        };
        // Other waiters may be waiting for this one to arrive.
        self.turn.notify_waiters();
        loop {
            let notified = self.turn.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let wait = {
                let state = self.lock();
                if state.next >= batch_id {
                    break;
                }
                if state.predecessor_missing(batch_id) {
                    BATCH_ORDER_WAIT
                } else {
                    BATCH_COMMIT_WAIT
                }
            };
            // Any progress (an arrival or a commit) wakes us and restarts the wait.
            if tokio::time::timeout(wait, notified).await.is_err() {
                break;
            }
        }
        turn
    }

    fn done(&self, batch_id: u64) {
        let mut state = self.lock();
        state.arrived.remove(&batch_id);
        if state.next <= batch_id {
            state.next = batch_id + 1;
        }
        drop(state);
        self.turn.notify_waiters();
    }
}

/// A batch's place in [`BatchOrder`]; dropping it marks the batch done.
struct OrderTurn<'a> {
    order: &'a BatchOrder,
    batch_id: u64,
}

impl Drop for OrderTurn<'_> {
    fn drop(&mut self) {
        self.order.done(self.batch_id);
    }
}

impl Session {
    fn protocol_violation(&self, state: &IngestState, reason: &str) {
        state.metrics.inc(metrics::PROTOCOL_ERRORS, 1);
        warn!(remote = %self.remote, org = %self.key.tenant.org, agent_id = %self.key.agent_id, reason,
            "protocol violation; closing agent connection");
        self.conn
            .close(CLOSE_PROTOCOL_VIOLATION.into(), reason.as_bytes());
    }
}

/// Read one complete frame body from `recv`, bounded by `max` bytes and the read timeout.
async fn read_request(recv: &mut quinn::RecvStream, max: u32) -> Result<Vec<u8>, String> {
    let limit = max as usize + gait_wire::FRAME_HEADER_LEN;
    let bytes = match tokio::time::timeout(REQUEST_READ_TIMEOUT, recv.read_to_end(limit)).await {
        Err(_) => {
            return Err(format!(
                "request not received within {}s",
                REQUEST_READ_TIMEOUT.as_secs()
            ));
        }
        Ok(Err(quinn::ReadToEndError::TooLong)) => {
            return Err(format!("request larger than {max} bytes"));
        }
        Ok(Err(e)) => return Err(format!("request stream failed: {e}")),
        Ok(Ok(bytes)) => bytes,
    };
    let mut decoder = FrameDecoder::new(max);
    decoder.push(&bytes);
    let frame = decoder
        .next_frame()
        .map_err(|e| format!("bad frame: {e}"))?;
    let Some(body) = frame else {
        return Err("truncated frame".into());
    };
    if decoder.buffered_len() != 0 {
        return Err("trailing bytes after the request frame".into());
    }
    Ok(body)
}

async fn write_response(send: &mut quinn::SendStream, msg: ServerMsgV1) {
    match gait_wire::encode_frame(&ServerMsg::V1(msg)) {
        Ok(frame) => {
            if send.write_all(&frame).await.is_ok() {
                let _ = send.finish();
            }
        }
        Err(e) => warn!(error = %e, "response could not be encoded"),
    }
}

fn error_msg(code: ErrorCode, message: impl Into<String>) -> ServerMsgV1 {
    ServerMsgV1::Error(WireError::new(code, message))
}

async fn handle_request(
    state: Arc<IngestState>,
    session: Arc<Session>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    shutdown: CancellationToken,
) {
    let body = match read_request(&mut recv, state.limits.max_frame).await {
        Ok(b) => b,
        Err(reason) => return session.protocol_violation(&state, &reason),
    };
    let msg = match gait_wire::decode_agent_msg(&body) {
        Ok(AgentMsg::V1(m)) => m,
        Err(e) => {
            // An unknown variant from a newer agent is answered, not punished.
            if e.error_code() == ErrorCode::Unsupported {
                return write_response(&mut send, error_msg(ErrorCode::Unsupported, e.to_string()))
                    .await;
            }
            return session.protocol_violation(&state, &format!("malformed request: {e}"));
        }
    };
    let is_hello = matches!(msg, AgentMsgV1::Hello(_));
    if !is_hello && !session.hello_done.load(Ordering::Acquire) {
        return write_response(
            &mut send,
            error_msg(ErrorCode::BadRequest, "send Hello first"),
        )
        .await;
    }
    let reply = match msg {
        AgentMsgV1::Hello(hello) => on_hello(&state, &session, hello).await,
        AgentMsgV1::PollBundle(poll) => {
            let wait = Duration::from_millis(u64::from(poll.wait_ms)).min(MAX_POLL_WAIT);
            tokio::select! {
                r = on_poll(&state, &session, poll.have_epoch, wait) => r,
                _ = shutdown.cancelled() => error_msg(ErrorCode::Unavailable, "aggregator shutting down"),
                _ = session.conn.closed() => return,
            }
        }
        AgentMsgV1::RecordBatch(batch) => {
            let id = batch.batch_id;
            let turn = session.batch_order.wait_turn(id).await;
            let reply = on_batch(&state, &session, batch).await;
            drop(turn);
            reply
        }
        AgentMsgV1::BundleReport(_) => error_msg(
            ErrorCode::BadRequest,
            "send BundleReport on a unidirectional stream",
        ),
    };
    write_response(&mut send, reply).await;
    touch(&state, &session);
}

/// Refresh the agent's last-seen time at most every few seconds.
fn touch(state: &IngestState, session: &Session) {
    let now = unix_ms();
    let last = session.last_seen_ms.load(Ordering::Relaxed) as i64;
    if now - last < 5_000 {
        return;
    }
    session.last_seen_ms.store(now as u64, Ordering::Relaxed);
    state.presence.seen(&session.key);
}

fn active_row(b: &BundleRef) -> ActiveBundle {
    ActiveBundle {
        epoch: b.epoch,
        digest: hex::encode(b.digest),
        since_unix_ms: b.since_unix_ms,
    }
}

fn received_row(b: &BundleRef) -> gait_store::BundleRef {
    gait_store::BundleRef {
        epoch: b.epoch,
        digest: hex::encode(b.digest),
    }
}

async fn on_hello(state: &IngestState, session: &Session, hello: gait_wire::Hello) -> ServerMsgV1 {
    if hello.protocol_version != PROTOCOL_VERSION {
        return error_msg(
            ErrorCode::Unsupported,
            format!(
                "protocol version {} not supported; this aggregator speaks {PROTOCOL_VERSION}",
                hello.protocol_version
            ),
        );
    }
    let now = unix_ms();
    let row = AgentHello {
        remote_addr: session.remote.to_string(),
        agent_version: truncate(&hello.agent_version, 64),
        active_bundle: hello.active.as_ref().map(active_row),
        received_bundle: hello.received.as_ref().map(received_row),
        outbox_depth: hello.outbox_depth,
        shed_total: hello.shed_total,
        cert_serial: session.cert_serial.clone(),
    };
    match state.presence.connected(session.key.clone(), row).await {
        Ok(cursor) => {
            session.hello_done.store(true, Ordering::Release);
            session.last_seen_ms.store(now as u64, Ordering::Relaxed);
            ServerMsgV1::Welcome(Welcome {
                server_version: state.server_version.clone(),
                protocol_version: PROTOCOL_VERSION,
                org: session.key.tenant.org.to_string(),
                project: session.key.tenant.project.to_string(),
                env: session.key.tenant.env.to_string(),
                agent_id: session.key.agent_id.to_string(),
                committed_seq: cursor.committed_seq,
                committed_hash: cursor.committed_hash,
            })
        }
        Err(e) => {
            warn!(error = %e, agent_id = %session.key.agent_id, "agent registration failed");
            error_msg(ErrorCode::Unavailable, "store unavailable; retry")
        }
    }
}

async fn on_poll(
    state: &IngestState,
    session: &Session,
    have_epoch: u64,
    wait: Duration,
) -> ServerMsgV1 {
    match state
        .registry
        .wait_newer(&session.key.tenant, have_epoch, wait)
        .await
    {
        Ok(Some(bundle)) => {
            let mut digest = [0u8; 32];
            if hex::decode_to_slice(&bundle.digest, &mut digest).is_err() {
                return error_msg(ErrorCode::Internal, "stored bundle digest is not hex");
            }
            state.metrics.inc(metrics::BUNDLES_SERVED, 1);
            ServerMsgV1::Bundle(BundleOffer {
                epoch: bundle.epoch,
                digest,
                signed_bundle: bundle.bytes.clone(),
            })
        }
        Ok(None) => ServerMsgV1::NoNewBundle { have_epoch },
        Err(e) => {
            warn!(error = %e, "bundle lookup failed");
            error_msg(ErrorCode::Unavailable, "registry unavailable; retry")
        }
    }
}

async fn on_batch(state: &IngestState, session: &Session, batch: RecordBatch) -> ServerMsgV1 {
    if batch.records.len() > MAX_BATCH_RECORDS {
        return error_msg(
            ErrorCode::TooLarge,
            format!(
                "{} records in one batch; send at most {MAX_BATCH_RECORDS}",
                batch.records.len()
            ),
        );
    }
    let started = Instant::now();
    let records = batch.records;
    let max_payload = state.limits.max_record_payload_bytes;
    // Hashing every payload is CPU work: keep it off the async workers for big batches.
    let checked = if records.len() > 64 {
        match tokio::task::spawn_blocking(move || check_records(records, max_payload)).await {
            Ok(r) => r,
            Err(_) => return error_msg(ErrorCode::Internal, "record check task failed"),
        }
    } else {
        check_records(records, max_payload)
    };
    let rows = match checked {
        Ok(rows) => rows,
        Err(refused) => return refuse(state, session, batch.batch_id, refused).await,
    };
    match state
        .store
        .commit_batch(&session.key, &rows, unix_ms())
        .await
    {
        Ok(outcome) => {
            state.metrics.inc(metrics::BATCHES_COMMITTED, 1);
            state
                .metrics
                .inc(metrics::RECORDS_INSERTED, outcome.inserted);
            state
                .metrics
                .inc(metrics::RECORDS_DUPLICATE, outcome.duplicates);
            state
                .metrics
                .inc(metrics::RECORDS_CONFLICT, outcome.conflicts);
            state
                .metrics
                .inc(metrics::RECORD_GAPS, outcome.gaps.len() as u64);
            state.metrics.inc(
                metrics::RECORDS_REFUSED_SKIPPED,
                outcome.refused.len() as u64,
            );
            if !outcome.gaps.is_empty() || outcome.conflicts > 0 {
                warn!(agent_id = %session.key.agent_id, org = %session.key.tenant.org, gaps = ?outcome.gaps,
                    conflicts = outcome.conflicts, "agent record stream has gaps or conflicts");
            }
            debug!(agent_id = %session.key.agent_id, inserted = outcome.inserted, duplicates = outcome.duplicates,
                elapsed_ms = started.elapsed().as_millis() as u64, "batch committed");
            ServerMsgV1::BatchAck(BatchAck {
                batch_id: batch.batch_id,
                committed_through: outcome.committed_seq,
                inserted: u32::try_from(outcome.inserted).unwrap_or(u32::MAX),
                duplicates: u32::try_from(outcome.duplicates).unwrap_or(u32::MAX),
                gaps: outcome
                    .gaps
                    .iter()
                    .map(|&(first, last)| SeqRange { first, last })
                    .collect(),
            })
        }
        Err(e) if e.is_retryable() => {
            warn!(error = %e, agent_id = %session.key.agent_id, "batch commit failed; agent will retry");
            error_msg(ErrorCode::Unavailable, "commit failed; retry")
        }
        Err(e) => match e
            .refusal_code()
            .and_then(|(index, code)| Some((rows.get(index)?.seq, code)))
        {
            Some((seq, code)) => {
                let refused = Refused {
                    seq,
                    code,
                    message: e.to_string(),
                };
                refuse(state, session, batch.batch_id, refused).await
            }
            None => {
                warn!(error = %e, agent_id = %session.key.agent_id, "batch refused by the store");
                error_msg(ErrorCode::BadRequest, format!("batch refused: {e}"))
            }
        },
    }
}

/// Answers a batch with the refusal of one of its records: counts it by code, logs it naming the agent and the
/// seq, and, for a permanent code, records the refused seq in the store first, so the gap the agent's stream
/// will show there is known as a refusal rather than a loss. When that cannot be recorded now, the batch is
/// answered "unavailable; retry" instead: the agent sends it again and gets the same refusal later.
async fn refuse(
    state: &IngestState,
    session: &Session,
    batch_id: u64,
    refused: Refused,
) -> ServerMsgV1 {
    let Refused { seq, code, message } = refused;
    warn!(agent = %session.key, seq, %code, %message, "record refused");
    if code.is_permanent() {
        let recorded = state
            .store
            .record_refusal(&session.key, seq, code.as_str(), &message, unix_ms())
            .await;
        match recorded {
            Ok(()) => {}
            Err(e) if e.is_retryable() => {
                warn!(error = %e, agent = %session.key, seq, "refusal not recorded; agent will retry");
                return error_msg(ErrorCode::Unavailable, "store unavailable; retry");
            }
            Err(e) => {
                warn!(error = %e, agent = %session.key, seq,
                    "refusal not recorded; the agent's stream will show a missing gap there")
            }
        }
    }
    state
        .metrics
        .inc_labeled(metrics::RECORDS_REFUSED, "code", code.as_str(), 1);
    ServerMsgV1::RecordRefused(RecordRefusal::new(batch_id, seq, code, message))
}

/// A record [`check_records`] refuses, before the batch id is attached.
#[derive(Debug)]
struct Refused {
    seq: u64,
    code: RefusalCode,
    message: String,
}

/// Checks each record under the wire rule ([`Record::validate`]), this aggregator's payload limit
/// (`max_payload`, at most the wire's) and its hash, and turns it into a store row. The first record that
/// fails is named with its [`RefusalCode`].
fn check_records(records: Vec<Record>, max_payload: usize) -> Result<Vec<NewRecord>, Refused> {
    let mut rows = Vec::with_capacity(records.len());
    for r in records {
        if let Err(e) = r.validate() {
            return Err(Refused {
                seq: r.seq,
                code: e.refusal_code(),
                message: e.to_string(),
            });
        }
        if r.payload.len() > max_payload {
            return Err(Refused {
                seq: r.seq,
                code: RefusalCode::RecordPayloadTooLarge,
                message: format!(
                    "record {}: payload is {} bytes, over this aggregator's limit of {max_payload} bytes \
                     (ingest.max_record_payload_bytes)",
                    r.seq,
                    r.payload.len()
                ),
            });
        }
        if !r.verify_hash() {
            return Err(Refused {
                seq: r.seq,
                code: RefusalCode::RecordHashMismatch,
                message: format!("record {} hash does not match its content", r.seq),
            });
        }
        rows.push(NewRecord {
            seq: r.seq,
            prev_hash: r.prev_hash,
            hash: r.hash,
            class: r.class.as_str().to_owned(),
            kind: r.kind,
            created_unix_ms: r.created_unix_ms,
            bundle_epoch: r.bundle.as_ref().map(|b| b.epoch),
            bundle_digest: r.bundle.as_ref().map(|b| hex::encode(b.digest)),
            bundle_since_ms: r.bundle.as_ref().map(|b| b.since_unix_ms),
            payload: r.payload,
        });
    }
    Ok(rows)
}

async fn on_report(state: &IngestState, session: &Session, report: gait_wire::BundleReport) {
    if let Some(refusal) = &report.refusal {
        state.metrics.inc_labeled(
            metrics::BUNDLE_REFUSALS_REPORTED,
            "code",
            bounded_code(&refusal.code),
            1,
        );
        warn!(agent_id = %session.key.agent_id, org = %session.key.tenant.org, epoch = refusal.epoch,
            code = %refusal.code, message = %refusal.message, "agent refused a bundle");
    }
    let mut rows = Vec::new();
    if let Some(r) = &report.received {
        rows.push(BundleReportRow::Received(received_row(r)));
    }
    if let Some(a) = &report.applied {
        rows.push(BundleReportRow::Activated(active_row(a)));
    }
    if let Some(r) = &report.refusal {
        rows.push(BundleReportRow::Refused {
            epoch: r.epoch,
            code: truncate(&r.code, 64),
            message: truncate(&r.message, 512),
        });
    }
    let now = unix_ms();
    for row in &rows {
        if let Err(e) = state
            .store
            .record_bundle_report(&session.key, row, now)
            .await
        {
            warn!(error = %e, "bundle report not stored");
        }
    }
}

async fn handle_report(
    state: Arc<IngestState>,
    session: Arc<Session>,
    mut recv: quinn::RecvStream,
) {
    let body = match read_request(&mut recv, MAX_REPORT_FRAME).await {
        Ok(b) => b,
        Err(reason) => return session.protocol_violation(&state, &reason),
    };
    match gait_wire::decode_agent_msg(&body) {
        Ok(AgentMsg::V1(AgentMsgV1::BundleReport(report)))
            if session.hello_done.load(Ordering::Acquire) =>
        {
            on_report(&state, &session, report).await
        }
        Ok(_) => session.protocol_violation(
            &state,
            "only a BundleReport after Hello may use a unidirectional stream",
        ),
        Err(e) => session.protocol_violation(&state, &format!("malformed report: {e}")),
    }
}

/// Refusal codes are agent-supplied: only the bundle crate's own codes ([`gait_bundle::BundleError::CODES`])
/// become metric labels, anything else is `other`.
fn bounded_code(code: &str) -> &'static str {
    gait_bundle::BundleError::CODES
        .into_iter()
        .find(|known| *known == code)
        .unwrap_or("other")
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// Open connections by id, with the certificate serial each was authenticated with.
#[derive(Default)]
struct LiveConnections {
    next: AtomicU64,
    map: Mutex<HashMap<u64, (String, quinn::Connection)>>,
}

impl LiveConnections {
    fn insert(&self, serial: &str, conn: quinn::Connection) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, (serial.to_owned(), conn));
        id
    }

    fn remove(&self, id: u64) {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn close_revoked(&self, revoked: &RevocationSet) -> usize {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let mut closed = 0;
        for (serial, conn) in map.values() {
            if revoked.contains(serial) {
                conn.close(CLOSE_REVOKED.into(), b"certificate revoked");
                closed += 1;
            }
        }
        if closed > 0 {
            info!(closed, "closed connections of revoked certificates");
        }
        closed
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::disallowed_methods)] // tests spawn freely and read the clock
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Run batch `id` through the order: wait for its turn, "commit" for `commit`, record the commit order.
    async fn run_batch(
        order: Arc<BatchOrder>,
        log: Arc<Mutex<Vec<u64>>>,
        id: u64,
        commit: Duration,
    ) {
        let turn = order.wait_turn(id).await;
        log.lock().unwrap().push(id);
        tokio::time::sleep(commit).await;
        drop(turn);
    }

    fn sealed(seq: u64, prev: [u8; 32], payload_len: usize) -> Record {
        Record::sealed(
            seq,
            prev,
            gait_wire::RecordClass::Block,
            "gate.decision",
            0,
            None,
            vec![b'x'; payload_len],
        )
    }

    #[test]
    fn a_payload_over_the_configured_limit_is_refused_naming_the_seq_and_the_limit() {
        let first = sealed(1, gait_wire::GENESIS_HASH, 100);
        let second = sealed(2, first.hash, 101);
        let rows = check_records(vec![first.clone()], 100).expect("at the limit");
        assert_eq!(rows.len(), 1);
        let refused = check_records(vec![first, second], 100).expect_err("over the limit");
        assert_eq!(refused.seq, 2);
        assert_eq!(refused.code, RefusalCode::RecordPayloadTooLarge);
        assert!(refused.code.is_permanent());
        assert!(
            refused.message.contains("record 2")
                && refused.message.contains("101 bytes")
                && refused.message.contains("limit of 100 bytes"),
            "{}",
            refused.message
        );
    }

    #[test]
    fn bundle_refusal_labels_are_the_bundle_crates_codes_or_other() {
        for code in gait_bundle::BundleError::CODES {
            assert_eq!(bounded_code(code), code);
        }
        assert_eq!(
            bounded_code("bundle_schema_unsupported"),
            "bundle_schema_unsupported"
        );
        assert_eq!(bounded_code("anything an agent says"), "other");
    }

    #[tokio::test(start_paused = true)]
    async fn slow_commit_of_an_arrived_predecessor_is_waited_for() {
        let order = Arc::new(BatchOrder::new());
        let log = Arc::new(Mutex::new(Vec::new()));
        // Batch 1 arrives first and takes far longer than BATCH_ORDER_WAIT to commit.
        let first = tokio::spawn(run_batch(
            order.clone(),
            log.clone(),
            1,
            Duration::from_secs(30),
        ));
        tokio::task::yield_now().await;
        let second = tokio::spawn(run_batch(order.clone(), log.clone(), 2, Duration::ZERO));
        let third = tokio::spawn(run_batch(order.clone(), log.clone(), 3, Duration::ZERO));
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(
            *log.lock().unwrap(),
            vec![1],
            "2 and 3 must wait for 1's commit"
        );
        for t in [first, second, third] {
            t.await.unwrap();
        }
        assert_eq!(*log.lock().unwrap(), vec![1, 2, 3]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_predecessor_that_never_arrives_is_given_up_after_the_wait() {
        let order = Arc::new(BatchOrder::new());
        let log = Arc::new(Mutex::new(Vec::new()));
        let started = tokio::time::Instant::now();
        // Batch 1 is lost; batch 2 must go ahead after BATCH_ORDER_WAIT, not wait for the commit safety net.
        run_batch(order.clone(), log.clone(), 2, Duration::ZERO).await;
        let waited = started.elapsed();
        assert!(
            waited >= BATCH_ORDER_WAIT && waited < BATCH_ORDER_WAIT * 2,
            "{waited:?}"
        );
        // A late batch 1 is not held back by anything.
        let late = tokio::time::Instant::now();
        run_batch(order.clone(), log.clone(), 1, Duration::ZERO).await;
        assert_eq!(late.elapsed(), Duration::ZERO);
        assert_eq!(*log.lock().unwrap(), vec![2, 1]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_arrival_restarts_the_wait_and_keeps_order() {
        let order = Arc::new(BatchOrder::new());
        let log = Arc::new(Mutex::new(Vec::new()));
        let third = tokio::spawn(run_batch(order.clone(), log.clone(), 3, Duration::ZERO));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // 1 and 2 arrive just before 3 would give up; 1 then commits for 10 s.
        let first = tokio::spawn(run_batch(
            order.clone(),
            log.clone(),
            1,
            Duration::from_secs(10),
        ));
        let second = tokio::spawn(run_batch(order.clone(), log.clone(), 2, Duration::ZERO));
        for t in [third, first, second] {
            t.await.unwrap();
        }
        assert_eq!(*log.lock().unwrap(), vec![1, 2, 3]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_wait_does_not_block_later_batches() {
        let order = Arc::new(BatchOrder::new());
        let count = Arc::new(AtomicUsize::new(0));
        // Batch 2 arrives and its request is dropped while waiting for the missing batch 1.
        let abandoned = {
            let order = order.clone();
            tokio::spawn(async move {
                let _turn = order.wait_turn(2).await;
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        abandoned.abort();
        let _ = abandoned.await;
        let started = tokio::time::Instant::now();
        let c = count.clone();
        let turn = order.wait_turn(3).await;
        c.fetch_add(1, Ordering::SeqCst);
        drop(turn);
        // Dropping batch 2's wait gave up on batch 1 as a timeout would have, so batch 3 goes at once.
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }
}
