//! `idle`: many idle agents on one aggregator. Simulated agents (distinct certificates, a handful of shared
//! client endpoints) connect, say `Hello` and park a `PollBundle` long-poll, like an idle `gait-agent`. The
//! aggregator child's VmRSS before and after gives the memory per idle connection. Then the aggregator is
//! restarted (SIGTERM, start again on the same ports) and every agent reconnects the way the real agent does:
//! the redial window the shutting-down aggregator announced (`gait_wire::shutdown`), then full-jitter
//! exponential backoff (`gait_agent::backoff`, base 1 s, cap 30 s) and the agent's handshake deadline
//! (`gait_agent::daemon::CONNECT_TIMEOUT`). The report gives the distribution of the time from "new aggregator serving" to each agent's `Welcome`.
//! `--stall-at-secs`/`--stall-secs` stop the new aggregator for a while in the middle of that (SIGSTOP, SIGCONT),
//! to see whether the fleet comes back at speed after a hiccup or the overload feeds itself.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use gait_agent::backoff::{Backoff, RedialPlan};
use gait_wire::ServerMsgV2;
use serde_json::json;
use tokio::sync::{Semaphore, mpsc};

use crate::common::{self, AggregatorProc, CommonArgs, Database, Percentiles, Scope, round};

/// Goals of the issue.
const GOAL_KIB_PER_AGENT: f64 = 100.0;
const GOAL_RECONNECT: Duration = Duration::from_secs(10);
/// Extra time allowed for a long-poll reply beyond its wait (as the real agent).
const POLL_GRACE: Duration = Duration::from_secs(10);

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Simulated idle agents, each with its own certificate and connection.
    #[arg(long, default_value_t = 10_000)]
    pub agents: usize,
    /// QUIC client endpoints (UDP sockets) the agents share.
    #[arg(long, default_value_t = 32)]
    pub endpoints: usize,
    /// Handshakes in flight while the fleet first connects (reconnects after the restart are not limited).
    #[arg(long, default_value_t = 128)]
    pub connect_concurrency: usize,
    /// Long-poll wait the agents ask for, in milliseconds (the real agent's default).
    #[arg(long, default_value_t = 25_000)]
    pub poll_wait_ms: u32,
    /// Seconds to let the aggregator settle before each RSS reading.
    #[arg(long, default_value_t = 5)]
    pub settle_secs: u64,
    /// Seconds over which the idle fleet's upkeep (CPU of the aggregator and of the bench with every agent
    /// connected and long-polling) is measured before the restart; at least one long-poll period to be fair.
    #[arg(long, default_value_t = 30)]
    pub upkeep_secs: u64,
    /// QUIC keep-alive interval of the simulated agents, in milliseconds (default: the real agent's), to compare
    /// what keep-alives cost the aggregator.
    #[arg(long)]
    pub keep_alive_ms: Option<u64>,
    /// Give up waiting for reconnects after this many seconds.
    #[arg(long, default_value_t = 120)]
    pub reconnect_timeout_secs: u64,
    /// Fault injection: this many seconds after the restarted aggregator serves, stop it (SIGSTOP) for
    /// `--stall-secs`, as a noisy neighbour or a paused VM would, then let it go on (SIGCONT): does the fleet come
    /// back at speed afterwards, or does the overload sustain itself?
    #[arg(long, requires = "stall_secs")]
    pub stall_at_secs: Option<f64>,
    /// Length of the stall of `--stall-at-secs`, in seconds.
    #[arg(long, requires = "stall_at_secs")]
    pub stall_secs: Option<f64>,
}

/// What agents report to the bench.
enum Event {
    /// `Welcome` received on connection number `generation` (1 = first) after `attempts` dials, of which
    /// `failed` failed.
    Up {
        agent: usize,
        generation: u32,
        attempts: u32,
        failed: FailedDials,
        at: Instant,
    },
    /// The connection was found dead at `at`.
    Down { agent: usize, at: Instant },
}

/// Per-agent facts gathered around the restart.
#[derive(Clone, Copy, Default)]
struct Track {
    down: Option<Instant>,
    up_again: Option<Instant>,
    attempts: u32,
    failed: FailedDials,
}

