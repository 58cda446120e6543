//! Verifier tests with fixed test keys (`tests/oidc/keys/`) served from a JWKS file: every accepted algorithm,
//! every refusal reason, the claim rules, and the verified-token cache (a hit answers as a fresh verify would).

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;

use std::path::PathBuf;

use super::cache::TokenCacheMetrics;
use super::*;

const RSA: &str = include_str!("../../../../tests/oidc/keys/rsa.pem");
const RSA_PUBLIC: &str = include_str!("../../../../tests/oidc/keys/rsa.pub.pem");
const RSA_OTHER: &str = include_str!("../../../../tests/oidc/keys/rsa-other.pem");
const EC: &str = include_str!("../../../../tests/oidc/keys/ec.pem");
const ED: &str = include_str!("../../../../tests/oidc/keys/ed25519.pem");

const ISSUER: &str = "https://idp.test/realms/ops";
const AUDIENCE: &str = "gait-aggregator";
const NOW: i64 = 1_800_000_000;

fn key(alg: Algorithm) -> EncodingKey {
    match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(EC.as_bytes()),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(ED.as_bytes()),
        _ => EncodingKey::from_rsa_pem(RSA.as_bytes()),
    }
    .expect("test key")
}

fn kid(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::ES256 => "ec",
        Algorithm::EdDSA => "ed",
        _ => "rsa",
    }
}

fn jwk(key: &EncodingKey, alg: Algorithm, kid: &str) -> Jwk {
    let mut jwk = Jwk::from_encoding_key(key, alg).expect("jwk");
    jwk.common.key_id = Some(kid.to_owned());
    jwk
}

struct Fixture {
    verifier: Arc<OidcVerifier>,
    config: OidcConfig,
    cache: TokenCacheMetrics,
    _dir: tempfile::TempDir,
}

impl Fixture {
    /// The JWKS file the verifier reads.
    fn jwks_path(&self) -> PathBuf {
        self.config.jwks_file.clone().expect("file source")
    }

    /// A verifier of the same configuration and key file without a cache, keys loaded: what a fresh verify says.
    async fn uncached(&self) -> Arc<OidcVerifier> {
        let config = OidcConfig {
            token_cache_size: 0,
            ..self.config.clone()
        };
        let verifier = OidcVerifier::from_config(
            &config,
            JwksMetrics::default(),
            TokenCacheMetrics::default(),
        )
        .expect("verifier");
        let _ = verifier.jwks().refresh().await;
        verifier
    }

    /// (hits, misses) of the cache so far.
    fn lookups(&self) -> (u64, u64) {
        (self.cache.hits.get(), self.cache.misses.get())
    }
}

async fn fixture(edit: impl FnOnce(&mut OidcConfig)) -> Fixture {
    // Before any use of jsonwebtoken below, so these tests verify with ring as the aggregator does.
    install_ring_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("jwks.json");
    let set = JwkSet {
        keys: [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA]
            .into_iter()
            .map(|alg| jwk(&key(alg), alg, kid(alg)))
            .collect(),
    };
    std::fs::write(&path, serde_json::to_vec(&set).expect("json")).expect("write");
    let mut config = OidcConfig {
        issuer: Some(ISSUER.to_owned()),
        audience: Some(AUDIENCE.to_owned()),
        jwks_file: Some(path),
        ..OidcConfig::default()
    };
    edit(&mut config);
    let cache = TokenCacheMetrics::default();
    let verifier = OidcVerifier::from_config(&config, JwksMetrics::default(), cache.clone())
        .expect("verifier");
    let _ = verifier.jwks().refresh().await;
    Fixture {
        verifier,
        config,
        cache,
        _dir: dir,
    }
}

fn claims() -> Value {
    json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "exp": NOW + 300,
        "iat": NOW,
        "groups": ["sre", "security"],
    })
}

fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).expect("sign")
}

