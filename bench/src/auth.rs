//! `gait-fleet-bench auth`: what verifying an operator's OIDC bearer JWT costs per API request.
//!
//! Measurements in one run, each call timed alone (median and p99):
//! 1. **The verify itself**, in process, JWKS cached (loaded once from a file), for RS256 (RSA-2048), ES256
//!    (P-256) and EdDSA (Ed25519) tokens, three ways: with the verified-token cache off (`token_cache_size: 0`,
//!    one token again and again: the full check every time); **first sight** with the cache on (`--first-sight`
//!    distinct tokens, each seen once: a miss, the full check, the insert); **cached** (one token again: a hit).
//! 2. **The permission check** alone over `--bindings` role bindings.
//! 3. **Whole HTTP requests**, against two real `gait-aggregator serve` processes with `auth.oidc` set, one with
//!    the cache off and one with it on (default size): the same `GET /v1/orgs/{org}/agents` on one kept-alive
//!    connection, rotating the admin token (the baseline) and a JWT of each algorithm (the same token each time,
//!    as an operator's client sends it until it expires), so all see the same machine state; the difference
//!    and the ratio of the medians are what OIDC adds.
//!
//! The keys are the fixed test keys of `tests/oidc/keys/` (public: never use them elsewhere).
#![allow(clippy::disallowed_methods)] // benchmark harness: reads the clock and spawns the server

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use gait_aggregator::auth::jwks::JwksMetrics;
use gait_aggregator::auth::oidc::OidcVerifier;
use gait_aggregator::config::OidcConfig;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use tokio::io::{AsyncBufReadExt as _, BufReader};

use crate::common::{CommonArgs, Percentiles, emit, round};

const RSA: &str = include_str!("../../tests/oidc/keys/rsa.pem");
const EC: &str = include_str!("../../tests/oidc/keys/ec.pem");
const ED: &str = include_str!("../../tests/oidc/keys/ed25519.pem");
const ISSUER: &str = "https://idp.bench.example";
const AUDIENCE: &str = "gait-aggregator";

/// Options of `auth`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Verify calls timed per algorithm, cache off and cached each (after 1,000 warm-up calls).
    #[arg(long, default_value_t = 20_000)]
    pub verifies: usize,
    /// Distinct tokens verified once each per algorithm with the cache on (first sight; minting RSA tokens is
    /// the slow part). At most the default cache size, so none is evicted during the run.
    #[arg(long, default_value_t = 2_000)]
    pub first_sight: usize,
    /// HTTP requests timed per bearer kind (admin token, a JWT of each algorithm) and per server (cache off,
    /// on), rotating.
    #[arg(long, default_value_t = 5_000)]
    pub requests: usize,
    /// Verify in process with jsonwebtoken's RustCrypto provider instead of the aggregator's ring-backed one (the
    /// comparison behind that choice; the HTTP part always runs the aggregator as built).
    #[arg(long)]
    pub rust_crypto: bool,
    /// Skip the HTTP part.
    #[arg(long)]
    pub verify_only: bool,
    /// Role bindings held (in process and by the served aggregator): this many bindings of other groups,
    /// then the one that lets the bench operator read (the permission check scans them all).
    #[arg(long, default_value_t = 1_000)]
    pub bindings: usize,
}

/// The bindings the bench holds: `n` of other groups on other orgs, then `sre` as viewer of `acme`.
fn bench_bindings(n: usize) -> Vec<gait_store::RoleBinding> {
    let row = |i: usize, subject: String, org: &str| gait_store::RoleBinding {
        id: i as u64 + 1,
        kind: gait_store::SubjectKind::Group,
        subject,
        role: "viewer".into(),
        scope: gait_store::BindingScope::org(org.parse().expect("bench org")),
        source: gait_store::BindingSource::Config,
        created_by: "config".into(),
        created_unix_ms: 0,
    };
    let mut rows: Vec<_> = (0..n)
        .map(|i| row(i, format!("team-{i}"), &format!("org-{i}")))
        .collect();
    rows.push(row(n, "sre".into(), "acme"));
    rows
}

