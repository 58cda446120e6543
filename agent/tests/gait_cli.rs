//! The Gait-compatible commands of the real `gait-agent` binary against real Gait output: every
//! `policy_test_sample.json` row, the endpoint `gate eval` runs (stdout, trace content, signatures checked by
//! our `trace verify` and by the independent `gait_verify.py`), Gait's own traces, the demo runpack, and every
//! `scenarios/gait/*` scenario with its flags.yaml and expected.yaml.
#![allow(clippy::disallowed_methods)] // tests spawn freely and read the clock

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use anyhow::{Context, Result, bail, ensure};
use gait_canon::sign::{SigningKey, write_key_pair};
use serde_json::{Map, Value};

const BIN: &str = env!("CARGO_BIN_EXE_gait-agent");

fn shared() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared")
}

fn fixtures() -> PathBuf {
    shared().join("fixtures/gait")
}

fn conformance() -> PathBuf {
    shared().join("conformance")
}

fn scenario(name: &str) -> PathBuf {
    fixtures().join("scenarios/gait").join(name)
}

/// A finished `gait-agent` process.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn from_output(out: Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// The single JSON line printed with `--json`.
    fn json(&self) -> Result<Map<String, Value>> {
        let line = self.stdout.trim();
        ensure!(
            !line.contains('\n'),
            "expected one JSON line, got {:?}",
            self.stdout
        );
        match serde_json::from_str(line).with_context(|| format!("stdout {line:?}"))? {
            Value::Object(map) => Ok(map),
            other => bail!("stdout is not an object: {other}"),
        }
    }
}

fn command<I, S>(args: I, cwd: &Path) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(cwd)
        .env("HOME", cwd)
        .stdin(Stdio::null());
    cmd
}

fn run<I, S>(args: I, cwd: &Path) -> Result<Run>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    Ok(Run::from_output(
        command(args, cwd).output().context("spawn gait-agent")?,
    ))
}

fn spawn<I, S>(args: I, cwd: &Path) -> Result<Child>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    command(args, cwd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawn gait-agent")
}

fn read_json(path: &Path) -> Result<Value> {
    let text = fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))
}

fn read_object(path: &Path) -> Result<Map<String, Value>> {
    match read_json(path)? {
        Value::Object(map) => Ok(map),
        _ => bail!("{} is not an object", path.display()),
    }
}

fn without(mut map: Map<String, Value>, keys: &[&str]) -> Map<String, Value> {
    for key in keys {
        map.remove(*key);
    }
    map
}

fn strings(value: Option<&Value>) -> Vec<String> {
    value
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

/// A prod signing key written in Gait's key file format.
struct Keys {
    private: PathBuf,
    public: PathBuf,
    key: SigningKey,
}

fn keys(dir: &Path) -> Result<Keys> {
    let key = SigningKey::from_seed(&[42; 32]);
    let private = dir.join("gait_private.key");
    let public = dir.join("gait_public.key");
    write_key_pair(&private, &public, &key)?;
    Ok(Keys {
        private,
        public,
        key,
    })
}

fn python_verify(doc: &Path, public_key: &Path) -> Result<i32> {
    let out = Command::new("python3")
        .arg(shared().join("tools/gait_verify.py"))
        .arg(doc)
        .arg(public_key)
        .output()
        .context("run python3 gait_verify.py")?;
    Ok(out.status.code().unwrap_or(-1))
}

/// Change one byte inside the first occurrence of `needle` (keeping the JSON valid).
fn tamper(path: &Path, needle: &str, replacement: &str) -> Result<PathBuf> {
    let text = fs::read_to_string(path)?;
    ensure!(text.contains(needle), "{needle} not in {}", path.display());
    ensure!(
        needle.len() == replacement.len(),
        "one-byte change expected"
    );
    let out = path.with_extension("tampered.json");
    fs::write(&out, text.replacen(needle, replacement, 1))?;
    Ok(out)
}

// ---------------------------------------------------------------------------------------------------------
// policy test

#[test]
fn policy_test_reproduces_every_row_of_gaits_conformance_sample() -> Result<()> {
    let sample = read_json(&conformance().join("policy_test_sample.json"))?;
    let rows = sample["rows"].as_array().context("rows")?;
    ensure!(rows.len() >= 60, "sample has {} rows", rows.len());
    let mut mismatches = Vec::new();
    for row in rows {
        let policy = row["policy"].as_str().context("policy")?;
        let intent = row["intent"].as_str().context("intent")?;
        let got = run(["policy", "test", policy, intent, "--json"], &fixtures())?;
        let out = got.json()?;
        let want = &row["output"];
        let mut problems = Vec::new();
        if i64::from(got.code) != row["exit_code"].as_i64().context("exit_code")? {
            problems.push(format!("exit {} != {}", got.code, row["exit_code"]));
        }
        for field in [
            "verdict",
            "intent_digest",
            "policy_digest",
            "matched_rule",
            "created_at",
            "schema_id",
            "schema_version",
            "ok",
        ] {
            if out.get(field) != want.get(field) {
                problems.push(format!(
                    "{field}: {:?} != {:?}",
                    out.get(field),
                    want.get(field)
                ));
            }
        }
        for field in ["reason_codes", "violations"] {
            if strings(out.get(field)) != strings(want.get(field)) {
                problems.push(format!(
                    "{field}: {:?} != {:?}",
                    out.get(field),
                    want.get(field)
                ));
            }
        }
        if !problems.is_empty() {
            mismatches.push(format!("{policy} x {intent}: {}", problems.join("; ")));
        }
    }
    ensure!(
        mismatches.is_empty(),
        "{} of {} rows differ:\n{}",
        mismatches.len(),
        rows.len(),
        mismatches.join("\n")
    );
    Ok(())
}

#[test]
fn policy_test_text_output_is_gaits_summary_line() -> Result<()> {
    let got = run(
        [
            "policy",
            "test",
            "examples/policy/endpoint/block_denied_endpoints.yaml",
            "examples/policy/endpoint/fixtures/intent_block.json",
        ],
        &fixtures(),
    )?;
    assert_eq!(got.code, 3);
    assert_eq!(
        got.stdout,
        "policy test verdict=block reasons=endpoint_path_denied,endpoint_policy_violation,\
         matched_rule_endpoint_deny violations=endpoint_path_denied,endpoint_policy_violation\n"
    );
    Ok(())
}

#[test]
fn policy_test_bad_input_exits_6_with_gaits_error_envelope() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let got = run(["policy", "test", "only-one.yaml", "--json"], dir.path())?;
    assert_eq!(got.code, 6);
    let out = got.json()?;
    assert_eq!(out["ok"], false);
    assert_eq!(out["error"], "expected <policy.yaml> <intent_fixture.json>");
    assert_eq!(out["error_code"], "invalid_input");
    assert_eq!(out["error_category"], "invalid_input");
    assert_eq!(out["retryable"], false);
    assert_eq!(out["hint"], "check command usage and input schema");
    assert_eq!(out["correlation_id"].as_str().map(str::len), Some(24));

    fs::write(
        dir.path().join("p.yaml"),
        "default_verdict: allow\nbogus: 1\n",
    )?;
    fs::write(
        dir.path().join("i.json"),
        r#"{"tool_name":"t","args":{},"targets":[],"context":{"identity":"a","workspace":"/w","risk_class":"low"}}"#,
    )?;
    let got = run(["policy", "test", "p.yaml", "i.json", "--json"], dir.path())?;
    assert_eq!(got.code, 6, "{}", got.stdout);
    let error = got.json()?["error"].as_str().unwrap_or_default().to_owned();
    assert!(error.contains("bogus"), "unknown key named: {error}");

    fs::write(dir.path().join("legacy.yaml"), "version: 1\nname: old\n")?;
    let got = run(
        ["policy", "test", "legacy.yaml", "i.json", "--json"],
        dir.path(),
    )?;
    assert_eq!(got.code, 6);
    let out = got.json()?;
    assert_eq!(out["migration"]["kind"], "policy_fields");
    assert!(
        out["hint"]
            .as_str()
            .unwrap_or_default()
            .contains(".gait.yaml")
    );
    Ok(())
}

