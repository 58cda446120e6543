//! One HTTP/1.1 server loop for both daemons (the aggregator's API, the agent's local API), hardened against
//! clients that connect and never finish: idle, slow-header, slow-body and connection-flooding clients.
//!
//! [`serve`] listens on TCP ([`serve_tls`] with TLS), [`serve_unix`] on a Unix-domain socket; all run the same
//! accept loop and per-connection machinery, and put the client ([`Peer`]: address, or uid/pid from
//! `SO_PEERCRED`) into each request's extensions. What they enforce, each from [`Limits`]:
//! - **Connection cap.** At most `max_connections` connections are served at once. When a connection arrives at
//!   the cap, the connection that has waited longest without a request in flight (idle between requests, or
//!   still sending its request head — the slow-header client) is closed to make room, its slot passes to the
//!   newcomer at once (the newcomer never waits for the evicted connection's task to end), and it is counted in
//!   [`Stats::evicted`]: a flood of idle connections cannot lock out a client that sends a request, however
//!   fast the flood re-dials, because the newest connection is always the last to go. Only when every admitted
//!   connection has a request in flight is a new connection closed at once (fast refusal: the client sees EOF,
//!   not a hang) and counted in [`Stats::refused`], as it is when `max_connections` evicted connections are
//!   still ending. Either way the process holds at most twice `max_connections` connection file handles.
//! - **Header timeout.** The request line and headers must arrive within `header_timeout`, else the
//!   connection is closed (hyper's `header_read_timeout`; hyper also arms it while a kept-alive connection waits
//!   for its next request).
//! - **Body timeout.** A request must be read and answered within `body_timeout`, else it is answered
//!   `408 Request Timeout` and the connection is closed (the unread rest of the body is never read).
//! - **Idle timeout.** A connection with no request in flight for `idle_timeout` is closed. Since the header
//!   timeout also runs while a kept-alive connection waits for its next request, such a connection closes after
//!   the shorter of the two.
//! - **Requests per connection.** The `max_requests_per_connection`-th answer carries `Connection: close`, and
//!   the connection ends after it.
//! - **TLS.** [`serve_tls`] runs the same loop with a TLS handshake first, inside the connection's task: it holds
//!   a slot under the cap like any connection and must finish within `header_timeout` (a client that opens TCP
//!   and never sends a ClientHello is closed then), after which the header timeout runs again for the first
//!   request.
//! - **Graceful shutdown.** When the token is cancelled, the listener closes, idle connections close at once and
//!   a connection with a request in flight closes after its answer (at most `body_timeout` later).
//!
//! **Memory bound.** Request body bytes held in flight are at most `max_connections` × the router's body limit
//! (each router answers a larger body 413 as soon as it crosses its limit), each held for at most
//! `body_timeout`; a refused or timed-out connection frees its buffer at once. At the defaults: agent
//! 1024 × (2 MiB + 64 KiB) ≈ 2.06 GiB, aggregator 4096 × 8 MiB = 32 GiB, worst case. Operators who need a
//! tighter bound lower `max_connections`. One race can add to it: a request that starts in the instant its
//! connection is evicted is still answered, under the evicted connection's permit of the ending budget, so in
//! theory up to `max_connections` more bodies; it needs a request arriving exactly then on the longest-idle
//! connection, and (on both servers) a valid token before any body is read.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::header::{CONNECTION, HeaderValue};
use http::{Request, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
#[cfg(unix)]
use tokio::net::UnixListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tower_http::timeout::Timeout;

use crate::Tasks;

/// How long the accept loop waits before accepting again after the process ran out of file handles (or another
/// resource error), so that it does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// The limits [`serve`] enforces; each binary builds them from its own dotted config keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once; a connection beyond the cap is closed at once and counted.
    pub max_connections: usize,
    /// Time allowed for the request line and headers (and for the next request on a kept-alive connection).
    pub header_timeout: Duration,
    /// Time allowed to read a request's body and answer it; past it the answer is 408 and the connection closes.
    pub body_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// Requests answered on one connection before it is closed (`Connection: close` on the last answer).
    pub max_requests_per_connection: u64,
}

