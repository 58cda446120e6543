//! The enrollment domain: join tokens (minted per org/project/env with an expiry and a use count, only the
//! SHA-256 of their secret stored) and the agent certificates the aggregator signed online (enrollment and
//! renewal). Portable SQL only.
//!
//! A use is consumed by one conditional `UPDATE … SET uses_left = uses_left - 1 WHERE … AND uses_left > 0
//! RETURNING …`: on SQLite writers are serialised, on PostgreSQL the second of two racing updates waits for the
//! first's row lock and re-checks the condition, so a 1-use token admits exactly one enrollment on both.

use serde::Serialize;

use crate::conn::{Conn, db_run};
use crate::error::{StoreError, db};
use crate::model::{self, AgentKey, CertSerial, Tenant, check_text};
use crate::rows::{self, Columns};

/// Most uses one join token may carry.
pub const MAX_JOIN_TOKEN_USES: u32 = 100_000;
/// Most join tokens one listing returns (newest first).
pub const MAX_JOIN_TOKENS_PAGE: u32 = 1_000;

/// A join token to store: its public id, scope, the SHA-256 of its secret, uses and expiry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewJoinToken {
    /// Public id (16 lowercase hex digits): how operators name the token in `list` and `revoke`.
    pub token_id: String,
    /// The org/project/env an agent enrolled with this token belongs to.
    pub tenant: Tenant,
    /// SHA-256 of the secret, 64 lowercase hex digits. The secret itself is never stored.
    pub secret_sha256: String,
    /// Enrollments the token admits, 1..=[`MAX_JOIN_TOKEN_USES`].
    pub uses: u32,
    /// When the token stops working (unix ms).
    pub expires_unix_ms: i64,
    /// Who minted it (an actor string such as `admin-token` or `oidc:<issuer>#<subject>`).
    pub created_by: String,
}

/// A stored join token as listed (never its secret or hash).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct JoinTokenRow {
    /// Public id.
    pub token_id: String,
    /// Scope of the token.
    #[serde(flatten)]
    pub tenant: Tenant,
    /// Uses it was minted with.
    pub uses_allowed: u32,
    /// Uses left.
    pub uses_left: u32,
    /// When it was minted (unix ms).
    pub created_unix_ms: i64,
    /// When it expires (unix ms).
    pub expires_unix_ms: i64,
    /// Who minted it.
    pub created_by: String,
    /// When it was revoked (unix ms), if it was.
    pub revoked_unix_ms: Option<i64>,
    /// Who revoked it (empty when not revoked).
    pub revoked_by: String,
}

impl JoinTokenRow {
    /// `active`, `expired`, `used_up` or `revoked` at `now_ms` (revocation wins, then use count, then expiry).
    pub fn state(&self, now_ms: i64) -> JoinTokenState {
        if self.revoked_unix_ms.is_some() {
            JoinTokenState::Revoked
        } else if self.uses_left == 0 {
            JoinTokenState::UsedUp
        } else if self.expires_unix_ms <= now_ms {
            JoinTokenState::Expired
        } else {
            JoinTokenState::Active
        }
    }
}

/// Whether a join token can still enroll, and if not why.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JoinTokenState {
    /// Unrevoked, unexpired, uses left.
    Active,
    /// Past its expiry.
    Expired,
    /// Every use consumed.
    UsedUp,
    /// Revoked by an operator.
    Revoked,
    /// No token with that id, or the secret does not match (the two are not told apart).
    Unknown,
}

impl JoinTokenState {
    /// The state as text (`active`, `expired`, `used_up`, `revoked`, `unknown`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Expired => "expired",
            Self::UsedUp => "used_up",
            Self::Revoked => "revoked",
            Self::Unknown => "unknown",
        }
    }
}

/// How a certificate in `issued_certificates` came to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IssueKind {
    /// Signed for a CSR that came with a join token.
    Enroll,
    /// Signed for a CSR sent over the agent's authenticated connection.
    Renew,
}

