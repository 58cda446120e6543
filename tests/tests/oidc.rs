//! End to end: operators' OIDC bearer tokens against a real OpenID provider. `tests/oidc/provider.js` runs the
//! OpenID-certified `oidc-provider` package (discovery, JWKS, client-credentials tokens, key rotation) and a
//! real `gait-aggregator serve` finds its keys by discovery: a token from the provider is accepted; after the
//! provider rotates its key, a token signed with the new key is accepted (unknown kid → refresh); and every bad
//! token — wrong issuer, wrong audience, expired, not yet valid, unknown key, `alg: none`, HS256 keyed with the
//! RSA public key (HMAC confusion), tampered payload — is 401 with its reason. A second aggregator reads its
//! keys from a JWKS file, with no provider, and picks up a key added to the file.
//!
//! Needs Node.js (`node`) and `npm ci` in `tests/oidc` (scripts/test.sh runs it). Without node the test is
//! skipped with a loud message — except under `CI=true`, where that is a failure.
#![allow(clippy::disallowed_methods)] // tests read the clock

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail, ensure};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use gait_e2e::{Aggregator, OidcProvider, PATIENCE, http_json, wait_for};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

const AUDIENCE: &str = "gait-aggregator";
const CLIENT: &str = "gait-e2e:gait-e2e-secret";
/// Any `/v1` route the admin gate guards.
const ROUTE: &str = "/v1/orgs/acme/agents";

/// The real provider and the directory it keeps its signing keys in.
struct Provider {
    idp: OidcProvider,
    keys: PathBuf,
}

impl Provider {
    fn start(keys: &Path) -> anyhow::Result<Provider> {
        Ok(Provider {
            idp: OidcProvider::start(keys)?,
            keys: keys.to_path_buf(),
        })
    }

    /// A client-credentials access token (a JWT for the aggregator's audience).
    fn token(&self) -> anyhow::Result<String> {
        let basic = format!("Basic {}", STANDARD.encode(CLIENT));
        let (status, body) = post(
            &format!("{}/token", self.idp.issuer),
            Some(&basic),
            "application/x-www-form-urlencoded",
            "grant_type=client_credentials&scope=api",
        )?;
        ensure!(status == 200, "token endpoint: {status} {body}");
        Ok(body["access_token"]
            .as_str()
            .context("access_token")?
            .to_owned())
    }

    /// Rotates the signing key; returns the new kid.
    fn rotate(&self) -> anyhow::Result<String> {
        let (status, body) = post(
            &format!("{}/admin/rotate", self.idp.issuer),
            None,
            "application/json",
            "",
        )?;
        ensure!(status == 200, "rotate: {status} {body}");
        Ok(body["kid"].as_str().context("kid")?.to_owned())
    }

    /// The private key (PEM) of `kid`, as the provider wrote it.
    fn private_key(&self, kid: &str) -> anyhow::Result<EncodingKey> {
        let pem = std::fs::read(self.keys.join(format!("{kid}.pem")))?;
        Ok(EncodingKey::from_rsa_pem(&pem)?)
    }

    fn public_pem(&self, kid: &str) -> anyhow::Result<Vec<u8>> {
        Ok(std::fs::read(self.keys.join(format!("{kid}.pub.pem")))?)
    }
}

