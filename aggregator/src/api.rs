//! HTTP API of the aggregator (axum): health, readiness, metrics, OpenAPI, bundle publishing, agent inventory.
//!
//! `router(state)` is separate from serving so handler tests drive it with `oneshot` and no socket. Every
//! `/v1` route needs the admin bearer token (operators' OIDC identities and RBAC arrive with the tenancy work);
//! every error, unknown routes and methods included, has one JSON shape (see [`error`] for the status table):
//! `{"error":{"code":"<stable machine code>","message":"<what to do>"}}`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use gait_bundle::OnStale;
use gait_store::{AgentFilter, AgentKey, AgentPosition, MAX_AGENT_PAGE, Store, Tenant};
use serde::Deserialize;
use serde_json::json;

mod error;

pub use error::{ApiError, RequestError};

use crate::metrics::{self, Metrics};
use crate::pki::identity::validate_identifier;
use crate::registry::{PublishRequest, Registry};

/// The OpenAPI document of this API, served at `/openapi.json`.
pub const OPENAPI_JSON: &str = include_str!("../../schemas/openapi.json");

/// Largest request body accepted (a publish carries up to 64 policies).
const MAX_BODY: usize = 8 * 1024 * 1024;

/// State shared by the handlers.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    /// Bearer token that authorizes `/v1` requests.
    pub admin_token: Arc<String>,
}

/// Build the router.
pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route(
            "/v1/orgs/{org}/projects/{project}/envs/{env}/bundles",
            post(publish),
        )
        .route(
            "/v1/orgs/{org}/projects/{project}/envs/{env}/bundles/latest",
            get(latest_bundle),
        )
        .route(
            "/v1/orgs/{org}/projects/{project}/envs/{env}/bundles/latest/raw",
            get(latest_bundle_raw),
        )
        .route("/v1/orgs/{org}/agents", get(list_agents))
        .route(
            "/v1/orgs/{org}/projects/{project}/envs/{env}/agents/{agent_id}/records",
            get(agent_records),
        )
        .route(
            "/v1/orgs/{org}/projects/{project}/envs/{env}/agents/{agent_id}/gaps",
            get(agent_gaps),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .route("/openapi.json", get(openapi))
        .merge(v1)
        .fallback(|| async { ApiError::not_found("no such route; see /openapi.json") })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

async fn count_requests(State(state): State<AppState>, req: Request, next: Next) -> Response {
    state.metrics.inc(metrics::HTTP_REQUESTS, 1);
    next.run(req).await
}

async fn require_admin(
    State(state): State<AppState>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(token) if constant_time_eq(token.as_bytes(), state.admin_token.as_bytes()) => {
            next.run(req).await
        }
        Some(_) => ApiError::unauthorized("the bearer token is not valid").into_response(),
        None => ApiError::unauthorized(
            "send `Authorization: Bearer <token>`; the admin token is in <data-dir>/admin.token",
        )
        .into_response(),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn readyz(State(state): State<AppState>) -> Response {
    match tokio::time::timeout(Duration::from_secs(2), state.store.ping()).await {
        Ok(Ok(())) => {
            Json(json!({"status": "ready", "store": state.store.backend()})).into_response()
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness check: store unreachable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": "not_ready", "reason": "store unreachable"})),
            )
                .into_response()
        }
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not_ready", "reason": "store timeout"})),
        )
            .into_response(),
    }
}

async fn render_metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON).into_response()
}

fn tenant(org: String, project: String, env: String) -> Result<Tenant, ApiError> {
    for (field, value) in [("org", &org), ("project", &project), ("env", &env)] {
        validate_identifier(field, value)?;
    }
    Ok(Tenant { org, project, env })
}

/// Body of a publish request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishBody {
    /// Policy file name -> Gait policy YAML.
    pub policies: BTreeMap<String, String>,
    /// Seconds an agent may enforce without contact before it counts as stale.
    #[serde(default)]
    pub max_offline_seconds: Option<u64>,
    /// `keep` or `fail_closed`.
    #[serde(default)]
    pub on_stale: Option<String>,
    /// Seconds the bundle may be activated after signing.
    #[serde(default)]
    pub validity_seconds: Option<u64>,
}

async fn publish(
    State(state): State<AppState>,
    Path((org, project, env)): Path<(String, String, String)>,
    body: Result<Json<PublishBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let tenant = tenant(org, project, env)?;
    let Json(body) = body.map_err(RequestError::Body)?;
    let on_stale = match body.on_stale.as_deref() {
        None => None,
        Some("keep") => Some(OnStale::Keep),
        Some("fail_closed") => Some(OnStale::FailClosed),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "on_stale: `{other}` is not one of keep, fail_closed"
            )));
        }
    };
    if body.validity_seconds == Some(0) {
        return Err(ApiError::bad_request(
            "validity_seconds: must be at least 1",
        ));
    }
    let req = PublishRequest {
        policies: body.policies,
        max_offline_seconds: body.max_offline_seconds,
        on_stale,
        validity: body.validity_seconds.map(Duration::from_secs),
        created_by: "admin-token".into(),
    };
    match state.registry.publish(&tenant, req).await {
        Ok(published) => Ok((StatusCode::CREATED, Json(published)).into_response()),
        Err(e) => Err(e.into()),
    }
}