impl IssueKind {
    /// `enroll` or `renew`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enroll => "enroll",
            Self::Renew => "renew",
        }
    }

    fn parse(text: &str) -> Result<Self, StoreError> {
        match text {
            "enroll" => Ok(Self::Enroll),
            "renew" => Ok(Self::Renew),
            other => Err(StoreError::corrupt(
                "issued_certificates",
                format!("kind {other:?} is neither enroll nor renew"),
            )),
        }
    }
}

/// A certificate the aggregator signed online, as recorded (and listed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IssuedCertificate {
    /// Its serial.
    pub cert_serial: CertSerial,
    /// The agent it names.
    pub agent: AgentKey,
    /// Enrollment or renewal.
    pub kind: IssueKind,
    /// The join token that admitted it (enrollment), empty for a renewal.
    pub join_token_id: String,
    /// Its `notAfter` (unix ms).
    pub not_after_unix_ms: i64,
    /// Who caused it (an actor string: `agent:<spiffe id>` for a renewal, the token's id for an enrollment).
    pub issued_by: String,
    /// The issuing CA's subject (RFC 4514 text); `None` for certificates recorded before the issuer was.
    pub issuer: Option<String>,
}

fn check_token_id(token_id: &str) -> Result<(), StoreError> {
    if token_id.len() == 16
        && token_id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(StoreError::invalid(
            "join_token.token_id",
            "must be 16 lowercase hex digits",
        ))
    }
}

fn check_actor(field: &str, actor: &str) -> Result<(), StoreError> {
    check_text(field, actor, model::MAX_TEXT_BYTES)?;
    if actor.trim().is_empty() {
        return Err(StoreError::invalid(field, "must name who did it"));
    }
    Ok(())
}

/// Stores a new join token. A token id already taken is refused (ids are random; a clash is a caller bug).
pub(crate) async fn create(
    mut conn: Conn<'_>,
    token: &NewJoinToken,
    now_ms: i64,
) -> Result<(), StoreError> {
    const SQL: &str = "INSERT INTO join_tokens (token_id, org, project, env, secret_sha256, uses_allowed, \
         uses_left, created_unix_ms, expires_unix_ms, created_by) \
         VALUES ($1, $2, $3, $4, $5, $6, $6, $7, $8, $9)";
    check_token_id(&token.token_id)?;
    model::check_digest("join_token.secret_sha256", &token.secret_sha256)?;
    if !(1..=MAX_JOIN_TOKEN_USES).contains(&token.uses) {
        return Err(StoreError::invalid(
            "join_token.uses",
            format!("must be 1..={MAX_JOIN_TOKEN_USES}"),
        ));
    }
    if token.expires_unix_ms <= now_ms {
        return Err(StoreError::invalid(
            "join_token.expires_unix_ms",
            "must lie in the future",
        ));
    }
    check_actor("join_token.created_by", &token.created_by)?;
    let t = &token.tenant;
    db_run!(conn, |c| {
        sqlx::query(SQL)
            .bind(token.token_id.as_str())
            .bind(t.org.as_str())
            .bind(t.project.as_str())
            .bind(t.env.as_str())
            .bind(token.secret_sha256.as_str())
            .bind(i64::from(token.uses))
            .bind(now_ms)
            .bind(token.expires_unix_ms)
            .bind(token.created_by.as_str())
            .execute(&mut *c)
            .await
            .map_err(db("create_join_token"))?;
    });
    Ok(())
}