/// How one agent's failed dials of one reconnect failed.
#[derive(Clone, Copy, Default)]
struct FailedDials {
    /// Refused at once (`CONNECTION_REFUSED`: an aggregator's admission control, or one shutting down).
    refused: u32,
    /// Unanswered until the agent's connect or `Hello` timeout.
    timed_out: u32,
    /// Anything else (a reset, a handshake error, an error reply to `Hello`).
    other: u32,
}

#[derive(PartialEq)]
enum FailedKind {
    Refused,
    TimedOut,
    Other,
}

impl FailedDials {
    /// Counts one failed dial; how it failed.
    fn count(&mut self, error: &anyhow::Error) -> FailedKind {
        if common::refused(error) {
            self.refused += 1;
            FailedKind::Refused
        } else if error.is::<tokio::time::error::Elapsed>() {
            self.timed_out += 1;
            FailedKind::TimedOut
        } else {
            self.other += 1;
            FailedKind::Other
        }
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    ensure!(args.agents > 0, "--agents must be positive");
    let scope = Scope::from_parts("bench", "idle", "prod")?;
    let work_dir = args.common.temp_dir("gait-bench-idle-")?;
    let cert_dir = args.common.cert_temp_dir("gait-bench-certs-")?;
    let data_dir = work_dir.path().join("aggregator");
    let pki_dir = common::init_pki(&data_dir)?;
    let creds = common::issue_fleet(&pki_dir, cert_dir.path(), &scope, "idle", args.agents)?;
    let keep_alive = args
        .keep_alive_ms
        .map_or(common::KEEP_ALIVE, Duration::from_millis);
    let configs = creds
        .iter()
        .map(|c| c.client_config_with(keep_alive))
        .collect::<anyhow::Result<Vec<_>>>()?;
    drop(creds);

    let db = Database::create(&args.common, "idle").await?;
    let agg = AggregatorProc::start_ephemeral(&args.common, &data_dir, &db).await?;
    let (quic, http) = (agg.quic, agg.http);
    let result = measure(&args, agg, configs, &data_dir, &db, quic, http).await;
    db.drop_database().await?;
    result
}

async fn measure(
    args: &Args,
    agg: AggregatorProc,
    configs: Vec<quinn::ClientConfig>,
    data_dir: &std::path::Path,
    db: &Database,
    quic: SocketAddr,
    http: SocketAddr,
) -> anyhow::Result<()> {
    tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
    let rss_before = agg.rss_kib()?;
    let bench_rss_before = common::proc_status_kib(std::process::id(), "VmRSS")?;

    // Connect the fleet.
    let endpoints = common::client_endpoints(args.endpoints)?;
    let hello = Arc::new(common::hello_frame()?);
    let poll = Arc::new(common::poll_frame(0, args.poll_wait_ms)?);
    let gate = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let other_errors = OtherErrors::default();
    let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
    let connect_started = Instant::now();
    let (agg_cpu0, bench_cpu0) = (agg.cpu_seconds()?, common::cpu_seconds_of("self")?);
    let udp_drops0 = common::udp_rcvbuf_errors()?;
    let threads0 = common::thread_cpu(agg.pid)?;
    let mut agents = tokio::task::JoinSet::new();
    for (i, config) in configs.into_iter().enumerate() {
        let sim = SimAgent {
            index: i,
            endpoint: endpoints[i % endpoints.len()].clone(),
            config,
            addr: quic,
            hello: hello.clone(),
            poll: poll.clone(),
            poll_deadline: Duration::from_millis(u64::from(args.poll_wait_ms)) + POLL_GRACE,
            gate: gate.clone(),
            tx: tx.clone(),
            other_errors: other_errors.clone(),
        };
        agents.spawn(sim.run());
    }
    drop(tx);
    let mut connected = 0;
    while connected < args.agents {
        match tokio::time::timeout(Duration::from_secs(120), rx.recv()).await {
            Ok(Some(Event::Up { .. })) => connected += 1,
            Ok(Some(Event::Down { agent, .. })) => bail!(
                "agent {agent} lost its connection while the fleet connected\n{}",
                agg.log_tail()
            ),
            Ok(None) => bail!("agents stopped"),
            Err(_) => bail!(
                "only {connected} of {} agents connected after 120 s\n{}",
                args.agents,
                agg.log_tail()
            ),
        }
    }
    let connect_time = connect_started.elapsed();
    let connect_cpu_ms = json!({
        "aggregator_per_agent": round((agg.cpu_seconds()? - agg_cpu0) * 1e3 / args.agents as f64, 3),
        "bench_per_agent": round((common::cpu_seconds_of("self")? - bench_cpu0) * 1e3 / args.agents as f64, 3),
    });
    let connect_udp_drops = common::udp_rcvbuf_errors()? - udp_drops0;
    let connect_threads = common::thread_cpu_delta(&threads0, &common::thread_cpu(agg.pid)?);
    eprintln!(
        "{} agents connected in {:.1} s",
        args.agents,
        connect_time.as_secs_f64()
    );
    let api = agg.api();
    wait_for_polls(&api, args.agents).await?;
    tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
    let rss_after = agg.rss_kib()?;
    let upkeep = measure_upkeep(&agg, args.agents, Duration::from_secs(args.upkeep_secs)).await?;
    eprintln!("idle upkeep: {upkeep}");
    // The same fleet a long-poll period or more later: memory that grows while nothing happens would show here.
    let rss_after_upkeep = agg.rss_kib()?;
    let hwm = agg.hwm_kib()?;
    let open = api
        .metric(gait_aggregator::metrics::CONNECTIONS_OPEN)
        .await?;
    let bench_rss = common::proc_status_kib(std::process::id(), "VmRSS")?;
    // The handshake rate the aggregator measured while the fleet connected: it sizes the redial window it
    // announces when it stops (0: not measured, the configured rate is used).
    let measured_capacity = api
        .metric(gait_aggregator::metrics::HANDSHAKE_CAPACITY)
        .await?;
    let per_agent_kib = rss_after.saturating_sub(rss_before) as f64 / args.agents as f64;
    eprintln!(
        "aggregator VmRSS {rss_before} KiB idle -> {rss_after} KiB with {open} connections = {per_agent_kib:.1} KiB per agent \
         (bench process {bench_rss_before} -> {bench_rss} KiB)"
    );

    // Restart on the same ports; agents find out and come back with jittered backoff.
    let udp_drops1 = common::udp_rcvbuf_errors()?;
    let client_ports: Vec<u16> = endpoints
        .iter()
        .filter_map(|e| e.local_addr().ok())
        .map(|a| a.port())
        .collect();
    let ports_before = common::udp_drops_by_port()?;
    let client_drops = |m: &std::collections::HashMap<u16, u64>| {
        client_ports.iter().filter_map(|p| m.get(p)).sum::<u64>()
    };
    let connect_drops_server = ports_before.get(&quic.port()).copied().unwrap_or(0);
    let term_at = Instant::now();
    let bench_cpu_term = common::cpu_seconds_of("self")?;
    let shutdown = agg.terminate(Duration::from_secs(30)).await?;
    let exited_at = Instant::now();
    let agg = start_again(&args.common, data_dir, db, quic, http).await?;
    let ready_at = Instant::now();
    eprintln!(
        "aggregator stopped in {:.2} s and serving again {:.2} s after exit; waiting for reconnects",
        shutdown.as_secs_f64(),
        (ready_at - exited_at).as_secs_f64()
    );
    if let (Some(at), Some(length)) = (args.stall_at_secs, args.stall_secs) {
        let pid = agg.pid;
        let (at, length) = (secs("--stall-at-secs", at)?, secs("--stall-secs", length)?);
        #[allow(clippy::disallowed_methods)]
        // the harness's fault injector: runs once, alone, to its end
        tokio::spawn(async move {
            tokio::time::sleep_until((ready_at + at).into()).await;
            eprintln!(
                "stalling the aggregator (SIGSTOP) for {:.1} s",
                length.as_secs_f64()
            );
            let stopped = common::signal(pid, "STOP").await;
            tokio::time::sleep(length).await;
            if let Err(e) = common::signal(pid, "CONT").await.and(stopped) {
                eprintln!("stall: {e:#}");
            }
        });
    }
    let mut track = vec![Track::default(); args.agents];
    let mut back = 0;
    let deadline = ready_at + Duration::from_secs(args.reconnect_timeout_secs);
    while back < args.agents {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(Event::Down { agent, at })) => {
                track[agent].down.get_or_insert(at);
            }
            Ok(Some(Event::Up {
                agent,
                generation,
                attempts,
                failed,
                at,
            })) if generation >= 2 => {
                if track[agent].up_again.is_none() {
                    track[agent].up_again = Some(at);
                    track[agent].attempts = attempts;
                    track[agent].failed = failed;
                    back += 1;
                }
            }
            Ok(Some(Event::Up { .. })) => {}
            Ok(None) => bail!("agents stopped"),
            Err(_) => break,
        }
    }
    let all_back = Instant::now();
    // CPU of the whole reconnect: the new aggregator process since its start, the bench since SIGTERM.
    let reconnect_cpu_ms = json!({
        "aggregator_per_agent": round(agg.cpu_seconds()? * 1e3 / args.agents as f64, 3),
        "bench_per_agent": round((common::cpu_seconds_of("self")? - bench_cpu_term) * 1e3 / args.agents as f64, 3),
    });
    let ticket_metrics = agg.api().metrics().await?;
    let admission = json!({
        "limit_in_flight": gait_aggregator::ingest::admission::DEFAULT_MAX_HANDSHAKES_IN_FLIGHT,
        "capacity_measured_before_restart_per_s": measured_capacity,
        "refused": common::metric_value(
            &ticket_metrics,
            &format!("{}{{stage=\"admission\"}}", gait_aggregator::metrics::CONNECTIONS_REFUSED),
        ) as u64,
        "repeats_refused": common::metric_value(
            &ticket_metrics,
            &format!("{}{{stage=\"repeat\"}}", gait_aggregator::metrics::CONNECTIONS_REFUSED),
        ) as u64,
        "handshakes_abandoned_or_failed": common::metric_value(
            &ticket_metrics,
            &format!("{}{{stage=\"handshake\"}}", gait_aggregator::metrics::CONNECTIONS_REFUSED),
        ) as u64,
        "stall": args.stall_at_secs.zip(args.stall_secs).map(|(at, secs)| json!({ "at_secs": at, "secs": secs })),
        "retries": common::metric_value(&ticket_metrics, gait_aggregator::metrics::HANDSHAKE_RETRIES) as u64,
        "agents_refused_at_least_once": track.iter().filter(|t| t.failed.refused > 0).count(),
        "refused_dials_seen_by_agents": track.iter().map(|t| u64::from(t.failed.refused)).sum::<u64>(),
    });
    let ticket = |outcome: &str| {
        common::metric_value(
            &ticket_metrics,
            &format!(
                "{}{{outcome=\"{outcome}\"}}",
                gait_aggregator::metrics::TLS_SESSION_TICKETS
            ),
        ) as u64
    };
    let tickets = json!({ "resumed": ticket("resumed"), "refused": ticket("refused"), "issued": ticket("issued") });
    let restart_udp_drops = common::udp_rcvbuf_errors()? - udp_drops1;
    let ports_after = common::udp_drops_by_port()?;
    let restart_drops_server = ports_after.get(&quic.port()).copied().unwrap_or(0);
    let restart_drops_clients =
        client_drops(&ports_after).saturating_sub(client_drops(&ports_before));
    let after_loss: Vec<Duration> = track
        .iter()
        .filter_map(|t| Some(t.up_again?.saturating_duration_since(t.down?)))
        .collect();
    let late_detection = track
        .iter()
        .filter(|t| {
            t.down
                .is_some_and(|d| d.saturating_duration_since(term_at) > Duration::from_secs(5))
        })
        .count();
    let pl = Percentiles::of(&after_loss);
    let reconnect_wall = all_back.saturating_duration_since(ready_at);
    let up_times: Vec<Instant> = track.iter().filter_map(|t| t.up_again).collect();
    let from_ready: Vec<Duration> = up_times
        .iter()
        .map(|t| t.saturating_duration_since(ready_at))
        .collect();
    let from_term: Vec<Duration> = up_times
        .iter()
        .map(|t| t.saturating_duration_since(term_at))
        .collect();
    let detect: Vec<Duration> = track
        .iter()
        .filter_map(|t| t.down)
        .map(|t| t.saturating_duration_since(term_at))
        .collect();
    let attempts: Vec<Duration> = track
        .iter()
        .filter(|t| t.up_again.is_some())
        .map(|t| Duration::from_secs(u64::from(t.attempts)))
        .collect();
    let histogram = per_second(&from_ready);
    let pr = Percentiles::of(&from_ready);
    let pt = Percentiles::of(&from_term);
    let pd = Percentiles::of(&detect);
    let pa = Percentiles::of(&attempts);
    let within_goal = from_ready.iter().filter(|d| **d <= GOAL_RECONNECT).count();

    // Memory again once the fleet is back (fresh process, same load).
    let mut rss_restarted = None;
    if back == args.agents {
        let api = agg.api();
        if wait_for_polls(&api, args.agents).await.is_ok() {
            tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
            rss_restarted = Some(agg.rss_kib()?);
        }
    }
    agents.abort_all();
    for ep in &endpoints {
        ep.close(0u32.into(), b"bench done");
    }
    agg.terminate(Duration::from_secs(30)).await?;

    let mem_met = per_agent_kib <= GOAL_KIB_PER_AGENT;
    let reconnect_met = back == args.agents && pr.max <= GOAL_RECONNECT;
    let summary = json!({
        "bench": "idle",
        "backend": db.backend(),
        "agents": args.agents,
        "endpoints": args.endpoints,
        "connect_s": round(connect_time.as_secs_f64(), 2),
        "connect_cpu_ms": connect_cpu_ms,
        "connect_udp_rcvbuf_drops": connect_udp_drops,
        "connect_udp_drops_at": { "aggregator_socket": connect_drops_server, "agent_sockets": client_drops(&ports_before) },
    "keep_alive_ms": args.keep_alive_ms.unwrap_or(common::KEEP_ALIVE.as_millis() as u64),
        "idle_upkeep": upkeep,
        "connect_aggregator_cpu_s_by_thread": connect_threads.iter().map(|(n, s)| json!([n, s])).collect::<Vec<_>>(),
        "aggregator_rss_kib": { "before": rss_before, "after": rss_after, "after_upkeep_window": rss_after_upkeep, "peak": hwm, "after_restart_and_reconnect": rss_restarted },
        "kib_per_idle_agent": round(per_agent_kib, 1),
        "kib_per_idle_agent_after_upkeep_window": round(rss_after_upkeep.saturating_sub(rss_before) as f64 / args.agents as f64, 1),
        "goal_kib_per_idle_agent": GOAL_KIB_PER_AGENT,
        "memory_goal_met": mem_met,
        "bench_rss_kib": bench_rss,
        "restart": {
            "shutdown_s": round(shutdown.as_secs_f64(), 3),
            "start_s": round((ready_at - exited_at).as_secs_f64(), 3),
            "reconnected": back,
            "reconnected_within_goal": within_goal,
            "all_back_after_ready_s": round(reconnect_wall.as_secs_f64(), 3),
            "from_ready_ms": pr.json_ms(),
            "from_sigterm_ms": pt.json_ms(),
            "loss_detected_after_sigterm_ms": pd.json_ms(),
            "loss_detected_later_than_5s": late_detection,
            "up_after_own_loss_detection_ms": pl.json_ms(),
            "udp_rcvbuf_drops": restart_udp_drops,
            "udp_drops_at": { "new_aggregator_socket": restart_drops_server, "agent_sockets": restart_drops_clients },
            "dial_attempts": { "p50": pa.p50.as_secs(), "p99": pa.p99.as_secs(), "max": pa.max.as_secs() },
            "agents_by_dials": agents_by_dials(&track),
            "failed_dials": {
                "refused": track.iter().map(|t| u64::from(t.failed.refused)).sum::<u64>(),
                "timed_out": track.iter().map(|t| u64::from(t.failed.timed_out)).sum::<u64>(),
                "other": track.iter().map(|t| u64::from(t.failed.other)).sum::<u64>(),
                "other_errors": other_errors.list(),
            },
            "reconnects_per_second_after_ready": histogram,
            "cpu_ms": reconnect_cpu_ms,
            "tls_session_tickets": tickets,
            "admission": admission,
        },
        "goal_reconnect_s": GOAL_RECONNECT.as_secs(),
        "reconnect_goal_met": reconnect_met,
    });
    let human = format!(
        "idle: {} agents, aggregator RSS {} -> {} KiB = {:.1} KiB per idle agent (goal <= {GOAL_KIB_PER_AGENT}: {}); \
         restart: shutdown {:.2} s, {back}/{} back, from serving-again {} (goal all <= {} s: {}), from SIGTERM {}; \
         loss detected {} ({late_detection} later than 5 s); up again after own detection {}; \
         dials per agent p50 {} max {} (agents by dials {}; failed dials {}); {restart_udp_drops} UDP datagrams dropped (full receive buffers; \
         {restart_drops_server} at the new aggregator socket, {restart_drops_clients} at agent sockets); \
         reconnects per second {:?}; reconnect CPU per agent {} (connect: {}); session tickets {}; admission {}",
        args.agents,
        rss_before,
        rss_after,
        per_agent_kib,
        if mem_met { "met" } else { "MISSED" },
        shutdown.as_secs_f64(),
        args.agents,
        pr.human_ms(),
        GOAL_RECONNECT.as_secs(),
        if reconnect_met { "met" } else { "MISSED" },
        pt.human_ms(),
        pd.human_ms(),
        pl.human_ms(),
        pa.p50.as_secs(),
        pa.max.as_secs(),
        summary["restart"]["agents_by_dials"],
        summary["restart"]["failed_dials"],
        histogram,
        summary["restart"]["cpu_ms"],
        summary["connect_cpu_ms"],
        summary["restart"]["tls_session_tickets"],
        summary["restart"]["admission"],
    );
    common::emit(&summary, &human);
    Ok(())
}

