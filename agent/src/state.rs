//! The agent state shared by the connection tasks, the local API and (later) local enforcement: identity,
//! outbox, bundle cache, the bundle in force, connection counters and the persisted last-contact time.
//!
//! `last_contact_unix_ms` (the end of the last successful exchange with the aggregator) lives in its own
//! one-row redb table, `agent_contact`, in the agent's file. It is updated in memory on every exchange and
//! written at most every [`CONTACT_PERSIST_EVERY`] and at shutdown, so a busy shipper does not fsync per
//! batch; after a crash the staleness clock is at most that much too old, i.e. errs toward "stale".

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use gait_wire::{BundleRef, RecordClass};
use redb::TableDefinition;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::bundle_cache::BundleCache;
use crate::db::{AgentDb, DbError};
use crate::identity::AgentIdentity;
use crate::outbox::{AppendOutcome, NewRecord, Outbox, OutboxError};

mod committer;
pub(crate) mod healer;

/// Why the agent state could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The agent database could not be read.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The outbox committer could not be started (its log opened, its applier thread spawned).
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    /// The bundle cache could not be opened or read.
    #[error("bundle cache: {0}")]
    BundleCache(#[from] crate::bundle_cache::BundleCacheError),
    /// A blocking task panicked or was cancelled.
    #[error("internal task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// One-row table holding the last successful contact with the aggregator.
const CONTACT: TableDefinition<'static, &str, i64> = TableDefinition::new("agent_contact");
const CONTACT_KEY: &str = "last_contact_unix_ms";

/// Longest time the persisted last-contact may lag the in-memory one.
pub const CONTACT_PERSIST_EVERY: Duration = Duration::from_secs(10);

/// The verified bundle in force, and since when.
#[derive(Debug)]
pub struct ActiveBundle {
    /// The verified bundle (manifest, policies, files).
    pub bundle: gait_bundle::VerifiedBundle,
    /// When this agent activated it, milliseconds since the Unix epoch.
    pub since_unix_ms: i64,
    /// Its policy files, parsed once for local decisions.
    pub policies: crate::gate::policy_set::PreparedPolicies,
    /// The approval token key the manifest carries, decoded once (not per decision).
    pub approval_key: Option<gait_canon::sign::PublicKey>,
    /// The delegation token key the manifest carries, decoded once.
    pub delegation_key: Option<gait_canon::sign::PublicKey>,
}

impl ActiveBundle {
    /// The bundle in force from `since_unix_ms`, its policies parsed.
    pub fn new(bundle: gait_bundle::VerifiedBundle, since_unix_ms: i64) -> ActiveBundle {
        let policies = crate::gate::policy_set::prepare_policies(&bundle);
        for (name, p) in &policies {
            if let Err(e) = p {
                tracing::error!(
                    epoch = bundle.manifest.epoch,
                    policy = %name,
                    error = %e,
                    "a policy file of the active bundle does not parse; decisions naming it fail"
                );
            }
        }
        ActiveBundle {
            approval_key: bundle.manifest.approval_public_key(),
            delegation_key: bundle.manifest.delegation_public_key(),
            bundle,
            since_unix_ms,
            policies,
        }
    }

    /// Epoch of the bundle.
    pub fn epoch(&self) -> u64 {
        self.bundle.manifest.epoch
    }

    /// The reference stamped on every record made while this bundle is in force.
    pub fn bundle_ref(&self) -> BundleRef {
        BundleRef {
            epoch: self.epoch(),
            digest: self.bundle.digest,
            since_unix_ms: self.since_unix_ms,
        }
    }
}

/// Staleness of the bundle in force.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Staleness {
    /// Older than `max_offline_seconds` since the last contact (false without a bundle).
    pub stale: bool,
    /// The bundle's rule, if a bundle is in force.
    pub on_stale: Option<gait_bundle::OnStale>,
    /// The bundle's tolerance, if a bundle is in force.
    pub max_offline_seconds: Option<u64>,
}

/// A bundle as reported by `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleInfo {
    /// Bundle epoch.
    pub epoch: u64,
    /// Bundle digest, lowercase hex.
    pub digest: String,
    /// When it was received or activated, milliseconds since the Unix epoch.
    pub since_unix_ms: i64,
}

impl From<&BundleRef> for BundleInfo {
    fn from(r: &BundleRef) -> Self {
        BundleInfo {
            epoch: r.epoch,
            digest: hex::encode(r.digest),
            since_unix_ms: r.since_unix_ms,
        }
    }
}

/// The last refused bundle as reported by `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusalInfo {
    /// Epoch as offered.
    pub epoch: u64,
    /// Digest as offered, lowercase hex.
    pub digest: String,
    /// Stable refusal code (`gait_bundle::BundleError::code`).
    pub code: String,
    /// Detail.
    pub message: String,
    /// When it was refused, milliseconds since the Unix epoch.
    pub at_unix_ms: i64,
}

