//! `gait-store`: the aggregator's storage — agents, their record streams and gaps, policy bundles and
//! certificate revocations — on embedded SQLite (the default) or PostgreSQL (the scale path).
//!
//! All SQL of the aggregator lives in this crate, as runtime queries (no compile-time macros, so no database at
//! build time), in one module per domain: `agents`, `records`, `bundles`, `revocations`. Each portable query is
//! written once and runs on either pool through `conn::db_run!`; `sqlite` and `postgres` hold only the SQL that
//! really differs (bulk inserts, locks, list parameters) plus opening the pool, and each backend embeds its own
//! migrations (`migrations/sqlite`, `migrations/postgres`). Every operation checks its input before any SQL
//! runs, so both backends refuse the same inputs with the same errors.
//!
//! [`Store::transaction`] (or [`Store::begin`]) runs several operations atomically, e.g. an operation and its
//! audit entry; see [`StoreTx`].
//!
//! Every row is scoped by a [`Tenant`] (org, project, env); agents are keyed by tenant plus agent id.
//! The record stream rules (dedup, conflicts, gaps, cursor) are in the `batch` module.

mod access;
mod agents;
mod alerts;
mod analysis;
mod approvals;
mod audit;
mod backup;
mod batch;
mod bundles;
mod conformance;
mod conn;
mod decision_stats;
mod enrollment;
mod error;
mod evidence;
mod gated;
mod leader;
mod model;
mod notify;
mod policy_versions;
mod postgres;
mod records;
mod revocations;
mod rollouts;
mod rows;
mod signing_keys;
mod sqlite;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;
mod trace_keys;
mod tx;
mod uploads;

use std::path::Path;

pub use access::{
    BindingScope, BindingSource, ConfigBindingsApplied, MAX_BINDING_SUBJECT_BYTES, MAX_BINDINGS,
    NewBinding, RoleBinding, SubjectKind,
};
pub use agents::{CertificateSource, KnownCertificate};
pub use alerts::{
    AgentAlert, AlertKind, InstanceChange, MAX_ALERT_DETAIL_BYTES, MAX_ALERTS_PAGE, NewAgentAlert,
};
pub use analysis::{
    AgentRange, AnalysisFilter, ApprovalTiming, EnvFreshness, FamilyDef, FamilyMerge, FamilySample,
    FamilyScope, MAX_ANALYSIS_BATCH, MAX_FAMILY_MERGES, MAX_FAMILY_SCOPE_ROWS, MAX_POSTURE_ROWS,
    MAX_REPRESENTATIVES, NO_POLICY, PolicyCount, PostureCount, RangesApplied, RegressCount,
    RunpackTool,
};
pub use approvals::{
    ApprovalState, ApprovalVote, ConfigPoliciesApplied, MAX_APPROVAL_PAGE,
    MAX_APPROVAL_POLICY_BYTES, MAX_APPROVAL_TOKENS_BYTES, NewApprovalDecision, NewApprovalPolicy,
    NewApprovalRequest, StoredApprovalDecision, StoredApprovalPolicy, StoredApprovalRequest,
};
pub use audit::{AppendedEntry, AuditHead, AuditRow, StoredCheckpoint};
pub use backup::BackupCounts;
pub use conformance::{
    AgentActiveBundle, BundleHead, ConformanceBaseline, ConformanceFilter, LineageEntry,
    MAX_CONFORMANCE_ENVS, MAX_LINEAGE_VERSIONS, MAX_REQUIRED_RULES, MAX_RULE_NAME_BYTES,
};
pub use decision_stats::{DecisionStats, DecisionStatsQuery, MAX_STATS_AGENTS};
pub use enrollment::{
    IssueKind, IssuedCertificate, JoinTokenRow, JoinTokenState, MAX_JOIN_TOKEN_USES,
    MAX_JOIN_TOKENS_PAGE, NewJoinToken,
};
pub use error::StoreError;
pub use evidence::{
    CorpusGroup, CorpusScope, EvidenceClass, EvidenceFilter, IndexFields, IndexedCall,
    IndexedRecord, MAX_EVIDENCE_PAGE, NewIndexEntry, OwnedCorpusGroup, RawJson, Shard,
};
pub use gated::{CallMarking, GatedKey, RangeKeys, gated_key};
pub use leader::LeaderLease;
pub use model::{
    ActiveBundle, AgentCursor, AgentFilter, AgentHello, AgentPosition, AgentRow, BatchOutcome,
    BundleRef, BundleReportRow, DEFAULT_AGENT_PAGE, GapKind, GapRow, MAX_AGENT_PAGE,
    MAX_BATCH_RECORDS, MAX_LABEL_BYTES, MAX_RECORDS_PAGE, MAX_REFUSAL_MESSAGE_BYTES,
    MAX_TEXT_BYTES, NewRecord, Refusal, RefusedRecord, Revocation, StoredBundle, StoredRecord,
    StoredRevocation,
};
pub use model::{AgentId, AgentKey, CertSerial, Env, Org, Project, Tenant};
pub use notify::{BUNDLES_CHANNEL, Change, ChangeListener, REVOCATIONS_CHANNEL};
pub use policy_versions::{
    MAX_POLICY_PAGE, NewPin, NewPolicyVersion, PinFields, PinKind, PolicyVersionMeta, StoredPin,
    StoredPolicyVersion,
};
pub use postgres::PgStore;
pub use rollouts::{
    AudienceRow, EnvAgent, MAX_ENV_AGENTS, MAX_ROLLOUT_EVENTS, MAX_ROLLOUT_ID_BYTES,
    MAX_ROLLOUT_JSON_BYTES, MAX_ROLLOUT_PAGE, NewRollout, RolloutEvent, RolloutRow,
    RolloutTargetRow, RolloutTransition,
};
pub use signing_keys::{SigningKeyRow, SigningKeyState};
pub use sqlite::{GroupCommitStats, SqliteStore};
pub use trace_keys::{MAX_TRACE_KEYS_PAGE, NewTraceKey, TraceKey};
pub use tx::StoreTx;
pub use uploads::ArtifactUpload;

