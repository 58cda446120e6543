//! Approval governance over HTTP: approval policies (`/v1/approval-policies`, checked against the policy's own
//! scope like a role binding) and the approval requests of one environment
//! (`/v1/orgs/{org}/projects/{project}/envs/{env}/approvals…`: list, show, approve, deny). Each handler parses,
//! calls the `approval` feature with the caller's `Authorized<…>` and maps its error.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use gait_store::Tenant;
use serde::Deserialize;
use serde_json::json;

use super::access::scope_of;
use super::auth::{Caller, Pending};
use super::{ApiError, AppState, RequestError};
use crate::approval::ApprovalError;
use crate::approval::policy::PolicySpec;

impl From<ApprovalError> for ApiError {
    fn from(err: ApprovalError) -> Self {
        match &err {
            ApprovalError::NotFound { .. } | ApprovalError::PolicyNotFound { .. } => {
                Self::not_found(err.to_string())
            }
            _ if err.is_forbidden() => {
                Self::new(StatusCode::FORBIDDEN, "forbidden", err.to_string())
            }
            ApprovalError::Rule(_) | ApprovalError::ConfigOwned { .. } => {
                Self::new(StatusCode::CONFLICT, "conflict", err.to_string())
            }
            ApprovalError::Spec(_) | ApprovalError::Field { .. } => {
                Self::bad_request(err.to_string())
            }
            ApprovalError::Store(_) => match err {
                ApprovalError::Store(store) => store.into(),
                _ => Self::internal(err),
            },
            ApprovalError::Corrupt(_) | ApprovalError::Audit(_) => Self::internal(err),
        }
    }
}

/// `?org=&project=&env=` of the policy listing.
#[derive(Debug, Deserialize)]
pub(super) struct PolicyQuery {
    org: Option<String>,
    project: Option<String>,
    env: Option<String>,
}

/// Body of `PUT /v1/approval-policies`: the scope, the name and the rules.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetPolicyBody {
    /// The org (required).
    pub org: Option<String>,
    /// Absent: the whole org.
    pub project: Option<String>,
    /// Absent: the whole project.
    pub env: Option<String>,
    /// The policy's name within its scope.
    pub name: String,
    /// What it matches and the rules it sets.
    pub rules: PolicySpec,
}

pub(super) async fn list_policies(
    State(state): State<AppState>,
    pending: Pending,
    query: Result<Query<PolicyQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(RequestError::Query)?;
    let caller = pending.authorize(scope_of(q.org, q.project, q.env)?)?;
    let policies = state.approvals.policies(&caller).await?;
    Ok(Json(json!({ "policies": policies })).into_response())
}

pub(super) async fn set_policy(
    State(state): State<AppState>,
    pending: Pending,
    body: Result<Json<SetPolicyBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body.map_err(RequestError::Body)?;
    let caller = pending.authorize(scope_of(body.org, body.project, body.env)?)?;
    let policy = state
        .approvals
        .set_policy(&caller, &body.name, body.rules)
        .await?;
    Ok((StatusCode::OK, Json(json!({ "policy": policy }))).into_response())
}

/// `?org=&project=&env=&name=` of a policy removal.
#[derive(Debug, Deserialize)]
pub(super) struct RemovePolicyQuery {
    org: Option<String>,
    project: Option<String>,
    env: Option<String>,
    name: Option<String>,
}

pub(super) async fn remove_policy(
    State(state): State<AppState>,
    pending: Pending,
    query: Result<Query<RemovePolicyQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(RequestError::Query)?;
    let caller = pending.authorize(scope_of(q.org, q.project, q.env)?)?;
    let Some(name) = q.name.filter(|n| !n.trim().is_empty()) else {
        return Err(ApiError::bad_request(
            "name: give the policy's name (`?name=`)".to_owned(),
        ));
    };
    let removed = state.approvals.remove_policy(&caller, &name).await?;
    Ok(Json(json!({ "policy": removed })).into_response())
}

/// `?status=&limit=` of the request listing.
#[derive(Debug, Deserialize)]
pub(super) struct ListQuery {
    status: Option<String>,
    limit: Option<u32>,
}

pub(super) async fn list_requests(
    State(state): State<AppState>,
    Caller(caller): Caller<Tenant>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(RequestError::Query)?;
    let requests = state
        .approvals
        .list(&caller, q.status.as_deref(), q.limit.unwrap_or(100))
        .await?;
    Ok(Json(json!({ "approvals": requests })).into_response())
}

/// The `{id}` of a request path (with the tenancy parameters the auth layer read).
#[derive(Debug, Deserialize)]
pub(super) struct RequestPath {
    id: u64,
}

pub(super) async fn show_request(
    State(state): State<AppState>,
    Caller(caller): Caller<Tenant>,
    Path(path): Path<RequestPath>,
) -> Result<Response, ApiError> {
    let request = state.approvals.get(&caller, path.id).await?;
    Ok(Json(json!({ "approval": request })).into_response())
}

/// Body of approve/deny (optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecideBody {
    /// Why (a ticket, an incident); recorded as the token's `reason_code`.
    #[serde(default)]
    pub reason: String,
}

/// The optional JSON body of approve/deny: empty means no reason.
fn decide_body(body: &[u8]) -> Result<DecideBody, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(DecideBody::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "body: {e}; send {{\"reason\": \"...\"}} or nothing"
        ))
    })
}

pub(super) async fn approve(
    State(state): State<AppState>,
    Caller(caller): Caller<Tenant>,
    Path(path): Path<RequestPath>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let body = decide_body(&body)?;
    let outcome = state
        .approvals
        .approve(&caller, path.id, &body.reason)
        .await?;
    Ok(Json(outcome).into_response())
}

pub(super) async fn deny(
    State(state): State<AppState>,
    Caller(caller): Caller<Tenant>,
    Path(path): Path<RequestPath>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let body = decide_body(&body)?;
    let outcome = state.approvals.deny(&caller, path.id, &body.reason).await?;
    Ok(Json(outcome).into_response())
}
