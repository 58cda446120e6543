//! End to end: an agent refuses forged, tampered and replayed bundles — even when they come from its own
//! aggregator's database — keeps enforcing the bundle it has, and reports each refusal to the aggregator.
//!
//! The forged bundles are written straight into the aggregator's SQLite database (as an attacker with database
//! access could), so the aggregator serves them exactly like real ones.
#![allow(clippy::disallowed_methods)] // tests spawn freely and read the clock

use anyhow::{Context as _, ensure};
use base64::Engine as _;
use gait_bundle::{BundleBuilder, OnStale, Scope, Staleness};
use gait_e2e::{Agent, Aggregator, PATIENCE, POLICY_V1, POLICY_V2, wait_for};
use gait_store::{Store, Tenant};
use serde_json::Value;

const ORG: &str = "acme";
const PROJECT: &str = "web";
const ENV: &str = "prod";

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Insert `bytes` as the bundle of `epoch` behind the aggregator's back.
fn forge(
    agg: &Aggregator,
    rt: &tokio::runtime::Runtime,
    epoch: u64,
    bytes: &[u8],
) -> anyhow::Result<()> {
    let url = format!(
        "sqlite://{}?mode=rwc",
        agg.data_dir.join("aggregator.db").display()
    );
    rt.block_on(async {
        let store = Store::connect(&url).await?;
        let tenant = Tenant::from_parts(ORG, PROJECT, ENV)?;
        store
            .publish_bundle(
                &tenant,
                epoch,
                &format!("{epoch:064x}"),
                bytes,
                "attacker",
                now_unix() * 1000,
            )
            .await?;
        anyhow::Ok(())
    })
}

fn refusal_code(agent: &Agent) -> Option<String> {
    agent.status().ok()?["last_refusal"]["code"]
        .as_str()
        .map(str::to_owned)
}

#[test]
fn forged_tampered_and_replayed_bundles_are_refused_and_the_active_bundle_stays()
-> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let agg = Aggregator::start(&tmp.path().join("agg"), None)?;
    let mut agent = Agent::enroll(&agg, &tmp.path().join("a"), ORG, PROJECT, ENV, "edge")?;
    agent.start()?;
    let (status, first) = agg.publish(ORG, PROJECT, ENV, &[("base.yaml", POLICY_V1)])?;
    ensure!(status == 201, "publish: {first}");
    agent.wait_active_epoch(1, "epoch 1 active")?;
    let genuine = {
        let (_, raw) = gait_e2e::http_json(
            "GET",
            &agg.url("/v1/orgs/acme/projects/web/envs/prod/bundles/latest/raw"),
            Some(&agg.token),
            None,
        )?;
        serde_json::to_vec(&raw)?
    };

    // 1. A bad signature: the genuine manifest with another signature value.
    let mut doc: Value = serde_json::from_slice(&genuine)?;
    doc["signature"]["sig"] =
        Value::String(base64::engine::general_purpose::STANDARD.encode([7u8; 64]));
    forge(&agg, &rt, 2, &serde_json::to_vec(&doc)?)?;
    wait_for(PATIENCE, "signature refusal", || {
        (refusal_code(&agent).as_deref() == Some("bundle_signature_invalid")).then_some(())
    })
    .with_context(|| agent.log())?;
    ensure!(
        agent.active_epoch() == Some(1),
        "active bundle must stay epoch 1"
    );

    // 2. A tampered policy file in a bundle genuinely signed by the registry key.
    let key = gait_canon::sign::load_private_key_file(&agg.data_dir.join("keys/registry.key"))?;
    let mut b = BundleBuilder::new(Scope::from_parts(ORG, PROJECT, ENV)?, 3, now_unix() + 3600);
    b.staleness(Staleness {
        max_offline_seconds: 3600,
        on_stale: OnStale::Keep,
    })
    .add_policy("base.yaml", POLICY_V2.as_bytes().to_vec());
    let mut doc: Value = serde_json::from_slice(&b.sign(&key)?)?;
    let tampered = POLICY_V2.replace("tool.list", "tool.exec");
    doc["files"]["base.yaml"] =
        Value::String(base64::engine::general_purpose::STANDARD.encode(tampered));
    forge(&agg, &rt, 3, &serde_json::to_vec(&doc)?)?;
    wait_for(PATIENCE, "file digest refusal", || {
        (refusal_code(&agent).as_deref() == Some("bundle_file_digest_mismatch")).then_some(())
    })?;
    ensure!(
        agent.active_epoch() == Some(1),
        "active bundle must stay epoch 1"
    );

    // 3. A replay of the genuine epoch-1 bundle offered as something newer: anti-rollback.
    forge(&agg, &rt, 4, &genuine)?;
    wait_for(PATIENCE, "stale epoch refusal", || {
        (refusal_code(&agent).as_deref() == Some("bundle_epoch_stale")).then_some(())
    })?;
    ensure!(
        agent.active_epoch() == Some(1),
        "active bundle must stay epoch 1"
    );

    // The aggregator learned of the refusals: inventory and the durable status records. The agent reports a
    // refusal to the aggregator after recording it locally, so the inventory catches up asynchronously.
    let mut inventory = Vec::new();
    wait_for(PATIENCE, "inventory shows the stale epoch refusal", || {
        inventory = agg.agents(ORG).ok()?;
        inventory
            .iter()
            .any(|a| a["agent_id"] == "edge" && a["last_refusal"]["code"] == "bundle_epoch_stale")
            .then_some(())
    })
    .with_context(|| format!("inventory: {inventory:?}"))?;
    let records = wait_for(PATIENCE, "refusal records", || {
        let r = agg.records(ORG, PROJECT, ENV, "edge").ok()?;
        (r.iter().filter(|x| x["kind"] == "bundle.refused").count() >= 3).then_some(r)
    })?;
    let codes: Vec<_> = records
        .iter()
        .filter(|x| x["kind"] == "bundle.refused")
        .map(|x| x["payload"]["code"].clone())
        .collect();
    for want in [
        "bundle_signature_invalid",
        "bundle_file_digest_mismatch",
        "bundle_epoch_stale",
    ] {
        ensure!(
            codes.iter().any(|c| c == want),
            "no {want} refusal record in {codes:?}"
        );
    }

    // A genuine publish still goes through afterwards.
    let (status, body) = agg.publish(ORG, PROJECT, ENV, &[("base.yaml", POLICY_V2)])?;
    ensure!(
        status == 201 && body["epoch"] == 5,
        "publish: {status} {body}"
    );
    agent.wait_active_epoch(5, "epoch 5 active")?;
    Ok(())
}
