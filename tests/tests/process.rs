//! End to end: both binaries behave as processes should when their surroundings misbehave — a log pipe that
//! closes (`gait-agent run 2>&1 | head -3`), SIGTERM, and log lines a machine reads (one JSON schema for both).

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, ensure};
use gait_e2e::{Agent, Aggregator, PATIENCE, bin, free_port, http_json, wait_for};
use serde_json::Value;

const BASELINE: &str = include_str!("../../examples/policies/fleet-baseline.yaml");
const READ_REPORT: &str = include_str!("../../examples/intents/read-report.json");

/// Sends SIGTERM and waits (by polling, bounded) for the process to exit; returns its exit code.
fn terminate(child: &mut Child, within: Duration) -> anyhow::Result<Option<i32>> {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    let status = wait_for(within, "process exit after SIGTERM", || {
        child.try_wait().ok().flatten()
    });
    if status.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
    Ok(status?.code())
}

fn gate_evaluate(agent: &Agent, intent: &str) -> anyhow::Result<Value> {
    let body: Value = serde_json::from_str(intent)?;
    let (status, answer) = http_json(
        "POST",
        &format!("http://{}/v1/gate/evaluate", agent.api),
        Some(&agent.api_token()?),
        Some(body),
    )?;
    ensure!(status == 200, "gate evaluate answered {status}: {answer}");
    Ok(answer)
}

fn decisions_on_aggregator(agg: &Aggregator, agent: &Agent) -> usize {
    agg.records(&agent.org, &agent.project, &agent.env, &agent.id)
        .map(|records| {
            records
                .iter()
                .filter(|r| r["kind"] == "gate.decision")
                .count()
        })
        .unwrap_or(0)
}

/// Starts `gait-agent run` with stdout and stderr into pipes whose read ends are closed at once. With its log
/// gone the agent cannot report the port it bound, so the test picks a free port for its local API, and picks
/// another if a different process took that one first (the agent then exits with a bind error).
fn spawn_agent_with_closed_pipes(agent: &mut Agent) -> anyhow::Result<Child> {
    let mut last = String::new();
    for _ in 0..5 {
        let api: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        let mut child = Command::new(bin("gait-agent"))
            .arg("run")
            .arg("--config")
            .arg(agent.dir.join("agent.yaml"))
            .arg("--grace-period")
            .arg("5s")
            .env("GAIT_AGENT_LOG", "debug")
            .env("GAIT_AGENT_LOCAL_API_LISTEN", api.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        drop(child.stdout.take());
        drop(child.stderr.take());
        let url = format!("http://{api}/healthz");
        let up = wait_for(PATIENCE, "agent local API", || {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(Err(status));
            }
            http_json("GET", &url, None, None)
                .ok()
                .filter(|(s, _)| *s == 200)
                .map(|_| Ok(()))
        })?;
        match up {
            Ok(()) => {
                agent.api = api;
                return Ok(child);
            }
            Err(status) => last = format!("agent exited ({status}) on {api}"),
        }
    }
    anyhow::bail!("the agent never came up: {last}")
}

#[test]
fn an_agent_whose_log_pipe_closes_keeps_deciding_and_syncing_and_stops_on_sigterm()
-> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let agg = Aggregator::start(&tmp.path().join("agg"), None)?;
    let mut agent = Agent::enroll(
        &agg,
        &tmp.path().join("a1"),
        "acme",
        "payments",
        "prod",
        "a1",
    )?;
    let mut child = spawn_agent_with_closed_pipes(&mut agent)?;

    // Syncing: a bundle published after the pipe closed still reaches the agent.
    let (status, answer) = agg.publish(
        "acme",
        "payments",
        "prod",
        &[("fleet-baseline.yaml", BASELINE)],
    )?;
    ensure!(status == 201 || status == 200, "publish: {status} {answer}");
    agent
        .wait_active_epoch(1, "bundle active at the agent")
        .with_context(|| format!("agent process: {:?}", child.try_wait()))?;

    // Deciding: every decision is answered and its record reaches the aggregator.
    for _ in 0..20 {
        let answer = gate_evaluate(&agent, READ_REPORT)?;
        ensure!(answer["verdict"].is_string(), "no verdict in {answer}");
    }
    wait_for(PATIENCE, "20 decision records on the aggregator", || {
        (decisions_on_aggregator(&agg, &agent) >= 20).then_some(())
    })?;
    ensure!(
        child.try_wait()?.is_none(),
        "the agent exited while its log pipe was closed"
    );

    let code = terminate(&mut child, Duration::from_secs(20))?;
    ensure!(code == Some(0), "agent exit code after SIGTERM: {code:?}");
    Ok(())
}

