//! Version skew is refused at the handshake: the ALPN changes with the protocol version (`gait-fleet/3` now),
//! so a peer that offers only `gait-fleet/1` shares no application protocol with the other side. Real quinn
//! endpoints on 127.0.0.1 with the aggregator's own server TLS configuration, the agent's own client
//! configuration and certificates from `pki` in a tempdir.
#![allow(clippy::disallowed_methods)] // tests spawn freely and read the clock

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use gait_aggregator::app::{self, ServeConfig};
use gait_aggregator::ingest::is_version_skew;
use gait_aggregator::ingest::tls::{self, RevocationSet, TransportTuning};
use gait_aggregator::pki::identity::AgentToIssue;
use gait_aggregator::pki::{self, InitOptions, Validity};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

/// Generous bound for one handshake on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(60);
const OLD_ALPN: &[u8] = b"gait-fleet/1";

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    Ok(CertificateDer::pem_file_iter(path)?.collect::<Result<_, _>>()?)
}

/// A CA, its server certificate, and one agent certificate under `root/agent`.
fn fixture(root: &Path) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    let pki_dir = root.join("pki");
    pki::init(&pki_dir, &InitOptions::default())?;
    let agent_dir = root.join("agent");
    let id = AgentToIssue::parse("", "acme", "web", "prod", "edge")?;
    pki::issue_agent(&pki_dir, &id, &agent_dir, Validity::days(30))?;
    Ok((pki_dir, agent_dir))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// An agent's client configuration (its certificate, the deployment CA) offering only `alpn`.
fn client_offering(agent_dir: &Path, alpn: &[u8]) -> Result<quinn::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs(&agent_dir.join("ca.pem"))? {
        roots.add(cert)?;
    }
    let key = PrivateKeyDer::from_pem_file(agent_dir.join("agent.key"))?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs(&agent_dir.join("agent.pem"))?, key)?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    Ok(quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls)?,
    )))
}

/// A server with the deployment's server certificate speaking only `gait-fleet/1` (an old aggregator).
fn old_server(pki_dir: &Path) -> Result<quinn::Endpoint> {
    let key = PrivateKeyDer::from_pem_file(pki_dir.join("server.key"))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(certs(&pki_dir.join("server.pem"))?, key)?;
    tls.alpn_protocols = vec![OLD_ALPN.to_vec()];
    let config = quinn::ServerConfig::with_crypto(Arc::new(
        quinn::crypto::rustls::QuicServerConfig::try_from(tls)?,
    ));
    Ok(quinn::Endpoint::server(
        config,
        (Ipv4Addr::LOCALHOST, 0).into(),
    )?)
}

/// The aggregator's own QUIC server configuration on an ephemeral port.
fn aggregator_server(pki_dir: &Path) -> Result<quinn::Endpoint> {
    let config = tls::server_config(
        &pki_dir.join("ca.pem"),
        &pki_dir.join("server.pem"),
        &pki_dir.join("server.key"),
        RevocationSet::new(),
        &TransportTuning::default(),
        None,
    )?;
    Ok(quinn::Endpoint::server(
        config,
        (Ipv4Addr::LOCALHOST, 0).into(),
    )?)
}

/// Dials `addr` with `config`; returns the handshake result.
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

/// The server side of the next handshake.
async fn accept(
    endpoint: &quinn::Endpoint,
) -> Result<Result<quinn::Connection, quinn::ConnectionError>> {
    let incoming = timeout(PATIENCE, endpoint.accept())
        .await
        .context("no connection attempt arrived")?
        .context("endpoint closed")?;
    timeout(PATIENCE, incoming)
        .await
        .context("server handshake did not end")
}

#[tokio::test]
async fn the_aggregator_refuses_a_client_offering_only_gait_fleet_1() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let (pki_dir, agent_dir) = fixture(tmp.path())?;
    let server = aggregator_server(&pki_dir)?;
    let addr = server.local_addr()?;

    // Control: the same certificate with today's ALPN completes the handshake.
    let (client, accepted) = tokio::join!(
        dial(client_offering(&agent_dir, gait_wire::ALPN)?, addr),
        accept(&server)
    );
    ensure!(
        client?.is_ok() && accepted?.is_ok(),
        "a current-version client was refused"
    );

    let (client, refused) = tokio::join!(
        dial(client_offering(&agent_dir, OLD_ALPN)?, addr),
        accept(&server)
    );
    let client_err = match client? {
        Ok(_) => bail!("a gait-fleet/1 client completed the handshake"),
        Err(e) => e,
    };
    let server_err = match refused? {
        Ok(_) => bail!("the aggregator accepted a gait-fleet/1 client"),
        Err(e) => e,
    };
    // Both sides see "no application protocol", which ingest reports as version skew (metric stage
    // `version`, a WARN naming the ALPN it speaks) and the agent logs at ERROR naming both versions.
    ensure!(is_version_skew(&server_err), "server side: {server_err}");
    ensure!(is_version_skew(&client_err), "client side: {client_err}");
    ensure!(
        gait_agent::tls::is_version_skew(&client_err),
        "agent predicate: {client_err}"
    );
    ensure!(
        client_err.to_string().contains("120"),
        "client error names no TLS alert: {client_err}"
    );
    server.close(0u32.into(), b"done");
    Ok(())
}

