//! What indexing costs the ingest hot path, measured in process on SQLite: the same decision batches committed
//! with `Store::commit_batch` (no index, as before the evidence index) and through `Intake::commit_batch`
//! (payloads read into borrowed structs, entries written in the batch's transaction). Reports process CPU
//! seconds (user+system, load-independent for in-process SQLite) and wall time of each, and the ratio.
//!
//! Ignored by default (a measurement, not a check): run it with
//! `cargo test -p gait-aggregator --test integration evidence_cost:: -- --ignored --nocapture`.
#![allow(clippy::disallowed_methods)] // a measurement: reads the clock

use std::time::Instant;

use anyhow::{Context as _, Result};
use gait_aggregator::fleet::intake::Intake;
use gait_store::testing::sqlite_temp;
use gait_store::{AgentHello, AgentKey, NewRecord, Store, Tenant};
use serde_json::json;

const NOW: i64 = 1_764_000_000_000;
const AGENTS: usize = 20;
const BATCHES: usize = 10;
const BATCH: usize = 500;

fn hash(seq: u64, salt: u8) -> [u8; 32] {
    if seq == 0 {
        return [0; 32];
    }
    let mut h = [salt; 32];
    h[..8].copy_from_slice(&seq.to_be_bytes());
    h
}

/// A decision payload shaped like the agent's (with its signed trace), about 1.3 KB.
fn payload(seq: u64) -> Vec<u8> {
    let hex = |c: char| std::iter::repeat_n(c, 64).collect::<String>();
    json!({
        "schema": "gait.agent.gate_decision", "tool_name": "fs.read", "verdict": "allow",
        "enforced_verdict": "allow", "policy_verdict": "allow", "reason_codes": ["default_allow"],
        "violations": [], "matched_rule": "", "enforcement": "policy", "stale": false,
        "bundle": {"epoch": 3, "digest": hex('d')}, "policy_name": "prod.yaml", "policy_digest": hex('a'),
        "intent_digest": hex('b'), "trace_id": format!("{seq:024x}"), "trace_key_id": "k1",
        "trace": {"schema_id": "gait.gate.trace", "schema_version": "1.0.0", "created_at": "2026-12-05T10:00:00Z",
                  "producer_version": "0.9.0", "trace_id": format!("{seq:024x}"), "tool_name": "fs.read",
                  "args_digest": hex('c'), "intent_digest": hex('b'), "policy_digest": hex('a'),
                  "verdict": "allow", "signature": {"alg": "ed25519", "key_id": "k1", "sig": "x".repeat(88)}},
        "stage": {"stage": "enforce", "candidate": null, "candidate_digest": null, "active_verdict": "allow",
                  "candidate_verdict": null, "would_have_blocked": false},
        "agent_decided_unix_ms": NOW, "intent_created_at": "2026-12-05T10:00:00Z",
    })
    .to_string()
    .into_bytes()
}

fn batches(salt: u8) -> Vec<Vec<NewRecord>> {
    let records: Vec<NewRecord> = (1..=(BATCHES * BATCH) as u64)
        .map(|seq| NewRecord {
            seq,
            prev_hash: hash(seq - 1, salt),
            hash: hash(seq, salt),
            class: "allow".into(),
            kind: "gate.decision".into(),
            created_unix_ms: NOW,
            bundle_epoch: Some(3),
            bundle_digest: Some("d".repeat(64)),
            bundle_since_ms: Some(NOW),
            payload: payload(seq),
        })
        .collect();
    records.chunks(BATCH).map(<[NewRecord]>::to_vec).collect()
}

fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

async fn keys(store: &Store) -> Result<Vec<AgentKey>> {
    let tenant = Tenant::from_parts("bench", "ingest", "prod")?;
    let mut out = Vec::new();
    for i in 0..AGENTS {
        let key = AgentKey::new(tenant.clone(), format!("agent-{i:03}").parse()?);
        let hello = AgentHello {
            cert_serial: "0a1b2c".parse()?,
            cert_not_after_unix_ms: NOW + 86_400_000,
            cert_issuer: String::new(),
            remote_addr: "10.0.0.7:4433".into(),
            agent_version: "0.1.0".into(),
            active_bundle: None,
            received_bundle: None,
            outbox_depth: 0,
            shed_total: 0,
        };
        store.agent_connected(&key, &hello, NOW).await?;
        out.push(key);
    }
    Ok(out)
}

/// Commits every agent's batches in turn; `indexed` goes through the intake. Returns (cpu s, wall s).
async fn run(indexed: bool, work: &[Vec<NewRecord>]) -> Result<(f64, f64)> {
    let db = sqlite_temp().await?;
    let store = db.store();
    let keys = keys(store).await?;
    let intake = Intake::new(store.clone());
    let (cpu0, wall0) = (cpu_seconds().context("cpu")?, Instant::now());
    for batch in work {
        for key in &keys {
            if indexed {
                intake.commit_batch(key, batch, &[], &[], NOW).await?;
            } else {
                store.commit_batch(key, batch, NOW).await?;
            }
        }
    }
    let cpu = cpu_seconds().context("cpu")? - cpu0;
    let wall = wall0.elapsed().as_secs_f64();
    if indexed {
        let filter = gait_store::EvidenceFilter::org("bench".parse()?, 1);
        anyhow::ensure!(
            !store.evidence(&filter).await?.is_empty(),
            "nothing indexed"
        );
    }
    Ok((cpu, wall))
}

#[tokio::test]
#[ignore = "a measurement; run with --ignored --nocapture"]
async fn indexing_costs_the_ingest_hot_path() -> Result<()> {
    let work = batches(1);
    let records = AGENTS * BATCHES * BATCH;
    // The extraction alone (no store), over the same batches as many times as they are committed.
    let cpu0 = cpu_seconds().context("cpu")?;
    let mut entries = 0usize;
    for batch in &work {
        for _ in 0..AGENTS {
            entries += gait_aggregator::evidence::index::entries(batch).len();
        }
    }
    let extract = cpu_seconds().context("cpu")? - cpu0;
    println!("extraction alone: {extract:.2} cpu-s for {entries} entries");
    // Warm up (page cache, allocator), then alternate to spread machine noise over both.
    run(false, &work[..1]).await?;
    let mut plain = (0.0, 0.0);
    let mut indexed = (0.0, 0.0);
    for _ in 0..2 {
        let p = run(false, &work).await?;
        let i = run(true, &work).await?;
        plain = (plain.0 + p.0, plain.1 + p.1);
        indexed = (indexed.0 + i.0, indexed.1 + i.1);
    }
    let rate = |s: f64| 2.0 * records as f64 / s;
    println!(
        "commit_batch (no index): {:.2} cpu-s {:.2} wall-s = {:.0} records/cpu-s\n\
         intake (indexed):        {:.2} cpu-s {:.2} wall-s = {:.0} records/cpu-s\n\
         indexed/plain CPU ratio: {:.2}; wall ratio: {:.2} ({records} records x 2 runs each, {AGENTS} agents, batch {BATCH})",
        plain.0,
        plain.1,
        rate(plain.0),
        indexed.0,
        indexed.1,
        rate(indexed.0),
        indexed.0 / plain.0,
        indexed.1 / plain.1,
    );
    Ok(())
}
