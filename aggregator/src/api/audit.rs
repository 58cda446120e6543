//! `/v1/audit/{checkpoint,entries,proof}`: the audit log's latest signed checkpoint, its entries and an entry's
//! inclusion proof, for auditors who fetch over HTTP what `gait-aggregator audit export` writes to files
//! (`audit.read` over the deployment). The per-tenant view `/v1/orgs/{org}/audit/…` (and the same under an
//! environment) serves auditors bound to an org or an environment: only the entries whose target lies there,
//! each with its leaf index, and the deployment's checkpoint and inclusion proofs of those entries, so they
//! verify their entries against the one signed log without seeing anyone else's (ADR 0004).

use super::auth::Caller;
use crate::auth::{Deployment, Target};
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
pub(super) async fn checkpoint<T>(
    State(state): State<AppState>,
    _caller: Caller<T>,
) -> Result<Response, ApiError>
where
    T: Target + Clone + Send + Sync + 'static,
{
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
    let (from, limit) = page_start(query)?;
    let rows = state
        .audit
        .entries(&caller, from, limit)
        .await
        .map_err(audit_error)?;
    page(&rows, limit)
}

/// `GET /v1/orgs/{org}/audit/entries?after=&limit=` (and under an environment): the entries whose target lies
/// in the caller's scope, in seq order; each entry carries its leaf index in the whole log (`seq`).
pub(super) async fn tenant_entries<T>(
    State(state): State<AppState>,
    Caller(caller): Caller<T>,
    query: Result<Query<EntriesQuery>, QueryRejection>,
) -> Result<Response, ApiError>
where
    T: Target + Clone + Send + Sync + 'static,
{
    let (from, limit) = page_start(query)?;
    let rows = state
        .audit
        .entries_in(&caller, from, limit)
        .await
        .map_err(audit_error)?;
    page(&rows, limit)
}

/// The first leaf index and the size of the page `after`/`limit` ask for.
fn page_start(query: Result<Query<EntriesQuery>, QueryRejection>) -> Result<(u64, u32), ApiError> {
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
    Ok((from, q.limit))
}

/// One page: the stored entries embedded as the JSON they are, and the cursor of the next page when this one
/// is full.
fn page(rows: &[gait_store::AuditRow], limit: u32) -> Result<Response, ApiError> {
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
    let next_after = (rows.len() == limit as usize)
        .then(|| rows.last().map(|r| r.seq))
        .flatten();
    let body = serde_json::to_vec(&Page {
        entries,
        next_after,
    })
    .map_err(ApiError::internal)?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

#[derive(Debug, Deserialize)]
pub(super) struct ProofQuery {
    /// The entry's leaf index.
    seq: u64,
    /// The tree size: the `size` of the checkpoint the auditor verifies against.
    size: u64,
}

/// `GET …/audit/proof?seq=&size=`: the inclusion proof of entry `seq` in the tree of the first `size` entries,
/// for an entry inside the caller's scope (404 otherwise, as for a missing one).
pub(super) async fn proof<T>(
    State(state): State<AppState>,
    Caller(caller): Caller<T>,
    query: Result<Query<ProofQuery>, QueryRejection>,
) -> Result<Response, ApiError>
where
    T: Target + Clone + Send + Sync + 'static,
{
    let Query(q) = query.map_err(RequestError::Query)?;
    let found = state
        .audit
        .inclusion_proof(&caller, q.seq, q.size)
        .await
        .map_err(audit_error)?;
    let Some(p) = found else {
        return Err(ApiError::not_found(format!(
            "no audit entry {} in your scope",
            q.seq
        )));
    };
    Ok(Json(json!({
        "seq": p.seq,
        "size": p.size,
        "leaf_hash": hex::encode(p.leaf_hash),
        "proof": p.proof.iter().map(hex::encode).collect::<Vec<_>>(),
    }))
    .into_response())
}

fn audit_error(e: crate::audit::AuditError) -> ApiError {
    match e {
        crate::audit::AuditError::Store(store) => store.into(),
        other => ApiError::internal(other),
    }
}
