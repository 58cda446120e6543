//! End to end, real processes: bundle signing-key rotation and revocation (issue 13 item 7).
//!
//! An agent active on a K1 bundle is stopped; the registry rotates to K2 and publishes, then rotates to K3 and
//! publishes. The agent starts trusting only K1 (its configured `registry.pub`) and activates the newest,
//! K3-signed bundle by walking the endorsement chain K1 -> K2 -> K3 it carries. K2 is revoked; a higher-epoch
//! bundle signed with K2 (built here from K2's seed) is refused with `bundle_key_revoked` through
//! `gait-agent bundle import`, with the daemon running and without it, and the agent stays on its epoch. After a
//! restart it still trusts K3 and still refuses K2. On SQLite and, when configured, PostgreSQL. An agent that saw
//! a rotation's introduction bundle keeps updating when the old key is revoked right after.
#![allow(clippy::disallowed_methods)]

use std::path::Path;
use std::process::Output;

use anyhow::{Context as _, ensure};
use gait_bundle::{BundleBuilder, Scope};
use gait_e2e::{Agent, Aggregator, POLICY_V1, POLICY_V2, hermetic, output_text as text};
use serde_json::Value;

/// `gait-aggregator keys <args> --json` against `agg`, parsed.
fn keys(agg: &Aggregator, args: &[&str]) -> anyhow::Result<Value> {
    let out = hermetic("gait-aggregator")
        .arg("keys")
        .args(args)
        .arg("--json")
        .arg("--server")
        .arg(agg.url(""))
        .arg("--token-file")
        .arg(agg.data_dir.join("admin.token"))
        .output()?;
    ensure!(
        out.status.success(),
        "keys {args:?}: {}\naggregator log:\n{}",
        text(&out),
        agg.log()
    );
    serde_json::from_slice(&out.stdout).with_context(|| format!("keys {args:?}: {}", text(&out)))
}

fn import(agent: &Agent, file: &Path) -> anyhow::Result<Output> {
    Ok(hermetic("gait-agent")
        .current_dir(&agent.dir)
        .args(["bundle", "import", "--config"])
        .arg(agent.dir.join("agent.yaml"))
        .arg(file)
        .output()?)
}

fn publish(agg: &Aggregator, policy: &str) -> anyhow::Result<u64> {
    let (status, answer) = agg.publish("acme", "web", "prod", &[("policy.yaml", policy)])?;
    ensure!(
        status == 200 || status == 201,
        "publish: {status} {answer}\naggregator log:\n{}",
        agg.log()
    );
    answer["epoch"]
        .as_u64()
        .context("publish answer has no epoch")
}

/// The key id that signed the newest bundle (`manifest.key_id`, which verification binds to the signature) of acme/web/prod, and its `manifest.trust`.
fn latest_signer(agg: &Aggregator) -> anyhow::Result<(String, Value)> {
    let (status, bundle) = agg.get("/v1/orgs/acme/projects/web/envs/prod/bundles/latest")?;
    ensure!(status == 200, "latest: {status} {bundle}");
    Ok((
        bundle["manifest"]["key_id"]
            .as_str()
            .context("latest bundle has no manifest.key_id")?
            .to_owned(),
        bundle["manifest"]["trust"].clone(),
    ))
}

/// Wait until the agent refuses `file` with `code` and exit 65.
fn refused_with(agent: &Agent, file: &Path, code: &str) -> anyhow::Result<()> {
    let out = import(agent, file)?;
    ensure!(
        out.status.code() == Some(65) && String::from_utf8_lossy(&out.stderr).contains(code),
        "expected {code}: {}",
        text(&out)
    );
    Ok(())
}

/// SQLite and, with `GAIT_TEST_DATABASE_URL` set (as `scripts/test.sh` does), a fresh PostgreSQL database.
#[test]
fn an_agent_walks_two_rotations_in_one_bundle_and_refuses_a_revoked_key() -> anyhow::Result<()> {
    let postgres = crate::support::fresh_postgres()?;
    rotate_and_revoke(None).context("sqlite")?;
    if let Some((_rt, db)) = &postgres {
        rotate_and_revoke(Some(db.url())).context("postgres")?;
    }
    Ok(())
}

