//! End to end (issue 13 item 6), real `gait-aggregator` and `gait-agent` processes: an org's required baseline
//! (minimum version v2, which descends from v1 and adds a required rule) against two environments with real
//! agents. Before anything is pinned every agent is "no bundle reported"; the environment pinned to v1 and its
//! agents do not conform, naming the digest and the missing rule, with the `policy pin` of v2 as the remedy;
//! once v2 is pinned there and its agents activated it, everything conforms and the CLI exits 0. An unknown
//! minimum is refused naming `min_digest`, an agent of another org is never listed, and set/clear are audited.
#![allow(clippy::disallowed_methods)]

use std::path::Path;
use std::process::Output;

use anyhow::{Context as _, ensure};
use gait_e2e::{Agent, Aggregator, PATIENCE, POLICY_V1, http_json, output_text as text, wait_for};
use serde_json::Value;

/// v1 plus the rule the baseline requires.
const POLICY_V2: &str = "schema_id: gait.gate.policy\nschema_version: 1.0.0\ndefault_verdict: block\nrules:\n  - name: allow-reads\n    priority: 10\n    effect: allow\n    match:\n      tool_names: [tool.read]\n  - name: block_prod_writes\n    priority: 5\n    effect: block\n    match:\n      tool_names: [tool.write]\n";

/// `gait-aggregator policy <args…> --server … --token-file …`.
fn policy(agg: &Aggregator, args: &[&str]) -> anyhow::Result<Output> {
    Ok(agg
        .operator_command(&[&["policy"], args].concat())
        .output()?)
}

/// A `policy` command with `--json`: its exit code and answer.
fn policy_json(agg: &Aggregator, args: &[&str]) -> anyhow::Result<(Option<i32>, Value)> {
    let mut all = args.to_vec();
    all.push("--json");
    let out = policy(agg, &all)?;
    let answer = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    Ok((out.status.code(), answer))
}

fn push(agg: &Aggregator, dir: &Path, body: &str, extra: &[&str]) -> anyhow::Result<String> {
    let path = dir.join("base.yaml");
    std::fs::write(&path, body)?;
    let file = path.to_string_lossy().into_owned();
    let mut args = vec!["push", file.as_str(), "--org", "acme"];
    args.extend_from_slice(extra);
    let (code, answer) = policy_json(agg, &args)?;
    ensure!(code == Some(0), "push: {answer}");
    Ok(answer["digest"].as_str().context("digest")?.to_owned())
}

/// The answer for `project/env` (and `agent`, when given) in a conformance report.
fn scope<'a>(report: &'a Value, env: &str, agent: Option<&str>) -> Option<&'a Value> {
    report["results"].as_array()?.iter().find(|r| {
        r["scope"]["project"] == "web"
            && r["scope"]["env"] == env
            && r["scope"]["agent"].as_str() == agent
    })
}

fn conformance(agg: &Aggregator) -> anyhow::Result<(Option<i32>, Value)> {
    policy_json(agg, &["conformance", "--org", "acme"])
}

/// SQLite and, with `GAIT_TEST_DATABASE_URL` set (as `scripts/test.sh` does), a fresh PostgreSQL database.
#[test]
fn an_env_pinned_below_the_baseline_is_named_with_its_remedy_and_conforms_once_its_agents_activate_v2()
-> anyhow::Result<()> {
    let postgres = crate::support::fresh_postgres()?;
    scenario(None).context("sqlite")?;
    if let Some((_rt, db)) = &postgres {
        scenario(Some(db.url())).context("postgres")?;
    }
    Ok(())
}