/// The tenant's join tokens, newest first, at most `limit` (clamped to [`MAX_JOIN_TOKENS_PAGE`]).
pub(crate) async fn list(
    mut conn: Conn<'_>,
    tenant: &Tenant,
    limit: u32,
) -> Result<Vec<JoinTokenRow>, StoreError> {
    const SQL: &str = "SELECT token_id, org, project, env, uses_allowed, uses_left, created_unix_ms, \
         expires_unix_ms, created_by, revoked_unix_ms, revoked_by FROM join_tokens \
         WHERE org = $1 AND project = $2 AND env = $3 \
         ORDER BY created_unix_ms DESC, token_id LIMIT $4";
    let limit = i64::from(limit.clamp(1, MAX_JOIN_TOKENS_PAGE));
    db_run!(conn, |c| {
        let found = sqlx::query(SQL)
            .bind(tenant.org.as_str())
            .bind(tenant.project.as_str())
            .bind(tenant.env.as_str())
            .bind(limit)
            .fetch_all(&mut *c)
            .await
            .map_err(db("join_tokens"))?;
        found.iter().map(token_row).collect()
    })
}

/// Revokes the tenant's token `token_id`. `Ok(None)`: no such token in that tenant (a token of another tenant
/// is not touched); otherwise the row after the call (a token revoked earlier keeps its first revocation).
pub(crate) async fn revoke(
    mut conn: Conn<'_>,
    tenant: &Tenant,
    token_id: &str,
    revoked_by: &str,
    now_ms: i64,
) -> Result<Option<JoinTokenRow>, StoreError> {
    const UPDATE: &str = "UPDATE join_tokens SET revoked_unix_ms = $5, revoked_by = $6 \
         WHERE org = $1 AND project = $2 AND env = $3 AND token_id = $4 AND revoked_unix_ms IS NULL";
    const SELECT: &str = "SELECT token_id, org, project, env, uses_allowed, uses_left, created_unix_ms, \
         expires_unix_ms, created_by, revoked_unix_ms, revoked_by FROM join_tokens \
         WHERE org = $1 AND project = $2 AND env = $3 AND token_id = $4";
    check_token_id(token_id)?;
    check_actor("join_token.revoked_by", revoked_by)?;
    db_run!(conn, |c| {
        sqlx::query(UPDATE)
            .bind(tenant.org.as_str())
            .bind(tenant.project.as_str())
            .bind(tenant.env.as_str())
            .bind(token_id)
            .bind(now_ms)
            .bind(revoked_by)
            .execute(&mut *c)
            .await
            .map_err(db("revoke_join_token"))?;
        let row = sqlx::query(SELECT)
            .bind(tenant.org.as_str())
            .bind(tenant.project.as_str())
            .bind(tenant.env.as_str())
            .bind(token_id)
            .fetch_optional(&mut *c)
            .await
            .map_err(db("revoke_join_token"))?;
        row.as_ref().map(token_row).transpose()
    })
}

/// Consumes one use of token `token_id` if `secret_sha256` matches and it is active at `now_ms`: `Ok(Ok(row))`
/// with the row after the use, or `Ok(Err(state))` saying why nothing was consumed ([`JoinTokenState::Unknown`]
/// for no such id and for a wrong secret alike).
pub(crate) async fn consume(
    mut conn: Conn<'_>,
    token_id: &str,
    secret_sha256: &str,
    now_ms: i64,
) -> Result<Result<JoinTokenRow, JoinTokenState>, StoreError> {
    const UPDATE: &str = "UPDATE join_tokens SET uses_left = uses_left - 1 \
         WHERE token_id = $1 AND secret_sha256 = $2 AND uses_left > 0 AND revoked_unix_ms IS NULL \
         AND expires_unix_ms > $3 \
         RETURNING token_id, org, project, env, uses_allowed, uses_left, created_unix_ms, \
         expires_unix_ms, created_by, revoked_unix_ms, revoked_by";
    const SELECT: &str = "SELECT token_id, org, project, env, uses_allowed, uses_left, created_unix_ms, \
         expires_unix_ms, created_by, revoked_unix_ms, revoked_by FROM join_tokens \
         WHERE token_id = $1 AND secret_sha256 = $2";
    if check_token_id(token_id).is_err() || model::check_digest("", secret_sha256).is_err() {
        return Ok(Err(JoinTokenState::Unknown));
    }
    db_run!(conn, |c| {
        let used = sqlx::query(UPDATE)
            .bind(token_id)
            .bind(secret_sha256)
            .bind(now_ms)
            .fetch_optional(&mut *c)
            .await
            .map_err(db("consume_join_token"))?;
        if let Some(row) = used {
            return Ok(Ok(token_row(&row)?));
        }
        let found = sqlx::query(SELECT)
            .bind(token_id)
            .bind(secret_sha256)
            .fetch_optional(&mut *c)
            .await
            .map_err(db("consume_join_token"))?;
        Ok(Err(match found {
            None => JoinTokenState::Unknown,
            Some(row) => match token_row(&row)?.state(now_ms) {
                // Active when read, but the update found it used up or expired a moment before: report it
                // as used up, the only state a concurrent enrollment can have caused.
                JoinTokenState::Active => JoinTokenState::UsedUp,
                state => state,
            },
        }))
    })
}