fn token(alg: Algorithm, claims: &Value) -> String {
    sign(alg, Some(kid(alg)), claims, &key(alg))
}

fn with(mut claims: Value, name: &str, value: Value) -> Value {
    claims[name] = value;
    claims
}

async fn refused(f: &Fixture, token: &str) -> &'static str {
    f.verifier
        .verify_at(token, NOW)
        .await
        .expect_err("refused")
        .reason()
}

#[tokio::test]
async fn tokens_of_each_default_algorithm_are_accepted_with_subject_and_groups() {
    let f = fixture(|_| {}).await;
    for alg in [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA] {
        let identity = f
            .verifier
            .verify_at(&token(alg, &claims()), NOW)
            .await
            .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        assert_eq!(identity.subject, "alice");
        assert_eq!(identity.groups, ["sre", "security"]);
        assert_eq!(identity.expires_unix_s, NOW + 300);
        assert_eq!(identity.actor(), format!("oidc:{ISSUER}#alice"));
    }
}

#[tokio::test]
async fn issuer_audience_and_time_claims_are_checked_with_the_leeway() {
    let f = fixture(|_| {}).await;
    let rs = Algorithm::RS256;
    for (claims, reason) in [
        (
            with(claims(), "iss", json!("https://evil.test")),
            "wrong_issuer",
        ),
        (with(claims(), "iss", json!(["x"])), "wrong_issuer"),
        (with(claims(), "aud", json!("other-api")), "wrong_audience"),
        (with(claims(), "aud", json!(["a", "b"])), "wrong_audience"),
        (with(claims(), "exp", json!(NOW - 61)), "expired"),
        (with(claims(), "exp", json!("soon")), "bad_claim"),
        (with(claims(), "exp", Value::Null), "bad_claim"),
        (with(claims(), "nbf", json!(NOW + 61)), "not_yet_valid"),
        (with(claims(), "sub", json!("")), "bad_claim"),
        (with(claims(), "groups", json!([1])), "bad_claim"),
        (
            with(claims(), "groups", json!(vec!["g"; MAX_GROUPS + 1])),
            "bad_claim",
        ),
    ] {
        assert_eq!(refused(&f, &token(rs, &claims)).await, reason, "{claims}");
    }
    // Within the leeway; an audience list holding ours; one group as a string.
    for claims in [
        with(claims(), "exp", json!(NOW - 59)),
        with(claims(), "nbf", json!(NOW + 59)),
        with(claims(), "aud", json!(["x", AUDIENCE])),
        with(claims(), "groups", json!("sre")),
    ] {
        f.verifier
            .verify_at(&token(rs, &claims), NOW)
            .await
            .unwrap_or_else(|e| panic!("{claims}: {e}"));
    }
    let missing = claims();
    let mut missing = missing.as_object().cloned().expect("object");
    missing.remove("exp");
    assert_eq!(
        refused(&f, &token(rs, &Value::Object(missing))).await,
        "bad_claim"
    );
}

#[tokio::test]
async fn none_hmac_confusion_and_unlisted_algorithms_are_refused_before_any_key_is_used() {
    let f = fixture(|c| c.algorithms = vec!["RS256".to_owned(), "EdDSA".to_owned()]).await;
    let body = URL_SAFE_NO_PAD.encode(claims().to_string());
    let none = format!(
        "{}.{body}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"rsa"}"#)
    );
    assert_eq!(refused(&f, &none).await, "algorithm_not_allowed");
    // HMAC keyed with the RSA public key's PEM: the classic confusion attack.
    let hmac = sign(
        Algorithm::HS256,
        Some("rsa"),
        &claims(),
        &EncodingKey::from_secret(RSA_PUBLIC.as_bytes()),
    );
    assert_eq!(refused(&f, &hmac).await, "algorithm_not_allowed");
    // ES256 is valid but not in this allow-list.
    assert_eq!(
        refused(&f, &token(Algorithm::ES256, &claims())).await,
        "algorithm_not_allowed"
    );
    let err = f.verifier.verify_at(&hmac, NOW).await.expect_err("refused");
    assert!(err.to_string().contains("never accepted"), "{err}");
}

