//! The daemon's counters: Gait's counting under concurrency, durability with the committer's transaction,
//! the legacy file import, and the table following removals.
#![allow(clippy::disallowed_methods)] // tests spawn threads and read the clock

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::outbox::{NewRecord, Outbox, OutboxLimits};

fn limit(requests: i64, window: &str, scope: &str) -> RateLimitPolicy {
    RateLimitPolicy {
        requests,
        window: window.into(),
        scope: scope.into(),
    }
}

fn record() -> NewRecord {
    NewRecord {
        class: gait_wire::RecordClass::Block,
        kind: "gate.decision".into(),
        created_unix_ms: 1,
        bundle: None,
        payload: b"{}".to_vec(),
    }
}

/// Commits one record with the changed counters, as the outbox committer does.
fn commit_with_record(outbox: &Outbox, counters: &DaemonCounters) {
    outbox
        .append_many_with(vec![record()], |txn| {
            let _ = counters.write_changes(txn)?;
            Ok(())
        })
        .expect("commit");
}

fn counter_key(l: &RateLimitPolicy, tool: &str, identity: &str, now: GoTime) -> String {
    RateLimitState::counter_key(l, tool, identity, now)
        .expect("key")
        .expect("counted limit")
}

struct Opened {
    _dir: tempfile::TempDir,
    path: PathBuf,
    legacy: PathBuf,
}

fn data_dir() -> Opened {
    let dir = tempfile::tempdir().expect("tempdir");
    Opened {
        path: dir.path().join("agent.redb"),
        legacy: dir.path().join("gate_rate_limits.json"),
        _dir: dir,
    }
}

#[test]
fn concurrent_decisions_are_allowed_exactly_the_limit_and_the_count_survives_a_reopen() {
    let d = data_dir();
    let l = limit(100, "hour", "tool");
    let now = now();
    {
        let db = AgentDb::open(&d.path).expect("db");
        let outbox = Outbox::open(&db, OutboxLimits::default()).expect("outbox");
        let counters = Arc::new(DaemonCounters::open(&db, &d.legacy, 1024).expect("counters"));
        let allowed = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let (counters, allowed, l) =
                    (Arc::clone(&counters), Arc::clone(&allowed), l.clone());
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        let counted = counters
                            .hold(now)
                            .enforce(&l, "tool.read", "alice", now)
                            .expect("counts");
                        if counted.decision.allowed {
                            allowed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        assert_eq!(
            allowed.load(Ordering::Relaxed),
            100,
            "exactly the limit of 800 requests"
        );
        commit_with_record(&outbox, &counters);
    }
    let db = AgentDb::open(&d.path).expect("db again");
    let counters = DaemonCounters::open(&db, &d.legacy, 1024).expect("counters again");
    assert_eq!(
        counters
            .snapshot()
            .count(&counter_key(&l, "tool.read", "alice", now)),
        100
    );
    let after = counters
        .hold(now)
        .enforce(&l, "tool.read", "alice", now)
        .expect("counts");
    assert!(
        !after.decision.allowed,
        "a restart does not reset an enforced window"
    );
}

#[test]
fn counts_not_committed_are_given_back_and_written_with_the_next_commit() {
    let d = data_dir();
    let l = limit(5, "hour", "identity");
    let now = now();
    let key = counter_key(&l, "t", "bob", now);
    {
        let db = AgentDb::open(&d.path).expect("db");
        let outbox = Outbox::open(&db, OutboxLimits::default()).expect("outbox");
        let counters = DaemonCounters::open(&db, &d.legacy, 1024).expect("counters");
        for _ in 0..2 {
            counters
                .hold(now)
                .enforce(&l, "t", "bob", now)
                .expect("counts");
        }
        // A commit that fails after the counters were written into it (the record is refused).
        let mut taken = None;
        let failed = outbox.append_many_with(vec![record()], |txn| {
            taken = Some(counters.write_changes(txn)?);
            Err(crate::outbox::OutboxError::SeqExhausted)
        });
        assert!(failed.is_err());
        counters.restore(taken.expect("written"));
        assert_eq!(
            load(&db).expect("table").get(&key),
            None,
            "nothing committed"
        );
        commit_with_record(&outbox, &counters);
        assert_eq!(load(&db).expect("table").get(&key), Some(&2));
        // A third count, never committed with a record: a clean stop writes it.
        counters
            .hold(now)
            .enforce(&l, "t", "bob", now)
            .expect("counts");
        counters.flush().expect("flush");
    }
    let db = AgentDb::open(&d.path).expect("db again");
    assert_eq!(load(&db).expect("table").get(&key), Some(&3));
}

#[test]
fn a_legacy_state_file_is_imported_once_by_the_larger_count_and_renamed() {
    let d = data_dir();
    let l = limit(10, "hour", "tool");
    let now = now();
    let key = counter_key(&l, "tool.read", "x", now);
    let file = |count: i64| {
        format!(
            "{{\"schema_id\":\"gait.gate.rate_limit_state\",\"schema_version\":\"1.0.0\",\"counters\":[{{\"key\":\"{key}\",\"count\":{count}}}]}}\n"
        )
    };
    std::fs::write(&d.legacy, file(7)).expect("legacy file");
    {
        let db = AgentDb::open(&d.path).expect("db");
        let counters = DaemonCounters::open(&db, &d.legacy, 1024).expect("counters");
        assert_eq!(counters.snapshot().count(&key), 7);
        assert!(!d.legacy.exists(), "imported file renamed");
        let mut imported = d.legacy.clone().into_os_string();
        imported.push(IMPORTED_SUFFIX);
        assert_eq!(
            std::fs::read_to_string(&imported).expect("kept as .imported"),
            file(7)
        );
        assert!(
            !ratelimit_state::lock_path(&d.legacy).exists(),
            "the lock is released"
        );
        // Counting goes on from the imported count: 3 more, then the limit.
        for _ in 0..3 {
            assert!(
                counters
                    .hold(now)
                    .enforce(&l, "tool.read", "x", now)
                    .expect("counts")
                    .decision
                    .allowed
            );
        }
        assert!(
            !counters
                .hold(now)
                .enforce(&l, "tool.read", "x", now)
                .expect("counts")
                .decision
                .allowed
        );
        counters.flush().expect("flush");
    }
    // The same file again (a crash between the commit and the rename): the larger count stays.
    std::fs::write(&d.legacy, file(7)).expect("legacy file again");
    let db = AgentDb::open(&d.path).expect("db again");
    let counters = DaemonCounters::open(&db, &d.legacy, 1024).expect("counters again");
    assert_eq!(counters.snapshot().count(&key), 10);
}

#[test]
fn an_unreadable_legacy_file_is_set_aside_and_counting_starts_afresh() {
    let d = data_dir();
    std::fs::write(&d.legacy, b"{ not json").expect("legacy file");
    let resets = ratelimit_state::STATE_RESETS.load(Ordering::Relaxed);
    let db = AgentDb::open(&d.path).expect("db");
    let counters = DaemonCounters::open(&db, &d.legacy, 1024).expect("counters");
    assert!(counters.snapshot().is_empty());
    assert!(!d.legacy.exists());
    let aside = std::fs::read_dir(d.path.parent().expect("dir"))
        .expect("dir")
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("gate_rate_limits.json.unreadable-")
        })
        .count();
    assert_eq!(aside, 1);
    assert!(ratelimit_state::STATE_RESETS.load(Ordering::Relaxed) > resets);
}