impl Limits {
    /// The problems with these limits, each as (key under the binary's section, message): every count and
    /// timeout must be at least 1.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if self.max_connections == 0 {
            problems.push(("max_connections", "must be at least 1".to_owned()));
        }
        for (key, value) in [
            ("header_timeout_ms", self.header_timeout),
            ("body_timeout_ms", self.body_timeout),
            ("idle_timeout_ms", self.idle_timeout),
        ] {
            if value.is_zero() {
                problems.push((key, "must be at least 1 ms".to_owned()));
            }
        }
        if self.max_requests_per_connection == 0 {
            problems.push((
                "max_requests_per_connection",
                "must be at least 1".to_owned(),
            ));
        }
        problems
    }
}

/// Counters of one server, shared with whoever exports metrics.
#[derive(Debug, Default)]
pub struct Stats {
    accepted: AtomicU64,
    refused: AtomicU64,
    evicted: AtomicU64,
    open: AtomicUsize,
    handshake_failures: AtomicU64,
}

impl Stats {
    /// Connections admitted since start.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Connections closed at once because `max_connections` were already open, each with a request in flight
    /// (or with `max_connections` evicted connections still ending).
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Idle connections (no request in flight) closed to make room for a new one at `max_connections`.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    /// Connections open now: at most `max_connections` being served, plus evicted connections whose task has
    /// not ended yet (at most as many again).
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// TLS connections closed because their handshake failed or did not finish within the header timeout
    /// (always 0 on a plain-HTTP server).
    pub fn handshake_failures(&self) -> u64 {
        self.handshake_failures.load(Ordering::Relaxed)
    }
}

/// Who is at the other end of a connection, as the kernel reports it. [`serve`], [`serve_tls`] and
/// [`serve_unix`] insert it into every request's extensions, so a handler can tell the transport and attribute
/// what it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// A TCP client at this address.
    Tcp(SocketAddr),
    /// A Unix-socket client; its credentials as the kernel saw them at `connect` (`SO_PEERCRED`), when the
    /// platform reports them.
    Unix {
        /// The client's user id.
        uid: Option<u32>,
        /// The client's process id.
        pid: Option<i32>,
    },
}

/// The bounds the accept loop puts on what it serves and what it reads from, each written once as a trait with a
/// blanket impl. They are `pub` inside a private module: usable in the public signatures below, but not nameable
/// (nor implementable) outside this crate, so they add nothing to the API — any tower service of
/// `Request<Incoming>` answering `Response<B>` with `Infallible` errors (an axum `Router`) fits.
mod bounds {
    use std::convert::Infallible;

    use http::{Request, Response};
    use hyper::body::Incoming;
    use tokio::io::{AsyncRead, AsyncWrite};
    use tower::Service;

    /// A cloneable, thread-safe tower service of hyper requests whose answers hyper can write.
    pub trait HttpService:
        Service<
            Request<Incoming>,
            Response = Response<Self::ResBody>,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + Sync
        + 'static
    {
        /// The body of the service's answers.
        type ResBody: http_body::Body<Data: Send, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
            + Default
            + Send
            + 'static;
    }

    impl<S, B> HttpService for S
    where
        S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
        B: http_body::Body<Data: Send, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
            + Default
            + Send
            + 'static,
    {
        type ResBody = B;
    }

    /// A byte stream one connection is served over (TCP, a Unix socket, or TLS over either).
    pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

    impl<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for I {}
}

use bounds::{HttpService, Io};

/// A listener the accept loop takes connections from: TCP or a Unix socket.
trait Listener {
    type Stream: Io;
    async fn accept_peer(&self) -> std::io::Result<(Self::Stream, Peer)>;
}

