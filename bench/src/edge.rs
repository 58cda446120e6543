//! The HTTP edges of both daemons under load and under attack, against real release processes.
//!
//! - `decide`: decision throughput of a real `gait-agent`'s local API (`POST /v1/gate/evaluate`, keep-alive
//!   connections, the bearer token when the agent build makes one) with a bundle in force, then the time until
//!   every decision record reached the aggregator (outbox empty). Run it on two builds (`--bin-dir`) to compare.
//!   With `--observe`, the same run then stages a candidate beside the policy in `observe` (two evaluations per
//!   decision) and reports observe against enforce as ratios.
//!   With `--rate N` (or `--sweep`) the load is open-loop on the agent's Unix socket instead: decisions are
//!   scheduled at N per second whatever the agent's answers do, each latency is measured from the request's
//!   *scheduled* send time (a request that waits for a free connection, or behind a slow one, counts that wait:
//!   no coordinated omission), and p50/p99/p99.9 and the achieved rate are reported; `--sweep` searches the
//!   highest rate whose p99 stays within `--target-p99-ms`. `--rate-limited` puts a `rate_limit` on the rule
//!   (a limit never reached, so every decision counts and is allowed).
//! - `http-flood`: first the aggregator's admin API, then the agent's local API, are flooded with idle
//!   (slow-header) connections and authenticated 2 MiB bodies stalled one byte short, optionally re-dialled as soon as the server closes
//!   them (an attacker that keeps the pressure on). Meanwhile fresh connections probe `/healthz` and real work
//!   (an authenticated admin `GET` on the aggregator, a decision on the agent): how many are answered, how fast,
//!   and the server's resident memory. The attack runs in worker processes of this binary (`flood-worker`,
//!   at most 8,000 connections each), so no raised open-files limit is needed.
#![allow(clippy::disallowed_methods)] // benchmark harness: spawns load generators freely and reads the clock

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::common::{self, AgentProc, AggregatorProc, CommonArgs, Database, Percentiles, round};

const TENANT: (&str, &str, &str) = ("bench", "edge", "prod");
/// The body a slow-body connection announces; it sends all of it but the last byte.
const SLOW_BODY_BYTES: usize = 2 * 1024 * 1024;

#[derive(clap::Args, Debug)]
pub struct DecideArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Decisions to time (after a warm-up of 500).
    #[arg(long, default_value_t = 20_000)]
    pub decisions: usize,
    /// Callers deciding at once, each on its own keep-alive connection.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// After the run with the policy alone (stage enforce), stage a candidate beside it in `observe` (two
    /// evaluations per decision), time the same number of decisions again and report observe against enforce
    /// as ratios from this one run.
    #[arg(long)]
    pub observe: bool,
    /// Open loop on the Unix socket: schedule this many decisions per second (latency from the scheduled send
    /// time). Without it (and without `--sweep`) the run is closed-loop over HTTP on TCP.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Open loop: seconds to run at `--rate` (default: `--decisions` decisions; 5 s per step of `--sweep`).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Open loop: connections (one sending thread each); a request waits for a free one, and that wait counts.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Run the aggregator under the `SCHED_IDLE` scheduling policy (`chrt --idle`): it only gets CPU the agent and
    /// the bench client leave, standing in for an aggregator on its own machine as deployed, while the agent still
    /// ships every record to it (the agent's shipping CPU stays in the measurement).
    #[arg(long)]
    pub aggregator_idle: bool,
    /// Open loop: stop the aggregator (`SIGSTOP`) for each timed step, once the agent's outbox has drained, and
    /// resume it after: the agent decides and records durably with nothing upstream answering (as while the
    /// aggregator is down or unreachable), so no record is shipped during the step.
    #[arg(long, conflicts_with = "aggregator_idle")]
    pub aggregator_paused: bool,
    /// The rule carries a `rate_limit` (never reached: every decision is counted and allowed).
    #[arg(long)]
    pub rate_limited: bool,
    /// Open loop: search the highest rate whose p99 stays within `--target-p99-ms` (starting at `--rate`,
    /// default 1,000/s: doubling while it holds, then bisecting to within 5%).
    #[arg(long)]
    pub sweep: bool,
    /// The p99 a sweep step must stay within, milliseconds.
    #[arg(long, default_value_t = 1.0)]
    pub target_p99_ms: f64,
}

#[derive(clap::Args, Debug)]
pub struct FloodArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Idle connections (connect, send nothing) opened against each server.
    #[arg(long, default_value_t = 20_000)]
    pub idle: usize,
    /// Authenticated connections (the caller's token: an unauthenticated body is refused before it is read)
    /// that send a request head announcing a 2 MiB body, all of it but the last byte, then stall.
    #[arg(long, default_value_t = 200)]
    pub slow_bodies: usize,
    /// Re-open an attack connection as soon as the server closes it.
    #[arg(long)]
    pub redial: bool,
    /// Seconds the attack is held while probing.
    #[arg(long, default_value_t = 20)]
    pub hold_secs: u64,
    /// Attack connections being dialled at once.
    #[arg(long, default_value_t = 256)]
    pub dial_concurrency: usize,
}

/// One attack process of `http-flood` (started by it; an open-files limit applies per process, so the attack
/// is spread over several).
#[derive(clap::Args, Debug)]
pub struct FloodWorkerArgs {
    /// The server to attack.
    #[arg(long)]
    pub addr: SocketAddr,
    /// Idle connections.
    #[arg(long)]
    pub idle: usize,
    /// Slow-body connections (their request head comes in `GAIT_BENCH_SLOW_HEAD`).
    #[arg(long)]
    pub slow_bodies: usize,
    /// Re-open a connection as soon as the server closes it.
    #[arg(long)]
    pub redial: bool,
    /// Connections being dialled at once.
    #[arg(long)]
    pub dial_concurrency: usize,
}

/// Attack connections one worker process holds at most.
const CONNECTIONS_PER_WORKER: usize = 8_000;

/// Two work items per probe round; a failed one counts with its error.
#[derive(Default)]
struct Probes {
    ok: Vec<Duration>,
    failed: usize,
    first_error: Option<String>,
}

impl Probes {
    fn record(&mut self, result: anyhow::Result<Duration>) {
        match result {
            Ok(took) => self.ok.push(took),
            Err(error) => {
                self.failed += 1;
                if self.first_error.is_none() {
                    self.first_error = Some(format!("{error:#}"));
                }
            }
        }
    }

    fn json(&self) -> Value {
        json!({
            "answered": self.ok.len(),
            "failed": self.failed,
            "latency_ms": Percentiles::of(&self.ok).json_ms(),
            "first_error": self.first_error,
        })
    }

    fn human(&self) -> String {
        let p = Percentiles::of(&self.ok);
        format!(
            "{}/{} answered (p50 {:.1} ms, max {:.1} ms)",
            self.ok.len(),
            self.ok.len() + self.failed,
            p.p50.as_secs_f64() * 1e3,
            p.max.as_secs_f64() * 1e3
        )
    }
}

