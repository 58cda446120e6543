//! The approvals domain: approval policies (versioned, per org, project or environment), the approval requests
//! agents raise when a Gait verdict is `require_approval`, and each approver's decision on them. The store keeps
//! a policy's rules as JSON it does not read; quorum, group composition and separation of duties are the
//! aggregator's `approval` feature. Portable SQL only.
//!
//! Invariants the SQL holds:
//! - a policy version is never changed: setting a policy adds the next version of its (scope, name); removing
//!   one only marks its newest version removed, so a request can always read the version judging it;
//! - who owns a policy (`source`: the API or the config file's `approvals.policies`) is its newest version's;
//!   [`replace_config_policies`] touches config-owned policies only, besides the ones the file names;
//! - a request is unique on its agent's stream position (tenant, agent, seq), so a redelivered record raises
//!   nothing twice;
//! - a request's state moves once, from `pending` to `approved` or `denied` ([`finish_request`] changes only a
//!   pending row);
//! - one decision per actor and request, so two approvals by one person count once;
//! - [`lock_request`] takes the request's row lock first, so concurrent decisions on one request are judged one
//!   after the other on PostgreSQL too (SQLite's write transaction already serializes them).

use serde::Serialize;

use crate::access::{BindingScope, BindingSource};
use crate::conn::{Conn, db_run};
use crate::error::{StoreError, db};
use crate::model::{
    AgentId, AgentKey, Env, Org, Project, Tenant, check_label, check_text, to_i64, to_u64,
};
use crate::rows::Columns;

/// Largest policy spec stored, in bytes.
pub const MAX_APPROVAL_POLICY_BYTES: usize = 64 * 1024;
/// Largest issued-token document set stored per request, in bytes.
pub const MAX_APPROVAL_TOKENS_BYTES: usize = 256 * 1024;
/// Most requests one listing returns.
pub const MAX_APPROVAL_PAGE: u32 = 1_000;

fn invalid(field: &str, reason: impl Into<String>) -> StoreError {
    StoreError::invalid(field, reason)
}

/// A stored approval policy version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StoredApprovalPolicy {
    /// Row id of this version.
    pub id: u64,
    /// Where it applies (an org, a project or an environment).
    pub scope: BindingScope,
    /// Its name, unique within the scope.
    pub name: String,
    /// 1 for the first version, then one more per change.
    pub version: u64,
    /// The policy as JSON (the approval feature's format).
    pub spec: String,
    /// SHA-256 of `spec`, 64 lowercase hex characters.
    pub digest: String,
    /// The actor who set this version.
    pub created_by: String,
    /// When, in milliseconds since the Unix epoch.
    pub created_unix_ms: i64,
    /// Who owns it: `api` (the API and CLI) or `config` (the config file's `approvals.policies`).
    pub source: BindingSource,
    /// When this version was removed (then no longer listed nor judging new requests); `None` while in force.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub removed_unix_ms: Option<i64>,
}

/// A policy version to add.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewApprovalPolicy {
    /// Where it applies; must name an org.
    pub scope: BindingScope,
    /// Its name within the scope (a label).
    pub name: String,
    /// The policy as JSON.
    pub spec: String,
    /// SHA-256 of `spec`.
    pub digest: String,
}

/// Where a request stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalState {
    /// Waiting for decisions (unless it expired).
    Pending,
    /// The rules were met and tokens issued.
    Approved,
    /// An approver denied it.
    Denied,
}

impl ApprovalState {
    /// Stable name (stored, shown).
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalState::Pending => "pending",
            ApprovalState::Approved => "approved",
            ApprovalState::Denied => "denied",
        }
    }

    pub(crate) fn parse(s: &str) -> Result<Self, StoreError> {
        match s {
            "pending" => Ok(ApprovalState::Pending),
            "approved" => Ok(ApprovalState::Approved),
            "denied" => Ok(ApprovalState::Denied),
            other => Err(StoreError::corrupt(
                "approval_requests",
                format!("state `{other}`"),
            )),
        }
    }
}

