//! The connection loop: dial the aggregator, say hello, then run the bundle long-poll and the outbox shipper
//! side by side until the connection fails or shutdown is requested; redial with jittered backoff.
//!
//! The exchange itself (messages, limits, refusal and close codes) is described once, in the `gait-wire`
//! crate docs, rendered as `docs/protocol.md`. A record the aggregator refuses for good (`RecordRefused` with
//! a permanent code) or that breaks `gait_wire::Record::validate` is moved into the outbox quarantine once
//! every record before it is acknowledged ([`crate::outbox::quarantine`]), and shipping goes on after it.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gait_runtime::Tasks;
use gait_wire::{
    AgentMsg, AgentMsgV2, BatchAck, Hello, InstanceId, PROTOCOL_VERSION, PollBundle, RecordBatch,
    RecordRefusal, ServerMsg, ServerMsgV2, Welcome, WireError,
};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::exchange::{self, ExchangeError};
use super::{AgentState, CONNECT_TIMEOUT, STABLE_CONNECTION, activation};
use crate::backoff::{Backoff, RedialPlan};
use crate::outbox::OutboxError;

/// Deadline for resolving the aggregator's name.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline for any reply other than a long-poll.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// Extra time allowed for a long-poll reply beyond its `wait_ms`.
const POLL_GRACE: Duration = Duration::from_secs(10);
/// Most records in one batch.
pub const BATCH_MAX_RECORDS: usize = 500;
/// Most encoded record bytes in one batch.
pub const BATCH_MAX_BYTES: usize = 4 * 1024 * 1024;
/// Batches awaiting their ack at once.
pub const PIPELINE_DEPTH: usize = 4;
/// While a batch awaits its ack, another is sent only once this many records wait, or once they have waited
/// [`COALESCE_LINGER`]; until then they wait for the ack and go in the next batch. A quiet agent so ships each
/// record at once, and a busy one ships fewer, fuller batches instead of one per group commit: every batch
/// costs the aggregator a transaction and this agent an acknowledgement commit, which at thousands of
/// decisions per second took more CPU than the records.
pub const COALESCE_RECORDS: u64 = 64;
/// Longest a few records are held back for an ack that does not come (a slow aggregator): then they are sent
/// in a batch of their own, pipelined as before.
pub const COALESCE_LINGER: Duration = Duration::from_millis(10);
/// Idle shipper re-checks the outbox at least this often.
const SHIP_IDLE_TICK: Duration = Duration::from_secs(1);
/// Pause after a retryable error reply before asking again.
const RETRY_PAUSE: Duration = Duration::from_secs(1);
/// How often a certificate refusal that goes on is repeated at ERROR (in between: DEBUG, with a count).
const REPEAT_ERROR_EVERY: Duration = Duration::from_secs(600);
/// QUIC application close code for a normal close.
const CLOSE_NORMAL: u32 = 0;

/// Why a connection ended (other than shutdown).
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    #[error("cannot resolve {address}: {detail}")]
    Resolve { address: String, detail: String },
    #[error("cannot open a quic endpoint: {0}")]
    Endpoint(std::io::Error),
    #[error("cannot start a connection to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: quinn::ConnectError,
    },
    #[error("handshake with {addr} failed: {source}")]
    Handshake {
        addr: SocketAddr,
        source: quinn::ConnectionError,
    },
    #[error("handshake with {0} timed out")]
    HandshakeTimeout(SocketAddr),
    /// The aggregator refused the attempt at once (`CONNECTION_REFUSED`): it is working on as many handshakes
    /// as it takes at a time (`quic.max_handshakes_in_flight`). Not a fault: back off and come back.
    #[error(
        "the aggregator at {addr} is busy (it refused the connection: as many handshakes in flight as it takes); \
         backing off"
    )]
    Busy { addr: SocketAddr },
    /// The aggregator accepted none of this agent's ALPN: it speaks another protocol version.
    #[error(
        "the aggregator at {addr} speaks another protocol version: this agent speaks {} (protocol {}), \
         the aggregator refused it (an aggregator of protocol {} speaks gait-fleet/{}); run agent and \
         aggregator builds of the same protocol version",
        String::from_utf8_lossy(gait_wire::ALPN),
        gait_wire::PROTOCOL_VERSION,
        gait_wire::PROTOCOL_VERSION - 1,
        gait_wire::PROTOCOL_VERSION - 1
    )]
    VersionSkew { addr: SocketAddr },
    #[error(transparent)]
    Exchange(#[from] ExchangeError),
    #[error("the aggregator answered {request} with error {}: {}", .error.code, .error.message)]
    Server {
        request: &'static str,
        error: WireError,
    },
    #[error("the aggregator answered {request} with an unexpected {got}")]
    Unexpected {
        request: &'static str,
        got: &'static str,
    },
    #[error("batch ack out of order: expected batch {expected}, got {got}")]
    AckOrder { expected: u64, got: u64 },
    #[error(
        "the aggregator refused seq {seq} as part of batch {batch_id}, which holds seqs {first}..={last}"
    )]
    RefusedOutsideBatch {
        batch_id: u64,
        seq: u64,
        first: u64,
        last: u64,
    },
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error("internal task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    /// The aggregator's committed head is past this outbox, which is empty now that its conflicting records
    /// were quarantined: redial, so the `Welcome` continues the sequence after the head.
    #[error(
        "the aggregator holds this identity's records up to seq {committed} and this outbox ends at seq \
         {last_seq}; reconnecting to continue after the aggregator's head"
    )]
    BehindAggregator { committed: u64, last_seq: u64 },
}

