//! `gait-agent bundle import FILE` (sites with no network path): the real binary against the real daemon
//! (started in process, its aggregator unreachable) and against a stopped agent's database. A bundle carried in
//! on a file activates and the next decision uses it; an older or equal epoch, a tampered file and a bundle for
//! another tenancy are refused with exit code 65 and the active bundle stays.
#![allow(clippy::disallowed_methods)] // tests spawn freely and read the clock

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use gait_canon::sign::SigningKey;
use gait_testkit::RunningAgent;
use serde_json::{Value, json};

const TRUST_DOMAIN: &str = "test.gait";
const ORG: &str = "acme";
const PROJECT: &str = "payments";
const ENV: &str = "prod";
const AGENT_ID: &str = "island-1";
const GRACE: Duration = Duration::from_secs(30);

/// Blocks everything but `tool.read`.
const STRICT: &str = "default_verdict: block\nrules:\n  - name: allow-read\n    effect: allow\n    match:\n      tool_names: [tool.read]\n";
/// Allows everything but `tool.delete`.
const LENIENT: &str = "default_verdict: allow\nrules:\n  - name: block-delete\n    effect: block\n    match:\n      tool_names: [tool.delete]\n";

struct Site {
    tmp: tempfile::TempDir,
    registry: SigningKey,
    config_file: PathBuf,
    config: gait_agent::config::Config,
}

impl Site {
    /// An enrolled agent whose aggregator is unreachable (nothing listens on the address it dials).
    fn new() -> Result<Site> {
        let tmp = tempfile::tempdir()?;
        let pki = gait_testkit::Pki::create(&tmp.path().join("pki"), TRUST_DOMAIN)?;
        let tenant = gait_testkit::tenant(ORG, PROJECT, ENV)?;
        let certs = pki.issue_agent(&tmp.path().join("tls"), &tenant, AGENT_ID)?;
        let registry = SigningKey::generate();
        let (private, public) = (
            tmp.path().join("registry.key"),
            tmp.path().join("registry.pub"),
        );
        gait_canon::sign::write_key_pair(&private, &public, &registry)?;
        let unreachable = "127.0.0.1:9".parse()?;
        let config = gait_testkit::agent_config(unreachable, &certs, &public, tmp.path());
        // JSON is YAML: the binary reads the same configuration the in-process daemon runs with.
        let config_file = tmp.path().join("agent.yaml");
        std::fs::write(&config_file, serde_json::to_vec_pretty(&config)?)?;
        Ok(Site {
            tmp,
            registry,
            config_file,
            config,
        })
    }

    /// A signed bundle for `org` at `epoch` holding `policy`, written to a file named after it.
    fn bundle_file(&self, org: &str, epoch: u64, policy: &str) -> Result<PathBuf> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let bytes = gait_bundle::BundleBuilder::new(
            gait_bundle::Scope::from_parts(org, PROJECT, ENV)?,
            epoch,
            now + 3600,
        )
        .add_policy("default.yaml", policy.as_bytes().to_vec())
        .sign(&self.registry)?;
        let path = self.tmp.path().join(format!("bundle-{org}-{epoch}.json"));
        std::fs::write(&path, bytes)?;
        Ok(path)
    }

    /// Runs `gait-agent bundle import --config … FILE --json`.
    async fn import(&self, file: &Path) -> Result<Output> {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_gait-agent"))
            .args(["bundle", "import", "--config"])
            .arg(&self.config_file)
            .arg(file)
            .arg("--json")
            .output()
            .await
            .context("run gait-agent bundle import")?;
        Ok(output)
    }

    async fn start(&self) -> Result<RunningAgent> {
        Ok(RunningAgent::start(self.config.clone(), GRACE).await?)
    }
}

/// The JSON line the command printed, checked for exit code `code`.
fn answer(output: &Output, code: i32) -> Result<Value> {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.code() == Some(code),
        "exit {:?}, expected {code}; stdout: {stdout}; stderr: {stderr}",
        output.status.code()
    );
    serde_json::from_str(stdout.trim()).with_context(|| format!("stdout is not JSON: {stdout}"))
}

fn intent(tool: &str) -> Value {
    json!({
        "schema_id": "gait.gate.intent_request",
        "schema_version": "1.0.0",
        "created_at": "2026-02-18T00:00:00Z",
        "producer_version": "test",
        "tool_name": tool,
        "args": { "path": "/tmp/x" },
        "targets": [{ "kind": "path", "value": "/tmp/x", "operation": "write" }],
        "context": { "identity": "agent.island", "workspace": "/repo", "risk_class": "low" }
    })
}

/// (verdict, bundle epoch) of a decision on `tool.write`.
async fn decide_write(agent: &RunningAgent) -> Result<(String, u64)> {
    let (status, answer) = agent.evaluate("", &intent("tool.write")).await?;
    ensure!(status == 200, "evaluate answered {status}: {answer}");
    Ok((
        answer["verdict"].as_str().unwrap_or("").to_owned(),
        answer["bundle"]["epoch"].as_u64().unwrap_or(0),
    ))
}