/// A blocking HTTP/1.1 POST over std.
fn post(
    url: &str,
    authorization: Option<&str>,
    content_type: &str,
    body: &str,
) -> anyhow::Result<(u16, Value)> {
    let rest = url.strip_prefix("http://").context("http:// only")?;
    let (host, path) = rest.split_once('/').context("path")?;
    let mut stream = std::net::TcpStream::connect(host)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut request = format!(
        "POST /{path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n",
        body.len()
    );
    if let Some(auth) = authorization {
        request.push_str(&format!("authorization: {auth}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes())?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").context("HTTP answer")?;
    let status: u16 = head.split_whitespace().nth(1).context("status")?.parse()?;
    let json_start = body.find('{').unwrap_or(0);
    let json_end = body.rfind('}').map_or(body.len(), |i| i + 1);
    let value = serde_json::from_str(&body[json_start..json_end.max(json_start)])
        .unwrap_or(Value::String(body.to_owned()));
    Ok((status, value))
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn kid_of(token: &str) -> anyhow::Result<String> {
    let header = token.split('.').next().context("header")?;
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header)?)?;
    Ok(header["kid"].as_str().context("kid")?.to_owned())
}

fn sign(alg: Algorithm, kid: &str, claims: &Value, key: &EncodingKey) -> anyhow::Result<String> {
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    Ok(jsonwebtoken::encode(&header, claims, key)?)
}

/// What `token` gets at a guarded route: 200, or 401 with its reason.
fn outcome(aggregator: &Aggregator, token: &str) -> anyhow::Result<String> {
    let (status, body) = http_json("GET", &aggregator.url(ROUTE), Some(token), None)?;
    match status {
        200 => Ok("accepted".to_owned()),
        401 => Ok(body["error"]["reason"]
            .as_str()
            .with_context(|| format!("401 without a reason: {body}"))?
            .to_owned()),
        other => bail!("unexpected {other}: {body}"),
    }
}

/// With OIDC on, the admin token defaults to `bootstrap`: it manages role bindings and reads nothing else.
fn admin_token_is_bootstrap(aggregator: &Aggregator) -> anyhow::Result<()> {
    let (status, body) = http_json("GET", &aggregator.url(ROUTE), Some(&aggregator.token), None)?;
    anyhow::ensure!(
        status == 403,
        "the admin token read {ROUTE}: {status} {body}"
    );
    let (status, body) = aggregator.get("/v1/access/bindings")?;
    anyhow::ensure!(
        status == 200,
        "the admin token cannot list bindings: {status} {body}"
    );
    Ok(())
}

/// The aggregator with `oidc_yaml` under `auth.oidc`, and role bindings letting the provider's group `sre`
/// and the forged tokens' subject `mallory` read the org `acme` (RBAC allows nothing else).
fn start_aggregator(dir: &Path, oidc_yaml: &str) -> anyhow::Result<Aggregator> {
    std::fs::create_dir_all(dir)?;
    let config = dir.join("aggregator.yaml");
    std::fs::write(
        &config,
        format!(
            "auth:\n  bindings:\n    - {{ group: sre, role: viewer, org: acme }}\n    \
             - {{ user: mallory, role: viewer, org: acme }}\n  oidc:\n{oidc_yaml}"
        ),
    )?;
    let config = config.to_string_lossy().into_owned();
    Aggregator::start_with(
        &dir.join("data"),
        None,
        "127.0.0.1:0".parse()?,
        "127.0.0.1:0".parse()?,
        &["--config", &config],
    )
}

#[test]
fn tokens_from_a_real_openid_provider_are_verified_rotated_keys_followed_and_bad_tokens_refused_by_reason()
-> anyhow::Result<()> {
    if !OidcProvider::ready("tests/tests/oidc.rs") {
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let provider = Provider::start(&tmp.path().join("idp-keys"))?;
    let aggregator = start_aggregator(
        &tmp.path().join("agg"),
        &format!(
            "    issuer: {}\n    audience: {AUDIENCE}\n    unknown_kid_refresh_seconds: 1\n",
            provider.idp.issuer
        ),
    )?;

    // A real token, and the admin token still works beside it.
    let token = provider.token()?;
    let first_kid = kid_of(&token)?;
    let accepted = wait_for(PATIENCE, "the provider's token to be accepted", || {
        outcome(&aggregator, &token)
            .ok()
            .filter(|o| o == "accepted")
    });
    accepted.with_context(|| {
        format!(
            "last answer {:?}\n{}",
            outcome(&aggregator, &token),
            aggregator.log()
        )
    })?;
    admin_token_is_bootstrap(&aggregator)?;

    // Bad tokens, forged with the provider's own key where they need one.
    let key = provider.private_key(&first_kid)?;
    let claims = |edit: &dyn Fn(&mut Value)| {
        let mut c = json!({
            "iss": provider.idp.issuer,
            "aud": AUDIENCE,
            "sub": "mallory",
            "iat": now(),
            "exp": now() + 300,
        });
        edit(&mut c);
        c
    };
    let rs256 = |c: Value| sign(Algorithm::RS256, &first_kid, &c, &key);
    // The forging itself is right: the same key and claims are accepted.
    assert_eq!(outcome(&aggregator, &rs256(claims(&|_| {}))?)?, "accepted");
    let parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let mut payload: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[1])?)?;
    payload["sub"] = json!("admin");
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(payload.to_string()),
        parts[2]
    );
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(json!({"alg": "none", "kid": first_kid}).to_string()),
        URL_SAFE_NO_PAD.encode(claims(&|_| {}).to_string())
    );
    let hmac_confusion = sign(
        Algorithm::HS256,
        &first_kid,
        &claims(&|_| {}),
        &EncodingKey::from_secret(&provider.public_pem(&first_kid)?),
    )?;
    let stranger = EncodingKey::from_rsa_pem(&std::fs::read(
        OidcProvider::dir().join("keys/rsa-other.pem"),
    )?)?;
    let unknown_key = sign(
        Algorithm::RS256,
        "never-published",
        &claims(&|_| {}),
        &stranger,
    )?;
    let cases = [
        (
            rs256(claims(&|c| c["iss"] = json!("https://evil.example")))?,
            "wrong_issuer",
        ),
        (
            rs256(claims(&|c| c["aud"] = json!("another-api")))?,
            "wrong_audience",
        ),
        (
            rs256(claims(&|c| c["exp"] = json!(now() - 3600)))?,
            "expired",
        ),
        (
            rs256(claims(&|c| c["nbf"] = json!(now() + 3600)))?,
            "not_yet_valid",
        ),
        (unknown_key, "unknown_key"),
        (none, "algorithm_not_allowed"),
        (hmac_confusion, "algorithm_not_allowed"),
        (tampered, "bad_signature"),
    ];
    for (bad, reason) in &cases {
        assert_eq!(outcome(&aggregator, bad)?, *reason, "{bad}");
    }
    assert!(
        aggregator.metric("gait_aggregator_http_auth_failures_total{reason=\"expired\"}")? >= 1
    );
    assert!(
        aggregator
            .metric("gait_aggregator_http_auth_failures_total{reason=\"algorithm_not_allowed\"}")?
            >= 2
    );

    // Key rotation: the provider signs with a new key; the aggregator has never seen its kid.
    let new_kid = provider.rotate()?;
    let rotated = provider.token()?;
    assert_eq!(kid_of(&rotated)?, new_kid);
    let accepted = wait_for(PATIENCE, "the rotated key's token to be accepted", || {
        outcome(&aggregator, &rotated)
            .ok()
            .filter(|o| o == "accepted")
    });
    accepted.with_context(|| {
        format!(
            "last answer {:?}\n{}",
            outcome(&aggregator, &rotated),
            aggregator.log()
        )
    })?;
    // The old key is still published, so its tokens still pass.
    assert_eq!(outcome(&aggregator, &token)?, "accepted");
    assert!(
        aggregator.metric("gait_aggregator_oidc_jwks_refreshes_total{result=\"ok\"}")? >= 2,
        "the unknown kid caused a refetch"
    );
    Ok(())
}

