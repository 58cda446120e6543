//! Mutual-TLS handshake tests: real quinn endpoints on 127.0.0.1, real certificates from `pki` in a tempdir
//! (through the `gait-testkit` PKI fixtures), the real agent client configuration. Every accepted case must carry bytes that depend on the verified
//! identity; every refused case must carry none and must be reported by the server's accept path.
#![allow(clippy::disallowed_methods)] // tests spawn freely and read the clock

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use gait_aggregator::ingest::tickets::SessionTickets;
use gait_aggregator::ingest::tls::{self, RevocationSet, TransportTuning};
use gait_aggregator::metrics::Metrics;
use gait_aggregator::pki::identity::AgentIdentity;
use gait_aggregator::pki::{self, Validity};
use gait_testkit::{AgentCerts, PATIENCE, Pki};
use rcgen::SanType;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// Upper bound of one handshake or exchange: the suite's patience, since a loaded machine can stretch a
/// millisecond handshake into seconds.
const STEP: Duration = PATIENCE;
/// The agent's own keep-alive, so these handshakes run with the client settings the daemon uses.
const KEEP_ALIVE: Duration = gait_agent::daemon::KEEP_ALIVE;

/// What the server's accept loop saw for one connection attempt.
#[derive(Debug)]
enum Outcome {
    /// The handshake completed; `peer_identity` gave this.
    Accepted(Result<AgentIdentity, String>),
    /// The handshake failed.
    Refused(String),
}

struct Server {
    addr: SocketAddr,
    outcomes: mpsc::UnboundedReceiver<Outcome>,
    endpoint: quinn::Endpoint,
    task: JoinHandle<()>,
}

impl Server {
    /// Starts an endpoint that trusts agents of the CA in `client_ca_dir` and presents the server
    /// certificate of `server_dir`. An accepted agent reads one stream and gets back `agent_id:<request>`.
    fn start(client_ca_dir: &Path, server_dir: &Path, revoked: RevocationSet) -> Result<Self> {
        Self::start_with(client_ca_dir, server_dir, revoked, None)
    }

    /// [`Server::start`] handing out session tickets from `tickets`.
    fn start_with(
        client_ca_dir: &Path,
        server_dir: &Path,
        revoked: RevocationSet,
        tickets: Option<Arc<SessionTickets>>,
    ) -> Result<Self> {
        let config = tls::server_config(
            &client_ca_dir.join("ca.pem"),
            &server_dir.join("server.pem"),
            &server_dir.join("server.key"),
            revoked,
            &TransportTuning::default(),
            tickets,
        )?;
        let endpoint = quinn::Endpoint::server(config, (Ipv4Addr::LOCALHOST, 0).into())?;
        let addr = endpoint.local_addr()?;
        let (tx, outcomes) = mpsc::unbounded_channel();
        let task = tokio::spawn(spawn_accept_loop(endpoint.clone(), tx));
        Ok(Self {
            addr,
            outcomes,
            endpoint,
            task,
        })
    }

    async fn next_outcome(&mut self) -> Result<Outcome> {
        timeout(STEP, self.outcomes.recv())
            .await
            .context("server reported no outcome")?
            .ok_or_else(|| anyhow!("accept loop ended"))
    }

    async fn expect_refused(&mut self) -> Result<String> {
        match self.next_outcome().await? {
            Outcome::Refused(reason) => Ok(reason),
            Outcome::Accepted(identity) => bail!("server completed the handshake: {identity:?}"),
        }
    }

