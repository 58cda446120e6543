//! Policy registry: the registry signing key, signed bundle publishing and the long-poll wake-up hub.
//!
//! A publish validates the policy files, assigns the next epoch of the tenant's scope, signs a bundle with the
//! registry key (Gait's Ed25519 SignJSON over the manifest), stores it, and wakes every long-poll waiting on that
//! scope. Waiters read the new bundle from the hub without touching the store, so a publish to a thousand
//! connected agents costs one store write. A periodic refresh picks up bundles published by another replica
//! sharing the same database.

pub mod conformance;
pub mod diff;
pub mod pin;
pub mod signing;
pub mod validate;
pub mod versions;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gait_bundle::{BundleBuilder, OnStale, Scope, Staleness};
use gait_canon::sign::{self, PublicKey, SigningKey};
use gait_store::{Store, StoreError, StoredBundle, Tenant};
use signing::{KeyChange, Signer};
use tokio::sync::watch;

use crate::clock::unix_ms;
use crate::metrics::Metrics;

/// File name of the registry's private signing key inside the key directory.
pub const REGISTRY_KEY_FILE: &str = "registry.key";
/// File name of the registry's public key: the trust root agents are given.
pub const REGISTRY_PUB_FILE: &str = "registry.pub";
/// Largest policy file accepted in a bundle.
pub const MAX_POLICY_BYTES: usize = 1024 * 1024;
/// Most policy files in one bundle.
pub const MAX_POLICIES: usize = 64;
/// Longest validity a bundle may be signed with: ten years. Past it the signing date arithmetic would
/// overflow for values an operator can type (1e12 seconds is ~31,700 years).
pub const MAX_VALIDITY_SECONDS: u64 = 10 * 365 * 24 * 3600;
/// Largest `max_offline_seconds`: 2^53 - 1, the bundle format's bound for every integer of the manifest
/// (the largest integer every JSON reader, JavaScript's included, reads exactly).
pub const MAX_OFFLINE_SECONDS: u64 = gait_bundle::MAX_SAFE_INTEGER;
/// Most bundles the hub keeps offering per scope (the newest one for everyone and cohort bundles after it).
const MAX_OFFERS: usize = 64;
/// How often a publish is retried when another replica took the epoch it computed.
const EPOCH_ATTEMPTS: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry key {path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error("invalid publish request: {0}")]
    Invalid(String),
    /// A publish field (or the configured default standing in for it) is out of its range.
    #[error("{field}: {message}")]
    Field {
        /// The field, as named in the publish request.
        field: &'static str,
        /// What is wrong and the accepted range.
        message: String,
    },
    #[error("policy {name} is not a valid Gait policy: {message}")]
    Policy { name: String, message: String },
    #[error("signing the bundle failed: {0}")]
    Sign(String),
    /// No signing key has this id.
    #[error("no bundle signing key {0}: list them with gait-aggregator keys list")]
    KeyNotFound(String),
    /// The key change is not possible in the keys' current states; the message says what to do.
    #[error("{0}")]
    KeyConflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The publish's audit entry could not be appended (nothing was published).
    #[error("audit: {0}")]
    Audit(String),
    /// A policy pushed to the registry is not a valid Gait policy; nothing was stored.
    #[error("policy {name} is not a valid Gait policy: {rejection}")]
    Rejected {
        /// The version's name.
        name: String,
        /// What is wrong, with the key and line.
        rejection: validate::PolicyRejection,
    },
    /// A registry object the request names does not exist (a version digest, a pin to roll back).
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the registry's state (nothing to roll back to, a concurrent pin won).
    #[error("{0}")]
    Conflict(String),
    /// A bundle meant to follow epoch `expected` found a newer one published meanwhile (not published).
    #[error("a newer bundle than epoch {expected} was published meanwhile")]
    Superseded {
        /// The epoch the bundle was built on.
        expected: u64,
    },
}

impl RegistryError {
    /// Whether the caller sent something wrong (as opposed to a server-side failure).
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            Self::Invalid(_)
                | Self::Field { .. }
                | Self::Policy { .. }
                | Self::Rejected { .. }
                | Self::NotFound(_)
                | Self::Conflict(_)
        )
    }
}

/// Defaults applied when a publish request leaves a field out.
#[derive(Clone, Debug)]
pub struct BundleDefaults {
    /// How long a bundle may be activated after it is signed.
    pub validity: Duration,
    /// How long an agent may enforce without contact before it is stale.
    pub max_offline_seconds: u64,
    /// What a stale agent does.
    pub on_stale: OnStale,
}

impl Default for BundleDefaults {
    fn default() -> Self {
        Self {
            validity: Duration::from_secs(30 * 24 * 3600),
            max_offline_seconds: 24 * 3600,
            on_stale: OnStale::Keep,
        }
    }
}