/// An approval request to record (from an agent's `approval.request` record).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewApprovalRequest {
    /// The agent (its tenancy comes from its certificate).
    pub key: AgentKey,
    /// The record's seq in the agent's stream.
    pub seq: u64,
    /// The intent's tool name.
    pub tool: String,
    /// The intent's phase (`plan`, `apply`, …).
    pub phase: String,
    /// Whether any target is destructive.
    pub destructive: bool,
    /// The Gait approval scope the intent requires (`tool:<name>`, …).
    pub scope: Vec<String>,
    /// Gait intent digest (64 lowercase hex).
    pub intent_digest: String,
    /// Gait policy digest (64 lowercase hex).
    pub policy_digest: String,
    /// Who asked for the intent, as the agent knows them.
    pub requested_by: String,
    /// The trace of the decision.
    pub trace_id: String,
    /// When the agent made the request (its clock).
    pub created_unix_ms: i64,
    /// When it can no longer be approved.
    pub expires_unix_ms: i64,
    /// The approval policy version it is judged under (`None`: the default rules).
    pub approval_policy_id: Option<u64>,
}

/// A stored approval request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StoredApprovalRequest {
    /// Row id.
    pub id: u64,
    /// The agent's tenancy.
    pub tenant: Tenant,
    /// The agent.
    pub agent_id: AgentId,
    /// The record's seq.
    pub seq: u64,
    /// Tool name.
    pub tool: String,
    /// Phase.
    pub phase: String,
    /// Any target destructive.
    pub destructive: bool,
    /// Required Gait approval scope.
    pub scope: Vec<String>,
    /// Gait intent digest.
    pub intent_digest: String,
    /// Gait policy digest.
    pub policy_digest: String,
    /// Who asked, as the agent knows them.
    pub requested_by: String,
    /// Trace id.
    pub trace_id: String,
    /// Made at (agent clock).
    pub created_unix_ms: i64,
    /// Received at.
    pub received_unix_ms: i64,
    /// Cannot be approved from then on.
    pub expires_unix_ms: i64,
    /// The approval policy version judging it.
    pub approval_policy_id: Option<u64>,
    /// Pending, approved or denied.
    pub state: ApprovalState,
    /// Last change.
    pub updated_unix_ms: i64,
    /// Issued tokens (JSON array of Gait approval token documents), empty until approved.
    #[serde(skip)]
    pub tokens: String,
    /// When the issued tokens expire.
    pub token_expires_unix_ms: Option<i64>,
}

/// Approve or deny.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalVote {
    /// Counts towards the quorum.
    Approve,
    /// Ends the request.
    Deny,
}

impl ApprovalVote {
    /// Stable name (stored, shown).
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalVote::Approve => "approve",
            ApprovalVote::Deny => "deny",
        }
    }

    fn parse(s: &str) -> Result<Self, StoreError> {
        match s {
            "approve" => Ok(ApprovalVote::Approve),
            "deny" => Ok(ApprovalVote::Deny),
            other => Err(StoreError::corrupt(
                "approval_decisions",
                format!("decision `{other}`"),
            )),
        }
    }
}

/// One approver's decision to record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewApprovalDecision {
    /// Who decided (`oidc:<issuer>#<subject>`, `admin-token`).
    pub actor: String,
    /// Their IdP groups at decision time.
    pub groups: Vec<String>,
    /// Approve or deny.
    pub vote: ApprovalVote,
    /// Why (ticket, incident).
    pub reason: String,
}

/// A stored decision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StoredApprovalDecision {
    /// Row id.
    pub id: u64,
    /// The request decided.
    pub request_id: u64,
    /// Who.
    pub actor: String,
    /// Their groups then.
    pub groups: Vec<String>,
    /// Approve or deny.
    pub vote: ApprovalVote,
    /// Why.
    pub reason: String,
    /// When.
    pub created_unix_ms: i64,
}

fn scope_columns(scope: &BindingScope) -> Result<(&str, &str, &str), StoreError> {
    let org = scope
        .org_part()
        .ok_or_else(|| invalid("approval_policy.scope", "must name an org"))?;
    Ok((
        org.as_str(),
        scope.project_part().map_or("", |p| p.as_str()),
        scope.env_part().map_or("", |e| e.as_str()),
    ))
}

fn scope_from_columns(
    org: String,
    project: String,
    env: String,
) -> Result<BindingScope, StoreError> {
    const T: &str = "approval_policies";
    let corrupt = |e: gait_identity::IdError| StoreError::corrupt(T, e.to_string());
    let org = Org::try_from(org).map_err(corrupt)?;
    let project = match project.as_str() {
        "" => None,
        _ => Some(Project::try_from(project).map_err(corrupt)?),
    };
    let env = match env.as_str() {
        "" => None,
        _ => Some(Env::try_from(env).map_err(corrupt)?),
    };
    BindingScope::from_parts(Some(org), project, env)
        .ok_or_else(|| StoreError::corrupt(T, "an env without its project"))
}

fn json_list(table: &'static str, text: &str) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::corrupt(table, format!("list column: {e}")))
}

