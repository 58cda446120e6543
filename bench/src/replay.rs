//! `gait-fleet-bench replay`: replay before rollout at fleet scale, in process on the real store.
//!
//! 1. A fresh SQLite store (or the one `--reuse-db` names) is filled with `--decisions` captured decision records (capture mode `raw`, about
//!    1 KiB each like the agent's) of `--agents` agents over `--distinct` distinct intents, committed through
//!    `commit_batch_indexed` with the evidence index entries the aggregator's ingest computes for them.
//! 2. One replay is timed as the aggregator runs it, minus the HTTP edge and the audit append
//!    (`replay::corpus::replay_streamed`): the grouped walk (one row per distinct intent with the payload of its
//!    first decision) feeding the evaluation of a baseline and a `--rules`-rule candidate on all cores in
//!    chunks, overlapped with the read, then merged and signed.
//!
//! The JSON line reports the replay time, the distinct/total ratio, and the report's counts.

use std::time::Instant;

use anyhow::ensure;
use gait_policy::{parse_and_normalize_intent, parse_policy_yaml};
use gait_store::{AgentKey, CorpusScope, NewRecord, Store, Tenant};
use serde_json::json;

use crate::common::CommonArgs;

fn hello() -> anyhow::Result<gait_store::AgentHello> {
    Ok(gait_store::AgentHello {
        cert_serial: "0a1b2c".parse()?,
        cert_not_after_unix_ms: 1_764_000_000_000 + 86_400_000,
        cert_issuer: String::new(),
        remote_addr: "127.0.0.1:1".into(),
        agent_version: "bench".into(),
        active_bundle: None,
        received_bundle: None,
        outbox_depth: 0,
        shed_total: 0,
    })
}

/// Flags of `replay`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// Captured decisions in the corpus.
    #[arg(long, default_value_t = 1_000_000)]
    decisions: u64,
    /// Distinct intents among them (= --decisions for a 100 %-distinct corpus).
    #[arg(long, default_value_t = 10_000)]
    distinct: u64,
    /// Agents the decisions are spread over.
    #[arg(long, default_value_t = 100)]
    agents: u64,
    /// Rules of the candidate policy.
    #[arg(long, default_value_t = 50)]
    rules: u32,
    /// Records per committed batch.
    #[arg(long, default_value_t = 1000)]
    batch: u64,
    /// Replay the store at this path instead of filling a fresh one: a `replay.db` an earlier run with the same
    /// `--decisions`, `--distinct` and `--agents` left behind with `--keep` (filling takes about a minute).
    #[arg(long, value_name = "FILE")]
    reuse_db: Option<std::path::PathBuf>,
}

/// Tools the intents spread over; the candidate has one rule per tool up to `--rules`.
const TOOLS: u32 = 60;

fn policy(rules: u32, block_first: bool) -> String {
    let mut yaml = String::from(
        "schema_id: gait.gate.policy\nschema_version: 1.0.0\ndefault_verdict: block\nrules:\n",
    );
    for r in 0..rules {
        let effect = if block_first && r == 0 {
            "block"
        } else if r % 7 == 3 {
            "require_approval"
        } else {
            "allow"
        };
        yaml.push_str(&format!(
            "  - name: rule-{r}\n    priority: {}\n    effect: {effect}\n    match:\n      tool_names: [tool.t{r}]\n      risk_classes: [low, medium]\n    reason_codes: [rule_{r}]\n",
            r + 1
        ));
    }
    yaml
}

/// The normalized intent (bytes) and its digest for distinct intent `i`.
fn intent(i: u64) -> anyhow::Result<(Vec<u8>, String, String)> {
    let tool = format!("tool.t{}", i % u64::from(TOOLS));
    let doc = json!({
        "schema_id": "gait.gate.intent_request",
        "schema_version": "1.0.0",
        "created_at": "2026-12-01T09:00:00Z",
        "producer_version": "bench",
        "tool_name": tool,
        "args": {"path": format!("/srv/data/{i}/report.txt"), "mode": "read", "limit": i % 100},
        "targets": [{"kind": "path", "value": format!("/srv/data/{i}/report.txt"), "operation": "read"}],
        "context": {"identity": "worker", "workspace": "/srv/app", "risk_class": "low", "session_id": "s-1"}
    });
    let normalized = parse_and_normalize_intent(doc.to_string().as_bytes())?;
    Ok((
        serde_json::to_vec(&normalized.digest_payload())?,
        normalized.intent_digest,
        tool,
    ))
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    ensure!(
        args.distinct >= 1 && args.distinct <= args.decisions,
        "--distinct must be between 1 and --decisions"
    );
    ensure!(
        args.agents >= 1 && args.batch >= 1,
        "--agents and --batch must be at least 1"
    );
    // As gait-aggregator runs (crates/runtime/src/memory.rs); no child process here.
    gait_runtime::memory::disable_transparent_huge_pages().map_err(anyhow::Error::msg)?;
    let dir = args.common.temp_dir("gait-bench-replay")?;
    let path = match &args.reuse_db {
        Some(path) => {
            ensure!(
                path.is_file(),
                "--reuse-db {}: no such file",
                path.display()
            );
            path.clone()
        }
        None => dir.path().join("replay.db"),
    };
    let store = Store::connect(&format!("sqlite://{}?mode=rwc", path.display())).await?;
    if args.common.keep {
        eprintln!("replay: store kept at {}", path.display());
    }
    let fill = Instant::now();
    if args.reuse_db.is_none() {
        fill_store(&store, &args).await?;
    }
    let fill_s = fill.elapsed().as_secs_f64();
    replay(store, &args, fill_s).await
}

