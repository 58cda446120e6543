//! `fleet`: the fleet simulator. Simulated agents (each its own certificate, connection and hash-chained
//! outbox, a handful of shared client endpoints) live a life drawn from a seed before the run starts:
//!
//! - **churn**: some join while the run is under way, some leave (flushing their outbox first);
//! - **re-enrolment**: some switch to a freshly issued certificate (new serial, same identity) mid-run;
//! - **offline spells**: some lose the aggregator for a while and keep deciding, their records piling up in the
//!   outbox, then come back and deliver the backlog;
//! - **clock skew**: every agent's clock is off by a drawn amount, which stamps its records' `created_unix_ms`;
//! - **mixed traffic**: decisions (allow and block) and artifact digests at Poisson-distributed times, sent in
//!   batches as the agent does, with a `PollBundle` long-poll parked on every connection like an idle agent;
//! - optionally an aggregator **restart** (SIGTERM, or SIGKILL with `--kill`) mid-run, and several **replicas**
//!   on one PostgreSQL database with agents spread over them and failing over as the real agent does
//!   (`aggregator.replicas`: start at one address, move to the next on a failed dial).
//!
//! Redials follow the real agent (`gait_agent::backoff`: the redial window a shutting-down aggregator announces,
//! then full-jitter exponential backoff). The schedule is a pure function of `--seed` and the counts; its digest
//! is printed so two runs can be shown to have simulated the same fleet.
//!
//! The report is what an operator would see, checked against what the simulator knows it sent: the connected
//! count and the records acknowledged per second (the timeline), every agent's records verified through the
//! HTTP API (count, last hash, no recorded gap), duplicates and conflicts from the aggregator's counters, each
//! agent's clock offset as the stored records show it, and each replica's memory and CPU. The simulator's own
//! CPU is reported apart, so a figure from a shared machine can be read as a ratio.

#![allow(clippy::disallowed_methods)] // benchmark harness: spawns simulated agents freely and reads the clock

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use gait_agent::backoff::{Backoff, RedialPlan};
use gait_aggregator::pki::identity::AgentToIssue;
use gait_aggregator::pki::{self, Validity};
use gait_store::AgentKey;
use gait_wire::{AgentMsgV2, Hello, Record, RecordBatch, RecordClass, ServerMsgV2};
use serde_json::json;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::common::{self, AggregatorProc, CommonArgs, Database, Percentiles, Scope, round};

/// Largest batch a simulated agent sends at once.
const MAX_BATCH: usize = 256;
/// How long a batch may wait for its acknowledgement before the connection is given up.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);
/// Long-poll wait the agents ask for (the real agent's default).
const POLL_WAIT_MS: u32 = 25_000;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Simulated agents (including those that join later).
    #[arg(long, default_value_t = 2_000)]
    pub agents: usize,
    /// Seconds of traffic; afterwards every agent still there flushes its outbox.
    #[arg(long, default_value_t = 60)]
    pub duration_secs: u64,
    /// Seed of the schedule: the same seed and counts simulate the same fleet.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Aggregator replicas on one PostgreSQL database (above 1 needs --database-url). A list (`1,2,1,2`, needs
    /// --database-url) simulates the same fleet once per entry, in order, in this one invocation (each on a
    /// fresh database), prints each run's summary and ends with a comparison: every replica count's batch
    /// latency and aggregator CPU per record against the first count's.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub replicas: Vec<usize>,
    /// QUIC client endpoints (UDP sockets) the agents share.
    #[arg(long, default_value_t = 16)]
    pub endpoints: usize,
    /// Handshakes in flight while the fleet first connects.
    #[arg(long, default_value_t = 128)]
    pub connect_concurrency: usize,
    /// Records per agent per minute (Poisson arrivals).
    #[arg(long, default_value_t = 30.0)]
    pub records_per_min: f64,
    /// Share of records that are artifact digests (the rest are decisions).
    #[arg(long, default_value_t = 0.1)]
    pub artifact_share: f64,
    /// Share of decisions that blocked (the rest allowed).
    #[arg(long, default_value_t = 0.05)]
    pub block_share: f64,
    /// Share of agents that join during the run, and share that leave during it.
    #[arg(long, default_value_t = 0.1)]
    pub churn: f64,
    /// Share of agents that switch to a newly issued certificate mid-run.
    #[arg(long, default_value_t = 0.05)]
    pub reenroll: f64,
    /// Share of agents that go offline once for a while.
    #[arg(long, default_value_t = 0.2)]
    pub offline: f64,
    /// Longest offline spell, in seconds.
    #[arg(long, default_value_t = 20)]
    pub offline_max_secs: u64,
    /// Largest clock offset of an agent, in seconds (each draws one in ±this).
    #[arg(long, default_value_t = 120)]
    pub skew_secs: u64,
    /// Restart the first replica this many seconds into the run (SIGTERM, start again on the same ports).
    #[arg(long)]
    pub restart_at_secs: Option<u64>,
    /// With --restart-at-secs: SIGKILL instead of SIGTERM (no announced redial window, no drain).
    #[arg(long)]
    pub kill: bool,
    /// With --restart-at-secs: how long the stopped replica stays down before it is started again (with
    /// several replicas, its agents fail over to the others meanwhile).
    #[arg(long, default_value_t = 0)]
    pub down_secs: u64,
    /// How often an agent sends what its outbox holds, in milliseconds.
    #[arg(long, default_value_t = 250)]
    pub batch_ms: u64,
    /// Give up waiting for the fleet to flush this many seconds after the traffic ends.
    #[arg(long, default_value_t = 120)]
    pub drain_timeout_secs: u64,
}

