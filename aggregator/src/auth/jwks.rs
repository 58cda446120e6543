//! The OpenID provider's public signing keys (a JWKS, RFC 7517), fetched, cached by `kid` and refreshed.
//!
//! Where the keys come from ([`KeySource`]): a JWKS URL, the provider's discovery document
//! (`<issuer>/.well-known/openid-configuration` → `jwks_uri`), or a local file for disconnected sites.
//!
//! Rules the cache keeps:
//! - **Only signature keys of a known type.** RSA (`RS*`/`PS*`), EC P-256/P-384 (`ES256`/`ES384`) and OKP
//!   Ed25519 (`EdDSA`). Symmetric (`oct`) keys, encryption keys (`use: enc`) and unknown key types are skipped,
//!   so no key of the set can ever serve as an HMAC secret. A key's `alg`, when present, must fit its type.
//! - **Last good set wins.** A fetch that fails, answers garbage or holds no usable key leaves the current set in
//!   place; the first failure of a streak is logged at WARN, the recovery at INFO, and every attempt is counted
//!   (`gait_aggregator_oidc_jwks_refreshes_total{result}`).
//! - **Bounded.** Answers larger than [`MAX_JWKS_BYTES`] (discovery: [`MAX_DISCOVERY_BYTES`]) or sets with more
//!   than [`MAX_KEYS`] keys are refused; each fetch has [`FETCH_TIMEOUT`].
//! - **Refresh.** Periodically (a background task, [`Jwks::spawn_refresh`]), and when a token names a `kid` the
//!   set does not hold ([`Jwks::refresh_for_unknown_kid`]) — at most once per configured gap, single-flight, so
//!   a stream of tokens with made-up kids cannot make the aggregator hammer the provider. A JWKS file is
//!   re-read when its size, modification time or inode changes (checked every [`FILE_POLL`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use gait_runtime::Tasks;
use gait_runtime::http::client::Client;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Largest JWKS document accepted, in bytes.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Largest discovery document accepted, in bytes.
pub const MAX_DISCOVERY_BYTES: usize = 64 * 1024;
/// Most keys one JWKS may hold.
pub const MAX_KEYS: usize = 100;
/// Deadline of one HTTP fetch (connect, TLS, request, whole answer).
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a JWKS file is checked for a change.
pub const FILE_POLL: Duration = Duration::from_secs(1);

/// Where the signing keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A JWKS document at this URL (`auth.oidc.jwks_url`).
    Url(String),
    /// The `jwks_uri` of the discovery document of this issuer (`auth.oidc.issuer`).
    Discovery {
        /// The issuer URL, exactly as configured.
        issuer: String,
    },
    /// A JWKS document in a local file (`auth.oidc.jwks_file`).
    File(PathBuf),
}

impl KeySource {
    /// Where the keys are read, for logs and error messages.
    pub fn describe(&self) -> String {
        match self {
            KeySource::Url(url) => url.clone(),
            KeySource::Discovery { issuer } => {
                format!(
                    "{}{DISCOVERY_PATH} (jwks_uri)",
                    issuer.trim_end_matches('/')
                )
            }
            KeySource::File(path) => path.display().to_string(),
        }
    }
}

/// Path of the discovery document under the issuer URL (OpenID Connect Discovery 1.0 §4).
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";