#[test]
fn a_jwks_file_serves_a_disconnected_site_and_is_reread_when_it_changes() -> anyhow::Result<()> {
    // No provider and no node needed: the keys come from a file.
    let tmp = tempfile::tempdir()?;
    let keys = OidcProvider::dir().join("keys");
    let rsa = EncodingKey::from_rsa_pem(&std::fs::read(keys.join("rsa.pem"))?)?;
    let ec = EncodingKey::from_ec_pem(&std::fs::read(keys.join("ec.pem"))?)?;
    let jwk = |key: &EncodingKey, alg, kid: &str| -> anyhow::Result<Jwk> {
        let mut jwk = Jwk::from_encoding_key(key, alg)?;
        jwk.common.key_id = Some(kid.to_owned());
        Ok(jwk)
    };
    let file = tmp.path().join("idp-jwks.json");
    let write = |keys: Vec<Jwk>| std::fs::write(&file, serde_json::to_vec(&JwkSet { keys })?);
    write(vec![jwk(&rsa, Algorithm::RS256, "file-rsa")?])?;
    let issuer = "https://idp.disconnected.example/realms/ops";
    let aggregator = start_aggregator(
        &tmp.path().join("agg"),
        &format!(
            "    issuer: {issuer}\n    audience: {AUDIENCE}\n    jwks_file: {}\n",
            file.display()
        ),
    )?;
    let claims = json!({
        "iss": issuer,
        "aud": AUDIENCE,
        "sub": "alice",
        "groups": ["sre"],
        "exp": now() + 300,
    });
    let rs = sign(Algorithm::RS256, "file-rsa", &claims, &rsa)?;
    assert_eq!(outcome(&aggregator, &rs)?, "accepted");
    let es = sign(Algorithm::ES256, "file-ec", &claims, &ec)?;
    assert_eq!(outcome(&aggregator, &es)?, "unknown_key");
    // The site drops in a new key set: the EC key is picked up without a restart.
    write(vec![
        jwk(&rsa, Algorithm::RS256, "file-rsa")?,
        jwk(&ec, Algorithm::ES256, "file-ec")?,
    ])?;
    wait_for(PATIENCE, "the EC key from the rewritten file", || {
        outcome(&aggregator, &es).ok().filter(|o| o == "accepted")
    })?;
    admin_token_is_bootstrap(&aggregator)?;
    Ok(())
}