use conn::{Pooled, db_run};
use error::db;

/// The aggregator's store: one of the two backends. Cheap to clone (a pool handle).
#[derive(Clone, Debug)]
pub enum Store {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

/// Runs one domain operation on a pooled connection outside any transaction (reads, single statements).
macro_rules! on_conn {
    ($store:expr, |$conn:ident| $op:expr) => {{
        let mut pooled = $store.acquire().await?;
        let $conn = pooled.conn();
        $op.await
    }};
}

/// Runs one domain operation in its own transaction and commits it; `$name` prefixes the begin/commit errors.
macro_rules! in_tx {
    ($store:expr, $name:literal, |$conn:ident| $op:expr) => {{
        let mut tx = $store.begin_named(concat!($name, ": begin")).await?;
        let out = {
            let $conn = tx.conn();
            $op.await?
        };
        tx.commit(concat!($name, ": commit")).await?;
        Ok(out)
    }};
}

impl Store {
    /// Opens the store named by `url` and applies pending migrations (idempotent):
    /// `sqlite://<path>` (created if missing, e.g. `sqlite:///var/lib/gait/aggregator.db?mode=rwc`) or
    /// `postgres://user[:password]@host[:port]/database`.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        let scheme = url
            .split_once(':')
            .map(|(scheme, _)| scheme)
            .unwrap_or_default();
        match scheme {
            "sqlite" => Ok(Store::Sqlite(SqliteStore::connect(url).await?)),
            "postgres" | "postgresql" => Ok(Store::Postgres(PgStore::connect(url).await?)),
            other => Err(StoreError::UnsupportedUrl {
                scheme: model::truncate_utf8(other, 32).to_owned(),
            }),
        }
    }

