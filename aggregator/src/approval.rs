//! Approval governance: approval policies per scope, the requests agents raise when a Gait verdict is
//! `require_approval`, approvers' decisions, and the Gait approval tokens issued once a request's rules are met.
//!
//! - [`policy`]: what a policy matches and the rules it sets; [`rules`]: the pure judgment (separation of
//!   duties, expiry, quorum, group AND-composition); [`issue`]: the approval signing key and token minting.
//! - A request comes from an agent's `approval.request` record ([`Approvals::requests_from_records`]); its
//!   tenancy is the agent's certificate's. It is judged under the approval policy that covers it when it
//!   arrives (the most specific scope, then the first name), or the default rules (one approver) when none does.
//! - The privileged operations are [`Approvals::set_policy`], [`Approvals::approve`] and [`Approvals::deny`]:
//!   each runs in one store transaction, which also appends its audit entry. [`config::apply_config`] keeps the
//!   config file's `approvals.policies` in force at start (GitOps); the API cannot change those policies.
//! - Decisions on one request are serialized (the request row is locked first), so two concurrent approvals
//!   that together meet the quorum issue the tokens exactly once.

pub mod config;
pub mod issue;
pub mod policy;
pub mod rules;

use gait_artifact::approval::ApprovalToken;
use gait_canon::sign::{PublicKey, SigningKey};
use gait_store::{
    AgentKey, ApprovalState, ApprovalVote, BindingScope, NewApprovalDecision, NewApprovalPolicy,
    NewApprovalRequest, NewRecord, Store, StoreError, StoredApprovalDecision, StoredApprovalPolicy,
    StoredApprovalRequest, Tenant,
};
use gait_wire::{APPROVAL_REQUEST_KIND, ApprovalRequestPayload, DeliveredApproval, TokenDocument};
use serde::Serialize;

use crate::auth::{Authorized, Principal};
use policy::{PolicySpec, SpecError};
use rules::{InForce, RuleViolation, Standing};

/// What went wrong in an approval operation.
#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    /// No such request in the caller's tenancy (another tenant's request is not revealed).
    #[error("no approval request {id} in this environment")]
    NotFound {
        /// The id asked for.
        id: u64,
    },
    /// The rules refuse the decision.
    #[error(transparent)]
    Rule(#[from] RuleViolation),
    /// The policy spec is invalid.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// A field of the request is invalid.
    #[error("{field}: {reason}")]
    Field {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored row cannot be read back.
    #[error("stored approval data is unreadable: {0}")]
    Corrupt(String),
    /// The audit entry of the operation could not be appended (nothing was committed).
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    /// No policy of that name is in force at that scope.
    #[error("no approval policy `{name}` at {scope}")]
    PolicyNotFound {
        /// The scope asked for.
        scope: String,
        /// The name asked for.
        name: String,
    },
    /// The policy comes from the config file (`approvals.policies`); only the file changes it.
    #[error(
        "approval policy `{name}` at {scope} comes from approvals.policies in the config file; change it there and \
         restart the aggregator"
    )]
    ConfigOwned {
        /// The policy's scope.
        scope: String,
        /// Its name.
        name: String,
    },
}

/// Appends the audit entry of an approval operation in `tx` (the operation's own transaction).
async fn audit(
    tx: &mut gait_store::StoreTx,
    actor: &str,
    action: &str,
    target: gait_audit::Target,
    after: Option<String>,
    details: serde_json::Map<String, serde_json::Value>,
) -> Result<(), ApprovalError> {
    audit_change(tx, actor, action, target, None, after, details).await
}

/// [`audit`] with the digest of the state before the change.
async fn audit_change(
    tx: &mut gait_store::StoreTx,
    actor: &str,
    action: &str,
    target: gait_audit::Target,
    before: Option<String>,
    after: Option<String>,
    details: serde_json::Map<String, serde_json::Value>,
) -> Result<(), ApprovalError> {
    let draft = gait_audit::EntryDraft {
        actor: actor.to_owned(),
        action: action.to_owned(),
        target,
        before,
        after,
        details: Some(details),
    };
    crate::audit::append_draft(tx, draft).await?;
    Ok(())
}

