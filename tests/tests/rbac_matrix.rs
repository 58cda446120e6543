//! End to end: the RBAC matrix. Every `/v1` operation the running aggregator documents in `/openapi.json` (so
//! the matrix grows by itself when an endpoint is added) × every role × a binding on one environment and one on
//! the whole org × a request inside and outside that binding's scope. Operators are real OIDC bearer tokens
//! (EdDSA, signed here, verified by the aggregator against a JWKS file). A request is allowed exactly where the
//! permission table grants the endpoint's permission over the request's scope; everywhere else it is refused
//! (403, or 404 for a binding outside the caller's scope) with nothing but the error in the body.
#![allow(clippy::disallowed_methods)] // tests spawn freely and read the clock

use std::collections::BTreeMap;

use anyhow::{Context as _, ensure};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ed25519_dalek::{Signer as _, SigningKey};
use gait_aggregator::auth::{Permission, Role};
use gait_e2e::{Aggregator, http_json};
use serde_json::json;

const ISSUER: &str = "https://idp.matrix.test";
const AUDIENCE: &str = "gait-aggregator";

/// A binding's scope and the request scopes inside and outside it.
struct Level {
    name: &'static str,
    /// (org, project, env) of the binding; `None` parts widen it.
    binding: (&'static str, Option<&'static str>, Option<&'static str>),
}

const LEVELS: [Level; 2] = [
    Level {
        name: "env",
        binding: ("acme", Some("web"), Some("prod")),
    },
    Level {
        name: "org",
        binding: ("acme", None, None),
    },
];

/// Request targets: (org, project, env).
const INSIDE: (&str, &str, &str) = ("acme", "web", "prod");
const OUTSIDE_ENV: (&str, &str, &str) = ("acme", "web", "staging");
const OUTSIDE_ORG: (&str, &str, &str) = ("globex", "web", "prod");

fn token(key: &SigningKey, subject: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let header = json!({ "alg": "EdDSA", "typ": "JWT", "kid": "matrix-1" });
    let claims = json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": subject, "groups": [],
        "iat": now, "nbf": now - 5, "exp": now + 3600,
    });
    let signing_input = format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    );
    let signature = key.sign(signing_input.as_bytes());
    format!("{signing_input}.{}", B64.encode(signature.to_bytes()))
}

/// Whether a binding at `binding` covers a request on `target` for an endpoint checked at `scope`.
fn covers(
    binding: (&str, Option<&str>, Option<&str>),
    scope: &str,
    target: (&str, &str, &str),
) -> bool {
    let (org, project, env) = binding;
    match scope {
        "deployment" => false,
        "org" => org == target.0 && project.is_none(),
        _ => {
            org == target.0
                && project.is_none_or(|p| p == target.1)
                && env.is_none_or(|e| e == target.2)
        }
    }
}

fn fill(path: &str, target: (&str, &str, &str), binding_id: u64) -> String {
    path.replace("{org}", target.0)
        .replace("{project}", target.1)
        .replace("{env}", target.2)
        .replace("{agent_id}", "edge-1")
        .replace("{id}", &binding_id.to_string())
        .replace("{token_id}", "0123456789abcdef")
}