fn to_json_list(list: &[String]) -> String {
    serde_json::Value::from(list.to_vec()).to_string()
}

macro_rules! select_policies {
    () => {
        "SELECT id, org, project, env, name, version, spec, digest, created_by, created_unix_ms, source, \
         removed_unix_ms FROM approval_policies"
    };
}

fn policy_row(row: &impl Columns) -> Result<StoredApprovalPolicy, StoreError> {
    const T: &str = "approval_policies";
    Ok(StoredApprovalPolicy {
        id: to_u64(T, "id", row.int("id")?)?,
        scope: scope_from_columns(row.text("org")?, row.text("project")?, row.text("env")?)?,
        name: row.text("name")?,
        version: to_u64(T, "version", row.int("version")?)?,
        spec: row.text("spec")?,
        digest: row.text("digest")?,
        created_by: row.text("created_by")?,
        created_unix_ms: row.int("created_unix_ms")?,
        source: match row.text("source")?.as_str() {
            "api" => BindingSource::Api,
            "config" => BindingSource::Config,
            other => return Err(StoreError::corrupt(T, format!("source `{other}`"))),
        },
        removed_unix_ms: row.opt_int("removed_unix_ms")?,
    })
}

/// Adds the next version of `policy` owned by the API (version 1 when its scope has no policy of that name).
pub(crate) async fn put_policy(
    conn: Conn<'_>,
    policy: &NewApprovalPolicy,
    created_by: &str,
    now_ms: i64,
) -> Result<StoredApprovalPolicy, StoreError> {
    put_versioned(conn, policy, BindingSource::Api, created_by, now_ms, None)
        .await?
        .ok_or_else(|| {
            invalid(
                "approval_policy.version",
                "another writer set this policy at the same moment; set it again",
            )
        })
}

/// Adds `policy` owned by `source` as `version` (default: the next one). `None` when that version exists
/// already: a concurrent writer added it first (the unique index decides; nothing is written).
async fn put_versioned(
    mut conn: Conn<'_>,
    policy: &NewApprovalPolicy,
    source: BindingSource,
    created_by: &str,
    now_ms: i64,
    version: Option<u64>,
) -> Result<Option<StoredApprovalPolicy>, StoreError> {
    const NEXT: &str = "SELECT COALESCE(MAX(version), 0) AS v FROM approval_policies \
         WHERE org = $1 AND project = $2 AND env = $3 AND name = $4";
    const INSERT: &str = "INSERT INTO approval_policies (org, project, env, name, version, spec, digest, created_by, \
         created_unix_ms, source) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
         ON CONFLICT (org, project, env, name, version) DO NOTHING RETURNING id, org, project, env, \
         name, version, spec, digest, created_by, created_unix_ms, source, removed_unix_ms";
    let (org, project, env) = scope_columns(&policy.scope)?;
    check_label("approval_policy.name", &policy.name)?;
    if policy.spec.len() > MAX_APPROVAL_POLICY_BYTES {
        return Err(invalid(
            "approval_policy.spec",
            format!(
                "is {} bytes, the limit is {MAX_APPROVAL_POLICY_BYTES}",
                policy.spec.len()
            ),
        ));
    }
    crate::model::check_digest("approval_policy.digest", &policy.digest)?;
    check_text(
        "approval_policy.created_by",
        created_by,
        crate::model::MAX_TEXT_BYTES,
    )?;
    let version = match version {
        Some(v) => to_i64("approval_policy.version", v)?,
        None => {
            let current: i64 = db_run!(conn, |c| sqlx::query(NEXT)
                .bind(org)
                .bind(project)
                .bind(env)
                .bind(policy.name.as_str())
                .fetch_one(&mut *c)
                .await
                .map_err(db("put_approval_policy: version"))
                .and_then(|row| row.int("v")))?;
            current + 1
        }
    };
    db_run!(conn, |c| sqlx::query(INSERT)
        .bind(org)
        .bind(project)
        .bind(env)
        .bind(policy.name.as_str())
        .bind(version)
        .bind(policy.spec.as_str())
        .bind(policy.digest.as_str())
        .bind(created_by)
        .bind(now_ms)
        .bind(source.as_str())
        .fetch_optional(&mut *c)
        .await
        .map_err(db("put_approval_policy"))?
        .as_ref()
        .map(policy_row)
        .transpose())
}