impl SessionError {
    /// The aggregator refused this agent's certificate (revoked, expired, unknown): the agent cannot get in
    /// until an operator acts, so it is logged at ERROR with what to do.
    fn certificate_refusal(&self) -> Option<crate::tls::CertificateRefusal> {
        match self {
            SessionError::Handshake { source, .. } => crate::tls::certificate_refusal(source),
            SessionError::Exchange(ExchangeError::Connection(source)) => {
                crate::tls::certificate_refusal(source)
            }
            SessionError::Exchange(ExchangeError::Write(quinn::WriteError::ConnectionLost(
                source,
            )))
            | SessionError::Exchange(ExchangeError::Read(quinn::ReadError::ConnectionLost(
                source,
            ))) => crate::tls::certificate_refusal(source),
            _ => None,
        }
    }

    /// The aggregator refused this agent because another instance of its identity is connected
    /// ([`gait_wire::close::CLOSE_IDENTITY_IN_USE`]).
    fn identity_in_use(&self) -> bool {
        match self {
            SessionError::Handshake { source, .. }
            | SessionError::Exchange(ExchangeError::Connection(source))
            | SessionError::Exchange(ExchangeError::Write(quinn::WriteError::ConnectionLost(
                source,
            )))
            | SessionError::Exchange(ExchangeError::Read(quinn::ReadError::ConnectionLost(
                source,
            ))) => is_identity_in_use(source),
            SessionError::Server { error, .. } => {
                error.code == gait_wire::ErrorCode::Forbidden
                    && error.message == gait_wire::close::IDENTITY_IN_USE_REASON
            }
            _ => false,
        }
    }

    /// Errors an operator must look at (data could be lost or never delivered) are logged at ERROR.
    fn needs_operator(&self) -> bool {
        matches!(
            self,
            SessionError::Outbox(
                OutboxError::AckBeyondLastSeq { .. }
                    | OutboxError::Diverged { .. }
                    | OutboxError::Corrupt { .. }
            ) | SessionError::VersionSkew { .. }
        )
    }
}

fn msg_name(msg: &ServerMsg) -> &'static str {
    match msg {
        ServerMsg::V2(ServerMsgV2::Welcome(_)) => "Welcome",
        ServerMsg::V2(ServerMsgV2::Bundle(_)) => "Bundle",
        ServerMsg::V2(ServerMsgV2::NoNewBundle { .. }) => "NoNewBundle",
        ServerMsg::V2(ServerMsgV2::BatchAck(_)) => "BatchAck",
        ServerMsg::V2(ServerMsgV2::Error(_)) => "Error",
        ServerMsg::V2(ServerMsgV2::RecordRefused(_)) => "RecordRefused",
        ServerMsg::V2(ServerMsgV2::Certificate(_)) => "Certificate",
        ServerMsg::V2(ServerMsgV2::Approvals(_)) => "Approvals",
        ServerMsg::V2(ServerMsgV2::BlobStatus(_)) => "BlobStatus",
        ServerMsg::V2(ServerMsgV2::BlobStored(_)) => "BlobStored",
        ServerMsg::V1(_) => "envelope V1 message (protocol version 2 or older)",
    }
}

/// Whether a connection error is the aggregator's [`gait_wire::close::CLOSE_IDENTITY_IN_USE`].
fn is_identity_in_use(error: &quinn::ConnectionError) -> bool {
    matches!(error, quinn::ConnectionError::ApplicationClosed(close)
        if close.error_code == quinn::VarInt::from_u32(gait_wire::close::CLOSE_IDENTITY_IN_USE))
}

/// Everything the connection loop needs.
pub(crate) struct Session {
    /// Owner of the tasks each connection spawns (poll loop, ship loop, batches in flight).
    pub tasks: Tasks,
    pub state: Arc<AgentState>,
    /// The configuration each dial uses; certificate renewal replaces it.
    pub client_config: Arc<std::sync::RwLock<quinn::ClientConfig>>,
    /// Certificate renewal; `None` never renews.
    pub renewal: Option<super::renew::Renewal>,
    /// `aggregator.address` then `aggregator.replicas`: dialled from a start chosen by identity, moving to the
    /// next after a failed dial ([`Session::next_address`]).
    pub addresses: Vec<String>,
    /// Index into `addresses` of the next dial.
    pub current: std::sync::atomic::AtomicUsize,
    pub server_name: String,
    pub poll_wait_ms: u32,
    /// This data directory's instance id, sent in every `Hello`.
    pub instance_id: InstanceId,
}

/// Spawns the connection loop as an essential task of `tasks`; it ends when `shutdown` is cancelled, and a loop
/// that panics or ends before stops the agent (it would otherwise keep deciding without ever syncing).
pub(crate) fn spawn_connection_loop(tasks: &Tasks, session: Session, shutdown: CancellationToken) {
    tasks.spawn_essential("connection-loop", async move {
        session.run(shutdown).await;
        Ok::<(), std::convert::Infallible>(())
    });
}

/// Where an agent with this identity starts among `n` aggregator addresses: spread by a hash of its identity
/// (FNV-1a of its URI), stable across restarts.
pub(crate) fn start_index(identity_uri: &str, n: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in identity_uri.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % n.max(1) as u64) as usize
}

/// Client endpoints, one per address family, created on first use.
#[derive(Default)]
struct Endpoints {
    v4: Option<quinn::Endpoint>,
    v6: Option<quinn::Endpoint>,
}

impl Endpoints {
    fn for_addr(&mut self, addr: SocketAddr) -> Result<quinn::Endpoint, SessionError> {
        let slot = if addr.is_ipv4() {
            &mut self.v4
        } else {
            &mut self.v6
        };
        if let Some(ep) = slot {
            return Ok(ep.clone());
        }
        let bind: SocketAddr = if addr.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            ([0u16; 8], 0).into()
        };
        let ep = quinn::Endpoint::client(bind).map_err(SessionError::Endpoint)?;
        *slot = Some(ep.clone());
        Ok(ep)
    }

    async fn close(self) {
        for ep in [self.v4, self.v6].into_iter().flatten() {
            ep.close(CLOSE_NORMAL.into(), b"agent shutting down");
            if tokio::time::timeout(Duration::from_secs(2), ep.wait_idle())
                .await
                .is_err()
            {
                tracing::debug!("quic endpoint did not go idle within 2 s");
            }
        }
    }
}