/// Stores `--decisions` captured decisions of `--distinct` intents over `--agents` agents.
async fn fill_store(store: &Store, args: &Args) -> anyhow::Result<()> {
    let tenant = Tenant::from_parts("acme", "web", "prod")?;
    let per_agent = args.decisions.div_ceil(args.agents);
    let mut made = 0u64;
    // Repeated intents are normalized once; a 100 %-distinct corpus uses each once, so nothing is kept.
    let mut cache: std::collections::HashMap<u64, (Vec<u8>, String, String)> = Default::default();
    let reuse = args.distinct < args.decisions;
    for a in 0..args.agents {
        let key = AgentKey::new(tenant.clone(), format!("agent-{a}").parse()?);
        store
            .agent_connected(&key, &hello()?, 1_764_000_000_000)
            .await?;
        let mut prev = [0u8; 32];
        let mut seq = 0u64;
        while seq < per_agent && made < args.decisions {
            let mut records = Vec::new();
            while records.len() < usize::try_from(args.batch)?
                && seq < per_agent
                && made < args.decisions
            {
                seq += 1;
                let i = made % args.distinct;
                made += 1;
                let fresh;
                let (normalized, digest, tool) = if reuse {
                    match cache.entry(i) {
                        std::collections::hash_map::Entry::Occupied(e) => &*e.into_mut(),
                        std::collections::hash_map::Entry::Vacant(e) => &*e.insert(intent(i)?),
                    }
                } else {
                    fresh = intent(i)?;
                    &fresh
                };
                let payload = format!(
                    r#"{{"schema":"gait.agent.gate_decision","tool_name":"{tool}","verdict":"allow","enforced_verdict":"allow","policy_verdict":"allow","reason_codes":["rule_allowed"],"violations":[],"matched_rule":"rule","enforcement":"policy","policy_name":"base.yaml","policy_digest":"{pd}","intent_digest":"{digest}","trace_id":"{seq:024x}","stage":{{"stage":"enforce","would_have_blocked":false}},"trace":{{"pad":"{pad}"}},"capture_mode":"raw","normalized_intent":{intent}}}"#,
                    pd = "ab".repeat(32),
                    pad = "x".repeat(400),
                    intent = String::from_utf8_lossy(normalized),
                );
                let mut hash = [0u8; 32];
                hash[..8].copy_from_slice(&seq.to_be_bytes());
                hash[8..16].copy_from_slice(&a.to_be_bytes());
                hash[16] = 1;
                records.push(NewRecord {
                    seq,
                    prev_hash: prev,
                    hash,
                    class: "decision".into(),
                    kind: "gate.decision".into(),
                    created_unix_ms: 1_764_000_000_000,
                    bundle_epoch: None,
                    bundle_digest: None,
                    bundle_since_ms: None,
                    payload: payload.into_bytes(),
                });
                prev = hash;
            }
            let index = gait_aggregator::evidence::index::entries(&records);
            ensure!(
                index.iter().all(|e| e.fields.captured),
                "every bench decision is captured"
            );
            store
                .commit_batch_indexed(&key, &records, &index, 1_764_000_000_000)
                .await?;
        }
        if (a + 1) % 10 == 0 {
            eprintln!("replay: {made}/{} decisions stored", args.decisions);
        }
    }
    Ok(())
}

/// One replay of the filled store, as the aggregator runs it without the HTTP edge and the audit append.
async fn replay(store: Store, args: &Args, fill_s: f64) -> anyhow::Result<()> {
    let baseline = parse_policy_yaml(policy(args.rules - 1, false).as_bytes())?;
    let candidate = parse_policy_yaml(policy(args.rules, true).as_bytes())?;
    let scope = CorpusScope {
        org: "acme".parse()?,
        project: None,
        env: None,
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let started = Instant::now();
    let until_id = store.replay_corpus_head(&scope).await?;
    let job = gait_aggregator::replay::corpus::Job {
        baseline,
        candidate,
        fixtures: Vec::new(),
        threads,
        max_changed: gait_aggregator::replay::DEFAULT_MAX_CHANGED,
        key: gait_canon::sign::SigningKey::generate(),
    };
    let (bytes, report) = gait_aggregator::replay::corpus::replay_streamed(
        &store,
        &scope,
        until_id,
        &Default::default(),
        job,
    )
    .await?;
    let total_s = started.elapsed().as_secs_f64();
    store.close().await;
    ensure!(
        report.corpus.samples == args.decisions,
        "{:?}",
        report.corpus
    );
    ensure!(report.corpus.skipped == 0, "{:?}", report.corpus);
    let summary = json!({
        "bench": "replay",
        "decisions": args.decisions,
        "distinct": report.corpus.distinct_intents,
        "distinct_ratio": report.corpus.distinct_intents as f64 / args.decisions as f64,
        "candidate_rules": args.rules,
        "threads": threads,
        "fill_s": fill_s,
        "replay_s": total_s,
        "changed_total": report.changed_total,
        "flips_total": report.flips_total,
        "report_bytes": bytes.len(),
    });
    println!("{summary}");
    println!(
        "replay: {} decisions ({} distinct) against a {}-rule candidate in {total_s:.2} s (corpus read, evaluation and signing overlapped, {threads} threads); {} flips",
        args.decisions, report.corpus.distinct_intents, args.rules, report.flips_total
    );
    Ok(())
}
