//! The QUIC ingest endpoint: the state every connection shares ([`IngestState`]), the accept loop
//! ([`serve`]) and the table of open connections that revocation and shutdown close.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gait_runtime::Tasks;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::admission::{
    Admission, Decision, REFUSED_MEMORY, REFUSED_MEMORY_MAX, RecentlyRefused, Waiting,
};
use super::connection::handle_incoming;
use super::{CLOSE_REVOKED, CLOSE_SHUTDOWN};
use crate::fleet::intake::Intake;
use crate::fleet::presence::Presence;
use crate::ingest::tls::RevocationSet;
use crate::metrics::{self, Metrics};
use crate::registry::Registry;

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
    /// Handshakes worked on at once (`quic.max_handshakes_in_flight`); attempts beyond it are refused and the
    /// agents back off ([`super::admission`]).
    pub max_handshakes_in_flight: usize,
    /// Longest a handshake may hold its slot before it is abandoned ([`super::admission::HANDSHAKE_DEADLINE`]).
    pub handshake_deadline: Duration,
    /// Longest an attempt waits for a slot ([`super::admission::MAX_WAIT`]).
    pub handshake_queue_wait: Duration,
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
            max_handshakes_in_flight: super::admission::DEFAULT_MAX_HANDSHAKES_IN_FLIGHT,
            handshake_deadline: super::admission::HANDSHAKE_DEADLINE,
            handshake_queue_wait: super::admission::MAX_WAIT,
        }
    }
}

/// Everything the ingest tasks share.
pub struct IngestState {
    /// The agents' writes (the edge holds no store).
    pub intake: Intake,
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    pub revoked: RevocationSet,
    pub limits: IngestLimits,
    pub server_version: String,
    pub(super) presence: Presence,
    pub(super) live: LiveConnections,
    /// The handshake bound and the measured handshake rate ([`super::admission`]).
    pub(super) admission: Arc<Admission>,
    /// The live session of each agent identity ([`super::identity`]).
    pub(super) identities: super::identity::Identities,
    /// Certificate renewal (`RenewCertificate`); `None` answers it `Unsupported`.
    pub enrollment: Option<Arc<crate::enroll::Enrollment>>,
    /// Approval governance: raises requests from `approval.request` records, delivers issued tokens
    /// (`None`: records are stored only and `FetchApprovals` gets nothing).
    pub approvals: Option<Arc<crate::approval::Approvals>>,
    /// Artifact uploads (`BlobOffer`, `BlobChunk`); `None` answers them `Unsupported`.
    pub uploads: Option<Arc<crate::evidence::Uploads>>,
    /// Fixed at the first close of shutdown, so every connection announces the same redial window.
    shutdown_reason: std::sync::OnceLock<Vec<u8>>,
}

impl IngestState {
    /// Must be called within a Tokio runtime: it starts the presence writer ([`crate::fleet::presence`]) on
    /// `tasks`.
    pub fn new(
        intake: Intake,
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
        revoked: RevocationSet,
        limits: IngestLimits,
        tasks: &gait_runtime::Tasks,
    ) -> Self {
        Self {
            presence: intake.spawn_presence(metrics.clone(), tasks),
            intake,
            registry,
            metrics,
            revoked,
            server_version: env!("CARGO_PKG_VERSION").to_owned(),
            live: LiveConnections::default(),
            admission: Admission::new(limits.max_handshakes_in_flight),
            limits,
            identities: Default::default(),
            enrollment: None,
            approvals: None,
            uploads: None,
            shutdown_reason: std::sync::OnceLock::new(),
        }
    }

    /// This state with certificate renewal served by `enrollment`.
    pub fn with_enrollment(mut self, enrollment: Arc<crate::enroll::Enrollment>) -> Self {
        self.enrollment = Some(enrollment);
        self
    }

    /// Turns on approval governance (requests from records, token delivery).
    pub fn with_approvals(mut self, approvals: Arc<crate::approval::Approvals>) -> Self {
        self.approvals = Some(approvals);
        self
    }

