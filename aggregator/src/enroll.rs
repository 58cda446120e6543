//! Agent enrollment: operators mint join tokens scoped to one org/project/env with a bounded lifetime and a
//! use count; an agent presents one with a CSR for a key it made itself and receives a client certificate for
//! the token's tenancy. Renewal (over the agent's authenticated connection) signs a CSR for the identity of the
//! verified certificate.
//!
//! Rules:
//! - The tenancy comes from the token, never from the CSR; a CSR that names another identity is refused, and a
//!   request that says which tenancy it expects is refused when the token's is another (a use is consumed only
//!   when a certificate is issued: refusals roll back).
//! - A use, the certificate record and the audit entry commit in one store transaction.
//! - Only the SHA-256 of a token's secret is stored; the secret is returned once, by [`Enrollment::create_token`].

use std::path::PathBuf;
use std::time::Duration;

use gait_store::{
    AgentKey, IssueKind, IssuedCertificate, JoinTokenRow, JoinTokenState, NewJoinToken, Store,
    StoreError, Tenant,
};
use time::OffsetDateTime;

pub mod audit;
pub mod token;

pub use token::{JoinToken, TokenFormatError};

use crate::pki::{self, CsrError, PkiError, SignedAgent, Validity, VerifiedCsr};

/// Shortest join token lifetime (short lifetimes serve tests and one-shot provisioning scripts).
pub const MIN_TOKEN_TTL: Duration = Duration::from_secs(1);
/// Default longest join token lifetime (`enroll.max_token_ttl_seconds`): 7 days.
pub const DEFAULT_MAX_TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default validity of certificates issued by enrollment and renewal
/// (`enroll.certificate_validity_seconds`): 90 days.
pub const DEFAULT_CERT_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);

/// Enrollment settings from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnrollSettings {
    /// Longest lifetime a join token may be minted with.
    pub max_token_ttl: Duration,
    /// Validity of the certificates enrollment and renewal issue.
    pub certificate_validity: Duration,
}

impl Default for EnrollSettings {
    fn default() -> Self {
        Self {
            max_token_ttl: DEFAULT_MAX_TOKEN_TTL,
            certificate_validity: DEFAULT_CERT_VALIDITY,
        }
    }
}

/// Why an enrollment operation failed.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// The requested token lifetime is outside the allowed range.
    #[error(
        "ttl: {requested_s} s is outside {min_s}..={max_s} s (enroll.max_token_ttl_seconds bounds it)"
    )]
    Ttl {
        /// Requested lifetime in seconds.
        requested_s: u64,
        /// Shortest allowed.
        min_s: u64,
        /// Longest allowed.
        max_s: u64,
    },
    /// The requested use count is outside the allowed range.
    #[error("uses: {requested} is outside 1..={max}")]
    Uses {
        /// Requested uses.
        requested: u32,
        /// Most allowed.
        max: u32,
    },
    /// The presented text is not a join token.
    #[error(transparent)]
    TokenFormat(#[from] TokenFormatError),
    /// The token cannot enroll (unknown, expired, used up or revoked).
    #[error("{}", refusal_message(*.0))]
    Refused(JoinTokenState),
    /// The token belongs to another tenancy than the one the agent expects.
    #[error(
        "the join token is for {token}, not {expected}: mint a token for {expected} (`gait-aggregator \
         join-token create`) or drop the expected scope"
    )]
    ScopeMismatch {
        /// The token's tenancy.
        token: Tenant,
        /// The one the request expected.
        expected: Tenant,
    },
    /// No such token in that tenancy.
    #[error("no join token {token_id} in {tenant}")]
    NotFound {
        /// The token id.
        token_id: String,
        /// The tenancy searched.
        tenant: Tenant,
    },
    /// The certificate asking for renewal is revoked.
    #[error("certificate {serial} is revoked: it renews nothing")]
    Revoked {
        /// Its serial.
        serial: gait_store::CertSerial,
    },
    /// The CSR was refused.
    #[error(transparent)]
    Csr(#[from] CsrError),
    /// The CA could not sign.
    #[error("pki: {0}")]
    Pki(PkiError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<PkiError> for EnrollError {
    fn from(e: PkiError) -> Self {
        match e {
            PkiError::Csr(csr) => Self::Csr(csr),
            other => Self::Pki(other),
        }
    }
}

fn refusal_message(state: JoinTokenState) -> &'static str {
    match state {
        JoinTokenState::Expired => {
            "the join token has expired: mint a new one with `gait-aggregator join-token create`"
        }
        JoinTokenState::UsedUp => {
            "the join token has no uses left: mint a new one with `gait-aggregator join-token create`"
        }
        JoinTokenState::Revoked => "the join token was revoked: ask the operator for a new one",
        JoinTokenState::Unknown | JoinTokenState::Active => {
            "unknown join token (no such token, or a wrong secret): check it was copied whole"
        }
    }
}

impl EnrollError {
    /// Whether the caller's credentials (token, scope) were refused, as opposed to a malformed request or a
    /// server-side failure.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            Self::TokenFormat(TokenFormatError::Shape)
                | Self::Refused(_)
                | Self::ScopeMismatch { .. }
                | Self::Revoked { .. }
        )
    }
}

