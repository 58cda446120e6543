//! The agent deciding at the edge, against the real aggregator (both in process through `gait-testkit`):
//! Gait approval and delegation tokens presented with the intent on the local API (keys from the bundle in
//! force, checks of `gait gate eval`, cases of Gait's own scenarios under `/work/shared/fixtures/gait/`), and a
//! policy staged observe → dry_run → enforce through published bundles.
#![allow(clippy::disallowed_methods)] // tests spawn freely and read the clock

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use axum::http::Method;
use gait_artifact::GoTime;
use gait_artifact::approval::{ApprovalGrant, mint_approval_token};
use gait_canon::sign::SigningKey;
use gait_testkit::{
    AgentOptions, AggregatorOptions, RunningAgent, RunningAggregator, StoredRecord, agent_key,
    init_logs, spawn_agent, spawn_aggregator, tenant, wait_for,
};
use serde_json::{Value, json};

const ORG: &str = "acme";
const PROJECT: &str = "payments";
const ENV: &str = "prod";
const AGENT_ID: &str = "edge-1";

/// Gait's scenarios (the `approval-*` and `delegation-*` cases `gait gate eval` is checked against).
fn scenario(name: &str, file: &str) -> Result<String> {
    let dir = std::env::var_os("GAIT_SCENARIOS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/work/shared/fixtures/gait/scenarios/gait"));
    let path = dir.join(name).join(file);
    std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))
}

fn scenario_json(name: &str, file: &str) -> Result<Value> {
    Ok(serde_json::from_str(&scenario(name, file)?)?)
}

async fn start_pair() -> Result<(RunningAggregator, RunningAgent)> {
    init_logs();
    let aggregator = spawn_aggregator(AggregatorOptions::default()).await?;
    let agent = spawn_agent(
        &aggregator,
        &tenant(ORG, PROJECT, ENV)?,
        AGENT_ID,
        AgentOptions::default(),
    )
    .await?;
    Ok((aggregator, agent))
}

/// Publishes `body` (the HTTP API's publish body) as an operator would; the new epoch.
async fn publish(aggregator: &RunningAggregator, body: &Value) -> Result<u64> {
    let path = format!("/v1/orgs/{ORG}/projects/{PROJECT}/envs/{ENV}/bundles");
    let response = aggregator
        .api_request(Method::POST, &path, Some(body))
        .await?;
    let answer: Value = serde_json::from_slice(response.body())?;
    ensure!(
        response.status().as_u16() == 201,
        "publish refused: {answer}"
    );
    answer["epoch"].as_u64().context("epoch in the answer")
}

async fn wait_epoch(agent: &RunningAgent, epoch: u64) -> Result<()> {
    agent
        .wait_status(&format!("bundle {epoch} active"), |s| {
            s.active_bundle.as_ref().is_some_and(|b| b.epoch == epoch)
        })
        .await?;
    Ok(())
}

/// `POST /v1/gate/evaluate` with `body`: the answer, which must be 200.
async fn decide(agent: &RunningAgent, query: &str, body: &Value) -> Result<Value> {
    let (status, answer) = agent.evaluate(query, body).await?;
    ensure!(status == 200, "evaluate answered {status}: {answer}");
    Ok(answer)
}

