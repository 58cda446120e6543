//! `agent-footprint`: a real `gait-agent run` against a real aggregator. The agent is enrolled with
//! `gait-aggregator pki issue-agent`, started, given a published bundle (so it holds an active policy), then
//! left idle; its VmRSS is read after the idle period. Also reports the size of both release binaries.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::json;

use crate::common::{self, AggregatorProc, CommonArgs, Database, round};

/// Goals of the issue (decimal megabytes).
const GOAL_RSS_BYTES: u64 = 15_000_000;
const GOAL_BINARY_BYTES: u64 = 15_000_000;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Seconds the agent stays idle (connected, bundle active) before its RSS is read.
    #[arg(long, default_value_t = 10)]
    pub idle_secs: u64,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let work_dir = args.common.temp_dir("gait-bench-footprint-")?;
    let data_dir = work_dir.path().join("aggregator");
    std::fs::create_dir_all(&data_dir)?;
    let db = Database::create(&args.common, "footprint").await?;
    let agg = AggregatorProc::start_ephemeral(&args.common, &data_dir, &db).await?;
    let result = measure(&args, &agg, work_dir.path()).await;
    let log = agg.log_tail();
    agg.terminate(Duration::from_secs(15)).await?;
    db.drop_database().await?;
    result.with_context(|| format!("aggregator log:\n{log}"))
}

async fn measure(args: &Args, agg: &AggregatorProc, work: &Path) -> anyhow::Result<()> {
    let agent_dir = work.join("agent");
    let started = Instant::now();
    let mut agent = common::AgentProc::start(
        &args.common,
        agg,
        ("bench", "footprint", "prod"),
        "fp-1",
        &agent_dir,
    )
    .await?;
    let connected_after = started.elapsed();
    agent
        .activate_reads_policy(agg, Duration::from_secs(30))
        .await?;

    tokio::time::sleep(Duration::from_secs(args.idle_secs)).await;
    if !agent.running()? {
        bail!("gait-agent exited; log:\n{}", agent.log_tail());
    }
    let rss = agent.rss_kib()?;
    let hwm = common::proc_status_kib(agent.pid, "VmHWM")?;
    let threads = common::proc_status_kib(agent.pid, "Threads")?;
    let agent_bin = std::fs::metadata(args.common.bin("gait-agent")?)?.len();
    let agg_bin = std::fs::metadata(args.common.bin("gait-aggregator")?)?.len();
    agent.terminate(Duration::from_secs(15)).await?;

    let rss_bytes = rss * 1024;
    let rss_met = rss_bytes < GOAL_RSS_BYTES;
    let bin_met = agent_bin < GOAL_BINARY_BYTES && agg_bin < GOAL_BINARY_BYTES;
    let summary = json!({
        "bench": "agent-footprint",
        "idle_s": args.idle_secs,
        "connected_after_s": round(connected_after.as_secs_f64(), 2),
        "agent_rss_kib": rss,
        "agent_peak_rss_kib": hwm,
        "agent_threads": threads,
        "goal_rss_bytes": GOAL_RSS_BYTES,
        "rss_goal_met": rss_met,
        "binary_bytes": { "gait-agent": agent_bin, "gait-aggregator": agg_bin },
        "goal_binary_bytes": GOAL_BINARY_BYTES,
        "binary_goal_met": bin_met,
    });
    let human = format!(
        "agent-footprint: idle gait-agent (connected, bundle active, {} s idle) VmRSS {:.1} MB (peak {:.1} MB, {threads} threads; \
         goal < 15 MB: {}); binaries gait-agent {:.1} MB, gait-aggregator {:.1} MB (goal < 15 MB each: {})",
        args.idle_secs,
        rss_bytes as f64 / 1e6,
        (hwm * 1024) as f64 / 1e6,
        if rss_met { "met" } else { "MISSED" },
        agent_bin as f64 / 1e6,
        agg_bin as f64 / 1e6,
        if bin_met { "met" } else { "MISSED" },
    );
    common::emit(&summary, &human);
    Ok(())
}