/// Whether a failed handshake was the aggregator's admission refusal (`CONNECTION_REFUSED`, sent at once and
/// without a handshake when it is working on as many as it takes; see the aggregator's `ingest::admission`).
pub fn is_refused(error: &quinn::ConnectionError) -> bool {
    matches!(error, quinn::ConnectionError::ConnectionClosed(close)
        if close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED)
}

/// The redial window an aggregator announced when it closed `conn` because it was shutting down
/// ([`gait_wire::shutdown`]); `None` for every other ending.
pub fn announced_redial_window(conn: &quinn::Connection) -> Option<Duration> {
    match conn.close_reason()? {
        quinn::ConnectionError::ApplicationClosed(close)
            if close.error_code == quinn::VarInt::from_u32(gait_wire::CLOSE_SHUTDOWN) =>
        {
            gait_wire::shutdown::announced_spread(&close.reason)
        }
        _ => None,
    }
}

impl Session {
    async fn run(self, shutdown: CancellationToken) {
        let mut endpoints = Endpoints::default();
        let mut backoff = Backoff::default();
        // The redial window announced by the last aggregator that shut down, while this agent is not back.
        let mut plan: Option<RedialPlan> = None;
        // The last certificate refusal logged at ERROR, and attempts refused since the last connection.
        let mut refused_logged: Option<(crate::tls::CertificateRefusal, Instant)> = None;
        let mut refused_attempts: u64 = 0;
        // The last "identity in use" refusal logged at ERROR, and such refusals since the last connection.
        let mut in_use_logged: Option<Instant> = None;
        let mut in_use_attempts: u64 = 0;
        loop {
            let mut up_since = None;
            let mut announced = None;
            let result = self
                .connect_and_serve(&mut endpoints, &shutdown, &mut up_since, &mut announced)
                .await;
            self.state.set_connected(false);
            if shutdown.is_cancelled() {
                break;
            }
            if up_since.is_some_and(|t: Instant| t.elapsed() >= STABLE_CONNECTION) {
                backoff.reset();
            }
            let in_use = result
                .as_ref()
                .err()
                .is_some_and(SessionError::identity_in_use);
            self.state.set_identity_in_use(in_use);
            match &result {
                Ok(()) => tracing::info!("aggregator closed the connection"),
                Err(e) if in_use => {
                    // Said once at ERROR, then again only every REPEAT_ERROR_EVERY while it goes on.
                    in_use_attempts += 1;
                    let now = Instant::now();
                    if in_use_logged.is_some_and(|at| now.duration_since(at) < REPEAT_ERROR_EVERY) {
                        tracing::debug!(error = %e, attempts = in_use_attempts, "identity still in use");
                    } else {
                        tracing::error!(
                            error = %e,
                            attempts = in_use_attempts,
                            instance_id = %self.instance_id,
                            certificate = %self.state.identity().uri,
                            "the aggregator refused this agent: another instance of this agent identity is \
                             connected (another process uses this certificate with another data directory). \
                             Stop the other instance, or issue this host its own certificate \
                             (`gait-aggregator pki issue-agent`). This agent keeps deciding locally and keeps \
                             its records until it is let in"
                        );
                        in_use_logged = Some(now);
                    }
                }
                Err(e @ SessionError::Busy { .. }) => {
                    tracing::info!(error = %e, "connection refused")
                }
                Err(e) => match e.certificate_refusal() {
                    // Said once at ERROR, then again only every REPEAT_ERROR_EVERY while it goes on: a refused
                    // agent redials for ever, and each attempt ends the same way.
                    Some(why) => {
                        let now = Instant::now();
                        let repeat = refused_logged.is_some_and(|(was, at)| {
                            was == why && now.duration_since(at) < REPEAT_ERROR_EVERY
                        });
                        refused_attempts += 1;
                        if repeat {
                            tracing::debug!(error = %e, attempts = refused_attempts, "certificate still refused");
                        } else {
                            tracing::error!(error = %e, attempts = refused_attempts, "{}", why.advice());
                            refused_logged = Some((why, now));
                        }
                    }
                    None if e.needs_operator() => {
                        tracing::error!(error = %e, "connection to the aggregator ended; operator action needed")
                    }
                    None => tracing::warn!(error = %e, "connection to the aggregator ended"),
                },
            }
            if result.is_ok() {
                refused_logged = None;
                refused_attempts = 0;
            }
            if !in_use && up_since.is_some() {
                in_use_logged = None;
                in_use_attempts = 0;
            }
            // An aggregator that shut down announced a window to spread the fleet's redials over; without one,
            // the jittered exponential backoff decides.
            if let Some(window) = announced {
                tracing::info!(
                    window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
                    "aggregator shut down and announced a redial window"
                );
            }
            // A connection that came up (or ended with an announcement) starts a new plan or ends the old one;
            // a dial that failed keeps the plan in force ([`RedialPlan`]).
            if up_since.is_some() || announced.is_some() {
                plan = announced.map(RedialPlan::new);
            }
            let delay = backoff.after(plan.as_mut());
            self.state.count_reconnect();
            tracing::info!(
                delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                attempt = backoff.attempt(),
                "reconnecting to the aggregator"
            );
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        endpoints.close().await;
    }

    /// The address the next dial goes to.
    fn address(&self) -> &str {
        let i =
            self.current.load(std::sync::atomic::Ordering::Relaxed) % self.addresses.len().max(1);
        self.addresses.get(i).map_or("", String::as_str)
    }

    /// After a failed dial: the next replica (a no-op with one address).
    fn next_address(&self) {
        if self.addresses.len() > 1 {
            let i = self
                .current
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                + 1;
            tracing::info!(
                next = %self.addresses[i % self.addresses.len()],
                "dial failed; trying the next aggregator replica"
            );
        }
    }

    async fn resolve(&self) -> Result<SocketAddr, SessionError> {
        let address = self.address().to_owned();
        self.state.set_aggregator(&address);
        let err = |detail: String| SessionError::Resolve {
            address: address.clone(),
            detail,
        };
        let mut addrs =
            tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(address.as_str()))
                .await
                .map_err(|_| err("timed out".to_owned()))?
                .map_err(|e| err(e.to_string()))?;
        addrs.next().ok_or_else(|| err("no addresses".to_owned()))
    }

