//! End to end, on real processes: the environment's capture mode (`gait-aggregator publish --capture-mode
//! raw|reference`, signed into the bundle) decides whether the agent's `gate.decision` records carry Gait's
//! normalized intent, and `gait-agent status --json` says which mode is in force with each policy's stage; the
//! agent's trace signing key reaches the aggregator bound to its certificate, `gait-aggregator trace-keys --out
//! DIR` exports it, and the independent Gait signature check (`gait_verify.py`) verifies the agent's trace with
//! the exported file — also after a rotation, which keeps the old key registered beside the new one.
#![allow(clippy::disallowed_methods)] // tests spawn freely and read the clock

use std::path::{Path, PathBuf};
use std::process::Output;

use anyhow::{Context as _, ensure};
use gait_e2e::{Agent, Aggregator, PATIENCE, POLICY_V1, POLICY_V2, hermetic, http_json, wait_for};
use serde_json::{Value, json};

const TRACE_KEYS: &str = "/v1/orgs/acme/projects/web/envs/prod/trace-keys";

fn shared() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared")
}

fn intent(path: &str) -> Value {
    json!({
        "schema_id": "gait.gate.intent_request",
        "schema_version": "1.0.0",
        "created_at": "2026-12-01T09:00:00Z",
        "producer_version": "e2e",
        "tool_name": " Tool.Read ",
        "args": {"path": path},
        "targets": [{"kind": "path", "value": path, "operation": "read"}],
        "context": {"identity": "reader", "workspace": "/srv/app", "risk_class": "low"}
    })
}

fn evaluate(agent: &Agent, body: &Value) -> anyhow::Result<Value> {
    let token = agent.api_token()?;
    let (status, answer) = http_json(
        "POST",
        &format!("http://{}/v1/gate/evaluate", agent.api),
        Some(&token),
        Some(body.clone()),
    )?;
    ensure!(status == 200, "evaluate answered {status}: {answer}");
    Ok(answer)
}