/// The newest version of every policy of `org` (at any scope inside it) that is not removed, by scope and name.
pub(crate) async fn policies(
    mut conn: Conn<'_>,
    org: &Org,
) -> Result<Vec<StoredApprovalPolicy>, StoreError> {
    const SQL: &str = concat!(
        select_policies!(),
        " p WHERE org = $1 AND removed_unix_ms IS NULL AND version = (SELECT MAX(version) FROM approval_policies q \
         WHERE q.org = p.org AND q.project = p.project AND q.env = p.env AND q.name = p.name) \
         ORDER BY project, env, name LIMIT 10000"
    );
    db_run!(conn, |c| {
        let rows = sqlx::query(SQL)
            .bind(org.as_str())
            .fetch_all(&mut *c)
            .await
            .map_err(db("approval_policies"))?;
        rows.iter().map(policy_row).collect()
    })
}

/// One policy version by id.
pub(crate) async fn policy(
    mut conn: Conn<'_>,
    id: u64,
) -> Result<Option<StoredApprovalPolicy>, StoreError> {
    const SQL: &str = concat!(select_policies!(), " WHERE id = $1");
    let id = to_i64("approval_policy.id", id)?;
    db_run!(conn, |c| sqlx::query(SQL)
        .bind(id)
        .fetch_optional(&mut *c)
        .await
        .map_err(db("approval_policy"))?
        .as_ref()
        .map(policy_row)
        .transpose())
}

/// The version of policy `name` at `scope` in force: its newest, unless that one is removed.
pub(crate) async fn current_policy(
    conn: Conn<'_>,
    scope: &BindingScope,
    name: &str,
) -> Result<Option<StoredApprovalPolicy>, StoreError> {
    Ok(newest_policy(conn, scope, name)
        .await?
        .filter(|p| p.removed_unix_ms.is_none()))
}

/// Removes policy `name` at `scope` (marks its newest version removed); returns it, or `None` when no such
/// policy is in force.
pub(crate) async fn remove_policy(
    mut conn: Conn<'_>,
    scope: &BindingScope,
    name: &str,
    now_ms: i64,
) -> Result<Option<StoredApprovalPolicy>, StoreError> {
    let Some(current) = current_policy(conn.reborrow(), scope, name).await? else {
        return Ok(None);
    };
    remove_version(conn, &current, now_ms).await
}

/// The newest version of policy `name` at `scope`, removed or not.
async fn newest_policy(
    mut conn: Conn<'_>,
    scope: &BindingScope,
    name: &str,
) -> Result<Option<StoredApprovalPolicy>, StoreError> {
    const SQL: &str = concat!(
        select_policies!(),
        " WHERE org = $1 AND project = $2 AND env = $3 AND name = $4 ORDER BY version DESC LIMIT 1"
    );
    let (org, project, env) = scope_columns(scope)?;
    db_run!(conn, |c| sqlx::query(SQL)
        .bind(org)
        .bind(project)
        .bind(env)
        .bind(name)
        .fetch_optional(&mut *c)
        .await
        .map_err(db("current_approval_policy"))?
        .as_ref()
        .map(policy_row)
        .transpose())
}

/// The config-owned policies in force, in every org, by org, scope and name.
async fn config_policies(mut conn: Conn<'_>) -> Result<Vec<StoredApprovalPolicy>, StoreError> {
    const SQL: &str = concat!(
        select_policies!(),
        " p WHERE source = 'config' AND removed_unix_ms IS NULL AND version = (SELECT MAX(version) \
         FROM approval_policies q WHERE q.org = p.org AND q.project = p.project AND q.env = p.env \
         AND q.name = p.name) ORDER BY org, project, env, name"
    );
    db_run!(conn, |c| {
        let rows = sqlx::query(SQL)
            .fetch_all(&mut *c)
            .await
            .map_err(db("config_approval_policies"))?;
        rows.iter().map(policy_row).collect()
    })
}

/// Marks `policy` (a policy's newest version) removed at `now_ms`; returns it as removed, or `None` when a
/// concurrent writer removed it first.
async fn remove_version(
    mut conn: Conn<'_>,
    policy: &StoredApprovalPolicy,
    now_ms: i64,
) -> Result<Option<StoredApprovalPolicy>, StoreError> {
    const SQL: &str = "UPDATE approval_policies SET removed_unix_ms = $1 WHERE id = $2 AND removed_unix_ms IS NULL";
    let id = to_i64("approval_policy.id", policy.id)?;
    let removed = db_run!(conn, |c| sqlx::query(SQL)
        .bind(now_ms)
        .bind(id)
        .execute(&mut *c)
        .await
        .map_err(db("remove_approval_policy"))?
        .rows_affected());
    Ok((removed == 1).then(|| StoredApprovalPolicy {
        removed_unix_ms: Some(now_ms),
        ..policy.clone()
    }))
}

