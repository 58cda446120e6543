//! Admission control at the QUIC edge (`ingest::admission`), on a running aggregator with real quinn endpoints
//! and certificates: with `max_handshakes_in_flight` reached, a further attempt waits for a slot and gets in when
//! one frees; one that waited too long is refused with `CONNECTION_REFUSED` (which the agent reads as "busy"),
//! counted.
//!
//! The slot is held deterministically: the first client's server-certificate check blocks until the test lets
//! it go, so the aggregator's half of that handshake is in flight for exactly as long as the test says.
#![allow(clippy::disallowed_methods)] // tests spawn freely and read the clock

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use gait_aggregator::app::{self, ServeConfig};
use gait_aggregator::pki::identity::AgentToIssue;
use gait_aggregator::pki::{self, Validity};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

/// Generous bound for one step on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(60);

/// The series these tests read.
const REFUSED: &str = "gait_aggregator_connections_refused_total{stage=\"admission\"}";
const REPEATS: &str = "gait_aggregator_connections_refused_total{stage=\"repeat\"}";
const ABANDONED: &str = "gait_aggregator_connections_refused_total{stage=\"handshake\"}";
const WAITING: &str = "gait_aggregator_handshakes_waiting";
const IN_FLIGHT: &str = "gait_aggregator_handshakes_in_flight";
const RETRIES: &str = "gait_aggregator_handshake_retries_total";

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    Ok(CertificateDer::pem_file_iter(path)?.collect::<Result<_, _>>()?)
}

/// The deployment's server-certificate check, made to wait: it says when it was reached, then blocks until
/// released.
#[derive(Debug)]
struct HeldVerifier {
    inner: Arc<dyn ServerCertVerifier>,
    reached: Mutex<Option<mpsc::Sender<()>>>,
    release: Mutex<mpsc::Receiver<()>>,
}

impl ServerCertVerifier for HeldVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(tx) = self.reached.lock().unwrap().take() {
            let _ = tx.send(());
        }
        let _ = self.release.lock().unwrap().recv_timeout(PATIENCE * 2);
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The agent's certificate and the deployment CA, with the server check held by `verifier`.
fn held_client(agent_dir: &Path, verifier: Arc<HeldVerifier>) -> Result<quinn::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key = PrivateKeyDer::from_pem_file(agent_dir.join("agent.key"))?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(certs(&agent_dir.join("agent.pem"))?, key)?;
    tls.alpn_protocols = vec![gait_wire::ALPN.to_vec()];
    Ok(quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls)?,
    )))
}

fn webpki_verifier(agent_dir: &Path) -> Result<Arc<dyn ServerCertVerifier>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs(&agent_dir.join("ca.pem"))? {
        roots.add(cert)?;
    }
    Ok(rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()?)
}

async fn dial(
    config: quinn::ClientConfig,
    addr: SocketAddr,
) -> Result<Result<quinn::Connection, quinn::ConnectionError>> {
    let endpoint = quinn::Endpoint::client((Ipv4Addr::LOCALHOST, 0).into())?;
    let connecting = endpoint.connect_with(config, addr, "localhost")?;
    timeout(PATIENCE, connecting)
        .await
        .context("handshake did not end")
}

