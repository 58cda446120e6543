//! End to end: real `gait-aggregator` and `gait-agent` processes on 127.0.0.1 — bundle distribution, durable
//! delivery across outages and crashes, tenancy isolation, bundle refusal. Each scenario runs on SQLite and,
//! with `GAIT_TEST_DATABASE_URL` set (as `scripts/test.sh` does), on PostgreSQL.

use std::collections::BTreeSet;

use anyhow::{Context as _, ensure};
use gait_e2e::{Agent, Aggregator, PATIENCE, POLICY_V1, POLICY_V2, http_json, wait_for};
use serde_json::json;

use crate::support::fresh_postgres;

/// Runs a scenario as two tests, `<scenario>::sqlite` and `<scenario>::postgres` (the latter skipped without
/// `GAIT_TEST_DATABASE_URL`), so the two backends run side by side.
macro_rules! on_each_backend {
    ($scenario:ident) => {
        mod $scenario {
            #[test]
            fn sqlite() {
                super::on_sqlite(super::$scenario);
            }

            #[test]
            fn postgres() {
                super::on_postgres(super::$scenario);
            }
        }
    };
}

fn on_sqlite(scenario: fn(Option<&str>) -> anyhow::Result<()>) {
    if let Err(e) = scenario(None) {
        panic!("[sqlite] {e:#}");
    }
}

/// The scenario on a fresh PostgreSQL database, when one is configured.
fn on_postgres(scenario: fn(Option<&str>) -> anyhow::Result<()>) {
    let (_rt, db) = match fresh_postgres() {
        Ok(Some(found)) => found,
        Ok(None) => return,
        Err(e) => panic!("{e}"),
    };
    if let Err(e) = scenario(Some(db.url())) {
        panic!("[postgres] {e:#}");
    }
}

on_each_backend!(publish_reaches_three_connected_agents_which_report_the_new_version);
fn publish_reaches_three_connected_agents_which_report_the_new_version(
    db: Option<&str>,
) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let agg = Aggregator::start(&tmp.path().join("agg"), db)?;
    let mut agents = Vec::new();
    for i in 0..3 {
        let mut a = Agent::enroll(
            &agg,
            &tmp.path().join(format!("a{i}")),
            "acme",
            "web",
            "prod",
            &format!("agent-{i}"),
        )?;
        a.start()?;
        agents.push(a);
    }
    wait_for(PATIENCE, "3 agents connected", || {
        agg.agents("acme").ok().filter(|v| v.len() == 3)
    })?;
    let (status, body) = agg.publish("acme", "web", "prod", &[("base.yaml", POLICY_V1)])?;
    ensure!(status == 201, "publish: {status} {body}");
    let digest = body["digest"].as_str().context("digest")?.to_owned();
    for a in &agents {
        a.wait_active_epoch(1, "agent active epoch 1")
            .with_context(|| a.log())?;
        ensure!(
            a.status()?["active_bundle"]["digest"] == digest.as_str(),
            "agent digest differs"
        );
    }
    // The aggregator's inventory shows what each agent applied (reported by the agents themselves).
    wait_for(PATIENCE, "inventory shows epoch 1 everywhere", || {
        agg.agents("acme").ok().filter(|v| {
            v.iter().all(|a| {
                a["active_bundle"]["epoch"] == 1 && a["active_bundle"]["digest"] == digest.as_str()
            })
        })
    })?;
    // A second publish moves everyone to epoch 2.
    let (status, body) = agg.publish("acme", "web", "prod", &[("base.yaml", POLICY_V2)])?;
    ensure!(
        status == 201 && body["epoch"] == 2,
        "publish 2: {status} {body}"
    );
    ensure!(
        body["parent_digest"] == digest.as_str(),
        "epoch 2 must chain to epoch 1: {body}"
    );
    for a in &agents {
        a.wait_active_epoch(2, "agent active epoch 2")?;
    }
    Ok(())
}

