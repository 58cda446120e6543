//! `/v1/orgs/{org}/conformance/baseline` (set, show, clear the org's required baseline) and
//! `/v1/orgs/{org}/conformance?project=&env=&agent=` (conformance per environment and agent, rolled up per
//! project). Thin: parse, call the registry, map its errors (an unknown `min_digest` answers 400 naming it; no
//! baseline answers 404).

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use gait_identity::{AgentId, Env, Project};
use gait_store::{ConformanceFilter, Org};
use serde::Deserialize;
use serde_json::json;

use super::auth::Caller;
use super::{ApiError, AppState, RequestError};
use crate::registry::conformance::BaselineRequest;

/// Body of a baseline change: the minimum version and/or the rule names every policy in force must carry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaselineBody {
    /// Digest of the minimum registry version (it and its descendants conform).
    #[serde(default)]
    pub min_digest: Option<String>,
    /// Rule names every policy in force must carry.
    #[serde(default)]
    pub required_rules: Vec<String>,
}

pub(super) async fn set_baseline(
    State(state): State<AppState>,
    Caller(caller): Caller<Org>,
    body: Result<Json<BaselineBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body.map_err(RequestError::Body)?;
    let req = BaselineRequest {
        min_digest: body.min_digest,
        required_rules: body.required_rules,
    };
    let baseline = state
        .registry
        .set_baseline(caller.target(), req, &caller.actor())
        .await?;
    Ok(Json(json!({ "baseline": baseline })).into_response())
}

pub(super) async fn show_baseline(
    State(state): State<AppState>,
    Caller(caller): Caller<Org>,
) -> Result<Response, ApiError> {
    let baseline = state.registry.baseline(caller.target()).await?;
    Ok(Json(json!({ "baseline": baseline })).into_response())
}

pub(super) async fn clear_baseline(
    State(state): State<AppState>,
    Caller(caller): Caller<Org>,
) -> Result<Response, ApiError> {
    let cleared = state
        .registry
        .clear_baseline(caller.target(), &caller.actor())
        .await?;
    Ok(Json(json!({ "cleared": cleared })).into_response())
}

/// Which environments and agents to answer for.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ConformanceQuery {
    project: Option<String>,
    env: Option<String>,
    agent: Option<String>,
}

pub(super) async fn conformance(
    State(state): State<AppState>,
    Caller(caller): Caller<Org>,
    query: Result<Query<ConformanceQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(RequestError::Query)?;
    let project: Option<Project> = q.project.map(|p| super::ident("project", p)).transpose()?;
    let env: Option<Env> = q.env.map(|e| super::ident("env", e)).transpose()?;
    let agent: Option<AgentId> = q.agent.map(|a| super::ident("agent", a)).transpose()?;
    let filter = ConformanceFilter {
        project: project.map(|p| p.to_string()),
        env: env.map(|e| e.to_string()),
        agent: agent.map(|a| a.to_string()),
    };
    let report = state.registry.conformance(caller.target(), &filter).await?;
    Ok(Json(report).into_response())
}
