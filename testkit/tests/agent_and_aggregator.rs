//! The real agent daemon against the real aggregator, both in process: hello, a bundle published through the
//! HTTP API and activated by the agent, records shipped into the aggregator's store, and an aggregator
//! restart on the same data directory that the agent rides out without losing or repeating a record.
#![allow(clippy::disallowed_methods)] // tests spawn freely and read the clock

use anyhow::{Context, Result, ensure};
use gait_testkit::{
    AgentOptions, AggregatorOptions, Publish, agent_key, init_logs, spawn_agent, spawn_aggregator,
    tenant, wait_for,
};
use serde_json::json;

const POLICY_YAML: &str = "default_verdict: block\nrules:\n  - name: allow-read\n    effect: allow\n    match:\n      tool_names: [fs.read]\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_agent_activates_a_published_bundle_ships_records_and_rides_out_an_aggregator_restart()
-> Result<()> {
    init_logs();
    let aggregator = spawn_aggregator(AggregatorOptions::default()).await?;
    let tenant = tenant("acme", "payments", "prod")?;
    let key = agent_key(&tenant, "agent-1")?;
    let agent = spawn_agent(&aggregator, &tenant, "agent-1", AgentOptions::default()).await?;

    // Hello: the agent connects and the aggregator records its presence under the certificate's identity.
    let status = agent.wait_status("connected", |s| s.connected).await?;
    assert_eq!(
        (
            status.identity.org.as_str(),
            status.identity.agent_id.as_str()
        ),
        ("acme", "agent-1")
    );
    assert!(status.active_bundle.is_none());
    let row = wait_for("the agent's row in the store", || async {
        aggregator.agent(&key).await
    })
    .await?;
    assert_eq!(row.agent_id.as_str(), "agent-1");

    // Publish through the HTTP API: the agent's long-poll receives it, verifies it with the registry key it
    // trusts, activates it and reports it back.
    let published = aggregator
        .publish(&tenant, &Publish::policy("default.yaml", POLICY_YAML))
        .await?;
    assert_eq!(published.epoch, 1);
    let status = agent
        .wait_status("bundle 1 active", |s| {
            s.active_bundle.as_ref().is_some_and(|b| b.epoch == 1)
        })
        .await?;
    let active = status.active_bundle.context("active bundle")?;
    assert_eq!(active.digest, published.digest);
    let reported = wait_for("the bundle report in the store", || async {
        Ok(aggregator
            .agent(&key)
            .await?
            .and_then(|r| r.active_bundle)
            .filter(|b| b.epoch == 1))
    })
    .await?;
    assert_eq!(reported.digest, published.digest);
    assert_eq!(reported.since_unix_ms, active.since_unix_ms);

    // Records a producer appends arrive in the store, stamped with the bundle in force.
    let mut producer_seqs = Vec::new();
    for n in 1..=3 {
        let (code, body) = agent
            .post_record(&json!({"class": "block", "kind": "app.decision", "payload": {"n": n}}))
            .await?;
        assert_eq!(code, 200, "{body}");
        producer_seqs.push(body["seq"].as_u64().context("seq")?);
    }
    let last = *producer_seqs.last().context("no record")?;
    wait_for("the producer's records in the store", || async {
        let records = aggregator.records(&key).await?;
        Ok(records.iter().any(|r| r.seq == last).then_some(()))
    })
    .await?;
    let records = aggregator.records(&key).await?;
    for (n, seq) in producer_seqs.iter().enumerate() {
        let r = records
            .iter()
            .find(|r| r.seq == *seq)
            .with_context(|| format!("record {seq}"))?;
        assert_eq!(
            (r.class.as_str(), r.kind.as_str()),
            ("block", "app.decision")
        );
        // The producer's payload, plus who appended it (TCP, with the agent's token).
        let payload = serde_json::from_slice::<serde_json::Value>(&r.payload)?;
        assert_eq!(payload["n"], json!(n + 1));
        assert_eq!(payload["appended_by"]["transport"], json!("tcp"));
        assert_eq!(r.bundle_epoch, Some(1));
        assert_eq!(r.bundle_digest.as_deref(), Some(published.digest.as_str()));
    }
    assert!(
        records.iter().any(|r| r.kind == "bundle.applied"),
        "the activation travels as a durable status record too"
    );

    // The aggregator goes away; records appended meanwhile wait in the agent's outbox.
    let stored_before_stop = aggregator.store().count_records(&key).await?;
    let stopped = aggregator.stop().await?;
    agent.wait_status("disconnected", |s| !s.connected).await?;
    for n in 4..=6 {
        let (code, body) = agent
            .post_record(&json!({"class": "allow", "kind": "app.decision", "payload": {"n": n}}))
            .await?;
        assert_eq!(code, 200, "{body}");
    }
    let waiting = agent.status().await?.outbox;
    assert!(waiting.depth >= 3, "{waiting:?}");

    // Same data directory, same ports: the agent reconnects, learns the committed head from Welcome and ships
    // only what is missing.
    let aggregator = stopped.start().await?;
    let status = agent
        .wait_status("reconnected and drained", |s| {
            s.connected && s.outbox.depth == 0
        })
        .await?;
    assert!(status.reconnects >= 1, "{status:#?}");
    let last_seq = status.outbox.last_seq;
    assert_eq!(status.outbox.acked_through, last_seq);
    let records = aggregator.records(&key).await?;
    let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
    assert_eq!(
        seqs,
        (1..=last_seq).collect::<Vec<_>>(),
        "every record exactly once"
    );
    assert_eq!(aggregator.store().count_records(&key).await?, last_seq);
    assert!(aggregator.gaps(&key).await?.is_empty());
    let mut prev = gait_wire::GENESIS_HASH;
    for r in &records {
        ensure!(
            r.prev_hash == prev,
            "record {} does not link to its predecessor",
            r.seq
        );
        prev = r.record_hash;
    }
    let row = aggregator.agent(&key).await?.context("agent row")?;
    assert_eq!(row.committed_seq, last_seq);
    // Nothing was shipped twice: the restarted process (fresh counters) inserted only records it did not
    // hold, and saw no record again.
    let metric = |name: &'static str| aggregator.metric(name);
    let inserted = metric("gait_aggregator_records_inserted_total").await?;
    assert!(
        inserted >= 3.0 && inserted <= (last_seq - stored_before_stop) as f64,
        "{inserted} inserted after the restart; {stored_before_stop} stored before, {last_seq} in all"
    );
    assert_eq!(
        metric("gait_aggregator_records_duplicate_total").await?,
        0.0
    );
    assert_eq!(metric("gait_aggregator_records_conflict_total").await?, 0.0);

    let stopped = agent.stop().await?;
    assert!(stopped.shutdown.clean, "{:?}", stopped.shutdown);
    aggregator.stop().await?;
    Ok(())
}