#[test]
fn help_teaches_with_examples_and_exits_0() -> Result<()> {
    let dir = tempfile::tempdir()?;
    for args in [
        vec!["policy", "test", "--help"],
        vec!["gate", "eval", "--help"],
        vec!["trace", "verify", "--help"],
        vec!["verify", "--help"],
    ] {
        let got = run(&args, dir.path())?;
        assert_eq!(got.code, 0, "{args:?}");
        assert!(got.stdout.contains("Examples:"), "{args:?}: {}", got.stdout);
        assert!(got.stdout.contains("Exit codes:"), "{args:?}");
    }
    let got = run(["verify", "x", "--bogus", "--json"], dir.path())?;
    assert_eq!(got.code, 6);
    assert_eq!(
        got.json()?["error"],
        "flag provided but not defined: --bogus"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// gate eval on the endpoint fixtures, traces

/// Run the endpoint fixture `name` (allow|block) with a prod key; returns (run, trace path).
fn endpoint_gate_eval(name: &str, policy: &str, dir: &Path, keys: &Keys) -> Result<(Run, PathBuf)> {
    let trace = dir.join(format!("gate/trace_endpoint_{name}.json"));
    let got = run(
        [
            "gate",
            "eval",
            "--policy",
            &p(&fixtures().join(format!("examples/policy/endpoint/{policy}.yaml"))),
            "--intent",
            &p(&fixtures().join(format!(
                "examples/policy/endpoint/fixtures/intent_{name}.json"
            ))),
            "--key-mode",
            "prod",
            "--private-key",
            &p(&keys.private),
            "--trace-out",
            &p(&trace),
            "--json",
        ],
        dir,
    )?;
    Ok((got, trace))
}

const VOLATILE_TRACE_FIELDS: [&str; 6] = [
    "observed_at",
    "event_id",
    "correlation_id",
    "latency_ms",
    "signature",
    "producer_version",
];

#[test]
fn gate_eval_endpoint_runs_match_gait_stdout_and_trace_and_verify_independently() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let keys = keys(dir.path())?;
    for (name, policy, exit) in [
        ("allow", "allow_safe_endpoints", 0),
        ("block", "block_denied_endpoints", 3),
    ] {
        let (got, trace) = endpoint_gate_eval(name, policy, dir.path(), &keys)?;
        assert_eq!(got.code, exit, "{name}: {}{}", got.stdout, got.stderr);
        let want = read_object(
            &conformance().join(format!("artifacts/gate_eval_endpoint_{name}.stdout.json")),
        )?;
        let out = got.json()?;
        assert_eq!(out["trace_path"], p(&trace));
        assert_eq!(
            without(out, &["trace_path", "correlation_id"]),
            without(want, &["trace_path", "correlation_id"]),
            "{name} stdout"
        );

        // The trace is Gait's trace except for the per-emission fields.
        let ours = read_object(&trace)?;
        let gait =
            read_object(&conformance().join(format!("artifacts/trace_endpoint_{name}.json")))?;
        assert_eq!(
            without(ours.clone(), &VOLATILE_TRACE_FIELDS),
            without(gait, &VOLATILE_TRACE_FIELDS),
            "{name} trace content"
        );
        let text = fs::read_to_string(&trace)?;
        assert!(text.starts_with("{\n  \"schema_id\": \"gait.gate.trace\""));
        assert!(text.ends_with("}\n") && !text.ends_with("}\n\n"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(fs::metadata(&trace)?.permissions().mode() & 0o777, 0o600);
        }

        // Verified by our trace verify and by the independent Python checker.
        let verified = run(
            [
                "trace",
                "verify",
                &p(&trace),
                "--public-key",
                &p(&keys.public),
                "--json",
            ],
            dir.path(),
        )?;
        assert_eq!(verified.code, 0, "{}", verified.stdout);
        let v = verified.json()?;
        assert_eq!(v["signature_status"], "verified");
        assert_eq!(v["key_id"], keys.key.public_key().key_id());
        assert_eq!(v["trace_id"], ours["trace_id"]);
        assert_eq!(
            python_verify(&trace, &keys.public)?,
            0,
            "gait_verify.py {name}"
        );

        // One changed byte breaks it for both.
        let tampered = tamper(&trace, "\"tool.write\"", "\"tool.wrjte\"")?;
        let failed = run(
            [
                "trace",
                "verify",
                &p(&tampered),
                "--public-key",
                &p(&keys.public),
                "--json",
            ],
            dir.path(),
        )?;
        assert_eq!(failed.code, 2, "{}", failed.stdout);
        let f = failed.json()?;
        assert_eq!(f["ok"], false);
        assert_eq!(f["signature_status"], "failed");
        assert_eq!(f["error"], "signed_digest mismatch");
        assert_eq!(f["error_code"], "verification_failed");
        assert_eq!(python_verify(&tampered, &keys.public)?, 2);
    }
    Ok(())
}

#[test]
fn gaits_own_traces_verify_and_fail_after_one_changed_byte() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let public = conformance().join("artifacts/gait_public.key");
    for name in ["allow", "block"] {
        let original = conformance().join(format!("artifacts/trace_endpoint_{name}.json"));
        let trace = dir.path().join(format!("trace_endpoint_{name}.json"));
        fs::copy(&original, &trace)?;
        let got = run(
            [
                "trace",
                "verify",
                &p(&trace),
                "--public-key",
                &p(&public),
                "--json",
            ],
            dir.path(),
        )?;
        assert_eq!(got.code, 0, "{name}: {}", got.stdout);
        if name == "block" {
            let want = read_object(
                &conformance().join("artifacts/trace_verify_endpoint_block.stdout.json"),
            )?;
            assert_eq!(
                without(got.json()?, &["path", "correlation_id"]),
                without(want, &["path", "correlation_id"])
            );
        }
        let text = got.stdout.clone();
        assert!(text.contains("\"signature_status\":\"verified\""));
        // A one-byte change in a signed value (an identity in the relationship envelope).
        let tampered = tamper(&trace, "\"ci-user\"", "\"ci-usEr\"")?;
        let failed = run(
            [
                "trace",
                "verify",
                &p(&tampered),
                "--public-key",
                &p(&public),
                "--json",
            ],
            dir.path(),
        )?;
        assert_eq!(failed.code, 2, "{name}: {}", failed.stdout);
        assert_eq!(failed.json()?["signature_status"], "failed");
    }
    Ok(())
}

#[test]
fn trace_verify_without_a_key_or_with_the_wrong_key() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let trace = conformance().join("artifacts/trace_endpoint_block.json");
    let got = run(["trace", "verify", &p(&trace), "--json"], dir.path())?;
    assert_eq!(got.code, 6);
    assert_eq!(got.json()?["error"], "public key not configured");
    let keys = keys(dir.path())?;
    let got = run(
        [
            "trace",
            "verify",
            &p(&trace),
            "--public-key",
            &p(&keys.public),
            "--json",
        ],
        dir.path(),
    )?;
    assert_eq!(got.code, 2);
    assert_eq!(got.json()?["error"], "key id mismatch");
    let got = run(
        [
            "trace",
            "verify",
            &p(&trace),
            "--public-key",
            &p(&keys.public),
        ],
        dir.path(),
    )?;
    assert_eq!(got.stdout, "trace verify error: key id mismatch\n");
    Ok(())
}