    /// One connection's life. `Ok(())` when it ended because of shutdown or a clean close.
    async fn connect_and_serve(
        &self,
        endpoints: &mut Endpoints,
        shutdown: &CancellationToken,
        up_since: &mut Option<Instant>,
        announced: &mut Option<Duration>,
    ) -> Result<(), SessionError> {
        let conn = tokio::select! {
            r = self.connect(endpoints) => match r {
                Ok(conn) => conn,
                Err(e) => {
                    self.next_address();
                    return Err(e);
                }
            },
            _ = shutdown.cancelled() => return Ok(()),
        };
        let result = self.serve(&conn, shutdown, up_since).await;
        *announced = announced_redial_window(&conn);
        let reason: &[u8] = if shutdown.is_cancelled() {
            b"agent shutting down"
        } else {
            b"agent closing"
        };
        conn.close(CLOSE_NORMAL.into(), reason);
        result
    }

    async fn connect(&self, endpoints: &mut Endpoints) -> Result<quinn::Connection, SessionError> {
        let addr = self.resolve().await?;
        let endpoint = endpoints.for_addr(addr)?;
        let client_config = self
            .client_config
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let connecting = endpoint
            .connect_with(client_config, addr, &self.server_name)
            .map_err(|source| SessionError::Connect { addr, source })?;
        tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| SessionError::HandshakeTimeout(addr))?
            .map_err(|source| {
                if crate::tls::is_version_skew(&source) {
                    SessionError::VersionSkew { addr }
                } else if is_refused(&source) {
                    SessionError::Busy { addr }
                } else {
                    SessionError::Handshake { addr, source }
                }
            })
    }

    async fn serve(
        &self,
        conn: &quinn::Connection,
        shutdown: &CancellationToken,
        up_since: &mut Option<Instant>,
    ) -> Result<(), SessionError> {
        let welcome = tokio::select! {
            r = hello(&self.state, conn, self.instance_id) => r?,
            _ = shutdown.cancelled() => return Ok(()),
        };
        self.state.touch_contact().await;
        self.state.set_connected(true);
        *up_since = Some(Instant::now());
        tracing::info!(
            remote = %conn.remote_address(),
            server_version = %welcome.server_version,
            committed_seq = welcome.committed_seq,
            "connected to the aggregator"
        );

        let conn_token = shutdown.child_token();
        let mut poll = spawn_poll_loop(
            &self.tasks,
            self.state.clone(),
            conn.clone(),
            self.poll_wait_ms,
            conn_token.clone(),
        );
        let mut ship = spawn_ship_loop(
            &self.tasks,
            self.state.clone(),
            conn.clone(),
            conn_token.clone(),
        );
        // Renewal runs beside the exchange and ends with the connection; it never ends the connection itself.
        let _renew = self.renewal.clone().map(|renewal| {
            self.tasks.spawn_owned(super::renew::renew_loop(
                self.state.clone(),
                conn.clone(),
                renewal,
                conn_token.clone(),
            ))
        });
        // Ends with the connection (its token) or when this function returns (the handle is dropped).
        let _approvals = super::approvals::spawn_fetch_loop(
            &self.tasks,
            self.state.clone(),
            conn.clone(),
            conn_token.clone(),
        );
        // Spooled artifact bytes go up beside the exchange; ends with the connection like the fetch loop.
        let _uploads = super::upload::spawn_upload_loop(
            &self.tasks,
            self.state.clone(),
            conn.clone(),
            conn_token.clone(),
        );
        let ended = tokio::select! {
            r = &mut poll => Ended::Poll(joined(r)),
            r = &mut ship => Ended::Ship(joined(r)),
            reason = conn.closed() => Ended::Other(Err(SessionError::Exchange(ExchangeError::Connection(reason)))),
            _ = shutdown.cancelled() => Ended::Other(Ok(())),
        };
        let (first, rest) = match ended {
            Ended::Poll(r) => (r, vec![ship]),
            Ended::Ship(r) => (r, vec![poll]),
            Ended::Other(r) => (r, vec![poll, ship]),
        };
        conn_token.cancel();
        for task in rest {
            if let Err(e) = joined(task.await) {
                tracing::debug!(error = %e, "connection task ended");
            }
        }
        first
    }
}

/// A connection task's handle.
type ConnectionTask = AbortOnDropHandle<Result<(), SessionError>>;

/// Which connection task ended first.
enum Ended {
    Poll(Result<(), SessionError>),
    Ship(Result<(), SessionError>),
    Other(Result<(), SessionError>),
}

/// A connection task's outcome, a panic included.
fn joined(r: Result<Result<(), SessionError>, tokio::task::JoinError>) -> Result<(), SessionError> {
    r.map_err(SessionError::from).and_then(|r| r)
}

