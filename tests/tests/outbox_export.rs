//! End to end: a site with no network path carries its outbox out on files. The agent decides with no
//! aggregator, `gait-agent outbox export` seals what waits (through the running daemon, then from the database
//! with the agent stopped), `gait-aggregator ingest-file` commits each file exactly once (the same file twice
//! and an overlapping later one double nothing), and when the agent finally reaches the aggregator its outbox
//! drains without sending anything again. Files from a revoked or foreign-CA agent, a tampered file and an
//! empty outbox are refused clearly.
#![allow(clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::process::Output;

use anyhow::{Context as _, ensure};
use gait_e2e::{Agent, Aggregator, POLICY_V1, hermetic, http_json, output_text as text, wait_for};
use serde_json::Value;

const READ_REPORT: &str = include_str!("../../examples/intents/read-report.json");
const PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// `n` decisions through the agent's local API.
fn decide(agent: &Agent, n: usize) -> anyhow::Result<()> {
    let token = agent.api_token()?;
    let body: Value = serde_json::from_str(READ_REPORT)?;
    for _ in 0..n {
        let (status, answer) = http_json(
            "POST",
            &format!("http://{}/v1/gate/evaluate", agent.api),
            Some(&token),
            Some(body.clone()),
        )?;
        ensure!(status == 200, "decision: {status} {answer}");
    }
    Ok(())
}

fn export(agent: &Agent, out: &Path) -> anyhow::Result<Output> {
    Ok(hermetic("gait-agent")
        .current_dir(&agent.dir)
        .args(["outbox", "export", "--json", "--config"])
        .arg(agent.dir.join("agent.yaml"))
        .arg("--out")
        .arg(out)
        .output()?)
}

fn exported(agent: &Agent, out: &Path) -> anyhow::Result<Value> {
    let o = export(agent, out)?;
    ensure!(o.status.success(), "outbox export: {}", text(&o));
    serde_json::from_slice(&o.stdout).with_context(|| format!("export --json: {}", text(&o)))
}

fn ingest(agg: &Aggregator, file: &Path) -> anyhow::Result<Output> {
    Ok(hermetic("gait-aggregator")
        .args(["ingest-file", "--json", "--data-dir"])
        .arg(&agg.data_dir)
        .arg(file)
        .output()?)
}

fn ingested(agg: &Aggregator, file: &Path) -> anyhow::Result<Value> {
    let o = ingest(agg, file)?;
    ensure!(o.status.success(), "ingest-file: {}", text(&o));
    serde_json::from_slice(&o.stdout).with_context(|| format!("ingest --json: {}", text(&o)))
}

/// An agent of `agg`'s CA whose configured aggregator does not exist, with the published bundle imported.
fn site_agent(agg: &Aggregator, dir: &Path, id: &str, bundle: &Path) -> anyhow::Result<Agent> {
    let agent = Agent::enroll(agg, dir, "acme", "web", "prod", id)?;
    point_at(&agent, &agg.quic.to_string(), "127.0.0.1:9")?;
    let out = hermetic("gait-agent")
        .current_dir(&agent.dir)
        .args(["bundle", "import", "--config"])
        .arg(agent.dir.join("agent.yaml"))
        .arg(bundle)
        .output()?;
    ensure!(out.status.success(), "bundle import: {}", text(&out));
    Ok(agent)
}

fn point_at(agent: &Agent, from: &str, to: &str) -> anyhow::Result<()> {
    let config = agent.dir.join("agent.yaml");
    let yaml = std::fs::read_to_string(&config)?.replace(from, to);
    std::fs::write(&config, yaml)?;
    Ok(())
}

fn bundle_file(agg: &Aggregator, dir: &Path) -> anyhow::Result<PathBuf> {
    let (status, answer) = agg.publish("acme", "web", "prod", &[("policy.yaml", POLICY_V1)])?;
    ensure!(status == 200 || status == 201, "publish: {status} {answer}");
    std::fs::create_dir_all(dir)?;
    let path = dir.join("bundle.json");
    let out = hermetic("gait-aggregator")
        .args([
            "bundle",
            "export",
            "--org",
            "acme",
            "--project",
            "web",
            "--env",
            "prod",
        ])
        .arg("--server")
        .arg(agg.url(""))
        .arg("--token-file")
        .arg(agg.data_dir.join("admin.token"))
        .arg("--out")
        .arg(&path)
        .output()?;
    ensure!(out.status.success(), "bundle export: {}", text(&out));
    Ok(path)
}

