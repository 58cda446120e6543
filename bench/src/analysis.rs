//! `gait-fleet-bench analysis`: fleet analytics at scale, in process on the real store (SQLite, or a fresh
//! PostgreSQL database with `--database-url`).
//!
//! 1. **Ingest and upkeep, same rows, same run.** `--decisions` decision records (about 700 bytes each, as the
//!    agent writes them with their intent profile) of `--agents` agents over `--projects` × 3 environments, 60
//!    tools, four verdicts and 30 days are committed in chunks through `commit_batch_indexed` with the index
//!    entries the aggregator's ingest computes; after each chunk the upkeep folds it
//!    (`analysis::upkeep::fold_up`), and whenever `--merge-rows` folded rows wait (the job's own trigger, 1,000,000
//!    by default), and at the end, the call merge takes them (`analysis::upkeep::merge_calls`: the decisions'
//!    arguments digests into the gated sets, for call-level coverage). All are timed; the ratio
//!    `upkeep_s / ingest_s` is what the upkeep costs against the store's own ingest (the goal: at most 0.20). As in the aggregator, each committed batch
//!    is handed to the upkeep's in-process feed (`analysis::feed`); that hand-off is timed and counted as
//!    upkeep, not ingest. `--no-feed` folds every range by reading it back (the path after a restart, or for
//!    rows another replica indexed).
//! 2. **Queries.** The top-50 families and the 7-day posture of the org, and of one project, through
//!    `analysis::Analytics` as the API calls it (minus HTTP), `--queries` times each: p50 and p99.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::ensure;
use gait_aggregator::analysis::Analytics;
use gait_aggregator::analysis::feed::Feed;
use gait_aggregator::analysis::upkeep::{MERGE_ROWS, fold_up, merge_calls, unmerged};
use gait_aggregator::auth::{AdminTokenMode, Authorizer, Permission, Principal};
use gait_store::{AgentKey, BindingScope, NewRecord, Store, Tenant};
use serde_json::json;

use crate::common::{CommonArgs, Database};

/// Flags of `analysis`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// Decision records to ingest and fold.
    #[arg(long, default_value_t = 1_000_000)]
    decisions: u64,
    /// Agents the decisions are spread over.
    #[arg(long, default_value_t = 120)]
    agents: u64,
    /// Projects of the org (each with environments prod, staging and dev).
    #[arg(long, default_value_t = 10)]
    projects: u64,
    /// Records per committed batch.
    #[arg(long, default_value_t = 500)]
    batch: u64,
    /// Records ingested between two upkeep runs.
    #[arg(long, default_value_t = 100_000)]
    chunk: u64,
    /// Timed calls of each query.
    #[arg(long, default_value_t = 200)]
    queries: usize,
    /// Fold every range by reading it back from the index, not from the in-process feed.
    #[arg(long)]
    no_feed: bool,
    /// Folded rows that start a call merge, and the most one takes (the aggregator merges every 1,000,000 rows
    /// or every `analysis.call_merge_lag_seconds`, whichever comes first: smaller merges cost more per row).
    #[arg(long, default_value_t = MERGE_ROWS)]
    merge_rows: u64,
    /// Also push one runpack per committed batch, as its agent's last record: 20 calls, 10 on the arguments of
    /// decisions of the same batch (gated once merged) and 10 on arguments no decision has (left ungated, so
    /// every later merge has them to look at). Off by default, so runs compare with earlier ones.
    #[arg(long)]
    runpacks: bool,
}

/// Calls of each bench runpack, and of them those on arguments a decision had.
const RUNPACK_CALLS: u64 = 20;
const RUNPACK_GATED_CALLS: u64 = 10;

