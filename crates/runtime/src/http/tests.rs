//! Unit tests of the hardened accept loop against a one-route service on 127.0.0.1:0.
#![allow(clippy::disallowed_methods)] // test servers and clients

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::{Limits, Stats, serve};
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
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let token = CancellationToken::new();
    let tasks = Tasks::new(token.clone());
    let stats = Arc::new(Stats::default());
    let service = tower::service_fn(|_req: http::Request<hyper::body::Incoming>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(String::from("ok")))
    });
    let server = serve(
        listener,
        service,
        limits,
        Arc::clone(&stats),
        tasks.clone(),
        token.clone(),
    );
    tasks.spawn("test-server", server);
    (addr, stats, token)
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
async fn a_connection_beyond_the_cap_is_closed_at_once_and_counted() {
    let (addr, stats, token) = start(limits(2)).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::timeout(PATIENCE, async {
        while stats.open() < 2 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    let mut extra = TcpStream::connect(addr).await.unwrap();
    assert_eq!(read_to_eof(&mut extra).await, "");
    assert_eq!(stats.refused(), 1);
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
    // The cap applies: a second connection while the first is held is closed at once.
    let mut second = tokio::net::UnixStream::connect(&path).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, second.read_to_end(&mut out))
        .await
        .expect("closed at once");
    assert!(out.is_empty());
    assert_eq!(stats.refused(), 1);
    token.cancel();
}
