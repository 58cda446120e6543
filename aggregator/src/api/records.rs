//! `/v1/orgs/{org}/projects/{project}/envs/{env}/agents/{agent_id}/{records,gaps}`: what an agent shipped.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use gait_store::{AgentId, AgentKey};
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, AppState, RequestError, tenant};

#[derive(Debug, Deserialize)]
pub(super) struct RecordQuery {
    #[serde(default)]
    after: u64,
    #[serde(default = "default_limit")]
    limit: u32,
}

fn default_limit() -> u32 {
    1000
}

pub(super) async fn agent_records(
    State(state): State<AppState>,
    Path((org, project, env, agent_id)): Path<(String, String, String, String)>,
    query: Result<Query<RecordQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let tenant = tenant(org, project, env)?;
    let agent_id: AgentId = super::ident("agent_id", agent_id)?;
    let Query(q) = query.map_err(RequestError::Query)?;
    if i64::try_from(q.after).is_err() {
        return Err(ApiError::bad_request(format!(
            "after: {} is out of range; seqs are below 2^63 (9223372036854775808)",
            q.after
        )));
    }
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

pub(super) async fn agent_gaps(
    State(state): State<AppState>,
    Path((org, project, env, agent_id)): Path<(String, String, String, String)>,
) -> Result<Response, ApiError> {
    let tenant = tenant(org, project, env)?;
    let agent_id: AgentId = super::ident("agent_id", agent_id)?;
    let gaps = state.store.gaps(&AgentKey { tenant, agent_id }).await?;
    Ok(Json(json!({ "gaps": gaps })).into_response())
}
