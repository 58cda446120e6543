//! The agent's health and readiness as a supervisor or a load balancer sees them: `/readyz` is 503 with its
//! reasons until a verified bundle is in force, 200 while the agent can decide (offline included, under
//! `on_stale: keep`), and 503 again once it is stale under `on_stale: fail_closed`; `/healthz` stays `ok`.
#![allow(clippy::disallowed_methods)] // tests spawn freely and read the clock

use anyhow::{Result, ensure};
use gait_testkit::{
    AgentOptions, AggregatorOptions, Publish, RunningAgent, TestkitError, init_logs, spawn_agent,
    spawn_aggregator, tenant, wait_for,
};
use serde_json::Value;

const POLICY_YAML: &str = "default_verdict: block\nrules:\n  - name: allow-read\n    effect: allow\n    match:\n      tool_names: [fs.read]\n";

async fn readyz(agent: &RunningAgent) -> Result<(u16, Value), TestkitError> {
    let response = agent
        .http()
        .get(format!("http://{}/readyz", agent.local_api()))
        .send()
        .await
        .map_err(|e| TestkitError::http("GET /readyz", e))?;
    let status = response.status().as_u16();
    let body = response
        .json()
        .await
        .map_err(|e| TestkitError::http("GET /readyz", e))?;
    Ok((status, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_what_the_agent_can_decide() -> Result<()> {
    init_logs();
    let aggregator = spawn_aggregator(AggregatorOptions::default()).await?;
    let tenant = tenant("acme", "payments", "prod")?;
    let agent = spawn_agent(&aggregator, &tenant, "agent-1", AgentOptions::default()).await?;
    agent.wait_status("connected", |s| s.connected).await?;

    // Connected but no bundle: alive, not ready, and it says why.
    let (status, body) = readyz(&agent).await?;
    ensure!(status == 503 && body["ready"] == false, "{status} {body}");
    ensure!(
        body["not_ready"][0]
            .as_str()
            .is_some_and(|why| why.contains("no verified policy bundle")),
        "{body}"
    );
    ensure!(agent.get_text("/healthz").await? == "ok\n");

    // A bundle that fails closed one second after the last contact.
    aggregator
        .publish(
            &tenant,
            &Publish::policy("default.yaml", POLICY_YAML).staleness(1, "fail_closed"),
        )
        .await?;
    agent
        .wait_status("bundle active", |s| s.active_bundle.is_some())
        .await?;
    let (status, body) = readyz(&agent).await?;
    ensure!(status == 200 && body["ready"] == true, "{status} {body}");

    // The aggregator goes away: once stale, a fail_closed agent blocks everything, so it is not ready.
    let _stopped = aggregator.stop().await?;
    agent.wait_status("stale", |s| s.stale).await?;
    let (status, body) = wait_for("readyz to turn 503", || async {
        let (status, body) = readyz(&agent).await?;
        Ok((status == 503).then_some((status, body)))
    })
    .await?;
    ensure!(
        body["stale"] == true
            && body["not_ready"].as_array().is_some_and(|r| r
                .iter()
                .any(|w| w.as_str().is_some_and(|w| w.contains("fail_closed")))),
        "{status} {body}"
    );
    ensure!(
        agent.get_text("/healthz").await? == "ok\n",
        "storage is fine"
    );
    Ok(())
}
