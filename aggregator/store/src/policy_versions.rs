//! The policy registry domain (migration 0016): immutable Gait policy versions per org (`policy_versions`,
//! keyed by the Gait policy digest) and each environment's pin history (`env_pins`). Inserting a version is
//! idempotent: the same digest twice keeps the first row (and its bytes) and reports that nothing was added. A
//! pin row is only ever added, except for its `known_good` flag, which a rollback clears on the pin it rolls
//! back. Portable SQL only.

use serde::Serialize;

use crate::conn::{Conn, db_run};
use crate::error::{StoreError, db};
use crate::model::{MAX_TEXT_BYTES, Org, Tenant, check_digest, check_text, to_i64, to_u64};
use crate::rows::Columns;

/// Longest policy version name or pin actor, in bytes.
pub const MAX_POLICY_NAME_BYTES: usize = 128;
/// Most versions or pins one listing returns.
pub const MAX_POLICY_PAGE: u32 = 1_000;

/// A validated policy version to store (the registry parsed, normalized and digested it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewPolicyVersion {
    /// The org the version belongs to.
    pub org: Org,
    /// The Gait policy digest (lowercase hex SHA-256 over the normalized policy).
    pub digest: String,
    /// Its name (a bundle file name, e.g. `base.yaml`).
    pub name: String,
    /// The YAML bytes as uploaded first.
    pub yaml: Vec<u8>,
    /// Lowercase hex SHA-256 of `yaml`.
    pub sha256: String,
    /// Who uploaded it (the authenticated caller).
    pub author: String,
    /// The author's message.
    pub message: String,
    /// The version it was derived from, if the author said so.
    pub parent_digest: Option<String>,
    /// Number of rules.
    pub rule_count: u32,
    /// `default_verdict` of the normalized policy.
    pub default_verdict: String,
    /// When it was stored, Unix ms.
    pub created_unix_ms: i64,
    /// Its warnings as the registry computed them at push, a JSON array (migration 0021).
    pub warnings_json: Option<String>,
}

/// A stored policy version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StoredPolicyVersion {
    /// See [`NewPolicyVersion`]; `sha256` and `size` are of the YAML bytes.
    #[serde(flatten)]
    pub version: PolicyVersionMeta,
    /// Lowercase hex SHA-256 of the YAML bytes.
    pub sha256: String,
    /// Length of the YAML bytes.
    pub size: u64,
    /// The YAML bytes (in a listing: only for versions without stored warnings).
    #[serde(skip)]
    pub yaml: Vec<u8>,
    /// The warnings stored at push (JSON array); `None` for versions pushed before migration 0021.
    #[serde(skip)]
    pub warnings_json: Option<String>,
}

/// The metadata of a version (everything but its bytes), as listings show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PolicyVersionMeta {
    /// The org.
    pub org: Org,
    /// The Gait policy digest.
    pub digest: String,
    /// Its name.
    pub name: String,
    /// Who uploaded it.
    pub author: String,
    /// The author's message.
    pub message: String,
    /// The version it was derived from.
    pub parent_digest: Option<String>,
    /// Number of rules.
    pub rule_count: u32,
    /// `default_verdict`.
    pub default_verdict: String,
    /// When it was stored, Unix ms.
    pub created_unix_ms: i64,
}

/// How an environment came to enforce a version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PinKind {
    /// An operator pinned it.
    Pin,
    /// A rollback restored it.
    Rollback,
    /// A rollout promoted it to 100 %.
    Rollout,
}

