//! The testkit's HTTPS option: the real aggregator serves its admin API over HTTPS with the PKI's server
//! certificate, the harness's own calls (publish, metrics) verify it against the deployment CA, an agent
//! still receives what was published, and a restart keeps HTTPS.
#![allow(clippy::disallowed_methods)] // tests spawn freely and read the clock

use anyhow::{Result, ensure};
use gait_testkit::{
    AgentOptions, AggregatorOptions, Publish, init_logs, spawn_agent, spawn_aggregator, tenant,
};

const POLICY_YAML: &str = "default_verdict: block\nrules:\n  - name: allow-read\n    effect: allow\n    match:\n      tool_names: [fs.read]\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_aggregator_is_published_to_through_the_deployment_ca() -> Result<()> {
    init_logs();
    let aggregator = spawn_aggregator(AggregatorOptions {
        https: true,
        ..AggregatorOptions::default()
    })
    .await?;
    ensure!(aggregator.api_url().starts_with("https://127.0.0.1:"));
    let tenant = tenant("acme", "payments", "prod")?;
    let agent = spawn_agent(&aggregator, &tenant, "agent-1", AgentOptions::default()).await?;
    let published = aggregator
        .publish(&tenant, &Publish::policy("base.yaml", POLICY_YAML))
        .await?;
    assert_eq!(published.epoch, 1);
    agent
        .wait_status("bundle 1 active", |s| {
            s.active_bundle.as_ref().is_some_and(|b| b.epoch == 1)
        })
        .await?;
    ensure!(aggregator.metrics().await?.contains("gait_aggregator"));

    let aggregator = aggregator.restart().await?;
    ensure!(aggregator.api_url().starts_with("https://"));
    let published = aggregator
        .publish(&tenant, &Publish::policy("base.yaml", POLICY_YAML))
        .await?;
    assert_eq!(published.epoch, 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_refuses_plain_http_off_loopback_even_when_built_without_the_config_file()
-> Result<()> {
    let refused = spawn_aggregator(AggregatorOptions {
        http_listen: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
        https: false,
        ..AggregatorOptions::default()
    })
    .await;
    let message = match refused {
        Ok(_) => anyhow::bail!("plain HTTP on 0.0.0.0 was served"),
        Err(e) => e.to_string(),
    };
    ensure!(
        message.contains("http.listen") && message.contains("loopback"),
        "{message}"
    );
    Ok(())
}