impl Listener for TcpListener {
    type Stream = tokio::net::TcpStream;
    async fn accept_peer(&self) -> std::io::Result<(Self::Stream, Peer)> {
        let (stream, addr) = self.accept().await?;
        Ok((stream, Peer::Tcp(addr)))
    }
}

#[cfg(unix)]
impl Listener for UnixListener {
    type Stream = tokio::net::UnixStream;
    async fn accept_peer(&self) -> std::io::Result<(Self::Stream, Peer)> {
        let (stream, _addr) = self.accept().await?;
        let cred = stream.peer_cred().ok();
        let peer = Peer::Unix {
            uid: cred.map(|c| c.uid()),
            pid: cred.and_then(|c| c.pid()),
        };
        Ok((stream, peer))
    }
}

/// Serves `service` on `listener` under `limits` until `shutdown` is cancelled. Each connection is a task of
/// `tasks` (named `http-connection`), so the process drain waits for the answers in flight. Every request
/// carries the client's [`Peer::Tcp`] address in its extensions.
///
/// Returns once the listener is closed; accept errors (such as running out of file handles) are logged and
/// retried, never fatal.
pub async fn serve<S: HttpService>(
    listener: TcpListener,
    service: S,
    limits: Limits,
    stats: Arc<Stats>,
    tasks: Tasks,
    shutdown: CancellationToken,
) {
    accept_loop(listener, None, service, limits, stats, tasks, shutdown).await;
}

/// [`serve`] over TLS: each accepted connection first completes a handshake with `tls` (within
/// `limits.header_timeout`, holding its slot under the connection cap), then is served like a plain one. A
/// failed or timed-out handshake closes the connection and is counted in [`Stats::handshake_failures`].
pub async fn serve_tls<S: HttpService>(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    service: S,
    limits: Limits,
    stats: Arc<Stats>,
    tasks: Tasks,
    shutdown: CancellationToken,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    accept_loop(
        listener,
        Some(acceptor),
        service,
        limits,
        stats,
        tasks,
        shutdown,
    )
    .await;
}

/// [`serve`] on a Unix-domain socket: the same limits, timeouts and per-connection handling; every request
/// carries the client's [`Peer::Unix`] credentials in its extensions. Who may connect is decided by the socket
/// file's owner, group and mode, which the caller sets.
#[cfg(unix)]
pub async fn serve_unix<S: HttpService>(
    listener: UnixListener,
    service: S,
    limits: Limits,
    stats: Arc<Stats>,
    tasks: Tasks,
    shutdown: CancellationToken,
) {
    accept_loop(listener, None, service, limits, stats, tasks, shutdown).await;
}

async fn accept_loop<L: Listener, S: HttpService>(
    listener: L,
    tls: Option<tokio_rustls::TlsAcceptor>,
    service: S,
    limits: Limits,
    stats: Arc<Stats>,
    tasks: Tasks,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let idle = Arc::new(IdleSet::default());
    // An evicted connection hands its permit to the newcomer at once and holds one of these until its task ends,
    // so at most twice the cap of connection file handles are held; when `max_connections` evicted connections
    // are still ending, a newcomer at the cap is refused. (Newcomers used to wait up to 1 s for the evicted task
    // to end and release its permit; under a 20,000-connection burst about 1 probe in 45 was still refused.)
    let ending = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept_peer() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) if is_connection_error(&error) => continue,
            Err(error) => {
                tracing::warn!(%error, "HTTP accept failed; retrying shortly");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(ACCEPT_ERROR_BACKOFF) => continue,
                }
            }
        };
        let permit = match Arc::clone(&permits).try_acquire_owned() {
            Ok(permit) => permit,
            // At the cap: close the longest-idle connection and take its slot.
            Err(_) => {
                let evicted = Arc::clone(&ending)
                    .try_acquire_owned()
                    .ok()
                    .and_then(|ending| idle.evict_oldest(ending));
                let Some(permit) = evicted else {
                    refuse(stream, &stats, limits);
                    continue;
                };
                if let Some(evicted) = count_sparsely(&stats.evicted) {
                    tracing::warn!(
                        evicted_total = evicted,
                        max_connections = limits.max_connections,
                        "HTTP connection cap reached; closing the longest-idle connections to admit new ones"
                    );
                }
                permit
            }
        };
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        // Idle (evictable) from the moment it is admitted, not from when its task first runs: a newcomer
        // accepted before that would otherwise find nothing to evict and be refused.
        let slot = Slot::new(permit);
        let ticket = idle.enter(&slot);
        let connection = Connection {
            service: service.clone(),
            peer,
            limits,
            shutdown: shutdown.clone(),
            idle: Arc::clone(&idle),
            slot,
            ticket,
            open: OpenGuard::new(Arc::clone(&stats)),
        };
        tasks.spawn("http-connection", connection.serve(stream, tls.clone()));
    }
}

