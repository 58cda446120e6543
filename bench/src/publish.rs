//! `publish-latency`: how long a publish takes to reach a connected fleet. Simulated agents (distinct
//! certificates, one shared scope) hold a `PollBundle` long-poll on a real `gait-aggregator` child process;
//! once every long-poll is parked (the aggregator's `long_polls_waiting` gauge says so) a bundle is published
//! through the HTTP API, and each agent verifies the offered bundle with `gait_bundle::verify` against the
//! registry public key before it records its receive time. Latency = verified time - time the POST was sent.
#![allow(clippy::disallowed_methods)] // benchmark harness: spawns load generators freely and reads the clock

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use gait_bundle::TrustRoot;
use gait_wire::ServerMsgV2;
use serde_json::json;
use tokio::sync::{Semaphore, mpsc};

use crate::common::{self, AggregatorProc, CommonArgs, Database, Percentiles, Scope, ms, round};

/// Goal of the issue for the p99 publish-to-verified latency.
const GOAL_P99: Duration = Duration::from_secs(2);

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Simulated agents, each with its own certificate and connection.
    #[arg(long, default_value_t = 1000)]
    pub agents: usize,
    /// Publishes (each one a new epoch that every agent must receive and verify).
    #[arg(long, default_value_t = 3)]
    pub rounds: u64,
    /// Long-poll wait the agents ask for, in milliseconds.
    #[arg(long, default_value_t = 60_000)]
    pub poll_wait_ms: u32,
    /// QUIC client endpoints (UDP sockets) the agents share.
    #[arg(long, default_value_t = 8)]
    pub endpoints: usize,
    /// Handshakes in flight while the fleet connects.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// Aggregator replicas on the same PostgreSQL database (needs --database-url when above 1). Agents are
    /// spread over them round-robin and every publish goes through the first, so the report compares, in the
    /// same run, agents on the publishing replica with agents reached through the database notification.
    #[arg(long, default_value_t = 1)]
    pub replicas: usize,
}

/// One agent verified one bundle.
pub(crate) struct Receipt {
    pub(crate) epoch: u64,
    pub(crate) at: Instant,
    pub(crate) verify: Duration,
}

/// Connects one simulated agent per client config (at most `concurrency` handshakes in flight, spread over
/// `endpoints` UDP sockets) and sends each one's `Hello`; returns the connections and how long it took.
pub(crate) async fn connect(
    endpoints: usize,
    concurrency: usize,
    addr: std::net::SocketAddr,
    configs: Vec<quinn::ClientConfig>,
) -> anyhow::Result<(Vec<quinn::Connection>, Duration)> {
    let agents = configs.len();
    let endpoints = common::client_endpoints(endpoints)?;
    let hello = Arc::new(common::hello_frame()?);
    let gate = Arc::new(Semaphore::new(concurrency.max(1)));
    let connect_started = Instant::now();
    let mut connecting = tokio::task::JoinSet::new();
    for (i, config) in configs.into_iter().enumerate() {
        let (ep, gate, hello) = (
            endpoints[i % endpoints.len()].clone(),
            gate.clone(),
            hello.clone(),
        );
        connecting.spawn(async move {
            let _permit = gate.acquire_owned().await?;
            let conn = common::dial(&ep, config, addr).await?;
            common::hello(&conn, &hello).await?;
            anyhow::Ok(conn)
        });
    }
    let mut conns = Vec::with_capacity(agents);
    while let Some(r) = connecting.join_next().await {
        conns.push(r??);
    }
    let connect_time = connect_started.elapsed();
    eprintln!(
        "{} agents connected in {:.1} s",
        conns.len(),
        connect_time.as_secs_f64()
    );
    Ok((conns, connect_time))
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    ensure!(
        args.agents > 0 && args.rounds > 0 && args.replicas > 0,
        "--agents, --rounds and --replicas must be positive"
    );
    ensure!(
        args.replicas == 1 || args.common.database_url.is_some(),
        "--replicas above 1 needs --database-url (replicas share one PostgreSQL database)"
    );
    with_fleet(
        &args.common,
        "publish",
        args.agents,
        async |scope, agg, db, configs| measure(&args, scope, agg, db, configs).await,
    )
    .await
}

/// Issues `agents` certificates of one scope `bench/<name>/prod`, starts a real aggregator (on its own
/// database), runs `measure` with the scope, the aggregator and one client config per agent, then stops the
/// aggregator and drops the database; a failure carries the aggregator's log.
pub(crate) async fn with_fleet(
    common: &CommonArgs,
    name: &str,
    agents: usize,
    measure: impl AsyncFnOnce(
        &Scope,
        &AggregatorProc,
        &Database,
        Vec<quinn::ClientConfig>,
    ) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let scope = Scope::from_parts("bench", name, "prod")?;
    let work_dir = common.temp_dir(&format!("gait-bench-{name}-"))?;
    let cert_dir = common.cert_temp_dir("gait-bench-certs-")?;
    let data_dir = work_dir.path().join("aggregator");
    let pki_dir = common::init_pki(&data_dir)?;
    let prefix: String = name.chars().take(3).collect();
    let creds = common::issue_fleet(&pki_dir, cert_dir.path(), &scope, &prefix, agents)?;
    let configs = creds
        .iter()
        .map(|c| c.client_config())
        .collect::<anyhow::Result<Vec<_>>>()?;
    let db = Database::create(common, name).await?;
    let agg = AggregatorProc::start_ephemeral(common, &data_dir, &db).await?;
    let result = measure(&scope, &agg, &db, configs).await;
    let agg_log = agg.log_tail();
    agg.terminate(Duration::from_secs(15)).await?;
    db.drop_database().await?;
    result.with_context(|| format!("aggregator log:\n{agg_log}"))
}

