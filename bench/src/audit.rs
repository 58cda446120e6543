//! `gait-fleet-bench audit`: the cost of the tamper-evident audit log, in process on the real store.
//!
//! 1. Privileged operations per second on SQLite (a certificate revocation, each its own transaction with
//!    `synchronous=FULL` as `serve` runs it), with their audit append in the same transaction against the same
//!    operations without it, in alternating rounds of one run, `--concurrency` callers at a time. A third
//!    variant is the baseline of the store's group commit: the same audited operations from the same callers,
//!    but let into the store one at a time (a semaphore before the transaction), so each pays its own commit —
//!    what every transaction paid before group commit.
//! 2. A log of `--log-size` entries (1,000,000 by default), built by the real append path in transactions of
//!    10,000, then: checkpoint signing time (the note signature alone and `sign_checkpoint` with its store
//!    round trips), and inclusion and consistency proof generation from the stored subtrees for random
//!    indices and sizes, each proof verified.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use gait_aggregator::audit::AuditLog;
use gait_audit::merkle::{verify_consistency, verify_inclusion};
use gait_audit::{EntryDraft, Target};
use gait_store::{AgentKey, CertSerial, Revocation, Store, Tenant};
use serde_json::json;

use crate::common::{self, CommonArgs};

/// Flags of `audit`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// Operations per round of the throughput comparison.
    #[arg(long, default_value_t = 5000)]
    ops: u64,
    /// Rounds of each variant, alternating (audited, plain, audited, …).
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Callers issuing operations at once.
    #[arg(long, default_value_t = 8)]
    concurrency: u64,
    /// Entries of the log the proofs are measured on.
    #[arg(long, default_value_t = 1_000_000)]
    log_size: u64,
    /// Proofs of each kind measured.
    #[arg(long, default_value_t = 1000)]
    proofs: u64,
}

fn draft(i: u64) -> EntryDraft {
    EntryDraft {
        actor: "admin-token".into(),
        action: "bundle.publish".into(),
        target: Target::in_env("acme", "web", "prod", "bundle", i.to_string()),
        before: None,
        after: Some(gait_audit::content_digest(&i.to_be_bytes())),
        details: None,
    }
}

fn revocation(n: u64) -> anyhow::Result<Revocation> {
    Ok(Revocation {
        cert_serial: CertSerial::parse(&format!("{:x}", n + 1))?,
        agent: AgentKey::new(
            Tenant::from_parts("acme", "web", "prod")?,
            format!("agent-{}", n % 1000).parse()?,
        ),
        reason: "bench".into(),
        revoked_by: "bench".into(),
    })
}

/// What one round measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    /// Revocation + audit append in one transaction, callers concurrent (group commit at work).
    Audited,
    /// Revocation alone, callers concurrent.
    Plain,
    /// Revocation + audit append, callers let in one at a time: one commit per operation.
    AuditedOneCommitEach,
}

impl Variant {
    fn label(self) -> &'static str {
        match self {
            Variant::Audited => "audited          ",
            Variant::Plain => "plain            ",
            Variant::AuditedOneCommitEach => "audited, 1 commit",
        }
    }
}

