//! `push`: `gait-agent push` of a directory of signed traces to a real aggregator, timed from the command's
//! start to its exit after the aggregator committed every record — once with no agent daemon running (the
//! command enqueues in the database and runs the uplink in process) and once through a running daemon (the
//! files go over its Unix socket). Each trace is Gait's conformance trace with its own `correlation_id`,
//! re-signed with a key the agent is configured to trust, so every file is distinct and verifies (`verified`).

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use gait_agent::local_api::Endpoint;
use serde_json::{Value, json};
use tokio::process::Command;

use crate::common::{self, AggregatorProc, CommonArgs, Database, round};

/// Goal of the issue: a directory of 1,000 artifacts pushed and committed within 3 s.
const GOAL: Duration = Duration::from_secs(3);

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Artifacts in each pushed directory.
    #[arg(long, default_value_t = 1000)]
    pub artifacts: usize,
    /// Gait's conformance trace to copy (default: ../shared/conformance/artifacts/trace_endpoint_allow.json
    /// from the current directory).
    #[arg(
        long,
        default_value = "../shared/conformance/artifacts/trace_endpoint_allow.json"
    )]
    pub trace: std::path::PathBuf,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let work_dir = args.common.temp_dir("gait-bench-push-")?;
    let data_dir = work_dir.path().join("aggregator");
    std::fs::create_dir_all(&data_dir)?;
    let db = Database::create(&args.common, "push").await?;
    let agg = AggregatorProc::start_ephemeral(&args.common, &data_dir, &db).await?;
    let result = measure(&args, &agg, work_dir.path()).await;
    let log = agg.log_tail();
    agg.terminate(Duration::from_secs(15)).await?;
    db.drop_database().await?;
    result.with_context(|| format!("aggregator log:\n{log}"))
}

/// Writes `n` distinct traces signed by `key` into `dir`.
fn write_traces(
    template: &[u8],
    key: &gait_canon::sign::SigningKey,
    dir: &Path,
    tag: &str,
    n: usize,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let base = gait_artifact::trace::parse_trace(template).context("the template trace")?;
    for i in 0..n {
        let mut trace = base.clone();
        trace.correlation_id = format!("{tag}{i:020x}");
        let signed = gait_artifact::trace::sign_trace(trace, key);
        std::fs::write(
            dir.join(format!("trace_{i:05}.json")),
            signed.to_pretty_json(),
        )?;
    }
    Ok(())
}

/// Runs `gait-agent push --json DIR` and returns its wall time and report.
async fn push(
    common: &CommonArgs,
    agent_dir: &Path,
    dir: &Path,
) -> anyhow::Result<(Duration, Value)> {
    let started = Instant::now();
    let out = Command::new(common.bin("gait-agent")?)
        .arg("push")
        .arg("--config")
        .arg(agent_dir.join("agent.yaml"))
        .arg("--json")
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .await?;
    let elapsed = started.elapsed();
    ensure!(
        out.status.success(),
        "gait-agent push exited {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).context("push --json output")?;
    ensure!(report["committed"] == true, "not committed: {report}");
    Ok((elapsed, report))
}

fn enqueued(report: &Value) -> usize {
    report["files"].as_array().map_or(0, |f| {
        f.iter().filter(|f| f["status"] == "enqueued").count()
    })
}

async fn measure(args: &Args, agg: &AggregatorProc, work: &Path) -> anyhow::Result<()> {
    let agent_dir = work.join("agent");
    // Enrolled and connected once (so the aggregator knows it), then stopped: the first push runs alone.
    let agent = common::AgentProc::start(
        &args.common,
        agg,
        ("bench", "push", "prod"),
        "push-1",
        &agent_dir,
    )
    .await?;
    agent.terminate(Duration::from_secs(15)).await?;

    let key = gait_canon::sign::SigningKey::generate();
    gait_canon::sign::write_key_pair(
        &agent_dir.join("bench_trace.key"),
        &agent_dir.join("bench_trace.pub"),
        &key,
    )?;
    let config = agent_dir.join("agent.yaml");
    let mut yaml = std::fs::read_to_string(&config)?;
    yaml.push_str("capture:\n  trace_public_keys: [bench_trace.pub]\n");
    std::fs::write(&config, yaml)?;
    let template = std::fs::read(&args.trace)
        .with_context(|| format!("read {} (pass --trace)", args.trace.display()))?;
    let first = work.join("artifacts-a");
    let second = work.join("artifacts-b");
    write_traces(&template, &key, &first, "a", args.artifacts)?;
    write_traces(&template, &key, &second, "b", args.artifacts)?;

    let (alone, report) = push(&args.common, &agent_dir, &first).await?;
    ensure!(enqueued(&report) == args.artifacts, "{report}");
    eprintln!("push without a daemon: {:.3} s", alone.as_secs_f64());

    // Through a running daemon.
    let log = std::fs::File::create(agent_dir.join("agent-daemon.log"))?;
    let mut daemon = Command::new(args.common.bin("gait-agent")?)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .env("GAIT_AGENT_LOCAL_API_LISTEN", "127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()?;
    let endpoint = Endpoint::Unix(agent_dir.join("data").join("local-api.sock"));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answer =
            gait_agent::local_api::artifacts::fetch_outbox(&endpoint, Duration::from_secs(5)).await;
        if answer.is_ok_and(|p| p.connected) {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the agent daemon did not connect within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let through_daemon = push(&args.common, &agent_dir, &second).await;
    let pid = daemon.id().map(|p| p.to_string()).unwrap_or_default();
    let _ = Command::new("kill").args(["-TERM", &pid]).status().await;
    let _ = tokio::time::timeout(Duration::from_secs(15), daemon.wait()).await;
    let (via_daemon, report) = through_daemon?;
    ensure!(enqueued(&report) == args.artifacts, "{report}");

    let summary = json!({
        "bench": "push",
        "artifacts": args.artifacts,
        "kind": "trace (re-signed, verified)",
        "no_daemon_seconds": round(alone.as_secs_f64(), 3),
        "through_daemon_seconds": round(via_daemon.as_secs_f64(), 3),
        "goal_seconds": GOAL.as_secs(),
        "goal_met": alone <= GOAL && via_daemon <= GOAL,
    });
    println!("{summary}");
    println!(
        "gait-agent push of {} artifacts, committed by the aggregator: {:.2} s with no daemon, {:.2} s through the daemon (goal <= {} s)",
        args.artifacts,
        alone.as_secs_f64(),
        via_daemon.as_secs_f64(),
        GOAL.as_secs()
    );
    Ok(())
}
