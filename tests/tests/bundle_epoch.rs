//! End to end: `gait-aggregator bundle export --epoch N` writes an older published bundle (e.g. to carry a
//! rollback to a site); an agent activates it when it is newer than what it enforces and refuses it
//! (anti-rollback) when it enforces a newer one.
#![allow(clippy::disallowed_methods)]

use std::path::Path;
use std::process::Output;

use anyhow::{Context as _, ensure};
use gait_e2e::{Agent, Aggregator, POLICY_V1, POLICY_V2, hermetic, output_text as text};
use serde_json::Value;

fn export(agg: &Aggregator, epoch: Option<u64>, out: &Path) -> anyhow::Result<Output> {
    let mut cmd = agg.operator_command(&[
        "bundle",
        "export",
        "--org",
        "acme",
        "--project",
        "web",
        "--env",
        "prod",
        "--json",
    ]);
    cmd.arg("--out").arg(out);
    if let Some(epoch) = epoch {
        cmd.arg("--epoch").arg(epoch.to_string());
    }
    Ok(cmd.output()?)
}

fn import(agent: &Agent, file: &Path) -> anyhow::Result<Output> {
    Ok(hermetic("gait-agent")
        .current_dir(&agent.dir)
        .args(["bundle", "import", "--config"])
        .arg(agent.dir.join("agent.yaml"))
        .arg(file)
        .output()?)
}

#[test]
fn an_older_epoch_exports_and_is_refused_by_an_agent_enforcing_a_newer_one() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let agg = Aggregator::start(&tmp.path().join("agg"), None)?;
    for policy in [POLICY_V1, POLICY_V2] {
        let (status, answer) = agg.publish("acme", "web", "prod", &[("policy.yaml", policy)])?;
        ensure!(status == 200 || status == 201, "publish: {status} {answer}");
    }
    let (old, new) = (
        tmp.path().join("epoch1.json"),
        tmp.path().join("latest.json"),
    );
    let out = export(&agg, Some(1), &old)?;
    ensure!(out.status.success(), "export --epoch 1: {}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).context("--json")?;
    ensure!(report["epoch"] == 1, "{report}");
    let out = export(&agg, None, &new)?;
    ensure!(out.status.success(), "export: {}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).context("--json")?;
    ensure!(report["epoch"] == 2, "{report}");
    let missing = tmp.path().join("epoch9.json");
    let out = export(&agg, Some(9), &missing)?;
    ensure!(
        out.status.code() == Some(1)
            && String::from_utf8_lossy(&out.stderr).contains("no bundle with epoch 9"),
        "{}",
        text(&out)
    );
    ensure!(!missing.exists());

    // An agent with nothing active takes epoch 1; one enforcing epoch 2 refuses it (anti-rollback).
    let fresh = Agent::enroll(&agg, &tmp.path().join("fresh"), "acme", "web", "prod", "a1")?;
    let out = import(&fresh, &old)?;
    ensure!(out.status.success(), "import epoch 1: {}", text(&out));
    let ahead = Agent::enroll(&agg, &tmp.path().join("ahead"), "acme", "web", "prod", "a2")?;
    let out = import(&ahead, &new)?;
    ensure!(out.status.success(), "import epoch 2: {}", text(&out));
    let out = import(&ahead, &old)?;
    ensure!(out.status.code() == Some(65), "{}", text(&out));
    ensure!(
        String::from_utf8_lossy(&out.stderr).contains("bundle_epoch_stale"),
        "{}",
        text(&out)
    );
    Ok(())
}
