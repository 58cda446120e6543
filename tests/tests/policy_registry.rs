//! End to end (issue 13 items 1-2), real `gait-aggregator` and `gait-agent` processes: the policy registry
//! refuses bad policies naming line and key and stores nothing; a push is idempotent by Gait policy digest;
//! `policy diff` reports what changed; pin v1 → pin v2 → rollback on agents of two environments leaves every
//! agent deciding with v1's digest, reported as a rollback; the same commands from scratch give the same
//! digests; and an exported older epoch is still refused after the rollback (anti-rollback untouched).
#![allow(clippy::disallowed_methods)]

use std::path::Path;
use std::process::Output;

use anyhow::{Context as _, ensure};
use gait_e2e::{
    Agent, Aggregator, PATIENCE, POLICY_V1, POLICY_V2, hermetic, http_json, output_text as text,
    wait_for,
};
use serde_json::{Value, json};

/// `gait-aggregator policy <args…> --server … --token-file …`.
fn policy(agg: &Aggregator, args: &[&str]) -> anyhow::Result<Output> {
    Ok(agg
        .operator_command(&[&["policy"], args].concat())
        .output()?)
}

/// Runs a `policy` command that must succeed with `--json` and returns its answer.
fn policy_json(agg: &Aggregator, args: &[&str]) -> anyhow::Result<Value> {
    let mut all = args.to_vec();
    all.push("--json");
    let out = policy(agg, &all)?;
    ensure!(out.status.success(), "policy {args:?}: {}", text(&out));
    serde_json::from_slice(&out.stdout).with_context(|| format!("policy {args:?}: {}", text(&out)))
}

fn write(dir: &Path, name: &str, body: &str) -> anyhow::Result<String> {
    let path = dir.join(name);
    std::fs::write(&path, body)?;
    Ok(path.to_string_lossy().into_owned())
}

fn push(agg: &Aggregator, file: &str, extra: &[&str]) -> anyhow::Result<Value> {
    let mut args = vec!["push", file, "--org", "acme"];
    args.extend_from_slice(extra);
    policy_json(agg, &args)
}

#[test]
fn bad_policies_are_refused_naming_line_and_key_pushes_are_idempotent_and_diffed()
-> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let agg = Aggregator::start(&tmp.path().join("agg"), None)?;
    let bad = [
        (
            "syntax.yaml",
            "default_verdict: block\nrules: [\n  - name: r\n",
            "line",
        ),
        (
            "unknown.yaml",
            "default_verdict: block\nrules:\n  - name: r\n    effect: allow\n    surprise: 1\n",
            "surprise",
        ),
        (
            "invalid.yaml",
            "default_verdict: block\nrules:\n  - name: a\n    effect: allow\n  - name: b\n    effect: maybe\n",
            "rules[1].effect",
        ),
    ];
    for (name, body, key) in bad {
        let file = write(tmp.path(), name, body)?;
        let out = policy(&agg, &["push", &file, "--org", "acme"])?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(out.status.code() == Some(65), "{name}: {}", text(&out));
        ensure!(
            err.contains(key) && err.contains("line"),
            "{name} names no key/line: {}",
            text(&out)
        );
    }
    // The invalid rule is placed on its line (6: `effect: maybe`).
    let file = write(tmp.path(), "invalid.yaml", bad[2].1)?;
    let out = policy(&agg, &["push", &file, "--org", "acme"])?;
    ensure!(
        String::from_utf8_lossy(&out.stderr).contains("invalid.yaml:6:5 (key rules[1].effect)"),
        "{}",
        text(&out)
    );
    let listed = policy_json(&agg, &["list", "--org", "acme"])?;
    ensure!(listed["versions"] == json!([]), "nothing stored: {listed}");
    let pushes = agg
        .audit_actions()?
        .into_iter()
        .filter(|(a, _)| a == "policy.push")
        .count();
    ensure!(pushes == 0, "no audit entry for a refused push");

    // A dry run validates and stores nothing.
    let v1_file = write(tmp.path(), "base.yaml", POLICY_V1)?;
    let dry = push(&agg, &v1_file, &["--dry-run"])?;
    ensure!(dry["dry_run"] == true && dry["created"] == false, "{dry}");
    ensure!(policy_json(&agg, &["list", "--org", "acme"])?["versions"] == json!([]));

    // Push, then the same content re-commented: one version, the first bytes kept.
    let v1 = push(&agg, &v1_file, &["--message", "first"])?;
    ensure!(v1["created"] == true && v1["author"] != "", "{v1}");
    let v1_digest = v1["digest"].as_str().context("digest")?.to_owned();
    let recommented = write(tmp.path(), "base.yaml", &format!("# reviewed\n{POLICY_V1}"))?;
    let again = push(&agg, &recommented, &["--message", "second"])?;
    ensure!(
        again["digest"] == v1["digest"] && again["created"] == false,
        "{again}"
    );
    ensure!(
        again["message"] == "first",
        "the first push is kept: {again}"
    );
    let shown = policy_json(&agg, &["show", &v1_digest, "--org", "acme"])?;
    ensure!(shown["yaml"] == POLICY_V1, "{shown}");

    let v2_file = write(tmp.path(), "base.yaml", POLICY_V2)?;
    let v2 = push(
        &agg,
        &v2_file,
        &["--parent", &v1_digest, "--message", "lists too"],
    )?;
    let v2_digest = v2["digest"].as_str().context("digest")?.to_owned();
    ensure!(v2["parent"] == v1_digest.as_str(), "{v2}");
    let listed = policy_json(&agg, &["list", "--org", "acme"])?;
    ensure!(
        listed["versions"].as_array().map(Vec::len) == Some(2),
        "{listed}"
    );
    ensure!(
        policy_json(&agg, &["list", "--org", "other"])?["versions"] == json!([]),
        "versions are per org"
    );
    // Newest first, a page at a time: the cursor of a page leads to the next.
    let page = policy_json(&agg, &["list", "--org", "acme", "--limit", "1"])?;
    ensure!(
        page["versions"][0]["digest"] == v2_digest.as_str()
            && page["next_before"] == v2_digest.as_str(),
        "{page}"
    );
    let rest = policy_json(
        &agg,
        &[
            "list", "--org", "acme", "--limit", "1", "--before", &v2_digest,
        ],
    )?;
    ensure!(
        rest["versions"][0]["digest"] == v1_digest.as_str() && rest["next_before"].is_null(),
        "{rest}"
    );
    let diff = policy_json(&agg, &["diff", &v1_digest, &v2_digest, "--org", "acme"])?;
    ensure!(
        diff["diff"]["rules"]
            == json!([{"name": "allow-reads", "change": "changed", "fields": ["match"],
                "from_effect": "allow", "to_effect": "allow", "verdict_effect": "n/a"}]),
        "{diff}"
    );
    let out = policy(&agg, &["diff", &v1_digest, &v2_digest, "--org", "acme"])?;
    ensure!(
        String::from_utf8_lossy(&out.stdout).contains("changed  rule allow-reads"),
        "{}",
        text(&out)
    );
    let pushes = agg
        .audit_actions()?
        .into_iter()
        .filter(|(a, _)| a == "policy.push")
        .count();
    ensure!(
        pushes == 2,
        "one audit entry per stored version, got {pushes}"
    );
    Ok(())
}

