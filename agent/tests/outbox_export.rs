//! `gait-agent outbox export` and `POST /v1/outbox/export` (sites with no network path): the running daemon
//! (in process, its aggregator unreachable) seals its waiting records into a file that verifies against the
//! deployment CA; the real binary goes through the daemon while it runs and reads the database once it
//! stopped; `--after-seq` continues a file; exporting removes nothing; bad requests get a reason.
#![allow(clippy::disallowed_methods)] // tests spawn freely and read the clock

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use gait_testkit::RunningAgent;
use gait_wire::export::OutboxExport;
use serde_json::{Value, json};

const GRACE: Duration = Duration::from_secs(30);

async fn export_cli(config: &Path, out: &Path, after_seq: u64) -> Result<Output> {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_gait-agent"))
        .args(["outbox", "export", "--json", "--config"])
        .arg(config)
        .arg("--out")
        .arg(out)
        .arg("--after-seq")
        .arg(after_seq.to_string())
        .output()
        .await
        .context("run gait-agent outbox export")
}

fn json_of(output: &Output, code: i32) -> Result<Value> {
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.code() == Some(code),
        "exit {:?}, expected {code}; stdout: {stdout}; stderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.trim()).with_context(|| format!("stdout is not JSON: {stdout}"))
}

async fn post_export(agent: &RunningAgent, body: &str) -> Result<(u16, Vec<u8>, Option<String>)> {
    let response = agent
        .http()
        .post(format!("http://{}/v1/outbox/export", agent.local_api()))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await?;
    let status = response.status().as_u16();
    let remaining = response
        .headers()
        .get("gait-outbox-remaining")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Ok((status, response.bytes().await?.to_vec(), remaining))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_is_sealed_by_the_daemon_or_from_the_database_and_nothing_leaves_it()
-> Result<()> {
    gait_testkit::init_logs();
    let tmp = tempfile::tempdir()?;
    let pki = gait_testkit::Pki::create(&tmp.path().join("pki"), "test.gait")?;
    let tenant = gait_testkit::tenant("acme", "payments", "prod")?;
    let certs = pki.issue_agent(&tmp.path().join("tls"), &tenant, "island-1")?;
    let registry = gait_canon::sign::SigningKey::generate();
    let (private, public) = (
        tmp.path().join("registry.key"),
        tmp.path().join("registry.pub"),
    );
    gait_canon::sign::write_key_pair(&private, &public, &registry)?;
    let config = gait_testkit::agent_config("127.0.0.1:9".parse()?, &certs, &public, tmp.path());
    let config_file = tmp.path().join("agent.yaml");
    std::fs::write(&config_file, serde_json::to_vec_pretty(&config)?)?;
    let ca: Vec<Vec<u8>> = {
        use rustls::pki_types::pem::PemObject as _;
        rustls::pki_types::CertificateDer::pem_file_iter(pki.ca_cert())?
            .map(|c| c.map(|c| c.to_vec()))
            .collect::<Result<_, _>>()?
    };

    let agent = RunningAgent::start(config.clone(), GRACE).await?;
    for n in 0..3 {
        let (status, answer) = agent
            .post_record(&json!({"class": "block", "kind": "app.decision", "payload": {"n": n}}))
            .await?;
        ensure!(status == 200 || status == 201, "append: {status} {answer}");
    }

    // The route: the sealed file, verifiable with the CA alone.
    let (status, bytes, remaining) = post_export(&agent, "{}").await?;
    ensure!(
        status == 200,
        "export: {status} {}",
        String::from_utf8_lossy(&bytes)
    );
    ensure!(remaining.as_deref() == Some("0"), "{remaining:?}");
    let export = OutboxExport::decode(&bytes)?;
    export.verify_signature()?;
    let now = u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp())?;
    export.verify_certificate_chain(&ca, now)?;
    ensure!(
        export.header.agent_uri == certs.uri,
        "{}",
        export.header.agent_uri
    );
    // Seq 1 is the agent's trace key announcement (written at its first start), then the three records.
    ensure!(export.header.first_seq == 1 && export.header.last_seq == 4);
    ensure!(export.records[0].kind == gait_wire::trace_key::TRACE_KEY_KIND);
    ensure!(
        export.records[3]
            .payload
            .windows(5)
            .any(|w| w == b"\"n\":2")
    );
    // Bad bodies and nothing after the last seq.
    let (status, body, _) = post_export(&agent, r#"{"after":1}"#).await?;
    ensure!(status == 400, "{status} {}", String::from_utf8_lossy(&body));
    let (status, body, _) = post_export(&agent, r#"{"after_seq":4}"#).await?;
    let answer: Value = serde_json::from_slice(&body)?;
    ensure!(
        status == 409 && answer["error"]["code"] == "outbox_empty",
        "{status} {answer}"
    );

    // The binary through the daemon, continuing after seq 1.
    let out = tmp.path().join("part.json");
    let report = json_of(&export_cli(&config_file, &out, 1).await?, 0)?;
    ensure!(
        report["via"] == "daemon" && report["first_seq"] == 2 && report["count"] == 3,
        "{report}"
    );
    let file = OutboxExport::decode(&std::fs::read(&out)?)?;
    ensure!(file.records[..] == export.records[1..]);
    ensure!(
        agent.status().await?.outbox.depth == 4,
        "exporting removed records"
    );

    // Stopped: the binary reads the database; the records are all still there.
    agent.stop().await?;
    let out = tmp.path().join("all.json");
    let report = json_of(&export_cli(&config_file, &out, 0).await?, 0)?;
    ensure!(
        report["via"] == "database" && report["count"] == 4,
        "{report}"
    );
    ensure!(OutboxExport::decode(&std::fs::read(&out)?)?.records == export.records);
    let report = json_of(
        &export_cli(&config_file, &tmp.path().join("none.json"), 4).await?,
        66,
    )?;
    ensure!(
        report["error"]
            .as_str()
            .is_some_and(|e| e.contains("after seq 4")),
        "{report}"
    );
    ensure!(!tmp.path().join("none.json").exists());
    Ok(())
}
