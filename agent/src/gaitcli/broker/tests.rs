use std::collections::HashMap;

use super::*;

fn request(reference: &str) -> Request {
    Request {
        tool_name: " Tool.Write ".into(),
        identity: "alice".into(),
        reference: reference.into(),
        scope: vec!["Write".into(), "write".into(), " ".into()],
        ..Request::default()
    }
}

fn now() -> OffsetDateTime {
    time::macros::datetime!(2026-02-05 00:00:00 UTC)
}

#[test]
fn env_keys_follow_gait() {
    assert_eq!(env_key("highrisk-egress"), "HIGHRISK_EGRESS");
    assert_eq!(env_key("tool.write"), "TOOL_WRITE");
    assert_eq!(env_key(" a b!!c "), "A_B_C");
    assert_eq!(env_key("__"), "DEFAULT");
}

#[test]
fn resolve_reads_gaits_broker_names() {
    assert_eq!(resolve("", "", "", "", None), Ok(None));
    assert_eq!(resolve("OFF", "", "", "", None), Ok(None));
    assert_eq!(resolve("stub", "", "", "", None), Ok(Some(Broker::Stub)));
    assert_eq!(
        resolve("env", " P_ ", "", "", None),
        Ok(Some(Broker::Env {
            prefix: "P_".into()
        }))
    );
    assert_eq!(
        resolve("command", "", "", "", None),
        Err(BrokerConfigError::MissingCommand)
    );
    assert_eq!(
        resolve("command", "", "/bin/broker", "a, ,b", None),
        Ok(Some(Broker::Command {
            program: "/bin/broker".into(),
            args: vec!["a".into(), "b".into()]
        }))
    );
    assert_eq!(
        resolve("command", "", "/bin/broker", "", Some("/usr/bin/other")),
        Err(BrokerConfigError::NotAllowed)
    );
    assert!(resolve("command", "", "/bin/broker", "", Some("other, broker")).is_ok());
    assert!(matches!(
        resolve("vault", "", "", "", None),
        Err(BrokerConfigError::Unsupported(_))
    ));
}

#[test]
fn env_broker_issues_a_reference_that_never_contains_the_secret() {
    let vars: HashMap<String, String> = [
        ("GAIT_BROKER_TOKEN_HIGHRISK_EGRESS", " s3cr3t-value "),
        ("GAIT_BROKER_TOKEN_HIGHRISK_EGRESS_TTL_SECONDS", "60"),
        (
            "GAIT_BROKER_TOKEN_HIGHRISK_EGRESS_ISSUED_AT",
            "2026-02-05T00:00:00Z",
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let getenv = |k: &str| vars.get(k).cloned();
    let broker = Broker::Env {
        prefix: String::new(),
    };
    let issued = broker
        .issue(&request("highrisk-egress"), &getenv, now())
        .unwrap();
    let digest = hex::encode(&gait_canon::sha256(b"s3cr3t-value")[..8]);
    assert_eq!(
        issued.credential_ref,
        format!("env:GAIT_BROKER_TOKEN_HIGHRISK_EGRESS:{digest}")
    );
    assert!(!issued.credential_ref.contains("s3cr3t"));
    assert_eq!(issued.issued_by, "env");
    assert_eq!(issued.ttl_seconds, 60);
    assert_eq!(issued.expires_at.to_rfc3339_nano(), "2026-02-05T00:01:00Z");
    // Without a reference the tool name names the variable; unset means unavailable.
    assert_eq!(
        broker.issue(&request(""), &getenv, now()),
        Err(IssueError::EnvUnset("GAIT_BROKER_TOKEN_TOOL_WRITE".into()))
    );
}

#[test]
fn requests_need_a_tool_and_an_identity() {
    let broker = Broker::Stub;
    let mut r = request("x");
    r.identity = " ".into();
    assert_eq!(
        broker.issue(&r, &|_| None, now()),
        Err(IssueError::Request("identity"))
    );
}

#[test]
fn stub_references_are_deterministic_per_request() {
    let a = Broker::Stub.issue(&request("r"), &|_| None, now()).unwrap();
    let b = Broker::Stub.issue(&request("r"), &|_| None, now()).unwrap();
    let c = Broker::Stub.issue(&request("s"), &|_| None, now()).unwrap();
    assert_eq!(a.credential_ref, b.credential_ref);
    assert_ne!(a.credential_ref, c.credential_ref);
    assert!(a.credential_ref.starts_with("stub:"));
    assert_eq!(a.ttl_seconds, 300);
}

/// A command broker running `body` as a shell script. The script is handed to
/// `/bin/sh` as an argument rather than executed itself: exec'ing a file this
/// process just wrote fails with ETXTBSY when a sibling test thread forks while
/// the write descriptor is still open (the CI failure this replaced).
fn script_broker(dir: &std::path::Path, name: &str, body: &str) -> Broker {
    let path = dir.join(name);
    std::fs::write(&path, format!("{body}\n")).unwrap();
    Broker::Command {
        program: "/bin/sh".into(),
        args: vec![path.display().to_string()],
    }
}

#[test]
fn command_broker_gets_the_request_on_stdin_and_returns_a_reference() {
    let dir = tempfile::tempdir().unwrap();
    let seen = dir.path().join("stdin.json");
    let broker = script_broker(
        dir.path(),
        "broker.sh",
        &format!(
            "cat > '{}'\necho '{{\"CREDENTIAL_REF\":\"vault:abc\",\"issued_by\":\"vault\",\"ttl_seconds\":30,\"issued_at\":\"2026-02-05T00:00:00Z\"}}'",
            seen.display()
        ),
    );
    let issued = broker.issue(&request("egress"), &|_| None, now()).unwrap();
    assert_eq!(issued.credential_ref, "vault:abc");
    assert_eq!(issued.issued_by, "vault");
    assert_eq!(issued.expires_at.to_rfc3339_nano(), "2026-02-05T00:00:30Z");
    let sent: serde_json::Value = serde_json::from_slice(&std::fs::read(&seen).unwrap()).unwrap();
    assert_eq!(sent["ToolName"], "tool.write");
    assert_eq!(sent["Reference"], "egress");
    assert_eq!(sent["Scope"], serde_json::json!(["write"]));
    assert_eq!(sent["SessionID"], "");
}

#[test]
fn command_broker_failures_are_unavailable_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let run =
        |body: &str| script_broker(dir.path(), "b.sh", body).issue(&request("r"), &|_| None, now());
    assert!(matches!(run("exit 3"), Err(IssueError::Command(_))));
    assert!(matches!(run("echo not-json"), Err(IssueError::Command(_))));
    assert!(matches!(run("true"), Err(IssueError::Command(_))));
    assert!(matches!(
        run("echo '{\"credential_ref\":\"\"}'"),
        Err(IssueError::BadReference(_))
    ));
    assert!(matches!(
        run("head -c 20000 /dev/zero | tr '\\0' a"),
        Err(IssueError::Command(_))
    ));
    let missing = Broker::Command {
        program: dir.path().join("absent").display().to_string(),
        args: Vec::new(),
    };
    assert!(matches!(
        missing.issue(&request("r"), &|_| None, now()),
        Err(IssueError::Command(_))
    ));
}
