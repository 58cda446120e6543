//! Both HTTP servers (the aggregator's API and the agent's local API) against idle, slow and flooding clients on
//! real sockets: at the connection cap of idle connections a new client is still answered (the longest-idle
//! connection is closed to make room; refusal when every connection is busy is tested in gait-runtime); a slow request line, an unfinished body and an idle kept-alive connection are
//! each closed within their timeout. Caps are small (64) so no raised `ulimit -n` is needed, and every wait is
//! on an observable event (an answer, an EOF) bounded by [`PATIENCE`], never a fixed sleep.
#![allow(clippy::disallowed_methods)] // tests spawn freely and read the clock

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use gait_agent::config::LocalApiConfig;
use gait_runtime::http::Limits;
use gait_testkit::{
    AgentOptions, AggregatorOptions, RunningAggregator, init_logs, spawn_agent, spawn_aggregator,
    tenant,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The bound on every wait: generous for a loaded 2-core machine.
const PATIENCE: Duration = Duration::from_secs(60);
/// Far longer than [`PATIENCE`]: a limit set to this cannot be what closed a connection within a test.
const NEVER: Duration = Duration::from_secs(600);
/// The test-only connection cap.
const CAP: usize = 64;

/// Limits where nothing fires during a test except what the test sets shorter.
fn limits() -> Limits {
    Limits {
        max_connections: CAP,
        header_timeout: NEVER,
        body_timeout: NEVER,
        idle_timeout: NEVER,
        max_requests_per_connection: 1_000,
    }
}

/// Which server a test runs against, and where it listens.
struct Target {
    addr: SocketAddr,
    /// A request whose handler reads a JSON body (`{path}` and extra headers).
    body_path: String,
    body_headers: String,
    /// The router's body limit, in bytes.
    body_limit: usize,
    /// The `/metrics` series counting idle connections evicted at the cap.
    evicted_metric: &'static str,
    /// Kept alive for the test's duration.
    _aggregator: RunningAggregator,
    _agent: Option<gait_testkit::RunningAgent>,
}

async fn aggregator_target(limits: Limits) -> Result<Target> {
    init_logs();
    let aggregator = spawn_aggregator(AggregatorOptions {
        http_limits: Some(limits),
        ..AggregatorOptions::default()
    })
    .await?;
    Ok(Target {
        addr: aggregator.http_addr(),
        body_path: "/v1/orgs/acme/projects/payments/envs/prod/bundles".to_owned(),
        body_headers: format!("authorization: Bearer {}\r\n", aggregator.admin_token()),
        body_limit: 8 * 1024 * 1024,
        evicted_metric: "gait_aggregator_http_connections_evicted_total",
        _aggregator: aggregator,
        _agent: None,
    })
}

async fn agent_target(limits: Limits) -> Result<Target> {
    init_logs();
    let aggregator = spawn_aggregator(AggregatorOptions::default()).await?;
    let tenant = tenant("acme", "payments", "prod")?;
    let local_api = LocalApiConfig {
        listen: "127.0.0.1:0".to_owned(),
        max_connections: limits.max_connections,
        header_timeout_ms: millis(limits.header_timeout),
        body_timeout_ms: millis(limits.body_timeout),
        idle_timeout_ms: millis(limits.idle_timeout),
        max_requests_per_connection: limits.max_requests_per_connection,
        ..LocalApiConfig::default()
    };
    let agent = spawn_agent(
        &aggregator,
        &tenant,
        "agent-1",
        AgentOptions {
            local_api: Some(local_api),
            ..AgentOptions::default()
        },
    )
    .await?;
    let token = std::fs::read_to_string(agent.config().api_token_path())?;
    Ok(Target {
        addr: agent.local_api(),
        body_path: "/v1/records".to_owned(),
        body_headers: format!("authorization: Bearer {}\r\n", token.trim()),
        body_limit: 2 * 1024 * 1024 + 64 * 1024,
        evicted_metric: "gait_agent_http_connections_evicted_total",
        _aggregator: aggregator,
        _agent: Some(agent),
    })
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Reads one HTTP/1.1 response (head plus a `content-length` body). `None` when the server closed the
/// connection (EOF or reset) before a complete answer.
async fn read_response(stream: &mut TcpStream) -> Result<Option<String>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return Ok(Some(String::from_utf8_lossy(&buf).into_owned()));
            }
        }
        let read = tokio::time::timeout(PATIENCE, stream.read(&mut chunk))
            .await
            .context("no answer and no close within the patience")?;
        match read {
            Ok(0) | Err(_) => return Ok(None),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Waits for the server to close `stream` (EOF or reset), discarding what it sends first; returns that.
async fn wait_closed(stream: &mut (impl AsyncRead + Unpin)) -> Result<String> {
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let read = tokio::time::timeout(PATIENCE, stream.read(&mut chunk))
            .await
            .context("the server did not close the connection within the patience")?;
        match read {
            Ok(0) | Err(_) => return Ok(String::from_utf8_lossy(&out).into_owned()),
            Ok(n) => out.extend_from_slice(&chunk[..n]),
        }
    }
}