/// Records a certificate signed online.
pub(crate) async fn record_issued(
    mut conn: Conn<'_>,
    cert: &IssuedCertificate,
    now_ms: i64,
) -> Result<(), StoreError> {
    const SQL: &str = "INSERT INTO issued_certificates (cert_serial, org, project, env, agent_id, kind, \
         join_token_id, not_after_unix_ms, issued_unix_ms, issued_by, issuer) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";
    check_actor("issued_certificate.issued_by", &cert.issued_by)?;
    if let Some(issuer) = &cert.issuer {
        check_text("issued_certificate.issuer", issuer, model::MAX_TEXT_BYTES)?;
    }
    if !cert.join_token_id.is_empty() {
        check_token_id(&cert.join_token_id)?;
    }
    let t = &cert.agent.tenant;
    db_run!(conn, |c| {
        sqlx::query(SQL)
            .bind(cert.cert_serial.as_str())
            .bind(t.org.as_str())
            .bind(t.project.as_str())
            .bind(t.env.as_str())
            .bind(cert.agent.agent_id.as_str())
            .bind(cert.kind.as_str())
            .bind(cert.join_token_id.as_str())
            .bind(cert.not_after_unix_ms)
            .bind(now_ms)
            .bind(cert.issued_by.as_str())
            .bind(cert.issuer.as_deref())
            .execute(&mut *c)
            .await
            .map_err(db("record_issued_certificate"))?;
    });
    Ok(())
}

/// The certificates signed online for one agent, newest first.
pub(crate) async fn issued_for(
    mut conn: Conn<'_>,
    agent: &AgentKey,
) -> Result<Vec<IssuedCertificate>, StoreError> {
    const SQL: &str = "SELECT cert_serial, org, project, env, agent_id, kind, join_token_id, \
         not_after_unix_ms, issued_by, issuer FROM issued_certificates \
         WHERE org = $1 AND project = $2 AND env = $3 AND agent_id = $4 \
         ORDER BY issued_unix_ms DESC, cert_serial";
    let t = &agent.tenant;
    db_run!(conn, |c| {
        let found = sqlx::query(SQL)
            .bind(t.org.as_str())
            .bind(t.project.as_str())
            .bind(t.env.as_str())
            .bind(agent.agent_id.as_str())
            .fetch_all(&mut *c)
            .await
            .map_err(db("issued_certificates"))?;
        found.iter().map(issued_row).collect()
    })
}

/// Whether certificate `serial` is revoked (renewal asks the store, not only the handshake's cached set).
pub(crate) async fn is_revoked(
    mut conn: Conn<'_>,
    serial: &CertSerial,
) -> Result<bool, StoreError> {
    const SQL: &str = "SELECT COUNT(*) FROM revocations WHERE cert_serial = $1";
    let count: i64 = db_run!(conn, |c| sqlx::query_scalar(SQL)
        .bind(serial.as_str())
        .fetch_one(&mut *c)
        .await
        .map_err(db("is_revoked")))?;
    Ok(count > 0)
}