/// The value of one series in the aggregator's metrics text (0 while it does not exist).
fn series(text: &str, series: &str) -> u64 {
    gait_testkit::metric_series(text, series).map_or(0, |v| v as u64)
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) -> Result<()> {
    let started = std::time::Instant::now();
    while !cond() {
        ensure!(started.elapsed() < PATIENCE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Starts a handshake that takes one slot and keeps it until the returned sender is used: the client's
/// server-certificate check waits, on a runtime of its own so the wait blocks nothing of the aggregator's.
/// Returns once the aggregator has sent its half (the check was reached).
async fn hold_a_slot(agent_dir: &Path, addr: SocketAddr) -> Result<HeldSlot> {
    let (reached_tx, reached_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel();
    let held = Arc::new(HeldVerifier {
        inner: webpki_verifier(agent_dir)?,
        reached: Mutex::new(Some(reached_tx)),
        release: Mutex::new(release_rx),
    });
    let held_config = held_client(agent_dir, held)?;
    let first = std::thread::spawn(move || -> Result<bool> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let conn = dial(held_config, addr).await?;
            Ok(conn.is_ok())
        })
    });
    tokio::task::spawn_blocking(move || reached_rx.recv_timeout(PATIENCE))
        .await?
        .context("the held handshake never reached the server-certificate check")?;
    Ok(HeldSlot {
        client: first,
        release: release_tx,
    })
}

/// A handshake holding a slot ([`hold_a_slot`]).
struct HeldSlot {
    client: std::thread::JoinHandle<Result<bool>>,
    release: mpsc::Sender<()>,
}

impl HeldSlot {
    /// Lets the client's certificate check return; whether its handshake then completed.
    fn release(self) -> Result<bool> {
        self.release.send(())?;
        self.client
            .join()
            .map_err(|_| anyhow::anyhow!("client thread panicked"))?
    }
}

/// Dials with `config` and expects `CONNECTION_REFUSED`, which the agent reads as "busy"; `accepted` says what
/// an accepted handshake would have meant.
async fn expect_refused(
    config: quinn::ClientConfig,
    addr: SocketAddr,
    accepted: &str,
) -> Result<()> {
    match dial(config, addr).await? {
        Ok(_) => bail!("{accepted}"),
        Err(e) => ensure!(
            gait_agent::daemon::is_refused(&e),
            "expected CONNECTION_REFUSED, got {e}"
        ),
    }
    Ok(())
}

/// Stops the aggregator; its tasks must drain cleanly.
async fn stop(running: app::Running) -> Result<()> {
    running.tasks().token().cancel();
    let drain = running.wait(PATIENCE).await;
    ensure!(drain.failure.is_none(), "unclean drain: {drain:?}");
    Ok(())
}

/// A running aggregator taking at most `limit` handshakes at once, and one agent's certificate for it. A
/// handshake may hold its slot as long as the test says (`handshake_deadline`): the held one must not be let go
/// by the aggregator while a loaded machine runs the test.
async fn aggregator(tmp: &Path, limit: usize) -> Result<(app::Running, std::path::PathBuf)> {
    aggregator_with(tmp, limit, PATIENCE * 4, PATIENCE * 4).await
}

/// As [`aggregator`], with the handshake deadline and the longest wait for a slot given.
async fn aggregator_with(
    tmp: &Path,
    limit: usize,
    handshake_deadline: Duration,
    queue_wait: Duration,
) -> Result<(app::Running, std::path::PathBuf)> {
    let mut config = ServeConfig::embedded(tmp.join("agg"));
    config.quic_listen = (Ipv4Addr::LOCALHOST, 0).into();
    config.http_listen = (Ipv4Addr::LOCALHOST, 0).into();
    config.max_handshakes_in_flight = limit;
    config.handshake_deadline = handshake_deadline;
    config.handshake_queue_wait = queue_wait;
    let running = app::start(config, gait_runtime::Tasks::new(CancellationToken::new())).await?;
    let agent_dir = tmp.join("agent");
    let id = AgentToIssue::parse("", "acme", "web", "prod", "edge")?;
    pki::issue_agent(&tmp.join("agg/pki"), &id, &agent_dir, Validity::days(30))?;
    Ok((running, agent_dir))
}

fn agent_config(agent_dir: &Path) -> Result<quinn::ClientConfig> {
    Ok(gait_agent::tls::client_config(
        &agent_dir.join("ca.pem"),
        &agent_dir.join("agent.pem"),
        &agent_dir.join("agent.key"),
        Duration::from_secs(5),
    )?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_half_the_bound_an_unvalidated_address_gets_a_retry_and_then_gets_in() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let (running, agent_dir) = aggregator(tmp.path(), 2).await?;
    let metrics = running.ingest.metrics.clone();
    let held = hold_a_slot(&agent_dir, running.quic_addr).await?;
    // One of two slots taken: the next attempt must first prove its address (a stateless Retry, which the
    // client answers by itself), then it is admitted.
    let conn = dial(agent_config(&agent_dir)?, running.quic_addr)
        .await?
        .context("a validated attempt under the bound was refused")?;
    let text = metrics.render();
    ensure!(
        // A loaded machine may let the client retransmit its first Initial before the Retry reaches it: each
        // copy gets its own (stateless) Retry.
        series(&text, RETRIES) >= 1,
        "no Retry was sent:\n{text}"
    );
    ensure!(series(&text, REFUSED) == 0);
    ensure!(held.release()?, "the held handshake failed once released");
    conn.close(0u32.into(), b"done");
    stop(running).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_bound_an_attempt_that_waited_too_long_is_refused() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let max_wait = gait_aggregator::ingest::admission::MAX_WAIT;
    let (running, agent_dir) = aggregator_with(tmp.path(), 1, PATIENCE * 4, max_wait).await?;
    let addr = running.quic_addr;
    let metrics = running.ingest.metrics.clone();

    // Client 1 takes the only slot and holds it.
    let held = hold_a_slot(&agent_dir, addr).await?;
    ensure!(
        series(&metrics.render(), IN_FLIGHT) == 1,
        "one handshake should be in flight:\n{}",
        metrics.render()
    );

    // Client 2, the agent's own client configuration: it validates its address (Retry), waits for a slot
    // that does not free, and is refused once it waited its time: CONNECTION_REFUSED, read as "busy", not a
    // handshake timeout.
    let started = std::time::Instant::now();
    expect_refused(
        agent_config(&agent_dir)?,
        addr,
        "a handshake beyond the bound was accepted",
    )
    .await?;
    ensure!(
        started.elapsed() >= max_wait,
        "refused after {:?}, before it waited its time",
        started.elapsed()
    );
    // The metrics follow the refusal packet (the accept loop updates them once it is sent): wait for them.
    // At least one refusal: the client's first retransmission of its Initial comes due (about 1 s: three times
    // the initial RTT estimate) just as the wait ends, and a copy that crosses the refusal arrives as a new
    // attempt from a validated address, which waits and is refused in its turn (a CI run waited in vain for
    // exactly one). Nothing may be left waiting once that is over.
    wait_for("the refusal counted and nothing left waiting", || {
        let text = metrics.render();
        series(&text, REFUSED) >= 1 && series(&text, WAITING) == 0
    })
    .await?;
    // Another failure is not read as "busy".
    ensure!(!gait_agent::daemon::is_refused(
        &quinn::ConnectionError::TimedOut
    ));
    held.release()?;
    stop(running).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_bound_an_attempt_waits_and_gets_the_slot_when_it_frees() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    // Waiting as long as the test needs: the machine may be loaded.
    let (running, agent_dir) = aggregator(tmp.path(), 1).await?;
    let addr = running.quic_addr;
    let metrics = running.ingest.metrics.clone();
    let held = hold_a_slot(&agent_dir, addr).await?;
    let second = tokio::spawn(dial(agent_config(&agent_dir)?, addr));
    wait_for("the second attempt to wait for a slot", || {
        series(&metrics.render(), WAITING) == 1
    })
    .await?;
    let first_ok = held.release()?;
    ensure!(first_ok, "the held handshake failed once released");
    let conn = second
        .await??
        .context("the waiting attempt was refused though the slot freed")?;
    wait_for("nothing left waiting", || {
        series(&metrics.render(), WAITING) == 0
    })
    .await?;
    let text = metrics.render();
    ensure!(
        series(&text, REFUSED) == 0,
        "an admitted attempt was counted as refused:\n{text}"
    );
    conn.close(0u32.into(), b"done");
    stop(running).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_nobody_finishes_gives_its_slot_back_at_the_deadline() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let (running, agent_dir) =
        aggregator_with(tmp.path(), 1, Duration::from_millis(500), PATIENCE * 4).await?;
    let metrics = running.ingest.metrics.clone();
    // A client that starts a handshake and stops answering (its certificate check never returns in time).
    let held = hold_a_slot(&agent_dir, running.quic_addr).await?;
    // The aggregator gives up on it at the deadline: the slot frees and the abandonment is counted, with the
    // client still silent.
    wait_for("the abandoned handshake to give its slot back", || {
        let text = metrics.render();
        series(&text, IN_FLIGHT) == 0 && series(&text, ABANDONED) == 1
    })
    .await?;
    // The slot is usable again at once.
    let conn = dial(agent_config(&agent_dir)?, running.quic_addr)
        .await?
        .context("refused though the abandoned handshake's slot was freed")?;
    // (The client may still count its own half as finished: TLS 1.3 lets it, the aggregator's side is gone.)
    held.release()?;
    conn.close(0u32.into(), b"done");
    stop(running).await?;
    Ok(())
}

/// A UDP relay between one client and the aggregator that keeps what the client sent: the aggregator sees every
/// datagram from the relay's address, and the test can send a copy of the client's last one again, as a
/// retransmission that crossed the aggregator's answer would arrive.
struct Relay {
    addr: SocketAddr,
    last_from_client: Arc<Mutex<Option<Vec<u8>>>>,
    socket: Arc<tokio::net::UdpSocket>,
    server: SocketAddr,
}

impl Relay {
    async fn start(server: SocketAddr) -> Result<Relay> {
        let socket = Arc::new(tokio::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?);
        let addr = socket.local_addr()?;
        let last_from_client = Arc::new(Mutex::new(None));
        let (sock, last) = (socket.clone(), last_from_client.clone());
        tokio::spawn(async move {
            let mut client = None;
            let mut buf = vec![0u8; 65_536];
            while let Ok((n, from)) = sock.recv_from(&mut buf).await {
                if from == server {
                    if let Some(client) = client {
                        let _ = sock.send_to(&buf[..n], client).await;
                    }
                } else {
                    client = Some(from);
                    *last.lock().unwrap() = Some(buf[..n].to_vec());
                    let _ = sock.send_to(&buf[..n], server).await;
                }
            }
        });
        Ok(Relay {
            addr,
            last_from_client,
            socket,
            server,
        })
    }

    /// Sends the client's last datagram to the aggregator once more.
    async fn repeat_last(&self) -> Result<()> {
        let last = self
            .last_from_client
            .lock()
            .unwrap()
            .clone()
            .context("the client sent nothing")?;
        self.socket.send_to(&last, self.server).await?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_of_a_refused_attempt_is_refused_again_without_queueing() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let max_wait = Duration::from_millis(300);
    let (running, agent_dir) = aggregator_with(tmp.path(), 1, PATIENCE * 4, max_wait).await?;
    let metrics = running.ingest.metrics.clone();
    let held = hold_a_slot(&agent_dir, running.quic_addr).await?;

    // The second client, through the relay: retried, queued, refused once it waited its time.
    let relay = Relay::start(running.quic_addr).await?;
    expect_refused(
        agent_config(&agent_dir)?,
        relay.addr,
        "a handshake beyond the bound was accepted",
    )
    .await?;
    wait_for("the refusal counted and nothing waiting", || {
        let text = metrics.render();
        series(&text, REFUSED) >= 1 && series(&text, WAITING) == 0
    })
    .await?;
    // (A retransmission of the client's own may already have come back as a repeat.)
    let (refused_before, repeat_before) = {
        let text = metrics.render();
        (series(&text, REFUSED), series(&text, REPEATS))
    };

    // A copy of its Initial (the one carrying the Retry token) arrives after the refusal: quinn sees a new
    // attempt from a validated address. It is refused again at once, not queued for a slot it would hold with
    // nobody at the other end.
    relay.repeat_last().await?;
    wait_for("the copy to be answered or queued", || {
        let text = metrics.render();
        series(&text, REPEATS) > repeat_before
            || series(&text, WAITING) >= 1
            || series(&text, REFUSED) > refused_before
    })
    .await?;
    let text = metrics.render();
    ensure!(
        series(&text, REPEATS) > repeat_before
            && series(&text, WAITING) == 0
            && series(&text, REFUSED) == refused_before,
        "the copy was queued as a new attempt instead of refused as a repeat:\n{text}"
    );

    held.release()?;
    stop(running).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_queue_full_a_newcomer_is_refused_at_once_without_a_retry() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    // One slot, so the queue holds WAITING_PER_SLOT attempts; they wait as long as the test needs.
    let (running, agent_dir) = aggregator(tmp.path(), 1).await?;
    let addr = running.quic_addr;
    let metrics = running.ingest.metrics.clone();
    let queue = gait_aggregator::ingest::admission::WAITING_PER_SLOT as u64;
    let held = hold_a_slot(&agent_dir, addr).await?;

    // Fill the queue: each attempt is retried (its address validated), then waits.
    let mut queued = Vec::new();
    for _ in 0..queue {
        queued.push(tokio::spawn(dial(agent_config(&agent_dir)?, addr)));
    }
    wait_for("the queue to fill", || {
        series(&metrics.render(), WAITING) == queue
    })
    .await?;
    let retries_before = series(&metrics.render(), RETRIES);

    // A newcomer from an address not validated yet: refused with one packet, no Retry round trip first.
    expect_refused(
        agent_config(&agent_dir)?,
        addr,
        "an attempt beyond a full queue was accepted",
    )
    .await?;
    let text = metrics.render();
    ensure!(
        series(&text, REFUSED) >= 1 && series(&text, RETRIES) == retries_before,
        "the newcomer was retried before it was refused, or not counted:\n{text}"
    );

    // The queued attempts get in one by one once the slot frees.
    held.release()?;
    for attempt in queued {
        let conn = attempt
            .await??
            .context("a queued attempt was refused though slots freed")?;
        conn.close(0u32.into(), b"done");
    }
    stop(running).await?;
    Ok(())
}
