//! Crash test of the outbox: a child process (this test binary, re-executed) appends and acknowledges
//! records and prints each step once it returned; the test `kill -9`s it at a random moment, reopens the file
//! and checks that everything the child was told is durable is there, contiguous and hash-chained.
//!
//! Seeds are printed; rerun one with `GAIT_CRASH_SEED=<n> cargo test -p gait-agent --test integration outbox_crash::`.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use gait_agent::db::AgentDb;
use gait_agent::outbox::{AppendOutcome, NewRecord, Outbox, OutboxLimits};
use gait_wire::RecordClass;

/// Set in the child: `<mode>\n<db path>\n<seed>`.
const CHILD_ENV: &str = "GAIT_OUTBOX_CRASH_CHILD";
const LIMITS: OutboxLimits = OutboxLimits {
    max_records: 10_000_000,
    max_bytes: 1 << 40,
};
const ROUNDS: usize = 6;

/// Small deterministic generator (xorshift64*), so a failing seed can be replayed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn seed() -> u64 {
    match std::env::var("GAIT_CRASH_SEED") {
        Ok(s) => s
            .parse()
            .unwrap_or_else(|_| panic!("GAIT_CRASH_SEED={s:?} is not a u64")),
        Err(_) => getrandom::u64().unwrap_or(0x5eed),
    }
}

fn record(rng: &mut Rng, len: usize) -> NewRecord {
    NewRecord {
        class: if rng.below(4) == 0 {
            RecordClass::Allow
        } else {
            RecordClass::Block
        },
        kind: "gate.decision".into(),
        created_unix_ms: 1_700_000_000_000 + rng.below(1_000_000) as i64,
        bundle: None,
        payload: vec![b'p'; len],
    }
}

/// What a child does until it is killed. Each line is printed and flushed only after the call returned.
fn child(mode: &str, path: &Path, seed: u64) -> Result<std::convert::Infallible> {
    let mut rng = Rng::new(seed);
    let db = AgentDb::open(path)?;
    let outbox = Outbox::open(&db, LIMITS)?;
    let mut out = std::io::stdout().lock();
    loop {
        match mode {
            "append" => {
                let n = if rng.below(3) == 0 {
                    1
                } else {
                    1 + rng.below(40) as usize
                };
                let recs = (0..n)
                    .map(|_| {
                        let len = 64 + rng.below(512) as usize;
                        record(&mut rng, len)
                    })
                    .collect();
                for outcome in outbox.append_many(recs)? {
                    if let AppendOutcome::Appended { seq } = outcome {
                        writeln!(out, "APPENDED {seq}")?;
                    }
                }
            }
            "ack" => {
                let recs = (0..400).map(|_| record(&mut rng, 256)).collect();
                for outcome in outbox.append_many(recs)? {
                    if let AppendOutcome::Appended { seq } = outcome {
                        writeln!(out, "APPENDED {seq}")?;
                    }
                }
                let target = outbox.stats().last_seq.saturating_sub(3);
                writeln!(out, "ACKING {target}")?;
                out.flush()?;
                outbox.ack_through(target)?;
                writeln!(out, "ACKED {target}")?;
            }
            other => bail!("unknown child mode {other:?}"),
        }
        out.flush()?;
    }
}

/// Runs the child role when this process was started as one. Returns false in the parent.
fn run_as_child_if_asked() -> bool {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return false;
    };
    let mut parts = spec.splitn(3, '\n');
    let (Some(mode), Some(path), Some(seed)) = (parts.next(), parts.next(), parts.next()) else {
        panic!("bad {CHILD_ENV}: {spec:?}");
    };
    let seed = seed.parse().expect("seed is a u64");
    match child(mode, Path::new(path), seed) {
        Ok(never) => match never {},
        Err(e) => {
            eprintln!("child failed: {e:#}");
            std::process::exit(3);
        }
    }
}

struct Spawned {
    child: Child,
    lines: mpsc::Receiver<String>,
}

