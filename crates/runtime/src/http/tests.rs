//! Unit tests of the hardened accept loop against a one-route service on 127.0.0.1:0.
#![allow(clippy::disallowed_methods)] // test servers and clients

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::client::{Client, ClientError};
use super::tls::{HandshakeFailure, client_config, server_config};
use super::{Limits, Stats, serve, serve_tls};
use crate::Tasks;

const PATIENCE: Duration = Duration::from_secs(60);

fn limits(max_connections: usize) -> Limits {
    Limits {
        max_connections,
        header_timeout: Duration::from_secs(60),
        body_timeout: Duration::from_secs(60),
        idle_timeout: Duration::from_secs(60),
        max_requests_per_connection: 2,
    }
}

async fn start(limits: Limits) -> (std::net::SocketAddr, Arc<Stats>, CancellationToken) {
    let (addr, stats, token, _hold) = start_with(limits, None).await;
    (addr, stats, token)
}

/// What the test service's `/hold` route does: counts the requests that reached it, and answers them once
/// `release` is cancelled.
#[derive(Clone, Default)]
struct Hold {
    reached: Arc<std::sync::atomic::AtomicUsize>,
    release: CancellationToken,
}

async fn start_holding(
    limits: Limits,
) -> (std::net::SocketAddr, Arc<Stats>, CancellationToken, Hold) {
    start_with(limits, None).await
}

async fn start_with(
    limits: Limits,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> (std::net::SocketAddr, Arc<Stats>, CancellationToken, Hold) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let token = CancellationToken::new();
    let tasks = Tasks::new(token.clone());
    let stats = Arc::new(Stats::default());
    let hold = Hold::default();
    let held = hold.clone();
    let service = tower::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let hold = held.clone();
        async move {
            if req.uri().path() == "/hold" {
                hold.reached
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                hold.release.cancelled().await;
            }
            Ok::<_, std::convert::Infallible>(http::Response::new(String::from("ok")))
        }
    });
    match tls {
        None => tasks.spawn(
            "test-server",
            serve(
                listener,
                service,
                limits,
                Arc::clone(&stats),
                tasks.clone(),
                token.clone(),
            ),
        ),
        Some(tls) => tasks.spawn(
            "test-server",
            serve_tls(
                listener,
                tls,
                service,
                limits,
                Arc::clone(&stats),
                tasks.clone(),
                token.clone(),
            ),
        ),
    }
    (addr, stats, token, hold)
}

/// Waits (bounded by [`PATIENCE`]) until `done` holds.
async fn until(what: &str, done: impl Fn() -> bool) {
    tokio::time::timeout(PATIENCE, async {
        while !done() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what} within the patience"));
}

/// Reads until EOF (or a reset), bounded by [`PATIENCE`]; returns what was read.
async fn read_to_eof(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut out))
        .await
        .expect("the server closes the connection");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn at_the_cap_the_longest_idle_connection_makes_room_for_a_new_one() {
    let (addr, stats, token) = start(limits(2)).await;
    let mut oldest = TcpStream::connect(addr).await.unwrap();
    until("the first connection is admitted", || stats.open() == 1).await;
    let mut newer = TcpStream::connect(addr).await.unwrap();
    until("both connections are admitted", || stats.open() == 2).await;

    // A third client at the cap is answered; the connection idle longest is closed to make room.
    let mut third = TcpStream::connect(addr).await.unwrap();
    third
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = read_to_eof(&mut third).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert_eq!(
        read_to_eof(&mut oldest).await,
        "",
        "the oldest idle connection is closed"
    );
    assert_eq!(stats.evicted(), 1);
    assert_eq!(stats.refused(), 0);

    // The newer idle connection was left alone and is still served.
    newer
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = read_to_eof(&mut newer).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    token.cancel();
}

