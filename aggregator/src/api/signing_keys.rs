//! `/v1/signing-keys`: the registry's bundle signing keys (deployment scope). List them with their states,
//! start a rotation (`POST /v1/signing-keys/rotate`, `{overlap_seconds}`), revoke one
//! (`POST /v1/signing-keys/{key_id}/revoke`). Rotation and revocation re-publish every environment's newest
//! bundle at once, so agents learn the change without waiting for the next policy publish; both are audited
//! (`signing_key.rotate`, `signing_key.revoke`). See `crate::registry::signing`.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::auth::Caller;
use super::{ApiError, AppState};
use crate::auth::Deployment;

/// Longest overlap a rotation may ask for: one year.
const MAX_OVERLAP_SECONDS: u64 = 365 * 24 * 3600;

/// Body of `POST /v1/signing-keys/rotate`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RotateBody {
    /// Seconds the new key waits before it signs (default 0: from the next publish on). Bundles signed
    /// meanwhile are signed by the old key and carry the new key's endorsement.
    #[serde(default)]
    overlap_seconds: u64,
}

pub(super) async fn list(
    State(state): State<AppState>,
    Caller(_caller): Caller<Deployment>,
) -> Result<Response, ApiError> {
    let keys = state.registry.signer().keys().await?;
    Ok(Json(json!({ "signing_keys": keys })).into_response())
}

pub(super) async fn rotate(
    State(state): State<AppState>,
    Caller(caller): Caller<Deployment>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    // An empty body means the defaults.
    let body: RotateBody = if body.iter().all(u8::is_ascii_whitespace) {
        RotateBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("rotate body: {e}")))?
    };
    if body.overlap_seconds > MAX_OVERLAP_SECONDS {
        return Err(ApiError::bad_request(format!(
            "overlap_seconds: {} is over the limit of {MAX_OVERLAP_SECONDS} (one year)",
            body.overlap_seconds
        )));
    }
    let change = state
        .registry
        .rotate_signing_key(Duration::from_secs(body.overlap_seconds), &caller.actor())
        .await?;
    Ok((StatusCode::CREATED, Json(change)).into_response())
}

pub(super) async fn revoke(
    State(state): State<AppState>,
    Caller(caller): Caller<Deployment>,
    Path(key_id): Path<String>,
) -> Result<Response, ApiError> {
    if key_id.len() != 64
        || !key_id
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(ApiError::bad_request(format!(
            "key_id {key_id:?}: must be 64 lowercase hex characters (see GET /v1/signing-keys)"
        )));
    }
    let change = state
        .registry
        .revoke_signing_key(&key_id, &caller.actor())
        .await?;
    Ok(Json(change).into_response())
}