/// The payload of a runpack record (as `gait-agent push` writes it) whose gated calls are those of decisions
/// `first..` and whose other calls have arguments no decision has (`run` keeps them apart).
fn runpack_payload(run: u64, first: u64) -> String {
    let calls: Vec<serde_json::Value> = (0..RUNPACK_CALLS)
        .map(|i| {
            let n = first + i;
            let args = if i < RUNPACK_GATED_CALLS {
                gait_canon::sha256_hex(&(!n).to_le_bytes())
            } else {
                gait_canon::sha256_hex(format!("ungated {run} {i}").as_bytes())
            };
            json!({"intent_id": format!("intent_{i}"), "tool_name": format!("tool.t{}", n % TOOLS),
                   "args_digest": args, "result_digest": "ab".repeat(32)})
        })
        .collect();
    json!({
        "schema": "gait.agent.artifact", "artifact_kind": "runpack",
        "sha256": gait_canon::sha256_hex(&run.to_le_bytes()), "size_bytes": 4096,
        "file_name": format!("runpack_r{run}.zip"), "source": "push", "signature_status": "verified",
        "run_ids": [format!("r{run}")], "producer_version": "bench",
        "runpack": {"run_id": format!("r{run}"), "runpack_manifest_digest": "cd".repeat(32),
                    "capture_mode": "reference", "intent_count": RUNPACK_CALLS,
                    "result_count": RUNPACK_CALLS, "receipt_count": 0, "receipt_digest_vector": []},
        "calls": calls,
    })
    .to_string()
}

const ENVS: [&str; 3] = ["prod", "staging", "dev"];
const TOOLS: u64 = 60;
const DAY_MS: i64 = 86_400_000;

fn hello(now: i64) -> anyhow::Result<gait_store::AgentHello> {
    Ok(gait_store::AgentHello {
        cert_serial: "0a1b2c".parse()?,
        cert_not_after_unix_ms: now + 30 * DAY_MS,
        cert_issuer: String::new(),
        remote_addr: "127.0.0.1:1".into(),
        agent_version: "bench".into(),
        active_bundle: None,
        received_bundle: None,
        outbox_depth: 0,
        shed_total: 0,
    })
}

