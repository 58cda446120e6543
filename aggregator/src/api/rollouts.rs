//! `/v1/orgs/{org}/rollouts…` (staged rollouts: create, list, show, health, pause, resume, promote, abort,
//! retry) and `…/envs/{env}/agents/{agent_id}/labels` (the labels rollout cohorts select on). Thin: parse, call
//! [`crate::rollout::Rollouts`], map its errors.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use gait_store::{AgentId, Org, Tenant};
use serde::Deserialize;
use serde_json::json;

use super::auth::Caller;
use super::{ApiError, AppState, RequestError};
use crate::rollout::plan::Plan;
use crate::rollout::{Action, RolloutError};

impl From<RolloutError> for ApiError {
    fn from(err: RolloutError) -> Self {
        match err {
            RolloutError::Field { .. } => Self::bad_request(err.to_string()),
            RolloutError::NotFound(_) => Self::not_found(err.to_string()),
            RolloutError::Conflict(_) => {
                Self::new(StatusCode::CONFLICT, "conflict", err.to_string())
            }
            RolloutError::Registry(e) => e.into(),
            RolloutError::Store(e) => e.into(),
            RolloutError::Audit(_) => Self::internal(err),
        }
    }
}

/// Body of a create: the candidate version and the plan.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    /// The rollout's id (default: `r-` and 16 random hex digits); it also salts the cohort hash.
    #[serde(default)]
    pub id: Option<String>,
    /// Digest of the registry version to roll out.
    pub candidate: String,
    /// Targets, steps, gates and blast-radius cap.
    pub plan: Plan,
}

pub(super) async fn create(
    State(state): State<AppState>,
    Caller(caller): Caller<Org>,
    body: Result<Json<CreateBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body.map_err(RequestError::Body)?;
    let rollout = state
        .rollouts
        .create(
            caller.target(),
            body.id.as_deref(),
            &body.candidate,
            body.plan,
            &caller.actor(),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(rollout)).into_response())
}

pub(super) async fn list(
    State(state): State<AppState>,
    Caller(caller): Caller<Org>,
) -> Result<Response, ApiError> {
    let rollouts = state.rollouts.list(caller.target()).await?;
    Ok(Json(json!({ "rollouts": rollouts })).into_response())
}

#[derive(Debug, Deserialize)]
pub(super) struct IdPath {
    id: String,
}

pub(super) async fn show(
    State(state): State<AppState>,
    Caller(caller): Caller<Org>,
    Path(path): Path<IdPath>,
) -> Result<Response, ApiError> {
    Ok(Json(state.rollouts.get(caller.target(), &path.id).await?).into_response())
}

pub(super) async fn health(
    State(state): State<AppState>,
    Caller(caller): Caller<Org>,
    Path(path): Path<IdPath>,
) -> Result<Response, ApiError> {
    Ok(Json(state.rollouts.health(caller.target(), &path.id).await?).into_response())
}

/// Body of an action: why (optional; recorded in the timeline and the audit log).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionBody {
    #[serde(default)]
    pub reason: String,
}

async fn act(
    state: AppState,
    caller: Caller<Org>,
    id: String,
    action: Action,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let body: ActionBody = if body.iter().all(u8::is_ascii_whitespace) {
        ActionBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(format!("body: {e}; send {{\"reason\": \"…\"}} or nothing"))
        })?
    };
    let Caller(caller) = caller;
    let rollout = state
        .rollouts
        .act(caller.target(), &id, action, &body.reason, &caller.actor())
        .await?;
    Ok(Json(rollout).into_response())
}

macro_rules! action_handler {
    ($name:ident, $action:expr) => {
        pub(super) async fn $name(
            State(state): State<AppState>,
            caller: Caller<Org>,
            Path(path): Path<IdPath>,
            body: axum::body::Bytes,
        ) -> Result<Response, ApiError> {
            act(state, caller, path.id, $action, body).await
        }
    };
}

action_handler!(pause, Action::Pause);
action_handler!(resume, Action::Resume);
action_handler!(promote, Action::Promote);
action_handler!(abort, Action::Abort);
action_handler!(retry, Action::Retry);

/// Body of a label change: the agent's labels (replacing the old ones).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelsBody {
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct AgentPath {
    agent_id: String,
}

pub(super) async fn set_labels(
    State(state): State<AppState>,
    Caller(caller): Caller<Tenant>,
    Path(path): Path<AgentPath>,
    body: Result<Json<LabelsBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body.map_err(RequestError::Body)?;
    let agent = AgentId::parse(&path.agent_id)
        .map_err(|e| ApiError::bad_request(format!("agent_id: {e}")))?;
    state
        .rollouts
        .set_labels(caller.target(), &agent, &body.labels, &caller.actor())
        .await?;
    Ok(Json(json!({ "agent_id": path.agent_id, "labels": body.labels })).into_response())
}
