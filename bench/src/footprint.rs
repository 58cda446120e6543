//! `agent-footprint`: a real `gait-agent run` against a real aggregator. The agent is enrolled with
//! `gait-aggregator pki issue-agent`, started, given a published bundle (so it holds an active policy), then
//! left idle; its VmRSS is read after the idle period. Also reports the size of both release binaries.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use serde_json::{Value, json};
use tokio::process::Command;

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
    let out = Command::new(args.common.bin("gait-aggregator")?)
        .args([
            "pki",
            "issue-agent",
            "--org",
            "bench",
            "--project",
            "footprint",
            "--env",
            "prod",
            "--agent-id",
            "fp-1",
        ])
        .arg("--data-dir")
        .arg(&agg.data_dir)
        .arg("--out")
        .arg(&agent_dir)
        .arg("--aggregator-address")
        .arg(agg.quic.to_string())
        .output()
        .await?;
    ensure!(
        out.status.success(),
        "issue-agent: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let api_addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let log = std::fs::File::create(agent_dir.join("agent.log"))?;
    let mut child = Command::new(args.common.bin("gait-agent")?)
        .arg("run")
        .arg("--config")
        .arg(agent_dir.join("agent.yaml"))
        .env("GAIT_AGENT_LOCAL_API_LISTEN", api_addr.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("spawn gait-agent")?;
    let pid = child.id().context("agent pid")?;
    let status_url = format!("http://{api_addr}/v1/status");
    let http = reqwest::Client::new();
    let agent_log = || std::fs::read_to_string(agent_dir.join("agent.log")).unwrap_or_default();

    // Connected, then a published bundle verified and active.
    let started = Instant::now();
    wait_status(&http, &status_url, Duration::from_secs(30), |s| {
        s["connected"].as_bool() == Some(true)
    })
    .await
    .with_context(|| format!("agent did not connect; log:\n{}", agent_log()))?;
    let connected_after = started.elapsed();
    let policy = "schema_id: gait.gate.policy\nschema_version: 1.0.0\ndefault_verdict: block\nrules:\n  - name: allow-reads\n    \
                  priority: 10\n    effect: allow\n    match:\n      tool_names: [tool.read]\n";
    agg.api()
        .publish("bench", "footprint", "prod", "p.yaml", policy)
        .await?;
    wait_status(&http, &status_url, Duration::from_secs(30), |s| {
        s["active_bundle"]["epoch"].as_u64() == Some(1)
    })
    .await
    .with_context(|| format!("agent did not activate the bundle; log:\n{}", agent_log()))?;

    tokio::time::sleep(Duration::from_secs(args.idle_secs)).await;
    if let Some(status) = child.try_wait()? {
        bail!("gait-agent exited with {status}; log:\n{}", agent_log());
    }
    let rss = common::proc_status_kib(pid, "VmRSS")?;
    let hwm = common::proc_status_kib(pid, "VmHWM")?;
    let threads = common::proc_status_kib(pid, "Threads")?;
    let agent_bin = std::fs::metadata(args.common.bin("gait-agent")?)?.len();
    let agg_bin = std::fs::metadata(args.common.bin("gait-aggregator")?)?.len();
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await;
    let _ = tokio::time::timeout(Duration::from_secs(15), child.wait()).await;

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

/// Poll the agent's local status until `ok` holds.
async fn wait_status(
    http: &reqwest::Client,
    url: &str,
    timeout: Duration,
    ok: impl Fn(&Value) -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(resp) = http.get(url).send().await
            && let Ok(v) = resp.json::<Value>().await
            && ok(&v)
        {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "timed out after {timeout:?} polling {url}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
