//! The composition root in process: every long-lived task of `serve` is owned by one `gait_runtime::Tasks`, so
//! an essential task that fails after start stops the whole aggregator (exit 1) instead of leaving it half
//! alive, and a requested stop drains cleanly (exit 0).
#![allow(clippy::disallowed_methods)] // tests spawn freely and read the clock

use std::net::SocketAddr;
use std::time::Duration;

use gait_aggregator::app::{self, ServeConfig};
use gait_runtime::Tasks;
use tokio_util::sync::CancellationToken;

fn config(dir: &std::path::Path) -> ServeConfig {
    ServeConfig {
        quic_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        http_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        udp_buffer_bytes: 0,
        ..ServeConfig::embedded(dir)
    }
}

async fn healthz(addr: SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    let request = format!("GET /healthz HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer).await;
    answer.starts_with("HTTP/1.1 200")
}

#[tokio::test]
async fn an_essential_task_failing_after_start_stops_every_server_and_exits_1() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let tasks = Tasks::new(CancellationToken::new());
    let running = app::start(config(tmp.path()), tasks.clone())
        .await
        .expect("aggregator starts");
    let http = running.http_addr;
    assert!(healthz(http).await, "the HTTP API answers after start");

    // A server of the composition root failing after start, as the HTTP server does when accept breaks.
    running
        .tasks()
        .spawn_essential("http-server", async { Err::<(), _>("accept failed") });
    let drain = tokio::time::timeout(
        Duration::from_secs(30),
        running.wait(Duration::from_secs(10)),
    )
    .await
    .expect("the aggregator stops by itself after the failure");

    assert_eq!(drain.failure.as_deref(), Some("http-server: accept failed"));
    assert!(
        drain.clean,
        "every other task stopped within the grace period"
    );
    assert_eq!(drain.exit_code(), 1);
    assert!(tasks.token().is_cancelled());
    assert!(
        tokio::net::TcpStream::connect(http).await.is_err(),
        "the HTTP server stopped with the rest"
    );
}

#[tokio::test]
async fn a_requested_stop_drains_cleanly_and_exits_0() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let tasks = Tasks::new(CancellationToken::new());
    let running = app::start(config(tmp.path()), tasks.clone())
        .await
        .expect("aggregator starts");
    let http = running.http_addr;
    assert!(healthz(http).await);
    tasks.token().cancel();
    let drain = tokio::time::timeout(
        Duration::from_secs(30),
        running.wait(Duration::from_secs(10)),
    )
    .await
    .expect("the aggregator stops");
    assert_eq!(drain.failure, None);
    assert!(drain.clean);
    assert_eq!(drain.exit_code(), 0);
    assert!(tokio::net::TcpStream::connect(http).await.is_err());
}
