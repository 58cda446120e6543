//! End to end (issue 13 item 3), two real `gait-aggregator` replicas on one PostgreSQL database sharing their
//! keys: exactly one leads the rollout controller, and only it drives the rollout (every controller event of
//! the timeline names it); when it is killed (-9), the other takes the lease over and finishes the rollout, and
//! no step is published twice. Runs only with `GAIT_TEST_DATABASE_URL` (as `scripts/test.sh` sets it).
#![allow(clippy::disallowed_methods)]

use anyhow::{Context as _, ensure};
use gait_e2e::{Agent, Aggregator, PATIENCE, POLICY_V1, POLICY_V2, wait_for};
use serde_json::json;

const LEADER: &str = "gait_aggregator_rollout_controller_leader";

/// The controller actors of the rollout's timeline, in order.
fn controller_events(agg: &Aggregator, id: &str) -> anyhow::Result<Vec<(String, String, u64)>> {
    let health = agg.call("GET", &format!("/v1/orgs/acme/rollouts/{id}/health"), None)?;
    Ok(health["timeline"]
        .as_array()
        .context("timeline")?
        .iter()
        .filter(|e| {
            e["actor"]
                .as_str()
                .is_some_and(|a| a.starts_with("controller:"))
        })
        .map(|e| {
            (
                e["actor"].as_str().unwrap_or_default().to_owned(),
                e["kind"].as_str().unwrap_or_default().to_owned(),
                e["step"].as_u64().unwrap_or_default() * 100
                    + e["attempt"].as_u64().unwrap_or_default(),
            )
        })
        .collect())
}

#[test]
fn one_replica_drives_a_rollout_and_the_other_takes_over_when_it_dies() -> anyhow::Result<()> {
    let Some((_rt, db)) = crate::support::fresh_postgres()? else {
        eprintln!(
            "GAIT_TEST_DATABASE_URL is not set: the two-replica rollout test needs PostgreSQL; skipped"
        );
        return Ok(());
    };
    let tmp = tempfile::tempdir()?;
    let shared = tmp.path().join("agg");
    let first = Aggregator::start(&shared, Some(db.url()))?;
    let second = Aggregator::start(&shared, Some(db.url()))?;
    let mut replicas = [first, second];
    let leader = wait_for(PATIENCE, "one replica leads the rollout controller", || {
        let flags: Vec<u64> = replicas
            .iter()
            .map(|r| r.metric(LEADER).unwrap_or(0))
            .collect();
        match flags.as_slice() {
            [1, 0] => Some(0),
            [0, 1] => Some(1),
            _ => None,
        }
    })?;
    let follower = 1 - leader;

    // Agents talk to the follower, which survives; the leader is the one killed later.
    let baseline = replicas[leader].push_policy("acme", POLICY_V2, "")?;
    let candidate = replicas[leader].push_policy("acme", POLICY_V1, "")?;
    let mut agents = Vec::new();
    for id in ["r1", "r2"] {
        let mut a = Agent::enroll(
            &replicas[follower],
            &tmp.path().join(id),
            "acme",
            "web",
            "prod",
            id,
        )?;
        a.start()?;
        agents.push(a);
    }
    replicas[follower].call(
        "PUT",
        "/v1/orgs/acme/projects/web/envs/prod/pin",
        Some(json!({"digest": baseline})),
    )?;
    for a in &agents {
        a.wait_active_epoch(1, "baseline pinned")?;
    }
    // Created through the follower; the leader's controller publishes the first step.
    let created = replicas[follower].call(
        "POST",
        "/v1/orgs/acme/rollouts",
        Some(json!({"candidate": candidate, "plan": {
            "targets": [{"project": "web", "env": "prod"}],
            "steps": [{"stage": "dry_run", "percent": 100, "bake_seconds": 3600},
                      {"stage": "enforce", "percent": 100}]
        }})),
    )?;
    let id = created["id"].as_str().context("id")?.to_owned();
    for a in &agents {
        a.wait_active_epoch(
            2,
            "dry_run bundle from the leader, seen through the follower",
        )?;
    }
    let before = controller_events(&replicas[follower], &id)?;
    ensure!(before.len() == 1 && before[0].1 == "step", "{before:?}");
    let leader_actor = before[0].0.clone();
    // The leader dies; the follower takes the lease over and finishes the rollout after a promote.
    replicas[leader].kill9();
    wait_for(PATIENCE, "the follower leads", || {
        (replicas[follower].metric(LEADER).ok()? == 1).then_some(())
    })?;
    replicas[follower].call(
        "POST",
        &format!("/v1/orgs/acme/rollouts/{id}/promote"),
        None,
    )?;
    for a in &agents {
        a.wait_active_epoch(3, "candidate pinned by the new leader")?;
    }
    wait_for(PATIENCE, "rollout completed", || {
        replicas[follower]
            .call("GET", &format!("/v1/orgs/acme/rollouts/{id}"), None)
            .ok()
            .filter(|r| r["state"] == "completed")
    })?;
    let events = controller_events(&replicas[follower], &id)?;
    let after: Vec<_> = events[1..].to_vec();
    ensure!(!after.is_empty(), "{events:?}");
    ensure!(
        after.iter().all(|(actor, _, _)| *actor != leader_actor),
        "after the kill only the new leader drives: {events:?}"
    );
    let mut steps: Vec<u64> = events
        .iter()
        .filter(|(_, kind, _)| kind == "step")
        .map(|(_, _, at)| *at)
        .collect();
    let published = steps.len();
    steps.dedup();
    ensure!(
        steps.len() == published,
        "a step published twice: {events:?}"
    );
    Ok(())
}
