//! Both daemons' `/metrics` pass `promtool check metrics` (Debian package `prometheus`; `.ci/run` installs
//! it): well-formed exposition, HELP and TYPE for every series, Prometheus naming conventions. The alerting
//! rules in `deploy/prometheus` pass `promtool check rules` and their unit tests, and name only real series.
#![allow(clippy::disallowed_methods)] // tests spawn freely and read the clock

use std::io::Write as _;
use std::process::{Command, Stdio};

use anyhow::{Context as _, ensure};
use gait_e2e::{Agent, Aggregator, PATIENCE, http_json, wait_for};
use serde_json::json;

fn promtool_check(what: &str, text: &str) -> anyhow::Result<()> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("promtool (Debian package prometheus) must be installed; .ci/run installs it")?;
    child
        .stdin
        .take()
        .context("promtool stdin")?
        .write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics on the {what}: {}\n{said}\n--- exposition ---\n{text}",
        out.status
    );
    Ok(())
}

#[test]
fn both_daemons_metrics_pass_promtool() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let agg = Aggregator::start(&tmp.path().join("agg"), None)?;
    let mut agent = Agent::enroll(&agg, &tmp.path().join("a"), "acme", "web", "prod", "edge")?;
    agent.start()?;
    agent
        .wait_connected("agent connected")
        .with_context(|| agent.log())?;
    // Some traffic first, so labelled series exist: a record and a decision (no bundle yet: blocked).
    agent.append("block", "app.decision", json!({"n": 1}))?;
    let intent = json!({
        "schema_id": "gait.gate.intent_request", "schema_version": "1.0.0",
        "created_at": "2026-02-05T00:00:00Z", "producer_version": "test", "tool_name": "fs.write",
        "args": {"path": "/tmp/x"}, "targets": [{"kind": "path", "value": "/tmp/x"}],
        "context": {"identity": "alice", "workspace": "/tmp", "risk_class": "high"}
    });
    let (status, decision) = http_json(
        "POST",
        &format!("http://{}/v1/gate/evaluate", agent.api),
        Some(&agent.api_token()?),
        Some(intent),
    )?;
    ensure!(
        status == 200 && decision["verdict"] == "block",
        "{status} {decision}"
    );

    // The agent's record reaches the store: a batch commit is timed.
    wait_for(PATIENCE, "a batch commit", || {
        (agg.metric("gait_aggregator_batch_commit_duration_seconds_count")
            .ok()?
            >= 1)
            .then_some(())
    })?;
    let (status, agg_body) = http_json("GET", &format!("http://{}/metrics", agg.http), None, None)?;
    ensure!(status == 200, "aggregator /metrics: {status}");
    let text = agg_body.as_str().context("text")?;
    promtool_check("aggregator", text)?;
    for series in [
        "\nprocess_resident_memory_bytes ",
        "\nprocess_cpu_seconds_total ",
        "\nprocess_open_fds ",
    ] {
        ensure!(
            text.contains(series),
            "aggregator: {series} missing:\n{text}"
        );
    }
    // Requests are counted under the matched route template, never the raw path (whose ids are unbounded).
    let requests: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("gait_aggregator_http_requests_total{"))
        .collect();
    ensure!(
        requests
            .iter()
            .any(|l| l.contains("route=\"/metrics\",method=\"GET\",status=\"200\"")),
        "the earlier /metrics scrapes are not counted under their route:\n{text}"
    );
    ensure!(
        requests.iter().all(|l| !l.contains("acme")),
        "a raw path leaked into a route label:\n{text}"
    );
    let (status, body) = http_json("GET", &format!("http://{}/metrics", agent.api), None, None)?;
    ensure!(status == 200, "agent /metrics: {status}");
    let text = body.as_str().context("text")?;
    promtool_check("agent", text)?;
    for series in [
        "\nprocess_start_time_seconds ",
        "\nprocess_resident_memory_bytes ",
        "gait_agent_decisions_total{verdict=\"allow\"} 0",
        "gait_agent_decisions_total{verdict=\"block\"} 1",
        "gait_agent_decision_duration_seconds_count 1",
        "gait_agent_outbox_commit_duration_seconds_bucket{le=\"1.0\"}",
        "gait_agent_outbox_commit_records_bucket{le=\"512.0\"}",
        "\ngait_agent_outbox_unapplied_records ",
    ] {
        ensure!(text.contains(series), "{series} missing:\n{text}");
    }
    // The decision's group (and the agent's own records before it) went through the write-ahead log.
    ensure!(
        text.lines().any(|l| l
            .strip_prefix("gait_agent_outbox_commits_total{durable_in=\"log\"} ")
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n >= 1))
            && text.contains("gait_agent_outbox_commits_total{durable_in=\"database\"} "),
        "outbox commits by durability missing:\n{text}"
    );
    ensure!(
        text.lines().any(|l| l
            .strip_prefix("gait_agent_certificate_expiry_timestamp_seconds ")
            .and_then(|v| v.parse::<i64>().ok())
            .is_some_and(|t| t > 1_700_000_000)),
        "certificate expiry missing:\n{text}"
    );
    alert_rules_check(&[agg_body.as_str().unwrap_or_default(), text])?;
    Ok(())
}

/// `deploy/prometheus/gait-alerts.yml` passes `promtool check rules` and its unit tests, and every Gait series
/// it names is in one of `expositions` (so a renamed metric cannot leave an alert that never fires).
fn alert_rules_check(expositions: &[&str]) -> anyhow::Result<()> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus");
    for args in [
        ["check", "rules", "gait-alerts.yml"],
        ["test", "rules", "gait-alerts.test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .context(
                "promtool (Debian package prometheus) must be installed; .ci/run installs it",
            )?;
        ensure!(
            out.status.success(),
            "promtool {}: {}\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let rules = std::fs::read_to_string(dir.join("gait-alerts.yml"))?;
    let named: std::collections::BTreeSet<&str> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("gait_agent_") || w.starts_with("gait_aggregator_"))
        .collect();
    ensure!(
        named.len() >= 10,
        "too few series found in the rules: {named:?}"
    );
    for name in named {
        let exposed = expositions.iter().any(|text| {
            text.lines().any(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
        });
        ensure!(
            exposed,
            "gait-alerts.yml names {name}, which neither daemon exposes"
        );
    }
    Ok(())
}

/// The aggregator's access log has one line per request, inside a span carrying the caller's request id.
#[test]
fn the_api_access_log_names_each_request_with_its_id() -> anyhow::Result<()> {
    use std::io::Read as _;
    let tmp = tempfile::tempdir()?;
    let agg = Aggregator::start(&tmp.path().join("agg"), None)?;
    let mut stream = std::net::TcpStream::connect(agg.http)?;
    write!(
        stream,
        "GET /v1/orgs/acme/agents?limit=5 HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {}\r\nx-request-id: ci-req-42\r\nconnection: close\r\n\r\n",
        agg.http, agg.token
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    ensure!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    wait_for(PATIENCE, "the access line", || {
        agg.log()
            .lines()
            .any(|l| {
                l.contains("ci-req-42")
                    && l.contains("/v1/orgs/acme/agents")
                    && l.contains("status=200")
                    && !l.contains("limit=5")
            })
            .then_some(())
    })
    .with_context(|| agg.log())?;
    Ok(())
}