/// A Gait intent for `tool`.
fn intent(tool: &str, n: u32) -> serde_json::Value {
    json!({
        "schema_id": "gait.gate.intent_request",
        "schema_version": "1.0.0",
        "created_at": "2026-12-05T09:00:00Z",
        "producer_version": "e2e",
        "tool_name": tool,
        "args": {"path": format!("/srv/data/{n}.csv")},
        "targets": [{"kind": "path", "value": format!("/srv/data/{n}.csv"), "operation": "read"}],
        "arg_provenance": [{"arg_path": "$.path", "source": "user"}],
        "context": {"identity": "sidecar-e2e", "workspace": "/srv/agents/e2e", "risk_class": "low"}
    })
}

on_each_backend!(sidecar_decisions_made_while_the_aggregator_is_down_arrive_exactly_once);
fn sidecar_decisions_made_while_the_aggregator_is_down_arrive_exactly_once(
    db: Option<&str>,
) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut agg = Aggregator::start(&tmp.path().join("agg"), db)?;
    let mut agent = Agent::enroll(
        &agg,
        &tmp.path().join("a"),
        "acme",
        "web",
        "prod",
        "sidecar-1",
    )?;
    agent.start()?;
    let (status, body) = agg.publish("acme", "web", "prod", &[("base.yaml", POLICY_V1)])?;
    ensure!(status == 201, "publish: {status} {body}");
    agent.wait_active_epoch(1, "bundle active")?;
    let token = agent.api_token()?;

    // The aggregator goes away; the sidecar keeps deciding from its verified bundle, each answer durable.
    agg.stop();
    let mut answered = Vec::new();
    for n in 0..40u32 {
        let tool = if n % 4 == 0 {
            "tool.write"
        } else {
            "tool.read"
        };
        let (status, answer) = http_json(
            "POST",
            &format!("http://{}/v1/gate/evaluate", agent.api),
            Some(&token),
            Some(intent(tool, n)),
        )?;
        ensure!(status == 200, "evaluate while down: {status} {answer}");
        let expected = if n % 4 == 0 { "block" } else { "allow" };
        ensure!(answer["verdict"] == expected, "{answer}");
        let seq = answer["record_seq"].as_u64().context("record_seq")?;
        answered.push((
            seq,
            answer["intent_digest"].clone(),
            answer["trace_id"].clone(),
        ));
    }
    ensure!(
        agent.status()?["connected"] == false,
        "the aggregator is down"
    );

    agg.restart()?;
    let decisions = wait_for(PATIENCE * 2, "every decision committed", || {
        let records = agg.records("acme", "web", "prod", "sidecar-1").ok()?;
        let decisions: Vec<_> = records
            .into_iter()
            .filter(|r| r["kind"] == "gate.decision")
            .collect();
        (decisions.len() >= answered.len()).then_some(decisions)
    })?;
    // Exactly once: one record per answered decision, at the seq the answer named, with its digests.
    ensure!(
        decisions.len() == answered.len(),
        "{} decision records for {} answers",
        decisions.len(),
        answered.len()
    );
    let seqs: BTreeSet<u64> = decisions.iter().filter_map(|r| r["seq"].as_u64()).collect();
    ensure!(seqs.len() == decisions.len(), "duplicate seqs");
    for (seq, digest, trace_id) in &answered {
        let r = decisions
            .iter()
            .find(|r| r["seq"] == *seq)
            .with_context(|| format!("decision at seq {seq} missing"))?;
        ensure!(
            r["payload"]["intent_digest"] == *digest && r["payload"]["trace_id"] == *trace_id,
            "seq {seq}: {}",
            r["payload"]
        );
    }
    // Nothing more arrives later (no resend once acknowledged).
    wait_for(PATIENCE, "outbox drained", || {
        (agent.status().ok()?["outbox"]["depth"] == 0).then_some(())
    })?;
    let again = agg
        .records("acme", "web", "prod", "sidecar-1")?
        .into_iter()
        .filter(|r| r["kind"] == "gate.decision")
        .count();
    ensure!(again == answered.len(), "{again} decisions after the drain");
    agent.stop();
    agg.stop();
    Ok(())
}

