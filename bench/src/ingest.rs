//! `ingest`: records/s end to end. Simulated agents (one issued certificate each) pipeline pre-sealed,
//! pre-framed record batches over QUIC to a real `gait-aggregator` child process, which verifies, commits and
//! acknowledges them. The clock runs from the first batch sent to the last `BatchAck` received. Afterwards the
//! HTTP API must report exactly the records sent (count, last seq and hash, no gaps, no duplicates).
//!
//! Baseline, same run: the same batches committed straight into a fresh store with `Store::commit_batch`
//! (one task per agent, as the aggregator does), so the end-to-end number can be read as a ratio to what the
//! storage alone does on this machine.
#![allow(clippy::disallowed_methods)] // benchmark harness: spawns load generators freely and reads the clock

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use gait_store::{AgentHello, AgentKey, NewRecord, Store};
use gait_wire::{AgentMsgV2, BundleRef, Record, RecordBatch, RecordClass, ServerMsgV2};
use serde_json::json;

use crate::common::{self, AggregatorProc, CommonArgs, Database, Percentiles, Scope, round};

/// Goals of the issue, records/s.
const GOAL_SQLITE: f64 = 40_000.0;
const GOAL_POSTGRES: f64 = 80_000.0;
/// Fixed creation time of the generated records (keeps runs identical).
const NOW_MS: i64 = 1_764_000_000_000;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Simulated agents, each with its own certificate and connection.
    #[arg(long, default_value_t = 100)]
    pub agents: usize,
    /// Records in total (split evenly over the agents).
    #[arg(long, default_value_t = 1_000_000)]
    pub records: usize,
    /// Records per batch (the real agent sends at most 500).
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// Batches in flight per agent (the real agent's pipeline depth is 4).
    #[arg(long, default_value_t = 4)]
    pub pipeline: usize,
    /// Skip the store-only baseline.
    #[arg(long)]
    pub no_baseline: bool,
}

/// One agent's work: its frames in batch order, and what the aggregator must hold afterwards.
struct AgentWork {
    frames: Vec<(u64, usize, Vec<u8>)>,
    records: u64,
    last_hash: [u8; 32],
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    ensure!(
        args.agents > 0 && args.batch > 0 && args.pipeline > 0,
        "--agents, --batch and --pipeline must be positive"
    );
    ensure!(
        args.records >= args.agents,
        "--records must be at least --agents"
    );
    ensure!(
        args.batch <= gait_aggregator::ingest::MAX_BATCH_RECORDS,
        "--batch exceeds the aggregator's limit"
    );
    let scope = Scope::from_parts("bench", "ingest", "prod")?;
    let work_dir = args.common.temp_dir("gait-bench-ingest-")?;
    let cert_dir = args.common.cert_temp_dir("gait-bench-certs-")?;
    let data_dir = work_dir.path().join("aggregator");
    let pki_dir = common::init_pki(&data_dir)?;
    let creds = common::issue_fleet(&pki_dir, cert_dir.path(), &scope, "ingest", args.agents)?;
    let configs = creds
        .iter()
        .map(|c| c.client_config())
        .collect::<anyhow::Result<Vec<_>>>()?;

    // Everything the clock must not see: sealing the hash chains and encoding the frames.
    let prep = Instant::now();
    let per_agent = split(args.records, args.agents);
    let mut work = build_work(
        &creds.iter().map(|c| c.agent_id.clone()).collect::<Vec<_>>(),
        &per_agent,
        args.batch,
    )
    .await?;
    let frame_bytes: usize = work
        .iter()
        .flat_map(|w| w.frames.iter().map(|f| f.2.len()))
        .sum();
    eprintln!(
        "sealed and framed {} records ({:.1} MB on the wire) in {:.1} s",
        args.records,
        frame_bytes as f64 / 1e6,
        prep.elapsed().as_secs_f64()
    );