/// Outbox counters as reported by `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxStatus {
    /// Records waiting for acknowledgement.
    pub depth: u64,
    /// Bytes of those records.
    pub bytes: u64,
    /// Newest seq assigned.
    pub last_seq: u64,
    /// Highest seq the aggregator acknowledged.
    pub acked_through: u64,
    /// `allow` records shed since the outbox was created.
    pub shed_total: u64,
    /// Soft quota, records.
    pub max_records: u64,
    /// Soft quota, bytes.
    pub max_bytes: u64,
    /// Records the aggregator refused for good, held in the outbox quarantine (`gait-agent quarantine`).
    pub quarantined: u64,
    /// Records the aggregator did not commit because it already held a different record at their seq
    /// (another instance of this agent identity wrote them), moved into the quarantine since this process
    /// started (each also logged at ERROR; the quarantine keeps them across restarts).
    #[serde(default)]
    pub conflicts: u64,
}

/// Everything `GET /v1/status` and `gait-agent status` show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// This build's version.
    pub agent_version: String,
    /// Identity and tenancy from the agent's certificate.
    pub identity: AgentIdentity,
    /// The aggregator address in use (the last one dialled, of `aggregator.address` and `aggregator.replicas`).
    pub aggregator: String,
    /// Whether a connection to the aggregator is up (Hello/Welcome done).
    pub connected: bool,
    /// End of the last successful exchange, milliseconds since the Unix epoch.
    pub last_contact_unix_ms: Option<i64>,
    /// The bundle in force.
    pub active_bundle: Option<BundleInfo>,
    /// The newest verified bundle stored (equals the active one except mid-activation).
    pub received_bundle: Option<BundleInfo>,
    /// The last refused bundle.
    pub last_refusal: Option<RefusalInfo>,
    /// True when the aggregator has not been reached for longer than the active bundle's
    /// `max_offline_seconds`.
    pub stale: bool,
    /// What the active bundle says to do when stale (`keep` or `fail_closed`).
    pub on_stale: Option<String>,
    /// The active bundle's offline allowance, seconds.
    pub max_offline_seconds: Option<u64>,
    /// Outbox counters.
    pub outbox: OutboxStatus,
    /// Reconnect attempts since start.
    pub reconnects: u64,
    /// Whether the agent can answer decisions from a policy now (see [`StatusReport::not_ready`]).
    #[serde(default)]
    pub ready: bool,
    /// Why it cannot (empty when ready): no verified bundle in force, stale under `fail_closed`, or storage
    /// failing (decisions cannot be recorded, so they are not answered).
    #[serde(default)]
    pub not_ready: Vec<String>,
    /// The last storage failure, while appends fail.
    #[serde(default)]
    pub storage_error: Option<String>,
    /// Set while the aggregator refuses this agent because another instance of its identity (another
    /// process with the same certificate and another data directory) is connected; the agent keeps
    /// deciding locally and its outbox keeps its records.
    #[serde(default)]
    pub identity_in_use: bool,
    /// The certificate the agent presents: expiry, time left, whether renewal is due.
    #[serde(default)]
    pub certificate: Option<CertificateStatus>,
    /// Conditions an operator should act on that do not stop decisions (a certificate close to expiry).
    #[serde(default)]
    pub warnings: Vec<String>,
    /// What decision records carry of each intent, as the active bundle says (`reference` without a bundle):
    /// `raw` means they carry the normalized intent, i.e. the content of every call leaves this host.
    #[serde(default)]
    pub capture_mode: gait_bundle::CaptureMode,
    /// The active bundle's policies with their stage and staged candidate.
    #[serde(default)]
    pub policies: Vec<PolicyStatus>,
    /// Key id of the key traces are signed with (announced to the aggregator as an `agent.trace_key` record).
    #[serde(default)]
    pub trace_key_id: String,
}

