//! Deciding which policy bundle is in force: verify an offered bundle, store it, activate it, or refuse it
//! and keep the old one; and on startup, re-verify the cached active bundle before trusting it.
//!
//! Order on success: `gait_bundle::verify` -> `BundleCache::store_received` (durable) ->
//! `BundleCache::activate` (one atomic commit) -> in-memory switch -> durable `bundle.applied` status record ->
//! `BundleReport`. A crash at any point leaves either the old or the new bundle active, never neither, and the
//! status record is written only once the activation is durable.

use std::path::PathBuf;
use std::sync::Arc;

use gait_wire::{BundleOffer, BundleRef, BundleReport, RecordClass};
use serde_json::json;

use super::{AgentState, DaemonError};
use crate::bundle_cache::{BundleRefusal, CachedBundle, TrustChange};
use crate::state::{ActiveBundle, RefusalInfo, now_unix_ms};

/// Refusal code when a verified bundle cannot be stored locally.
const CODE_STORAGE: &str = "agent_storage_error";
/// Refusal code when a verified bundle collides with a different cached bundle of the same epoch.
const CODE_EPOCH_CONFLICT: &str = "bundle_epoch_conflict";

/// Loads every configured registry public key into a trust root (the persisted additions and revocations of
/// `bundle_trust` are applied on top by `TrustState::compose`).
pub(crate) fn load_trust_root(paths: &[PathBuf]) -> Result<gait_bundle::TrustRoot, DaemonError> {
    let mut keys = Vec::with_capacity(paths.len());
    for path in paths {
        let key =
            gait_canon::sign::load_public_key_file(path).map_err(|e| DaemonError::TrustKey {
                path: path.clone(),
                detail: e.to_string(),
            })?;
        keys.push(key);
    }
    Ok(gait_bundle::TrustRoot::from_public_keys(keys))
}

/// The trust a process without the daemon verifies with: the configured keys with `cache`'s persisted
/// additions and revocations applied.
pub(crate) fn load_trust(
    paths: &[PathBuf],
    cache: &crate::bundle_cache::BundleCache,
) -> Result<crate::state::TrustState, String> {
    let configured = load_trust_root(paths).map_err(|e| e.to_string())?;
    let persisted = cache.persisted_trust().map_err(|e| e.to_string())?;
    Ok(crate::state::TrustState::compose(configured, persisted))
}

/// What happened to an offer.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Verified, stored and activated; send this report.
    Applied(BundleReport),
    /// Refused; send the report unless it repeats the previous refusal.
    Refused(Option<BundleReport>),
    /// The offer is the bundle already in force.
    Unchanged,
}

fn unix_secs(ms: i64) -> i64 {
    ms.div_euclid(1000)
}

/// Verifies and activates an offered bundle, or refuses it keeping the active one.
pub(crate) async fn handle_offer(state: &Arc<AgentState>, offer: BundleOffer) -> Outcome {
    let active = state.active_bundle();
    if let Some(a) = &active
        && a.bundle.digest == offer.digest
        && a.epoch() == offer.epoch
    {
        tracing::debug!(epoch = offer.epoch, "offered bundle is already active");
        return Outcome::Unchanged;
    }
    let now_ms = now_unix_ms();
    let current_epoch = active.as_ref().map(|a| a.epoch());
    let st = state.clone();
    let bytes = offer.signed_bundle;
    let verified = tokio::task::spawn_blocking(move || {
        let trust = st.trust();
        let result = gait_bundle::verify_with(
            &bytes,
            &trust.options(st.scope(), current_epoch, unix_secs(now_ms)),
        );
        result.map_err(|e| (e.code().to_owned(), e.to_string()))
    })
    .await
    .unwrap_or_else(|e| Err(("agent_internal_error".to_owned(), e.to_string())));
    let bundle = match verified {
        Ok(b) => b,
        Err((code, message)) => {
            return refuse(state, offer.epoch, offer.digest, &code, &message, now_ms).await;
        }
    };
    let (epoch, digest) = (bundle.manifest.epoch, bundle.digest);
    if epoch != offer.epoch || digest != offer.digest {
        tracing::warn!(
            offered_epoch = offer.epoch,
            offered_digest = %hex::encode(offer.digest),
            epoch,
            digest = %bundle.digest_hex,
            "the aggregator's claim about a bundle differs from its verified manifest; using the manifest"
        );
    }

    match store_and_activate(state, bundle, now_ms, current_epoch, "aggregator").await {
        Ok(applied) => Outcome::Applied(applied.report),
        Err((code, message)) => refuse(state, epoch, digest, code, &message, now_ms).await,
    }
}

/// A verified bundle once stored and activated.
#[derive(Debug)]
pub(crate) struct Applied {
    /// The report for the aggregator.
    pub(crate) report: BundleReport,
    /// When it was activated, agent clock.
    pub(crate) since_unix_ms: i64,
}