#[test]
fn dev_key_mode_writes_the_default_trace_file_and_warns() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let got = run(
        [
            "gate",
            "eval",
            "--policy",
            &p(&fixtures().join("examples/policy/endpoint/block_denied_endpoints.yaml")),
            "--intent",
            &p(&fixtures().join("examples/policy/endpoint/fixtures/intent_block.json")),
            "--json",
        ],
        dir.path(),
    )?;
    assert_eq!(got.code, 3, "{}", got.stdout);
    let out = got.json()?;
    assert_eq!(out["trace_id"], "1ebcafc90e5778ca4e9d442e");
    assert_eq!(out["trace_path"], "trace_1ebcafc90e5778ca4e9d442e.json");
    assert_eq!(
        strings(out.get("warnings")),
        ["dev mode: ephemeral keypair generated; signatures will not verify across machines"]
    );
    assert!(
        dir.path()
            .join("trace_1ebcafc90e5778ca4e9d442e.json")
            .is_file()
    );

    let got = run(
        [
            "gate",
            "eval",
            "--policy",
            &p(&fixtures().join("examples/policy/endpoint/block_denied_endpoints.yaml")),
            "--intent",
            &p(&fixtures().join("examples/policy/endpoint/fixtures/intent_block.json")),
        ],
        dir.path(),
    )?;
    assert_eq!(got.code, 3);
    assert!(
        got.stdout
            .starts_with("gate eval: verdict=block\ntrace: trace_1ebcafc90e5778ca4e9d442e.json\n")
    );
    assert!(
        got.stdout
            .contains("warning: dev mode: ephemeral keypair generated")
    );
    Ok(())
}

#[test]
fn gate_eval_usage_errors_use_gaits_envelope() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let got = run(["gate", "eval", "--intent", "x.json", "--json"], dir.path())?;
    assert_eq!(got.code, 6);
    let out = got.json()?;
    assert_eq!(out["error"], "both --policy and --intent are required");
    assert_eq!(out["error_code"], "invalid_input");
    let got = run(
        [
            "gate",
            "eval",
            "--policy",
            &p(&scenario("concurrent-evaluation-10/policy.yaml")),
            "--intent",
            &p(&scenario("concurrent-evaluation-10/intent.json")),
            "--key-mode",
            "prod",
            "--json",
        ],
        dir.path(),
    )?;
    assert_eq!(got.code, 6);
    assert_eq!(
        got.json()?["error"],
        "prod mode requires a private key source"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// verify (runpacks)

fn demo_workspace() -> Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    fs::create_dir_all(dir.path().join("gait-out"))?;
    fs::copy(
        conformance().join("artifacts/runpack_run_demo.zip"),
        dir.path().join("gait-out/runpack_run_demo.zip"),
    )?;
    Ok(dir)
}

#[test]
fn demo_runpack_verifies_like_gait_and_a_tampered_copy_fails() -> Result<()> {
    let dir = demo_workspace()?;
    let got = run(["verify", "run_demo", "--json"], dir.path())?;
    assert_eq!(got.code, 0, "{}", got.stdout);
    let want = read_object(&conformance().join("artifacts/verify_run_demo.stdout.json"))?;
    let out = got.json()?;
    assert_eq!(out["path"], "gait-out/runpack_run_demo.zip");
    assert_eq!(
        without(out, &["path", "correlation_id"]),
        without(want, &["path", "correlation_id"])
    );

    let tampered = dir.path().join("gait-out/runpack_tampered.zip");
    let script = "import sys,zipfile\n\
        src,dst=sys.argv[1:3]\n\
        with zipfile.ZipFile(src) as zi, zipfile.ZipFile(dst,'w',zipfile.ZIP_DEFLATED) as zo:\n\
        \x20   for info in zi.infolist():\n\
        \x20       data=zi.read(info.filename)\n\
        \x20       if info.filename=='run.json': data=data.replace(b'run_demo',b'run_dem0',1)\n\
        \x20       zo.writestr(info,data)\n";
    let status = Command::new("python3")
        .args(["-c", script])
        .arg(dir.path().join("gait-out/runpack_run_demo.zip"))
        .arg(&tampered)
        .status()?;
    ensure!(status.success(), "python zip rewrite failed");
    let got = run(["verify", &p(&tampered), "--json"], dir.path())?;
    assert_eq!(got.code, 2, "{}", got.stdout);
    let out = got.json()?;
    assert_eq!(out["ok"], false);
    assert_eq!(out["hash_mismatches"][0]["path"], "run.json");
    assert!(
        out.get("error").is_none(),
        "a failed verify is not an error"
    );

    let got = run(["verify", "no_such_run", "--json"], dir.path())?;
    assert_eq!(got.code, 6);
    assert_eq!(
        got.json()?["error"],
        "runpack not found for run_id: no_such_run"
    );
    let got = run(
        ["verify", "run_demo", "--profile", "strict", "--json"],
        dir.path(),
    )?;
    assert_eq!(got.code, 6);
    let got = run(
        ["verify", "run_demo", "--require-signature", "--json"],
        dir.path(),
    )?;
    assert_eq!(
        got.code, 2,
        "unsigned runpack fails when a signature is required"
    );
    Ok(())
}

/// `pack-integrity-round-trip` is a `gait pack build/verify` scenario; `pack` is not part of this surface. What
/// it asserts of the source runpack (unsigned, run id run_demo, exit 0) is checked on the runpack itself.
#[test]
fn pack_integrity_scenario_source_runpack_is_unsigned_and_verifies() -> Result<()> {
    let expected = yaml(&scenario("pack-integrity-round-trip/expected.yaml"))?;
    let dir = demo_workspace()?;
    let got = run(["verify", "run_demo", "--json"], dir.path())?;
    let out = got.json()?;
    assert_eq!(Some(i64::from(got.code)), expected["exit_code"].as_i64());
    assert_eq!(out["signature_status"], expected["verify_signature_status"]);
    assert_eq!(out["run_id"], expected["source_ref"]);
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// scenarios/gait/*

fn yaml(path: &Path) -> Result<Value> {
    let text = fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    Ok(serde_saphyr::from_str(&text)?)
}

/// `gate eval` arguments for a scenario directory: its policy and intent, its keys and tokens, and its flags.
fn scenario_args(dir: &Path, flags: &Value) -> Result<Vec<String>> {
    let mut args: Vec<String> = vec![
        "gate".into(),
        "eval".into(),
        "--policy".into(),
        p(&dir.join("policy.yaml")),
        "--intent".into(),
        p(&dir.join("intent.json")),
        "--json".into(),
    ];
    let file = |name: &str| dir.join(name);
    if file("approval-token.json").is_file() {
        args.extend(["--approval-token".into(), p(&file("approval-token.json"))]);
    }
    if file("approval_public.key").is_file() {
        args.extend([
            "--approval-public-key".into(),
            p(&file("approval_public.key")),
        ]);
    }
    if file("delegation_public.key").is_file() {
        args.extend([
            "--delegation-public-key".into(),
            p(&file("delegation_public.key")),
        ]);
    }
    let chain: Vec<String> = strings(flags.get("delegation_chain_files"));
    let mut tokens: Vec<String> = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("delegation-token") && !chain.contains(n))
        .collect();
    tokens.sort();
    for token in tokens {
        args.extend(["--delegation-token".into(), p(&file(&token))]);
    }
    if !chain.is_empty() {
        let csv: Vec<String> = chain.iter().map(|c| p(&file(c))).collect();
        args.extend(["--delegation-token-chain".into(), csv.join(",")]);
    }
    for (flag, key) in [
        ("--approved-script-registry", "approved_script_registry"),
        ("--approved-script-public-key", "approved_script_public_key"),
        ("--wrkr-inventory", "wrkr_inventory"),
    ] {
        if let Some(name) = flags.get(key).and_then(Value::as_str) {
            args.extend([flag.into(), p(&file(name))]);
        }
    }
    if flags.get("simulate").and_then(Value::as_bool) == Some(true) {
        args.push("--simulate".into());
    }
    Ok(args)
}

