//! `/v1/audit/{checkpoint,entries}`: the audit log's latest signed checkpoint and its entries, for auditors
//! who fetch over HTTP what `gait-aggregator audit export` writes to files. Permission `audit.read` (org scope)
//! once RBAC lands; the admin token until then.

use super::auth::Caller;
use crate::auth::Deployment;
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;
use serde_json::value::RawValue;

use super::{ApiError, AppState, RequestError};

/// Most entries one page returns.
const MAX_LIMIT: u32 = 1000;

/// `GET /v1/audit/checkpoint`: a checkpoint of the log as it is now (signed on demand when the log grew since
/// the last one), its body fields and the signed note.
pub(super) async fn checkpoint(
    State(state): State<AppState>,
    _caller: Caller<Deployment>,
) -> Result<Response, ApiError> {
    let cp = state.audit.sign_checkpoint().await.map_err(audit_error)?;
    Ok(Json(json!({
        "origin": state.audit.origin(),
        "size": cp.size,
        "root": hex::encode(cp.root),
        "note": cp.note,
    }))
    .into_response())
}

#[derive(Debug, Deserialize)]
pub(super) struct EntriesQuery {
    /// Return entries with a larger seq (absent: from the first).
    after: Option<u64>,
    #[serde(default = "default_limit")]
    limit: u32,
}

fn default_limit() -> u32 {
    100
}

#[derive(Serialize)]
struct Page<'a> {
    /// Each entry's stored canonical bytes, embedded as the JSON they are.
    entries: Vec<&'a RawValue>,
    /// The cursor of the next page (`after`), null when this page is the last so far.
    next_after: Option<u64>,
}

/// `GET /v1/audit/entries?after=&limit=`: entries in seq order.
pub(super) async fn entries(
    State(state): State<AppState>,
    Caller(caller): Caller<Deployment>,
    query: Result<Query<EntriesQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(RequestError::Query)?;
    if q.limit == 0 || q.limit > MAX_LIMIT {
        return Err(ApiError::bad_request(format!(
            "limit: must be between 1 and {MAX_LIMIT}"
        )));
    }
    let from = match q.after {
        None => 0,
        Some(after) if after < i64::MAX as u64 => after + 1,
        Some(after) => {
            return Err(ApiError::bad_request(format!(
                "after: {after} is out of range; seqs are below 2^63"
            )));
        }
    };
    let rows = state
        .audit
        .entries(&caller, from, q.limit)
        .await
        .map_err(audit_error)?;
    let texts: Vec<&str> = rows
        .iter()
        .map(|r| std::str::from_utf8(&r.line))
        .collect::<Result<_, _>>()
        .map_err(|_| {
            ApiError::internal("a stored audit entry is not UTF-8 (the log was altered)")
        })?;
    let entries: Vec<&RawValue> = texts
        .iter()
        .map(|t| serde_json::from_str::<&RawValue>(t))
        .collect::<Result<_, _>>()
        .map_err(|_| {
            ApiError::internal("a stored audit entry is not JSON (the log was altered)")
        })?;
    let next_after = (rows.len() == q.limit as usize)
        .then(|| rows.last().map(|r| r.seq))
        .flatten();
    let body = serde_json::to_vec(&Page {
        entries,
        next_after,
    })
    .map_err(ApiError::internal)?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

fn audit_error(e: crate::audit::AuditError) -> ApiError {
    match e {
        crate::audit::AuditError::Store(store) => store.into(),
        other => ApiError::internal(other),
    }
}
