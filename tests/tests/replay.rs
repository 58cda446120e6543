//! End to end, on real processes: replay before rollout (issue 13). Three agents of `acme` under a bundle
//! published with `--capture-mode raw` make 30 decisions over five tools (some intents shared between agents),
//! an agent of another org makes decisions too; `gait-aggregator replay` of a candidate that blocks `tool.delete`
//! names every flipped sample of that tool and no other, exits 5, and the report verifies with the server's key;
//! a rerun pinned at the echoed `until_id` is byte-identical although decisions arrived since; the offline CLI
//! over the exported corpus, signed with the same key, gives the identical bytes; an unchanged candidate exits
//! 0, a broken one 65. The fixture test checks the `changed` set on Gait's example policies and intents
//! against Gait's rule applied to `gait-agent policy test` per fixture.
#![allow(clippy::disallowed_methods)] // tests spawn freely and read the clock

use std::collections::BTreeSet;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::Output;

use anyhow::{Context as _, ensure};
use gait_e2e::{Agent, Aggregator, PATIENCE, hermetic, http_json, wait_for};
use serde_json::{Value, json};

const TOOLS: [&str; 5] = [
    "tool.read",
    "tool.write",
    "tool.list",
    "tool.search",
    "tool.delete",
];

const BASELINE: &str = "schema_id: gait.gate.policy\nschema_version: 1.0.0\ndefault_verdict: block\nrules:\n  - name: allow-tools\n    priority: 20\n    effect: allow\n    match:\n      tool_names: [tool.read, tool.write, tool.list, tool.search, tool.delete]\n    reason_codes: [tool_allowed]\n";

const CANDIDATE: &str = "schema_id: gait.gate.policy\nschema_version: 1.0.0\ndefault_verdict: block\nrules:\n  - name: no-delete\n    priority: 10\n    effect: block\n    match:\n      tool_names: [tool.delete]\n    reason_codes: [delete_blocked]\n  - name: allow-tools\n    priority: 20\n    effect: allow\n    match:\n      tool_names: [tool.read, tool.write, tool.list, tool.search, tool.delete]\n    reason_codes: [tool_allowed]\n";

fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/replay")
}

fn intent(tool: &str, path: &str) -> Value {
    json!({
        "schema_id": "gait.gate.intent_request",
        "schema_version": "1.0.0",
        "created_at": "2026-12-01T09:00:00Z",
        "producer_version": "e2e",
        "tool_name": tool,
        "args": {"path": path},
        "targets": [{"kind": "path", "value": path, "operation": "read"}],
        "context": {"identity": "worker", "workspace": "/srv/app", "risk_class": "low"}
    })
}

/// One decision; returns its sample id in an org-wide replay, `<project>/<env>/<agent>:<record_seq>`.
fn decide(agent: &Agent, tool: &str, path: &str) -> anyhow::Result<String> {
    let token = agent.api_token()?;
    let (status, answer) = http_json(
        "POST",
        &format!("http://{}/v1/gate/evaluate", agent.api),
        Some(&token),
        Some(intent(tool, path)),
    )?;
    ensure!(
        status == 200 && answer["verdict"] == "allow",
        "evaluate answered {status}: {answer}"
    );
    let seq = answer["record_seq"].as_u64().context("record_seq")?;
    Ok(format!(
        "{}/{}/{}:{seq}",
        agent.project, agent.env, agent.id
    ))
}