fn refused(agg: &Aggregator, file: &Path, what: &str) -> anyhow::Result<Value> {
    let o = ingest(agg, file)?;
    ensure!(
        o.status.code() == Some(65),
        "expected exit 65: {}",
        text(&o)
    );
    let v: Value = serde_json::from_slice(&o.stdout).with_context(|| text(&o))?;
    ensure!(
        v["refused"] == what,
        "expected refused={what}: {}",
        text(&o)
    );
    Ok(v)
}

#[test]
fn an_exported_outbox_lands_exactly_once_and_the_agent_drains_without_resending()
-> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut agg = Aggregator::start(&tmp.path().join("agg"), None)?;
    let bundle = bundle_file(&agg, &tmp.path().join("carried"))?;
    let mut agent = site_agent(&agg, &tmp.path().join("site"), "a1", &bundle)?;
    agent.start()?;
    agent.wait_active_epoch(1, "the imported bundle is active")?;

    // First file, through the running daemon.
    decide(&agent, 5)?;
    let first = tmp.path().join("carried/outbox-1.json");
    let e1 = exported(&agent, &first)?;
    ensure!(e1["via"] == "daemon" && e1["first_seq"] == 1, "{e1}");
    let n1 = e1["last_seq"].as_u64().context("last_seq")?;
    ensure!(n1 >= 6, "bundle.applied and 5 decisions: {e1}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&first)?.permissions().mode() & 0o777;
        ensure!(mode == 0o600, "export file mode {mode:o}");
    }
    ensure!(
        agent.status()?["outbox"]["depth"].as_u64() >= Some(n1),
        "exporting removed records"
    );

    // Second file, after more decisions, from the database with the agent stopped.
    decide(&agent, 4)?;
    agent.stop();
    let second = tmp.path().join("carried/outbox-2.json");
    let e2 = exported(&agent, &second)?;
    ensure!(e2["via"] == "database" && e2["first_seq"] == 1, "{e2}");
    let n2 = e2["last_seq"].as_u64().context("last_seq")?;
    ensure!(n2 >= n1 + 4, "{e2}");

    // Ingest: first, first again (nothing new), second (only the new ones).
    let r = ingested(&agg, &first)?;
    ensure!(
        r["committed"] == n1 && r["duplicates"] == 0 && r["org"] == "acme" && r["agent_id"] == "a1",
        "{r}"
    );
    ensure!(r["new_agent"] == true, "the agent never connected: {r}");
    let r = ingested(&agg, &first)?;
    ensure!(r["committed"] == 0 && r["duplicates"] == n1, "{r}");
    let r = ingested(&agg, &second)?;
    ensure!(
        r["committed"] == n2 - n1 && r["duplicates"] == n1 && r["committed_seq"] == n2,
        "{r}"
    );
    ensure!(
        r["gaps"].as_array().is_some_and(Vec::is_empty)
            && r["conflicts"].as_array().is_some_and(Vec::is_empty),
        "{r}"
    );
    let records = agg.all_records("acme", "web", "prod", "a1")?;
    ensure!(records.len() as u64 == n2, "{} records held", records.len());
    // The agent never connected, yet its trace key is known centrally: the announcement it wrote at its first
    // start came in the file and registered under the file's verified certificate.
    let (status, keys) = agg.get("/v1/orgs/acme/projects/web/envs/prod/agents/a1/trace-keys")?;
    ensure!(status == 200, "trace keys: {status} {keys}");
    ensure!(
        keys["trace_keys"].as_array().is_some_and(
            |k| k.len() == 1 && k[0]["key_id"].as_str().is_some_and(|id| id.len() == 64)
        ),
        "{keys}"
    );
    let ingests = agg
        .audit_actions()?
        .into_iter()
        .filter(|(action, _)| action == "records.ingest_file")
        .count();
    ensure!(
        ingests == 3,
        "audit entries for the three ingests: {ingests}"
    );

    // The agent reaches the aggregator: its outbox drains without sending anything twice.
    point_at(&agent, "127.0.0.1:9", &agg.quic.to_string())?;
    agent.start()?;
    agent.wait_connected("the agent reaches its aggregator")?;
    wait_for(PATIENCE, "the outbox drained", || {
        (agent.status().ok()?["outbox"]["depth"] == 0).then_some(())
    })
    .with_context(|| agent.log())?;
    let last = agent.status()?["outbox"]["last_seq"]
        .as_u64()
        .context("last_seq")?;
    let held = agg.all_records("acme", "web", "prod", "a1")?;
    ensure!(
        held.len() as u64 == last,
        "{} records held, agent's last seq {last}",
        held.len()
    );
    ensure!(
        held[..n2 as usize] == records[..],
        "the ingested records changed"
    );
    ensure!(
        agg.metric("gait_aggregator_records_duplicate_total")? == 0,
        "the agent re-sent records the file carried"
    );
    ensure!(agg.metric("gait_aggregator_record_gaps_total")? == 0);
    let (status, gaps) = agg.get("/v1/orgs/acme/projects/web/envs/prod/agents/a1/gaps")?;
    ensure!(status == 200, "gaps: {status} {gaps}");
    ensure!(
        gaps["gaps"].as_array().is_none_or(Vec::is_empty),
        "gaps: {gaps}"
    );

    // Nothing waits any more: an export is refused with exit 66 and no file.
    let empty = tmp.path().join("carried/empty.json");
    let o = export(&agent, &empty)?;
    ensure!(o.status.code() == Some(66), "{}", text(&o));
    ensure!(
        String::from_utf8_lossy(&o.stderr).contains("no record waiting"),
        "{}",
        text(&o)
    );
    ensure!(!empty.exists());
    agent.stop();
    agg.stop();
    Ok(())
}

