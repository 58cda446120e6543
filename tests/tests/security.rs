//! End to end: the aggregator refuses what it must — revoked and foreign-CA agents, malformed and oversized
//! frames — and keeps serving everyone else.

use std::time::Duration;

use anyhow::{Context as _, ensure};
use gait_e2e::{Agent, Aggregator, PATIENCE, POLICY_V1, hermetic, wait_for};
use serde_json::json;

#[test]
fn revoked_agent_is_disconnected_and_refused_while_others_keep_working() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let agg = Aggregator::start(&tmp.path().join("agg"), None)?;
    let mut bad = Agent::enroll(&agg, &tmp.path().join("bad"), "acme", "web", "prod", "bad")?;
    let mut good = Agent::enroll(
        &agg,
        &tmp.path().join("good"),
        "acme",
        "web",
        "prod",
        "good",
    )?;
    bad.start()?;
    good.start()?;
    for a in [&bad, &good] {
        a.wait_connected("connected")?;
    }
    let out = hermetic("gait-aggregator")
        .args(["pki", "revoke", "--reason", "key compromise"])
        .arg("--data-dir")
        .arg(&agg.data_dir)
        .arg("--cert")
        .arg(bad.dir.join("agent.pem"))
        .output()?;
    ensure!(
        out.status.success(),
        "revoke: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(PATIENCE, "revoked agent disconnected", || {
        (bad.status().ok()?["connected"] == false).then_some(())
    })?;
    // It stays out: two more connection attempts end without it connecting.
    stays_disconnected(&bad, 2).context("revoked agent")?;
    bad.append("block", "app.decision", json!({"from": "revoked"}))?;
    let (status, body) = agg.publish("acme", "web", "prod", &[("p.yaml", POLICY_V1)])?;
    ensure!(status == 201, "publish: {status} {body}");
    good.wait_active_epoch(1, "good agent active")?;
    // Two more attempts: the second of them started after the record and the bundle existed, so it would
    // have shipped the one and fetched the other had it been let in.
    stays_disconnected(&bad, 2).context("revoked agent")?;
    ensure!(
        bad.active_epoch().is_none(),
        "revoked agent must not receive bundles"
    );
    let records = agg.records("acme", "web", "prod", "bad")?;
    ensure!(
        !records.iter().any(|r| r["payload"]["from"] == "revoked"),
        "record of a revoked agent was accepted"
    );
    // The agent says why, once, at ERROR with what to do — not a WARN per redial.
    let refusals = |log: &str| {
        log.lines()
            .filter(|l| {
                l.contains("ERROR") && l.contains("REVOKED") && l.contains("pki issue-agent")
            })
            .count()
    };
    wait_for(PATIENCE, "the agent logs the revocation at ERROR", || {
        (refusals(&bad.log()) >= 1).then_some(())
    })?;
    ensure!(
        refusals(&bad.log()) == 1,
        "the revocation was logged at ERROR more than once over several redials:\n{}",
        bad.log()
    );
    // The inventory shows it: revoked, and behind the published epoch; the good agent is neither.
    let inventory = agg.agents("acme")?;
    let row = |id: &str| inventory.iter().find(|a| a["agent_id"] == id).cloned();
    let (bad_row, good_row) = (
        row("bad").context("bad listed")?,
        row("good").context("good listed")?,
    );
    ensure!(
        bad_row["revoked"] == true && bad_row["behind"] == true && bad_row["latest_epoch"] == 1,
        "revoked agent row: {bad_row}"
    );
    ensure!(
        good_row["revoked"] == false && good_row["stale"] == false,
        "good agent row: {good_row}"
    );
    wait_for(PATIENCE, "the refusal is logged", || {
        agg.log().contains("revoked").then_some(())
    })?;
    // The agent held a session ticket from before the revocation, so its redials resumed without the
    // certificate verifier; the post-handshake serial check is what refused them.
    wait_for(PATIENCE, "resumed redial refused", || {
        let resumed = agg
            .metric("gait_aggregator_tls_session_tickets_total{outcome=\"resumed\"}")
            .ok()?;
        let revoked = agg
            .metric("gait_aggregator_connections_refused_total{stage=\"revoked\"}")
            .ok()?;
        (resumed >= 1 && revoked >= 1).then_some(())
    })
    .with_context(|| format!("{:?}", agg.get("/metrics")))?;
    Ok(())
}

#[test]
fn agent_certificate_from_another_ca_never_connects() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let agg = Aggregator::start(&tmp.path().join("agg"), None)?;
    let other = Aggregator::start(&tmp.path().join("other"), None)?;
    // Enrolled by the other deployment's CA, pointed at ours.
    let mut stranger = Agent::enroll(
        &other,
        &tmp.path().join("s"),
        "acme",
        "web",
        "prod",
        "stranger",
    )?;
    let yaml = std::fs::read_to_string(stranger.dir.join("agent.yaml"))?
        .replace(&other.quic.to_string(), &agg.quic.to_string());
    std::fs::write(stranger.dir.join("agent.yaml"), yaml)?;
    // Trust our CA for the server so only the client certificate is foreign.
    std::fs::copy(agg.data_dir.join("pki/ca.pem"), stranger.dir.join("ca.pem"))?;
    stranger.start()?;
    stays_disconnected(&stranger, 3).context("foreign-CA agent")?;
    ensure!(
        agg.agents("acme")?.is_empty(),
        "foreign-CA agent registered"
    );
    Ok(())
}