/// What [`crate::StoreTx::replace_config_approval_policies`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ConfigPoliciesApplied {
    /// Policies of the set that were not in force before (first version, or the next one of a removed policy).
    pub added: Vec<StoredApprovalPolicy>,
    /// Policies in force whose rules (or owner: an API policy the file now names) changed, as (before, after).
    pub replaced: Vec<(StoredApprovalPolicy, StoredApprovalPolicy)>,
    /// Config policies in force before that the set no longer names (marked removed).
    pub removed: Vec<StoredApprovalPolicy>,
}

impl ConfigPoliciesApplied {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.replaced.is_empty() && self.removed.is_empty()
    }
}

/// Makes the config-owned policies in force exactly `set` (idempotent; unique on scope and name): a config
/// policy the set no longer names is removed; a named one whose digest differs, or which the API owns, gets the
/// next version owned by the config; an identical one is left alone. Run inside a transaction.
pub(crate) async fn replace_config_policies(
    mut conn: Conn<'_>,
    set: &[NewApprovalPolicy],
    now_ms: i64,
) -> Result<ConfigPoliciesApplied, StoreError> {
    let mut wanted = std::collections::HashSet::new();
    for policy in set {
        scope_columns(&policy.scope)?;
        if !wanted.insert((&policy.scope, policy.name.as_str())) {
            return Err(invalid(
                "approval_policy.name",
                format!(
                    "`{}` is named twice at {}; a scope's policies need distinct names",
                    policy.name, policy.scope
                ),
            ));
        }
    }
    let mut applied = ConfigPoliciesApplied::default();
    for stored in config_policies(conn.reborrow()).await? {
        if !wanted.contains(&(&stored.scope, stored.name.as_str()))
            && let Some(removed) = remove_version(conn.reborrow(), &stored, now_ms).await?
        {
            applied.removed.push(removed);
        }
    }
    for policy in set {
        let newest = newest_policy(conn.reborrow(), &policy.scope, &policy.name).await?;
        let version = newest.as_ref().map_or(1, |n| n.version + 1);
        let current = newest.filter(|n| n.removed_unix_ms.is_none());
        let same = |p: &StoredApprovalPolicy| {
            p.source == BindingSource::Config && p.digest == policy.digest
        };
        if current.as_ref().is_some_and(same) {
            continue;
        }
        // Another aggregator on this database may be applying the same file right now: the version is fixed
        // before the insert, so of two replicas adding it one writes and the other finds it written.
        let Some(next) = put_versioned(
            conn.reborrow(),
            policy,
            BindingSource::Config,
            "config",
            now_ms,
            Some(version),
        )
        .await?
        else {
            let theirs = newest_policy(conn.reborrow(), &policy.scope, &policy.name).await?;
            if theirs.as_ref().is_some_and(same) {
                continue;
            }
            return Err(invalid(
                "approval_policy.version",
                format!(
                    "`{}` at {} was changed by another writer while the config file was applied; start again",
                    policy.name, policy.scope
                ),
            ));
        };
        match current {
            Some(before) => applied.replaced.push((before, next)),
            None => applied.added.push(next),
        }
    }
    Ok(applied)
}

macro_rules! request_columns {
    () => {
        "id, org, project, env, agent_id, seq, tool, phase, destructive, scope, intent_digest, policy_digest, \
         requested_by, trace_id, created_unix_ms, received_unix_ms, expires_unix_ms, approval_policy_id, state, \
         updated_unix_ms, tokens, token_expires_unix_ms"
    };
}

fn request_row(row: &impl Columns) -> Result<StoredApprovalRequest, StoreError> {
    const T: &str = "approval_requests";
    let corrupt = |e: gait_identity::IdError| StoreError::corrupt(T, e.to_string());
    let tenant = Tenant::new(
        Org::try_from(row.text("org")?).map_err(corrupt)?,
        Project::try_from(row.text("project")?).map_err(corrupt)?,
        Env::try_from(row.text("env")?).map_err(corrupt)?,
    );
    Ok(StoredApprovalRequest {
        id: to_u64(T, "id", row.int("id")?)?,
        tenant,
        agent_id: AgentId::try_from(row.text("agent_id")?).map_err(corrupt)?,
        seq: to_u64(T, "seq", row.int("seq")?)?,
        tool: row.text("tool")?,
        phase: row.text("phase")?,
        destructive: row.int("destructive")? != 0,
        scope: json_list(T, &row.text("scope")?)?,
        intent_digest: row.text("intent_digest")?,
        policy_digest: row.text("policy_digest")?,
        requested_by: row.text("requested_by")?,
        trace_id: row.text("trace_id")?,
        created_unix_ms: row.int("created_unix_ms")?,
        received_unix_ms: row.int("received_unix_ms")?,
        expires_unix_ms: row.int("expires_unix_ms")?,
        approval_policy_id: row
            .opt_int("approval_policy_id")?
            .map(|v| to_u64(T, "approval_policy_id", v))
            .transpose()?,
        state: ApprovalState::parse(&row.text("state")?)?,
        updated_unix_ms: row.int("updated_unix_ms")?,
        tokens: row.text("tokens")?,
        token_expires_unix_ms: row.opt_int("token_expires_unix_ms")?,
    })
}