impl PinKind {
    /// The stored and displayed name.
    pub fn as_str(self) -> &'static str {
        match self {
            PinKind::Pin => "pin",
            PinKind::Rollback => "rollback",
            PinKind::Rollout => "rollout",
        }
    }

    fn parse(s: &str) -> Option<PinKind> {
        [PinKind::Pin, PinKind::Rollback, PinKind::Rollout]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// A pin to record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewPin {
    /// The environment.
    pub tenant: Tenant,
    /// The pinned policy version's digest (a row of `policy_versions` of the same org).
    pub digest: String,
    /// How it came about.
    pub kind: PinKind,
    /// The rollout that promoted it, for [`PinKind::Rollout`].
    pub rollout_id: Option<String>,
    /// The bundle settings it was published with (JSON), reused by later pins and rollbacks.
    pub settings_json: String,
    /// The bundle epoch that carries it.
    pub bundle_epoch: u64,
    /// That bundle's digest.
    pub bundle_digest: String,
    /// Whether a rollback may return to it.
    pub known_good: bool,
    /// Who did it.
    pub actor: String,
    /// Why (free text, may be empty).
    pub reason: String,
    /// When, Unix ms.
    pub created_unix_ms: i64,
}

/// A recorded pin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StoredPin {
    /// Increasing per deployment: a later pin has a larger id.
    pub id: u64,
    /// See [`NewPin`].
    #[serde(flatten)]
    pub pin: PinFields,
}

/// The fields of a recorded pin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PinFields {
    /// The pinned version.
    pub digest: String,
    /// How it came about.
    pub kind: PinKind,
    /// The rollout that promoted it.
    pub rollout_id: Option<String>,
    /// The bundle settings (JSON text).
    #[serde(skip)]
    pub settings_json: String,
    /// The bundle epoch that carries it.
    pub bundle_epoch: u64,
    /// That bundle's digest.
    pub bundle_digest: String,
    /// Whether a rollback may return to it.
    pub known_good: bool,
    /// Who did it.
    pub actor: String,
    /// Why.
    pub reason: String,
    /// When, Unix ms.
    pub created_unix_ms: i64,
}

fn check_version(v: &NewPolicyVersion) -> Result<(), StoreError> {
    check_digest("policy_version.digest", &v.digest)?;
    check_digest("policy_version.sha256", &v.sha256)?;
    if let Some(p) = &v.parent_digest {
        check_digest("policy_version.parent_digest", p)?;
    }
    if v.name.is_empty() {
        return Err(StoreError::invalid(
            "policy_version.name",
            "must not be empty",
        ));
    }
    check_text("policy_version.name", &v.name, MAX_POLICY_NAME_BYTES)?;
    check_text("policy_version.author", &v.author, MAX_TEXT_BYTES)?;
    check_text("policy_version.message", &v.message, MAX_TEXT_BYTES)?;
    check_text("policy_version.default_verdict", &v.default_verdict, 32)?;
    Ok(())
}

/// Stores `v` unless the org already has its digest; `true` when a row was added.
pub(crate) async fn insert_version(
    mut conn: Conn<'_>,
    v: &NewPolicyVersion,
) -> Result<bool, StoreError> {
    const SQL: &str = "INSERT INTO policy_versions (org, digest, name, yaml, sha256, size, author, message, \
         parent_digest, rule_count, default_verdict, created_unix_ms, warnings_json) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) ON CONFLICT (org, digest) DO NOTHING";
    check_version(v)?;
    let size = to_i64("policy_version.size", v.yaml.len() as u64)?;
    let added = db_run!(conn, |c| sqlx::query(SQL)
        .bind(v.org.as_str())
        .bind(v.digest.as_str())
        .bind(v.name.as_str())
        .bind(v.yaml.as_slice())
        .bind(v.sha256.as_str())
        .bind(size)
        .bind(v.author.as_str())
        .bind(v.message.as_str())
        .bind(v.parent_digest.as_deref())
        .bind(i64::from(v.rule_count))
        .bind(v.default_verdict.as_str())
        .bind(v.created_unix_ms)
        .bind(v.warnings_json.as_deref())
        .execute(&mut *c)
        .await
        .map_err(db("insert_policy_version"))?
        .rows_affected());
    Ok(added > 0)
}

macro_rules! version_columns {
    () => {
        "org, digest, name, yaml, sha256, size, author, message, parent_digest, rule_count, default_verdict, \
         created_unix_ms, warnings_json"
    };
}

