//! `RenewCertificate` against the real aggregator (in process, real PKI): the identity comes from the verified
//! client certificate, a CSR naming another identity is refused, and the new certificate certifies the CSR's
//! (new) key and is recorded.
#![allow(clippy::disallowed_methods)] // tests spawn freely and read the clock

use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use gait_identity::Tenant;
use gait_testkit::{AggregatorOptions, PATIENCE, spawn_aggregator};
use gait_wire::{
    AgentMsg, AgentMsgV2, ErrorCode, FrameDecoder, Hello, InstanceId, RenewCertificate, ServerMsg,
    ServerMsgV2,
};
use rcgen::{CertificateParams, KeyPair, SanType};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use x509_parser::prelude::{FromDer as _, X509Certificate};

async fn request(conn: &quinn::Connection, msg: AgentMsgV2) -> Result<ServerMsgV2> {
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(&gait_wire::encode_frame(&AgentMsg::V2(msg))?)
        .await?;
    send.finish()?;
    let bytes = tokio::time::timeout(PATIENCE, recv.read_to_end(1 << 20)).await??;
    let mut decoder = FrameDecoder::new(1 << 20);
    decoder.push(&bytes);
    let body = decoder.next_frame()?.context("no reply frame")?;
    match gait_wire::decode_server_msg(&body)? {
        ServerMsg::V2(reply) => Ok(reply),
        ServerMsg::V1(_) => bail!("V1 reply"),
    }
}

fn csr(uri: &str) -> Result<(Vec<u8>, KeyPair)> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.subject_alt_names = vec![SanType::URI(uri.try_into()?)];
    Ok((params.serialize_request(&key)?.der().to_vec(), key))
}

#[tokio::test]
async fn renewal_certifies_a_new_key_for_the_connections_own_identity_only() -> Result<()> {
    let aggregator = spawn_aggregator(AggregatorOptions::default()).await?;
    let tmp = tempfile::tempdir()?;
    let tenant = Tenant::from_parts("acme", "web", "prod")?;
    let certs = aggregator
        .pki()
        .issue_agent(&tmp.path().join("a1"), &tenant, "a-1")?;
    let config =
        gait_agent::tls::client_config(&certs.ca, &certs.cert, &certs.key, Duration::from_secs(5))?;
    let endpoint = quinn::Endpoint::client((std::net::Ipv4Addr::LOCALHOST, 0).into())?;
    let conn = endpoint
        .connect_with(config, aggregator.quic_addr(), "localhost")?
        .await?;
    let welcome = request(
        &conn,
        AgentMsgV2::Hello(Hello {
            agent_version: "test".into(),
            protocol_version: gait_wire::PROTOCOL_VERSION,
            active: None,
            received: None,
            outbox_depth: 0,
            shed_total: 0,
            last_seq: 0,
            instance_id: InstanceId([7; 16]),
        }),
    )
    .await?;
    ensure!(matches!(welcome, ServerMsgV2::Welcome(_)), "{welcome:?}");

    // A CSR naming another agent is refused: the identity is the connection's.
    let (foreign, _) = csr("spiffe://gait.local/org/acme/project/web/env/prod/agent/someone-else")?;
    match request(
        &conn,
        AgentMsgV2::RenewCertificate(RenewCertificate { csr_der: foreign }),
    )
    .await?
    {
        ServerMsgV2::Error(e) => ensure!(e.code == ErrorCode::Forbidden, "{e:?}"),
        other => bail!("a foreign identity was renewed: {other:?}"),
    }
    // Garbage is no CSR.
    match request(
        &conn,
        AgentMsgV2::RenewCertificate(RenewCertificate {
            csr_der: vec![1, 2, 3],
        }),
    )
    .await?
    {
        ServerMsgV2::Error(e) => ensure!(e.code == ErrorCode::BadRequest, "{e:?}"),
        other => bail!("garbage was renewed: {other:?}"),
    }

    let (der, key) = csr(&certs.uri)?;
    let issued = match request(
        &conn,
        AgentMsgV2::RenewCertificate(RenewCertificate { csr_der: der }),
    )
    .await?
    {
        ServerMsgV2::Certificate(issued) => issued,
        other => bail!("not renewed: {other:?}"),
    };
    let leaf = CertificateDer::from_pem_slice(issued.chain_pem.as_bytes())?;
    let (_, cert) = X509Certificate::from_der(&leaf)?;
    ensure!(
        cert.public_key().subject_public_key.data.as_ref() == key.public_key_raw(),
        "not the CSR's key"
    );
    let identity = gait_aggregator::pki::identity::identity_from_cert_der(&leaf)?;
    ensure!(
        identity.uri() == certs.uri,
        "{} != {}",
        identity.uri(),
        certs.uri
    );
    ensure!(
        identity.serial.as_str() != certs.serial_hex,
        "the same serial came back"
    );
    ensure!(issued.not_after_unix == identity.not_after_unix);
    let recorded = aggregator
        .store()
        .issued_certificates(&identity.key())
        .await?;
    ensure!(
        recorded.len() == 1
            && recorded[0].cert_serial == identity.serial
            && recorded[0].kind == gait_store::IssueKind::Renew,
        "{recorded:?}"
    );
    ensure!(
        recorded[0].issued_by == format!("agent:{}", certs.uri),
        "{recorded:?}"
    );
    conn.close(0u32.into(), b"done");
    Ok(())
}
