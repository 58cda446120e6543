//! Hostile and careless input to the admin API (issue 10): values at and past their bounds, malformed query
//! strings and a burst of concurrent publishes to one scope, against the real router over a real store
//! (SQLite, and PostgreSQL when `GAIT_TEST_DATABASE_URL` is set).
#![allow(clippy::disallowed_methods)] // tests spawn freely and read the clock

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use gait_aggregator::api::router;
use gait_canon::sign::SigningKey;
use gait_store::testing::TestStore;
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use tower::ServiceExt as _;

use crate::common;

const TOKEN: &str = "test-admin-token";
const POLICY: &str = "schema_id: gait.gate.policy\nschema_version: 1.0.0\ndefault_verdict: allow\n";
const PUBLISH: &str = "/v1/orgs/acme/projects/web/envs/prod/bundles";

fn app(db: &TestStore) -> axum::Router {
    router(common::app_state(db, TOKEN, SigningKey::generate()))
}

async fn call(
    app: &axum::Router,
    method: &str,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
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
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, value)
}

/// The answer is 400 `invalid_request` in the one JSON shape, and its message names `field`.
fn ensure_refused(what: &str, (status, v): (StatusCode, Value), field: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        status == StatusCode::BAD_REQUEST && v["error"]["code"] == "invalid_request",
        "{what}: expected 400 invalid_request, got {status} {v}"
    );
    let message = v["error"]["message"].as_str().unwrap_or_default();
    anyhow::ensure!(
        message.contains(field),
        "{what}: the message does not name `{field}`: {message:?}"
    );
    Ok(())
}

async fn out_of_range_publish_fields_are_refused_naming_the_field(
    db: &TestStore,
) -> anyhow::Result<()> {
    let app = app(db);
    let body = |extra: Value| {
        let mut b = json!({"policies": {"base.yaml": POLICY}});
        for (k, v) in extra.as_object().expect("object") {
            b[k] = v.clone();
        }
        b
    };
    let r = call(
        &app,
        "POST",
        PUBLISH,
        Some(body(json!({"validity_seconds": 1_000_000_000_000u64}))),
    )
    .await;
    ensure_refused("validity_seconds 1e12", r.clone(), "validity_seconds")?;
    let message = r.1["error"]["message"].as_str().unwrap_or_default();
    anyhow::ensure!(
        message.contains("315360000"),
        "validity_seconds: the message does not state the bound: {message:?}"
    );
    let r = call(
        &app,
        "POST",
        PUBLISH,
        Some(body(json!({"validity_seconds": u64::MAX}))),
    )
    .await;
    ensure_refused("validity_seconds u64::MAX", r, "validity_seconds")?;
    let r = call(
        &app,
        "POST",
        PUBLISH,
        Some(body(json!({"max_offline_seconds": 1u64 << 53}))),
    )
    .await;
    ensure_refused("max_offline_seconds 2^53", r, "max_offline_seconds")?;
    let r = call(
        &app,
        "POST",
        PUBLISH,
        Some(body(json!({"max_offline_seconds": u64::MAX}))),
    )
    .await;
    ensure_refused("max_offline_seconds u64::MAX", r, "max_offline_seconds")?;
    // Nothing refused was stored, and the largest accepted values still publish.
    let (s, v) = call(
        &app,
        "POST",
        PUBLISH,
        Some(body(
            json!({"validity_seconds": 315_360_000u64, "max_offline_seconds": (1u64 << 53) - 1}),
        )),
    )
    .await;
    anyhow::ensure!(s == StatusCode::CREATED, "values at the bounds: {s} {v}");
    anyhow::ensure!(v["epoch"] == 1, "the refused publishes took an epoch: {v}");
    Ok(())
}

