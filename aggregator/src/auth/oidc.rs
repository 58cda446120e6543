//! Operator identity from OpenID Connect: verifies an operator's bearer JWT against the provider's keys
//! ([`super::jwks`]) and yields an [`OperatorIdentity`].
//!
//! Order of the checks, each failure a [`TokenError`] with a stable [`TokenError::reason`]:
//! 1. Shape: three base64url parts (a JWE or anything else is `malformed`), at most [`MAX_TOKEN_BYTES`], no
//!    `crit` header.
//! 2. Algorithm, read from the header before any key is touched: `none`, every `HS*` and anything outside
//!    `auth.oidc.algorithms` is `algorithm_not_allowed`.
//! 3. Key: by `kid` from the cached JWKS (an unknown `kid` triggers one rate-limited refresh): `unknown_key`,
//!    or `jwks_unavailable` when no key was ever loaded. The key's type and `alg` must fit the token's
//!    algorithm (`key_algorithm_mismatch`), so an RSA public key never becomes an HMAC secret.
//! 4. Signature (jsonwebtoken, with [`ring_crypto`]'s ring-backed provider): `bad_signature`.
//! 5. Claims, only once the signature holds: `iss` equals `auth.oidc.issuer` (`wrong_issuer`), `aud` holds
//!    `auth.oidc.audience` (`wrong_audience`), `exp` is present and not past (`expired`), `nbf` if present is
//!    not ahead (`not_yet_valid`) — both with `auth.oidc.leeway_seconds` — then the subject
//!    (`auth.oidc.subject_claim`) and the groups (`auth.oidc.groups_claim`: an array of strings or one string,
//!    at most [`MAX_GROUPS`] of at most [`MAX_CLAIM_BYTES`] each); a missing or bad one is `bad_claim`.
//!
//! A token that passed all of it is kept in the verified-token cache ([`cache`], `auth.oidc.token_cache_size`),
//! keyed by its SHA-256: the same token again skips steps 1–5 but for what can change since — its key is still
//! the one the key set holds, and `exp`/`nbf` against the clock (same leeway, same reasons).

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use gait_runtime::Tasks;
use gait_runtime::http::client::Client;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use super::jwks::{FETCH_TIMEOUT, Jwks, JwksMetrics, KeySource, Lookup};
use crate::config::OidcConfig;

pub mod cache;
mod ring_crypto;

use cache::{TokenCache, TokenCacheMetrics, VerifiedToken};

/// Makes jsonwebtoken verify signatures with ring, process-wide ([`OidcVerifier::from_config`] does it; call it
/// earlier in a process that uses jsonwebtoken before building a verifier). `false` when another provider was
/// already in use: verification stays correct, only slower.
pub fn install_ring_provider() -> bool {
    ring_crypto::install()
}

/// Longest bearer token accepted, in bytes.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Most groups taken from one token.
pub const MAX_GROUPS: usize = 256;
/// Longest subject or group name accepted, in bytes.
pub const MAX_CLAIM_BYTES: usize = 256;
/// Largest `auth.oidc.leeway_seconds`.
pub const MAX_LEEWAY_SECONDS: u64 = 300;
/// Algorithms accepted when `auth.oidc.algorithms` is not set.
pub const DEFAULT_ALGORITHMS: [&str; 3] = ["RS256", "ES256", "EdDSA"];
/// Every reason a token is refused ([`TokenError::reason`]), for the metric's zero-initialised label values.
pub const REASONS: [&str; 11] = [
    "malformed",
    "algorithm_not_allowed",
    "key_algorithm_mismatch",
    "unknown_key",
    "jwks_unavailable",
    "bad_signature",
    "wrong_issuer",
    "wrong_audience",
    "expired",
    "not_yet_valid",
    "bad_claim",
];

/// An operator authenticated by the OpenID provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorIdentity {
    /// The token's issuer (`auth.oidc.issuer`).
    pub issuer: String,
    /// The subject (from `auth.oidc.subject_claim`, `sub` by default).
    pub subject: String,
    /// The groups (from `auth.oidc.groups_claim`, `groups` by default); empty when the token has none.
    pub groups: Vec<String>,
    /// When the token expires, in Unix seconds.
    pub expires_unix_s: i64,
}

impl OperatorIdentity {
    /// Who this is in audit rows and logs: `oidc:<issuer>#<subject>`.
    pub fn actor(&self) -> String {
        format!("oidc:{}#{}", self.issuer, self.subject)
    }
}