/// One agent's life, drawn from the seed before the run. Times are milliseconds from the run's start.
#[derive(Debug, Clone, PartialEq)]
struct Life {
    join_ms: u64,
    leave_ms: Option<u64>,
    reenroll_ms: Option<u64>,
    /// Offline from the first time until the second.
    offline: Option<(u64, u64)>,
    skew_ms: i64,
    /// Due time and class of every record the agent makes (before it leaves or the run ends).
    records: Vec<(u64, RecordClass)>,
}

/// Draws every agent's life from `seed` (each agent from its own stream, so one agent's draws never depend on
/// another's).
fn plan_fleet(args: &Args) -> Vec<Life> {
    let end = args.duration_secs * 1000;
    (0..args.agents)
        .map(|i| {
            let mut rng = fastrand::Rng::with_seed(
                args.seed ^ (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15),
            );
            let between = |rng: &mut fastrand::Rng, from: f64, to: f64| {
                (from + rng.f64() * (to - from)).round() as u64
            };
            let joins = rng.f64() < args.churn;
            let leaves = !joins && rng.f64() < args.churn;
            let join_ms = if joins {
                between(&mut rng, 0.0, end as f64 * 0.5)
            } else {
                0
            };
            let leave_ms = leaves.then(|| between(&mut rng, end as f64 * 0.5, end as f64));
            let until = leave_ms.unwrap_or(end);
            let reenroll_ms = (rng.f64() < args.reenroll)
                .then(|| between(&mut rng, join_ms as f64, until as f64))
                .filter(|&t| t > join_ms && t < until);
            let offline = (rng.f64() < args.offline)
                .then(|| {
                    let from = between(&mut rng, join_ms as f64, until as f64);
                    let len = between(
                        &mut rng,
                        1_000.0,
                        args.offline_max_secs.max(1) as f64 * 1000.0,
                    );
                    (from, from + len)
                })
                .filter(|&(from, _)| from > join_ms && from < until);
            let skew_ms = between(&mut rng, 0.0, 2.0 * args.skew_secs as f64 * 1000.0) as i64
                - args.skew_secs as i64 * 1000;
            let mut records = Vec::new();
            let per_ms = args.records_per_min / 60_000.0;
            if per_ms > 0.0 {
                let mut t = join_ms as f64;
                loop {
                    // Exponential inter-arrival times: a Poisson process.
                    t += -(1.0 - rng.f64()).ln() / per_ms;
                    if t >= until as f64 {
                        break;
                    }
                    let class = if rng.f64() < args.artifact_share {
                        RecordClass::ArtifactDigest
                    } else if rng.f64() < args.block_share {
                        RecordClass::Block
                    } else {
                        RecordClass::Allow
                    };
                    records.push((t as u64, class));
                }
            }
            Life {
                join_ms,
                leave_ms,
                reenroll_ms,
                offline,
                skew_ms,
                records,
            }
        })
        .collect()
}

/// BLAKE3 over every life of the schedule, in a fixed text form.
fn schedule_digest(lives: &[Life]) -> String {
    let mut h = blake3::Hasher::new();
    for (i, l) in lives.iter().enumerate() {
        h.update(
            format!(
                "{i} {} {:?} {:?} {:?} {} {}\n",
                l.join_ms,
                l.leave_ms,
                l.reenroll_ms,
                l.offline,
                l.skew_ms,
                l.records.len()
            )
            .as_bytes(),
        );
        for (t, class) in &l.records {
            h.update(format!("{t}:{class} ").as_bytes());
        }
    }
    h.finalize().to_hex().to_string()
}

/// The payload of one simulated record: about 300 bytes, like a gate decision or an artifact reference.
fn payload(agent: usize, seq: u64, class: RecordClass) -> Vec<u8> {
    match class {
        RecordClass::ArtifactDigest => format!(
            r#"{{"artifact":"trace","agent":{agent},"seq":{seq},"digest":"sha256:{}","path":"runs/{agent}/{seq}/trace.json"}}"#,
            "ab".repeat(32)
        ),
        _ => format!(
            r#"{{"agent":{agent},"seq":{seq},"verdict":"{}","tool_name":"fs.read","reason_codes":["matched_rule"],"intent_digest":"{}","reason":"{}"}}"#,
            if class == RecordClass::Block { "block" } else { "allow" },
            "cd".repeat(32),
            "x".repeat(100)
        ),
    }
    .into_bytes()
}

/// What agents report to the collector.
enum Event {
    /// `Welcome` on a connection after `attempts` dials (`refused` of them refused by admission control).
    Up {
        attempts: u32,
        refused: u32,
        failover: bool,
    },
    /// Records the `Welcome` of a new session showed committed though their acknowledgement was lost with the
    /// previous connection (the agent drops them instead of sending them again).
    CommittedUnacked(u64),
    /// A connection ended (closed by either side or found dead).
    Down,
    /// Records acknowledged as committed, and how long the batch took from send to acknowledgement.
    Acked(u64, Duration),
    /// The agent left, or the run ended and its outbox is empty: everything it made is committed.
    Finished {
        agent: usize,
        records: u64,
        last_hash: gait_wire::Digest,
    },
    /// Something the agent cannot recover from (a refused batch, a conflict).
    Failed { agent: usize, error: String },
}

