//! Dev-only harness for the Gait control plane: the real aggregator and the real agent daemon started in
//! process on `127.0.0.1:0`, PKI fixtures minted by the aggregator's own `pki` module, and bounded waits on
//! observable conditions.
//!
//! Used only as a dev-dependency (by the agent's and the aggregator's integration tests, and the e2e crate for the
//! SeaweedFS fixture, [`Seaweed`]). A test typically
//! reads:
//!
//! ```no_run
//! # async fn demo() -> Result<(), gait_testkit::TestkitError> {
//! use gait_testkit::{AgentOptions, AggregatorOptions, Publish, spawn_agent, spawn_aggregator};
//! let aggregator = spawn_aggregator(AggregatorOptions::default()).await?;
//! let tenant = gait_testkit::tenant("acme", "payments", "prod")?;
//! let agent = spawn_agent(&aggregator, &tenant, "agent-1", AgentOptions::default()).await?;
//! agent.wait_status("connected", |s| s.connected).await?;
//! aggregator.publish(&tenant, &Publish::policy("default.yaml", "default_verdict: allow\n")).await?;
//! agent.stop().await?;
//! aggregator.stop().await?;
//! # Ok(()) }
//! ```
//!
//! Nothing here sleeps for a fixed time: every wait polls a condition and gives up after [`PATIENCE`], which
//! is generous (60 s) because the suite runs on loaded two-core machines.

mod agent;
mod aggregator;
mod error;
mod pki;
mod seaweed;
mod wait;

pub use agent::{AgentOptions, RunningAgent, StoppedAgent, agent_config, spawn_agent};
pub use aggregator::{
    AggregatorOptions, Publish, Published, RunningAggregator, StoppedAggregator, spawn_aggregator,
};
pub use error::TestkitError;
pub use pki::{AgentCerts, Pki};
pub use seaweed::{Seaweed, weed_binary};
pub use wait::{PATIENCE, POLL_INTERVAL, wait_for, wait_until};

/// The tenancy types the helpers take, re-exported so tests need no direct `gait-identity` dependency.
pub use gait_identity::{AgentKey, Tenant};

/// What the store holds per record, re-exported for the same reason.
pub use gait_store::StoredRecord;

/// The value of one series in Prometheus text: the metric name with its labels exactly as rendered (e.g.
/// `gait_aggregator_connections_refused_total{stage="handshake"}`); `None` while the series does not exist.
pub fn metric_series(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// A tenant from its three parts, validated under the shared identifier rule.
pub fn tenant(org: &str, project: &str, env: &str) -> Result<Tenant, TestkitError> {
    Tenant::from_parts(org, project, env).map_err(|e| TestkitError::Identity(e.to_string()))
}

/// The store key of `agent_id` in `tenant`, validated under the shared identifier rule.
pub fn agent_key(tenant: &Tenant, agent_id: &str) -> Result<AgentKey, TestkitError> {
    let id = agent_id
        .parse()
        .map_err(|e: gait_identity::IdError| TestkitError::Identity(e.to_string()))?;
    Ok(AgentKey::new(tenant.clone(), id))
}

/// Installs a test log subscriber once (level from `RUST_LOG`, default `warn`); later calls do nothing.
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}