/// The permission check alone: `Authorizer::authorize` for the bench operator over `acme` with `n` other
/// bindings ahead of the one that grants it.
fn permission_check(n: usize, calls: usize) -> anyhow::Result<Percentiles> {
    use gait_aggregator::auth::{AdminTokenMode, Authorizer, Operator, Permission, Principal};
    let authorizer = Authorizer::new(AdminTokenMode::Admin);
    authorizer.load(&bench_bindings(n));
    let operator = Arc::new(Principal::Operator(Operator {
        issuer: ISSUER.into(),
        subject: "bench-operator".into(),
        groups: vec!["sre".into(), "security".into()],
    }));
    let org: gait_store::Org = "acme".parse()?;
    let mut sample = Vec::with_capacity(calls);
    for i in 0..calls + 1_000 {
        let started = Instant::now();
        let granted = authorizer.authorize(operator.clone(), Permission::AgentRead, org.clone());
        let elapsed = started.elapsed();
        ensure!(granted.is_ok(), "the bench operator was denied");
        if i >= 1_000 {
            sample.push(elapsed);
        }
    }
    Ok(Percentiles::of(&sample))
}

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn keys() -> anyhow::Result<[(Algorithm, &'static str, EncodingKey); 3]> {
    Ok([
        (
            Algorithm::RS256,
            "bench-rsa",
            EncodingKey::from_rsa_pem(RSA.as_bytes())?,
        ),
        (
            Algorithm::ES256,
            "bench-ec",
            EncodingKey::from_ec_pem(EC.as_bytes())?,
        ),
        (
            Algorithm::EdDSA,
            "bench-ed",
            EncodingKey::from_ed_pem(ED.as_bytes())?,
        ),
    ])
}

/// Writes the JWKS of the bench keys to `path`.
fn write_jwks(path: &Path) -> anyhow::Result<()> {
    let mut set = JwkSet { keys: Vec::new() };
    for (alg, kid, key) in keys()? {
        let mut jwk = Jwk::from_encoding_key(&key, alg)?;
        jwk.common.key_id = Some(kid.to_owned());
        set.keys.push(jwk);
    }
    std::fs::write(path, serde_json::to_vec(&set)?)?;
    Ok(())
}

/// A token of the bench operator; `jti` makes distinct tokens of otherwise equal claims.
fn token(alg: Algorithm, kid: &str, key: &EncodingKey, jti: usize) -> anyhow::Result<String> {
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    let claims = json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "bench-operator",
        "groups": ["sre", "security"],
        "iat": now_s(),
        "exp": now_s() + 3600,
        "jti": format!("bench-{jti}"),
    });
    Ok(jsonwebtoken::encode(&header, &claims, key)?)
}

/// The in-process verifier reading `jwks`, keys loaded, with a cache of `cache_size` tokens.
async fn verifier(jwks: &Path, cache_size: u64) -> anyhow::Result<Arc<OidcVerifier>> {
    let config = OidcConfig {
        issuer: Some(ISSUER.to_owned()),
        audience: Some(AUDIENCE.to_owned()),
        jwks_file: Some(jwks.to_path_buf()),
        token_cache_size: cache_size,
        ..OidcConfig::default()
    };
    let verifier = OidcVerifier::from_config(&config, JwksMetrics::default(), Default::default())?;
    verifier.jwks().refresh().await?;
    Ok(verifier)
}

/// `calls` verifies of `token` after 1,000 untimed ones.
async fn repeat(
    verifier: &OidcVerifier,
    token: &str,
    now: i64,
    calls: usize,
) -> anyhow::Result<Percentiles> {
    for _ in 0..1_000 {
        verifier.verify_at(token, now).await?;
    }
    let mut sample = Vec::with_capacity(calls);
    for _ in 0..calls {
        let started = Instant::now();
        let identity = verifier.verify_at(token, now).await;
        sample.push(started.elapsed());
        ensure!(identity.is_ok(), "token refused: {identity:?}");
    }
    Ok(Percentiles::of(&sample))
}

/// One algorithm's verify costs.
struct VerifyCosts {
    alg: Algorithm,
    uncached: Percentiles,
    first_sight: Percentiles,
    cached: Percentiles,
}