/// Closes a connection at the cap at once (the client learns instead of waiting in a queue) and counts it.
fn refuse<I>(stream: I, stats: &Stats, limits: Limits) {
    drop(stream);
    if let Some(refused) = count_sparsely(&stats.refused) {
        tracing::warn!(
            refused_total = refused,
            max_connections = limits.max_connections,
            "HTTP connection cap reached with a request in flight on every connection; refusing new connections"
        );
    }
}

/// Adds one to `counter`; returns the new total when it is to be logged: the 1st, 2nd, 4th, 8th… (bounded log
/// volume under a flood).
fn count_sparsely(counter: &AtomicU64) -> Option<u64> {
    let total = counter.fetch_add(1, Ordering::Relaxed) + 1;
    total.is_power_of_two().then_some(total)
}

/// A connection's place under the cap: its permit and the token that evicts it. The connection's task holds it,
/// and so does the [`IdleSet`] while the connection is idle, so an eviction takes the permit and hands it to the
/// newcomer at once, instead of making the newcomer wait for the evicted task to end. Released when the
/// connection's task ends.
#[derive(Debug)]
struct Slot {
    /// The permit under `max_connections`; after an eviction, a permit of the budget of connections still ending.
    permit: Mutex<Option<OwnedSemaphorePermit>>,
    /// Cancelled when the server evicts this connection.
    evict: CancellationToken,
}

impl Slot {
    fn new(permit: OwnedSemaphorePermit) -> Arc<Self> {
        Arc::new(Slot {
            permit: Mutex::new(Some(permit)),
            evict: CancellationToken::new(),
        })
    }
}

/// The connections with no request in flight, oldest first: the candidates for eviction at the cap. A
/// connection enters when it is admitted and whenever its last request in flight is answered, and leaves when a
/// request starts; once evicted it never enters again.
#[derive(Debug, Default)]
struct IdleSet {
    inner: Mutex<IdleInner>,
}

#[derive(Debug, Default)]
struct IdleInner {
    next_ticket: u64,
    by_age: BTreeMap<u64, Arc<Slot>>,
}

impl IdleSet {
    fn lock(&self) -> std::sync::MutexGuard<'_, IdleInner> {
        // The critical sections below cannot panic; a poisoned lock still holds a consistent map.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a connection that just became idle; returns its ticket, or `None` when it was evicted already
    /// (its slot then holds a permit of the ending budget, which must never be handed on as a connection's).
    fn enter(&self, slot: &Arc<Slot>) -> Option<u64> {
        let mut inner = self.lock();
        if slot.evict.is_cancelled() {
            return None;
        }
        let ticket = inner.next_ticket;
        inner.next_ticket += 1;
        inner.by_age.insert(ticket, Arc::clone(slot));
        Some(ticket)
    }

    /// Removes a connection (a request started, or the connection ended).
    fn leave(&self, ticket: u64) {
        self.lock().by_age.remove(&ticket);
    }

