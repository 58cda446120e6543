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
use axum::http::Method;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{MethodRouter, delete, get, post};
use gait_store::Tenant;

mod access;
mod agents;
mod analysis;
mod approvals;
mod artifact_content;
mod audit;
mod auth;
mod bundles;
mod conformance;
mod enroll;
mod error;
mod evidence;
mod health;
mod join_tokens;
mod policies;
mod records;
mod replay;
mod rollouts;
mod signing_keys;
mod trace_keys;

pub use auth::ScopeFrom;
pub use bundles::PublishBody;
pub use error::{ApiError, RequestError};

use crate::auth::{Authorizer, Permission};
use crate::metrics::Metrics;
use crate::registry::Registry;

/// The OpenAPI document of this API, served at `/openapi.json`.
pub const OPENAPI_JSON: &str = include_str!("../../schemas/openapi.json");

/// Largest request body accepted (a publish carries up to 64 policies).
const MAX_BODY: usize = 8 * 1024 * 1024;

/// State shared by the handlers.
///
/// The edges never hold the store (LAYOUT rule 5): every read and change goes through a feature service that
/// takes the caller's `Authorized<…>`; the composition root (`app.rs`) builds them from the store.
#[derive(Clone)]
pub struct AppState {
    /// Signs and distributes policy bundles.
    pub registry: Arc<Registry>,
    /// The operators' reads of the fleet: inventory, alerts, records, gaps; and the readiness ping.
    pub fleet: Arc<crate::fleet::Fleet>,
    /// Role bindings as the access API reads and changes them.
    pub bindings: Arc<crate::auth::bindings::Bindings>,
    pub metrics: Arc<Metrics>,
    /// The bootstrap admin token (what it may do: [`Authorizer::admin_token_mode`]).
    pub admin_token: Arc<String>,
    /// Role bindings and the authorization decision.
    pub authorizer: Arc<Authorizer>,
    /// Verifier of operators' OIDC bearer tokens (`auth.oidc`); `None` when OIDC is off.
    pub oidc: Option<Arc<crate::auth::oidc::OidcVerifier>>,
    /// The tamper-evident audit log (signs checkpoints on demand).
    pub audit: Arc<crate::audit::AuditLog>,
    /// Join tokens and enrollment.
    pub enrollment: Arc<crate::enroll::Enrollment>,
    /// Approval policies, requests and decisions.
    pub approvals: Arc<crate::approval::Approvals>,
    /// Artifact bytes agents uploaded (`None`: the content route answers 404).
    pub uploads: Option<Arc<crate::evidence::Uploads>>,
    /// Lookups in the evidence index.
    pub evidence: Arc<crate::evidence::query::EvidenceIndex>,
    /// Replay of candidate policies over the captured decisions (signs reports).
    pub replay: Arc<crate::replay::Replay>,
    /// Staged rollouts.
    pub rollouts: Arc<crate::rollout::Rollouts>,
    /// Fleet analytics: families, posture, the change gate.
    pub analytics: Arc<crate::analysis::Analytics>,
}

/// One `/v1` endpoint: its method and path template, the permission it declares and where that permission is
/// checked. The OpenAPI document states the same (`x-gait-permission`, `x-gait-scope`) and a test keeps the two
/// equal; the RBAC matrix test walks this list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// HTTP method.
    pub method: Method,
    /// Path template (`{org}` style).
    pub path: &'static str,
    /// What the caller must hold.
    pub permission: Permission,
    /// Over which scope.
    pub scope: ScopeFrom,
}