/// Start the aggregator on the same addresses, retrying while the old sockets are released.
pub(crate) async fn start_again(
    common: &CommonArgs,
    data_dir: &std::path::Path,
    db: &Database,
    quic: SocketAddr,
    http: SocketAddr,
) -> anyhow::Result<AggregatorProc> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match AggregatorProc::start(common, data_dir, db, quic, http).await {
            Ok(a) => return Ok(a),
            Err(e) if Instant::now() < deadline => {
                eprintln!(
                    "restart attempt failed, retrying: {}",
                    e.to_string().lines().next().unwrap_or_default()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Wait until the aggregator holds a long-poll for every agent.
async fn wait_for_polls(api: &common::Api, agents: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let waiting = api
            .metric(gait_aggregator::metrics::LONG_POLLS_WAITING)
            .await?;
        if waiting as usize >= agents {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "only {waiting} of {agents} long-polls parked after 120 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// CPU the idle fleet costs over `window`: the aggregator's as a share of one core (and by thread) and in
/// microseconds per agent per second, and the bench's (its agents' keep-alives and long-polls) beside it.
async fn measure_upkeep(
    agg: &AggregatorProc,
    agents: usize,
    window: Duration,
) -> anyhow::Result<serde_json::Value> {
    let threads0 = common::thread_cpu(agg.pid)?;
    let (agg0, bench0) = (agg.cpu_seconds()?, common::cpu_seconds_of("self")?);
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let secs = started.elapsed().as_secs_f64();
    let agg_share = (agg.cpu_seconds()? - agg0) / secs;
    let bench_share = (common::cpu_seconds_of("self")? - bench0) / secs;
    let threads = common::thread_cpu_delta(&threads0, &common::thread_cpu(agg.pid)?);
    Ok(json!({
        "secs": round(secs, 1),
        "aggregator_core_share": round(agg_share, 3),
        "aggregator_us_per_agent_second": round(agg_share * 1e6 / agents as f64, 2),
        "aggregator_core_share_by_thread": threads
            .iter()
            .map(|(n, s)| json!([n, round(s / secs, 3)]))
            .collect::<Vec<_>>(),
        "bench_core_share": round(bench_share, 3),
    }))
}

/// How many agents needed each number of dials to come back (`{"1": 48000, "2": 1900, ...}`).
fn agents_by_dials(track: &[Track]) -> serde_json::Value {
    let mut by = std::collections::BTreeMap::<u32, usize>::new();
    for t in track.iter().filter(|t| t.up_again.is_some()) {
        *by.entry(t.attempts).or_default() += 1;
    }
    by.into_iter()
        .map(|(dials, agents)| (dials.to_string(), json!(agents)))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// A non-negative, finite number of seconds from the command line.
fn secs(flag: &str, value: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value)
        .map_err(|_| anyhow::anyhow!("{flag} {value}: give a number of seconds, 0 or more"))
}

/// Counts per whole second.
fn per_second(sample: &[Duration]) -> Vec<usize> {
    let Some(max) = sample.iter().max() else {
        return Vec::new();
    };
    let mut buckets = vec![0; max.as_secs() as usize + 1];
    for d in sample {
        buckets[d.as_secs() as usize] += 1;
    }
    buckets
}

/// One simulated idle agent.
struct SimAgent {
    index: usize,
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
    addr: SocketAddr,
    hello: Arc<Vec<u8>>,
    poll: Arc<Vec<u8>>,
    poll_deadline: Duration,
    gate: Arc<Semaphore>,
    tx: mpsc::UnboundedSender<Event>,
    /// The first few distinct errors of dials counted as `other` ([`FailedDials`]), for the report.
    other_errors: OtherErrors,
}

/// Distinct messages of dials that failed neither refused nor timed out, at most [`OtherErrors::KEPT`].
#[derive(Clone, Default)]
struct OtherErrors(Arc<std::sync::Mutex<Vec<String>>>);

impl OtherErrors {
    const KEPT: usize = 5;

    fn note(&self, error: &anyhow::Error) {
        let text = format!("{error:#}");
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() < Self::KEPT && !kept.contains(&text) {
            kept.push(text);
        }
    }

    fn list(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl SimAgent {
    /// Connect, hello, long-poll until the connection dies; redial as the real agent does (the announced
    /// window's [`RedialPlan`], then the backoff).
    async fn run(self) -> anyhow::Result<()> {
        let mut backoff = Backoff::default();
        let mut plan: Option<RedialPlan> = None;
        let mut generation = 0u32;
        loop {
            let mut attempts = 0u32;
            let mut failed = FailedDials::default();
            let conn = loop {
                attempts += 1;
                // Only the very first connect is rate-limited (a fleet is not switched on in one instant).
                let permit = if generation == 0 {
                    Some(self.gate.clone().acquire_owned().await?)
                } else {
                    None
                };
                let dialled = common::dial_like_agent(
                    &self.endpoint,
                    self.config.clone(),
                    self.addr,
                    &self.hello,
                )
                .await;
                drop(permit);
                match dialled {
                    Ok((conn, _)) => break conn,
                    Err(e) => {
                        if failed.count(&e) == FailedKind::Other {
                            self.other_errors.note(&e);
                        }
                        tokio::time::sleep(backoff.after(plan.as_mut())).await
                    }
                }
            };
            generation += 1;
            let up = Instant::now();
            if self
                .tx
                .send(Event::Up {
                    agent: self.index,
                    generation,
                    attempts,
                    failed,
                    at: up,
                })
                .is_err()
            {
                return Ok(());
            }
            self.idle(&conn).await;
            if self
                .tx
                .send(Event::Down {
                    agent: self.index,
                    at: Instant::now(),
                })
                .is_err()
            {
                return Ok(());
            }
            if up.elapsed() >= gait_agent::daemon::STABLE_CONNECTION {
                backoff.reset();
            }
            // As the real agent: a window announced by a shutting-down aggregator, else the backoff.
            plan = gait_agent::daemon::announced_redial_window(&conn).map(RedialPlan::new);
            tokio::time::sleep(backoff.after(plan.as_mut())).await;
        }
    }

    /// Keep a long-poll parked until the connection is gone.
    async fn idle(&self, conn: &quinn::Connection) {
        loop {
            match tokio::time::timeout(self.poll_deadline, common::request(conn, &self.poll)).await
            {
                Ok(Ok(ServerMsgV2::NoNewBundle { .. } | ServerMsgV2::Bundle(_))) => {}
                Ok(Ok(_)) => {
                    // An error reply (e.g. "shutting down"): the connection usually closes right after.
                    tokio::select! {
                        _ = conn.closed() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
                Ok(Err(_)) | Err(_) => {
                    if conn.close_reason().is_some() {
                        return;
                    }
                    conn.close(0u32.into(), b"exchange failed");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_second_buckets_count_every_sample() {
        let s = [
            Duration::from_millis(100),
            Duration::from_millis(900),
            Duration::from_millis(2500),
        ];
        assert_eq!(per_second(&s), vec![2, 0, 1]);
        assert!(per_second(&[]).is_empty());
    }

    #[test]
    fn goals_are_the_issue_s() {
        assert_eq!(GOAL_RECONNECT, Duration::from_secs(10));
        assert!((GOAL_KIB_PER_AGENT - 100.0).abs() < f64::EPSILON);
    }
}