#[tokio::test]
async fn keys_must_fit_the_algorithm_exist_and_sign_the_exact_bytes() {
    let f = fixture(|c| c.algorithms.push("RS384".to_owned())).await;
    let rsa = key(Algorithm::RS256);
    // The RSA key is published for RS256 only.
    assert_eq!(
        refused(&f, &sign(Algorithm::RS384, Some("rsa"), &claims(), &rsa)).await,
        "key_algorithm_mismatch"
    );
    // An EC token naming the RSA key.
    assert_eq!(
        refused(
            &f,
            &sign(
                Algorithm::ES256,
                Some("rsa"),
                &claims(),
                &key(Algorithm::ES256)
            )
        )
        .await,
        "key_algorithm_mismatch"
    );
    let other = EncodingKey::from_rsa_pem(RSA_OTHER.as_bytes()).expect("key");
    assert_eq!(
        refused(
            &f,
            &sign(Algorithm::RS256, Some("made-up"), &claims(), &other)
        )
        .await,
        "unknown_key"
    );
    // Another key under a known kid.
    assert_eq!(
        refused(&f, &sign(Algorithm::RS256, Some("rsa"), &claims(), &other)).await,
        "bad_signature"
    );
    // Without a kid the one RS256 key is used.
    f.verifier
        .verify_at(&sign(Algorithm::RS256, None, &claims(), &rsa), NOW)
        .await
        .expect("one candidate key");
    // A tampered payload: same header and signature, another subject.
    let good = token(Algorithm::RS256, &claims());
    let parts: Vec<&str> = good.split('.').collect();
    let forged = with(claims(), "sub", json!("mallory"));
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(forged.to_string()),
        parts[2]
    );
    assert_eq!(refused(&f, &tampered).await, "bad_signature");
    for junk in [
        "",
        "a.b",
        "a.b.c.d.e",
        "!!.x.y",
        &"a".repeat(MAX_TOKEN_BYTES + 1),
    ] {
        assert_eq!(refused(&f, junk).await, "malformed", "{junk:.20}");
    }
    let crit = format!(
        "{}.{}.x",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","kid":"rsa","crit":["exp"]}"#),
        parts[1]
    );
    assert_eq!(refused(&f, &crit).await, "malformed");
}

#[tokio::test]
async fn configurable_subject_and_groups_claims() {
    let f = fixture(|c| {
        c.subject_claim = "email".to_owned();
        c.groups_claim = "roles".to_owned();
    })
    .await;
    let claims = with(
        with(claims(), "email", json!("alice@example.com")),
        "roles",
        json!(["approver"]),
    );
    let identity = f
        .verifier
        .verify_at(&token(Algorithm::ES256, &claims), NOW)
        .await
        .expect("valid");
    assert_eq!(identity.subject, "alice@example.com");
    assert_eq!(identity.groups, ["approver"]);
}

#[tokio::test]
async fn without_any_loaded_key_tokens_are_refused_as_jwks_unavailable() {
    let f = fixture(|c| c.jwks_file = Some(PathBuf::from("/nonexistent/jwks.json"))).await;
    assert_eq!(
        refused(&f, &token(Algorithm::RS256, &claims())).await,
        "jwks_unavailable"
    );
}

#[test]
fn every_reason_is_listed_once() {
    let mut reasons = REASONS.to_vec();
    reasons.sort_unstable();
    reasons.dedup();
    assert_eq!(reasons.len(), REASONS.len());
}

// The verified-token cache.