#[tokio::test]
async fn the_agent_recognises_an_aggregator_speaking_only_gait_fleet_1() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let (pki_dir, agent_dir) = fixture(tmp.path())?;
    let server = old_server(&pki_dir)?;
    let addr = server.local_addr()?;
    // The agent's real client configuration (the current ALPN only).
    let config = gait_agent::tls::client_config(
        &agent_dir.join("ca.pem"),
        &agent_dir.join("agent.pem"),
        &agent_dir.join("agent.key"),
        Duration::from_secs(5),
    )?;
    let (client, refused) = tokio::join!(dial(config, addr), accept(&server));
    ensure!(
        refused?.is_err(),
        "the old server accepted a current-version agent"
    );
    let err = match client? {
        Ok(_) => bail!("a current-version agent completed a handshake with a gait-fleet/1 server"),
        Err(e) => e,
    };
    ensure!(gait_agent::tls::is_version_skew(&err), "agent side: {err}");
    ensure!(is_version_skew(&err), "aggregator predicate: {err}");
    // Another handshake failure is not mistaken for version skew.
    let closed = quinn::ConnectionError::TimedOut;
    ensure!(!gait_agent::tls::is_version_skew(&closed) && !is_version_skew(&closed));
    server.close(0u32.into(), b"done");
    Ok(())
}

/// The value of one series in the aggregator's metrics text (0 while it does not exist).
fn series(text: &str, series: &str) -> u64 {
    gait_testkit::metric_series(text, series).map_or(0, |v| v as u64)
}

#[tokio::test]
async fn the_running_aggregator_counts_a_gait_fleet_1_client_as_version_skew_and_still_drains_cleanly()
-> Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut config = ServeConfig::embedded(tmp.path().join("agg"));
    config.quic_listen = (Ipv4Addr::LOCALHOST, 0).into();
    config.http_listen = (Ipv4Addr::LOCALHOST, 0).into();
    let running = app::start(config, gait_runtime::Tasks::new(CancellationToken::new())).await?;
    let agent_dir = tmp.path().join("agent");
    let id = AgentToIssue::parse("", "acme", "web", "prod", "edge")?;
    pki::issue_agent(
        &tmp.path().join("agg/pki"),
        &id,
        &agent_dir,
        Validity::days(30),
    )?;
    let refused = "gait_aggregator_connections_refused_total{stage=\"version\"}";

    match dial(client_offering(&agent_dir, OLD_ALPN)?, running.quic_addr).await? {
        Ok(_) => bail!("the aggregator accepted a gait-fleet/1 client"),
        Err(e) => ensure!(is_version_skew(&e), "client side: {e}"),
    }
    let metrics = running.ingest.metrics.clone();
    let started = std::time::Instant::now();
    while series(&metrics.render(), refused) != 1 {
        ensure!(
            started.elapsed() < PATIENCE,
            "version refusal not counted:\n{}",
            metrics.render()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A current agent connects and stays connected; shutdown closes it and drains its handler (a task of
    // the aggregator's Tasks) within the grace period.
    let current = dial(
        client_offering(&agent_dir, gait_wire::ALPN)?,
        running.quic_addr,
    )
    .await?
    .context("a current-version client was refused")?;
    let started = std::time::Instant::now();
    while running.ingest.open_connections() != 1 {
        ensure!(started.elapsed() < PATIENCE, "connection not registered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running.tasks().token().cancel();
    let drain = running.wait(PATIENCE).await;
    ensure!(
        drain.clean && drain.failure.is_none(),
        "unclean drain: {drain:?}"
    );
    let closed = timeout(PATIENCE, current.closed()).await?;
    ensure!(
        matches!(&closed, quinn::ConnectionError::ApplicationClosed(c)
            if c.error_code == quinn::VarInt::from_u32(gait_wire::close::CLOSE_SHUTDOWN)),
        "agent connection ended with {closed}"
    );
    Ok(())
}
