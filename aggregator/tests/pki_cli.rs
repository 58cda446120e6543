//! The `pki` operator commands through the real binary: revocations listed with who revoked them and why, and
//! the agent configuration `issue-agent` writes.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

/// The binary with every `GAIT_*` variable of the calling environment removed, plus `env` (`None` removes).
fn aggregator(args: &[&str], env: &[(&str, Option<&str>)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gait-aggregator"));
    for (name, _) in std::env::vars() {
        if name.starts_with("GAIT_") {
            cmd.env_remove(name);
        }
    }
    for (name, value) in env {
        match value {
            Some(v) => cmd.env(name, v),
            None => cmd.env_remove(name),
        };
    }
    cmd.args(args).output().expect("run gait-aggregator")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs the binary and requires success, returning stdout.
fn ok(args: &[&str], env: &[(&str, Option<&str>)]) -> String {
    let out = aggregator(args, env);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// A data directory with a database and a CA, as `serve` leaves it.
fn deployment(tmp: &Path) -> String {
    let data = tmp.join("data").to_str().expect("utf-8").to_owned();
    ok(&["migrate", "--data-dir", &data], &[]);
    ok(&["pki", "init", "--data-dir", &data], &[]);
    data
}

fn issue(data: &str, agent_id: &str, out: &Path, extra: &[&str]) -> String {
    let out = out.to_str().expect("utf-8");
    let mut args = vec![
        "pki",
        "issue-agent",
        "--data-dir",
        data,
        "--org",
        "acme",
        "--project",
        "web",
        "--env",
        "prod",
        "--agent-id",
        agent_id,
        "--out",
        out,
    ];
    args.extend_from_slice(extra);
    ok(&args, &[])
}

#[test]
fn revocations_list_serial_agent_reason_time_and_the_operator_who_revoked() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = deployment(tmp.path());

    let empty = ok(&["pki", "revocations", "--data-dir", &data], &[]);
    assert!(empty.contains("no certificate has been revoked"), "{empty}");
    let empty: Value = serde_json::from_str(&ok(
        &["pki", "revocations", "--data-dir", &data, "--json"],
        &[],
    ))
    .expect("JSON");
    assert_eq!(empty, Value::Array(Vec::new()));

    let (dir1, dir2) = (tmp.path().join("a1"), tmp.path().join("a2"));
    issue(&data, "a1", &dir1, &[]);
    issue(&data, "a2", &dir2, &[]);
    let serial1 = gait_aggregator::pki::cert_serial_hex(&dir1.join("agent.pem")).expect("serial");
    let serial2 = gait_aggregator::pki::cert_serial_hex(&dir2.join("agent.pem")).expect("serial");
    let cert1 = dir1.join("agent.pem");
    let cert2 = dir2.join("agent.pem");

    // Named by $USER.
    let revoked = ok(
        &[
            "pki",
            "revoke",
            "--cert",
            cert1.to_str().expect("utf-8"),
            "--reason",
            "key left on a shared laptop",
            "--data-dir",
            &data,
            "--json",
        ],
        &[("USER", Some("alice")), ("LOGNAME", Some("not-alice"))],
    );
    let revoked: Value = serde_json::from_str(&revoked).expect("revoke --json");
    assert_eq!(revoked["revoked_by"], "alice");
    // Without $USER or $LOGNAME: the numeric uid of the process.
    ok(
        &[
            "pki",
            "revoke",
            "--cert",
            cert2.to_str().expect("utf-8"),
            "--reason",
            "decommissioned",
            "--data-dir",
            &data,
        ],
        &[("USER", None), ("LOGNAME", None)],
    );
    let uid = {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata("/proc/self").expect("/proc/self").uid()
    };

    let listed: Value = serde_json::from_str(&ok(
        &["pki", "revocations", "--data-dir", &data, "--json"],
        &[],
    ))
    .expect("revocations --json prints JSON");
    let listed = listed.as_array().expect("an array");
    assert_eq!(listed.len(), 2, "{listed:?}");
    let find = |serial: &str| {
        listed
            .iter()
            .find(|r| r["serial"] == serial)
            .unwrap_or_else(|| panic!("serial {serial} not listed: {listed:?}"))
    };
    let first = find(&serial1);
    for (field, want) in [
        ("org", "acme"),
        ("project", "web"),
        ("env", "prod"),
        ("agent_id", "a1"),
        ("reason", "key left on a shared laptop"),
        ("revoked_by", "alice"),
    ] {
        assert_eq!(first[field], want, "{field} of {first}");
    }
    assert!(
        first["revoked_unix_ms"]
            .as_i64()
            .is_some_and(|ms| ms > 1_600_000_000_000),
        "{first}"
    );
    assert!(
        first["revoked_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{first}"
    );
    let second = find(&serial2);
    assert_eq!(second["agent_id"], "a2");
    assert_eq!(second["revoked_by"], format!("uid:{uid}").as_str());
    assert_eq!(second["reason"], "decommissioned");

    let table = ok(&["pki", "revocations", "--data-dir", &data], &[]);
    let mut lines = table.lines();
    let header = lines.next().expect("a header line");
    for column in ["SERIAL", "AGENT", "REVOKED AT", "REVOKED BY", "REASON"] {
        assert!(header.contains(column), "header {header:?}");
    }
    let row = lines
        .find(|l| l.contains(&serial1))
        .unwrap_or_else(|| panic!("no row for {serial1} in\n{table}"));
    for cell in ["acme/web/prod/a1", "alice", "key left on a shared laptop"] {
        assert!(row.contains(cell), "{cell:?} missing from {row:?}");
    }
}

#[test]
fn pki_revocations_refuses_to_invent_a_database() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let out = aggregator(
        &[
            "pki",
            "revocations",
            "--data-dir",
            data.to_str().expect("utf-8"),
        ],
        &[],
    );
    assert!(!out.status.success(), "listed revocations of no database");
    assert!(
        text(&out.stderr).contains("no aggregator database"),
        "{}",
        text(&out.stderr)
    );
    assert!(!data.join("aggregator.db").exists());
}

/// The agent.yaml `issue-agent` wrote, as the agent reads it.
fn agent_yaml(dir: &Path) -> gait_agent::config::Config {
    let text = std::fs::read_to_string(dir.join("agent.yaml")).expect("agent.yaml written");
    gait_agent::config::Config::from_yaml(&text, dir).expect("the agent parses agent.yaml")
}

#[test]
fn issue_agent_writes_the_aggregator_address_host_as_the_server_name() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = deployment(tmp.path());
    for (i, (address, server_name)) in [
        ("fleet.example.com:7443", "fleet.example.com"),
        ("10.0.0.5:7443", "10.0.0.5"),
        ("[::1]:7443", "::1"),
    ]
    .into_iter()
    .enumerate()
    {
        let dir = tmp.path().join(format!("agent{i}"));
        issue(&data, "a1", &dir, &["--aggregator-address", address]);
        let config = agent_yaml(&dir);
        assert_eq!(config.aggregator.address, address);
        assert_eq!(config.aggregator.server_name, server_name, "for {address}");
    }
    // The default address is the default server certificate's IP name.
    let dir = tmp.path().join("default");
    issue(&data, "a1", &dir, &[]);
    assert_eq!(agent_yaml(&dir).aggregator.server_name, "127.0.0.1");

    // An address the agent could not dial is refused before a certificate is issued.
    for bad in [
        "fleet.example.com",
        "::1:7443",
        "bad name:7443",
        "host:0",
        "\"x\":1",
    ] {
        let dir = tmp.path().join("refused");
        let out = aggregator(
            &[
                "pki",
                "issue-agent",
                "--data-dir",
                &data,
                "--org",
                "acme",
                "--project",
                "web",
                "--env",
                "prod",
                "--agent-id",
                "a1",
                "--out",
                dir.to_str().expect("utf-8"),
                "--aggregator-address",
                bad,
            ],
            &[],
        );
        assert!(!out.status.success(), "{bad:?} was accepted");
        assert!(
            text(&out.stderr).contains("--aggregator-address"),
            "{bad:?}: {}",
            text(&out.stderr)
        );
        assert!(
            !dir.join("agent.pem").exists(),
            "{bad:?} left a certificate"
        );
    }
}
