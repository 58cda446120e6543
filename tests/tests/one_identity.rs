//! End to end: one live agent per certificate, and no acknowledged decision lost to a second instance.
//!
//! 1. Two agents share one certificate with different data directories: the second is refused with
//!    `CLOSE_IDENTITY_IN_USE` (its status says so, it logs an ERROR naming what to do, and keeps its records),
//!    the aggregator logs an ERROR naming both instance ids, stores an `agent_alerts` row and counts it; every
//!    record of the first agent arrives.
//! 2. The second agent's data directory, which wrote its own seqs 1..3 while refused, connects once the first
//!    is gone (a wiped data directory reusing the certificate): the aggregator raises an `instance_behind`
//!    alert, keeps the first agent's records at those seqs, and the second agent quarantines its conflicting
//!    records instead of deleting them, then continues after the aggregator's head.
//!
//! 3. At the wire: the same instance redialling while its old connection is still open replaces the old session
//!    (closed with code 0), and another instance is closed with code 5 while the newer session keeps working.
//!
//! Real binaries on 127.0.0.1 with SQLite; the store-level part runs on both backends in
//! `aggregator/store/tests/store.rs`.
#![allow(clippy::disallowed_methods)] // tests spawn freely and read the clock

use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use gait_e2e::{Agent, Aggregator, PATIENCE, wait_for};
use gait_store::{AgentAlert, AlertKind, Store, Tenant};
use serde_json::{Value, json};

const ORG: &str = "acme";
const PROJECT: &str = "web";
const ENV: &str = "prod";
const AGENT: &str = "edge";
/// Records every fresh data directory writes first: the announcement of its trace key (seq 1).
const ANNOUNCED: u64 = 1;

fn stored(agg: &Aggregator) -> Vec<Value> {
    agg.records(ORG, PROJECT, ENV, AGENT).unwrap_or_default()
}

fn alerts(agg: &Aggregator) -> anyhow::Result<Vec<AgentAlert>> {
    let url = format!(
        "sqlite://{}?mode=ro",
        agg.data_dir.join("aggregator.db").display()
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let store = Store::connect(&url).await?;
        let alerts = store
            .alerts(&Tenant::from_parts(ORG, PROJECT, ENV)?, 100)
            .await?;
        store.close().await;
        anyhow::Ok(alerts)
    })
}

fn append(agent: &Agent, n: u64) -> anyhow::Result<u64> {
    agent
        .append(
            "block",
            "app.decision",
            json!({ "n": n, "from": agent.dir }),
        )?
        .context("a block record is never shed")
}