    /// Takes artifact uploads into `uploads`.
    pub fn with_uploads(mut self, uploads: Arc<crate::evidence::Uploads>) -> Self {
        self.uploads = Some(uploads);
        self
    }

    /// The close reason of shutdown: announces a redial window sized by the connections being dropped and the
    /// handshake rate this process measured under pressure, or [`IngestLimits::reconnect_rate`] when it never
    /// was (see [`gait_wire::shutdown`], [`super::admission`]). Computed once, on first use.
    pub(super) fn shutdown_reason(&self) -> &[u8] {
        self.shutdown_reason.get_or_init(|| {
            let open = self.live.len();
            let rate = self.admission.reconnect_rate(self.limits.reconnect_rate);
            let spread = gait_wire::shutdown::spread_for(open, rate);
            info!(
                open,
                reconnect_rate = rate,
                measured = self.admission.capacity().is_some(),
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

    /// Reload the revocation list from the store and close live connections of newly revoked certificates. The
    /// live connections are only checked when the list gained a serial: the reload runs every housekeeping tick,
    /// and checking 50,000 connections each time was a few percent of a core for nothing.
    pub async fn refresh_revocations(&self) -> Result<usize, gait_store::StoreError> {
        let serials = self.intake.revoked_serials().await?;
        if !self.revoked.replace_all(serials) {
            return Ok(0);
        }
        Ok(self.live.close_revoked(&self.revoked))
    }
}

/// Serve agents on `endpoint` until `shutdown` is cancelled, then drain connection tasks.
///
/// Each connection's handler (and each of its request streams) is a task of `tasks`, so the process's drain
/// waits for them and a panic in one is logged; `serve` also counts its own handlers, so that it closes the
/// endpoint and waits for them (at most 5 s) before the close frames are flushed.
pub async fn serve(
    endpoint: quinn::Endpoint,
    state: Arc<IngestState>,
    shutdown: CancellationToken,
    tasks: Tasks,
) {
    let tracker = TaskTracker::new();
    let mut refusals = RefusalLog::default();
    let mut waiting = Waiting::new(&state.admission, state.limits.handshake_queue_wait);
    let start = |permit, incoming| {
        state
            .metrics
            .handshakes_in_flight
            .set(state.admission.in_flight() as i64);
        let handler = handle_incoming(
            incoming,
            permit,
            state.clone(),
            shutdown.clone(),
            tasks.clone(),
        );
        tasks.spawn("quic-connection", tracker.track_future(handler));
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            () = state.admission.slot_freed(), if !waiting.is_empty() => {
                waiting.admit(&state.admission, Instant::now(), start,
                    |incoming| refuse(incoming, &state, &mut refusals));
            }
            // The oldest waited out its time with no slot freed: refuse it now rather than leave the agent to
            // its handshake deadline.
            () = sleep_until(waiting.next_expiry()), if !waiting.is_empty() => {
                let later = Instant::now() + Duration::from_millis(1);
                waiting.admit(&state.admission, later, start,
                    |incoming| refuse(incoming, &state, &mut refusals));
            }
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                // Attempts already waiting get a freed slot before this one.
                let now = Instant::now();
                waiting.admit(&state.admission, now, start, |incoming| refuse(incoming, &state, &mut refusals));
                // A copy of an attempt refused a moment ago (its client sent it before the refusal arrived): refused
                // again at once, never queued (admission: a ghost given a slot holds it to the deadline).
                'attempt: {
                    if refusals.recent.contains(&attempt_key(&incoming), now) {
                        metrics::inc_labelled(&state.metrics.connections_refused, "stage", "repeat");
                        incoming.refuse();
                        break 'attempt;
                    }
                    let validated = incoming.remote_address_validated();
                    // A full queue refuses every newcomer, validated or not (no Retry round trip first).
                    let decision = if waiting.is_full() {
                        Decision::Full
                    } else if waiting.is_empty() {
                        state.admission.decide(validated)
                    } else if validated {
                        Decision::Full
                    } else {
                        Decision::Retry
                    };
                    match decision {
                        Decision::Accept(permit) => start(permit, incoming),
                        Decision::Retry => match incoming.retry() {
                            Ok(()) => {
                                state.metrics.handshake_retries.inc();
                            }
                            // Already retried once (it carries a token quinn could not use): it may wait.
                            Err(e) => {
                                if let Err(incoming) = waiting.push(e.into_incoming(), now) {
                                    refuse(incoming, &state, &mut refusals);
                                }
                            }
                        },
                        Decision::Full => {
                            if let Err(incoming) = waiting.push(incoming, now) {
                                refuse(incoming, &state, &mut refusals);
                            }
                        }
                    }
                }
            }
        }
        state.metrics.handshakes_waiting.set(waiting.len() as i64);
    }
    // From here on a new attempt goes unanswered (see `stop_answering`), and so do those still waiting and those
    // quinn queued before it stopped: their clients retransmit to the process started in this one's place (it
    // reads the Retry tokens this one issued: the token key is persisted, `app::TOKEN_KEY_FILE`).
    stop_answering(&endpoint);
    for incoming in waiting.drain() {
        incoming.ignore();
    }
    state.metrics.handshakes_waiting.set(0);
    endpoint.close(CLOSE_SHUTDOWN.into(), state.shutdown_reason());
    while let Some(incoming) = endpoint.accept().await {
        incoming.ignore();
    }
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
    // find out from their idle timeout (30 s) instead of at once. Give the driver a short moment to send them;
    // waiting out the whole draining period instead would keep the port dark while the fleet redials.
    let _ = tokio::time::timeout(CLOSE_FLUSH, endpoint.wait_idle()).await;
}

/// The first step of shutdown: this endpoint stops answering new connection attempts, while its connections are
/// closed and drained. Refused, an agent that redials during the drain would wait for its next draw of the redial
/// window, and the drain of a large fleet takes seconds (3–4 % of the agents of a 50,000 restart met it,
/// docs/benchmarks.md); unanswered, its client retransmits the `Initial` after its probe timeout (about a
/// second) — to the aggregator started in this one's place, or to this one's replica behind the same address.
/// With no server configuration quinn hands a new attempt to nobody: it only answers with a (rate-limited)
/// stateless reset, which a client still in its handshake cannot match to its connection and ignores.
pub fn stop_answering(endpoint: &quinn::Endpoint) {
    endpoint.set_server_config(None);
}

/// Sleeps until `at` (forever for `None`).
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Refuses one attempt over the handshake bound: one `CONNECTION_REFUSED` packet, counted, and logged at most
/// every [`REFUSAL_LOG_EVERY`] (a herd must not become a log flood).
fn refuse(incoming: quinn::Incoming, state: &IngestState, log: &mut RefusalLog) {
    // Counted before the packet goes out, so whoever sees the refusal finds it counted.
    metrics::inc_labelled(&state.metrics.connections_refused, "stage", "admission");
    let now = Instant::now();
    log.recent.insert(attempt_key(&incoming), now);
    incoming.refuse();
    log.refused += 1;
    if log
        .since
        .is_none_or(|at| now.duration_since(at) >= REFUSAL_LOG_EVERY)
    {
        warn!(
            refused = log.refused,
            in_flight = state.admission.in_flight(),
            limit = state.admission.limit(),
            measured_handshakes_per_second = state.admission.capacity(),
            "handshake bound reached and its queue full or waited out: refusing connection attempts so agents back off \
             (quic.max_handshakes_in_flight); counted in gait_aggregator_connections_refused_total{{stage=\"admission\"}}"
        );
        log.refused = 0;
        log.since = Some(now);
    }
}

/// How often a run of admission refusals is logged.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// What this endpoint refused: the run being logged, and the attempts remembered so copies of them are refused
/// again ([`RecentlyRefused`]).
struct RefusalLog {
    refused: u64,
    since: Option<Instant>,
    recent: RecentlyRefused<(quinn::ConnectionId, SocketAddr)>,
}

impl Default for RefusalLog {
    fn default() -> Self {
        Self {
            refused: 0,
            since: None,
            recent: RecentlyRefused::new(REFUSED_MEMORY, REFUSED_MEMORY_MAX),
        }
    }
}

/// What every copy of one connection attempt's `Initial` repeats: the client's first destination connection ID
/// (carried in the Retry token once it was retried) and its address.
fn attempt_key(incoming: &quinn::Incoming) -> (quinn::ConnectionId, SocketAddr) {
    (incoming.orig_dst_cid(), incoming.remote_address())
}

/// How long shutdown lets the endpoint send the close frames of every connection (10,000 take well under
/// this on one core; the draining period that `wait_idle` would wait out in full is longer).
const CLOSE_FLUSH: Duration = Duration::from_millis(250);

/// Open connections by id, with the certificate serial each was authenticated with.
#[derive(Default)]
pub(super) struct LiveConnections {
    next: AtomicU64,
    map: Mutex<HashMap<u64, (String, quinn::Connection)>>,
}

impl LiveConnections {
    pub(super) fn insert(&self, serial: &str, conn: quinn::Connection) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, (serial.to_owned(), conn));
        id
    }

    pub(super) fn remove(&self, id: u64) {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    pub(super) fn len(&self) -> usize {
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
    use std::net::Ipv4Addr;
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// Generous bound for one step on a loaded machine.
    const PATIENCE: Duration = Duration::from_secs(60);

    fn configs() -> (quinn::ServerConfig, quinn::ClientConfig) {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let cert = certified.cert.der().clone();
        let key = rustls::pki_types::PrivateKeyDer::try_from(certified.signing_key.serialize_der())
            .unwrap();
        let provider = crate::ingest::tls::crypto_provider();
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let server = quinn::crypto::rustls::QuicServerConfig::try_from(server).unwrap();
        let client = quinn::crypto::rustls::QuicClientConfig::try_from(client).unwrap();
        (
            quinn::ServerConfig::with_crypto(Arc::new(server)),
            quinn::ClientConfig::new(Arc::new(client)),
        )
    }

    /// Forwards one client's datagrams to `server` and back, counting what came back.
    async fn relay(server: SocketAddr) -> (SocketAddr, Arc<AtomicUsize>) {
        let socket = tokio::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let answered = Arc::new(AtomicUsize::new(0));
        let counter = answered.clone();
        tokio::spawn(async move {
            let mut client = None;
            let mut buf = vec![0u8; 65_536];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                if from == server {
                    counter.fetch_add(1, Ordering::SeqCst);
                    if let Some(client) = client {
                        let _ = socket.send_to(&buf[..n], client).await;
                    }
                } else {
                    client = Some(from);
                    let _ = socket.send_to(&buf[..n], server).await;
                }
            }
        });
        (addr, answered)
    }

    /// An agent that dials while the aggregator drains is not refused: its attempt goes unanswered, and the
    /// retransmission is answered by the aggregator started on the same address once the old one is gone. (Refused,
    /// the dial would fail and the agent wait for its next draw of the redial window.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dial_that_meets_the_drain_is_answered_by_the_successor() {
        let (server_config, client_config) = configs();
        let old = quinn::Endpoint::server(server_config.clone(), (Ipv4Addr::LOCALHOST, 0).into())
            .unwrap();
        let port = old.local_addr().unwrap();
        stop_answering(&old);
        old.close(CLOSE_SHUTDOWN.into(), b"shutting down");
        let (via, answered) = relay(port).await;

        let client = quinn::Endpoint::client((Ipv4Addr::LOCALHOST, 0).into()).unwrap();
        let dial = tokio::spawn(
            client
                .connect_with(client_config, via, "localhost")
                .unwrap(),
        );
        // The old endpoint read the attempt: it sent something back (a refusal before the fix, a stateless reset
        // the client ignores after it).
        let started = Instant::now();
        answered_at_least(
            &answered,
            1,
            started,
            "the old endpoint never read the attempt",
        )
        .await;
        drop(old);
        let successor = bind_successor(&server_config, port, started).await;
        let accepted = tokio::spawn(async move {
            let incoming = successor.accept().await.expect("successor closed");
            incoming.await.map(|conn| (conn, successor))
        });
        let conn = tokio::time::timeout(PATIENCE, dial)
            .await
            .expect("the dial never ended")
            .unwrap()
            .expect("the dial that met the drain failed instead of reaching the successor");
        let (_server_side, _successor) = accepted.await.unwrap().unwrap();
        assert_eq!(conn.remote_address(), via);
    }

    /// Waits until the relay has carried `n` datagrams back to the client; panics with `what` once `PATIENCE`
    /// has passed since `started`.
    async fn answered_at_least(answered: &AtomicUsize, n: usize, started: Instant, what: &str) {
        while answered.load(Ordering::SeqCst) < n {
            assert!(started.elapsed() < PATIENCE, "{what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Binds a successor endpoint on the stopped one's `port`, once the old socket has let it go (within
    /// `PATIENCE` of `started`).
    async fn bind_successor(
        server_config: &quinn::ServerConfig,
        port: SocketAddr,
        started: Instant,
    ) -> quinn::Endpoint {
        loop {
            match quinn::Endpoint::server(server_config.clone(), port) {
                Ok(endpoint) => return endpoint,
                Err(e) => {
                    assert!(
                        started.elapsed() < PATIENCE,
                        "the old endpoint's port stayed bound: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }

    /// An attempt the old process asked to validate its address (a Retry) just before it stopped answering carries
    /// that process's token to the successor, which reads it because both seal tokens with the same persisted key
    /// (`app::TOKEN_KEY_FILE`): the handshake completes, validated. (With a key of its own, the successor would take
    /// the token for none, and the client would fail the handshake on the mismatched connection IDs.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_retried_dial_that_meets_the_drain_is_completed_by_the_successor() {
        let (mut server_config, client_config) = configs();
        let secret = [7u8; 32];
        server_config.token_key(Arc::new(
            ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"test").extract(&secret),
        ));
        let old = quinn::Endpoint::server(server_config.clone(), (Ipv4Addr::LOCALHOST, 0).into())
            .unwrap();
        let port = old.local_addr().unwrap();
        let (via, answered) = relay(port).await;
        let client = quinn::Endpoint::client((Ipv4Addr::LOCALHOST, 0).into()).unwrap();
        let dial = tokio::spawn(
            client
                .connect_with(client_config, via, "localhost")
                .unwrap(),
        );

        let incoming = tokio::time::timeout(PATIENCE, old.accept())
            .await
            .unwrap()
            .unwrap();
        // The drain begins between the Retry and the client's answer to it.
        stop_answering(&old);
        incoming.retry().unwrap();
        old.close(CLOSE_SHUTDOWN.into(), b"shutting down");
        // The Retry, then the old endpoint's answer to the client's token-bearing Initial (a stateless reset).
        let started = Instant::now();
        answered_at_least(
            &answered,
            2,
            started,
            "the old endpoint never read the retried attempt",
        )
        .await;
        drop(old);
        let successor = bind_successor(&server_config, port, started).await;
        let accepted = tokio::spawn(async move {
            let incoming = successor.accept().await.expect("successor closed");
            let validated = incoming.remote_address_validated();
            incoming.await.map(|conn| (validated, conn, successor))
        });
        tokio::time::timeout(PATIENCE, dial)
            .await
            .expect("the dial never ended")
            .unwrap()
            .expect("the retried dial that met the drain failed instead of reaching the successor");
        let (validated, _conn, _successor) = accepted.await.unwrap().unwrap();
        assert!(
            validated,
            "the successor did not read the predecessor's Retry token"
        );
    }
}