/// Every assertion of an expected.yaml that a single run can satisfy.
fn check_expected(name: &str, expected: &Value, got: &Run) -> Result<()> {
    let out = got.json()?;
    let context = || format!("{name}: exit {} {}", got.code, got.stdout);
    if let Some(code) = expected.get("exit_code").and_then(Value::as_i64) {
        ensure!(i64::from(got.code) == code, "exit code: {}", context());
    }
    for key in [
        "ok",
        "verdict",
        "simulate_mode",
        "valid_delegations",
        "script",
        "step_count",
        "composite_risk_class",
    ] {
        if let Some(want) = expected.get(key) {
            let have = out.get(key).cloned().unwrap_or(Value::Null);
            ensure!(&have == want, "{key}: {have} != {want}; {}", context());
        }
    }
    if let Some(count) = expected.get("step_verdict_count").and_then(Value::as_u64) {
        let have = out
            .get("step_verdicts")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        ensure!(have as u64 == count, "step_verdicts: {have}; {}", context());
    }
    let reasons: BTreeSet<String> = strings(out.get("reason_codes")).into_iter().collect();
    for key in ["reason_codes_must_include", "reason_codes"] {
        for code in strings(expected.get(key)) {
            ensure!(
                reasons.contains(&code),
                "missing reason {code}; {}",
                context()
            );
        }
    }
    if let Some(text) = expected.get("error_contains").and_then(Value::as_str) {
        let error = out.get("error").and_then(Value::as_str).unwrap_or_default();
        ensure!(
            error.contains(text),
            "error {error:?} lacks {text:?}; {}",
            context()
        );
    }
    Ok(())
}

fn run_scenario(name: &str) -> Result<()> {
    let dir = scenario(name);
    let expected = yaml(&dir.join("expected.yaml"))?;
    let flags = if dir.join("flags.yaml").is_file() {
        yaml(&dir.join("flags.yaml"))?
    } else {
        Value::Null
    };
    let args = scenario_args(&dir, &flags)?;
    let work = tempfile::tempdir()?;
    if let Some(n) = flags.get("concurrency").and_then(Value::as_u64) {
        let children: Vec<Child> = (0..n)
            .map(|_| spawn(&args, work.path()))
            .collect::<Result<_>>()?;
        let mut successful = 0;
        for child in children {
            let got = Run::from_output(child.wait_with_output()?);
            check_expected(name, &expected, &got)?;
            successful += 1;
        }
        if let Some(want) = expected.get("successful_runs").and_then(Value::as_u64) {
            ensure!(successful == want, "{name}: {successful} successful runs");
        }
        return Ok(());
    }
    let repeat = flags.get("repeat").and_then(Value::as_u64).unwrap_or(1);
    let mut trace_ids = BTreeSet::new();
    for _ in 0..repeat {
        let got = run(&args, work.path())?;
        check_expected(name, &expected, &got)?;
        if let Some(id) = got.json()?.get("trace_id").and_then(Value::as_str) {
            trace_ids.insert(id.to_owned());
        }
    }
    ensure!(
        trace_ids.len() <= 1,
        "{name}: decisions differ across repeats: {trace_ids:?}"
    );
    Ok(())
}

#[test]
fn scenario_approval_expiry_1s_past() -> Result<()> {
    run_scenario("approval-expiry-1s-past")
}

#[test]
fn scenario_approval_token_valid() -> Result<()> {
    run_scenario("approval-token-valid")
}

#[test]
fn scenario_approved_registry_signature_mismatch_high_risk() -> Result<()> {
    run_scenario("approved-registry-signature-mismatch-high-risk")
}

#[test]
fn scenario_concurrent_evaluation_10() -> Result<()> {
    run_scenario("concurrent-evaluation-10")
}

#[test]
fn scenario_delegation_chain_depth_3() -> Result<()> {
    run_scenario("delegation-chain-depth-3")
}

#[test]
fn scenario_dry_run_no_side_effects() -> Result<()> {
    run_scenario("dry-run-no-side-effects")
}

#[test]
fn scenario_script_max_steps_exceeded() -> Result<()> {
    run_scenario("script-max-steps-exceeded")
}

#[test]
fn scenario_script_mixed_risk_block() -> Result<()> {
    run_scenario("script-mixed-risk-block")
}

#[test]
fn scenario_script_threshold_approval_determinism() -> Result<()> {
    run_scenario("script-threshold-approval-determinism")
}

#[test]
fn scenario_wrkr_missing_fail_closed_high_risk() -> Result<()> {
    run_scenario("wrkr-missing-fail-closed-high-risk")
}

fn run_verdict_table(name: &str) -> Result<()> {
    let dir = scenario(name);
    let work = tempfile::tempdir()?;
    let intents = fs::read_to_string(dir.join("intents.jsonl"))?;
    let expected = fs::read_to_string(dir.join("expected-verdicts.jsonl"))?;
    let intents: Vec<&str> = intents.lines().filter(|l| !l.trim().is_empty()).collect();
    let expected: Vec<&str> = expected.lines().filter(|l| !l.trim().is_empty()).collect();
    ensure!(
        intents.len() == expected.len(),
        "{name}: one expectation per intent"
    );
    for (i, (intent, want)) in intents.iter().zip(&expected).enumerate() {
        let want: Value = serde_json::from_str(want)?;
        let intent_path = work.path().join(format!("intent_{i}.json"));
        fs::write(&intent_path, intent)?;
        let trace = work.path().join(format!("trace_{i}.json"));
        let got = run(
            [
                "gate",
                "eval",
                "--policy",
                &p(&dir.join("policy.yaml")),
                "--intent",
                &p(&intent_path),
                "--trace-out",
                &p(&trace),
                "--json",
            ],
            work.path(),
        )?;
        let out = got.json()?;
        ensure!(
            Some(i64::from(got.code)) == want["exit_code"].as_i64(),
            "{name} #{i}: {}",
            got.stdout
        );
        ensure!(
            out["verdict"] == want["verdict"],
            "{name} #{i}: {}",
            got.stdout
        );
        ensure!(
            read_json(&trace)?["tool_name"] == want["tool_name"],
            "{name} #{i} tool"
        );
    }
    Ok(())
}

#[test]
fn scenario_policy_allow_safe_tools() -> Result<()> {
    run_verdict_table("policy-allow-safe-tools")
}

#[test]
fn scenario_policy_block_destructive() -> Result<()> {
    run_verdict_table("policy-block-destructive")
}