/// Start an aggregator and an enrolled agent with the reads policy in force.
async fn start_pair(
    common: &CommonArgs,
    work: &std::path::Path,
    db: &Database,
) -> anyhow::Result<(AggregatorProc, AgentProc)> {
    let data_dir = work.join("aggregator");
    std::fs::create_dir_all(&data_dir)?;
    let agg = AggregatorProc::start_ephemeral(common, &data_dir, db).await?;
    let agent = AgentProc::start(common, &agg, TENANT, "edge-1", &work.join("agent")).await?;
    agent
        .activate_reads_policy(&agg, Duration::from_secs(60))
        .await?;
    Ok((agg, agent))
}

pub async fn decide(args: DecideArgs) -> anyhow::Result<()> {
    ensure!(args.concurrency > 0, "--concurrency must be at least 1");
    ensure!(args.connections > 0, "--connections must be at least 1");
    let work = args.common.temp_dir("gait-bench-decide-")?;
    let db = Database::create(&args.common, "decide").await?;
    let (agg, agent) = start_pair(&args.common, work.path(), &db).await?;
    let result = async {
        if args.aggregator_idle {
            let pid = agg.pid.to_string();
            let status = tokio::process::Command::new("chrt")
                .args(["--idle", "--all-tasks", "--pid", "0", &pid])
                .status()
                .await
                .context("run chrt (util-linux) for --aggregator-idle")?;
            ensure!(status.success(), "chrt --idle --all-tasks --pid 0 {pid} failed");
        }
        if args.rate_limited {
            publish_policy(&agg, &agent, RATE_LIMITED_POLICY, 2).await?;
        }
        if args.rate.is_some() || args.sweep {
            return open_loop(&args, &agg, &agent).await;
        }
        let enforce = measure_decide(&args, &agent, "enforce").await?;
        if args.observe {
            stage_observe(&agg, &agent, policy_of(&args), epoch_after(&args)).await?;
            let observe = measure_decide(&args, &agent, "observe").await?;
            let ratio = |o: f64, e: f64| if e > 0.0 { round(o / e, 3) } else { 0.0 };
            let summary = json!({
                "bench": "decide-observe-vs-enforce",
                "decisions": args.decisions,
                "concurrency": args.concurrency,
                "throughput_ratio": ratio(observe.rate, enforce.rate),
                "p50_ratio": ratio(observe.p50_ms, enforce.p50_ms),
                "p99_ratio": ratio(observe.p99_ms, enforce.p99_ms),
            });
            let human = format!(
                "decide: observe / enforce in one run: throughput x{:.3} ({:.0} vs {:.0} decisions/s), p50 x{:.3} ({:.3} vs {:.3} ms), p99 x{:.3} ({:.3} vs {:.3} ms)",
                ratio(observe.rate, enforce.rate),
                observe.rate,
                enforce.rate,
                ratio(observe.p50_ms, enforce.p50_ms),
                observe.p50_ms,
                enforce.p50_ms,
                ratio(observe.p99_ms, enforce.p99_ms),
                observe.p99_ms,
                enforce.p99_ms,
            );
            common::emit(&summary, &human);
        }
        anyhow::Ok(())
    }
    .await;
    let logs = format!(
        "agent log:\n{}\naggregator log:\n{}",
        agent.log_tail(),
        agg.log_tail()
    );
    agent.terminate(Duration::from_secs(15)).await?;
    agg.terminate(Duration::from_secs(15)).await?;
    db.drop_database().await?;
    result.with_context(|| logs)
}

/// A candidate beside the bench's reads policy (it also allows `tool.list`; `tool.read` stays allowed by both).
const CANDIDATE_POLICY: &str = "schema_id: gait.gate.policy\nschema_version: 1.0.0\ndefault_verdict: block\nrules:\n  - name: allow-reads\n    \
                                priority: 10\n    effect: allow\n    match:\n      tool_names: [tool.read, tool.list]\n";

/// The reads policy with a `rate_limit` on its rule that the bench never reaches (10^9 per hour, scope
/// `tool_identity`): every decision is counted and allowed.
const RATE_LIMITED_POLICY: &str = "schema_id: gait.gate.policy\nschema_version: 1.0.0\ndefault_verdict: block\nrules:\n  - name: allow-reads\n    \
                                   priority: 10\n    effect: allow\n    match:\n      tool_names: [tool.read]\n    rate_limit:\n      \
                                   requests: 1000000000\n      window: hour\n      scope: tool_identity\n";

/// The policy of record of this run.
fn policy_of(args: &DecideArgs) -> &'static str {
    if args.rate_limited {
        RATE_LIMITED_POLICY
    } else {
        common::READS_POLICY
    }
}

/// The epoch the next bundle published gets (the reads policy is epoch 1, the rate-limited one 2).
fn epoch_after(args: &DecideArgs) -> u64 {
    if args.rate_limited { 3 } else { 2 }
}

/// Publishes `policy` as the next bundle (epoch `epoch`) and waits until the agent has activated it.
async fn publish_policy(
    agg: &AggregatorProc,
    agent: &AgentProc,
    policy: &str,
    epoch: u64,
) -> anyhow::Result<()> {
    let (org, project, env) = TENANT;
    agg.api()
        .publish(org, project, env, "p.yaml", policy)
        .await?;
    agent
        .wait_status(Duration::from_secs(60), |s| {
            s["active_bundle"]["epoch"].as_u64() == Some(epoch)
        })
        .await
        .with_context(|| format!("agent did not activate bundle epoch {epoch}"))?;
    Ok(())
}

/// Publishes epoch `epoch`: `policy` with [`CANDIDATE_POLICY`] staged beside it in `observe`; waits until the
/// agent has activated it.
async fn stage_observe(
    agg: &AggregatorProc,
    agent: &AgentProc,
    policy: &str,
    epoch: u64,
) -> anyhow::Result<()> {
    let (org, project, env) = TENANT;
    let path = format!("/v1/orgs/{org}/projects/{project}/envs/{env}/bundles");
    let body = json!({
        "policies": { "p.yaml": policy },
        "candidates": { "p.yaml": { "stage": "observe", "name": "p.candidate.yaml", "policy": CANDIDATE_POLICY } },
    });
    let resp = reqwest::Client::new()
        .post(format!("http://{}{path}", agg.http))
        .bearer_auth(&agg.token)
        .json(&body)
        .send()
        .await?;
    let status = resp.status();
    let answer: Value = resp.json().await.unwrap_or(Value::Null);
    ensure!(status.as_u16() == 201, "POST {path}: {status} {answer}");
    agent
        .wait_status(Duration::from_secs(60), |s| {
            s["active_bundle"]["epoch"].as_u64() == Some(epoch)
        })
        .await
        .context("agent did not activate the observe bundle")?;
    Ok(())
}

/// What one timed run measured.
struct Measured {
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
}