/// A freshly minted token: its text (shown once) and its stored row.
#[derive(Debug)]
pub struct MintedToken {
    /// The whole token, `gjt1_<id>_<secret>`: the only time the secret is available.
    pub token: String,
    /// The stored row (no secret).
    pub row: JoinTokenRow,
}

/// An enrollment request: the token, the CSR, the agent id asked for and, optionally, the tenancy the agent
/// expects to join.
#[derive(Debug)]
pub struct EnrollRequest {
    /// The join token's text.
    pub token: String,
    /// The agent's CSR, signature already verified.
    pub csr: VerifiedCsr,
    /// The agent id to certify.
    pub agent_id: gait_identity::AgentId,
    /// The tenancy the agent means to join; a token for another is refused without using it.
    pub expect: Option<Tenant>,
}

/// The service behind the join-token endpoints, `POST /v1/enroll` and certificate renewal.
#[derive(Debug, Clone)]
pub struct Enrollment {
    store: Store,
    pki_dir: PathBuf,
    settings: EnrollSettings,
}

impl Enrollment {
    /// Enrollment over `store`, signing with the CA in `pki_dir`.
    pub fn new(store: Store, pki_dir: PathBuf, settings: EnrollSettings) -> Self {
        Self {
            store,
            pki_dir,
            settings,
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> EnrollSettings {
        self.settings
    }

    /// Mints a join token for `tenant`, valid `ttl` for `uses` enrollments, on behalf of `actor`.
    pub async fn create_token(
        &self,
        actor: &str,
        tenant: Tenant,
        ttl: Duration,
        uses: u32,
    ) -> Result<MintedToken, EnrollError> {
        if ttl < MIN_TOKEN_TTL || ttl > self.settings.max_token_ttl {
            return Err(EnrollError::Ttl {
                requested_s: ttl.as_secs(),
                min_s: MIN_TOKEN_TTL.as_secs(),
                max_s: self.settings.max_token_ttl.as_secs(),
            });
        }
        if !(1..=gait_store::MAX_JOIN_TOKEN_USES).contains(&uses) {
            return Err(EnrollError::Uses {
                requested: uses,
                max: gait_store::MAX_JOIN_TOKEN_USES,
            });
        }
        let token = JoinToken::mint()?;
        let now = crate::clock::unix_ms();
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        let new = NewJoinToken {
            token_id: token.id().to_owned(),
            tenant: tenant.clone(),
            secret_sha256: token.secret_sha256(),
            uses,
            expires_unix_ms: now.saturating_add(ttl_ms),
            created_by: actor.to_owned(),
        };
        let row = JoinTokenRow {
            token_id: new.token_id.clone(),
            tenant,
            uses_allowed: uses,
            uses_left: uses,
            created_unix_ms: now,
            expires_unix_ms: new.expires_unix_ms,
            created_by: actor.to_owned(),
            revoked_unix_ms: None,
            revoked_by: String::new(),
        };
        self.store
            .transaction(async |tx| {
                tx.create_join_token(&new, now).await?;
                audit::join_token_created(tx, actor, &row).await
            })
            .await?;
        Ok(MintedToken {
            token: token.expose(),
            row,
        })
    }

    /// The tenant's join tokens, newest first.
    pub async fn list_tokens(
        &self,
        tenant: &Tenant,
        limit: u32,
    ) -> Result<Vec<JoinTokenRow>, EnrollError> {
        Ok(self.store.join_tokens(tenant, limit).await?)
    }

    /// Revokes the tenant's token `token_id` on behalf of `actor`.
    pub async fn revoke_token(
        &self,
        actor: &str,
        tenant: &Tenant,
        token_id: &str,
    ) -> Result<JoinTokenRow, EnrollError> {
        let now = crate::clock::unix_ms();
        self.store
            .transaction(async |tx| {
                let row = tx
                    .revoke_join_token(tenant, token_id, actor, now)
                    .await?
                    .ok_or_else(|| EnrollError::NotFound {
                        token_id: token_id.chars().take(64).collect(),
                        tenant: tenant.clone(),
                    })?;
                audit::join_token_revoked(tx, actor, &row).await?;
                Ok(row)
            })
            .await
    }

    /// Enrolls an agent: consumes one use of the token, signs the CSR for the token's tenancy and records the
    /// certificate, all or nothing.
    pub async fn enroll(&self, request: EnrollRequest) -> Result<SignedAgent, EnrollError> {
        let token = JoinToken::parse(&request.token)?;
        let now = crate::clock::unix_ms();
        let validity = self.validity();
        let csr = request.csr;
        let signed = self
            .store
            .transaction(async |tx| {
                let row = tx
                    .consume_join_token(token.id(), &token.secret_sha256(), now)
                    .await?
                    .map_err(EnrollError::Refused)?;
                if let Some(expected) = &request.expect
                    && *expected != row.tenant
                {
                    return Err(EnrollError::ScopeMismatch {
                        token: row.tenant,
                        expected: expected.clone(),
                    });
                }
                let agent = AgentKey::new(row.tenant.clone(), request.agent_id.clone());
                let signed = pki::sign_agent_csr(&self.pki_dir, csr, &agent, validity)?;
                let issued = IssuedCertificate {
                    cert_serial: signed.serial.clone(),
                    agent,
                    kind: IssueKind::Enroll,
                    join_token_id: row.token_id.clone(),
                    not_after_unix_ms: unix_ms(signed.not_after),
                    issuer: Some(signed.issuer.clone()),
                    issued_by: format!("agent:{}", signed.spiffe),
                };
                tx.record_issued_certificate(&issued, now).await?;
                audit::certificate_issued(tx, &issued.issued_by, &issued).await?;
                Ok(signed)
            })
            .await?;
        Ok(signed)
    }

    /// Renews the certificate `current` of a connected agent: signs `csr` for `agent` (the identity of the
    /// connection's verified certificate, never one the CSR names) and records it, on behalf of `actor`
    /// (`agent:<spiffe>`). A revoked `current` renews nothing (checked in the store, not only in the cached set
    /// the handshake uses).
    pub async fn renew(
        &self,
        actor: &str,
        agent: &AgentKey,
        current: &gait_store::CertSerial,
        csr: VerifiedCsr,
    ) -> Result<SignedAgent, EnrollError> {
        let now = crate::clock::unix_ms();
        let validity = self.validity();
        self.store
            .transaction(async |tx| {
                if tx.is_revoked(current).await? {
                    return Err(EnrollError::Revoked {
                        serial: current.clone(),
                    });
                }
                let signed = pki::sign_agent_csr(&self.pki_dir, csr, agent, validity)?;
                let issued = IssuedCertificate {
                    cert_serial: signed.serial.clone(),
                    agent: agent.clone(),
                    kind: IssueKind::Renew,
                    join_token_id: String::new(),
                    not_after_unix_ms: unix_ms(signed.not_after),
                    issuer: Some(signed.issuer.clone()),
                    issued_by: actor.to_owned(),
                };
                tx.record_issued_certificate(&issued, now).await?;
                audit::certificate_issued(tx, actor, &issued).await?;
                Ok(signed)
            })
            .await
    }

    /// The validity window of a certificate issued now: backdated for clock skew by 5 minutes, or by a quarter
    /// of the validity when that is shorter (so a short test validity is not dominated by the backdating,
    /// which would make an agent renew at once, again and again).
    fn validity(&self) -> Validity {
        let now = pki_now();
        let length = time::Duration::try_from(self.settings.certificate_validity)
            .unwrap_or(time::Duration::days(90));
        let backdate: time::Duration = (length / 4_i32).min(time::Duration::minutes(5));
        Validity::between(now - backdate, now + length)
    }
}

fn pki_now() -> OffsetDateTime {
    let now = crate::clock::now_utc();
    now.replace_nanosecond(0).unwrap_or(now)
}

fn unix_ms(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}