#[test]
fn every_scenario_directory_is_covered_by_a_test() -> Result<()> {
    let covered = [
        "approval-expiry-1s-past",
        "approval-token-valid",
        "approved-registry-signature-mismatch-high-risk",
        "concurrent-evaluation-10",
        "delegation-chain-depth-3",
        "dry-run-no-side-effects",
        "pack-integrity-round-trip",
        "policy-allow-safe-tools",
        "policy-block-destructive",
        "script-max-steps-exceeded",
        "script-mixed-risk-block",
        "script-threshold-approval-determinism",
        "wrkr-missing-fail-closed-high-risk",
    ];
    for entry in fs::read_dir(fixtures().join("scenarios/gait"))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        ensure!(
            covered.contains(&name.as_str()),
            "scenario {name} has no test"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// approvals, delegation audit, rate limits

#[test]
fn approval_audit_records_the_judged_tokens() -> Result<()> {
    let dir = scenario("approval-token-valid");
    let work = tempfile::tempdir()?;
    let expired = scenario("approval-expiry-1s-past/approval-token.json");
    let got = run(
        [
            "gate",
            "eval",
            "--policy",
            &p(&dir.join("policy.yaml")),
            "--intent",
            &p(&dir.join("intent.json")),
            "--approval-token",
            &p(&dir.join("approval-token.json")),
            "--approval-token-chain",
            &p(&expired),
            "--approval-public-key",
            &p(&dir.join("approval_public.key")),
            "--approval-audit-out",
            "audit/approvals.json",
            "--json",
        ],
        work.path(),
    )?;
    assert_eq!(got.code, 0, "{}", got.stdout);
    let out = got.json()?;
    assert_eq!(out["verdict"], "allow");
    assert_eq!(out["approval_ref"], "ec44f8948261811d131eb04a");
    assert_eq!(out["required_approvals"], 1);
    assert_eq!(out["valid_approvals"], 1);
    assert_eq!(out["approval_audit_path"], "audit/approvals.json");
    // The expired token is bound to another intent: its first failing check is the intent binding.
    let reasons = strings(out.get("reason_codes"));
    assert!(
        reasons.contains(&"approval_granted".to_owned()),
        "{reasons:?}"
    );
    assert!(
        reasons.contains(&"approval_token_intent_mismatch".to_owned()),
        "{reasons:?}"
    );
    let audit = read_json(&work.path().join("audit/approvals.json"))?;
    assert_eq!(audit["schema_id"], "gait.gate.approval_audit_record");
    assert_eq!(audit["approved"], true);
    assert_eq!(audit["approvers"], serde_json::json!(["human.reviewer"]));
    assert_eq!(audit["entries"][0]["token_id"], "b68a3c0bd5a7af6eb3c47cea");
    assert_eq!(audit["entries"][0]["valid"], false);
    assert_eq!(
        audit["entries"][0]["error_code"],
        "approval_token_intent_mismatch"
    );
    assert_eq!(audit["entries"][1]["valid"], true);
    assert_eq!(audit["trace_id"], out["trace_id"]);
    Ok(())
}

#[test]
fn missing_delegation_tokens_block_and_are_audited() -> Result<()> {
    let dir = scenario("delegation-chain-depth-3");
    let work = tempfile::tempdir()?;
    let got = run(
        [
            "gate",
            "eval",
            "--policy",
            &p(&dir.join("policy.yaml")),
            "--intent",
            &p(&dir.join("intent.json")),
            "--delegation-public-key",
            &p(&dir.join("delegation_public.key")),
            "--delegation-token",
            &p(&dir.join("delegation-token-1.json")),
            "--json",
        ],
        work.path(),
    )?;
    assert_eq!(got.code, 3, "{}", got.stdout);
    let out = got.json()?;
    let reasons = strings(out.get("reason_codes"));
    assert!(
        reasons.contains(&"delegation_chain_insufficient".to_owned()),
        "{reasons:?}"
    );
    assert!(
        reasons.contains(&"delegation_token_missing".to_owned()),
        "{reasons:?}"
    );
    assert!(strings(out.get("violations")).contains(&"delegation_not_granted".to_owned()));
    assert_eq!(out["delegation_required"], true);
    let audit_path = work
        .path()
        .join(out["delegation_audit_path"].as_str().unwrap_or_default());
    let audit = read_json(&audit_path)?;
    assert_eq!(audit["schema_id"], "gait.gate.delegation_audit_record");
    assert_eq!(audit["entries"][0]["token_id"], "694428976ab1b10859171a05");
    Ok(())
}

/// A policy allowing 5 calls per hour per tool, evaluated by 10 concurrent processes sharing one state file:
/// exactly 5 are allowed and 5 blocked, and the persisted counter is 5.
#[test]
fn ten_concurrent_processes_share_the_rate_limit_state_without_losing_counts() -> Result<()> {
    let work = tempfile::tempdir()?;
    fs::write(
        work.path().join("policy.yaml"),
        "default_verdict: block\nrules:\n  - name: limited-read\n    effect: allow\n    match:\n      tool_names: [tool.read]\n    rate_limit:\n      requests: 5\n      window: hour\n      scope: tool\n",
    )?;
    let intent = scenario("concurrent-evaluation-10/intent.json");
    // The limit counts per clock hour. The hour is read before the first process starts and after the last
    // one ended: when both agree, every evaluation fell into one window and the counts are exact; when the
    // run straddled an hour boundary (rare), the split is legitimate and only its bounds are checked.
    let hour = || -> Result<u64> {
        Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs()
            / 3600)
    };
    let hour_before = hour()?;
    let args = [
        "gate".to_owned(),
        "eval".into(),
        "--policy".into(),
        "policy.yaml".into(),
        "--intent".into(),
        p(&intent),
        "--rate-limit-state".into(),
        "state/limits.json".into(),
        "--json".into(),
    ];
    let children: Vec<Child> = (0..10)
        .map(|_| spawn(&args, work.path()))
        .collect::<Result<_>>()?;
    let mut allowed = 0;
    let mut blocked = 0;
    for child in children {
        let got = Run::from_output(child.wait_with_output()?);
        let out = got.json()?;
        match got.code {
            0 => {
                allowed += 1;
                assert_eq!(out["rate_limit_key"], "tool.read");
            }
            3 => {
                blocked += 1;
                assert!(
                    strings(out.get("reason_codes")).contains(&"rate_limit_exceeded".to_owned())
                );
            }
            other => bail!("unexpected exit {other}: {} {}", got.stdout, got.stderr),
        }
    }
    let one_window = hour()? == hour_before;
    let state = read_json(&work.path().join("state/limits.json"))?;
    assert_eq!(state["schema_id"], "gait.gate.rate_limit_state");
    assert_eq!(state["counters"].as_array().map(Vec::len), Some(1));
    if one_window {
        assert_eq!((allowed, blocked), (5, 5));
        assert_eq!(state["counters"][0]["count"], 5);
    } else {
        // k evaluations in the first hour and 10 - k in the next: min(k, 5) + min(10 - k, 5) allowed, and
        // only the newer hour's counter is kept.
        assert_eq!(allowed + blocked, 10);
        assert!((5..=10).contains(&allowed), "{allowed} allowed");
        let count = state["counters"][0]["count"].as_i64().unwrap_or(-1);
        assert!((1..=5).contains(&count), "counter {count}");
    }
    assert!(!work.path().join("state/limits.json.lock").exists());
    Ok(())
}

/// A registry entry signed now (valid for an hour) for the registry scenario's script intent and policy.
fn signed_registry_entry(key: &SigningKey, policy_digest: &str, script_hash: &str) -> Value {
    let now = time::OffsetDateTime::now_utc();
    let fmt = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    let mut entry = serde_json::json!({
        "schema_id": "gait.gate.approved_script_entry",
        "schema_version": "1.0.0",
        "created_at": fmt(now.replace_nanosecond(0).unwrap_or(now)),
        "producer_version": "test",
        "pattern_id": "pattern_test",
        "policy_digest": policy_digest,
        "script_hash": script_hash,
        "tool_sequence": ["tool.read", "tool.write"],
        "approver_identity": "secops",
        "expires_at": fmt(now.replace_nanosecond(0).unwrap_or(now) + time::Duration::hours(1)),
    });
    let digest = gait_canon::digest_jcs(&entry);
    let signature = key
        .sign_digest_hex(&digest)
        .map(|s| serde_json::to_value(s).unwrap_or(Value::Null));
    entry["signature"] = signature.unwrap_or(Value::Null);
    entry
}

#[test]
fn approved_script_registry_pre_approves_a_signed_script_and_fails_closed_when_tampered()
-> Result<()> {
    let dir = scenario("approved-registry-signature-mismatch-high-risk");
    let work = tempfile::tempdir()?;
    let keys = keys(work.path())?;
    let base = [
        "gate".to_owned(),
        "eval".into(),
        "--policy".into(),
        p(&dir.join("policy.yaml")),
        "--intent".into(),
        p(&dir.join("intent.json")),
        "--json".into(),
    ];
    // Without the registry the write step needs approval.
    let plain = run(&base, work.path())?;
    assert_eq!(plain.code, 4, "{}", plain.stdout);
    let plain = plain.json()?;
    let policy_digest = plain["policy_digest"].as_str().context("policy_digest")?;
    let script_hash = plain["script_hash"].as_str().context("script_hash")?;

    let entry = signed_registry_entry(&keys.key, policy_digest, script_hash);
    let registry = work.path().join("approved_scripts.json");
    fs::write(
        &registry,
        serde_json::to_vec_pretty(&serde_json::json!({"entries": [entry.clone()]}))?,
    )?;
    let mut with_registry: Vec<String> = base.to_vec();
    with_registry.extend([
        "--approved-script-registry".into(),
        p(&registry),
        "--approved-script-public-key".into(),
        p(&keys.public),
    ]);
    let got = run(&with_registry, work.path())?;
    assert_eq!(got.code, 0, "{}", got.stdout);
    let out = got.json()?;
    assert_eq!(out["verdict"], "allow");
    assert_eq!(out["pre_approved"], true);
    assert_eq!(out["pattern_id"], "pattern_test");
    assert_eq!(strings(out.get("reason_codes")), ["approved_script_match"]);
    assert_eq!(out["step_count"], 2);

    // The same entry with its script hash changed no longer verifies: high risk fails closed (exit 3).
    let mut tampered = entry;
    tampered["script_hash"] = Value::String("f".repeat(64));
    fs::write(
        &registry,
        serde_json::to_vec_pretty(&serde_json::json!({"entries": [tampered]}))?,
    )?;
    let got = run(&with_registry, work.path())?;
    assert_eq!(got.code, 3, "{}", got.stdout);
    let out = got.json()?;
    assert_eq!(out["ok"], false);
    assert_eq!(
        out["error"],
        "approved script registry verification failed at entry 0: \
         verify approved script entry signature: signed_digest mismatch"
    );
    assert_eq!(out["error_code"], "policy_blocked");
    Ok(())
}

/// Sign the demo runpack's manifest with a fresh key (Python + cryptography, independent of this project) and
/// write `runpack_signed.zip` plus that key's public key file.
fn signed_demo_runpack(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let zip = dir.join("gait-out/runpack_signed.zip");
    let public = dir.join("signer_public.key");
    let script = "import sys,zipfile,json,hashlib,base64\n\
        sys.path.insert(0,sys.argv[4])\n\
        from gait_verify import jcs\n\
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey\n\
        from cryptography.hazmat.primitives import serialization as s\n\
        src,dst,pub=sys.argv[1:4]\n\
        k=Ed25519PrivateKey.generate()\n\
        raw=k.public_key().public_bytes(s.Encoding.Raw,s.PublicFormat.Raw)\n\
        open(pub,'w').write(base64.b64encode(raw).decode()+'\\n')\n\
        with zipfile.ZipFile(src) as zi, zipfile.ZipFile(dst,'w',zipfile.ZIP_DEFLATED) as zo:\n\
        \x20   for info in zi.infolist():\n\
        \x20       data=zi.read(info.filename)\n\
        \x20       if info.filename=='manifest.json':\n\
        \x20           m=json.loads(data)\n\
        \x20           d=hashlib.sha256(jcs(m).encode()).digest()\n\
        \x20           m['signatures']=[{'alg':'ed25519','key_id':hashlib.sha256(raw).hexdigest(),\n\
        \x20               'sig':base64.b64encode(k.sign(d)).decode(),'signed_digest':d.hex()}]\n\
        \x20           data=jcs(m).encode()\n\
        \x20       zo.writestr(info,data)\n";
    let status = Command::new("python3")
        .args(["-c", script])
        .arg(dir.join("gait-out/runpack_run_demo.zip"))
        .arg(&zip)
        .arg(&public)
        .arg(shared().join("tools"))
        .status()?;
    ensure!(status.success(), "python signing failed");
    Ok((zip, public))
}

#[test]
fn signed_runpacks_verify_with_the_right_key_only() -> Result<()> {
    let dir = demo_workspace()?;
    let (zip, public) = signed_demo_runpack(dir.path())?;
    let got = run(
        [
            "verify",
            &p(&zip),
            "--public-key",
            &p(&public),
            "--profile",
            "strict",
            "--json",
        ],
        dir.path(),
    )?;
    assert_eq!(got.code, 0, "{}", got.stdout);
    let out = got.json()?;
    assert_eq!(out["signature_status"], "verified");
    assert_eq!(out["signatures_valid"], 1);
    assert_eq!(out["signature_note"], "signatures verified");

    let got = run(["verify", &p(&zip), "--json"], dir.path())?;
    assert_eq!(
        got.code, 0,
        "a signed runpack without a key is skipped, not failed"
    );
    assert_eq!(got.json()?["signature_status"], "skipped");

    let other = keys(dir.path())?;
    let got = run(
        [
            "verify",
            &p(&zip),
            "--public-key",
            &p(&other.public),
            "--json",
        ],
        dir.path(),
    )?;
    assert_eq!(got.code, 2, "{}", got.stdout);
    let out = got.json()?;
    assert_eq!(out["signature_status"], "failed");
    assert_eq!(out["signatures_total"], 1);
    assert!(out.get("signatures_valid").is_none());
    Ok(())
}

/// Every object key upper-cased (Go's decoder still matches them to the struct fields).
fn upper_keys(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.to_ascii_uppercase(), upper_keys(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(upper_keys).collect()),
        other => other.clone(),
    }
}

