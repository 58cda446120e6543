//! [`StoreTx`]: several store operations committed atomically, e.g. an operation and its audit entry.
//!
//! A transaction holds one connection until it ends. On SQLite it is a write transaction (`BEGIN IMMEDIATE`)
//! and holds the database's single write lock for its whole life, so other writers wait (up to the busy
//! timeout) until it commits or rolls back: keep transactions short and never await anything slow inside one.
//! On PostgreSQL the operations take their row and advisory locks as they run and keep them until the end.
//! Dropping a `StoreTx` without [`StoreTx::commit`] rolls it back.

use crate::approvals::{
    ApprovalState, NewApprovalDecision, NewApprovalPolicy, NewApprovalRequest,
    StoredApprovalDecision, StoredApprovalPolicy, StoredApprovalRequest,
};
use crate::conn::Tx;
use crate::error::StoreError;
use crate::model::{
    AgentCursor, AgentFilter, AgentHello, AgentKey, AgentRow, BatchOutcome, BundleReportRow,
    GapRow, NewRecord, Revocation, StoredBundle, StoredRecord, Tenant,
};
use crate::{agents, approvals, audit, bundles, records, revocations};

/// An open transaction on the store; see the module docs. Start one with [`crate::Store::begin`] or
/// [`crate::Store::transaction`]. Its operations check their input exactly as the [`crate::Store`] methods of the
/// same name do, and see the transaction's own earlier writes.
#[derive(Debug)]
pub struct StoreTx {
    tx: Tx,
}

impl StoreTx {
    pub(crate) fn new(tx: Tx) -> Self {
        Self { tx }
    }