#[test]
fn evicted_and_superseded_counters_leave_the_table() {
    let d = data_dir();
    let db = AgentDb::open(&d.path).expect("db");
    let outbox = Outbox::open(&db, OutboxLimits::default()).expect("outbox");
    let counters = DaemonCounters::open(&db, &d.legacy, 2).expect("counters");
    let l = limit(5, "hour", "identity");
    let now = now();
    // Two keys below their limit fill the bound; a third evicts the least recently used one.
    for id in ["a", "b", "c"] {
        counters
            .hold(now)
            .enforce(&l, "t", id, now)
            .expect("counts");
        commit_with_record(&outbox, &counters);
    }
    let table = load(&db).expect("table");
    let memory: BTreeMap<String, i64> = counters
        .snapshot()
        .counters()
        .map(|(k, c)| (k.to_owned(), c))
        .collect();
    assert_eq!(table, memory, "the table follows memory");
    assert!(
        !table.contains_key(&counter_key(&l, "t", "a", now)),
        "{table:?}"
    );
    // A new minute bucket drops the window's older ones (Gait's rule): the table follows.
    let m = limit(5, "minute", "identity");
    let earlier =
        GoTime::from_offset_date_time(crate::clock::now_utc() - time::Duration::minutes(1));
    let wide = DaemonCounters::open(&db, &d.legacy, 1024).expect("counters");
    wide.hold(earlier)
        .enforce(&m, "t", "z", earlier)
        .expect("counts");
    commit_with_record(&outbox, &wide);
    wide.hold(now).enforce(&m, "t", "z", now).expect("counts");
    commit_with_record(&outbox, &wide);
    let table = load(&db).expect("table");
    assert!(
        !table.contains_key(&counter_key(&m, "t", "z", earlier)),
        "{table:?}"
    );
    assert_eq!(table.get(&counter_key(&m, "t", "z", now)), Some(&1));
}

#[test]
fn the_daemon_counts_exactly_as_gaits_state_file_does() {
    // The same requests against Gait's file-backed state and the daemon's counters give the same decisions.
    let limits = [
        limit(3, "minute", "tool"),
        limit(2, "hour", "identity"),
        limit(4, "", ""),
        limit(1, "hour", "tool_identity"),
    ];
    let now = GoTime::parse_rfc3339("2026-02-05T10:30:00Z").expect("time");
    let later = GoTime::parse_rfc3339("2026-02-05T10:31:05Z").expect("time");
    let mut gait = RateLimitState::new();
    let daemon = DaemonCounters::new(1024);
    for i in 0..60 {
        let l = &limits[i % limits.len()];
        let (tool, identity) = (["a", "b"][i % 2], ["u", "v", "w"][i % 3]);
        let at = if i < 30 { now } else { later };
        let expected = gait.enforce(l, tool, identity, at).expect("gait");
        let got = daemon
            .hold(at)
            .enforce(l, tool, identity, at)
            .expect("daemon");
        assert_eq!(got.decision, expected, "request {i}");
        assert!(!got.state_full);
    }
    assert_eq!(daemon.snapshot(), gait);
}