/// Writes a JWKS of `keys` (algorithm, kid, signing key) to `path`.
fn write_jwks(path: &std::path::Path, keys: &[(Algorithm, &str, &EncodingKey)]) {
    let set = JwkSet {
        keys: keys
            .iter()
            .map(|(alg, kid, key)| jwk(key, *alg, kid))
            .collect(),
    };
    std::fs::write(path, serde_json::to_vec(&set).expect("json")).expect("write");
}

#[tokio::test]
async fn a_token_seen_again_is_a_cache_hit_with_the_same_identity() {
    let f = fixture(|_| {}).await;
    for alg in [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA] {
        let token = token(alg, &claims());
        let first = f.verifier.verify_at(&token, NOW).await.expect("valid");
        let before = f.lookups();
        let again = f.verifier.verify_at(&token, NOW + 10).await.expect("hit");
        assert_eq!(again, first, "{alg:?}");
        assert_eq!(
            f.lookups(),
            (before.0 + 1, before.1),
            "{alg:?}: one more hit"
        );
    }
    assert_eq!(f.lookups(), (3, 3));
    assert_eq!(f.verifier.token_cache().expect("on").len(), 3);
}

#[tokio::test]
async fn a_cached_token_expires_exactly_when_a_fresh_verify_refuses_it_with_the_same_error() {
    let f = fixture(|_| {}).await;
    let fresh = f.uncached().await;
    let leeway = 60;
    let exp = NOW + 300;
    let token = token(Algorithm::ES256, &claims());
    f.verifier.verify_at(&token, NOW).await.expect("valid");
    // The last second a fresh verify accepts, then the first it refuses.
    let last = exp + leeway - 1;
    fresh.verify_at(&token, last).await.expect("fresh: valid");
    f.verifier
        .verify_at(&token, last)
        .await
        .expect("cached: valid");
    let hits = f.lookups().0;
    let uncached = fresh
        .verify_at(&token, last + 1)
        .await
        .expect_err("expired");
    let cached = f
        .verifier
        .verify_at(&token, last + 1)
        .await
        .expect_err("expired");
    assert_eq!(cached, uncached);
    assert_eq!(cached.reason(), "expired");
    assert_eq!(f.lookups().0, hits + 1, "refused from the cache");
    // A clock that went back before `nbf` (minus the leeway) refuses it as a fresh verify would.
    let early = token_with_nbf(NOW + 30);
    f.verifier
        .verify_at(&early, NOW)
        .await
        .expect("within the leeway");
    let back = NOW + 30 - leeway - 1;
    let uncached = fresh.verify_at(&early, back).await.expect_err("too early");
    let cached = f
        .verifier
        .verify_at(&early, back)
        .await
        .expect_err("too early");
    assert_eq!((cached.reason(), &cached), ("not_yet_valid", &uncached));
}

fn token_with_nbf(nbf: i64) -> String {
    token(Algorithm::RS256, &with(claims(), "nbf", json!(nbf)))
}

#[tokio::test]
async fn a_cached_token_of_a_key_removed_or_replaced_in_the_jwks_is_refused_after_the_refresh() {
    let f = fixture(|_| {}).await;
    let rsa_token = token(Algorithm::RS256, &claims());
    let ec_token = token(Algorithm::ES256, &claims());
    let kidless = sign(Algorithm::EdDSA, None, &claims(), &key(Algorithm::EdDSA));
    for t in [&rsa_token, &ec_token, &kidless] {
        f.verifier.verify_at(t, NOW).await.expect("valid");
        f.verifier.verify_at(t, NOW).await.expect("hit");
    }
    // The provider gives the kid `rsa` to another RSA key, drops the EC key, and publishes a second Ed25519
    // key (a kid-less token no longer has exactly one candidate).
    let other = EncodingKey::from_rsa_pem(RSA_OTHER.as_bytes()).expect("key");
    let ed = key(Algorithm::EdDSA);
    write_jwks(
        &f.jwks_path(),
        &[
            (Algorithm::RS256, "rsa", &other),
            (Algorithm::EdDSA, "ed", &ed),
            (Algorithm::EdDSA, "ed-next", &ed),
        ],
    );
    f.verifier.jwks().refresh().await.expect("reloaded");
    let fresh = f.uncached().await;
    for (t, reason) in [
        (&rsa_token, "bad_signature"),
        (&ec_token, "unknown_key"),
        (&kidless, "unknown_key"),
    ] {
        let uncached = fresh.verify_at(t, NOW).await.expect_err("refused");
        let cached = f.verifier.verify_at(t, NOW).await.expect_err("refused");
        assert_eq!((cached.reason(), &cached), (reason, &uncached));
    }
    assert!(f.verifier.token_cache().expect("on").is_empty());
}