fn request_target(tenant: &Tenant, id: u64) -> gait_audit::Target {
    crate::audit::tenant_target(tenant, "approval_request", id.to_string())
}

impl ApprovalError {
    /// Whether separation of duties refused the caller (as opposed to the request's state).
    pub fn is_forbidden(&self) -> bool {
        matches!(
            self,
            ApprovalError::Rule(RuleViolation::Requester { .. } | RuleViolation::Author { .. })
        )
    }
}

/// A request as shown to approvers: the stored row, whether it expired, its decisions and what it still needs.
#[derive(Clone, Debug, Serialize)]
pub struct RequestView {
    /// The stored request.
    #[serde(flatten)]
    pub request: StoredApprovalRequest,
    /// `pending`, `approved`, `denied` or `expired` (a pending request past its expiry).
    pub status: &'static str,
    /// The approval policy judging it (`null`: the default rules).
    pub approval_policy: Option<PolicyRef>,
    /// The decisions so far.
    pub decisions: Vec<StoredApprovalDecision>,
    /// What a pending request still needs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub missing: Option<String>,
    /// The issued Gait approval tokens (approved requests).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<serde_json::Value>,
}

/// Which policy version judges a request.
#[derive(Clone, Debug, Serialize)]
pub struct PolicyRef {
    /// Row id of the version.
    pub id: u64,
    /// Name.
    pub name: String,
    /// Version.
    pub version: u64,
    /// Its scope.
    pub scope: String,
}

/// The outcome of one decision.
#[derive(Clone, Debug, Serialize)]
pub struct DecisionOutcome {
    /// Whether this decision was recorded now (`false`: the caller had already decided; it counts once).
    pub recorded: bool,
    /// The request after it.
    pub request: RequestView,
}

/// A policy version with its parsed rules.
#[derive(Clone, Debug, Serialize)]
pub struct PolicyView {
    /// The stored version.
    #[serde(flatten)]
    pub stored: StoredApprovalPolicy,
    /// Its rules.
    pub rules: PolicySpec,
}

/// The approval service.
#[derive(Debug)]
pub struct Approvals {
    store: Store,
    key: SigningKey,
    metrics: Option<std::sync::Arc<crate::metrics::Metrics>>,
}

impl Approvals {
    /// The service over `store`, signing tokens with `key`.
    pub fn new(store: Store, key: SigningKey) -> Self {
        Self {
            store,
            key,
            metrics: None,
        }
    }

