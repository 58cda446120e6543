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

/// `GET …/policies` parameters: a page of versions, newest first.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    /// Versions per page (default 100, at most 1000).
    limit: Option<u32>,
    /// Only versions older than this one: the `next_before` of the previous page.
    before: Option<String>,
}

pub(super) async fn list(
    State(state): State<AppState>,
    Caller(caller): Caller<Org>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(RequestError::Query)?;
    let page = state
        .registry
        .versions(caller.target(), q.before.as_deref(), q.limit)
        .await?;
    Ok(Json(page).into_response())
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

/// Body of a pin: the version and, optionally, bundle settings: each one given replaces the previous pin's, the
/// others are kept.
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
    /// Delegation public key (Gait's key text); an empty string removes the previous pin's key.
    #[serde(default)]
    pub delegation_key: Option<String>,
}

impl PinBody {
    /// Whether the body gives any setting (none: the previous pin's settings apply unchanged).
    fn gives_settings(&self) -> bool {
        self.max_offline_seconds.is_some()
            || self.on_stale.is_some()
            || self.validity_seconds.is_some()
            || self.allow_caller_simulate.is_some()
            || self.upload_artifacts.is_some()
            || self.capture_mode.is_some()
            || self.delegation_key.is_some()
    }

    /// `base` (the previous pin's settings) with each field the body gives replaced: a pin that changes one
    /// setting keeps the others (the delegation key, raw capture, …). An empty `delegation_key` removes it.
    fn settings_over(&self, mut base: EnvSettings) -> Result<EnvSettings, ApiError> {
        match self.on_stale.as_deref() {
            None => {}
            Some("keep") => base.on_stale = Some(OnStale::Keep),
            Some("fail_closed") => base.on_stale = Some(OnStale::FailClosed),
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "on_stale: `{other}` is not one of keep, fail_closed"
                )));
            }
        }
        if let Some(mode) = self.capture_mode.as_deref() {
            base.settings.capture_mode =
                gait_bundle::CaptureMode::parse(mode).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "capture_mode: `{mode}` is not one of reference, raw"
                    ))
                })?;
        }
        if let Some(v) = self.max_offline_seconds {
            base.max_offline_seconds = Some(v);
        }
        if let Some(v) = self.validity_seconds {
            base.validity_seconds = Some(v);
        }
        if let Some(v) = self.allow_caller_simulate {
            base.settings.allow_caller_simulate = v;
        }
        if let Some(v) = self.upload_artifacts {
            base.settings.upload_artifacts = v;
        }
        if let Some(key) = &self.delegation_key {
            base.delegation_key = (!key.trim().is_empty()).then(|| key.clone());
        }
        Ok(base)
    }
}

pub(super) async fn pin(
    State(state): State<AppState>,
    Caller(caller): Caller<Tenant>,
    body: Result<Json<PinBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body.map_err(RequestError::Body)?;
    let settings = if body.gives_settings() {
        let base = state.registry.pinned_settings(caller.target()).await?;
        Some(body.settings_over(base)?)
    } else {
        None
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: serde_json::Value) -> PinBody {
        serde_json::from_value(json).expect("pin body")
    }

    fn base() -> EnvSettings {
        EnvSettings {
            max_offline_seconds: Some(3600),
            on_stale: Some(OnStale::FailClosed),
            validity_seconds: None,
            settings: gait_bundle::Settings {
                allow_caller_simulate: true,
                upload_artifacts: true,
                capture_mode: gait_bundle::CaptureMode::Raw,
            },
            delegation_key: Some("AAAA".into()),
        }
    }

    #[test]
    fn a_pin_changing_one_setting_keeps_the_others() {
        let b = body(json!({"digest": "d", "max_offline_seconds": 600}));
        assert!(b.gives_settings());
        let merged = b.settings_over(base()).expect("merge");
        let mut expected = base();
        expected.max_offline_seconds = Some(600);
        assert_eq!(merged, expected);
        assert!(!body(json!({"digest": "d"})).gives_settings());
    }

    #[test]
    fn an_empty_delegation_key_removes_it_and_bad_values_are_named() {
        let merged =
            body(json!({"digest": "d", "delegation_key": "", "capture_mode": "reference"}))
                .settings_over(base())
                .expect("merge");
        assert_eq!(merged.delegation_key, None);
        assert_eq!(
            merged.settings.capture_mode,
            gait_bundle::CaptureMode::Reference
        );
        assert!(merged.settings.upload_artifacts, "untouched");
        let err = body(json!({"digest": "d", "on_stale": "maybe"}))
            .settings_over(base())
            .unwrap_err();
        assert!(format!("{err:?}").contains("on_stale"), "{err:?}");
    }
}