    async fn expect_accepted(&mut self) -> Result<AgentIdentity> {
        match self.next_outcome().await? {
            Outcome::Accepted(identity) => identity.map_err(|e| anyhow!("no identity: {e}")),
            Outcome::Refused(reason) => bail!("server refused: {reason}"),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.endpoint.close(0u32.into(), b"test over");
        self.task.abort();
    }
}

async fn spawn_accept_loop(endpoint: quinn::Endpoint, tx: mpsc::UnboundedSender<Outcome>) {
    while let Some(incoming) = endpoint.accept().await {
        let conn = match incoming.await {
            Ok(conn) => conn,
            Err(error) => {
                let _ = tx.send(Outcome::Refused(error.to_string()));
                continue;
            }
        };
        // A handshake that completes is reported as such even without an identity, and still answers,
        // so a permissive verifier fails the refusal tests on both sides.
        let identity = tls::peer_identity(&conn).map_err(|e| e.to_string());
        let agent_id = identity.as_ref().map_or_else(
            |_| "unidentified".to_owned(),
            |id| id.spiffe.agent_id.to_string(),
        );
        let _ = tx.send(Outcome::Accepted(identity));
        tokio::spawn(async move {
            if let Ok((mut send, mut recv)) = conn.accept_bi().await
                && let Ok(request) = recv.read_to_end(64).await
            {
                let mut reply = agent_id.into_bytes();
                reply.push(b':');
                reply.extend_from_slice(&request);
                let _ = send.write_all(&reply).await;
                let _ = send.finish();
            }
            conn.closed().await;
        });
    }
}

/// Connects with `config`, sends `ping` on one stream and returns the reply.
async fn exchange(config: quinn::ClientConfig, addr: SocketAddr) -> Result<Vec<u8>> {
    let endpoint = quinn::Endpoint::client((Ipv4Addr::LOCALHOST, 0).into())?;
    let result = timeout(STEP, async {
        let conn = endpoint.connect_with(config, addr, "localhost")?.await?;
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(b"ping").await?;
        send.finish()?;
        let reply = recv.read_to_end(256).await?;
        conn.close(0u32.into(), b"done");
        anyhow::Ok(reply)
    })
    .await
    .context("exchange timed out")
    .and_then(|r| r);
    endpoint.wait_idle().await;
    result
}

fn agent_config(dir: &Path) -> Result<quinn::ClientConfig> {
    Ok(gait_agent::tls::client_config(
        &dir.join("ca.pem"),
        &dir.join("agent.pem"),
        &dir.join("agent.key"),
        KEEP_ALIVE,
    )?)
}

fn init_pki(dir: &Path, trust_domain: &str) -> Result<()> {
    Pki::create(dir, trust_domain)?;
    Ok(())
}

fn issue(pki_dir: &Path, out: &Path, agent_id: &str, validity: Validity) -> Result<AgentCerts> {
    let tenant = gait_testkit::tenant("acme", "web", "prod")?;
    Ok(Pki::open(pki_dir).issue_agent_with(out, &tenant, agent_id, validity)?)
}

/// Issues a client certificate with arbitrary SANs from the CA in `pki_dir`, bypassing `issue_agent`'s
/// checks, to test what the handshake does with certificates our tool never writes.
fn issue_raw(pki_dir: &Path, out: &Path, sans: Vec<SanType>) -> Result<()> {
    Pki::open(pki_dir).issue_raw(out, sans)?;
    Ok(())
}

struct Fixture {
    _tmp: tempfile::TempDir,
    pki: PathBuf,
    root: PathBuf,
}

fn fixture() -> Result<Fixture> {
    let tmp = tempfile::tempdir()?;
    let root = tmp.path().to_owned();
    let pki = root.join("pki");
    init_pki(&pki, "gait.local")?;
    Ok(Fixture {
        _tmp: tmp,
        pki,
        root,
    })
}

/// Runs a refused case: no reply bytes on the client, a refusal on the server.
async fn assert_refused(server: &mut Server, config: quinn::ClientConfig) -> Result<String> {
    let result = exchange(config, server.addr).await;
    if let Ok(reply) = &result {
        bail!(
            "refused client exchanged data: {:?}",
            String::from_utf8_lossy(reply)
        );
    }
    server.expect_refused().await
}

#[tokio::test]
async fn valid_agent_is_accepted_and_identified_by_its_certificate() -> Result<()> {
    let fx = fixture()?;
    let agent_dir = fx.root.join("agent");
    let issued = issue(&fx.pki, &agent_dir, "ci-runner-7", Validity::days(30))?;
    let mut server = Server::start(&fx.pki, &fx.pki, RevocationSet::new())?;

    let reply = exchange(agent_config(&agent_dir)?, server.addr).await?;
    assert_eq!(reply, b"ci-runner-7:ping");

    let identity = server.expect_accepted().await?;
    assert_eq!(identity.spiffe.trust_domain.as_str(), "gait.local");
    assert_eq!(identity.tenant().to_string(), "acme/web/prod");
    assert_eq!(identity.spiffe.agent_id, "ci-runner-7");
    assert_eq!(identity.uri(), issued.uri);
    assert_eq!(identity.serial.as_str(), issued.serial_hex);
    assert_eq!(
        identity.serial.as_str(),
        pki::cert_serial_hex(&issued.cert)?
    );
    assert_eq!(
        Some(identity.not_after_unix),
        issued.not_after.map(|t| t.unix_timestamp())
    );
    Ok(())
}

#[tokio::test]
async fn client_without_certificate_is_refused() -> Result<()> {
    let fx = fixture()?;
    let mut server = Server::start(&fx.pki, &fx.pki, RevocationSet::new())?;

    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(fx.pki.join("ca.pem"))? {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![tls::ALPN.to_vec()];
    let config = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls)?,
    ));

    assert_refused(&mut server, config).await?;
    Ok(())
}