fn get_healthz(addr: SocketAddr, close: bool) -> String {
    let connection = if close { "close" } else { "keep-alive" };
    format!("GET /healthz HTTP/1.1\r\nhost: {addr}\r\nconnection: {connection}\r\n\r\n")
}

/// One `/healthz` on a fresh connection: true when it is answered 200.
async fn healthz_answers(addr: SocketAddr) -> Result<bool> {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return Ok(false);
    };
    if stream
        .write_all(get_healthz(addr, true).as_bytes())
        .await
        .is_err()
    {
        return Ok(false);
    }
    Ok(read_response(&mut stream)
        .await?
        .is_some_and(|r| r.starts_with("HTTP/1.1 200")))
}

/// A kept-alive connection the server has admitted (it answered one `/healthz` on it), then left idle. A
/// connection refused because a slot was still being released is retried.
async fn admitted_idle_connection(addr: SocketAddr) -> Result<TcpStream> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let mut stream = TcpStream::connect(addr).await?;
        stream
            .write_all(get_healthz(addr, false).as_bytes())
            .await?;
        if let Some(answer) = read_response(&mut stream).await? {
            ensure!(answer.starts_with("HTTP/1.1 200"), "{answer}");
            return Ok(stream);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("no connection admitted within the patience");
        }
        tokio::task::yield_now().await;
    }
}

