//! `/v1/orgs/{org}/projects/{project}/envs/{env}/trace-keys` and `…/agents/{agent_id}/trace-keys`: the trace
//! keys the environment's agents announced, each bound to the certificate that delivered it, so any trace the
//! fleet signed can be verified offline (`gait-aggregator trace-keys --out DIR`). Reads through
//! [`crate::fleet::Fleet::trace_keys`].

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};

use gait_store::{AgentId, Tenant};
use serde_json::json;

use super::auth::Caller;
use super::{ApiError, AppState};

pub(super) async fn env_trace_keys(
    State(state): State<AppState>,
    Caller(caller): Caller<Tenant>,
) -> Result<Response, ApiError> {
    let keys = state.fleet.trace_keys(&caller, None).await?;
    Ok(Json(json!({ "trace_keys": keys })).into_response())
}

pub(super) async fn agent_trace_keys(
    State(state): State<AppState>,
    Caller(caller): Caller<Tenant>,
    Path((_, _, _, agent_id)): Path<(String, String, String, String)>,
) -> Result<Response, ApiError> {
    let agent_id: AgentId = super::ident("agent_id", agent_id)?;
    let keys = state.fleet.trace_keys(&caller, Some(&agent_id)).await?;
    Ok(Json(json!({ "trace_keys": keys })).into_response())
}