/// Why a bearer token was refused. [`TokenError::reason`] is the stable machine code (401 body, metric label);
/// the message says what is wrong and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a signed JWT of the accepted shape.
    #[error(
        "the bearer token is not a valid signed JWT ({detail}); send the access token the identity provider issued"
    )]
    Malformed {
        /// What is wrong.
        detail: String,
    },
    /// The header's algorithm is refused.
    #[error(
        "the token is signed with `{alg}`, which this aggregator does not accept (auth.oidc.algorithms: {allowed}); \
         `none` and HMAC algorithms are never accepted"
    )]
    AlgorithmNotAllowed {
        /// The header's `alg` (shortened).
        alg: String,
        /// The accepted algorithms.
        allowed: String,
    },
    /// The key named by `kid` cannot verify the token's algorithm.
    #[error(
        "the key `{kid}` is a {key_type} key{key_alg} and cannot verify a `{alg}` token; the token was not \
         issued by the configured provider's key for that algorithm"
    )]
    KeyAlgorithmMismatch {
        /// The `kid`.
        kid: String,
        /// The key's type.
        key_type: &'static str,
        /// `" for <alg>"` when the key names its algorithm.
        key_alg: String,
        /// The token's algorithm.
        alg: String,
    },
    /// No key of the provider's JWKS matches the token.
    #[error(
        "no signing key {kid} in the identity provider's key set (refreshed at most every {gap_s} s); the token \
         was issued by another provider, or with a key the provider no longer publishes"
    )]
    UnknownKey {
        /// `` `kid` `` or `for <alg> without a kid`.
        kid: String,
        /// The refresh gap in seconds.
        gap_s: u64,
    },
    /// The provider's keys were never loaded.
    #[error(
        "the identity provider's signing keys could not be loaded yet ({keys}); check that it is reachable from \
         the aggregator (its logs say why), or use the admin token"
    )]
    JwksUnavailable {
        /// Where the keys are read.
        keys: String,
    },
    /// The signature does not verify.
    #[error(
        "the token's signature does not verify; it was altered or not signed by the identity provider"
    )]
    BadSignature,
    /// `iss` is not the configured issuer.
    #[error(
        "the token's issuer is {found}, expected `{expected}` (auth.oidc.issuer); get a token from that issuer"
    )]
    WrongIssuer {
        /// What the token says (shortened, quoted).
        found: String,
        /// `auth.oidc.issuer`.
        expected: String,
    },
    /// `aud` does not hold the configured audience.
    #[error(
        "the token's audience is {found}, expected `{expected}` (auth.oidc.audience); request a token for that \
         audience (resource)"
    )]
    WrongAudience {
        /// What the token says (shortened).
        found: String,
        /// `auth.oidc.audience`.
        expected: String,
    },
    /// `exp` is past.
    #[error(
        "the token expired at {exp} (Unix seconds; now {now}, leeway {leeway_s} s); get a new token"
    )]
    Expired {
        /// `exp`.
        exp: i64,
        /// The time of the check.
        now: i64,
        /// The leeway.
        leeway_s: u64,
    },
    /// `nbf` is ahead.
    #[error(
        "the token is not valid before {nbf} (Unix seconds; now {now}, leeway {leeway_s} s); check the clocks of \
         the aggregator and the identity provider"
    )]
    NotYetValid {
        /// `nbf`.
        nbf: i64,
        /// The time of the check.
        now: i64,
        /// The leeway.
        leeway_s: u64,
    },
    /// A required claim is missing or unusable.
    #[error(
        "the token's `{claim}` claim {detail}; configure the identity provider (or auth.oidc.{key}) accordingly"
    )]
    BadClaim {
        /// The claim.
        claim: String,
        /// What is wrong with it.
        detail: String,
        /// The config key that names the claim (`subject_claim`, `groups_claim`), or `issuer` for `exp`.
        key: &'static str,
    },
}

impl TokenError {
    /// The stable machine code: one of [`REASONS`].
    pub fn reason(&self) -> &'static str {
        match self {
            TokenError::Malformed { .. } => "malformed",
            TokenError::AlgorithmNotAllowed { .. } => "algorithm_not_allowed",
            TokenError::KeyAlgorithmMismatch { .. } => "key_algorithm_mismatch",
            TokenError::UnknownKey { .. } => "unknown_key",
            TokenError::JwksUnavailable { .. } => "jwks_unavailable",
            TokenError::BadSignature => "bad_signature",
            TokenError::WrongIssuer { .. } => "wrong_issuer",
            TokenError::WrongAudience { .. } => "wrong_audience",
            TokenError::Expired { .. } => "expired",
            TokenError::NotYetValid { .. } => "not_yet_valid",
            TokenError::BadClaim { .. } => "bad_claim",
        }
    }
}

