//! End to end, on real processes: an intent whose policy verdict is `require_approval` at the agent raises an
//! approval request that shows upstream; an approver (the CLI, `gait-aggregator approvals approve`) approves it
//! under an approval policy set with `approvals policy set`; the agent receives the Gait approval token on its
//! next fetch and the runtime's retry of the same intent is allowed. The same token makes `gait-agent gate eval
//! --approval-token` allow the intent and verifies under the independent Gait signature check
//! (`gait_verify.py`); a tampered token passes neither the check, `gate eval`, nor the agent.
#![allow(clippy::disallowed_methods)] // tests spawn freely and read the clock

use std::path::{Path, PathBuf};

use anyhow::{Context as _, ensure};
use gait_e2e::{Agent, Aggregator, PATIENCE, hermetic, http_json, wait_for};
use serde_json::{Value, json};

const POLICY: &str = "schema_id: gait.gate.policy\nschema_version: 1.0.0\ndefault_verdict: allow\nrules:\n  - name: approve-drops\n    priority: 1\n    effect: require_approval\n    match:\n      tool_names: [db.drop]\n";

fn intent(table: &str) -> Value {
    json!({
        "schema_id": "gait.gate.intent_request",
        "schema_version": "1.0.0",
        "created_at": "2026-12-01T09:00:00Z",
        "producer_version": "e2e",
        "tool_name": "db.drop",
        "args": {"table": table},
        "targets": [{"kind": "table", "value": table, "operation": "delete", "destructive": true}],
        "arg_provenance": [{"arg_path": "$.table", "source": "user"}],
        "context": {"identity": "payments-bot", "workspace": "/srv/agents/payments", "risk_class": "low",
                    "phase": "apply"}
    })
}

fn shared() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared")
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

/// Runs `gait-aggregator <args> --server … --token-file …`; returns (exit code, stdout).
fn cli(agg: &Aggregator, args: &[&str]) -> anyhow::Result<(i32, String)> {
    let out = agg
        .operator_command(args)
        .output()
        .context("run gait-aggregator")?;
    ensure!(
        out.status.code().is_some(),
        "gait-aggregator {args:?} was killed"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "gait-aggregator {args:?}: {stderr}");
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

fn gait_verify(doc: &Path, key: &Path) -> anyhow::Result<i32> {
    let out = std::process::Command::new("python3")
        .arg(shared().join("tools/gait_verify.py"))
        .arg(doc)
        .arg(key)
        .output()
        .context("run python3 gait_verify.py")?;
    Ok(out.status.code().unwrap_or(-1))
}

/// `gait-agent gate eval` of `intent` under `policy` presenting `token`; returns (exit code, JSON answer).
fn gate_eval(dir: &Path, token: &Path, public: &Path) -> anyhow::Result<(i32, Value)> {
    let out = hermetic("gait-agent")
        .current_dir(dir)
        .args([
            "gate",
            "eval",
            "--policy",
            "policy.yaml",
            "--intent",
            "intent.json",
        ])
        .arg("--approval-token")
        .arg(token)
        .arg("--approval-public-key")
        .arg(public)
        .arg("--json")
        .output()
        .context("run gait-agent gate eval")?;
    let answer = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    Ok((out.status.code().unwrap_or(-1), answer))
}

/// The directory named `name` somewhere under `root`.
fn find_dir(root: &Path, name: &str) -> Option<PathBuf> {
    for entry in std::fs::read_dir(root).ok()?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == name) {
                return Some(path);
            }
            if let Some(found) = find_dir(&path, name) {
                return Some(found);
            }
        }
    }
    None
}

