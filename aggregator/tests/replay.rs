//! The replay routes in process (real router, real store, both backends): refusals name the field, an empty
//! corpus still gives a signed report that verifies with the served key, and the corpus export starts with its
//! header; a corpus over its bounds is refused naming the fields that narrow it, a pin above the head is
//! refused, the export streams in chunks, and a replay past the concurrency bound is a 503 with `Retry-After`.
#![allow(clippy::disallowed_methods)] // tests spawn freely and read the clock

use axum::body::Body;
use axum::http::{Request, StatusCode};
use gait_aggregator::api::router;
use gait_canon::sign::{PublicKey, SigningKey};
use gait_store::testing::TestStore;
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use tower::ServiceExt as _;

use crate::common;

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

gait_store::store_tests!(
    refusals_name_the_field_and_an_empty_corpus_gives_a_verifiable_report,
    corpus_bounds_pins_and_concurrency_are_enforced,
);

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
        (
            json!({"candidate": BLOCK, "baseline": ALLOW, "max_changed": 100_001}),
            "max_changed",
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

/// Stores `n` captured decisions of `n` distinct intents (tool `tool.t<i>`, a path padded to `pad` bytes) for
/// agent `a-1` of acme/web/prod.
async fn captured(db: &TestStore, n: u64, pad: usize) -> anyhow::Result<()> {
    let store = db.store();
    let key = gait_store::AgentKey::new(
        gait_store::Tenant::from_parts("acme", "web", "prod")?,
        "a-1".parse()?,
    );
    let hello = gait_store::AgentHello {
        cert_serial: "0a1b2c".parse()?,
        cert_not_after_unix_ms: 1_764_000_000_000 + 86_400_000,
        cert_issuer: String::new(),
        remote_addr: "127.0.0.1:1".into(),
        agent_version: "test".into(),
        active_bundle: None,
        received_bundle: None,
        outbox_depth: 0,
        shed_total: 0,
    };
    store
        .agent_connected(&key, &hello, 1_764_000_000_000)
        .await?;
    let mut prev = [0u8; 32];
    let mut records = Vec::new();
    for seq in 1..=n {
        let doc = json!({
            "schema_id": "gait.gate.intent_request", "schema_version": "1.0.0",
            "created_at": "2026-01-01T00:00:00Z", "producer_version": "t", "tool_name": format!("tool.t{seq}"),
            "args": {"path": format!("/srv/{seq}/{}", "x".repeat(pad))},
            "targets": [{"kind": "path", "value": format!("/srv/{seq}"), "operation": "read"}],
            "context": {"identity": "u", "workspace": "/w", "risk_class": "low"}
        });
        let normalized = gait_policy::parse_and_normalize_intent(doc.to_string().as_bytes())?;
        let payload = json!({
            "schema": "gait.agent.gate_decision", "tool_name": normalized.tool_name, "verdict": "allow",
            "enforced_verdict": "allow", "policy_verdict": "allow", "reason_codes": [], "violations": [],
            "matched_rule": "", "enforcement": "policy", "policy_name": "base.yaml",
            "policy_digest": "ab".repeat(32), "intent_digest": normalized.intent_digest,
            "trace_id": format!("{seq:024x}"), "stage": {"stage": "enforce", "would_have_blocked": false},
            "capture_mode": "raw", "normalized_intent": normalized.digest_payload()
        });
        let mut hash = [0u8; 32];
        hash[..8].copy_from_slice(&seq.to_be_bytes());
        hash[16] = 1;
        records.push(gait_store::NewRecord {
            seq,
            prev_hash: prev,
            hash,
            class: "decision".into(),
            kind: "gate.decision".into(),
            created_unix_ms: 1_764_000_000_000,
            bundle_epoch: None,
            bundle_digest: None,
            bundle_since_ms: None,
            payload: payload.to_string().into_bytes(),
        });
        prev = hash;
    }
    let index = gait_aggregator::evidence::index::entries(&records);
    anyhow::ensure!(index.iter().all(|e| e.fields.captured), "captured");
    store
        .commit_batch_indexed(&key, &records, &index, 1_764_000_000_000)
        .await?;
    Ok(())
}

/// A router whose replay service has `limits` and `concurrent` slots.
fn limited_app(
    db: &TestStore,
    limits: gait_aggregator::replay::corpus::CorpusLimits,
    concurrent: usize,
) -> axum::Router {
    let mut state = common::app_state(db, TOKEN, SigningKey::generate());
    state.replay = std::sync::Arc::new(
        gait_aggregator::replay::Replay::new(db.store().clone(), SigningKey::generate())
            .with_limits(limits, concurrent),
    );
    router(state)
}

async fn corpus_bounds_pins_and_concurrency_are_enforced(db: &TestStore) -> anyhow::Result<()> {
    use gait_aggregator::replay::corpus::CorpusLimits;
    captured(db, 120, 600).await?;
    let run = json!({"candidate": BLOCK, "baseline": ALLOW});
    let narrow = |s: StatusCode, b: &[u8]| {
        let message = json(b)["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        s == StatusCode::BAD_REQUEST
            && ["until_id", "project", "env"]
                .iter()
                .all(|f| message.contains(f))
    };

    // Over the distinct-intent bound and over the byte bound: refused, naming what narrows the corpus.
    for limits in [
        CorpusLimits {
            max_intents: 119,
            max_bytes: u64::MAX,
        },
        CorpusLimits {
            max_intents: u64::MAX,
            max_bytes: 10_000,
        },
    ] {
        let app = limited_app(db, limits, 2);
        let (s, b) = call(&app, "POST", "/v1/orgs/acme/replay", Some(run.clone())).await;
        anyhow::ensure!(
            narrow(s, &b),
            "{limits:?} run: {s} {}",
            String::from_utf8_lossy(&b)
        );
        let (s, b) = call(&app, "GET", "/v1/orgs/acme/replay/corpus", None).await;
        anyhow::ensure!(
            narrow(s, &b),
            "{limits:?} export: {s} {}",
            String::from_utf8_lossy(&b)
        );
        // Narrowed by the pin, the same corpus fits.
        let (s, b) = call(&app, "GET", "/v1/orgs/acme/replay/corpus?until_id=10", None).await;
        anyhow::ensure!(s == StatusCode::OK, "{s} {}", String::from_utf8_lossy(&b));
    }

    let app = limited_app(db, CorpusLimits::default(), 1);
    // A pin above the newest captured decision is refused, naming until_id.
    let (s, b) = call(
        &app,
        "GET",
        "/v1/orgs/acme/replay/corpus?until_id=121",
        None,
    )
    .await;
    let message = json(&b)["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    anyhow::ensure!(
        s == StatusCode::BAD_REQUEST && message.starts_with("until_id:") && message.contains("120"),
        "{s} {message}"
    );
    let mut pinned_run = run.clone();
    pinned_run["until_id"] = json!(500);
    let (s, _) = call(&app, "POST", "/v1/orgs/acme/replay", Some(pinned_run)).await;
    anyhow::ensure!(s == StatusCode::BAD_REQUEST, "run above the head: {s}");

    // The export streams: more than one body chunk, and the lines read back as the whole corpus.
    let req = |uri: &str| {
        Request::builder()
            .method("GET")
            .uri(uri)
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(Body::empty())
            .expect("request")
    };
    let resp = app
        .clone()
        .oneshot(req("/v1/orgs/acme/replay/corpus"))
        .await?;
    anyhow::ensure!(resp.status() == StatusCode::OK, "{}", resp.status());
    let mut body = resp.into_body();
    // While this export's body is open it holds the only slot: another replay is told to retry.
    let busy = app
        .clone()
        .oneshot(req("/v1/orgs/acme/replay/corpus"))
        .await?;
    anyhow::ensure!(
        busy.status() == StatusCode::SERVICE_UNAVAILABLE
            && busy.headers().get("retry-after").is_some_and(|v| v == "10"),
        "{} {:?}",
        busy.status(),
        busy.headers()
    );
    let mut chunks = 0;
    let mut all = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            chunks += 1;
            all.extend_from_slice(&data);
        }
    }
    anyhow::ensure!(chunks > 1, "the export came in {chunks} chunk(s)");
    let (header, intents) = gait_replay::parse_corpus(std::str::from_utf8(&all)?)?;
    anyhow::ensure!(
        header.until_id == 120 && header.samples == 120 && intents.len() == 120,
        "{header:?} {}",
        intents.len()
    );
    // Intents come in the order of their first decision.
    anyhow::ensure!(
        intents[0].samples == ["web/prod/a-1:1"] && intents[119].samples == ["web/prod/a-1:120"]
    );
    // The body is done, so the slot is free again.
    let (s, _) = call(&app, "POST", "/v1/orgs/acme/replay", Some(run)).await;
    anyhow::ensure!(s == StatusCode::OK, "after the export: {s}");
    Ok(())
}