async fn measure(
    args: &Args,
    scope: &Scope,
    agg: &AggregatorProc,
    db: &Database,
    configs: Vec<quinn::ClientConfig>,
) -> anyhow::Result<()> {
    // Further replicas: the same data directory (keys, PKI) and the same database.
    let mut others = Vec::new();
    for _ in 1..args.replicas {
        others.push(AggregatorProc::start_ephemeral(&args.common, &agg.data_dir, db).await?);
    }
    let result = measure_on(args, scope, agg, &others, configs).await;
    for other in others {
        other.terminate(Duration::from_secs(15)).await?;
    }
    result
}

async fn measure_on(
    args: &Args,
    scope: &Scope,
    agg: &AggregatorProc,
    others: &[AggregatorProc],
    configs: Vec<quinn::ClientConfig>,
) -> anyhow::Result<()> {
    let key = gait_canon::sign::load_public_key_file(
        &agg.data_dir
            .join("keys")
            .join(gait_aggregator::registry::REGISTRY_PUB_FILE),
    )?;
    let trust = Arc::new(TrustRoot::from_public_keys(vec![key]));
    let bundle_scope: gait_bundle::Scope = scope.clone();

    // Connect the fleet (bounded handshake concurrency), agent i to replica i % replicas, then start every
    // agent's long-poll loop; each receipt is tagged with its agent's replica.
    let replicas: Vec<&AggregatorProc> = std::iter::once(agg).chain(others).collect();
    let mut groups: Vec<Vec<quinn::ClientConfig>> = vec![Vec::new(); replicas.len()];
    for (i, config) in configs.into_iter().enumerate() {
        groups[i % replicas.len()].push(config);
    }
    let mut connect_time = Duration::ZERO;
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, Receipt)>();
    let mut pollers = tokio::task::JoinSet::new();
    for (r, group) in groups.into_iter().enumerate() {
        let (conns, took) = connect(
            args.endpoints,
            args.connect_concurrency,
            replicas[r].quic,
            group,
        )
        .await?;
        connect_time += took;
        for conn in conns {
            let (tag_tx, mut tag_rx) = mpsc::unbounded_channel::<Receipt>();
            let (tx, trust, bundle_scope, wait) = (
                tx.clone(),
                trust.clone(),
                bundle_scope.clone(),
                args.poll_wait_ms,
            );
            pollers.spawn(async move {
                let forward = async {
                    while let Some(receipt) = tag_rx.recv().await {
                        if tx.send((r, receipt)).is_err() {
                            break;
                        }
                    }
                };
                let (polled, ()) = tokio::join!(
                    poll_loop(conn, tag_tx, trust, bundle_scope, wait, false),
                    forward
                );
                polled
            });
        }
    }
    drop(tx);
    let parked_on: Vec<common::Api> = replicas.iter().map(|r| r.api()).collect();

    let api = agg.api();
    let mut rounds = Vec::new();
    let mut all = Vec::new();
    let mut verify_times = Vec::new();
    let mut by_replica: Vec<Vec<Duration>> = vec![Vec::new(); replicas.len()];
    for round_no in 1..=args.rounds {
        for (r, api) in parked_on.iter().enumerate() {
            let expected =
                args.agents / replicas.len() + usize::from(r < args.agents % replicas.len());
            wait_for_parked_polls(api, expected, &mut pollers).await?;
        }
        let policy = policy_yaml(round_no);
        let sent = Instant::now();
        let published = api
            .publish(&scope.org, &scope.project, &scope.env, "p.yaml", &policy)
            .await?;
        let post_done = sent.elapsed();
        let epoch = published["epoch"]
            .as_u64()
            .context("publish answer has no epoch")?;
        let mut lat = Vec::with_capacity(args.agents);
        while lat.len() < args.agents {
            let (replica, receipt) =
                match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
                    Ok(Some(r)) => r,
                    Ok(None) => bail!("every agent stopped: {}", first_error(&mut pollers).await),
                    Err(_) => bail!(
                        "round {round_no}: only {} of {} agents verified epoch {epoch} within 60 s",
                        lat.len(),
                        args.agents
                    ),
                };
            ensure!(
                receipt.epoch == epoch,
                "an agent verified epoch {} during round {round_no} (epoch {epoch})",
                receipt.epoch
            );
            lat.push(receipt.at.saturating_duration_since(sent));
            by_replica[replica].push(receipt.at.saturating_duration_since(sent));
            verify_times.push(receipt.verify);
        }
        let p = Percentiles::of(&lat);
        eprintln!(
            "round {round_no}: epoch {epoch}, POST answered in {:.0} ms, publish-to-verified {}",
            ms(post_done),
            p.human_ms()
        );
        rounds.push(json!({ "epoch": epoch, "post_ms": round(ms(post_done), 1), "latency_ms": p.json_ms() }));
        all.extend(lat);
    }
    pollers.abort_all();

    let p = Percentiles::of(&all);
    let v = Percentiles::of(&verify_times);
    let met = p.p99 < GOAL_P99;
    let per_replica: Vec<serde_json::Value> = by_replica
        .iter()
        .enumerate()
        .map(|(r, lat)| {
            json!({
                "replica": r,
                "publishes_here": r == 0,
                "agents": lat.len() as u64 / args.rounds,
                "latency_ms": Percentiles::of(lat).json_ms(),
            })
        })
        .collect();
    let summary = json!({
        "bench": "publish-latency",
        "backend": if args.common.database_url.is_some() { "postgres" } else { "sqlite" },
        "replicas": replicas.len(),
        "per_replica": per_replica,
        "agents": args.agents,
        "rounds": args.rounds,
        "connect_s": round(connect_time.as_secs_f64(), 2),
        "latency_ms": p.json_ms(),
        "verify_ms": v.json_ms(),
        "per_round": rounds,
        "goal_p99_ms": ms(GOAL_P99),
        "goal_met": met,
    });
    let human = format!(
        "publish-latency: {} agents x {} publishes, publish-to-verified {} (p90 {:.0} ms; goal p99 < {:.0} ms: {}); \
         bundle verify per agent p50 {:.2} ms; per replica (0 publishes) {}",
        args.agents,
        args.rounds,
        p.human_ms(),
        ms(p.p90),
        ms(GOAL_P99),
        if met { "met" } else { "MISSED" },
        ms(v.p50),
        by_replica
            .iter()
            .enumerate()
            .map(|(r, lat)| format!("#{r}: {}", Percentiles::of(lat).human_ms()))
            .collect::<Vec<_>>()
            .join("; "),
    );
    common::emit(&summary, &human);
    Ok(())
}

