//! End to end: a CI job pushes Gait's conformance artifacts with `gait-agent push` (with no daemon, and
//! through a running one), they are committed by a real aggregator with the §7 projection, pushing them again
//! sends nothing, a tampered runpack is refused with exit 65 and never sent; a watched directory imports a file
//! written in two halves once, and not again after a restart.
#![allow(clippy::disallowed_methods)]

use std::io::{Cursor, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::Output;

use anyhow::{Context as _, ensure};
use gait_e2e::{Agent, Aggregator, PATIENCE, hermetic, output_text as text, wait_for};
use serde_json::Value;

fn conformance(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/conformance/artifacts")
        .join(name)
}

fn push(agent: &Agent, args: &[&str], paths: &[&Path]) -> anyhow::Result<Output> {
    let mut cmd = hermetic("gait-agent");
    cmd.current_dir(&agent.dir)
        .arg("push")
        .arg("--config")
        .arg(agent.dir.join("agent.yaml"))
        .args(args);
    for path in paths {
        cmd.arg(path);
    }
    Ok(cmd.output()?)
}

/// The artifact records the aggregator committed for `agent`.
fn artifact_records(agg: &Aggregator, agent: &Agent) -> anyhow::Result<Vec<Value>> {
    Ok(agg
        .records(&agent.org, &agent.project, &agent.env, &agent.id)?
        .into_iter()
        .filter(|r| {
            r["kind"]
                .as_str()
                .is_some_and(|k| k.starts_with("artifact."))
        })
        .collect())
}

fn add_capture(agent: &Agent, yaml: &str) -> anyhow::Result<()> {
    let config = agent.dir.join("agent.yaml");
    let mut text = std::fs::read_to_string(&config)?;
    text.push_str(yaml);
    std::fs::write(&config, text)?;
    Ok(())
}

/// The conformance runpack with one byte of `intents.jsonl` changed (the manifest untouched).
fn tampered_runpack() -> anyhow::Result<Vec<u8>> {
    let bytes = std::fs::read(conformance("runpack_run_demo.zip"))?;
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes))?;
    let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for i in 0..archive.len() {
        let mut file = archive.by_index(i)?;
        let name = file.name()?.to_string();
        let mut data = Vec::new();
        file.read_to_end(&mut data)?;
        if name == "intents.jsonl" {
            let at = data
                .iter()
                .position(u8::is_ascii_digit)
                .context("a digit")?;
            data[at] = if data[at] == b'9' { b'8' } else { data[at] + 1 };
        }
        writer.start_file(name, options)?;
        writer.write_all(&data)?;
    }
    Ok(writer.finish()?.into_inner())
}

