//! The bundle signing-key domain (`signing_keys`, migration 0017): the registry's Ed25519 keys and their states.
//! `next` (endorsed by the active key, waiting out the overlap) -> `active` (signs bundles) -> `retired`;
//! `next` or `retired` -> `revoked`. The active key is never revoked directly (rotate first). At most one
//! `active` and one `next` row exist (a partial unique index). Every state change is a compare-and-set on the
//! current state, so two replicas never both promote or revoke. Private seeds never enter the database.
//! Portable SQL only.

use serde::Serialize;

use crate::conn::{Conn, db_run};
use crate::error::{StoreError, db};
use crate::model::{Tenant, check_digest, check_text};
use crate::rows::Columns;

/// Where a signing key is in its lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SigningKeyState {
    /// Endorsed by the active key; becomes active once the overlap has passed.
    Next,
    /// Signs every new bundle.
    Active,
    /// Replaced by a newer key; agents may still trust it.
    Retired,
    /// Compromised or withdrawn: every later bundle names it in `manifest.trust.revoked`.
    Revoked,
}

impl SigningKeyState {
    /// The state's name in the database and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Next => "next",
            Self::Active => "active",
            Self::Retired => "retired",
            Self::Revoked => "revoked",
        }
    }

    fn parse(s: &str) -> Result<Self, StoreError> {
        Ok(match s {
            "next" => Self::Next,
            "active" => Self::Active,
            "retired" => Self::Retired,
            "revoked" => Self::Revoked,
            other => {
                return Err(StoreError::corrupt(
                    "signing_keys",
                    format!("unknown state {other:?}"),
                ));
            }
        })
    }
}

/// One bundle signing key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SigningKeyRow {
    /// Lowercase hex SHA-256 of the raw public key.
    pub key_id: String,
    /// Gait's public key text (base64 of the raw 32-byte key).
    pub public_key: String,
    /// Lifecycle state.
    pub state: SigningKeyState,
    /// Key id of the key that endorsed this one (`None` for the first key).
    pub endorsed_by: Option<String>,
    /// Base64 Ed25519 endorsement signature by `endorsed_by` (see `gait_bundle::endorse`).
    pub endorsement_sig: Option<String>,
    /// When the key was created, Unix ms.
    pub created_unix_ms: i64,
    /// For a `next` key: the end of the overlap, after which it becomes active.
    pub activate_after_unix_ms: Option<i64>,
    /// When it became active, Unix ms.
    pub activated_unix_ms: Option<i64>,
    /// When it was revoked, Unix ms.
    pub revoked_unix_ms: Option<i64>,
    /// Who created it (operator identity, or `bootstrap` for the adopted `registry.key`).
    pub actor: String,
}

fn key_row(row: &impl Columns) -> Result<SigningKeyRow, StoreError> {
    Ok(SigningKeyRow {
        key_id: row.text("key_id")?,
        public_key: row.text("public_key")?,
        state: SigningKeyState::parse(&row.text("state")?)?,
        endorsed_by: row.opt_text("endorsed_by")?,
        endorsement_sig: row.opt_text("endorsement_sig")?,
        created_unix_ms: row.int("created_unix_ms")?,
        activate_after_unix_ms: row.opt_int("activate_after_unix_ms")?,
        activated_unix_ms: row.opt_int("activated_unix_ms")?,
        revoked_unix_ms: row.opt_int("revoked_unix_ms")?,
        actor: row.text("actor")?,
    })
}

/// Every signing key, oldest first.
async fn list(mut conn: Conn<'_>) -> Result<Vec<SigningKeyRow>, StoreError> {
    const SQL: &str = "SELECT key_id, public_key, state, endorsed_by, endorsement_sig, created_unix_ms, \
         activate_after_unix_ms, activated_unix_ms, revoked_unix_ms, actor FROM signing_keys \
         ORDER BY created_unix_ms, key_id";
    db_run!(conn, |c| {
        let rows = sqlx::query(SQL)
            .fetch_all(&mut *c)
            .await
            .map_err(db("signing_keys"))?;
        rows.iter().map(key_row).collect()
    })
}