    /// Signals the longest-idle connection to close and takes its permit under the cap, leaving it `ending` (a
    /// permit of the budget of evicted connections still ending) until its task ends; `None` when no connection
    /// is idle. Eviction and [`IdleSet::enter`] hold the same lock, so an evicted connection cannot re-enter.
    fn evict_oldest(&self, ending: OwnedSemaphorePermit) -> Option<OwnedSemaphorePermit> {
        let mut inner = self.lock();
        while let Some((_, slot)) = inner.by_age.pop_first() {
            slot.evict.cancel();
            let mut permit = slot.permit.lock().unwrap_or_else(PoisonError::into_inner);
            // Always present for an idle connection; a slot without one is skipped, never trusted.
            if permit.is_some() {
                return permit.replace(ending);
            }
        }
        None
    }
}

/// Errors that concern one connection only (the peer went away before it was accepted).
fn is_connection_error(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::ConnectionRefused
    )
}

/// Holds a connection's place in [`Stats::open`] until the connection ends.
struct OpenGuard {
    stats: Arc<Stats>,
}

impl OpenGuard {
    fn new(stats: Arc<Stats>) -> Self {
        stats.open.fetch_add(1, Ordering::Relaxed);
        OpenGuard { stats }
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What one connection's requests tell its idle timer and the server's [`IdleSet`].
#[derive(Debug)]
struct Activity {
    served: AtomicU64,
    in_flight: AtomicUsize,
    changed: watch::Sender<()>,
    idle: Arc<IdleSet>,
    /// The connection's slot (and eviction token).
    slot: Arc<Slot>,
    /// This connection's place in the idle set while it has no request in flight.
    ticket: Mutex<Option<u64>>,
}

impl Activity {
    /// `ticket`: the connection's place in the idle set (`None` when it was evicted before serving).
    fn new(
        idle: Arc<IdleSet>,
        slot: Arc<Slot>,
        changed: watch::Sender<()>,
        ticket: Option<u64>,
    ) -> Self {
        Activity {
            served: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            changed,
            idle,
            slot,
            ticket: Mutex::new(ticket),
        }
    }

    fn ticket(&self) -> std::sync::MutexGuard<'_, Option<u64>> {
        self.ticket.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Activity {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket().take() {
            self.idle.leave(ticket);
        }
    }
}

/// Marks one request in flight until dropped (the answer is produced or the request is abandoned); while any
/// request is in flight the connection is not a candidate for eviction.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: Arc<Activity>) -> Self {
        {
            let mut ticket = activity.ticket();
            activity.in_flight.fetch_add(1, Ordering::Relaxed);
            if let Some(ticket) = ticket.take() {
                activity.idle.leave(ticket);
            }
        }
        activity.changed.send_replace(());
        InFlight(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        {
            let mut ticket = self.0.ticket();
            let left = self.0.in_flight.fetch_sub(1, Ordering::Relaxed) - 1;
            if left == 0 && ticket.is_none() {
                *ticket = self.0.idle.enter(&self.0.slot);
            }
        }
        self.0.changed.send_replace(());
    }
}

/// One admitted connection: what serving it needs, from its TLS handshake (if any) to its end.
struct Connection<S> {
    service: S,
    peer: Peer,
    limits: Limits,
    shutdown: CancellationToken,
    idle: Arc<IdleSet>,
    slot: Arc<Slot>,
    /// Its place in the idle set, entered when it was admitted (`None`: evicted already).
    ticket: Option<u64>,
    open: OpenGuard,
}

impl<S: HttpService> Connection<S> {
    /// Serves `stream`: the TLS handshake first when the server has TLS, then HTTP.
    async fn serve(self, stream: impl Io, tls: Option<tokio_rustls::TlsAcceptor>) {
        match tls {
            None => self.serve_http(stream).await,
            Some(acceptor) => self.serve_tls(stream, acceptor).await,
        }
    }

