//! The `gait-agent run` daemon against the real aggregator (both in process through `gait-testkit`): every
//! behaviour that needs only a well-behaved aggregator. Behaviour that needs a misbehaving one (silent or
//! refusing peers, tampered or foreign bundles) stays on the stand-in in `daemon.rs`.
#![allow(clippy::disallowed_methods)] // tests spawn freely and read the clock

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use gait_canon::sign::SigningKey;
use gait_testkit::{
    AgentOptions, AggregatorOptions, Publish, RunningAgent, RunningAggregator, StoredRecord,
    agent_key, init_logs, spawn_agent, spawn_aggregator, tenant, wait_for,
};
use serde_json::{Value, json};

const ORG: &str = "acme";
const PROJECT: &str = "payments";
const ENV: &str = "prod";
const AGENT_ID: &str = "agent-1";

const POLICY_YAML: &str = "default_verdict: block\nrules:\n  - name: allow-read\n    effect: allow\n    match:\n      tool_names: [fs.read]\n";

/// A fresh aggregator and one agent of `acme/payments/prod` connected to it.
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

async fn publish(
    aggregator: &RunningAggregator,
    publish: &Publish,
) -> Result<gait_testkit::Published> {
    Ok(aggregator
        .publish(&tenant(ORG, PROJECT, ENV)?, publish)
        .await?)
}

/// The stored records of the agent once every seq in `seqs` is there.
async fn stored(aggregator: &RunningAggregator, seqs: &[u64]) -> Result<Vec<StoredRecord>> {
    let key = agent_key(&tenant(ORG, PROJECT, ENV)?, AGENT_ID)?;
    Ok(wait_for("records in the store", || async {
        let records = aggregator.records(&key).await?;
        let all = seqs.iter().all(|s| records.iter().any(|r| r.seq == *s));
        Ok(all.then_some(records))
    })
    .await?)
}

