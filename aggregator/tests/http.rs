//! HTTP API handler tests: the real router over a real store (SQLite, and PostgreSQL when configured),
//! driven with `oneshot` — no socket.
#![allow(clippy::disallowed_methods)] // tests spawn freely and read the clock

use anyhow::Context as _;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use gait_aggregator::api::{OPENAPI_JSON, router};
use gait_canon::sign::SigningKey;
use gait_store::testing::TestStore;
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use tower::ServiceExt as _;

use crate::common;

const TOKEN: &str = "test-admin-token";
const POLICY: &str = "schema_id: gait.gate.policy\nschema_version: 1.0.0\ndefault_verdict: allow\n";

fn app(db: &TestStore) -> (axum::Router, gait_canon::sign::PublicKey) {
    let key = SigningKey::generate();
    let public = key.public_key();
    (router(common::app_state(db, TOKEN, key)), public)
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

async fn publish_is_authenticated_validated_and_signed(db: &TestStore) -> anyhow::Result<()> {
    let (app, public) = app(db);
    let uri = "/v1/orgs/acme/projects/web/envs/prod/bundles";
    let body = json!({"policies": {"base.yaml": POLICY}});
    let (s, v) = call(&app, "POST", uri, None, Some(body.clone())).await;
    anyhow::ensure!(
        s == StatusCode::UNAUTHORIZED && v["error"]["code"] == "unauthorized",
        "no token: {s} {v}"
    );
    let (s, _) = call(&app, "POST", uri, Some("wrong"), Some(body.clone())).await;
    anyhow::ensure!(s == StatusCode::UNAUTHORIZED, "wrong token: {s}");
    // Both refusals are counted by reason (and logged at most every 10 s at WARN).
    let (_, metrics) = call(&app, "GET", "/metrics", None, None).await;
    let metrics = metrics.as_str().unwrap_or_default().to_owned();
    for reason in ["missing", "invalid"] {
        anyhow::ensure!(
            metrics.contains(&format!(
                "gait_aggregator_http_auth_failures_total{{reason=\"{reason}\"}} 1"
            )),
            "auth failure {reason} not counted:\n{metrics}"
        );
    }
    let (s, v) = call(
        &app,
        "POST",
        "/v1/orgs/ACME!/projects/web/envs/prod/bundles",
        Some(TOKEN),
        Some(body.clone()),
    )
    .await;
    anyhow::ensure!(
        s == StatusCode::BAD_REQUEST
            && v["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("org")),
        "bad org: {s} {v}"
    );
    let (s, v) = call(
        &app,
        "POST",
        uri,
        Some(TOKEN),
        Some(json!({"policies": {"bad.yaml": "rules: [unclosed"}})),
    )
    .await;
    anyhow::ensure!(
        s == StatusCode::UNPROCESSABLE_ENTITY && v["error"]["code"] == "invalid_policy",
        "bad yaml: {s} {v}"
    );
    let (s, v) = call(
        &app,
        "POST",
        uri,
        Some(TOKEN),
        Some(json!({"policies": {"../x.yaml": POLICY}})),
    )
    .await;
    anyhow::ensure!(
        s == StatusCode::UNPROCESSABLE_ENTITY,
        "path-like name: {s} {v}"
    );
    let (s, v) = call(
        &app,
        "POST",
        uri,
        Some(TOKEN),
        Some(json!({"policies": {"a.yaml": POLICY}, "surprise": 1})),
    )
    .await;
    anyhow::ensure!(
        s == StatusCode::BAD_REQUEST
            && v["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("surprise")),
        "unknown field: {s} {v}"
    );

    let (s, first) = call(&app, "POST", uri, Some(TOKEN), Some(body.clone())).await;
    anyhow::ensure!(
        s == StatusCode::CREATED && first["epoch"] == 1,
        "publish: {s} {first}"
    );
    let (s, second) = call(&app, "POST", uri, Some(TOKEN), Some(body)).await;
    anyhow::ensure!(
        s == StatusCode::CREATED
            && second["epoch"] == 2
            && second["parent_digest"] == first["digest"],
        "second: {second}"
    );

    // The raw bundle verifies offline with nothing but the registry public key.
    let req = Request::builder()
        .uri("/v1/orgs/acme/projects/web/envs/prod/bundles/latest/raw")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Body::empty())?;
    let raw = app
        .clone()
        .oneshot(req)
        .await?
        .into_body()
        .collect()
        .await?
        .to_bytes();
    let trust = gait_bundle::TrustRoot::from_public_keys(vec![public]);
    let verified = gait_bundle::verify(
        &raw,
        &trust,
        &gait_bundle::Scope::from_parts("acme", "web", "prod")?,
        Some(1),
        now(),
    )?;
    anyhow::ensure!(
        verified.digest_hex == second["digest"].as_str().unwrap_or_default(),
        "digest differs"
    );
    anyhow::ensure!(
        gait_bundle::verify(
            &raw,
            &trust,
            &gait_bundle::Scope::from_parts("other", "web", "prod")?,
            None,
            now()
        )
        .is_err(),
        "scope bound"
    );
    Ok(())
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

async fn every_documented_route_is_served(db: &TestStore) -> anyhow::Result<()> {
    let (app, _) = app(db);
    let doc: Value = serde_json::from_str(OPENAPI_JSON)?;
    let paths = doc["paths"].as_object().cloned().unwrap_or_default();
    anyhow::ensure!(paths.len() >= 9, "openapi lists {} paths", paths.len());
    for (path, ops) in paths {
        let concrete = path
            .replace("{org}", "acme")
            .replace("{project}", "web")
            .replace("{env}", "prod")
            .replace("{agent_id}", "a1");
        for method in ops
            .as_object()
            .map(|o| o.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default()
        {
            let body = (method == "post").then(|| json!({"policies": {"p.yaml": POLICY}}));
            let (s, v) = call(&app, &method.to_uppercase(), &concrete, Some(TOKEN), body).await;
            // A route the router does not know answers the fallbacks' 404 or 405.
            let unrouted = v["error"]["code"] == "method_not_allowed"
                || v["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("no such route"));
            anyhow::ensure!(
                !unrouted,
                "{method} {path} is documented but not routed ({s})"
            );
        }
    }
    let (s, text) = call(&app, "GET", "/metrics", None, None).await;
    anyhow::ensure!(
        s == StatusCode::OK
            && text
                .as_str()
                .is_some_and(|t| t.contains("gait_aggregator_bundles_published_total 1")),
        "metrics: {text}"
    );
    let (s, v) = call(&app, "GET", "/readyz", None, None).await;
    anyhow::ensure!(
        s == StatusCode::OK && v["store"] == db.backend(),
        "readyz: {v}"
    );
    Ok(())
}

async fn agents_are_paged_with_a_cursor_and_bad_paging_is_refused(
    db: &TestStore,
) -> anyhow::Result<()> {
    let (app, _) = app(db);
    for i in 0..5 {
        let key = gait_store::AgentKey {
            tenant: gait_store::Tenant::from_parts("acme", "web", "prod")?,
            agent_id: format!("a{i}").parse()?,
        };
        let hello = gait_store::AgentHello {
            cert_serial: gait_store::CertSerial::parse("0a")?,
            cert_not_after_unix_ms: i64::MAX,
            cert_issuer: "CN=test CA".into(),
            remote_addr: "127.0.0.1:1".into(),
            agent_version: "0.1.0".into(),
            active_bundle: None,
            received_bundle: None,
            outbox_depth: 0,
            shed_total: 0,
        };
        db.store()
            .agent_connected(&key, &hello, now() * 1000)
            .await?;
    }
    let mut ids = Vec::new();
    let mut uri = "/v1/orgs/acme/agents?limit=2".to_owned();
    for _ in 0..10 {
        let (s, v) = call(&app, "GET", &uri, Some(TOKEN), None).await;
        anyhow::ensure!(s == StatusCode::OK, "{uri}: {s} {v}");
        ids.extend(
            v["agents"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a["agent_id"].as_str().map(str::to_owned)),
        );
        match v["next_after"].as_str() {
            Some(next) => uri = format!("/v1/orgs/acme/agents?limit=2&after={next}"),
            None => break,
        }
    }
    anyhow::ensure!(ids == ["a0", "a1", "a2", "a3", "a4"], "paged ids: {ids:?}");
    for bad in ["limit=0", "limit=5001", "after=web", "after=web/prod/A*"] {
        let (s, v) = call(
            &app,
            "GET",
            &format!("/v1/orgs/acme/agents?{bad}"),
            Some(TOKEN),
            None,
        )
        .await;
        anyhow::ensure!(s == StatusCode::BAD_REQUEST, "{bad}: {s} {v}");
    }
    Ok(())
}

/// Sends `body` with `content_type` (and the admin token) and returns the status and the JSON answer.
async fn raw(
    app: &axum::Router,
    method: &str,
    uri: &str,
    content_type: &str,
    body: Vec<u8>,
) -> anyhow::Result<(StatusCode, Value)> {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", content_type)
        .body(Body::from(body))?;
    let resp = app.clone().oneshot(req).await?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    let value = serde_json::from_slice(&bytes)
        .map_err(|e| anyhow::anyhow!("{status}: answer is not JSON ({e}): {bytes:?}"))?;
    Ok((status, value))
}

fn ensure_shape(
    what: &str,
    got: (StatusCode, Value),
    status: StatusCode,
    code: &str,
) -> anyhow::Result<()> {
    let (s, v) = got;
    anyhow::ensure!(
        s == status
            && v["error"]["code"] == code
            && v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
        "{what}: expected {status} {code}, got {s} {v}"
    );
    anyhow::ensure!(
        v.as_object().map(|o| o.len()) == Some(1)
            && v["error"].as_object().map(|o| o.len()) == Some(2),
        "{what}: not the one error shape: {v}"
    );
    Ok(())
}

async fn every_error_has_the_one_json_shape(db: &TestStore) -> anyhow::Result<()> {
    let (app, _) = app(db);
    let publish = "/v1/orgs/acme/projects/web/envs/prod/bundles";
    let json_body = json!({"policies": {"p.yaml": POLICY}})
        .to_string()
        .into_bytes();
    ensure_shape(
        "unknown route",
        raw(&app, "GET", "/v2/nothing", "application/json", Vec::new()).await?,
        StatusCode::NOT_FOUND,
        "not_found",
    )?;
    ensure_shape(
        "wrong method on a public route",
        raw(&app, "DELETE", "/healthz", "application/json", Vec::new()).await?,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    )?;
    ensure_shape(
        "wrong method on an API route",
        raw(&app, "PUT", publish, "application/json", json_body.clone()).await?,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    )?;
    ensure_shape(
        "body not JSON",
        raw(&app, "POST", publish, "text/plain", json_body).await?,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )?;
    let mut huge = br#"{"policies": {"p.yaml": ""#.to_vec();
    huge.resize(9 * 1024 * 1024, b'a');
    huge.extend_from_slice(br#""}}"#);
    ensure_shape(
        "body over the limit",
        raw(&app, "POST", publish, "application/json", huge).await?,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    )?;
    ensure_shape(
        "malformed JSON",
        raw(&app, "POST", publish, "application/json", b"{".to_vec()).await?,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )?;
    ensure_shape(
        "bad identifier",
        raw(
            &app,
            "GET",
            "/v1/orgs/ACME/agents",
            "application/json",
            Vec::new(),
        )
        .await?,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )?;
    ensure_shape(
        "refused policy",
        raw(
            &app,
            "POST",
            publish,
            "application/json",
            json!({"policies": {"p.yaml": "not: a policy"}})
                .to_string()
                .into_bytes(),
        )
        .await?,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_policy",
    )?;
    // The edge issue's routes: a malformed path parameter is a 400 naming it, never a crash or a 500.
    let env = "/v1/orgs/acme/projects/web/envs/prod";
    for (what, path) in [
        (
            "bad digest",
            format!("{env}/artifacts/not-a-digest/content"),
        ),
        (
            "upper-case digest",
            format!("{env}/artifacts/{}/content", "A".repeat(64)),
        ),
        ("bad epoch", format!("{env}/bundles/x/raw")),
        (
            "epoch over the limit",
            format!("{env}/bundles/99999999999999999999999/raw"),
        ),
        (
            "bad agent id",
            format!("{env}/agents/Not_An_Id!/trace-keys"),
        ),
        (
            "bad evidence parameter",
            format!("{env}/evidence/records?verdict=maybe"),
        ),
    ] {
        let got = raw(&app, "GET", &path, "application/json", Vec::new()).await?;
        anyhow::ensure!(
            got.0 == StatusCode::BAD_REQUEST || got.0 == StatusCode::NOT_FOUND,
            "{what}: {path} answered {} {}",
            got.0,
            got.1
        );
        let code = if got.0 == StatusCode::BAD_REQUEST {
            "invalid_request"
        } else {
            "not_found"
        };
        ensure_shape(
            what,
            got,
            if code == "not_found" {
                StatusCode::NOT_FOUND
            } else {
                StatusCode::BAD_REQUEST
            },
            code,
        )?;
    }
    Ok(())
}

/// A request is counted under its matched route template (never the raw path with its ids), method and status,
/// with its latency; a path no route matches is `unmatched`. Labelled series exist at zero before any event.
async fn requests_are_counted_by_route_template_and_status(db: &TestStore) -> anyhow::Result<()> {
    let (app, _) = app(db);
    let (_, before) = call(&app, "GET", "/metrics", None, None).await;
    let before = before.as_str().unwrap_or_default().to_owned();
    for series in [
        "gait_aggregator_http_auth_failures_total{reason=\"missing\"} 0\n",
        "gait_aggregator_identity_alerts_total{kind=\"duplicate_instance\"} 0\n",
        "gait_aggregator_connections_refused_total{stage=\"revoked\"} 0\n",
        "gait_aggregator_batch_commit_duration_seconds_count 0\n",
    ] {
        anyhow::ensure!(
            before.contains(series),
            "{series} missing before any event:\n{before}"
        );
    }
    let (s, _) = call(&app, "GET", "/v1/orgs/acme/agents", Some(TOKEN), None).await;
    anyhow::ensure!(s == StatusCode::OK, "agents: {s}");
    let (s, _) = call(&app, "GET", "/v1/orgs/acme/agents", None, None).await;
    anyhow::ensure!(s == StatusCode::UNAUTHORIZED, "agents without a token: {s}");
    let (s, _) = call(&app, "GET", "/no/such/route/acme", None, None).await;
    anyhow::ensure!(s == StatusCode::NOT_FOUND, "unknown route: {s}");
    let (_, text) = call(&app, "GET", "/metrics", None, None).await;
    let text = text.as_str().unwrap_or_default().to_owned();
    for series in [
        "gait_aggregator_http_requests_total{route=\"/v1/orgs/{org}/agents\",method=\"GET\",status=\"200\"} 1\n",
        "gait_aggregator_http_requests_total{route=\"/v1/orgs/{org}/agents\",method=\"GET\",status=\"401\"} 1\n",
        "gait_aggregator_http_requests_total{route=\"unmatched\",method=\"GET\",status=\"404\"} 1\n",
        "gait_aggregator_http_requests_total{route=\"/metrics\",method=\"GET\",status=\"200\"} 1\n",
        "gait_aggregator_http_request_duration_seconds_count{route=\"/v1/orgs/{org}/agents\",method=\"GET\"} 2\n",
    ] {
        anyhow::ensure!(text.contains(series), "{series} missing:\n{text}");
    }
    anyhow::ensure!(
        text.lines()
            .filter(|l| l.starts_with("gait_aggregator_http_request"))
            .all(|l| !l.contains("acme")),
        "a raw path leaked into a label:\n{text}"
    );
    // Prometheus asks for OpenMetrics and gets it; without that Accept, the text format (no `# EOF`).
    let req = Request::builder()
        .uri("/metrics")
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
        )
        .body(Body::empty())?;
    let resp = app.clone().oneshot(req).await?;
    let content_type = resp.headers()["content-type"].to_str()?.to_owned();
    let body = resp.into_body().collect().await?.to_bytes();
    let body = String::from_utf8_lossy(&body);
    anyhow::ensure!(
        content_type.starts_with("application/openmetrics-text") && body.ends_with("# EOF\n"),
        "{content_type}\n{body}"
    );
    anyhow::ensure!(
        body.contains("# TYPE gait_aggregator_records_inserted counter\n")
            && body.contains("\ngait_aggregator_records_inserted_total 0\n"),
        "{body}"
    );
    anyhow::ensure!(!text.contains("# EOF"), "{text}");
    Ok(())
}

gait_store::store_tests!(
    requests_are_counted_by_route_template_and_status,
    every_error_has_the_one_json_shape,
    publish_is_authenticated_validated_and_signed,
    every_documented_route_is_served,
    agents_are_paged_with_a_cursor_and_bad_paging_is_refused
);

/// Every `/v1` route the router serves declares its permission and scope in the OpenAPI document, the same as
/// in the route table, and the document lists no `/v1` operation the router does not serve.
#[test]
fn openapi_declares_each_endpoints_permission_as_the_route_table_does() -> anyhow::Result<()> {
    let doc: serde_json::Value = serde_json::from_str(OPENAPI_JSON)?;
    let mut documented = std::collections::BTreeSet::new();
    for (path, ops) in doc["paths"].as_object().context("paths")? {
        if !path.starts_with("/v1/") {
            continue;
        }
        for (method, op) in ops.as_object().context("operations")? {
            // A public operation (`security: []`, e.g. enrollment, whose join token is the credential) is
            // outside the bearer-token layer and declares no permission.
            if op["security"].as_array().is_some_and(Vec::is_empty) {
                anyhow::ensure!(
                    op.get("x-gait-permission").is_none(),
                    "{method} {path}: public yet declares a permission"
                );
                continue;
            }
            let permission = op["x-gait-permission"]
                .as_str()
                .with_context(|| format!("{method} {path}: no x-gait-permission"))?;
            let scope = op["x-gait-scope"]
                .as_str()
                .with_context(|| format!("{method} {path}: no x-gait-scope"))?;
            anyhow::ensure!(
                op["responses"]["403"].is_object(),
                "{method} {path}: no 403 response documented"
            );
            documented.insert((
                method.to_uppercase(),
                path.clone(),
                permission.to_owned(),
                scope.to_owned(),
            ));
        }
    }
    let served: std::collections::BTreeSet<_> = gait_aggregator::api::endpoints()
        .into_iter()
        .map(|e| {
            (
                e.method.to_string(),
                e.path.to_owned(),
                e.permission.as_str().to_owned(),
                e.scope.as_str().to_owned(),
            )
        })
        .collect();
    anyhow::ensure!(
        documented == served,
        "OpenAPI and the route table disagree:\nonly documented: {:?}\nonly served: {:?}",
        documented.difference(&served).collect::<Vec<_>>(),
        served.difference(&documented).collect::<Vec<_>>()
    );
    Ok(())
}
