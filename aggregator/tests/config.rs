//! The configuration file end to end: the examples under `deploy/config/` against their JSON Schemas, and the
//! binary's subcommands reading one file so that an operator command reaches the server's database.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use gait_aggregator::config::Config;
use gait_store::Store;
use serde_json::Value;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("aggregator/ has a parent")
        .to_path_buf()
}

fn schema(name: &str) -> jsonschema::Validator {
    let path = repo_root().join(format!("schemas/config/{name}.schema.json"));
    let text = std::fs::read_to_string(&path).expect("schema readable");
    let schema: Value = serde_json::from_str(&text).expect("schema is JSON");
    jsonschema::validator_for(&schema).expect("schema is a valid JSON Schema")
}

fn yaml_value(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).expect("example readable");
    serde_saphyr::from_str(&text).expect("example is YAML")
}

fn errors(validator: &jsonschema::Validator, doc: &Value) -> Vec<String> {
    validator
        .iter_errors(doc)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

#[test]
fn every_example_config_validates_against_its_schema() {
    let dir = repo_root().join("deploy/config");
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("deploy/config exists") {
        let path = entry.expect("dir entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let stem = path.file_stem().and_then(|s| s.to_str()).expect("utf-8");
        let validator = schema(stem);
        let problems = errors(&validator, &yaml_value(&path));
        assert!(problems.is_empty(), "{}: {problems:?}", path.display());
        checked.push(stem.to_owned());
    }
    checked.sort();
    assert_eq!(checked, ["agent", "aggregator"]);
}

#[test]
fn the_schemas_refuse_what_the_loaders_refuse() {
    let agg = schema("aggregator");
    let mut doc = yaml_value(&repo_root().join("deploy/config/aggregator.yaml"));
    doc["quic"]["listen_addr"] = "0.0.0.0:1".into();
    assert!(!errors(&agg, &doc).is_empty(), "unknown key accepted");
    let mut doc = yaml_value(&repo_root().join("deploy/config/aggregator.yaml"));
    doc["quic"]["reconnect_rate"] = 0.into();
    assert!(!errors(&agg, &doc).is_empty(), "reconnect_rate 0 accepted");

    let agent = schema("agent");
    let mut doc = yaml_value(&repo_root().join("deploy/config/agent.yaml"));
    doc.as_object_mut().expect("map").remove("trust");
    assert!(!errors(&agent, &doc).is_empty(), "missing trust accepted");
    let mut doc = yaml_value(&repo_root().join("deploy/config/agent.yaml"));
    doc["poll"]["wait_ms"] = 999.into();
    assert!(!errors(&agent, &doc).is_empty(), "wait_ms 999 accepted");
}

#[test]
fn the_example_aggregator_config_loads_and_the_agent_example_parses() {
    let path = repo_root().join("deploy/config/aggregator.yaml");
    let config = Config::load_with_env(Some(&path), |_| None).expect("example is valid");
    assert_eq!(config.data_dir, PathBuf::from("/var/lib/gait-aggregator"));
    assert_eq!(config.quic.listen.port(), 7443);
    let agent =
        std::fs::read_to_string(repo_root().join("deploy/config/agent.yaml")).expect("read");
    gait_agent::config::Config::from_yaml(&agent, Path::new("/etc/gait-agent"))
        .expect("agent example parses");
}

/// The binary with every `GAIT_*` variable of the calling environment removed.
fn aggregator(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gait-aggregator"));
    for (name, _) in std::env::vars() {
        if name.starts_with("GAIT_") {
            cmd.env_remove(name);
        }
    }
    cmd.args(args).output().expect("run gait-aggregator")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn pki_revoke_writes_into_the_database_of_the_config_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = tmp.path().join("fleet.db");
    let url = format!("sqlite://{}?mode=rwc", db.display());
    let config = tmp.path().join("aggregator.yaml");
    std::fs::write(
        &config,
        format!("data_dir: data\ndatabase:\n  url: \"{url}\"\n"),
    )
    .expect("write");
    let config = config.to_str().expect("utf-8");

    // The server side creates its PKI and database (as `serve` does on first start), all from the one file.
    let agent_dir = tmp.path().join("agent");
    let agent_out = agent_dir.to_str().expect("utf-8");
    for args in [
        &["--config", config, "migrate"][..],
        &["--config", config, "pki", "init"],
        &[
            "pki",
            "issue-agent",
            "--config",
            config,
            "--org",
            "acme",
            "--project",
            "web",
            "--env",
            "prod",
            "--agent-id",
            "a1",
            "--out",
            agent_out,
        ],
    ] {
        let out = aggregator(args);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    }
    assert!(
        tmp.path().join("data/pki/ca.pem").exists(),
        "pki init ignored data_dir"
    );

    let cert = agent_dir.join("agent.pem");
    let out = aggregator(&[
        "pki",
        "revoke",
        "--cert",
        cert.to_str().expect("utf-8"),
        "--config",
        config,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let serial = gait_aggregator::pki::cert_serial_hex(&cert).expect("serial");
    let store = Store::connect(&url).await.expect("open the configured db");
    let stored: Vec<String> = store
        .revoked_serials()
        .await
        .expect("read")
        .iter()
        .map(|s| s.as_str().to_owned())
        .collect();
    assert_eq!(stored, [serial]);
    assert!(
        !tmp.path().join("data").join("aggregator.db").exists(),
        "revoke created a second database in the data directory"
    );
}

#[test]
fn pki_revoke_refuses_to_invent_a_database() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let out = aggregator(&[
        "pki",
        "revoke",
        "--serial",
        "abcd",
        "--data-dir",
        data.to_str().expect("utf-8"),
    ]);
    assert!(!out.status.success(), "revoke reported success");
    assert!(
        text(&out.stderr).contains("no aggregator database"),
        "{}",
        text(&out.stderr)
    );
    assert!(!data.join("aggregator.db").exists());
}

/// `issue-agent` prints a revoke command; run as printed it revokes, recording the agent. A bare serial
/// nobody has seen is refused with what to do instead; bad identifiers are refused naming the flag.
#[test]
fn the_revoke_command_issue_agent_prints_works_and_a_bare_unknown_serial_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let data = data.to_str().expect("utf-8");
    let out_dir = tmp.path().join("agent");
    for args in [
        &["migrate", "--data-dir", data][..],
        &["pki", "init", "--data-dir", data],
    ] {
        let out = aggregator(args);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    }
    let issue = |org: &str| {
        aggregator(&[
            "pki",
            "issue-agent",
            "--data-dir",
            data,
            "--org",
            org,
            "--project",
            "web",
            "--env",
            "prod",
            "--agent-id",
            "a1",
            "--out",
            out_dir.to_str().expect("utf-8"),
        ])
    };
    let bad = issue("Acme");
    assert!(!bad.status.success(), "an uppercase org was accepted");
    assert!(text(&bad.stderr).contains("--org"), "{}", text(&bad.stderr));
    let out = issue("acme");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let printed = stdout
        .split("revoke with: gait-aggregator ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap_or_else(|| panic!("no revoke command in {stdout}"));
    let serial = gait_aggregator::pki::cert_serial_hex(&out_dir.join("agent.pem")).expect("serial");

    // The serial alone: this aggregator never saw the certificate, so it cannot tell whose it is.
    let bare = aggregator(&["pki", "revoke", "--serial", &serial, "--data-dir", data]);
    assert!(!bare.status.success(), "a bare unseen serial was revoked");
    let why = text(&bare.stderr);
    assert!(
        why.contains(&serial) && why.contains("--cert") && why.contains("--agent-id"),
        "{why}"
    );
    // Only some of the agent flags: refused by the argument parser.
    let partial = aggregator(&[
        "pki",
        "revoke",
        "--serial",
        &serial,
        "--org",
        "acme",
        "--data-dir",
        data,
    ]);
    assert!(
        !partial.status.success(),
        "a partial agent name was accepted"
    );

    // The printed command, as printed, plus where the data is and --json.
    let mut args: Vec<&str> = printed.split_whitespace().collect();
    args.extend(["--data-dir", data, "--json"]);
    let revoked = aggregator(&args);
    assert!(
        revoked.status.success(),
        "{args:?}: {}",
        text(&revoked.stderr)
    );
    let json: serde_json::Value =
        serde_json::from_slice(&revoked.stdout).expect("revoke --json prints JSON");
    assert_eq!(json["serial"], serial.as_str());
    assert_eq!(json["org"], "acme");
    assert_eq!(json["agent_id"], "a1");
}

#[test]
fn config_check_prints_the_effective_config_redacted_and_names_unknown_keys() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = tmp.path().join("aggregator.yaml");
    std::fs::write(
        &config,
        "database:\n  url: postgres://gait:s3cret@db/gait\nhttp:\n  listen: 0.0.0.0:9080\n",
    )
    .expect("write");
    let out = aggregator(&[
        "config",
        "check",
        "--json",
        "--config",
        config.to_str().expect("utf-8"),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(shown["database"]["url"], "postgres://gait:***@db/gait");
    assert_eq!(shown["http"]["listen"], "0.0.0.0:9080");
    assert_eq!(shown["quic"]["reconnect_rate"], 1000);
    assert!(!text(&out.stdout).contains("s3cret"));

    std::fs::write(&config, "http:\n  listne: 0.0.0.0:9080\n").expect("write");
    let out = aggregator(&[
        "--config",
        config.to_str().expect("utf-8"),
        "config",
        "check",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("listne"),
        "{}",
        text(&out.stderr)
    );

    // No file: the embedded defaults are a valid configuration.
    let out = aggregator(&["config", "check"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("gait-data"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn an_oidc_section_validates_against_the_schema_and_loads() {
    let text = "auth:\n  oidc:\n    issuer: https://idp.example.com/realms/ops\n    audience: gait-aggregator\n    groups_claim: roles\n    algorithms: [RS256, EdDSA]\n    leeway_seconds: 30\n";
    let doc: Value = serde_saphyr::from_str(text).expect("yaml");
    assert_eq!(errors(&schema("aggregator"), &doc), Vec::<String>::new());
    let config = Config::from_yaml(text, Path::new("/etc/gait")).expect("parses");
    config.validate().expect("valid");
    assert!(config.auth.oidc.enabled());
    for (key, value) in [
        ("algorithms", serde_json::json!(["HS256"])),
        ("leeway_seconds", serde_json::json!(301)),
        ("wat", serde_json::json!(1)),
    ] {
        let mut bad = doc.clone();
        bad["auth"]["oidc"][key] = value;
        assert!(!errors(&schema("aggregator"), &bad).is_empty(), "{key}");
    }
}
