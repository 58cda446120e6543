//! End to end: the agent's local API refuses what a web page in a browser on the host could send — a request
//! addressed to another host name (DNS rebinding), a cross-site request carrying `Origin`, a `text/plain` POST
//! (the CSRF "simple request") — and refuses producer records that would pass for the agent's own decisions.
//! Nothing refused is appended; a well-formed request from a local process still works.
//!
//! The Unix socket is the primary transport: its mode and group are applied, a request on it needs no token,
//! every producer record names the credential that appended it (visible on the aggregator for both
//! transports), simulation is the bundle's choice, a crashed run's socket is replaced and a regular file in its
//! place is refused naming the key.
#![allow(clippy::disallowed_methods)] // tests spawn freely and read the clock

use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, ensure};
use gait_e2e::{Agent, Aggregator, PATIENCE, http_json, raw_exchange, wait_for};
use serde_json::{Value, json};

/// Sends `head` (request line and headers, without the final blank line) and `body` as one HTTP/1.1 request;
/// returns the status and the JSON body.
fn raw(addr: SocketAddr, head: &str, body: &str) -> anyhow::Result<(u16, Value)> {
    let stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(PATIENCE))?;
    raw_exchange(
        stream,
        &format!(
            "{head}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
}

fn last_seq(agent: &Agent) -> anyhow::Result<Value> {
    Ok(agent.status()?["outbox"]["last_seq"].clone())
}

#[test]
fn browser_shaped_requests_and_reserved_kinds_are_refused_and_append_nothing() -> anyhow::Result<()>
{
    let tmp = tempfile::tempdir()?;
    let agg = Aggregator::start(&tmp.path().join("agg"), None)?;
    let mut agent = Agent::enroll(&agg, &tmp.path().join("a"), "acme", "web", "prod", "edge")?;
    agent.start()?;
    wait_for(PATIENCE, "agent answering", || agent.status().ok()).with_context(|| agent.log())?;
    let api = agent.api;
    let token = agent.api_token()?;
    let record = json!({"class": "block", "kind": "app.decision", "payload": {"n": 1}}).to_string();
    let before = last_seq(&agent)?;

    let cases: [(&str, String, u16, &str); 5] = [
        (
            "DNS rebinding: Host is the attacker's name",
            "POST /v1/records HTTP/1.1\r\nhost: evil.example:7071\r\ncontent-type: application/json".into(),
            403,
            "host_not_allowed",
        ),
        (
            "cross-site request from a page",
            format!(
                "POST /v1/records HTTP/1.1\r\nhost: {api}\r\norigin: http://evil.example\r\ncontent-type: application/json"
            ),
            403,
            "origin_not_allowed",
        ),
        (
            "text/plain simple request (no CORS preflight)",
            format!("POST /v1/records HTTP/1.1\r\nhost: {api}\r\ncontent-type: text/plain"),
            415,
            "unsupported_media_type",
        ),
        (
            "a signed decision asked for by a page",
            format!(
                "POST /v1/gate/evaluate?simulate=true HTTP/1.1\r\nhost: {api}\r\ncontent-type: text/plain"
            ),
            415,
            "unsupported_media_type",
        ),
        (
            "no content type at all",
            format!("POST /v1/records HTTP/1.1\r\nhost: {api}"),
            415,
            "unsupported_media_type",
        ),
    ];
    for (what, head, status, code) in cases {
        let (got, body) = raw(api, &head, &record)?;
        ensure!(
            got == status && body["error"]["code"] == code,
            "{what}: expected {status} {code}, got {got} {body}"
        );
    }

    // Without the agent's token (or with a wrong one) a local process cannot append either.
    for (auth, what) in [
        ("", "no token"),
        ("authorization: Bearer 00\r\n", "a wrong token"),
    ] {
        let (got, body) = raw(
            api,
            &format!(
                "POST /v1/records HTTP/1.1\r\n{auth}host: {api}\r\ncontent-type: application/json"
            ),
            &record,
        )?;
        ensure!(
            got == 401 && body["error"]["code"] == "unauthorized",
            "{what}: {got} {body}"
        );
    }

    // A producer may not write the agent's own kinds.
    for kind in ["gate.decision", "bundle.applied"] {
        let (got, body) = http_json(
            "POST",
            &format!("http://{api}/v1/records"),
            Some(&token),
            Some(json!({"class": "allow", "kind": kind, "payload": {}})),
        )?;
        ensure!(
            got == 403
                && body["error"]["code"] == "kind_reserved"
                && body["error"]["field"] == "kind",
            "{kind}: {got} {body}"
        );
    }
    ensure!(
        last_seq(&agent)? == before,
        "a refused request appended a record: last_seq {} -> {}",
        before,
        last_seq(&agent)?
    );

    // The same record from a local process, addressed to the loopback name, is appended.
    let (got, body) = raw(
        api,
        &format!(
            "POST /v1/records HTTP/1.1\r\nhost: localhost:{}\r\nauthorization: Bearer {token}\r\ncontent-type: application/json; charset=utf-8",
            api.port()
        ),
        &record,
    )?;
    ensure!(got == 200 && body["seq"].is_u64(), "{got} {body}");
    let (got, _) = raw(
        api,
        &format!("GET /healthz HTTP/1.1\r\nhost: [::1]:{}", api.port()),
        "",
    )?;
    ensure!(got == 200, "healthz by [::1] answered {got}");
    Ok(())
}

/// One HTTP/1.1 JSON request over the agent's Unix socket, without a token; returns the status and the body.
fn over_socket(
    socket: &Path,
    method: &str,
    target: &str,
    body: Option<Value>,
) -> anyhow::Result<(u16, Value)> {
    let stream =
        UnixStream::connect(socket).with_context(|| format!("connect {}", socket.display()))?;
    stream.set_read_timeout(Some(PATIENCE))?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    raw_exchange(
        stream,
        &format!(
            "{method} {target} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
}

/// Adds `lines` under `local_api:` in the agent's config.
fn configure_local_api(agent: &Agent, lines: &str) -> anyhow::Result<()> {
    let path = agent.dir.join("agent.yaml");
    let yaml = std::fs::read_to_string(&path)?;
    ensure!(
        yaml.contains("\nlocal_api:\n"),
        "no local_api section:\n{yaml}"
    );
    std::fs::write(
        &path,
        yaml.replacen("\nlocal_api:\n", &format!("\nlocal_api:\n{lines}"), 1),
    )?;
    Ok(())
}

fn socket_of(agent: &Agent) -> PathBuf {
    agent.dir.join("data").join("local-api.sock")
}

/// The committed record of `agent` with `seq`, once the aggregator has it.
fn stored(agg: &Aggregator, agent: &Agent, seq: u64) -> anyhow::Result<Value> {
    wait_for(PATIENCE, "record committed upstream", || {
        agg.records(&agent.org, &agent.project, &agent.env, &agent.id)
            .ok()?
            .into_iter()
            .find(|r| r["seq"].as_u64() == Some(seq))
    })
}

fn payload(record: &Value) -> anyhow::Result<Value> {
    let payload = &record["payload"];
    Ok(match payload.as_str() {
        Some(text) => serde_json::from_str(text)?,
        None => payload.clone(),
    })
}

#[test]
fn the_socket_is_the_credential_and_every_record_names_who_appended_it() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let agg = Aggregator::start(&tmp.path().join("agg"), None)?;
    let mut agent = Agent::enroll(&agg, &tmp.path().join("a"), "acme", "web", "prod", "edge")?;
    // Our own primary group, by number (the agent's user must belong to the group it is given).
    let probe = tmp.path().join("probe");
    std::fs::write(&probe, "")?;
    let gid = std::fs::metadata(&probe)?.gid();
    configure_local_api(
        &agent,
        &format!("  socket_mode: \"0640\"\n  socket_group: \"{gid}\"\n"),
    )?;
    agent.start()?;
    let socket = socket_of(&agent);
    let meta = std::fs::metadata(&socket)?;
    ensure!(
        meta.permissions().mode() & 0o777 == 0o640,
        "socket mode {:o}",
        meta.permissions().mode() & 0o777
    );
    ensure!(meta.gid() == gid, "socket group {} != {gid}", meta.gid());

    // On the socket no token is needed; on TCP the token is.
    let record = json!({"class": "block", "kind": "app.decision", "payload": {"n": 1}});
    let (status, body) = over_socket(&socket, "POST", "/v1/records", Some(record.clone()))?;
    ensure!(status == 200, "over the socket: {status} {body}");
    let unix_seq = body["seq"].as_u64().context("seq")?;
    let (status, body) = http_json(
        "POST",
        &format!("http://{}/v1/records", agent.api),
        None,
        Some(record.clone()),
    )?;
    ensure!(status == 401, "TCP without a token: {status} {body}");
    let token = agent.api_token()?;
    let (status, body) = http_json(
        "POST",
        &format!("http://{}/v1/records", agent.api),
        Some(&token),
        Some(record),
    )?;
    ensure!(status == 200, "TCP with the token: {status} {body}");
    let tcp_seq = body["seq"].as_u64().context("seq")?;
    // A producer cannot forge the attribution.
    let (status, body) = over_socket(
        &socket,
        "POST",
        "/v1/records",
        Some(
            json!({"class": "block", "kind": "app.decision", "payload": {"appended_by": {"transport": "unix", "uid": 0}}}),
        ),
    )?;
    ensure!(
        status == 400 && body["error"]["field"] == "payload",
        "forged appended_by: {status} {body}"
    );

    // The aggregator's listing shows which credential appended each record.
    let by_unix = payload(&stored(&agg, &agent, unix_seq)?)?;
    let uid = std::fs::metadata("/proc/self")?.uid();
    ensure!(
        by_unix["appended_by"]
            == json!({"transport": "unix", "uid": uid, "pid": std::process::id()}),
        "{by_unix}"
    );
    ensure!(by_unix["n"] == 1, "{by_unix}");
    let by_tcp = payload(&stored(&agg, &agent, tcp_seq)?)?;
    let token_id = &gait_canon::sha256_hex(token.as_bytes())[..8];
    ensure!(
        by_tcp["appended_by"] == json!({"transport": "tcp", "token_id": token_id}),
        "{by_tcp}"
    );
    ensure!(
        !by_tcp.to_string().contains(&token),
        "the token itself was stored"
    );

    // `gait-agent status --config` asks over the socket.
    let out = gait_e2e::hermetic("gait-agent")
        .args(["status", "--json", "--config"])
        .arg(agent.dir.join("agent.yaml"))
        .output()?;
    let report: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "status over the socket: {:?} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    ensure!(
        report["agent_id"].is_string() || report.is_object(),
        "{report}"
    );
    ensure!(out.status.code() != Some(69), "status found no agent");
    Ok(())
}

#[test]
fn simulate_is_refused_unless_the_bundle_allows_it_and_its_record_keeps_the_policy_verdict()
-> anyhow::Result<()> {
    const POLICY: &str = "default_verdict: block\nrules:\n  - name: allow-read\n    effect: allow\n    match:\n      tool_names: [fs.read]\n";
    let tmp = tempfile::tempdir()?;
    let agg = Aggregator::start(&tmp.path().join("agg"), None)?;
    let mut agent = Agent::enroll(&agg, &tmp.path().join("a"), "acme", "web", "prod", "edge")?;
    agent.start()?;
    let socket = socket_of(&agent);
    let intent = json!({
        "schema_id": "gait.gate.intent_request", "schema_version": "1.0.0",
        "created_at": "2026-02-05T00:00:00Z", "producer_version": "test", "tool_name": "fs.write",
        "args": {"path": "/tmp/x"}, "targets": [{"kind": "path", "value": "/tmp/x"}],
        "context": {"identity": "alice", "workspace": "/tmp", "risk_class": "high"}
    });
    let simulate = |what: &str| -> anyhow::Result<(u16, Value)> {
        let answer = over_socket(
            &socket,
            "POST",
            "/v1/gate/evaluate?simulate=true",
            Some(intent.clone()),
        )?;
        eprintln!("{what}: {} {}", answer.0, answer.1);
        Ok(answer)
    };

    let (status, body) = agg.publish("acme", "web", "prod", &[("base.yaml", POLICY)])?;
    ensure!(status == 201, "publish: {status} {body}");
    agent
        .wait_active_epoch(1, "bundle 1 active")
        .with_context(|| agent.log())?;
    let before = last_seq(&agent)?;
    let (status, body) = simulate("default bundle")?;
    ensure!(
        status == 403
            && body["error"]["code"] == "simulate_not_allowed"
            && body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("allow_caller_simulate")),
        "simulate under a bundle that does not allow it: {status} {body}"
    );
    // The agent appends records of its own too (`bundle.applied` follows the activation): what must not be there
    // is a decision between the refused simulate and the next decision asked for.
    let (status, next) = over_socket(&socket, "POST", "/v1/gate/evaluate", Some(intent.clone()))?;
    ensure!(
        status == 200 && next["verdict"] == "block",
        "{status} {next}"
    );
    let next_seq = next["record_seq"].as_u64().context("record_seq")?;
    stored(&agg, &agent, next_seq)?;
    let after_before = |r: &Value| {
        r["seq"]
            .as_u64()
            .is_some_and(|s| before.as_u64().is_none_or(|b| s > b) && s < next_seq)
    };
    let between: Vec<Value> = agg
        .records(&agent.org, &agent.project, &agent.env, &agent.id)?
        .into_iter()
        .filter(after_before)
        .collect();
    ensure!(
        between.iter().all(|r| r["kind"] != "gate.decision"),
        "a refused simulate was recorded: {between:?}"
    );

    // The environment allows it: published by the operator CLI, signed, and only then honoured.
    let policy = tmp.path().join("base.yaml");
    std::fs::write(&policy, POLICY)?;
    let out = gait_e2e::hermetic("gait-aggregator")
        .current_dir(tmp.path())
        .args([
            "publish",
            "--org",
            "acme",
            "--project",
            "web",
            "--env",
            "prod",
        ])
        .arg("--server")
        .arg(agg.url(""))
        .arg("--token-file")
        .arg(agg.data_dir.join("admin.token"))
        .arg("--policy")
        .arg(&policy)
        .arg("--allow-caller-simulate")
        .output()?;
    ensure!(
        out.status.success(),
        "publish --allow-caller-simulate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, latest) = agg.get("/v1/orgs/acme/projects/web/envs/prod/bundles/latest")?;
    ensure!(
        status == 200 && latest["manifest"]["settings"] == json!({"allow_caller_simulate": true}),
        "the setting is signed into the bundle: {status} {latest}"
    );
    agent
        .wait_active_epoch(2, "bundle 2 active")
        .with_context(|| agent.log())?;
    let (status, body) = simulate("allowing bundle")?;
    ensure!(
        status == 200
            && body["verdict"] == "allow"
            && body["simulated"]["would_have_blocked"] == true,
        "{status} {body}"
    );
    let seq = body["record_seq"].as_u64().context("record_seq")?;
    let record = stored(&agg, &agent, seq)?;
    ensure!(record["class"] == "block", "{record}");
    let decision = payload(&record)?;
    ensure!(
        decision["policy_verdict"] == "block" && decision["enforced_verdict"] == "allow",
        "{decision}"
    );
    ensure!(
        decision["requested_by"]["transport"] == "unix",
        "{decision}"
    );
    Ok(())
}

#[test]
fn a_crashed_runs_socket_is_replaced_and_a_regular_file_is_refused_naming_the_key()
-> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let agg = Aggregator::start(&tmp.path().join("agg"), None)?;
    let mut agent = Agent::enroll(&agg, &tmp.path().join("a"), "acme", "web", "prod", "edge")?;
    agent.start()?;
    let socket = socket_of(&agent);
    agent.kill9();
    ensure!(
        std::fs::symlink_metadata(&socket).is_ok(),
        "a killed agent leaves its socket file behind"
    );
    agent.start()?;
    let (status, body) = over_socket(&socket, "GET", "/v1/status", None)?;
    ensure!(
        status == 200,
        "after replacing the stale socket: {status} {body}"
    );
    agent.stop();
    wait_for(PATIENCE, "socket removed at a clean stop", || {
        std::fs::symlink_metadata(&socket).is_err().then_some(())
    })
    .with_context(|| agent.log())?;

    std::fs::write(&socket, "not a socket")?;
    let err = agent
        .start()
        .err()
        .context("the agent started over a regular file")?;
    let text = format!("{err:#}");
    ensure!(
        text.contains("local_api.socket_path") && text.contains("is not a socket"),
        "{text}"
    );
    ensure!(std::fs::read_to_string(&socket)? == "not a socket");
    Ok(())
}
