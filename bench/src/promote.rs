//! `promote`: how long a rollout's `promote` takes to make a connected fleet enforce the candidate. Simulated
//! agents (distinct certificates, one scope) long-poll a real `gait-aggregator` child process, verify every
//! offered bundle against the registry key and report it active (as the agent does). Each round pushes a new
//! candidate, starts a rollout `dry_run:100%` → `enforce:100%`, waits until every agent runs the dry-run
//! bundle, then POSTs `promote` and times each agent from the POST to verifying the enforce bundle (the pin
//! the controller publishes). The round ends when the rollout completes (every agent reported it).
#![allow(clippy::disallowed_methods)] // benchmark harness: spawns load generators freely and reads the clock

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use gait_bundle::TrustRoot;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::common::{self, AggregatorProc, CommonArgs, Percentiles, Scope, ms, round};
use crate::publish::{Receipt, connect, first_error, poll_loop, wait_for_parked_polls, with_fleet};

/// Goal of the issue for the p99 promote-to-enforcing latency.
const GOAL_P99: Duration = Duration::from_secs(1);

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Simulated agents, each with its own certificate and connection.
    #[arg(long, default_value_t = 1000)]
    pub agents: usize,
    /// Rollouts promoted (each one a new candidate every agent must verify).
    #[arg(long, default_value_t = 3)]
    pub rounds: u64,
    /// QUIC client endpoints (UDP sockets) the agents share.
    #[arg(long, default_value_t = 8)]
    pub endpoints: usize,
    /// Handshakes in flight while the fleet connects.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
}

fn policy_yaml(n: u64) -> String {
    format!(
        "schema_id: gait.gate.policy\nschema_version: 1.0.0\ndefault_verdict: block\nrules:\n  - name: allow-reads-{n}\n    \
         priority: 10\n    effect: allow\n    match:\n      tool_names: [tool.read]\n"
    )
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    ensure!(
        args.agents > 0 && args.rounds > 0,
        "--agents and --rounds must be positive"
    );
    with_fleet(
        &args.common,
        "promote",
        args.agents,
        async |scope, agg, _db, configs| measure(&args, scope, agg, configs).await,
    )
    .await
}

/// Waits for one receipt of `epoch` from every agent; returns each one's time after `since`.
async fn receipts(
    rx: &mut mpsc::UnboundedReceiver<Receipt>,
    pollers: &mut tokio::task::JoinSet<anyhow::Result<()>>,
    agents: usize,
    epoch: u64,
    since: Instant,
) -> anyhow::Result<Vec<Duration>> {
    let mut lat = Vec::with_capacity(agents);
    while lat.len() < agents {
        let r = match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
            Ok(Some(r)) => r,
            Ok(None) => bail!("every agent stopped: {}", first_error(pollers).await),
            Err(_) => bail!(
                "only {} of {agents} agents verified epoch {epoch} within 60 s",
                lat.len()
            ),
        };
        ensure!(
            r.epoch == epoch,
            "an agent verified epoch {} while epoch {epoch} was expected",
            r.epoch
        );
        lat.push(r.at.saturating_duration_since(since));
    }
    Ok(lat)
}