#[test]
fn every_endpoint_allows_exactly_the_roles_and_scopes_the_permission_table_grants()
-> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let key = SigningKey::from_bytes(&[7u8; 32]);
    let jwks = json!({ "keys": [{
        "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": "matrix-1",
        "x": B64.encode(key.verifying_key().as_bytes()),
    }]});
    let jwks_file = tmp.path().join("jwks.json");
    std::fs::write(&jwks_file, jwks.to_string())?;
    // One user per role and level, plus, for each target scope, a binding whose id the DELETE route names.
    let mut bindings = String::new();
    for level in &LEVELS {
        for role in Role::ALL {
            let (org, project, env) = level.binding;
            bindings.push_str(&format!(
                "    - {{ user: {}-{}, role: {}, org: {org}{}{} }}\n",
                role.as_str(),
                level.name,
                role.as_str(),
                project
                    .map(|p| format!(", project: {p}"))
                    .unwrap_or_default(),
                env.map(|e| format!(", env: {e}")).unwrap_or_default(),
            ));
        }
    }
    bindings.push_str("    - { user: root, role: platform_admin }\n");
    for (org, project, env) in [INSIDE, OUTSIDE_ENV, OUTSIDE_ORG] {
        bindings.push_str(&format!(
            "    - {{ group: target-{org}-{env}, role: viewer, org: {org}, project: {project}, env: {env} }}\n"
        ));
    }
    let config = tmp.path().join("aggregator.yaml");
    std::fs::write(
        &config,
        format!(
            "auth:\n  oidc:\n    issuer: {ISSUER}\n    audience: {AUDIENCE}\n    jwks_file: {}\n    algorithms: [EdDSA]\n  bindings:\n{bindings}",
            jwks_file.display()
        ),
    )?;
    let any = "127.0.0.1:0".parse()?;
    let config_arg = config.to_string_lossy().into_owned();
    let agg = Aggregator::start_with(
        &tmp.path().join("agg"),
        None,
        any,
        any,
        &["--config", &config_arg],
    )?;

    // An org admin cannot list the deployment's bindings; the deployment admin finds each target's binding id.
    let (status, listed) = http_json(
        "GET",
        &agg.url("/v1/access/bindings"),
        Some(&token(&key, "platform_admin-org")),
        None,
    )?;
    ensure!(
        status == 403,
        "an org admin listed deployment bindings: {status} {listed}"
    );
    let (status, all) = http_json(
        "GET",
        &agg.url("/v1/access/bindings"),
        Some(&token(&key, "root")),
        None,
    )?;
    ensure!(status == 200, "{status} {all}");
    let mut ids = BTreeMap::new();
    for target in [INSIDE, OUTSIDE_ENV, OUTSIDE_ORG] {
        let subject = format!("target-{}-{}", target.0, target.2);
        let id = all["bindings"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|b| b["subject"] == subject.as_str())
            .and_then(|b| b["id"].as_u64())
            .with_context(|| format!("no binding {subject}: {all}"))?;
        ids.insert(target, id);
    }

    let (_, doc) = http_json("GET", &agg.url("/openapi.json"), None, None)?;
    let mut checked = 0;
    for (path, ops) in doc["paths"].as_object().context("paths")? {
        if !path.starts_with("/v1/") {
            continue;
        }
        for (method, op) in ops.as_object().context("operations")? {
            if op["security"].as_array().is_some_and(Vec::is_empty) {
                continue; // public (enrollment: the join token is the credential)
            }
            let permission = op["x-gait-permission"].as_str().context("permission")?;
            let permission =
                Permission::parse(permission).with_context(|| format!("{permission}?"))?;
            let scope = op["x-gait-scope"].as_str().context("scope")?;
            for level in &LEVELS {
                for role in Role::ALL {
                    let caller = token(&key, &format!("{}-{}", role.as_str(), level.name));
                    for target in [INSIDE, OUTSIDE_ENV, OUTSIDE_ORG] {
                        let id = ids[&target];
                        let mut url = agg.url(&fill(path, target, id));
                        let mut body = None;
                        if scope == "request" && method == "get" {
                            url.push_str(&format!(
                                "?org={}&project={}&env={}",
                                target.0, target.1, target.2
                            ));
                        }
                        // Approval policy removal names its scope and the policy in the query.
                        let policy_removal = method == "delete" && path == "/v1/approval-policies";
                        if policy_removal {
                            url.push_str(&format!(
                                "?org={}&project={}&env={}&name=matrix",
                                target.0, target.1, target.2
                            ));
                        }
                        if scope == "request" && method == "put" && path == "/v1/approval-policies"
                        {
                            body = Some(
                                json!({ "org": target.0, "project": target.1, "env": target.2,
                                "name": "matrix", "rules": { "quorum": 1 } }),
                            );
                        }
                        if scope == "request" && method == "post" {
                            body = Some(json!({ "group": "matrix", "role": "viewer",
                                "org": target.0, "project": target.1, "env": target.2 }));
                        }
                        if method == "post" && path.ends_with("/join-tokens") {
                            body = Some(json!({ "ttl_seconds": 600, "uses": 1 }));
                        }
                        if method == "post" && path.ends_with("/bundles") {
                            body = Some(
                                json!({ "policies": { "p.yaml": "default_verdict: allow\n" } }),
                            );
                        }
                        let (status, answer) =
                            http_json(&method.to_uppercase(), &url, Some(&caller), body)?;
                        // A request-scoped endpoint is checked against the env the request names.
                        let checked_at = if scope == "request" { "env" } else { scope };
                        let allowed =
                            role.grants(permission) && covers(level.binding, checked_at, target);
                        let what = format!(
                            "{} {path} as {} bound at {} on {target:?}: {status} {answer}",
                            method.to_uppercase(),
                            role.as_str(),
                            level.name
                        );
                        if allowed {
                            // A binding outside the caller's scope answers 404 (not revealed), so for
                            // that route a 404 is a refusal; elsewhere it is an allowed "no such object".
                            // The policy removal's 404 is "already removed" (the caller's scope was checked).
                            let refused = [401, 403].contains(&status)
                                || (status == 404
                                    && method == "delete"
                                    && scope == "request"
                                    && !policy_removal);
                            ensure!(!refused, "denied but the table grants it: {what}");
                        } else {
                            let refused = status == 403
                                || (status == 404 && method == "delete" && scope == "request");
                            ensure!(refused, "allowed but the table does not grant it: {what}");
                            let keys: Vec<&String> = answer
                                .as_object()
                                .map(|o| o.keys().collect())
                                .unwrap_or_default();
                            ensure!(
                                keys == ["error"],
                                "a refusal carries more than the error: {what}"
                            );
                        }
                        checked += 1;
                    }
                }
            }
        }
    }
    ensure!(checked >= 15 * 5 * 2 * 3, "only {checked} cases checked");
    Ok(())
}