impl NewApprovalRequest {
    fn validate(&self) -> Result<(), StoreError> {
        check_text(
            "approval_request.tool",
            &self.tool,
            crate::model::MAX_TEXT_BYTES,
        )?;
        if self.tool.is_empty() {
            return Err(invalid("approval_request.tool", "must not be empty"));
        }
        check_text(
            "approval_request.phase",
            &self.phase,
            crate::model::MAX_LABEL_BYTES,
        )?;
        crate::model::check_digest("approval_request.intent_digest", &self.intent_digest)?;
        crate::model::check_digest("approval_request.policy_digest", &self.policy_digest)?;
        if self.scope.is_empty() || self.scope.len() > 64 {
            return Err(invalid(
                "approval_request.scope",
                "must list 1 to 64 entries",
            ));
        }
        for s in &self.scope {
            check_text("approval_request.scope", s, crate::model::MAX_TEXT_BYTES)?;
        }
        check_text(
            "approval_request.requested_by",
            &self.requested_by,
            crate::model::MAX_TEXT_BYTES,
        )?;
        check_text(
            "approval_request.trace_id",
            &self.trace_id,
            crate::model::MAX_LABEL_BYTES,
        )?;
        to_i64("approval_request.seq", self.seq)?;
        Ok(())
    }
}

/// Records `request` (pending) unless its agent's seq already raised one; returns the stored row and whether
/// it was inserted now.
pub(crate) async fn insert_request(
    mut conn: Conn<'_>,
    request: &NewApprovalRequest,
    now_ms: i64,
) -> Result<(StoredApprovalRequest, bool), StoreError> {
    const INSERT: &str = "INSERT INTO approval_requests (org, project, env, agent_id, seq, tool, phase, \
         destructive, scope, intent_digest, policy_digest, requested_by, trace_id, created_unix_ms, \
         received_unix_ms, expires_unix_ms, approval_policy_id, state, updated_unix_ms) VALUES ($1, $2, $3, $4, \
         $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, 'pending', $15) \
         ON CONFLICT (org, project, env, agent_id, seq) DO NOTHING";
    const READ: &str = concat!(
        "SELECT ",
        request_columns!(),
        " FROM approval_requests WHERE org = $1 AND project = $2 AND env = $3 AND agent_id = $4 AND seq = $5"
    );
    request.validate()?;
    let t = &request.key.tenant;
    let seq = to_i64("approval_request.seq", request.seq)?;
    let policy_id = request
        .approval_policy_id
        .map(|id| to_i64("approval_request.approval_policy_id", id))
        .transpose()?;
    let scope = to_json_list(&request.scope);
    let inserted = db_run!(conn, |c| sqlx::query(INSERT)
        .bind(t.org.as_str())
        .bind(t.project.as_str())
        .bind(t.env.as_str())
        .bind(request.key.agent_id.as_str())
        .bind(seq)
        .bind(request.tool.as_str())
        .bind(request.phase.as_str())
        .bind(i64::from(request.destructive))
        .bind(scope.as_str())
        .bind(request.intent_digest.as_str())
        .bind(request.policy_digest.as_str())
        .bind(request.requested_by.as_str())
        .bind(request.trace_id.as_str())
        .bind(request.created_unix_ms)
        .bind(now_ms)
        .bind(request.expires_unix_ms)
        .bind(policy_id)
        .execute(&mut *c)
        .await
        .map_err(db("insert_approval_request"))?
        .rows_affected())
        == 1;
    let stored = db_run!(conn, |c| sqlx::query(READ)
        .bind(t.org.as_str())
        .bind(t.project.as_str())
        .bind(t.env.as_str())
        .bind(request.key.agent_id.as_str())
        .bind(seq)
        .fetch_one(&mut *c)
        .await
        .map_err(db("insert_approval_request: read back"))
        .and_then(|row| request_row(&row)))?;
    Ok((stored, inserted))
}

