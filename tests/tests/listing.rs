//! End to end: listing an agent's records holds a bounded amount of memory in the aggregator, however large
//! the records. 1,000 records of 1,000,000 bytes each (the wire's payload limit is 1 MiB) are listed page by
//! page through the HTTP API; the aggregator's peak RSS stays under [`RSS_BOUND_BYTES`]. Before pages were
//! bounded by bytes and payloads embedded as text, 100 such records in one page peaked at 4.25 GB.
#![allow(clippy::disallowed_methods)] // tests spawn freely and read the clock

use anyhow::{Context as _, ensure};
use gait_e2e::Aggregator;
use gait_store::{AgentHello, AgentKey, CertSerial, NewRecord, Store, Tenant};

/// Records listed, and their payload size.
const RECORDS: u64 = 1_000;
const PAYLOAD_BYTES: usize = 1_000_000;
/// The stated bound on the aggregator's peak resident memory while listing (its idle RSS is ~15–40 MB; a page
/// holds at most 4 MiB of payload, about twice that while it is encoded).
const RSS_BOUND_BYTES: u64 = 256 << 20;

/// Peak resident set size of a process (`VmHWM`), bytes.
fn peak_rss(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .context("no VmHWM")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kib * 1024)
}

fn payload(seq: u64) -> Vec<u8> {
    let head = format!("{{\"seq\":{seq},\"blob\":\"");
    let mut out = head.into_bytes();
    out.resize(PAYLOAD_BYTES - 2, b'a');
    out.extend_from_slice(b"\"}");
    out
}

#[test]
fn listing_large_records_keeps_the_aggregator_memory_bounded() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let agg = Aggregator::start(&tmp.path().join("agg"), None)?;
    let pid = agg.pid().context("aggregator pid")?;

    // The records go straight into the aggregator's database (SQLite allows a second writer process).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let store = Store::open_sqlite_file(&agg.data_dir.join("aggregator.db")).await?;
        let key = AgentKey::new(Tenant::from_parts("acme", "web", "prod")?, "big".parse()?);
        let hello = AgentHello {
            cert_serial: CertSerial::parse("01")?,
            cert_not_after_unix_ms: i64::MAX,
            cert_issuer: "CN=test CA".into(),
            remote_addr: "127.0.0.1:1".into(),
            agent_version: "test".into(),
            active_bundle: None,
            received_bundle: None,
            outbox_depth: 0,
            shed_total: 0,
        };
        store.agent_connected(&key, &hello, 1).await?;
        let hash = |seq: u64| {
            let mut h = [0u8; 32];
            h[..8].copy_from_slice(&seq.to_be_bytes());
            h
        };
        for first in (1..=RECORDS).step_by(10) {
            let batch: Vec<NewRecord> = (first..first + 10)
                .map(|seq| NewRecord {
                    seq,
                    prev_hash: hash(seq - 1),
                    hash: hash(seq),
                    class: "artifact_digest".into(),
                    kind: "test.large".into(),
                    created_unix_ms: 1,
                    bundle_epoch: None,
                    bundle_digest: None,
                    bundle_since_ms: None,
                    payload: payload(seq),
                })
                .collect();
            store.commit_batch(&key, &batch, 1).await?;
        }
        store.close().await;
        anyhow::Ok(())
    })?;
    let before = peak_rss(pid)?;

    let listed = agg.records("acme", "web", "prod", "big")?;
    ensure!(
        listed.len() as u64 == RECORDS,
        "listed {} of {RECORDS} records",
        listed.len()
    );
    ensure!(
        listed
            .iter()
            .enumerate()
            .all(|(i, r)| r["seq"] == i as u64 + 1
                && r["payload"]["seq"] == i as u64 + 1
                && r["payload"]["blob"]
                    .as_str()
                    .is_some_and(|b| b.len() > 900_000)),
        "records came back out of order or with a damaged payload"
    );
    let peak = peak_rss(pid)?;
    ensure!(
        peak < RSS_BOUND_BYTES,
        "listing {RECORDS} records of {PAYLOAD_BYTES} bytes peaked at {} MiB (bound {} MiB; {} MiB before listing)",
        peak >> 20,
        RSS_BOUND_BYTES >> 20,
        before >> 20
    );
    eprintln!(
        "peak RSS {} MiB listing {RECORDS} x {PAYLOAD_BYTES} B (before listing {} MiB)",
        peak >> 20,
        before >> 20
    );
    Ok(())
}