/// `notAfter` (unix ms) of the tenant's online-issued certificates still valid at `now_ms`, by serial.
pub(crate) async fn live_expiries(
    mut conn: Conn<'_>,
    tenant: &Tenant,
    now_ms: i64,
) -> Result<Vec<(CertSerial, i64)>, StoreError> {
    const SQL: &str = "SELECT cert_serial, not_after_unix_ms FROM issued_certificates \
         WHERE org = $1 AND project = $2 AND env = $3 AND not_after_unix_ms > $4";
    db_run!(conn, |c| {
        let found = sqlx::query(SQL)
            .bind(tenant.org.as_str())
            .bind(tenant.project.as_str())
            .bind(tenant.env.as_str())
            .bind(now_ms)
            .fetch_all(&mut *c)
            .await
            .map_err(db("certificate_expiries"))?;
        found
            .iter()
            .map(|row| {
                Ok((
                    crate::revocations::stored_serial(
                        "issued_certificates",
                        &row.text("cert_serial")?,
                    )?,
                    row.int("not_after_unix_ms")?,
                ))
            })
            .collect()
    })
}

fn token_row(row: &impl Columns) -> Result<JoinTokenRow, StoreError> {
    const T: &str = "join_tokens";
    let count = |col: &str| -> Result<u32, StoreError> {
        u32::try_from(row.int(col)?)
            .map_err(|_| StoreError::corrupt(T, format!("{col} is out of range")))
    };
    Ok(JoinTokenRow {
        token_id: row.text("token_id")?,
        tenant: Tenant::new(
            rows::stored_id(T, "org", row.text("org")?)?,
            rows::stored_id(T, "project", row.text("project")?)?,
            rows::stored_id(T, "env", row.text("env")?)?,
        ),
        uses_allowed: count("uses_allowed")?,
        uses_left: count("uses_left")?,
        created_unix_ms: row.int("created_unix_ms")?,
        expires_unix_ms: row.int("expires_unix_ms")?,
        created_by: row.text("created_by")?,
        revoked_unix_ms: row.opt_int("revoked_unix_ms")?,
        revoked_by: row.text("revoked_by")?,
    })
}

fn issued_row(row: &impl Columns) -> Result<IssuedCertificate, StoreError> {
    const T: &str = "issued_certificates";
    Ok(IssuedCertificate {
        cert_serial: crate::revocations::stored_serial(T, &row.text("cert_serial")?)?,
        agent: AgentKey::new(
            Tenant::new(
                rows::stored_id(T, "org", row.text("org")?)?,
                rows::stored_id(T, "project", row.text("project")?)?,
                rows::stored_id(T, "env", row.text("env")?)?,
            ),
            rows::stored_id(T, "agent_id", row.text("agent_id")?)?,
        ),
        kind: IssueKind::parse(&row.text("kind")?)?,
        join_token_id: row.text("join_token_id")?,
        not_after_unix_ms: row.int("not_after_unix_ms")?,
        issued_by: row.text("issued_by")?,
        issuer: row.opt_text("issuer")?,
    })
}

/// Enrollment operations on the store (each on its own connection, outside any transaction).
impl crate::Store {
    /// Stores a new join token; see [`NewJoinToken`] for what is checked.
    pub async fn create_join_token(
        &self,
        token: &NewJoinToken,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut pooled = self.acquire().await?;
        create(pooled.conn(), token, now_ms).await
    }

    /// The tenant's join tokens, newest first, at most `limit` (clamped to 1..=[`MAX_JOIN_TOKENS_PAGE`]).
    pub async fn join_tokens(
        &self,
        tenant: &Tenant,
        limit: u32,
    ) -> Result<Vec<JoinTokenRow>, StoreError> {
        let mut pooled = self.acquire().await?;
        list(pooled.conn(), tenant, limit).await
    }