async fn at_the_cap_the_longest_idle_connection_makes_room(target: Target) -> Result<()> {
    let addr = target.addr;
    let mut held = Vec::new();
    for _ in 0..CAP - 1 {
        held.push(admitted_idle_connection(addr).await?);
    }
    ensure!(
        healthz_answers(addr).await?,
        "below the cap the server keeps answering"
    );
    held.push(admitted_idle_connection(addr).await?);

    // At the cap (every timeout set to NEVER): a new client is still answered, because the connection idle
    // longest is closed to make room for it.
    ensure!(
        healthz_answers(addr).await?,
        "a new client at the cap of idle connections is answered"
    );
    let oldest = wait_closed(&mut held[0]).await?;
    ensure!(
        oldest.is_empty(),
        "the evicted connection gets no answer: {oldest}"
    );

    // The eviction is on /metrics for an operator to alert on.
    let mut stream = TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!("GET /metrics HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    let metrics = read_response(&mut stream).await?.unwrap_or_default();
    let evicted = metrics
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{} ", target.evicted_metric)))
        .and_then(|v| v.trim().parse::<u64>().ok());
    ensure!(
        evicted.is_some_and(|n| n >= 1),
        "{} not counted: {evicted:?}\n{metrics}",
        target.evicted_metric
    );
    Ok(())
}

async fn slow_header_is_closed(target: Target) -> Result<()> {
    let mut stream = TcpStream::connect(target.addr).await?;
    stream.write_all(b"GET /hea").await?;
    let answer = wait_closed(&mut stream).await?;
    ensure!(
        !answer.starts_with("HTTP/1.1 200"),
        "an unfinished request line is not answered: {answer}"
    );
    Ok(())
}

async fn unfinished_body_is_answered_408_and_closed(target: Target) -> Result<()> {
    let mut stream = TcpStream::connect(target.addr).await?;
    let head = format!(
        "POST {} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n{}content-length: {}\r\n\r\n",
        target.body_path,
        target.addr,
        target.body_headers,
        2 * 1024 * 1024
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(&[b' '; 1024]).await?;
    let answer = wait_closed(&mut stream).await?;
    ensure!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    Ok(())
}

async fn oversized_body_is_answered_413(target: Target) -> Result<()> {
    let stream = TcpStream::connect(target.addr).await?;
    let over = target.body_limit + 1024 * 1024;
    let head = format!(
        "POST {} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n{}content-length: {over}\r\n\r\n",
        target.body_path, target.addr, target.body_headers,
    );
    let (mut reader, mut writer) = stream.into_split();
    // The server stops reading at its limit, so the write may never finish: it runs beside the read, and
    // whatever it meets (a reset) is not the test's concern.
    let write = async move {
        let _ = writer.write_all(head.as_bytes()).await;
        let _ = writer.write_all(&vec![b' '; over]).await;
        std::future::pending::<()>().await;
    };
    let answer = tokio::select! {
        answer = wait_closed(&mut reader) => answer?,
        () = write => unreachable!("the write future never ends"),
    };
    ensure!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    Ok(())
}

async fn idle_keep_alive_is_closed(target: Target) -> Result<()> {
    let mut stream = TcpStream::connect(target.addr).await?;
    stream
        .write_all(get_healthz(target.addr, false).as_bytes())
        .await?;
    let answer = read_response(&mut stream).await?.context("first answer")?;
    ensure!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let rest = wait_closed(&mut stream).await?;
    ensure!(rest.is_empty(), "nothing more is sent: {rest}");
    Ok(())
}

fn short(f: impl FnOnce(&mut Limits)) -> Limits {
    let mut l = limits();
    f(&mut l);
    l
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregator_at_the_cap_of_idle_connections_closes_the_longest_idle_to_answer_a_new_client()
-> Result<()> {
    at_the_cap_the_longest_idle_connection_makes_room(aggregator_target(limits()).await?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_at_the_cap_of_idle_connections_closes_the_longest_idle_to_answer_a_new_client()
-> Result<()> {
    at_the_cap_the_longest_idle_connection_makes_room(agent_target(limits()).await?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregator_closes_a_slow_header_connection_after_the_header_timeout() -> Result<()> {
    let limits = short(|l| l.header_timeout = Duration::from_millis(500));
    slow_header_is_closed(aggregator_target(limits).await?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_closes_a_slow_header_connection_after_the_header_timeout() -> Result<()> {
    let limits = short(|l| l.header_timeout = Duration::from_millis(500));
    slow_header_is_closed(agent_target(limits).await?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregator_answers_an_unfinished_body_408_after_the_body_timeout() -> Result<()> {
    let limits = short(|l| l.body_timeout = Duration::from_millis(500));
    unfinished_body_is_answered_408_and_closed(aggregator_target(limits).await?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_answers_an_unfinished_body_408_after_the_body_timeout() -> Result<()> {
    let limits = short(|l| l.body_timeout = Duration::from_millis(500));
    unfinished_body_is_answered_408_and_closed(agent_target(limits).await?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregator_closes_an_idle_kept_alive_connection_after_the_idle_timeout() -> Result<()> {
    let limits = short(|l| l.idle_timeout = Duration::from_millis(500));
    idle_keep_alive_is_closed(aggregator_target(limits).await?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_closes_an_idle_kept_alive_connection_after_the_idle_timeout() -> Result<()> {
    let limits = short(|l| l.idle_timeout = Duration::from_millis(500));
    idle_keep_alive_is_closed(agent_target(limits).await?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregator_still_answers_a_body_over_its_limit_413() -> Result<()> {
    oversized_body_is_answered_413(aggregator_target(limits()).await?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_still_answers_a_body_over_its_limit_413() -> Result<()> {
    oversized_body_is_answered_413(agent_target(limits()).await?).await
}