/// `Hello` -> `Welcome`, then settle the outbox against the aggregator's committed head.
async fn hello(
    state: &Arc<AgentState>,
    conn: &quinn::Connection,
    instance_id: InstanceId,
) -> Result<Welcome, SessionError> {
    let stats = state.outbox().stats();
    let msg = AgentMsg::V2(AgentMsgV2::Hello(Hello {
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        protocol_version: PROTOCOL_VERSION,
        active: state.active_bundle().map(|a| a.bundle_ref()),
        received: state.received(),
        outbox_depth: stats.depth,
        shed_total: stats.shed_total,
        last_seq: stats.last_seq,
        instance_id,
    }));
    let welcome = match exchange::request(conn, &msg, REPLY_TIMEOUT).await? {
        ServerMsg::V2(ServerMsgV2::Welcome(w)) => w,
        ServerMsg::V2(ServerMsgV2::Error(error)) => {
            return Err(SessionError::Server {
                request: "Hello",
                error,
            });
        }
        other => {
            return Err(SessionError::Unexpected {
                request: "Hello",
                got: msg_name(&other),
            });
        }
    };
    let me = state.identity();
    if (
        &*welcome.org,
        &*welcome.project,
        &*welcome.env,
        &*welcome.agent_id,
    ) != (&*me.org, &*me.project, &*me.env, &*me.agent_id)
    {
        tracing::warn!(
            org = %welcome.org,
            project = %welcome.project,
            env = %welcome.env,
            agent_id = %welcome.agent_id,
            certificate = %me.uri,
            "the aggregator names this agent differently from its certificate; bundles are still checked \
             against the certificate's scope"
        );
    }
    let outbox = state.outbox().clone();
    let (committed, hash) = (welcome.committed_seq, welcome.committed_hash);
    let settled =
        tokio::task::spawn_blocking(move || settle_welcome(&outbox, committed, hash)).await??;
    if let WelcomeSettlement::Diverged { waiting_from } = settled {
        tracing::error!(
            committed_seq = committed,
            waiting_from,
            last_seq = state.outbox().stats().last_seq,
            "the aggregator holds other records than this outbox at the same seqs: another instance of this \
             agent identity wrote them (a second process with this certificate, or this data directory was \
             wiped or copied). Nothing is deleted: records the aggregator does not commit are quarantined \
             (`gait-agent quarantine list`). Check which host runs this identity"
        );
    }
    Ok(welcome)
}

/// What [`settle_welcome`] did with a `Welcome`'s committed head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WelcomeSettlement {
    /// Records up to the head were deleted (or none were waiting there), or the empty outbox continued
    /// after it.
    Settled,
    /// The outbox's records at or below the head are not the aggregator's: nothing was deleted; they are
    /// shipped, and the ones the aggregator does not commit come back as conflicts and are quarantined.
    Diverged { waiting_from: u64 },
}

/// Applies a `Welcome`'s committed head to the outbox without ever deleting a record the aggregator did not
/// commit: records up to `committed` are deleted only when this outbox's record at `committed` has the
/// aggregator's `hash` (the chain then proves every earlier record is the aggregator's too). An empty outbox
/// behind the head continues after it.
fn settle_welcome(
    outbox: &crate::outbox::Outbox,
    committed: u64,
    hash: gait_wire::Digest,
) -> Result<WelcomeSettlement, OutboxError> {
    let stats = outbox.stats();
    if committed <= stats.acked_through {
        return Ok(WelcomeSettlement::Settled);
    }
    if committed > stats.last_seq {
        if stats.depth == 0 {
            outbox.adopt_committed_head(committed, hash)?;
            return Ok(WelcomeSettlement::Settled);
        }
        return Ok(WelcomeSettlement::Diverged {
            waiting_from: stats.acked_through + 1,
        });
    }
    if outbox.hash_at(committed)? == Some(hash) {
        outbox.ack_through(committed)?;
        Ok(WelcomeSettlement::Settled)
    } else {
        Ok(WelcomeSettlement::Diverged {
            waiting_from: stats.acked_through + 1,
        })
    }
}

fn spawn_poll_loop(
    tasks: &Tasks,
    state: Arc<AgentState>,
    conn: quinn::Connection,
    wait_ms: u32,
    token: CancellationToken,
) -> ConnectionTask {
    tasks.spawn_owned(async move { poll_loop(state, conn, wait_ms, token).await })
}

/// Long-polls for newer bundles and hands each offer to activation.
async fn poll_loop(
    state: Arc<AgentState>,
    conn: quinn::Connection,
    wait_ms: u32,
    token: CancellationToken,
) -> Result<(), SessionError> {
    let poll_wait = Duration::from_millis(u64::from(wait_ms));
    let deadline = poll_wait + POLL_GRACE;
    let mut refusals_in_a_row = 0u32;
    // Epoch of the newest bundle refused on this connection: asking for "newer than" it means the aggregator
    // answers only when something newer than the refused bundle is published, instead of offering the refused
    // one again at once.
    let mut refused_through = 0u64;
    loop {
        let have_epoch = state.active_epoch().unwrap_or(0).max(refused_through);
        let msg = AgentMsg::V2(AgentMsgV2::PollBundle(PollBundle {
            have_epoch,
            wait_ms,
        }));
        let reply = tokio::select! {
            r = exchange::request(&conn, &msg, deadline) => r?,
            _ = token.cancelled() => return Ok(()),
        };
        state.touch_contact().await;
        let pause = match reply {
            ServerMsg::V2(ServerMsgV2::Bundle(offer)) => {
                let offered_epoch = offer.epoch;
                match activation::handle_offer(&state, offer).await {
                    activation::Outcome::Applied(report) => {
                        refusals_in_a_row = 0;
                        send_report(&conn, report).await;
                        None
                    }
                    activation::Outcome::Refused(Some(report)) => {
                        refused_through = refused_through.max(offered_epoch);
                        refusals_in_a_row = refusals_in_a_row.saturating_add(1);
                        send_report(&conn, report).await;
                        refusal_pause(refusals_in_a_row, poll_wait)
                    }
                    activation::Outcome::Refused(None) => {
                        // The same refused bundle again (first poll of a new connection): skip past it.
                        refused_through = refused_through.max(offered_epoch);
                        None
                    }
                    activation::Outcome::Unchanged => None,
                }
            }
            ServerMsg::V2(ServerMsgV2::NoNewBundle { .. }) => None,
            ServerMsg::V2(ServerMsgV2::Error(error)) => {
                tracing::warn!(code = %error.code, message = %error.message, "bundle poll refused by the aggregator");
                if !error.code.is_retryable() {
                    return Err(SessionError::Server {
                        request: "PollBundle",
                        error,
                    });
                }
                Some(RETRY_PAUSE)
            }
            other => {
                return Err(SessionError::Unexpected {
                    request: "PollBundle",
                    got: msg_name(&other),
                });
            }
        };
        if let Some(pause) = pause {
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = token.cancelled() => return Ok(()),
            }
        }
    }
}

