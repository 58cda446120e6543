//! Certificate renewal of the real daemon against the real aggregator (both in process): a certificate with
//! less than a third of its validity left is reported as due (with a warning) while the aggregator is out of
//! reach, and renewed with a fresh key as soon as the agent connects.
#![allow(clippy::disallowed_methods)] // tests spawn freely and read the clock

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use gait_testkit::{
    AgentCerts, AggregatorOptions, RunningAgent, agent_config, agent_key, init_logs,
    spawn_aggregator, tenant,
};
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

const URI: &str = "spiffe://gait.local/org/acme/project/web/env/prod/agent/renewer";

/// A certificate for [`URI`] from the CA in `pki_dir`, valid from two days ago until one day from now: two
/// thirds of its validity are gone, so renewal is due.
fn due_certificate(pki_dir: &Path, out: &Path) -> Result<AgentCerts> {
    std::fs::create_dir_all(out)?;
    let ca_pem = std::fs::read(pki_dir.join("ca.pem"))?;
    let ca_der = CertificateDer::from_pem_slice(&ca_pem)?;
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(pki_dir.join("ca.key"))?)?;
    let issuer = Issuer::from_ca_cert_der(&ca_der, ca_key)?;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "renewer");
    params.subject_alt_names = vec![SanType::URI(URI.try_into()?)];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.is_ca = IsCa::ExplicitNoCa;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(2);
    params.not_after = now + time::Duration::days(1);
    let cert = params.signed_by(&key, &issuer)?;
    let paths = (
        out.join("ca.pem"),
        out.join("agent.pem"),
        out.join("agent.key"),
    );
    std::fs::write(&paths.0, &ca_pem)?;
    std::fs::write(&paths.1, cert.pem())?;
    std::fs::write(&paths.2, key.serialize_pem())?;
    Ok(AgentCerts {
        dir: out.to_owned(),
        ca: paths.0,
        cert: paths.1,
        key: paths.2,
        serial_hex: String::new(),
        uri: URI.to_owned(),
        not_after: Some(params.not_after),
    })
}

#[tokio::test]
async fn a_due_certificate_is_reported_offline_and_renewed_once_connected() -> Result<()> {
    init_logs();
    let aggregator = spawn_aggregator(AggregatorOptions::default()).await?;
    let home = tempfile::tempdir()?;
    let certs = due_certificate(&aggregator.data_dir().join("pki"), &home.path().join("tls"))?;
    let registry = home.path().join("registry.pub");
    std::fs::copy(aggregator.registry_public_key(), &registry)?;
    let first_cert = std::fs::read(&certs.cert)?;
    let first_key = std::fs::read(&certs.key)?;

    // Out of reach (nothing listens there): due, with a warning, and nothing renewed.
    let unreachable = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?;
    let config = agent_config(unreachable, &certs, &registry, home.path());
    let agent = RunningAgent::start(config.clone(), Duration::from_secs(5)).await?;
    let status = agent.status().await?;
    let cert = status
        .certificate
        .clone()
        .context("no certificate in the status")?;
    ensure!(cert.renewal_due && cert.days_left <= 1, "{cert:?}");
    ensure!(
        status
            .warnings
            .iter()
            .any(|w| w.contains("not renewed yet")),
        "{:?}",
        status.warnings
    );
    let metrics = agent.get_text("/metrics").await?;
    ensure!(
        metrics.contains("gait_agent_certificate_expiry_seconds "),
        "{metrics}"
    );
    agent.stop().await?;
    ensure!(std::fs::read(&certs.cert)? == first_cert);

    // Connected: renewed at once, with a new key, and the status follows.
    let config = agent_config(aggregator.quic_addr(), &certs, &registry, home.path());
    let agent = RunningAgent::start(config, Duration::from_secs(5)).await?;
    let status = agent
        .wait_status("the certificate renewed", |s| {
            s.certificate.as_ref().is_some_and(|c| !c.renewal_due)
        })
        .await?;
    ensure!(status.warnings.is_empty(), "{:?}", status.warnings);
    ensure!(
        std::fs::read(&certs.cert)? != first_cert,
        "the certificate file was not replaced"
    );
    ensure!(
        std::fs::read(&certs.key)? != first_key,
        "the key was not rotated"
    );
    let renewed = aggregator
        .store()
        .issued_certificates(&agent_key(&tenant("acme", "web", "prod")?, "renewer")?)
        .await?;
    ensure!(renewed.len() == 1, "{renewed:?}");
    agent.stop().await?;
    Ok(())
}