    /// Counts requests and decisions in `metrics` ([`crate::metrics::APPROVALS`]).
    pub fn with_metrics(mut self, metrics: std::sync::Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Counts one approval event (`requested`, `approved`, `denied`).
    pub fn count(&self, outcome: &'static str) {
        if let Some(m) = &self.metrics {
            crate::metrics::inc_labelled(&m.approvals, "outcome", outcome);
        }
    }

    /// The public half of the approval key: what agents verify tokens with.
    pub fn public_key(&self) -> PublicKey {
        self.key.public_key()
    }

    /// Sets policy `name` at the caller's scope to `spec` (a new version). Privileged: audit point. A policy
    /// the config file owns is refused ([`ApprovalError::ConfigOwned`]).
    pub async fn set_policy(
        &self,
        caller: &Authorized<BindingScope>,
        name: &str,
        spec: PolicySpec,
    ) -> Result<PolicyView, ApprovalError> {
        if caller.target().org_part().is_none() {
            return Err(ApprovalError::Field {
                field: "org",
                reason: "an approval policy applies to an org, a project or an environment; name the org"
                    .into(),
            });
        }
        let spec = spec.normalize()?;
        let new = new_policy(caller.target().clone(), name, &spec);
        let actor = caller.actor();
        let now = crate::clock::unix_ms();
        let stored = self
            .store
            .transaction(async |tx| {
                let before = tx.current_approval_policy(&new.scope, &new.name).await?;
                if let Some(current) = &before
                    && current.source == gait_store::BindingSource::Config
                {
                    return Err(ApprovalError::ConfigOwned {
                        scope: current.scope.to_string(),
                        name: current.name.clone(),
                    });
                }
                let stored = tx.put_approval_policy(&new, &actor, now).await?;
                audit_policy(
                    tx,
                    &actor,
                    "approval_policy.set",
                    before.as_ref(),
                    Some(&stored),
                )
                .await?;
                Ok::<_, ApprovalError>(stored)
            })
            .await?;
        tracing::info!(actor, policy = %stored.name, version = stored.version, scope = %stored.scope,
            "approval policy set");
        Ok(PolicyView {
            stored,
            rules: spec,
        })
    }

    /// Removes policy `name` at the caller's scope: it no longer judges new requests (its versions stay, so
    /// requests judged under one still name it). Privileged: audit point. A policy the config file owns is
    /// refused ([`ApprovalError::ConfigOwned`]).
    pub async fn remove_policy(
        &self,
        caller: &Authorized<BindingScope>,
        name: &str,
    ) -> Result<StoredApprovalPolicy, ApprovalError> {
        let scope = caller.target();
        if scope.org_part().is_none() {
            return Err(ApprovalError::Field {
                field: "org",
                reason: "an approval policy applies to an org, a project or an environment; name the org"
                    .into(),
            });
        }
        let name = name.trim();
        let not_found = || ApprovalError::PolicyNotFound {
            scope: scope.to_string(),
            name: name.to_owned(),
        };
        let actor = caller.actor();
        let now = crate::clock::unix_ms();
        let removed = self
            .store
            .transaction(async |tx| {
                let current = tx
                    .current_approval_policy(scope, name)
                    .await?
                    .ok_or_else(not_found)?;
                if current.source == gait_store::BindingSource::Config {
                    return Err(ApprovalError::ConfigOwned {
                        scope: current.scope.to_string(),
                        name: current.name.clone(),
                    });
                }
                let removed = tx
                    .remove_approval_policy(scope, name, now)
                    .await?
                    .ok_or_else(not_found)?;
                audit_policy(tx, &actor, "approval_policy.remove", Some(&removed), None).await?;
                Ok::<_, ApprovalError>(removed)
            })
            .await?;
        tracing::info!(actor, policy = %removed.name, version = removed.version, scope = %removed.scope,
            "approval policy removed");
        Ok(removed)
    }

    /// The newest version of every policy inside the caller's scope or covering it.
    pub async fn policies(
        &self,
        caller: &Authorized<BindingScope>,
    ) -> Result<Vec<PolicyView>, ApprovalError> {
        let Some(org) = caller.target().org_part() else {
            return Err(ApprovalError::Field {
                field: "org",
                reason: "name the org whose approval policies to list".into(),
            });
        };
        let scope = caller.target();
        self.store
            .approval_policies(org)
            .await?
            .into_iter()
            .filter(|p| scope.covers(&p.scope) || p.scope.covers(scope))
            .map(view_policy)
            .collect()
    }

    /// The approval requests carried by committed `records` of agent `key` (kind `approval.request`), each
    /// judged under the policy covering it now. A payload that breaks a rule raises nothing (the record itself
    /// is kept as evidence) and is logged.
    pub async fn requests_from_records(
        &self,
        key: &AgentKey,
        records: &[NewRecord],
        now_ms: i64,
    ) -> Result<Vec<NewApprovalRequest>, ApprovalError> {
        let mut out = Vec::new();
        let mut policies: Option<Vec<StoredApprovalPolicy>> = None;
        for record in records.iter().filter(|r| r.kind == APPROVAL_REQUEST_KIND) {
            let payload = match serde_json::from_slice::<ApprovalRequestPayload>(&record.payload)
                .map_err(|e| e.to_string())
                .and_then(|p| p.validate().map(|()| p).map_err(|e| e.to_string()))
            {
                Ok(p) => p,
                Err(reason) => {
                    tracing::warn!(agent = %key, seq = record.seq, %reason, "approval request record ignored");
                    continue;
                }
            };
            if policies.is_none() {
                policies = Some(self.store.approval_policies(&key.tenant.org).await?);
            }
            let chosen = choose_policy(
                policies.as_deref().unwrap_or_default(),
                &key.tenant,
                &payload,
            );
            let ttl_ms =
                i64::try_from(payload.ttl_seconds.saturating_mul(1000)).unwrap_or(i64::MAX);
            out.push(NewApprovalRequest {
                key: key.clone(),
                seq: record.seq,
                tool: payload.tool_name,
                phase: payload.phase,
                destructive: payload.destructive,
                scope: gait_artifact::approval::normalize_scope(&payload.scope),
                intent_digest: payload.intent_digest,
                policy_digest: payload.policy_digest,
                requested_by: payload.requested_by,
                trace_id: payload.trace_id,
                created_unix_ms: payload.created_unix_ms,
                // The agent's clock may be off: the lifetime runs from receipt.
                expires_unix_ms: now_ms.saturating_add(ttl_ms),
                approval_policy_id: chosen.map(|p| p.id),
            });
        }
        Ok(out)
    }

    /// The tenant's requests, newest first (`status` filters; `expired` is a pending request past expiry).
    pub async fn list(
        &self,
        caller: &Authorized<Tenant>,
        status: Option<&str>,
        limit: u32,
    ) -> Result<Vec<RequestView>, ApprovalError> {
        let state = match status {
            None | Some("") => None,
            Some("pending" | "expired") => Some(ApprovalState::Pending),
            Some("approved") => Some(ApprovalState::Approved),
            Some("denied") => Some(ApprovalState::Denied),
            Some(other) => {
                return Err(ApprovalError::Field {
                    field: "status",
                    reason: format!("`{other}` is not one of pending, expired, approved, denied"),
                });
            }
        };
        let now = crate::clock::unix_ms();
        let rows = self
            .store
            .approval_requests(caller.target(), state, limit)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let view = self.view(row, now).await?;
            if status.is_none_or(|s| s.is_empty() || s == view.status) {
                out.push(view);
            }
        }
        Ok(out)
    }

