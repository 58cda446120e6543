//! Pinning an environment to a registry version, and rollback.
//!
//! A pin publishes the version through the normal bundle path (a new signed epoch, one policy file named like
//! the version) and records a row of the environment's pin history, both in the bundle's store transaction
//! with an `env.pin` audit entry. Settings (staleness, validity, environment settings, delegation key) come
//! from the request, else from the previous pin, else the registry defaults.
//!
//! A rollback is a new, higher epoch too: the agents' anti-rollback (epoch strictly greater) is never relaxed,
//! so old signed bytes stay refused. It restores, deterministically, the newest earlier pin that is known-good
//! and differs from the current version (or the newest pin of `--to`), with that pin's settings; the bundle
//! carries the signed `manifest.rollback` marker (the bundle rolled back, the epoch and digest restored, the
//! reason), every pin of the rolled-back version loses `known_good`, and the rollback is a `kind = rollback` row and an
//! `env.rollback` audit entry, all in one transaction. A pin by an operator or a completed rollout is
//! known-good.
//!
//! The seam for the rollout controller: [`Registry::publish_staged`] publishes a bundle from registry versions
//! (the environment's baseline plus an optional candidate at observe or dry_run), and [`Registry::pin`] /
//! [`Registry::rollback`] are plain async functions callable from Rust.

use std::collections::BTreeMap;
use std::time::Duration;

use gait_bundle::{OnStale, Stage};
use gait_store::{NewPin, PinKind, StoredPin, Tenant};
use serde::{Deserialize, Serialize};

use super::diff::{self, Warning};
use super::versions::audit;
use super::{PublishRequest, Published, Registry, RegistryError, StagedCandidate};
use crate::clock::unix_ms;

/// Longest rollback reason in bytes (the manifest's limit).
pub const MAX_REASON_BYTES: usize = gait_bundle::MAX_ROLLBACK_REASON_LEN;

/// The bundle settings of a pin, kept with it so a later pin or a rollback publishes with the same ones.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvSettings {
    /// Seconds an agent may enforce without contact before it is stale (default: the registry's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_offline_seconds: Option<u64>,
    /// What a stale agent does (default: the registry's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_stale: Option<OnStale>,
    /// Seconds the bundle may be activated after signing (default: the registry's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validity_seconds: Option<u64>,
    /// Environment settings signed into the bundle.
    #[serde(default)]
    pub settings: gait_bundle::Settings,
    /// Delegation public key (Gait's key text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegation_key: Option<String>,
}

/// A bundle built from registry versions: what the rollout controller asks for at each step.
#[derive(Clone, Debug)]
pub struct StagedPublish {
    /// Digest of the version the environment enforces.
    pub baseline: String,
    /// A candidate version staged beside it at `observe` or `dry_run`.
    pub candidate: Option<(String, Stage)>,
    /// Set when the bundle is a rollback.
    pub rollback: Option<gait_bundle::Rollback>,
    /// Offer the bundle only to a rollout's cohort (`None`: every agent of the environment).
    pub audience: Option<super::Audience>,
    /// Bundle settings.
    pub settings: EnvSettings,
    /// Who publishes (an operator, or `controller:<replica>`).
    pub actor: String,
}

/// What a pin or a rollback did.
#[derive(Clone, Debug, Serialize)]
pub struct PinOutcome {
    /// The new pin row.
    pub pin: StoredPin,
    /// The bundle that carries it.
    pub bundle: Published,
    /// Risky settings (e.g. `offline_zero_in_prod`).
    pub warnings: Vec<Warning>,
}

fn check_reason(reason: &str) -> Result<(), RegistryError> {
    if reason.trim().is_empty()
        || reason.len() > MAX_REASON_BYTES
        || reason.chars().any(char::is_control)
    {
        return Err(RegistryError::Field {
            field: "reason",
            message: format!(
                "give why, in 1 to {MAX_REASON_BYTES} bytes without control characters"
            ),
        });
    }
    Ok(())
}

impl Registry {
    /// The environment's pin history, newest first.
    pub async fn pins(&self, tenant: &Tenant) -> Result<Vec<StoredPin>, RegistryError> {
        Ok(self
            .store
            .env_pins(tenant, gait_store::MAX_POLICY_PAGE)
            .await?)
    }

    /// The environment's current pin, if it was ever pinned.
    pub async fn current_pin(&self, tenant: &Tenant) -> Result<Option<StoredPin>, RegistryError> {
        Ok(self.store.env_pins(tenant, 1).await?.into_iter().next())
    }