fn intent() -> Value {
    json!({
        "schema_id": "gait.gate.intent_request",
        "schema_version": "1.0.0",
        "created_at": "2026-12-01T09:00:00Z",
        "producer_version": "e2e",
        "tool_name": "tool.list",
        "args": {"path": "/srv"},
        "targets": [{"kind": "path", "value": "/srv", "operation": "read"}],
        "arg_provenance": [{"arg_path": "$.path", "source": "user"}],
        "context": {"identity": "bot", "workspace": "/srv", "risk_class": "low", "phase": "apply"}
    })
}

/// The agent's next decision: (policy digest, verdict).
fn decide(agent: &Agent) -> anyhow::Result<(String, String)> {
    let token = agent.api_token()?;
    let (status, answer) = http_json(
        "POST",
        &format!("http://{}/v1/gate/evaluate", agent.api),
        Some(&token),
        Some(intent()),
    )?;
    ensure!(status == 200, "evaluate: {status} {answer}");
    Ok((
        answer["policy_digest"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        answer["verdict"].as_str().unwrap_or_default().to_owned(),
    ))
}

const ENVS: [(&str, &[&str]); 2] = [("prod", &["p1", "p2"]), ("staging", &["s1"])];

/// What one run from scratch ends with: v1, v2 and every agent's final (policy digest, verdict).
struct Run {
    v1: String,
    v2: String,
    decisions: Vec<(String, String, String)>,
}

fn scenario(dir: &Path, stale_check: bool) -> anyhow::Result<Run> {
    let agg = Aggregator::start(&dir.join("agg"), None)?;
    let v1 = push(&agg, &write(dir, "base.yaml", POLICY_V1)?, &[])?["digest"]
        .as_str()
        .context("v1")?
        .to_owned();
    let v2 = push(
        &agg,
        &write(dir, "base.yaml", POLICY_V2)?,
        &["--parent", &v1],
    )?["digest"]
        .as_str()
        .context("v2")?
        .to_owned();
    let mut agents = Vec::new();
    for (env, ids) in ENVS {
        for id in ids {
            let mut a = Agent::enroll(&agg, &dir.join(id), "acme", "web", env, id)?;
            a.start()?;
            agents.push(a);
        }
    }
    let pin = |digest: &str, env: &str| {
        policy_json(
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
        )
    };
    for (env, _) in ENVS {
        let p = pin(&v1, env)?;
        ensure!(
            p["bundle"]["epoch"] == 1 && p["pin"]["kind"] == "pin",
            "{p}"
        );
    }
    for a in &agents {
        a.wait_active_epoch(1, "v1 pinned")?;
        ensure!(
            decide(a)? == (v1.clone(), "block".to_owned()),
            "{}: v1 blocks tool.list",
            a.id
        );
    }
    for (env, _) in ENVS {
        pin(&v2, env)?;
    }
    for a in &agents {
        a.wait_active_epoch(2, "v2 pinned")?;
        ensure!(
            decide(a)? == (v2.clone(), "allow".to_owned()),
            "{}: v2 allows tool.list",
            a.id
        );
    }
    for (env, _) in ENVS {
        let r = policy_json(
            &agg,
            &[
                "rollback",
                "--org",
                "acme",
                "--project",
                "web",
                "--env",
                env,
                "--reason",
                "v2 lets lists through",
            ],
        )?;
        ensure!(
            r["pin"]["kind"] == "rollback"
                && r["pin"]["digest"] == v1.as_str()
                && r["bundle"]["epoch"] == 3,
            "{r}"
        );
    }
    let mut decisions = Vec::new();
    for a in &agents {
        a.wait_active_epoch(3, "rolled back")?;
        let (digest, verdict) = decide(a)?;
        ensure!(
            digest == v1,
            "{}: after the rollback decisions carry v1, got {digest}",
            a.id
        );
        decisions.push((a.id.clone(), digest, verdict));
        // The agent reports the bundle as a rollback.
        let applied = wait_for(
            PATIENCE,
            "bundle.applied of epoch 3 at the aggregator",
            || {
                agg.records("acme", "web", &a.env, &a.id)
                    .ok()?
                    .into_iter()
                    .find(|r| r["kind"] == "bundle.applied" && r["payload"]["epoch"] == 3)
            },
        )?;
        let rollback = &applied["payload"]["rollback"];
        ensure!(
            rollback["restores_epoch"] == 1 && rollback["reason"] == "v2 lets lists through",
            "{applied}"
        );
    }
    let pins = policy_json(
        &agg,
        &["pins", "--org", "acme", "--project", "web", "--env", "prod"],
    )?;
    let history: Vec<(String, bool)> = pins["pins"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["kind"].as_str().unwrap_or("").to_owned(),
                p["known_good"] == true,
            )
        })
        .collect();
    ensure!(
        history
            == [
                ("rollback".to_owned(), true),
                ("pin".to_owned(), false),
                ("pin".to_owned(), true)
            ],
        "{pins}"
    );
    // A second rollback has nowhere else to go: refused, nothing published.
    let out = policy(
        &agg,
        &[
            "rollback",
            "--org",
            "acme",
            "--project",
            "web",
            "--env",
            "prod",
            "--reason",
            "again",
        ],
    )?;
    ensure!(out.status.code() == Some(1), "{}", text(&out));
    ensure!(
        String::from_utf8_lossy(&out.stderr).contains("409"),
        "{}",
        text(&out)
    );
    let actions: Vec<String> = agg.audit_actions()?.into_iter().map(|(a, _)| a).collect();
    for (action, n) in [("env.pin", 4), ("env.rollback", 2), ("bundle.publish", 6)] {
        ensure!(
            actions.iter().filter(|a| *a == action).count() == n,
            "{n} × {action}: {actions:?}"
        );
    }

    if stale_check {
        // The v2 bundle (epoch 2), exported after the rollback, is still refused: anti-rollback is unchanged.
        let old = dir.join("epoch2.json");
        let out = hermetic("gait-aggregator")
            .args([
                "bundle",
                "export",
                "--org",
                "acme",
                "--project",
                "web",
                "--env",
                "prod",
                "--epoch",
                "2",
            ])
            .arg("--server")
            .arg(agg.url(""))
            .arg("--token-file")
            .arg(agg.data_dir.join("admin.token"))
            .arg("--out")
            .arg(&old)
            .output()?;
        ensure!(out.status.success(), "export --epoch 2: {}", text(&out));
        let agent = &mut agents[0];
        agent.stop();
        let out = hermetic("gait-agent")
            .current_dir(&agent.dir)
            .args(["bundle", "import", "--config"])
            .arg(agent.dir.join("agent.yaml"))
            .arg(&old)
            .output()?;
        ensure!(out.status.code() == Some(65), "{}", text(&out));
        ensure!(
            String::from_utf8_lossy(&out.stderr).contains("bundle_epoch_stale"),
            "{}",
            text(&out)
        );
        agent.start()?;
        ensure!(
            decide(agent)?.0 == v1,
            "still on v1 after the refused import"
        );
    }
    Ok(Run { v1, v2, decisions })
}

#[test]
fn pin_pin_rollback_leaves_every_agent_on_v1_deterministically_and_old_epochs_stay_refused()
-> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let first = scenario(&tmp.path().join("first"), true)?;
    let second = scenario(&tmp.path().join("second"), false)?;
    ensure!(
        first.v1 == second.v1 && first.v2 == second.v2,
        "same versions from scratch"
    );
    ensure!(
        first.decisions == second.decisions,
        "same final decisions from scratch"
    );
    ensure!(
        first
            .decisions
            .iter()
            .all(|(_, d, v)| *d == first.v1 && v == "block")
    );
    Ok(())
}
