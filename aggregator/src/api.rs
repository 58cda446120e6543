//! HTTP API of the aggregator (axum): health, readiness, metrics, OpenAPI, bundle publishing, agent inventory.
//! One file per resource: `health`, `bundles`, `agents`, `records`; `auth` is the admin-token gate and `error`
//! the one error shape.
//!
//! `router(state)` is separate from serving so handler tests drive it with `oneshot` and no socket. Every
//! `/v1` route needs the admin bearer token (operators' OIDC identities and RBAC arrive with the tenancy work);
//! every error, unknown routes and methods included, has one JSON shape (see [`error`] for the status table):
//! `{"error":{"code":"<stable machine code>","message":"<what to do>"}}`.

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use gait_store::{Store, Tenant};

mod agents;
mod auth;
mod bundles;
mod enroll;
mod error;
mod health;
mod join_tokens;
mod records;

pub use bundles::PublishBody;
pub use error::{ApiError, RequestError};

use crate::metrics::Metrics;
use crate::registry::Registry;

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
    /// Join tokens and enrollment.
    pub enrollment: Arc<crate::enroll::Enrollment>,
}

/// Build the router.
pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route(
            "/v1/orgs/{org}/projects/{project}/envs/{env}/bundles",
            post(bundles::publish),
        )
        .route(
            "/v1/orgs/{org}/projects/{project}/envs/{env}/bundles/latest",
            get(bundles::latest_bundle),
        )
        .route(
            "/v1/orgs/{org}/projects/{project}/envs/{env}/bundles/latest/raw",
            get(bundles::latest_bundle_raw),
        )
        .route("/v1/orgs/{org}/agents", get(agents::list_agents))
        .route(
            "/v1/orgs/{org}/projects/{project}/envs/{env}/alerts",
            get(agents::list_alerts),
        )
        .route(
            "/v1/orgs/{org}/projects/{project}/envs/{env}/agents/{agent_id}/records",
            get(records::agent_records),
        )
        .route(
            "/v1/orgs/{org}/projects/{project}/envs/{env}/agents/{agent_id}/gaps",
            get(records::agent_gaps),
        )
        .route(
            "/v1/orgs/{org}/projects/{project}/envs/{env}/join-tokens",
            post(join_tokens::create).get(join_tokens::list),
        )
        .route(
            "/v1/orgs/{org}/projects/{project}/envs/{env}/join-tokens/{token_id}",
            axum::routing::delete(join_tokens::revoke),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_admin,
        ));
    // The join token in the body is the credential of enrollment: no bearer token.
    let public = Router::new().route("/v1/enroll", post(enroll::enroll));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::render_metrics))
        .route("/openapi.json", get(health::openapi))
        .merge(v1)
        .merge(public)
        .fallback(|| async { ApiError::not_found("no such route; see /openapi.json") })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(gait_runtime::http::access::access_log(tracing::Level::INFO))
        .with_state(state)
}

/// Counts each request under its matched route template (never the raw path, whose ids are unbounded) with its
/// method and status, and observes its latency until the response head.
async fn count_requests(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().clone();
    let started = std::time::Instant::now();
    let response = next.run(req).await;
    state.metrics.observe_request(
        route,
        &method,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}
fn tenant(org: String, project: String, env: String) -> Result<Tenant, ApiError> {
    Ok(Tenant::new(
        ident("org", org)?,
        ident("project", project)?,
        ident("env", env)?,
    ))
}

/// A path or query parameter as its `gait-identity` type; a value that breaks the identifier rule is a 400
/// naming the parameter.
fn ident<T>(field: &str, value: String) -> Result<T, ApiError>
where
    T: TryFrom<String, Error = gait_identity::IdError>,
{
    T::try_from(value).map_err(|e| ApiError::bad_request(format!("{field}: {e}")))
}