on_each_backend!(records_written_while_aggregator_is_down_arrive_exactly_once_after_agent_restart);
fn records_written_while_aggregator_is_down_arrive_exactly_once_after_agent_restart(
    db: Option<&str>,
) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut agg = Aggregator::start(&tmp.path().join("agg"), db)?;
    let mut agent = Agent::enroll(&agg, &tmp.path().join("a"), "acme", "web", "prod", "edge-1")?;
    agent.start()?;
    let (status, body) = agg.publish("acme", "web", "prod", &[("base.yaml", POLICY_V1)])?;
    ensure!(status == 201, "publish: {status} {body}");
    agent.wait_active_epoch(1, "bundle active")?;

    agg.stop();
    let mut sent = Vec::new();
    for i in 0..150 {
        let class = if i % 3 == 0 { "block" } else { "approval" };
        let payload = json!({"i": i, "note": "written while the aggregator was down"});
        let seq = agent
            .append(class, "app.decision", payload.clone())?
            .context("not shed")?;
        sent.push((seq, payload));
    }
    // The agent restarts while still disconnected and keeps enforcing the cached bundle.
    agent.stop();
    agent.start()?;
    ensure!(
        agent.active_epoch() == Some(1),
        "cached bundle must stay active across restart: {}",
        agent.status()?
    );
    ensure!(agent.status()?["connected"] == false, "aggregator is down");
    for i in 150..200 {
        let payload = json!({"i": i, "note": "after the agent restart"});
        let seq = agent
            .append("block", "app.decision", payload.clone())?
            .context("not shed")?;
        sent.push((seq, payload));
    }

    agg.restart()?;
    let records = wait_for(PATIENCE * 2, "all records committed", || {
        let r = agg.records("acme", "web", "prod", "edge-1").ok()?;
        let n = r.iter().filter(|x| x["kind"] == "app.decision").count();
        (n >= sent.len()).then_some(r)
    })?;
    // Exactly once: one row per seq, and every payload we wrote is there with its seq.
    let decisions: Vec<_> = records
        .iter()
        .filter(|r| r["kind"] == "app.decision")
        .collect();
    ensure!(
        decisions.len() == sent.len(),
        "{} decision records stored, {} written",
        decisions.len(),
        sent.len()
    );
    let seqs: BTreeSet<u64> = records.iter().filter_map(|r| r["seq"].as_u64()).collect();
    ensure!(seqs.len() == records.len(), "duplicate seqs stored");
    for (seq, payload) in &sent {
        let r = decisions
            .iter()
            .find(|r| r["seq"] == *seq)
            .with_context(|| format!("seq {seq} missing"))?;
        // What the producer sent, plus the agent's `appended_by` (who appended it).
        let mut stored = r["payload"].clone();
        let by = stored.as_object_mut().and_then(|p| p.remove("appended_by"));
        ensure!(
            stored == *payload && by.is_some_and(|b| b["transport"] == "tcp"),
            "seq {seq} payload differs: {} vs {payload}",
            r["payload"]
        );
        ensure!(
            r["bundle_epoch"] == 1,
            "seq {seq} must say bundle epoch 1 was in force"
        );
    }
    // The hash chain is intact end to end: each record's prev_hash is the previous record's hash.
    for w in records.windows(2) {
        if w[1]["seq"].as_u64() == w[0]["seq"].as_u64().map(|s| s + 1) {
            ensure!(
                w[1]["prev_hash"] == w[0]["hash"],
                "chain break at seq {}",
                w[1]["seq"]
            );
        }
    }
    let (_, gaps) = agg.get("/v1/orgs/acme/projects/web/envs/prod/agents/edge-1/gaps")?;
    ensure!(
        gaps["gaps"].as_array().is_some_and(|g| g.is_empty()),
        "no gaps expected: {gaps}"
    );
    // The outbox is drained once the aggregator has acknowledged everything.
    wait_for(PATIENCE, "outbox drained", || {
        (agent.status().ok()?["outbox"]["depth"] == 0).then_some(())
    })?;
    Ok(())
}