/// The org's version with `digest`, if any.
pub(crate) async fn version(
    mut conn: Conn<'_>,
    org: &Org,
    digest: &str,
) -> Result<Option<StoredPolicyVersion>, StoreError> {
    const SQL: &str = concat!(
        "SELECT ",
        version_columns!(),
        " FROM policy_versions WHERE org = $1 AND digest = $2"
    );
    db_run!(conn, |c| {
        let row = sqlx::query(SQL)
            .bind(org.as_str())
            .bind(digest)
            .fetch_optional(&mut *c)
            .await
            .map_err(db("policy_version"))?;
        row.as_ref().map(version_row).transpose()
    })
}

/// The org's versions, newest first (by creation time, then digest), at most `limit` (clamped to
/// 1..=[`MAX_POLICY_PAGE`]` + 1`, so a caller can ask one more than a page to learn whether another follows), only those older than version `before` when given (the cursor of the next page: the
/// last digest of the previous one). A listing reads the YAML only of versions without stored warnings.
pub(crate) async fn list_versions(
    mut conn: Conn<'_>,
    org: &Org,
    before: Option<&str>,
    limit: u32,
) -> Result<Vec<StoredPolicyVersion>, StoreError> {
    const COLUMNS: &str = "SELECT org, digest, name, CASE WHEN warnings_json IS NULL THEN yaml END AS yaml, \
         sha256, size, author, message, parent_digest, rule_count, default_verdict, created_unix_ms, warnings_json \
         FROM policy_versions WHERE org = $1";
    const ORDER: &str = " ORDER BY created_unix_ms DESC, digest DESC LIMIT $2";
    if let Some(b) = before {
        check_digest("before", b)?;
    }
    let sql = match before {
        None => format!("{COLUMNS}{ORDER}"),
        Some(_) => format!(
            "{COLUMNS} AND EXISTS (SELECT 1 FROM policy_versions b WHERE b.org = $1 AND b.digest = $3 \
             AND (policy_versions.created_unix_ms < b.created_unix_ms OR (policy_versions.created_unix_ms = \
             b.created_unix_ms AND policy_versions.digest < b.digest))){ORDER}"
        ),
    };
    let limit = i64::from(limit.clamp(1, MAX_POLICY_PAGE + 1));
    db_run!(conn, |c| {
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(org.as_str())
            .bind(limit);
        if let Some(b) = before {
            query = query.bind(b);
        }
        let found = query
            .fetch_all(&mut *c)
            .await
            .map_err(db("policy_versions"))?;
        found.iter().map(version_row).collect()
    })
}

fn version_row(row: &impl Columns) -> Result<StoredPolicyVersion, StoreError> {
    const T: &str = "policy_versions";
    let org = row.text("org")?;
    let rule_count = row.int("rule_count")?;
    Ok(StoredPolicyVersion {
        version: PolicyVersionMeta {
            org: org
                .parse()
                .map_err(|_| StoreError::corrupt(T, format!("org {org:?} is invalid")))?,
            digest: row.text("digest")?,
            name: row.text("name")?,
            author: row.text("author")?,
            message: row.text("message")?,
            parent_digest: row.opt_text("parent_digest")?,
            rule_count: u32::try_from(rule_count)
                .map_err(|_| StoreError::corrupt(T, format!("rule_count {rule_count}")))?,
            default_verdict: row.text("default_verdict")?,
            created_unix_ms: row.int("created_unix_ms")?,
        },
        sha256: row.text("sha256")?,
        size: to_u64(T, "size", row.int("size")?)?,
        yaml: row.opt_bytes("yaml")?.unwrap_or_default(),
        warnings_json: row.opt_text("warnings_json")?,
    })
}