/// Every `/v1` route with its handler. The one place an endpoint declares its permission: the router attaches
/// [`auth::require`] with it, and the handler's `Caller`/`Pending` extractor finds nothing without it.
fn v1_routes() -> Vec<(Endpoint, MethodRouter<AppState>)> {
    const JOIN_TOKENS: &str = "/v1/orgs/{org}/projects/{project}/envs/{env}/join-tokens";
    const JOIN_TOKEN: &str = "/v1/orgs/{org}/projects/{project}/envs/{env}/join-tokens/{token_id}";
    const AUDIT_ORG_CHECKPOINT: &str = "/v1/orgs/{org}/audit/checkpoint";
    const AUDIT_ORG_ENTRIES: &str = "/v1/orgs/{org}/audit/entries";
    const AUDIT_ORG_PROOF: &str = "/v1/orgs/{org}/audit/proof";
    const AUDIT_ENV_CHECKPOINT: &str =
        "/v1/orgs/{org}/projects/{project}/envs/{env}/audit/checkpoint";
    const AUDIT_ENV_ENTRIES: &str = "/v1/orgs/{org}/projects/{project}/envs/{env}/audit/entries";
    const AUDIT_ENV_PROOF: &str = "/v1/orgs/{org}/projects/{project}/envs/{env}/audit/proof";
    const EVIDENCE_ORG_RECORDS: &str = "/v1/orgs/{org}/evidence/records";
    const EVIDENCE_ORG_ARTIFACTS: &str = "/v1/orgs/{org}/evidence/artifacts";
    const EVIDENCE_ENV_RECORDS: &str =
        "/v1/orgs/{org}/projects/{project}/envs/{env}/evidence/records";
    const EVIDENCE_ENV_ARTIFACTS: &str =
        "/v1/orgs/{org}/projects/{project}/envs/{env}/evidence/artifacts";
    const POLICIES: &str = "/v1/orgs/{org}/policies";
    const POLICY: &str = "/v1/orgs/{org}/policies/{digest}";
    const POLICY_DIFF: &str = "/v1/orgs/{org}/policies/{digest}/diff/{other}";
    const ENV_PIN: &str = "/v1/orgs/{org}/projects/{project}/envs/{env}/pin";
    const ENV_PINS: &str = "/v1/orgs/{org}/projects/{project}/envs/{env}/pins";
    const ENV_ROLLBACK: &str = "/v1/orgs/{org}/projects/{project}/envs/{env}/rollback";
    const ROLLOUTS: &str = "/v1/orgs/{org}/rollouts";
    const ROLLOUT: &str = "/v1/orgs/{org}/rollouts/{id}";
    const ROLLOUT_HEALTH: &str = "/v1/orgs/{org}/rollouts/{id}/health";
    const ROLLOUT_PAUSE: &str = "/v1/orgs/{org}/rollouts/{id}/pause";
    const ROLLOUT_RESUME: &str = "/v1/orgs/{org}/rollouts/{id}/resume";
    const ROLLOUT_PROMOTE: &str = "/v1/orgs/{org}/rollouts/{id}/promote";
    const ROLLOUT_ABORT: &str = "/v1/orgs/{org}/rollouts/{id}/abort";
    const ROLLOUT_RETRY: &str = "/v1/orgs/{org}/rollouts/{id}/retry";
    const AGENT_LABELS: &str =
        "/v1/orgs/{org}/projects/{project}/envs/{env}/agents/{agent_id}/labels";
    const CONFORMANCE_BASELINE: &str = "/v1/orgs/{org}/conformance/baseline";
    use Permission as P;
    use ScopeFrom::{Deployment, Env, Org, Request};
    let e =
        |method: Method, path: &'static str, permission: Permission, scope: ScopeFrom| Endpoint {
            method,
            path,
            permission,
            scope,
        };
    vec![
        (
            e(
                Method::POST,
                "/v1/orgs/{org}/projects/{project}/envs/{env}/bundles",
                P::BundlePublish,
                Env,
            ),
            post(bundles::publish),
        ),
        (
            e(
                Method::GET,
                "/v1/orgs/{org}/projects/{project}/envs/{env}/bundles/latest",
                P::BundleRead,
                Env,
            ),
            get(bundles::latest_bundle),
        ),
        (
            e(
                Method::GET,
                "/v1/orgs/{org}/projects/{project}/envs/{env}/bundles/latest/raw",
                P::BundleRead,
                Env,
            ),
            get(bundles::latest_bundle_raw),
        ),
        (
            e(
                Method::GET,
                "/v1/orgs/{org}/projects/{project}/envs/{env}/bundles/{epoch}/raw",
                P::BundleRead,
                Env,
            ),
            get(bundles::bundle_raw_at_epoch),
        ),
        (
            e(Method::GET, "/v1/orgs/{org}/agents", P::AgentRead, Org),
            get(agents::list_agents),
        ),
        (
            e(
                Method::GET,
                "/v1/orgs/{org}/projects/{project}/envs/{env}/alerts",
                P::AgentRead,
                Env,
            ),
            get(agents::list_alerts),
        ),
        (
            e(
                Method::GET,
                "/v1/orgs/{org}/projects/{project}/envs/{env}/agents/{agent_id}/records",
                P::RecordRead,
                Env,
            ),
            get(records::agent_records),
        ),
        (
            e(
                Method::GET,
                "/v1/orgs/{org}/projects/{project}/envs/{env}/agents/{agent_id}/gaps",
                P::RecordRead,
                Env,
            ),
            get(records::agent_gaps),
        ),
        (
            e(
                Method::GET,
                "/v1/orgs/{org}/projects/{project}/envs/{env}/trace-keys",
                P::AgentRead,
                Env,
            ),
            get(trace_keys::env_trace_keys),
        ),
        (
            e(
                Method::GET,
                "/v1/orgs/{org}/projects/{project}/envs/{env}/agents/{agent_id}/trace-keys",
                P::AgentRead,
                Env,
            ),
            get(trace_keys::agent_trace_keys),
        ),
        (
            e(Method::GET, "/v1/access/bindings", P::BindingRead, Request),
            get(access::list_bindings),
        ),
        (
            e(
                Method::POST,
                "/v1/access/bindings",
                P::BindingWrite,
                Request,
            ),
            post(access::grant_binding),
        ),
        (
            e(
                Method::DELETE,
                "/v1/access/bindings/{id}",
                P::BindingWrite,
                Request,
            ),
            delete(access::revoke_binding),
        ),
        (
            e(
                Method::GET,
                "/v1/audit/checkpoint",
                P::AuditRead,
                Deployment,
            ),
            get(audit::checkpoint::<crate::auth::Deployment>),
        ),
        (
            e(Method::GET, "/v1/audit/entries", P::AuditRead, Deployment),
            get(audit::entries),
        ),
        // The audit log: an entry's inclusion proof; and the per-tenant view (ADR 0004, s21-layout).
        (
            e(Method::GET, "/v1/audit/proof", P::AuditRead, Deployment),
            get(audit::proof::<crate::auth::Deployment>),
        ),
        (
            e(Method::GET, AUDIT_ORG_CHECKPOINT, P::AuditRead, Org),
            get(audit::checkpoint::<gait_store::Org>),
        ),
        (
            e(Method::GET, AUDIT_ORG_ENTRIES, P::AuditRead, Org),
            get(audit::tenant_entries::<gait_store::Org>),
        ),
        (
            e(Method::GET, AUDIT_ORG_PROOF, P::AuditRead, Org),
            get(audit::proof::<gait_store::Org>),
        ),
        (
            e(Method::GET, AUDIT_ENV_CHECKPOINT, P::AuditRead, Env),
            get(audit::checkpoint::<Tenant>),
        ),
        (
            e(Method::GET, AUDIT_ENV_ENTRIES, P::AuditRead, Env),
            get(audit::tenant_entries::<Tenant>),
        ),
        (
            e(Method::GET, AUDIT_ENV_PROOF, P::AuditRead, Env),
            get(audit::proof::<Tenant>),
        ),
        (
            e(Method::POST, JOIN_TOKENS, P::JoinTokenWrite, Env),
            post(join_tokens::create),
        ),
        (
            e(Method::GET, JOIN_TOKENS, P::JoinTokenRead, Env),
            get(join_tokens::list),
        ),
        (
            e(Method::DELETE, JOIN_TOKEN, P::JoinTokenWrite, Env),
            delete(join_tokens::revoke),
        ),
        (
            e(
                Method::GET,
                "/v1/approval-policies",
                P::ApprovalRead,
                Request,
            ),
            get(approvals::list_policies),
        ),
        (
            e(
                Method::PUT,
                "/v1/approval-policies",
                P::ApprovalPolicyWrite,
                Request,
            ),
            axum::routing::put(approvals::set_policy),
        ),
        (
            e(
                Method::DELETE,
                "/v1/approval-policies",
                P::ApprovalPolicyWrite,
                Request,
            ),
            delete(approvals::remove_policy),
        ),
        (
            e(
                Method::GET,
                "/v1/orgs/{org}/projects/{project}/envs/{env}/approvals",
                P::ApprovalRead,
                Env,
            ),
            get(approvals::list_requests),
        ),
        (
            e(
                Method::GET,
                "/v1/orgs/{org}/projects/{project}/envs/{env}/approvals/{id}",
                P::ApprovalRead,
                Env,
            ),
            get(approvals::show_request),
        ),
        (
            e(
                Method::POST,
                "/v1/orgs/{org}/projects/{project}/envs/{env}/approvals/{id}/approve",
                P::ApprovalDecide,
                Env,
            ),
            post(approvals::approve),
        ),
        (
            e(
                Method::POST,
                "/v1/orgs/{org}/projects/{project}/envs/{env}/approvals/{id}/deny",
                P::ApprovalDecide,
                Env,
            ),
            post(approvals::deny),
        ),
        (
            e(
                Method::GET,
                "/v1/orgs/{org}/projects/{project}/envs/{env}/artifacts/{sha256}/content",
                P::EvidenceRead,
                Env,
            ),
            get(artifact_content::content),
        ),
        // The evidence index (issue 15 item 10): an org's lookups, and an environment's.
        (
            e(Method::GET, EVIDENCE_ORG_RECORDS, P::EvidenceRead, Org),
            get(evidence::records::<gait_store::Org>),
        ),
        (
            e(Method::GET, EVIDENCE_ORG_ARTIFACTS, P::EvidenceRead, Org),
            get(evidence::artifacts::<gait_store::Org>),
        ),
        (
            e(Method::GET, EVIDENCE_ENV_RECORDS, P::EvidenceRead, Env),
            get(evidence::records::<Tenant>),
        ),
        (
            e(Method::GET, EVIDENCE_ENV_ARTIFACTS, P::EvidenceRead, Env),
            get(evidence::artifacts::<Tenant>),
        ),
        // Bundle signing keys (issue 13 item 7).
        (
            e(
                Method::GET,
                "/v1/signing-keys",
                P::SigningKeyRead,
                Deployment,
            ),
            get(signing_keys::list),
        ),
        (
            e(
                Method::POST,
                "/v1/signing-keys/rotate",
                P::SigningKeyWrite,
                Deployment,
            ),
            post(signing_keys::rotate),
        ),
        (
            e(
                Method::POST,
                "/v1/signing-keys/{key_id}/revoke",
                P::SigningKeyWrite,
                Deployment,
            ),
            post(signing_keys::revoke),
        ),
        // The policy registry and environment pins (issue 13 items 1-2).
        (
            e(Method::POST, POLICIES, P::PolicyWrite, Org),
            post(policies::push),
        ),
        (
            e(Method::GET, POLICIES, P::PolicyRead, Org),
            get(policies::list),
        ),
        (
            e(Method::GET, POLICY, P::PolicyRead, Org),
            get(policies::show),
        ),
        (
            e(Method::GET, POLICY_DIFF, P::PolicyRead, Org),
            get(policies::diff),
        ),
        (
            e(Method::PUT, ENV_PIN, P::RolloutWrite, Env),
            axum::routing::put(policies::pin),
        ),
        (
            e(Method::GET, ENV_PINS, P::PolicyRead, Env),
            get(policies::pins),
        ),
        (
            e(Method::POST, ENV_ROLLBACK, P::RolloutWrite, Env),
            post(policies::rollback),
        ),
        // Conformance to the org's required baseline (issue 13 item 6).
        (
            e(Method::PUT, CONFORMANCE_BASELINE, P::PolicyWrite, Org),
            axum::routing::put(conformance::set_baseline),
        ),
        (
            e(Method::GET, CONFORMANCE_BASELINE, P::PolicyRead, Org),
            get(conformance::show_baseline),
        ),
        (
            e(Method::DELETE, CONFORMANCE_BASELINE, P::PolicyWrite, Org),
            delete(conformance::clear_baseline),
        ),
        (
            e(
                Method::GET,
                "/v1/orgs/{org}/conformance",
                P::PolicyRead,
                Org,
            ),
            get(conformance::conformance),
        ),
        // Replay before rollout (issue 13).
        (
            e(Method::POST, "/v1/orgs/{org}/replay", P::ReplayRun, Org),
            post(replay::run),
        ),
        (
            e(
                Method::GET,
                "/v1/orgs/{org}/replay/corpus",
                P::ReplayRun,
                Org,
            ),
            get(replay::corpus),
        ),
        (
            e(Method::GET, "/v1/orgs/{org}/replay/key", P::ReplayRun, Org),
            get(replay::key),
        ),
        // Staged rollouts (issue 13 items 3 and 5).
        (
            e(Method::POST, ROLLOUTS, P::RolloutWrite, Org),
            post(rollouts::create),
        ),
        (
            e(Method::GET, ROLLOUTS, P::PolicyRead, Org),
            get(rollouts::list),
        ),
        (
            e(Method::GET, ROLLOUT, P::PolicyRead, Org),
            get(rollouts::show),
        ),
        (
            e(Method::GET, ROLLOUT_HEALTH, P::PolicyRead, Org),
            get(rollouts::health),
        ),
        (
            e(Method::POST, ROLLOUT_PAUSE, P::RolloutWrite, Org),
            post(rollouts::pause),
        ),
        (
            e(Method::POST, ROLLOUT_RESUME, P::RolloutWrite, Org),
            post(rollouts::resume),
        ),
        (
            e(Method::POST, ROLLOUT_PROMOTE, P::RolloutWrite, Org),
            post(rollouts::promote),
        ),
        (
            e(Method::POST, ROLLOUT_ABORT, P::RolloutWrite, Org),
            post(rollouts::abort),
        ),
        (
            e(Method::POST, ROLLOUT_RETRY, P::RolloutWrite, Org),
            post(rollouts::retry),
        ),
        (
            e(Method::PUT, AGENT_LABELS, P::RolloutWrite, Env),
            axum::routing::put(rollouts::set_labels),
        ),
        // Fleet analytics (issue 12): read over the org, or a project or environment named by `project`/`env`.
        (
            e(
                Method::GET,
                "/v1/orgs/{org}/analysis/families",
                P::EvidenceRead,
                Request,
            ),
            get(analysis::families),
        ),
        (
            e(
                Method::GET,
                "/v1/orgs/{org}/analysis/families/{family}",
                P::EvidenceRead,
                Request,
            ),
            get(analysis::family),
        ),
        (
            e(
                Method::PUT,
                "/v1/orgs/{org}/analysis/families/{family}/merge",
                P::PolicyWrite,
                Org,
            ),
            axum::routing::put(analysis::merge),
        ),
        (
            e(
                Method::DELETE,
                "/v1/orgs/{org}/analysis/families/{family}/merge",
                P::PolicyWrite,
                Org,
            ),
            axum::routing::delete(analysis::split),
        ),
        (
            e(
                Method::GET,
                "/v1/orgs/{org}/analysis/posture",
                P::EvidenceRead,
                Request,
            ),
            get(analysis::posture),
        ),
        (
            e(
                Method::GET,
                "/v1/orgs/{org}/projects/{project}/envs/{env}/change-gate",
                P::EvidenceRead,
                Env,
            ),
            get(analysis::change_gate),
        ),
        (
            e(
                Method::GET,
                "/v1/orgs/{org}/projects/{project}/envs/{env}/drift",
                P::EvidenceRead,
                Env,
            ),
            get(analysis::drift),
        ),
        (
            e(
                Method::GET,
                "/v1/orgs/{org}/projects/{project}/envs/{env}/verdict-shifts",
                P::EvidenceRead,
                Env,
            ),
            get(analysis::verdict_shifts),
        ),
    ]
}

/// Every `/v1` endpoint with its declared permission.
pub fn endpoints() -> Vec<Endpoint> {
    v1_routes().into_iter().map(|(e, _)| e).collect()
}

/// Build the router.
pub fn router(state: AppState) -> Router {
    let mut v1 = Router::new();
    for (endpoint, handler) in v1_routes() {
        let layer = middleware::from_fn_with_state(
            (state.clone(), endpoint.permission, endpoint.scope),
            auth::require,
        );
        v1 = v1.route(endpoint.path, handler.route_layer(layer));
    }
    let v1 = v1.route_layer(middleware::from_fn_with_state(
        state.clone(),
        auth::authenticate,
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