/// Work done in a publish's store transaction after the bundle is stored: `(tx, epoch, bundle digest)`.
pub(crate) type AlsoInTx<'a, T> = dyn for<'t> Fn(
        &'t mut gait_store::StoreTx,
        u64,
        &'t str,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<T, RegistryError>> + Send + 't>,
    > + Send
    + Sync
    + 'a;

/// What an operator asks to publish for one scope.
#[derive(Clone, Debug)]
pub struct PublishRequest {
    /// Policy file name -> YAML text.
    pub policies: BTreeMap<String, String>,
    pub max_offline_seconds: Option<u64>,
    pub on_stale: Option<OnStale>,
    pub validity: Option<Duration>,
    /// Environment settings signed into the bundle (default: all off, omitted from the manifest).
    pub settings: gait_bundle::Settings,
    /// Who published (operator identity, for the record).
    pub created_by: String,
    /// Candidates staged beside policies: policy file name -> its candidate.
    pub candidates: BTreeMap<String, StagedCandidate>,
    /// The public key agents verify delegation tokens with (`manifest.delegation_key`).
    pub delegation_key: Option<PublicKey>,
    /// Set when the bundle is a rollback (`manifest.rollback`, see [`Registry::rollback`]).
    pub rollback: Option<gait_bundle::Rollback>,
    /// Offer the bundle only to this audience (a rollout's cohort); `None`: every agent of the scope.
    pub audience: Option<Audience>,
}

/// A candidate policy staged beside a policy of the bundle (`manifest.policies[].candidate`).
#[derive(Clone, Debug)]
pub struct StagedCandidate {
    /// `observe` or `dry_run`.
    pub stage: gait_bundle::Stage,
    /// Its file name in the bundle (distinct from every policy name).
    pub name: String,
    /// Its Gait policy YAML.
    pub text: String,
}

/// The outcome of a publish.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Published {
    pub epoch: u64,
    pub digest: String,
    pub parent_digest: Option<String>,
    pub not_after: String,
    pub policies: Vec<String>,
}

/// The registry: signing key, store and wake-up hub.
pub struct Registry {
    store: Store,
    signer: Signer,
    defaults: BundleDefaults,
    hub: Hub,
    /// One lock per scope, held from reading the latest epoch to storing the next, so publishes to one scope
    /// through this replica take consecutive epochs instead of racing for the same one.
    publishing: Mutex<HashMap<Tenant, Arc<tokio::sync::Mutex<()>>>>,
    metrics: Arc<Metrics>,
    /// The approval public key every bundle carries (`manifest.approval_key`), when approvals are on.
    approval_key: Option<PublicKey>,
}