    /// The settings of `tenant`'s newest pin (the defaults when it has none): what a pin that changes only
    /// some settings starts from.
    pub async fn pinned_settings(&self, tenant: &Tenant) -> Result<EnvSettings, RegistryError> {
        Self::settings_of(self.current_pin(tenant).await?.as_ref())
    }

    /// The publish request of a bundle built from registry versions of `tenant`'s org.
    async fn staged_request(
        &self,
        tenant: &Tenant,
        p: &StagedPublish,
    ) -> Result<PublishRequest, RegistryError> {
        let base = self.stored_bytes(&tenant.org, &p.baseline).await?;
        let base_name = base.version.name.clone();
        let mut candidates = BTreeMap::new();
        if let Some((digest, stage)) = &p.candidate {
            let cand = self.stored_bytes(&tenant.org, digest).await?;
            let name = if cand.version.name == base_name {
                format!("candidate-{}", cand.version.name)
            } else {
                cand.version.name.clone()
            };
            candidates.insert(
                base_name.clone(),
                StagedCandidate {
                    stage: *stage,
                    name,
                    text: String::from_utf8_lossy(&cand.yaml).into_owned(),
                },
            );
        }
        let delegation_key = p
            .settings
            .delegation_key
            .as_deref()
            .map(|k| {
                gait_canon::sign::PublicKey::from_gait_public_key(k.trim()).map_err(|e| {
                    RegistryError::Field {
                        field: "delegation_key",
                        message: format!("not an Ed25519 public key in Gait's base64 form ({e})"),
                    }
                })
            })
            .transpose()?;
        Ok(PublishRequest {
            policies: [(base_name, String::from_utf8_lossy(&base.yaml).into_owned())].into(),
            max_offline_seconds: p.settings.max_offline_seconds,
            on_stale: p.settings.on_stale,
            validity: p.settings.validity_seconds.map(Duration::from_secs),
            settings: p.settings.settings,
            created_by: p.actor.clone(),
            candidates,
            delegation_key,
            rollback: p.rollback.clone(),
            audience: p.audience.clone(),
        })
    }

    /// Publish a bundle built from registry versions (no pin row): the baseline, plus a candidate staged at
    /// `observe` or `dry_run`. The rollout controller's step.
    pub async fn publish_staged(
        &self,
        tenant: &Tenant,
        p: StagedPublish,
    ) -> Result<Published, RegistryError> {
        let req = self.staged_request(tenant, &p).await?;
        self.publish(tenant, req).await
    }

    /// [`Registry::publish_staged`], running `also` in the bundle's transaction (the rollout controller
    /// records the step's bundle with it).
    pub(crate) async fn publish_staged_with(
        &self,
        tenant: &Tenant,
        p: StagedPublish,
        also: &super::AlsoInTx<'_, ()>,
    ) -> Result<Published, RegistryError> {
        let req = self.staged_request(tenant, &p).await?;
        Ok(self.publish_with(tenant, req, also).await?.0)
    }

    /// Settings of the previous pin, else the defaults.
    fn settings_of(pin: Option<&StoredPin>) -> Result<EnvSettings, RegistryError> {
        match pin {
            Some(p) => serde_json::from_str(&p.pin.settings_json).map_err(|e| {
                RegistryError::Store(gait_store::StoreError::Corrupt {
                    table: "env_pins",
                    reason: format!("settings_json of pin {}: {e}", p.id),
                })
            }),
            None => Ok(EnvSettings::default()),
        }
    }

    /// Pin `tenant` to version `digest`: publish it as the next epoch and record the pin (see the module docs).
    pub async fn pin(
        &self,
        tenant: &Tenant,
        digest: &str,
        settings: Option<EnvSettings>,
        actor: &str,
        kind: PinKind,
        rollout_id: Option<&str>,
    ) -> Result<PinOutcome, RegistryError> {
        self.stored_bytes(&tenant.org, digest).await?;
        let current = self.current_pin(tenant).await?;
        let settings = match settings {
            Some(s) => s,
            None => Self::settings_of(current.as_ref())?,
        };
        let staged = StagedPublish {
            baseline: digest.to_owned(),
            candidate: None,
            rollback: None,
            audience: None,
            settings: settings.clone(),
            actor: actor.to_owned(),
        };
        let new_pin = |epoch: u64, bundle_digest: &str| -> Result<NewPin, RegistryError> {
            Ok(NewPin {
                tenant: tenant.clone(),
                digest: digest.to_owned(),
                kind,
                rollout_id: rollout_id.map(str::to_owned),
                settings_json: serde_json::to_string(&settings)
                    .map_err(|e| RegistryError::Invalid(format!("settings: {e}")))?,
                bundle_epoch: epoch,
                bundle_digest: bundle_digest.to_owned(),
                known_good: true,
                actor: actor.to_owned(),
                reason: String::new(),
                created_unix_ms: unix_ms(),
            })
        };
        let action = match kind {
            PinKind::Rollback => "env.rollback",
            PinKind::Pin | PinKind::Rollout => "env.pin",
        };
        let outcome = self
            .record(tenant, staged, current.as_ref(), None, action, new_pin)
            .await?;
        Ok(PinOutcome {
            warnings: diff::pin_warnings(
                tenant.env.as_str(),
                Some(
                    settings
                        .max_offline_seconds
                        .unwrap_or(self.defaults.max_offline_seconds),
                ),
            ),
            ..outcome
        })
    }

