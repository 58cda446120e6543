//! Join tokens and `POST /v1/enroll` through the real router over a real store (SQLite, and PostgreSQL when
//! configured) and a real CA in a temporary directory: the tenancy comes from the token, a use is consumed only
//! by an issued certificate, and every refused token enrolls nothing.
#![allow(clippy::disallowed_methods)] // tests spawn freely and read the clock

use std::sync::Arc;

use anyhow::{Context as _, Result, ensure};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use gait_aggregator::api::{AppState, router};
use gait_aggregator::enroll::{EnrollSettings, Enrollment};
use gait_canon::sign::SigningKey;
use gait_store::testing::TestStore;
use http_body_util::BodyExt as _;
use rcgen::{CertificateParams, KeyPair, SanType};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use serde_json::{Value, json};
use tower::ServiceExt as _;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::common;

const TOKEN: &str = "test-admin-token";
const TOKENS: &str = "/v1/orgs/acme/projects/web/envs/prod/join-tokens";

struct Fixture {
    app: axum::Router,
    pki: tempfile::TempDir,
}

fn fixture(db: &TestStore) -> Result<Fixture> {
    let pki = tempfile::tempdir()?;
    gait_aggregator::pki::init(pki.path(), &gait_aggregator::pki::InitOptions::default())?;
    let app = router(AppState {
        audit: Arc::new(gait_aggregator::audit::AuditLog::open(
            db.store().clone(),
            &pki.path().join("keys"),
            "gait-aggregator/test.local",
        )?),
        enrollment: Arc::new(Enrollment::new(
            db.store().clone(),
            pki.path().to_owned(),
            EnrollSettings::default(),
        )),
        ..common::app_state(db, TOKEN, SigningKey::generate())
    });
    Ok(Fixture { app, pki })
}

async fn call(
    app: &axum::Router,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = match body {
        Some(b) => req
            .header("content-type", "application/json")
            .body(Body::from(b.to_string())),
        None => req.body(Body::empty()),
    }
    .expect("request");
    let resp = app.clone().oneshot(req).await.expect("router answers");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, value)
}

/// A CSR for a fresh P-256 key, optionally asking for a URI SAN.
fn csr(uri: Option<&str>) -> Result<(String, KeyPair)> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    if let Some(uri) = uri {
        params.subject_alt_names = vec![SanType::URI(uri.try_into()?)];
    }
    let csr = params.serialize_request(&key)?;
    Ok((csr.pem()?, key))
}

async fn mint(app: &axum::Router, uri: &str, uses: u32) -> Result<String> {
    let (s, v) = call(
        app,
        "POST",
        uri,
        Some(TOKEN),
        Some(json!({"ttl_seconds": 3600, "uses": uses})),
    )
    .await;
    ensure!(s == StatusCode::CREATED, "mint: {s} {v}");
    v["token"]
        .as_str()
        .map(str::to_owned)
        .context("no token in the answer")
}

async fn enroll(
    app: &axum::Router,
    token: &str,
    csr_pem: &str,
    expect: Option<Value>,
) -> (StatusCode, Value) {
    let mut body = json!({"token": token, "csr_pem": csr_pem, "agent_id": "a-1"});
    if let Some(expect) = expect {
        body["expect"] = expect;
    }
    call(app, "POST", "/v1/enroll", None, Some(body)).await
}

async fn a_token_enrolls_its_tenancy_with_the_agents_own_key(db: &TestStore) -> Result<()> {
    let f = fixture(db)?;
    let (s, _) = call(
        &f.app,
        "POST",
        TOKENS,
        None,
        Some(json!({"ttl_seconds": 60})),
    )
    .await;
    ensure!(
        s == StatusCode::UNAUTHORIZED,
        "minting needs the admin token: {s}"
    );
    let token = mint(&f.app, TOKENS, 1).await?;
    let (s, listed) = call(&f.app, "GET", TOKENS, Some(TOKEN), None).await;
    ensure!(s == StatusCode::OK, "{s} {listed}");
    let secret = token.rsplit('_').next().unwrap_or_default();
    ensure!(
        !listed.to_string().contains(secret),
        "the listing shows the secret: {listed}"
    );
    ensure!(listed["join_tokens"][0]["state"] == "active", "{listed}");

    let (csr_pem, key) = csr(None)?;
    let (s, v) = enroll(
        &f.app,
        &token,
        &csr_pem,
        Some(json!({"org": "acme", "project": "web", "env": "prod"})),
    )
    .await;
    ensure!(s == StatusCode::OK, "{s} {v}");
    ensure!(
        v["agent"] == "spiffe://gait.local/org/acme/project/web/env/prod/agent/a-1",
        "{v}"
    );
    let chain = v["certificate_chain_pem"].as_str().context("chain")?;
    let der = CertificateDer::from_pem_slice(chain.as_bytes())?;
    let (_, cert) = X509Certificate::from_der(&der)?;
    ensure!(
        cert.public_key().subject_public_key.data.as_ref() == key.public_key_raw(),
        "the certificate is not for the agent's key"
    );
    let ca_pem = std::fs::read_to_string(f.pki.path().join("ca.pem"))?;
    ensure!(v["ca_bundle_pem"] == ca_pem.as_str(), "{v}");
    let ca_der = CertificateDer::from_pem_slice(ca_pem.as_bytes())?;
    let (_, ca) = X509Certificate::from_der(&ca_der)?;
    ensure!(
        cert.verify_signature(Some(ca.public_key())).is_ok(),
        "not signed by the CA"
    );

    // The one use is gone.
    let (csr_pem, _) = csr(None)?;
    let (s, v) = enroll(&f.app, &token, &csr_pem, None).await;
    ensure!(
        s == StatusCode::FORBIDDEN && v["error"]["code"] == "enrollment_refused",
        "{s} {v}"
    );
    ensure!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("no uses left")),
        "{v}"
    );
    let (_, listed) = call(&f.app, "GET", TOKENS, Some(TOKEN), None).await;
    ensure!(listed["join_tokens"][0]["state"] == "used_up", "{listed}");
    Ok(())
}