#[test]
fn gaits_trace_and_a_registry_with_upper_case_keys_are_read_like_go_reads_them() -> Result<()> {
    let work = tempfile::tempdir()?;
    // Gait's own trace, every key upper-cased plus an unknown member: still verified over the projection.
    let mut trace = upper_keys(&read_json(
        &conformance().join("artifacts/trace_endpoint_block.json"),
    )?);
    trace["ENTERPRISE_EXTENSION"] = serde_json::json!({"tenant": "acme"});
    let trace_path = work.path().join("trace_upper.json");
    fs::write(&trace_path, serde_json::to_vec_pretty(&trace)?)?;
    let public = conformance().join("artifacts/gait_public.key");
    let got = run(
        [
            "trace",
            "verify",
            &p(&trace_path),
            "--public-key",
            &p(&public),
            "--json",
        ],
        work.path(),
    )?;
    assert_eq!(got.code, 0, "{}", got.stdout);
    let out = got.json()?;
    assert_eq!(out["signature_status"], "verified");
    assert_eq!(out["verdict"], "block");

    // A signed registry written with upper-case keys still pre-approves the script.
    let dir = scenario("approved-registry-signature-mismatch-high-risk");
    let keys = keys(work.path())?;
    let base = [
        "gate".to_owned(),
        "eval".into(),
        "--policy".into(),
        p(&dir.join("policy.yaml")),
        "--intent".into(),
        p(&dir.join("intent.json")),
        "--json".into(),
    ];
    let plain = run(&base, work.path())?.json()?;
    let policy_digest = plain["policy_digest"].as_str().context("policy_digest")?;
    let script_hash = plain["script_hash"].as_str().context("script_hash")?;
    let entry = signed_registry_entry(&keys.key, policy_digest, script_hash);
    let registry = work.path().join("approved_scripts_upper.json");
    fs::write(
        &registry,
        serde_json::to_vec_pretty(&upper_keys(&serde_json::json!({"entries": [entry]})))?,
    )?;
    let mut args: Vec<String> = base.to_vec();
    args.extend([
        "--approved-script-registry".into(),
        p(&registry),
        "--approved-script-public-key".into(),
        p(&keys.public),
    ]);
    let got = run(&args, work.path())?;
    assert_eq!(got.code, 0, "{}", got.stdout);
    assert_eq!(got.json()?["pre_approved"], true);
    Ok(())
}