on_each_backend!(
    kill_9_of_agent_mid_shipping_and_of_aggregator_mid_commit_loses_and_doubles_nothing
);
fn kill_9_of_agent_mid_shipping_and_of_aggregator_mid_commit_loses_and_doubles_nothing(
    db: Option<&str>,
) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut agg = Aggregator::start(&tmp.path().join("agg"), db)?;
    let mut agent = Agent::enroll(&agg, &tmp.path().join("a"), "acme", "web", "prod", "crashy")?;
    agent.start()?;
    agent.wait_connected("agent connected")?;
    let mut expected = 0u64;
    for round in 0..4 {
        // Write a burst; the agent ships while we write.
        for i in 0..400 {
            agent
                .append("block", "app.decision", json!({"round": round, "i": i}))?
                .context("not shed")?;
            expected += 1;
        }
        if round % 2 == 0 {
            agent.kill9();
            agent.start()?;
        } else {
            agg.kill9();
            agg.restart()?;
        }
    }
    let records = wait_for(PATIENCE * 2, "every record committed", || {
        let r = agg.records("acme", "web", "prod", "crashy").ok()?;
        (r.iter().filter(|x| x["kind"] == "app.decision").count() as u64 >= expected).then_some(r)
    })
    .with_context(|| {
        format!(
            "agent log:\n{}\naggregator log:\n{}",
            agent.log(),
            agg.log()
        )
    })?;
    let decisions: Vec<_> = records
        .iter()
        .filter(|r| r["kind"] == "app.decision")
        .collect();
    ensure!(
        decisions.len() as u64 == expected,
        "stored {} decisions, wrote {expected}",
        decisions.len()
    );
    let keys: BTreeSet<(u64, u64)> = decisions
        .iter()
        .map(|r| {
            (
                r["payload"]["round"].as_u64().unwrap_or(99),
                r["payload"]["i"].as_u64().unwrap_or(9999),
            )
        })
        .collect();
    ensure!(
        keys.len() as u64 == expected,
        "some payloads are doubled or missing"
    );
    let (_, gaps) = agg.get("/v1/orgs/acme/projects/web/envs/prod/agents/crashy/gaps")?;
    ensure!(
        gaps["gaps"].as_array().is_some_and(|g| g.is_empty()),
        "no gaps expected: {gaps}"
    );
    Ok(())
}

/// Producers appending concurrently when the agent is killed: every append the agent answered is durable
/// (the group commit's write-ahead log is replayed at the next start, since redb drops commits it had not
/// synced), so each one reaches the aggregator, once. What is tested is the agent's file, so one backend
/// suffices.
#[test]
fn kill_9_during_concurrent_appends_keeps_every_answered_record() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let run = || -> anyhow::Result<()> {
        let mut agg = Aggregator::start(&tmp.path().join("agg"), None)?;
        let mut agent = Agent::enroll(&agg, &tmp.path().join("a"), "acme", "web", "prod", "burst")?;
        agent.start()?;
        agent.wait_connected("agent connected")?;
        // With the aggregator down, nothing answered is shipped before the kill: the agent's file is the only
        // copy, so a lost record cannot hide behind one the aggregator already took.
        agg.stop();
        let token = agent.api_token()?;
        let token = token.as_str();
        let url = format!("http://{}/v1/records", agent.api);
        let answered = std::sync::Mutex::new(Vec::<(u64, u64)>::new());
        let failed = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|scope| -> anyhow::Result<()> {
            for t in 0..8u64 {
                let (answered, failed, url) = (&answered, &failed, &url);
                scope.spawn(move || {
                    for i in 0.. {
                        let body = json!({"class": "block", "kind": "app.decision", "payload": {"t": t, "i": i}});
                        match http_json("POST", url, Some(token), Some(body)) {
                            Ok((200 | 201, v)) if v["seq"].is_u64() => {
                                answered.lock().unwrap_or_else(|p| p.into_inner()).push((t, i));
                            }
                            // The kill: connection refused or reset from now on.
                            _ => {
                                failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                return;
                            }
                        }
                    }
                });
            }
            // Kill while all eight are mid-burst, once enough groups went through the log.
            wait_for(PATIENCE, "600 appends answered", || {
                (answered.lock().unwrap_or_else(|p| p.into_inner()).len() >= 600).then_some(())
            })?;
            agent.kill9();
            Ok(())
        })?;
        ensure!(
            failed.load(std::sync::atomic::Ordering::Relaxed) == 8,
            "every producer should have stopped at the kill"
        );
        let answered = answered.into_inner().unwrap_or_else(|p| p.into_inner());
        agent.start()?;
        agg.restart()?;
        let records = wait_for(PATIENCE * 2, "every answered record committed", || {
            let r = agg.records("acme", "web", "prod", "burst").ok()?;
            let stored: BTreeSet<(u64, u64)> = r
                .iter()
                .filter(|x| x["kind"] == "app.decision")
                .filter_map(|x| Some((x["payload"]["t"].as_u64()?, x["payload"]["i"].as_u64()?)))
                .collect();
            answered.iter().all(|k| stored.contains(k)).then_some(r)
        })
        .with_context(|| format!("agent log:\n{}", agent.log()))?;
        let decisions: Vec<(u64, u64)> = records
            .iter()
            .filter(|r| r["kind"] == "app.decision")
            .filter_map(|x| Some((x["payload"]["t"].as_u64()?, x["payload"]["i"].as_u64()?)))
            .collect();
        let unique: BTreeSet<_> = decisions.iter().collect();
        ensure!(unique.len() == decisions.len(), "a record was stored twice");
        // An append in flight at the kill may or may not have been kept, but nothing else appears.
        ensure!(
            decisions.len() <= answered.len() + 8,
            "{} records stored for {} answered appends and 8 in flight",
            decisions.len(),
            answered.len()
        );
        let (_, gaps) = agg.get("/v1/orgs/acme/projects/web/envs/prod/agents/burst/gaps")?;
        ensure!(
            gaps["gaps"].as_array().is_some_and(|g| g.is_empty()),
            "no gaps expected: {gaps}"
        );
        Ok(())
    };
    if let Err(e) = run() {
        panic!("{e:#}");
    }
}