    let db = Database::create(&args.common, "ingest").await?;
    let agg = AggregatorProc::start_ephemeral(&args.common, &data_dir, &db).await?;
    let rss_idle = agg.rss_kib()?;
    let endpoints = common::client_endpoints(4)?;
    let hello = common::hello_frame()?;
    let mut conns = Vec::with_capacity(args.agents);
    for (i, config) in configs.into_iter().enumerate() {
        let conn = common::dial(&endpoints[i % endpoints.len()], config, agg.quic).await?;
        let welcome = common::hello(&conn, &hello).await?;
        ensure!(
            welcome.committed_seq == 0,
            "agent {i} starts with committed_seq {}",
            welcome.committed_seq
        );
        conns.push(conn);
    }

    let agg_cpu0 = agg.cpu_seconds()?;
    let threads0 = common::thread_cpu(agg.pid)?;
    let bench_cpu0 = common::cpu_seconds_of("self")?;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (conn, w) in conns.iter().cloned().zip(work.iter_mut()) {
        tasks.spawn(ship(conn, std::mem::take(&mut w.frames), args.pipeline));
    }
    let mut latencies = Vec::new();
    let mut reordered = 0;
    while let Some(done) = tasks.join_next().await {
        match done.context("shipping task panicked")? {
            Ok((l, r)) => {
                latencies.extend(l);
                reordered += r;
            }
            Err(e) => {
                tasks.abort_all();
                bail!(
                    "shipping failed: {e:#}\naggregator log:\n{}",
                    agg.log_tail()
                );
            }
        }
    }
    let elapsed = started.elapsed();
    let agg_cpu = agg.cpu_seconds()? - agg_cpu0;
    let by_thread = common::thread_cpu_delta(&threads0, &common::thread_cpu(agg.pid)?);
    let bench_cpu = common::cpu_seconds_of("self")? - bench_cpu0;
    let rss_after = agg.rss_kib()?;
    let hwm = agg.hwm_kib()?;
    let rate = args.records as f64 / elapsed.as_secs_f64();

    let verified = verify(&agg, &scope, &creds, &work, args.records as u64).await;
    for c in &conns {
        c.close(0u32.into(), b"bench done");
    }
    drop(conns);
    agg.terminate(Duration::from_secs(15)).await?;
    db.drop_database().await?;
    let gap_rows = verified?;

    let batch_lat = Percentiles::of(&latencies);
    let baseline = if args.no_baseline {
        None
    } else {
        Some(baseline(&args, &scope, &per_agent).await?)
    };
    let backend = if args.common.database_url.is_some() {
        "postgres"
    } else {
        "sqlite"
    };
    let goal = if backend == "postgres" {
        GOAL_POSTGRES
    } else {
        GOAL_SQLITE
    };
    let ratio = baseline.map(|b| rate / b);
    let summary = json!({
        "bench": "ingest",
        "backend": backend,
        "agents": args.agents,
        "records": args.records,
        "batch": args.batch,
        "pipeline": args.pipeline,
        "seconds": round(elapsed.as_secs_f64(), 3),
        "records_per_s": rate.round(),
        "goal_records_per_s": goal,
        "goal_met": rate >= goal,
        "verified": "count, last seq and hash per agent; no duplicates or conflicts",
        "out_of_order_commits": reordered,
        "false_gap_rows": gap_rows,
        "batch_latency_ms": batch_lat.json_ms(),
        "aggregator_cpu_s": round(agg_cpu, 2),
        "bench_cpu_s": round(bench_cpu, 2),
        "aggregator_cpu_s_by_thread": by_thread.iter().map(|(n, s)| json!([n, s])).collect::<Vec<_>>(),
        "aggregator_cpu_us_per_record": round(agg_cpu * 1e6 / args.records as f64, 2),
        "aggregator_rss_kib": { "idle": rss_idle, "after": rss_after, "peak": hwm },
        "baseline": baseline.map(|b| json!({ "kind": "Store::commit_batch, one task per agent", "records_per_s": b.round() })),
        "ratio_to_baseline": ratio.map(|r| round(r, 3)),
    });
    let human = format!(
        "ingest/{backend}: {} records from {} agents (batch {}, pipeline {}) in {:.2} s = {:.0} records/s \
         (goal {:.0}: {}); batch ack {}; aggregator CPU {:.1} s ({:.1} us/record), bench CPU {:.1} s; {}; verified through the HTTP API (no loss, no doubles); \
         {reordered} out-of-order commits, {gap_rows} false gap rows",
        args.records,
        args.agents,
        args.batch,
        args.pipeline,
        elapsed.as_secs_f64(),
        rate,
        goal,
        if rate >= goal { "met" } else { "MISSED" },
        batch_lat.human_ms(),
        agg_cpu,
        agg_cpu * 1e6 / args.records as f64,
        bench_cpu,
        match (baseline, ratio) {
            (Some(b), Some(r)) => format!(
                "store-only baseline {b:.0} records/s (end-to-end = {:.0}% of it)",
                r * 100.0
            ),
            _ => "no baseline".to_owned(),
        },
    );
    common::emit(&summary, &human);
    Ok(())
}