/// One policy of the active bundle as `gait-agent status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyStatus {
    /// Policy file name (`?policy=` of a decision).
    pub name: String,
    /// Its Gait policy digest (empty when the file does not parse; see `error`).
    pub digest: String,
    /// `enforce`, `observe` or `dry_run`.
    pub stage: gait_bundle::Stage,
    /// File name of the staged candidate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<String>,
    /// Gait policy digest of the candidate (as on decision records' `stage.candidate_digest`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate_digest: Option<String>,
    /// Why the policy or its candidate cannot be used (decisions naming it fail, or it decides alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl PolicyStatus {
    /// The status of every policy of `active`, in manifest order.
    fn of(active: &ActiveBundle) -> Vec<PolicyStatus> {
        active
            .bundle
            .manifest
            .policies
            .iter()
            .map(|entry| {
                let prepared = active.policies.get(&entry.name);
                let (digest, mut error) = match prepared {
                    Some(Ok(p)) => (p.digest.clone(), None),
                    Some(Err(e)) => (String::new(), Some(e.clone())),
                    None => (String::new(), Some("not prepared".to_owned())),
                };
                let candidate = prepared
                    .and_then(|p| p.as_ref().ok())
                    .and_then(|p| p.staged.as_ref())
                    .map(|s| &s.candidate);
                let candidate_digest = match candidate {
                    Some(Ok(c)) => Some(c.digest.clone()),
                    Some(Err(e)) => {
                        error.get_or_insert_with(|| e.clone());
                        None
                    }
                    None => None,
                };
                PolicyStatus {
                    name: entry.name.clone(),
                    digest,
                    stage: entry.stage,
                    candidate: entry.candidate.as_ref().map(|c| c.name.clone()),
                    candidate_digest,
                    error,
                }
            })
            .collect()
    }
}

/// The agent certificate as `gait-agent status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateStatus {
    /// `notAfter`, Unix seconds.
    pub not_after: i64,
    /// Seconds left until `not_after` (negative once expired).
    pub seconds_left: i64,
    /// Whole days left (rounded down; negative once expired).
    pub days_left: i64,
    /// Whether less than a third of the validity is left: the agent renews it over its connection.
    pub renewal_due: bool,
}

/// Process-lifetime counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    /// Reconnect attempts since start.
    pub reconnects: u64,
    /// Bundles refused since start.
    pub refusals: u64,
}

/// The keys bundles are verified with: the configured registry keys plus the keys activated bundles' endorsement
/// chains added, minus every key id an activated bundle revoked; and those revoked ids, which stay refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustState {
    /// Keys trusted directly.
    pub root: gait_bundle::TrustRoot,
    /// Revoked key ids.
    pub revoked: std::collections::BTreeSet<String>,
}

impl TrustState {
    /// Configured keys ∪ persisted additions − persisted revocations.
    pub fn compose(
        configured: gait_bundle::TrustRoot,
        persisted: crate::bundle_cache::PersistedTrust,
    ) -> Self {
        let mut root = configured;
        for key in persisted.added {
            root.insert(key);
        }
        for id in &persisted.revoked {
            root.remove(id);
        }
        TrustState {
            root,
            revoked: persisted.revoked,
        }
    }

    /// This state after `change`.
    pub fn applied(&self, change: &crate::bundle_cache::TrustChange) -> Self {
        let mut next = self.clone();
        next.revoked.extend(change.revoked.iter().cloned());
        for key in &change.added {
            next.root.insert(*key);
        }
        for id in &next.revoked {
            next.root.remove(id);
        }
        next
    }

    /// Verification options for a bundle of `scope` under this trust.
    pub fn options<'a>(
        &'a self,
        scope: &'a gait_bundle::Scope,
        current_epoch: Option<u64>,
        now_unix: i64,
    ) -> gait_bundle::VerifyOptions<'a> {
        gait_bundle::VerifyOptions {
            trust: &self.root,
            revoked: &self.revoked,
            expected_scope: scope,
            current_epoch,
            now_unix,
        }
    }
}

/// State shared by every part of the running agent.
pub struct AgentState {
    identity: AgentIdentity,
    scope: gait_bundle::Scope,
    /// The aggregator address dialled last (one of `aggregator.address` and `aggregator.replicas`).
    aggregator: std::sync::RwLock<String>,
    db: AgentDb,
    outbox: Outbox,
    committer: committer::Committer,
    cache: BundleCache,
    trust: RwLock<Arc<TrustState>>,
    active: RwLock<Option<Arc<ActiveBundle>>>,
    received: Mutex<Option<BundleRef>>,
    last_refusal: Mutex<Option<RefusalInfo>>,
    records_ready: Notify,
    connected: AtomicBool,
    reconnects: AtomicU64,
    refusals: AtomicU64,
    /// Local enforcement (trace key, rate-limit state).
    gate: Arc<crate::gate::engine::GateEngine>,
    /// 0 = never.
    last_contact_ms: AtomicI64,
    persisted_contact_ms: AtomicI64,
    /// The last durable append's storage failure, cleared by the next append that succeeds.
    storage_error: Mutex<Option<String>>,
    /// The local API server's connection counters, once it runs.
    http_stats: std::sync::OnceLock<Arc<gait_runtime::http::Stats>>,
    /// Decisions answered by verdict, and their latency.
    decisions: crate::local_api::decision_metrics::DecisionMetrics,
    /// Conflicting records quarantined since start (see [`OutboxStatus::conflicts`]).
    conflicts: AtomicU64,
    /// See [`StatusReport::identity_in_use`].
    identity_in_use: AtomicBool,
    /// `notBefore` / `notAfter` of the certificate in use, Unix seconds (renewal replaces them; `notBefore`
    /// 0 = unknown).
    cert_validity: Mutex<(i64, i64)>,
    /// Keys artifact signatures are checked with (`capture`), set once by the daemon at start.
    trace_keys: std::sync::OnceLock<Arc<crate::capture::TraceKeys>>,
    /// The certificate chain and key files that sign outbox exports (`POST /v1/outbox/export`).
    tls_files: std::sync::OnceLock<(std::path::PathBuf, std::path::PathBuf)>,
}