    /// Completes the TLS handshake (bounded by the header timeout, abandoned at shutdown; until it completes the
    /// connection is idle, so it may be evicted at the cap like a slow-header one), then serves HTTP over it.
    async fn serve_tls(mut self, stream: impl Io, acceptor: tokio_rustls::TlsAcceptor) {
        let Some(ticket) = self.ticket.take() else {
            return;
        };
        let handshake = tokio::time::timeout(self.limits.header_timeout, acceptor.accept(stream));
        let stream = tokio::select! {
            () = self.shutdown.cancelled() => {
                self.idle.leave(ticket);
                return;
            }
            () = self.slot.evict.cancelled() => return,
            result = handshake => match result {
                Ok(Ok(stream)) => {
                    self.idle.leave(ticket);
                    stream
                }
                Ok(Err(error)) => {
                    self.idle.leave(ticket);
                    self.open.stats.handshake_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%error, "TLS handshake failed");
                    return;
                }
                Err(_elapsed) => {
                    self.idle.leave(ticket);
                    self.open.stats.handshake_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(
                        timeout_ms = self.limits.header_timeout.as_millis(),
                        "TLS handshake not finished within the header timeout; connection closed"
                    );
                    return;
                }
            },
        };
        self.serve_http(stream).await;
    }

    /// Serves HTTP/1.1 on `stream` until the peer closes it, a limit closes it, it is evicted, or shutdown.
    async fn serve_http(self, stream: impl Io) {
        let Connection {
            service,
            peer,
            limits,
            shutdown,
            idle,
            slot,
            ticket,
            open: _open,
        } = self;
        let evict = slot.evict.clone();
        let (changed, mut changes) = watch::channel(());
        // Plain HTTP keeps the ticket it was admitted with; after a TLS handshake (which left the idle set
        // once done) the connection enters it anew.
        let ticket = match ticket {
            Some(ticket) => Some(ticket),
            None => idle.enter(&slot),
        };
        let activity = Arc::new(Activity::new(idle, slot, changed, ticket));
        let timed =
            Timeout::with_status_code(service, StatusCode::REQUEST_TIMEOUT, limits.body_timeout);
        let per_request = Arc::clone(&activity);
        let svc = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            let activity = Arc::clone(&per_request);
            let timed = timed.clone();
            request.extensions_mut().insert(peer);
            async move {
                let served = activity.served.fetch_add(1, Ordering::Relaxed) + 1;
                let _in_flight = InFlight::start(activity);
                let mut response = timed.oneshot(request).await?;
                if served >= limits.max_requests_per_connection {
                    response
                        .headers_mut()
                        .insert(CONNECTION, HeaderValue::from_static("close"));
                }
                Ok::<_, Infallible>(response)
            }
        });

        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .keep_alive(true);
        let conn = builder.serve_connection(TokioIo::new(stream), svc);
        tokio::pin!(conn);

        let mut closing = false;
        loop {
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%error, "HTTP connection ended with an error");
                    }
                    return;
                }
                () = shutdown.cancelled(), if !closing => {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
                // Evicted at the cap: an idle connection ends now; one whose request started in the meantime
                // ends after its answer.
                () = evict.cancelled(), if !closing => {
                    if activity.in_flight.load(Ordering::Relaxed) == 0 {
                        return;
                    }
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
                // Any request starting or ending restarts the idle timer (the next loop arms a new sleep).
                _ = changes.changed(), if !closing => {}
                () = tokio::time::sleep(limits.idle_timeout), if !closing => {
                    if activity.in_flight.load(Ordering::Relaxed) == 0 {
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    }
                }
                // A closing connection whose peer does not read its last answer is cut.
                () = tokio::time::sleep(limits.body_timeout), if closing => return,
            }
        }
    }
}

pub mod access;
pub mod client;
pub mod tls;

/// Whether a presented secret (a bearer token) equals the expected one, in time that depends only on the
/// length: both HTTP APIs compare tokens with it.
pub fn constant_time_eq(expected: &[u8], presented: &[u8]) -> bool {
    expected.len() == presented.len()
        && expected
            .iter()
            .zip(presented)
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests;