/// `total` split into `parts` near-equal counts.
fn split(total: usize, parts: usize) -> Vec<usize> {
    (0..parts)
        .map(|i| total / parts + usize::from(i < total % parts))
        .collect()
}

/// The chained records of one agent (identical for the end-to-end run and the baseline).
fn agent_records(agent_id: &str, n: usize) -> Vec<Record> {
    let bundle = BundleRef {
        epoch: 1,
        digest: [0xcd; 32],
        since_unix_ms: NOW_MS,
    };
    let mut prev = gait_wire::GENESIS_HASH;
    (1..=n as u64)
        .map(|seq| {
            // About 300 bytes, like a gate decision (and like the store's own benchmark).
            let payload = format!(
                r#"{{"seq":{seq},"agent":"{agent_id}","verdict":"allow","tool":"fs.read","intent_digest":"{}","reason":"{}"}}"#,
                "ab".repeat(32),
                "x".repeat(130)
            );
            let r = Record::sealed(
                seq,
                prev,
                RecordClass::Allow,
                "gate.decision",
                NOW_MS + seq as i64,
                Some(bundle.clone()),
                payload.into_bytes(),
            );
            prev = r.hash;
            r
        })
        .collect()
}

async fn build_work(
    ids: &[String],
    per_agent: &[usize],
    batch: usize,
) -> anyhow::Result<Vec<AgentWork>> {
    let mut set = tokio::task::JoinSet::new();
    for (i, (id, &n)) in ids.iter().zip(per_agent).enumerate() {
        let id = id.clone();
        set.spawn_blocking(move || -> anyhow::Result<(usize, AgentWork)> {
            let records = agent_records(&id, n);
            let last_hash = records
                .last()
                .map(|r| r.hash)
                .unwrap_or(gait_wire::GENESIS_HASH);
            let mut frames = Vec::new();
            for (k, chunk) in records.chunks(batch).enumerate() {
                let batch_id = k as u64 + 1;
                let f = common::frame(AgentMsgV2::RecordBatch(RecordBatch {
                    batch_id,
                    records: chunk.to_vec(),
                }))?;
                frames.push((batch_id, chunk.len(), f));
            }
            Ok((
                i,
                AgentWork {
                    frames,
                    records: n as u64,
                    last_hash,
                },
            ))
        });
    }
    let mut out: Vec<Option<AgentWork>> = (0..ids.len()).map(|_| None).collect();
    while let Some(r) = set.join_next().await {
        let (i, w) = r??;
        out[i] = Some(w);
    }
    out.into_iter().map(|w| w.context("missing work")).collect()
}

