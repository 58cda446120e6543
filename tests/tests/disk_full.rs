//! End to end: the agent's storage fills up during a run and empties again. A real agent decides with its data
//! directory on a small tmpfs (8 MiB); while its aggregator is away (so its outbox grows) a ballast file fills
//! the filesystem until decisions fail. Then: decisions answer 503 `storage_failing` (not 500), `/healthz`,
//! `/readyz` and `/metrics` say so; once the ballast is removed decisions resume by themselves (no restart),
//! and every decision that was answered 200 arrives at the aggregator once its back, none twice.
//!
//! Mounting needs root: CI runs the suite as root; elsewhere the test says why it is skipped and passes.
#![allow(clippy::disallowed_methods)] // tests spawn freely and read the clock

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, ensure};
use gait_e2e::{Agent, Aggregator, PATIENCE, http_json, wait_for};
use serde_json::Value;

const BASELINE: &str = include_str!("../../examples/policies/fleet-baseline.yaml");
const READ_REPORT: &str = include_str!("../../examples/intents/read-report.json");
/// Size of the agent's filesystem in this test.
const TMPFS_SIZE: &str = "size=8m";
/// Most decisions the test makes while waiting for the full disk to refuse one.
const MAX_DECISIONS_UNTIL_FULL: usize = 20_000;

/// A tmpfs mounted for the test; unmounted (lazily if busy) when dropped, whatever the test's outcome.
struct Mount {
    at: PathBuf,
}

impl Mount {
    fn tmpfs(at: &Path) -> anyhow::Result<Mount> {
        std::fs::create_dir_all(at)?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("{TMPFS_SIZE},mode=0700")])
            .arg("tmpfs")
            .arg(at)
            .output()
            .context("run mount")?;
        ensure!(
            out.status.success(),
            "mount -t tmpfs on {}: {}",
            at.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(Mount {
            at: at.to_path_buf(),
        })
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.at)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            let _ = Command::new("umount").arg("-l").arg(&self.at).status();
        }
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// One decision: `Ok((status, answer))` for any HTTP answer.
fn decide(agent: &Agent, token: &str) -> anyhow::Result<(u16, Value)> {
    let body: Value = serde_json::from_str(READ_REPORT)?;
    http_json(
        "POST",
        &format!("http://{}/v1/gate/evaluate", agent.api),
        Some(token),
        Some(body),
    )
}

/// Records a 200 answer's outbox seq in `answered`; fails on an answer that is neither 200 nor the expected
/// storage refusal.
fn note(answered: &mut Vec<u64>, status: u16, answer: &Value) -> anyhow::Result<bool> {
    match status {
        200 => {
            let seq = answer["record_seq"]
                .as_u64()
                .with_context(|| format!("a block decision is never shed: {answer}"))?;
            answered.push(seq);
            Ok(true)
        }
        503 if answer["error"]["code"] == "storage_failing" => Ok(false),
        _ => anyhow::bail!("decision answered {status}: {answer}"),
    }
}

/// Fills the filesystem holding `path` with one file until a write fails (it is full).
fn fill(path: &Path) -> anyhow::Result<u64> {
    let mut file = std::fs::File::create(path)?;
    let chunk = vec![0x5a_u8; 64 * 1024];
    let mut written = 0u64;
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(_) => break,
        }
    }
    // The last partial page: single bytes until the filesystem refuses.
    while file.write(&[0x5a]).is_ok_and(|n| n == 1) {
        written += 1;
    }
    Ok(written)
}

fn metric(agent: &Agent, name: &str) -> anyhow::Result<u64> {
    let (status, body) = http_json("GET", &format!("http://{}/metrics", agent.api), None, None)?;
    ensure!(status == 200, "metrics {status}");
    let text = body.as_str().context("metrics are text")?;
    gait_testkit::metric_series(text, name)
        .map(|v| v as u64)
        .with_context(|| format!("no {name} in:\n{text}"))
}

