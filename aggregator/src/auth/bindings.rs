//! Keeping the authorizer's bindings equal to the store's: [`reload`] after every change (and periodically,
//! so a second aggregator on the same PostgreSQL database sees the first one's grants), and [`apply_config`]
//! for the config file's `auth.bindings` at start.

use gait_store::{ConfigBindingsApplied, NewBinding, Store, StoreError};

use super::Authorizer;
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

/// Makes the stored config bindings exactly the config file's (idempotent), logs what changed, and reloads.
pub async fn apply_config(
    store: &Store,
    authorizer: &Authorizer,
    bindings: &[BindingConfig],
    now_ms: i64,
) -> Result<ConfigBindingsApplied, StoreError> {
    let applied = store
        .replace_config_bindings(&from_config(bindings), now_ms)
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