#[tokio::test]
async fn certificate_from_another_ca_is_refused() -> Result<()> {
    let fx = fixture()?;
    let other_pki = fx.root.join("other-pki");
    init_pki(&other_pki, "gait.local")?;
    let agent_dir = fx.root.join("agent");
    issue(&other_pki, &agent_dir, "intruder", Validity::days(30))?;
    // The agent trusts the real server, but its own certificate comes from the other CA.
    std::fs::copy(fx.pki.join("ca.pem"), agent_dir.join("ca.pem"))?;
    let mut server = Server::start(&fx.pki, &fx.pki, RevocationSet::new())?;

    assert_refused(&mut server, agent_config(&agent_dir)?).await?;
    Ok(())
}

#[tokio::test]
async fn revoked_serial_is_refused_at_the_handshake_even_after_earlier_success() -> Result<()> {
    let fx = fixture()?;
    let agent_dir = fx.root.join("agent");
    let issued = issue(&fx.pki, &agent_dir, "lost-laptop", Validity::days(30))?;
    let revoked = RevocationSet::new();
    let mut server = Server::start(&fx.pki, &fx.pki, revoked.clone())?;

    let reply = exchange(agent_config(&agent_dir)?, server.addr).await?;
    assert_eq!(reply, b"lost-laptop:ping");
    server.expect_accepted().await?;

    // Revoke through a clone, in the colon-separated uppercase form an operator might paste.
    let pasted = issued
        .serial_hex
        .as_bytes()
        .chunks(2)
        .map(|pair| String::from_utf8_lossy(pair).to_uppercase())
        .collect::<Vec<_>>()
        .join(":");
    assert!(revoked.insert(&pasted));

    let reason = assert_refused(&mut server, agent_config(&agent_dir)?).await?;
    assert!(reason.to_lowercase().contains("revoked"), "{reason}");
    Ok(())
}

#[tokio::test]
async fn expired_certificate_is_refused() -> Result<()> {
    let fx = fixture()?;
    let agent_dir = fx.root.join("agent");
    let now = time::OffsetDateTime::now_utc();
    let validity = Validity::between(
        now - time::Duration::days(10),
        now - time::Duration::days(1),
    );
    issue(&fx.pki, &agent_dir, "stale", validity)?;
    let mut server = Server::start(&fx.pki, &fx.pki, RevocationSet::new())?;

    let reason = assert_refused(&mut server, agent_config(&agent_dir)?).await?;
    assert!(reason.to_lowercase().contains("expired"), "{reason}");
    Ok(())
}

#[tokio::test]
async fn certificate_without_agent_uri_is_refused() -> Result<()> {
    let fx = fixture()?;
    let agent_dir = fx.root.join("agent");
    issue_raw(
        &fx.pki,
        &agent_dir,
        vec![SanType::DnsName("agent.example".try_into()?)],
    )?;
    let mut server = Server::start(&fx.pki, &fx.pki, RevocationSet::new())?;

    assert_refused(&mut server, agent_config(&agent_dir)?).await?;
    Ok(())
}

#[tokio::test]
async fn certificate_with_two_agent_uris_is_refused() -> Result<()> {
    let fx = fixture()?;
    let agent_dir = fx.root.join("agent");
    let uri = |agent: &str| {
        format!("spiffe://gait.local/org/acme/project/web/env/prod/agent/{agent}")
            .try_into()
            .map(SanType::URI)
    };
    issue_raw(&fx.pki, &agent_dir, vec![uri("a")?, uri("b")?])?;
    let mut server = Server::start(&fx.pki, &fx.pki, RevocationSet::new())?;

    assert_refused(&mut server, agent_config(&agent_dir)?).await?;
    Ok(())
}

#[tokio::test]
async fn agent_uri_in_a_foreign_trust_domain_is_refused() -> Result<()> {
    let fx = fixture()?;
    let agent_dir = fx.root.join("agent");
    let uri = "spiffe://evil.example/org/acme/project/web/env/prod/agent/a".try_into()?;
    issue_raw(&fx.pki, &agent_dir, vec![SanType::URI(uri)])?;
    let mut server = Server::start(&fx.pki, &fx.pki, RevocationSet::new())?;

    assert_refused(&mut server, agent_config(&agent_dir)?).await?;
    Ok(())
}