    /// Request `id` of the caller's tenant with its decisions.
    pub async fn get(
        &self,
        caller: &Authorized<Tenant>,
        id: u64,
    ) -> Result<RequestView, ApprovalError> {
        let row = self
            .store
            .approval_request(caller.target(), id)
            .await?
            .ok_or(ApprovalError::NotFound { id })?;
        self.view(row, crate::clock::unix_ms()).await
    }

    /// Approves request `id` as the caller. Privileged: audit point. When the rules are met the tokens are
    /// issued in the same transaction.
    pub async fn approve(
        &self,
        caller: &Authorized<Tenant>,
        id: u64,
        reason: &str,
    ) -> Result<DecisionOutcome, ApprovalError> {
        self.decide(caller, id, ApprovalVote::Approve, reason).await
    }

    /// Denies request `id` as the caller; the request ends. Privileged: audit point.
    pub async fn deny(
        &self,
        caller: &Authorized<Tenant>,
        id: u64,
        reason: &str,
    ) -> Result<DecisionOutcome, ApprovalError> {
        self.decide(caller, id, ApprovalVote::Deny, reason).await
    }

    async fn decide(
        &self,
        caller: &Authorized<Tenant>,
        id: u64,
        vote: ApprovalVote,
        reason: &str,
    ) -> Result<DecisionOutcome, ApprovalError> {
        let tenant = caller.target();
        let who = caller.principal();
        let actor = caller.actor();
        let reason = match reason.trim() {
            "" => format!("approval_request_{id}"),
            r => r.to_owned(),
        };
        let decision = NewApprovalDecision {
            actor: actor.clone(),
            groups: match who {
                Principal::Operator(op) => op.groups.clone(),
                Principal::AdminToken => Vec::new(),
            },
            vote,
            reason: reason.clone(),
        };
        let now_time = crate::clock::now_utc();
        let now = (now_time.unix_timestamp_nanos() / 1_000_000) as i64;
        let recorded = self
            .store
            .transaction(async |tx| {
                let request = tx
                    .lock_approval_request(tenant, id, now)
                    .await?
                    .ok_or(ApprovalError::NotFound { id })?;
                let in_force = match request.approval_policy_id {
                    Some(pid) => in_force(tx.approval_policy(pid).await?.ok_or_else(|| {
                        ApprovalError::Corrupt(format!("policy {pid} is missing"))
                    })?)?,
                    None => InForce::default(),
                };
                rules::may_decide(&request, &in_force, who, vote, now)?;
                let recorded = tx
                    .insert_approval_decision(tenant, id, &decision, now)
                    .await?;
                if recorded {
                    let mut details = serde_json::Map::new();
                    details.insert(
                        "intent_digest".into(),
                        request.intent_digest.as_str().into(),
                    );
                    details.insert(
                        "policy_digest".into(),
                        request.policy_digest.as_str().into(),
                    );
                    details.insert("reason".into(), reason.as_str().into());
                    let action = match vote {
                        ApprovalVote::Approve => "approval.approve",
                        ApprovalVote::Deny => "approval.deny",
                    };
                    audit(
                        tx,
                        &actor,
                        action,
                        request_target(tenant, id),
                        None,
                        details,
                    )
                    .await?;
                }
                let decisions = tx.approval_decisions(tenant, id).await?;
                match rules::standing(&in_force.spec, &decisions) {
                    Standing::Denied { .. } => {
                        tx.finish_approval_request(
                            tenant,
                            id,
                            ApprovalState::Denied,
                            "",
                            None,
                            now,
                        )
                        .await?;
                    }
                    Standing::Approved { approvers } => {
                        let ttl = in_force.spec.max_token_ttl_seconds;
                        let tokens = issue::mint_tokens(
                            &self.key, &request, &approvers, &reason, now_time, ttl,
                        );
                        let json = tokens_json(&tokens);
                        let expires =
                            now.saturating_add(i64::try_from(ttl * 1000).unwrap_or(i64::MAX));
                        if tx
                            .finish_approval_request(
                                tenant,
                                id,
                                ApprovalState::Approved,
                                &json,
                                Some(expires),
                                now,
                            )
                            .await?
                        {
                            self.count("approved");
                        }
                        let mut details = serde_json::Map::new();
                        details.insert("approvers".into(), approvers.clone().into());
                        details.insert("ttl_seconds".into(), ttl.into());
                        audit(
                            tx,
                            &actor,
                            "approval.issue",
                            request_target(tenant, id),
                            Some(gait_audit::content_digest(json.as_bytes())),
                            details,
                        )
                        .await?;
                        tracing::info!(request = id, approvers = %approvers.join(", "), ttl_s = ttl,
                            "approval granted; tokens issued");
                    }
                    Standing::Waiting { .. } => {}
                }
                Ok::<_, ApprovalError>(recorded)
            })
            .await?;
        tracing::info!(
            actor,
            request = id,
            decision = vote.as_str(),
            recorded,
            "approval decision"
        );
        let request = self.get(caller, id).await?;
        Ok(DecisionOutcome { recorded, request })
    }