#[test]
fn tampered_revoked_and_foreign_files_are_refused_naming_what_failed() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let agg = Aggregator::start(&tmp.path().join("agg"), None)?;
    let bundle = bundle_file(&agg, &tmp.path().join("carried"))?;

    // An agent of this CA, exported from its database (never started).
    let agent = site_agent(&agg, &tmp.path().join("site"), "a2", &bundle)?;
    let good = tmp.path().join("carried/good.json");
    let e = exported(&agent, &good)?;
    ensure!(e["via"] == "database" && e["count"] == 1, "{e}");

    // One byte changed anywhere: refused, nothing committed.
    let bytes = std::fs::read(&good)?;
    let tampered = tmp.path().join("carried/tampered.json");
    let mut t = bytes.clone();
    let at = String::from_utf8_lossy(&bytes)
        .find("\"payload\":\"")
        .context("payload")?
        + 12;
    t[at] = if t[at] == b'A' { b'B' } else { b'A' };
    std::fs::write(&tampered, &t)?;
    let v = refused(&agg, &tampered, "record")?;
    ensure!(
        v["error"].as_str().is_some_and(|e| e.contains("hash")),
        "{v}"
    );
    let mut t = bytes.clone();
    let sig = String::from_utf8_lossy(&bytes)
        .find("\"value\":\"")
        .context("signature")?
        + 20;
    t[sig] = if t[sig] == b'A' { b'B' } else { b'A' };
    std::fs::write(&tampered, &t)?;
    refused(&agg, &tampered, "signature")?;
    ensure!(
        agg.records("acme", "web", "prod", "a2").is_err()
            || agg.records("acme", "web", "prod", "a2")?.is_empty()
    );

    // A certificate of another deployment's CA, same tenancy.
    let mut other = Aggregator::start(&tmp.path().join("other"), None)?;
    let other_bundle = bundle_file(&other, &tmp.path().join("other-carried"))?;
    let foreign = site_agent(&other, &tmp.path().join("foreign"), "a2", &other_bundle)?;
    other.stop();
    let foreign_file = tmp.path().join("carried/foreign.json");
    exported(&foreign, &foreign_file)?;
    let v = refused(&agg, &foreign_file, "certificate")?;
    ensure!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("trusted CA")),
        "{v}"
    );

    // The certificate is revoked after the export: refused.
    let out = hermetic("gait-aggregator")
        .args(["pki", "revoke", "--cert"])
        .arg(agent.dir.join("agent.pem"))
        .arg("--data-dir")
        .arg(&agg.data_dir)
        .output()?;
    ensure!(out.status.success(), "revoke: {}", text(&out));
    let v = refused(&agg, &good, "revoked")?;
    ensure!(
        v["error"].as_str().is_some_and(|e| e.contains("revoked")),
        "{v}"
    );

    // Not an export at all, and a missing file.
    let junk = tmp.path().join("carried/junk.json");
    std::fs::write(&junk, b"{\"schema_id\":\"something.else\"}")?;
    refused(&agg, &junk, "format")?;
    let o = ingest(&agg, &tmp.path().join("carried/missing.json"))?;
    ensure!(o.status.code() == Some(66), "{}", text(&o));
    Ok(())
}
