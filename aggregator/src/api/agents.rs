//! `/v1/orgs/{org}/agents`: the fleet inventory, paged with a cursor; and
//! `/v1/orgs/{org}/projects/{project}/envs/{env}/alerts`: the tenant's agent identity alerts (a second live
//! instance of one identity refused, a new instance behind the committed head), newest first. Both read
//! through [`crate::fleet::Fleet`].

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};

use gait_store::{AgentPosition, Env, Org, Project, Tenant};
use serde::Deserialize;
use serde_json::json;

use super::auth::Caller;
use super::{ApiError, AppState, RequestError};
use crate::fleet::InventoryQuery;

#[derive(Debug, Deserialize)]
pub(super) struct AgentQuery {
    project: Option<String>,
    env: Option<String>,
    /// Cursor `project/env/agent_id` of the last agent of the previous page (`next_after`).
    after: Option<String>,
    /// Page size, 1..=5000 (default 500).
    limit: Option<u32>,
}

#[derive(Debug, Deserialize)]
pub(super) struct AlertQuery {
    /// Most alerts returned, 1..=1000 (default 100).
    limit: Option<u32>,
}

pub(super) async fn list_alerts(
    State(state): State<AppState>,
    Caller(caller): Caller<Tenant>,
    query: Result<Query<AlertQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(RequestError::Query)?;
    let alerts = state.fleet.alerts(&caller, q.limit.unwrap_or(100)).await?;
    Ok(Json(json!({ "alerts": alerts })).into_response())
}

pub(super) async fn list_agents(
    State(state): State<AppState>,
    Caller(caller): Caller<Org>,
    query: Result<Query<AgentQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(RequestError::Query)?;
    let project: Option<Project> = q.project.map(|p| super::ident("project", p)).transpose()?;
    let env: Option<Env> = q.env.map(|e| super::ident("env", e)).transpose()?;
    let after = match q.after.as_deref().filter(|a| !a.is_empty()) {
        Some(text) => Some(AgentPosition::from_cursor(text).ok_or_else(|| {
            ApiError::bad_request(format!(
                "after: {text:?} is not a cursor `project/env/agent_id` of three valid identifiers; pass the \
                 previous page's next_after"
            ))
        })?),
        None => None,
    };
    let query = InventoryQuery {
        project,
        env,
        after,
        limit: q.limit,
    };
    let page = state
        .fleet
        .inventory(&caller, query, crate::clock::unix_ms())
        .await?;
    Ok(Json(page).into_response())
}

/// A refused fleet read is a 400 naming the parameter; a store failure maps as everywhere.
impl From<crate::fleet::FleetError> for ApiError {
    fn from(err: crate::fleet::FleetError) -> Self {
        match err {
            crate::fleet::FleetError::Invalid { .. } => ApiError::bad_request(err.to_string()),
            crate::fleet::FleetError::Store(store) => store.into(),
        }
    }
}