fn publish(agg: &Aggregator, dir: &Path, extra: &[&str]) -> anyhow::Result<()> {
    let policy = dir.join("base.yaml");
    std::fs::write(&policy, POLICY_V1)?;
    let out = hermetic("gait-aggregator")
        .env("GAIT_DATA_DIR", &agg.data_dir)
        .args(["publish", "--server", &agg.url("")])
        .args(["--org", "acme", "--project", "web", "--env", "prod"])
        .arg("--policy")
        .arg(&policy)
        .args(extra)
        .output()?;
    ensure!(out.status.success(), "publish: {}", stderr(&out));
    Ok(())
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `gait-agent status --api ADDR --json` (the CLI, through the agent's local API).
fn status_cli(agent: &Agent) -> anyhow::Result<Value> {
    let out = hermetic("gait-agent")
        .args(["status", "--json", "--api"])
        .arg(agent.api.to_string())
        .output()?;
    serde_json::from_slice(&out.stdout).with_context(|| format!("status --json: {}", stderr(&out)))
}

/// `gait-agent status --api ADDR` as text.
fn status_text(agent: &Agent) -> anyhow::Result<String> {
    let out = hermetic("gait-agent")
        .args(["status", "--api"])
        .arg(agent.api.to_string())
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The committed `gate.decision` record of the decision whose trace is `trace_id`, once it arrived.
fn decision_record(agg: &Aggregator, agent: &Agent, trace_id: &str) -> anyhow::Result<Value> {
    wait_for(PATIENCE, "the decision record at the aggregator", || {
        agg.records("acme", "web", "prod", &agent.id)
            .ok()?
            .into_iter()
            .find(|r| r["kind"] == "gate.decision" && r["payload"]["trace_id"] == trace_id)
    })
    .with_context(|| agent.log())
}

#[test]
fn raw_capture_records_the_normalized_intent_and_reference_only_digests() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let agg = Aggregator::start(&tmp.path().join("agg"), None)?;
    // Raw capture, and a candidate observed beside the policy.
    let candidate = tmp.path().join("base.next.yaml");
    std::fs::write(&candidate, POLICY_V2)?;
    let candidate = candidate.to_string_lossy().into_owned();
    publish(
        &agg,
        tmp.path(),
        &[
            "--capture-mode",
            "raw",
            "--candidate",
            &candidate,
            "--stage",
            "observe",
        ],
    )?;
    let (_, latest) = agg.get("/v1/orgs/acme/projects/web/envs/prod/bundles/latest")?;
    ensure!(
        latest["manifest"]["settings"] == json!({"capture_mode": "raw"}),
        "{latest}"
    );
    let mut agent = Agent::enroll(&agg, &tmp.path().join("a"), "acme", "web", "prod", "edge")?;
    agent.start()?;
    agent.wait_active_epoch(1, "raw bundle active")?;

    let status = status_cli(&agent)?;
    ensure!(status["capture_mode"] == "raw", "{status}");
    let policy = &status["policies"][0];
    ensure!(
        status["policies"].as_array().map(Vec::len) == Some(1)
            && policy["name"] == "base.yaml"
            && policy["stage"] == "observe"
            && policy["candidate"] == "base.next.yaml"
            && policy["digest"].as_str().is_some_and(|d| d.len() == 64)
            && policy.get("error").is_none(),
        "{status}"
    );
    ensure!(
        status["trace_key_id"]
            .as_str()
            .is_some_and(|k| k.len() == 64),
        "{status}"
    );

    // Spaces and case are normalized away in what is captured; its digest is the decision's intent digest.
    let answer = evaluate(&agent, &intent(" /srv/app/report.txt "))?;
    ensure!(answer["verdict"] == "allow", "{answer}");
    // The candidate digest status shows is the one decisions record.
    ensure!(
        answer["stage"]["candidate_digest"] == policy["candidate_digest"]
            && policy["candidate_digest"]
                .as_str()
                .is_some_and(|d| d.len() == 64),
        "{answer} vs {status}"
    );
    let text = status_text(&agent)?;
    let digest = policy["candidate_digest"].as_str().unwrap_or_default();
    ensure!(
        text.contains("capture      raw")
            && text.contains(&format!(
                "policy       base.yaml observe candidate base.next.yaml digest {digest}"
            )),
        "{text}"
    );
    let record = decision_record(
        &agg,
        &agent,
        answer["trace_id"].as_str().context("trace id")?,
    )?;
    let payload = &record["payload"];
    ensure!(payload["capture_mode"] == "raw", "{payload}");
    let captured = &payload["normalized_intent"];
    ensure!(captured["tool_name"] == "tool.read", "{payload}");
    ensure!(
        captured["args"]["path"] == "/srv/app/report.txt",
        "{payload}"
    );
    ensure!(payload.get("intent_truncated").is_none(), "{payload}");
    let digest = gait_canon::sha256_hex(&gait_canon::canonical_bytes(captured));
    ensure!(
        payload["intent_digest"] == digest.as_str() && answer["intent_digest"] == digest.as_str(),
        "the captured intent hashes to the decision's intent digest: {digest} vs {payload}"
    );

    // An intent too large to capture is decided and recorded with its digest and `intent_truncated`.
    let mut huge = intent("/srv/app/report.txt");
    huge["args"]["blob"] = Value::String("x".repeat(300 * 1024));
    let answer = evaluate(&agent, &huge)?;
    ensure!(
        answer["verdict"] == "allow" && answer["record_seq"].is_u64(),
        "{answer}"
    );
    let record = decision_record(
        &agg,
        &agent,
        answer["trace_id"].as_str().context("trace id")?,
    )?;
    let payload = &record["payload"];
    ensure!(
        payload["intent_truncated"] == true
            && payload.get("normalized_intent").is_none()
            && payload["intent_digest"] == answer["intent_digest"],
        "{}",
        payload.to_string().chars().take(2000).collect::<String>()
    );

    // The next bundle says reference: records carry digests only, and status says so.
    publish(&agg, tmp.path(), &[])?;
    agent.wait_active_epoch(2, "reference bundle active")?;
    ensure!(status_cli(&agent)?["capture_mode"] == "reference");
    let answer = evaluate(&agent, &intent("/srv/app/secret.txt"))?;
    let record = decision_record(
        &agg,
        &agent,
        answer["trace_id"].as_str().context("trace id")?,
    )?;
    let payload = &record["payload"];
    ensure!(payload["capture_mode"] == "reference", "{payload}");
    ensure!(payload.get("normalized_intent").is_none(), "{payload}");
    ensure!(
        !payload.to_string().contains("secret.txt"),
        "nothing of the call's content in a reference record: {payload}"
    );
    ensure!(
        payload["intent_digest"] == answer["intent_digest"],
        "{payload}"
    );
    // Each activation's status record says which capture mode it brought.
    let applied: Vec<(u64, String)> = agg
        .records("acme", "web", "prod", &agent.id)?
        .into_iter()
        .filter(|r| r["kind"] == "bundle.applied")
        .map(|r| {
            let p = &r["payload"];
            (
                p["epoch"].as_u64().unwrap_or(0),
                p["capture_mode"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    ensure!(
        applied == [(1, "raw".to_owned()), (2, "reference".to_owned())],
        "{applied:?}"
    );
    Ok(())
}

/// `gait-aggregator trace-keys … --out DIR --json`: the JSON answer.
fn export_keys(agg: &Aggregator, out: &Path) -> anyhow::Result<Value> {
    let run = agg
        .operator_command(&[
            "trace-keys",
            "--org",
            "acme",
            "--project",
            "web",
            "--env",
            "prod",
            "--json",
        ])
        .arg("--out")
        .arg(out)
        .output()?;
    ensure!(run.status.success(), "trace-keys: {}", stderr(&run));
    Ok(serde_json::from_slice(&run.stdout)?)
}

/// `gait_verify.py DOC KEY`'s exit code: 0 when the signature holds, 2 when it does not.
fn gait_verify(doc: &Path, key: &Path) -> anyhow::Result<i32> {
    let out = std::process::Command::new("python3")
        .arg(shared().join("tools/gait_verify.py"))
        .arg(doc)
        .arg(key)
        .output()
        .context("run python3 gait_verify.py")?;
    Ok(out.status.code().unwrap_or(-1))
}

/// Decides one intent and writes its signed trace to `dir/<name>.json`; returns (path, key id).
fn signed_trace(agent: &Agent, dir: &Path, name: &str) -> anyhow::Result<(PathBuf, String)> {
    let answer = evaluate(agent, &intent("/srv/app/report.txt"))?;
    let key_id = answer["trace"]["signature"]["key_id"]
        .as_str()
        .context("trace signature key id")?
        .to_owned();
    ensure!(answer["trace_key_id"] == key_id.as_str(), "{answer}");
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, answer["trace"].to_string())?;
    Ok((path, key_id))
}

#[test]
fn trace_keys_export_verifies_the_fleets_traces_across_a_rotation() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work)?;
    let agg = Aggregator::start(&tmp.path().join("agg"), None)?;
    publish(&agg, &work, &[])?;
    let mut agent = Agent::enroll(&agg, &tmp.path().join("a"), "acme", "web", "prod", "edge")?;
    agent.start()?;
    agent.wait_active_epoch(1, "bundle active")?;
    let (first_trace, first_id) = signed_trace(&agent, &work, "first")?;

    // The key arrives bound to the certificate the agent connected with.
    let listed = wait_for(PATIENCE, "the trace key registered", || {
        let (s, v) = agg.get(TRACE_KEYS).ok()?;
        (s == 200).then_some(())?;
        v["trace_keys"]
            .as_array()
            .filter(|k| !k.is_empty())
            .cloned()
    })
    .with_context(|| agent.log())?;
    let serial = agg.agents("acme")?[0]["cert_serial"].clone();
    ensure!(listed.len() == 1, "{listed:?}");
    ensure!(
        listed[0]["key_id"] == first_id.as_str()
            && listed[0]["agent"]["agent_id"] == "edge"
            && listed[0]["cert_serial"] == serial
            && listed[0]["replaces"].is_null(),
        "{listed:?} (certificate {serial})"
    );
    let keys = work.join("keys");
    let exported = export_keys(&agg, &keys)?;
    ensure!(
        exported["trace_keys"].as_array().map(Vec::len) == Some(1),
        "{exported}"
    );
    let first_key = keys.join(format!("{first_id}.key"));
    ensure!(
        gait_verify(&first_trace, &first_key)? == 0,
        "gait_verify.py refused the agent's trace with the exported key"
    );

    // Rotation: the agent restarts with a new key file; both keys stay registered.
    agent.stop();
    let new_key = gait_canon::sign::SigningKey::from_seed(&[42; 32]);
    let private = agent.dir.join("rotated.key");
    gait_canon::sign::write_key_pair(&private, &agent.dir.join("rotated.pub"), &new_key)?;
    let mut yaml = std::fs::read_to_string(agent.dir.join("agent.yaml"))?;
    yaml.push_str(&format!("gate:\n  signing_key: {}\n", private.display()));
    std::fs::write(agent.dir.join("agent.yaml"), yaml)?;
    agent.start()?;
    agent.wait_active_epoch(1, "bundle active after the restart")?;
    let (second_trace, second_id) = signed_trace(&agent, &work, "second")?;
    ensure!(second_id == new_key.public_key().key_id() && second_id != first_id);
    let listed = wait_for(PATIENCE, "the rotated key registered", || {
        let (_, v) = agg.get(TRACE_KEYS).ok()?;
        v["trace_keys"].as_array().filter(|k| k.len() == 2).cloned()
    })
    .with_context(|| agent.log())?;
    let rotated = listed
        .iter()
        .find(|k| k["key_id"] == second_id.as_str())
        .context("new key listed")?;
    ensure!(rotated["replaces"] == first_id.as_str(), "{listed:?}");
    let (status, one) = agg.get("/v1/orgs/acme/projects/web/envs/prod/agents/edge/trace-keys")?;
    ensure!(
        status == 200 && one["trace_keys"].as_array().map(Vec::len) == Some(2),
        "{one}"
    );

    export_keys(&agg, &keys)?;
    let second_key = keys.join(format!("{second_id}.key"));
    ensure!(
        gait_verify(&second_trace, &second_key)? == 0,
        "new trace, new key"
    );
    ensure!(
        gait_verify(&first_trace, &first_key)? == 0,
        "old trace, old key"
    );
    ensure!(
        gait_verify(&first_trace, &second_key)? == 2,
        "a trace does not verify under the other key"
    );
    // A restart with the same key announces nothing new: once everything the agent wrote is acknowledged,
    // there are still two announcements.
    agent.stop();
    agent.start()?;
    wait_for(PATIENCE, "the restarted agent's outbox drained", || {
        let s = agent.status().ok()?;
        (s["connected"] == true && s["outbox"]["depth"] == 0).then_some(())
    })
    .with_context(|| agent.log())?;
    let announcements = agg
        .all_records("acme", "web", "prod", "edge")?
        .into_iter()
        .filter(|r| r["kind"] == "agent.trace_key")
        .count();
    ensure!(announcements == 2, "{announcements} announcements");
    let (_, again) = agg.get(TRACE_KEYS)?;
    ensure!(
        again["trace_keys"].as_array().map(Vec::len) == Some(2),
        "{again}"
    );
    Ok(())
}