fn spawn_child(test_name: &str, mode: &str, path: &Path, seed: u64) -> Result<Spawned> {
    let exe = std::env::current_exe()?;
    // libtest names a test by its module path below the crate root (`outbox_crash::…` in the merged binary).
    let exact = match module_path!().split_once("::") {
        Some((_, module)) => format!("{module}::{test_name}"),
        None => test_name.to_owned(),
    };
    let mut child = Command::new(exe)
        .args([exact.as_str(), "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, format!("{mode}\n{}\n{seed}", path.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().context("child stdout")?;
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Ok(Spawned { child, lines })
}

/// Collects the child's lines, calling `should_kill` on each; SIGKILLs the child as soon as it says so,
/// then drains what the child had already written. Returns every line the child printed.
fn run_until_killed(
    mut spawned: Spawned,
    mut should_kill: impl FnMut(&str) -> bool,
) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    loop {
        match spawned.lines.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => {
                let kill = should_kill(&line);
                lines.push(line);
                if kill {
                    break;
                }
            }
            Err(_) => {
                let _ = spawned.child.kill();
                let out = spawned.child.wait_with_output()?;
                bail!(
                    "child stopped before it was killed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
    spawned.child.kill()?; // SIGKILL on Unix
    spawned.child.wait()?;
    // Lines written before the kill are still in the pipe; the channel closes at EOF.
    lines.extend(spawned.lines.iter());
    Ok(lines)
}

fn numbers(lines: &[String], prefix: &str) -> Vec<u64> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix(prefix))
        .map(|n| n.trim().parse().expect("child prints numbers"))
        .collect()
}

/// Reopens the file as a restarted agent would and checks the invariants; returns (acked_through, last_seq).
fn check_recovered(path: &Path, printed: &[u64]) -> Result<(u64, u64)> {
    let db = AgentDb::open(path)?;
    let outbox = Outbox::open(&db, LIMITS)?;
    let stats = outbox.stats();
    let report = outbox.verify_chain()?;
    let stored: Vec<u64> = outbox
        .peek_batch(0, usize::MAX, usize::MAX)?
        .iter()
        .map(|r| r.seq)
        .collect();
    let expected: Vec<u64> = (stats.acked_through + 1..=stats.last_seq).collect();
    ensure!(
        stored == expected,
        "stored seqs are not contiguous from the first unacked one"
    );
    ensure!(
        report.records == stats.depth,
        "chain report disagrees with stats"
    );
    for seq in printed.iter().filter(|s| **s > stats.acked_through) {
        ensure!(
            stored.binary_search(seq).is_ok(),
            "seq {seq} was acknowledged to the producer but is missing after the crash"
        );
    }
    if let Some(max) = printed.iter().max() {
        ensure!(
            stats.last_seq >= *max,
            "last_seq {} went back below acknowledged {max}",
            stats.last_seq
        );
    }
    Ok((stats.acked_through, stats.last_seq))
}

fn crash_dir() -> Result<(tempfile::TempDir, PathBuf)> {
    // Under the target dir rather than /tmp, which may be tmpfs where fsync means nothing.
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let dir = tempfile::tempdir_in(base)?;
    let path = dir.path().join("agent.redb");
    Ok((dir, path))
}

#[test]
fn every_acknowledged_append_survives_kill_9_at_a_random_moment() -> Result<()> {
    if run_as_child_if_asked() {
        return Ok(());
    }
    let seed = seed();
    eprintln!("outbox crash (append) seed {seed}");
    let mut rng = Rng::new(seed);
    let (_dir, path) = crash_dir()?;
    let mut last_seq_before = 0;
    for round in 0..ROUNDS {
        let kill_after = 1 + rng.below(400);
        let spawned = spawn_child(
            "every_acknowledged_append_survives_kill_9_at_a_random_moment",
            "append",
            &path,
            rng.next(),
        )?;
        let mut seen = 0;
        // Count only acknowledgements: libtest prints its own lines first.
        let lines = run_until_killed(spawned, |line| {
            if line.starts_with("APPENDED ") {
                seen += 1;
            }
            seen >= kill_after
        })?;
        let printed = numbers(&lines, "APPENDED ");
        ensure!(
            !printed.is_empty(),
            "round {round}: child acknowledged nothing"
        );
        ensure!(
            printed.iter().all(|s| *s > last_seq_before),
            "round {round}: a seq was reused after restart"
        );
        let (_, last_seq) = check_recovered(&path, &printed)
            .with_context(|| format!("round {round}, seed {seed}"))?;
        eprintln!(
            "round {round}: {} acks printed, last_seq {last_seq} after kill",
            printed.len()
        );
        last_seq_before = last_seq;
    }
    // The restarted outbox keeps chaining where the killed one stopped.
    let db = AgentDb::open(&path)?;
    let outbox = Outbox::open(&db, LIMITS)?;
    let before = outbox.stats();
    let next = outbox.append(NewRecord {
        class: RecordClass::Block,
        kind: "after.crash".into(),
        created_unix_ms: 0,
        bundle: None,
        payload: Vec::new(),
    })?;
    ensure!(
        next == AppendOutcome::Appended {
            seq: before.last_seq + 1
        }
    );
    let newest = outbox.peek_batch(before.last_seq, 1, usize::MAX)?;
    ensure!(
        newest[0].prev_hash == before.last_hash,
        "chain does not continue after recovery"
    );
    outbox.verify_chain()?;
    Ok(())
}

#[test]
fn a_kill_during_ack_through_deletes_all_of_the_acked_range_or_none() -> Result<()> {
    if run_as_child_if_asked() {
        return Ok(());
    }
    let seed = seed();
    eprintln!("outbox crash (ack) seed {seed}");
    let mut rng = Rng::new(seed);
    let (_dir, path) = crash_dir()?;
    let mut interrupted = 0;
    let mut acked_before = 0;
    for round in 0..ROUNDS {
        let kill_at_ack = 1 + rng.below(4);
        let spawned = spawn_child(
            "a_kill_during_ack_through_deletes_all_of_the_acked_range_or_none",
            "ack",
            &path,
            rng.next(),
        )?;
        let mut acks_started = 0;
        // Kill right after the child announced an ack_through and before it can report it returned.
        let lines = run_until_killed(spawned, |line| {
            if line.starts_with("ACKING ") {
                acks_started += 1;
            }
            acks_started >= kill_at_ack
        })?;
        let appended = numbers(&lines, "APPENDED ");
        let acked = numbers(&lines, "ACKED ")
            .last()
            .copied()
            .unwrap_or(acked_before);
        let acking = numbers(&lines, "ACKING ").last().copied().unwrap_or(acked);
        let (acked_through, _) = check_recovered(&path, &appended)
            .with_context(|| format!("round {round}, seed {seed}"))?;
        ensure!(
            acked_through == acked || acked_through == acking,
            "round {round}: acked_through {acked_through} is neither the completed ack {acked} nor the \
             interrupted one {acking}"
        );
        if acking > acked && acked_through == acked {
            interrupted += 1;
        }
        acked_before = acked_through;
        eprintln!(
            "round {round}: acking {acking}, acked {acked}, recovered acked_through {acked_through}"
        );
    }
    eprintln!("{interrupted}/{ROUNDS} kills landed before the ack committed");
    Ok(())
}