/// Wait until `agent` has ended `attempts` more connection attempts (its `reconnects` counter) and fail if it
/// is seen connected meanwhile: the observable anchor for "it stays out", instead of sleeping and hoping
/// the attempts happened.
fn stays_disconnected(agent: &Agent, attempts: u64) -> anyhow::Result<()> {
    let from = agent.reconnects()?;
    let connected = wait_for(PATIENCE, "further connection attempts", || {
        let status = agent.status().ok()?;
        if status["connected"] == true {
            return Some(true);
        }
        let now = status["reconnects"].as_u64()?;
        (now >= from + attempts).then_some(false)
    })?;
    ensure!(!connected, "connected: {}", agent.status()?);
    Ok(())
}

/// Open a raw QUIC connection with a valid agent certificate and send `bytes` as one request.
async fn send_raw(
    agg_quic: std::net::SocketAddr,
    dir: &std::path::Path,
    bytes: Vec<u8>,
) -> anyhow::Result<quinn::ConnectionError> {
    let cfg = gait_agent::tls::client_config(
        &dir.join("ca.pem"),
        &dir.join("agent.pem"),
        &dir.join("agent.key"),
        Duration::from_secs(5),
    )?;
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    ep.set_default_client_config(cfg);
    let conn = ep
        .connect(agg_quic, "localhost")?
        .await
        .context("handshake")?;
    let (mut send, mut recv) = conn.open_bi().await?;
    // Hello first, so the stream below is judged on its frame alone.
    let hello = gait_wire::encode_frame(&gait_wire::AgentMsg::V2(gait_wire::AgentMsgV2::Hello(
        gait_wire::Hello {
            agent_version: "raw-test".into(),
            protocol_version: gait_wire::PROTOCOL_VERSION,
            active: None,
            received: None,
            outbox_depth: 0,
            shed_total: 0,
            last_seq: 0,
            instance_id: gait_wire::InstanceId([7; 16]),
        },
    )))?;
    send.write_all(&hello).await?;
    send.finish()?;
    let reply = recv.read_to_end(1 << 20).await?;
    ensure!(!reply.is_empty(), "no Welcome");
    let (mut send, _recv) = conn.open_bi().await?;
    let _ = send.write_all(&bytes).await;
    let _ = send.finish();
    let err = tokio::time::timeout(PATIENCE, conn.closed())
        .await
        .context("connection not closed")?;
    Ok(err)
}

#[test]
fn malformed_and_oversized_frames_close_the_connection_and_leave_the_aggregator_serving()
-> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let agg = Aggregator::start(&tmp.path().join("agg"), None)?;
    let mut good = Agent::enroll(
        &agg,
        &tmp.path().join("good"),
        "acme",
        "web",
        "prod",
        "good",
    )?;
    let raw = Agent::enroll(&agg, &tmp.path().join("raw"), "acme", "web", "prod", "raw")?;
    good.start()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "oversized length header",
            vec![0xff, 0xff, 0xff, 0xff, 1, 2, 3],
        ),
        ("malformed body", {
            // V1 envelope, Hello variant, then a string length that runs past the end of the body.
            let body = [0x00, 0x00, 0xff, 0xff, 0x03, b'x'];
            let mut v = (body.len() as u32).to_be_bytes().to_vec();
            v.extend_from_slice(&body);
            v
        }),
        ("truncated frame", vec![0, 0, 0, 100, 1, 2]),
        ("huge declared vector", {
            // V1, RecordBatch, batch_id 1, then a record count of u64::MAX-ish varint
            let body = vec![
                0x00, 0x02, 0x01, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ];
            let mut v = (body.len() as u32).to_be_bytes().to_vec();
            v.extend_from_slice(&body);
            v
        }),
    ];
    for (name, bytes) in cases {
        let err = rt.block_on(send_raw(agg.quic, &raw.dir, bytes))?;
        match &err {
            quinn::ConnectionError::ApplicationClosed(close) => {
                ensure!(
                    close.error_code == quinn::VarInt::from_u32(1),
                    "{name}: closed with {close:?}"
                );
            }
            other => anyhow::bail!("{name}: expected an application close, got {other}"),
        }
    }
    wait_for(PATIENCE, "the protocol violation is logged", || {
        agg.log().contains("protocol violation").then_some(())
    })
    .with_context(|| agg.log())?;
    // The aggregator is unaffected: the good agent still connects, gets bundles, ships records.
    let (status, body) = agg.publish("acme", "web", "prod", &[("p.yaml", POLICY_V1)])?;
    ensure!(status == 201, "publish: {status} {body}");
    good.wait_active_epoch(1, "good agent active")?;
    good.append("block", "app.decision", json!({"ok": true}))?;
    wait_for(PATIENCE, "record stored", || {
        agg.records("acme", "web", "prod", "good")
            .ok()
            .filter(|r| r.iter().any(|x| x["payload"]["ok"] == true))
    })?;
    let (s, _) = gait_e2e::http_json("GET", &agg.url("/readyz"), None, None)?;
    ensure!(s == 200, "readyz {s}");
    Ok(())
}