on_each_backend!(an_agent_only_ever_sees_its_own_tenants_bundles_and_records);
fn an_agent_only_ever_sees_its_own_tenants_bundles_and_records(
    db: Option<&str>,
) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let agg = Aggregator::start(&tmp.path().join("agg"), db)?;
    let mut a = Agent::enroll(
        &agg,
        &tmp.path().join("a"),
        "org-a",
        "web",
        "prod",
        "same-id",
    )?;
    let mut b = Agent::enroll(
        &agg,
        &tmp.path().join("b"),
        "org-b",
        "web",
        "prod",
        "same-id",
    )?;
    a.start()?;
    b.start()?;
    for agent in [&a, &b] {
        agent.wait_connected("agent connected")?;
    }
    let (status, body) = agg.publish("org-b", "web", "prod", &[("b.yaml", POLICY_V2)])?;
    ensure!(status == 201, "publish org-b: {status} {body}");
    let b_digest = body["digest"].as_str().context("digest")?.to_owned();
    b.wait_active_epoch(1, "org-b agent active")?;
    // "org-a never gets org-b's bundle" is anchored on org-a's own bundle: both agents were polling when
    // org-b published, so a leak would have reached the org-a agent before org-a's publish and shown as its
    // active bundle (org-b's epoch 1 would make org-a's epoch 1 look stale) or as a refusal.
    let (status, body) = agg.publish("org-a", "web", "prod", &[("a.yaml", POLICY_V1)])?;
    ensure!(status == 201, "publish org-a: {status} {body}");
    let a_digest = body["digest"].as_str().context("digest")?.to_owned();
    ensure!(a_digest != b_digest, "the two tenants' bundles must differ");
    a.wait_active_epoch(1, "org-a agent active on its own bundle")?;
    let a_status = a.status()?;
    ensure!(
        a_status["active_bundle"]["digest"] == a_digest.as_str()
            && a_status["received_bundle"]["digest"] == a_digest.as_str()
            && a_status["last_refusal"].is_null(),
        "org-a agent must only ever see org-a's bundle: {a_status}"
    );
    a.append("block", "app.decision", json!({"secret": "org-a"}))?;
    wait_for(PATIENCE, "org-a record", || {
        agg.records("org-a", "web", "prod", "same-id")
            .ok()
            .filter(|r| r.iter().any(|x| x["payload"]["secret"] == "org-a"))
    })?;
    let b_records = agg.records("org-b", "web", "prod", "same-id")?;
    ensure!(
        !b_records.iter().any(|x| x["payload"]["secret"] == "org-a"),
        "org-a record leaked into org-b"
    );
    let a_list = agg.agents("org-a")?;
    ensure!(
        a_list.len() == 1 && a_list[0]["org"] == "org-a",
        "org-a inventory: {a_list:?}"
    );
    Ok(())
}

