//! `gait-fleet-bench registry`: the cost of the policy registry's write path for a large policy, in process on
//! the real store and registry (SQLite with `synchronous=FULL` as `serve` runs it, or PostgreSQL with
//! `--database-url`).
//!
//! Each run pushes a freshly generated `--rules`-rule Gait policy (different content every run, so every push
//! stores a new version: parse, normalize, digest, insert, `policy.push` audit, one commit) and then pins it to
//! an environment (the version re-read and re-parsed, a bundle signed with Ed25519, stored with its pin row and
//! two audit entries in one commit). Reported: p50/p99 of push, of pin and of both (the goal, ≤ 50 ms for 500
//! rules), and of the engine's parse alone for scale.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::ensure;
use gait_aggregator::registry::versions::PushRequest;
use gait_aggregator::registry::{BundleDefaults, Registry};
use gait_store::{PinKind, Store, Tenant};
use serde_json::json;

use crate::common::{self, CommonArgs, Percentiles};

/// Flags of `registry`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// Measured runs (push + pin each).
    #[arg(long, default_value_t = 50)]
    runs: usize,
    /// Rules of the generated policy.
    #[arg(long, default_value_t = 500)]
    rules: usize,
    /// Unmeasured runs first (page cache, allocator, prepared statements).
    #[arg(long, default_value_t = 3)]
    warmup: usize,
}

/// A Gait policy of `rules` rules, varied by `run` so each run's digest is new. Rules mix effects, priorities,
/// tool lists, risk classes, target kinds and reason codes, as a large real policy does.
fn policy(rules: usize, run: usize) -> String {
    let mut y = String::from(
        "schema_id: gait.gate.policy\nschema_version: 1.0.0\ndefault_verdict: require_approval\nfail_closed:\n  enabled: true\nrules:\n",
    );
    let effects = ["allow", "block", "require_approval"];
    for i in 0..rules {
        y.push_str(&format!(
            "  - name: rule-{run}-{i:04}\n    priority: {}\n    effect: {}\n    reason_codes: [rc_{i}]\n    match:\n      tool_names: [tool.{i}.read, tool.{i}.write]\n      risk_classes: [{}]\n      target_kinds: [path, table]\n",
            i % 50,
            effects[i % 3],
            if i % 2 == 0 { "low" } else { "medium" },
        ));
    }
    y
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    ensure!(
        args.runs > 0 && args.rules > 0,
        "--runs and --rules must be positive"
    );
    let dir = args.common.temp_dir("gait-bench-registry-")?;
    let store = match args.common.database_url.as_deref() {
        Some(url) => Store::connect(url).await?,
        None => Store::open_sqlite_file(&dir.path().join("registry.db")).await?,
    };
    let registry = Registry::new(
        store.clone(),
        gait_canon::sign::SigningKey::generate(),
        BundleDefaults::default(),
        Arc::new(gait_aggregator::metrics::Metrics::new()),
    );
    let org = "bench".parse()?;
    let tenant = Tenant::from_parts("bench", "web", "prod")?;
    let (mut parse, mut push, mut pin, mut total) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut bytes = 0;
    for run in 0..args.warmup + args.runs {
        let yaml = policy(args.rules, run);
        bytes = yaml.len();
        let started = Instant::now();
        gait_policy::parse_policy_yaml(yaml.as_bytes())?;
        let parsed = started.elapsed();
        let started = Instant::now();
        let pushed = registry
            .push(
                &org,
                PushRequest {
                    name: "big.yaml".into(),
                    yaml,
                    message: format!("run {run}"),
                    parent: None,
                    author: "bench".into(),
                    dry_run: false,
                },
            )
            .await?;
        let pushed_at = started.elapsed();
        ensure!(pushed.created, "run {run}: the version should be new");
        let pinned = registry
            .pin(
                &tenant,
                &pushed.version.digest,
                None,
                "bench",
                PinKind::Pin,
                None,
            )
            .await?;
        let both = started.elapsed();
        ensure!(pinned.bundle.epoch == run as u64 + 1, "epochs follow runs");
        if run >= args.warmup {
            parse.push(parsed);
            push.push(pushed_at);
            pin.push(both - pushed_at);
            total.push(both);
        }
    }
    store.close().await;
    let (parse, push, pin, total) = (
        Percentiles::of(&parse),
        Percentiles::of(&push),
        Percentiles::of(&pin),
        Percentiles::of(&total),
    );
    let goal = Duration::from_millis(50);
    let summary = json!({
        "bench": "registry",
        "backend": store.backend(),
        "rules": args.rules,
        "policy_bytes": bytes,
        "runs": args.runs,
        "parse_ms": parse.json_ms(),
        "push_ms": push.json_ms(),
        "pin_ms": pin.json_ms(),
        "push_and_pin_ms": total.json_ms(),
        "goal_ms": 50,
        "within_goal": total.p99 <= goal,
    });
    let human = format!(
        "registry ({}, {} rules, {} KiB): push + validate + pin-sign {} (goal <= 50 ms: {}); push {}; pin {}; engine parse alone {}",
        store.backend(),
        args.rules,
        bytes / 1024,
        total.human_ms(),
        if total.p99 <= goal { "met" } else { "missed" },
        push.human_ms(),
        pin.human_ms(),
        parse.human_ms(),
    );
    common::emit(&summary, &human);
    Ok(())
}