async fn measure_decide(
    args: &DecideArgs,
    agent: &AgentProc,
    stage: &str,
) -> anyhow::Result<Measured> {
    let url = format!("http://{}/v1/gate/evaluate", agent.api);
    let token = agent.token();
    let body = serde_json::to_vec(&common::intent("tool.read"))?;
    let clients: Vec<reqwest::Client> = (0..args.concurrency)
        .map(|_| reqwest::Client::builder().pool_max_idle_per_host(1).build())
        .collect::<Result<_, _>>()?;

    let run = |count: usize| {
        let next = Arc::new(AtomicU64::new(0));
        let workers: Vec<_> = clients
            .iter()
            .cloned()
            .map(|client| {
                let (next, url, token, body, stage) = (
                    Arc::clone(&next),
                    url.clone(),
                    token.clone(),
                    body.clone(),
                    stage.to_owned(),
                );
                tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    while next.fetch_add(1, Ordering::Relaxed) < count as u64 {
                        let started = Instant::now();
                        let mut req = client
                            .post(&url)
                            .header("content-type", "application/json")
                            .body(body.clone());
                        if let Some(token) = &token {
                            req = req.bearer_auth(token);
                        }
                        let resp = req.send().await?;
                        let status = resp.status();
                        let answer: Value = resp.json().await?;
                        ensure!(
                            status.is_success()
                                && answer["verdict"] == "allow"
                                // Builds before staged enforcement answer no `stage`.
                                && (answer.get("stage").is_none()
                                    || answer["stage"]["stage"] == stage.as_str()),
                            "decision answered {status}: {answer}"
                        );
                        latencies.push(started.elapsed());
                    }
                    anyhow::Ok(latencies)
                })
            })
            .collect();
        async move {
            let mut all = Vec::with_capacity(count);
            for worker in workers {
                all.extend(worker.await??);
            }
            anyhow::Ok(all)
        }
    };

    eprintln!("decide: warm-up (500 decisions)");
    run(500).await?;
    eprintln!(
        "decide: {} decisions by {} callers",
        args.decisions, args.concurrency
    );
    let started = Instant::now();
    let latencies = run(args.decisions).await?;
    let elapsed = started.elapsed();
    let drained = agent
        .wait_status(Duration::from_secs(300), |s| {
            s["outbox"]["depth"].as_u64() == Some(0)
        })
        .await
        .map(|_| started.elapsed());
    let rate = args.decisions as f64 / elapsed.as_secs_f64();
    let p = Percentiles::of(&latencies);
    let summary = json!({
        "bench": "decide",
        "stage": stage,
        "decisions": args.decisions,
        "concurrency": args.concurrency,
        "token": agent.token().is_some(),
        "elapsed_s": round(elapsed.as_secs_f64(), 3),
        "decisions_per_s": round(rate, 1),
        "latency_ms": p.json_ms(),
        "all_recorded_upstream_after_s": drained.as_ref().ok().map(|d| round(d.as_secs_f64(), 2)),
    });
    let human = format!(
        "decide ({stage}): {} decisions by {} callers in {:.2} s = {:.0} decisions/s (p50 {:.2} ms, p99 {:.2} ms); outbox empty after {}",
        args.decisions,
        args.concurrency,
        elapsed.as_secs_f64(),
        rate,
        p.p50.as_secs_f64() * 1e3,
        p.p99.as_secs_f64() * 1e3,
        match &drained {
            Ok(d) => format!("{:.2} s", d.as_secs_f64()),
            Err(e) => format!("NOT within 300 s ({e})"),
        }
    );
    common::emit(&summary, &human);
    Ok(Measured {
        rate,
        p50_ms: p.p50.as_secs_f64() * 1e3,
        p99_ms: p.p99.as_secs_f64() * 1e3,
    })
}

/// One open-loop run's measurements.
pub(crate) struct OpenLoop {
    target_rate: f64,
    sent: usize,
    pub(crate) errors: usize,
    pub(crate) first_error: Option<String>,
    achieved_rate: f64,
    /// Latency from the scheduled send time to the full answer, sorted.
    latencies: Vec<Duration>,
    /// How late the client itself sent each request (pacing, or no free connection), sorted.
    lateness: Vec<Duration>,
    /// Requests answered more than [`SLOW`] after their scheduled time: (scheduled offset from the start,
    /// latency), to tell one stall from a spread-out tail.
    slow: Vec<(Duration, Duration)>,
    /// How late a thread that only sleeps 1 ms at a time woke up, sorted: a tail here is the machine's (the
    /// whole VM held off the CPU, or every core busy), not the server's.
    sleeper: Vec<Duration>,
}

/// What [`OpenLoop::slow`] counts.
const SLOW: Duration = Duration::from_millis(10);
/// A sleeper's wake-up later than this counts as a machine stall in the report.
const SLEEPER_STALL: Duration = Duration::from_millis(5);

impl OpenLoop {
    /// Nearest-rank quantile of a sorted sample, in milliseconds.
    fn quantile_ms(sorted: &[Duration], q: f64) -> f64 {
        if sorted.is_empty() {
            return 0.0;
        }
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1].as_secs_f64() * 1e3
    }

    fn p(&self, q: f64) -> f64 {
        Self::quantile_ms(&self.latencies, q)
    }

    /// The step holds: no error, the rate was achieved (within 3%) and p99 within `target_ms`.
    fn holds(&self, target_ms: f64) -> bool {
        self.errors == 0
            && self.achieved_rate >= 0.97 * self.target_rate
            && self.p(0.99) <= target_ms
    }

    pub(crate) fn json(&self, stage: &str, rate_limited: bool, connections: usize) -> Value {
        json!({
            "bench": "decide-open-loop",
            "transport": "unix-socket",
            "stage": stage,
            "rate_limited": rate_limited,
            "connections": connections,
            "target_rate": round(self.target_rate, 1),
            "achieved_rate": round(self.achieved_rate, 1),
            "sent": self.sent,
            "errors": self.errors,
            "first_error": self.first_error,
            "latency_ms": {
                "p50": round(self.p(0.50), 3),
                "p90": round(self.p(0.90), 3),
                "p99": round(self.p(0.99), 3),
                "p999": round(self.p(0.999), 3),
                "max": round(self.p(1.0), 3),
            },
            "send_lateness_ms": {
                "p50": round(Self::quantile_ms(&self.lateness, 0.50), 3),
                "p99": round(Self::quantile_ms(&self.lateness, 0.99), 3),
            },
            "over_10ms": self.slow_windows(),
            "sleeper_lateness_ms": {
                "p50": round(Self::quantile_ms(&self.sleeper, 0.50), 3),
                "p99": round(Self::quantile_ms(&self.sleeper, 0.99), 3),
                "max": round(Self::quantile_ms(&self.sleeper, 1.0), 3),
                "over_5ms": self.sleeper.iter().filter(|d| **d > SLEEPER_STALL).count(),
            },
        })
    }

    /// The slow requests by 100 ms window of their scheduled time: `[window start ms, count, max latency ms]`,
    /// the 20 windows with the most.
    fn slow_windows(&self) -> Value {
        let mut windows: std::collections::BTreeMap<u128, (u64, f64)> = Default::default();
        for (at, latency) in &self.slow {
            let w = windows.entry(at.as_millis() / 100 * 100).or_default();
            w.0 += 1;
            w.1 = w.1.max(latency.as_secs_f64() * 1e3);
        }
        let mut rows: Vec<_> = windows.into_iter().collect();
        rows.sort_by(|a, b| b.1.0.cmp(&a.1.0).then(a.0.cmp(&b.0)));
        rows.truncate(20);
        rows.sort_by_key(|r| r.0);
        json!({
            "count": self.slow.len(),
            "windows_100ms": rows
                .into_iter()
                .map(|(start, (n, max))| json!([start, n, round(max, 1)]))
                .collect::<Vec<_>>(),
        })
    }

    pub(crate) fn human(&self, stage: &str, rate_limited: bool) -> String {
        format!(
            "decide open-loop ({stage}{}): {:.0}/s scheduled, {:.0}/s achieved, {} sent, {} errors; latency p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms (client send lateness p99 {:.3} ms; a 1 ms sleeper woke p99 {:.3} ms late, {} times over 5 ms)",
            if rate_limited {
                ", rate-limited rule"
            } else {
                ""
            },
            self.target_rate,
            self.achieved_rate,
            self.sent,
            self.errors,
            self.p(0.50),
            self.p(0.99),
            self.p(0.999),
            self.p(1.0),
            Self::quantile_ms(&self.lateness, 0.99),
            Self::quantile_ms(&self.sleeper, 0.99),
            self.sleeper.iter().filter(|d| **d > SLEEPER_STALL).count(),
        )
    }
}