    /// What agent `key`'s next `FetchApprovals` receives: tokens of its approved requests after
    /// `after_request_id`, still valid now.
    pub async fn deliverable(
        &self,
        key: &AgentKey,
        after_request_id: u64,
    ) -> Result<Vec<DeliveredApproval>, ApprovalError> {
        let rows = self
            .store
            .deliverable_approvals(key, after_request_id, crate::clock::unix_ms())
            .await?;
        let mut out = Vec::new();
        for row in rows {
            let docs: Vec<serde_json::Value> = serde_json::from_str(&row.tokens)
                .map_err(|e| ApprovalError::Corrupt(format!("request {} tokens: {e}", row.id)))?;
            out.push(DeliveredApproval {
                request_id: row.id,
                intent_digest: row.intent_digest,
                policy_digest: row.policy_digest,
                tokens: docs
                    .iter()
                    .map(|d| TokenDocument(serde_json::to_vec(d).unwrap_or_default()))
                    .collect(),
            });
        }
        Ok(out)
    }

    async fn view(
        &self,
        request: StoredApprovalRequest,
        now_ms: i64,
    ) -> Result<RequestView, ApprovalError> {
        let decisions = self
            .store
            .approval_decisions(&request.tenant, request.id)
            .await?;
        let (in_force, policy_ref) = match request.approval_policy_id {
            Some(pid) => match self.store.approval_policy(pid).await? {
                Some(p) => {
                    let r = PolicyRef {
                        id: p.id,
                        name: p.name.clone(),
                        version: p.version,
                        scope: p.scope.to_string(),
                    };
                    (in_force(p)?, Some(r))
                }
                None => return Err(ApprovalError::Corrupt(format!("policy {pid} is missing"))),
            },
            None => (InForce::default(), None),
        };
        let status = match request.state {
            ApprovalState::Pending if now_ms >= request.expires_unix_ms => "expired",
            s => s.as_str(),
        };
        let missing = match (status, rules::standing(&in_force.spec, &decisions)) {
            ("pending", Standing::Waiting { missing, .. }) => Some(missing),
            _ => None,
        };
        let tokens = if request.tokens.is_empty() {
            Vec::new()
        } else {
            serde_json::from_str(&request.tokens).map_err(|e| {
                ApprovalError::Corrupt(format!("request {} tokens: {e}", request.id))
            })?
        };
        Ok(RequestView {
            request,
            status,
            approval_policy: policy_ref,
            decisions,
            missing,
            tokens,
        })
    }
}