/// Send one agent's batches with up to `depth` in flight, taking acks in order (as the real agent does).
/// Returns each batch's send-to-ack latency and how many acks showed an out-of-order commit.
async fn ship(
    conn: quinn::Connection,
    frames: Vec<(u64, usize, Vec<u8>)>,
    depth: usize,
) -> anyhow::Result<(Vec<Duration>, u64)> {
    let mut inflight = VecDeque::new();
    let mut latencies = Vec::with_capacity(frames.len());
    let mut committed = 0u64;
    let mut reordered = 0u64;
    for (batch_id, n, frame) in frames {
        if inflight.len() == depth {
            reordered += u64::from(take_ack(&mut inflight, &mut latencies, &mut committed).await?);
        }
        let conn = conn.clone();
        let sent = Instant::now();
        let task = tokio::spawn(async move { common::request(&conn, &frame).await });
        inflight.push_back((batch_id, n, sent, task));
    }
    while !inflight.is_empty() {
        reordered += u64::from(take_ack(&mut inflight, &mut latencies, &mut committed).await?);
    }
    Ok((latencies, reordered))
}

type InFlight = VecDeque<(
    u64,
    usize,
    Instant,
    tokio::task::JoinHandle<anyhow::Result<ServerMsgV2>>,
)>;

async fn take_ack(
    inflight: &mut InFlight,
    latencies: &mut Vec<Duration>,
    committed: &mut u64,
) -> anyhow::Result<bool> {
    let Some((batch_id, n, sent, task)) = inflight.pop_front() else {
        return Ok(false);
    };
    match task.await?? {
        ServerMsgV2::BatchAck(ack) => {
            latencies.push(sent.elapsed());
            ensure!(
                ack.batch_id == batch_id,
                "ack for batch {} while waiting for {batch_id}",
                ack.batch_id
            );
            ensure!(
                ack.inserted as usize == n && ack.duplicates == 0,
                "batch {batch_id}: {ack:?}"
            );
            *committed += n as u64;
            // A later batch committed before this one (the aggregator's per-connection ordering gave up
            // waiting) shows as a cursor already past this batch, or as gaps reported by the later batch.
            ensure!(
                ack.committed_through >= *committed,
                "batch {batch_id}: committed_through {} < {committed}",
                ack.committed_through
            );
            Ok(ack.committed_through > *committed || !ack.gaps.is_empty())
        }
        other => bail!("batch {batch_id} answered with {other:?}"),
    }
}

/// The HTTP API must hold exactly what was sent: per agent the count and the last record (seq and hash);
/// overall the insert counter equals the records sent and nothing was a duplicate or conflict. Returns the
/// number of gap rows recorded (none of them real: every record arrived, so any gap row is a false alarm
/// caused by an out-of-order commit).
async fn verify(
    agg: &AggregatorProc,
    scope: &Scope,
    creds: &[common::AgentCreds],
    work: &[AgentWork],
    total: u64,
) -> anyhow::Result<u64> {
    let api = agg.api();
    let mut gap_rows = 0;
    let base = format!(
        "/v1/orgs/{}/projects/{}/envs/{}/agents",
        scope.org, scope.project, scope.env
    );
    let mut stored_total = 0;
    for (c, w) in creds.iter().zip(work) {
        let (_, gaps) = api
            .agent_records(&format!("{base}/{}", c.agent_id), w.records, &w.last_hash)
            .await?;
        gap_rows += gaps;
        stored_total += w.records;
    }
    ensure!(
        stored_total == total,
        "{stored_total} records stored, {total} sent"
    );
    let m = api.metrics().await?;
    let inserted = common::metric_value(&m, gait_aggregator::metrics::RECORDS_INSERTED);
    let dup = common::metric_value(&m, gait_aggregator::metrics::RECORDS_DUPLICATE);
    let conflict = common::metric_value(&m, gait_aggregator::metrics::RECORDS_CONFLICT);
    ensure!(
        inserted as u64 == total && dup == 0.0 && conflict == 0.0,
        "metrics: inserted {inserted}, duplicate {dup}, conflict {conflict}"
    );
    eprintln!(
        "verified: {stored_total} records stored for {} agents, last hashes match, no duplicates; {gap_rows} \
         (false) gap rows",
        creds.len()
    );
    Ok(gap_rows)
}