/// The decision payload of record `n` (deterministic): its tool, verdict and profile follow `n`.
fn payload(n: u64, seq: u64) -> String {
    let tool = n % TOOLS;
    let (verdict, codes, rule) = match (n / TOOLS) % 10 {
        0 => ("block", r#"["blocked_by_rule"]"#, "deny"),
        1 => ("require_approval", r#"["approval_required"]"#, "hold"),
        2 => ("dry_run", r#"["plan_phase_non_destructive"]"#, "plan"),
        _ => ("allow", r#"["rule_allowed"]"#, "allow"),
    };
    let (risk, endpoint, destructive) = match tool % 6 {
        0 => ("high", "fs.delete", true),
        1 => ("medium", "net.http", false),
        2 => ("critical", "proc.exec", true),
        _ => ("low", "fs.read", false),
    };
    format!(
        r#"{{"schema":"gait.agent.gate_decision","tool_name":"tool.t{tool}","verdict":"{verdict}","enforced_verdict":"{verdict}","policy_verdict":"{verdict}","reason_codes":{codes},"violations":[],"matched_rule":"{rule}-{tool}","enforcement":"policy","stale":false,"policy_name":"base.yaml","policy_digest":"{pd}","intent_digest":"{id}","trace_id":"{seq:024x}","trace_key_id":"k1","stage":{{"stage":"enforce","would_have_blocked":false}},"intent_profile":{{"risk_class":"{risk}","endpoint_classes":["{endpoint}"],"destructive":{destructive}}},"agent_decided_unix_ms":0,"trace":{{"args_digest":"{ad}","pad":"{pad}"}}}}"#,
        pd = "ab".repeat(32),
        id = gait_canon::sha256_hex(&n.to_le_bytes()),
        // Each call's arguments differ, as in a real trace (stop 35 measured indexing this digest). The pad keeps
        // the record as long as it was before the trace carried it, so runs compare with earlier ones.
        ad = gait_canon::sha256_hex(&(!n).to_le_bytes()),
        pad = "x".repeat(159),
    )
}

fn percentile(values: &mut [Duration], p: f64) -> Duration {
    values.sort_unstable();
    let i = ((values.len() as f64 * p).ceil() as usize).clamp(1, values.len()) - 1;
    values[i]
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    ensure!(
        args.agents >= 1
            && args.batch >= 1
            && args.chunk >= args.batch
            && args.projects >= 1
            && args.merge_rows >= 1,
        "--agents, --batch, --projects and --merge-rows must be at least 1 and --chunk at least --batch"
    );
    gait_runtime::memory::disable_transparent_huge_pages().map_err(anyhow::Error::msg)?;
    let dir = args.common.temp_dir("gait-bench-analysis")?;
    let db = Database::create(&args.common, "analysis").await?;
    let url = match db.url() {
        Some(u) => u.to_owned(),
        None => format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("analysis.db").display()
        ),
    };
    let store = Store::connect(&url).await?;
    let result = measure(&store, &args, db.backend()).await;
    store.close().await;
    db.drop_database().await?;
    result
}

async fn measure(store: &Store, args: &Args, backend: &str) -> anyhow::Result<()> {
    let now = gait_aggregator::clock::unix_ms();
    let keys: Vec<AgentKey> = (0..args.agents)
        .map(|a| {
            let project = format!("p{}", a % args.projects);
            let env = ENVS[((a / args.projects) % 3) as usize];
            Ok(AgentKey::new(
                Tenant::from_parts("acme", &project, env)?,
                format!("agent-{a}").parse()?,
            ))
        })
        .collect::<anyhow::Result<_>>()?;
    for k in &keys {
        store.agent_connected(k, &hello(now)?, now).await?;
    }
    let mut seqs = vec![0u64; keys.len()];
    let mut prevs = vec![[0u8; 32]; keys.len()];
    let (mut ingest, mut upkeep, mut push) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let (mut merging, mut merges, mut gated_digests, mut gated_calls) =
        (Duration::ZERO, 0u64, 0u64, 0u64);
    let mut made = 0u64;
    let mut runpacks = 0u64;
    let (mut folded, mut fed) = (0u64, 0u64);
    let feed = (!args.no_feed).then(Feed::new);
    while made < args.decisions {
        let chunk_end = (made + args.chunk).min(args.decisions);
        // Build first, so the timing is the store's ingest path (index entries + commit), not the generator.
        let mut batches: Vec<(usize, Vec<NewRecord>)> = Vec::new();
        while made < chunk_end {
            let a = (made / args.batch) as usize % keys.len();
            let mut records = Vec::with_capacity(args.batch as usize);
            while records.len() < args.batch as usize && made < chunk_end {
                seqs[a] += 1;
                let seq = seqs[a];
                let mut hash = [0u8; 32];
                hash[..8].copy_from_slice(&seq.to_be_bytes());
                hash[8..16].copy_from_slice(&(a as u64).to_be_bytes());
                hash[16] = 1;
                // Spread over 30 days, newest last.
                let age = (args.decisions - made) as i64 * 30 * DAY_MS / args.decisions as i64;
                records.push(NewRecord {
                    seq,
                    prev_hash: prevs[a],
                    hash,
                    class: "decision".into(),
                    kind: "gate.decision".into(),
                    created_unix_ms: now - age,
                    bundle_epoch: None,
                    bundle_digest: None,
                    bundle_since_ms: None,
                    payload: payload(made, seq).into_bytes(),
                });
                prevs[a] = hash;
                made += 1;
            }
            if args.runpacks {
                // The batch's first decision is `made - records.len()`: its first ten calls are theirs.
                let first = made - records.len() as u64;
                seqs[a] += 1;
                let seq = seqs[a];
                let mut hash = [0u8; 32];
                hash[..8].copy_from_slice(&seq.to_be_bytes());
                hash[8..16].copy_from_slice(&(a as u64).to_be_bytes());
                hash[16] = 2;
                records.push(NewRecord {
                    seq,
                    prev_hash: prevs[a],
                    hash,
                    class: "artifact".into(),
                    kind: "artifact.runpack".into(),
                    created_unix_ms: now,
                    bundle_epoch: None,
                    bundle_digest: None,
                    bundle_since_ms: None,
                    payload: runpack_payload(runpacks, first).into_bytes(),
                });
                prevs[a] = hash;
                runpacks += 1;
            }
            batches.push((a, records));
        }
        for (a, records) in &batches {
            let started = Instant::now();
            let index = gait_aggregator::evidence::index::entries(records);
            let outcome = store
                .commit_batch_indexed(&keys[*a], records, &index, now)
                .await?;
            ingest += started.elapsed();
            if let Some(feed) = &feed {
                let started = Instant::now();
                feed.push(&keys[*a], records, &index, &outcome, now);
                push += started.elapsed();
            }
        }
        let started = Instant::now();
        let (rows, from_feed) = fold_up(store, feed.as_ref(), Duration::ZERO).await?;
        upkeep += started.elapsed();
        folded += rows;
        fed += from_feed;
        loop {
            let (merged, to) = unmerged(store).await?;
            let waiting = to.saturating_sub(merged);
            if waiting == 0 || (waiting < args.merge_rows && made < args.decisions) {
                break;
            }
            let started = Instant::now();
            let m = merge_calls(
                store,
                feed.as_ref(),
                args.merge_rows,
                gait_aggregator::clock::unix_ms(),
            )
            .await?;
            merging += started.elapsed();
            merges += 1;
            gated_digests += m.digests;
            gated_calls += m.calls;
        }
        eprintln!(
            "analysis ({backend}): {made}/{} ingested and folded (ingest {:.1} s, upkeep {:.1} s + feed {:.1} s \
             + call merges {:.1} s)",
            args.decisions,
            ingest.as_secs_f64(),
            upkeep.as_secs_f64(),
            push.as_secs_f64(),
            merging.as_secs_f64()
        );
    }
    ensure!(
        folded == args.decisions + runpacks,
        "folded {folded} of {} records",
        args.decisions + runpacks
    );
    ensure!(
        gated_calls == runpacks * RUNPACK_GATED_CALLS,
        "gated {gated_calls} runpack calls of the {} on decided arguments",
        runpacks * RUNPACK_GATED_CALLS
    );
    // Every decision's arguments differ: each is one digest in the gated sets.
    ensure!(
        gated_digests == args.decisions,
        "merged {gated_digests} arguments digests of {}",
        args.decisions
    );

    let analytics = {
        let registry = Arc::new(gait_aggregator::registry::Registry::new(
            store.clone(),
            gait_canon::sign::SigningKey::generate(),
            Default::default(),
            Arc::new(gait_aggregator::metrics::Metrics::new()),
        ));
        Analytics::new(store.clone(), registry)
    };
    let auth = Authorizer::new(AdminTokenMode::Admin);
    let who = Arc::new(Principal::AdminToken);
    let org_scope = BindingScope::org("acme".parse()?);
    let project_scope = BindingScope::project("acme".parse()?, "p3".parse()?);
    let mut results = serde_json::Map::new();
    let mut families_total = 0;
    for (name, scope) in [("org", org_scope), ("project", project_scope)] {
        let caller = auth
            .authorize(who.clone(), Permission::EvidenceRead, scope)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let (mut fam, mut pos) = (Vec::new(), Vec::new());
        for _ in 0..args.queries {
            let t = Instant::now();
            let report = analytics.families(&caller, Some(50)).await?;
            fam.push(t.elapsed());
            families_total = families_total.max(report.total);
            let t = Instant::now();
            let posture = analytics.posture(&caller, Some(7), now).await?;
            pos.push(t.elapsed());
            ensure!(posture.decisions > 0, "an empty posture");
        }
        results.insert(
            name.into(),
            json!({
                "top_families_ms_p50": ms(percentile(&mut fam, 0.5)),
                "top_families_ms_p99": ms(percentile(&mut fam, 0.99)),
                "posture_7d_ms_p50": ms(percentile(&mut pos, 0.5)),
                "posture_7d_ms_p99": ms(percentile(&mut pos, 0.99)),
            }),
        );
    }
    // The hand-off to the feed is upkeep work done on ingest's side: it counts as upkeep.
    let folds = upkeep;
    let upkeep = upkeep + push + merging;
    let ratio = upkeep.as_secs_f64() / ingest.as_secs_f64();
    println!(
        "{}",
        json!({
            "bench": "analysis",
            "backend": backend,
            "decisions": args.decisions,
            "agents": args.agents,
            "environments": args.projects * 3,
            "families": families_total,
            "ingest_s": (ingest.as_secs_f64() * 100.0).round() / 100.0,
            "ingest_records_per_s": (args.decisions as f64 / ingest.as_secs_f64()).round(),
            "upkeep_s": (upkeep.as_secs_f64() * 100.0).round() / 100.0,
            "upkeep_rows_per_s": (args.decisions as f64 / upkeep.as_secs_f64()).round(),
            "upkeep_over_ingest": (ratio * 1000.0).round() / 1000.0,
            "upkeep_rows_from_feed": fed,
            "upkeep_folds_s": (folds.as_secs_f64() * 100.0).round() / 100.0,
            "upkeep_feed_push_s": (push.as_secs_f64() * 100.0).round() / 100.0,
            "upkeep_call_merges": merges,
            "upkeep_call_merge_s": (merging.as_secs_f64() * 100.0).round() / 100.0,
            "gated_digests": gated_digests,
            "runpacks": runpacks,
            "gated_calls": gated_calls,
            "queries": results,
        })
    );
    Ok(())
}