    /// Opens (creating if missing, with its directory) the SQLite database file at `path`.
    pub async fn open_sqlite_file(path: &Path) -> Result<Store, StoreError> {
        Ok(Store::Sqlite(SqliteStore::open_file(path).await?))
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn backend(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }

    /// On SQLite, what the group commit has done since the store opened (`None` on PostgreSQL, which commits
    /// each transaction on its own).
    pub fn group_commit_stats(&self) -> Option<GroupCommitStats> {
        match self {
            Store::Sqlite(s) => Some(s.group_commit_stats()),
            Store::Postgres(_) => None,
        }
    }

    /// One round trip to the database (readiness checks).
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut pooled = self.acquire().await?;
        let mut conn = pooled.conn();
        db_run!(conn, |c| {
            sqlx::query("SELECT 1")
                .execute(&mut *c)
                .await
                .map_err(db("ping"))?;
        });
        Ok(())
    }

    /// Closes the pool: waits for checked-out connections to return, then closes them all.
    pub async fn close(&self) {
        match self {
            Store::Sqlite(s) => s.close().await,
            Store::Postgres(s) => s.close().await,
        }
    }

    /// Starts a transaction: every operation on the returned [`StoreTx`] commits with [`StoreTx::commit`] or
    /// not at all. On SQLite it holds the database's write lock until it ends, so keep it short.
    pub async fn begin(&self) -> Result<StoreTx, StoreError> {
        let tx = self.begin_named("begin").await?;
        Ok(StoreTx::new(tx))
    }

    /// Runs `body` in a transaction and commits it when the body returns `Ok`; when it returns `Err` (or
    /// panics) nothing it wrote is kept. A failed commit is returned as `E::from(StoreError)`. The body is an
    /// async closure and may borrow from its surroundings.
    ///
    /// ```no_run
    /// # async fn demo(store: &gait_store::Store, rev: &gait_store::Revocation) -> Result<(), gait_store::StoreError> {
    /// store
    ///     .transaction(async |tx| {
    ///         tx.revoke(rev, 1_700_000_000_000).await?;
    ///         // ... and the audit entry of the revocation, committed together with it.
    ///         Ok::<_, gait_store::StoreError>(())
    ///     })
    ///     .await
    /// # }
    /// ```
    pub async fn transaction<T, E, F>(&self, body: F) -> Result<T, E>
    where
        F: AsyncFnOnce(&mut StoreTx) -> Result<T, E>,
        E: From<StoreError>,
    {
        let mut tx = self.begin().await?;
        match body(&mut tx).await {
            Ok(value) => {
                tx.commit().await?;
                Ok(value)
            }
            Err(e) => {
                if let Err(rollback) = tx.rollback().await {
                    // The body's error is the one to report; the database discards the transaction anyway
                    // when the connection closes.
                    tracing::warn!(error = %rollback, "rolling back a failed store transaction failed");
                }
                Err(e)
            }
        }
    }

    async fn begin_named(&self, op: &'static str) -> Result<conn::Tx, StoreError> {
        match self {
            Store::Sqlite(s) => s.begin(op).await,
            Store::Postgres(s) => s.begin(op).await,
        }
    }

    async fn acquire(&self) -> Result<Pooled, StoreError> {
        match self {
            Store::Sqlite(s) => s.acquire().await,
            Store::Postgres(s) => s.acquire().await,
        }
    }

    /// Creates or refreshes the agent's row from its hello and returns what is already committed of its stream,
    /// so the agent can drop acknowledged records and resume from `committed_seq + 1`.
    pub async fn agent_connected(
        &self,
        key: &AgentKey,
        hello: &AgentHello,
        now_ms: i64,
    ) -> Result<AgentCursor, StoreError> {
        let mut results = self.agents_connected(&[(key, hello)], now_ms).await?;
        results.pop().unwrap_or_else(|| {
            Err(StoreError::invalid(
                "hello",
                "no result for the agent (store bug)",
            ))
        })
    }

    /// [`Store::agent_connected`] for many agents at once: the valid hellos are written in one transaction, so a
    /// burst of reconnects costs one commit instead of one each. Returns one result per input, in order: an
    /// invalid hello gets its own validation error and does not affect the others. The outer error means the
    /// transaction itself failed and nothing was written.
    pub async fn agents_connected(
        &self,
        hellos: &[(&AgentKey, &AgentHello)],
        now_ms: i64,
    ) -> Result<Vec<Result<AgentCursor, StoreError>>, StoreError> {
        in_tx!(self, "agents_connected", |conn| agents::connected(
            conn, hellos, now_ms
        ))
    }