/// The tenant's requests, newest first, optionally only those in `state`, at most `limit`
/// ([`MAX_APPROVAL_PAGE`]).
pub(crate) async fn requests(
    mut conn: Conn<'_>,
    tenant: &Tenant,
    state: Option<ApprovalState>,
    limit: u32,
) -> Result<Vec<StoredApprovalRequest>, StoreError> {
    const SQL: &str = concat!(
        "SELECT ",
        request_columns!(),
        " FROM approval_requests WHERE org = $1 AND project = $2 AND env = $3 \
         AND ($4 = '' OR state = $4) ORDER BY id DESC LIMIT $5"
    );
    let limit = i64::from(limit.clamp(1, MAX_APPROVAL_PAGE));
    let state = state.map_or("", ApprovalState::as_str);
    db_run!(conn, |c| {
        let rows = sqlx::query(SQL)
            .bind(tenant.org.as_str())
            .bind(tenant.project.as_str())
            .bind(tenant.env.as_str())
            .bind(state)
            .bind(limit)
            .fetch_all(&mut *c)
            .await
            .map_err(db("approval_requests"))?;
        rows.iter().map(request_row).collect()
    })
}

/// Request `id` of `tenant` (another tenant's request is not found).
pub(crate) async fn request(
    mut conn: Conn<'_>,
    tenant: &Tenant,
    id: u64,
) -> Result<Option<StoredApprovalRequest>, StoreError> {
    const SQL: &str = concat!(
        "SELECT ",
        request_columns!(),
        " FROM approval_requests WHERE id = $1 AND org = $2 AND project = $3 AND env = $4"
    );
    let id = to_i64("approval_request.id", id)?;
    db_run!(conn, |c| sqlx::query(SQL)
        .bind(id)
        .bind(tenant.org.as_str())
        .bind(tenant.project.as_str())
        .bind(tenant.env.as_str())
        .fetch_optional(&mut *c)
        .await
        .map_err(db("approval_request"))?
        .as_ref()
        .map(request_row)
        .transpose())
}

/// Takes request `id`'s row lock (held until the transaction ends) and returns the row; run first in the
/// transaction deciding it.
pub(crate) async fn lock_request(
    mut conn: Conn<'_>,
    tenant: &Tenant,
    id: u64,
    now_ms: i64,
) -> Result<Option<StoredApprovalRequest>, StoreError> {
    const TOUCH: &str = "UPDATE approval_requests SET updated_unix_ms = $1 \
         WHERE id = $2 AND org = $3 AND project = $4 AND env = $5";
    let rid = to_i64("approval_request.id", id)?;
    db_run!(conn, |c| sqlx::query(TOUCH)
        .bind(now_ms)
        .bind(rid)
        .bind(tenant.org.as_str())
        .bind(tenant.project.as_str())
        .bind(tenant.env.as_str())
        .execute(&mut *c)
        .await
        .map_err(db("lock_approval_request"))?
        .rows_affected());
    request(conn, tenant, id).await
}

/// Records `decision` on request `request_id` of `tenant`; `false` when this actor already decided it (the
/// first decision stands).
pub(crate) async fn insert_decision(
    mut conn: Conn<'_>,
    tenant: &Tenant,
    request_id: u64,
    decision: &NewApprovalDecision,
    now_ms: i64,
) -> Result<bool, StoreError> {
    const INSERT: &str = "INSERT INTO approval_decisions (request_id, org, project, env, actor, groups, \
         decision, reason, created_unix_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         ON CONFLICT (request_id, actor) DO NOTHING";
    check_text(
        "approval_decision.actor",
        &decision.actor,
        crate::model::MAX_TEXT_BYTES,
    )?;
    if decision.actor.is_empty() {
        return Err(invalid("approval_decision.actor", "must not be empty"));
    }
    check_text(
        "approval_decision.reason",
        &decision.reason,
        crate::model::MAX_TEXT_BYTES,
    )?;
    if decision.groups.len() > 1000 {
        return Err(invalid("approval_decision.groups", "more than 1000 groups"));
    }
    let rid = to_i64("approval_request.id", request_id)?;
    let groups = to_json_list(&decision.groups);
    Ok(db_run!(conn, |c| sqlx::query(INSERT)
        .bind(rid)
        .bind(tenant.org.as_str())
        .bind(tenant.project.as_str())
        .bind(tenant.env.as_str())
        .bind(decision.actor.as_str())
        .bind(groups.as_str())
        .bind(decision.vote.as_str())
        .bind(decision.reason.as_str())
        .bind(now_ms)
        .execute(&mut *c)
        .await
        .map_err(db("insert_approval_decision"))?
        .rows_affected())
        == 1)
}

