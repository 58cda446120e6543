//! End to end: a record whose kind breaks the wire limit is refused at the producer (the agent's local API),
//! and a record the aggregator refuses anyway (over its configured `ingest.max_record_payload_bytes`) is
//! quarantined by the agent while the records after it still arrive. Runs on SQLite and, with
//! `GAIT_TEST_DATABASE_URL` set (as `scripts/test.sh` does), on PostgreSQL.
#![allow(clippy::disallowed_methods)] // tests spawn freely and read the clock

use std::process::Output;

use anyhow::{Context as _, ensure};
use gait_e2e::{Agent, Aggregator, PATIENCE, hermetic, http_json, wait_for};
use gait_store::testing::{TestStore, postgres_fresh};
use gait_store::{AgentKey, Store, Tenant};
use serde_json::{Value, json};

const ORG: &str = "acme";
const PROJECT: &str = "web";
const ENV: &str = "prod";
const AGENT: &str = "edge";
/// The aggregator's payload limit in this test: far below the wire's 1 MiB, so the agent accepts what the
/// aggregator refuses.
const AGG_PAYLOAD_LIMIT: usize = 2048;
const TOO_LARGE: &str = "record_payload_too_large";

/// SQLite (embedded default) and, when configured, a fresh PostgreSQL database.
fn backends() -> Vec<(Option<TestStore>, &'static str)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut out: Vec<(Option<TestStore>, &'static str)> = vec![(None, "sqlite")];
    match rt.block_on(postgres_fresh()) {
        Ok(Some(db)) => out.push((Some(db), "postgres")),
        Ok(None) => {}
        Err(e) => panic!("{e}"),
    }
    out
}

fn run(cmd: &mut std::process::Command) -> anyhow::Result<Output> {
    let out = cmd.output().context("run command")?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

/// The records the aggregator stored for the agent, by seq.
fn stored_seqs(agg: &Aggregator) -> Vec<u64> {
    agg.records(ORG, PROJECT, ENV, AGENT)
        .unwrap_or_default()
        .iter()
        .filter_map(|r| r["seq"].as_u64())
        .collect()
}

/// The refusals the aggregator's store recorded for the agent, read from its database.
fn store_refusals(database_url: &str) -> anyhow::Result<Vec<gait_store::RefusedRecord>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let store = Store::connect(database_url).await?;
        let key = AgentKey::new(Tenant::from_parts(ORG, PROJECT, ENV)?, AGENT.parse()?);
        let refusals = store.refusals(&key).await?;
        store.close().await;
        anyhow::Ok(refusals)
    })
}