async fn refused_tokens_and_csrs_enroll_nothing_and_keep_their_uses(db: &TestStore) -> Result<()> {
    let f = fixture(db)?;
    let token = mint(&f.app, TOKENS, 1).await?;
    let (good_csr, _) = csr(None)?;

    // Another scope than the agent expects: refused, use kept.
    let (s, v) = enroll(
        &f.app,
        &token,
        &good_csr,
        Some(json!({"org": "acme", "project": "web", "env": "dev"})),
    )
    .await;
    ensure!(
        s == StatusCode::FORBIDDEN
            && v["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("acme/web/prod")),
        "{s} {v}"
    );
    // A CSR asking for another identity: refused, use kept.
    let (foreign, _) = csr(Some(
        "spiffe://gait.local/org/other/project/web/env/prod/agent/a-1",
    ))?;
    let (s, v) = enroll(&f.app, &token, &foreign, None).await;
    ensure!(
        s == StatusCode::BAD_REQUEST
            && v["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("org/other")),
        "{s} {v}"
    );
    // A wrong secret and a malformed token.
    let wrong = format!(
        "{}{}",
        &token[..token.len() - 1],
        if token.ends_with('0') { '1' } else { '0' }
    );
    let (s, v) = enroll(&f.app, &wrong, &good_csr, None).await;
    ensure!(
        s == StatusCode::FORBIDDEN
            && v["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("unknown join token")),
        "{s} {v}"
    );
    let (s, _) = enroll(&f.app, "not-a-token", &good_csr, None).await;
    ensure!(s == StatusCode::FORBIDDEN, "{s}");

    let (_, listed) = call(&f.app, "GET", TOKENS, Some(TOKEN), None).await;
    ensure!(
        listed["join_tokens"][0]["uses_left"] == 1,
        "a refusal used the token: {listed}"
    );

    // Revoked: enrolls nothing; revoking in another env finds nothing.
    let id = listed["join_tokens"][0]["token_id"]
        .as_str()
        .context("id")?
        .to_owned();
    let (s, _) = call(
        &f.app,
        "DELETE",
        &format!("/v1/orgs/acme/projects/web/envs/dev/join-tokens/{id}"),
        Some(TOKEN),
        None,
    )
    .await;
    ensure!(s == StatusCode::NOT_FOUND, "{s}");
    let (s, v) = call(
        &f.app,
        "DELETE",
        &format!("{TOKENS}/{id}"),
        Some(TOKEN),
        None,
    )
    .await;
    ensure!(
        s == StatusCode::OK && v["state"] == "revoked" && v["revoked_by"] == "admin-token",
        "{s} {v}"
    );
    let (s, v) = enroll(&f.app, &token, &good_csr, None).await;
    ensure!(
        s == StatusCode::FORBIDDEN
            && v["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("revoked")),
        "{s} {v}"
    );

    // Out-of-bounds lifetimes and uses are refused.
    for body in [
        json!({"ttl_seconds": 0}),
        json!({"ttl_seconds": 99_999_999}),
        json!({"ttl_seconds": 60, "uses": 0}),
    ] {
        let (s, v) = call(&f.app, "POST", TOKENS, Some(TOKEN), Some(body.clone())).await;
        ensure!(s == StatusCode::BAD_REQUEST, "{body}: {s} {v}");
    }
    Ok(())
}

gait_store::store_tests!(
    a_token_enrolls_its_tenancy_with_the_agents_own_key,
    refused_tokens_and_csrs_enroll_nothing_and_keep_their_uses,
);

async fn a_revoked_certificate_renews_nothing(db: &TestStore) -> Result<()> {
    let f = fixture(db)?;
    let enrollment = Enrollment::new(
        db.store().clone(),
        f.pki.path().to_owned(),
        EnrollSettings::default(),
    );
    let agent = gait_store::AgentKey::new(
        gait_store::Tenant::from_parts("acme", "web", "prod")?,
        "a-1".parse()?,
    );
    let current: gait_store::CertSerial = "0badc0de".parse()?;
    let uri = "spiffe://gait.local/org/acme/project/web/env/prod/agent/a-1";
    let verified = |pem: &str| gait_aggregator::pki::VerifiedCsr::from_pem(pem);

    let (pem, _) = csr(Some(uri))?;
    let renewed = enrollment
        .renew("agent:x", &agent, &current, verified(&pem)?)
        .await?;
    ensure!(renewed.spiffe.to_string() == uri);

    db.store()
        .revoke(
            &gait_store::Revocation {
                cert_serial: current.clone(),
                agent: agent.clone(),
                reason: "key compromise".into(),
                revoked_by: "alice".into(),
            },
            1,
        )
        .await?;
    let (pem, _) = csr(Some(uri))?;
    match enrollment
        .renew("agent:x", &agent, &current, verified(&pem)?)
        .await
    {
        Err(gait_aggregator::enroll::EnrollError::Revoked { serial }) => ensure!(serial == current),
        other => anyhow::bail!("a revoked certificate was renewed: {other:?}"),
    }
    ensure!(db.store().issued_certificates(&agent).await?.len() == 1);
    Ok(())
}

gait_store::store_tests!(a_revoked_certificate_renews_nothing);