fn publish_raw(agg: &Aggregator, dir: &Path, org: &str) -> anyhow::Result<()> {
    let policy = dir.join(format!("{org}-base.yaml"));
    std::fs::write(&policy, BASELINE)?;
    let out = hermetic("gait-aggregator")
        .env("GAIT_DATA_DIR", &agg.data_dir)
        .args(["publish", "--server", &agg.url("")])
        .args([
            "--org",
            org,
            "--project",
            "web",
            "--env",
            "prod",
            "--capture-mode",
            "raw",
        ])
        .arg("--policy")
        .arg(&policy)
        .output()?;
    ensure!(out.status.success(), "publish: {}", stderr(&out));
    Ok(())
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Indexed decisions of `org`.
fn indexed(agg: &Aggregator, org: &str) -> anyhow::Result<usize> {
    let (status, page) = agg.get(&format!(
        "/v1/orgs/{org}/evidence/records?kind=gate.decision&limit=1000"
    ))?;
    ensure!(status == 200, "{status} {page}");
    Ok(page["records"].as_array().map_or(0, Vec::len))
}

/// `gait-aggregator replay …` against `agg` (or offline when `agg` is `None`).
fn replay(agg: Option<&Aggregator>, args: &[&str]) -> anyhow::Result<Output> {
    let mut cmd = hermetic("gait-aggregator");
    cmd.arg("replay");
    if let Some(agg) = agg {
        cmd.env("GAIT_DATA_DIR", &agg.data_dir)
            .args(["--server", &agg.url("")]);
    }
    Ok(cmd.args(args).output()?)
}

/// A GET answered as raw bytes (the corpus is JSON Lines).
fn get_bytes(agg: &Aggregator, path: &str) -> anyhow::Result<Vec<u8>> {
    let mut stream = std::net::TcpStream::connect(agg.http)?;
    stream.set_read_timeout(Some(PATIENCE))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {}\r\nconnection: close\r\n\r\n",
        agg.http, agg.token
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("http response")?;
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    ensure!(head.starts_with("http/1.1 200"), "{head}");
    let body = &raw[split + 4..];
    if !head.contains("transfer-encoding: chunked") {
        return Ok(body.to_vec());
    }
    // The corpus export is streamed: undo the chunked framing.
    let mut out = Vec::new();
    let mut rest = body;
    loop {
        let line = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("chunk size line")?;
        let size = usize::from_str_radix(std::str::from_utf8(&rest[..line])?.trim(), 16)?;
        rest = &rest[line + 2..];
        if size == 0 {
            return Ok(out);
        }
        ensure!(rest.len() >= size + 2, "truncated chunk");
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

fn samples(report: &Value) -> BTreeSet<String> {
    report["changed"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["samples"].as_array().cloned().unwrap_or_default())
        .filter_map(|s| s.as_str().map(str::to_owned))
        .collect()
}

#[test]
fn a_candidate_replayed_over_the_fleet_names_exactly_the_flipped_samples_reproducibly()
-> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let agg = Aggregator::start(&tmp.path().join("agg"), None)?;
    publish_raw(&agg, tmp.path(), "acme")?;
    publish_raw(&agg, tmp.path(), "globex")?;
    let mut agents = Vec::new();
    for n in 1..=3 {
        let mut agent = Agent::enroll(
            &agg,
            &tmp.path().join(format!("a{n}")),
            "acme",
            "web",
            "prod",
            &format!("agent-{n}"),
        )?;
        agent.start()?;
        agents.push(agent);
    }
    let mut intruder = Agent::enroll(
        &agg,
        &tmp.path().join("x"),
        "globex",
        "web",
        "prod",
        "intruder-1",
    )?;
    intruder.start()?;
    for agent in agents.iter().chain([&intruder]) {
        agent.wait_active_epoch(1, "raw bundle active")?;
    }

    // 10 decisions per acme agent over 5 tools: the first five intents are the same on every agent (so the
    // corpus deduplicates them), the last five are the agent's own.
    let mut flipped = BTreeSet::new();
    for agent in &agents {
        for n in 0..10 {
            let tool = TOOLS[n % 5];
            let path = if n < 5 {
                format!("/srv/shared/{n}")
            } else {
                format!("/srv/{}/{n}", agent.id)
            };
            let sample = decide(agent, tool, &path)?;
            if tool == "tool.delete" {
                flipped.insert(sample);
            }
        }
    }
    for (n, tool) in TOOLS.iter().enumerate() {
        decide(&intruder, tool, &format!("/srv/intruder/{n}"))?;
    }
    wait_for(PATIENCE, "30 acme and 5 globex decisions indexed", || {
        (indexed(&agg, "acme").ok()? == 30 && indexed(&agg, "globex").ok()? == 5).then_some(())
    })?;

    let baseline = tmp.path().join("baseline.yaml");
    let candidate = tmp.path().join("candidate.yaml");
    std::fs::write(&baseline, BASELINE)?;
    std::fs::write(&candidate, CANDIDATE)?;
    let (b, c) = (
        baseline.to_str().context("path")?,
        candidate.to_str().context("path")?,
    );
    let first = tmp.path().join("first.json");
    let out = replay(
        Some(&agg),
        &[
            "--org",
            "acme",
            "--candidate",
            c,
            "--baseline",
            b,
            "--out",
            first.to_str().context("path")?,
        ],
    )?;
    ensure!(
        out.status.code() == Some(5),
        "exit {:?}: {}",
        out.status,
        stderr(&out)
    );
    let summary = String::from_utf8_lossy(&out.stdout);
    ensure!(summary.contains("verdict flips 6"), "{summary}");
    let first_bytes = std::fs::read(&first)?;
    let report: Value = serde_json::from_slice(&first_bytes)?;

    // Every flipped sample of tool.delete (3 agents x 2 intents, one intent shared) and nothing else.
    ensure!(
        samples(&report) == flipped,
        "{report}\nexpected {flipped:?}"
    );
    ensure!(
        report["flips_total"] == 6 && report["changed_total"] == 6,
        "{report}"
    );
    let changed = report["changed"].as_array().context("changed")?;
    ensure!(changed.len() == 4, "{report}");
    ensure!(
        changed.iter().all(|c| c["tool"] == "tool.delete"
            && c["verdict_flip"] == true
            && c["baseline"]["verdict"] == "allow"
            && c["candidate"]["verdict"] == "block"
            && c["candidate"]["matched_rule"] == "no-delete"),
        "{report}"
    );
    ensure!(
        changed.iter().filter(|c| c["count"] == 3).count() == 1,
        "the shared delete intent counts its three samples: {report}"
    );
    ensure!(
        report["corpus"]["samples"] == 30 && report["corpus"]["distinct_intents"] == 20,
        "only acme's decisions, deduplicated: {report}"
    );
    ensure!(
        report["by_tool"] == json!({"tool.delete": {"changed": 6, "flips": 6}}),
        "{report}"
    );
    ensure!(report["recommendation"] == "require_approval", "{report}");
    ensure!(
        !String::from_utf8_lossy(&first_bytes).contains("intruder"),
        "{report}"
    );

    // The report verifies with the server's replay key, and any edit breaks it.
    let (status, key) = agg.get("/v1/orgs/acme/replay/key")?;
    ensure!(status == 200, "{status} {key}");
    let public = gait_canon::sign::PublicKey::from_gait_public_key(
        key["public_key"].as_str().context("public_key")?,
    )?;
    gait_replay::verify_report(&first_bytes, &public)?;
    let edited =
        String::from_utf8_lossy(&first_bytes).replace("\"flips_total\":6", "\"flips_total\":0");
    ensure!(gait_replay::verify_report(edited.as_bytes(), &public).is_err());

    // More decisions arrive; a rerun pinned at the echoed until_id is byte-identical, an unpinned one is not.
    let until = report["corpus"]["until_id"].as_u64().context("until_id")?;
    decide(&agents[0], "tool.delete", "/srv/late")?;
    wait_for(PATIENCE, "the late decision indexed", || {
        (indexed(&agg, "acme").ok()? == 31).then_some(())
    })?;
    let second = tmp.path().join("second.json");
    let out = replay(
        Some(&agg),
        &[
            "--org",
            "acme",
            "--candidate",
            c,
            "--baseline",
            b,
            "--until-id",
            &until.to_string(),
            "--out",
            second.to_str().context("path")?,
        ],
    )?;
    ensure!(out.status.code() == Some(5), "{}", stderr(&out));
    ensure!(
        std::fs::read(&second)? == first_bytes,
        "pinned rerun differs"
    );
    let out = replay(
        Some(&agg),
        &["--org", "acme", "--candidate", c, "--baseline", b, "--json"],
    )?;
    let unpinned: Value = serde_json::from_slice(&out.stdout)?;
    ensure!(unpinned["flips_total"] == 7, "{unpinned}");

    // Offline: the exported corpus at the same pin, signed with the same key, gives the same bytes.
    let corpus = get_bytes(
        &agg,
        &format!("/v1/orgs/acme/replay/corpus?until_id={until}"),
    )?;
    ensure!(!String::from_utf8_lossy(&corpus).contains("intruder"));
    let corpus_file = tmp.path().join("corpus.jsonl");
    std::fs::write(&corpus_file, &corpus)?;
    let offline_out = tmp.path().join("offline.json");
    let key_file = agg.data_dir.join("keys/replay.key");
    let out = replay(
        None,
        &[
            "--offline",
            "--corpus",
            corpus_file.to_str().context("path")?,
            "--candidate",
            c,
            "--baseline",
            b,
            "--signing-key",
            key_file.to_str().context("path")?,
            "--out",
            offline_out.to_str().context("path")?,
        ],
    )?;
    ensure!(out.status.code() == Some(5), "{}", stderr(&out));
    ensure!(
        std::fs::read(&offline_out)? == first_bytes,
        "offline report differs"
    );

    // Nothing changes: exit 0. A broken candidate: exit 65 naming the field.
    let out = replay(
        Some(&agg),
        &["--org", "acme", "--candidate", b, "--baseline", b],
    )?;
    ensure!(out.status.code() == Some(0), "{}", stderr(&out));
    let broken = tmp.path().join("broken.yaml");
    std::fs::write(&broken, "default_verdict: maybe\n")?;
    let out = replay(
        Some(&agg),
        &[
            "--org",
            "acme",
            "--candidate",
            broken.to_str().context("path")?,
            "--baseline",
            b,
        ],
    )?;
    ensure!(
        out.status.code() == Some(65) && stderr(&out).contains("candidate"),
        "{:?}: {}",
        out.status,
        stderr(&out)
    );

    // The CLI verifies what the server answers: with the pinned replay.pub it passes, with another key it is
    // refused with 65 (a proxy or a wrong --server cannot pass a gate).
    let pinned = agg.data_dir.join("keys/replay.pub");
    let stranger = tmp.path().join("stranger.pub");
    gait_canon::sign::write_key_pair(
        &tmp.path().join("stranger.key"),
        &stranger,
        &gait_canon::sign::SigningKey::generate(),
    )?;
    for (key, code) in [(&pinned, 5), (&stranger, 65)] {
        let out = replay(
            Some(&agg),
            &[
                "--org",
                "acme",
                "--candidate",
                c,
                "--baseline",
                b,
                "--replay-pub",
                key.to_str().context("path")?,
            ],
        )?;
        ensure!(
            out.status.code() == Some(code),
            "{}: {:?}: {}",
            key.display(),
            out.status,
            stderr(&out)
        );
    }

    // Each run is audited with the report's digest.
    let runs: Vec<Value> = agg
        .audit_actions()?
        .into_iter()
        .filter(|(a, _)| a == "replay.run")
        .map(|(_, e)| e)
        .collect();
    ensure!(runs.len() == 6, "{runs:?}");
    let digest = gait_canon::sha256_hex(&first_bytes);
    ensure!(
        runs[0]["details"]["report_sha256"] == digest.as_str(),
        "{runs:?}"
    );
    // The corpus export (raw intents leaving the server) is audited with the exported bytes' digest.
    let exports: Vec<Value> = agg
        .audit_actions()?
        .into_iter()
        .filter(|(a, _)| a == "replay.corpus_export")
        .map(|(_, e)| e)
        .collect();
    ensure!(exports.len() == 1, "{exports:?}");
    ensure!(
        exports[0]["details"]["corpus_sha256"] == gait_canon::sha256_hex(&corpus).as_str(),
        "{exports:?}"
    );
    Ok(())
}

/// `gait-agent policy test POLICY INTENT --json`.
fn policy_test(policy: &Path, intent: &Path) -> anyhow::Result<Value> {
    let out = hermetic("gait-agent")
        .args(["policy", "test"])
        .arg(policy)
        .arg(intent)
        .arg("--json")
        .output()?;
    serde_json::from_slice(&out.stdout).with_context(|| stderr(&out))
}

#[test]
fn on_gaits_example_fixtures_the_changed_set_is_gaits_simulate_rule() -> anyhow::Result<()> {
    let dir = fixtures_dir();
    let expected: Value =
        serde_json::from_slice(&std::fs::read(dir.join("simulate_expected.json"))?)?;
    let baseline = dir.join(expected["baseline"].as_str().context("baseline")?);
    let candidate = dir.join(expected["candidate"].as_str().context("candidate")?);
    let intents = dir.join("gait/intents");

    // Gait's rule per fixture, from the conformance-checked `policy test`.
    let mut changed = BTreeSet::new();
    let mut flips = BTreeSet::new();
    let mut names: Vec<PathBuf> = std::fs::read_dir(&intents)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    names.sort();
    for intent in &names {
        let (b, c) = (
            policy_test(&baseline, intent)?,
            policy_test(&candidate, intent)?,
        );
        let name = intent
            .file_name()
            .context("name")?
            .to_string_lossy()
            .into_owned();
        let differs = |k: &str| b.get(k) != c.get(k);
        if ["verdict", "reason_codes", "violations", "matched_rule"]
            .iter()
            .any(|k| differs(k))
        {
            changed.insert(name.clone());
        }
        if differs("verdict") {
            flips.insert(name);
        }
    }
    let listed = |k: &str| -> BTreeSet<String> {
        expected[k]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    };
    ensure!(
        changed == listed("changed") && flips == listed("flips"),
        "{changed:?} {flips:?}"
    );

    // The offline replay over an empty corpus with these fixtures reports exactly that set.
    let tmp = tempfile::tempdir()?;
    let corpus = tmp.path().join("empty.jsonl");
    std::fs::write(
        &corpus,
        "{\"org\":\"acme\",\"samples\":0,\"schema_id\":\"gait.fleet.replay_corpus\",\"schema_version\":\"1.0.0\",\"until_id\":0}\n",
    )?;
    let key = tmp.path().join("ci.key");
    gait_canon::sign::write_key_pair(
        &key,
        &tmp.path().join("ci.pub"),
        &gait_canon::sign::SigningKey::generate(),
    )?;
    // `replay --offline` over the exported corpus with the CI key, plus `extra`.
    let offline = |extra: &[&str]| -> anyhow::Result<Output> {
        let mut args = vec![
            "--offline",
            "--corpus",
            corpus.to_str().context("path")?,
            "--candidate",
            candidate.to_str().context("path")?,
            "--baseline",
            baseline.to_str().context("path")?,
            "--signing-key",
            key.to_str().context("path")?,
        ];
        args.extend_from_slice(extra);
        replay(None, &args)
    };
    let out = offline(&["--fixtures", intents.to_str().context("path")?, "--json"])?;
    ensure!(
        out.status.code() == Some(5),
        "{:?}: {}",
        out.status,
        stderr(&out)
    );
    let report: Value = serde_json::from_slice(&out.stdout)?;
    let named = |flip_only: bool| -> BTreeSet<String> {
        report["changed"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| !flip_only || c["verdict_flip"] == true)
            .filter_map(|c| c["fixture_path"].as_str())
            .filter_map(|p| {
                Path::new(p)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
            })
            .collect()
    };
    ensure!(named(false) == changed && named(true) == flips, "{report}");
    ensure!(report["fixtures_total"] == names.len() as u64, "{report}");

    // Nothing to check (empty corpus, no fixtures): a CI gate fails with 6 and says why, unless told otherwise.
    let out = offline(&[])?;
    ensure!(
        out.status.code() == Some(6)
            && stderr(&out).contains("warning: the corpus")
            && stderr(&out).contains("--require-samples"),
        "{:?}: {}",
        out.status,
        stderr(&out)
    );
    let out = offline(&["--require-samples", "0"])?;
    ensure!(
        out.status.code() == Some(0) && stderr(&out).contains("warning: the corpus"),
        "{:?}: {}",
        out.status,
        stderr(&out)
    );
    // A report that does not verify with the pinned key is refused with 65.
    let other = tmp.path().join("other.pub");
    gait_canon::sign::write_key_pair(
        &tmp.path().join("other.key"),
        &other,
        &gait_canon::sign::SigningKey::generate(),
    )?;
    let out = offline(&[
        "--require-samples",
        "0",
        "--replay-pub",
        other.to_str().context("path")?,
    ])?;
    ensure!(
        out.status.code() == Some(65) && stderr(&out).contains("does not verify"),
        "{:?}: {}",
        out.status,
        stderr(&out)
    );
    Ok(())
}