/// `ops` revocations from `concurrency` callers; returns operations per second.
async fn round(
    store: &Store,
    first: u64,
    ops: u64,
    concurrency: u64,
    variant: Variant,
) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let one_at_a_time = Arc::new(tokio::sync::Semaphore::new(1));
    for worker in 0..concurrency {
        let store = store.clone();
        let one_at_a_time = Arc::clone(&one_at_a_time);
        tasks.spawn(async move {
            let mut i = worker;
            while i < ops {
                let rev = revocation(first + i)?;
                let _turn = if variant == Variant::AuditedOneCommitEach {
                    Some(one_at_a_time.acquire().await?)
                } else {
                    None
                };
                if variant != Variant::Plain {
                    gait_aggregator::pki::revocation::revoke(&store, &rev, "admin-token", 0)
                        .await?;
                } else {
                    store
                        .transaction(async |tx| tx.revoke(&rev, 0).await)
                        .await?;
                }
                i += concurrency;
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(ops as f64 / start.elapsed().as_secs_f64())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn percentile(values: &mut [Duration], p: f64) -> Duration {
    values.sort();
    let i = ((values.len() as f64 - 1.0) * p).round() as usize;
    values[i]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// A tiny deterministic generator for indices (no dependency for a benchmark's random numbers).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 11) % n
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    ensure!(args.ops > 0 && args.rounds > 0 && args.concurrency > 0 && args.log_size > 1);
    let dir = args.common.temp_dir("gait-bench-audit-")?;

    // 1. Throughput with and without the audit append.
    let ops_store = Store::open_sqlite_file(&dir.path().join("ops.db")).await?;
    let (mut audited, mut plain, mut serial) = (Vec::new(), Vec::new(), Vec::new());
    let (mut audited_transactions, mut audited_commits) = (0u64, 0u64);
    let mut next = 0;
    for r in 0..args.rounds {
        for variant in [
            Variant::Audited,
            Variant::Plain,
            Variant::AuditedOneCommitEach,
        ] {
            let before = ops_store.group_commit_stats().context("SQLite store")?;
            let rate = round(&ops_store, next, args.ops, args.concurrency, variant).await?;
            let after = ops_store.group_commit_stats().context("SQLite store")?;
            if variant == Variant::Audited {
                audited_transactions += after.transactions - before.transactions;
                audited_commits += after.commits - before.commits;
            }
            next += args.ops;
            eprintln!("round {}: {} {rate:.0} ops/s", r + 1, variant.label());
            match variant {
                Variant::Audited => audited.push(rate),
                Variant::Plain => plain.push(rate),
                Variant::AuditedOneCommitEach => serial.push(rate),
            }
        }
    }
    let (audited_ops, plain_ops, serial_ops) = (
        median(&mut audited),
        median(&mut plain),
        median(&mut serial),
    );
    let per_commit = audited_transactions as f64 / audited_commits.max(1) as f64;
    ops_store.close().await;

    // 2. A log of `log_size` entries through the real append path.
    let store = Store::open_sqlite_file(&dir.path().join("log.db")).await?;
    let log = Arc::new(AuditLog::open(
        store.clone(),
        &dir.path().join("keys"),
        "gait-aggregator/bench.local",
    )?);
    let fill_start = Instant::now();
    let mut appended = 0u64;
    while appended < args.log_size {
        let batch = (args.log_size - appended).min(10_000);
        store
            .transaction(async |tx| {
                for i in appended..appended + batch {
                    tx.audit_append(&draft(i), 1_764_000_000_000 + i as i64)
                        .await?;
                }
                Ok::<_, gait_store::StoreError>(())
            })
            .await?;
        appended += batch;
        if appended.is_multiple_of(100_000) {
            eprintln!(
                "log: {appended} entries ({:.0}/s)",
                appended as f64 / fill_start.elapsed().as_secs_f64()
            );
        }
    }
    let fill_rate = args.log_size as f64 / fill_start.elapsed().as_secs_f64();
    let db_bytes = std::fs::metadata(dir.path().join("log.db"))
        .map(|m| m.len())
        .unwrap_or(0);

    // Checkpoint signing: the note alone, and the whole sign_checkpoint (one more entry before each, so each
    // signs a new size).
    let head = store.audit_head().await?;
    let signer_seed = [7u8; 32];
    let signer = gait_audit::NoteSigner::new("gait-aggregator/bench.local", &signer_seed)?;
    let cp = gait_audit::Checkpoint {
        origin: "gait-aggregator/bench.local".into(),
        size: head.size,
        root: head.root,
    };
    let mut note_times = Vec::new();
    for _ in 0..1000 {
        let t = Instant::now();
        std::hint::black_box(cp.sign(&signer)?);
        note_times.push(t.elapsed());
    }
    let mut sign_times = Vec::new();
    for i in 0..50 {
        store
            .audit_append(&draft(args.log_size + i), 1_764_000_000_000)
            .await?;
        let t = Instant::now();
        log.sign_checkpoint().await?;
        sign_times.push(t.elapsed());
    }
    let size = store.audit_head().await?.size;
    let root = store.audit_root(size).await?;

    // Proofs for random indices / older sizes, each verified.
    let mut rng = Lcg(0x5eed);
    let rows = store.audit_entries(0, 1).await?;
    ensure!(!rows.is_empty(), "the log is empty");
    let (mut incl, mut cons) = (Vec::new(), Vec::new());
    for _ in 0..args.proofs {
        let index = rng.below(size);
        let t = Instant::now();
        let proof = store.audit_inclusion_proof(index, size).await?;
        incl.push(t.elapsed());
        let line = &store
            .audit_entries(index, 1)
            .await?
            .first()
            .context("entry")?
            .line
            .clone();
        ensure!(
            verify_inclusion(index, size, &gait_audit::leaf_hash(line), &proof, &root),
            "inclusion proof of {index} does not verify"
        );
        let old = 1 + rng.below(size - 1);
        let t = Instant::now();
        let proof = store.audit_consistency_proof(old, size).await?;
        cons.push(t.elapsed());
        let old_root = store.audit_root(old).await?;
        ensure!(
            verify_consistency(old, size, &old_root, &root, &proof),
            "consistency proof {old} -> {size} does not verify"
        );
    }
    store.close().await;

    let summary = json!({
        "bench": "audit",
        "backend": "sqlite",
        "ops_per_round": args.ops,
        "rounds": args.rounds,
        "concurrency": args.concurrency,
        "audited_ops_per_s": audited_ops.round(),
        "plain_ops_per_s": plain_ops.round(),
        "audited_over_plain": (audited_ops / plain_ops * 100.0).round() / 100.0,
        "audited_one_commit_each_ops_per_s": serial_ops.round(),
        "audited_group_commit_over_one_commit_each": (audited_ops / serial_ops * 100.0).round() / 100.0,
        "audited_rounds": audited,
        "plain_rounds": plain,
        "audited_one_commit_each_rounds": serial,
        "audited_transactions_per_commit": (per_commit * 10.0).round() / 10.0,
        "log_size": size,
        "log_fill_appends_per_s": fill_rate.round(),
        "log_db_bytes": db_bytes,
        "note_sign_us_median": micros(percentile(&mut note_times, 0.5)).round(),
        "sign_checkpoint_ms_median": (micros(percentile(&mut sign_times, 0.5)) / 10.0).round() / 100.0,
        "sign_checkpoint_ms_max": (micros(percentile(&mut sign_times, 1.0)) / 10.0).round() / 100.0,
        "inclusion_proof_ms_median": (micros(percentile(&mut incl, 0.5)) / 10.0).round() / 100.0,
        "inclusion_proof_ms_p99": (micros(percentile(&mut incl, 0.99)) / 10.0).round() / 100.0,
        "inclusion_proof_ms_max": (micros(percentile(&mut incl, 1.0)) / 10.0).round() / 100.0,
        "consistency_proof_ms_median": (micros(percentile(&mut cons, 0.5)) / 10.0).round() / 100.0,
        "consistency_proof_ms_p99": (micros(percentile(&mut cons, 0.99)) / 10.0).round() / 100.0,
        "consistency_proof_ms_max": (micros(percentile(&mut cons, 1.0)) / 10.0).round() / 100.0,
    });
    let human = format!(
        "audit: {audited_ops:.0} audited ops/s vs {plain_ops:.0} plain ({:.2}x) and {serial_ops:.0} with one commit each ({:.2}x, {:.1} transactions per commit); log of {size}: checkpoint sign {:.2} ms, inclusion proof {:.2} ms median / {:.2} ms max, consistency proof {:.2} ms median / {:.2} ms max",
        audited_ops / plain_ops,
        audited_ops / serial_ops,
        per_commit,
        micros(percentile(&mut sign_times, 0.5)) / 1000.0,
        micros(percentile(&mut incl, 0.5)) / 1000.0,
        micros(percentile(&mut incl, 1.0)) / 1000.0,
        micros(percentile(&mut cons, 0.5)) / 1000.0,
        micros(percentile(&mut cons, 1.0)) / 1000.0,
    );
    common::emit(&summary, &human);
    Ok(())
}