/// Pause after the `n`-th refusal in a row of distinct bundles: none for the first few (an operator fixing a
/// bad publish should see the fix at once), then doubling from 1 s up to one poll interval, so an aggregator
/// that keeps offering new bad bundles cannot make the agent verify and record refusals in a tight loop.
fn refusal_pause(n: u32, poll_wait: Duration) -> Option<Duration> {
    const FREE_REFUSALS: u32 = 3;
    let excess = n.checked_sub(FREE_REFUSALS).filter(|e| *e > 0)?;
    Some(Duration::from_secs(1u64 << (excess - 1).min(10)).min(poll_wait))
}

/// Fire-and-forget `BundleReport` on a uni stream; the durable status record is the reliable copy.
async fn send_report(conn: &quinn::Connection, report: gait_wire::BundleReport) {
    let msg = AgentMsg::V2(AgentMsgV2::BundleReport(report));
    if let Err(e) = exchange::send_one_way(conn, &msg, Duration::from_secs(5)).await {
        tracing::debug!(error = %e, "bundle report not sent; the outbox record will carry it");
    }
}

fn spawn_ship_loop(
    tasks: &Tasks,
    state: Arc<AgentState>,
    conn: quinn::Connection,
    token: CancellationToken,
) -> ConnectionTask {
    let owner = tasks.clone();
    tasks.spawn_owned(async move {
        let mut shipper = Shipper {
            tasks: owner,
            state,
            conn,
            in_flight: VecDeque::new(),
            next_batch_id: 1,
            shipped_through: 0,
            held_since: None,
            pending_quarantine: None,
        };
        let result = shipper.run(&token).await;
        shipper.abort_in_flight();
        result
    })
}

/// One batch on the wire.
struct InFlight {
    batch_id: u64,
    first_seq: u64,
    last_seq: u64,
    reply: AbortOnDropHandle<Result<ServerMsg, ExchangeError>>,
}

struct Shipper {
    /// Owner of the batch requests in flight.
    tasks: Tasks,
    state: Arc<AgentState>,
    conn: quinn::Connection,
    in_flight: VecDeque<InFlight>,
    next_batch_id: u64,
    /// Highest seq sent in a batch on this connection (acknowledged or not).
    shipped_through: u64,
    /// Since when records have been held back for coalescing ([`COALESCE_RECORDS`]), if they are.
    held_since: Option<tokio::time::Instant>,
    /// A record refused for good (by the aggregator, or by [`gait_wire::Record::validate`] before sending).
    /// Only records before it are shipped until everything before it is acknowledged; then it moves into
    /// the outbox quarantine and shipping goes on after it.
    pending_quarantine: Option<PendingQuarantine>,
}

/// A record waiting to be quarantined, with the refusal that sends it there.
struct PendingQuarantine {
    seq: u64,
    code: String,
    message: String,
}

impl Shipper {
    async fn run(&mut self, token: &CancellationToken) -> Result<(), SessionError> {
        self.shipped_through = self.state.outbox().stats().acked_through;
        loop {
            self.fill_pipeline().await?;
            let can_send_more = self.in_flight.len() < PIPELINE_DEPTH;
            let Some(oldest) = self.in_flight.front_mut() else {
                tokio::select! {
                    _ = self.state.records_appended() => {}
                    _ = tokio::time::sleep(SHIP_IDLE_TICK) => {}
                    _ = token.cancelled() => return Ok(()),
                }
                continue;
            };
            // Wait for the oldest ack, but keep filling the pipeline as producers append, and send records
            // held back for coalescing once they have lingered.
            let linger_until = self.held_since.map(|since| since + COALESCE_LINGER);
            let reply = tokio::select! {
                r = &mut oldest.reply => r,
                _ = self.state.records_appended(), if can_send_more => continue,
                _ = sleep_until_some(linger_until), if can_send_more && linger_until.is_some() => continue,
                _ = token.cancelled() => return Ok(()),
            };
            let Some(oldest) = self.in_flight.pop_front() else {
                continue;
            };
            let reply = reply??;
            match reply {
                ServerMsg::V2(ServerMsgV2::BatchAck(ack)) => {
                    self.on_ack(oldest.batch_id, oldest.last_seq, ack).await?
                }
                ServerMsg::V2(ServerMsgV2::RecordRefused(refusal)) => {
                    if !self.on_refused(&oldest, refusal)? {
                        tokio::select! {
                            _ = tokio::time::sleep(RETRY_PAUSE) => {}
                            _ = token.cancelled() => return Ok(()),
                        }
                    }
                }
                ServerMsg::V2(ServerMsgV2::Error(error)) => {
                    tracing::warn!(
                        code = %error.code,
                        message = %error.message,
                        batch_id = oldest.batch_id,
                        "record batch refused by the aggregator"
                    );
                    if !error.code.is_retryable() {
                        return Err(SessionError::Server {
                            request: "RecordBatch",
                            error,
                        });
                    }
                    self.rewind();
                    tokio::select! {
                        _ = tokio::time::sleep(RETRY_PAUSE) => {}
                        _ = token.cancelled() => return Ok(()),
                    }
                }
                other => {
                    return Err(SessionError::Unexpected {
                        request: "RecordBatch",
                        got: msg_name(&other),
                    });
                }
            }
        }
    }