/// Stores and activates a verified bundle, switches to it in memory and appends the durable
/// `bundle.applied` status record (`source`: `aggregator` or `file`). On a storage failure the old bundle
/// stays active and the refusal code and message are returned.
async fn store_and_activate(
    state: &Arc<AgentState>,
    bundle: gait_bundle::VerifiedBundle,
    now_ms: i64,
    current_epoch: Option<u64>,
    source: &'static str,
) -> Result<Applied, (&'static str, String)> {
    let (epoch, digest) = (bundle.manifest.epoch, bundle.digest);
    let cache = state.cache().clone();
    let trust = TrustChange::of(&bundle);
    let stored = tokio::task::spawn_blocking(move || {
        let received = cache.store_received(&bundle, now_ms)?;
        let activated = cache.activate_trusting(epoch, now_ms, &TrustChange::of(&bundle))?;
        Ok::<_, crate::bundle_cache::BundleCacheError>((bundle, received, activated))
    })
    .await;
    let (bundle, received, activated) = match stored {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            let code = match e {
                crate::bundle_cache::BundleCacheError::EpochConflict { .. } => CODE_EPOCH_CONFLICT,
                _ => CODE_STORAGE,
            };
            tracing::error!(error = %e, epoch, "a verified bundle could not be stored; the old bundle stays active");
            return Err((code, e.to_string()));
        }
        Err(e) => return Err((CODE_STORAGE, e.to_string())),
    };
    let since = activated.activated_at_unix_ms.unwrap_or(now_ms);
    let capture_mode = bundle.manifest.settings.capture_mode;
    // A rollback bundle (a new epoch restoring older policies) is reported as such.
    let rollback = bundle.manifest.rollback.as_ref().map(|r| {
        json!({ "from_digest": r.from_digest, "restores_epoch": r.restores_epoch,
            "restores_digest": r.restores_digest, "reason": r.reason })
    });
    let active = Arc::new(ActiveBundle::new(bundle, since));
    let applied_ref = active.bundle_ref();
    state.apply_trust(&trust);
    state.set_active(Some(active));
    state.set_received(Some(received.bundle_ref()));
    tracing::info!(
        epoch,
        digest = %hex::encode(digest),
        previous_epoch = current_epoch,
        source,
        "bundle activated"
    );
    let payload = json!({
        "epoch": epoch,
        "digest": hex::encode(digest),
        "code": null,
        "message": null,
        "since_unix_ms": since,
        "previous_epoch": current_epoch,
        "source": source,
        "capture_mode": capture_mode,
        "trust_added": trust.added.iter().map(|k| k.key_id()).collect::<Vec<_>>(),
        "trust_revoked": trust.revoked,
    });
    let mut payload = payload;
    if let Some(rollback) = rollback {
        payload["rollback"] = rollback;
    }
    append_status(state, "bundle.applied", &payload).await;
    Ok(Applied {
        report: BundleReport {
            received: Some(received.bundle_ref()),
            applied: Some(applied_ref),
            refusal: None,
        },
        since_unix_ms: since,
    })
}

/// A bundle imported from a file (`gait-agent bundle import`), once in force.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Imported {
    /// Epoch of the imported bundle.
    pub epoch: u64,
    /// Its digest, hex.
    pub digest: String,
    /// The epoch it replaced (`None`: no bundle was active).
    pub previous_epoch: Option<u64>,
    /// When it was activated, milliseconds since the Unix epoch (agent clock).
    pub since_unix_ms: i64,
}

/// Why an imported bundle was not activated: a stable code (a `gait_bundle` code, or the storage codes of
/// this module) and a message for the operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ImportRefused {
    /// Stable machine code, e.g. `bundle_epoch_stale`.
    pub code: &'static str,
    /// What is wrong and what to do.
    pub message: String,
}

impl ImportRefused {
    /// True when the bundle itself was refused (as opposed to the agent failing to store it).
    pub fn is_bundle_refused(&self) -> bool {
        self.code != CODE_STORAGE
    }
}