/// Why a session ended.
enum Ended {
    /// The connection failed or was closed by the aggregator: redial.
    Lost,
    /// The agent's offline spell began.
    Offline,
    /// The agent switches to its new certificate.
    Reenroll,
    /// Everything is committed and the agent leaves (or the run is over).
    Finished,
}

struct SimAgent {
    index: usize,
    life: Life,
    config: quinn::ClientConfig,
    reenrolled_config: Option<quinn::ClientConfig>,
    endpoint: quinn::Endpoint,
    addrs: Arc<Vec<SocketAddr>>,
    gate: Arc<Semaphore>,
    tx: mpsc::UnboundedSender<Event>,
    start: Instant,
    wall_start_ms: i64,
    end_ms: u64,
    batch_every: Duration,
    /// Cancelled once the collector measured the fleet: finished agents then disconnect.
    release: CancellationToken,
    // The outbox.
    outbox: VecDeque<Record>,
    next_record: usize,
    seq: u64,
    prev_hash: gait_wire::Digest,
}

impl SimAgent {
    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn at(&self, ms: u64) -> tokio::time::Instant {
        (self.start + Duration::from_millis(ms)).into()
    }

    fn stop_ms(&self) -> u64 {
        self.life.leave_ms.unwrap_or(self.end_ms)
    }

    /// Seals every record due by now into the outbox (a record's time is its scheduled time on the agent's
    /// skewed clock, so an offline agent's backlog carries the times it was made).
    fn make_due_records(&mut self) {
        let now = self.now_ms().min(self.stop_ms());
        while let Some(&(due, class)) = self.life.records.get(self.next_record) {
            if due > now {
                break;
            }
            self.seq += 1;
            let kind = if class == RecordClass::ArtifactDigest {
                "artifact.trace"
            } else {
                "gate.decision"
            };
            let record = Record::sealed(
                self.seq,
                self.prev_hash,
                class,
                kind,
                self.wall_start_ms + due as i64 + self.life.skew_ms,
                None,
                payload(self.index, self.seq, class),
            );
            self.prev_hash = record.hash;
            self.outbox.push_back(record);
            self.next_record += 1;
        }
    }

    fn hello(&self) -> anyhow::Result<Vec<u8>> {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&(self.index as u64).to_be_bytes());
        common::frame(AgentMsgV2::Hello(Hello {
            agent_version: "gait-fleet-bench".into(),
            protocol_version: gait_wire::PROTOCOL_VERSION,
            active: None,
            received: None,
            outbox_depth: self.outbox.len() as u64,
            shed_total: 0,
            last_seq: self.seq,
            instance_id: gait_wire::InstanceId(id),
        }))
    }

    async fn run(mut self) {
        if let Err(e) = self.live().await {
            let _ = self.tx.send(Event::Failed {
                agent: self.index,
                error: format!("{e:#}"),
            });
        }
    }

    async fn live(&mut self) -> anyhow::Result<()> {
        tokio::time::sleep_until(self.at(self.life.join_ms)).await;
        let mut backoff = Backoff::default();
        let mut plan: Option<RedialPlan> = None;
        let mut first = true;
        let mut at_addr = self.index % self.addrs.len();
        let mut failed_over = false;
        loop {
            if let Some((from, until)) = self.life.offline {
                let now = self.now_ms();
                if now >= from && now < until {
                    tokio::time::sleep_until(self.at(until)).await;
                }
            }
            // Dial until a session is up (the real agent: a failed dial moves to the next replica).
            let mut attempts = 0u32;
            let mut refused = 0u32;
            let conn = loop {
                attempts += 1;
                let permit = if first {
                    Some(self.gate.clone().acquire_owned().await?)
                } else {
                    None
                };
                let config = self
                    .reenrolled_config
                    .as_ref()
                    .filter(|_| self.reenrolled())
                    .unwrap_or(&self.config)
                    .clone();
                let hello = self.hello()?;
                let addr = self.addrs[at_addr];
                let dialled = common::dial_like_agent(&self.endpoint, config, addr, &hello).await;
                drop(permit);
                match dialled {
                    Ok((conn, welcome)) => {
                        // Records the aggregator already holds were committed before a lost ack.
                        let dropped = self.drop_committed(welcome.committed_seq);
                        if dropped > 0 {
                            let _ = self.tx.send(Event::CommittedUnacked(dropped));
                        }
                        break conn;
                    }
                    Err(e) => {
                        if common::refused(&e) {
                            refused += 1;
                        }
                    }
                }
                if self.addrs.len() > 1 {
                    at_addr = (at_addr + 1) % self.addrs.len();
                    failed_over = true;
                }
                tokio::time::sleep(backoff.after(plan.as_mut())).await;
            };
            first = false;
            let _ = self.tx.send(Event::Up {
                attempts,
                refused,
                failover: std::mem::take(&mut failed_over),
            });
            let up = Instant::now();
            let poll = tokio::spawn(long_poll(conn.clone()));
            let ended = self.session(&conn).await;
            poll.abort();
            let _ = self.tx.send(Event::Down);
            match ended? {
                Ended::Finished => return Ok(()),
                Ended::Offline | Ended::Reenroll => {
                    backoff.reset();
                    plan = None;
                }
                Ended::Lost => {
                    if up.elapsed() >= gait_agent::daemon::STABLE_CONNECTION {
                        backoff.reset();
                    }
                    plan = gait_agent::daemon::announced_redial_window(&conn).map(RedialPlan::new);
                    tokio::time::sleep(backoff.after(plan.as_mut())).await;
                }
            }
        }
    }

    /// Drops the records the aggregator committed (seq up to `through`) from the outbox; returns how many.
    fn drop_committed(&mut self, through: u64) -> u64 {
        let before = self.outbox.len();
        while self.outbox.front().is_some_and(|r| r.seq <= through) {
            self.outbox.pop_front();
        }
        (before - self.outbox.len()) as u64
    }

    fn reenrolled(&self) -> bool {
        self.life.reenroll_ms.is_some_and(|t| self.now_ms() >= t)
    }

    /// Makes and sends records until the connection is lost or the agent's life moves on.
    async fn session(&mut self, conn: &quinn::Connection) -> anyhow::Result<Ended> {
        let using_new_certificate = self.reenrolled();
        let mut batch_id = 0u64;
        loop {
            self.make_due_records();
            let finishing = self.now_ms() >= self.stop_ms();
            // Send what the outbox holds (all of it when finishing), one batch at a time as the agent does.
            while !self.outbox.is_empty() {
                batch_id += 1;
                let records: Vec<Record> = self.outbox.iter().take(MAX_BATCH).cloned().collect();
                let frame =
                    common::frame(AgentMsgV2::RecordBatch(RecordBatch { batch_id, records }))?;
                let sent = Instant::now();
                let reply =
                    match tokio::time::timeout(ACK_TIMEOUT, common::request(conn, &frame)).await {
                        Ok(Ok(reply)) => reply,
                        Ok(Err(_)) | Err(_) => {
                            conn.close(0u32.into(), b"exchange failed");
                            return Ok(Ended::Lost);
                        }
                    };
                match reply {
                    ServerMsgV2::BatchAck(ack) => {
                        ensure!(
                            ack.conflicts.is_empty(),
                            "batch {batch_id}: conflicts {:?}",
                            ack.conflicts
                        );
                        let dropped = self.drop_committed(ack.committed_through);
                        let _ = self.tx.send(Event::Acked(dropped, sent.elapsed()));
                    }
                    ServerMsgV2::Error(e)
                        if conn.close_reason().is_some() || e.code.is_retryable() =>
                    {
                        return Ok(Ended::Lost);
                    }
                    other => bail!("batch {batch_id} answered with {other:?}"),
                }
                if !finishing {
                    break;
                }
            }
            if finishing && self.outbox.is_empty() {
                let _ = self.tx.send(Event::Finished {
                    agent: self.index,
                    records: self.seq,
                    last_hash: self.prev_hash,
                });
                if self.life.leave_ms.is_none() {
                    // Stay connected until the collector measured the fleet.
                    tokio::select! {
                        () = self.release.cancelled() => {}
                        _ = conn.closed() => {}
                    }
                }
                conn.close(0u32.into(), b"leaving");
                return Ok(Ended::Finished);
            }
            let now = self.now_ms();
            if let Some((from, until)) = self.life.offline
                && now >= from
                && now < until
            {
                conn.close(0u32.into(), b"offline");
                return Ok(Ended::Offline);
            }
            if !using_new_certificate && self.reenrolled() {
                conn.close(0u32.into(), b"re-enrolling");
                return Ok(Ended::Reenroll);
            }
            tokio::select! {
                _ = conn.closed() => return Ok(Ended::Lost),
                () = tokio::time::sleep(self.batch_every) => {}
            }
        }
    }
}

