//! The replay routes in process (real router, real store, both backends): refusals name the field, an empty
//! corpus still gives a signed report that verifies with the served key, and the corpus export starts with its
//! header.
#![allow(clippy::disallowed_methods)] // tests spawn freely and read the clock

use axum::body::Body;
use axum::http::{Request, StatusCode};
use gait_aggregator::api::router;
use gait_canon::sign::{PublicKey, SigningKey};
use gait_store::testing::TestStore;
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use tower::ServiceExt as _;

mod common;

const TOKEN: &str = "test-admin-token";
const ALLOW: &str = "schema_id: gait.gate.policy\nschema_version: 1.0.0\ndefault_verdict: allow\n";
const BLOCK: &str = "schema_id: gait.gate.policy\nschema_version: 1.0.0\ndefault_verdict: block\n";

async fn call(
    app: &axum::Router,
    method: &str,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, Vec<u8>) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", format!("Bearer {TOKEN}"));
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
    (status, bytes.to_vec())
}

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or(Value::Null)
}

gait_store::store_tests!(refusals_name_the_field_and_an_empty_corpus_gives_a_verifiable_report,);

async fn refusals_name_the_field_and_an_empty_corpus_gives_a_verifiable_report(
    db: &TestStore,
) -> anyhow::Result<()> {
    let app = router(common::app_state(db, TOKEN, SigningKey::generate()));
    let uri = "/v1/orgs/acme/replay";
    for (body, field) in [
        (json!({"candidate": BLOCK}), "baseline"),
        (
            json!({"candidate": "a".repeat(64), "baseline": ALLOW}),
            "candidate",
        ),
        (
            json!({"candidate": BLOCK, "baseline": "pinned"}),
            "baseline",
        ),
        (
            json!({"candidate": "rules: [", "baseline": ALLOW}),
            "candidate",
        ),
        (
            json!({"candidate": BLOCK, "baseline": ALLOW, "env": "prod"}),
            "env",
        ),
        (
            json!({"candidate": BLOCK, "baseline": ALLOW, "fixtures": [{"path": "f.json", "intent": {"tool_name": 7}}]}),
            "f.json",
        ),
        (
            json!({"candidate": BLOCK, "baseline": ALLOW, "extra": 1}),
            "extra",
        ),
    ] {
        let (s, b) = call(&app, "POST", uri, Some(body.clone())).await;
        let v = json(&b);
        let message = v["error"]["message"].as_str().unwrap_or_default();
        anyhow::ensure!(
            s == StatusCode::BAD_REQUEST && message.contains(field),
            "{body}: {s} {v}"
        );
    }

    let (s, key) = call(&app, "GET", "/v1/orgs/acme/replay/key", None).await;
    anyhow::ensure!(s == StatusCode::OK, "{s}");
    let key =
        PublicKey::from_gait_public_key(json(&key)["public_key"].as_str().unwrap_or_default())?;
    let intent = json!({
        "schema_id": "gait.gate.intent_request", "schema_version": "1.0.0", "created_at": "2026-01-01T00:00:00Z",
        "producer_version": "t", "tool_name": "tool.read", "args": {"path": "/x"},
        "targets": [{"kind": "path", "value": "/x", "operation": "read"}],
        "context": {"identity": "u", "workspace": "/w", "risk_class": "low"}
    });
    let (s, bytes) = call(
        &app,
        "POST",
        uri,
        Some(json!({"candidate": BLOCK, "baseline": ALLOW, "fixtures": [{"path": "read.json", "intent": intent}]})),
    )
    .await;
    anyhow::ensure!(
        s == StatusCode::OK,
        "{s} {}",
        String::from_utf8_lossy(&bytes)
    );
    let report = gait_replay::verify_report(&bytes, &key)?;
    anyhow::ensure!(
        report.corpus.until_id == 0 && report.corpus.samples == 0 && report.flips_total == 1,
        "{report:?}"
    );
    anyhow::ensure!(report.changed[0].fixture_path.as_deref() == Some("read.json"));

    let (s, _) = call(&app, "GET", "/v1/orgs/acme/replay/corpus?env=prod", None).await;
    anyhow::ensure!(s == StatusCode::BAD_REQUEST, "env without project: {s}");
    let (s, corpus) = call(&app, "GET", "/v1/orgs/acme/replay/corpus", None).await;
    anyhow::ensure!(s == StatusCode::OK, "{s}");
    let (header, intents) = gait_replay::parse_corpus(std::str::from_utf8(&corpus)?)?;
    anyhow::ensure!(
        header.org == "acme" && header.until_id == 0 && intents.is_empty(),
        "{header:?}"
    );
    Ok(())
}