fn refused_record_is_quarantined_and_the_stream_goes_on(db: Option<&str>) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let config = tmp.path().join("aggregator.yaml");
    std::fs::write(
        &config,
        format!("ingest:\n  max_record_payload_bytes: {AGG_PAYLOAD_LIMIT}\n"),
    )?;
    let any = "127.0.0.1:0".parse()?;
    let config_arg = config.to_string_lossy().into_owned();
    let agg = Aggregator::start_with(
        &tmp.path().join("agg"),
        db,
        any,
        any,
        &["--config", &config_arg],
    )?;
    let mut agent = Agent::enroll(&agg, &tmp.path().join("a"), ORG, PROJECT, ENV, AGENT)?;
    agent.start()?;
    agent
        .wait_connected("agent connected")
        .with_context(|| agent.log())?;

    // 1. A kind over the wire's 64 bytes is refused by the local API, naming `kind`, and nothing is appended.
    let before = agent.status()?["outbox"]["last_seq"].clone();
    let (status, body) = http_json(
        "POST",
        &format!("http://{}/v1/records", agent.api),
        Some(&agent.api_token()?),
        Some(json!({ "class": "block", "kind": "k".repeat(65), "payload": {} })),
    )?;
    ensure!(status == 400, "65-byte kind: {status} {body}");
    ensure!(
        body["error"]["field"] == "kind",
        "error does not name kind: {body}"
    );
    ensure!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("64")),
        "error does not name the limit: {body}"
    );
    ensure!(
        agent.status()?["outbox"]["last_seq"] == before,
        "a refused record was appended"
    );

    // 2. small, one over the aggregator's limit, small, small.
    let append = |payload: Value| -> anyhow::Result<u64> {
        agent
            .append("block", "test.quarantine", payload)?
            .context("a block record is never shed")
    };
    let first = append(json!({ "n": 1 }))?;
    let large = append(json!({ "blob": "x".repeat(2 * AGG_PAYLOAD_LIMIT) }))?;
    let after = [append(json!({ "n": 2 }))?, append(json!({ "n": 3 }))?];

    let mut seen = Vec::new();
    wait_for(
        PATIENCE,
        "the records before and after the large one",
        || {
            seen = stored_seqs(&agg);
            (seen.contains(&first) && after.iter().all(|s| seen.contains(s))).then_some(())
        },
    )
    .with_context(|| format!("stored {seen:?}\n{}\n{}", agent.log(), agg.log()))?;
    ensure!(
        !stored_seqs(&agg).contains(&large),
        "the refused record {large} was stored"
    );
    wait_for(PATIENCE, "status shows one quarantined record", || {
        (agent.status().ok()?["outbox"]["quarantined"] == 1).then_some(())
    })
    .with_context(|| agent.log())?;

    // `gait-agent status --json` says the same. No bundle was published, so the agent cannot decide from a
    // policy: the status says why and exits 75 (not ready), which a probe can rely on.
    let out = hermetic("gait-agent")
        .args(["status", "--json", "--api", &agent.api.to_string()])
        .output()?;
    let cli: Value = serde_json::from_slice(&out.stdout).context("status --json is JSON")?;
    ensure!(cli["outbox"]["quarantined"] == 1, "status --json: {cli}");
    ensure!(
        out.status.code() == Some(75) && cli["ready"] == false,
        "status of an agent without a bundle: exit {:?}, {cli}",
        out.status.code()
    );
    ensure!(
        cli["not_ready"][0]
            .as_str()
            .is_some_and(|why| why.contains("no verified policy bundle")),
        "not_ready: {cli}"
    );

    // The aggregator counted and logged the refusal, and recorded the refused seq instead of a lost one.
    ensure!(
        agg.metric(&format!(
            "gait_aggregator_records_refused_total{{code=\"{TOO_LARGE}\"}}"
        ))? >= 1,
        "refusal not counted"
    );
    let log = agg.log();
    ensure!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains("record refused")
            && l.contains(&format!("seq={large}"))
            && l.contains(AGENT)),
        "no WARN naming the agent and seq {large}:\n{log}"
    );
    let row = agg
        .agents(ORG)?
        .into_iter()
        .find(|a| a["agent_id"] == AGENT)
        .context("agent listed")?;
    ensure!(
        row["gap_count"] == 0,
        "the refused seq was counted as a gap: {row}"
    );
    let url = db.map_or_else(
        || {
            format!(
                "sqlite://{}?mode=rw",
                agg.data_dir.join("aggregator.db").display()
            )
        },
        str::to_owned,
    );
    let refusals = store_refusals(&url)?;
    ensure!(
        refusals.len() == 1 && refusals[0].seq == large && refusals[0].code == TOO_LARGE,
        "store refusals: {refusals:?}"
    );
    ensure!(
        refusals[0].message.contains(&format!("record {large}"))
            && refusals[0].message.contains(&AGG_PAYLOAD_LIMIT.to_string()),
        "refusal message names neither seq nor limit: {:?}",
        refusals[0].message
    );

    // `gait-agent quarantine export --json` (reads the database: the agent is stopped) lists the record.
    agent.stop();
    let out = run(hermetic("gait-agent")
        .args(["quarantine", "export", "--json", "--config"])
        .arg(agent.dir.join("agent.yaml")))?;
    let export: Value = serde_json::from_slice(&out.stdout).context("export is JSON")?;
    let records = export["records"].as_array().context("records array")?;
    ensure!(records.len() == 1, "export: {export}");
    ensure!(
        records[0]["seq"] == large && records[0]["code"] == TOO_LARGE,
        "export: {export}"
    );
    Ok(())
}

#[test]
fn a_record_the_aggregator_refuses_is_quarantined_and_the_records_after_it_arrive() {
    for (db, name) in backends() {
        let url = db.as_ref().map(|d| d.url().to_owned());
        if let Err(e) = refused_record_is_quarantined_and_the_stream_goes_on(url.as_deref()) {
            panic!("[{name}] {e:#}");
        }
    }
}