/// Sleeps 1 ms at a time until `done`, recording how late each wake-up was (see [`OpenLoop::sleeper`]).
fn sleeper(done: &std::sync::atomic::AtomicBool) -> Vec<Duration> {
    const NAP: Duration = Duration::from_millis(1);
    let mut late = Vec::new();
    while !done.load(Ordering::Relaxed) {
        let before = Instant::now();
        std::thread::sleep(NAP);
        late.push(before.elapsed().saturating_sub(NAP));
    }
    late
}

/// A keep-alive HTTP/1.1 connection to the agent's Unix socket that asks for one decision at a time (the
/// socket needs no bearer token). Minimal on purpose: the client's own cost is part of what is measured.
struct SocketClient {
    stream: std::io::BufReader<std::os::unix::net::UnixStream>,
    request: Arc<Vec<u8>>,
    line: String,
    body: Vec<u8>,
}

impl SocketClient {
    fn connect(path: &std::path::Path, request: Arc<Vec<u8>>) -> anyhow::Result<Self> {
        let stream = std::os::unix::net::UnixStream::connect(path)
            .with_context(|| format!("connect {}", path.display()))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Self {
            stream: std::io::BufReader::new(stream),
            request,
            line: String::new(),
            body: Vec::new(),
        })
    }

    /// `POST /v1/gate/evaluate` with the bench intent; an error unless it answered 200 `allow`. Returns
    /// `false` when the answer closed the connection (`Connection: close`, sent on the agent's
    /// `max_requests_per_connection`-th answer): the next decision needs a new connection.
    fn decide(&mut self) -> anyhow::Result<bool> {
        use std::io::{BufRead as _, Read as _, Write as _};
        self.stream.get_mut().write_all(&self.request)?;
        self.line.clear();
        self.stream.read_line(&mut self.line)?;
        let status = self
            .line
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        let mut length = None;
        let mut keep_alive = true;
        loop {
            self.line.clear();
            ensure!(
                self.stream.read_line(&mut self.line)? > 0,
                "connection closed in the answer's head"
            );
            let header = self.line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = Some(value.trim().parse::<usize>()?);
                } else if name.eq_ignore_ascii_case("connection") {
                    keep_alive = !value.trim().eq_ignore_ascii_case("close");
                }
            }
        }
        let length = length.context("answer without content-length")?;
        self.body.resize(length, 0);
        self.stream.read_exact(&mut self.body)?;
        ensure!(
            status == "200"
                && std::str::from_utf8(&self.body)
                    .is_ok_and(|b| b.contains(r#""verdict":"allow""#)),
            "decision answered {status}: {}",
            String::from_utf8_lossy(&self.body)
        );
        Ok(keep_alive)
    }
}

