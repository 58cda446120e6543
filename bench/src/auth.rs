//! `gait-fleet-bench auth`: what verifying an operator's OIDC bearer JWT costs per API request.
//!
//! Two measurements in one run:
//! 1. **The verify itself**, in process: `OidcVerifier::verify_at` with the JWKS cached (loaded once from a file),
//!    for an RS256 (RSA-2048) and an ES256 (P-256) token, each call timed alone; median and p99.
//! 2. **A whole HTTP request**, against a real `gait-aggregator serve` with `auth.oidc` set: the same `GET
//!    /v1/orgs/{org}/agents` on one kept-alive connection, alternating the admin token (the baseline) and an
//!    RS256 JWT, so both see the same machine state; the difference of the medians is what OIDC adds.
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
const ISSUER: &str = "https://idp.bench.example";
const AUDIENCE: &str = "gait-aggregator";

/// Options of `auth`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Verify calls timed per algorithm (after 1,000 warm-up calls).
    #[arg(long, default_value_t = 20_000)]
    pub verifies: usize,
    /// HTTP requests timed per bearer kind (admin token, JWT), alternating.
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

fn keys() -> anyhow::Result<[(Algorithm, &'static str, EncodingKey); 2]> {
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

fn token(alg: Algorithm, kid: &str, key: &EncodingKey) -> anyhow::Result<String> {
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    let claims = json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "bench-operator",
        "groups": ["sre", "security"],
        "iat": now_s(),
        "exp": now_s() + 3600,
    });
    Ok(jsonwebtoken::encode(&header, &claims, key)?)
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

    // 1. The verify itself, keys cached.
    let config = OidcConfig {
        issuer: Some(ISSUER.to_owned()),
        audience: Some(AUDIENCE.to_owned()),
        jwks_file: Some(jwks.clone()),
        ..OidcConfig::default()
    };
    let verifier: Arc<OidcVerifier> =
        OidcVerifier::from_config(&config, JwksMetrics::default(), Default::default())?;
    verifier.jwks().refresh().await?;
    let now = now_s();
    let mut verify = Vec::new();
    for (alg, kid, key) in keys()? {
        let token = token(alg, kid, &key)?;
        for _ in 0..1_000 {
            verifier.verify_at(&token, now).await?;
        }
        let mut sample = Vec::with_capacity(args.verifies);
        for _ in 0..args.verifies {
            let started = Instant::now();
            let identity = verifier.verify_at(&token, now).await;
            sample.push(started.elapsed());
            ensure!(identity.is_ok(), "{alg:?} token refused: {identity:?}");
        }
        verify.push((alg, Percentiles::of(&sample)));
        eprintln!("verify {alg:?}: {} calls", args.verifies);
    }

    // 2. The permission check alone, over `--bindings` role bindings.
    let check = permission_check(args.bindings, args.verifies)?;
    eprintln!(
        "permission check: {} calls over {} bindings",
        args.verifies,
        args.bindings + 1
    );

    // 3. Whole HTTP requests, admin token against JWT, alternating on one connection.
    let (admin, jwt) = if args.verify_only {
        (Percentiles::default(), Percentiles::default())
    } else {
        http_pair(&args, dir.path(), &jwks).await?
    };

    let verify_json: Vec<_> = verify
        .iter()
        .map(|(alg, p)| {
            json!({
                "alg": format!("{alg:?}"), "n": p.n,
                "p50_us": round(micros(p.p50), 1), "p99_us": round(micros(p.p99), 1),
                "mean_us": round(micros(p.mean), 1),
            })
        })
        .collect();
    let added = micros(jwt.p50) - micros(admin.p50);
    let summary = json!({
        "bench": "auth",
        "provider": provider,
        "verify": verify_json,
        "permission_check": {
            "bindings": args.bindings + 1,
            "p50_us": round(micros(check.p50), 2), "p99_us": round(micros(check.p99), 2),
        },
        "http": {
            "n": admin.n,
            "admin_token": {"p50_us": round(micros(admin.p50), 1), "p99_us": round(micros(admin.p99), 1)},
            "jwt_rs256": {"p50_us": round(micros(jwt.p50), 1), "p99_us": round(micros(jwt.p99), 1)},
            "added_p50_us": round(added, 1),
        },
    });
    let human = format!(
        "verify ({provider}): {} | HTTP GET p50 admin token {:.0} µs, RS256 JWT {:.0} µs (+{:.0} µs), p99 {:.0} / {:.0} µs",
        verify
            .iter()
            .map(|(alg, p)| format!(
                "{alg:?} p50 {:.1} µs p99 {:.1} µs",
                micros(p.p50),
                micros(p.p99)
            ))
            .collect::<Vec<_>>()
            .join(", "),
        micros(admin.p50),
        micros(jwt.p50),
        added,
        micros(admin.p99),
        micros(jwt.p99),
    );
    let human = if args.verify_only {
        human.split(" | ").next().unwrap_or_default().to_owned()
    } else {
        human
    };
    let human = format!(
        "{human} | permission check over {} bindings p50 {:.2} µs p99 {:.2} µs",
        args.bindings + 1,
        micros(check.p50),
        micros(check.p99)
    );
    emit(&summary, &human);
    Ok(())
}

/// Starts `gait-aggregator serve` with `auth.oidc` reading `jwks`, then times alternating requests.
async fn http_pair(
    args: &Args,
    dir: &Path,
    jwks: &Path,
) -> anyhow::Result<(Percentiles, Percentiles)> {
    let data_dir = dir.join("data");
    std::fs::create_dir_all(&data_dir)?;
    let config = dir.join("aggregator.yaml");
    std::fs::write(
        &config,
        format!(
            "auth:\n  admin_token: admin\n  bindings:\n{}  oidc:\n    issuer: {ISSUER}\n    audience: {AUDIENCE}\n    jwks_file: {}\n",
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
    let [(alg, kid, key), _] = keys()?;
    let jwt = token(alg, kid, &key)?;
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
    for _ in 0..200 {
        request(&admin_token).await?;
        request(&jwt).await?;
    }
    let (mut admin, mut oidc) = (Vec::new(), Vec::new());
    for i in 0..args.requests {
        // Alternate which goes first so neither always follows the other.
        if i % 2 == 0 {
            admin.push(request(&admin_token).await?);
            oidc.push(request(&jwt).await?);
        } else {
            oidc.push(request(&jwt).await?);
            admin.push(request(&admin_token).await?);
        }
    }
    eprintln!("http: {} requests per bearer kind", args.requests);
    let _ = child.kill().await;
    Ok((Percentiles::of(&admin), Percentiles::of(&oidc)))
}
