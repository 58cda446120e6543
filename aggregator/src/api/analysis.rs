//! `/v1/orgs/{org}/analysis/{families,families/{family},posture}` and
//! `/v1/orgs/{org}/projects/{project}/envs/{env}/{change-gate,drift,verdict-shifts}`: fleet analytics through
//! [`crate::analysis::Analytics`]. The analysis routes read the org, or the project or environment their
//! `project`/`env` parameters name, and check the caller's permission over exactly that scope — so an auditor
//! bound to one project reads it by naming it, and is refused the org.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use gait_analysis::gate::GatePolicy;
use gait_store::{BindingScope, Org, Tenant};

use super::auth::{Caller, Pending};
use super::{ApiError, AppState, RequestError};
use crate::analysis::{
    AnalysisError, FamiliesQuery, Format, PostureQuery, csv_families, csv_posture, format_of,
    scope_of,
};
use crate::auth::Authorized;

/// `GET /v1/orgs/{org}/analysis/families`: families in the scope, highest priority first.
pub(super) async fn families(
    State(state): State<AppState>,
    pending: Pending,
    Path(org): Path<String>,
    query: Result<Query<FamiliesQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(RequestError::Query)?;
    let format = format_of(q.format.as_deref())?;
    let caller = authorize(&pending, org, &q.org, &q.project, &q.env)?;
    let report = state.analytics.families(&caller, q.limit).await?;
    match format {
        Format::Json => Ok(Json(report).into_response()),
        Format::Csv => csv(csv_families(&report)),
    }
}

/// Body of a merge.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MergeBody {
    /// The family (id or dedup key) to read this one as part of.
    into: String,
    /// Why they are one incident (kept in the audit log).
    reason: String,
}

/// `PUT /v1/orgs/{org}/analysis/families/{family}/merge`: read `family` as part of `into`, org-wide. Audited.
pub(super) async fn merge(
    State(state): State<AppState>,
    Caller(caller): Caller<Org>,
    Path((_org, family)): Path<(String, String)>,
    body: Result<Json<MergeBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body.map_err(RequestError::Body)?;
    let merged = state
        .analytics
        .merge(
            &caller,
            &family,
            &body.into,
            &body.reason,
            crate::clock::unix_ms(),
        )
        .await?;
    Ok(Json(merged).into_response())
}

/// `DELETE /v1/orgs/{org}/analysis/families/{family}/merge`: split `family` out again. Audited.
pub(super) async fn split(
    State(state): State<AppState>,
    Caller(caller): Caller<Org>,
    Path((_org, family)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    Ok(Json(state.analytics.split(&caller, &family).await?).into_response())
}

/// Query of one family: the scope to read it in.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FamilyQuery {
    org: Option<String>,
    project: Option<String>,
    env: Option<String>,
}

/// `GET /v1/orgs/{org}/analysis/families/{family}`: one family (by id or dedup key) with its suggestions.
pub(super) async fn family(
    State(state): State<AppState>,
    pending: Pending,
    Path((org, family)): Path<(String, String)>,
    query: Result<Query<FamilyQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(RequestError::Query)?;
    let caller = authorize(&pending, org, &q.org, &q.project, &q.env)?;
    Ok(Json(state.analytics.family(&caller, &family).await?).into_response())
}

/// `GET /v1/orgs/{org}/analysis/posture`: posture of the scope over the last `days` days.
pub(super) async fn posture(
    State(state): State<AppState>,
    pending: Pending,
    Path(org): Path<String>,
    query: Result<Query<PostureQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(RequestError::Query)?;
    let format = format_of(q.format.as_deref())?;
    let caller = authorize(&pending, org, &q.org, &q.project, &q.env)?;
    let report = state
        .analytics
        .posture(&caller, q.days, crate::clock::unix_ms())
        .await?;
    match format {
        Format::Json => Ok(Json(report).into_response()),
        Format::Csv => csv(csv_posture(&report)),
    }
}

/// Query of a drift attribution.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DriftQuery {
    /// The run whose newest runpack is explained.
    run: String,
    /// The run to compare it with (default: the run's own previous runpack).
    baseline: Option<String>,
}

