//! End to end (issue 16 item 3), two real `gait-aggregator` replicas on one PostgreSQL database sharing their
//! keys: a publish through replica A reaches an agent connected to replica B through a database notification
//! (`gait_store::notify`), and so does a revocation made through A. Replica B's periodic fallback re-reads
//! only every 30 s, so a change that arrives within a few seconds came by the notification. Runs only with
//! `GAIT_TEST_DATABASE_URL` (as `scripts/test.sh` sets it).
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use anyhow::ensure;
use gait_e2e::{Agent, Aggregator, PATIENCE, POLICY_V1, POLICY_V2, hermetic, wait_for};

/// Well inside the 30 s fallback poll (30 housekeeping ticks of 1 s), with room for a loaded machine.
const BY_NOTIFICATION: Duration = Duration::from_secs(10);

/// A fresh PostgreSQL database and the runtime its handle lives on, or `None` (said on stderr) when
/// `GAIT_TEST_DATABASE_URL` is unset.
fn fresh_postgres()
-> anyhow::Result<Option<(tokio::runtime::Runtime, gait_store::testing::TestStore)>> {
    let found = crate::support::fresh_postgres()?;
    if found.is_none() {
        eprintln!(
            "GAIT_TEST_DATABASE_URL is not set: the two-replica test needs PostgreSQL; skipped"
        );
    }
    Ok(found)
}

#[test]
fn a_publish_and_a_revocation_through_one_replica_reach_agents_on_the_other_by_notification()
-> anyhow::Result<()> {
    let Some((_rt, db)) = fresh_postgres()? else {
        return Ok(());
    };
    let tmp = tempfile::tempdir()?;
    let shared = tmp.path().join("agg");
    let a = Aggregator::start(&shared, Some(db.url()))?;
    let b = Aggregator::start(&shared, Some(db.url()))?;

    // Two agents, both on replica B (their agent.yaml names B's address).
    let mut agents = Vec::new();
    for id in ["edge-1", "edge-2"] {
        let mut agent = Agent::enroll(&b, &tmp.path().join(id), "acme", "web", "prod", id)?;
        agent.start()?;
        agent.wait_connected("agent connected to replica B")?;
        agents.push(agent);
    }
    // Both parked in a long-poll on B before the publish, so only a wake-up can deliver it.
    wait_for(PATIENCE, "both long-polls parked on replica B", || {
        (b.metric("gait_aggregator_long_polls_waiting").ok()? >= 2).then_some(())
    })?;

    let mut delays = Vec::new();
    for (epoch, policy) in [(1u64, POLICY_V1), (2, POLICY_V2)] {
        let started = Instant::now();
        let (status, body) = a.publish("acme", "web", "prod", &[("p.yaml", policy)])?;
        ensure!(status == 201, "publish through A: {status} {body}");
        for agent in &agents {
            agent.wait_active_epoch(epoch, "bundle from replica A active on an agent of B")?;
        }
        let took = started.elapsed();
        ensure!(
            took < BY_NOTIFICATION,
            "epoch {epoch} published through A took {took:?} to reach the agents on B: not by notification\n{}",
            b.log()
        );
        delays.push(took);
    }
    eprintln!("publish through replica A -> active on both agents of replica B: {delays:?}");

    // A revocation through A (the operator command on the shared database) closes the agent's connection on B.
    let started = Instant::now();
    let out = hermetic("gait-aggregator")
        .args(["pki", "revoke", "--reason", "replica drill"])
        .arg("--data-dir")
        .arg(&shared)
        .arg("--database-url")
        .arg(db.url())
        .arg("--cert")
        .arg(agents[0].dir.join("agent.pem"))
        .output()?;
    ensure!(
        out.status.success(),
        "revoke: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(
        PATIENCE,
        "revoked agent disconnected from replica B",
        || (agents[0].status().ok()?["connected"] == false).then_some(()),
    )?;
    let took = started.elapsed();
    ensure!(
        took < BY_NOTIFICATION,
        "the revocation took {took:?} to close the agent's connection on B: not by notification"
    );
    eprintln!("revocation -> connection on replica B closed: {took:?}");
    ensure!(
        agents[1].status()?["connected"] == true,
        "the other agent was disconnected too"
    );
    let _ = (a, b);
    Ok(())
}