/// The store row of policy `name` at `scope` with the (normalized) `spec`: its canonical JSON and digest.
fn new_policy(scope: BindingScope, name: &str, spec: &PolicySpec) -> NewApprovalPolicy {
    let json = spec.to_canonical_json();
    NewApprovalPolicy {
        scope,
        name: name.trim().to_owned(),
        digest: gait_canon::sha256_hex(json.as_bytes()),
        spec: json,
    }
}

/// The audit entry of a policy change by `actor`: `before` and `after` are the versions in force before and
/// after it (digests `sha256:<hex>`), the target the policy at its scope.
async fn audit_policy(
    tx: &mut gait_store::StoreTx,
    actor: &str,
    action: &str,
    before: Option<&StoredApprovalPolicy>,
    after: Option<&StoredApprovalPolicy>,
) -> Result<(), ApprovalError> {
    let Some(policy) = after.or(before) else {
        return Ok(());
    };
    let target = crate::audit::scope_target(&policy.scope, "approval_policy", policy.name.clone());
    let mut details = serde_json::Map::new();
    details.insert("version".into(), policy.version.into());
    details.insert("source".into(), policy.source.as_str().into());
    let digest = |p: &StoredApprovalPolicy| format!("sha256:{}", p.digest);
    audit_change(
        tx,
        actor,
        action,
        target,
        before.map(digest),
        after.map(digest),
        details,
    )
    .await
}

fn tokens_json(tokens: &[ApprovalToken]) -> String {
    let docs: Vec<serde_json::Value> = tokens
        .iter()
        .filter_map(|t| serde_json::from_slice(&t.to_pretty_json()).ok())
        .collect();
    serde_json::Value::from(docs).to_string()
}

fn parse_spec(stored: &StoredApprovalPolicy) -> Result<PolicySpec, ApprovalError> {
    serde_json::from_str(&stored.spec)
        .map_err(|e| ApprovalError::Corrupt(format!("policy {} spec: {e}", stored.id)))
}

fn view_policy(stored: StoredApprovalPolicy) -> Result<PolicyView, ApprovalError> {
    let rules = parse_spec(&stored)?;
    Ok(PolicyView { stored, rules })
}

fn in_force(stored: StoredApprovalPolicy) -> Result<InForce, ApprovalError> {
    Ok(InForce {
        spec: parse_spec(&stored)?,
        name: stored.name,
        version: stored.version,
        author: Some(stored.created_by),
    })
}

fn depth(scope: &BindingScope) -> u8 {
    match (scope.project_part(), scope.env_part()) {
        (_, Some(_)) => 3,
        (Some(_), None) => 2,
        (None, None) => 1,
    }
}

/// The policy judging a request: among those covering the tenant whose spec matches the intent, the most
/// specific scope, then the first name.
fn choose_policy<'a>(
    policies: &'a [StoredApprovalPolicy],
    tenant: &Tenant,
    payload: &ApprovalRequestPayload,
) -> Option<&'a StoredApprovalPolicy> {
    let here = BindingScope::env(
        tenant.org.clone(),
        tenant.project.clone(),
        tenant.env.clone(),
    );
    policies
        .iter()
        .filter(|p| p.scope.covers(&here))
        .filter(|p| {
            parse_spec(p).is_ok_and(|spec| {
                spec.matches(
                    &payload.tool_name,
                    &payload.phase,
                    payload.destructive,
                    tenant.env.as_str(),
                )
            })
        })
        .min_by(|a, b| {
            depth(&b.scope)
                .cmp(&depth(&a.scope))
                .then(a.name.cmp(&b.name))
        })
}