    /// The transaction's connection, for domain modules that keep their `StoreTx` methods beside their SQL.
    pub(crate) fn conn(&mut self) -> crate::conn::Conn<'_> {
        self.tx.conn()
    }

    /// Makes every write of the transaction durable and visible to others.
    pub async fn commit(self) -> Result<(), StoreError> {
        self.tx.commit("commit").await
    }

    /// Discards every write of the transaction (as dropping it does, but waits for the database to confirm).
    pub async fn rollback(self) -> Result<(), StoreError> {
        self.tx.rollback("rollback").await
    }

    /// See [`crate::Store::agents_connected`]; inside a transaction an invalid hello still fails alone.
    pub async fn agents_connected(
        &mut self,
        hellos: &[(&AgentKey, &AgentHello)],
        now_ms: i64,
    ) -> Result<Vec<Result<AgentCursor, StoreError>>, StoreError> {
        agents::connected(self.tx.conn(), hellos, now_ms).await
    }

    /// See [`crate::Store::agent_connected`].
    pub async fn agent_connected(
        &mut self,
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

    /// See [`crate::Store::agents_seen`].
    pub async fn agents_seen(
        &mut self,
        keys: &[&AgentKey],
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        agents::seen(self.tx.conn(), keys, now_ms).await
    }

    /// See [`crate::Store::agent_seen`].
    pub async fn agent_seen(&mut self, key: &AgentKey, now_ms: i64) -> Result<(), StoreError> {
        if self.agents_seen(&[key], now_ms).await? > 0 {
            Ok(())
        } else {
            Err(StoreError::UnknownAgent {
                agent: key.to_string(),
            })
        }
    }

    /// See [`crate::Store::record_bundle_report`].
    pub async fn record_bundle_report(
        &mut self,
        key: &AgentKey,
        report: &BundleReportRow,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        agents::bundle_report(self.tx.conn(), key, report, now_ms).await
    }

    /// Creates the row of an agent known only from its verified certificate, unless it exists (records
    /// carried in on a file by `gait-aggregator ingest-file`); `true` when a row was created.
    pub async fn ensure_agent(
        &mut self,
        key: &AgentKey,
        cert_serial: &crate::model::CertSerial,
        cert_not_after_unix_ms: Option<i64>,
        cert_issuer: &str,
        seen_ms: i64,
    ) -> Result<bool, StoreError> {
        agents::ensure(
            self.tx.conn(),
            key,
            cert_serial,
            cert_not_after_unix_ms,
            cert_issuer,
            seen_ms,
        )
        .await
    }

    /// See [`crate::Store::commit_batch`]; the records are durable only once the transaction commits.
    pub async fn commit_batch(
        &mut self,
        key: &AgentKey,
        records: &[NewRecord],
        now_ms: i64,
    ) -> Result<BatchOutcome, StoreError> {
        records::commit_batch(self.tx.conn(), key, records, &[], now_ms).await
    }

    /// See [`crate::Store::commit_batch_indexed`]; records and index entries are durable only once the
    /// transaction commits.
    pub async fn commit_batch_indexed(
        &mut self,
        key: &AgentKey,
        records: &[NewRecord],
        index: &[crate::NewIndexEntry],
        now_ms: i64,
    ) -> Result<BatchOutcome, StoreError> {
        records::commit_batch(self.tx.conn(), key, records, index, now_ms).await
    }

    /// See [`crate::Store::publish_bundle`]. On PostgreSQL the tenant's publish lock is held until the
    /// transaction ends.
    pub async fn publish_bundle(
        &mut self,
        tenant: &Tenant,
        epoch: u64,
        digest_hex: &str,
        bytes: &[u8],
        created_by: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        bundles::publish(
            self.tx.conn(),
            tenant,
            epoch,
            digest_hex,
            bytes,
            created_by,
            now_ms,
        )
        .await
    }

    /// See [`crate::Store::latest_bundle`].
    pub async fn latest_bundle(
        &mut self,
        tenant: &Tenant,
    ) -> Result<Option<StoredBundle>, StoreError> {
        bundles::latest(self.tx.conn(), tenant).await
    }

    /// See [`crate::Store::list_agents`].
    pub async fn list_agents(&mut self, filter: &AgentFilter) -> Result<Vec<AgentRow>, StoreError> {
        agents::list(self.tx.conn(), filter).await
    }

    /// See [`crate::Store::count_records`].
    pub async fn count_records(&mut self, key: &AgentKey) -> Result<u64, StoreError> {
        records::count(self.tx.conn(), key).await
    }

    /// See [`crate::Store::records`].
    pub async fn records(
        &mut self,
        key: &AgentKey,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        records::page(self.tx.conn(), key, after_seq, limit).await
    }

    /// See [`crate::Store::gaps`].
    pub async fn gaps(&mut self, key: &AgentKey) -> Result<Vec<GapRow>, StoreError> {
        records::gaps(self.tx.conn(), key).await
    }

    /// See [`crate::Store::record_refusal`].
    pub async fn record_refusal(
        &mut self,
        key: &AgentKey,
        seq: u64,
        code: &str,
        message: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        records::refuse(self.tx.conn(), key, seq, code, message, now_ms).await
    }

    /// Grants a role binding (from the API) inside this transaction; an existing identical binding is
    /// returned with `false` and left as it was.
    pub async fn grant_binding(
        &mut self,
        binding: &crate::NewBinding,
        created_by: &str,
        now_ms: i64,
    ) -> Result<(crate::RoleBinding, bool), StoreError> {
        crate::access::grant(
            self.tx.conn(),
            binding,
            crate::BindingSource::Api,
            created_by,
            now_ms,
        )
        .await
    }

    /// Removes role binding `id` inside this transaction; returns it, or `None` when there is none.
    pub async fn revoke_binding(
        &mut self,
        id: u64,
    ) -> Result<Option<crate::RoleBinding>, StoreError> {
        crate::access::revoke(self.tx.conn(), id).await
    }

    /// See [`crate::Store::replace_config_bindings`], inside this transaction.
    pub async fn replace_config_bindings(
        &mut self,
        set: &[crate::NewBinding],
        now_ms: i64,
    ) -> Result<crate::ConfigBindingsApplied, StoreError> {
        crate::access::replace_config(self.tx.conn(), set, now_ms).await
    }

    /// See [`crate::Store::bindings`].
    pub async fn bindings(&mut self) -> Result<Vec<crate::RoleBinding>, StoreError> {
        crate::access::list(self.tx.conn()).await
    }

    /// See [`crate::Store::refusals`].
    pub async fn refusals(
        &mut self,
        key: &AgentKey,
    ) -> Result<Vec<crate::RefusedRecord>, StoreError> {
        records::refusals(self.tx.conn(), key).await
    }

    /// See [`crate::Store::revoke`].
    pub async fn revoke(&mut self, rev: &Revocation, now_ms: i64) -> Result<(), StoreError> {
        revocations::revoke(self.tx.conn(), rev, now_ms).await
    }

    /// See [`crate::Store::revoked_serials`].
    pub async fn revoked_serials(&mut self) -> Result<Vec<crate::CertSerial>, StoreError> {
        revocations::serials(self.tx.conn()).await
    }

    /// See [`crate::Store::revocations`].
    pub async fn revocations(&mut self) -> Result<Vec<crate::StoredRevocation>, StoreError> {
        revocations::list(self.tx.conn()).await
    }

    /// Appends an audit entry in this transaction, so it commits together with the operation it records (or
    /// not at all). Appends are serialised: on PostgreSQL the log's head row stays locked until this
    /// transaction ends, so append last, just before committing.
    pub async fn audit_append(
        &mut self,
        draft: &gait_audit::EntryDraft,
        now_ms: i64,
    ) -> Result<crate::AppendedEntry, StoreError> {
        audit::append(self.tx.conn(), draft, now_ms).await
    }

    /// Adds the next version of an approval policy (version 1 for a new name at its scope).
    pub async fn put_approval_policy(
        &mut self,
        policy: &NewApprovalPolicy,
        created_by: &str,
        now_ms: i64,
    ) -> Result<StoredApprovalPolicy, StoreError> {
        approvals::put_policy(self.tx.conn(), policy, created_by, now_ms).await
    }

    /// The version of approval policy `name` at `scope` in force (its newest, unless removed).
    pub async fn current_approval_policy(
        &mut self,
        scope: &crate::BindingScope,
        name: &str,
    ) -> Result<Option<StoredApprovalPolicy>, StoreError> {
        approvals::current_policy(self.tx.conn(), scope, name).await
    }

    /// Removes approval policy `name` at `scope` (its versions stay readable); `None` when none is in force.
    pub async fn remove_approval_policy(
        &mut self,
        scope: &crate::BindingScope,
        name: &str,
        now_ms: i64,
    ) -> Result<Option<StoredApprovalPolicy>, StoreError> {
        approvals::remove_policy(self.tx.conn(), scope, name, now_ms).await
    }

    /// Makes the config-owned approval policies in force exactly `set` (idempotent); API policies the set does
    /// not name are kept.
    pub async fn replace_config_approval_policies(
        &mut self,
        set: &[NewApprovalPolicy],
        now_ms: i64,
    ) -> Result<crate::ConfigPoliciesApplied, StoreError> {
        approvals::replace_config_policies(self.tx.conn(), set, now_ms).await
    }

    /// See [`crate::Store::approval_policy`].
    pub async fn approval_policy(
        &mut self,
        id: u64,
    ) -> Result<Option<StoredApprovalPolicy>, StoreError> {
        approvals::policy(self.tx.conn(), id).await
    }

    /// Records a pending approval request unless its agent's seq already raised one; returns the stored row
    /// and whether it was inserted now.
    pub async fn insert_approval_request(
        &mut self,
        request: &NewApprovalRequest,
        now_ms: i64,
    ) -> Result<(StoredApprovalRequest, bool), StoreError> {
        approvals::insert_request(self.tx.conn(), request, now_ms).await
    }

    /// Locks approval request `id` of `tenant` until the transaction ends and returns it (`None`: no such
    /// request in that tenant). Call it first when deciding a request.
    pub async fn lock_approval_request(
        &mut self,
        tenant: &Tenant,
        id: u64,
        now_ms: i64,
    ) -> Result<Option<StoredApprovalRequest>, StoreError> {
        approvals::lock_request(self.tx.conn(), tenant, id, now_ms).await
    }

    /// Records one approver's decision; `false` when this actor had already decided the request.
    pub async fn insert_approval_decision(
        &mut self,
        tenant: &Tenant,
        request_id: u64,
        decision: &NewApprovalDecision,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        approvals::insert_decision(self.tx.conn(), tenant, request_id, decision, now_ms).await
    }

    /// See [`crate::Store::approval_decisions`] (sees this transaction's own decisions).
    pub async fn approval_decisions(
        &mut self,
        tenant: &Tenant,
        request_id: u64,
    ) -> Result<Vec<StoredApprovalDecision>, StoreError> {
        approvals::decisions(self.tx.conn(), tenant, request_id).await
    }

    /// Moves a pending request to approved (with its issued tokens) or denied; `false` when it was no longer
    /// pending.
    pub async fn finish_approval_request(
        &mut self,
        tenant: &Tenant,
        id: u64,
        state: ApprovalState,
        tokens: &str,
        token_expires_unix_ms: Option<i64>,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        approvals::finish_request(
            self.tx.conn(),
            tenant,
            id,
            state,
            tokens,
            token_expires_unix_ms,
            now_ms,
        )
        .await
    }
}
