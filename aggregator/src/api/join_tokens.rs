//! `/v1/orgs/{org}/projects/{project}/envs/{env}/join-tokens`: mint a join token (the secret is in this one
//! answer only), list the environment's tokens, revoke one (`DELETE …/join-tokens/{token_id}`).

use std::time::Duration;

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use gait_store::Tenant;

use super::auth::Caller;
use super::{ApiError, AppState, RequestError};
use crate::enroll::EnrollError;

/// Body of `POST …/join-tokens`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateBody {
    /// Lifetime in seconds (60 to `enroll.max_token_ttl_seconds`).
    ttl_seconds: u64,
    /// Enrollments it admits (default 1).
    #[serde(default = "one")]
    uses: u32,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
pub(super) struct ListQuery {
    /// Most tokens returned, 1..=1000 (default 100).
    limit: Option<u32>,
}

pub(super) async fn create(
    State(state): State<AppState>,
    Caller(caller): Caller<Tenant>,
    body: Result<Json<CreateBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let tenant = caller.target().clone();
    let Json(body) = body.map_err(RequestError::Body)?;
    let minted = state
        .enrollment
        .create_token(
            &caller.actor(),
            tenant,
            Duration::from_secs(body.ttl_seconds),
            body.uses,
        )
        .await?;
    let mut answer = serde_json::to_value(&minted.row).map_err(ApiError::internal)?;
    answer["token"] = json!(minted.token);
    answer["state"] = json!("active");
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

pub(super) async fn list(
    State(state): State<AppState>,
    Caller(caller): Caller<Tenant>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let tenant = caller.target();
    let Query(q) = query.map_err(RequestError::Query)?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=gait_store::MAX_JOIN_TOKENS_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit: {limit} is out of range 1..={}",
            gait_store::MAX_JOIN_TOKENS_PAGE
        )));
    }
    let now = crate::clock::unix_ms();
    let tokens = state.enrollment.list_tokens(tenant, limit).await?;
    let tokens: Vec<serde_json::Value> = tokens
        .iter()
        .map(|t| {
            let mut v = serde_json::to_value(t).unwrap_or_default();
            v["state"] = json!(t.state(now).as_str());
            v
        })
        .collect();
    Ok(Json(json!({ "join_tokens": tokens })).into_response())
}

pub(super) async fn revoke(
    State(state): State<AppState>,
    Caller(caller): Caller<Tenant>,
    Path((_, _, _, token_id)): Path<(String, String, String, String)>,
) -> Result<Response, ApiError> {
    let row = state
        .enrollment
        .revoke_token(&caller.actor(), caller.target(), &token_id)
        .await?;
    let mut answer = serde_json::to_value(&row).map_err(ApiError::internal)?;
    answer["state"] = json!("revoked");
    Ok(Json(answer).into_response())
}

impl From<EnrollError> for ApiError {
    fn from(err: EnrollError) -> Self {
        match err {
            EnrollError::Ttl { .. } | EnrollError::Uses { .. } | EnrollError::Csr(_) => {
                ApiError::bad_request(err.to_string())
            }
            EnrollError::NotFound { .. } => ApiError::not_found(err.to_string()),
            EnrollError::TokenFormat(crate::enroll::TokenFormatError::Random(_))
            | EnrollError::Pki(_) => ApiError::internal(err),
            EnrollError::TokenFormat(_)
            | EnrollError::Refused(_)
            | EnrollError::ScopeMismatch { .. }
            | EnrollError::Revoked { .. } => {
                ApiError::new(StatusCode::FORBIDDEN, "enrollment_refused", err.to_string())
            }
            EnrollError::Store(store) => store.into(),
        }
    }
}