#[test]
fn a_second_instance_of_one_identity_is_refused_and_nothing_acknowledged_is_lost()
-> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let agg = Aggregator::start(&tmp.path().join("agg"), None)?;
    let mut first = Agent::enroll(&agg, &tmp.path().join("a"), ORG, PROJECT, ENV, AGENT)?;
    first.start()?;
    first
        .wait_connected("first agent connected")
        .with_context(|| first.log())?;
    let mut first_seqs = Vec::new();
    for n in 0..5 {
        first_seqs.push(append(&first, n)?);
    }

    // 1. The same certificate from another data directory is refused while the first is connected.
    let mut second = first.same_certificate_in(&tmp.path().join("b"))?;
    second.start()?;
    wait_for(PATIENCE, "second agent refused as another instance", || {
        (second.status().ok()?["identity_in_use"] == true).then_some(())
    })
    .with_context(|| format!("{}\n{}", second.log(), agg.log()))?;
    ensure!(
        second.status()?["connected"] == false,
        "the second instance got in"
    );
    let second_log = second.log();
    ensure!(
        second_log.lines().any(|l| l.contains("ERROR")
            && l.contains("another instance of this agent identity is connected")
            && l.contains("issue this host its own certificate")),
        "no ERROR on the refused agent naming what to do:\n{second_log}"
    );
    // It keeps deciding locally: its records stay in its outbox.
    let second_seqs: Vec<u64> = (0..3)
        .map(|n| append(&second, 100 + n))
        .collect::<anyhow::Result<_>>()?;
    ensure!(
        second_seqs == [ANNOUNCED + 1, ANNOUNCED + 2, ANNOUNCED + 3],
        "second outbox seqs {second_seqs:?}"
    );

    for n in 5..10 {
        first_seqs.push(append(&first, n)?);
    }
    let mut seen = Vec::new();
    wait_for(PATIENCE, "every record of the first agent stored", || {
        seen = stored(&agg);
        (seen.len() == first_seqs.len()).then_some(())
    })
    .with_context(|| format!("stored {} records\n{}", seen.len(), agg.log()))?;
    ensure!(
        seen.iter()
            .all(|r| r["payload"]["from"] == json!(first.dir)),
        "a record of the second instance was stored: {seen:?}"
    );
    wait_for(PATIENCE, "first agent's outbox drained", || {
        (first.status().ok()?["outbox"]["depth"] == 0).then_some(())
    })?;
    ensure!(
        second.status()?["outbox"]["depth"] == ANNOUNCED + 3,
        "the refused agent lost records"
    );

    let agg_log = agg.log();
    let refusal = agg_log
        .lines()
        .find(|l| l.contains("ERROR") && l.contains("another instance of this agent identity"))
        .with_context(|| format!("no ERROR on the aggregator:\n{agg_log}"))?;
    ensure!(
        refusal.contains(AGENT)
            && refusal.contains("instance_id=")
            && refusal.contains("live_instance_id=")
            && refusal.contains("live_remote="),
        "the ERROR does not name the agent, both instances and peers: {refusal}"
    );
    let found = alerts(&agg)?;
    let duplicate = found
        .iter()
        .find(|a| a.kind == AlertKind::DuplicateInstance)
        .with_context(|| format!("no duplicate_instance alert row: {found:?}"))?;
    ensure!(
        duplicate.instance_id != duplicate.other_instance_id
            && duplicate.agent.agent_id.as_str() == AGENT,
        "{duplicate:?}"
    );
    ensure!(
        agg.metric("gait_aggregator_identity_alerts_total{kind=\"duplicate_instance\"}")? >= 1,
        "refusal not counted"
    );
    // The admin API lists the same alert for the tenant.
    let (status, listed) = agg.get(&format!(
        "/v1/orgs/{ORG}/projects/{PROJECT}/envs/{ENV}/alerts"
    ))?;
    ensure!(
        status == 200
            && listed["alerts"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x["kind"] == "duplicate_instance"
                    && x["instance_id"] == duplicate.instance_id.as_str())),
        "alerts route: {status} {listed}"
    );
    // And the operator's CLI shows it as a table.
    let out = gait_e2e::hermetic("gait-aggregator")
        .args([
            "alerts",
            "--org",
            ORG,
            "--project",
            PROJECT,
            "--env",
            ENV,
            "--server",
        ])
        .arg(agg.url(""))
        .arg("--token-file")
        .arg(agg.data_dir.join("admin.token"))
        .output()?;
    let table = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success()
            && table.lines().any(|l| l.contains(AGENT)
                && l.contains("duplicate_instance")
                && l.contains(duplicate.instance_id.as_str())),
        "gait-aggregator alerts: {table}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // 2. The first agent goes away; the second data directory (its announcement and seqs 2..4 of its own) takes
    // the identity.
    second.stop();
    first.stop();
    second.start()?;
    wait_for(PATIENCE, "conflicting records quarantined", || {
        let s = second.status().ok()?;
        (s["outbox"]["quarantined"] == ANNOUNCED + 3 && s["outbox"]["depth"] == 0).then_some(())
    })
    .with_context(|| format!("{}\n{}", second.log(), agg.log()))?;
    let status = second.status()?;
    ensure!(
        status["outbox"]["conflicts"] == ANNOUNCED + 3,
        "status: {status}"
    );
    ensure!(
        second
            .log()
            .lines()
            .any(|l| l.contains("ERROR") && l.contains("moved to the quarantine")),
        "no ERROR naming the quarantined conflicts:\n{}",
        second.log()
    );
    // Nothing of the first agent was replaced, and the second continues after the aggregator's head (it
    // redials once its outbox is empty behind the head, and the next Welcome moves its sequence past it).
    wait_for(
        PATIENCE,
        "the second agent continued after the head",
        || {
            let s = second.status().ok()?;
            (s["connected"] == true && s["outbox"]["last_seq"].as_u64()? >= ANNOUNCED + 10)
                .then_some(())
        },
    )
    .with_context(|| second.log())?;
    let after = append(&second, 200)?;
    ensure!(
        after > ANNOUNCED + 10,
        "the second agent reused seq {after}"
    );
    wait_for(PATIENCE, "the second agent's new record stored", || {
        stored(&agg)
            .iter()
            .any(|r| r["seq"].as_u64() == Some(after))
            .then_some(())
    })
    .with_context(|| format!("{}\n{}", second.log(), agg.log()))?;
    let now = stored(&agg);
    ensure!(
        now.iter()
            .filter(|r| r["seq"].as_u64().is_some_and(|s| s <= ANNOUNCED + 10))
            .all(|r| r["payload"]["from"] == json!(first.dir)),
        "a record of the first agent was replaced"
    );
    let found = alerts(&agg)?;
    ensure!(
        found.iter().any(|a| a.kind == AlertKind::InstanceBehind),
        "no instance_behind alert row: {found:?}"
    );
    ensure!(
        agg.metric("gait_aggregator_identity_alerts_total{kind=\"instance_behind\"}")? >= 1,
        "instance_behind not counted"
    );
    ensure!(
        agg.metric("gait_aggregator_records_conflict_total")? >= 3,
        "conflicts not counted"
    );
    // The agents view shows the durable conflict count and the instance that now holds the identity.
    let row = agg
        .agents(ORG)?
        .into_iter()
        .find(|a| a["agent_id"] == AGENT)
        .context("agent listed")?;
    let second_instance = std::fs::read_to_string(second.dir.join("data").join("instance_id"))?;
    ensure!(
        row["conflict_count"] == ANNOUNCED + 3 && row["instance_id"] == second_instance.trim(),
        "agents view: {row}"
    );
    Ok(())
}