#[tokio::test]
async fn at_the_cap_with_a_request_in_flight_everywhere_a_connection_is_refused_at_once() {
    let (addr, stats, token, hold) = start_holding(limits(2)).await;
    let mut busy = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /hold HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        busy.push(stream);
    }
    until("both requests reach the service", || {
        hold.reached.load(std::sync::atomic::Ordering::SeqCst) == 2
    })
    .await;

    let mut extra = TcpStream::connect(addr).await.unwrap();
    assert_eq!(
        read_to_eof(&mut extra).await,
        "",
        "refused without an answer"
    );
    assert_eq!(stats.refused(), 1);
    assert_eq!(
        stats.evicted(),
        0,
        "a connection with a request in flight is never evicted"
    );

    // The busy connections still get their answers.
    hold.release.cancel();
    for mut stream in busy {
        let answer = read_to_eof(&mut stream).await;
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    }
    token.cancel();
}

#[tokio::test]
async fn the_last_allowed_request_closes_the_connection() {
    let (addr, _stats, token) = start(limits(8)).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
    stream
        .write_all(format!("{request}{request}").as_bytes())
        .await
        .unwrap();
    let answers = read_to_eof(&mut stream).await;
    assert_eq!(answers.matches("HTTP/1.1 200 OK").count(), 2, "{answers}");
    assert!(
        answers.to_ascii_lowercase().contains("connection: close"),
        "{answers}"
    );
    token.cancel();
}

#[tokio::test]
async fn the_header_timeout_also_bounds_the_wait_for_the_next_request() {
    let mut limits = limits(8);
    limits.header_timeout = Duration::from_millis(200);
    limits.idle_timeout = Duration::from_secs(600);
    let (addr, _stats, token) = start(limits).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    // One answer, then the connection (kept alive, idle timeout 600 s) closes on the header timeout.
    let answers = read_to_eof(&mut stream).await;
    assert_eq!(answers.matches("HTTP/1.1 200 OK").count(), 1, "{answers}");
    token.cancel();
}

/// A self-signed certificate for `localhost` and 127.0.0.1, written as `cert.pem` / `key.pem` in a temporary
/// directory (the certificate is its own CA).
fn self_signed() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    self_signed_for(&["localhost", "127.0.0.1"])
}

/// [`self_signed`] for exactly `names`.
fn self_signed_for(names: &[&str]) -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let certified = rcgen::generate_simple_self_signed(names).unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    (dir, cert, key)
}