/// Why the verifier could not be built from the configuration.
#[derive(Debug, thiserror::Error)]
pub enum OidcSetupError {
    /// `auth.oidc.issuer` is not set: OIDC is off.
    #[error("auth.oidc.issuer is not set")]
    Disabled,
    /// A key has a value the verifier cannot use (the configuration's validation normally refuses it first).
    #[error("auth.oidc.{key}: {detail}")]
    Invalid {
        /// The key under `auth.oidc`.
        key: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// `auth.oidc.ca_file` could not be loaded.
    #[error("auth.oidc.ca_file: {0}")]
    Ca(#[source] gait_runtime::http::tls::TlsConfigError),
}

/// Parses an algorithm name of `auth.oidc.algorithms`: asymmetric signature algorithms only.
pub fn parse_algorithm(name: &str) -> Result<Algorithm, String> {
    let alg: Algorithm = name.parse().map_err(|_| {
        format!(
            "`{name}` is not a JWS algorithm this aggregator knows (RS256, RS384, RS512, PS256, PS384, PS512, \
             ES256, ES384, EdDSA)"
        )
    })?;
    if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
        return Err(format!(
            "`{name}` is an HMAC algorithm: a shared secret cannot come from a public JWKS, and accepting it \
             would let anyone holding the public key forge tokens"
        ));
    }
    Ok(alg)
}

/// The verifier of one OpenID provider's tokens.
#[derive(Debug)]
pub struct OidcVerifier {
    issuer: String,
    audience: String,
    algorithms: Vec<Algorithm>,
    allowed: String,
    leeway_s: u64,
    subject_claim: String,
    groups_claim: String,
    refresh_every: Duration,
    unknown_kid_gap: Duration,
    jwks: Arc<Jwks>,
    /// Verified tokens by SHA-256; `None` when `auth.oidc.token_cache_size` is 0.
    cache: Option<TokenCache>,
}

impl OidcVerifier {
    /// The verifier for `auth.oidc` (which [`crate::config::Config::validate`] has checked). No key is loaded
    /// yet: [`OidcVerifier::spawn_refresh`] loads them (or [`OidcVerifier::jwks`]`.refresh()` at once).
    /// `metrics` counts the key fetches, `cache_metrics` the verified-token cache.
    pub fn from_config(
        config: &OidcConfig,
        metrics: JwksMetrics,
        cache_metrics: TokenCacheMetrics,
    ) -> Result<Arc<OidcVerifier>, OidcSetupError> {
        if !install_ring_provider() {
            tracing::debug!(
                "jsonwebtoken's crypto provider was chosen before the OIDC verifier was built; RustCrypto verifies"
            );
        }
        let invalid = |key, detail: String| OidcSetupError::Invalid { key, detail };
        let issuer = config.issuer.clone().ok_or(OidcSetupError::Disabled)?;
        let audience = config
            .audience
            .clone()
            .filter(|a| !a.is_empty())
            .ok_or_else(|| invalid("audience", "must be set with auth.oidc.issuer".to_owned()))?;
        let mut algorithms = Vec::new();
        for name in &config.algorithms {
            algorithms.push(parse_algorithm(name).map_err(|e| invalid("algorithms", e))?);
        }
        if algorithms.is_empty() {
            return Err(invalid("algorithms", "must name at least one".to_owned()));
        }
        if config.leeway_seconds > MAX_LEEWAY_SECONDS {
            return Err(invalid(
                "leeway_seconds",
                format!("at most {MAX_LEEWAY_SECONDS}"),
            ));
        }
        let source = match (&config.jwks_url, &config.jwks_file) {
            (Some(url), None) => KeySource::Url(url.clone()),
            (None, Some(path)) => KeySource::File(path.clone()),
            (None, None) => KeySource::Discovery {
                issuer: issuer.clone(),
            },
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "jwks_url",
                    "set jwks_url or jwks_file, not both".to_owned(),
                ));
            }
        };
        let tls = match &config.ca_file {
            Some(ca) => gait_runtime::http::tls::client_config(ca),
            None => gait_runtime::http::tls::client_config_public_roots(),
        }
        .map_err(OidcSetupError::Ca)?;
        if config.token_cache_size > cache::MAX_TOKEN_CACHE_SIZE {
            return Err(invalid(
                "token_cache_size",
                format!("at most {}", cache::MAX_TOKEN_CACHE_SIZE),
            ));
        }
        let cache_size = usize::try_from(config.token_cache_size).unwrap_or(usize::MAX);
        let unknown_kid_gap = Duration::from_secs(config.unknown_kid_refresh_seconds);
        let jwks = Arc::new(Jwks::new(
            source,
            Client::new(Some(tls), FETCH_TIMEOUT),
            unknown_kid_gap,
            metrics,
        ));
        Ok(Arc::new(OidcVerifier {
            allowed: config.algorithms.join(", "),
            issuer,
            audience,
            algorithms,
            leeway_s: config.leeway_seconds,
            subject_claim: config.subject_claim.clone(),
            groups_claim: config.groups_claim.clone(),
            refresh_every: Duration::from_secs(config.refresh_interval_seconds),
            unknown_kid_gap,
            jwks,
            cache: TokenCache::new(cache_size, cache_metrics),
        }))
    }

    /// The key cache.
    pub fn jwks(&self) -> &Arc<Jwks> {
        &self.jwks
    }

    /// The configured issuer.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The verified-token cache; `None` when `auth.oidc.token_cache_size` is 0.
    pub fn token_cache(&self) -> Option<&TokenCache> {
        self.cache.as_ref()
    }

    /// Starts the task that loads the keys now and keeps them fresh (task `oidc-jwks-refresh`).
    pub fn spawn_refresh(&self, tasks: &Tasks, token: CancellationToken) {
        self.jwks.spawn_refresh(tasks, self.refresh_every, token);
    }

    /// Verifies `bearer` (the token without `Bearer `) at the current time.
    pub async fn verify(&self, bearer: &str) -> Result<OperatorIdentity, TokenError> {
        let now = crate::clock::unix_ms().div_euclid(1000);
        self.verify_at(bearer, now).await
    }

    /// Verifies `bearer` as at `now` (Unix seconds): from the verified-token cache when it holds the token and
    /// the token's key is still current, else in full (and a token that passes enters the cache).
    pub async fn verify_at(&self, bearer: &str, now: i64) -> Result<OperatorIdentity, TokenError> {
        // An oversized token is refused by the full check without being hashed.
        let Some(cache) = self
            .cache
            .as_ref()
            .filter(|_| bearer.len() <= MAX_TOKEN_BYTES)
        else {
            return Ok(self.verify_fresh(bearer, now).await?.identity);
        };
        let digest = cache::digest(bearer);
        if let Some(hit) = cache.get(&digest) {
            if hit.key_still_current(&self.jwks.current()) {
                // Everything else the full check decides is fixed by the token's bytes and the configuration.
                if let Err(refused) =
                    self.check_times(hit.identity.expires_unix_s, hit.not_before, now)
                {
                    if matches!(refused, TokenError::Expired { .. }) {
                        cache.remove(&digest);
                    }
                    return Err(refused);
                }
                return Ok(hit.identity.clone());
            }
            // Its key was removed or replaced: the full check decides (normally `unknown_key`).
            cache.remove(&digest);
        }
        let verified = self.verify_fresh(bearer, now).await?;
        let identity = verified.identity.clone();
        cache.insert(digest, verified);
        Ok(identity)
    }

    /// The full check of `bearer` at `now`, without the cache.
    async fn verify_fresh(&self, bearer: &str, now: i64) -> Result<VerifiedToken, TokenError> {
        let header = parse_header(bearer)?;
        let alg = self.check_algorithm(&header.alg)?;
        let kid = header.kid.as_deref();
        let mut keys = self.jwks.current();
        if !matches!(keys.find(kid, alg), Lookup::Found(_)) {
            // A kid not yet seen (key rotation) or no keys yet: one rate-limited refresh.
            if matches!(keys.find(kid, alg), Lookup::Unknown) {
                keys = self.jwks.refresh_for_unknown_kid().await;
            }
        }
        let key = match keys.find(kid, alg) {
            Lookup::Found(key) => key,
            Lookup::Unknown if keys.is_empty() => {
                return Err(TokenError::JwksUnavailable {
                    keys: self.jwks.source().describe(),
                });
            }
            Lookup::Unknown => {
                return Err(TokenError::UnknownKey {
                    kid: match kid {
                        Some(kid) => format!("`{}`", shorten(kid)),
                        None => format!("for {alg:?} without a kid"),
                    },
                    gap_s: self.unknown_kid_gap.as_secs(),
                });
            }
            Lookup::Mismatch(key) => {
                return Err(TokenError::KeyAlgorithmMismatch {
                    kid: shorten(kid.unwrap_or_default()),
                    key_type: key.key_type.as_str(),
                    key_alg: key.alg.map(|a| format!(" for {a:?}")).unwrap_or_default(),
                    alg: format!("{alg:?}"),
                });
            }
        };
        let mut validation = Validation::new(alg);
        // Claims are checked below, after the signature, with this module's clock and reasons.
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        let claims = jsonwebtoken::decode::<Map<String, Value>>(bearer, &key.decoding, &validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature => TokenError::BadSignature,
                other => TokenError::Malformed {
                    detail: format!("{other:?}").chars().take(120).collect(),
                },
            })?
            .claims;
        let (identity, not_before) = self.check_claims(&claims, now)?;
        Ok(VerifiedToken {
            identity,
            not_before,
            alg,
            kid: header.kid,
            key_fingerprint: key.fingerprint,
        })
    }

    fn check_algorithm(&self, name: &str) -> Result<Algorithm, TokenError> {
        let refused = || TokenError::AlgorithmNotAllowed {
            alg: shorten(name),
            allowed: self.allowed.clone(),
        };
        let alg = parse_algorithm(name).map_err(|_| refused())?;
        if !self.algorithms.contains(&alg) {
            return Err(refused());
        }
        Ok(alg)
    }

    /// The claims' identity and `nbf`.
    fn check_claims(
        &self,
        claims: &Map<String, Value>,
        now: i64,
    ) -> Result<(OperatorIdentity, Option<i64>), TokenError> {
        match claims.get("iss") {
            Some(Value::String(iss)) if *iss == self.issuer => {}
            other => {
                return Err(TokenError::WrongIssuer {
                    found: describe(other),
                    expected: self.issuer.clone(),
                });
            }
        }
        let audience_ok = match claims.get("aud") {
            Some(Value::String(aud)) => *aud == self.audience,
            Some(Value::Array(auds)) => auds
                .iter()
                .any(|a| a.as_str() == Some(self.audience.as_str())),
            _ => false,
        };
        if !audience_ok {
            return Err(TokenError::WrongAudience {
                found: describe(claims.get("aud")),
                expected: self.audience.clone(),
            });
        }
        let exp = numeric_date(claims, "exp")?.ok_or_else(|| TokenError::BadClaim {
            claim: "exp".to_owned(),
            detail: "is missing (tokens without an expiry are refused)".to_owned(),
            key: "issuer",
        })?;
        self.check_expiry(exp, now)?;
        let nbf = numeric_date(claims, "nbf")?;
        self.check_not_before(nbf, now)?;
        let subject = match claims.get(&self.subject_claim) {
            Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_CLAIM_BYTES => s.clone(),
            other => {
                return Err(TokenError::BadClaim {
                    claim: shorten(&self.subject_claim),
                    detail: format!(
                        "must be a non-empty string of at most {MAX_CLAIM_BYTES} bytes, is {}",
                        describe(other)
                    ),
                    key: "subject_claim",
                });
            }
        };
        let groups = self.groups(claims.get(&self.groups_claim))?;
        let identity = OperatorIdentity {
            issuer: self.issuer.clone(),
            subject,
            groups,
            expires_unix_s: exp,
        };
        Ok((identity, nbf))
    }

    /// `exp` then `nbf` at `now`, as [`OidcVerifier::check_claims`] checks them (a cache hit's time check).
    fn check_times(&self, exp: i64, nbf: Option<i64>, now: i64) -> Result<(), TokenError> {
        self.check_expiry(exp, now)?;
        self.check_not_before(nbf, now)
    }

    /// `exp` is not past at `now`, with the leeway.
    fn check_expiry(&self, exp: i64, now: i64) -> Result<(), TokenError> {
        if now.saturating_sub(self.leeway()) >= exp {
            return Err(TokenError::Expired {
                exp,
                now,
                leeway_s: self.leeway_s,
            });
        }
        Ok(())
    }

    /// `nbf`, if any, is not ahead of `now`, with the leeway.
    fn check_not_before(&self, nbf: Option<i64>, now: i64) -> Result<(), TokenError> {
        if let Some(nbf) = nbf
            && now.saturating_add(self.leeway()) < nbf
        {
            return Err(TokenError::NotYetValid {
                nbf,
                now,
                leeway_s: self.leeway_s,
            });
        }
        Ok(())
    }

    fn leeway(&self) -> i64 {
        i64::try_from(self.leeway_s).unwrap_or(i64::MAX)
    }

    fn groups(&self, value: Option<&Value>) -> Result<Vec<String>, TokenError> {
        let bad = |detail: String| TokenError::BadClaim {
            claim: shorten(&self.groups_claim),
            detail,
            key: "groups_claim",
        };
        let one = |v: &Value| match v {
            Value::String(s) if !s.is_empty() && s.len() <= MAX_CLAIM_BYTES => Ok(s.clone()),
            other => Err(bad(format!(
                "must hold non-empty strings of at most {MAX_CLAIM_BYTES} bytes, holds {}",
                describe(Some(other))
            ))),
        };
        match value {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) if items.len() > MAX_GROUPS => Err(bad(format!(
                "holds {} groups, at most {MAX_GROUPS} are accepted",
                items.len()
            ))),
            Some(Value::Array(items)) => items.iter().map(one).collect(),
            Some(single) => Ok(vec![one(single)?]),
        }
    }
}

