//! End to end: a site with no network path gets its policy on a file. The operator exports the environment's
//! bundle with `gait-aggregator bundle export` (through the API, byte for byte what agents receive), and an agent
//! that cannot reach any aggregator activates it with `gait-agent bundle import`, then enforces it.
#![allow(clippy::disallowed_methods)]

use std::process::Output;

use anyhow::{Context as _, ensure};
use gait_e2e::{Agent, Aggregator, POLICY_V1, hermetic, http_json, output_text as text};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

fn export(agg: &Aggregator, env: &str, out: &std::path::Path) -> anyhow::Result<Output> {
    Ok(agg
        .operator_command(&[
            "bundle",
            "export",
            "--org",
            "acme",
            "--project",
            "web",
            "--env",
            env,
        ])
        .arg("--out")
        .arg(out)
        .arg("--json")
        .output()?)
}

#[test]
fn an_exported_bundle_activates_at_an_agent_with_no_network_path() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let agg = Aggregator::start(&tmp.path().join("agg"), None)?;
    let (status, answer) = agg.publish("acme", "web", "prod", &[("policy.yaml", POLICY_V1)])?;
    ensure!(status == 200 || status == 201, "publish: {status} {answer}");

    // Export: the file is the bundle agents receive, and the report names its epoch and digest.
    let file = tmp.path().join("carried/bundle.json");
    std::fs::create_dir_all(file.parent().context("parent")?)?;
    let out = export(&agg, "prod", &file)?;
    ensure!(out.status.success(), "export: {}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).context("export --json")?;
    let bytes = std::fs::read(&file)?;
    ensure!(report["epoch"] == 1, "{report}");
    ensure!(
        report["sha256"] == hex::encode(Sha256::digest(&bytes)),
        "{report}"
    );
    let (status, served) = http_json(
        "GET",
        &agg.url("/v1/orgs/acme/projects/web/envs/prod/bundles/latest/raw"),
        Some(&agg.token),
        None,
    )?;
    ensure!(status == 200);
    ensure!(
        serde_json::from_slice::<Value>(&bytes)? == served,
        "the exported file differs from what the API serves"
    );

    // An environment with nothing published: refused with the API's reason, no file written.
    let none = tmp.path().join("carried/none.json");
    let out = export(&agg, "staging", &none)?;
    ensure!(out.status.code() == Some(1), "{}", text(&out));
    ensure!(
        String::from_utf8_lossy(&out.stderr).contains("no bundle has been published"),
        "{}",
        text(&out)
    );
    ensure!(!none.exists());

    // The site: an agent of acme/web/prod whose configured aggregator does not exist.
    let mut agent = Agent::enroll(&agg, &tmp.path().join("site"), "acme", "web", "prod", "a1")?;
    let config = agent.dir.join("agent.yaml");
    let yaml = std::fs::read_to_string(&config)?.replace(&agg.quic.to_string(), "127.0.0.1:9");
    std::fs::write(&config, yaml)?;
    let out = hermetic("gait-agent")
        .current_dir(&agent.dir)
        .args(["bundle", "import", "--json", "--config"])
        .arg(&config)
        .arg(&file)
        .output()?;
    ensure!(out.status.success(), "import: {}", text(&out));
    let imported: Value = serde_json::from_slice(&out.stdout).context("import --json")?;
    ensure!(imported["epoch"] == 1, "{imported}");

    agent.start()?;
    agent.wait_active_epoch(1, "the imported bundle is active without any aggregator")?;
    let status = agent.status()?;
    ensure!(
        status["connected"] == false,
        "the site agent reached an aggregator: {status}"
    );
    Ok(())
}