/// The request every open-loop decision sends.
fn socket_request() -> anyhow::Result<Vec<u8>> {
    let body = serde_json::to_vec(&common::intent("tool.read"))?;
    let mut request = format!(
        "POST /v1/gate/evaluate HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    Ok(request)
}

/// Sends `count` decisions scheduled at `rate` per second over `connections` connections (one thread each).
/// Blocking.
pub(crate) fn run_open_loop(
    socket: &std::path::Path,
    rate: f64,
    count: usize,
    connections: usize,
) -> anyhow::Result<OpenLoop> {
    ensure!(rate > 0.0, "--rate must be positive");
    // The client's own heaps must not stall it (crates/runtime/src/memory.rs). Set only now, after the agent
    // and the aggregator started (children inherit the flag), so every build is measured with its own setting.
    gait_runtime::memory::disable_transparent_huge_pages().map_err(anyhow::Error::msg)?;
    let request = Arc::new(socket_request()?);
    let clients = (0..connections)
        .map(|_| SocketClient::connect(socket, Arc::clone(&request)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let next = AtomicU64::new(0);
    let start = Instant::now() + Duration::from_millis(20);
    let senders_done = std::sync::atomic::AtomicBool::new(false);
    let mut sleeper_late = Vec::new();
    let results = std::thread::scope(|scope| {
        let probe = scope.spawn(|| sleeper(&senders_done));
        let threads: Vec<_> = clients
            .into_iter()
            .map(|mut client| {
                let next = &next;
                scope.spawn(move || {
                    let mut latencies = Vec::new();
                    let mut lateness = Vec::new();
                    let mut slow = Vec::new();
                    let mut errors = Vec::new();
                    let mut last_done = start;
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= count as u64 {
                            break;
                        }
                        let scheduled = start + interval.mul_f64(i as f64);
                        let now = Instant::now();
                        if scheduled > now {
                            std::thread::sleep(scheduled - now);
                        }
                        let sent = Instant::now();
                        match client.decide() {
                            Ok(keep_alive) => {
                                let done = Instant::now();
                                latencies.push(done - scheduled);
                                lateness.push(sent.saturating_duration_since(scheduled));
                                if done - scheduled > SLOW {
                                    slow.push((scheduled - start, done - scheduled));
                                }
                                last_done = last_done.max(done);
                                if !keep_alive {
                                    // As a real client does: a new connection for the next decision (a
                                    // connect that makes it late counts in its latency).
                                    match SocketClient::connect(socket, Arc::clone(&client.request))
                                    {
                                        Ok(fresh) => client = fresh,
                                        Err(e) => {
                                            errors.push(format!("{e:#}"));
                                            break;
                                        }
                                    }
                                }
                            }
                            Err(e) => {
                                errors.push(format!("{e:#}"));
                                // The connection may be unusable: reconnect for the next request.
                                match SocketClient::connect(socket, Arc::clone(&client.request)) {
                                    Ok(fresh) => client = fresh,
                                    Err(e) => {
                                        errors.push(format!("{e:#}"));
                                        break;
                                    }
                                }
                            }
                        }
                    }
                    (latencies, lateness, slow, errors, last_done)
                })
            })
            .collect();
        let results = threads
            .into_iter()
            .map(|t| {
                t.join()
                    .map_err(|_| anyhow::anyhow!("a sending thread panicked"))
            })
            .collect::<anyhow::Result<Vec<_>>>();
        senders_done.store(true, Ordering::Relaxed);
        sleeper_late = probe
            .join()
            .map_err(|_| anyhow::anyhow!("the sleeper thread panicked"))?;
        results
    })?;
    let mut run = OpenLoop {
        target_rate: rate,
        sent: count,
        errors: 0,
        first_error: None,
        achieved_rate: 0.0,
        latencies: Vec::with_capacity(count),
        lateness: Vec::with_capacity(count),
        slow: Vec::new(),
        sleeper: sleeper_late,
    };
    let mut last = start;
    for (latencies, lateness, slow, errors, last_done) in results {
        run.latencies.extend(latencies);
        run.lateness.extend(lateness);
        run.slow.extend(slow);
        run.errors += errors.len();
        if run.first_error.is_none() {
            run.first_error = errors.into_iter().next();
        }
        last = last.max(last_done);
    }
    run.latencies.sort_unstable();
    run.lateness.sort_unstable();
    run.sleeper.sort_unstable();
    let elapsed = last.saturating_duration_since(start).as_secs_f64();
    if elapsed > 0.0 {
        run.achieved_rate = run.latencies.len() as f64 / elapsed;
    }
    Ok(run)
}

/// The agent's outbox group-commit series (`gait_agent_outbox_commit_*`), summed since its start.
#[derive(Debug, Default)]
struct CommitTotals {
    commits: f64,
    seconds: f64,
    records: f64,
    /// Commits that took more than 5 ms (the histogram's `le="0.005"` bucket subtracted from the count).
    over_5ms: f64,
}

impl CommitTotals {
    fn since(&self, before: &CommitTotals) -> CommitTotals {
        CommitTotals {
            commits: self.commits - before.commits,
            seconds: self.seconds - before.seconds,
            records: self.records - before.records,
            over_5ms: self.over_5ms - before.over_5ms,
        }
    }

    fn json(&self) -> Value {
        let per = |x: f64| {
            if self.commits > 0.0 {
                x / self.commits
            } else {
                0.0
            }
        };
        json!({
            "commits": self.commits,
            "mean_ms": round(per(self.seconds) * 1e3, 3),
            "mean_records": round(per(self.records), 2),
            "over_5ms": self.over_5ms,
        })
    }
}

/// Reads [`CommitTotals`] from the agent's `/metrics`.
async fn commit_totals(agent: &AgentProc) -> anyhow::Result<CommitTotals> {
    let text = reqwest::get(format!("http://{}/metrics", agent.api))
        .await?
        .error_for_status()?
        .text()
        .await?;
    let duration = "gait_agent_outbox_commit_duration_seconds";
    let commits = common::metric_value(&text, &format!("{duration}_count"));
    let within_5ms = text
        .lines()
        .find(|l| l.starts_with(&format!("{duration}_bucket{{le=\"0.005\"}}")))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(commits);
    Ok(CommitTotals {
        commits,
        seconds: common::metric_value(&text, &format!("{duration}_sum")),
        records: common::metric_value(&text, "gait_agent_outbox_commit_records_sum"),
        over_5ms: commits - within_5ms,
    })
}

/// One open-loop step at `rate` for `count` decisions, after the outbox of the previous step drained.
async fn open_loop_step(
    args: &DecideArgs,
    agg: &AggregatorProc,
    agent: &AgentProc,
    stage: &str,
    rate: f64,
    count: usize,
) -> anyhow::Result<OpenLoop> {
    agent
        .wait_status(Duration::from_secs(300), |s| {
            s["outbox"]["depth"].as_u64() == Some(0)
        })
        .await
        .context("the outbox did not drain before the step")?;
    let socket = agent.dir.join("data").join("local-api.sock");
    let connections = args.connections;
    let (threads0, agg0) = (common::thread_cpu(agent.pid)?, agg.cpu_seconds()?);
    let commits0 = commit_totals(agent).await?;
    if args.aggregator_paused {
        signal(agg.pid, "STOP").await?;
    }
    let run =
        tokio::task::spawn_blocking(move || run_open_loop(&socket, rate, count, connections)).await;
    if args.aggregator_paused {
        signal(agg.pid, "CONT").await?;
    }
    let run = run??;
    let commits = commit_totals(agent).await?.since(&commits0);
    // Where the agent's CPU went (per thread name, microseconds per decision) and what the aggregator, on
    // the same machine, spent meanwhile ingesting the records.
    let by_thread = common::thread_cpu_delta(&threads0, &common::thread_cpu(agent.pid)?);
    let agg_cpu = agg.cpu_seconds()? - agg0;
    let per_decision = |secs: f64| round(secs * 1e6 / run.sent.max(1) as f64, 1);
    let mut summary = run.json(stage, args.rate_limited, args.connections);
    summary["agent_cpu_us_per_decision"] = by_thread
        .iter()
        .map(|(name, secs)| (name.clone(), json!(per_decision(*secs))))
        .collect::<serde_json::Map<_, _>>()
        .into();
    summary["agent_cpu_us_per_decision_total"] =
        json!(per_decision(by_thread.iter().map(|(_, s)| s).sum()));
    summary["aggregator_cpu_s"] = json!(round(agg_cpu, 2));
    summary["aggregator_idle"] = json!(args.aggregator_idle);
    summary["aggregator_paused"] = json!(args.aggregator_paused);
    summary["outbox_commits"] = commits.json();
    common::emit(&summary, &run.human(stage, args.rate_limited));
    Ok(run)
}

/// `kill -<name> <pid>`.
async fn signal(pid: u32, name: &str) -> anyhow::Result<()> {
    let status = tokio::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .await
        .with_context(|| format!("run kill -{name} {pid}"))?;
    ensure!(status.success(), "kill -{name} {pid} failed");
    Ok(())
}

/// Decisions of one open-loop run: `--duration` at the rate, else `--decisions`.
fn step_count(args: &DecideArgs, rate: f64, default_secs: Option<f64>) -> usize {
    match args.duration.or(default_secs) {
        Some(secs) => (rate * secs).ceil().max(1.0) as usize,
        None => args.decisions,
    }
}

/// `decide --rate`/`--sweep`: open-loop runs on the Unix socket (module docs).
async fn open_loop(
    args: &DecideArgs,
    agg: &AggregatorProc,
    agent: &AgentProc,
) -> anyhow::Result<()> {
    let socket = agent.dir.join("data").join("local-api.sock");
    eprintln!(
        "decide: warm-up (500 decisions at 1,000/s on {})",
        socket.display()
    );
    let warm =
        tokio::task::spawn_blocking(move || run_open_loop(&socket, 1000.0, 500, 4)).await??;
    ensure!(warm.errors == 0, "warm-up failed: {:?}", warm.first_error);
    if args.sweep {
        return sweep(args, agg, agent).await;
    }
    let rate = args.rate.unwrap_or(1000.0);
    let enforce = open_loop_step(
        args,
        agg,
        agent,
        "enforce",
        rate,
        step_count(args, rate, None),
    )
    .await?;
    if args.observe {
        stage_observe(agg, agent, policy_of(args), epoch_after(args)).await?;
        let observe = open_loop_step(
            args,
            agg,
            agent,
            "observe",
            rate,
            step_count(args, rate, None),
        )
        .await?;
        let ratio = |o: f64, e: f64| if e > 0.0 { round(o / e, 3) } else { 0.0 };
        let summary = json!({
            "bench": "decide-open-loop-observe-vs-enforce",
            "target_rate": rate,
            "rate_limited": args.rate_limited,
            "p50_ratio": ratio(observe.p(0.50), enforce.p(0.50)),
            "p99_ratio": ratio(observe.p(0.99), enforce.p(0.99)),
            "p999_ratio": ratio(observe.p(0.999), enforce.p(0.999)),
        });
        let human = format!(
            "decide open-loop at {rate:.0}/s: observe / enforce in one run: p50 x{:.3} ({:.3} vs {:.3} ms), p99 x{:.3} ({:.3} vs {:.3} ms), p99.9 x{:.3}",
            ratio(observe.p(0.50), enforce.p(0.50)),
            observe.p(0.50),
            enforce.p(0.50),
            ratio(observe.p(0.99), enforce.p(0.99)),
            observe.p(0.99),
            enforce.p(0.99),
            ratio(observe.p(0.999), enforce.p(0.999)),
        );
        common::emit(&summary, &human);
    }
    Ok(())
}

/// `--sweep`: the highest rate whose p99 stays within `--target-p99-ms`.
async fn sweep(args: &DecideArgs, agg: &AggregatorProc, agent: &AgentProc) -> anyhow::Result<()> {
    let target = args.target_p99_ms;
    let mut rate = args.rate.unwrap_or(1000.0);
    let mut best: Option<(f64, f64)> = None;
    let mut failed_at: Option<f64> = None;
    for _ in 0..12 {
        let run = open_loop_step(
            args,
            agg,
            agent,
            "enforce",
            rate,
            step_count(args, rate, Some(5.0)),
        )
        .await?;
        if run.holds(target) {
            best = Some((rate, run.p(0.99)));
            rate = match failed_at {
                Some(high) => (rate + high) / 2.0,
                None => rate * 2.0,
            };
        } else {
            failed_at = Some(rate);
            rate = match best {
                Some((low, _)) => (low + rate) / 2.0,
                None => rate / 2.0,
            };
        }
        if let (Some((low, _)), Some(high)) = (best, failed_at)
            && high - low <= 0.05 * low
        {
            break;
        }
        if rate < 50.0 {
            break;
        }
    }
    let summary = json!({
        "bench": "decide-open-loop-sweep",
        "rate_limited": args.rate_limited,
        "target_p99_ms": target,
        "highest_rate_within_target": best.map(|(r, _)| round(r, 0)),
        "its_p99_ms": best.map(|(_, p)| round(p, 3)),
        "lowest_rate_over_target": failed_at.map(|r| round(r, 0)),
    });
    let human = match best {
        Some((r, p)) => format!(
            "decide sweep{}: highest rate with p99 <= {target} ms: {r:.0}/s (p99 {p:.3} ms); lowest failing step {}",
            if args.rate_limited {
                " (rate-limited rule)"
            } else {
                ""
            },
            failed_at.map_or("none".to_owned(), |f| format!("{f:.0}/s"))
        ),
        None => format!("decide sweep: no rate down to 50/s kept p99 <= {target} ms"),
    };
    common::emit(&summary, &human);
    Ok(())
}

/// The soft limit on open files of this process.
fn open_files_limit() -> anyhow::Result<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits")?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .context("no 'Max open files' in /proc/self/limits")?;
    line.split_whitespace()
        .nth(3)
        .context("malformed 'Max open files' line")?
        .parse()
        .context("'Max open files' soft limit")
}

pub async fn flood(args: FloodArgs) -> anyhow::Result<()> {
    let work = args.common.temp_dir("gait-bench-flood-")?;
    let db = Database::create(&args.common, "flood").await?;
    let (agg, agent) = start_pair(&args.common, work.path(), &db).await?;
    let result = measure_flood(&args, &agg, &agent).await;
    let logs = format!(
        "agent log:\n{}\naggregator log:\n{}",
        agent.log_tail(),
        agg.log_tail()
    );
    agent.terminate(Duration::from_secs(15)).await?;
    agg.terminate(Duration::from_secs(15)).await?;
    db.drop_database().await?;
    result.with_context(|| logs)
}

/// What one flooded server did.
struct TargetReport {
    /// The server's own connection counters after the attack (`/metrics`): evicted, refused.
    server_counters: Value,
    name: &'static str,
    before: (Probes, Probes),
    during: (Probes, Probes),
    after: (Probes, Probes),
    rss_before_kib: u64,
    rss_max_during_kib: u64,
    attack: AttackStats,
}

async fn measure_flood(
    args: &FloodArgs,
    agg: &AggregatorProc,
    agent: &AgentProc,
) -> anyhow::Result<()> {
    let (org, project, env) = TENANT;
    let admin = Work::Admin {
        addr: agg.http,
        path: format!("/v1/orgs/{org}/projects/{project}/envs/{env}/bundles/latest"),
        token: agg.token.clone(),
    };
    let decision = Work::Decide {
        addr: agent.api,
        token: agent.token(),
        body: serde_json::to_string(&common::intent("tool.read"))?,
    };
    // Check both probes work before attacking.
    admin.run().await.context("admin probe before the attack")?;
    decision
        .run()
        .await
        .context("decision probe before the attack")?;

    let mut reports = Vec::new();
    for (name, addr, pid, work) in [
        ("aggregator", agg.http, agg.pid, admin),
        ("agent", agent.api, agent.pid, decision),
    ] {
        reports.push(flood_one(args, name, addr, pid, &work).await?);
    }

    let targets: Vec<Value> = reports
        .iter()
        .map(|r| {
            json!({
                "target": r.name,
                "before": {"healthz": r.before.0.json(), "work": r.before.1.json()},
                "during": {"healthz": r.during.0.json(), "work": r.during.1.json()},
                "after": {"healthz": r.after.0.json(), "work": r.after.1.json()},
                "rss_before_kib": r.rss_before_kib,
                "rss_max_during_kib": r.rss_max_during_kib,
                "attack": r.attack.json(),
                "server_counters": r.server_counters,
            })
        })
        .collect();
    let summary = json!({
        "bench": "http-flood",
        "idle": args.idle,
        "slow_bodies": args.slow_bodies,
        "redial": args.redial,
        "hold_s": args.hold_secs,
        "targets": targets,
    });
    let human = reports
        .iter()
        .map(|r| {
            format!(
                "http-flood {} ({} idle + {} slow bodies{}): during the attack healthz {}, work {}; RSS {:.1} MB before, \
                 max {:.1} MB during; {} attack connections opened, {} closed by the server",
                r.name,
                args.idle,
                args.slow_bodies,
                if args.redial { ", re-dialled" } else { "" },
                r.during.0.human(),
                r.during.1.human(),
                r.rss_before_kib as f64 * 1024.0 / 1e6,
                r.rss_max_during_kib as f64 * 1024.0 / 1e6,
                r.attack.opened.load(Ordering::Relaxed),
                r.attack.closed_by_server.load(Ordering::Relaxed),
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    common::emit(&summary, &human);
    Ok(())
}

/// The real work probed beside `/healthz`.
enum Work {
    /// An authenticated admin API `GET`.
    Admin {
        addr: SocketAddr,
        path: String,
        token: String,
    },
    /// A decision.
    Decide {
        addr: SocketAddr,
        token: Option<String>,
        body: String,
    },
}

impl Work {
    /// The head of an authenticated request with a 2 MiB JSON body, for the slow-body attack.
    fn slow_body_head(&self) -> String {
        let (addr, path, auth) = match self {
            Work::Admin { addr, path, token } => (
                addr,
                path.trim_end_matches("/latest"),
                format!("authorization: Bearer {token}\r\n"),
            ),
            Work::Decide { addr, token, .. } => (
                addr,
                "/v1/gate/evaluate",
                token
                    .as_ref()
                    .map(|t| format!("authorization: Bearer {t}\r\n"))
                    .unwrap_or_default(),
            ),
        };
        format!(
            "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n{auth}\
             content-length: {SLOW_BODY_BYTES}\r\n\r\n"
        )
    }

    async fn run(&self) -> anyhow::Result<Duration> {
        match self {
            Work::Admin { addr, path, token } => {
                let head = format!(
                    "GET {path} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\nconnection: close\r\n\r\n"
                );
                exchange(*addr, head.as_bytes()).await
            }
            Work::Decide { addr, token, body } => {
                let auth = token
                    .as_ref()
                    .map(|t| format!("authorization: Bearer {t}\r\n"))
                    .unwrap_or_default();
                let req = format!(
                    "POST /v1/gate/evaluate HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n{auth}\
                     content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                exchange(*addr, req.as_bytes()).await
            }
        }
    }
}

/// The server's HTTP connection counters from its `/metrics` (`name` is the metric prefix's daemon), or null
/// when they cannot be read.
async fn connection_counters(addr: SocketAddr, name: &str) -> Value {
    let read = async {
        let mut stream = TcpStream::connect(addr).await?;
        let head = format!("GET /metrics HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
        stream.write_all(head.as_bytes()).await?;
        let mut text = String::new();
        stream.read_to_string(&mut text).await?;
        anyhow::Ok(text)
    };
    let Ok(Ok(text)) = tokio::time::timeout(Duration::from_secs(10), read).await else {
        return Value::Null;
    };
    let value = |metric: &str| {
        common::metric_value(&text, &format!("gait_{name}_http_connections_{metric}"))
    };
    json!({
        "accepted": value("accepted_total"),
        "evicted": value("evicted_total"),
        "refused": value("refused_total"),
    })
}

async fn healthz(addr: SocketAddr) -> anyhow::Result<Duration> {
    let head = format!("GET /healthz HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
    exchange(addr, head.as_bytes()).await
}

/// One request on a fresh connection; success is a `200` answer within 10 s.
async fn exchange(addr: SocketAddr, request: &[u8]) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await.context("connect")?;
        stream.write_all(request).await.context("send")?;
        let mut answer = Vec::new();
        stream
            .read_to_end(&mut answer)
            .await
            .context("read answer")?;
        ensure!(!answer.is_empty(), "connection closed without an answer");
        let status_line = String::from_utf8_lossy(&answer[..answer.len().min(64)])
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned();
        ensure!(
            status_line.starts_with("HTTP/1.1 200"),
            "answered {status_line:?}"
        );
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(10), attempt)
        .await
        .context("no answer within 10 s")??;
    Ok(started.elapsed())
}

/// Counters of one attack (one worker's, or the sum over workers).
#[derive(Default)]
struct AttackStats {
    opened: AtomicU64,
    /// Held connections the server closed (evicted, refused at once, or timed out).
    closed_by_server: AtomicU64,
    connect_errors: AtomicU64,
    /// Attack connections open now.
    open: AtomicU64,
}

impl AttackStats {
    fn json(&self) -> Value {
        json!({
            "open": self.open.load(Ordering::Relaxed),
            "opened": self.opened.load(Ordering::Relaxed),
            "closed_by_server": self.closed_by_server.load(Ordering::Relaxed),
            "connect_errors": self.connect_errors.load(Ordering::Relaxed),
        })
    }

    /// Overwrites these counters with a worker's report line.
    fn set_from(&self, line: &Value) {
        for (counter, key) in [
            (&self.open, "open"),
            (&self.opened, "opened"),
            (&self.closed_by_server, "closed_by_server"),
            (&self.connect_errors, "connect_errors"),
        ] {
            counter.store(line[key].as_u64().unwrap_or(0), Ordering::Relaxed);
        }
    }

    fn sum(all: &[Arc<AttackStats>]) -> AttackStats {
        let total = AttackStats::default();
        for s in all {
            for (to, from) in [
                (&total.open, &s.open),
                (&total.opened, &s.opened),
                (&total.closed_by_server, &s.closed_by_server),
                (&total.connect_errors, &s.connect_errors),
            ] {
                to.fetch_add(from.load(Ordering::Relaxed), Ordering::Relaxed);
            }
        }
        total
    }
}

/// Runs one attack process: holds the connections, prints its counters as a JSON line every 250 ms, and stops
/// when its standard input closes.
pub async fn flood_worker(args: FloodWorkerArgs) -> anyhow::Result<()> {
    let needed = (args.idle + args.slow_bodies + 64) as u64;
    let limit = open_files_limit()?;
    ensure!(
        limit >= needed,
        "flood-worker needs {needed} open files and may open {limit}"
    );
    let slow_head = Arc::new(std::env::var("GAIT_BENCH_SLOW_HEAD").unwrap_or_default());
    ensure!(
        args.slow_bodies == 0 || !slow_head.is_empty(),
        "GAIT_BENCH_SLOW_HEAD is not set"
    );
    let stats = Arc::new(AttackStats::default());
    let dials = Arc::new(Semaphore::new(args.dial_concurrency.max(1)));
    let stop = CancellationToken::new();
    let mut attackers = tokio::task::JoinSet::new();
    for i in 0..args.idle + args.slow_bodies {
        attackers.spawn(attacker(
            args.addr,
            (i >= args.idle).then(|| Arc::clone(&slow_head)),
            args.redial,
            Arc::clone(&stats),
            Arc::clone(&dials),
            stop.clone(),
        ));
    }
    let mut stdin = tokio::io::stdin();
    let mut byte = [0u8; 1];
    let mut stdout = tokio::io::stdout();
    loop {
        stdout
            .write_all(format!("{}\n", stats.json()).as_bytes())
            .await?;
        stdout.flush().await?;
        tokio::select! {
            _ = stdin.read(&mut byte) => break,
            () = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
    stop.cancel();
    while attackers.join_next().await.is_some() {}
    Ok(())
}

/// One attack connection: connect, optionally start an unfinished 2 MiB body, then hold it until the server
/// closes it (and dial again with `redial`) or the attack stops.
async fn attacker(
    addr: SocketAddr,
    slow_body: Option<Arc<String>>,
    redial: bool,
    stats: Arc<AttackStats>,
    dials: Arc<Semaphore>,
    stop: CancellationToken,
) {
    loop {
        let stream = {
            let Ok(_dialling) = dials.acquire().await else {
                return;
            };
            tokio::select! {
                () = stop.cancelled() => return,
                s = TcpStream::connect(addr) => s,
            }
        };
        let Ok(mut stream) = stream else {
            stats.connect_errors.fetch_add(1, Ordering::Relaxed);
            // Out of ephemeral ports or file handles: back off instead of spinning.
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(200)) => continue,
            }
        };
        stats.opened.fetch_add(1, Ordering::Relaxed);
        stats.open.fetch_add(1, Ordering::Relaxed);
        if let Some(head) = &slow_body {
            let send = async {
                stream.write_all(head.as_bytes()).await?;
                stream.write_all(&vec![b' '; SLOW_BODY_BYTES - 1]).await
            };
            tokio::select! {
                () = stop.cancelled() => {
                    stats.open.fetch_sub(1, Ordering::Relaxed);
                    return;
                }
                _ = send => {}
            }
        }
        let mut sink = [0u8; 4096];
        let closed = tokio::select! {
            () = stop.cancelled() => false,
            _ = async { while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {} } => true,
        };
        stats.open.fetch_sub(1, Ordering::Relaxed);
        if !closed {
            return;
        }
        stats.closed_by_server.fetch_add(1, Ordering::Relaxed);
        if !redial {
            return;
        }
    }
}

/// A round of probes: `/healthz` and the real work, each on a fresh connection.
async fn probe_round(addr: SocketAddr, work: &Work, rounds: usize) -> (Probes, Probes) {
    let mut health = Probes::default();
    let mut real = Probes::default();
    for _ in 0..rounds {
        health.record(healthz(addr).await);
        real.record(work.run().await);
    }
    (health, real)
}

async fn flood_one(
    args: &FloodArgs,
    name: &'static str,
    addr: SocketAddr,
    pid: u32,
    work: &Work,
) -> anyhow::Result<TargetReport> {
    eprintln!("http-flood {name}: baseline probes");
    let before = probe_round(addr, work, 20).await;
    let rss_before_kib = common::proc_status_kib(pid, "VmRSS")?;

    eprintln!(
        "http-flood {name}: opening {} idle connections and {} slow bodies",
        args.idle, args.slow_bodies
    );
    // The attack is spread over worker processes (the open-files limit is per process): slow bodies first,
    // then idle connections, at most CONNECTIONS_PER_WORKER each.
    let mut workers = Vec::new();
    let mut worker_stats = Vec::new();
    let (mut idle_left, mut slow_left) = (args.idle, args.slow_bodies);
    let workers_needed = (args.idle + args.slow_bodies).div_ceil(CONNECTIONS_PER_WORKER);
    while idle_left + slow_left > 0 {
        let slow = slow_left.min(CONNECTIONS_PER_WORKER);
        let idle = idle_left.min(CONNECTIONS_PER_WORKER - slow);
        slow_left -= slow;
        idle_left -= idle;
        let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
        cmd.arg("flood-worker")
            .arg("--addr")
            .arg(addr.to_string())
            .arg("--idle")
            .arg(idle.to_string())
            .arg("--slow-bodies")
            .arg(slow.to_string())
            .arg("--dial-concurrency")
            .arg((args.dial_concurrency / workers_needed).max(1).to_string())
            .env("GAIT_BENCH_SLOW_HEAD", work.slow_body_head())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true);
        if args.redial {
            cmd.arg("--redial");
        }
        let mut child = cmd.spawn().context("spawn a flood-worker")?;
        let stdout = child.stdout.take().context("flood-worker stdout")?;
        let stats = Arc::new(AttackStats::default());
        let reported = Arc::clone(&stats);
        tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt as _;
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    reported.set_from(&v);
                }
            }
        });
        worker_stats.push(stats);
        workers.push(child);
    }
    // Probe while the attack is dialled and then held; memory is read between probe rounds.
    let mut during = (Probes::default(), Probes::default());
    let mut rss_max = rss_before_kib;
    let until = Instant::now() + Duration::from_secs(args.hold_secs);
    while Instant::now() < until {
        let (h, w) = probe_round(addr, work, 1).await;
        during.0.ok.extend(h.ok);
        during.0.failed += h.failed;
        during.0.first_error = during.0.first_error.or(h.first_error);
        during.1.ok.extend(w.ok);
        during.1.failed += w.failed;
        during.1.first_error = during.1.first_error.or(w.first_error);
        rss_max = rss_max.max(common::proc_status_kib(pid, "VmRSS")?);
        let stats = AttackStats::sum(&worker_stats);
        eprintln!(
            "http-flood {name}: {} attack connections open, {} opened, {} closed by the server; probes {} ok / {} failed",
            stats.open.load(Ordering::Relaxed),
            stats.opened.load(Ordering::Relaxed),
            stats.closed_by_server.load(Ordering::Relaxed),
            during.0.ok.len() + during.1.ok.len(),
            during.0.failed + during.1.failed,
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let stats = AttackStats::sum(&worker_stats);
    // Closing a worker's stdin stops it; it closes its connections as it exits.
    for mut worker in workers {
        drop(worker.stdin.take());
        if tokio::time::timeout(Duration::from_secs(60), worker.wait())
            .await
            .is_err()
        {
            let _ = worker.kill().await;
        }
    }
    let after = probe_round(addr, work, 20).await;
    let server_counters = connection_counters(addr, name).await;
    Ok(TargetReport {
        name,
        before,
        during,
        after,
        rss_before_kib,
        rss_max_during_kib: rss_max,
        attack: stats,
        server_counters,
    })
}
