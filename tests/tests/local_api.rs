//! End to end: the agent's local API refuses what a web page in a browser on the host could send — a request
//! addressed to another host name (DNS rebinding), a cross-site request carrying `Origin`, a `text/plain` POST
//! (the CSRF "simple request") — and refuses producer records that would pass for the agent's own decisions.
//! Nothing refused is appended; a well-formed request from a local process still works.
#![allow(clippy::disallowed_methods)] // tests spawn freely and read the clock

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};

use anyhow::{Context as _, ensure};
use gait_e2e::{Agent, Aggregator, PATIENCE, http_json, wait_for};
use serde_json::{Value, json};

/// Sends `head` (request line and headers, without the final blank line) and `body` as one HTTP/1.1 request;
/// returns the status and the JSON body.
fn raw(addr: SocketAddr, head: &str, body: &str) -> anyhow::Result<(u16, Value)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(PATIENCE))?;
    write!(
        stream,
        "{head}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let status: u16 = answer
        .split_whitespace()
        .nth(1)
        .context("no status line")?
        .parse()?;
    let json = answer.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Ok((status, serde_json::from_str(json).unwrap_or(Value::Null)))
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