    /// Moves the agent's `last_seen` forward (never backward).
    pub async fn agent_seen(&self, key: &AgentKey, now_ms: i64) -> Result<(), StoreError> {
        if self.agents_seen(&[key], now_ms).await? > 0 {
            Ok(())
        } else {
            Err(StoreError::UnknownAgent {
                agent: key.to_string(),
            })
        }
    }

    /// Moves `last_seen` forward for many agents in one transaction; unknown agents are skipped. Returns how
    /// many agents were found.
    pub async fn agents_seen(&self, keys: &[&AgentKey], now_ms: i64) -> Result<u64, StoreError> {
        if keys.is_empty() {
            return Ok(0);
        }
        in_tx!(self, "agents_seen", |conn| agents::seen(conn, keys, now_ms))
    }

    /// The agents whose last hello presented certificate `serial` (normally at most one): how an operator
    /// revoking a bare serial learns whose certificate it is.
    pub async fn agents_with_cert_serial(
        &self,
        serial: &CertSerial,
    ) -> Result<Vec<AgentRow>, StoreError> {
        on_conn!(self, |conn| agents::with_cert_serial(conn, serial))
    }

    /// Records what the agent did with a bundle: received, activated, or refused (with the reason).
    pub async fn record_bundle_report(
        &self,
        key: &AgentKey,
        report: &BundleReportRow,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        on_conn!(self, |conn| agents::bundle_report(
            conn, key, report, now_ms
        ))
    }

    /// Stores a batch of the agent's records in one transaction, then returns what was stored and the new cursor.
    /// Only acknowledge the batch to the agent after this returns `Ok`. Redelivered records are counted as
    /// duplicates, a seq stored with another hash as a conflict (the stored record is kept); skipped seqs and
    /// broken hash chains become gap rows. The rules are in the `batch` module docs. Batches of one agent must be
    /// committed in the order the agent sent them (a later batch committed first makes the earlier one's seqs
    /// look like a gap). At most [`MAX_BATCH_RECORDS`] records per call.
    pub async fn commit_batch(
        &self,
        key: &AgentKey,
        records: &[NewRecord],
        now_ms: i64,
    ) -> Result<BatchOutcome, StoreError> {
        in_tx!(self, "commit_batch", |conn| records::commit_batch(
            conn,
            key,
            records,
            &[],
            now_ms
        ))
    }

    /// [`Store::commit_batch`] that also writes the evidence index entries of the records it inserts, in the
    /// same transaction: an entry whose record was a duplicate or a conflict is dropped, so a redelivered batch
    /// indexes nothing twice. Entries of seqs not in `records` are ignored.
    pub async fn commit_batch_indexed(
        &self,
        key: &AgentKey,
        records: &[NewRecord],
        index: &[NewIndexEntry],
        now_ms: i64,
    ) -> Result<BatchOutcome, StoreError> {
        in_tx!(self, "commit_batch", |conn| records::commit_batch(
            conn, key, records, index, now_ms
        ))
    }

    /// One page of the evidence index under `filter`, newest first (by index position); page on with
    /// `filter.before_id` = the last id returned. `filter.limit` must be 1..=[`MAX_EVIDENCE_PAGE`].
    pub async fn evidence(
        &self,
        filter: &EvidenceFilter,
    ) -> Result<Vec<IndexedRecord>, StoreError> {
        on_conn!(self, |conn| evidence::page(conn, filter))
    }

    /// Stores a published bundle. `epoch` must exceed the tenant's latest epoch, else
    /// [`StoreError::EpochConflict`] (which names the next free epoch); concurrent publishes are serialised.
    pub async fn publish_bundle(
        &self,
        tenant: &Tenant,
        epoch: u64,
        digest_hex: &str,
        bytes: &[u8],
        created_by: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        in_tx!(self, "publish_bundle", |conn| bundles::publish(
            conn, tenant, epoch, digest_hex, bytes, created_by, now_ms
        ))
    }