async fn latest_bundle(
    State(state): State<AppState>,
    Path((org, project, env)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let tenant = tenant(org, project, env)?;
    let bundle = state.registry.latest(&tenant).await?;
    let Some(bundle) = bundle else {
        return Err(ApiError::not_found(
            "no bundle has been published for this environment",
        ));
    };
    let manifest = gait_bundle::inspect(&bundle.bytes).map_err(ApiError::internal)?;
    Ok(Json(json!({
        "epoch": bundle.epoch,
        "digest": bundle.digest,
        "created_unix_ms": bundle.created_unix_ms,
        "created_by": bundle.created_by,
        "manifest": manifest,
    }))
    .into_response())
}

async fn latest_bundle_raw(
    State(state): State<AppState>,
    Path((org, project, env)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let tenant = tenant(org, project, env)?;
    let bundle = state.registry.latest(&tenant).await?;
    let Some(bundle) = bundle else {
        return Err(ApiError::not_found(
            "no bundle has been published for this environment",
        ));
    };
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        bundle.bytes.clone(),
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
struct AgentQuery {
    project: Option<String>,
    env: Option<String>,
    /// Cursor `project/env/agent_id` of the last agent of the previous page (`next_after`).
    after: Option<String>,
    /// Page size, 1..=5000 (default 500).
    limit: Option<u32>,
}

async fn list_agents(
    State(state): State<AppState>,
    Path(org): Path<String>,
    Query(q): Query<AgentQuery>,
) -> Result<Response, ApiError> {
    validate_identifier("org", &org)?;
    for (field, value) in [("project", &q.project), ("env", &q.env)] {
        if let Some(v) = value {
            validate_identifier(field, v)?;
        }
    }
    let after = match q.after.as_deref().filter(|a| !a.is_empty()) {
        Some(text) => Some(AgentPosition::from_cursor(text).ok_or_else(|| {
            ApiError::bad_request(format!(
                "after: {text:?} is not a cursor `project/env/agent_id`; pass the previous page's next_after"
            ))
        })?),
        None => None,
    };
    if let Some(a) = &after {
        for (field, v) in [
            ("after.project", &a.project),
            ("after.env", &a.env),
            ("after.agent_id", &a.agent_id),
        ] {
            validate_identifier(field, v)?;
        }
    }
    if let Some(limit) = q.limit
        && !(1..=MAX_AGENT_PAGE).contains(&limit)
    {
        return Err(ApiError::bad_request(format!(
            "limit: {limit} is out of range 1..={MAX_AGENT_PAGE}"
        )));
    }
    let filter = AgentFilter {
        org,
        project: q.project,
        env: q.env,
        after,
        limit: q.limit,
    };
    let agents = state.store.list_agents(&filter).await?;
    let full = u32::try_from(agents.len()).unwrap_or(u32::MAX) >= filter.page_size();
    let next_after = agents
        .last()
        .filter(|_| full)
        .map(|a| a.position().to_cursor());
    Ok(Json(json!({ "agents": agents, "next_after": next_after })).into_response())
}

#[derive(Debug, Deserialize)]
struct RecordQuery {
    #[serde(default)]
    after: u64,
    #[serde(default = "default_limit")]
    limit: u32,
}

fn default_limit() -> u32 {
    1000
}

async fn agent_records(
    State(state): State<AppState>,
    Path((org, project, env, agent_id)): Path<(String, String, String, String)>,
    Query(q): Query<RecordQuery>,
) -> Result<Response, ApiError> {
    let tenant = tenant(org, project, env)?;
    validate_identifier("agent_id", &agent_id)?;
    if q.limit == 0 || q.limit > 10_000 {
        return Err(ApiError::bad_request("limit: must be between 1 and 10000"));
    }
    let key = AgentKey { tenant, agent_id };
    let total = state.store.count_records(&key).await?;
    let rows = state.store.records(&key, q.after, q.limit).await?;
    let records: Vec<_> = rows
        .iter()
        .map(|r| {
            let payload = serde_json::from_slice::<serde_json::Value>(&r.payload)
                .unwrap_or_else(|_| json!({ "payload_hex": hex::encode(&r.payload) }));
            json!({
                "seq": r.seq,
                "class": r.class,
                "kind": r.kind,
                "hash": hex::encode(r.record_hash),
                "prev_hash": hex::encode(r.prev_hash),
                "created_unix_ms": r.created_unix_ms,
                "received_unix_ms": r.received_unix_ms,
                "bundle_epoch": r.bundle_epoch,
                "bundle_digest": r.bundle_digest,
                "bundle_since_ms": r.bundle_since_ms,
                "payload": payload,
            })
        })
        .collect();
    Ok(Json(json!({ "total": total, "records": records })).into_response())
}

async fn agent_gaps(
    State(state): State<AppState>,
    Path((org, project, env, agent_id)): Path<(String, String, String, String)>,
) -> Result<Response, ApiError> {
    let tenant = tenant(org, project, env)?;
    validate_identifier("agent_id", &agent_id)?;
    let gaps = state.store.gaps(&AgentKey { tenant, agent_id }).await?;
    Ok(Json(json!({ "gaps": gaps })).into_response())
}