/// Verifies a bundle carried in on a file exactly as an offer from the aggregator (trust root, this agent's
/// scope, expiry, and an epoch newer than the active one) and activates it. Unlike an offer, a refusal is not
/// recorded as the last refusal: the operator who imported the file gets it directly.
pub(crate) async fn import_bytes(
    state: &Arc<AgentState>,
    bytes: Vec<u8>,
) -> Result<Imported, ImportRefused> {
    let now_ms = now_unix_ms();
    let current_epoch = state.active_epoch();
    let st = state.clone();
    let verified = tokio::task::spawn_blocking(move || {
        let trust = st.trust();
        gait_bundle::verify_with(
            &bytes,
            &trust.options(st.scope(), current_epoch, unix_secs(now_ms)),
        )
    })
    .await
    .map_err(|e| ImportRefused {
        code: CODE_STORAGE,
        message: format!("the verification task failed: {e}"),
    })?;
    let bundle = verified.map_err(|e| refusal_of(&e))?;
    let (epoch, digest_hex) = (bundle.manifest.epoch, bundle.digest_hex.clone());
    let applied = store_and_activate(state, bundle, now_ms, current_epoch, "file")
        .await
        .map_err(|(code, message)| ImportRefused { code, message })?;
    Ok(Imported {
        epoch,
        digest: digest_hex,
        previous_epoch: current_epoch,
        since_unix_ms: applied.since_unix_ms,
    })
}

/// The static form of a refusal code a running agent answered (unknown codes become `bundle_refused`, or
/// `agent_storage_error` for the API's storage and internal errors).
pub(crate) fn known_code(code: &str) -> &'static str {
    if let Some(known) = gait_bundle::BundleError::CODES.iter().find(|c| **c == code) {
        return known;
    }
    match code {
        CODE_EPOCH_CONFLICT => CODE_EPOCH_CONFLICT,
        CODE_STORAGE | "storage_failing" | "internal" => CODE_STORAGE,
        "unauthorized" => "unauthorized",
        _ => "bundle_refused",
    }
}

/// The operator's message for a bundle `gait_bundle::verify` refused.
pub(crate) fn refusal_of(e: &gait_bundle::BundleError) -> ImportRefused {
    let message = match e {
        gait_bundle::BundleError::StaleEpoch { offered, current } => format!(
            "bundle epoch {offered} is not newer than the active epoch {current}: the agent never goes back to \
             an older (or the same) epoch; export a bundle published after epoch {current}"
        ),
        other => other.to_string(),
    };
    ImportRefused {
        code: e.code(),
        message,
    }
}

/// Records, logs and reports a refusal; the active bundle is untouched.
async fn refuse(
    state: &Arc<AgentState>,
    epoch: u64,
    digest: [u8; 32],
    code: &str,
    message: &str,
    now_ms: i64,
) -> Outcome {
    let digest_hex = hex::encode(digest);
    tracing::warn!(
        epoch,
        digest = %digest_hex,
        code,
        message,
        active_epoch = state.active_epoch(),
        "bundle refused; the active bundle stays in force"
    );
    let repeat = state
        .last_refusal()
        .is_some_and(|r| r.epoch == epoch && r.digest == digest_hex && r.code == code);
    state.set_last_refusal(
        Some(RefusalInfo {
            epoch,
            digest: digest_hex.clone(),
            code: code.to_owned(),
            message: message.to_owned(),
            at_unix_ms: now_ms,
        }),
        true,
    );
    if repeat {
        // Already recorded and reported: do not grow the outbox with the same refusal again.
        return Outcome::Refused(None);
    }
    let refusal = BundleRefusal {
        epoch,
        digest,
        code: code.to_owned(),
        message: message.to_owned(),
        at_unix_ms: now_ms,
    };
    let cache = state.cache().clone();
    let to_store = refusal.clone();
    match tokio::task::spawn_blocking(move || cache.record_refusal(&to_store)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot persist the bundle refusal"),
        Err(e) => tracing::warn!(error = %e, "refusal write task failed"),
    }
    let payload = json!({
        "epoch": epoch,
        "digest": digest_hex,
        "code": code,
        "message": message,
        "active_epoch": state.active_epoch(),
    });
    append_status(state, "bundle.refused", &payload).await;
    Outcome::Refused(Some(BundleReport {
        received: None,
        applied: None,
        refusal: Some(refusal.to_wire()),
    }))
}

/// Appends the durable status record that carries a bundle report exactly once.
async fn append_status(state: &Arc<AgentState>, kind: &str, payload: &serde_json::Value) {
    let bytes = payload.to_string().into_bytes();
    if let Err(e) = state
        .append(RecordClass::Status, kind.to_owned(), bytes)
        .await
    {
        tracing::error!(error = %e, kind, "cannot append the bundle status record; the aggregator will only see the report");
    }
}

/// Verifies a cached bundle as of `at_unix_ms` (no epoch check) and checks it is the bundle cached.
fn reverify(
    state: &AgentState,
    cached: &CachedBundle,
    current_epoch: Option<u64>,
    at_unix_ms: i64,
) -> Result<gait_bundle::VerifiedBundle, String> {
    let trust = state.trust();
    let bundle = gait_bundle::verify_with(
        &cached.raw,
        &trust.options(state.scope(), current_epoch, unix_secs(at_unix_ms)),
    )
    .map_err(|e| format!("{}: {e}", e.code()))?;
    if bundle.digest != cached.digest || bundle.manifest.epoch != cached.epoch {
        return Err(format!(
            "cache entry says epoch {} digest {}, the bundle is epoch {} digest {}",
            cached.epoch, cached.digest_hex, bundle.manifest.epoch, bundle.digest_hex
        ));
    }
    Ok(bundle)
}

