//! End to end, on real processes: an agent decides through its local API (one block, one allow under the
//! published policy); the decision records ship to the aggregator, which indexes them as it commits them; the
//! operator finds them with `gait-aggregator records --json` by policy digest and verdict (org-wide and through
//! the environment's route), and a bad filter is refused naming the parameter.
//!
//! Artifact records (`artifact.*`) are written by `gait-agent push`, which lands separately: their lookup
//! (`gait-aggregator artifacts --run-id`) is covered in process by `aggregator/tests/evidence_index.rs`.
#![allow(clippy::disallowed_methods)] // tests spawn freely and read the clock

use anyhow::{Context as _, ensure};
use gait_e2e::{Agent, Aggregator, PATIENCE, hermetic, http_json, wait_for};
use serde_json::{Value, json};

const POLICY: &str = "schema_id: gait.gate.policy\nschema_version: 1.0.0\ndefault_verdict: allow\nrules:\n  - name: no-deletes\n    priority: 1\n    effect: block\n    match:\n      tool_names: [fs.delete]\n";

fn intent(tool: &str) -> Value {
    json!({
        "schema_id": "gait.gate.intent_request",
        "schema_version": "1.0.0",
        "created_at": "2026-12-01T09:00:00Z",
        "producer_version": "e2e",
        "tool_name": tool,
        "args": {"path": "/srv/data/report.csv"},
        "targets": [{"kind": "path", "value": "/srv/data/report.csv", "operation": "write"}],
        "arg_provenance": [{"arg_path": "$.path", "source": "user"}],
        "context": {"identity": "reports-bot", "workspace": "/srv/agents/reports", "risk_class": "low"}
    })
}

fn evaluate(agent: &Agent, token: &str, body: &Value) -> anyhow::Result<Value> {
    let (status, answer) = http_json(
        "POST",
        &format!("http://{}/v1/gate/evaluate", agent.api),
        Some(token),
        Some(body.clone()),
    )?;
    ensure!(status == 200, "evaluate answered {status}: {answer}");
    Ok(answer)
}

/// Runs `gait-aggregator <args> --server … --token-file …`; returns (exit code, stdout, stderr).
fn cli(agg: &Aggregator, args: &[&str]) -> anyhow::Result<(i32, String, String)> {
    let out = hermetic("gait-aggregator")
        .args(args)
        .arg("--server")
        .arg(agg.url(""))
        .arg("--token-file")
        .arg(agg.data_dir.join("admin.token"))
        .output()
        .context("run gait-aggregator")?;
    Ok((
        out.status.code().context("gait-aggregator was killed")?,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// The rows `gait-aggregator records … --json` prints.
fn records(agg: &Aggregator, args: &[&str]) -> anyhow::Result<Vec<Value>> {
    let mut all = vec!["records", "--json"];
    all.extend_from_slice(args);
    let (code, out, err) = cli(agg, &all)?;
    ensure!(code == 0, "gait-aggregator {all:?} exited {code}: {err}");
    let answer: Value = serde_json::from_str(&out).with_context(|| format!("not JSON: {out}"))?;
    answer["records"]
        .as_array()
        .cloned()
        .with_context(|| format!("no records array: {answer}"))
}

#[test]
fn an_agents_decisions_are_found_by_policy_digest_and_verdict() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let agg = Aggregator::start(&tmp.path().join("agg"), None)?;
    let (status, published) = agg.publish("acme", "web", "prod", &[("gate.yaml", POLICY)])?;
    ensure!(status == 201, "publish {status}: {published}");
    let mut agent = Agent::enroll(&agg, &tmp.path().join("a"), "acme", "web", "prod", "edge")?;
    agent.start()?;
    wait_for(PATIENCE, "bundle active at the agent", || {
        agent.active_epoch().filter(|e| *e >= 1)
    })
    .with_context(|| agent.log())?;
    let token = agent.api_token()?;

    let blocked = evaluate(&agent, &token, &intent("fs.delete"))?;
    ensure!(blocked["verdict"] == "block", "{blocked}");
    let allowed = evaluate(&agent, &token, &intent("fs.write"))?;
    ensure!(allowed["verdict"] == "allow", "{allowed}");
    let policy = blocked["policy_digest"]
        .as_str()
        .context("policy digest in the answer")?
        .to_owned();
    ensure!(policy.len() == 64, "{blocked}");

    // The decision ships and is indexed as it commits: wait until the lookup finds it.
    let by_policy = [
        "--org",
        "acme",
        "--policy-digest",
        &policy,
        "--verdict",
        "block",
    ];
    let found = wait_for(PATIENCE, "the blocked decision in the index", || {
        records(&agg, &by_policy)
            .ok()
            .filter(|rows| !rows.is_empty())
    })
    .with_context(|| agent.log())?;
    ensure!(found.len() == 1, "{found:?}");
    let row = &found[0];
    ensure!(
        row["kind"] == "gate.decision"
            && row["class"] == "decision"
            && row["agent_id"] == "edge"
            && row["project"] == "web"
            && row["env"] == "prod"
            && row["tool_name"] == "fs.delete"
            && row["policy_digest"] == policy.as_str()
            && row["intent_digest"] == blocked["intent_digest"]
            && row["stage"] == "enforce",
        "{row}"
    );

    // The allow is there too, under the same policy; the environment's own route answers the same.
    let allows = wait_for(PATIENCE, "the allowed decision in the index", || {
        records(
            &agg,
            &[
                "--org",
                "acme",
                "--project",
                "web",
                "--env",
                "prod",
                "--verdict",
                "allow",
            ],
        )
        .ok()
        .filter(|rows| !rows.is_empty())
    })?;
    ensure!(
        allows.len() == 1 && allows[0]["tool_name"] == "fs.write",
        "{allows:?}"
    );
    ensure!(allows[0]["policy_digest"] == policy.as_str(), "{allows:?}");
    let everything = records(&agg, &["--org", "acme", "--policy-digest", &policy])?;
    ensure!(everything.len() == 2, "{everything:?}");
    // Newest first: the allow was decided after the block.
    ensure!(
        everything[0]["seq"].as_u64() > everything[1]["seq"].as_u64(),
        "{everything:?}"
    );

    // Another environment of the org has none of it.
    let other = records(&agg, &["--org", "acme", "--project", "web", "--env", "dev"])?;
    ensure!(other.is_empty(), "{other:?}");

    // A bad filter is refused, naming the parameter.
    let (code, _, err) = cli(&agg, &["records", "--org", "acme", "--verdict", "maybe"])?;
    ensure!(code == 1 && err.contains("verdict"), "exit {code}: {err}");
    let (code, _, err) = cli(&agg, &["artifacts", "--org", "acme", "--digest", "abc"])?;
    ensure!(code == 1 && err.contains("sha256"), "exit {code}: {err}");
    Ok(())
}