fn scenario(database_url: Option<&str>) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let agg = Aggregator::start(&dir.join("agg"), database_url)?;
    let v1 = push(&agg, dir, POLICY_V1, &[])?;
    let v2 = push(&agg, dir, POLICY_V2, &["--parent", &v1])?;

    // Two environments of acme with real agents, and an agent of another org in an env of the same names.
    let mut agents = Vec::new();
    for (org, env, id) in [
        ("acme", "prod", "p1"),
        ("acme", "prod", "p2"),
        ("acme", "staging", "s1"),
        ("other", "prod", "o1"),
    ] {
        let mut a = Agent::enroll(&agg, &dir.join(id), org, "web", env, id)?;
        a.start()?;
        a.wait_connected("agent connected")?;
        agents.push(a);
    }

    // No baseline yet: refused (exit 65), naming what to do.
    let out = policy(&agg, &["conformance", "--org", "acme"])?;
    ensure!(out.status.code() == Some(65), "{}", text(&out));
    ensure!(
        String::from_utf8_lossy(&out.stderr).contains("baseline set"),
        "{}",
        text(&out)
    );
    // An unknown minimum is refused naming min_digest; nothing is stored.
    let unknown = "f".repeat(64);
    let out = policy(
        &agg,
        &["baseline", "set", "--org", "acme", "--min", &unknown],
    )?;
    ensure!(out.status.code() == Some(65), "{}", text(&out));
    ensure!(
        String::from_utf8_lossy(&out.stderr).contains("min_digest"),
        "{}",
        text(&out)
    );
    let token = std::fs::read_to_string(agg.data_dir.join("admin.token"))?;
    let (status, answer) = http_json(
        "PUT",
        &agg.url("/v1/orgs/acme/conformance/baseline"),
        Some(token.trim()),
        Some(serde_json::json!({ "min_digest": unknown })),
    )?;
    ensure!(
        status == 400
            && answer["error"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("min_digest")),
        "{status} {answer}"
    );
    let (code, _) = policy_json(&agg, &["baseline", "show", "--org", "acme"])?;
    ensure!(code == Some(65), "no baseline was stored");

    let (code, set) = policy_json(
        &agg,
        &[
            "baseline",
            "set",
            "--org",
            "acme",
            "--min",
            &v2,
            "--require-rule",
            "block_prod_writes",
        ],
    )?;
    ensure!(code == Some(0), "{set}");
    ensure!(
        set["baseline"]["min_digest"] == v2.as_str()
            && set["baseline"]["required_rules"] == serde_json::json!(["block_prod_writes"]),
        "{set}"
    );

    // Nothing published yet: every agent is "no bundle reported" (once the aggregator lists all three).
    let report = wait_for(PATIENCE, "three acme agents listed", || {
        let (_, r) = conformance(&agg).ok()?;
        (r["results"]
            .as_array()?
            .iter()
            .filter(|r| r["scope"]["agent"].is_string())
            .count()
            == 3)
            .then_some(r)
    })?;
    for (env, id) in [("prod", "p1"), ("prod", "p2"), ("staging", "s1")] {
        let a = scope(&report, env, Some(id)).context("agent answer")?;
        ensure!(
            a["conformant"] == false && a["reasons"] == serde_json::json!(["no bundle reported"]),
            "{a}"
        );
    }

    // prod enforces v1, staging v2.
    for (env, digest) in [("prod", &v1), ("staging", &v2)] {
        let (code, pinned) = policy_json(
            &agg,
            &[
                "pin",
                digest,
                "--org",
                "acme",
                "--project",
                "web",
                "--env",
                env,
            ],
        )?;
        ensure!(code == Some(0), "pin {env}: {pinned}");
    }
    for a in &agents[..3] {
        a.wait_active_epoch(1, "first pin active")?;
    }
    let remedy = format!("gait-aggregator policy pin {v2} --org acme --project web --env prod");
    let report = wait_for(PATIENCE, "staging's agent conforms", || {
        let (code, r) = conformance(&agg).ok()?;
        (code == Some(1) && scope(&r, "staging", Some("s1"))?["conformant"] == true).then_some(r)
    })?;
    let prod = scope(&report, "prod", None).context("prod")?;
    ensure!(prod["conformant"] == false, "{prod}");
    let reasons: Vec<&str> = prod["reasons"]
        .as_array()
        .context("reasons")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    ensure!(
        reasons
            == [
                format!("policy gait digest {v1} (base.yaml) is not version {v2} or a descendant")
                    .as_str(),
                "rule `block_prod_writes` missing"
            ],
        "{prod}"
    );
    ensure!(prod["remedy"] == remedy.as_str(), "{prod}");
    ensure!(prod["policies"] == serde_json::json!([v1]), "{prod}");
    for id in ["p1", "p2"] {
        let a = scope(&report, "prod", Some(id)).context("prod agent")?;
        ensure!(
            a["conformant"] == false && a["remedy"] == remedy.as_str() && a["bundle_epoch"] == 1,
            "{a}"
        );
    }
    let staging = scope(&report, "staging", None).context("staging")?;
    ensure!(
        staging["conformant"] == true && staging["remedy"].is_null(),
        "{staging}"
    );
    ensure!(
        report["projects"]
            == serde_json::json!([{"project": "web", "conformant": false, "envs": 2,
                "nonconformant_envs": 1, "agents": 3, "nonconformant_agents": 2}]),
        "{report}"
    );
    ensure!(
        report["results"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|r| r["scope"]["agent"] != "o1"),
        "another org's agent is never listed: {report}"
    );
    // Narrowed to one agent: only its answer.
    let (code, one) = policy_json(&agg, &["conformance", "--org", "acme", "--agent", "p1"])?;
    ensure!(
        code == Some(1) && one["results"].as_array().map(Vec::len) == Some(1),
        "{one}"
    );
    // A selection that matches nothing is refused, never a vacuous pass.
    let out = policy(&agg, &["conformance", "--org", "acme", "--env", "qa"])?;
    ensure!(out.status.code() == Some(65), "{}", text(&out));
    // The table names the remedy.
    let out = policy(&agg, &["conformance", "--org", "acme"])?;
    ensure!(out.status.code() == Some(1), "{}", text(&out));
    ensure!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("to conform: {remedy}")),
        "{}",
        text(&out)
    );

    // Run the remedy: prod and its agents conform once they activated v2.
    let (code, pinned) = policy_json(
        &agg,
        &[
            "pin",
            &v2,
            "--org",
            "acme",
            "--project",
            "web",
            "--env",
            "prod",
        ],
    )?;
    ensure!(code == Some(0), "{pinned}");
    let report = wait_for(PATIENCE, "everything conforms", || {
        let (code, r) = conformance(&agg).ok()?;
        (code == Some(0)).then_some(r)
    })?;
    ensure!(report["conformant"] == true, "{report}");
    for id in ["p1", "p2"] {
        let a = scope(&report, "prod", Some(id)).context("prod agent")?;
        ensure!(
            a["bundle_epoch"] == 2 && a["policies"] == serde_json::json!([v2]),
            "{a}"
        );
    }
    let out = policy(&agg, &["conformance", "--org", "acme", "--env", "prod"])?;
    ensure!(out.status.code() == Some(0), "{}", text(&out));

    // The other org has no baseline; clearing acme's is audited and leaves none.
    let (code, _) = policy_json(&agg, &["conformance", "--org", "other"])?;
    ensure!(code == Some(65), "other org: no baseline");
    let (code, cleared) = policy_json(&agg, &["baseline", "clear", "--org", "acme"])?;
    ensure!(
        code == Some(0) && cleared["cleared"]["min_digest"] == v2.as_str(),
        "{cleared}"
    );
    let (code, _) = policy_json(&agg, &["baseline", "clear", "--org", "acme"])?;
    ensure!(code == Some(65), "nothing left to clear");
    let actions: Vec<String> = agg.audit_actions()?.into_iter().map(|(a, _)| a).collect();
    for (action, n) in [("policy.baseline_set", 1), ("policy.baseline_clear", 1)] {
        ensure!(
            actions.iter().filter(|a| *a == action).count() == n,
            "{n} × {action}: {actions:?}"
        );
    }
    Ok(())
}