/// A raw QUIC connection with the agent's certificate that says `Hello` as `instance`; returns the connection
/// (its endpoint kept alive with it) and the reply, `None` when the connection closed instead of answering.
async fn raw_hello(
    agg: std::net::SocketAddr,
    dir: &std::path::Path,
    instance: gait_wire::InstanceId,
) -> anyhow::Result<(
    quinn::Endpoint,
    quinn::Connection,
    Option<gait_wire::ServerMsg>,
)> {
    let cfg = gait_agent::tls::client_config(
        &dir.join("ca.pem"),
        &dir.join("agent.pem"),
        &dir.join("agent.key"),
        Duration::from_secs(5),
    )?;
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    ep.set_default_client_config(cfg);
    let conn = ep.connect(agg, "localhost")?.await.context("handshake")?;
    let reply = hello_on(&conn, instance).await?;
    Ok((ep, conn, reply))
}

async fn hello_on(
    conn: &quinn::Connection,
    instance: gait_wire::InstanceId,
) -> anyhow::Result<Option<gait_wire::ServerMsg>> {
    let hello = gait_wire::encode_frame(&gait_wire::AgentMsg::V2(gait_wire::AgentMsgV2::Hello(
        gait_wire::Hello {
            agent_version: "raw-test".into(),
            protocol_version: gait_wire::PROTOCOL_VERSION,
            active: None,
            received: None,
            outbox_depth: 0,
            shed_total: 0,
            last_seq: 0,
            instance_id: instance,
        },
    )))?;
    let Ok((mut send, mut recv)) = conn.open_bi().await else {
        return Ok(None);
    };
    if send.write_all(&hello).await.is_err() || send.finish().is_err() {
        return Ok(None);
    }
    let Ok(bytes) = tokio::time::timeout(PATIENCE, recv.read_to_end(1 << 20))
        .await
        .context("no reply to Hello")?
    else {
        return Ok(None);
    };
    if bytes.len() < 4 {
        return Ok(None);
    }
    Ok(Some(gait_wire::decode_server_msg(&bytes[4..])?))
}

fn is_welcome(reply: &Option<gait_wire::ServerMsg>) -> bool {
    matches!(
        reply,
        Some(gait_wire::ServerMsg::V2(gait_wire::ServerMsgV2::Welcome(_)))
    )
}

async fn close_code(conn: &quinn::Connection) -> anyhow::Result<u32> {
    match tokio::time::timeout(PATIENCE, conn.closed())
        .await
        .context("connection not closed")?
    {
        quinn::ConnectionError::ApplicationClosed(close) => {
            Ok(u32::try_from(close.error_code.into_inner())?)
        }
        other => bail!("connection ended otherwise: {other}"),
    }
}

#[test]
fn the_same_instance_redialling_replaces_its_session_and_another_instance_is_closed_with_code_5()
-> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let agg = Aggregator::start(&tmp.path().join("agg"), None)?;
    let agent = Agent::enroll(&agg, &tmp.path().join("a"), ORG, PROJECT, ENV, AGENT)?;
    let (x, y) = (
        gait_wire::InstanceId([0x11; 16]),
        gait_wire::InstanceId([0x22; 16]),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let (_ep1, old, reply) = raw_hello(agg.quic, &agent.dir, x).await?;
        ensure!(is_welcome(&reply), "first session: {reply:?}");
        // The same instance again while the old connection is open (a redial after a network blip).
        let (_ep2, newer, reply) = raw_hello(agg.quic, &agent.dir, x).await?;
        ensure!(
            is_welcome(&reply),
            "the same instance redialling was refused: {reply:?}"
        );
        ensure!(
            close_code(&old).await? == gait_wire::close::CLOSE_NORMAL,
            "the replaced session was not closed normally"
        );
        // Another instance is refused with code 5 while the newer session holds the identity.
        let (_ep3, other, reply) = raw_hello(agg.quic, &agent.dir, y).await?;
        ensure!(!is_welcome(&reply), "another instance got in: {reply:?}");
        ensure!(
            close_code(&other).await? == gait_wire::close::CLOSE_IDENTITY_IN_USE,
            "another instance was not closed with CLOSE_IDENTITY_IN_USE"
        );
        ensure!(
            is_welcome(&hello_on(&newer, x).await?),
            "the holding session stopped working"
        );
        anyhow::Ok(())
    })
    .with_context(|| agg.log())?;
    ensure!(
        agg.metric("gait_aggregator_identity_alerts_total{kind=\"duplicate_instance\"}")? == 1,
        "exactly one refusal counted"
    );
    Ok(())
}