/// `GET /v1/orgs/{org}/projects/{project}/envs/{env}/drift?run=…[&baseline=…]`: why a run differs from its
/// baseline, by digests, or `unattributed`.
pub(super) async fn drift(
    State(state): State<AppState>,
    Caller(caller): Caller<Tenant>,
    query: Result<Query<DriftQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(RequestError::Query)?;
    Ok(Json(
        state
            .analytics
            .drift(&caller, &q.run, q.baseline.as_deref())
            .await?,
    )
    .into_response())
}

/// Query of a verdict-shift read.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ShiftsQuery {
    /// Days back from today, UTC, in which a shift's first day falls (1..=90, default 30).
    days: Option<u32>,
    /// Only this tool.
    tool: Option<String>,
}

/// `GET /v1/orgs/{org}/projects/{project}/envs/{env}/verdict-shifts[?days=…&tool=…]`: shifts in each tool's
/// verdict mix, newest first, each with its cause or `unattributed`.
pub(super) async fn verdict_shifts(
    State(state): State<AppState>,
    Caller(caller): Caller<Tenant>,
    query: Result<Query<ShiftsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(RequestError::Query)?;
    Ok(Json(
        state
            .analytics
            .verdict_shifts(&caller, q.days, q.tool.as_deref(), crate::clock::unix_ms())
            .await?,
    )
    .into_response())
}

/// Thresholds a pipeline may tighten (never loosen past what it asks for).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GateQuery {
    /// Lowest acceptable regress pass rate, per-mille (default 950).
    min_regress_pass_per_mille: Option<u32>,
    /// Fail when the environment had no regress run in the window (default false).
    require_regress_runs: Option<bool>,
    /// Fail while a rollout is in flight on the environment (default true).
    block_during_rollout: Option<bool>,
}

/// `GET /v1/orgs/{org}/projects/{project}/envs/{env}/change-gate`: pass, or fail with every reason. Always 200
/// with `pass` in the body (a failed gate is an answer, not an error).
pub(super) async fn change_gate(
    State(state): State<AppState>,
    Caller(caller): Caller<Tenant>,
    query: Result<Query<GateQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(RequestError::Query)?;
    let mut policy = GatePolicy::default();
    if let Some(min) = q.min_regress_pass_per_mille {
        if min > 1000 {
            return Err(ApiError::bad_request(format!(
                "min_regress_pass_per_mille: {min} is over 1000 (per-mille)"
            )));
        }
        policy.min_regress_pass_per_mille = min;
    }
    if let Some(r) = q.require_regress_runs {
        policy.require_regress_runs = r;
    }
    if let Some(b) = q.block_during_rollout {
        policy.block_during_rollout = b;
    }
    let report = state
        .analytics
        .change_gate(&caller, &policy, crate::clock::unix_ms())
        .await?;
    Ok(Json(report).into_response())
}

/// The caller's permission over the scope an org route names: the path's org, narrowed by the query's
/// `project`/`env` (and its `org`, which must be the path's).
fn authorize(
    pending: &Pending,
    org: String,
    query_org: &Option<String>,
    project: &Option<String>,
    env: &Option<String>,
) -> Result<Authorized<BindingScope>, ApiError> {
    let org: Org = super::ident("org", org)?;
    let scope = scope_of(
        org,
        query_org.as_deref(),
        project.as_deref(),
        env.as_deref(),
    )?;
    pending.authorize(scope)
}

fn csv(body: Result<Vec<u8>, csv::Error>) -> Result<Response, ApiError> {
    let body = body.map_err(ApiError::internal)?;
    Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], body).into_response())
}

impl From<AnalysisError> for ApiError {
    fn from(err: AnalysisError) -> Self {
        match err {
            AnalysisError::Invalid { field, message } => {
                RequestError::Field { field, message }.into()
            }
            AnalysisError::NotFound(message) => ApiError::not_found(message),
            AnalysisError::Conflict(message) => {
                ApiError::new(axum::http::StatusCode::CONFLICT, "conflict", message)
            }
            AnalysisError::Store(store) => store.into(),
            other @ (AnalysisError::Corrupt(_)
            | AnalysisError::Dependency { .. }
            | AnalysisError::Audit(_)) => ApiError::internal(other),
        }
    }
}