/// Killing the replica an agent is connected to moves the agent to the other (its `aggregator.replicas`), and
/// every record it wrote before, during and after the move is committed exactly once.
#[test]
fn killing_a_replica_moves_its_agents_to_the_other_with_no_record_lost_or_doubled()
-> anyhow::Result<()> {
    let Some((_rt, db)) = fresh_postgres()? else {
        return Ok(());
    };
    let tmp = tempfile::tempdir()?;
    let shared = tmp.path().join("agg");
    let mut replicas = [
        Aggregator::start(&shared, Some(db.url()))?,
        Aggregator::start(&shared, Some(db.url()))?,
    ];
    let mut agent = Agent::enroll(
        &replicas[0],
        &tmp.path().join("edge"),
        "acme",
        "web",
        "prod",
        "edge",
    )?;
    // Both replicas in the agent's configuration.
    let yaml_path = agent.dir.join("agent.yaml");
    let yaml = std::fs::read_to_string(&yaml_path)?;
    let with_replicas = yaml.replacen(
        &format!("address: \"{}\"\n", replicas[0].quic),
        &format!(
            "address: \"{}\"\n  replicas: [\"{}\"]\n",
            replicas[0].quic, replicas[1].quic
        ),
        1,
    );
    ensure!(
        with_replicas != yaml,
        "agent.yaml has no address line:\n{yaml}"
    );
    std::fs::write(&yaml_path, with_replicas)?;
    agent.start()?;
    agent.wait_connected("agent connected to one replica")?;
    let on = agent.status()?["aggregator"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let dying = replicas
        .iter()
        .position(|r| r.quic.to_string() == on)
        .ok_or_else(|| anyhow::anyhow!("status names no replica: {on}"))?;
    let surviving = 1 - dying;
    for n in 0..20 {
        agent.append("block", "app.decision", serde_json::json!({ "n": n }))?;
    }
    let (org, project, env, id) = ("acme", "web", "prod", "edge");
    wait_for(PATIENCE, "the first 20 records committed", || {
        (replicas[surviving]
            .records(org, project, env, id)
            .ok()?
            .len()
            >= 20)
            .then_some(())
    })?;

    replicas[dying].kill9();
    // Records written while the agent finds out and moves.
    for n in 20..40 {
        agent.append("block", "app.decision", serde_json::json!({ "n": n }))?;
    }
    let moved_to = replicas[surviving].quic.to_string();
    wait_for(
        Duration::from_secs(120),
        "the agent moved to the surviving replica",
        || {
            let status = agent.status().ok()?;
            (status["connected"] == true && status["aggregator"] == moved_to.as_str()).then_some(())
        },
    )?;
    for n in 40..60 {
        agent.append("block", "app.decision", serde_json::json!({ "n": n }))?;
    }
    let records = wait_for(PATIENCE, "all 60 records committed", || {
        let r = replicas[surviving].records(org, project, env, id).ok()?;
        (r.len() >= 60).then_some(r)
    })?;
    let mut ns: Vec<u64> = records
        .iter()
        .filter_map(|r| r["payload"]["n"].as_u64())
        .collect();
    ns.sort_unstable();
    ensure!(
        ns == (0..60).collect::<Vec<_>>(),
        "records lost or doubled across the failover: {ns:?}"
    );
    let (status, gaps) = replicas[surviving].get(&format!(
        "/v1/orgs/{org}/projects/{project}/envs/{env}/agents/{id}/gaps"
    ))?;
    ensure!(
        status == 200 && gaps["gaps"].as_array().is_some_and(Vec::is_empty),
        "gaps after the failover: {gaps}"
    );
    Ok(())
}