#[tokio::test]
async fn a_tls_listener_answers_clients_that_trust_its_ca_and_fails_the_handshake_of_others() {
    let (_dir, cert, key) = self_signed();
    let (addr, stats, token, _) =
        start_with(limits(8), Some(server_config(&cert, &key).unwrap())).await;
    let trusting = Client::new(Some(client_config(&cert).unwrap()), PATIENCE);
    for host in ["localhost", "127.0.0.1"] {
        let url = format!("https://{host}:{}/", addr.port());
        let answer = trusting
            .request(
                http::Method::GET,
                &url,
                http::HeaderMap::new(),
                bytes::Bytes::new(),
            )
            .await
            .unwrap();
        assert_eq!(answer.status(), http::StatusCode::OK);
        assert_eq!(answer.body().as_ref(), b"ok");
    }

    let (_other_dir, other_ca, _) = self_signed();
    let stranger = Client::new(Some(client_config(&other_ca).unwrap()), PATIENCE);
    let url = format!("https://127.0.0.1:{}/", addr.port());
    let error = stranger
        .request(
            http::Method::GET,
            &url,
            http::HeaderMap::new(),
            bytes::Bytes::new(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            ClientError::Handshake {
                failure: HandshakeFailure::UntrustedCertificate,
                ..
            }
        ),
        "{error:?}"
    );
    tokio::time::timeout(PATIENCE, async {
        while stats.handshake_failures() < 1 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();

    token.cancel();
}

#[tokio::test]
async fn a_tls_connection_that_never_sends_a_client_hello_is_closed_within_the_header_timeout() {
    let (_dir, cert, key) = self_signed();
    let mut limits = limits(8);
    limits.header_timeout = Duration::from_millis(300);
    // Far beyond PATIENCE: only the header timeout can close the connection in time.
    limits.idle_timeout = Duration::from_secs(600);
    limits.body_timeout = Duration::from_secs(600);
    let (addr, stats, token, _) =
        start_with(limits, Some(server_config(&cert, &key).unwrap())).await;
    let mut silent = TcpStream::connect(addr).await.unwrap();
    assert_eq!(read_to_eof(&mut silent).await, "");
    assert_eq!(stats.handshake_failures(), 1);
    token.cancel();
}

#[tokio::test]
async fn at_the_cap_a_tls_connection_still_in_its_handshake_makes_room_for_a_new_client() {
    let (_dir, cert, key) = self_signed();
    let (addr, stats, token, _) =
        start_with(limits(2), Some(server_config(&cert, &key).unwrap())).await;
    let mut silent = TcpStream::connect(addr).await.unwrap();
    until("the first connection is admitted", || stats.open() == 1).await;
    let _newer = TcpStream::connect(addr).await.unwrap();
    until("both connections are admitted", || stats.open() == 2).await;

    // Both slots are held by connections that never send a ClientHello; a real client is still answered.
    let client = Client::new(Some(client_config(&cert).unwrap()), PATIENCE);
    let answer = client
        .request(
            http::Method::GET,
            &format!("https://localhost:{}/", addr.port()),
            http::HeaderMap::new(),
            bytes::Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(answer.status(), http::StatusCode::OK);
    assert_eq!(
        read_to_eof(&mut silent).await,
        "",
        "the oldest handshake is closed"
    );
    assert_eq!(stats.evicted(), 1);
    assert_eq!(stats.refused(), 0);
    token.cancel();
}

#[tokio::test]
async fn a_client_dialling_a_name_the_certificate_lacks_fails_the_handshake_as_a_name_mismatch() {
    let (_dir, cert, key) = self_signed_for(&["localhost"]);
    let (addr, _stats, token, _) =
        start_with(limits(8), Some(server_config(&cert, &key).unwrap())).await;
    let client = Client::new(Some(client_config(&cert).unwrap()), PATIENCE);
    let by_ip = format!("https://127.0.0.1:{}/", addr.port());
    let error = client
        .request(
            http::Method::GET,
            &by_ip,
            http::HeaderMap::new(),
            bytes::Bytes::new(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            ClientError::Handshake {
                failure: HandshakeFailure::NameMismatch,
                ..
            }
        ),
        "{error:?}"
    );
    token.cancel();
}

#[cfg(unix)]
#[tokio::test]
async fn a_unix_socket_is_served_with_the_same_limits_and_names_its_peer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let token = CancellationToken::new();
    let tasks = Tasks::new(token.clone());
    let stats = Arc::new(Stats::default());
    // The service answers with the peer the accept loop put into the request.
    let service = tower::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
        let peer = req.extensions().get::<super::Peer>().copied();
        Ok::<_, std::convert::Infallible>(http::Response::new(format!("{peer:?}")))
    });
    tasks.spawn(
        "test-server",
        super::serve_unix(
            listener,
            service,
            limits(1),
            Arc::clone(&stats),
            tasks.clone(),
            token.clone(),
        ),
    );
    let mut held = tokio::net::UnixStream::connect(&path).await.unwrap();
    held.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 512];
    let n = tokio::time::timeout(PATIENCE, held.read(&mut first))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&first[..n]).into_owned();
    let uid = std::fs::metadata("/proc/self").map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.uid()
    });
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    if let Ok(uid) = uid {
        assert!(
            answer.contains(&format!("uid: Some({uid})")),
            "the peer's uid is reported: {answer}"
        );
    }
    assert!(
        answer.contains(&format!("pid: Some({})", std::process::id())),
        "{answer}"
    );
    // The cap applies: a second connection while the first is held (idle) makes room by closing it.
    let mut second = tokio::net::UnixStream::connect(&path).await.unwrap();
    second
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(PATIENCE, second.read_to_end(&mut out))
        .await
        .expect("answered")
        .unwrap();
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"));
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, held.read_to_end(&mut rest))
        .await
        .expect("the held idle connection is closed");
    assert!(rest.is_empty());
    assert_eq!(stats.evicted(), 1);
    token.cancel();
}