/// Keeps a `PollBundle` parked on `conn` until it fails, as an idle agent does.
async fn long_poll(conn: quinn::Connection) {
    let Ok(frame) = common::poll_frame(0, POLL_WAIT_MS) else {
        return;
    };
    let deadline = Duration::from_millis(u64::from(POLL_WAIT_MS)) + Duration::from_secs(10);
    while let Ok(Ok(ServerMsgV2::NoNewBundle { .. } | ServerMsgV2::Bundle(_))) =
        tokio::time::timeout(deadline, common::request(&conn, &frame)).await
    {}
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    ensure!(args.agents > 0, "--agents must be positive");
    ensure!(
        !args.replicas.is_empty() && args.replicas.iter().all(|&r| r > 0),
        "--replicas must be positive"
    );
    ensure!(
        (args.replicas.len() == 1 && args.replicas[0] == 1) || args.common.database_url.is_some(),
        "--replicas above 1, or a list of runs, needs --database-url (replicas share one PostgreSQL database; \
         every run gets a fresh one)"
    );
    for (name, share) in [
        ("--artifact-share", args.artifact_share),
        ("--block-share", args.block_share),
        ("--churn", args.churn),
        ("--reenroll", args.reenroll),
        ("--offline", args.offline),
    ] {
        ensure!(
            (0.0..=1.0).contains(&share),
            "{name} is a share: between 0 and 1, got {share}"
        );
    }
    ensure!(
        args.churn <= 0.5,
        "--churn above 0.5 leaves no agent for the whole run"
    );
    ensure!(
        args.records_per_min >= 0.0 && args.records_per_min.is_finite(),
        "--records-per-min must be a non-negative number"
    );
    let lives = plan_fleet(&args);
    let digest = schedule_digest(&lives);
    eprintln!(
        "schedule {digest} (seed {}): {} records planned",
        args.seed,
        lives.iter().map(|l| l.records.len()).sum::<usize>()
    );

    let scope = Scope::from_parts("bench", "fleet", "prod")?;
    let work_dir = args.common.temp_dir("gait-bench-fleet-")?;
    let cert_dir = args.common.cert_temp_dir("gait-bench-certs-")?;
    let data_dir = work_dir.path().join("aggregator");
    let pki_dir = common::init_pki(&data_dir)?;
    let creds = common::issue_fleet(&pki_dir, cert_dir.path(), &scope, "fleet", args.agents)?;
    let configs = creds
        .iter()
        .map(|c| c.client_config())
        .collect::<anyhow::Result<Vec<_>>>()?;
    // The second certificates of the agents that re-enrol: same identity, new serial.
    let mut reenrolled = Vec::with_capacity(args.agents);
    for (life, c) in lives.iter().zip(&creds) {
        reenrolled.push(match life.reenroll_ms {
            Some(_) => {
                let id = AgentToIssue::new(AgentKey::new(scope.clone(), c.agent_id.parse()?));
                let dir = cert_dir.path().join("reenrolled").join(&c.agent_id);
                pki::issue_agent(&pki_dir, &id, &dir, Validity::days(2))?;
                Some(
                    common::AgentCreds {
                        agent_id: c.agent_id.clone(),
                        dir,
                    }
                    .client_config()?,
                )
            }
            None => None,
        });
    }

    let mut summaries = Vec::new();
    for &count in &args.replicas {
        let db = Database::create(&args.common, "fleet").await?;
        let first = AggregatorProc::start_ephemeral(&args.common, &data_dir, &db).await?;
        let mut replicas = vec![first];
        for _ in 1..count {
            replicas.push(AggregatorProc::start_ephemeral(&args.common, &data_dir, &db).await?);
        }
        let result = simulate(
            &args,
            &scope,
            &digest,
            lives.clone(),
            &creds,
            configs.clone(),
            reenrolled.clone(),
            &db,
            &mut replicas,
        )
        .await;
        let log = replicas.first().map(AggregatorProc::log_tail);
        for r in replicas {
            r.terminate(Duration::from_secs(15)).await?;
        }
        db.drop_database().await?;
        summaries
            .push(result.with_context(|| format!("aggregator log:\n{}", log.unwrap_or_default()))?);
    }
    if summaries.len() > 1 {
        compare(&summaries);
    }
    Ok(())
}