/// Records `pin`; returns its id.
pub(crate) async fn insert_pin(mut conn: Conn<'_>, pin: &NewPin) -> Result<u64, StoreError> {
    const SQL: &str = "INSERT INTO env_pins (org, project, env, digest, kind, rollout_id, settings_json, \
         bundle_epoch, bundle_digest, known_good, actor, reason, created_unix_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING id";
    check_digest("pin.digest", &pin.digest)?;
    check_digest("pin.bundle_digest", &pin.bundle_digest)?;
    check_text("pin.actor", &pin.actor, MAX_TEXT_BYTES)?;
    check_text("pin.reason", &pin.reason, MAX_TEXT_BYTES)?;
    if let Some(r) = &pin.rollout_id {
        check_text("pin.rollout_id", r, MAX_POLICY_NAME_BYTES)?;
    }
    let epoch = to_i64("pin.bundle_epoch", pin.bundle_epoch)?;
    let id: i64 = db_run!(conn, |c| sqlx::query_scalar(SQL)
        .bind(pin.tenant.org.as_str())
        .bind(pin.tenant.project.as_str())
        .bind(pin.tenant.env.as_str())
        .bind(pin.digest.as_str())
        .bind(pin.kind.as_str())
        .bind(pin.rollout_id.as_deref())
        .bind(pin.settings_json.as_str())
        .bind(epoch)
        .bind(pin.bundle_digest.as_str())
        .bind(i64::from(pin.known_good))
        .bind(pin.actor.as_str())
        .bind(pin.reason.as_str())
        .bind(pin.created_unix_ms)
        .fetch_one(&mut *c)
        .await
        .map_err(db("insert_env_pin"))?);
    to_u64("env_pins", "id", id)
}

/// Sets the `known_good` flag of the environment's pin `id`; `false` when there is no such pin.
pub(crate) async fn set_known_good(
    mut conn: Conn<'_>,
    tenant: &Tenant,
    id: u64,
    known_good: bool,
) -> Result<bool, StoreError> {
    const SQL: &str = "UPDATE env_pins SET known_good = $5 \
         WHERE org = $1 AND project = $2 AND env = $3 AND id = $4";
    let id = to_i64("pin.id", id)?;
    let changed = db_run!(conn, |c| sqlx::query(SQL)
        .bind(tenant.org.as_str())
        .bind(tenant.project.as_str())
        .bind(tenant.env.as_str())
        .bind(id)
        .bind(i64::from(known_good))
        .execute(&mut *c)
        .await
        .map_err(db("set_pin_known_good"))?
        .rows_affected());
    Ok(changed > 0)
}

/// Clears `known_good` on every pin of `tenant` to version `digest` in one statement (a rollback demotes the
/// version it leaves, however long the history); returns how many pins changed.
pub(crate) async fn demote_version(
    mut conn: Conn<'_>,
    tenant: &Tenant,
    digest: &str,
) -> Result<u64, StoreError> {
    const SQL: &str = "UPDATE env_pins SET known_good = 0 \
         WHERE org = $1 AND project = $2 AND env = $3 AND digest = $4 AND known_good = 1";
    check_digest("pin.digest", digest)?;
    let changed = db_run!(conn, |c| sqlx::query(SQL)
        .bind(tenant.org.as_str())
        .bind(tenant.project.as_str())
        .bind(tenant.env.as_str())
        .bind(digest)
        .execute(&mut *c)
        .await
        .map_err(db("demote_pins"))?
        .rows_affected());
    Ok(changed)
}

/// The environment's pins, newest first, at most `limit` (clamped to 1..=[`MAX_POLICY_PAGE`]).
pub(crate) async fn pins(
    mut conn: Conn<'_>,
    tenant: &Tenant,
    limit: u32,
) -> Result<Vec<StoredPin>, StoreError> {
    const SQL: &str = "SELECT id, digest, kind, rollout_id, settings_json, bundle_epoch, bundle_digest, \
         known_good, actor, reason, created_unix_ms FROM env_pins \
         WHERE org = $1 AND project = $2 AND env = $3 ORDER BY id DESC LIMIT $4";
    let limit = i64::from(limit.clamp(1, MAX_POLICY_PAGE));
    db_run!(conn, |c| {
        let found = sqlx::query(SQL)
            .bind(tenant.org.as_str())
            .bind(tenant.project.as_str())
            .bind(tenant.env.as_str())
            .bind(limit)
            .fetch_all(&mut *c)
            .await
            .map_err(db("env_pins"))?;
        found.iter().map(pin_row).collect()
    })
}