/// Blocks a thread until opened (bounded by [`PATIENCE`]).
#[derive(Default)]
struct Gate {
    open: std::sync::Mutex<bool>,
    opened: std::sync::Condvar,
    /// Set once a thread waits at the gate.
    reached: std::sync::atomic::AtomicBool,
}

impl Gate {
    fn wait(&self) {
        self.reached
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let _ = self
            .opened
            .wait_timeout_while(open, PATIENCE, |open| !*open)
            .unwrap_or_else(|p| p.into_inner());
    }

    fn open(&self) {
        *self.open.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.opened.notify_all();
    }
}

/// Opens the gate when dropped, so a failing test does not leave a runtime thread blocked.
struct OpenOnDrop(Arc<Gate>);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open();
    }
}

/// A TCP stream whose drop waits at a [`Gate`]: the task serving it cannot end until the gate opens.
struct GatedStream {
    inner: TcpStream,
    gate: Option<Arc<Gate>>,
}

impl Drop for GatedStream {
    fn drop(&mut self) {
        if let Some(gate) = &self.gate {
            gate.wait();
        }
    }
}

impl tokio::io::AsyncRead for GatedStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for GatedStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A TCP listener whose first accepted connection is a [`GatedStream`].
struct FirstGated {
    inner: tokio::net::TcpListener,
    gate: std::sync::Mutex<Option<Arc<Gate>>>,
}

impl super::Listener for FirstGated {
    type Stream = GatedStream;
    async fn accept_peer(&self) -> std::io::Result<(GatedStream, super::Peer)> {
        let (inner, addr) = self.inner.accept().await?;
        let gate = self.gate.lock().unwrap_or_else(|p| p.into_inner()).take();
        Ok((GatedStream { inner, gate }, super::Peer::Tcp(addr)))
    }
}

/// The fix for the losses under a 20,000-connection burst: an evicted connection's slot goes to the newcomer at
/// once. Here the evicted connection's task is held up from ending (its stream's drop blocks) for longer than a
/// newcomer used to wait for that slot; the newcomer is still answered, and nothing is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn at_the_cap_a_newcomer_is_served_even_while_the_evicted_connection_is_still_ending() {
    let gate = Arc::new(Gate::default());
    let _open_at_end = OpenOnDrop(Arc::clone(&gate));
    let inner = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = inner.local_addr().unwrap();
    let listener = FirstGated {
        inner,
        gate: std::sync::Mutex::new(Some(Arc::clone(&gate))),
    };
    let token = CancellationToken::new();
    let tasks = Tasks::new(token.clone());
    let stats = Arc::new(Stats::default());
    let service = tower::service_fn(|_req: http::Request<hyper::body::Incoming>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(String::from("ok")))
    });
    tasks.spawn(
        "test-server",
        super::accept_loop(
            listener,
            None,
            service,
            limits(1),
            Arc::clone(&stats),
            tasks.clone(),
            token.clone(),
        ),
    );

    let mut evicted = TcpStream::connect(addr).await.unwrap();
    until("the first connection is admitted", || stats.open() == 1).await;
    let mut newcomer = TcpStream::connect(addr).await.unwrap();
    newcomer
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = read_to_eof(&mut newcomer).await;
    assert!(
        answer.starts_with("HTTP/1.1 200 OK"),
        "the newcomer is answered while the evicted connection is still ending: {answer:?}"
    );
    assert_eq!(stats.evicted(), 1);
    assert_eq!(stats.refused(), 0);

    // Once its task may end, the evicted connection is closed.
    until("the evicted connection's task reaches its end", || {
        gate.reached.load(std::sync::atomic::Ordering::SeqCst)
    })
    .await;
    gate.open();
    assert_eq!(read_to_eof(&mut evicted).await, "");
    until("both connections are gone", || stats.open() == 0).await;
    token.cancel();
}