#[test]
fn an_aggregator_whose_log_pipe_closes_keeps_serving_and_stops_on_sigterm() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("agg");
    let mut child = Command::new(bin("gait-aggregator"))
        .arg("serve")
        .arg("--data-dir")
        .arg(&data)
        .args([
            "--quic-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .args(["--grace-seconds", "5"])
        .env("GAIT_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    drop(child.stderr.take());
    let stdout = child.stdout.take().context("stdout")?;
    // Read the serving line on a thread so a hung start-up fails the test instead of hanging it; the reader (and
    // with it the pipe) is dropped right after, so later stdout writes fail too.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(line) => line,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("the aggregator printed no serving line within 60 s (hung at start-up)");
        }
    };
    let http = line
        .trim()
        .split_once(" http=http://")
        .map(|(_, h)| h.to_owned())
        .with_context(|| format!("no serving line, got {line:?}"))?;
    let token = std::fs::read_to_string(data.join("admin.token"))?
        .trim()
        .to_owned();
    for _ in 0..20 {
        let (status, body) = http_json(
            "GET",
            &format!("http://{http}/v1/orgs/acme/agents"),
            Some(&token),
            None,
        )?;
        ensure!(status == 200, "agents: {status} {body}");
    }
    ensure!(
        child.try_wait()?.is_none(),
        "the aggregator exited while its log pipe was closed"
    );
    let code = terminate(&mut child, Duration::from_secs(20))?;
    ensure!(
        code == Some(0),
        "aggregator exit code after SIGTERM: {code:?}"
    );
    Ok(())
}

/// The first JSON object line of a log file that satisfies `pick`.
fn json_line(path: &Path, pick: impl Fn(&Value) -> bool) -> Option<Value> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| pick(v))
}

fn assert_schema(line: &Value, service: &str) -> anyhow::Result<()> {
    let obj = line.as_object().context("log line is an object")?;
    for key in ["timestamp", "level", "service", "target", "message"] {
        ensure!(
            obj.contains_key(key),
            "{service} log line lacks `{key}`: {line}"
        );
    }
    ensure!(
        obj["service"] == service,
        "service is {} in {line}",
        obj["service"]
    );
    ensure!(
        ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&obj["level"].as_str().unwrap_or("")),
        "level in {line}"
    );
    let allowed = [
        "timestamp",
        "level",
        "service",
        "target",
        "message",
        "fields",
        "spans",
    ];
    for key in obj.keys() {
        ensure!(
            allowed.contains(&key.as_str()),
            "unexpected key `{key}` in {line}"
        );
    }
    if let Some(fields) = obj.get("fields") {
        ensure!(fields.is_object(), "fields is an object in {line}");
    }
    Ok(())
}

#[test]
fn both_binaries_write_one_json_log_schema() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let agg = Aggregator::start_with(
        &tmp.path().join("agg"),
        None,
        "127.0.0.1:0".parse()?,
        "127.0.0.1:0".parse()?,
        &["--log-format", "json"],
    )?;
    let agent = Agent::enroll(
        &agg,
        &tmp.path().join("a1"),
        "acme",
        "payments",
        "prod",
        "a1",
    )?;
    let log = std::fs::File::create(agent.dir.join("agent.log"))?;
    let mut child = Command::new(bin("gait-agent"))
        .args(["--log-format", "json", "run", "--config"])
        .arg(agent.dir.join("agent.yaml"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    let agent_line = wait_for(PATIENCE, "a JSON line from the agent", || {
        json_line(&agent.dir.join("agent.log"), |v| {
            v["message"].as_str().is_some_and(|m| !m.is_empty())
        })
    });
    let _ = terminate(&mut child, Duration::from_secs(20));
    let agent_line = agent_line?;
    assert_schema(&agent_line, "gait-agent")?;
    let agg_line = wait_for(PATIENCE, "a JSON line from the aggregator", || {
        json_line(&agg.data_dir.join("aggregator.log"), |v| {
            v["message"].as_str().is_some_and(|m| !m.is_empty())
        })
    })?;
    assert_schema(&agg_line, "gait-aggregator")?;
    Ok(())
}
