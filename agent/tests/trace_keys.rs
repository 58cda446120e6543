//! Trace keys known centrally, agent and aggregator in process (`gait-testkit`): the daemon announces its
//! trace key at start and the aggregator registers it bound to the agent's certificate; an announcement whose
//! key id is not its key's is committed as a record like any other and never registered.
#![allow(clippy::disallowed_methods)] // tests spawn freely and read the clock

use anyhow::{Context, Result, ensure};
use gait_canon::sign::SigningKey;
use gait_testkit::{
    AgentOptions, AggregatorOptions, agent_key, init_logs, spawn_agent, spawn_aggregator, tenant,
    wait_for,
};
use gait_wire::RecordClass;
use gait_wire::trace_key::{TRACE_KEY_KIND, TRACE_KEY_SCHEMA, TraceKeyPayload};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_announcement_commits_as_a_record_and_registers_nothing() -> Result<()> {
    init_logs();
    let aggregator = spawn_aggregator(AggregatorOptions::default()).await?;
    let tenant = tenant("acme", "pay", "prod")?;
    let agent = spawn_agent(&aggregator, &tenant, "edge-1", AgentOptions::default()).await?;
    let status = agent.wait_status("connection", |s| s.connected).await?;
    let own_key = status.trace_key_id.clone();
    ensure!(own_key.len() == 64, "{status:?}");

    // The agent's own announcement registers its key, bound to its certificate.
    let store = aggregator.store().clone();
    let registered = wait_for("the agent's key registered", || async {
        let keys = store.trace_keys(&tenant, None, 100).await?;
        Ok((!keys.is_empty()).then_some(keys))
    })
    .await?;
    ensure!(
        registered.len() == 1 && registered[0].key_id == own_key,
        "{registered:?}"
    );
    let key = agent_key(&tenant, "edge-1")?;
    let row = aggregator.agent(&key).await?.context("agent row")?;
    ensure!(
        registered[0].cert_serial == row.cert_serial,
        "{registered:?} vs {row:?}"
    );
    ensure!(registered[0].replaces.is_none());

    // An announcement that claims another key's id for its public key.
    let carried = SigningKey::from_seed(&[1; 32]).public_key();
    let claimed = SigningKey::from_seed(&[2; 32]).public_key().key_id();
    let forged = TraceKeyPayload {
        schema_id: TRACE_KEY_SCHEMA.to_owned(),
        key_id: claimed.clone(),
        public_key: carried.to_gait_public_key(),
        replaces: Some(own_key.clone()),
        since_unix_ms: 1,
    };
    let outcome = agent
        .state()
        .append(
            RecordClass::Status,
            TRACE_KEY_KIND.to_owned(),
            serde_json::to_vec(&forged)?,
        )
        .await?;
    let gait_agent::outbox::AppendOutcome::Appended { seq } = outcome else {
        anyhow::bail!("status records are never shed: {outcome:?}");
    };
    wait_for("the forged record committed", || async {
        let records = aggregator.records(&key).await?;
        Ok(records.iter().any(|r| r.seq == seq).then_some(()))
    })
    .await?;
    let keys = store.trace_keys(&tenant, None, 100).await?;
    ensure!(
        keys.len() == 1 && keys[0].key_id == own_key,
        "only the agent's real key is registered: {keys:?}"
    );
    ensure!(
        !keys
            .iter()
            .any(|k| k.key_id == claimed || k.key_id == carried.key_id())
    );
    agent.stop().await?;
    Ok(())
}
