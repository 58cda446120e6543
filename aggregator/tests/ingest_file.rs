//! The rules `gait-aggregator ingest-file` applies to an outbox export before committing anything
//! (`fleet::offline::verify`): the certificate is judged at the signed export time (a file carried out after the
//! certificate expired lands; one sealed after it expired does not), an export time in the future is refused,
//! the header must name the certificate's agent, and the aggregator's payload limit holds.
#![allow(clippy::disallowed_methods)] // tests read the clock

use std::path::Path;

use anyhow::{Context as _, Result, ensure};
use gait_aggregator::fleet::offline::{IngestFileError, MAX_CLOCK_SKEW_MS, verify};
use gait_testkit::{AgentCerts, Pki};
use gait_wire::export::{OutboxExport, SignatureAlgorithm};
use gait_wire::{GENESIS_HASH, Record, RecordClass};
use rcgen::SigningKey as _;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

fn now_ms() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp() * 1000
}

fn records(n: u64, payload_len: usize) -> Vec<Record> {
    let mut out: Vec<Record> = Vec::new();
    for seq in 1..=n {
        let prev = out.last().map_or(GENESIS_HASH, |r| r.hash);
        out.push(Record::sealed(
            seq,
            prev,
            RecordClass::Block,
            "gate.decision",
            0,
            None,
            vec![b'x'; payload_len],
        ));
    }
    out
}

/// An export of `recs` signed with `certs`' key, naming `uri`, made at `created_ms`.
fn sealed(certs: &AgentCerts, uri: &str, created_ms: i64, recs: Vec<Record>) -> Result<Vec<u8>> {
    let key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(&certs.key)?)?;
    let chain: Vec<Vec<u8>> = CertificateDer::pem_file_iter(&certs.cert)?
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<_, _>>()?;
    let export = OutboxExport::seal(
        uri,
        recs,
        created_ms,
        chain,
        SignatureAlgorithm::EcdsaP256Sha256,
        |input| key.sign(input),
    )?;
    Ok(export.encode())
}

fn anchors(pki: &Pki) -> Result<Vec<Vec<u8>>> {
    Ok(CertificateDer::pem_file_iter(pki.ca_cert())?
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<_, _>>()?)
}

fn setup(tmp: &Path) -> Result<(Pki, gait_identity::Tenant)> {
    let pki = Pki::create(&tmp.join("pki"), "test.gait")?;
    let tenant = gait_testkit::tenant("acme", "payments", "prod")?;
    Ok((pki, tenant))
}

#[test]
fn an_expired_certificate_is_judged_at_the_signed_export_time() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let (pki, tenant) = setup(tmp.path())?;
    let now = time::OffsetDateTime::now_utc();
    let certs = pki.issue_expired_agent(&tmp.path().join("old"), &tenant, "a1", now)?;
    let anchors = anchors(&pki)?;
    let path = Path::new("carried.json");
    // Sealed while the certificate was valid (5 days ago), ingested now that it expired: accepted.
    let while_valid = now_ms() - 5 * 86_400_000;
    let file = sealed(&certs, &certs.uri, while_valid, records(3, 10))?;
    let verified = verify(path, &file, &anchors, 1 << 20, now_ms())?;
    ensure!(verified.identity.uri() == certs.uri);
    ensure!(verified.export.records.len() == 3);
    // Sealed after it expired: refused, naming the certificate.
    let file = sealed(&certs, &certs.uri, now_ms(), records(3, 10))?;
    let err = verify(path, &file, &anchors, 1 << 20, now_ms()).unwrap_err();
    ensure!(err.what() == "certificate", "{err}");
    ensure!(err.exit_code() == 65);
    Ok(())
}

#[test]
fn an_export_time_in_the_future_is_refused() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let (pki, tenant) = setup(tmp.path())?;
    let certs = pki.issue_agent(&tmp.path().join("a1"), &tenant, "a1")?;
    let anchors = anchors(&pki)?;
    let now = now_ms();
    let path = Path::new("carried.json");
    let within = sealed(
        &certs,
        &certs.uri,
        now + MAX_CLOCK_SKEW_MS / 2,
        records(1, 1),
    )?;
    verify(path, &within, &anchors, 1 << 20, now).context("within the clock skew")?;
    let ahead = sealed(
        &certs,
        &certs.uri,
        now + 2 * MAX_CLOCK_SKEW_MS,
        records(1, 1),
    )?;
    let err = verify(path, &ahead, &anchors, 1 << 20, now).unwrap_err();
    ensure!(
        matches!(err, IngestFileError::FromTheFuture { .. }) && err.what() == "time",
        "{err}"
    );
    Ok(())
}

#[test]
fn the_header_must_name_the_certificates_agent_and_payloads_fit_the_configured_limit() -> Result<()>
{
    let tmp = tempfile::tempdir()?;
    let (pki, tenant) = setup(tmp.path())?;
    let certs = pki.issue_agent(&tmp.path().join("a1"), &tenant, "a1")?;
    let anchors = anchors(&pki)?;
    let path = Path::new("carried.json");
    let other = certs.uri.replace("/agent/a1", "/agent/a9");
    let file = sealed(&certs, &other, now_ms(), records(2, 1))?;
    let err = verify(path, &file, &anchors, 1 << 20, now_ms()).unwrap_err();
    ensure!(err.what() == "tenancy", "{err}");
    ensure!(err.to_string().contains("/agent/a9") && err.to_string().contains("/agent/a1"));
    let file = sealed(&certs, &certs.uri, now_ms(), records(2, 101))?;
    let err = verify(path, &file, &anchors, 100, now_ms()).unwrap_err();
    ensure!(
        matches!(
            err,
            IngestFileError::PayloadTooLarge {
                seq: 1,
                len: 101,
                max: 100,
                ..
            }
        ),
        "{err}"
    );
    Ok(())
}