fn codes(answer: &Value) -> Vec<String> {
    answer["reason_codes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn approval_key(aggregator: &RunningAggregator) -> Result<SigningKey> {
    let path = aggregator.data_dir().join("keys").join("approval.key");
    gait_canon::sign::load_private_key_file(&path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

fn grant(
    intent_digest: &str,
    policy_digest: &str,
    scope: &str,
    expires: &str,
) -> Result<ApprovalGrant> {
    Ok(ApprovalGrant {
        approver_identity: "human.reviewer".into(),
        reason_code: "MANUAL_APPROVAL".into(),
        intent_digest: intent_digest.into(),
        policy_digest: policy_digest.into(),
        scope: vec![scope.into()],
        created_at: GoTime::parse("2026-01-01T00:00:00Z")?,
        expires_at: GoTime::parse(expires)?,
        producer_version: "test".into(),
        ..ApprovalGrant::default()
    })
}

const FUTURE: &str = "2036-01-01T00:00:00Z";
const PAST: &str = "2026-01-01T00:00:01Z";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_presented_with_the_intent_are_judged_as_gait_gate_eval_judges_them() -> Result<()> {
    let (aggregator, agent) = start_pair().await?;
    // Gait's scenarios: `approval-token-valid` (require_approval by default) and `delegation-chain-depth-3`.
    let approval_policy = scenario("approval-token-valid", "policy.yaml")?;
    let delegation_policy = scenario("delegation-chain-depth-3", "policy.yaml")?;
    let delegation_key = scenario("delegation-chain-depth-3", "delegation_public.key")?;
    publish(
        &aggregator,
        &json!({
            "policies": { "approval.yaml": approval_policy, "delegation.yaml": delegation_policy },
            "delegation_key": delegation_key.trim(),
        }),
    )
    .await?;
    wait_epoch(&agent, 1).await?;

    // Without a token the scenario's intent needs approval.
    let intent = scenario_json("approval-token-valid", "intent.json")?;
    let bare = decide(&agent, "?policy=approval.yaml", &intent).await?;
    assert_eq!(bare["verdict"], "require_approval", "{bare}");
    let intent_digest = bare["intent_digest"]
        .as_str()
        .context("intent digest")?
        .to_owned();
    let policy_digest = bare["policy_digest"]
        .as_str()
        .context("policy digest")?
        .to_owned();
    let key = approval_key(&aggregator)?;
    let mint = |g: ApprovalGrant| serde_json::to_value(mint_approval_token(g, &key));
    let with = |token: Value| json!({ "intent": intent, "approval_tokens": [token] });

    // Minted for the intent with the aggregator's approval key (the bundle's approval_key): allow.
    let valid = mint(grant(
        &intent_digest,
        &policy_digest,
        "tool:tool.write",
        FUTURE,
    )?)?;
    let allowed = decide(&agent, "?policy=approval.yaml", &with(valid.clone())).await?;
    assert_eq!(allowed["verdict"], "allow", "{allowed}");
    assert!(
        codes(&allowed).contains(&"approval_granted".into()),
        "{allowed}"
    );
    assert_eq!(allowed["approval_audit"][0]["valid"], true, "{allowed}");

    // The cases that must not pass, each with Gait's reason code, the verdict staying require_approval.
    let mut tampered = valid.clone();
    tampered["approver_identity"] = json!("someone.else");
    let cases = [
        (
            "expired",
            mint(grant(
                &intent_digest,
                &policy_digest,
                "tool:tool.write",
                PAST,
            )?)?,
            "approval_token_expired",
        ),
        ("tampered", tampered, "approval_token_signature_invalid"),
        (
            "wrong intent digest",
            mint(grant(
                &"0".repeat(64),
                &policy_digest,
                "tool:tool.write",
                FUTURE,
            )?)?,
            "approval_token_intent_mismatch",
        ),
        (
            "wrong policy digest",
            mint(grant(
                &intent_digest,
                &"0".repeat(64),
                "tool:tool.write",
                FUTURE,
            )?)?,
            "approval_token_policy_mismatch",
        ),
        (
            "wrong scope",
            mint(grant(
                &intent_digest,
                &policy_digest,
                "tool:tool.read",
                FUTURE,
            )?)?,
            "approval_token_scope_mismatch",
        ),
        (
            // Gait's own valid token, signed by the scenario's key: not a key this bundle trusts.
            "signed by another key",
            scenario_json("approval-token-valid", "approval-token.json")?,
            "approval_token_signature_invalid",
        ),
    ];
    for (case, token, code) in cases {
        let answer = decide(&agent, "?policy=approval.yaml", &with(token)).await?;
        assert_eq!(answer["verdict"], "require_approval", "{case}: {answer}");
        assert!(
            codes(&answer).contains(&code.to_owned()),
            "{case}: {answer}"
        );
        assert_eq!(
            answer["approval_audit"][0]["valid"], false,
            "{case}: {answer}"
        );
    }

    // Gait's expired-token scenario itself: expired (and not this bundle's key) either way.
    let expired = scenario_json("approval-expiry-1s-past", "approval-token.json")?;
    let answer = decide(&agent, "?policy=approval.yaml", &with(expired)).await?;
    assert_eq!(answer["verdict"], "require_approval", "{answer}");

    // Delegation: the scenario's three-link chain, verified with the bundle's delegation_key.
    let delegated = scenario_json("delegation-chain-depth-3", "intent.json")?;
    let chain: Vec<Value> = (1..=3)
        .map(|i| {
            scenario_json(
                "delegation-chain-depth-3",
                &format!("delegation-token-{i}.json"),
            )
        })
        .collect::<Result<_>>()?;
    let none = decide(&agent, "?policy=delegation.yaml", &delegated).await?;
    assert_eq!(none["verdict"], "block", "{none}");
    assert!(
        codes(&none).contains(&"delegation_token_missing".into()),
        "{none}"
    );
    let body = json!({ "intent": delegated, "delegation_tokens": chain });
    let granted = decide(&agent, "?policy=delegation.yaml", &body).await?;
    assert_eq!(granted["verdict"], "allow", "{granted}");
    assert!(
        codes(&granted).contains(&"delegation_granted".into()),
        "{granted}"
    );
    // A chain missing its middle link does not delegate.
    let short = json!({ "intent": delegated, "delegation_tokens": [chain[0], chain[2]] });
    let refused = decide(&agent, "?policy=delegation.yaml", &short).await?;
    assert_eq!(refused["verdict"], "block", "{refused}");

    // A document Gait decodes but that is no valid token is judged as `gait gate eval` judges it; something
    // that is not a JSON object at all is refused naming the field, before anything is decided.
    let answer = decide(
        &agent,
        "?policy=approval.yaml",
        &with(json!({"schema_id": "nope"})),
    )
    .await?;
    assert_eq!(answer["verdict"], "require_approval", "{answer}");
    assert!(
        codes(&answer).contains(&"approval_token_invalid".into()),
        "{answer}"
    );
    let (status, answer) = agent
        .evaluate(
            "?policy=approval.yaml",
            &json!({ "intent": intent, "approval_tokens": ["not a token"] }),
        )
        .await?;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["field"], "approval_tokens", "{answer}");
    let (status, answer) = agent
        .evaluate("", &json!({ "intent": intent, "tokens": [] }))
        .await?;
    assert_eq!(status, 400, "unknown envelope key: {answer}");
    Ok(())
}

const ACTIVE: &str = "default_verdict: allow\nrules:\n  - name: block-delete\n    effect: block\n    match:\n      tool_names: [tool.delete]\n";
const CANDIDATE: &str = "default_verdict: allow\nrules:\n  - name: block-write\n    effect: block\n    match:\n      tool_names: [tool.write]\n    reason_codes: [write_blocked]\n";

fn intent_for(tool: &str) -> Value {
    json!({
        "schema_id": "gait.gate.intent_request",
        "schema_version": "1.0.0",
        "created_at": "2026-02-18T00:00:00Z",
        "producer_version": "test",
        "tool_name": tool,
        "args": { "path": "/tmp/x" },
        "targets": [{ "kind": "path", "value": "/tmp/x", "operation": "write" }],
        "context": { "identity": "agent.edge", "workspace": "/repo", "risk_class": "low" }
    })
}

/// What one decision said about its stage: (bundle epoch, stage, enforced verdict, active verdict, candidate
/// verdict, would_have_blocked).
fn stage_of(answer: &Value) -> (u64, String, String, Value, Value, bool) {
    let stage = &answer["stage"];
    (
        answer["bundle"]["epoch"].as_u64().unwrap_or(0),
        stage["stage"].as_str().unwrap_or("").to_owned(),
        answer["verdict"].as_str().unwrap_or("").to_owned(),
        stage["active_verdict"].clone(),
        stage["candidate_verdict"].clone(),
        stage["would_have_blocked"].as_bool().unwrap_or(false),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_moves_observe_then_dry_run_then_enforce_each_on_activation() -> Result<()> {
    let (aggregator, agent) = start_pair().await?;
    let write = intent_for("tool.write");
    let delete = intent_for("tool.delete");

    // Epoch 1: the active policy alone (stage enforce): write allowed, delete blocked.
    publish(&aggregator, &json!({ "policies": { "p.yaml": ACTIVE } })).await?;
    wait_epoch(&agent, 1).await?;
    let w = decide(&agent, "", &write).await?;
    assert_eq!(
        stage_of(&w),
        (
            1,
            "enforce".into(),
            "allow".into(),
            json!("allow"),
            Value::Null,
            false
        )
    );
    assert_eq!(w["stage"]["candidate_digest"], Value::Null);
    // No candidate: neither candidate reason codes nor the error flag appear.
    assert!(
        w["stage"].get("candidate_reason_codes").is_none()
            && w["stage"].get("candidate_error").is_none(),
        "{w}"
    );

    // Epoch 2: the candidate (blocks write, allows delete) in observe. Until the agent activates it the old
    // stage holds; after, the active policy still decides and both verdicts are recorded.
    let staged = |stage: &str| {
        json!({
            "policies": { "p.yaml": ACTIVE },
            "candidates": { "p.yaml": { "stage": stage, "name": "p.candidate.yaml", "policy": CANDIDATE } },
        })
    };
    publish(&aggregator, &staged("observe")).await?;
    let early = decide(&agent, "", &write).await?;
    let (epoch, stage, ..) = stage_of(&early);
    assert!(
        (epoch, stage.as_str()) == (1, "enforce") || (epoch, stage.as_str()) == (2, "observe"),
        "a decision's stage is its bundle's: {early}"
    );
    wait_epoch(&agent, 2).await?;
    let w = decide(&agent, "", &write).await?;
    assert_eq!(
        stage_of(&w),
        (
            2,
            "observe".into(),
            "allow".into(),
            json!("allow"),
            json!("block"),
            false
        )
    );
    let candidate_digest = w["stage"]["candidate_digest"]
        .as_str()
        .context("candidate digest")?
        .to_owned();
    assert_eq!(candidate_digest.len(), 64, "{w}");
    // The candidate's own reason codes travel with the decision (rollout health counts diffs by reason).
    assert_eq!(
        w["stage"]["candidate_reason_codes"],
        json!(["write_blocked"]),
        "{w}"
    );
    assert!(w["stage"].get("candidate_error").is_none(), "{w}");
    let d = decide(&agent, "", &delete).await?;
    assert_eq!(
        stage_of(&d),
        (
            2,
            "observe".into(),
            "block".into(),
            json!("block"),
            json!("allow"),
            false
        )
    );

    // Epoch 3: dry_run. The candidate is the policy of record; its block of write (which the replaced policy
    // allows) is reported and not enforced, and delete (which the replaced policy blocks) stays blocked.
    publish(&aggregator, &staged("dry_run")).await?;
    wait_epoch(&agent, 3).await?;
    let w = decide(&agent, "", &write).await?;
    assert_eq!(
        stage_of(&w),
        (
            3,
            "dry_run".into(),
            "allow".into(),
            json!("allow"),
            json!("block"),
            true
        )
    );
    assert!(
        codes(&w).contains(&"stage_dry_run_would_have_blocked".into()),
        "{w}"
    );
    // In dry_run the candidate is of record: its codes, without the stage's own.
    assert_eq!(
        w["stage"]["candidate_reason_codes"],
        json!(["write_blocked"]),
        "{w}"
    );
    assert_eq!(
        w["policy_digest"],
        json!(candidate_digest),
        "the candidate is of record: {w}"
    );
    let d = decide(&agent, "", &delete).await?;
    assert_eq!(
        stage_of(&d),
        (
            3,
            "dry_run".into(),
            "block".into(),
            json!("block"),
            json!("allow"),
            false
        )
    );
    let read = decide(&agent, "", &intent_for("tool.read")).await?;
    assert_eq!(
        stage_of(&read),
        (
            3,
            "dry_run".into(),
            "allow".into(),
            json!("allow"),
            json!("allow"),
            false
        )
    );

    // Epoch 4: the candidate enforced (published as the policy).
    publish(&aggregator, &json!({ "policies": { "p.yaml": CANDIDATE } })).await?;
    wait_epoch(&agent, 4).await?;
    let w = decide(&agent, "", &write).await?;
    assert_eq!(
        stage_of(&w),
        (
            4,
            "enforce".into(),
            "block".into(),
            json!("block"),
            Value::Null,
            false
        )
    );
    let d = decide(&agent, "", &delete).await?;
    assert_eq!(stage_of(&d).2, "allow");

    // Every decision record reached the aggregator with its stage, candidate digest and both verdicts.
    let key = agent_key(&tenant(ORG, PROJECT, ENV)?, AGENT_ID)?;
    let records: Vec<StoredRecord> = wait_for("the dry-run decisions in the store", || async {
        let records = aggregator.records(&key).await?;
        let decisions = records
            .iter()
            .filter(|r| r.kind == "gate.decision" && r.bundle_epoch == Some(4))
            .count();
        Ok((decisions >= 2).then_some(records))
    })
    .await?;
    let payloads: Vec<Value> = records
        .iter()
        .filter(|r| r.kind == "gate.decision")
        .map(|r| serde_json::from_slice(&r.payload))
        .collect::<Result<_, _>>()?;
    let dry_write = payloads
        .iter()
        .find(|p| p["stage"]["stage"] == "dry_run" && p["tool_name"] == "tool.write")
        .context("dry_run write decision recorded")?;
    assert_eq!(
        dry_write["stage"]["would_have_blocked"], true,
        "{dry_write}"
    );
    assert_eq!(
        dry_write["stage"]["candidate_digest"],
        json!(candidate_digest)
    );
    assert_eq!(dry_write["enforced_verdict"], "allow");
    assert_eq!(
        dry_write["policy_verdict"], "block",
        "the candidate of record's own verdict"
    );
    let observed = payloads
        .iter()
        .find(|p| p["stage"]["stage"] == "observe" && p["tool_name"] == "tool.delete")
        .context("observe delete decision recorded")?;
    assert_eq!(observed["stage"]["active_verdict"], "block");
    assert_eq!(observed["stage"]["candidate_verdict"], "allow");
    assert!(
        payloads.iter().all(|p| p["stage"]["stage"].is_string()),
        "every decision record carries its stage"
    );
    Ok(())
}

/// The agent API's OpenAPI document (`schemas/agent-api.openapi.json`) is a valid OpenAPI document and lists
/// exactly the routes the local API serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_api_document_is_valid_and_equals_the_served_routes() -> Result<()> {
    let doc_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/agent-api.openapi.json");
    let output = std::process::Command::new("openapi-spec-validator")
        .arg(&doc_path)
        .output()
        .context("run openapi-spec-validator (pip install openapi-spec-validator)")?;
    ensure!(
        output.status.success(),
        "openapi-spec-validator: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let doc: Value = serde_json::from_slice(&std::fs::read(&doc_path)?)?;
    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, item) in doc["paths"].as_object().context("paths")? {
        for method in item.as_object().context("path item")?.keys() {
            documented.push((method.to_uppercase(), path.clone()));
        }
    }
    documented.sort();
    let mut served: Vec<(String, String)> = gait_agent::local_api::ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    served.sort();
    assert_eq!(
        documented, served,
        "schemas/agent-api.openapi.json vs local_api::ROUTES"
    );

    // And the router serves each of them (no 404/405), while an undocumented path is not served.
    let (_aggregator, agent) = start_pair().await?;
    let client = agent.http();
    let token = std::fs::read_to_string(agent.data_dir().join("local-api.token"))?;
    let answer = |method: &str, path: &str| {
        let url = format!("http://{}{path}", agent.local_api());
        let request = match method {
            "GET" => client.get(url),
            _ => client
                .post(url)
                .header("content-type", "application/json")
                .bearer_auth(token.trim())
                .body("{}"),
        };
        async move { Ok::<_, anyhow::Error>(request.send().await?.status().as_u16()) }
    };
    for (method, path) in &served {
        let status = answer(method, path).await?;
        assert!(status != 404 && status != 405, "{method} {path}: {status}");
    }
    assert_eq!(answer("GET", "/v1/not-a-route").await?, 404);
    Ok(())
}