    /// Revokes the tenant's join token `token_id`: `None` when the tenant has no such token.
    pub async fn revoke_join_token(
        &self,
        tenant: &Tenant,
        token_id: &str,
        revoked_by: &str,
        now_ms: i64,
    ) -> Result<Option<JoinTokenRow>, StoreError> {
        let mut pooled = self.acquire().await?;
        revoke(pooled.conn(), tenant, token_id, revoked_by, now_ms).await
    }

    /// Consumes one use of a join token, atomically; see [`crate::StoreTx::consume_join_token`].
    pub async fn consume_join_token(
        &self,
        token_id: &str,
        secret_sha256: &str,
        now_ms: i64,
    ) -> Result<Result<JoinTokenRow, JoinTokenState>, StoreError> {
        let mut pooled = self.acquire().await?;
        consume(pooled.conn(), token_id, secret_sha256, now_ms).await
    }

    /// Records a certificate the aggregator signed online.
    pub async fn record_issued_certificate(
        &self,
        cert: &IssuedCertificate,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut pooled = self.acquire().await?;
        record_issued(pooled.conn(), cert, now_ms).await
    }

    /// `notAfter` (unix ms) of the tenant's certificates signed online and still valid at `now_ms`, by serial
    /// (the fleet inventory's expiry column; hand-minted certificates are not in it).
    pub async fn certificate_expiries(
        &self,
        tenant: &Tenant,
        now_ms: i64,
    ) -> Result<std::collections::HashMap<CertSerial, i64>, StoreError> {
        let mut pooled = self.acquire().await?;
        Ok(live_expiries(pooled.conn(), tenant, now_ms)
            .await?
            .into_iter()
            .collect())
    }

    /// The certificates signed online for `agent`, newest first.
    pub async fn issued_certificates(
        &self,
        agent: &AgentKey,
    ) -> Result<Vec<IssuedCertificate>, StoreError> {
        let mut pooled = self.acquire().await?;
        issued_for(pooled.conn(), agent).await
    }
}

/// Enrollment operations inside a transaction, so a consumed token use, the certificate it paid for and the
/// audit entry commit together or not at all.
impl crate::StoreTx {
    /// Consumes one use of token `token_id` when `secret_sha256` matches and the token is active at `now_ms`:
    /// `Ok(Ok(row))` with the row after the use, or `Ok(Err(state))` saying why nothing was consumed
    /// ([`JoinTokenState::Unknown`] for an unknown id and a wrong secret alike). Rolling the transaction back
    /// gives the use back.
    pub async fn consume_join_token(
        &mut self,
        token_id: &str,
        secret_sha256: &str,
        now_ms: i64,
    ) -> Result<Result<JoinTokenRow, JoinTokenState>, StoreError> {
        consume(self.conn(), token_id, secret_sha256, now_ms).await
    }

    /// Whether certificate `serial` is revoked, as this transaction sees it.
    pub async fn is_revoked(&mut self, serial: &CertSerial) -> Result<bool, StoreError> {
        is_revoked(self.conn(), serial).await
    }

    /// See [`crate::Store::record_issued_certificate`].
    pub async fn record_issued_certificate(
        &mut self,
        cert: &IssuedCertificate,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        record_issued(self.conn(), cert, now_ms).await
    }

    /// See [`crate::Store::create_join_token`].
    pub async fn create_join_token(
        &mut self,
        token: &NewJoinToken,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        create(self.conn(), token, now_ms).await
    }

    /// See [`crate::Store::revoke_join_token`].
    pub async fn revoke_join_token(
        &mut self,
        tenant: &Tenant,
        token_id: &str,
        revoked_by: &str,
        now_ms: i64,
    ) -> Result<Option<JoinTokenRow>, StoreError> {
        revoke(self.conn(), tenant, token_id, revoked_by, now_ms).await
    }
}
