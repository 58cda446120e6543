//! `/v1/orgs/{org}/projects/{project}/envs/{env}/bundles`: publish a bundle, read the latest one.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use gait_bundle::OnStale;
use serde::Deserialize;
use serde_json::json;

use gait_store::Tenant;

use super::auth::Caller;
use super::{ApiError, AppState, RequestError};
use crate::registry::PublishRequest;

/// Body of a publish request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishBody {
    /// Policy file name -> Gait policy YAML.
    pub policies: BTreeMap<String, String>,
    /// Seconds an agent may enforce without contact before it counts as stale (at most 2^53 - 1).
    #[serde(default)]
    pub max_offline_seconds: Option<u64>,
    /// `keep` or `fail_closed`.
    #[serde(default)]
    pub on_stale: Option<String>,
    /// Seconds the bundle may be activated after signing (1 to ten years).
    #[serde(default)]
    pub validity_seconds: Option<u64>,
    /// Whether callers of the agents' local API may ask for `simulate` (default false: refused).
    #[serde(default)]
    pub allow_caller_simulate: bool,
    /// Whether the agents upload artifact bytes to the blob store (default false: digests only).
    #[serde(default)]
    pub upload_artifacts: bool,
    /// Candidates staged beside policies: policy file name -> `{stage, name, policy}`.
    #[serde(default)]
    pub candidates: BTreeMap<String, CandidateBody>,
    /// Public key (Gait's key text) agents verify delegation tokens with.
    #[serde(default)]
    pub delegation_key: Option<String>,
    /// `reference` (digests only, the default) or `raw` (decision records carry the normalized intent too).
    #[serde(default)]
    pub capture_mode: Option<String>,
}

/// A candidate staged beside a policy.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CandidateBody {
    /// `observe` or `dry_run`.
    pub stage: String,
    /// Its file name in the bundle.
    pub name: String,
    /// Its Gait policy YAML.
    pub policy: String,
}

pub(super) async fn publish(
    State(state): State<AppState>,
    Caller(caller): Caller<Tenant>,
    body: Result<Json<PublishBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body.map_err(RequestError::Body)?;
    let on_stale = match body.on_stale.as_deref() {
        None => None,
        Some("keep") => Some(OnStale::Keep),
        Some("fail_closed") => Some(OnStale::FailClosed),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "on_stale: `{other}` is not one of keep, fail_closed"
            )));
        }
    };
    let mut candidates = BTreeMap::new();
    for (policy, c) in body.candidates {
        let stage = gait_bundle::Stage::parse(&c.stage).ok_or_else(|| {
            ApiError::bad_request(format!(
                "candidates.{policy}.stage: `{}` is not one of observe, dry_run",
                c.stage
            ))
        })?;
        candidates.insert(
            policy,
            crate::registry::StagedCandidate {
                stage,
                name: c.name,
                text: c.policy,
            },
        );
    }
    let delegation_key = body
        .delegation_key
        .as_deref()
        .map(|k| {
            gait_canon::sign::PublicKey::from_gait_public_key(k.trim()).map_err(|e| {
                ApiError::bad_request(format!(
                    "delegation_key: not an Ed25519 public key in Gait's base64 form ({e})"
                ))
            })
        })
        .transpose()?;
    let capture_mode = match body.capture_mode.as_deref() {
        None => gait_bundle::CaptureMode::default(),
        Some(mode) => gait_bundle::CaptureMode::parse(mode).ok_or_else(|| {
            ApiError::bad_request(format!(
                "capture_mode: `{mode}` is not one of reference, raw"
            ))
        })?,
    };
    let req = PublishRequest {
        policies: body.policies,
        max_offline_seconds: body.max_offline_seconds,
        on_stale,
        validity: body.validity_seconds.map(Duration::from_secs),
        settings: gait_bundle::Settings {
            allow_caller_simulate: body.allow_caller_simulate,
            upload_artifacts: body.upload_artifacts,
            capture_mode,
        },
        created_by: caller.actor(),
        candidates,
        delegation_key,
        rollback: None,
        audience: None,
    };
    match state.registry.publish(caller.target(), req).await {
        Ok(published) => Ok((StatusCode::CREATED, Json(published)).into_response()),
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn latest_bundle(
    State(state): State<AppState>,
    Caller(caller): Caller<Tenant>,
) -> Result<Response, ApiError> {
    let bundle = state.registry.latest(caller.target()).await?;
    let Some(bundle) = bundle else {
        return Err(ApiError::not_found(
            "no bundle has been published for this environment",
        ));
    };
    let manifest = gait_bundle::inspect(&bundle.bytes).map_err(ApiError::internal)?;
    Ok(Json(json!({
        "epoch": bundle.epoch,
        "digest": bundle.digest,
        "created_unix_ms": bundle.created_unix_ms,
        "created_by": bundle.created_by,
        "manifest": manifest,
    }))
    .into_response())
}

pub(super) async fn latest_bundle_raw(
    State(state): State<AppState>,
    Caller(caller): Caller<Tenant>,
) -> Result<Response, ApiError> {
    let bundle = state.registry.latest(caller.target()).await?;
    let Some(bundle) = bundle else {
        return Err(ApiError::not_found(
            "no bundle has been published for this environment",
        ));
    };
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        bundle.bytes.clone(),
    )
        .into_response())
}

/// `GET …/bundles/{epoch}/raw`: the signed bundle published with that epoch (an older one too, e.g. to carry
/// a rollback to a site; agents still refuse an epoch older than the one they enforce).
pub(super) async fn bundle_raw_at_epoch(
    State(state): State<AppState>,
    Caller(caller): Caller<Tenant>,
    axum::extract::Path(path): axum::extract::Path<EpochPath>,
) -> Result<Response, ApiError> {
    let epoch: u64 = path.epoch.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "epoch: {:?} is not a bundle epoch (a positive integer)",
            path.epoch
        ))
    })?;
    let Some(bundle) = state.registry.at_epoch(caller.target(), epoch).await? else {
        return Err(ApiError::not_found(format!(
            "no bundle with epoch {epoch} has been published for this environment"
        )));
    };
    Ok(([(header::CONTENT_TYPE, "application/json")], bundle.bytes).into_response())
}

/// Path of [`bundle_raw_at_epoch`]: the tenancy segments are read by the `Caller` extractor.
#[derive(Debug, serde::Deserialize)]
pub(super) struct EpochPath {
    epoch: String,
}
