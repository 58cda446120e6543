//! Keeping the authorizer's bindings equal to the store's: [`reload`] after every change (and periodically,
//! so a second aggregator on the same PostgreSQL database sees the first one's grants), and [`apply_config`]
//! for the config file's `auth.bindings` at start; [`grant`] and [`revoke`] for the API, each with its audit
//! entry in the same transaction. [`Bindings`] is what the HTTP API holds: the same operations and the reads,
//! each taking the caller's `Authorized<BindingScope>`.

use std::sync::Arc;

use gait_store::{BindingScope, ConfigBindingsApplied, NewBinding, RoleBinding, Store, StoreError};

use super::{Authorized, Authorizer};

/// The role bindings as operators read and change them: the store, and the authorizer kept equal to it.
#[derive(Clone, Debug)]
pub struct Bindings {
    store: Store,
    authorizer: Arc<Authorizer>,
}

impl Bindings {
    /// The bindings in `store`, reloading `authorizer` after every change.
    pub fn new(store: Store, authorizer: Arc<Authorizer>) -> Self {
        Self { store, authorizer }
    }

    /// Every binding inside the caller's scope.
    pub async fn list(
        &self,
        caller: &Authorized<BindingScope>,
    ) -> Result<Vec<RoleBinding>, StoreError> {
        let mut rows = self.store.bindings().await?;
        rows.retain(|b| caller.target().covers(&b.scope));
        Ok(rows)
    }

    /// Only the scope of binding `id`, which is where a change of it is authorized; nothing else of the
    /// binding is read before the caller is.
    pub async fn scope_of(&self, id: u64) -> Result<Option<BindingScope>, StoreError> {
        Ok(self.store.binding(id).await?.map(|b| b.scope))
    }

    /// Binding `id` when it lies inside the caller's scope (`None` otherwise, as when it does not exist).
    pub async fn get(
        &self,
        caller: &Authorized<BindingScope>,
        id: u64,
    ) -> Result<Option<RoleBinding>, StoreError> {
        Ok(self
            .store
            .binding(id)
            .await?
            .filter(|b| caller.target().covers(&b.scope)))
    }

    /// [`grant`] on this store and authorizer.
    pub async fn grant(
        &self,
        caller: &Authorized<BindingScope>,
        binding: &NewBinding,
        now_ms: i64,
    ) -> Result<(RoleBinding, bool), crate::audit::AuditError> {
        grant(&self.store, &self.authorizer, caller, binding, now_ms).await
    }

    /// [`revoke`] on this store and authorizer.
    /// Revokes binding `id` within the caller's scope. A binding outside it is reported exactly as a missing
    /// one ([`RevokeError::NotFound`]: nothing about foreign bindings is revealed); one from the config file
    /// cannot be revoked here ([`RevokeError::FromConfig`]: the file is applied again at every start).
    pub async fn revoke(
        &self,
        caller: &Authorized<BindingScope>,
        id: u64,
    ) -> Result<RoleBinding, RevokeError> {
        let found = self
            .get(caller, id)
            .await?
            .ok_or(RevokeError::NotFound(id))?;
        if found.source == gait_store::BindingSource::Config {
            return Err(RevokeError::FromConfig(id));
        }
        revoke(&self.store, &self.authorizer, caller, id)
            .await?
            .ok_or(RevokeError::NotFound(id))
    }
}

/// Why [`Bindings::revoke`] revoked nothing.
#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    /// No such binding in the caller's scope.
    #[error("no role binding {0} in your scope")]
    NotFound(u64),
    /// The binding comes from `auth.bindings` in the config file.
    #[error(
        "role binding {0} comes from auth.bindings in the config file; remove it there and restart"
    )]
    FromConfig(u64),
    /// Reading the binding failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The revocation or its audit entry could not be committed (neither was).
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
}
use crate::config::BindingConfig;

/// Loads every binding from the store into `authorizer`.
pub async fn reload(store: &Store, authorizer: &Authorizer) -> Result<(), StoreError> {
    let rows = store.bindings().await?;
    authorizer.load(&rows);
    Ok(())
}

/// The config file's bindings as store bindings (validated by `Config::validate`, so this only converts).
pub fn from_config(bindings: &[BindingConfig]) -> Vec<NewBinding> {
    bindings
        .iter()
        .filter_map(BindingConfig::to_binding)
        .collect()
}