/// The parts of a JOSE header the verifier reads before choosing a key.
#[derive(Debug, serde::Deserialize)]
struct JoseHeader {
    alg: String,
    kid: Option<String>,
    crit: Option<Value>,
}

/// Checks the token's shape and reads its header.
fn parse_header(token: &str) -> Result<JoseHeader, TokenError> {
    let malformed = |detail: &str| TokenError::Malformed {
        detail: detail.to_owned(),
    };
    if token.len() > MAX_TOKEN_BYTES {
        return Err(malformed(&format!("longer than {MAX_TOKEN_BYTES} bytes")));
    }
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        return Err(malformed(&format!(
            "{} dot-separated parts, a signed JWT has 3 (encrypted tokens are not accepted)",
            parts.len()
        )));
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(parts[0])
        .map_err(|_| malformed("the header is not base64url"))?;
    let header: JoseHeader = serde_json::from_slice(&bytes)
        .map_err(|_| malformed("the header is not a JSON object with a string `alg`"))?;
    if header.crit.is_some() {
        return Err(malformed("the header has critical extensions (`crit`)"));
    }
    Ok(header)
}

/// A NumericDate claim (RFC 7519 §2) as whole seconds; `Ok(None)` when absent.
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<i64>, TokenError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            let seconds = n.as_i64().or_else(|| {
                n.as_f64()
                    .filter(|f| f.is_finite())
                    .map(|f| f.floor() as i64)
            });
            seconds.map(Some).ok_or_else(|| TokenError::BadClaim {
                claim: name.to_owned(),
                detail: "is not a number of seconds".to_owned(),
                key: "issuer",
            })
        }
        Some(other) => Err(TokenError::BadClaim {
            claim: name.to_owned(),
            detail: format!("must be a number of seconds, is {}", describe(Some(other))),
            key: "issuer",
        }),
    }
}

/// A claim value for a message: quoted and shortened, or its JSON type.
fn describe(value: Option<&Value>) -> String {
    match value {
        None => "missing".to_owned(),
        Some(Value::String(s)) => format!("`{}`", shorten(s)),
        Some(Value::Array(items)) => {
            let shown: Vec<String> = items.iter().take(4).map(|v| describe(Some(v))).collect();
            let more = if items.len() > 4 { ", …" } else { "" };
            format!("[{}{more}]", shown.join(", "))
        }
        Some(Value::Null) => "null".to_owned(),
        Some(Value::Bool(_)) => "a boolean".to_owned(),
        Some(Value::Number(_)) => "a number".to_owned(),
        Some(Value::Object(_)) => "an object".to_owned(),
    }
}

/// At most 100 characters of an untrusted string, without control characters.
fn shorten(s: &str) -> String {
    let mut out: String = s.chars().filter(|c| !c.is_control()).take(100).collect();
    if s.chars().count() > 100 {
        out.push('…');
    }
    out
}

/// The config default of `auth.oidc.algorithms`.
pub fn default_algorithms() -> Vec<String> {
    DEFAULT_ALGORITHMS.iter().map(|&a| a.to_owned()).collect()
}

#[cfg(test)]
mod tests;
