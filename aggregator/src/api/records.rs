//! `/v1/orgs/{org}/projects/{project}/envs/{env}/agents/{agent_id}/{records,gaps}`: what an agent shipped,
//! read through [`crate::fleet::Fleet`].

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use gait_store::{AgentId, StoredRecord, Tenant};
use serde::{Deserialize, Serialize};
use serde_json::json;
use serde_json::value::RawValue;

use super::auth::Caller;
use super::{ApiError, AppState, RequestError};

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
    Caller(caller): Caller<Tenant>,
    Path((_, _, _, agent_id)): Path<(String, String, String, String)>,
    query: Result<Query<RecordQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let agent_id: AgentId = super::ident("agent_id", agent_id)?;
    let Query(q) = query.map_err(RequestError::Query)?;
    let page = state
        .fleet
        .records(&caller, agent_id, q.after, q.limit)
        .await?;
    let (total, rows, cut) = (page.total, page.records, page.truncated);
    // Each payload is embedded as the JSON text it already is (checked, never parsed into a tree: a tree costs
    // tens of times the text), so the answer holds about twice the page's payload bytes at most.
    let records: Vec<ListedRecord<'_>> = rows.iter().map(ListedRecord::from).collect();
    let next_after = rows.last().map(|r| r.seq);
    let body = serde_json::to_vec(&Page {
        total,
        truncated: cut,
        next_after,
        records,
    })
    .map_err(ApiError::internal)?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response())
}

/// One page of `GET …/records`.
#[derive(Serialize)]
struct Page<'a> {
    total: u64,
    /// The byte budget ended the page before `limit`: ask again with `after = next_after`.
    truncated: bool,
    next_after: Option<u64>,
    records: Vec<ListedRecord<'a>>,
}

/// A stored record as listed: the payload embedded as JSON when it is JSON, else as hex.
#[derive(Serialize)]
struct ListedRecord<'a> {
    seq: u64,
    class: &'a str,
    kind: &'a str,
    hash: String,
    prev_hash: String,
    created_unix_ms: i64,
    received_unix_ms: i64,
    bundle_epoch: Option<u64>,
    bundle_digest: Option<&'a str>,
    bundle_since_ms: Option<i64>,
    payload: Payload<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Payload<'a> {
    Json(&'a RawValue),
    Hex { payload_hex: String },
}

impl<'a> From<&'a StoredRecord> for ListedRecord<'a> {
    fn from(r: &'a StoredRecord) -> Self {
        let payload = std::str::from_utf8(&r.payload)
            .ok()
            .and_then(|text| serde_json::from_str::<&RawValue>(text).ok())
            .map_or_else(
                || Payload::Hex {
                    payload_hex: hex::encode(&r.payload),
                },
                Payload::Json,
            );
        ListedRecord {
            seq: r.seq,
            class: &r.class,
            kind: &r.kind,
            hash: hex::encode(r.record_hash),
            prev_hash: hex::encode(r.prev_hash),
            created_unix_ms: r.created_unix_ms,
            received_unix_ms: r.received_unix_ms,
            bundle_epoch: r.bundle_epoch,
            bundle_digest: r.bundle_digest.as_deref(),
            bundle_since_ms: r.bundle_since_ms,
            payload,
        }
    }
}

pub(super) async fn agent_gaps(
    State(state): State<AppState>,
    Caller(caller): Caller<Tenant>,
    Path((_, _, _, agent_id)): Path<(String, String, String, String)>,
) -> Result<Response, ApiError> {
    let agent_id: AgentId = super::ident("agent_id", agent_id)?;
    let gaps = state.fleet.gaps(&caller, agent_id).await?;
    Ok(Json(json!({ "gaps": gaps })).into_response())
}