/// Every decision on request `request_id` of `tenant`, in the order they were made.
pub(crate) async fn decisions(
    mut conn: Conn<'_>,
    tenant: &Tenant,
    request_id: u64,
) -> Result<Vec<StoredApprovalDecision>, StoreError> {
    const SQL: &str = "SELECT id, request_id, actor, groups, decision, reason, created_unix_ms \
         FROM approval_decisions WHERE request_id = $1 AND org = $2 AND project = $3 AND env = $4 \
         ORDER BY id LIMIT 10000";
    const T: &str = "approval_decisions";
    let rid = to_i64("approval_request.id", request_id)?;
    db_run!(conn, |c| {
        let rows = sqlx::query(SQL)
            .bind(rid)
            .bind(tenant.org.as_str())
            .bind(tenant.project.as_str())
            .bind(tenant.env.as_str())
            .fetch_all(&mut *c)
            .await
            .map_err(db("approval_decisions"))?;
        rows.iter()
            .map(|row| {
                Ok(StoredApprovalDecision {
                    id: to_u64(T, "id", row.int("id")?)?,
                    request_id: to_u64(T, "request_id", row.int("request_id")?)?,
                    actor: row.text("actor")?,
                    groups: json_list(T, &row.text("groups")?)?,
                    vote: ApprovalVote::parse(&row.text("decision")?)?,
                    reason: row.text("reason")?,
                    created_unix_ms: row.int("created_unix_ms")?,
                })
            })
            .collect()
    })
}

/// Moves pending request `id` of `tenant` to `state` with the issued `tokens`; `false` when it was not pending.
pub(crate) async fn finish_request(
    mut conn: Conn<'_>,
    tenant: &Tenant,
    id: u64,
    state: ApprovalState,
    tokens: &str,
    token_expires_unix_ms: Option<i64>,
    now_ms: i64,
) -> Result<bool, StoreError> {
    const SQL: &str = "UPDATE approval_requests SET state = $1, tokens = $2, token_expires_unix_ms = $3, \
         updated_unix_ms = $4 WHERE id = $5 AND org = $6 AND project = $7 AND env = $8 AND state = 'pending'";
    if state == ApprovalState::Pending {
        return Err(invalid(
            "approval_request.state",
            "a request cannot move back to pending",
        ));
    }
    if tokens.len() > MAX_APPROVAL_TOKENS_BYTES {
        return Err(invalid(
            "approval_request.tokens",
            format!(
                "is {} bytes, the limit is {MAX_APPROVAL_TOKENS_BYTES}",
                tokens.len()
            ),
        ));
    }
    let rid = to_i64("approval_request.id", id)?;
    Ok(db_run!(conn, |c| sqlx::query(SQL)
        .bind(state.as_str())
        .bind(tokens)
        .bind(token_expires_unix_ms)
        .bind(now_ms)
        .bind(rid)
        .bind(tenant.org.as_str())
        .bind(tenant.project.as_str())
        .bind(tenant.env.as_str())
        .execute(&mut *c)
        .await
        .map_err(db("finish_approval_request"))?
        .rows_affected())
        == 1)
}

/// The agent's approved requests with an id above `after_id` whose tokens are still valid at `now_ms` (what its
/// next fetch delivers), oldest first, at most 100.
pub(crate) async fn deliverable(
    mut conn: Conn<'_>,
    key: &AgentKey,
    after_id: u64,
    now_ms: i64,
) -> Result<Vec<StoredApprovalRequest>, StoreError> {
    const SQL: &str = concat!(
        "SELECT ",
        request_columns!(),
        " FROM approval_requests WHERE org = $1 AND project = $2 AND env = $3 AND agent_id = $4 \
         AND state = 'approved' AND token_expires_unix_ms > $5 AND id > $6 ORDER BY id LIMIT 100"
    );
    let t = &key.tenant;
    let after_id = to_i64("approval_request.after_id", after_id)?;
    db_run!(conn, |c| {
        let rows = sqlx::query(SQL)
            .bind(t.org.as_str())
            .bind(t.project.as_str())
            .bind(t.env.as_str())
            .bind(key.agent_id.as_str())
            .bind(now_ms)
            .bind(after_id)
            .fetch_all(&mut *c)
            .await
            .map_err(db("deliverable_approvals"))?;
        rows.iter().map(request_row).collect()
    })
}