    /// The tenant's bundle with the highest epoch.
    pub async fn latest_bundle(&self, tenant: &Tenant) -> Result<Option<StoredBundle>, StoreError> {
        on_conn!(self, |conn| bundles::latest(conn, tenant))
    }

    /// The tenant's bundle published with `epoch`, if any.
    pub async fn bundle_at_epoch(
        &self,
        tenant: &Tenant,
        epoch: u64,
    ) -> Result<Option<StoredBundle>, StoreError> {
        on_conn!(self, |conn| bundles::at_epoch(conn, tenant, epoch))
    }

    /// The newest published epoch of `tenant` (the bundle itself is not read).
    pub async fn latest_epoch(&self, tenant: &Tenant) -> Result<Option<u64>, StoreError> {
        on_conn!(self, |conn| bundles::latest_epoch(conn, tenant))
    }

    /// One page of the agents of one org, optionally narrowed to a project and env, ordered by (project, env,
    /// agent_id), starting after `filter.after`.
    pub async fn list_agents(&self, filter: &AgentFilter) -> Result<Vec<AgentRow>, StoreError> {
        on_conn!(self, |conn| agents::list(conn, filter))
    }

    /// How many records of the agent are stored.
    pub async fn count_records(&self, key: &AgentKey) -> Result<u64, StoreError> {
        on_conn!(self, |conn| records::count(conn, key))
    }

    /// The agent's records with seq above `after_seq`, ascending; at most `limit`, clamped to
    /// [`MAX_RECORDS_PAGE`]. Page by passing the last seq returned.
    pub async fn records(
        &self,
        key: &AgentKey,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        on_conn!(self, |conn| records::page(conn, key, after_seq, limit))
    }

    /// Up to `limit` records after `after_seq` whose payloads fit in `max_bytes` (at least one record when any
    /// is there), streamed from the database so a page of large records never sits in memory whole; the flag
    /// is true when the byte budget ended the page. Page on by passing the last seq returned.
    pub async fn records_within(
        &self,
        key: &AgentKey,
        after_seq: u64,
        limit: u32,
        max_bytes: usize,
    ) -> Result<(Vec<StoredRecord>, bool), StoreError> {
        on_conn!(self, |conn| records::page_within(
            conn, key, after_seq, limit, max_bytes
        ))
    }

    /// The agent's recorded gaps, by first seq.
    pub async fn gaps(&self, key: &AgentKey) -> Result<Vec<GapRow>, StoreError> {
        on_conn!(self, |conn| records::gaps(conn, key))
    }

    /// Records that the aggregator refused the agent's record `seq` for good with `code` (a permanent
    /// [`gait_wire::RefusalCode`], as a string); the agent quarantines it, and a later batch that skips `seq`
    /// does not record it as a `missing` gap ([`BatchOutcome::refused`]). A second refusal of the same seq keeps
    /// the latest code and message; `message` is cut to [`MAX_REFUSAL_MESSAGE_BYTES`].
    pub async fn record_refusal(
        &self,
        key: &AgentKey,
        seq: u64,
        code: &str,
        message: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        in_tx!(self, "record_refusal", |conn| records::refuse(
            conn, key, seq, code, message, now_ms
        ))
    }

    /// The agent's refused records ([`Store::record_refusal`]), by seq.
    pub async fn refusals(&self, key: &AgentKey) -> Result<Vec<RefusedRecord>, StoreError> {
        on_conn!(self, |conn| records::refusals(conn, key))
    }

    /// Appends one audit entry in its own transaction. Privileged operations append with
    /// [`StoreTx::audit_append`] instead, inside the operation's own transaction.
    pub async fn audit_append(
        &self,
        draft: &gait_audit::EntryDraft,
        now_ms: i64,
    ) -> Result<AppendedEntry, StoreError> {
        in_tx!(self, "audit_append", |conn| audit::append(
            conn, draft, now_ms
        ))
    }

    /// The audit log's size and root hash.
    pub async fn audit_head(&self) -> Result<AuditHead, StoreError> {
        on_conn!(self, |conn| audit::head(conn))
    }