    /// Roll `tenant` back (see the module docs): to the newest pin of `to` when given; else, when what is in
    /// force is not the newest pin's own content (a staged candidate, a plain publish), to the newest
    /// known-good pin, demoting nothing; else to the newest earlier known-good pin whose version differs from
    /// the current one, demoting the current version.
    pub async fn rollback(
        &self,
        tenant: &Tenant,
        to: Option<&str>,
        reason: &str,
        actor: &str,
    ) -> Result<PinOutcome, RegistryError> {
        check_reason(reason)?;
        if let Some(d) = to {
            super::versions::check_digest("to", d)?;
        }
        let pins = self.pins(tenant).await?;
        let Some(current) = pins.first() else {
            return Err(RegistryError::NotFound(format!(
                "{tenant} was never pinned: there is nothing to roll back; pin a version first"
            )));
        };
        // What is in force may not be the newest pin's own bundle: a staged candidate (rollout), a plain
        // `publish` or anything else published after it. Then the newest pin is the version to go back to, and
        // nothing of it is demoted. A re-publish of the pin's own content (a key rotation) still counts as the pin.
        let latest = self.latest(tenant).await?;
        let pinned_in_force = match &latest {
            None => true,
            Some(b) if b.epoch == current.pin.bundle_epoch => true,
            Some(b) => enforces_only(&b.bytes, &current.pin.digest),
        };
        if let Some(d) = to
            && pinned_in_force
            && d == current.pin.digest
        {
            return Err(RegistryError::Conflict(format!(
                "{d} is already in force in {tenant}: a rollback to it would change nothing; name another \
                 version (see `gait-aggregator policy pins`)"
            )));
        }
        let target = match to {
            None if !pinned_in_force => pins
                .iter()
                .find(|p| p.pin.known_good)
                .ok_or_else(|| {
                    RegistryError::Conflict(format!(
                        "{tenant} has no known-good pin to go back to; pin one explicitly"
                    ))
                })?,
            Some(d) => pins.iter().find(|p| p.pin.digest == d).ok_or_else(|| {
                RegistryError::NotFound(format!(
                    "{tenant} was never pinned to {d}; see `gait-aggregator policy pins`"
                ))
            })?,
            None => pins[1..]
                .iter()
                .find(|p| p.pin.known_good && p.pin.digest != current.pin.digest)
                .ok_or_else(|| {
                    RegistryError::Conflict(format!(
                        "{tenant} has no earlier known-good pin of another version than {}; pin one explicitly",
                        current.pin.digest
                    ))
                })?,
        };
        let from_digest = latest
            .as_ref()
            .map(|b| b.digest.clone())
            .unwrap_or_else(|| current.pin.bundle_digest.clone());
        let marker = gait_bundle::Rollback {
            from_digest,
            restores_epoch: target.pin.bundle_epoch,
            restores_digest: target.pin.bundle_digest.clone(),
            reason: reason.to_owned(),
        };
        let settings = Self::settings_of(Some(target))?;
        let staged = StagedPublish {
            baseline: target.pin.digest.clone(),
            candidate: None,
            rollback: Some(marker),
            audience: None,
            settings: settings.clone(),
            actor: actor.to_owned(),
        };
        let new_pin = |epoch: u64, bundle_digest: &str| -> Result<NewPin, RegistryError> {
            Ok(NewPin {
                tenant: tenant.clone(),
                digest: target.pin.digest.clone(),
                kind: PinKind::Rollback,
                rollout_id: None,
                settings_json: target.pin.settings_json.clone(),
                bundle_epoch: epoch,
                bundle_digest: bundle_digest.to_owned(),
                known_good: true,
                actor: actor.to_owned(),
                reason: reason.to_owned(),
                created_unix_ms: unix_ms(),
            })
        };
        // Every pin of the rolled-back version stops being known-good, so no later rollback returns to it
        // (an operator can still pin it again, or name it with `--to`): one UPDATE over the whole history, not
        // only the page read above.
        let demote = pinned_in_force.then(|| current.pin.digest.clone());
        let outcome = self
            .record(
                tenant,
                staged,
                Some(current),
                demote.as_deref(),
                "env.rollback",
                new_pin,
            )
            .await?;
        tracing::warn!(org = %tenant.org, project = %tenant.project, env = %tenant.env,
            restored = %target.pin.digest, epoch = outcome.bundle.epoch, %reason, "environment rolled back");
        Ok(outcome)
    }