fn rotate_and_revoke(database_url: Option<&str>) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let agg = Aggregator::start(&tmp.path().join("agg"), database_url)?;
    ensure!(publish(&agg, POLICY_V1)? == 1);
    let listed = keys(&agg, &["list"])?;
    let k1 = listed["signing_keys"][0]["key_id"]
        .as_str()
        .context("no key listed")?
        .to_owned();
    ensure!(listed["signing_keys"][0]["state"] == "active", "{listed}");
    // The adopted key is the one every agent is provisioned with.
    let registry_pub = std::fs::read_to_string(agg.data_dir.join("keys/registry.pub"))?;
    ensure!(
        gait_canon::sign::PublicKey::from_gait_public_key(&registry_pub)?.key_id() == k1,
        "registry.pub is not the active key"
    );
    ensure!(latest_signer(&agg)?.0 == k1);

    let mut agent = Agent::enroll(&agg, &tmp.path().join("a1"), "acme", "web", "prod", "a1")?;
    agent.start()?;
    agent.wait_active_epoch(1, "the K1 bundle")?;
    agent.stop();

    // Rotate to K2: the introduction bundle (epoch 2) is signed by K1 and endorses K2; the next publish (epoch
    // 3) is signed by K2.
    let rotated = keys(&agg, &["rotate", "--overlap-seconds", "0"])?;
    let k2 = rotated["key"]["key_id"]
        .as_str()
        .context("rotate: key_id")?
        .to_owned();
    ensure!(rotated["key"]["state"] == "next", "{rotated}");
    ensure!(rotated["republished"]["acme/web/prod"] == 2, "{rotated}");
    let (signer, trust) = latest_signer(&agg)?;
    ensure!(
        signer == k1 && trust["keys"][0]["key_id"] == k2.as_str(),
        "{signer} {trust}"
    );
    ensure!(publish(&agg, POLICY_V2)? == 3);
    ensure!(latest_signer(&agg)?.0 == k2, "epoch 3 is not signed by K2");

    // Rotate to K3, publish: epoch 5 is signed by K3 and carries K1 -> K2 -> K3.
    let rotated = keys(&agg, &["rotate"])?;
    let k3 = rotated["key"]["key_id"]
        .as_str()
        .context("rotate: key_id")?
        .to_owned();
    ensure!(rotated["republished"]["acme/web/prod"] == 4, "{rotated}");
    ensure!(publish(&agg, POLICY_V1)? == 5);
    let (signer, trust) = latest_signer(&agg)?;
    ensure!(signer == k3, "epoch 5 signed by {signer}");
    let chain: Vec<&str> = trust["keys"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["key_id"].as_str())
        .collect();
    ensure!(chain == [k2.as_str(), k3.as_str()], "{trust}");
    let states: Vec<(String, String)> = keys(&agg, &["list"])?["signing_keys"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|k| {
            (
                k["key_id"].as_str().unwrap_or("").to_owned(),
                k["state"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    ensure!(
        states
            == [
                (k1.clone(), "retired".to_owned()),
                (k2.clone(), "retired".to_owned()),
                (k3.clone(), "active".to_owned())
            ],
        "{states:?}"
    );

    // The agent, trusting only K1, takes the newest bundle in one step.
    agent.start()?;
    agent.wait_active_epoch(5, "the K3-signed bundle, through the chain")?;
    ensure!(
        !agent.log().contains("bundle refused"),
        "the agent refused a bundle on the way:\n{}",
        agent.log()
    );

    // The active key cannot be revoked; K2 can. The revocation is re-published at once (epoch 6).
    let out = hermetic("gait-aggregator")
        .args(["keys", "revoke", &k3, "--server"])
        .arg(agg.url(""))
        .arg("--token-file")
        .arg(agg.data_dir.join("admin.token"))
        .output()?;
    ensure!(
        out.status.code() == Some(65)
            && String::from_utf8_lossy(&out.stderr).contains("rotate first"),
        "revoking the active key: {}",
        text(&out)
    );
    let revoked = keys(&agg, &["revoke", &k2])?;
    ensure!(revoked["key"]["state"] == "revoked", "{revoked}");
    ensure!(revoked["republished"]["acme/web/prod"] == 6, "{revoked}");
    // The only agent activated a bundle after K2's successor (K3) was introduced: nobody is at risk.
    ensure!(revoked["agents_at_risk"] == 0, "{revoked}");
    ensure!(latest_signer(&agg)?.1["revoked"] == serde_json::json!([k2]));
    agent.wait_active_epoch(6, "the bundle revoking K2")?;

    // A newer bundle signed with K2's seed (as a thief of it would) is refused, and the agent stays on 6.
    let k2_seed = gait_canon::sign::load_private_key_file(
        &agg.data_dir.join(format!("keys/registry/{k2}.key")),
    )?;
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs(),
    )?;
    let forged = BundleBuilder::new(Scope::from_parts("acme", "web", "prod")?, 100, now + 86_400)
        .add_policy("policy.yaml", POLICY_V2.as_bytes().to_vec())
        .sign(&k2_seed)?;
    let forged_file = tmp.path().join("k2.json");
    std::fs::write(&forged_file, &forged)?;
    refused_with(&agent, &forged_file, "bundle_key_revoked")?;
    ensure!(agent.active_epoch() == Some(6));

    // Without the daemon, the file import reads the persisted trust too.
    agent.stop();
    refused_with(&agent, &forged_file, "bundle_key_revoked")?;

    // After a restart: still on 6, still trusting K3 (a new publish is taken), still refusing K2.
    agent.start()?;
    agent.wait_active_epoch(6, "epoch 6 after the restart")?;
    refused_with(&agent, &forged_file, "bundle_key_revoked")?;
    ensure!(publish(&agg, POLICY_V2)? == 7);
    agent.wait_active_epoch(7, "a K3-signed bundle after the restart")?;

    let actions: Vec<String> = agg.audit_actions()?.into_iter().map(|(a, _)| a).collect();
    for (action, n) in [
        ("signing_key.rotate", 2),
        ("signing_key.activate", 2),
        ("signing_key.revoke", 1),
    ] {
        let seen = actions.iter().filter(|a| *a == action).count();
        ensure!(
            seen == n,
            "{action}: {seen} entries, expected {n}: {actions:?}"
        );
    }
    Ok(())
}

/// An agent that activated a rotation's introduction bundle (signed by K1, endorsing K2) keeps updating after K1
/// is revoked right away: it learnt K2 from the introduction. Before, it trusted only K1, the K2-signed bundle
/// revoking K1 was refused (`bundle_key_revoked`, through the chain back to K1) and the agent was cut off.
#[test]
fn revoking_the_old_key_right_after_a_rotation_keeps_an_agent_that_saw_the_introduction()
-> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let agg = Aggregator::start(&tmp.path().join("agg"), None)?;
    ensure!(publish(&agg, POLICY_V1)? == 1);
    let k1 = latest_signer(&agg)?.0;
    let mut agent = Agent::enroll(&agg, &tmp.path().join("a1"), "acme", "web", "prod", "a1")?;
    agent.start()?;
    agent.wait_active_epoch(1, "the K1 bundle")?;

    let rotated = keys(&agg, &["rotate", "--overlap-seconds", "0"])?;
    ensure!(rotated["republished"]["acme/web/prod"] == 2, "{rotated}");
    agent.wait_active_epoch(2, "the introduction bundle, signed by K1")?;

    // K1 is retired (overlap 0), so it may be revoked at once: every environment is re-published by K2.
    let revoked = keys(&agg, &["revoke", &k1])?;
    ensure!(revoked["key"]["state"] == "revoked", "{revoked}");
    agent.wait_active_epoch(3, "the K2-signed bundle revoking K1")?;
    ensure!(publish(&agg, POLICY_V2)? == 4);
    agent.wait_active_epoch(4, "the next K2-signed bundle")?;
    // After a restart the agent still trusts K2 (kept with the activation), not K1.
    agent.stop();
    agent.start()?;
    agent.wait_active_epoch(4, "epoch 4 after the restart")?;
    ensure!(publish(&agg, POLICY_V1)? == 5);
    agent.wait_active_epoch(5, "a K2-signed bundle after the restart")?;
    Ok(())
}