#[test]
fn pushed_conformance_artifacts_are_committed_once_and_a_tampered_runpack_is_refused()
-> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let agg = Aggregator::start(&tmp.path().join("agg"), None)?;
    let mut agent = Agent::enroll(&agg, &tmp.path().join("ci"), "acme", "web", "prod", "ci1")?;
    std::fs::copy(
        conformance("gait_public.key"),
        agent.dir.join("gait_public.key"),
    )?;
    add_capture(&agent, "capture:\n  trace_public_keys: [gait_public.key]\n")?;

    // A CI output directory: the four artifacts, plus files a directory walk must skip.
    let out_dir = agent.dir.join("gait-out");
    std::fs::create_dir_all(out_dir.join("traces"))?;
    for (name, to) in [
        ("runpack_run_demo.zip", "runpack_run_demo.zip"),
        ("trace_endpoint_allow.json", "traces/trace_allow.json"),
        ("trace_endpoint_block.json", "traces/trace_block.json"),
        ("regress_result.json", "regress_result.json"),
        ("junit.xml", "junit.xml"),
        ("verify_run_demo.stdout.json", "verify.json"),
    ] {
        std::fs::copy(conformance(name), out_dir.join(to))?;
    }
    std::fs::write(out_dir.join("notes.txt"), "not an artifact")?;

    // No daemon runs: the command enqueues in the database and runs the uplink until the aggregator committed.
    let out = push(&agent, &["--json"], &[&out_dir])?;
    ensure!(out.status.success(), "push: {}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).context("push --json")?;
    ensure!(
        report["committed"] == true && report["via"] == "database",
        "{report}"
    );
    let files = report["files"].as_array().context("files")?;
    let status_of = |suffix: &str| {
        files
            .iter()
            .find(|f| f["file"].as_str().is_some_and(|n| n.ends_with(suffix)))
            .map(|f| f["status"].as_str().unwrap_or("").to_owned())
    };
    for name in [
        "runpack_run_demo.zip",
        "trace_allow.json",
        "trace_block.json",
        "regress_result.json",
        "junit.xml",
    ] {
        ensure!(
            status_of(name).as_deref() == Some("enqueued"),
            "{name}: {report}"
        );
    }
    ensure!(
        status_of("verify.json").as_deref() == Some("not_artifact"),
        "{report}"
    );
    ensure!(
        status_of("notes.txt").as_deref() == Some("skipped"),
        "{report}"
    );

    // Committed: every record is at the aggregator when push returns, with the projection.
    let records = artifact_records(&agg, &agent)?;
    ensure!(records.len() == 5, "{records:#?}");
    let by_kind =
        |kind: &str| -> Vec<&Value> { records.iter().filter(|r| r["kind"] == kind).collect() };
    let runpack = by_kind("artifact.runpack");
    ensure!(runpack.len() == 1, "{records:#?}");
    let p = &runpack[0]["payload"];
    ensure!(p["runpack"]["run_id"] == "run_demo", "{p}");
    ensure!(p["run_ids"] == serde_json::json!(["run_demo"]), "{p}");
    ensure!(runpack[0]["class"] == "artifact_digest", "{:?}", runpack[0]);
    // Its tool calls, by digests, as Gait recorded them.
    let tools: Vec<&str> = p["calls"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["tool_name"].as_str())
        .collect();
    ensure!(
        tools == ["tool.search", "tool.fetch", "tool.summarize"],
        "{p}"
    );
    // Posture coverage reads them: three tools called, none through a gate yet.
    let out = agg
        .operator_command(&["posture", "--org", &agent.org, "--json"])
        .output()?;
    ensure!(out.status.success(), "posture: {}", text(&out));
    let posture: Value = serde_json::from_slice(&out.stdout)?;
    let coverage = &posture["coverage"];
    ensure!(
        coverage["tools_seen"] == 3 && coverage["tools_gated"] == 0,
        "{coverage}"
    );
    // Drift needs two runpacks of the run (or a baseline run): with one, the CLI says so.
    let out = agg
        .operator_command(&[
            "drift",
            "--org",
            &agent.org,
            "--project",
            &agent.project,
            "--env",
            &agent.env,
            "--run",
            "run_demo",
        ])
        .output()?;
    ensure!(
        out.status.code() == Some(65) && text(&out).contains("name a baseline run"),
        "drift: {:?} {}",
        out.status.code(),
        text(&out)
    );
    let traces = by_kind("artifact.trace");
    ensure!(traces.len() == 2, "{records:#?}");
    ensure!(
        traces
            .iter()
            .all(|t| t["payload"]["signature_status"] == "verified"),
        "{traces:?}"
    );
    let regress = by_kind("artifact.regress_result");
    ensure!(
        regress.len() == 1 && regress[0]["payload"]["regress"]["regress_status"] == "pass",
        "{regress:?}"
    );
    ensure!(by_kind("artifact.junit").len() == 1);

    // Again: nothing new is sent, and the command still waits for (already committed) seqs.
    let out = push(&agent, &["--json"], &[&out_dir])?;
    ensure!(out.status.success(), "second push: {}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout)?;
    ensure!(
        report["files"]
            .as_array()
            .context("files")?
            .iter()
            .filter(|f| f["status"] == "duplicate")
            .count()
            == 5,
        "{report}"
    );
    ensure!(artifact_records(&agg, &agent)?.len() == 5);

    // Through a running daemon: a tampered runpack is refused (65, naming the entry), a trace with an
    // `enterprise_extension` is a new file whose projection is the plain one's.
    agent.start()?;
    let tampered = agent.dir.join("tampered.zip");
    std::fs::write(&tampered, tampered_runpack()?)?;
    let mut trace: Value =
        serde_json::from_slice(&std::fs::read(conformance("trace_endpoint_allow.json"))?)?;
    trace["enterprise_extension"] = serde_json::json!({"ticket": "CI-1"});
    let extended = agent.dir.join("extended_trace.json");
    std::fs::write(&extended, serde_json::to_vec_pretty(&trace)?)?;
    let out = push(&agent, &["--json"], &[&tampered, &extended])?;
    ensure!(
        out.status.code() == Some(65),
        "tampered push: {}",
        text(&out)
    );
    let report: Value = serde_json::from_slice(&out.stdout)?;
    ensure!(
        report["via"] == "daemon" && report["committed"] == true,
        "{report}"
    );
    let first = &report["files"][0];
    ensure!(first["status"] == "invalid", "{report}");
    let reason = first["reason"].as_str().unwrap_or("");
    ensure!(reason.contains("intents.jsonl"), "{reason}");
    ensure!(report["files"][1]["status"] == "enqueued", "{report}");
    let records = artifact_records(&agg, &agent)?;
    ensure!(
        records.len() == 6,
        "only the extended trace was added: {records:#?}"
    );
    ensure!(
        !records
            .iter()
            .any(|r| r["payload"]["file_name"] == "tampered.zip"),
        "the tampered runpack reached the aggregator"
    );
    let extended_record = records
        .iter()
        .find(|r| r["payload"]["file_name"] == "extended_trace.json")
        .context("extended trace record")?;
    let plain = records
        .iter()
        .find(|r| r["payload"]["file_name"] == "trace_allow.json")
        .context("plain trace record")?;
    ensure!(
        extended_record["payload"]["trace"] == plain["payload"]["trace"],
        "{extended_record} vs {plain}"
    );
    // The human output names the reason on stderr.
    let out = push(&agent, &[], &[&tampered])?;
    ensure!(out.status.code() == Some(65), "{}", text(&out));
    ensure!(
        String::from_utf8_lossy(&out.stderr).contains("runpack tampered: intents.jsonl"),
        "{}",
        text(&out)
    );
    agent.stop();
    Ok(())
}

#[test]
fn push_to_an_unreachable_aggregator_exits_69_and_leaves_the_records_queued() -> anyhow::Result<()>
{
    let tmp = tempfile::tempdir()?;
    let agg = Aggregator::start(&tmp.path().join("agg"), None)?;
    let agent = Agent::enroll(&agg, &tmp.path().join("ci"), "acme", "web", "prod", "ci2")?;
    let config = agent.dir.join("agent.yaml");
    let yaml = std::fs::read_to_string(&config)?.replace(&agg.quic.to_string(), "127.0.0.1:9");
    std::fs::write(&config, yaml)?;
    let regress = conformance("regress_result.json");
    let out = push(&agent, &["--timeout", "3s"], &[&regress])?;
    ensure!(out.status.code() == Some(69), "{}", text(&out));
    ensure!(
        String::from_utf8_lossy(&out.stderr).contains("stay queued"),
        "{}",
        text(&out)
    );
    // --no-wait: enqueued (here: already, so a duplicate) and exit 0 at once.
    let out = push(&agent, &["--no-wait", "--json"], &[&regress])?;
    ensure!(out.status.success(), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout)?;
    ensure!(report["files"][0]["status"] == "duplicate", "{report}");
    ensure!(report["committed"] == false, "{report}");
    Ok(())
}

#[test]
fn a_watched_directory_imports_a_file_written_in_two_halves_once_and_not_again_after_restart()
-> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let agg = Aggregator::start(&tmp.path().join("agg"), None)?;
    let mut agent = Agent::enroll(&agg, &tmp.path().join("w"), "acme", "web", "prod", "w1")?;
    let watched = agent.dir.join("gait-out");
    std::fs::create_dir_all(&watched)?;
    add_capture(
        &agent,
        "capture:\n  watch: [gait-out]\n  poll_interval_ms: 100\n",
    )?;
    agent.start()?;
    agent.wait_connected("agent connected")?;

    // The first half, then a pause long enough for the watcher to see it stable: it is reported invalid once,
    // never enqueued, and not reported again by the scans that follow (a sentinel imported meanwhile proves
    // they happened).
    let invalid = "invalid gait artifact in a watched directory";
    let again = "watched artifact already enqueued";
    let full = std::fs::read(conformance("regress_result.json"))?;
    let target = watched.join("regress_result.json");
    let mut file = std::fs::File::create(&target)?;
    file.write_all(&full[..full.len() / 2])?;
    file.flush()?;
    wait_for(PATIENCE, "the half-written file reported", || {
        agent.log().contains(invalid).then_some(())
    })?;
    std::fs::copy(conformance("junit.xml"), watched.join("junit.xml"))?;
    wait_for(PATIENCE, "the first sentinel committed", || {
        artifact_records(&agg, &agent).ok().filter(|r| r.len() == 1)
    })?;
    ensure!(
        artifact_records(&agg, &agent)?[0]["kind"] == "artifact.junit",
        "the half-written file was sent"
    );
    ensure!(
        agent.log().matches(invalid).count() == 1,
        "reported more than once:\n{}",
        agent.log()
    );

    // The rest of the file: imported once.
    file.write_all(&full[full.len() / 2..])?;
    file.flush()?;
    drop(file);
    let records = wait_for(PATIENCE, "the complete file committed", || {
        artifact_records(&agg, &agent).ok().filter(|r| r.len() == 2)
    })?;
    let regress: Vec<&Value> = records
        .iter()
        .filter(|r| r["kind"] == "artifact.regress_result")
        .collect();
    ensure!(regress.len() == 1, "{records:#?}");
    ensure!(
        regress[0]["payload"]["source"] == "watch",
        "{:?}",
        regress[0]
    );
    ensure!(
        regress[0]["payload"]["sha256"] == gait_canon::sha256_hex(&full),
        "the whole file, not a half: {:?}",
        regress[0]
    );

    // Handled files are not read again while the agent runs: another sentinel lands, and no scan found a
    // file it had already enqueued.
    std::fs::copy(
        conformance("trace_endpoint_allow.json"),
        watched.join("trace_allow.json"),
    )?;
    wait_for(PATIENCE, "the second sentinel committed", || {
        artifact_records(&agg, &agent).ok().filter(|r| r.len() == 3)
    })?;
    ensure!(
        !agent.log().contains(again),
        "a handled file was imported again:\n{}",
        agent.log()
    );

    // After a restart every file is read once more, and nothing is enqueued again.
    agent.stop();
    agent.start()?;
    std::fs::copy(
        conformance("trace_endpoint_block.json"),
        watched.join("trace_block.json"),
    )?;
    wait_for(PATIENCE, "the post-restart sentinel committed", || {
        artifact_records(&agg, &agent).ok().filter(|r| r.len() == 4)
    })?;
    let records = artifact_records(&agg, &agent)?;
    ensure!(
        records
            .iter()
            .filter(|r| r["kind"] == "artifact.regress_result")
            .count()
            == 1,
        "{records:#?}"
    );
    ensure!(
        agent.log().matches(again).count() == 3,
        "each of the three files seen before the restart is found enqueued exactly once:\n{}",
        agent.log()
    );
    agent.stop();
    Ok(())
}