    /// Publishes `staged` and, in its transaction, checks that the current pin is still `current` (a
    /// concurrent pin wins, this one is refused), clears `known_good` of every pin of version `demote`, records
    /// the pin and audits.
    async fn record(
        &self,
        tenant: &Tenant,
        staged: StagedPublish,
        current: Option<&StoredPin>,
        demote: Option<&str>,
        action: &'static str,
        new_pin: impl Fn(u64, &str) -> Result<NewPin, RegistryError> + Send + Sync,
    ) -> Result<PinOutcome, RegistryError> {
        let req = self.staged_request(tenant, &staged).await?;
        let expected = current.map(|p| p.id);
        let demote = demote.map(str::to_owned);
        let before = current.map(|p| format!("sha256:{}", p.pin.digest));
        let also: &super::AlsoInTx<'_, StoredPin> = &|tx, epoch, bundle_digest| {
            let pin = new_pin(epoch, bundle_digest);
            let (tenant, before, demote) = (tenant.clone(), before.clone(), demote.clone());
            Box::pin(async move {
                let pin = pin?;
                let now = tx.env_pins(&tenant, 1).await?.first().map(|p| p.id);
                if now != expected {
                    return Err(RegistryError::Conflict(format!(
                        "{tenant} was pinned concurrently; look at `policy pins` and retry"
                    )));
                }
                if let Some(digest) = &demote {
                    tx.demote_pins(&tenant, digest).await?;
                }
                let id = tx.insert_env_pin(&pin).await?;
                let mut details = serde_json::Map::new();
                details.insert("epoch".into(), pin.bundle_epoch.into());
                details.insert("bundle_digest".into(), pin.bundle_digest.clone().into());
                details.insert("kind".into(), pin.kind.as_str().into());
                if !pin.reason.is_empty() {
                    details.insert("reason".into(), pin.reason.clone().into());
                }
                if let Some(r) = &pin.rollout_id {
                    details.insert("rollout_id".into(), r.clone().into());
                }
                audit(
                    tx,
                    &pin.actor,
                    action,
                    crate::audit::tenant_target(&tenant, "env_pin", id.to_string()),
                    before,
                    Some(format!("sha256:{}", pin.digest)),
                    details,
                )
                .await?;
                Ok(StoredPin {
                    id,
                    pin: gait_store::PinFields {
                        digest: pin.digest,
                        kind: pin.kind,
                        rollout_id: pin.rollout_id,
                        settings_json: pin.settings_json,
                        bundle_epoch: pin.bundle_epoch,
                        bundle_digest: pin.bundle_digest,
                        known_good: pin.known_good,
                        actor: pin.actor,
                        reason: pin.reason,
                        created_unix_ms: pin.created_unix_ms,
                    },
                })
            })
        };
        let (bundle, pin) = self.publish_with(tenant, req, also).await?;
        tracing::info!(org = %tenant.org, project = %tenant.project, env = %tenant.env,
            digest = %pin.pin.digest, kind = pin.pin.kind.as_str(), epoch = bundle.epoch, "environment pinned");
        Ok(PinOutcome {
            pin,
            bundle,
            warnings: Vec::new(),
        })
    }
}

/// Whether the bundle `bytes` enforces exactly the registry version `digest`: one policy file whose Gait policy
/// digest it is, and no candidate beside it (what a pin publishes, and a key rotation re-publishes). Bytes that
/// do not open or parse count as not.
fn enforces_only(bytes: &[u8], digest: &str) -> bool {
    let Ok((manifest, files)) = gait_bundle::open_unverified(bytes) else {
        return false;
    };
    let [entry] = manifest.policies.as_slice() else {
        return false;
    };
    entry.candidate.is_none()
        && files
            .get(&entry.name)
            .and_then(|text| super::validate::parse(text).ok())
            .is_some_and(|policy| policy.digest() == digest)
}