/// Startup: re-verify the cached active bundle before enforcing it; finish an activation a crash
/// interrupted (a newer verified bundle stored but not yet active); load the last refusal for status.
pub(crate) async fn restore_cached_bundle(state: &Arc<AgentState>) {
    let st = state.clone();
    match tokio::task::spawn_blocking(move || restore_blocking(&st)).await {
        Ok(Some(applied)) => append_status(state, "bundle.applied", &applied).await,
        Ok(None) => {}
        Err(e) => {
            tracing::error!(error = %e, "bundle restore task failed; starting without an active bundle")
        }
    }
}

/// Returns the `bundle.applied` payload when it completed an interrupted activation.
fn restore_blocking(state: &AgentState) -> Option<serde_json::Value> {
    let mut applied = None;
    let cache = state.cache();
    let mut active_epoch = None;
    match cache.active() {
        Ok(Some(cached)) => {
            let since = cached
                .activated_at_unix_ms
                .unwrap_or(cached.received_at_unix_ms);
            match reverify(state, &cached, None, since) {
                Ok(bundle) => {
                    tracing::info!(
                        epoch = cached.epoch,
                        digest = %cached.digest_hex,
                        since_unix_ms = since,
                        "cached bundle verified and restored"
                    );
                    active_epoch = Some(cached.epoch);
                    state.set_active(Some(Arc::new(ActiveBundle::new(bundle, since))));
                }
                Err(reason) => tracing::error!(
                    epoch = cached.epoch,
                    digest = %cached.digest_hex,
                    %reason,
                    "cached active bundle failed verification and is NOT used; the agent has no active \
                     bundle until the aggregator sends a valid one"
                ),
            }
        }
        Ok(None) => tracing::info!("no cached bundle; waiting for the aggregator"),
        Err(e) => {
            tracing::error!(error = %e, "cannot read the bundle cache; starting without an active bundle")
        }
    }
    match cache.received() {
        Ok(Some(received)) => {
            let newer = active_epoch.is_none_or(|a| received.epoch > a)
                && received.activated_at_unix_ms.is_none();
            if newer {
                applied = finish_interrupted_activation(state, &received, active_epoch);
            }
            let bundle_ref: BundleRef = received.bundle_ref();
            if state.received().is_none() {
                state.set_received(Some(bundle_ref));
            }
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the received bundle"),
    }
    match cache.last_refusal() {
        Ok(Some(r)) => state.set_last_refusal(
            Some(RefusalInfo {
                epoch: r.epoch,
                digest: hex::encode(r.digest),
                code: r.code,
                message: r.message,
                at_unix_ms: r.at_unix_ms,
            }),
            false,
        ),
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the last bundle refusal"),
    }
    applied
}

/// A newer bundle was stored but the agent stopped before activating it: verify it as an offer would be
/// (rollback check against the active epoch, expiry now) and activate it.
fn finish_interrupted_activation(
    state: &AgentState,
    received: &CachedBundle,
    active_epoch: Option<u64>,
) -> Option<serde_json::Value> {
    let now_ms = now_unix_ms();
    let bundle = match reverify(state, received, active_epoch, now_ms) {
        Ok(b) => b,
        Err(reason) => {
            tracing::warn!(epoch = received.epoch, %reason, "stored but unactivated bundle does not verify; ignored");
            return None;
        }
    };
    let trust = TrustChange::of(&bundle);
    match state
        .cache()
        .activate_trusting(received.epoch, now_ms, &trust)
    {
        Ok(activated) => {
            state.apply_trust(&trust);
            let since = activated.activated_at_unix_ms.unwrap_or(now_ms);
            tracing::info!(
                epoch = received.epoch,
                "finished a bundle activation interrupted by a restart"
            );
            state.set_received(Some(activated.bundle_ref()));
            let capture_mode = bundle.manifest.settings.capture_mode;
            state.set_active(Some(Arc::new(ActiveBundle::new(bundle, since))));
            Some(json!({
                "epoch": received.epoch,
                "digest": received.digest_hex,
                "code": null,
                "message": null,
                "since_unix_ms": since,
                "previous_epoch": active_epoch,
                "capture_mode": capture_mode,
                "trust_added": trust.added.iter().map(|k| k.key_id()).collect::<Vec<_>>(),
                "trust_revoked": trust.revoked,
            }))
        }
        Err(e) => {
            tracing::error!(error = %e, epoch = received.epoch, "cannot activate the stored bundle");
            None
        }
    }
}