    /// A `RecordRefused` reply to `batch`. A permanent refusal marks the record for the quarantine and
    /// rewinds, so the records before it are shipped alone; returns `false` when the refusal is retryable
    /// (the caller pauses before the batch is sent again).
    fn on_refused(
        &mut self,
        batch: &InFlight,
        refusal: RecordRefusal,
    ) -> Result<bool, SessionError> {
        if refusal.batch_id != batch.batch_id {
            return Err(SessionError::AckOrder {
                expected: batch.batch_id,
                got: refusal.batch_id,
            });
        }
        if !(batch.first_seq..=batch.last_seq).contains(&refusal.seq) {
            return Err(SessionError::RefusedOutsideBatch {
                batch_id: batch.batch_id,
                seq: refusal.seq,
                first: batch.first_seq,
                last: batch.last_seq,
            });
        }
        let permanent = refusal.is_permanent();
        tracing::warn!(
            batch_id = batch.batch_id,
            seq = refusal.seq,
            code = %refusal.code,
            message = %refusal.message,
            permanent,
            "the aggregator refused a record"
        );
        self.rewind();
        if !permanent {
            return Ok(false);
        }
        if self
            .pending_quarantine
            .as_ref()
            .is_none_or(|p| refusal.seq < p.seq)
        {
            self.pending_quarantine = Some(PendingQuarantine {
                seq: refusal.seq,
                code: refusal.code,
                message: refusal.message,
            });
        }
        Ok(true)
    }

    /// Moves the pending record into the quarantine once it is the oldest one waiting. Returns the seq
    /// below which records may be shipped now (`None` = no bound).
    async fn settle_quarantine(&mut self) -> Result<Option<u64>, SessionError> {
        let Some(pending) = self.pending_quarantine.as_ref() else {
            return Ok(None);
        };
        let acked = self.state.outbox().stats().acked_through;
        if pending.seq > acked + 1 {
            return Ok(Some(pending.seq));
        }
        let Some(pending) = self.pending_quarantine.take() else {
            return Ok(None);
        };
        let outbox = self.state.outbox().clone();
        let now = crate::state::now_unix_ms();
        tokio::task::spawn_blocking(move || {
            outbox.quarantine_oldest(pending.seq, &pending.code, &pending.message, now)
        })
        .await??;
        self.shipped_through = self
            .shipped_through
            .max(self.state.outbox().stats().acked_through);
        Ok(None)
    }

    /// Sends batches of unsent records until the pipeline is full or the outbox has nothing more. Records
    /// that break [`gait_wire::Record::validate`] (stored by an older build under older limits) are not
    /// sent: they are marked for the quarantine.
    async fn fill_pipeline(&mut self) -> Result<(), SessionError> {
        while self.in_flight.len() < PIPELINE_DEPTH {
            let below = self.settle_quarantine().await?;
            let outbox = self.state.outbox().clone();
            let after = self.shipped_through;
            let waiting = outbox.stats().last_seq.saturating_sub(after);
            if !self.in_flight.is_empty() && waiting > 0 && waiting < COALESCE_RECORDS {
                let since = *self
                    .held_since
                    .get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() < COALESCE_LINGER {
                    return Ok(());
                }
            }
            self.held_since = None;
            if below.is_some_and(|b| after.saturating_add(1) >= b) {
                return Ok(());
            }
            let mut records = tokio::task::spawn_blocking(move || {
                outbox.peek_batch(after, BATCH_MAX_RECORDS, BATCH_MAX_BYTES)
            })
            .await??;
            if let Some(b) = below {
                records.retain(|r| r.seq < b);
            }
            if let Some((i, err)) = records
                .iter()
                .enumerate()
                .find_map(|(i, r)| r.validate().err().map(|e| (i, e)))
            {
                let seq = records[i].seq;
                tracing::warn!(seq, error = %err, "outbox record breaks the wire limits; it will be quarantined");
                self.pending_quarantine = Some(PendingQuarantine {
                    seq,
                    code: err.refusal_code().as_str().to_owned(),
                    message: format!("refused by this agent before sending: {err}"),
                });
                records.truncate(i);
                if records.is_empty() {
                    if self.settle_quarantine().await?.is_some() {
                        return Ok(());
                    }
                    continue;
                }
            }
            let (Some(first_seq), Some(last_seq)) = (
                records.first().map(|r| r.seq),
                records.last().map(|r| r.seq),
            ) else {
                return Ok(());
            };
            let batch_id = self.next_batch_id;
            self.next_batch_id += 1;
            self.shipped_through = last_seq;
            let msg = AgentMsg::V2(AgentMsgV2::RecordBatch(RecordBatch { batch_id, records }));
            let reply = spawn_batch_request(&self.tasks, self.conn.clone(), msg);
            self.in_flight.push_back(InFlight {
                batch_id,
                first_seq,
                last_seq,
                reply,
            });
        }
        Ok(())
    }

    async fn on_ack(
        &mut self,
        batch_id: u64,
        last_seq: u64,
        ack: BatchAck,
    ) -> Result<(), SessionError> {
        if ack.batch_id != batch_id {
            return Err(SessionError::AckOrder {
                expected: batch_id,
                got: ack.batch_id,
            });
        }
        if !ack.gaps.is_empty() {
            tracing::warn!(gaps = ?ack.gaps, batch_id, "the aggregator reports gaps in this agent's records");
        }
        let outbox = self.state.outbox().clone();
        // Never past this batch: the aggregator's head may be ahead of this outbox when another instance of
        // the identity wrote records, and records not in this batch were not judged by this ack.
        let through = ack.committed_through.min(last_seq);
        let conflicts = ack.conflicts.clone();
        let message = format!(
            "the aggregator already holds a different record at this seq (batch {batch_id}): another \
             instance of this agent identity wrote it"
        );
        let now = crate::state::now_unix_ms();
        let settled = tokio::task::spawn_blocking(move || {
            outbox.ack_with_conflicts(through, &conflicts, &message, now)
        })
        .await??;
        if !settled.quarantined.is_empty() {
            let n = settled.quarantined.len() as u64;
            self.state.count_conflicts(n);
            tracing::error!(
                batch_id,
                conflicts = ?gait_wire::ranges_of(settled.quarantined.iter().copied()),
                count = n,
                "the aggregator did not store these records: it already holds other records at the same seqs, \
                 written by another instance of this agent identity (a second process with this certificate, \
                 or a wiped or copied data directory). They were moved to the quarantine, not deleted: export \
                 them with `gait-agent quarantine export`, and make sure one host runs this identity"
            );
        }
        self.state.touch_contact().await;
        let stats = self.state.outbox().stats();
        if ack.committed_through > stats.last_seq && stats.depth == 0 {
            return Err(SessionError::BehindAggregator {
                committed: ack.committed_through,
                last_seq: stats.last_seq,
            });
        }
        tracing::debug!(
            batch_id,
            committed_through = through,
            inserted = ack.inserted,
            duplicates = ack.duplicates,
            "batch acknowledged"
        );
        if through < last_seq {
            tracing::warn!(
                batch_id,
                committed_through = through,
                last_seq,
                "the aggregator committed only part of a batch; resending the rest"
            );
            self.rewind();
        }
        Ok(())
    }

