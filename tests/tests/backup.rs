//! End to end, real processes: the restore drill. An aggregator serves an agent that keeps appending records;
//! `gait-aggregator backup` copies the live data directory while that ingest goes on; the aggregator is stopped;
//! `gait-aggregator restore` puts the copy into a fresh data directory ("a fresh machine"); an aggregator
//! started there on the same address serves the agent again.
//!
//! What must hold: the copy is consistent (each agent's records are a contiguous prefix of its sequence, the
//! counts restore checks equal the backup's), the audit log verifies offline from an export of the restored
//! aggregator, the agent reconnects by itself and its later records commit after the restored head, nothing
//! is doubled, and what was committed after the backup began (the recovery point) is reported as a gap in the
//! agent's stream, not silently lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use anyhow::{Context as _, ensure};
use gait_e2e::{Agent, Aggregator, PATIENCE, hermetic, output_text, wait_for};
use serde_json::{Value, json};

const BASELINE: &str = include_str!("../../examples/policies/fleet-baseline.yaml");

fn seqs(records: &[Value]) -> Vec<u64> {
    records.iter().filter_map(|r| r["seq"].as_u64()).collect()
}

fn copy_tree(from: &std::path::Path, to: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name()))?;
        }
    }
    Ok(())
}

fn run_json(cmd: &mut std::process::Command, what: &str) -> anyhow::Result<Value> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    ensure!(
        out.status.success(),
        "{what} failed:\n{}",
        output_text(&out)
    );
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("{what} printed no JSON:\n{}", output_text(&out)))
}

/// On SQLite, and with `GAIT_TEST_DATABASE_URL` set (as `scripts/test.sh` does) on PostgreSQL, where the
/// database goes through `pg_dump` / `pg_restore` (docs/operations/backup.md) into a second fresh database.
#[test]
fn a_backup_taken_under_ingest_restores_on_a_fresh_machine_and_the_agent_continues()
-> anyhow::Result<()> {
    drill(None).context("sqlite")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let first = rt.block_on(gait_store::testing::postgres_fresh())?;
    let second = rt.block_on(gait_store::testing::postgres_fresh())?;
    if let (Some(first), Some(second)) = (&first, &second) {
        drill(Some((first.url(), second.url()))).context("postgres")?;
    }
    Ok(())
}