/// Why the keys could not be loaded (the current set, if any, stays in force).
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// The HTTP request failed (connect, TLS, timeout, answer too large).
    #[error(
        "fetching {url} failed: {source}; check that the OpenID provider is reachable from the aggregator"
    )]
    Fetch {
        /// The URL.
        url: String,
        /// What the client reported.
        #[source]
        source: gait_runtime::http::client::ClientError,
    },
    /// The provider answered with a status other than 200.
    #[error("{url} answered HTTP {status}; check auth.oidc.issuer / auth.oidc.jwks_url")]
    Status {
        /// The URL.
        url: String,
        /// The status.
        status: StatusCode,
    },
    /// The file could not be read.
    #[error("cannot read the JWKS file {}: {source}; check auth.oidc.jwks_file", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A document is larger than accepted.
    #[error("{what} is {size} bytes, more than the {max} accepted")]
    TooLarge {
        /// Which document.
        what: String,
        /// Its size.
        size: usize,
        /// The bound.
        max: usize,
    },
    /// A document is not what it should be.
    #[error("{what} is not valid: {detail}")]
    Invalid {
        /// Which document.
        what: String,
        /// What is wrong.
        detail: String,
    },
    /// The discovery document names another issuer than configured.
    #[error(
        "the discovery document of {configured} names the issuer `{found}`; set auth.oidc.issuer to exactly \
         the issuer the provider announces"
    )]
    IssuerMismatch {
        /// `auth.oidc.issuer`.
        configured: String,
        /// The discovery document's `issuer`.
        found: String,
    },
    /// The discovery document's `jwks_uri` is not allowed.
    #[error("jwks_uri `{uri}` of {issuer}: {detail}")]
    BadJwksUri {
        /// The issuer.
        issuer: String,
        /// The URI.
        uri: String,
        /// Why it is refused.
        detail: String,
    },
}

/// Whether `url` may be fetched: `https://`, or `http://` to a loopback host only (`localhost`, 127.0.0.0/8,
/// `::1`); `Err` says why not.
pub fn check_url(url: &str) -> Result<(), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| format!("not a URL: {e}"))?;
    let host = uri.host().ok_or_else(|| "no host".to_owned())?;
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") if is_loopback_host(host) => Ok(()),
        Some("http") => Err(format!(
            "plain http:// is allowed only to a loopback host (tests); `{host}` must be reached over https://"
        )),
        _ => Err("the scheme must be https://".to_owned()),
    }
}

fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The key type of a cached key, as far as it decides which algorithms it may verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// `kty: RSA`.
    Rsa,
    /// `kty: EC`, `crv: P-256`.
    EcP256,
    /// `kty: EC`, `crv: P-384`.
    EcP384,
    /// `kty: OKP`, `crv: Ed25519`.
    Ed25519,
}

impl KeyType {
    /// Whether a key of this type may verify `alg`.
    pub fn fits(self, alg: Algorithm) -> bool {
        use Algorithm as A;
        match self {
            KeyType::Rsa => matches!(
                alg,
                A::RS256 | A::RS384 | A::RS512 | A::PS256 | A::PS384 | A::PS512
            ),
            KeyType::EcP256 => alg == A::ES256,
            KeyType::EcP384 => alg == A::ES384,
            KeyType::Ed25519 => alg == A::EdDSA,
        }
    }

    /// The JWK spelling (`RSA`, `EC P-256`, ...), for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::Rsa => "RSA",
            KeyType::EcP256 => "EC P-256",
            KeyType::EcP384 => "EC P-384",
            KeyType::Ed25519 => "OKP Ed25519",
        }
    }
}

/// One usable verification key.
#[derive(Clone)]
pub struct Key {
    /// Its `kid`, when the JWKS gives one.
    pub kid: Option<String>,
    /// Its type.
    pub key_type: KeyType,
    /// Its `alg`, when the JWKS gives one: then it verifies only that algorithm.
    pub alg: Option<Algorithm>,
    /// The key itself.
    pub decoding: DecodingKey,
    /// SHA-256 of the key's type and public parameters: tells two keys apart even under one `kid`, so a
    /// verified-token cache entry can check that the key which verified it is still the one the set holds.
    pub fingerprint: [u8; 32],
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("key_type", &self.key_type)
            .field("alg", &self.alg)
            .field("fingerprint", &hex::encode(&self.fingerprint[..8]))
            .finish_non_exhaustive()
    }
}

impl Key {
    /// Whether this key may verify a token signed with `alg`: its type fits, and its `alg` (if any) is `alg`.
    pub fn accepts(&self, alg: Algorithm) -> bool {
        self.key_type.fits(alg) && self.alg.is_none_or(|a| a == alg)
    }
}