/// Connections the aggregator refused, at the handshake or right after it.
async fn refusals(
    aggregator: &gait_testkit::RunningAggregator,
) -> Result<f64, gait_testkit::TestkitError> {
    let mut total = 0.0;
    for stage in ["handshake", "revoked"] {
        total += aggregator
            .metric(&format!(
                "gait_aggregator_connections_refused_total{{stage=\"{stage}\"}}"
            ))
            .await?;
    }
    Ok(total)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_agent_is_cut_off_while_the_rest_of_the_tenant_keeps_shipping() -> Result<()> {
    init_logs();
    let aggregator = spawn_aggregator(AggregatorOptions::default()).await?;
    let tenant = tenant("acme", "payments", "prod")?;
    let lost = spawn_agent(&aggregator, &tenant, "lost-laptop", AgentOptions::default()).await?;
    let kept = spawn_agent(&aggregator, &tenant, "ci-runner", AgentOptions::default()).await?;
    lost.wait_status("lost-laptop connected", |s| s.connected)
        .await?;
    kept.wait_status("ci-runner connected", |s| s.connected)
        .await?;
    let lost_key = agent_key(&tenant, "lost-laptop")?;
    let kept_key = agent_key(&tenant, "ci-runner")?;
    let before = refusals(&aggregator).await?;

    aggregator
        .revoke(&lost_key, &lost.config().tls.cert)
        .await?;
    lost.wait_status("revoked agent disconnected", |s| !s.connected)
        .await?;
    let (code, body) = lost
        .post_record(&json!({"class": "block", "kind": "app.decision", "payload": {}}))
        .await?;
    assert_eq!(code, 200, "{body}");
    let seq = body["seq"].as_u64().context("seq")?;

    // "It never gets back in" is anchored on attempts the aggregator saw and refused, not on elapsed time.
    wait_for("two refused reconnection attempts", || async {
        Ok((refusals(&aggregator).await? >= before + 2.0).then_some(()))
    })
    .await?;
    assert!(!lost.status().await?.connected);
    let stored = aggregator.records(&lost_key).await?;
    assert!(
        stored.iter().all(|r| r.seq != seq),
        "a record of a revoked agent reached the store"
    );

    // The other agent of the tenant is untouched.
    let (code, body) = kept
        .post_record(&json!({"class": "allow", "kind": "app.decision", "payload": {}}))
        .await?;
    assert_eq!(code, 200, "{body}");
    let kept_seq = body["seq"].as_u64().context("seq")?;
    wait_for("ci-runner's record in the store", || async {
        let records = aggregator.records(&kept_key).await?;
        Ok(records.iter().any(|r| r.seq == kept_seq).then_some(()))
    })
    .await?;
    assert!(kept.status().await?.connected);

    lost.stop().await?;
    kept.stop().await?;
    aggregator.stop().await?;
    Ok(())
}