fn pin_row(row: &impl Columns) -> Result<StoredPin, StoreError> {
    const T: &str = "env_pins";
    let kind = row.text("kind")?;
    Ok(StoredPin {
        id: to_u64(T, "id", row.int("id")?)?,
        pin: PinFields {
            digest: row.text("digest")?,
            kind: PinKind::parse(&kind)
                .ok_or_else(|| StoreError::corrupt(T, format!("kind {kind:?}")))?,
            rollout_id: row.opt_text("rollout_id")?,
            settings_json: row.text("settings_json")?,
            bundle_epoch: to_u64(T, "bundle_epoch", row.int("bundle_epoch")?)?,
            bundle_digest: row.text("bundle_digest")?,
            known_good: row.int("known_good")? != 0,
            actor: row.text("actor")?,
            reason: row.text("reason")?,
            created_unix_ms: row.int("created_unix_ms")?,
        },
    })
}

/// Registry reads on the store (own connection, outside any transaction).
impl crate::Store {
    /// The org's policy version with `digest`, if any.
    pub async fn policy_version(
        &self,
        org: &Org,
        digest: &str,
    ) -> Result<Option<StoredPolicyVersion>, StoreError> {
        let mut pooled = self.acquire().await?;
        version(pooled.conn(), org, digest).await
    }

    /// The org's policy versions, newest first, older than version `before` when given (see
    /// [`list_versions`]).
    pub async fn policy_versions(
        &self,
        org: &Org,
        before: Option<&str>,
        limit: u32,
    ) -> Result<Vec<StoredPolicyVersion>, StoreError> {
        let mut pooled = self.acquire().await?;
        list_versions(pooled.conn(), org, before, limit).await
    }

    /// The environment's pin history, newest first.
    pub async fn env_pins(
        &self,
        tenant: &Tenant,
        limit: u32,
    ) -> Result<Vec<StoredPin>, StoreError> {
        let mut pooled = self.acquire().await?;
        pins(pooled.conn(), tenant, limit).await
    }
}

/// Registry writes inside a transaction, so a version or a pin commits with its audit entry (and a pin with
/// the bundle that carries it).
impl crate::StoreTx {
    /// Stores `v` unless the org has its digest already; `true` when a row was added.
    pub async fn insert_policy_version(
        &mut self,
        v: &NewPolicyVersion,
    ) -> Result<bool, StoreError> {
        insert_version(self.conn(), v).await
    }

    /// See [`crate::Store::policy_version`].
    pub async fn policy_version(
        &mut self,
        org: &Org,
        digest: &str,
    ) -> Result<Option<StoredPolicyVersion>, StoreError> {
        version(self.conn(), org, digest).await
    }

    /// Records a pin; returns its id.
    pub async fn insert_env_pin(&mut self, pin: &NewPin) -> Result<u64, StoreError> {
        insert_pin(self.conn(), pin).await
    }

    /// Sets the `known_good` flag of pin `id` of `tenant`; `false` when there is no such pin.
    pub async fn set_pin_known_good(
        &mut self,
        tenant: &Tenant,
        id: u64,
        known_good: bool,
    ) -> Result<bool, StoreError> {
        set_known_good(self.conn(), tenant, id, known_good).await
    }

    /// Clears `known_good` on every pin of `tenant` to version `digest`; returns how many changed.
    pub async fn demote_pins(&mut self, tenant: &Tenant, digest: &str) -> Result<u64, StoreError> {
        demote_version(self.conn(), tenant, digest).await
    }

    /// See [`crate::Store::env_pins`].
    pub async fn env_pins(
        &mut self,
        tenant: &Tenant,
        limit: u32,
    ) -> Result<Vec<StoredPin>, StoreError> {
        pins(self.conn(), tenant, limit).await
    }
}