    /// Up to `limit` audit entries from leaf index `from` on, in order.
    pub async fn audit_entries(&self, from: u64, limit: u32) -> Result<Vec<AuditRow>, StoreError> {
        on_conn!(self, |conn| audit::entries(conn, from, limit))
    }

    /// Up to `limit` audit entries from leaf index `from` on whose target lies inside `scope`, in order (an
    /// org's, a project's or an environment's; the deployment scope is every entry).
    pub async fn audit_entries_in(
        &self,
        scope: &BindingScope,
        from: u64,
        limit: u32,
    ) -> Result<Vec<AuditRow>, StoreError> {
        on_conn!(self, |conn| audit::entries_in(conn, scope, from, limit))
    }

    /// The audit log's root hash over its first `size` entries (at most the current size).
    pub async fn audit_root(&self, size: u64) -> Result<gait_audit::Hash, StoreError> {
        on_conn!(self, |conn| audit::root(conn, size))
    }

    /// The RFC 9162 inclusion proof of audit entry `index` in the tree of the first `size` entries.
    pub async fn audit_inclusion_proof(
        &self,
        index: u64,
        size: u64,
    ) -> Result<Vec<gait_audit::Hash>, StoreError> {
        on_conn!(self, |conn| audit::inclusion_proof(conn, index, size))
    }

    /// The RFC 9162 consistency proof from the audit tree of `old` entries to the one of `new` entries.
    pub async fn audit_consistency_proof(
        &self,
        old: u64,
        new: u64,
    ) -> Result<Vec<gait_audit::Hash>, StoreError> {
        on_conn!(self, |conn| audit::consistency_proof(conn, old, new))
    }

    /// Stores a signed checkpoint (one per size; the first kept).
    pub async fn audit_save_checkpoint(&self, cp: &StoredCheckpoint) -> Result<(), StoreError> {
        on_conn!(self, |conn| audit::save_checkpoint(conn, cp))
    }

    /// The stored checkpoint of the largest size.
    pub async fn audit_latest_checkpoint(&self) -> Result<Option<StoredCheckpoint>, StoreError> {
        on_conn!(self, |conn| audit::checkpoint(conn, None))
    }

    /// The stored checkpoint of exactly `size` entries.
    pub async fn audit_checkpoint(
        &self,
        size: u64,
    ) -> Result<Option<StoredCheckpoint>, StoreError> {
        on_conn!(self, |conn| audit::checkpoint(conn, Some(size)))
    }

    /// Revokes a certificate. Revoking an already revoked serial is a no-op that keeps the first record.
    pub async fn revoke(&self, rev: &Revocation, now_ms: i64) -> Result<(), StoreError> {
        on_conn!(self, |conn| revocations::revoke(conn, rev, now_ms))
    }

    /// Every revoked serial, sorted by its canonical text.
    pub async fn revoked_serials(&self) -> Result<Vec<CertSerial>, StoreError> {
        on_conn!(self, |conn| revocations::serials(conn))
    }

    /// Every revocation with its agent, reason, operator and time, oldest first.
    pub async fn revocations(&self) -> Result<Vec<StoredRevocation>, StoreError> {
        on_conn!(self, |conn| revocations::list(conn))
    }

    /// Stores `instance_id` (32 hex digits) as the identity's current agent instance and returns the one
    /// stored before, with the committed seq and the durable conflict count. Refused with
    /// [`StoreError::UnknownAgent`] when the agent has no row (call after [`Store::agent_connected`]).
    pub async fn note_instance(
        &self,
        key: &AgentKey,
        instance_id: &str,
    ) -> Result<InstanceChange, StoreError> {
        in_tx!(self, "note_instance", |conn| alerts::note_instance(
            conn,
            key,
            instance_id
        ))
    }

    /// Stores an identity alert about the agent. Refused with [`StoreError::UnknownAgent`] when the agent
    /// has no row.
    pub async fn record_alert(
        &self,
        key: &AgentKey,
        alert: &NewAgentAlert,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        on_conn!(self, |conn| alerts::record(conn, key, alert, now_ms))
    }