/// The comparison line of a list of runs: per replica count, the median over its runs of the batch latency
/// percentiles and the aggregator CPU per record, and each as a ratio to the first count's.
fn compare(summaries: &[serde_json::Value]) {
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    let mut counts: Vec<u64> = summaries
        .iter()
        .filter_map(|s| s["replicas"].as_u64())
        .collect();
    counts.sort_unstable();
    counts.dedup();
    let first = summaries[0]["replicas"].as_u64().unwrap_or(1);
    let figure = |count: u64, pick: &dyn Fn(&serde_json::Value) -> f64| {
        median(
            summaries
                .iter()
                .filter(|s| s["replicas"].as_u64() == Some(count))
                .map(pick)
                .collect(),
        )
    };
    let p50 = |s: &serde_json::Value| {
        s["delivered"]["batch_ack_ms"]["p50"]
            .as_f64()
            .unwrap_or(0.0)
    };
    let p99 = |s: &serde_json::Value| {
        s["delivered"]["batch_ack_ms"]["p99"]
            .as_f64()
            .unwrap_or(0.0)
    };
    let cpu = |s: &serde_json::Value| s["cpu"]["aggregator_ms_per_record"].as_f64().unwrap_or(0.0);
    let base = (
        figure(first, &p50),
        figure(first, &p99),
        figure(first, &cpu),
    );
    let rows: Vec<serde_json::Value> = counts
        .iter()
        .map(|&c| {
            let (a, b, d) = (figure(c, &p50), figure(c, &p99), figure(c, &cpu));
            json!({
                "replicas": c,
                "runs": summaries.iter().filter(|s| s["replicas"].as_u64() == Some(c)).count(),
                "batch_ack_p50_ms": a, "batch_ack_p99_ms": b, "aggregator_ms_per_record": d,
                "ratio_to_first": {
                    "p50": round(a / base.0.max(1e-9), 2),
                    "p99": round(b / base.1.max(1e-9), 2),
                    "cpu_per_record": round(d / base.2.max(1e-9), 2),
                },
            })
        })
        .collect();
    let human = rows
        .iter()
        .map(|r| {
            format!(
                "{} replica(s): batch ack p50 {} ms (x{}), p99 {} ms (x{}), aggregator {} ms/record (x{})",
                r["replicas"],
                r["batch_ack_p50_ms"],
                r["ratio_to_first"]["p50"],
                r["batch_ack_p99_ms"],
                r["ratio_to_first"]["p99"],
                r["aggregator_ms_per_record"],
                r["ratio_to_first"]["cpu_per_record"]
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    common::emit(
        &json!({ "bench": "fleet-compare", "by_replicas": rows }),
        &format!("fleet, same fleet per run, medians per replica count: {human}"),
    );
}

#[allow(clippy::too_many_arguments)]
async fn simulate(
    args: &Args,
    scope: &Scope,
    digest: &str,
    lives: Vec<Life>,
    creds: &[common::AgentCreds],
    configs: Vec<quinn::ClientConfig>,
    reenrolled: Vec<Option<quinn::ClientConfig>>,
    db: &Database,
    replicas: &mut Vec<AggregatorProc>,
) -> anyhow::Result<serde_json::Value> {
    let planned: Vec<u64> = lives.iter().map(|l| l.records.len() as u64).collect();
    let skews: Vec<i64> = lives.iter().map(|l| l.skew_ms).collect();
    let schedule = json!({
        "joiners": lives.iter().filter(|l| l.join_ms > 0).count(),
        "leavers": lives.iter().filter(|l| l.leave_ms.is_some()).count(),
        "reenrolments": lives.iter().filter(|l| l.reenroll_ms.is_some()).count(),
        "offline_spells": lives.iter().filter(|l| l.offline.is_some()).count(),
        "records": planned.iter().sum::<u64>(),
        "artifact_records": lives.iter().flat_map(|l| &l.records).filter(|r| r.1 == RecordClass::ArtifactDigest).count(),
        "block_records": lives.iter().flat_map(|l| &l.records).filter(|r| r.1 == RecordClass::Block).count(),
    });
    let addrs = Arc::new(replicas.iter().map(|r| r.quic).collect::<Vec<_>>());
    let endpoints = common::client_endpoints(args.endpoints)?;
    let gate = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let release = CancellationToken::new();
    let mut cpu_of_restarted = 0.0;
    let mut cpu0: Vec<f64> = replicas
        .iter()
        .map(AggregatorProc::cpu_seconds)
        .collect::<anyhow::Result<_>>()?;
    let bench_cpu0 = common::cpu_seconds_of("self")?;
    let start = Instant::now();
    let wall_start_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    for (index, ((life, config), reenrolled_config)) in
        lives.into_iter().zip(configs).zip(reenrolled).enumerate()
    {
        let agent = SimAgent {
            index,
            life,
            config,
            reenrolled_config,
            endpoint: endpoints[index % endpoints.len()].clone(),
            addrs: addrs.clone(),
            gate: gate.clone(),
            tx: tx.clone(),
            start,
            wall_start_ms,
            end_ms: args.duration_secs * 1000,
            batch_every: Duration::from_millis(args.batch_ms.max(1)),
            release: release.clone(),
            outbox: VecDeque::new(),
            next_record: 0,
            seq: 0,
            prev_hash: gait_wire::GENESIS_HASH,
        };
        tokio::spawn(agent.run());
    }
    drop(tx);

    // Collect: a timeline sample every second; the restart when it is due; until every agent finished.
    let mut connected = 0i64;
    let mut acked_total = 0u64;
    let mut timeline_connected = Vec::new();
    let mut timeline_acked = Vec::new();
    let mut acked_this_second = 0u64;
    let mut ack_latency = Vec::new();
    let mut committed_unacked = 0u64;
    let (mut dials, mut refused, mut sessions, mut failovers, mut max_dials) =
        (0u64, 0u64, 0u64, 0u64, 0u32);
    let mut finished: Vec<Option<(u64, gait_wire::Digest)>> = vec![None; args.agents];
    let mut finished_count = 0;
    let mut failures = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut restart = args.restart_at_secs.map(|s| start + Duration::from_secs(s));
    let mut restart_report = None;
    let mut down: Option<Stopped> = None;
    // Records inserted, duplicate, conflicting and gaps, summed over every process (a restarted one's counters
    // are read before it stops).
    let mut totals = [0f64; 4];
    let deadline = start + Duration::from_secs(args.duration_secs + args.drain_timeout_secs);
    while finished_count + failures.len() < args.agents {
        tokio::select! {
            event = rx.recv() => match event {
                Some(Event::Up { attempts, refused: r, failover, .. }) => {
                    connected += 1;
                    sessions += 1;
                    dials += u64::from(attempts);
                    refused += u64::from(r);
                    failovers += u64::from(failover);
                    max_dials = max_dials.max(attempts);
                }
                Some(Event::Down) => connected -= 1,
                Some(Event::CommittedUnacked(n)) => committed_unacked += n,
                Some(Event::Acked(n, latency)) => {
                    acked_total += n;
                    acked_this_second += n;
                    ack_latency.push(latency);
                }
                Some(Event::Finished { agent, records, last_hash }) => {
                    finished[agent] = Some((records, last_hash));
                    finished_count += 1;
                }
                Some(Event::Failed { agent, error }) => failures.push(format!("agent {agent}: {error}")),
                None => break,
            },
            _ = tick.tick() => {
                timeline_connected.push(connected);
                timeline_acked.push(std::mem::take(&mut acked_this_second));
                ensure!(Instant::now() < deadline,
                    "{finished_count} of {} agents finished {} s after the traffic ended",
                    args.agents, args.drain_timeout_secs);
                if restart.is_some_and(|at| Instant::now() >= at) {
                    restart = None;
                    let old = replicas.remove(0);
                    add_counters(&mut totals, &old).await?;
                    cpu_of_restarted += old.cpu_seconds()? - cpu0[0];
                    cpu0[0] = 0.0;
                    let stopped = Stopped {
                        quic: old.quic,
                        http: old.http,
                        data_dir: old.data_dir.clone(),
                        at: Instant::now(),
                        until: Instant::now() + Duration::from_secs(args.down_secs),
                        connected_before: connected,
                    };
                    if args.kill { old.kill().await?; } else { old.terminate(Duration::from_secs(30)).await?; }
                    down = Some(stopped);
                }
                if down.as_ref().is_some_and(|d| Instant::now() >= d.until)
                    && let Some(d) = down.take()
                {
                    let (again, report) = d.start_again(args, db, start).await?;
                    replicas.insert(0, again);
                    restart_report = Some(report);
                }
            }
        }
    }
    if let Some(d) = down.take() {
        let (again, report) = d.start_again(args, db, start).await?;
        replicas.insert(0, again);
        restart_report = Some(report);
    }
    let traffic_and_drain = start.elapsed();
    // Replica 0's CPU includes the process it replaced at the restart.
    let cpu_s: Vec<f64> = replicas
        .iter()
        .zip(&cpu0)
        .enumerate()
        .map(|(i, (r, c0))| {
            let earlier = if i == 0 { cpu_of_restarted } else { 0.0 };
            Ok(r.cpu_seconds()? - c0 + earlier)
        })
        .collect::<anyhow::Result<_>>()?;
    let bench_cpu = common::cpu_seconds_of("self")? - bench_cpu0;
    let memory: Vec<serde_json::Value> = replicas
        .iter()
        .map(|r| Ok(json!({ "rss_kib": r.rss_kib()?, "hwm_kib": r.hwm_kib()? })))
        .collect::<anyhow::Result<_>>()?;
    ensure!(
        failures.is_empty(),
        "{} agents failed: {}",
        failures.len(),
        failures.join("; ")
    );

    // Verify through the HTTP API: every agent's records, counted and chained as the simulator made them.
    let verify = verify_stored(replicas, scope, creds, &finished, &planned, &skews).await?;
    for r in replicas.iter() {
        add_counters(&mut totals, r).await?;
    }
    release.cancel();

    let records: u64 = planned.iter().sum();
    let agg_cpu: f64 = cpu_s.iter().sum();
    let summary = json!({
        "bench": "fleet",
        "seed": args.seed,
        "schedule_digest": digest,
        "backend": db.backend(),
        "replicas": replicas.len(),
        "agents": args.agents,
        "duration_s": args.duration_secs,
        "records_per_agent_per_min": args.records_per_min,
        "schedule": schedule,
        "delivered": {
            "records_made": records,
            "acked": acked_total,
            "committed_but_ack_lost": committed_unacked,
            "stored": verify.stored,
            "agents_verified": verify.agents,
            "gaps_recorded": verify.gaps,
            "inserted_counter": totals[0] as u64,
            "duplicates_redelivered": totals[1] as u64,
            "conflicts": totals[2] as u64,
            "gap_counter": totals[3] as u64,
            "batch_ack_ms": Percentiles::of(&ack_latency).json_ms(),
        },
        "connections": {
            "sessions": sessions,
            "dials": dials,
            "refused": refused,
            "failovers": failovers,
            "max_dials_for_one_session": max_dials,
        },
        "timeline": { "connected": timeline_connected, "acked_per_s": timeline_acked },
        "clock_skew": verify.skew,
        "restart": restart_report,
        "memory_kib": memory,
        "cpu": {
            "aggregator_s": cpu_s.iter().map(|c| round(*c, 2)).collect::<Vec<_>>(),
            "bench_s": round(bench_cpu, 2),
            "aggregator_ms_per_record": round(agg_cpu * 1e3 / records.max(1) as f64, 4),
            "bench_share_of_cpu": round(bench_cpu / (bench_cpu + agg_cpu).max(1e-9), 3),
        },
        "wall_s": round(traffic_and_drain.as_secs_f64(), 1),
    });
    let human = format!(
        "fleet: {} agents ({} backend, {} replica(s)), seed {} schedule {}: {records} records made, {} stored and \
         verified for {} agents, {} gaps, {} redelivered duplicates, {} conflicts; {sessions} sessions from {dials} \
         dials ({refused} refused, {failovers} failovers, at most {max_dials} dials for one session); batch \
         send-to-ack {}; clock offsets seen within {} ms of the truth; aggregator CPU {:.2} ms/record, bench {:.0} % of CPU",
        args.agents,
        db.backend(),
        replicas.len(),
        args.seed,
        &digest[..16],
        verify.stored,
        verify.agents,
        verify.gaps,
        totals[1] as u64,
        totals[2] as u64,
        Percentiles::of(&ack_latency).human_ms(),
        summary["clock_skew"]["offset_error_ms"]["max"],
        agg_cpu * 1e3 / records.max(1) as f64,
        bench_cpu * 100.0 / (bench_cpu + agg_cpu).max(1e-9),
    );
    common::emit(&summary, &human);
    Ok(summary)
}

/// The first replica while it is stopped.
struct Stopped {
    quic: SocketAddr,
    http: SocketAddr,
    data_dir: std::path::PathBuf,
    at: Instant,
    until: Instant,
    connected_before: i64,
}

impl Stopped {
    /// Starts it again on the same addresses; returns it and the restart's report.
    async fn start_again(
        self,
        args: &Args,
        db: &Database,
        run_start: Instant,
    ) -> anyhow::Result<(AggregatorProc, serde_json::Value)> {
        let again =
            crate::idle::start_again(&args.common, &self.data_dir, db, self.quic, self.http)
                .await?;
        let report = json!({
            "at_s": self.at.duration_since(run_start).as_secs(),
            "signal": if args.kill { "SIGKILL" } else { "SIGTERM" },
            "connected_before": self.connected_before,
            "down_for_s": round(self.at.elapsed().as_secs_f64(), 2),
        });
        Ok((again, report))
    }
}

async fn add_counters(totals: &mut [f64; 4], replica: &AggregatorProc) -> anyhow::Result<()> {
    let m = replica.api().metrics().await?;
    for (total, name) in totals.iter_mut().zip([
        gait_aggregator::metrics::RECORDS_INSERTED,
        gait_aggregator::metrics::RECORDS_DUPLICATE,
        gait_aggregator::metrics::RECORDS_CONFLICT,
        gait_aggregator::metrics::RECORD_GAPS,
    ]) {
        *total += common::metric_value(&m, name);
    }
    Ok(())
}

struct Verified {
    agents: usize,
    stored: u64,
    gaps: u64,
    skew: serde_json::Value,
}

/// Reads every agent's records through the HTTP API (spread over the replicas): the count must be what the
/// agent made, the last record's hash the agent's last hash, and no gap recorded. The last record's
/// `created_unix_ms - received_unix_ms` is the agent's clock offset as an operator sees it (plus delivery
/// time), compared with the offset the simulator gave it.
async fn verify_stored(
    replicas: &[AggregatorProc],
    scope: &Scope,
    creds: &[common::AgentCreds],
    finished: &[Option<(u64, gait_wire::Digest)>],
    planned: &[u64],
    skews: &[i64],
) -> anyhow::Result<Verified> {
    let apis: Vec<common::Api> = replicas.iter().map(AggregatorProc::api).collect();
    let base = format!(
        "/v1/orgs/{}/projects/{}/envs/{}/agents",
        scope.org, scope.project, scope.env
    );
    let mut set = tokio::task::JoinSet::new();
    let limit = Arc::new(Semaphore::new(16));
    for (i, c) in creds.iter().enumerate() {
        let (records, last_hash) = finished[i].context("agent did not finish")?;
        ensure!(
            records == planned[i],
            "agent {i} made {records} records, {} planned",
            planned[i]
        );
        let api = apis[i % apis.len()].clone();
        let url = format!("{base}/{}", c.agent_id);
        let limit = limit.clone();
        let skew = skews[i];
        set.spawn(async move {
            let _permit = limit.acquire_owned().await?;
            let (row, gaps) = api.agent_records(&url, records, &last_hash).await?;
            let Some(row) = row else {
                return anyhow::Ok((0u64, gaps, None));
            };
            let seen = row["created_unix_ms"].as_i64().context("created_unix_ms")?
                - row["received_unix_ms"]
                    .as_i64()
                    .context("received_unix_ms")?;
            Ok((records, gaps, Some((seen - skew).unsigned_abs())))
        });
    }
    let (mut stored, mut gaps, mut agents, mut errors) = (0u64, 0u64, 0usize, Vec::new());
    while let Some(r) = set.join_next().await {
        let (total, g, skew_error) = r??;
        stored += total;
        gaps += g;
        agents += 1;
        if let Some(e) = skew_error {
            errors.push(Duration::from_millis(e));
        }
    }
    ensure!(
        gaps == 0,
        "{gaps} gaps recorded though every record was delivered"
    );
    let p = Percentiles::of(&errors);
    Ok(Verified {
        agents,
        stored,
        gaps,
        skew: json!({
            "agents": errors.len(),
            "offset_error_ms": { "p50": common::ms(p.p50), "p99": common::ms(p.p99), "max": common::ms(p.max) },
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn args(extra: &[&str]) -> Args {
        Cli::parse_from(std::iter::once("fleet").chain(extra.iter().copied())).args
    }

    #[test]
    fn the_same_seed_plans_the_same_fleet_and_another_seed_another() {
        let a = args(&["--agents", "300", "--duration-secs", "30"]);
        let (one, two) = (plan_fleet(&a), plan_fleet(&a));
        assert_eq!(one, two);
        assert_eq!(schedule_digest(&one), schedule_digest(&two));
        let other = plan_fleet(&args(&[
            "--agents",
            "300",
            "--duration-secs",
            "30",
            "--seed",
            "2",
        ]));
        assert_ne!(schedule_digest(&one), schedule_digest(&other));
    }

    #[test]
    fn the_plan_has_every_behaviour_in_about_the_asked_shares() {
        let a = args(&["--agents", "2000", "--duration-secs", "60"]);
        let lives = plan_fleet(&a);
        let share = |n: usize| n as f64 / lives.len() as f64;
        let joiners = share(lives.iter().filter(|l| l.join_ms > 0).count());
        let leavers = share(lives.iter().filter(|l| l.leave_ms.is_some()).count());
        let offline = share(lives.iter().filter(|l| l.offline.is_some()).count());
        let reenrol = share(lives.iter().filter(|l| l.reenroll_ms.is_some()).count());
        // Within four standard deviations of the asked share (leavers: of the 90 % that did not join late).
        assert!((0.065..0.135).contains(&joiners), "joiners {joiners}");
        assert!((0.06..0.12).contains(&leavers), "leavers {leavers}");
        assert!((0.16..0.24).contains(&offline), "offline {offline}");
        assert!((0.03..0.07).contains(&reenrol), "re-enrolments {reenrol}");
        for l in &lives {
            let until = l.leave_ms.unwrap_or(60_000);
            assert!(l.records.iter().all(|&(t, _)| t >= l.join_ms && t < until));
            assert!(l.records.windows(2).all(|w| w[0].0 <= w[1].0));
            assert!(l.skew_ms.abs() <= 120_000);
            if let Some((from, until_online)) = l.offline {
                assert!(from > l.join_ms && from < until && until_online > from);
            }
        }
        // 30 records a minute for about a minute: about 30 per agent on average.
        let mean = lives.iter().map(|l| l.records.len()).sum::<usize>() as f64 / lives.len() as f64;
        assert!((24.0..31.0).contains(&mean), "mean records {mean}");
    }
}