/// A valid policy that differs per round (so every publish is a new bundle).
fn policy_yaml(round: u64) -> String {
    format!(
        "schema_id: gait.gate.policy\nschema_version: 1.0.0\ndefault_verdict: block\nrules:\n  - name: allow-reads-{round}\n    \
         priority: 10\n    effect: allow\n    match:\n      tool_names: [tool.read]\n"
    )
}

/// Wait until the aggregator holds a long-poll for every agent.
pub(crate) async fn wait_for_parked_polls(
    api: &common::Api,
    agents: usize,
    pollers: &mut tokio::task::JoinSet<anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let waiting = api
            .metric(gait_aggregator::metrics::LONG_POLLS_WAITING)
            .await?;
        if waiting as usize >= agents {
            return Ok(());
        }
        if let Some(r) = pollers.try_join_next() {
            bail!(
                "an agent stopped early: {:?}",
                r.map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| format!("{e:#}")))
            );
        }
        ensure!(
            Instant::now() < deadline,
            "only {waiting} of {agents} long-polls parked after 120 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) async fn first_error(pollers: &mut tokio::task::JoinSet<anyhow::Result<()>>) -> String {
    match pollers.join_next().await {
        Some(Ok(Err(e))) => format!("{e:#}"),
        Some(Err(e)) => e.to_string(),
        _ => "no error reported".into(),
    }
}

/// One agent: long-poll, verify every offered bundle, report it, poll again with the new epoch. With
/// `report_applied`, it also tells the aggregator the bundle is active (a `BundleReport`, as a real agent does
/// after activating), so the fleet inventory and rollout adoption see it.
pub(crate) async fn poll_loop(
    conn: quinn::Connection,
    tx: mpsc::UnboundedSender<Receipt>,
    trust: Arc<TrustRoot>,
    scope: gait_bundle::Scope,
    wait_ms: u32,
    report_applied: bool,
) -> anyhow::Result<()> {
    let mut have = 0u64;
    loop {
        let poll = common::poll_frame(have, wait_ms)?;
        match common::request(&conn, &poll).await? {
            ServerMsgV2::Bundle(offer) => {
                let t = Instant::now();
                let now_unix = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)?
                    .as_secs() as i64;
                let current = (have > 0).then_some(have);
                let verified =
                    gait_bundle::verify(&offer.signed_bundle, &trust, &scope, current, now_unix)?;
                ensure!(
                    verified.digest == offer.digest,
                    "offered digest differs from the verified bundle's"
                );
                let at = Instant::now();
                have = verified.manifest.epoch;
                if report_applied {
                    common::report_applied(&conn, have, offer.digest).await?;
                }
                if tx
                    .send(Receipt {
                        epoch: have,
                        at,
                        verify: at - t,
                    })
                    .is_err()
                {
                    return Ok(());
                }
            }
            ServerMsgV2::NoNewBundle { .. } => {}
            other => bail!("PollBundle answered with {other:?}"),
        }
    }
}