fn payload_of(r: &StoredRecord) -> Result<Value> {
    Ok(serde_json::from_slice(&r.payload)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_activates_a_bundle_signed_by_a_trusted_key_and_stamps_records_with_it() -> Result<()>
{
    let (aggregator, agent) = start_pair().await?;
    let status = agent.wait_status("connection", |s| s.connected).await?;
    assert!(status.active_bundle.is_none());
    assert_eq!(status.identity.org, ORG);
    assert_eq!(status.identity.agent_id, AGENT_ID);

    let published = publish(
        &aggregator,
        &Publish::policy("default.yaml", POLICY_YAML).staleness(3600, "fail_closed"),
    )
    .await?;
    let status = agent
        .wait_status("bundle 1 active", |s| {
            s.active_bundle.as_ref().is_some_and(|b| b.epoch == 1)
        })
        .await?;
    let active = status.active_bundle.clone().context("active bundle")?;
    assert_eq!(active.digest, published.digest);
    assert_eq!(status.received_bundle.as_ref().map(|b| b.epoch), Some(1));
    assert!(status.last_refusal.is_none());
    assert!(!status.stale);
    assert_eq!(status.on_stale.as_deref(), Some("fail_closed"));
    assert!(status.last_contact_unix_ms.is_some());

    // The applied bundle is reported (the aggregator stores the report) and sent as a durable status record.
    let key = agent_key(&tenant(ORG, PROJECT, ENV)?, AGENT_ID)?;
    let reported = wait_for("bundle report", || async {
        Ok(aggregator
            .agent(&key)
            .await?
            .and_then(|row| row.active_bundle)
            .filter(|b| b.epoch == 1))
    })
    .await?;
    assert_eq!(reported.digest, published.digest);
    let applied = wait_for("bundle.applied record", || async {
        let records = aggregator.records(&key).await?;
        Ok(records.into_iter().find(|r| r.kind == "bundle.applied"))
    })
    .await?;
    assert_eq!(applied.class, "status");
    let p = payload_of(&applied)?;
    assert_eq!(p["epoch"], json!(1));
    assert_eq!(p["digest"], json!(published.digest));

    // A producer's record carries the bundle in force and since when.
    let (code, body) = agent
        .post_record(
            &json!({"class": "block", "kind": "app.decision", "payload": {"tool": "fs.write"}}),
        )
        .await?;
    assert_eq!(code, 200, "{body}");
    let seq = body["seq"].as_u64().context("seq")?;
    let records = stored(&aggregator, &[seq]).await?;
    let rec = records.iter().find(|r| r.seq == seq).context("record")?;
    assert_eq!(rec.bundle_epoch, Some(1));
    assert_eq!(
        rec.bundle_digest.as_deref(),
        Some(published.digest.as_str())
    );
    assert_eq!(rec.bundle_since_ms, Some(active.since_unix_ms));
    let payload = payload_of(rec)?;
    assert_eq!(payload["tool"], json!("fs.write"));
    assert_eq!(payload["appended_by"]["transport"], json!("tcp"));

    let metrics = agent.get_text("/metrics").await?;
    assert!(metrics.contains("gait_agent_bundle_epoch 1"), "{metrics}");
    assert!(metrics.contains("gait_agent_connected 1"), "{metrics}");

    assert!(agent.stop().await?.shutdown.clean);
    aggregator.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_restores_its_verified_bundle_after_a_restart_and_reports_staleness() -> Result<()> {
    let (aggregator, agent) = start_pair().await?;
    publish(
        &aggregator,
        &Publish::policy("default.yaml", POLICY_YAML).staleness(1, "fail_closed"),
    )
    .await?;
    let before = agent
        .wait_status("bundle 1 active", |s| {
            s.active_bundle.as_ref().is_some_and(|b| b.epoch == 1)
        })
        .await?;
    let stopped = agent.stop().await?;
    assert!(stopped.shutdown.clean, "drain was not clean");
    let _gone = aggregator.stop().await?;

    // Restart with the aggregator gone: the cached bundle is verified again and enforced at once.
    let agent = stopped.start().await?;
    let status = agent.status().await?;
    assert!(!status.connected);
    assert_eq!(status.active_bundle, before.active_bundle);
    assert_eq!(status.max_offline_seconds, Some(1));

    // max_offline_seconds is 1: without contact the agent turns stale and says what the bundle wants.
    let status = agent.wait_status("stale", |s| s.stale).await?;
    assert_eq!(status.on_stale.as_deref(), Some("fail_closed"));
    assert!(
        agent
            .get_text("/metrics")
            .await?
            .contains("gait_agent_stale 1")
    );
    let mut stopped = agent.stop().await?;
    assert!(stopped.shutdown.clean);

    // With a trust root that no longer includes the signer, the cache is not used at all.
    let other = SigningKey::generate();
    let dir = stopped
        .config
        .data_dir
        .parent()
        .context("data dir parent")?
        .to_owned();
    stopped.config.trust.registry_public_keys = vec![write_public_key(&dir, "other", &other)?];
    let agent = stopped.start().await?;
    let status = agent.status().await?;
    assert_eq!(
        status.active_bundle, None,
        "a cache that fails verification was used"
    );
    assert!(agent.stop().await?.shutdown.clean);
    Ok(())
}

/// Writes `key`'s public half as a Gait public key file and returns its path.
fn write_public_key(dir: &Path, name: &str, key: &SigningKey) -> Result<PathBuf> {
    let private = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    gait_canon::sign::write_key_pair(&private, &public, key)?;
    Ok(public)
}

// ---------------------------------------------------------------------------------------------------------
// Local gate decisions
// ---------------------------------------------------------------------------------------------------------

/// A Gait intent request for `tool` at `risk_class`.
fn intent(tool: &str, risk_class: &str) -> Value {
    json!({
        "schema_id": "gait.gate.intent_request",
        "schema_version": "1.0.0",
        "created_at": "2026-02-05T00:00:00Z",
        "producer_version": "test",
        "tool_name": tool,
        "args": {"path": "/tmp/out.txt"},
        "targets": [{"kind": "path", "value": "/tmp/out.txt"}],
        "arg_provenance": [{"arg_path": "$.path", "source": "user"}],
        "context": {"identity": "alice", "workspace": "/tmp/ws", "risk_class": risk_class}
    })
}

/// The repository's `shared/` directory (conformance material and the independent checker).
fn shared() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_decides_locally_from_the_verified_bundle_signs_the_trace_and_records_it()
-> Result<()> {
    let (aggregator, agent) = start_pair().await?;
    agent.wait_status("connection", |s| s.connected).await?;

    // No verified bundle yet: high-risk intents are blocked, others need approval; nothing is allowed.
    let (code, high) = agent.evaluate("", &intent("fs.write", "high")).await?;
    assert_eq!(code, 200, "{high}");
    assert_eq!(high["verdict"], json!("block"));
    assert_eq!(high["enforcement"], json!("no_policy"));
    assert_eq!(high["reason_codes"], json!(["agent_no_verified_policy"]));
    assert!(high.get("trace").is_none());
    let (_, low) = agent.evaluate("", &intent("fs.read", "low")).await?;
    assert_eq!(low["verdict"], json!("require_approval"), "{low}");

    // Without a bundle nothing allows a caller to simulate.
    let (code, refused) = agent
        .evaluate("?simulate=true", &intent("fs.write", "high"))
        .await?;
    assert_eq!(code, 403, "{refused}");
    assert_eq!(refused["error"]["code"], json!("simulate_not_allowed"));

    let published = publish(
        &aggregator,
        &Publish::policy("default.yaml", POLICY_YAML).allow_caller_simulate(),
    )
    .await?;
    let digest = published.digest;
    agent
        .wait_status("bundle 1 active", |s| {
            s.active_bundle.as_ref().is_some_and(|b| b.epoch == 1)
        })
        .await?;

    let policy = gait_policy::parse_policy_yaml(POLICY_YAML.as_bytes())?;
    let read_intent = intent("fs.read", "low");
    let expected_intent_digest =
        gait_policy::parse_and_normalize_intent(serde_json::to_vec(&read_intent)?.as_slice())?
            .intent_digest;
    let (code, allow) = agent.evaluate("", &read_intent).await?;
    assert_eq!(code, 200, "{allow}");
    assert_eq!(allow["verdict"], json!("allow"), "{allow}");
    assert_eq!(allow["matched_rule"], json!("allow-read"));
    assert_eq!(allow["enforcement"], json!("policy"));
    assert_eq!(allow["stale"], json!(false));
    assert_eq!(allow["policy_name"], json!("default.yaml"));
    assert_eq!(allow["policy_digest"], json!(policy.digest()));
    assert_eq!(allow["intent_digest"], json!(expected_intent_digest));
    assert_eq!(allow["bundle"]["epoch"], json!(1));
    assert_eq!(allow["bundle"]["digest"], json!(digest));

    // The trace is Gait's: it verifies with our verifier and with the independent Python check, under the
    // key the agent generated in its data dir; one changed byte breaks it.
    let public_path = agent.data_dir().join("keys/trace_public.key");
    let public = gait_canon::sign::load_public_key_file(&public_path)?;
    assert_eq!(allow["trace_key_id"], json!(public.key_id()));
    let trace_bytes = serde_json::to_vec_pretty(&allow["trace"])?;
    let verified = gait_artifact::trace::verify_trace(&trace_bytes, &public)?;
    assert!(verified.ok(), "{verified:?}");
    assert_eq!(allow["trace"]["verdict"], json!("allow"));
    assert_eq!(allow["trace"]["policy_digest"], json!(policy.digest()));
    let trace_path = agent.scratch_dir().join("trace.json");
    std::fs::write(&trace_path, &trace_bytes)?;
    let python = |doc: &Path| -> Result<i32> {
        let out = std::process::Command::new("python3")
            .arg(shared().join("tools/gait_verify.py"))
            .arg(doc)
            .arg(&public_path)
            .output()
            .context("run python3 gait_verify.py")?;
        Ok(out.status.code().unwrap_or(-1))
    };
    assert_eq!(
        python(&trace_path)?,
        0,
        "independent check refused our trace"
    );
    let tampered = String::from_utf8(trace_bytes.clone())?.replacen("\"allow\"", "\"block\"", 1);
    std::fs::write(&trace_path, tampered)?;
    assert_eq!(
        python(&trace_path)?,
        2,
        "independent check accepted a tampered trace"
    );

    let (_, block) = agent.evaluate("", &intent("fs.write", "high")).await?;
    assert_eq!(block["verdict"], json!("block"), "{block}");
    assert_eq!(block["enforcement"], json!("policy"));

    // Simulation answers allow but records what enforcement would have done, in the block class.
    let (_, simulated) = agent
        .evaluate("?simulate=true", &intent("fs.write", "high"))
        .await?;
    assert_eq!(simulated["verdict"], json!("allow"), "{simulated}");
    assert_eq!(simulated["simulated"]["would_have_blocked"], json!(true));

    // Every decision is a durable record, stored by the aggregator, stamped with the bundle in force.
    let seqs: Vec<u64> = [&high, &low, &allow, &block, &simulated]
        .iter()
        .map(|v| v["record_seq"].as_u64().context("record_seq"))
        .collect::<Result<_>>()?;
    let records = stored(&aggregator, &seqs).await?;
    let by_seq = |seq: u64| records.iter().find(|r| r.seq == seq).context("record");
    let classes: Vec<&str> = seqs
        .iter()
        .map(|s| by_seq(*s).map(|r| r.class.as_str()))
        .collect::<Result<_>>()?;
    assert_eq!(classes, ["block", "approval", "allow", "block", "block"]);
    let rec = by_seq(seqs[2])?;
    assert_eq!(rec.kind, "gate.decision");
    assert_eq!(
        (rec.bundle_epoch, rec.bundle_digest.as_deref()),
        (Some(1), Some(digest.as_str()))
    );
    let payload = payload_of(rec)?;
    assert_eq!(payload["schema"], json!("gait.agent.gate_decision"));
    assert_eq!(payload["trace"], allow["trace"]);
    assert_eq!(payload["tool_name"], json!("fs.read"));
    // Both clocks: the intent's claim (2026-02-05, as sent) and the agent's own, near the record's envelope time.
    assert_eq!(payload["intent_created_at"], json!("2026-02-05T00:00:00Z"));
    let decided = payload["agent_decided_unix_ms"]
        .as_i64()
        .context("agent_decided_unix_ms")?;
    assert!(
        (decided - rec.created_unix_ms).abs() < 60_000,
        "agent clock {decided} vs record {}",
        rec.created_unix_ms
    );
    // The simulated record carries the policy's own verdict beside the enforced one.
    let simulated_record = payload_of(by_seq(seqs[4])?)?;
    assert_eq!(simulated_record["policy_verdict"], json!("block"));
    assert_eq!(simulated_record["enforced_verdict"], json!("allow"));

    // Bad input names what is wrong and records nothing.
    let depth = agent.status().await?.outbox.last_seq;
    let bad = agent
        .http()
        .post(format!("http://{}/v1/gate/evaluate", agent.local_api()))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await?;
    assert_eq!(bad.status().as_u16(), 400);
    assert_eq!(
        bad.json::<Value>().await?["error"]["field"],
        json!("intent")
    );
    let (code, answer) = agent.evaluate("?bogus=1", &read_intent).await?;
    assert_eq!((code, &answer["error"]["field"]), (400, &json!("query")));
    let (code, answer) = agent.evaluate("?policy=other.yaml", &read_intent).await?;
    assert_eq!(code, 400, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("default.yaml")),
        "{answer}"
    );
    assert_eq!(agent.status().await?.outbox.last_seq, depth);

    assert!(agent.stop().await?.shutdown.clean);
    aggregator.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_bundle_blocks_everything_under_fail_closed_and_keeps_deciding_under_keep()
-> Result<()> {
    for (on_stale, expect_verdict) in [("fail_closed", "block"), ("keep", "allow")] {
        let (aggregator, agent) = start_pair().await?;
        publish(
            &aggregator,
            &Publish::policy("default.yaml", POLICY_YAML)
                .staleness(1, on_stale)
                .allow_caller_simulate(),
        )
        .await?;
        agent
            .wait_status("bundle active", |s| s.active_bundle.is_some())
            .await?;
        let (_, fresh) = agent.evaluate("", &intent("fs.read", "low")).await?;
        assert_eq!(fresh["verdict"], json!("allow"), "{fresh}");
        let stopped = agent.stop().await?;
        assert!(stopped.shutdown.clean);
        let _gone = aggregator.stop().await?;

        // Offline past max_offline_seconds: the rule of the bundle decides.
        let agent = stopped.start().await?;
        agent.wait_status("stale", |s| s.stale).await?;
        let (code, stale) = agent.evaluate("", &intent("fs.read", "low")).await?;
        assert_eq!(code, 200, "{stale}");
        assert_eq!(stale["stale"], json!(true));
        assert_eq!(
            stale["verdict"],
            json!(expect_verdict),
            "{on_stale}: {stale}"
        );
        if on_stale == "fail_closed" {
            assert_eq!(stale["enforcement"], json!("stale_fail_closed"));
            assert!(
                stale["reason_codes"]
                    .as_array()
                    .is_some_and(|r| r.contains(&json!("agent_bundle_stale"))),
                "{stale}"
            );
            assert_eq!(stale["trace"]["verdict"], json!("block"));
            // Simulation does not lift a stale fail-closed block.
            let (_, sim) = agent
                .evaluate("?simulate=true", &intent("fs.read", "low"))
                .await?;
            assert_eq!(sim["verdict"], json!("block"), "{sim}");
        } else {
            assert_eq!(stale["enforcement"], json!("policy"));
        }
        assert!(agent.stop().await?.shutdown.clean);
    }
    Ok(())
}

const LIMITED: &str = "default_verdict: block\nrules:\n  - name: limited-read\n    effect: allow\n    match:\n      tool_names: [fs.read]\n    rate_limit:\n      requests: 2\n      window: hour\n      scope: tool\n";

/// Restarts `agent` and waits until its cached bundle is in force again.
async fn restart(agent: RunningAgent) -> Result<RunningAgent> {
    let stopped = agent.stop().await?;
    assert!(stopped.shutdown.clean);
    let agent = stopped.start().await?;
    agent
        .wait_status("cached bundle active again", |s| s.active_bundle.is_some())
        .await?;
    Ok(agent)
}

/// The daemon's rate-limit counters live in its database: a restart does not reset a window that was
/// enforced. A legacy state file that is unreadable is set aside at start (ERROR, metric) and decisions go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_counts_survive_a_restart_and_an_unreadable_legacy_state_is_set_aside()
-> Result<()> {
    let (aggregator, agent) = start_pair().await?;
    publish(&aggregator, &Publish::policy("default.yaml", LIMITED)).await?;
    agent
        .wait_status("bundle active", |s| s.active_bundle.is_some())
        .await?;
    let (_, first) = agent.evaluate("", &intent("fs.read", "low")).await?;
    assert_eq!(first["verdict"], json!("allow"), "{first}");

    // A damaged state file left by an older agent in the data directory.
    let state = agent.data_dir().join("gate_rate_limits.json");
    std::fs::write(&state, b"{ not json")?;
    let agent = restart(agent).await?;
    let aside: Vec<_> = std::fs::read_dir(agent.data_dir())?
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("gate_rate_limits.json.unreadable-")
        })
        .collect();
    assert_eq!(aside.len(), 1, "the unreadable file is kept aside once");
    assert_eq!(std::fs::read(aside[0].path())?, b"{ not json");
    let metrics = agent.get_text("/metrics").await?;
    assert!(
        metrics.lines().any(
            |l| l.starts_with("gait_agent_rate_limit_state_resets_total") && l.ends_with(" 1")
        ),
        "{metrics}"
    );
    // The count from before the restart stands: one more allowed, then the limit of 2 per hour refuses.
    let (_, second) = agent.evaluate("", &intent("fs.read", "low")).await?;
    assert_eq!(second["verdict"], json!("allow"), "{second}");
    let (_, third) = agent.evaluate("", &intent("fs.read", "low")).await?;
    assert_eq!(third["verdict"], json!("block"), "{third}");
    let agent = restart(agent).await?;
    let (_, fourth) = agent.evaluate("", &intent("fs.read", "low")).await?;
    assert_eq!(
        fourth["verdict"],
        json!("block"),
        "still over the limit after a restart: {fourth}"
    );
    Ok(())
}

/// A data directory from before the counters moved into the database: its state file is imported once at
/// start, and concurrent decisions are then allowed exactly up to the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_state_file_is_imported_and_concurrent_decisions_get_exactly_the_limit()
-> Result<()> {
    const LIMIT: i64 = 25;
    let (aggregator, agent) = start_pair().await?;
    publish(
        &aggregator,
        &Publish::policy(
            "default.yaml",
            &LIMITED.replace("requests: 2", &format!("requests: {LIMIT}")),
        ),
    )
    .await?;
    agent
        .wait_status("bundle active", |s| s.active_bundle.is_some())
        .await?;
    let stopped = agent.stop().await?;
    // 20 of the 25 requests of this hour were counted by the old agent in Gait's file.
    let now = gait_policy::gotime::GoTime::from_offset_date_time(time::OffsetDateTime::now_utc());
    let limit = gait_policy::policy::RateLimitPolicy {
        requests: LIMIT,
        window: "hour".into(),
        scope: "tool".into(),
    };
    let key = gait_policy::gate::RateLimitState::counter_key(&limit, "fs.read", "alice", now)?
        .context("a counted limit")?;
    let legacy = stopped.config.data_dir.join("gate_rate_limits.json");
    std::fs::write(
        &legacy,
        format!(
            "{{\"schema_id\":\"gait.gate.rate_limit_state\",\"schema_version\":\"1.0.0\",\"counters\":[{{\"key\":\"{key}\",\"count\":20}}]}}\n"
        ),
    )?;
    let agent = stopped.start().await?;
    agent
        .wait_status("cached bundle active again", |s| s.active_bundle.is_some())
        .await?;
    assert!(!legacy.exists(), "the legacy file is imported and renamed");
    assert!(
        agent
            .data_dir()
            .join("gate_rate_limits.json.imported")
            .exists()
    );

    let url = format!("http://{}/v1/gate/evaluate", agent.local_api());
    let body = intent("fs.read", "low");
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..30 {
        let (client, url, body) = (agent.http().clone(), url.clone(), body.clone());
        calls.spawn(async move {
            let answer: Value = client.post(&url).json(&body).send().await?.json().await?;
            anyhow::Ok(answer)
        });
    }
    let mut allowed = 0;
    while let Some(answer) = calls.join_next().await {
        let answer = answer??;
        if answer["verdict"] == json!("allow") {
            allowed += 1;
        } else {
            assert_eq!(answer["verdict"], json!("block"), "{answer}");
        }
    }
    assert_eq!(
        allowed, 5,
        "exactly the 5 requests left of the imported window"
    );
    Ok(())
}
