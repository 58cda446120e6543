//! End to end: the server certificate is re-issued for new names under the same CA, and the fleet keeps
//! working — an agent enrolled before reconnects to the restarted aggregator — while a server name the
//! certificate does not cover is no longer ignored in silence: `serve` says so at WARN with the remedy.
#![allow(clippy::disallowed_methods)] // tests spawn freely and read the clock

use anyhow::{Context as _, ensure};
use gait_e2e::{Agent, Aggregator, PATIENCE, hermetic, wait_for};
use serde_json::Value;

#[test]
fn the_server_certificate_is_reissued_under_the_same_ca_and_uncovered_names_are_reported()
-> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut agg = Aggregator::start(&tmp.path().join("agg"), None)?;
    let mut agent = Agent::enroll(&agg, &tmp.path().join("a"), "acme", "web", "prod", "edge")?;
    agent.start()?;
    agent
        .wait_connected("agent connected")
        .with_context(|| agent.log())?;
    let ca = std::fs::read(agg.data_dir.join("pki/ca.pem"))?;

    let out = hermetic("gait-aggregator")
        .args(["pki", "reissue-server", "--json", "--data-dir"])
        .arg(&agg.data_dir)
        .args(["--server-name", "localhost", "--server-name", "127.0.0.1"])
        .args(["--server-name", "agg.example.internal"])
        .output()?;
    ensure!(
        out.status.success(),
        "reissue-server: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout)?;
    ensure!(
        report["server_names"]
            == serde_json::json!(["localhost", "127.0.0.1", "agg.example.internal"])
            && report["previous_server_names"] == serde_json::json!(["localhost", "127.0.0.1"]),
        "{report}"
    );
    ensure!(
        std::fs::read(agg.data_dir.join("pki/ca.pem"))? == ca,
        "the CA changed"
    );

    // Restarted on the new certificate: the agent, holding its old certificate and the same CA, gets back in.
    agg.extra_args = vec!["--server-name".into(), "agg.example.internal".into()];
    let reconnects = agent.status()?["reconnects"].as_u64().unwrap_or(0);
    agg.restart()?;
    wait_for(
        PATIENCE,
        "agent reconnected to the restarted aggregator",
        || {
            let s = agent.status().ok()?;
            (s["connected"] == true && s["reconnects"].as_u64()? > reconnects).then_some(())
        },
    )
    .with_context(|| agent.log())?;
    ensure!(
        !agg.log().contains("does not cover"),
        "covered names were reported missing:\n{}",
        agg.log()
    );

    // A name the certificate does not cover is reported with the remedy, not ignored.
    agg.extra_args = vec!["--server-name".into(), "new.example.internal".into()];
    agg.restart()?;
    wait_for(PATIENCE, "the uncovered name is reported", || {
        let log = agg.log();
        log.lines()
            .any(|l| {
                l.contains("WARN")
                    && l.contains("does not cover")
                    && l.contains("new.example.internal")
                    && l.contains("pki reissue-server")
            })
            .then_some(())
    })
    .with_context(|| agg.log())?;
    Ok(())
}