    /// Forgets every unacknowledged batch; the next fill resends from the last acknowledged seq.
    fn rewind(&mut self) {
        self.abort_in_flight();
        self.shipped_through = self.state.outbox().stats().acked_through;
    }

    fn abort_in_flight(&mut self) {
        for f in self.in_flight.drain(..) {
            f.reply.abort();
        }
    }
}

/// One `RecordBatch` exchange as its own task, so several batches are on the wire at once.
fn spawn_batch_request(
    tasks: &Tasks,
    conn: quinn::Connection,
    msg: AgentMsg,
) -> AbortOnDropHandle<Result<ServerMsg, ExchangeError>> {
    tasks.spawn_owned(async move { exchange::request(&conn, &msg, REPLY_TIMEOUT).await })
}

/// Sleeps until `deadline`, or forever when there is none.
async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbox_with(n: usize) -> (tempfile::TempDir, crate::outbox::Outbox) {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::AgentDb::open(dir.path().join("agent.redb")).unwrap();
        let outbox = crate::outbox::Outbox::open(&db, Default::default()).unwrap();
        for i in 0..n {
            outbox
                .append(crate::outbox::NewRecord {
                    class: gait_wire::RecordClass::Block,
                    kind: "gate.decision".into(),
                    created_unix_ms: 1_700_000_000_000 + i as i64,
                    bundle: None,
                    payload: format!("{{\"n\":{i}}}").into_bytes(),
                })
                .unwrap();
        }
        (dir, outbox)
    }

    #[test]
    fn a_welcome_deletes_records_only_when_the_aggregator_holds_the_same_chain() {
        let (_dir, outbox) = outbox_with(5);
        let hash3 = outbox.hash_at(3).unwrap().unwrap();
        assert_eq!(
            settle_welcome(&outbox, 3, hash3).unwrap(),
            WelcomeSettlement::Settled
        );
        assert_eq!(outbox.stats().acked_through, 3);

        // Another instance wrote seq 5 at the aggregator: a different hash deletes nothing.
        let (_dir, outbox) = outbox_with(5);
        assert_eq!(
            settle_welcome(&outbox, 4, [0xee; 32]).unwrap(),
            WelcomeSettlement::Diverged { waiting_from: 1 }
        );
        assert_eq!(outbox.stats().depth, 5, "nothing deleted");

        // The aggregator is ahead of a non-empty outbox (a wiped data directory that wrote records before
        // it connected): nothing deleted, no error.
        let (_dir, outbox) = outbox_with(2);
        assert_eq!(
            settle_welcome(&outbox, 19, [0xee; 32]).unwrap(),
            WelcomeSettlement::Diverged { waiting_from: 1 }
        );
        assert_eq!(outbox.stats().depth, 2);

        // An empty outbox behind the head continues after it.
        let (_dir, outbox) = outbox_with(0);
        assert_eq!(
            settle_welcome(&outbox, 19, [0xee; 32]).unwrap(),
            WelcomeSettlement::Settled
        );
        assert_eq!(outbox.stats().last_seq, 19);
    }

    #[test]
    fn version_skew_names_both_versions_and_needs_an_operator() {
        let e = SessionError::VersionSkew {
            addr: SocketAddr::from(([127, 0, 0, 1], 7443)),
        };
        let text = e.to_string();
        assert!(
            text.contains("gait-fleet/3") && text.contains("gait-fleet/2"),
            "{text}"
        );
        assert!(e.needs_operator(), "logged at ERROR");
    }

    #[test]
    fn the_first_refusals_are_free_then_the_pause_doubles_up_to_the_poll_wait() {
        let wait = Duration::from_secs(25);
        let pauses: Vec<Option<u64>> = (1..=10)
            .map(|n| refusal_pause(n, wait).map(|d| d.as_secs()))
            .collect();
        assert_eq!(
            pauses,
            vec![
                None,
                None,
                None,
                Some(1),
                Some(2),
                Some(4),
                Some(8),
                Some(16),
                Some(25),
                Some(25)
            ]
        );
        assert_eq!(refusal_pause(u32::MAX, wait), Some(wait));
    }
}

#[cfg(test)]
mod replica_tests {
    use super::start_index;

    #[test]
    fn identities_spread_over_replicas_and_keep_their_start() {
        let n = 3;
        let mut counts = [0usize; 3];
        for i in 0..3_000 {
            let uri = format!("spiffe://gait.local/org/acme/project/web/env/prod/agent/edge-{i}");
            let at = start_index(&uri, n);
            assert_eq!(at, start_index(&uri, n), "not stable");
            counts[at] += 1;
        }
        // Each replica gets its share within 10 % of an even split.
        for c in counts {
            assert!((900..=1_100).contains(&c), "{counts:?}");
        }
        assert_eq!(start_index("anything", 1), 0);
        assert_eq!(start_index("anything", 0), 0);
    }
}
