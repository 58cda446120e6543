//! `gait-fleet-bench`: fleet-scale benchmarks of the Gait control plane against real `gait-aggregator` (and
//! `gait-agent`) processes built in release mode. Each subcommand prints one JSON summary line, then one human
//! line; progress goes to stderr. Results and the exact commands are in `docs/benchmarks.md`.
//!
//! ```text
//! cargo build --release -p gait-bench -p gait-aggregator -p gait-agent
//! target/release/gait-fleet-bench ingest --agents 100 --records 1000000 --batch 500
//! target/release/gait-fleet-bench publish-latency --agents 1000
//! target/release/gait-fleet-bench idle --agents 10000
//! target/release/gait-fleet-bench fleet --agents 2000 --duration-secs 60 --seed 1 [--restart-at-secs 30 [--kill]]
//! target/release/gait-fleet-bench agent-footprint
//! target/release/gait-fleet-bench decide --decisions 20000 --concurrency 8
//! target/release/gait-fleet-bench decide --rate 5000 --duration 5 [--rate-limited] [--observe | --sweep]
//! target/release/gait-fleet-bench http-flood --idle 20000 --slow-bodies 200
//! target/release/gait-fleet-bench auth --verifies 20000 --requests 5000
//! target/release/gait-fleet-bench audit --ops 5000 --log-size 1000000
//! target/release/gait-fleet-bench push --artifacts 1000
//! target/release/gait-fleet-bench registry --rules 500 --runs 50
//! target/release/gait-fleet-bench replay --decisions 1000000 --distinct 10000
//! ```

// The allocator of `gait-aggregator` and `gait-agent`, whose code the in-process benchmarks (replay, registry,
// audit) run: measured with the allocator those binaries ship with.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod analysis;
mod audit;
mod auth;
mod common;
mod edge;
mod fleet;
mod floor;
mod footprint;
mod idle;
mod ingest;
mod promote;
mod publish;
mod push;
mod registry;
mod replay;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Fleet-scale benchmarks of the Gait aggregator and agent.
#[derive(Parser, Debug)]
#[command(name = "gait-fleet-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Records/s end to end: simulated agents -> QUIC -> aggregator commit -> ack, verified via the HTTP API,
    /// with a store-only baseline in the same run.
    Ingest(ingest::Args),
    /// Publish-to-verified latency over a fleet of long-polling simulated agents.
    PublishLatency(publish::Args),
    /// Aggregator memory per idle connection, and reconnect time of the whole fleet after a restart.
    Idle(idle::Args),
    /// Memory of an idle real gait-agent and the size of both release binaries.
    AgentFootprint(footprint::Args),
    /// Decisions/s through a real agent's local API, and the time until all are recorded upstream.
    Decide(edge::DecideArgs),
    /// Both HTTP servers flooded with idle connections and unfinished bodies: are `/healthz` and real work
    /// still answered, and how much memory does the server hold.
    HttpFlood(edge::FloodArgs),
    /// Per-request cost of an operator's OIDC JWT: verify with a cached JWKS (RS256, ES256), and whole HTTP
    /// requests with a JWT against the admin token in the same run.
    Auth(auth::Args),
    /// The audit log: privileged operations/s with their audit append against without (SQLite), checkpoint
    /// signing and proof generation on a 1,000,000-entry log.
    Audit(audit::Args),
    /// `gait-agent push` of a directory of signed traces until the aggregator committed them, with no daemon
    /// and through a running daemon.
    Push(push::Args),
    /// The policy registry's write path: push + validate + pin-sign of a generated large policy, p50/p99.
    Registry(registry::Args),
    /// Replay before rollout: a candidate against 1,000,000 captured decisions in SQLite (corpus read and
    /// evaluation timed apart).
    Replay(replay::Args),
    /// `promote` of a rollout until every agent of a connected fleet verified and runs the candidate's pin.
    Promote(promote::Args),
    /// The fleet simulator: churn, re-enrolment, offline spells, clock skew and mixed traffic drawn from a seed,
    /// optionally a restart and replicas; reports what the operator sees, verified against what was sent.
    Fleet(fleet::Args),
    /// Fleet analytics over 1,000,000 decision records: ingest against upkeep on the same rows, then the
    /// top-families and posture queries (p50/p99), on SQLite or PostgreSQL (--database-url).
    Analysis(analysis::Args),
    /// The floor under `decide --rate` on this machine: the same open-loop client against a null responder (a
    /// child process that answers every request at once with canned bytes), p50/p99 per rate.
    DecideFloor(floor::Args),
    /// The null responder of `decide-floor` (internal).
    #[command(hide = true)]
    NullResponder(floor::ResponderArgs),
    /// One attack process of `http-flood` (internal).
    #[command(hide = true)]
    FloodWorker(edge::FloodWorkerArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `GAIT_LOG=gait_store=debug` shows, among others, what each step of an analytics upkeep range took.
    let _log = match std::env::var("GAIT_LOG") {
        Ok(filter) => match gait_runtime::log::init_tracing(
            "gait-fleet-bench",
            gait_runtime::log::LogFormat::Text,
            &filter,
        ) {
            Ok(guard) => Some(guard),
            Err(e) => {
                eprintln!("error: GAIT_LOG: {e}");
                return ExitCode::FAILURE;
            }
        },
        Err(_) => None,
    };
    // Every reqwest client needs a default rustls provider (see gait_runtime::http::tls::install_ring_default).
    gait_runtime::http::tls::install_ring_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Ingest(a) => ingest::run(a).await,
            Command::PublishLatency(a) => publish::run(a).await,
            Command::Promote(a) => promote::run(a).await,
            Command::Idle(a) => idle::run(a).await,
            Command::AgentFootprint(a) => footprint::run(a).await,
            Command::Decide(a) => edge::decide(a).await,
            Command::DecideFloor(a) => floor::run(a).await,
            Command::NullResponder(a) => floor::responder(a),
            Command::HttpFlood(a) => edge::flood(a).await,
            Command::FloodWorker(a) => edge::flood_worker(a).await,
            Command::Auth(a) => auth::run(a).await,
            Command::Audit(a) => audit::run(a).await,
            Command::Push(a) => push::run(a).await,
            Command::Registry(a) => registry::run(a).await,
            Command::Replay(a) => replay::run(a).await,
            Command::Analysis(a) => analysis::run(a).await,
            Command::Fleet(a) => fleet::run(a).await,
        }
    });
    // Simulated agents may still hold tasks and sockets; do not wait for them.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