/// Store-only baseline: the same records committed with `Store::commit_batch` on a fresh database of the same
/// backend, one task per agent committing its batches in order. Returns records/s.
async fn baseline(args: &Args, scope: &Scope, per_agent: &[usize]) -> anyhow::Result<f64> {
    let dir = args.common.temp_dir("gait-bench-baseline-")?;
    let db = Database::create(&args.common, "baseline").await?;
    let url = match db.url() {
        Some(u) => u.to_owned(),
        None => format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("baseline.db").display()
        ),
    };
    let store = Store::connect(&url).await?;
    let tenant = scope.clone();
    let mut work = Vec::new();
    for (i, &n) in per_agent.iter().enumerate() {
        let key = AgentKey::new(tenant.clone(), format!("ingest-{i:05}").parse()?);
        store.agent_connected(&key, &agent_hello()?, NOW_MS).await?;
        let rows: Vec<NewRecord> = agent_records(&key.agent_id, n)
            .into_iter()
            .map(to_row)
            .collect();
        let batches: Vec<Vec<NewRecord>> =
            rows.chunks(args.batch).map(<[NewRecord]>::to_vec).collect();
        work.push((key, batches));
    }
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for (key, batches) in work {
        let store = store.clone();
        set.spawn(async move {
            let mut n = 0u64;
            for b in &batches {
                n += store.commit_batch(&key, b, NOW_MS).await?.inserted;
            }
            anyhow::Ok(n)
        });
    }
    let mut committed = 0;
    while let Some(r) = set.join_next().await {
        committed += r??;
    }
    let elapsed = started.elapsed();
    ensure!(
        committed as usize == args.records,
        "baseline committed {committed} of {}",
        args.records
    );
    store.close().await;
    db.drop_database().await?;
    let rate = args.records as f64 / elapsed.as_secs_f64();
    eprintln!(
        "baseline: {} records in {:.2} s = {rate:.0} records/s",
        args.records,
        elapsed.as_secs_f64()
    );
    Ok(rate)
}

fn agent_hello() -> anyhow::Result<AgentHello> {
    Ok(AgentHello {
        cert_serial: gait_store::CertSerial::parse("01")?,
        cert_not_after_unix_ms: i64::MAX,
        cert_issuer: "CN=test CA".into(),
        remote_addr: "127.0.0.1:1".into(),
        agent_version: "gait-fleet-bench".into(),
        active_bundle: None,
        received_bundle: None,
        outbox_depth: 0,
        shed_total: 0,
    })
}

/// The row the aggregator derives from a wire record (as its ingest does).
fn to_row(r: Record) -> NewRecord {
    NewRecord {
        seq: r.seq,
        prev_hash: r.prev_hash,
        hash: r.hash,
        class: r.class.as_str().to_owned(),
        kind: r.kind,
        created_unix_ms: r.created_unix_ms,
        bundle_epoch: r.bundle.as_ref().map(|b| b.epoch),
        bundle_digest: r.bundle.as_ref().map(|b| common::to_hex(&b.digest)),
        bundle_since_ms: r.bundle.as_ref().map(|b| b.since_unix_ms),
        payload: r.payload,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_even_and_complete() {
        assert_eq!(split(10, 3), vec![4, 3, 3]);
        assert_eq!(split(1_000_000, 100).iter().sum::<usize>(), 1_000_000);
    }

    #[test]
    fn generated_records_form_a_valid_chain() {
        let r = agent_records("a", 3);
        assert_eq!(r[0].prev_hash, gait_wire::GENESIS_HASH);
        assert!(r.iter().all(Record::verify_hash));
        assert_eq!(r[1].prev_hash, r[0].hash);
        assert_eq!(r[2].prev_hash, r[1].hash);
    }
}