    /// The tenant's identity alerts, newest first, at most `limit` (clamped to [`MAX_ALERTS_PAGE`]).
    pub async fn alerts(&self, tenant: &Tenant, limit: u32) -> Result<Vec<AgentAlert>, StoreError> {
        on_conn!(self, |conn| alerts::list(conn, tenant, limit))
    }

    /// Records that the agent uploaded `sha256` (`size_bytes` long, verified). Idempotent per agent and digest;
    /// [`StoreError::UnknownAgent`] when the agent has no row.
    pub async fn record_artifact_upload(
        &self,
        key: &AgentKey,
        sha256: &str,
        size_bytes: u64,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        in_tx!(self, "record_artifact_upload", |conn| uploads::record(
            conn, key, sha256, size_bytes, now_ms
        ))
    }

    /// The earliest upload of `sha256` by an agent of `tenant`, or `None` when none of its agents uploaded it.
    pub async fn artifact_upload(
        &self,
        tenant: &Tenant,
        sha256: &str,
    ) -> Result<Option<ArtifactUpload>, StoreError> {
        on_conn!(self, |conn| uploads::find(conn, tenant, sha256))
    }

    /// Every role binding, by id (at most [`MAX_BINDINGS`]).
    pub async fn bindings(&self) -> Result<Vec<RoleBinding>, StoreError> {
        on_conn!(self, |conn| access::list(conn))
    }

    /// One role binding by id.
    pub async fn binding(&self, id: u64) -> Result<Option<RoleBinding>, StoreError> {
        on_conn!(self, |conn| access::get(conn, id))
    }

    /// Makes the config file's bindings exactly `set` (idempotent, one transaction); API bindings are kept.
    pub async fn replace_config_bindings(
        &self,
        set: &[NewBinding],
        now_ms: i64,
    ) -> Result<ConfigBindingsApplied, StoreError> {
        in_tx!(self, "replace_config_bindings", |conn| {
            access::replace_config(conn, set, now_ms)
        })
    }

    /// The newest version of every approval policy of `org` (any scope inside it).
    pub async fn approval_policies(
        &self,
        org: &Org,
    ) -> Result<Vec<StoredApprovalPolicy>, StoreError> {
        on_conn!(self, |conn| approvals::policies(conn, org))
    }

    /// One approval policy version by id.
    pub async fn approval_policy(
        &self,
        id: u64,
    ) -> Result<Option<StoredApprovalPolicy>, StoreError> {
        on_conn!(self, |conn| approvals::policy(conn, id))
    }

    /// The tenant's approval requests, newest first (optionally one state), at most `limit`.
    pub async fn approval_requests(
        &self,
        tenant: &Tenant,
        state: Option<ApprovalState>,
        limit: u32,
    ) -> Result<Vec<StoredApprovalRequest>, StoreError> {
        on_conn!(self, |conn| approvals::requests(conn, tenant, state, limit))
    }

    /// Approval request `id` of `tenant`.
    pub async fn approval_request(
        &self,
        tenant: &Tenant,
        id: u64,
    ) -> Result<Option<StoredApprovalRequest>, StoreError> {
        on_conn!(self, |conn| approvals::request(conn, tenant, id))
    }

    /// The decisions on approval request `id` of `tenant`, in order.
    pub async fn approval_decisions(
        &self,
        tenant: &Tenant,
        id: u64,
    ) -> Result<Vec<StoredApprovalDecision>, StoreError> {
        on_conn!(self, |conn| approvals::decisions(conn, tenant, id))
    }

    /// The agent's approved requests with an id above `after_id` whose tokens are valid at `now_ms` (what its
    /// next fetch delivers), oldest first, at most 100.
    pub async fn deliverable_approvals(
        &self,
        key: &AgentKey,
        after_id: u64,
        now_ms: i64,
    ) -> Result<Vec<StoredApprovalRequest>, StoreError> {
        on_conn!(self, |conn| approvals::deliverable(
            conn, key, after_id, now_ms
        ))
    }
}