/// What a lookup of a token's key found.
#[derive(Debug)]
pub enum Lookup<'a> {
    /// The key to verify with.
    Found(&'a Key),
    /// No key with that `kid` (or, without a `kid`, not exactly one key for the algorithm).
    Unknown,
    /// The key named by `kid` may not verify the token's algorithm.
    Mismatch(&'a Key),
}

/// A parsed JWKS: the usable keys, by `kid`.
#[derive(Debug, Default)]
pub struct KeySet {
    keys: Vec<Key>,
    by_kid: HashMap<String, usize>,
    skipped: usize,
}

impl KeySet {
    /// Parses a JWKS document (`{"keys": [...]}`), keeping the usable signature keys. `what` names the document
    /// in errors. An empty result is an error: a set with no usable key never replaces the current one.
    pub fn parse(bytes: &[u8], what: &str) -> Result<KeySet, JwksError> {
        #[derive(serde::Deserialize)]
        struct Doc {
            keys: Vec<serde_json::Value>,
        }
        let invalid = |detail: String| JwksError::Invalid {
            what: what.to_owned(),
            detail,
        };
        let doc: Doc = serde_json::from_slice(bytes)
            .map_err(|e| invalid(format!("expected a JSON object with a `keys` array: {e}")))?;
        if doc.keys.len() > MAX_KEYS {
            return Err(invalid(format!(
                "it holds {} keys, at most {MAX_KEYS} are accepted",
                doc.keys.len()
            )));
        }
        let mut set = KeySet::default();
        for value in doc.keys {
            match usable_key(value) {
                Some(key) => {
                    if let Some(kid) = &key.kid {
                        if set.by_kid.contains_key(kid) {
                            return Err(invalid(format!("two keys have the kid `{kid}`")));
                        }
                        set.by_kid.insert(kid.clone(), set.keys.len());
                    }
                    set.keys.push(key);
                }
                None => set.skipped += 1,
            }
        }
        if set.keys.is_empty() {
            return Err(invalid(format!(
                "no usable signature key (RSA, EC P-256/P-384 or Ed25519) among {} keys",
                set.skipped
            )));
        }
        Ok(set)
    }

    /// The usable keys.
    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    /// Keys of the document that were skipped (symmetric, encryption, unknown type or malformed).
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    /// Whether no key is loaded (nothing was ever fetched successfully).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key for a token with `kid` and `alg`. Without a `kid` the one key accepting `alg` is taken, if
    /// there is exactly one.
    pub fn find(&self, kid: Option<&str>, alg: Algorithm) -> Lookup<'_> {
        match kid {
            Some(kid) => match self.by_kid.get(kid).map(|&i| &self.keys[i]) {
                None => Lookup::Unknown,
                Some(key) if key.accepts(alg) => Lookup::Found(key),
                Some(key) => Lookup::Mismatch(key),
            },
            None => {
                let mut fitting = self.keys.iter().filter(|k| k.accepts(alg));
                match (fitting.next(), fitting.next()) {
                    (Some(key), None) => Lookup::Found(key),
                    _ => Lookup::Unknown,
                }
            }
        }
    }
}

/// The key in `value` if it is a usable signature key, `None` otherwise.
fn usable_key(value: serde_json::Value) -> Option<Key> {
    let jwk: Jwk = serde_json::from_value(value).ok()?;
    if matches!(
        jwk.common.public_key_use,
        Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
    ) {
        return None;
    }
    let key_type = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => KeyType::Rsa,
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => KeyType::EcP256,
            EllipticCurve::P384 => KeyType::EcP384,
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            KeyType::Ed25519
        }
        // `oct` (a shared secret) never: a JWKS key must not become an HMAC secret. Unknown types: skipped.
        _ => return None,
    };
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(key_alg) => {
            let alg = signature_algorithm(key_alg)?;
            if !key_type.fits(alg) {
                return None;
            }
            Some(alg)
        }
    };
    let decoding = DecodingKey::from_jwk(&jwk).ok()?;
    // The parameters serialise in a fixed field order (struct fields), so equal keys hash equal.
    let params = serde_json::to_vec(&jwk.algorithm).ok()?;
    let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
    hash.update(key_type.as_str().as_bytes());
    hash.update(&[0]);
    hash.update(&params);
    let fingerprint = hash.finish().as_ref().try_into().ok()?;
    Some(Key {
        kid: jwk.common.key_id.clone(),
        key_type,
        alg,
        decoding,
        fingerprint,
    })
}