#[tokio::test]
async fn agent_refuses_a_server_certificate_from_a_foreign_ca() -> Result<()> {
    let fx = fixture()?;
    let rogue_pki = fx.root.join("rogue-pki");
    init_pki(&rogue_pki, "gait.local")?;
    let agent_dir = fx.root.join("agent");
    issue(&fx.pki, &agent_dir, "careful", Validity::days(30))?;
    // The rogue server would accept the agent (it trusts the real CA) but presents its own certificate.
    let mut server = Server::start(&fx.pki, &rogue_pki, RevocationSet::new())?;

    let endpoint = quinn::Endpoint::client((Ipv4Addr::LOCALHOST, 0).into())?;
    let connecting = endpoint.connect_with(agent_config(&agent_dir)?, server.addr, "localhost")?;
    let handshake = timeout(STEP, connecting).await?;
    let Err(error) = handshake else {
        bail!("agent completed a handshake with a rogue server");
    };
    assert!(
        error.to_string().to_lowercase().contains("certificate"),
        "{error}"
    );
    server.expect_refused().await?;
    Ok(())
}

fn tickets_for(pki_dir: &Path, secret: [u8; 32]) -> Result<(Arc<SessionTickets>, Arc<Metrics>)> {
    let ca = CertificateDer::from_pem_file(pki_dir.join("ca.pem"))?;
    let metrics = Arc::new(Metrics::new());
    Ok((SessionTickets::new(&secret, ca.as_ref(), &metrics), metrics))
}

#[tokio::test]
async fn a_restarted_server_with_the_same_ticket_secret_resumes_the_agent_session_with_its_identity()
-> Result<()> {
    let f = fixture()?;
    let agent_dir = f.root.join("agent");
    issue(&f.pki, &agent_dir, "edge-1", Validity::days(30))?;
    // One agent process: one client configuration, one session cache, across both servers.
    let config = agent_config(&agent_dir)?;

    let (tickets, _) = tickets_for(&f.pki, [1; 32])?;
    let mut first =
        Server::start_with(&f.pki, &f.pki, RevocationSet::new(), Some(tickets.clone()))?;
    assert_eq!(exchange(config.clone(), first.addr).await?, b"edge-1:ping");
    first.expect_accepted().await?;
    assert_eq!(
        (tickets.issued(), tickets.resumed()),
        (1, 0),
        "a full handshake issues one ticket"
    );
    drop(first);

    // "Restart": new process state (fresh ticketer and metrics), same secret and CA, another port.
    let (tickets, metrics) = tickets_for(&f.pki, [1; 32])?;
    let mut second =
        Server::start_with(&f.pki, &f.pki, RevocationSet::new(), Some(tickets.clone()))?;
    assert_eq!(exchange(config.clone(), second.addr).await?, b"edge-1:ping");
    let identity = second.expect_accepted().await?;
    assert_eq!(
        (
            identity.tenant().org.as_str(),
            identity.spiffe.agent_id.as_str()
        ),
        ("acme", "edge-1"),
        "the resumed session carries the identity of the certificate verified before"
    );
    assert_eq!(tickets.resumed(), 1, "the second connection must resume");
    assert!(
        metrics
            .render()
            .contains("gait_aggregator_tls_session_tickets_total{outcome=\"resumed\"} 1"),
        "{}",
        metrics.render()
    );
    drop(second);

    // A server with another secret cannot read the ticket: it is refused and a full handshake follows.
    let (other, _) = tickets_for(&f.pki, [2; 32])?;
    let mut third = Server::start_with(&f.pki, &f.pki, RevocationSet::new(), Some(other.clone()))?;
    assert_eq!(exchange(config.clone(), third.addr).await?, b"edge-1:ping");
    third.expect_accepted().await?;
    assert_eq!((other.resumed(), other.refused()), (0, 1));
    Ok(())
}

#[tokio::test]
async fn a_resumed_session_carries_the_serial_the_post_handshake_revocation_check_needs()
-> Result<()> {
    // The verifier does not run on resumption, so revocation and expiry are re-checked after every handshake
    // (ingest.rs; end to end in tests/tests/security.rs). That only works if a resumed session carries the
    // serial of the certificate verified before.
    let f = fixture()?;
    let agent_dir = f.root.join("agent");
    let issued = issue(&f.pki, &agent_dir, "edge-1", Validity::days(30))?;
    let config = agent_config(&agent_dir)?;
    let (tickets, _) = tickets_for(&f.pki, [3; 32])?;
    let mut first = Server::start_with(&f.pki, &f.pki, RevocationSet::new(), Some(tickets))?;
    exchange(config.clone(), first.addr).await?;
    first.expect_accepted().await?;
    drop(first);

    let (tickets, _) = tickets_for(&f.pki, [3; 32])?;
    let mut second =
        Server::start_with(&f.pki, &f.pki, RevocationSet::new(), Some(tickets.clone()))?;
    exchange(config.clone(), second.addr).await?;
    let identity = second.expect_accepted().await?;
    assert_eq!(tickets.resumed(), 1);
    assert_eq!(identity.serial.as_str(), issued.serial_hex);
    Ok(())
}