impl Registry {
    pub fn new(
        store: Store,
        key: SigningKey,
        defaults: BundleDefaults,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            signer: Signer::new(store.clone(), key),
            store,
            defaults,
            hub: Hub::default(),
            publishing: Mutex::default(),
            metrics,
            approval_key: None,
        }
    }

    /// Every bundle published from now on carries `key` as its approval key, so agents accept the approval
    /// tokens it signs.
    pub fn with_approval_key(mut self, key: PublicKey) -> Self {
        self.approval_key = Some(key);
        self
    }

    /// Keep bundle signing keys under `key_dir/registry/` (rotation needs it; see [`signing`]).
    pub fn with_key_dir(mut self, key_dir: &Path) -> Self {
        self.signer = self.signer.with_key_dir(key_dir);
        self
    }

    /// The bundle signing keys.
    pub fn signer(&self) -> &Signer {
        &self.signer
    }

    /// Start a signing-key rotation (see [`Signer::rotate`]), then re-publish every environment that has a
    /// bundle, so its agents receive the new key's endorsement at once in a bundle signed by the old key.
    pub async fn rotate_signing_key(
        &self,
        overlap: Duration,
        actor: &str,
    ) -> Result<KeyChange, RegistryError> {
        let overlap_ms = i64::try_from(overlap.as_millis()).map_err(|_| RegistryError::Field {
            field: "overlap_seconds",
            message: "is too large".into(),
        })?;
        let key = self.signer.rotate(overlap_ms, actor, unix_ms()).await?;
        Ok(self.republish_all(key, actor).await)
    }

    /// Revoke a signing key (see [`Signer::revoke`]), then re-publish every environment that has a bundle, so
    /// its agents stop trusting the key at once.
    pub async fn revoke_signing_key(
        &self,
        key_id: &str,
        actor: &str,
    ) -> Result<KeyChange, RegistryError> {
        // Agents that activated nothing since the key's successor appeared may not know the successor.
        let introduced = self
            .store
            .signing_keys()
            .await?
            .into_iter()
            .filter(|k| k.endorsed_by.as_deref() == Some(key_id))
            .map(|k| k.created_unix_ms)
            .min();
        let key = self.signer.revoke(key_id, actor, unix_ms()).await?;
        let at_risk = match introduced {
            Some(t) => Some(self.store.agents_active_before(t).await?),
            None => None,
        };
        if let Some(n) = at_risk.filter(|n| *n > 0) {
            tracing::warn!(%key_id, agents = n, "revoked a key some agents may still depend on: they have not \
                activated a bundle since its successor was introduced");
        }
        let mut change = self.republish_all(key, actor).await;
        change.agents_at_risk = at_risk;
        Ok(change)
    }

    /// Re-publish the newest bundle of every scope (same policies, candidates and settings; validity as long
    /// as the original's; a new epoch), signed under the current keys.
    async fn republish_all(&self, key: gait_store::SigningKeyRow, actor: &str) -> KeyChange {
        let mut change = KeyChange {
            key,
            republished: BTreeMap::new(),
            republish_errors: BTreeMap::new(),
            agents_at_risk: None,
        };
        let scopes = match self.store.bundle_scopes().await {
            Ok(s) => s,
            Err(e) => {
                change.republish_errors.insert("*".into(), e.to_string());
                return change;
            }
        };
        for tenant in scopes {
            match self.republish(&tenant, actor).await {
                Ok(Some(p)) => {
                    change.republished.insert(tenant.to_string(), p.epoch);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(%tenant, error = %e, "re-publish after a signing key change failed");
                    change
                        .republish_errors
                        .insert(tenant.to_string(), e.to_string());
                }
            }
        }
        change
    }

    async fn republish(
        &self,
        tenant: &Tenant,
        actor: &str,
    ) -> Result<Option<Published>, RegistryError> {
        let Some(latest) = self.store.latest_bundle(tenant).await? else {
            return Ok(None);
        };
        let latest_audience = self
            .store
            .bundles_since_last_full(tenant)
            .await?
            .into_iter()
            .find(|(b, _)| b.epoch == latest.epoch)
            .and_then(|(_, a)| a)
            .map(Audience::from_row)
            .transpose()?;
        let (manifest, mut files) = gait_bundle::open_unverified(&latest.bytes)
            .map_err(|e| RegistryError::Sign(format!("stored bundle {}: {e}", latest.epoch)))?;
        let text = |files: &mut BTreeMap<String, Vec<u8>>, name: &str| {
            String::from_utf8(files.remove(name).unwrap_or_default())
                .map_err(|_| RegistryError::Sign(format!("stored policy {name} is not UTF-8")))
        };
        let mut policies = BTreeMap::new();
        let mut candidates = BTreeMap::new();
        for p in &manifest.policies {
            policies.insert(p.name.clone(), text(&mut files, &p.name)?);
            if let Some(c) = &p.candidate {
                candidates.insert(
                    p.name.clone(),
                    StagedCandidate {
                        stage: p.stage,
                        name: c.name.clone(),
                        text: text(&mut files, &c.name)?,
                    },
                );
            }
        }
        let validity = manifest
            .not_after_unix()
            .and_then(|end| manifest.created_at_unix().map(|start| end - start))
            .map_err(|e| RegistryError::Sign(e.to_string()))?;
        let req = PublishRequest {
            policies,
            max_offline_seconds: Some(manifest.staleness.max_offline_seconds),
            on_stale: Some(manifest.staleness.on_stale),
            validity: Some(Duration::from_secs(
                u64::try_from(validity.max(1)).unwrap_or(1),
            )),
            settings: manifest.settings,
            created_by: actor.to_owned(),
            candidates,
            delegation_key: manifest.delegation_public_key(),
            // The same policies under a new key: not a rollback, whatever the bundle it copies was.
            rollback: None,
            // A cohort's bundle stays the cohort's: everyone else gets the new trust with the next bundle
            // offered to them all.
            audience: latest_audience,
        };
        // Signed with the rotation's key only if nothing newer was published meanwhile: a newer bundle already
        // carries the new trust (every bundle does), and re-signing the copied content over it would revert
        // the environment to the older policies.
        match self
            .publish_inner(tenant, req, false, Some(latest.epoch), &|_, _, _| {
                Box::pin(async { Ok(()) })
            })
            .await
        {
            Ok((published, ())) => Ok(Some(published)),
            Err(RegistryError::Superseded { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Load the registry key from `dir`, or create one (0600) with its public key beside it.
    pub fn load_or_create_key(dir: &Path) -> Result<SigningKey, RegistryError> {
        let private = dir.join(REGISTRY_KEY_FILE);
        let public = dir.join(REGISTRY_PUB_FILE);
        let key_err = |path: &Path, message: String| RegistryError::Key {
            path: path.to_path_buf(),
            message,
        };
        if private.exists() {
            let key = sign::load_private_key_file(&private)
                .map_err(|e| key_err(&private, e.to_string()))?;
            if !public.exists() {
                crate::secrets::write_atomic(
                    &public,
                    format!("{}\n", key.public_key().to_gait_public_key()).as_bytes(),
                    crate::secrets::Access::Public,
                )
                .map_err(|e| key_err(&public, e.to_string()))?;
            }
            return Ok(key);
        }
        std::fs::create_dir_all(dir).map_err(|e| key_err(dir, e.to_string()))?;
        let key = SigningKey::generate();
        sign::write_key_pair(&private, &public, &key)
            .map_err(|e| key_err(&private, e.to_string()))?;
        tracing::info!(key_id = %key.public_key().key_id(), path = %private.display(), "registry signing key created");
        Ok(key)
    }

    /// Validate, sign, store and announce a new bundle for `tenant`.
    pub async fn publish(
        &self,
        tenant: &Tenant,
        req: PublishRequest,
    ) -> Result<Published, RegistryError> {
        self.publish_inner(tenant, req, true, None, &|_, _, _| {
            Box::pin(async { Ok(()) })
        })
        .await
        .map(|(published, ())| published)
    }

    /// [`Registry::publish`], running `also(tx, epoch, digest)` in the bundle's store transaction (after the
    /// bundle and its audit entry), so a registry pin commits with the bundle that carries it or not at all.
    /// `also` may run more than once: when another replica took the epoch, the publish is retried.
    pub(crate) async fn publish_with<T>(
        &self,
        tenant: &Tenant,
        req: PublishRequest,
        also: &AlsoInTx<'_, T>,
    ) -> Result<(Published, T), RegistryError> {
        self.publish_inner(tenant, req, true, None, also).await
    }

    /// The one publish path: validate, sign (promoting a due `next` key first when `promote`; false for the
    /// introduction bundles of a rotation, which the old key signs), store with the audit entry and `also`,
    /// announce. With `after_epoch`, the bundle is published only as the successor of that epoch
    /// ([`RegistryError::Superseded`] otherwise).
    async fn publish_inner<T>(
        &self,
        tenant: &Tenant,
        req: PublishRequest,
        promote: bool,
        after_epoch: Option<u64>,
        also: &AlsoInTx<'_, T>,
    ) -> Result<(Published, T), RegistryError> {
        validate_policies(&req.policies)?;
        validate_candidates(&req.policies, &req.candidates)?;
        let audience = req.audience.as_ref().map(Audience::to_row).transpose()?;
        let validity = req.validity.unwrap_or(self.defaults.validity);
        if validity.is_zero() || validity.as_secs() > MAX_VALIDITY_SECONDS {
            return Err(RegistryError::Field {
                field: "validity_seconds",
                message: format!(
                    "{} is out of range 1..={MAX_VALIDITY_SECONDS} (ten years)",
                    validity.as_secs()
                ),
            });
        }
        let max_offline_seconds = req
            .max_offline_seconds
            .unwrap_or(self.defaults.max_offline_seconds);
        if max_offline_seconds > MAX_OFFLINE_SECONDS {
            return Err(RegistryError::Field {
                field: "max_offline_seconds",
                message: format!(
                    "{max_offline_seconds} is out of range 0..={MAX_OFFLINE_SECONDS} (2^53 - 1)"
                ),
            });
        }
        // Publishes to one scope through this replica are serialised, so each reads the epoch the previous
        // one stored. Another replica sharing the database can still take an epoch first: the store refuses
        // the loser with `EpochConflict` and it computes the next one again.
        let scope_lock = self.scope_lock(tenant);
        let _serialised = scope_lock.lock().await;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let latest = self.store.latest_bundle(tenant).await?;
            if let Some(expected) = after_epoch
                && latest.as_ref().map(|b| b.epoch) != Some(expected)
            {
                return Err(RegistryError::Superseded { expected });
            }
            let (epoch, parent) = match &latest {
                Some(b) => (b.epoch + 1, Some(b.digest.clone())),
                None => (1, None),
            };
            let now = crate::clock::now_utc();
            let not_after = time::Duration::try_from(validity)
                .ok()
                .and_then(|v| now.checked_add(v))
                .ok_or_else(|| RegistryError::Field {
                    field: "validity_seconds",
                    message: format!(
                        "{} seconds from now is past the year 9999",
                        validity.as_secs()
                    ),
                })?;
            let mut builder =
                BundleBuilder::new(scope_of(tenant)?, epoch, not_after.unix_timestamp());
            builder
                .created_at(now.unix_timestamp())
                .staleness(Staleness {
                    max_offline_seconds,
                    on_stale: req.on_stale.unwrap_or(self.defaults.on_stale),
                })
                .settings(req.settings);
            if let Some(key) = &self.approval_key {
                builder.approval_key(key);
            }
            if let Some(key) = &req.delegation_key {
                builder.delegation_key(key);
            }
            for (policy, c) in &req.candidates {
                builder.candidate(policy.clone(), c.stage, c.name.clone(), c.text.as_bytes());
            }
            if let Some(p) = &parent {
                let mut raw = [0u8; 32];
                hex::decode_to_slice(p, &mut raw).map_err(|_| {
                    RegistryError::Sign(format!("stored parent digest `{p}` is not hex"))
                })?;
                builder.parent(raw);
            }
            for (name, text) in &req.policies {
                builder.add_policy(name.clone(), text.as_bytes().to_vec());
            }
            if let Some(r) = &req.rollback {
                builder.rollback(r.clone());
            }
            let bytes = self.signer.sign(&mut builder, unix_ms(), promote).await?;
            let manifest =
                gait_bundle::inspect(&bytes).map_err(|e| RegistryError::Sign(e.to_string()))?;
            let (_, digest) = manifest
                .digest()
                .map_err(|e| RegistryError::Sign(e.to_string()))?;
            let now_ms = unix_ms();
            // The bundle and its audit entry commit together: a publish is never stored unaudited.
            let stored = self
                .store
                .transaction(async |tx| {
                    tx.publish_bundle(tenant, epoch, &digest, &bytes, &req.created_by, now_ms)
                        .await?;
                    if let Some(a) = &audience {
                        tx.set_bundle_audience(tenant, epoch, a).await?;
                    }
                    audit_publish(tx, tenant, epoch, parent.as_deref(), &digest, &req).await?;
                    also(tx, epoch, &digest).await
                })
                .await;
            let extra = match stored {
                Ok(extra) => extra,
                Err(RegistryError::Store(StoreError::EpochConflict { .. }))
                    if attempt < EPOCH_ATTEMPTS =>
                {
                    continue;
                }
                Err(e) => return Err(e),
            };
            self.metrics.bundles_published.inc();
            tracing::info!(org = %tenant.org, project = %tenant.project, env = %tenant.env, epoch, %digest,
                created_by = %req.created_by, "bundle published");
            self.hub.announce(
                tenant,
                Arc::new(StoredBundle {
                    epoch,
                    digest: digest.clone(),
                    bytes,
                    created_unix_ms: now_ms,
                    created_by: req.created_by.clone(),
                }),
                req.audience.clone(),
            );
            let published = Published {
                epoch,
                digest,
                parent_digest: parent,
                not_after: not_after
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default(),
                policies: req.policies.keys().cloned().collect(),
            };
            return Ok((published, extra));
        }
    }

    /// The publish lock of `tenant`'s scope.
    fn scope_lock(&self, tenant: &Tenant) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.publishing.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(tenant.clone()).or_default().clone()
    }

    /// The newest bundle of a scope (whatever its audience), from the hub when known, else from the store.
    pub async fn latest(
        &self,
        tenant: &Tenant,
    ) -> Result<Option<Arc<StoredBundle>>, RegistryError> {
        Ok(self.offers(tenant).await?.newest().cloned())
    }

    /// What the scope offers, from the hub when known, else loaded from the store.
    async fn offers(&self, tenant: &Tenant) -> Result<Arc<ScopeOffers>, RegistryError> {
        if let Some(o) = self.hub.offers(tenant) {
            return Ok(o);
        }
        self.load_offers(tenant).await?;
        Ok(self.hub.offers(tenant).unwrap_or_default())
    }

    /// Reads the scope's bundles since the newest one offered to everyone (with their audiences) into the hub.
    async fn load_offers(&self, tenant: &Tenant) -> Result<(), RegistryError> {
        let rows = self.store.bundles_since_last_full(tenant).await?;
        let mut offers = Vec::with_capacity(rows.len());
        for (bundle, audience) in rows {
            offers.push(Offer {
                bundle: Arc::new(bundle),
                audience: audience.map(Audience::from_row).transpose()?.map(Arc::new),
            });
        }
        self.hub.load(tenant, offers);
        Ok(())
    }

    /// The bundle `tenant` published with `epoch` (the newest or an older one), if any.
    pub async fn at_epoch(
        &self,
        tenant: &Tenant,
        epoch: u64,
    ) -> Result<Option<StoredBundle>, RegistryError> {
        Ok(self.store.bundle_at_epoch(tenant, epoch).await?)
    }

    /// The newest bundle offered to `agent` (the newest of its scope whose audience admits it), if any.
    pub async fn offered_to(
        &self,
        agent: &gait_store::AgentKey,
    ) -> Result<Option<Arc<StoredBundle>>, RegistryError> {
        let offers = self.offers(&agent.tenant).await?;
        let labels = self.labels_for(agent, &offers).await?;
        Ok(offers.for_agent(agent.agent_id.as_str(), &labels).cloned())
    }

    /// The agent's labels, read only when some offer selects by label.
    async fn labels_for(
        &self,
        agent: &gait_store::AgentKey,
        offers: &ScopeOffers,
    ) -> Result<BTreeMap<String, String>, RegistryError> {
        if !offers.has_label_selectors() {
            return Ok(BTreeMap::new());
        }
        match self
            .store
            .agent_labels(&agent.tenant, &agent.agent_id)
            .await?
        {
            None => Ok(BTreeMap::new()),
            Some(json) => Ok(parse_labels(agent.agent_id.as_str(), &json)?),
        }
    }

    /// Wait up to `wait` for a bundle offered to `agent` newer than `have_epoch`; `None` at the timeout. An agent
    /// outside a rollout's cohort is not woken by the cohort's bundles.
    pub async fn wait_newer(
        &self,
        agent: &gait_store::AgentKey,
        have_epoch: u64,
        wait: Duration,
    ) -> Result<Option<Arc<StoredBundle>>, RegistryError> {
        // Subscribe before reading so a publish between the read and the wait is not missed.
        let mut rx = self.hub.subscribe(&agent.tenant);
        // The store reads are boxed: their futures (a database query's state, ~14 KiB) would otherwise be part
        // of this one, which every idle agent keeps parked for its whole long-poll (docs/benchmarks.md, memory
        // per idle agent).
        if let Some(b) = Box::pin(self.offered_to(agent)).await?
            && b.epoch > have_epoch
        {
            return Ok(Some(b));
        }
        self.metrics.long_polls_waiting.inc();
        let result = tokio::time::timeout(wait, async {
            loop {
                if rx.changed().await.is_err() {
                    return Ok(None);
                }
                let offers = rx.borrow_and_update().clone();
                let labels = Box::pin(self.labels_for(agent, &offers)).await?;
                let newer = offers
                    .for_agent(agent.agent_id.as_str(), &labels)
                    .filter(|b| b.epoch > have_epoch)
                    .cloned();
                if newer.is_some() {
                    return Ok(newer);
                }
            }
        })
        .await;
        self.metrics.long_polls_waiting.dec();
        result.unwrap_or(Ok(None))
    }

    /// Agent labels of `tenant` changed: wake its waiters so they re-check the audiences.
    pub fn labels_changed(&self, tenant: &Tenant) {
        self.hub.labels_changed(tenant);
    }

    /// A bundle of `tenant` was published through another replica (a database notification): re-read the
    /// scope when this replica serves it, which wakes its long-polls.
    pub async fn scope_changed(&self, tenant: &Tenant) -> Result<(), RegistryError> {
        if self.hub.knows(tenant) {
            self.load_offers(tenant).await?;
        }
        Ok(())
    }

    /// Re-read the bundles of every scope that has waiters, so publishes made through another replica
    /// (sharing the database) wake this replica's long-polls too.
    pub async fn refresh_waited_scopes(&self) -> Result<(), RegistryError> {
        for tenant in self.hub.scopes_with_waiters() {
            let known = self.hub.current(&tenant).map(|c| c.epoch).unwrap_or(0);
            if self.store.latest_epoch(&tenant).await?.unwrap_or(0) > known {
                self.load_offers(&tenant).await?;
            }
        }
        Ok(())
    }
}

/// Check names, sizes and that every policy is a valid Gait policy before anything is signed.
fn validate_policies(policies: &BTreeMap<String, String>) -> Result<(), RegistryError> {
    if policies.is_empty() {
        return Err(RegistryError::Invalid(
            "at least one policy file is required in `policies`".into(),
        ));
    }
    if policies.len() > MAX_POLICIES {
        return Err(RegistryError::Invalid(format!(
            "{} policy files given; at most {MAX_POLICIES} fit in one bundle",
            policies.len()
        )));
    }
    for (name, text) in policies {
        let name_ok = !name.is_empty()
            && name.len() <= 128
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            && !name.starts_with('.')
            && (name.ends_with(".yaml") || name.ends_with(".yml"));
        if !name_ok {
            return Err(RegistryError::Invalid(format!(
                "policy name `{name}`: use 1-128 characters [A-Za-z0-9._-], not starting with '.', ending in .yaml or .yml"
            )));
        }
        if text.len() > MAX_POLICY_BYTES {
            return Err(RegistryError::Invalid(format!(
                "policy `{name}` is {} bytes; the limit is {MAX_POLICY_BYTES}",
                text.len()
            )));
        }
        crate::registry::validate::check(text.as_bytes()).map_err(|message| {
            RegistryError::Policy {
                name: name.clone(),
                message,
            }
        })?;
    }
    Ok(())
}

/// The audit entry of a publish: `bundle.publish` on the bundle `<epoch>` of the tenant, from the parent
/// bundle's digest to the new one.
/// Each candidate is staged beside a policy of the bundle, at `observe` or `dry_run`, as a valid Gait policy
/// under a name of its own.
fn validate_candidates(
    policies: &BTreeMap<String, String>,
    candidates: &BTreeMap<String, StagedCandidate>,
) -> Result<(), RegistryError> {
    let mut names = std::collections::BTreeSet::new();
    for (policy, c) in candidates {
        if !policies.contains_key(policy) {
            return Err(RegistryError::Invalid(format!(
                "candidates: `{policy}` is not a policy of this bundle; stage a candidate beside one of: {}",
                policies.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        if c.stage == gait_bundle::Stage::Enforce {
            return Err(RegistryError::Invalid(format!(
                "candidates.{policy}.stage: enforce takes no candidate; to enforce it, publish the candidate as the policy"
            )));
        }
        if policies.contains_key(&c.name) || !names.insert(c.name.clone()) {
            return Err(RegistryError::Invalid(format!(
                "candidates.{policy}.name: `{}` is already a policy or candidate name in this bundle; rename the file",
                c.name
            )));
        }
    }
    let texts: BTreeMap<String, String> = candidates
        .values()
        .map(|c| (c.name.clone(), c.text.clone()))
        .collect();
    if texts.is_empty() {
        return Ok(());
    }
    validate_policies(&texts)
}

async fn audit_publish(
    tx: &mut gait_store::StoreTx,
    tenant: &Tenant,
    epoch: u64,
    parent: Option<&str>,
    digest: &str,
    req: &PublishRequest,
) -> Result<gait_store::AppendedEntry, RegistryError> {
    let mut details = serde_json::Map::new();
    details.insert("epoch".into(), epoch.into());
    details.insert(
        "policies".into(),
        req.policies.keys().cloned().collect::<Vec<_>>().into(),
    );
    if !req.candidates.is_empty() {
        details.insert(
            "stages".into(),
            req.candidates
                .iter()
                .map(|(policy, c)| {
                    (
                        policy.clone(),
                        serde_json::json!({ "stage": c.stage.as_str(), "candidate": c.name }),
                    )
                })
                .collect::<serde_json::Map<_, _>>()
                .into(),
        );
    }
    crate::audit::append_draft(
        tx,
        gait_audit::EntryDraft {
            actor: req.created_by.clone(),
            action: "bundle.publish".into(),
            target: crate::audit::tenant_target(tenant, "bundle", epoch.to_string()),
            before: parent.map(|d| format!("sha256:{d}")),
            after: Some(format!("sha256:{digest}")),
            details: Some(details),
        },
    )
    .await
    .map_err(|e| match e {
        crate::audit::AuditError::Store(e) => RegistryError::Store(e),
        other => RegistryError::Audit(other.to_string()),
    })
}

pub fn scope_of(t: &Tenant) -> Result<Scope, RegistryError> {
    Scope::from_parts(&t.org, &t.project, &t.env).map_err(|e| RegistryError::Invalid(e.to_string()))
}

/// An agent's stored labels (`agent_labels.labels_json`); a row that does not parse is reported corrupt.
pub(crate) fn parse_labels(
    agent: &str,
    json: &str,
) -> Result<BTreeMap<String, String>, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt {
        table: "agent_labels",
        reason: format!("labels_json of {agent}: {e}"),
    })
}

/// Every labelled agent of `tenant` with its labels (what an audience with a label selector is matched on).
pub(crate) async fn env_labels(
    store: &Store,
    tenant: &Tenant,
) -> Result<BTreeMap<gait_store::AgentId, BTreeMap<String, String>>, StoreError> {
    store
        .env_agent_labels(tenant)
        .await?
        .into_iter()
        .map(|(id, json)| {
            let labels = parse_labels(id.as_str(), &json)?;
            Ok((id, labels))
        })
        .collect()
}

/// Who a bundle is offered to when it is not offered to every agent of its scope: a rollout's cohort.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Audience {
    /// The rollout (the cohort hash's salt).
    pub rollout_id: String,
    /// Only agents carrying every one of these labels.
    pub labels: BTreeMap<String, String>,
    /// Of those, the cohort of this many basis points (see [`gait_bundle::cohort`]).
    pub percent_bp: u16,
}

impl Audience {
    /// Whether the agent `agent_id` with `labels` is in the audience.
    pub fn admits(&self, agent_id: &str, labels: &BTreeMap<String, String>) -> bool {
        self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && gait_bundle::cohort::in_cohort(&self.rollout_id, agent_id, self.percent_bp)
    }

    fn to_row(&self) -> Result<gait_store::AudienceRow, RegistryError> {
        Ok(gait_store::AudienceRow {
            rollout_id: self.rollout_id.clone(),
            labels_json: serde_json::to_string(&self.labels)
                .map_err(|e| RegistryError::Invalid(format!("labels: {e}")))?,
            percent_bp: self.percent_bp,
        })
    }

    /// The audience a stored row names; a row whose labels do not parse is reported corrupt.
    pub(crate) fn from_row(row: gait_store::AudienceRow) -> Result<Self, StoreError> {
        Ok(Self {
            labels: serde_json::from_str(&row.labels_json).map_err(|e| StoreError::Corrupt {
                table: "bundle_audiences",
                reason: format!("labels_json: {e}"),
            })?,
            rollout_id: row.rollout_id,
            percent_bp: row.percent_bp,
        })
    }
}

/// One bundle the hub can offer, with its audience (`None`: every agent of the scope).
#[derive(Clone, Debug)]
struct Offer {
    bundle: Arc<StoredBundle>,
    audience: Option<Arc<Audience>>,
}

/// What a scope offers: its bundles from the newest one offered to everyone up, oldest first. An agent is
/// offered the newest one whose audience admits it, so agents outside a cohort stay on the bundle everyone has.
#[derive(Clone, Debug, Default)]
struct ScopeOffers {
    offers: Vec<Offer>,
    /// Bumped when agent labels change, so waiters re-check their audience.
    labels_generation: u64,
    /// Whether the store was read for this scope (or a bundle announced): until then an empty list means
    /// "not known yet", after it "nothing published". Without the distinction every long-poll renewal of a scope
    /// with nothing published read the store again (2,000 queries a second for 50,000 idle agents).
    known: bool,
}

impl ScopeOffers {
    fn newest(&self) -> Option<&Arc<StoredBundle>> {
        self.offers.last().map(|o| &o.bundle)
    }

    fn has_label_selectors(&self) -> bool {
        self.offers
            .iter()
            .any(|o| o.audience.as_ref().is_some_and(|a| !a.labels.is_empty()))
    }

    /// The newest bundle offered to the agent.
    fn for_agent(
        &self,
        agent_id: &str,
        labels: &BTreeMap<String, String>,
    ) -> Option<&Arc<StoredBundle>> {
        self.offers
            .iter()
            .rev()
            .find(|o| {
                o.audience
                    .as_ref()
                    .is_none_or(|a| a.admits(agent_id, labels))
            })
            .map(|o| &o.bundle)
    }

    fn push(&mut self, bundle: Arc<StoredBundle>, audience: Option<Arc<Audience>>) -> bool {
        if self.newest().is_some_and(|n| n.epoch >= bundle.epoch) {
            return false;
        }
        if audience.is_none() {
            self.offers.clear();
        }
        self.offers.push(Offer { bundle, audience });
        // Bounded like the store's answer: the bundle everyone has stays, the oldest cohort bundle goes (its
        // agents keep what they run; newer ones are offered as their audiences admit).
        if self.offers.len() > MAX_OFFERS {
            self.offers.remove(1);
        }
        true
    }
}

/// Per-scope watch channels carrying what each scope offers.
#[derive(Default)]
struct Hub {
    scopes: Mutex<HashMap<Tenant, watch::Sender<Arc<ScopeOffers>>>>,
}

impl Hub {
    fn sender(&self, tenant: &Tenant) -> watch::Sender<Arc<ScopeOffers>> {
        let mut map = self.scopes.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(tenant.clone())
            .or_insert_with(|| watch::channel(Arc::default()).0)
            .clone()
    }

    fn subscribe(&self, tenant: &Tenant) -> watch::Receiver<Arc<ScopeOffers>> {
        self.sender(tenant).subscribe()
    }

    fn offers(&self, tenant: &Tenant) -> Option<Arc<ScopeOffers>> {
        let map = self.scopes.lock().unwrap_or_else(|e| e.into_inner());
        map.get(tenant)
            .map(|s| s.borrow().clone())
            .filter(|o| o.known || !o.offers.is_empty())
    }

    /// Whether this replica serves `tenant` at all (some agent waited on it or its offers were read), empty or
    /// not.
    fn knows(&self, tenant: &Tenant) -> bool {
        let map = self.scopes.lock().unwrap_or_else(|e| e.into_inner());
        map.contains_key(tenant)
    }

    fn current(&self, tenant: &Tenant) -> Option<Arc<StoredBundle>> {
        self.offers(tenant).and_then(|o| o.newest().cloned())
    }

    fn announce(&self, tenant: &Tenant, bundle: Arc<StoredBundle>, audience: Option<Audience>) {
        let audience = audience.map(Arc::new);
        self.sender(tenant).send_if_modified(|cur| {
            let mut next = (**cur).clone();
            if !next.push(bundle, audience) {
                return false;
            }
            *cur = Arc::new(next);
            true
        });
    }

    /// Replace what a scope offers with `loaded` (from the store), unless the hub already knows as new a bundle.
    fn load(&self, tenant: &Tenant, loaded: Vec<Offer>) {
        self.sender(tenant).send_if_modified(|cur| {
            let known = cur.newest().map(|b| b.epoch).unwrap_or(0);
            let newest = loaded.last().map(|o| o.bundle.epoch).unwrap_or(0);
            if newest <= known {
                // Nothing newer: only remember that the store was read, without waking anyone.
                if !cur.known {
                    let mut next = (**cur).clone();
                    next.known = true;
                    *cur = Arc::new(next);
                }
                return false;
            }
            *cur = Arc::new(ScopeOffers {
                offers: loaded,
                labels_generation: cur.labels_generation,
                known: true,
            });
            true
        });
    }

    fn labels_changed(&self, tenant: &Tenant) {
        self.sender(tenant).send_modify(|cur| {
            let mut next = (**cur).clone();
            next.labels_generation += 1;
            *cur = Arc::new(next);
        });
    }

    fn scopes_with_waiters(&self) -> Vec<Tenant> {
        let map = self.scopes.lock().unwrap_or_else(|e| e.into_inner());
        map.iter()
            .filter(|(_, s)| s.receiver_count() > 0)
            .map(|(t, _)| t.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(policy: &str) -> PublishRequest {
        PublishRequest {
            policies: BTreeMap::from([("p.yaml".to_owned(), policy.to_owned())]),
            max_offline_seconds: None,
            on_stale: None,
            validity: None,
            settings: gait_bundle::Settings::default(),
            created_by: "test".into(),
            candidates: BTreeMap::new(),
            delegation_key: None,
            rollback: None,
            audience: None,
        }
    }

    #[tokio::test]
    async fn a_bundle_built_on_an_epoch_is_not_published_over_a_newer_one() {
        // The key-rotation re-publish copies the newest bundle and must not re-sign that copy over a bundle
        // published meanwhile (it would revert the environment to the older policies).
        let db = gait_store::testing::sqlite_temp().await.expect("store");
        let registry = Registry::new(
            db.store().clone(),
            SigningKey::from_seed(&[7; 32]),
            BundleDefaults::default(),
            Arc::new(crate::metrics::Metrics::new()),
        );
        let tenant = Tenant::from_parts("acme", "web", "prod").expect("tenant");
        let v1 = "default_verdict: block\n";
        let v2 = "default_verdict: require_approval\n";
        registry
            .publish(&tenant, request(v1))
            .await
            .expect("epoch 1");
        registry
            .publish(&tenant, request(v2))
            .await
            .expect("epoch 2");
        let noop: &AlsoInTx<'_, ()> = &|_, _, _| Box::pin(async { Ok(()) });
        let stale = registry
            .publish_inner(&tenant, request(v1), false, Some(1), noop)
            .await
            .unwrap_err();
        assert!(
            matches!(stale, RegistryError::Superseded { expected: 1 }),
            "{stale}"
        );
        assert_eq!(registry.latest(&tenant).await.unwrap().unwrap().epoch, 2);
        let (next, ()) = registry
            .publish_inner(&tenant, request(v2), false, Some(2), noop)
            .await
            .expect("on the newest epoch");
        assert_eq!(next.epoch, 3);
    }

    /// A scope with nothing published is read from the store once, not at every long-poll renewal, and a bundle
    /// published afterwards (here, and through another replica on the same store) still reaches its agents.
    #[tokio::test]
    async fn a_scope_with_nothing_published_is_read_once_and_still_sees_a_later_publish() {
        let db = gait_store::testing::sqlite_temp().await.expect("store");
        let replica = |seed| {
            Registry::new(
                db.store().clone(),
                SigningKey::from_seed(&[seed; 32]),
                BundleDefaults::default(),
                Arc::new(crate::metrics::Metrics::new()),
            )
        };
        let (here, other) = (replica(7), replica(7));
        let tenant = Tenant::from_parts("acme", "web", "prod").expect("tenant");
        let agent = gait_store::AgentKey::new(tenant.clone(), "a1".parse().expect("agent id"));

        assert!(here.hub.offers(&tenant).is_none(), "not read yet");
        let short = Duration::from_millis(10);
        assert!(here.wait_newer(&agent, 0, short).await.unwrap().is_none());
        let read = here
            .hub
            .offers(&tenant)
            .expect("read once: remembered as empty");
        assert!(read.offers.is_empty());

        // Published through another replica: this one learns it from the change notification (or its periodic
        // refresh of long-polled scopes) and offers it.
        other
            .publish(&tenant, request("default_verdict: block\n"))
            .await
            .expect("publish");
        assert!(
            here.offered_to(&agent).await.unwrap().is_none(),
            "not announced here yet: the remembered empty list answers, without a store read"
        );
        here.scope_changed(&tenant).await.expect("reload");
        assert_eq!(
            here.offered_to(&agent)
                .await
                .unwrap()
                .expect("offered")
                .epoch,
            1
        );

        // Published here while an agent waits: it is woken with the bundle.
        let waiting = {
            let here = &here;
            let agent = agent.clone();
            async move { here.wait_newer(&agent, 1, Duration::from_secs(60)).await }
        };
        let publish = async {
            // The waiter subscribes before it reads; yielding once lets it park first.
            tokio::task::yield_now().await;
            here.publish(&tenant, request("default_verdict: allow\n"))
                .await
        };
        let (woken, published) = tokio::join!(waiting, publish);
        published.expect("publish");
        assert_eq!(woken.unwrap().expect("woken with the bundle").epoch, 2);
    }
}