async fn out_of_range_cursors_and_bad_query_strings_answer_the_json_shape(
    db: &TestStore,
) -> anyhow::Result<()> {
    let app = app(db);
    let records = "/v1/orgs/acme/projects/web/envs/prod/agents/a1/records";
    let r = call(
        &app,
        "GET",
        &format!("{records}?after={}", 1u64 << 63),
        None,
    )
    .await;
    ensure_refused("records after=2^63", r, "after")?;
    let r = call(&app, "GET", &format!("{records}?after={}", u64::MAX), None).await;
    ensure_refused("records after=u64::MAX", r, "after")?;
    let (s, v) = call(
        &app,
        "GET",
        &format!("{records}?after={}", (1u64 << 63) - 1),
        None,
    )
    .await;
    anyhow::ensure!(s == StatusCode::OK, "records after=2^63-1: {s} {v}");
    let r = call(&app, "GET", &format!("{records}?limit=abc"), None).await;
    ensure_refused("records limit=abc", r, "limit")?;
    let r = call(&app, "GET", &format!("{records}?after=-1"), None).await;
    ensure_refused("records after=-1", r, "after")?;
    let r = call(&app, "GET", "/v1/orgs/acme/agents?limit=abc", None).await;
    ensure_refused("agents limit=abc", r, "limit")?;
    Ok(())
}

async fn concurrent_publishes_to_one_scope_all_succeed_with_consecutive_epochs(
    db: &TestStore,
) -> anyhow::Result<()> {
    const N: u64 = 300;
    let app = app(db);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..N {
        let app = app.clone();
        tasks.spawn(async move {
            let policy = format!("{POLICY}# publish {i}\n");
            call(
                &app,
                "POST",
                PUBLISH,
                Some(json!({"policies": {"base.yaml": policy}})),
            )
            .await
        });
    }
    let mut epochs = Vec::new();
    let mut failures = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (s, v) = joined?;
        match (s, v["epoch"].as_u64()) {
            (StatusCode::CREATED, Some(epoch)) => epochs.push(epoch),
            _ => failures.push(format!("{s} {v}")),
        }
    }
    anyhow::ensure!(
        failures.is_empty(),
        "{} of {N} publishes failed, e.g. {:?}",
        failures.len(),
        failures.first()
    );
    epochs.sort_unstable();
    anyhow::ensure!(
        epochs == (1..=N).collect::<Vec<_>>(),
        "epochs are not 1..={N}: {epochs:?}"
    );
    let (s, v) = call(&app, "GET", &format!("{PUBLISH}/latest"), None).await;
    anyhow::ensure!(s == StatusCode::OK && v["epoch"] == N, "latest: {s} {v}");
    Ok(())
}

/// The same burst through the real server over real sockets on a multi-threaded runtime (the embedded SQLite
/// store), where handlers truly run in parallel.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_publishes_through_the_real_server_all_succeed() -> anyhow::Result<()> {
    const N: u64 = 300;
    let aggregator =
        Arc::new(gait_testkit::spawn_aggregator(gait_testkit::AggregatorOptions::default()).await?);
    let tenant: gait_testkit::Tenant = "acme/web/prod".parse()?;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..N {
        let (aggregator, tenant) = (aggregator.clone(), tenant.clone());
        tasks.spawn(async move {
            let publish =
                gait_testkit::Publish::policy("base.yaml", &format!("{POLICY}# publish {i}\n"));
            aggregator.publish(&tenant, &publish).await
        });
    }
    let mut epochs = Vec::new();
    let mut failures = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined? {
            Ok(published) => epochs.push(published.epoch),
            Err(e) => failures.push(e.to_string()),
        }
    }
    anyhow::ensure!(
        failures.is_empty(),
        "{} of {N} publishes failed, e.g. {:?}",
        failures.len(),
        failures.first()
    );
    epochs.sort_unstable();
    anyhow::ensure!(
        epochs == (1..=N).collect::<Vec<_>>(),
        "epochs are not 1..={N}: {epochs:?}"
    );
    Ok(())
}

gait_store::store_tests!(
    out_of_range_publish_fields_are_refused_naming_the_field,
    out_of_range_cursors_and_bad_query_strings_answer_the_json_shape,
    concurrent_publishes_to_one_scope_all_succeed_with_consecutive_epochs
);