/// Makes the stored config bindings exactly the config file's (idempotent), with a `binding.grant` /
/// `binding.revoke` audit entry by actor `config` for each change in the same transaction; logs what changed
/// and reloads.
pub async fn apply_config(
    store: &Store,
    authorizer: &Authorizer,
    bindings: &[BindingConfig],
    now_ms: i64,
) -> Result<ConfigBindingsApplied, crate::audit::AuditError> {
    let set = from_config(bindings);
    let applied = store
        .transaction(async |tx| {
            let applied = tx.replace_config_bindings(&set, now_ms).await?;
            // In the order the store applied them: the file's removals first, then its additions.
            for (action, rows) in [
                ("binding.revoke", &applied.removed),
                ("binding.grant", &applied.added),
            ] {
                for row in rows {
                    let draft = gait_audit::EntryDraft {
                        actor: "config".into(),
                        action: action.into(),
                        target: target(row),
                        before: None,
                        after: None,
                        details: Some(details(row)),
                    };
                    crate::audit::append_draft(tx, draft).await?;
                }
            }
            Ok::<_, crate::audit::AuditError>(applied)
        })
        .await?;
    for b in &applied.added {
        tracing::info!(binding = b.id, kind = b.kind.as_str(), subject = %b.subject, role = %b.role,
            scope = %b.scope, "role binding added from auth.bindings");
    }
    for b in &applied.removed {
        tracing::info!(binding = b.id, kind = b.kind.as_str(), subject = %b.subject, role = %b.role,
            scope = %b.scope, "role binding removed: no longer in auth.bindings");
    }
    reload(store, authorizer).await?;
    Ok(applied)
}

/// The audit target of a binding: its scope's parts and its id.
fn target(binding: &RoleBinding) -> gait_audit::Target {
    crate::audit::scope_target(&binding.scope, "role_binding", binding.id.to_string())
}

fn details(binding: &RoleBinding) -> serde_json::Map<String, serde_json::Value> {
    let mut details = serde_json::Map::new();
    details.insert("kind".into(), binding.kind.as_str().into());
    details.insert("subject".into(), binding.subject.as_str().into());
    details.insert("role".into(), binding.role.as_str().into());
    details
}

/// Grants `binding` for `caller` (authorized over the binding's own scope) and, when it is new, appends the
/// `binding.grant` audit entry in the same transaction; then reloads `authorizer`. Returns the stored binding
/// and whether it was created now.
pub async fn grant(
    store: &Store,
    authorizer: &Authorizer,
    caller: &super::Authorized<gait_store::BindingScope>,
    binding: &NewBinding,
    now_ms: i64,
) -> Result<(RoleBinding, bool), crate::audit::AuditError> {
    let actor = caller.actor();
    let granted = store
        .transaction(async |tx| {
            let (stored, created) = tx.grant_binding(binding, &actor, now_ms).await?;
            if created {
                let draft = gait_audit::EntryDraft {
                    actor: actor.clone(),
                    action: "binding.grant".into(),
                    target: target(&stored),
                    before: None,
                    after: None,
                    details: Some(details(&stored)),
                };
                crate::audit::append_draft(tx, draft).await?;
            }
            Ok::<_, crate::audit::AuditError>((stored, created))
        })
        .await?;
    reload(store, authorizer).await?;
    Ok(granted)
}

/// Revokes binding `id` (the caller was authorized over its scope) and appends the `binding.revoke` audit
/// entry in the same transaction; then reloads `authorizer`. `None` when the binding is gone already.
pub async fn revoke(
    store: &Store,
    authorizer: &Authorizer,
    caller: &super::Authorized<gait_store::BindingScope>,
    id: u64,
) -> Result<Option<RoleBinding>, crate::audit::AuditError> {
    let actor = caller.actor();
    let removed = store
        .transaction(async |tx| {
            let removed = tx.revoke_binding(id).await?;
            if let Some(gone) = &removed {
                let draft = gait_audit::EntryDraft {
                    actor: actor.clone(),
                    action: "binding.revoke".into(),
                    target: target(gone),
                    before: None,
                    after: None,
                    details: Some(details(gone)),
                };
                crate::audit::append_draft(tx, draft).await?;
            }
            Ok::<_, crate::audit::AuditError>(removed)
        })
        .await?;
    reload(store, authorizer).await?;
    Ok(removed)
}