#[test]
fn agent_storage_heals_after_the_disk_filled_and_no_answered_decision_is_lost() -> anyhow::Result<()>
{
    if !is_root() {
        eprintln!(
            "skipped: mounting the small tmpfs this test fills needs root (CI runs the suite as root)"
        );
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let mut agg = Aggregator::start(&tmp.path().join("agg"), None)?;
    let mut agent = Agent::enroll(
        &agg,
        &tmp.path().join("a1"),
        "acme",
        "payments",
        "prod",
        "a1",
    )?;
    let data = agent.dir.join("data");
    let mount = Mount::tmpfs(&data)?;
    agent.start()?;
    let (status, answer) = agg.publish(
        "acme",
        "payments",
        "prod",
        &[("fleet-baseline.yaml", BASELINE)],
    )?;
    ensure!(status == 200 || status == 201, "publish: {status} {answer}");
    agent.wait_active_epoch(1, "bundle active at the agent")?;
    let token = agent.api_token()?;
    let mut answered = Vec::new();
    for _ in 0..20 {
        let (status, answer) = decide(&agent, &token)?;
        ensure!(
            note(&mut answered, status, &answer)?,
            "healthy decision refused: {answer}"
        );
    }

    // The aggregator goes away, so records stay in the outbox and the database must grow; the ballast takes
    // every free byte. Decisions go on until the full disk refuses one.
    agg.stop();
    let ballast = data.join("ballast");
    let filled = fill(&ballast)?;
    let mut refused = None;
    for _ in 0..MAX_DECISIONS_UNTIL_FULL {
        let (status, answer) = decide(&agent, &token)?;
        if !note(&mut answered, status, &answer)? {
            refused = Some(answer);
            break;
        }
    }
    let refused = refused.with_context(|| {
        format!(
            "{MAX_DECISIONS_UNTIL_FULL} decisions on a full disk ({filled} ballast bytes) were all answered 200\n{}",
            agent.log()
        )
    })?;
    ensure!(
        refused["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "the refusal says why: {refused}"
    );
    let (status, health) = http_json("GET", &format!("http://{}/healthz", agent.api), None, None)?;
    ensure!(
        status == 503 && health["error"]["code"] == "storage_failing",
        "healthz while the disk is full: {status} {health}"
    );
    let (status, ready) = http_json("GET", &format!("http://{}/readyz", agent.api), None, None)?;
    ensure!(
        status == 503 && ready["not_ready"].to_string().contains("storage failing"),
        "readyz while the disk is full: {status} {ready}"
    );
    ensure!(metric(&agent, "gait_agent_storage_failing")? == 1);
    ensure!(metric(&agent, "gait_agent_storage_errors_total")? >= 1);
    // Still full: decisions keep being refused, never answered 500.
    for _ in 0..3 {
        let (status, answer) = decide(&agent, &token)?;
        note(&mut answered, status, &answer)?;
    }

    // Space returns: decisions resume by themselves, without a restart.
    std::fs::remove_file(&ballast)?;
    wait_for(
        PATIENCE,
        "decisions answered again after the ballast was removed",
        || {
            let (status, answer) = decide(&agent, &token).ok()?;
            note(&mut answered, status, &answer).ok()?.then_some(())
        },
    )
    .with_context(|| agent.log())?;
    let (status, _) = http_json("GET", &format!("http://{}/healthz", agent.api), None, None)?;
    ensure!(status == 200, "healthz after healing: {status}");
    ensure!(metric(&agent, "gait_agent_storage_failing")? == 0);
    ensure!(metric(&agent, "gait_agent_storage_reopens_total")? >= 1);
    for _ in 0..20 {
        let (status, answer) = decide(&agent, &token)?;
        ensure!(
            note(&mut answered, status, &answer)?,
            "decision after healing refused: {answer}"
        );
    }

    // The aggregator returns: every answered decision arrives, each once.
    agg.restart()?;
    let want: BTreeSet<u64> = answered.iter().copied().collect();
    ensure!(
        want.len() == answered.len(),
        "the agent gave one seq to two answers: {answered:?}"
    );
    let stored = wait_for(
        PATIENCE,
        "every answered decision at the aggregator",
        || {
            let records = agg.records("acme", "payments", "prod", "a1").ok()?;
            let seqs: Vec<u64> = records
                .iter()
                .filter(|r| r["kind"] == "gate.decision")
                .filter_map(|r| r["seq"].as_u64())
                .collect();
            let have: BTreeSet<u64> = seqs.iter().copied().collect();
            want.is_subset(&have).then_some(seqs)
        },
    )
    .with_context(|| agent.log())?;
    let unique: BTreeSet<u64> = stored.iter().copied().collect();
    ensure!(
        unique.len() == stored.len(),
        "a decision arrived twice: {stored:?}"
    );
    eprintln!(
        "{} decisions answered 200 arrived at the aggregator, each once ({} decision records stored)",
        want.len(),
        stored.len()
    );
    agent.stop();
    drop(mount);
    Ok(())
}