/// The asymmetric signature algorithm a JWK's `alg` names; `None` for HMAC, encryption and unknown ones.
fn signature_algorithm(alg: KeyAlgorithm) -> Option<Algorithm> {
    use KeyAlgorithm as K;
    Some(match alg {
        K::RS256 => Algorithm::RS256,
        K::RS384 => Algorithm::RS384,
        K::RS512 => Algorithm::RS512,
        K::PS256 => Algorithm::PS256,
        K::PS384 => Algorithm::PS384,
        K::PS512 => Algorithm::PS512,
        K::ES256 => Algorithm::ES256,
        K::ES384 => Algorithm::ES384,
        K::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

/// Counters and gauges of the key cache (registered by [`crate::metrics::Metrics`]).
#[derive(Debug, Clone, Default)]
pub struct JwksMetrics {
    /// Fetches that replaced (or confirmed) the key set.
    pub refresh_ok: Counter,
    /// Fetches that failed; the last good set stayed.
    pub refresh_failed: Counter,
    /// Usable keys in the current set.
    pub keys: Gauge,
}

/// What a file looked like when it was last read.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: Option<std::time::SystemTime>,
    inode: u64,
}

impl FileStamp {
    fn of(meta: &std::fs::Metadata) -> FileStamp {
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(meta);
        #[cfg(not(unix))]
        let inode = 0;
        FileStamp {
            len: meta.len(),
            modified: meta.modified().ok(),
            inode,
        }
    }
}

/// Fetch bookkeeping, behind the single-flight lock.
#[derive(Debug, Default)]
struct FetchState {
    /// When the last fetch (of any kind) started.
    last_fetch: Option<Instant>,
    /// The `jwks_uri` found by discovery.
    jwks_uri: Option<String>,
    /// The JWKS file as last read.
    file_stamp: Option<FileStamp>,
}

/// The key cache of one OpenID provider.
#[derive(Debug)]
pub struct Jwks {
    source: KeySource,
    client: Client,
    unknown_kid_gap: Duration,
    current: RwLock<Arc<KeySet>>,
    fetch: tokio::sync::Mutex<FetchState>,
    failing: AtomicBool,
    metrics: JwksMetrics,
}

impl Jwks {
    /// An empty cache reading `source` with `client` (its TLS decides which servers are trusted); refreshes
    /// triggered by unknown `kid`s are at least `unknown_kid_gap` apart.
    pub fn new(
        source: KeySource,
        client: Client,
        unknown_kid_gap: Duration,
        metrics: JwksMetrics,
    ) -> Jwks {
        Jwks {
            source,
            client: client.with_max_answer_bytes(MAX_JWKS_BYTES.max(MAX_DISCOVERY_BYTES)),
            unknown_kid_gap,
            current: RwLock::new(Arc::new(KeySet::default())),
            fetch: tokio::sync::Mutex::new(FetchState::default()),
            failing: AtomicBool::new(false),
            metrics,
        }
    }

    /// Where the keys come from.
    pub fn source(&self) -> &KeySource {
        &self.source
    }

    /// The key set in force (empty until the first successful load).
    pub fn current(&self) -> Arc<KeySet> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Loads the keys now, whatever the rate limit (start-up and the periodic refresh). On failure the current
    /// set stays.
    pub async fn refresh(&self) -> Result<Arc<KeySet>, JwksError> {
        let mut state = self.fetch.lock().await;
        self.load(&mut state, true).await
    }

    /// A token named a `kid` the set does not hold: fetch again, unless a fetch started less than the gap ago
    /// (then the current set is returned as is). Concurrent callers wait for one fetch.
    pub async fn refresh_for_unknown_kid(&self) -> Arc<KeySet> {
        let mut state = self.fetch.lock().await;
        if state
            .last_fetch
            .is_some_and(|at| at.elapsed() < self.unknown_kid_gap)
        {
            return self.current();
        }
        // A failure is logged and counted by `load`; the caller refuses the token with the set it has.
        let _ = self.load(&mut state, false).await;
        self.current()
    }

    /// For a file source: re-reads the file when it changed since the last read. Returns whether it was read.
    pub async fn reload_file_if_changed(&self) -> bool {
        let KeySource::File(path) = &self.source else {
            return false;
        };
        let mut state = self.fetch.lock().await;
        let stamp = std::fs::metadata(path).ok().map(|m| FileStamp::of(&m));
        if stamp.is_some() && stamp == state.file_stamp {
            return false;
        }
        let _ = self.load(&mut state, false).await;
        true
    }

    async fn load(
        &self,
        state: &mut FetchState,
        rediscover: bool,
    ) -> Result<Arc<KeySet>, JwksError> {
        state.last_fetch = Some(Instant::now());
        match self.fetch_set(state, rediscover).await {
            Ok(set) => {
                let set = Arc::new(set);
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::clone(&set);
                self.metrics.refresh_ok.inc();
                self.metrics
                    .keys
                    .set(i64::try_from(set.keys.len()).unwrap_or(i64::MAX));
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(source = %self.source.describe(), keys = set.keys.len(), "OIDC signing keys loaded again");
                } else {
                    tracing::debug!(source = %self.source.describe(), keys = set.keys.len(), skipped = set.skipped, "OIDC signing keys loaded");
                }
                Ok(set)
            }
            Err(error) => {
                self.metrics.refresh_failed.inc();
                if !self.failing.swap(true, Ordering::Relaxed) {
                    let kept = self.current().keys.len();
                    tracing::warn!(
                        %error,
                        source = %self.source.describe(),
                        kept_keys = kept,
                        "cannot load the OIDC signing keys; keeping the last good set (logged once until it works again)"
                    );
                }
                Err(error)
            }
        }
    }

    async fn fetch_set(
        &self,
        state: &mut FetchState,
        rediscover: bool,
    ) -> Result<KeySet, JwksError> {
        match &self.source {
            KeySource::Url(url) => {
                let body = self.get(url, MAX_JWKS_BYTES, "the JWKS").await?;
                KeySet::parse(&body, &format!("the JWKS at {url}"))
            }
            KeySource::Discovery { issuer } => {
                let uri = match (&state.jwks_uri, rediscover) {
                    (Some(uri), false) => uri.clone(),
                    _ => {
                        let uri = self.discover(issuer).await?;
                        state.jwks_uri = Some(uri.clone());
                        uri
                    }
                };
                match self.get(&uri, MAX_JWKS_BYTES, "the JWKS").await {
                    Ok(body) => KeySet::parse(&body, &format!("the JWKS at {uri}")),
                    Err(e) => {
                        // The provider may have moved its keys: look again next time.
                        state.jwks_uri = None;
                        Err(e)
                    }
                }
            }
            KeySource::File(path) => {
                let file_error = |source| JwksError::File {
                    path: path.clone(),
                    source,
                };
                let meta = std::fs::metadata(path).map_err(file_error)?;
                let len = usize::try_from(meta.len()).unwrap_or(usize::MAX);
                if len > MAX_JWKS_BYTES {
                    return Err(JwksError::TooLarge {
                        what: path.display().to_string(),
                        size: len,
                        max: MAX_JWKS_BYTES,
                    });
                }
                let body = std::fs::read(path).map_err(file_error)?;
                state.file_stamp = Some(FileStamp::of(&meta));
                KeySet::parse(&body, &path.display().to_string())
            }
        }
    }

    /// The `jwks_uri` of `issuer`'s discovery document, checked: the document names the same issuer and the
    /// URI may be fetched.
    async fn discover(&self, issuer: &str) -> Result<String, JwksError> {
        #[derive(serde::Deserialize)]
        struct Discovery {
            issuer: String,
            jwks_uri: String,
        }
        let url = format!("{}{DISCOVERY_PATH}", issuer.trim_end_matches('/'));
        let body = self
            .get(&url, MAX_DISCOVERY_BYTES, "the discovery document")
            .await?;
        let doc: Discovery = serde_json::from_slice(&body).map_err(|e| JwksError::Invalid {
            what: url.clone(),
            detail: format!("expected `issuer` and `jwks_uri`: {e}"),
        })?;
        // OpenID Connect Discovery §4.3: the announced issuer is exactly the one configured.
        if doc.issuer != issuer {
            return Err(JwksError::IssuerMismatch {
                configured: issuer.to_owned(),
                found: doc.issuer,
            });
        }
        check_url(&doc.jwks_uri).map_err(|detail| JwksError::BadJwksUri {
            issuer: issuer.to_owned(),
            uri: doc.jwks_uri.clone(),
            detail,
        })?;
        Ok(doc.jwks_uri)
    }

    async fn get(&self, url: &str, max: usize, what: &str) -> Result<Bytes, JwksError> {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::ACCEPT,
            HeaderValue::from_static("application/json"),
        );
        let answer = self
            .client
            .request(Method::GET, url, headers, Bytes::new())
            .await
            .map_err(|source| JwksError::Fetch {
                url: url.to_owned(),
                source,
            })?;
        if answer.status() != StatusCode::OK {
            return Err(JwksError::Status {
                url: url.to_owned(),
                status: answer.status(),
            });
        }
        let body = answer.into_body();
        if body.len() > max {
            return Err(JwksError::TooLarge {
                what: format!("{what} at {url}"),
                size: body.len(),
                max,
            });
        }
        Ok(body)
    }

    /// Loads the keys now (failures are logged and retried), then keeps them fresh until `token` is cancelled:
    /// a URL or discovery source every `every`, a file whenever it changes (checked every [`FILE_POLL`]).
    pub fn spawn_refresh(
        self: &Arc<Self>,
        tasks: &Tasks,
        every: Duration,
        token: CancellationToken,
    ) {
        let jwks = Arc::clone(self);
        tasks.spawn("oidc-jwks-refresh", async move {
            let file = matches!(jwks.source, KeySource::File(_));
            // Until the first load works, try again at the file cadence so a provider that starts after the
            // aggregator is picked up quickly.
            let mut next = Duration::ZERO;
            loop {
                tokio::select! {
                    () = token.cancelled() => break,
                    () = tokio::time::sleep(next) => {}
                }
                if file {
                    jwks.reload_file_if_changed().await;
                    next = FILE_POLL;
                    continue;
                }
                next = match jwks.refresh().await {
                    Ok(_) => every,
                    Err(_) if jwks.current().is_empty() => FILE_POLL.max(Duration::from_secs(5)),
                    Err(_) => every.min(Duration::from_secs(60)),
                };
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSA_N: &str = "u1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gunVTLw7onLRnrq0_IzW7yWR7QkrmBL7jTKEn5u-qKhbwKfBstIs-bMY2Zkp18gnTxKLxoS2tFczGkPLPgizskuemMghRniWaoLcyehkd3qqGElvW_VDL5AaWTg0nLVkjRo9z-40RQzuVaE8AkAFmxZzow3x-VJYKdjykkJ0iT9wCS0DRTXu269V264Vf_3jvredZiKRkgwlL9xNAwxXFg0x_XFw005UWVRIkdgcKWTjpBP2dPwVZ4WWC-9aGVd-Gyn1o0CLelf4rEjGoXbAAEgAqeGUxrcIlbjXfbcmw";

    fn rsa(kid: &str, extra: &str) -> String {
        format!(r#"{{"kty":"RSA","kid":"{kid}","n":"{RSA_N}","e":"AQAB"{extra}}}"#)
    }

    #[test]
    fn symmetric_encryption_and_unknown_keys_are_skipped() {
        let doc = format!(
            r#"{{"keys":[{},{},{{"kty":"oct","kid":"h","k":"c2VjcmV0"}},{{"kty":"ML-DSA","kid":"p","pub":"x"}},{}]}}"#,
            rsa("sig", ""),
            rsa("enc", r#","use":"enc""#),
            rsa("hs", r#","alg":"HS256""#),
        );
        let set = KeySet::parse(doc.as_bytes(), "test").expect("one usable key");
        assert_eq!(set.keys().len(), 1);
        assert_eq!(set.skipped(), 4);
        assert!(matches!(
            set.find(Some("sig"), Algorithm::RS256),
            Lookup::Found(_)
        ));
        assert!(matches!(
            set.find(Some("h"), Algorithm::HS256),
            Lookup::Unknown
        ));
        assert!(matches!(
            set.find(Some("sig"), Algorithm::ES256),
            Lookup::Mismatch(_)
        ));
        assert!(matches!(
            set.find(Some("nope"), Algorithm::RS256),
            Lookup::Unknown
        ));
    }

    #[test]
    fn a_key_with_an_alg_verifies_only_that_alg_and_kidless_tokens_need_one_candidate() {
        let doc = format!(r#"{{"keys":[{}]}}"#, rsa("a", r#","alg":"RS256""#));
        let set = KeySet::parse(doc.as_bytes(), "test").expect("valid");
        assert!(matches!(
            set.find(Some("a"), Algorithm::PS256),
            Lookup::Mismatch(_)
        ));
        assert!(matches!(set.find(None, Algorithm::RS256), Lookup::Found(_)));
        let doc = format!(r#"{{"keys":[{},{}]}}"#, rsa("a", ""), rsa("b", ""));
        let set = KeySet::parse(doc.as_bytes(), "test").expect("valid");
        assert!(matches!(set.find(None, Algorithm::RS256), Lookup::Unknown));
    }

    #[test]
    fn sets_without_usable_keys_duplicate_kids_or_too_many_keys_are_refused() {
        for doc in [
            r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#.to_owned(),
            r#"{"keys":[]}"#.to_owned(),
            r#"[1,2]"#.to_owned(),
            format!(r#"{{"keys":[{},{}]}}"#, rsa("a", ""), rsa("a", "")),
            format!(
                r#"{{"keys":[{}]}}"#,
                vec![rsa("x", ""); MAX_KEYS + 1].join(",")
            ),
        ] {
            assert!(KeySet::parse(doc.as_bytes(), "test").is_err(), "{doc:.80}");
        }
    }

    #[test]
    fn only_https_or_loopback_http_urls_are_fetched() {
        for ok in [
            "https://idp.example.com/jwks",
            "http://127.0.0.1:8080/jwks",
            "http://localhost/x",
            "http://[::1]:9/x",
        ] {
            assert!(check_url(ok).is_ok(), "{ok}");
        }
        for bad in ["http://idp.example.com/jwks", "ftp://x/y", "not a url"] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_kid_refreshes_are_rate_limited_and_failures_keep_the_last_good_set() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, format!(r#"{{"keys":[{}]}}"#, rsa("one", ""))).expect("write");
        let metrics = JwksMetrics::default();
        let jwks = Jwks::new(
            KeySource::File(path.clone()),
            Client::new(None, FETCH_TIMEOUT),
            Duration::from_secs(30),
            metrics.clone(),
        );
        jwks.refresh().await.expect("loads");
        std::fs::write(
            &path,
            format!(r#"{{"keys":[{},{}]}}"#, rsa("one", ""), rsa("two", "")),
        )
        .expect("write");
        // Within the gap: no fetch.
        assert_eq!(jwks.refresh_for_unknown_kid().await.keys().len(), 1);
        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(jwks.refresh_for_unknown_kid().await.keys().len(), 2);
        // A broken file leaves the set in place and counts a failure.
        std::fs::write(&path, "{").expect("write");
        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(jwks.refresh_for_unknown_kid().await.keys().len(), 2);
        assert_eq!(metrics.refresh_ok.get(), 2);
        assert_eq!(metrics.refresh_failed.get(), 1);
        assert_eq!(metrics.keys.get(), 2);
    }
}