fn p_json(p: &Percentiles) -> serde_json::Value {
    json!({"n": p.n, "p50_us": round(micros(p.p50), 1), "p99_us": round(micros(p.p99), 1)})
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    // As the aggregator does before its first token (writing the JWKS below would pin the RustCrypto default).
    let provider = if args.rust_crypto {
        "rust_crypto"
    } else {
        ensure!(
            gait_aggregator::auth::oidc::install_ring_provider(),
            "the ring provider could not be installed"
        );
        "ring"
    };
    let dir = args.common.temp_dir("gait-bench-auth-")?;
    let jwks = dir.path().join("jwks.json");
    write_jwks(&jwks)?;

    // 1. The verify itself, keys cached: cache off, first sight with the cache on, cached.
    let cache_size = OidcConfig::default().token_cache_size;
    ensure!(
        args.first_sight as u64 <= cache_size,
        "--first-sight is at most the default cache size ({cache_size})"
    );
    let uncached_verifier = verifier(&jwks, 0).await?;
    let now = now_s();
    let mut verify = Vec::new();
    for (alg, kid, key) in keys()? {
        let repeated = token(alg, kid, &key, 0)?;
        let uncached = repeat(&uncached_verifier, &repeated, now, args.verifies).await?;
        // A cache of the default size per algorithm; distinct tokens minted first (signing is not what is
        // measured), each verified once.
        let cached_verifier = verifier(&jwks, cache_size).await?;
        let fresh: Vec<String> = (1..=args.first_sight)
            .map(|i| token(alg, kid, &key, i))
            .collect::<anyhow::Result<_>>()?;
        let mut sample = Vec::with_capacity(fresh.len());
        for token in &fresh {
            let started = Instant::now();
            let identity = cached_verifier.verify_at(token, now).await;
            sample.push(started.elapsed());
            ensure!(identity.is_ok(), "{alg:?} token refused: {identity:?}");
        }
        let first_sight = Percentiles::of(&sample);
        let cached = repeat(&cached_verifier, &repeated, now, args.verifies).await?;
        eprintln!(
            "verify {alg:?}: {} calls cache off, {} first sight, {} cached",
            args.verifies, args.first_sight, args.verifies
        );
        verify.push(VerifyCosts {
            alg,
            uncached,
            first_sight,
            cached,
        });
    }

    // 2. The permission check alone, over `--bindings` role bindings.
    let check = permission_check(args.bindings, args.verifies)?;
    eprintln!(
        "permission check: {} calls over {} bindings",
        args.verifies,
        args.bindings + 1
    );

    // 3. Whole HTTP requests, admin token against a JWT of each algorithm, rotating on one connection; one
    // server with the cache off, one with it on.
    let mut http = Vec::new();
    if !args.verify_only {
        for cache_size in [0, OidcConfig::default().token_cache_size] {
            http.push((
                cache_size,
                http_run(&args, dir.path(), &jwks, cache_size).await?,
            ));
        }
    }

    let check_p50 = micros(check.p50);
    let verify_json: Vec<_> = verify
        .iter()
        .map(|v| {
            json!({
                "alg": format!("{:?}", v.alg),
                "cache_off": p_json(&v.uncached),
                "first_sight": p_json(&v.first_sight),
                "cached": p_json(&v.cached),
                "authorization_p50_us": {
                    "cache_off": round(micros(v.uncached.p50) + check_p50, 1),
                    "first_sight": round(micros(v.first_sight.p50) + check_p50, 1),
                    "cached": round(micros(v.cached.p50) + check_p50, 1),
                },
            })
        })
        .collect();
    let http_json: Vec<_> = http
        .iter()
        .map(|(size, run)| {
            json!({
                "token_cache_size": size,
                "admin_token": p_json(&run.admin),
                "jwt": run.jwt.iter().map(|(alg, p)| json!({
                    "alg": format!("{alg:?}"),
                    "p50_us": round(micros(p.p50), 1), "p99_us": round(micros(p.p99), 1),
                    "added_p50_us": round(micros(p.p50) - micros(run.admin.p50), 1),
                    "ratio_p50": round(ratio(p, &run.admin), 3),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let summary = json!({
        "bench": "auth",
        "provider": provider,
        "verify": verify_json,
        "permission_check": {
            "bindings": args.bindings + 1,
            "p50_us": round(micros(check.p50), 2), "p99_us": round(micros(check.p99), 2),
        },
        "http": http_json,
    });
    let mut human = format!(
        "verify ({provider}) p50 / p99 in µs: cache off | first sight (cache on) | cached hit; + permission check \
         over {} bindings p50 {:.2} µs p99 {:.2} µs",
        args.bindings + 1,
        check_p50,
        micros(check.p99)
    );
    for v in &verify {
        human.push_str(&format!(
            "\n  {:?}: {:.1} / {:.1} | {:.1} / {:.1} | {:.1} / {:.1}; authorization p50 {:.1} | {:.1} | {:.1}",
            v.alg,
            micros(v.uncached.p50),
            micros(v.uncached.p99),
            micros(v.first_sight.p50),
            micros(v.first_sight.p99),
            micros(v.cached.p50),
            micros(v.cached.p99),
            micros(v.uncached.p50) + check_p50,
            micros(v.first_sight.p50) + check_p50,
            micros(v.cached.p50) + check_p50,
        ));
    }
    for (size, run) in &http {
        human.push_str(&format!(
            "\nHTTP GET p50 (token_cache_size {size}): admin token {:.0} µs (p99 {:.0})",
            micros(run.admin.p50),
            micros(run.admin.p99)
        ));
        for (alg, p) in &run.jwt {
            human.push_str(&format!(
                ", {alg:?} JWT {:.0} µs (+{:.0}, ×{:.3}; p99 {:.0})",
                micros(p.p50),
                micros(p.p50) - micros(run.admin.p50),
                ratio(p, &run.admin),
                micros(p.p99)
            ));
        }
    }
    emit(&summary, &human);
    Ok(())
}

/// Median of `jwt` over median of `admin`.
fn ratio(jwt: &Percentiles, admin: &Percentiles) -> f64 {
    if admin.p50.is_zero() {
        return 0.0;
    }
    jwt.p50.as_secs_f64() / admin.p50.as_secs_f64()
}

/// The request latencies of one server: the admin token's and each algorithm's JWT.
struct HttpRun {
    admin: Percentiles,
    jwt: Vec<(Algorithm, Percentiles)>,
}

/// Starts `gait-aggregator serve` with `auth.oidc` reading `jwks` and a token cache of `cache_size`, then times
/// rotating requests.
async fn http_run(
    args: &Args,
    dir: &Path,
    jwks: &Path,
    cache_size: u64,
) -> anyhow::Result<HttpRun> {
    let dir = dir.join(format!("http-cache-{cache_size}"));
    let data_dir = dir.join("data");
    std::fs::create_dir_all(&data_dir)?;
    let config = dir.join("aggregator.yaml");
    std::fs::write(
        &config,
        format!(
            "auth:\n  admin_token: admin\n  bindings:\n{}  oidc:\n    issuer: {ISSUER}\n    audience: {AUDIENCE}\n    jwks_file: {}\n    token_cache_size: {cache_size}\n",
            bench_bindings(args.bindings)
                .iter()
                .map(|b| format!(
                    "    - {{ group: {}, role: viewer, org: {} }}\n",
                    b.subject, b.scope
                ))
                .collect::<String>(),
            jwks.display()
        ),
    )?;
    let log = std::fs::File::create(dir.join("aggregator.log"))?;
    let mut child = tokio::process::Command::new(args.common.bin("gait-aggregator")?)
        .arg("--config")
        .arg(&config)
        .args(["serve", "--data-dir"])
        .arg(&data_dir)
        .args([
            "--quic-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .env("GAIT_LOG", &args.common.aggregator_log)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("spawn gait-aggregator")?;
    let mut stdout = BufReader::new(child.stdout.take().context("stdout")?);
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(120), stdout.read_line(&mut line))
        .await
        .context("aggregator did not report serving within 120 s")??;
    let Some((_, http)) = line.trim().split_once(" http=http://") else {
        bail!("aggregator did not start: {line:?}");
    };
    let base = format!("http://{http}/v1/orgs/acme/agents");
    let admin_token = std::fs::read_to_string(data_dir.join("admin.token"))?
        .trim()
        .to_owned();
    let jwts: Vec<(Algorithm, String)> = keys()?
        .into_iter()
        .map(|(alg, kid, key)| Ok((alg, token(alg, kid, &key, 0)?)))
        .collect::<anyhow::Result<_>>()?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()?;
    let request = |bearer: &str| {
        let request = client.get(&base).bearer_auth(bearer);
        async move {
            let started = Instant::now();
            let response = request.send().await?;
            let status = response.status();
            let _ = response.bytes().await?;
            let elapsed = started.elapsed();
            ensure!(status.is_success(), "GET {status}");
            Ok::<_, anyhow::Error>(elapsed)
        }
    };
    // Bearer 0 is the admin token, then one JWT per algorithm.
    let bearers: Vec<&str> = std::iter::once(admin_token.as_str())
        .chain(jwts.iter().map(|(_, jwt)| jwt.as_str()))
        .collect();
    for _ in 0..200 {
        for bearer in &bearers {
            request(bearer).await?;
        }
    }
    let mut samples = vec![Vec::with_capacity(args.requests); bearers.len()];
    for i in 0..args.requests {
        // Rotate which goes first so none always follows another.
        for k in 0..bearers.len() {
            let which = (i + k) % bearers.len();
            samples[which].push(request(bearers[which]).await?);
        }
    }
    eprintln!(
        "http (token_cache_size {cache_size}): {} requests per bearer kind",
        args.requests
    );
    let _ = child.kill().await;
    Ok(HttpRun {
        admin: Percentiles::of(&samples[0]),
        jwt: jwts
            .iter()
            .zip(&samples[1..])
            .map(|((alg, _), sample)| (*alg, Percentiles::of(sample)))
            .collect(),
    })
}
