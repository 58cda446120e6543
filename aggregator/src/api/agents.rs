//! `/v1/orgs/{org}/agents`: the fleet inventory, paged with a cursor.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use gait_store::{AgentFilter, AgentPosition, Env, MAX_AGENT_PAGE, Org, Project};
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, AppState, RequestError};

#[derive(Debug, Deserialize)]
pub(super) struct AgentQuery {
    project: Option<String>,
    env: Option<String>,
    /// Cursor `project/env/agent_id` of the last agent of the previous page (`next_after`).
    after: Option<String>,
    /// Page size, 1..=5000 (default 500).
    limit: Option<u32>,
}

pub(super) async fn list_agents(
    State(state): State<AppState>,
    Path(org): Path<String>,
    query: Result<Query<AgentQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let org: Org = super::ident("org", org)?;
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
    if let Some(limit) = q.limit
        && !(1..=MAX_AGENT_PAGE).contains(&limit)
    {
        return Err(ApiError::bad_request(format!(
            "limit: {limit} is out of range 1..={MAX_AGENT_PAGE}"
        )));
    }
    let filter = AgentFilter {
        org,
        project,
        env,
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