const CONTEXT_POLICY: &str = "\
default_verdict: block
rules:
  - name: read-with-context
    priority: 10
    effect: allow
    require_context_evidence: true
    required_context_evidence_mode: required
    max_context_age_seconds: 600
    match:
      tool_names: [tool.read]
";

/// A `gait.context.envelope` whose one record was retrieved `age_seconds` ago, sealed with the digest computed
/// here (JCS over the records array), independently of the agent's envelope code.
fn context_envelope(age_seconds: i64) -> Result<Value> {
    let retrieved = time::OffsetDateTime::now_utc() - time::Duration::seconds(age_seconds);
    let retrieved = retrieved
        .replace_nanosecond(0)?
        .format(&time::format_description::well_known::Rfc3339)?;
    let records = serde_json::json!([{
        "ref_id": "ctx_001",
        "source_type": "doc_store",
        "source_locator": "docs://policies/security.md",
        "query_digest": "1".repeat(64),
        "content_digest": "2".repeat(64),
        "retrieved_at": retrieved,
        "redaction_mode": "reference",
        "immutability": "immutable",
    }]);
    Ok(serde_json::json!({
        "schema_id": "gait.context.envelope",
        "schema_version": "1.0.0",
        "created_at": retrieved,
        "producer_version": "0.0.0-dev",
        "context_set_id": "ctx_set_demo",
        "context_set_digest": gait_canon::digest_jcs(&records),
        "evidence_mode": "required",
        "records": records,
    }))
}

#[test]
fn context_envelope_binds_verified_evidence_and_a_tampered_one_is_refused() -> Result<()> {
    let work = tempfile::tempdir()?;
    let policy = work.path().join("policy.yaml");
    fs::write(&policy, CONTEXT_POLICY)?;
    // The intent claims evidence itself: unauthenticated, so stripped without an envelope.
    let intent = work.path().join("intent.json");
    fs::write(
        &intent,
        serde_json::to_vec(&serde_json::json!({
            "schema_id": "gait.gate.intent_request",
            "schema_version": "1.0.0",
            "created_at": "2026-02-14T00:00:00Z",
            "producer_version": "test",
            "tool_name": "tool.read",
            "args": {"path": "/tmp/report.txt"},
            "targets": [{"kind": "path", "value": "/tmp/report.txt", "operation": "read"}],
            "context": {
                "identity": "alice",
                "workspace": "/tmp",
                "risk_class": "low",
                "context_set_digest": "a".repeat(64),
                "context_evidence_mode": "required",
                "auth_context": {"context_age_seconds": 1}
            }
        }))?,
    )?;
    let eval = |extra: &[String]| -> Result<Run> {
        let mut args = vec![
            "gate".to_owned(),
            "eval".into(),
            "--policy".into(),
            p(&policy),
            "--intent".into(),
            p(&intent),
            "--json".into(),
        ];
        args.extend_from_slice(extra);
        run(&args, work.path())
    };

    let without = eval(&[])?;
    assert_eq!(without.code, 3, "{}", without.stdout);
    let out = without.json()?;
    assert_eq!(out["verdict"], "block");
    assert!(
        strings(out.get("reason_codes")).contains(&"context_evidence_missing".to_owned()),
        "{out:?}"
    );
    assert!(out.get("context_set_digest").is_none(), "{out:?}");
    let stripped_digest = out["intent_digest"].clone();

    let envelope = work.path().join("context.json");
    let sealed = context_envelope(30)?;
    fs::write(&envelope, serde_json::to_vec_pretty(&sealed)?)?;
    let flag = ["--context-envelope".to_owned(), p(&envelope)];
    // The intent's own digest claim contradicts the envelope: invalid input.
    let got = eval(&flag)?;
    assert_eq!(got.code, 6, "{}", got.stdout);
    assert!(
        got.json()?["error"]
            .as_str()
            .unwrap_or_default()
            .contains("context envelope digest does not match"),
        "{}",
        got.stdout
    );

    // Without the contradicting claim the verified envelope grants the call.
    let mut doc = read_json(&intent)?;
    doc["context"]
        .as_object_mut()
        .context("context")?
        .remove("context_set_digest");
    fs::write(&intent, serde_json::to_vec(&doc)?)?;
    let got = eval(&flag)?;
    assert_eq!(got.code, 0, "{}", got.stdout);
    let out = got.json()?;
    assert_eq!(out["verdict"], "allow");
    assert_eq!(out["context_set_digest"], sealed["context_set_digest"]);
    assert_eq!(out["context_evidence_mode"], "required");
    assert_eq!(out["context_ref_count"], 1);
    assert_eq!(out["context_source"], "context_envelope");
    assert_ne!(out["intent_digest"], stripped_digest);
    let trace = read_json(
        &work
            .path()
            .join(out["trace_path"].as_str().context("trace_path")?),
    )?;
    assert_eq!(trace["context_set_digest"], sealed["context_set_digest"]);
    assert_eq!(trace["context_source"], "context_envelope");

    // Evidence older than max_context_age_seconds blocks.
    fs::write(
        &envelope,
        serde_json::to_vec_pretty(&context_envelope(3600)?)?,
    )?;
    let got = eval(&flag)?;
    assert_eq!(got.code, 3, "{}", got.stdout);
    assert!(
        strings(got.json()?.get("reason_codes")).contains(&"context_freshness_exceeded".to_owned()),
        "{}",
        got.stdout
    );

    // A record changed after sealing: refused with Gait's invalid-input envelope.
    let mut tampered = sealed;
    tampered["records"][0]["source_locator"] = Value::String("docs://elsewhere.md".into());
    fs::write(&envelope, serde_json::to_vec_pretty(&tampered)?)?;
    let got = eval(&flag)?;
    assert_eq!(got.code, 6, "{}", got.stdout);
    let out = got.json()?;
    assert_eq!(out["ok"], false);
    assert_eq!(out["error_code"], "invalid_input");
    assert_eq!(out["error_category"], "invalid_input");
    assert!(
        out["error"]
            .as_str()
            .unwrap_or_default()
            .contains("context_set_digest mismatch"),
        "{out:?}"
    );
    // A missing envelope file is invalid input too.
    let got = eval(&[
        "--context-envelope".to_owned(),
        p(&work.path().join("nope.json")),
    ])?;
    assert_eq!(got.code, 6, "{}", got.stdout);
    Ok(())
}