/// One drill; `postgres` is the first and the second machine's database.
fn drill(postgres: Option<(&str, &str)>) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let first_dir = tmp.path().join("first-machine");
    let first_url = postgres.map(|(a, _)| a);
    let second_url = postgres.map(|(_, b)| b);
    let mut agg = Aggregator::start(&first_dir, first_url)?;
    let mut agent = Agent::enroll(
        &agg,
        &tmp.path().join("agent"),
        "acme",
        "web",
        "prod",
        "edge-1",
    )?;
    agent.start()?;
    agent.wait_connected("first connect")?;
    // Operator actions for the audit log to hold.
    agg.push_policy("acme", BASELINE, "restore drill: before the backup")?;
    for n in 0..40 {
        agent.append("block", "app.decision", json!({ "n": n }))?;
    }
    let (org, project, env, id) = (
        agent.org.clone(),
        agent.project.clone(),
        agent.env.clone(),
        agent.id.clone(),
    );
    wait_for(PATIENCE, "the first 40 records committed", || {
        (agg.records(&org, &project, &env, &id).ok()?.len() >= 40).then_some(())
    })?;

    // Ingest goes on while the backup is taken.
    let stop = Arc::new(AtomicBool::new(false));
    let appended = Arc::new(AtomicU64::new(40));
    let writer = {
        let (stop, appended) = (stop.clone(), appended.clone());
        let token = agent.api_token()?;
        let api = agent.api;
        std::thread::spawn(move || -> anyhow::Result<()> {
            let mut n = 40u64;
            while !stop.load(Ordering::Relaxed) {
                let (status, v) = gait_e2e::http_json(
                    "POST",
                    &format!("http://{api}/v1/records"),
                    Some(&token),
                    Some(
                        json!({ "class": "block", "kind": "app.decision", "payload": { "n": n } }),
                    ),
                )?;
                ensure!(status == 200 || status == 201, "append {status}: {v}");
                n += 1;
                appended.store(n, Ordering::Relaxed);
            }
            Ok(())
        })
    };
    // Let some of the concurrent ingest land first, so the copy is taken mid-stream.
    wait_for(PATIENCE, "ingest under way", || {
        (appended.load(Ordering::Relaxed) >= 60).then_some(())
    })?;
    let backup_dir = tmp.path().join("backup");
    let dump = tmp.path().join("gait.dump");
    let mut cmd = hermetic("gait-aggregator");
    cmd.arg("backup")
        .arg("--data-dir")
        .arg(&first_dir)
        .arg("--out")
        .arg(&backup_dir)
        .arg("--json");
    if let Some(url) = first_url {
        cmd.arg("--database-url").arg(url);
        // PostgreSQL's own tool, while ingest goes on (docs/operations/backup.md).
        let out = std::process::Command::new("pg_dump")
            .arg("--format=custom")
            .arg("--file")
            .arg(&dump)
            .arg(url)
            .output()?;
        ensure!(out.status.success(), "pg_dump: {}", output_text(&out));
    }
    let backup = run_json(&mut cmd, "gait-aggregator backup")?;
    // Ingest goes on after the copy too: those records are past the recovery point.
    let at_backup = appended.load(Ordering::Relaxed);
    wait_for(PATIENCE, "ingest past the backup", || {
        (appended.load(Ordering::Relaxed) >= at_backup + 20).then_some(())
    })?;
    stop.store(true, Ordering::Relaxed);
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("writer panicked"))??;
    let total = appended.load(Ordering::Relaxed) as usize;
    wait_for(PATIENCE, "every appended record committed", || {
        (agg.records(&org, &project, &env, &id).ok()?.len() >= total).then_some(())
    })?;
    let committed_before = agg.all_records(&org, &project, &env, &id)?;
    let head_before = *seqs(&committed_before).last().context("no records")?;
    if postgres.is_none() {
        let records = backup["counts"]["records"].as_u64();
        ensure!(
            backup["backend"] == "sqlite" && records.is_some(),
            "a SQLite backup without counts: {backup}"
        );
        ensure!(
            backup["counts"]["audit_entries"].as_u64() >= Some(1),
            "the audit log of the backup is empty: {backup}"
        );
    } else {
        ensure!(
            backup["backend"] == "postgres" && backup["counts"].is_null(),
            "a PostgreSQL backup should hold the files only: {backup}"
        );
    }
    let quic = agg.quic;
    let http = agg.http;
    agent.stop();
    agg.stop();

    // A fresh machine: an empty data directory, the backup restored into it.
    let second_dir = tmp.path().join("second-machine");
    let mut cmd = hermetic("gait-aggregator");
    cmd.arg("restore")
        .arg("--from")
        .arg(&backup_dir)
        .arg("--data-dir")
        .arg(&second_dir)
        .arg("--json");
    if let Some(url) = second_url {
        cmd.arg("--database-url").arg(url);
        let out = std::process::Command::new("pg_restore")
            .args([
                "--clean",
                "--if-exists",
                "--no-owner",
                "--exit-on-error",
                "--dbname",
            ])
            .arg(url)
            .arg(&dump)
            .output()?;
        ensure!(out.status.success(), "pg_restore: {}", output_text(&out));
    }
    let restored = run_json(&mut cmd, "gait-aggregator restore")?;
    ensure!(
        restored["counts"] == backup["counts"],
        "restore found {restored}, the backup recorded {backup}"
    );
    // Restoring over a live database (or a data directory holding files) is refused, with what to do.
    let again = hermetic("gait-aggregator")
        .arg("restore")
        .arg("--from")
        .arg(&backup_dir)
        .arg("--data-dir")
        .arg(&second_dir)
        .output()?;
    ensure!(
        !again.status.success() && output_text(&again).contains("fresh data directory"),
        "a restore over an existing database was not refused: {}",
        output_text(&again)
    );

    // A damaged backup is refused before anything is written.
    let damaged = tmp.path().join("backup-damaged");
    copy_tree(&backup_dir, &damaged)?;
    let token = damaged.join("admin.token");
    let mut bytes = std::fs::read(&token)?;
    bytes[0] ^= 1;
    std::fs::write(&token, bytes)?;
    let third_dir = tmp.path().join("third-machine");
    let out = hermetic("gait-aggregator")
        .arg("restore")
        .arg("--from")
        .arg(&damaged)
        .arg("--data-dir")
        .arg(&third_dir)
        .output()?;
    ensure!(
        !out.status.success() && output_text(&out).contains("damaged") && !third_dir.exists(),
        "a damaged backup was not refused before writing: {}",
        output_text(&out)
    );

    let mut agg = Aggregator::start_on(&second_dir, second_url, quic, http)?;
    let restored_records = agg.all_records(&org, &project, &env, &id)?;
    let restored_seqs = seqs(&restored_records);
    let backed_up = restored_seqs.len() as u64;
    ensure!(
        (41..head_before).contains(&backed_up),
        "the backup should hold a prefix taken mid-stream: {backed_up} records (head before the stop: \
         {head_before}); {backup}"
    );
    if postgres.is_none() {
        ensure!(
            backup["counts"]["records"].as_u64() == Some(backed_up),
            "the restored aggregator serves {backed_up} records, the backup counted {backup}"
        );
    }
    let expected: Vec<u64> = (1..=backed_up).collect();
    ensure!(
        restored_seqs == expected,
        "the restored records are not the contiguous prefix 1..={backed_up}: {:?}",
        restored_seqs
    );
    // Every restored record is the one committed before, byte for byte in what the API shows.
    for (was, now) in committed_before.iter().zip(&restored_records) {
        ensure!(
            was == now,
            "record changed by the round trip: {was} vs {now}"
        );
    }

    // The audit log of the restored aggregator verifies offline.
    let export = tmp.path().join("audit-export");
    let mut cmd = hermetic("gait-aggregator");
    cmd.args(["audit", "export", "--json", "--out"])
        .arg(&export)
        .arg("--data-dir")
        .arg(&second_dir);
    if let Some(url) = second_url {
        cmd.arg("--database-url").arg(url);
    }
    let out = cmd.output()?;
    ensure!(out.status.success(), "audit export: {}", output_text(&out));
    let out = hermetic("gait-aggregator")
        .args(["audit", "verify"])
        .arg(&export)
        .arg("--public-key")
        .arg(second_dir.join("keys").join("audit.vkey"))
        .output()?;
    ensure!(
        out.status.success(),
        "audit verify of the restored log: {}",
        output_text(&out)
    );

    // The agent comes back by itself and continues its sequence after the restored head.
    agent.start()?;
    agent.wait_connected("reconnect to the restored aggregator")?;
    for n in 0..10 {
        agent.append("block", "app.decision", json!({ "after_restore": n }))?;
    }
    let after = wait_for(PATIENCE, "records after the restore committed", || {
        let all = agg.all_records(&org, &project, &env, &id).ok()?;
        (all.iter()
            .filter(|r| r["payload"].get("after_restore").is_some())
            .count()
            >= 10)
            .then_some(all)
    })?;
    let after_seqs = seqs(&after);
    let mut dedup = after_seqs.clone();
    dedup.dedup();
    ensure!(dedup == after_seqs, "a seq is doubled: {after_seqs:?}");
    ensure!(
        after_seqs
            .iter()
            .all(|s| *s <= backed_up || *s > head_before),
        "a seq between the recovery point and the old head was committed twice over: {after_seqs:?}"
    );
    // The records past the recovery point are a recorded gap, not a silent hole.
    let (status, gaps) = agg.get(&format!(
        "/v1/orgs/{org}/projects/{project}/envs/{env}/agents/{id}/gaps"
    ))?;
    ensure!(status == 200, "gaps: {status} {gaps}");
    let text = gaps.to_string();
    eprintln!(
        "backup {backup}; restored {restored}; head before the stop {head_before}; gaps after the restore {gaps}"
    );
    ensure!(
        text.contains(&(backed_up + 1).to_string()),
        "the records lost past the recovery point ({}..={head_before}) are not a recorded gap: {gaps}",
        backed_up + 1
    );
    agent.stop();
    agg.stop();
    Ok(())
}