impl std::fmt::Debug for AgentState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentState")
            .field("agent", &self.identity.uri)
            .field("aggregator", &self.aggregator)
            .finish_non_exhaustive()
    }
}

/// Milliseconds since the Unix epoch on the local clock.
pub fn now_unix_ms() -> i64 {
    crate::clock::unix_ms()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl AgentState {
    /// Builds the state over opened storage; reads the bundle cache and last contact. The active bundle is
    /// NOT restored here (it must be verified first, see `activation::restore_cached_bundle`).
    pub(crate) async fn open(
        identity: AgentIdentity,
        aggregator: String,
        db: AgentDb,
        outbox: Outbox,
        trust: gait_bundle::TrustRoot,
        gate: Arc<crate::gate::engine::GateEngine>,
    ) -> Result<Arc<Self>, StateError> {
        let db2 = db.clone();
        let (cache, last_contact, persisted) = tokio::task::spawn_blocking(move || {
            let cache = BundleCache::open(&db2)?;
            let last_contact = read_contact(&db2)?;
            let persisted = cache.persisted_trust()?;
            Ok::<_, StateError>((cache, last_contact, persisted))
        })
        .await??;
        let trust = TrustState::compose(trust, persisted);
        let identity_not_after = identity.cert_not_after_unix;
        let scope = gait_bundle::Scope {
            org: identity.org.clone(),
            project: identity.project.clone(),
            env: identity.env.clone(),
        };
        let decisions = crate::local_api::decision_metrics::DecisionMetrics::default();
        let committer = {
            let (outbox, counters, metrics) = (
                outbox.clone(),
                Arc::clone(gate.rate_limits()),
                decisions.commit_metrics(),
            );
            // Opens (or creates) the outbox's log files: blocking.
            tokio::task::spawn_blocking(move || {
                committer::Committer::spawn(outbox, Some(counters), Some(metrics))
            })
            .await
            .map_err(std::io::Error::other)
            .flatten()
        }
        .map_err(|e| {
            StateError::from(OutboxError::Corrupt {
                path: String::new(),
                seq: 0,
                detail: format!("cannot start the outbox committer: {e}"),
            })
        })?;
        let state = Arc::new(AgentState {
            identity,
            scope,
            aggregator: std::sync::RwLock::new(aggregator),
            db,
            outbox,
            committer,
            cache,
            trust: RwLock::new(Arc::new(trust)),
            gate,
            active: RwLock::new(None),
            received: Mutex::new(None),
            last_refusal: Mutex::new(None),
            records_ready: Notify::new(),
            trace_keys: std::sync::OnceLock::new(),
            connected: AtomicBool::new(false),
            reconnects: AtomicU64::new(0),
            refusals: AtomicU64::new(0),
            last_contact_ms: AtomicI64::new(last_contact.unwrap_or(0)),
            persisted_contact_ms: AtomicI64::new(last_contact.unwrap_or(0)),
            storage_error: Mutex::new(None),
            http_stats: std::sync::OnceLock::new(),
            decisions,
            conflicts: AtomicU64::new(0),
            identity_in_use: AtomicBool::new(false),
            cert_validity: Mutex::new((0, identity_not_after)),
            tls_files: std::sync::OnceLock::new(),
        });
        Ok(state)
    }

    /// Identity and tenancy from the agent's certificate.
    pub fn identity(&self) -> &AgentIdentity {
        &self.identity
    }

    /// Records the validity window of the certificate in use (at start, and after each renewal).
    pub(crate) fn set_certificate_validity(&self, not_before: i64, not_after: i64) {
        *lock(&self.cert_validity) = (not_before, not_after);
    }

    /// Records the agent's certificate chain and key files (once, at start), for signing outbox exports.
    pub(crate) fn set_tls_files(&self, cert: std::path::PathBuf, key: std::path::PathBuf) {
        let _ = self.tls_files.set((cert, key));
    }

    /// The agent's certificate chain and key files, when the daemon set them.
    pub(crate) fn tls_files(&self) -> Option<&(std::path::PathBuf, std::path::PathBuf)> {
        self.tls_files.get()
    }

    /// `notBefore` / `notAfter` of the certificate in use, Unix seconds.
    pub fn certificate_validity(&self) -> (i64, i64) {
        *lock(&self.cert_validity)
    }

    /// The tenancy scope bundles must be issued for.
    pub fn scope(&self) -> &gait_bundle::Scope {
        &self.scope
    }

    /// The registry keys bundles must be signed by, and the revoked key ids.
    pub fn trust(&self) -> Arc<TrustState> {
        self.trust
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Apply an activated bundle's trust change (already persisted with its activation) in memory.
    pub(crate) fn apply_trust(&self, change: &crate::bundle_cache::TrustChange) {
        if change.is_empty() {
            return;
        }
        let mut guard = self.trust.write().unwrap_or_else(PoisonError::into_inner);
        *guard = Arc::new(guard.applied(change));
    }

    /// Local enforcement.
    pub fn gate(&self) -> &Arc<crate::gate::engine::GateEngine> {
        &self.gate
    }

    /// Whether the bundle in force is older than its `max_offline_seconds` at `now_ms`, and its rule.
    pub fn staleness_at(&self, now_ms: i64) -> Staleness {
        let Some(a) = self.active_bundle() else {
            return Staleness::default();
        };
        let staleness = &a.bundle.manifest.staleness;
        // Without any recorded contact, the bundle's activation is the last proof of contact.
        let reference = self
            .last_contact_unix_ms()
            .unwrap_or(0)
            .max(a.since_unix_ms);
        let allowed_ms = i64::try_from(staleness.max_offline_seconds)
            .unwrap_or(i64::MAX)
            .saturating_mul(1000);
        Staleness {
            stale: now_ms.saturating_sub(reference) > allowed_ms,
            on_stale: Some(staleness.on_stale),
            max_offline_seconds: Some(staleness.max_offline_seconds),
        }
    }

    /// The durable outbox.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// The agent's database (the upload spool lives in it, see [`crate::upload`]).
    pub fn db(&self) -> &AgentDb {
        &self.db
    }

    pub(crate) fn cache(&self) -> &BundleCache {
        &self.cache
    }

    /// The verified bundle in force, if any.
    pub fn active_bundle(&self) -> Option<Arc<ActiveBundle>> {
        self.active
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Epoch of the bundle in force.
    pub fn active_epoch(&self) -> Option<u64> {
        self.active_bundle().map(|a| a.epoch())
    }

    pub(crate) fn set_active(&self, active: Option<Arc<ActiveBundle>>) {
        *self.active.write().unwrap_or_else(PoisonError::into_inner) = active;
    }

    pub(crate) fn received(&self) -> Option<BundleRef> {
        lock(&self.received).clone()
    }

    pub(crate) fn set_received(&self, received: Option<BundleRef>) {
        *lock(&self.received) = received;
    }

    pub(crate) fn set_last_refusal(&self, refusal: Option<RefusalInfo>, count: bool) {
        if count {
            self.refusals.fetch_add(1, Ordering::Relaxed);
        }
        *lock(&self.last_refusal) = refusal;
    }

    pub(crate) fn last_refusal(&self) -> Option<RefusalInfo> {
        lock(&self.last_refusal).clone()
    }

    /// Appends a record stamped with the current time and the bundle in force, durably, then wakes the
    /// shipper. Returns only after the outbox committed (or shed / refused) it.
    pub async fn append(
        self: &Arc<Self>,
        class: RecordClass,
        kind: String,
        payload: Vec<u8>,
    ) -> Result<AppendOutcome, OutboxError> {
        let record = NewRecord {
            class,
            kind,
            created_unix_ms: now_unix_ms(),
            bundle: self.active_bundle().map(|a| a.bundle_ref()),
            payload,
        };
        let outcome = match self.committer.append(record).await {
            Ok(outcome) => {
                *lock(&self.storage_error) = None;
                outcome
            }
            Err(e) => {
                // A storage failure (not a full outbox or a bad record: those are the caller's) makes the agent
                // unhealthy until an append succeeds again.
                if matches!(e, OutboxError::Db(_)) {
                    *lock(&self.storage_error) = Some(e.to_string());
                }
                return Err(e);
            }
        };
        if matches!(outcome, AppendOutcome::Appended { .. }) {
            self.records_ready.notify_one();
        }
        Ok(outcome)
    }

    /// Wakes the shipper after records were appended to the outbox directly (not through [`AgentState::append`]).
    pub(crate) fn wake_shipper(&self) {
        self.records_ready.notify_one();
    }

    /// Sets the keys artifact signatures are checked with (the daemon does, once, at start).
    pub fn attach_trace_keys(&self, keys: Arc<crate::capture::TraceKeys>) {
        let _ = self.trace_keys.set(keys);
    }

    /// The keys artifact signatures are checked with (none until [`AgentState::attach_trace_keys`]).
    pub fn trace_keys(&self) -> Arc<crate::capture::TraceKeys> {
        self.trace_keys.get().cloned().unwrap_or_default()
    }

    /// Resolves when a producer appended a record since the last call (at most one stored wake-up).
    pub(crate) async fn records_appended(&self) {
        self.records_ready.notified().await;
    }

    /// Publishes the local API server's connection counters on `/metrics`.
    pub fn attach_http_stats(&self, stats: Arc<gait_runtime::http::Stats>) {
        let _ = self.http_stats.set(stats);
    }

    /// The storage failure of the agent database (any operation), or of the last durable append, until the
    /// storage heals ([`healer`]) or an append succeeds.
    pub fn storage_error(&self) -> Option<String> {
        lock(&self.storage_error)
            .clone()
            .or_else(|| self.db.failure())
    }

    /// Storage failure counters of the agent database (for `/metrics`).
    pub fn storage_health(&self) -> crate::db::StorageHealth {
        let mut health = self.db.health();
        health.failure = self.storage_error();
        health
    }

    /// One heal attempt ([`AgentDb::heal`]): `Ok` when the storage takes durable commits again (or never
    /// failed), which clears the failure; an error while it still fails.
    pub(crate) async fn heal_storage(&self) -> Result<(), DbError> {
        let db = self.db.clone();
        match tokio::task::spawn_blocking(move || db.heal()).await {
            Ok(Ok(_)) => {
                *lock(&self.storage_error) = None;
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(join) => Err(DbError::Storage {
                path: self.db.path().to_path_buf(),
                source: redb::Error::Io(std::io::Error::other(format!("heal task failed: {join}"))),
            }),
        }
    }

    /// Decisions answered by verdict, and their latency (for `/metrics`).
    pub fn decision_metrics(&self) -> &crate::local_api::decision_metrics::DecisionMetrics {
        &self.decisions
    }

    /// The local API server's connection counters, once it runs.
    pub fn http_stats(&self) -> Option<&Arc<gait_runtime::http::Stats>> {
        self.http_stats.get()
    }

    pub(crate) fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Relaxed);
    }

    /// The aggregator address being dialled (status shows it).
    pub(crate) fn set_aggregator(&self, address: &str) {
        let mut current = self
            .aggregator
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *current != address {
            address.clone_into(&mut current);
        }
    }

    /// Whether a connection to the aggregator is up.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Counts conflicting records moved into the quarantine.
    pub(crate) fn count_conflicts(&self, n: u64) {
        self.conflicts.fetch_add(n, Ordering::Relaxed);
    }

    /// Marks whether the aggregator refuses this agent because another instance of its identity is connected.
    pub(crate) fn set_identity_in_use(&self, refused: bool) {
        self.identity_in_use.store(refused, Ordering::Relaxed);
    }

    pub(crate) fn count_reconnect(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }

    /// Process-lifetime counters.
    pub fn counters(&self) -> Counters {
        Counters {
            reconnects: self.reconnects.load(Ordering::Relaxed),
            refusals: self.refusals.load(Ordering::Relaxed),
        }
    }

    /// End of the last successful exchange, if any.
    pub fn last_contact_unix_ms(&self) -> Option<i64> {
        Some(self.last_contact_ms.load(Ordering::Relaxed)).filter(|ms| *ms > 0)
    }

    /// Records a successful exchange; persists it when the stored value is older than
    /// [`CONTACT_PERSIST_EVERY`].
    pub(crate) async fn touch_contact(&self) {
        let now = now_unix_ms();
        self.last_contact_ms.fetch_max(now, Ordering::Relaxed);
        let persisted = self.persisted_contact_ms.load(Ordering::Relaxed);
        let every = i64::try_from(CONTACT_PERSIST_EVERY.as_millis()).unwrap_or(i64::MAX);
        if now.saturating_sub(persisted) >= every {
            self.flush_last_contact().await;
        }
    }

    /// Writes the in-memory last contact to disk if it is newer than the stored one.
    pub(crate) async fn flush_last_contact(&self) {
        let value = self.last_contact_ms.load(Ordering::Relaxed);
        if value <= self.persisted_contact_ms.load(Ordering::Relaxed) {
            return;
        }
        let db = self.db.clone();
        match tokio::task::spawn_blocking(move || write_contact(&db, value)).await {
            Ok(Ok(())) => {
                self.persisted_contact_ms
                    .fetch_max(value, Ordering::Relaxed);
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot persist the last contact time"),
            Err(e) => tracing::warn!(error = %e, "last contact write task failed"),
        }
    }

    /// The status report (no disk I/O: everything is mirrored in memory).
    pub async fn status(&self) -> StatusReport {
        self.status_at(now_unix_ms())
    }

    /// The status report as of `now_ms` (tests use a fixed clock).
    pub fn status_at(&self, now_ms: i64) -> StatusReport {
        let active = self.active_bundle();
        let last_contact = self.last_contact_unix_ms();
        let staleness = self.staleness_at(now_ms);
        let (stale, on_stale, max_offline) = (
            staleness.stale,
            staleness.on_stale.map(|r| on_stale_name(r).to_owned()),
            staleness.max_offline_seconds,
        );
        let stats = self.outbox.stats();
        let limits = self.outbox.limits();
        StatusReport {
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            identity: self.identity.clone(),
            aggregator: self
                .aggregator
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
            connected: self.is_connected(),
            last_contact_unix_ms: last_contact,
            active_bundle: active.as_ref().map(|a| BundleInfo::from(&a.bundle_ref())),
            received_bundle: self.received().as_ref().map(BundleInfo::from),
            last_refusal: self.last_refusal(),
            stale,
            on_stale,
            max_offline_seconds: max_offline,
            outbox: OutboxStatus {
                depth: stats.depth,
                bytes: stats.bytes,
                last_seq: stats.last_seq,
                acked_through: stats.acked_through,
                shed_total: stats.shed_total,
                max_records: limits.max_records,
                max_bytes: limits.max_bytes,
                quarantined: self.outbox.quarantine_stats().held,
                conflicts: self.conflicts.load(Ordering::Relaxed),
            },
            reconnects: self.counters().reconnects,
            ready: false,
            not_ready: Vec::new(),
            storage_error: self.storage_error(),
            identity_in_use: self.identity_in_use.load(Ordering::Relaxed),
            certificate: Some(certificate_status(
                self.certificate_validity(),
                now_ms / 1000,
            )),
            warnings: Vec::new(),
            capture_mode: active
                .as_ref()
                .map(|a| a.bundle.manifest.settings.capture_mode)
                .unwrap_or_default(),
            policies: active.as_deref().map(PolicyStatus::of).unwrap_or_default(),
            trace_key_id: self.gate.key_id().to_owned(),
        }
        .with_readiness()
    }
}

/// The certificate's status at `now` (Unix seconds) from its validity window.
fn certificate_status((not_before, not_after): (i64, i64), now: i64) -> CertificateStatus {
    let seconds_left = not_after.saturating_sub(now);
    CertificateStatus {
        not_after,
        seconds_left,
        days_left: seconds_left.div_euclid(86_400),
        renewal_due: crate::tls::renewal_due(not_before, not_after, now),
    }
}

/// The manifest spelling of an `on_stale` rule.
fn on_stale_name(rule: gait_bundle::OnStale) -> &'static str {
    match rule {
        gait_bundle::OnStale::Keep => "keep",
        gait_bundle::OnStale::FailClosed => "fail_closed",
    }
}

fn read_contact(db: &AgentDb) -> Result<Option<i64>, DbError> {
    let read = db.redb().begin_read().map_err(|e| db.err(e))?;
    match read.open_table(CONTACT) {
        Ok(table) => Ok(table
            .get(CONTACT_KEY)
            .map_err(|e| db.err(e))?
            .map(|v| v.value())),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(db.err(e)),
    }
}

fn write_contact(db: &AgentDb, value: i64) -> Result<(), DbError> {
    let write = db.redb().begin_write().map_err(|e| db.err(e))?;
    {
        let mut table = write.open_table(CONTACT).map_err(|e| db.err(e))?;
        table.insert(CONTACT_KEY, value).map_err(|e| db.err(e))?;
    }
    write.commit().map_err(|e| db.err(e))
}

impl StatusReport {
    /// Human-readable rendering for `gait-agent status`.
    /// Fills [`StatusReport::ready`] and [`StatusReport::not_ready`] from the other fields.
    fn with_readiness(mut self) -> Self {
        let mut why = Vec::new();
        if self.active_bundle.is_none() {
            why.push("no verified policy bundle in force".to_owned());
        }
        if self.stale && self.on_stale.as_deref() == Some("fail_closed") {
            why.push(format!(
                "stale under on_stale=fail_closed: no contact with the aggregator for over {} s, every decision blocks",
                self.max_offline_seconds.unwrap_or(0)
            ));
        }
        if let Some(error) = &self.storage_error {
            why.push(format!("storage failing: {error}"));
        }
        self.ready = why.is_empty();
        self.not_ready = why;
        if let Some(cert) = &self.certificate {
            if cert.seconds_left <= 0 {
                self.warnings.push(format!(
                    "the certificate EXPIRED {} s ago: the aggregator refuses this agent; enroll it again \
                     (`gait-agent enroll`)",
                    -cert.seconds_left
                ));
            } else if cert.renewal_due {
                self.warnings.push(format!(
                    "the certificate expires in {} days ({} s) and is not renewed yet: renewal needs a \
                     connection to the aggregator",
                    cert.days_left, cert.seconds_left
                ));
            }
        }
        self
    }

    pub fn render_text(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let id = &self.identity;
        let _ = writeln!(
            s,
            "agent        {} (gait-agent {})",
            id.uri, self.agent_version
        );
        let _ = writeln!(
            s,
            "tenancy      org={} project={} env={} agent={}",
            id.org, id.project, id.env, id.agent_id
        );
        let _ = writeln!(
            s,
            "aggregator   {} ({})",
            self.aggregator,
            if self.connected {
                "connected"
            } else if self.identity_in_use {
                "refused: another instance of this agent identity is connected; stop it or issue this host \
                 its own certificate"
            } else {
                "disconnected"
            }
        );
        let _ = writeln!(
            s,
            "last contact {}",
            self.last_contact_unix_ms
                .map_or_else(|| "never".to_owned(), format_ms)
        );
        let bundle = |b: &Option<BundleInfo>| match b {
            Some(b) => format!(
                "epoch {} digest {} since {}",
                b.epoch,
                b.digest,
                format_ms(b.since_unix_ms)
            ),
            None => "none".to_owned(),
        };
        let _ = writeln!(s, "active       {}", bundle(&self.active_bundle));
        let _ = writeln!(s, "received     {}", bundle(&self.received_bundle));
        let _ = writeln!(
            s,
            "capture      {}",
            match self.capture_mode {
                gait_bundle::CaptureMode::Raw =>
                    "raw (decision records carry the normalized intent of every call)",
                gait_bundle::CaptureMode::Reference =>
                    "reference (decision records carry digests only)",
            }
        );
        if !self.trace_key_id.is_empty() {
            let _ = writeln!(s, "trace key    {}", self.trace_key_id);
        }
        for p in &self.policies {
            let _ = writeln!(
                s,
                "policy       {} {}{}{}",
                p.name,
                p.stage,
                match (&p.candidate, &p.candidate_digest) {
                    (Some(name), Some(digest)) => format!(" candidate {name} digest {digest}"),
                    (Some(name), None) => format!(" candidate {name}"),
                    _ => String::new(),
                },
                p.error
                    .as_ref()
                    .map_or_else(String::new, |e| format!(" (error: {e})"))
            );
        }
        if let Some(r) = &self.last_refusal {
            let _ = writeln!(
                s,
                "last refusal epoch {} digest {} {}: {} at {}",
                r.epoch,
                r.digest,
                r.code,
                r.message,
                format_ms(r.at_unix_ms)
            );
        }
        let _ = writeln!(
            s,
            "stale        {}{}",
            self.stale,
            match (&self.on_stale, self.max_offline_seconds) {
                (Some(on), Some(max)) => format!(" (max_offline_seconds {max}, on_stale {on})"),
                _ => String::new(),
            }
        );
        let o = &self.outbox;
        let _ = writeln!(
            s,
            "outbox       {} records, {} bytes waiting (soft quota {} / {}); last seq {}, acked {}, shed {}",
            o.depth, o.bytes, o.max_records, o.max_bytes, o.last_seq, o.acked_through, o.shed_total
        );
        let _ = writeln!(
            s,
            "quarantine   {} records (gait-agent quarantine list); {} conflicting records since start",
            o.quarantined, o.conflicts
        );
        let _ = writeln!(s, "reconnects   {}", self.reconnects);
        if let Some(cert) = &self.certificate {
            let _ = writeln!(
                s,
                "certificate  expires {} ({} days left{})",
                format_ms(cert.not_after.saturating_mul(1000)),
                cert.days_left,
                if cert.renewal_due {
                    ", renewal due"
                } else {
                    ""
                }
            );
        }
        for warning in &self.warnings {
            let _ = writeln!(s, "warning      {warning}");
        }
        if self.ready {
            let _ = writeln!(s, "ready        yes");
        } else {
            let _ = writeln!(s, "ready        NO: {}", self.not_ready.join("; "));
        }
        s
    }
}

fn format_ms(ms: i64) -> String {
    let fmt = time::format_description::well_known::Rfc3339;
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&fmt).ok())
        .unwrap_or_else(|| format!("{ms} ms"))
}