const BROKER_POLICY: &str = "\
default_verdict: block
rules:
  - name: egress-with-credential
    priority: 10
    effect: allow
    require_broker_credential: true
    broker_reference: highrisk-egress
    broker_scopes: [write]
    match:
      tool_names: [tool.write]
";

#[test]
fn broker_credentials_gate_an_allow_without_leaking_the_secret() -> Result<()> {
    let work = tempfile::tempdir()?;
    let policy = work.path().join("policy.yaml");
    fs::write(&policy, BROKER_POLICY)?;
    let intent = fixtures().join("examples/policy/endpoint/fixtures/intent_allow.json");
    let eval = |extra: &[&str], env: &[(&str, &str)]| -> Result<Run> {
        let mut cmd = command(
            [
                "gate",
                "eval",
                "--policy",
                &p(&policy),
                "--intent",
                &p(&intent),
                "--json",
            ]
            .into_iter()
            .chain(extra.iter().copied()),
            work.path(),
        );
        cmd.env_remove("GAIT_BROKER_TOKEN_HIGHRISK_EGRESS");
        for (k, v) in env {
            cmd.env(k, v);
        }
        Ok(Run::from_output(cmd.output()?))
    };

    // Required, no broker configured.
    let got = eval(&[], &[])?;
    assert_eq!(got.code, 3, "{}", got.stdout);
    let out = got.json()?;
    assert_eq!(out["verdict"], "block");
    assert!(strings(out.get("reason_codes")).contains(&"broker_credential_required".to_owned()));
    assert!(strings(out.get("violations")).contains(&"broker_credential_missing".to_owned()));

    // Env broker with the variable unset: missing.
    let got = eval(&["--credential-broker", "env"], &[])?;
    assert_eq!(got.code, 3, "{}", got.stdout);
    assert!(
        strings(got.json()?.get("reason_codes")).contains(&"broker_credential_missing".to_owned())
    );

    // Command broker that fails: missing.
    let failing = work.path().join("failing.sh");
    fs::write(&failing, "#!/bin/sh\ncat >/dev/null\nexit 1\n")?;
    let ok = work.path().join("ok.sh");
    fs::write(
        &ok,
        "#!/bin/sh\ncat >/dev/null\necho '{\"issued_by\":\"vault\",\"credential_ref\":\"vault:ref-123\",\"ttl_seconds\":60}'\n",
    )?;
    // The scripts run as `/bin/sh <script>`: exec'ing a file this test process just
    // wrote can fail with ETXTBSY while a sibling test thread is between fork and exec.
    let got = eval(
        &[
            "--credential-broker",
            "command",
            "--credential-command",
            "/bin/sh",
            "--credential-command-args",
            &p(&failing),
        ],
        &[],
    )?;
    assert_eq!(got.code, 3, "{}", got.stdout);
    let out = got.json()?;
    assert!(strings(out.get("reason_codes")).contains(&"broker_credential_missing".to_owned()));
    assert!(out.get("credential_ref").is_none());

    // Working command broker: allow, reference reported and recorded.
    let got = eval(
        &[
            "--credential-broker",
            "command",
            "--credential-command",
            "/bin/sh",
            "--credential-command-args",
            &p(&ok),
        ],
        &[],
    )?;
    assert_eq!(got.code, 0, "{}", got.stdout);
    let out = got.json()?;
    assert_eq!(out["verdict"], "allow");
    assert!(strings(out.get("reason_codes")).contains(&"broker_credential_present".to_owned()));
    assert_eq!(out["credential_ref"], "vault:ref-123");
    assert_eq!(out["credential_issuer"], "vault");

    // Working env broker: the reference is a digest of the secret, never the secret.
    let secret = "super-secret-token-value";
    let record_path = work.path().join("evidence/credential.json");
    let got = eval(
        &[
            "--credential-broker",
            "env",
            "--credential-evidence-out",
            &p(&record_path),
        ],
        &[("GAIT_BROKER_TOKEN_HIGHRISK_EGRESS", secret)],
    )?;
    assert_eq!(got.code, 0, "{} {}", got.stdout, got.stderr);
    assert!(!got.stdout.contains(secret) && !got.stderr.contains(secret));
    let out = got.json()?;
    assert!(strings(out.get("reason_codes")).contains(&"broker_credential_present".to_owned()));
    let credential_ref = out["credential_ref"].as_str().context("credential_ref")?;
    assert!(credential_ref.starts_with("env:GAIT_BROKER_TOKEN_HIGHRISK_EGRESS:"));
    assert_eq!(out["credential_evidence_path"], p(&record_path).as_str());
    let record_text = fs::read_to_string(&record_path)?;
    assert!(!record_text.contains(secret));
    let record: Value = serde_json::from_str(&record_text)?;
    assert_eq!(record["schema_id"], "gait.gate.broker_credential_record");
    assert_eq!(record["broker"], "env");
    assert_eq!(record["reference"], "highrisk-egress");
    assert_eq!(record["scope"], serde_json::json!(["write"]));
    assert_eq!(record["credential_ref"], credential_ref);
    assert_eq!(record["trace_id"], out["trace_id"]);
    let trace = read_json(
        &work
            .path()
            .join(out["trace_path"].as_str().context("trace_path")?),
    )?;
    assert!(!trace.to_string().contains(secret));

    // Unknown broker names are invalid input.
    let got = eval(&["--credential-broker", "vault"], &[])?;
    assert_eq!(got.code, 6, "{}", got.stdout);
    Ok(())
}

/// `--wrkr-inventory`: keys match case-insensitively and `null` is empty (Go's decoder); the reported intent is
/// the enriched one, so its digest (and trace) is Gait's (contract §1.3); `context_source` is the cleaned path.
#[test]
fn gate_eval_wrkr_enrichment_reports_the_enriched_digest_and_decodes_like_go() -> Result<()> {
    let work = tempfile::tempdir()?;
    let dir = work.path();
    fs::write(
        dir.join("p.yaml"),
        "default_verdict: allow\nrules:\n  - name: pii\n    effect: block\n    match:\n      context_data_classes: [pii]\n",
    )?;
    fs::write(
        dir.join("inv.json"),
        r#"[{"tool_name":"Tool.Write","data_class":"PII","endpoint_class":"fs.write","autonomy_level":"L2"}]"#,
    )?;
    fs::write(
        dir.join("inv2.json"),
        r#"{"items":[{"Tool_Name":"tool.write","Data_Class":"PII","endpoint_class":null}]}"#,
    )?;
    let intent = fixtures().join("examples/policy-test/intent.json");
    let eval = |inventory: &str| -> Result<Map<String, Value>> {
        let run = run(
            [
                "gate",
                "eval",
                "--policy",
                "p.yaml",
                "--intent",
                &p(&intent),
                "--wrkr-inventory",
                inventory,
                "--trace-out",
                "t.json",
                "--json",
            ],
            dir,
        )?;
        run.json()
    };
    let out = eval("./inv.json")?;
    ensure!(out["verdict"] == "block", "{out:?}");
    // Digest of the intent with auth_context wrkr.* injected, as Gait computes it.
    ensure!(
        out["intent_digest"] == "c97671ac3abb2cae915d0c06e6a8ab6c76acff465cfc9ba7748f923ed34da92d",
        "{out:?}"
    );
    ensure!(out["context_source"] == "inv.json", "{out:?}");
    let trace = read_object(&dir.join("t.json"))?;
    ensure!(trace["intent_digest"] == out["intent_digest"]);
    let lenient = eval("inv2.json")?;
    ensure!(lenient["verdict"] == "block", "{lenient:?}");
    ensure!(lenient["ok"] == true, "{lenient:?}");
    Ok(())
}