#[tokio::test]
async fn a_token_changed_in_one_byte_never_hits() {
    let f = fixture(|_| {}).await;
    let fresh = f.uncached().await;
    let good = token(Algorithm::RS256, &claims());
    f.verifier.verify_at(&good, NOW).await.expect("valid");
    let (dot1, dot2) = {
        let mut dots = good.match_indices('.').map(|(i, _)| i);
        (dots.next().expect("dot"), dots.next().expect("dot"))
    };
    // In the header, the payload, the signature (not its last character, whose low bits are padding), and
    // one byte appended.
    let mut changed = Vec::new();
    for at in [
        1,
        dot1 / 2,
        dot1 + 5,
        (dot1 + dot2) / 2,
        dot2 - 2,
        dot2 + 3,
        good.len() - 4,
    ] {
        let mut bytes = good.clone().into_bytes();
        bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
        changed.push(String::from_utf8(bytes).expect("ascii"));
    }
    changed.push(format!("{good}A"));
    let hits = f.lookups().0;
    for t in &changed {
        let uncached = fresh.verify_at(t, NOW).await.expect_err("refused");
        let cached = f.verifier.verify_at(t, NOW).await.expect_err("refused");
        assert_eq!(cached, uncached, "{t}");
    }
    assert_eq!(f.lookups().0, hits, "no changed token hit");
    assert_eq!(f.verifier.token_cache().expect("on").len(), 1);
}

#[tokio::test]
async fn only_verified_tokens_enter_and_the_cache_never_exceeds_its_size() {
    let f = fixture(|c| c.token_cache_size = 3).await;
    let cache = f.verifier.token_cache().expect("on");
    // Refused tokens of every kind: nothing stored however many.
    let other = EncodingKey::from_rsa_pem(RSA_OTHER.as_bytes()).expect("key");
    for i in 0..50 {
        let claims = with(claims(), "jti", json!(i));
        for t in [
            sign(Algorithm::RS256, Some("rsa"), &claims, &other),
            token(Algorithm::RS256, &with(claims.clone(), "aud", json!("x"))),
            token(
                Algorithm::RS256,
                &with(claims.clone(), "exp", json!(NOW - 600)),
            ),
            format!("junk.{i}.x"),
        ] {
            f.verifier.verify_at(&t, NOW).await.expect_err("refused");
        }
    }
    assert!(cache.is_empty());
    assert_eq!(f.lookups(), (0, 200));
    for i in 0..20 {
        let t = token(Algorithm::EdDSA, &with(claims(), "jti", json!(i)));
        f.verifier.verify_at(&t, NOW).await.expect("valid");
        assert!(cache.len() <= 3, "{} entries", cache.len());
    }
    assert_eq!(cache.len(), 3);
    assert_eq!(f.cache.entries.get(), 3);
}

#[tokio::test]
async fn size_zero_turns_the_cache_off() {
    let f = fixture(|c| c.token_cache_size = 0).await;
    assert!(f.verifier.token_cache().is_none());
    let t = token(Algorithm::RS256, &claims());
    for _ in 0..3 {
        f.verifier.verify_at(&t, NOW).await.expect("valid");
    }
    assert_eq!(f.lookups(), (0, 0));
}
