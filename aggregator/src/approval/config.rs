//! The config file's approval policies (`approvals.policies`, GitOps), applied at start as a set the way
//! `auth.bindings` is ([`crate::auth::bindings::apply_config`]): one transaction makes the config-owned policies in
//! force exactly the file's — a new entry is added, an edited one replaced by its next version, one that left the
//! file removed, an unchanged one left alone (a restart with the same file changes nothing and appends nothing) —
//! and appends an audit entry by actor `config` for each change, with the digests before and after.

use gait_store::{ConfigPoliciesApplied, NewApprovalPolicy, Store};

use super::{ApprovalError, audit_policy, new_policy};
use crate::config::ApprovalPolicyConfig;

/// The actor of every change the config file makes.
pub const CONFIG_ACTOR: &str = "config";

/// The file's entries as store policies. `Config::validate` already checked them; an entry that is invalid
/// anyway is an error naming its index and key.
pub fn from_config(
    policies: &[ApprovalPolicyConfig],
) -> Result<Vec<NewApprovalPolicy>, ApprovalError> {
    policies
        .iter()
        .enumerate()
        .map(|(i, entry)| {
            let scope = entry
                .scope()
                .map_err(|(key, reason)| ApprovalError::Field {
                    field: "approvals.policies",
                    reason: format!("[{i}].{key}: {reason}"),
                })?;
            let spec = entry.spec().map_err(|e| ApprovalError::Field {
                field: "approvals.policies",
                reason: format!("[{i}].{}: {}", e.field, e.reason),
            })?;
            Ok(new_policy(scope, entry.name(), &spec))
        })
        .collect()
}

/// Makes the config-owned approval policies in force exactly `policies` (idempotent), with an audit entry by
/// actor `config` for each change in the same transaction (`approval_policy.set` for an added or replaced one,
/// `approval_policy.remove` for one that left the file); logs what changed.
pub async fn apply_config(
    store: &Store,
    policies: &[ApprovalPolicyConfig],
    now_ms: i64,
) -> Result<ConfigPoliciesApplied, ApprovalError> {
    let set = from_config(policies)?;
    let applied = store
        .transaction(async |tx| {
            let applied = tx.replace_config_approval_policies(&set, now_ms).await?;
            // In the order the store applied them: the file's removals first, then additions and edits.
            for removed in &applied.removed {
                audit_policy(
                    tx,
                    CONFIG_ACTOR,
                    "approval_policy.remove",
                    Some(removed),
                    None,
                )
                .await?;
            }
            for added in &applied.added {
                audit_policy(tx, CONFIG_ACTOR, "approval_policy.set", None, Some(added)).await?;
            }
            for (before, after) in &applied.replaced {
                audit_policy(
                    tx,
                    CONFIG_ACTOR,
                    "approval_policy.set",
                    Some(before),
                    Some(after),
                )
                .await?;
            }
            Ok::<_, ApprovalError>(applied)
        })
        .await?;
    for p in &applied.removed {
        tracing::info!(policy = %p.name, scope = %p.scope, version = p.version,
            "approval policy removed: no longer in approvals.policies");
    }
    for p in &applied.added {
        tracing::info!(policy = %p.name, scope = %p.scope, version = p.version,
            "approval policy added from approvals.policies");
    }
    for (before, p) in &applied.replaced {
        tracing::info!(policy = %p.name, scope = %p.scope, version = p.version, previous_source = before.source.as_str(),
            "approval policy replaced from approvals.policies");
    }
    Ok(applied)
}