#[test]
fn an_approved_request_lets_the_retry_pass_at_the_agent_and_in_gate_eval() -> anyhow::Result<()> {
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

    // The approval policy: drops need one approver, tokens live at most ten minutes.
    let (_, set) = cli(
        &agg,
        &[
            "approvals",
            "policy",
            "set",
            "--org",
            "acme",
            "--project",
            "web",
            "--name",
            "drops",
            "--tool",
            "db.*",
            "--quorum",
            "1",
            "--max-token-ttl",
            "600",
        ],
    )?;
    ensure!(set.contains("drops v1"), "{set}");

    // The runtime asks; the agent answers require_approval and raises the request upstream.
    let first = evaluate(&agent, &token, &intent("orders"))?;
    ensure!(first["verdict"] == "require_approval", "{first}");
    let intent_digest = first["intent_digest"]
        .as_str()
        .context("intent digest")?
        .to_owned();
    let approvals_path = "/v1/orgs/acme/projects/web/envs/prod/approvals?status=pending";
    let request = wait_for(PATIENCE, "the approval request upstream", || {
        let (s, v) = agg.get(approvals_path).ok()?;
        (s == 200).then_some(())?;
        v["approvals"].as_array()?.first().cloned()
    })
    .with_context(|| agent.log())?;
    ensure!(
        request["intent_digest"] == intent_digest.as_str(),
        "{request}"
    );
    ensure!(
        request["agent_id"] == "edge" && request["tool"] == "db.drop",
        "{request}"
    );
    ensure!(request["approval_policy"]["name"] == "drops", "{request}");
    let id = request["id"].as_u64().context("request id")?.to_string();
    // A retry before approval raises nothing new and still needs approval.
    let again = evaluate(&agent, &token, &intent("orders"))?;
    ensure!(again["verdict"] == "require_approval", "{again}");

    // The approver approves; the agent's retry passes once the token arrived.
    let (_, approved) = cli(
        &agg,
        &[
            "approvals",
            "approve",
            &id,
            "--org",
            "acme",
            "--project",
            "web",
            "--env",
            "prod",
            "--reason",
            "CHG-7",
        ],
    )?;
    ensure!(approved.contains("is approved"), "{approved}");
    let allowed = wait_for(PATIENCE, "the retry allowed at the agent", || {
        let answer = evaluate(&agent, &token, &intent("orders")).ok()?;
        (answer["verdict"] == "allow").then_some(answer)
    })
    .with_context(|| agent.log())?;
    ensure!(
        allowed["intent_digest"] == intent_digest.as_str(),
        "{allowed}"
    );
    // Read all three before judging, so a failure shows every count (stop 36 saw `requested` differ from 1 once).
    let mut counts = Vec::new();
    for outcome in ["requested", "approved", "denied"] {
        let series = format!("gait_aggregator_approvals_total{{outcome=\"{outcome}\"}}");
        counts.push((outcome, agg.metric(&series)?));
    }
    ensure!(
        counts == [("requested", 1), ("approved", 1), ("denied", 0)],
        "approval counts {counts:?}, want requested 1, approved 1, denied 0; aggregator log:\n{}",
        agg.log()
    );
    let (_, pending) = agg.get(approvals_path)?;
    ensure!(
        pending["approvals"].as_array().is_some_and(Vec::is_empty),
        "one request only, now approved: {pending}"
    );
    // Setting the policy, the approval and the issued tokens are in the audit log.
    let actions: Vec<String> = agg.audit_actions()?.into_iter().map(|(a, _)| a).collect();
    for action in ["approval_policy.set", "approval.approve", "approval.issue"] {
        ensure!(
            actions.iter().any(|a| a == action),
            "no {action} entry: {actions:?}"
        );
    }

    // The same token, written by the CLI, under the independent check and Gait's CLI.
    let work = tmp.path().join("eval");
    cli(
        &agg,
        &[
            "approvals",
            "show",
            &id,
            "--org",
            "acme",
            "--project",
            "web",
            "--env",
            "prod",
            "--token-dir",
            work.to_str().context("utf-8 path")?,
        ],
    )?;
    let token_file = work.join(format!("approval_{id}_0.json"));
    let public = agg.data_dir.join("keys/approval.pub");
    ensure!(
        gait_verify(&token_file, &public)? == 0,
        "gait_verify.py refused the issued token"
    );
    std::fs::write(work.join("policy.yaml"), POLICY)?;
    std::fs::write(work.join("intent.json"), intent("orders").to_string())?;
    let (code, answer) = gate_eval(&work, &token_file, &public)?;
    ensure!(
        code == 0 && answer["verdict"] == "allow",
        "gate eval with the token: {code} {answer}"
    );

    let text = std::fs::read_to_string(&token_file)?;
    let tampered_file = work.join("tampered.json");
    std::fs::write(&tampered_file, text.replacen("CHG-7", "CHG-8", 1))?;
    ensure!(
        gait_verify(&tampered_file, &public)? == 2,
        "gait_verify.py accepted a tampered token"
    );
    let (code, answer) = gate_eval(&work, &tampered_file, &public)?;
    ensure!(
        code == 4 && answer["verdict"] == "require_approval",
        "gate eval with a tampered token: {code} {answer}"
    );

    // Requests approved out of order: the newer one first, then the older one; both reach the agent.
    let first_intent = evaluate(&agent, &token, &intent("invoices"))?;
    let second_intent = evaluate(&agent, &token, &intent("payments"))?;
    ensure!(
        first_intent["verdict"] == "require_approval"
            && second_intent["verdict"] == "require_approval"
    );
    let id_of = |digest: &Value| -> anyhow::Result<u64> {
        wait_for(PATIENCE, "the request upstream", || {
            let (_, v) = agg.get(approvals_path).ok()?;
            v["approvals"]
                .as_array()?
                .iter()
                .find(|r| r["intent_digest"] == *digest)?["id"]
                .as_u64()
        })
    };
    let older = id_of(&first_intent["intent_digest"])?;
    let newer = id_of(&second_intent["intent_digest"])?;
    ensure!(older < newer, "{older} {newer}");
    for (id, table) in [(newer, "payments"), (older, "invoices")] {
        let (s, v) = http_json(
            "POST",
            &agg.url(&format!(
                "/v1/orgs/acme/projects/web/envs/prod/approvals/{id}/approve"
            )),
            Some(&agg.token),
            None,
        )?;
        ensure!(s == 200 && v["request"]["status"] == "approved", "{s} {v}");
        wait_for(PATIENCE, "the approved intent allowed at the agent", || {
            let answer = evaluate(&agent, &token, &intent(table)).ok()?;
            (answer["verdict"] == "allow").then_some(())
        })
        .with_context(|| {
            format!(
                "request {id} ({table}) never reached the agent\n{}",
                agent.log()
            )
        })?;
    }

    // At the agent: a token for another intent, forged from the real one, is refused.
    let other = evaluate(&agent, &token, &intent("customers"))?;
    ensure!(other["verdict"] == "require_approval", "{other}");
    let other_digest = other["intent_digest"].as_str().context("digest")?;
    let policy_digest = other["policy_digest"].as_str().context("policy digest")?;
    let store = find_dir(&agent.dir, "approvals").context("the agent's approvals directory")?;
    let forged_dir = store.join(format!("{other_digest}-{policy_digest}"));
    std::fs::create_dir_all(&forged_dir)?;
    std::fs::write(
        forged_dir.join("forged.json"),
        text.replace(&intent_digest, other_digest),
    )?;
    let refused = evaluate(&agent, &token, &intent("customers"))?;
    ensure!(
        refused["verdict"] == "require_approval",
        "a forged token passed at the agent: {refused}"
    );
    Ok(())
}