/// Inserts `key` unless a key with its id exists; `true` when added. A second `active` or `next` row is
/// refused by the database ([`StoreError`] of the insert).
async fn insert(mut conn: Conn<'_>, key: &SigningKeyRow) -> Result<bool, StoreError> {
    const SQL: &str = "INSERT INTO signing_keys (key_id, public_key, state, endorsed_by, endorsement_sig, \
         created_unix_ms, activate_after_unix_ms, activated_unix_ms, revoked_unix_ms, actor) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (key_id) DO NOTHING";
    check_digest("signing_key.key_id", &key.key_id)?;
    if let Some(by) = &key.endorsed_by {
        check_digest("signing_key.endorsed_by", by)?;
    }
    check_text("signing_key.public_key", &key.public_key, 64)?;
    check_text(
        "signing_key.actor",
        &key.actor,
        crate::model::MAX_TEXT_BYTES,
    )?;
    let added = db_run!(conn, |c| sqlx::query(SQL)
        .bind(key.key_id.as_str())
        .bind(key.public_key.as_str())
        .bind(key.state.as_str())
        .bind(key.endorsed_by.as_deref())
        .bind(key.endorsement_sig.as_deref())
        .bind(key.created_unix_ms)
        .bind(key.activate_after_unix_ms)
        .bind(key.activated_unix_ms)
        .bind(key.revoked_unix_ms)
        .bind(key.actor.as_str())
        .execute(&mut *c)
        .await
        .map_err(db("insert signing_key"))?
        .rows_affected());
    Ok(added > 0)
}

/// Moves `key_id` from `from` to `to` (compare-and-set); `true` when the row was in `from`. Becoming `active`
/// stamps `activated_unix_ms`, becoming `revoked` stamps `revoked_unix_ms`.
async fn transition(
    mut conn: Conn<'_>,
    key_id: &str,
    from: SigningKeyState,
    to: SigningKeyState,
    at_ms: i64,
) -> Result<bool, StoreError> {
    const SQL: &str = "UPDATE signing_keys SET state = $3, \
         activated_unix_ms = CASE WHEN $3 = 'active' THEN $4 ELSE activated_unix_ms END, \
         revoked_unix_ms = CASE WHEN $3 = 'revoked' THEN $4 ELSE revoked_unix_ms END \
         WHERE key_id = $1 AND state = $2";
    let changed = db_run!(conn, |c| sqlx::query(SQL)
        .bind(key_id)
        .bind(from.as_str())
        .bind(to.as_str())
        .bind(at_ms)
        .execute(&mut *c)
        .await
        .map_err(db("signing_key state"))?
        .rows_affected());
    Ok(changed > 0)
}

/// Every scope that has at least one bundle (a key rotation re-publishes each).
async fn bundle_scopes(mut conn: Conn<'_>) -> Result<Vec<Tenant>, StoreError> {
    const SQL: &str = "SELECT DISTINCT org, project, env FROM bundles ORDER BY org, project, env";
    db_run!(conn, |c| {
        let rows = sqlx::query(SQL)
            .fetch_all(&mut *c)
            .await
            .map_err(db("bundle scopes"))?;
        rows.iter()
            .map(|r| {
                Tenant::from_parts(&r.text("org")?, &r.text("project")?, &r.text("env")?)
                    .map_err(|e| StoreError::corrupt("bundles", e.to_string()))
            })
            .collect()
    })
}

/// Signing-key reads on the store (own connection).
impl crate::Store {
    /// Every bundle signing key, oldest first.
    pub async fn signing_keys(&self) -> Result<Vec<SigningKeyRow>, StoreError> {
        let mut pooled = self.acquire().await?;
        list(pooled.conn()).await
    }

    /// Every scope with at least one published bundle, sorted.
    pub async fn bundle_scopes(&self) -> Result<Vec<Tenant>, StoreError> {
        let mut pooled = self.acquire().await?;
        bundle_scopes(pooled.conn()).await
    }
}

/// Signing-key changes inside a transaction, so each commits with its audit entry.
impl crate::StoreTx {
    /// Every bundle signing key, oldest first, as this transaction sees them.
    pub async fn signing_keys(&mut self) -> Result<Vec<SigningKeyRow>, StoreError> {
        list(self.conn()).await
    }

    /// Adds `key` unless its id exists; `true` when added.
    pub async fn insert_signing_key(&mut self, key: &SigningKeyRow) -> Result<bool, StoreError> {
        insert(self.conn(), key).await
    }

    /// Compare-and-set of a key's state; `true` when it was in `from`.
    pub async fn set_signing_key_state(
        &mut self,
        key_id: &str,
        from: SigningKeyState,
        to: SigningKeyState,
        at_ms: i64,
    ) -> Result<bool, StoreError> {
        transition(self.conn(), key_id, from, to, at_ms).await
    }
}
