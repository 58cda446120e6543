//! Ingest throughput of `commit_batch`: batches of 100 and 1,000 records (~300-byte JSON payloads) for 100
//! agents, into SQLite (temp file, synchronous=FULL) and, when `GAIT_TEST_DATABASE_URL` is set, PostgreSQL.
//! Each batch is one transaction. Prints records/s, sequentially and with 8 agents committing concurrently.
//!
//! `cpu-s` is this process's user+system CPU time (Linux /proc, USER_HZ=100): for SQLite it is the whole
//! cost, and it does not depend on what else the machine runs; PostgreSQL's server time is not in it.
//! `GAIT_BENCH_BACKENDS=sqlite` (or `postgres`) runs one backend only.
//!
//! Run: `GAIT_TEST_DATABASE_URL=$(scripts/pg-test.sh url) cargo bench -p gait-store --bench ingest`

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use gait_store::testing::{TestStore, postgres_fresh, sqlite_temp};
use gait_store::{AgentHello, AgentKey, NewRecord, Store, Tenant};

const AGENTS: usize = 100;
const NOW: i64 = 1_764_000_000_000;

/// (records per batch, batches per agent): 100k and 200k records per run.
const SHAPES: [(usize, usize); 2] = [(100, 10), (1000, 2)];
const CONCURRENCY: [usize; 2] = [1, 8];

fn main() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run())
}

async fn run() -> Result<()> {
    let backends =
        std::env::var("GAIT_BENCH_BACKENDS").unwrap_or_else(|_| "sqlite,postgres".into());
    println!(
        "{:<9} {:>6} {:>7} {:>5} {:>9} {:>7} {:>12}",
        "backend", "batch", "records", "tasks", "seconds", "cpu-s", "records/s"
    );
    for (batch, rounds) in SHAPES {
        for tasks in CONCURRENCY {
            if backends.contains("sqlite") {
                let sqlite = sqlite_temp().await?;
                report(&sqlite, batch, rounds, tasks).await?;
            }
            if backends.contains("postgres")
                && let Some(pg) = postgres_fresh().await?
            {
                report(&pg, batch, rounds, tasks).await?;
            }
        }
    }
    Ok(())
}

async fn report(db: &TestStore, batch: usize, rounds: usize, tasks: usize) -> Result<()> {
    let (records, elapsed, cpu) = ingest(db.store(), batch, rounds, tasks).await?;
    let rate = records as f64 / elapsed.as_secs_f64();
    let cpu = cpu.map_or_else(|| "n/a".to_owned(), |c| format!("{c:.2}"));
    println!(
        "{:<9} {:>6} {:>7} {:>5} {:>9.2} {:>7} {:>12.0}",
        db.backend(),
        batch,
        records,
        tasks,
        elapsed.as_secs_f64(),
        cpu,
        rate
    );
    Ok(())
}

/// User+system CPU seconds of this process so far, from /proc/self/stat (None where unavailable).
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15 of the whole line.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Commits `rounds` batches of `batch` records for each agent; agents are split over `tasks` concurrent
/// tasks. Returns the records committed, the wall time and the process CPU time spent committing (batch
/// construction excluded).
async fn ingest(
    store: &Store,
    batch: usize,
    rounds: usize,
    tasks: usize,
) -> Result<(usize, Duration, Option<f64>)> {
    let tenant = Tenant::from_parts("bench", "ingest", "prod")?;
    let keys: Vec<AgentKey> = (0..AGENTS)
        .map(|i| {
            Ok(AgentKey::new(
                tenant.clone(),
                format!("agent-{i:03}").parse()?,
            ))
        })
        .collect::<Result<_>>()?;
    for k in &keys {
        store.agent_connected(k, &hello()?, NOW).await?;
    }
    // Per agent: its batches in order, built before the clock starts.
    let work: Vec<(AgentKey, Vec<Vec<NewRecord>>)> = keys
        .iter()
        .map(|k| {
            let records = chain(k, batch * rounds);
            (
                k.clone(),
                records.chunks(batch).map(<[NewRecord]>::to_vec).collect(),
            )
        })
        .collect();
    let mut groups: Vec<Vec<(AgentKey, Vec<Vec<NewRecord>>)>> =
        (0..tasks).map(|_| Vec::new()).collect();
    for (i, item) in work.into_iter().enumerate() {
        groups[i % tasks].push(item);
    }

    let cpu_start = process_cpu_seconds();
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for group in groups {
        let store = store.clone();
        set.spawn(async move {
            let mut committed = 0usize;
            for round in 0..rounds {
                for (key, batches) in &group {
                    let out = store.commit_batch(key, &batches[round], NOW).await?;
                    committed += out.inserted as usize;
                }
            }
            anyhow::Ok(committed)
        });
    }
    let mut total = 0;
    while let Some(done) = set.join_next().await {
        total += done.context("bench task panicked")??;
    }
    let elapsed = start.elapsed();
    let cpu = process_cpu_seconds()
        .zip(cpu_start)
        .map(|(end, begin)| end - begin);
    ensure!(
        total == AGENTS * batch * rounds,
        "committed {total} records"
    );
    Ok((total, elapsed, cpu))
}

fn hello() -> Result<AgentHello> {
    Ok(AgentHello {
        cert_serial: gait_store::CertSerial::parse("01")?,
        cert_not_after_unix_ms: i64::MAX,
        cert_issuer: "CN=test CA".into(),
        remote_addr: "127.0.0.1:1".into(),
        agent_version: "bench".into(),
        active_bundle: None,
        received_bundle: None,
        outbox_depth: 0,
        shed_total: 0,
    })
}

/// `n` chained records with ~300-byte JSON payloads; hashes are distinct per agent and seq.
fn chain(key: &AgentKey, n: usize) -> Vec<NewRecord> {
    let salt = key
        .agent_id
        .bytes()
        .fold(0u8, |a, b| a.wrapping_mul(31).wrapping_add(b));
    let hash = |seq: u64| -> [u8; 32] {
        if seq == 0 {
            return [0; 32];
        }
        let mut h = [salt; 32];
        h[..8].copy_from_slice(&seq.to_be_bytes());
        h
    };
    (1..=n as u64)
        .map(|seq| {
            let payload = format!(
                r#"{{"seq":{seq},"agent":"{}","verdict":"allow","tool":"fs.read","intent_digest":"{}","reason":"{}"}}"#,
                key.agent_id,
                "ab".repeat(32),
                "x".repeat(130)
            );
            NewRecord {
                seq,
                prev_hash: hash(seq - 1),
                hash: hash(seq),
                class: "decision".into(),
                kind: "gate".into(),
                created_unix_ms: NOW + seq as i64,
                bundle_epoch: Some(1),
                bundle_digest: Some("cd".repeat(32)),
                bundle_since_ms: Some(NOW),
                payload: payload.into_bytes(),
            }
        })
        .collect()
}