fn active_epoch(agent: &RunningAgent) -> Option<u64> {
    agent.state().active_bundle().map(|a| a.epoch())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_file_activates_in_the_running_agent_and_bad_files_are_refused() -> Result<()> {
    gait_testkit::init_logs();
    let site = Site::new()?;
    let agent = site.start().await?;
    ensure!(
        active_epoch(&agent).is_none(),
        "a fresh agent has no bundle"
    );

    // Epoch 1 (strict) through the running daemon: the next decision uses it.
    let first = answer(&site.import(&site.bundle_file(ORG, 1, STRICT)?).await?, 0)?;
    ensure!(first["via"] == "daemon" && first["epoch"] == 1, "{first}");
    ensure!(first["previous_epoch"].is_null(), "{first}");
    ensure!(decide_write(&agent).await? == ("block".to_owned(), 1));

    // Epoch 2 (lenient) replaces it.
    let second = answer(&site.import(&site.bundle_file(ORG, 2, LENIENT)?).await?, 0)?;
    ensure!(
        second["epoch"] == 2 && second["previous_epoch"] == 1,
        "{second}"
    );
    ensure!(decide_write(&agent).await? == ("allow".to_owned(), 2));

    // The same epoch again, and an older one: refused naming both epochs.
    let same = site
        .import(&site.tmp.path().join("bundle-acme-2.json"))
        .await?;
    let refused = answer(&same, 65)?;
    let message = refused["error"].as_str().unwrap_or("");
    ensure!(
        message.contains("bundle epoch 2 is not newer than the active epoch 2")
            && message.contains("bundle-acme-2.json"),
        "{refused}"
    );
    let older = answer(
        &site
            .import(&site.tmp.path().join("bundle-acme-1.json"))
            .await?,
        65,
    )?;
    ensure!(
        older["error"]
            .as_str()
            .is_some_and(|m| m.contains("bundle epoch 1 is not newer than the active epoch 2")),
        "{older}"
    );

    // A tampered file (epoch raised after signing) and a bundle for another org.
    let mut doc: Value =
        serde_json::from_slice(&std::fs::read(site.bundle_file(ORG, 3, STRICT)?)?)?;
    doc["manifest"]["epoch"] = json!(30);
    let tampered = site.tmp.path().join("tampered.json");
    std::fs::write(&tampered, serde_json::to_vec(&doc)?)?;
    let forged = answer(&site.import(&tampered).await?, 65)?;
    ensure!(
        forged["error"]
            .as_str()
            .is_some_and(|m| m.contains("bundle_signature_invalid") && m.contains("tampered.json")),
        "{forged}"
    );
    let stranger = answer(
        &site.import(&site.bundle_file("globex", 4, STRICT)?).await?,
        65,
    )?;
    ensure!(
        stranger["error"]
            .as_str()
            .is_some_and(|m| m.contains("bundle_scope_mismatch")),
        "{stranger}"
    );

    // Nothing refused changed the bundle in force.
    ensure!(active_epoch(&agent) == Some(2));
    ensure!(decide_write(&agent).await? == ("allow".to_owned(), 2));

    // A file that is not there: 66, naming it.
    let missing = answer(&site.import(&site.tmp.path().join("nope.json")).await?, 66)?;
    ensure!(
        missing["error"]
            .as_str()
            .is_some_and(|m| m.contains("nope.json")),
        "{missing}"
    );
    agent.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_file_activates_in_a_stopped_agent_database_and_survives_restart() -> Result<()> {
    gait_testkit::init_logs();
    let site = Site::new()?;

    // No daemon: the command opens the database itself.
    let first = answer(&site.import(&site.bundle_file(ORG, 5, STRICT)?).await?, 0)?;
    ensure!(first["via"] == "database" && first["epoch"] == 5, "{first}");
    let older = answer(&site.import(&site.bundle_file(ORG, 4, LENIENT)?).await?, 65)?;
    ensure!(
        older["error"]
            .as_str()
            .is_some_and(|m| m.contains("bundle epoch 4 is not newer than the active epoch 5")),
        "{older}"
    );

    // A bundle for another org and a tampered one are refused here too.
    let stranger = answer(
        &site
            .import(&site.bundle_file("globex", 6, LENIENT)?)
            .await?,
        65,
    )?;
    ensure!(
        stranger["error"]
            .as_str()
            .is_some_and(|m| m.contains("bundle_scope_mismatch")),
        "{stranger}"
    );
    let mut doc: Value =
        serde_json::from_slice(&std::fs::read(site.bundle_file(ORG, 7, LENIENT)?)?)?;
    doc["manifest"]["epoch"] = json!(70);
    let tampered = site.tmp.path().join("tampered.json");
    std::fs::write(&tampered, serde_json::to_vec(&doc)?)?;
    let forged = answer(&site.import(&tampered).await?, 65)?;
    ensure!(
        forged["error"]
            .as_str()
            .is_some_and(|m| m.contains("bundle_signature_invalid")),
        "{forged}"
    );

    // The daemon starts with it, re-verified, and decides from it.
    let agent = site.start().await?;
    ensure!(
        active_epoch(&agent) == Some(5),
        "restored {:?}",
        active_epoch(&agent)
    );
    ensure!(decide_write(&agent).await? == ("block".to_owned(), 5));
    // The activation is in the outbox for the aggregator, with where it came from.
    let status = agent.status().await?;
    ensure!(status.outbox.depth >= 1, "no bundle.applied record queued");
    agent.stop().await?;
    Ok(())
}