async fn measure(
    args: &Args,
    scope: &Scope,
    agg: &AggregatorProc,
    configs: Vec<quinn::ClientConfig>,
) -> anyhow::Result<()> {
    let key = gait_canon::sign::load_public_key_file(
        &agg.data_dir
            .join("keys")
            .join(gait_aggregator::registry::REGISTRY_PUB_FILE),
    )?;
    let trust = Arc::new(TrustRoot::from_public_keys(vec![key]));
    let (conns, connect_time) =
        connect(args.endpoints, args.connect_concurrency, agg.quic, configs).await?;
    let (tx, mut rx) = mpsc::unbounded_channel::<Receipt>();
    let mut pollers = tokio::task::JoinSet::new();
    for conn in conns {
        let (tx, trust, scope) = (tx.clone(), trust.clone(), scope.clone());
        pollers.spawn(async move { poll_loop(conn, tx, trust, scope, 60_000, true).await });
    }
    drop(tx);

    let api = agg.api();
    let org = &scope.org;
    let env_path = format!(
        "/v1/orgs/{org}/projects/{}/envs/{}",
        scope.project, scope.env
    );
    let push = |n: u64| {
        let api = api.clone();
        let org = org.to_string();
        async move {
            let v = api
                .send(
                    Method::POST,
                    &format!("/v1/orgs/{org}/policies"),
                    &json!({"name": "p.yaml", "policy": policy_yaml(n), "message": format!("v{n}")}),
                )
                .await?;
            anyhow::Ok(v["digest"].as_str().context("push: no digest")?.to_owned())
        }
    };
    let baseline = push(0).await?;
    let pinned = api
        .send(
            Method::PUT,
            &format!("{env_path}/pin"),
            &json!({ "digest": baseline }),
        )
        .await?;
    let mut epoch = pinned["bundle"]["epoch"].as_u64().context("pin epoch")?;
    receipts(&mut rx, &mut pollers, args.agents, epoch, Instant::now()).await?;

    let mut all = Vec::new();
    let mut per_round = Vec::new();
    for round_no in 1..=args.rounds {
        let candidate = push(round_no).await?;
        let plan = json!({
            "targets": [{"project": scope.project.to_string(), "env": scope.env.to_string()}],
            "steps": [{"stage": "dry_run", "percent": 100, "bake_seconds": 3600},
                      {"stage": "enforce", "percent": 100}],
        });
        let created = api
            .send(
                Method::POST,
                &format!("/v1/orgs/{org}/rollouts"),
                &json!({"id": format!("bench-{round_no}"), "candidate": candidate, "plan": plan}),
            )
            .await?;
        let id = created["id"].as_str().context("rollout id")?.to_owned();
        epoch += 1;
        receipts(&mut rx, &mut pollers, args.agents, epoch, Instant::now()).await?;
        wait_for_parked_polls(&api, args.agents, &mut pollers).await?;
        // Promote on a settled aggregator: every agent's report of the dry-run bundle is stored (else the
        // promote's transaction queues behind a thousand report writes).
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let h = api
                .get(&format!("/v1/orgs/{org}/rollouts/{id}/health"))
                .await?;
            if h["facts"]["adopted"].as_u64() == Some(args.agents as u64) {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "the agents' reports were not all stored within 60 s: {}",
                h["facts"]
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let sent = Instant::now();
        api.send(
            Method::POST,
            &format!("/v1/orgs/{org}/rollouts/{id}/promote"),
            &json!({"reason": "bench"}),
        )
        .await?;
        let answered = sent.elapsed();
        epoch += 1;
        let lat = receipts(&mut rx, &mut pollers, args.agents, epoch, sent).await?;
        let p = Percentiles::of(&lat);
        eprintln!(
            "round {round_no}: promote answered in {:.0} ms, promote-to-enforcing {}",
            ms(answered),
            p.human_ms()
        );
        // The rollout completes once every agent reported the pin active.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let r: Value = api.get(&format!("/v1/orgs/{org}/rollouts/{id}")).await?;
            if r["state"] == "completed" {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "rollout {id} did not complete within 60 s: {r}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        per_round.push(json!({"rollout": id, "epoch": epoch, "promote_post_ms": round(ms(answered), 1), "latency_ms": p.json_ms()}));
        all.extend(lat);
    }
    pollers.abort_all();
    let p = Percentiles::of(&all);
    let met = p.p99 <= GOAL_P99;
    let summary = json!({
        "bench": "promote",
        "backend": if args.common.database_url.is_some() { "postgres" } else { "sqlite" },
        "agents": args.agents,
        "rounds": args.rounds,
        "connect_s": round(connect_time.as_secs_f64(), 2),
        "latency_ms": p.json_ms(),
        "per_round": per_round,
        "goal_p99_ms": ms(GOAL_P99),
        "goal_met": met,
    });
    let human = format!(
        "promote: {} agents x {} rollouts, promote-to-enforcing {} (goal p99 <= {:.0} ms: {})",
        args.agents,
        args.rounds,
        p.human_ms(),
        ms(GOAL_P99),
        if met { "met" } else { "MISSED" },
    );
    common::emit(&summary, &human);
    Ok(())
}
