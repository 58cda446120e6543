//! `/v1/orgs/{org}/policies…` (the policy registry: push, list, show, diff) and
//! `/v1/orgs/{org}/projects/{project}/envs/{env}/{pin,pins,rollback}` (pinning and rollback). Thin: parse,
//! call the registry, map its errors. A refused policy answers 422 `invalid_policy` with the key and position
//! beside the message: `{"error":{"code","message","field","line","column"}}`.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use gait_bundle::OnStale;
use gait_store::{Org, PinKind, Tenant};
use serde::Deserialize;
use serde_json::json;

use super::auth::Caller;
use super::{ApiError, AppState, RequestError};
use crate::registry::RegistryError;
use crate::registry::pin::EnvSettings;
use crate::registry::versions::{DEFAULT_NAME, PushRequest};

/// Maps a registry error; a rejected policy keeps its key and position in the body.
fn refused(err: RegistryError) -> Response {
    if let RegistryError::Rejected { rejection, .. } = &err {
        let body = json!({"error": {
            "code": "invalid_policy",
            "message": err.to_string(),
            "field": rejection.field,
            "line": rejection.line,
            "column": rejection.column,
        }});
        return (StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response();
    }
    ApiError::from(err).into_response()
}

/// Body of a push.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushBody {
    /// The version's name: its file name in bundles (default `policy.yaml`).
    #[serde(default)]
    pub name: Option<String>,
    /// The Gait policy YAML.
    pub policy: String,
    /// What changed and why.
    #[serde(default)]
    pub message: String,
    /// Digest of the version it derives from.
    #[serde(default)]
    pub parent: Option<String>,
}

/// Query of a push.
#[derive(Debug, Default, Deserialize)]
pub(super) struct PushQuery {
    /// Validate and report only.
    #[serde(default)]
    dry_run: bool,
}

pub(super) async fn push(
    State(state): State<AppState>,
    Caller(caller): Caller<Org>,
    query: Result<Query<PushQuery>, QueryRejection>,
    body: Result<Json<PushBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(RequestError::Query)?;
    let Json(body) = body.map_err(RequestError::Body)?;
    let req = PushRequest {
        name: body.name.unwrap_or_else(|| DEFAULT_NAME.to_owned()),
        yaml: body.policy,
        message: body.message,
        parent: body.parent,
        author: caller.actor(),
        dry_run: q.dry_run,
    };
    match state.registry.push(caller.target(), req).await {
        Ok(pushed) => {
            let status = if pushed.created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok((status, Json(pushed)).into_response())
        }
        Err(e) => Ok(refused(e)),
    }
}

pub(super) async fn list(
    State(state): State<AppState>,
    Caller(caller): Caller<Org>,
) -> Result<Response, ApiError> {
    let versions = state.registry.versions(caller.target()).await?;
    Ok(Json(json!({ "versions": versions })).into_response())
}

#[derive(Debug, Deserialize)]
pub(super) struct DigestPath {
    digest: String,
}

pub(super) async fn show(
    State(state): State<AppState>,
    Caller(caller): Caller<Org>,
    Path(path): Path<DigestPath>,
) -> Result<Response, ApiError> {
    let (version, yaml) = state
        .registry
        .version(caller.target(), &path.digest)
        .await?;
    Ok(Json(json!({ "version": version, "yaml": yaml })).into_response())
}

#[derive(Debug, Deserialize)]
pub(super) struct DiffPath {
    digest: String,
    other: String,
}

pub(super) async fn diff(
    State(state): State<AppState>,
    Caller(caller): Caller<Org>,
    Path(path): Path<DiffPath>,
) -> Result<Response, ApiError> {
    let diff = state
        .registry
        .diff(caller.target(), &path.digest, &path.other)
        .await?;
    Ok(Json(json!({ "from": path.digest, "to": path.other, "diff": diff })).into_response())
}

/// Body of a pin: the version and, optionally, the bundle settings (else the previous pin's).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinBody {
    /// The version's digest.
    pub digest: String,
    /// Seconds an agent may enforce without contact.
    #[serde(default)]
    pub max_offline_seconds: Option<u64>,
    /// `keep` or `fail_closed`.
    #[serde(default)]
    pub on_stale: Option<String>,
    /// Seconds the bundle may be activated after signing.
    #[serde(default)]
    pub validity_seconds: Option<u64>,
    /// Let local callers ask for simulate.
    #[serde(default)]
    pub allow_caller_simulate: Option<bool>,
    /// Agents upload artifact bytes.
    #[serde(default)]
    pub upload_artifacts: Option<bool>,
    /// `reference` or `raw`.
    #[serde(default)]
    pub capture_mode: Option<String>,
    /// Delegation public key (Gait's key text).
    #[serde(default)]
    pub delegation_key: Option<String>,
}

impl PinBody {
    /// The settings the body gives, or `None` when it gives none (the previous pin's apply).
    fn settings(&self) -> Result<Option<EnvSettings>, ApiError> {
        let given = self.max_offline_seconds.is_some()
            || self.on_stale.is_some()
            || self.validity_seconds.is_some()
            || self.allow_caller_simulate.is_some()
            || self.upload_artifacts.is_some()
            || self.capture_mode.is_some()
            || self.delegation_key.is_some();
        if !given {
            return Ok(None);
        }
        let on_stale = match self.on_stale.as_deref() {
            None => None,
            Some("keep") => Some(OnStale::Keep),
            Some("fail_closed") => Some(OnStale::FailClosed),
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "on_stale: `{other}` is not one of keep, fail_closed"
                )));
            }
        };
        let capture_mode = match self.capture_mode.as_deref() {
            None => gait_bundle::CaptureMode::default(),
            Some(mode) => gait_bundle::CaptureMode::parse(mode).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "capture_mode: `{mode}` is not one of reference, raw"
                ))
            })?,
        };
        Ok(Some(EnvSettings {
            max_offline_seconds: self.max_offline_seconds,
            on_stale,
            validity_seconds: self.validity_seconds,
            settings: gait_bundle::Settings {
                allow_caller_simulate: self.allow_caller_simulate.unwrap_or(false),
                upload_artifacts: self.upload_artifacts.unwrap_or(false),
                capture_mode,
            },
            delegation_key: self.delegation_key.clone(),
        }))
    }
}

pub(super) async fn pin(
    State(state): State<AppState>,
    Caller(caller): Caller<Tenant>,
    body: Result<Json<PinBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body.map_err(RequestError::Body)?;
    let settings = body.settings()?;
    let outcome = state
        .registry
        .pin(
            caller.target(),
            &body.digest,
            settings,
            &caller.actor(),
            PinKind::Pin,
            None,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(outcome)).into_response())
}

pub(super) async fn pins(
    State(state): State<AppState>,
    Caller(caller): Caller<Tenant>,
) -> Result<Response, ApiError> {
    let pins = state.registry.pins(caller.target()).await?;
    Ok(Json(json!({ "pins": pins })).into_response())
}

/// Body of a rollback.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackBody {
    /// Restore this version (its newest pin) instead of the last known-good one.
    #[serde(default)]
    pub to: Option<String>,
    /// Why (signed into the bundle, at most 256 bytes).
    pub reason: String,
}

pub(super) async fn rollback(
    State(state): State<AppState>,
    Caller(caller): Caller<Tenant>,
    body: Result<Json<RollbackBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body.map_err(RequestError::Body)?;
    let outcome = state
        .registry
        .rollback(
            caller.target(),
            body.to.as_deref(),
            &body.reason,
            &caller.actor(),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(outcome)).into_response())
}