/// The number after `field=` on the last log line that contains `what`.
fn logged_ms(log: &str, what: &str, field: &str) -> Option<u64> {
    let key = format!("{field}=");
    log.lines()
        .rev()
        .filter(|l| l.contains(what))
        .find_map(|l| {
            let rest = &l[l.find(&key)? + key.len()..];
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
}

#[test]
fn a_stopping_aggregator_announces_a_redial_window_sized_by_its_fleet_and_agents_redial_within_it()
-> anyhow::Result<()> {
    // The spread is a transport matter, the same on either store; SQLite only.
    let tmp = tempfile::tempdir()?;
    let any: std::net::SocketAddr = "127.0.0.1:0".parse()?;
    // One handshake a second asked of the fleet: three agents must spread their redials over 3 s.
    let mut agg = Aggregator::start_with(
        &tmp.path().join("agg"),
        None,
        any,
        any,
        &["--reconnect-rate", "1"],
    )?;
    let mut agents = Vec::new();
    for i in 0..3 {
        let id = format!("edge-{i}");
        let mut a = Agent::enroll(&agg, &tmp.path().join(&id), "acme", "web", "prod", &id)?;
        a.start()?;
        agents.push(a);
    }
    let all_connected = |agents: &[Agent]| {
        agents
            .iter()
            .all(|a| a.status().is_ok_and(|s| s["connected"] == true))
            .then_some(())
    };
    wait_for(PATIENCE, "three agents connected", || {
        all_connected(&agents)
    })?;
    // The aggregator's own view, so the window is sized by three open connections.
    wait_for(PATIENCE, "aggregator sees three agents", || {
        let (_, metrics) = agg.get("/metrics").ok()?;
        metrics
            .as_str()?
            .contains("\ngait_aggregator_connections_open 3\n")
            .then_some(())
    })?;

    let before: Vec<u64> = agents
        .iter()
        .map(Agent::reconnects)
        .collect::<anyhow::Result<_>>()?;
    agg.restart()?;
    let agg_log = agg.log();
    ensure!(
        logged_ms(
            &agg_log,
            "announcing their redial window",
            "reconnect_spread_ms"
        ) == Some(3000)
            && agg_log.contains("open=3"),
        "the stopping aggregator must announce 3 connections / 1 per second = 3000 ms:\n{agg_log}"
    );
    // Back means: the agent saw the old connection end (its reconnect counter moved) and is connected again; a
    // bare `connected` could still be the old connection's flag if the agent has not noticed the close yet.
    wait_for(PATIENCE, "all agents back", || {
        agents
            .iter()
            .zip(&before)
            .all(|(a, before)| {
                a.status().is_ok_and(|s| {
                    s["connected"] == true && s["reconnects"].as_u64().is_some_and(|n| n > *before)
                })
            })
            .then_some(())
    })
    .with_context(|| agents.iter().map(Agent::log).collect::<Vec<_>>().join("\n"))?;
    for a in &agents {
        let log = a.log();
        ensure!(
            logged_ms(&log, "announced a redial window", "window_ms") == Some(3000),
            "agent {} must have read the 3000 ms window from the close reason:\n{log}",
            a.id
        );
        // The first redial after the announcement waits a part of the window, not the backoff. It is the next
        // "reconnecting" line, however many lines other tasks logged in between.
        let after = &log[log.find("announced a redial window").unwrap_or(0)..];
        let delay = after
            .lines()
            .find(|l| l.contains("reconnecting to the aggregator"))
            .and_then(|l| logged_ms(l, "reconnecting to the aggregator", "delay_ms"))
            .with_context(|| format!("agent {} logged no redial delay:\n{log}", a.id))?;
        ensure!(
            delay <= 3000,
            "agent {} waited {delay} ms, outside the window",
            a.id
        );
    }
    Ok(())
}
