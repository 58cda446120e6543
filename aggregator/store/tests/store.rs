//! The store's behaviour suite, run against both backends: SQLite on a temp file and PostgreSQL on a fresh
//! database from `GAIT_TEST_DATABASE_URL` (see `gait_store::testing`).
#![allow(clippy::disallowed_methods)] // tests spawn freely and read the clock

use anyhow::{Context as _, Result, bail, ensure};
use gait_store::testing::TestStore;
use gait_store::{
    ActiveBundle, AgentCursor, AgentFilter, AgentHello, AgentKey, BundleRef, BundleReportRow,
    CertSerial, GapKind, NewRecord, Revocation, Store, StoreError, Tenant,
};

const NOW: i64 = 1_764_000_000_000;

/// A typed identifier (or serial) from a literal the test knows to be valid.
fn id<T: std::str::FromStr>(text: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    text.parse()
        .unwrap_or_else(|e| panic!("test literal {text:?}: {e:?}"))
}

fn tenant_of(org: &str, project: &str, env: &str) -> Tenant {
    Tenant::from_parts(org, project, env)
        .unwrap_or_else(|e| panic!("test tenant {org}/{project}/{env}: {e}"))
}

fn tenant(org: &str) -> Tenant {
    tenant_of(org, "payments", "prod")
}

fn key(org: &str, agent: &str) -> AgentKey {
    AgentKey::new(tenant(org), id(agent))
}

fn digest(n: u8) -> String {
    hex::encode([n; 32])
}

fn hello(serial: &str) -> AgentHello {
    AgentHello {
        cert_serial: id(serial),
        cert_not_after_unix_ms: NOW + 86_400_000,
        cert_issuer: "O=Gait fleet, CN=Gait fleet CA gait.local".into(),
        remote_addr: "10.0.0.7:4433".into(),
        agent_version: "0.1.0".into(),
        active_bundle: Some(ActiveBundle {
            epoch: 3,
            digest: digest(3),
            since_unix_ms: NOW - 1000,
        }),
        received_bundle: Some(BundleRef {
            epoch: 4,
            digest: digest(4),
        }),
        outbox_depth: 12,
        shed_total: 0,
    }
}

/// A deterministic record hash for `seq` in the stream named by `salt`.
fn hash(seq: u64, salt: u8) -> [u8; 32] {
    if seq == 0 {
        return [0; 32];
    }
    let mut h = [salt; 32];
    h[..8].copy_from_slice(&seq.to_be_bytes());
    h
}

fn record(seq: u64, prev_hash: [u8; 32], hash: [u8; 32]) -> NewRecord {
    NewRecord {
        seq,
        prev_hash,
        hash,
        class: "decision".into(),
        kind: "gate".into(),
        created_unix_ms: NOW - 5000 + seq as i64,
        bundle_epoch: Some(3),
        bundle_digest: Some(digest(3)),
        bundle_since_ms: Some(NOW - 1000),
        payload: format!(r#"{{"seq":{seq},"verdict":"allow","tool":"fs.read"}}"#).into_bytes(),
    }
}

/// Records `first..=last`, correctly chained in the stream `salt`.
fn chain(first: u64, last: u64, salt: u8) -> Vec<NewRecord> {
    (first..=last)
        .map(|s| record(s, hash(s - 1, salt), hash(s, salt)))
        .collect()
}

async fn connected(store: &Store, k: &AgentKey) -> Result<AgentCursor> {
    Ok(store.agent_connected(k, &hello("0a1b2c"), NOW).await?)
}

async fn agent_row(store: &Store, k: &AgentKey) -> Result<gait_store::AgentRow> {
    let filter = AgentFilter::for_org(k.tenant.org.clone());
    let rows = store.list_agents(&filter).await?;
    rows.into_iter()
        .find(|r| r.tenant == k.tenant && r.agent_id == k.agent_id)
        .with_context(|| format!("agent {k} not listed"))
}

/// Every seq up to the cursor is stored, refused or inside a `missing` gap, and nothing is stored above it.
async fn assert_cursor_invariant(store: &Store, k: &AgentKey) -> Result<()> {
    let row = agent_row(store, k).await?;
    let stored: Vec<u64> = store
        .records(k, 0, 1000)
        .await?
        .iter()
        .map(|r| r.seq)
        .collect();
    let missing: Vec<(u64, u64)> = store
        .gaps(k)
        .await?
        .iter()
        .filter(|g| g.kind == GapKind::Missing)
        .map(|g| (g.first_seq, g.last_seq))
        .collect();
    let refused: Vec<u64> = store.refusals(k).await?.iter().map(|r| r.seq).collect();
    for seq in 1..=row.committed_seq {
        let covered = stored.contains(&seq)
            || refused.contains(&seq)
            || missing.iter().any(|(a, b)| (*a..=*b).contains(&seq));
        ensure!(
            covered,
            "seq {seq} <= committed_seq {} is neither stored, refused nor a recorded gap",
            row.committed_seq
        );
    }
    ensure!(
        stored.iter().all(|s| *s <= row.committed_seq),
        "a record is stored above committed_seq"
    );
    Ok(())
}

gait_store::store_tests!(
    migrations_are_idempotent_and_keep_data,
    agent_upsert_returns_the_committed_cursor,
    batch_commit_stores_every_field_and_pages_by_seq,
    redelivered_batch_counts_all_duplicates_and_doubles_nothing,
    same_seq_with_another_hash_is_a_conflict_and_the_original_is_kept,
    skipped_seqs_are_recorded_as_a_missing_gap,
    a_refused_seq_is_recorded_as_refused_and_not_as_a_missing_gap,
    a_refusal_written_after_a_later_batch_takes_its_seq_out_of_the_gap,
    role_bindings_are_granted_once_revoked_and_replaced_from_config,
    records_arriving_below_the_head_fill_their_missing_gap,
    wrong_prev_hash_is_recorded_as_a_chain_break,
    committed_seq_advances_only_over_stored_or_recorded_seqs,
    bundle_epochs_must_increase_per_tenant,
    an_older_bundle_is_read_by_its_epoch,
    an_agent_known_only_from_a_file_gets_one_row_and_keeps_its_cursor,
    tenants_are_isolated,
    revocations_are_normalised_and_idempotent,
    agents_are_found_by_their_certificate_serial,
    record_pages_end_at_their_byte_budget,
    a_batch_of_5000_records_commits_in_one_call,
    operations_on_an_unknown_agent_are_refused,
    invalid_input_is_refused_before_any_write,
    bundle_reports_update_the_agent_row,
    concurrent_redelivery_of_one_batch_stores_it_once,
    concurrent_publishes_of_one_epoch_admit_exactly_one,
    hellos_and_last_seen_are_written_in_batches,
    agents_are_listed_in_pages_that_cover_each_agent_once,
    a_transaction_body_that_fails_leaves_nothing,
    a_committed_transaction_keeps_every_write,
    a_dropped_transaction_is_rolled_back,
    instances_conflicts_and_identity_alerts_are_durable_and_tenant_scoped,
);

async fn instances_conflicts_and_identity_alerts_are_durable_and_tenant_scoped(
    db: &TestStore,
) -> Result<()> {
    use gait_store::{AlertKind, NewAgentAlert};
    let store = db.store();
    let k = key("acme", "agent-1");
    let a = "0123456789abcdef0123456789abcdef";
    let b = "fedcba9876543210fedcba9876543210";
    ensure!(
        store.note_instance(&k, a).await.is_err(),
        "an unknown agent has no instance to note"
    );
    connected(store, &k).await?;
    let first = store.note_instance(&k, a).await?;
    ensure!(
        first.previous.is_none() && first.committed_seq == 0,
        "{first:?}"
    );
    ensure!(store.note_instance(&k, a).await?.previous.as_deref() == Some(a));

    // Another instance's records at stored seqs are conflicts, counted durably per agent.
    store.commit_batch(&k, &chain(1, 4, 1), NOW).await?;
    let outcome = store.commit_batch(&k, &chain(1, 3, 2), NOW).await?;
    ensure!(
        outcome.conflicts == 3 && outcome.inserted == 0,
        "{outcome:?}"
    );
    let change = store.note_instance(&k, b).await?;
    ensure!(
        change.previous.as_deref() == Some(a)
            && change.committed_seq == 4
            && change.conflict_count == 3,
        "{change:?}"
    );
    let reopened = Store::connect(db.url()).await?;
    ensure!(
        reopened.note_instance(&k, b).await?.conflict_count == 3,
        "conflict count survives a reconnect"
    );
    reopened.close().await;

    let alert = NewAgentAlert {
        kind: AlertKind::DuplicateInstance,
        instance_id: b.into(),
        other_instance_id: a.into(),
        remote_addr: "10.0.0.8:5000".into(),
        other_remote_addr: "10.0.0.7:4433".into(),
        detail: "x".repeat(5000),
    };
    store.record_alert(&k, &alert, NOW).await?;
    let behind = NewAgentAlert {
        kind: AlertKind::InstanceBehind,
        other_remote_addr: String::new(),
        detail: "behind".into(),
        ..alert.clone()
    };
    store.record_alert(&k, &behind, NOW + 1).await?;
    let listed = store.alerts(&k.tenant, 10).await?;
    ensure!(listed.len() == 2, "{listed:?}");
    ensure!(
        listed[0].kind == AlertKind::InstanceBehind
            && listed[1].kind == AlertKind::DuplicateInstance,
        "newest first: {listed:?}"
    );
    ensure!(listed[1].agent == k && listed[1].instance_id == b && listed[1].other_instance_id == a);
    ensure!(listed[1].detail.len() == gait_store::MAX_ALERT_DETAIL_BYTES);
    ensure!(
        store.alerts(&k.tenant, 1).await?.len() == 1,
        "limit applies"
    );

    // Tenancy: another tenant sees none of them; bad input and unknown agents are refused.
    ensure!(store.alerts(&tenant("other"), 10).await?.is_empty());
    let bad = NewAgentAlert {
        instance_id: "not-hex".into(),
        ..alert.clone()
    };
    ensure!(store.record_alert(&k, &bad, NOW).await.is_err());
    ensure!(
        store
            .record_alert(&key("acme", "nobody"), &alert, NOW)
            .await
            .is_err()
    );
    Ok(())
}

async fn migrations_are_idempotent_and_keep_data(db: &TestStore) -> Result<()> {
    let store = db.store();
    let k = key("acme", "agent-1");
    connected(store, &k).await?;
    store.commit_batch(&k, &chain(1, 3, 1), NOW).await?;

    // Connecting again runs the migrator again: nothing to apply, nothing lost.
    let again = Store::connect(db.url()).await?;
    again.ping().await?;
    ensure!(again.backend() == db.backend());
    ensure!(again.count_records(&k).await? == 3);
    let third = Store::connect(db.url()).await?;
    ensure!(third.count_records(&k).await? == 3);
    again.close().await;
    third.close().await;
    Ok(())
}

async fn agent_upsert_returns_the_committed_cursor(db: &TestStore) -> Result<()> {
    let store = db.store();
    let k = key("acme", "agent-1");
    let fresh = connected(store, &k).await?;
    ensure!(
        fresh
            == AgentCursor {
                committed_seq: 0,
                committed_hash: [0; 32]
            },
        "fresh cursor: {fresh:?}"
    );

    store.commit_batch(&k, &chain(1, 5, 1), NOW).await?;
    let mut newer = hello("0A:1B:2C");
    newer.agent_version = "0.2.0".into();
    newer.active_bundle = None;
    let cursor = store.agent_connected(&k, &newer, NOW + 10).await?;
    ensure!(
        cursor
            == AgentCursor {
                committed_seq: 5,
                committed_hash: hash(5, 1)
            },
        "cursor: {cursor:?}"
    );

    // An older clock never moves last_seen back; first_seen stays the first.
    store.agent_connected(&k, &newer, NOW - 10).await?;
    let row = agent_row(store, &k).await?;
    ensure!(row.first_seen_unix_ms == NOW);
    ensure!(row.last_seen_unix_ms == NOW + 10);
    ensure!(row.agent_version == "0.2.0");
    ensure!(
        row.cert_serial.as_str() == "0a1b2c",
        "serial stored normalised: {}",
        row.cert_serial
    );
    ensure!(row.active_bundle.is_none());
    ensure!(
        row.received_bundle
            == Some(BundleRef {
                epoch: 4,
                digest: digest(4)
            })
    );
    ensure!(row.outbox_depth == 12);
    store.agent_seen(&k, NOW + 50).await?;
    ensure!(agent_row(store, &k).await?.last_seen_unix_ms == NOW + 50);
    ensure!(
        store
            .list_agents(&AgentFilter {
                project: None,
                env: None,
                ..AgentFilter::for_org(id("acme"))
            })
            .await?
            .len()
            == 1
    );
    Ok(())
}

async fn batch_commit_stores_every_field_and_pages_by_seq(db: &TestStore) -> Result<()> {
    let store = db.store();
    let k = key("acme", "agent-1");
    connected(store, &k).await?;
    let mut batch = chain(1, 10, 7);
    batch[4].bundle_epoch = None;
    batch[4].bundle_digest = None;
    batch[4].bundle_since_ms = None;
    let out = store.commit_batch(&k, &batch, NOW).await?;
    ensure!(
        out.inserted == 10 && out.duplicates == 0 && out.conflicts == 0,
        "{out:?}"
    );
    ensure!(out.committed_seq == 10 && out.committed_hash == hash(10, 7));
    ensure!(out.gaps.is_empty() && out.chain_breaks.is_empty());
    ensure!(store.count_records(&k).await? == 10);

    let all = store.records(&k, 0, 100).await?;
    ensure!(all.len() == 10);
    for (got, sent) in all.iter().zip(&batch) {
        ensure!(
            got.seq == sent.seq && got.record_hash == sent.hash && got.prev_hash == sent.prev_hash
        );
        ensure!(got.class == sent.class && got.kind == sent.kind && got.payload == sent.payload);
        ensure!(got.created_unix_ms == sent.created_unix_ms && got.received_unix_ms == NOW);
        ensure!(got.bundle_epoch == sent.bundle_epoch && got.bundle_digest == sent.bundle_digest);
        ensure!(got.bundle_since_ms == sent.bundle_since_ms);
    }
    let page: Vec<u64> = store
        .records(&k, 5, 3)
        .await?
        .iter()
        .map(|r| r.seq)
        .collect();
    ensure!(page == vec![6, 7, 8], "page {page:?}");
    ensure!(store.records(&k, 10, 100).await?.is_empty());
    ensure!(store.records(&k, 0, 0).await?.is_empty());
    Ok(())
}

async fn redelivered_batch_counts_all_duplicates_and_doubles_nothing(db: &TestStore) -> Result<()> {
    let store = db.store();
    let k = key("acme", "agent-1");
    connected(store, &k).await?;
    let batch = chain(1, 50, 2);
    let first = store.commit_batch(&k, &batch, NOW).await?;
    let again = store.commit_batch(&k, &batch, NOW + 1).await?;
    ensure!(
        again.inserted == 0 && again.duplicates == 50 && again.conflicts == 0,
        "{again:?}"
    );
    ensure!(
        again.committed_seq == first.committed_seq && again.committed_hash == first.committed_hash
    );
    ensure!(again.gaps.is_empty() && again.chain_breaks.is_empty());
    ensure!(store.count_records(&k).await? == 50);

    // A partly redelivered batch: the old half are duplicates, the new half is stored.
    let overlap = chain(41, 60, 2);
    let out = store.commit_batch(&k, &overlap, NOW + 2).await?;
    ensure!(out.inserted == 10 && out.duplicates == 10, "{out:?}");
    ensure!(out.committed_seq == 60 && out.chain_breaks.is_empty());
    ensure!(store.count_records(&k).await? == 60);
    ensure!(store.gaps(&k).await?.is_empty());
    Ok(())
}

async fn same_seq_with_another_hash_is_a_conflict_and_the_original_is_kept(
    db: &TestStore,
) -> Result<()> {
    let store = db.store();
    let k = key("acme", "agent-1");
    connected(store, &k).await?;
    store.commit_batch(&k, &chain(1, 3, 1), NOW).await?;

    let mut forged = record(2, hash(1, 1), [0xee; 32]);
    forged.payload = br#"{"forged":true}"#.to_vec();
    let next = record(4, hash(3, 1), hash(4, 1));
    let out = store.commit_batch(&k, &[forged, next], NOW + 1).await?;
    ensure!(
        out.conflicts == 1 && out.conflict_seqs == vec![2],
        "{out:?}"
    );
    ensure!(out.inserted == 1 && out.duplicates == 0 && out.committed_seq == 4);

    let kept = store.records(&k, 1, 1).await?;
    ensure!(kept.len() == 1 && kept[0].seq == 2);
    ensure!(
        kept[0].record_hash == hash(2, 1),
        "the stored record was overwritten"
    );
    ensure!(!kept[0].payload.starts_with(br#"{"forged""#));
    ensure!(store.count_records(&k).await? == 4);
    Ok(())
}

async fn skipped_seqs_are_recorded_as_a_missing_gap(db: &TestStore) -> Result<()> {
    let store = db.store();
    let k = key("acme", "agent-1");
    connected(store, &k).await?;
    store.commit_batch(&k, &chain(1, 3, 1), NOW).await?;
    let out = store.commit_batch(&k, &chain(6, 7, 1), NOW + 5).await?;
    ensure!(out.gaps == vec![(4, 5)], "{out:?}");
    ensure!(
        out.chain_breaks.is_empty(),
        "the chain is not judged across a gap"
    );
    ensure!(out.committed_seq == 7 && out.committed_hash == hash(7, 1));

    let gaps = store.gaps(&k).await?;
    ensure!(gaps.len() == 1, "{gaps:?}");
    ensure!(gaps[0].first_seq == 4 && gaps[0].last_seq == 5 && gaps[0].kind == GapKind::Missing);
    ensure!(gaps[0].detected_unix_ms == NOW + 5);
    ensure!(agent_row(store, &k).await?.gap_count == 1);

    // Continuing contiguously records nothing more.
    let out = store.commit_batch(&k, &chain(8, 9, 1), NOW + 6).await?;
    ensure!(out.gaps.is_empty() && out.chain_breaks.is_empty());
    ensure!(store.gaps(&k).await?.len() == 1);

    // A fresh agent whose first records were shed starts with a gap from seq 1.
    let k2 = key("acme", "agent-2");
    connected(store, &k2).await?;
    let out = store.commit_batch(&k2, &chain(5, 6, 3), NOW).await?;
    ensure!(out.gaps == vec![(1, 4)], "{out:?}");
    Ok(())
}

async fn a_refused_seq_is_recorded_as_refused_and_not_as_a_missing_gap(
    db: &TestStore,
) -> Result<()> {
    let store = db.store();
    let k = key("acme", "agent-1");
    connected(store, &k).await?;
    store.commit_batch(&k, &chain(1, 3, 1), NOW).await?;
    // Seq 4 is refused for good (the agent quarantines it); seq 6 is simply lost.
    let code = gait_wire::RefusalCode::RecordPayloadTooLarge.as_str();
    store
        .record_refusal(&k, 4, code, "record 4: too big", NOW + 1)
        .await?;
    // A second refusal of the same seq keeps one row, with the latest words; a long message is cut.
    let long = "é".repeat(gait_store::MAX_REFUSAL_MESSAGE_BYTES);
    store.record_refusal(&k, 4, code, &long, NOW + 2).await?;
    let out = store.commit_batch(&k, &chain(5, 5, 1), NOW + 3).await?;
    ensure!(out.gaps.is_empty(), "a refused seq became a gap: {out:?}");
    ensure!(out.refused == vec![4], "{out:?}");
    ensure!(out.committed_seq == 5);
    let out = store.commit_batch(&k, &chain(7, 7, 1), NOW + 4).await?;
    ensure!(
        out.gaps == vec![(6, 6)] && out.refused.is_empty(),
        "{out:?}"
    );
    let gaps = store.gaps(&k).await?;
    ensure!(
        gaps.len() == 1 && gaps[0].first_seq == 6 && gaps[0].last_seq == 6,
        "{gaps:?}"
    );
    ensure!(agent_row(store, &k).await?.gap_count == 1);
    let refusals = store.refusals(&k).await?;
    ensure!(refusals.len() == 1, "{refusals:?}");
    ensure!(refusals[0].seq == 4 && refusals[0].code == code);
    ensure!(refusals[0].refused_unix_ms == NOW + 2);
    ensure!(
        refusals[0].message.len() <= gait_store::MAX_REFUSAL_MESSAGE_BYTES
            && refusals[0].message.starts_with('é'),
        "message not cut on a char boundary: {} bytes",
        refusals[0].message.len()
    );
    // Another agent's refusal of the same seq is its own; it does not cover this agent's seqs.
    let other = key("acme", "agent-2");
    connected(store, &other).await?;
    store
        .record_refusal(&other, 9, code, "other agent", NOW)
        .await?;
    let out = store.commit_batch(&k, &chain(10, 10, 1), NOW + 5).await?;
    ensure!(out.gaps == vec![(8, 9)], "{out:?}");
    // Refusals need a known agent and a valid seq and code.
    ensure!(matches!(
        store
            .record_refusal(&key("acme", "ghost"), 1, code, "x", NOW)
            .await,
        Err(StoreError::UnknownAgent { .. })
    ));
    ensure!(matches!(
        store.record_refusal(&k, 0, code, "x", NOW).await,
        Err(StoreError::InvalidInput { .. })
    ));
    ensure!(matches!(
        store.record_refusal(&k, 11, "", "x", NOW).await,
        Err(StoreError::InvalidInput { .. })
    ));
    // Inside a transaction a refusal is written with everything else, or not at all.
    let mut tx = store.begin().await?;
    tx.record_refusal(&k, 12, code, "in a transaction", NOW)
        .await?;
    ensure!(tx.refusals(&k).await?.len() == 2);
    tx.rollback().await?;
    ensure!(store.refusals(&k).await?.len() == 1);
    Ok(())
}

/// The agent has several batches on the wire: the batch after a refused record can commit (recording the
/// refused seq as missing) before the refusal is written. The refusal then takes its seq back out of the gap,
/// leaving what an in-order arrival leaves.
async fn a_refusal_written_after_a_later_batch_takes_its_seq_out_of_the_gap(
    db: &TestStore,
) -> Result<()> {
    let store = db.store();
    let k = key("acme", "agent-1");
    let code = gait_wire::RefusalCode::RecordPayloadTooLarge.as_str();
    connected(store, &k).await?;
    store.commit_batch(&k, &chain(1, 1, 1), NOW).await?;
    // Seq 2 was refused, but the batch of 3..4 commits first: a one-seq gap, then taken back entirely.
    let out = store.commit_batch(&k, &chain(3, 4, 1), NOW + 1).await?;
    ensure!(out.gaps == vec![(2, 2)], "{out:?}");
    ensure!(agent_row(store, &k).await?.gap_count == 1);
    store
        .record_refusal(&k, 2, code, "record 2", NOW + 2)
        .await?;
    ensure!(
        store.gaps(&k).await?.is_empty(),
        "{:?}",
        store.gaps(&k).await?
    );
    ensure!(agent_row(store, &k).await?.gap_count == 0);

    // Gap 5..10: refusing 5 shrinks it from the front, 10 from the back, 7 splits it around; the
    // detection time stays the gap's own. A seq in no gap, or in a chain break, moves nothing.
    let out = store.commit_batch(&k, &chain(11, 11, 1), NOW + 3).await?;
    ensure!(out.gaps == vec![(5, 10)], "{out:?}");
    for seq in [5, 10, 7] {
        store
            .record_refusal(&k, seq, code, "refused", NOW + 4)
            .await?;
    }
    let gaps = store.gaps(&k).await?;
    let spans: Vec<(u64, u64, i64)> = gaps
        .iter()
        .map(|g| (g.first_seq, g.last_seq, g.detected_unix_ms))
        .collect();
    ensure!(spans == vec![(6, 6, NOW + 3), (8, 9, NOW + 3)], "{gaps:?}");
    ensure!(gaps.iter().all(|g| g.kind == GapKind::Missing));
    ensure!(agent_row(store, &k).await?.gap_count == 2);
    store
        .record_refusal(&k, 3, code, "stored seq", NOW + 5)
        .await?;
    // Seq 13's prev hash does not link to 12's: a chain break at 13, which a refusal does not touch.
    store.commit_batch(&k, &chain(12, 12, 1), NOW + 6).await?;
    store.commit_batch(&k, &chain(13, 13, 9), NOW + 6).await?;
    let (gaps, count) = (store.gaps(&k).await?, agent_row(store, &k).await?.gap_count);
    ensure!(
        gaps.iter()
            .any(|g| g.kind == GapKind::ChainBreak && g.first_seq == 13),
        "{gaps:?}"
    );
    store
        .record_refusal(&k, 13, code, "chain break", NOW + 7)
        .await?;
    ensure!(store.gaps(&k).await? == gaps);
    ensure!(agent_row(store, &k).await?.gap_count == count);
    // Another agent's gap at the same seq is its own.
    let other = key("acme", "agent-2");
    connected(store, &other).await?;
    store.commit_batch(&other, &chain(1, 1, 2), NOW).await?;
    store.commit_batch(&other, &chain(3, 3, 2), NOW).await?;
    store.record_refusal(&k, 2, code, "again", NOW + 8).await?;
    ensure!(store.gaps(&other).await?.len() == 1);
    ensure!(agent_row(store, &other).await?.gap_count == 1);
    assert_cursor_invariant(store, &k).await
}

async fn role_bindings_are_granted_once_revoked_and_replaced_from_config(
    db: &TestStore,
) -> Result<()> {
    use gait_store::{BindingScope, BindingSource, NewBinding, SubjectKind};
    let store = db.store();
    let acme: gait_store::Org = id("acme");
    let web: gait_store::Project = id("web");
    let prod: gait_store::Env = id("prod");
    let viewer = NewBinding {
        kind: SubjectKind::Group,
        subject: "sre".into(),
        role: "viewer".into(),
        scope: BindingScope::env(acme.clone(), web.clone(), prod.clone()),
    };
    let (first, created) = store
        .transaction(async |tx| tx.grant_binding(&viewer, "admin-token", NOW).await)
        .await?;
    ensure!(created && first.source == BindingSource::Api && first.created_by == "admin-token");
    ensure!(
        first.scope.to_string() == "acme/web/prod",
        "{}",
        first.scope
    );
    // Granting it again changes nothing.
    let (again, created) = store
        .transaction(async |tx| tx.grant_binding(&viewer, "someone-else", NOW + 1).await)
        .await?;
    ensure!(!created && again == first);

    // The config set is applied idempotently and leaves API bindings alone.
    let admins = NewBinding {
        kind: SubjectKind::User,
        subject: "alice@example.com".into(),
        role: "platform_admin".into(),
        scope: BindingScope::deployment(),
    };
    let authors = NewBinding {
        kind: SubjectKind::Group,
        subject: "web-team".into(),
        role: "policy_author".into(),
        scope: BindingScope::project(acme.clone(), web.clone()),
    };
    let applied = store
        .replace_config_bindings(&[admins.clone(), authors.clone(), viewer.clone()], NOW)
        .await?;
    ensure!(
        applied.added.len() == 2 && applied.removed.is_empty(),
        "{applied:?}"
    );
    let applied = store
        .replace_config_bindings(&[admins.clone(), authors.clone(), viewer.clone()], NOW)
        .await?;
    ensure!(
        applied.added.is_empty() && applied.removed.is_empty(),
        "{applied:?}"
    );
    let applied = store
        .replace_config_bindings(std::slice::from_ref(&admins), NOW)
        .await?;
    ensure!(
        applied.removed.len() == 1 && applied.removed[0].subject == "web-team",
        "{applied:?}"
    );
    let all = store.bindings().await?;
    ensure!(all.len() == 2, "{all:?}");
    ensure!(
        all.iter()
            .any(|b| b.source == BindingSource::Config && b.scope == BindingScope::deployment())
    );
    ensure!(
        all.iter()
            .any(|b| b.id == first.id && b.source == BindingSource::Api)
    );

    // Revoking returns the row once; an unknown id is None.
    let gone = store
        .transaction(async |tx| tx.revoke_binding(first.id).await)
        .await?;
    ensure!(gone.as_ref().map(|b| b.id) == Some(first.id));
    ensure!(
        store
            .transaction(async |tx| tx.revoke_binding(first.id).await)
            .await?
            .is_none()
    );
    ensure!(store.binding(first.id).await?.is_none());

    // Scopes nest: the deployment covers all, an org its projects, a project its envs, and not the reverse.
    let env = BindingScope::env(acme.clone(), web.clone(), prod.clone());
    let project = BindingScope::project(acme.clone(), web.clone());
    let org = BindingScope::org(acme.clone());
    ensure!(BindingScope::deployment().covers(&env) && org.covers(&env) && project.covers(&env));
    ensure!(
        !env.covers(&project) && !project.covers(&org) && !org.covers(&BindingScope::deployment())
    );
    ensure!(!BindingScope::org(id("other")).covers(&env));
    ensure!(BindingScope::from_parts(None, Some(web), None).is_none());

    // Bad input is refused before any write.
    let mut bad = viewer.clone();
    bad.subject = String::new();
    ensure!(matches!(
        store
            .transaction(async |tx| tx.grant_binding(&bad, "x", NOW).await)
            .await,
        Err(StoreError::InvalidInput { .. })
    ));
    bad.subject = "x\u{7}".into();
    ensure!(matches!(
        store.replace_config_bindings(&[bad], NOW).await,
        Err(StoreError::InvalidInput { .. })
    ));
    ensure!(store.bindings().await?.len() == 1);
    Ok(())
}

/// A record that arrives for a seq an earlier batch recorded as missing (the agent resent it after a batch in
/// flight was refused) is stored and taken out of the gap; a run of them splits or shrinks the gap.
async fn records_arriving_below_the_head_fill_their_missing_gap(db: &TestStore) -> Result<()> {
    let store = db.store();
    let k = key("acme", "agent-1");
    connected(store, &k).await?;
    store.commit_batch(&k, &chain(1, 1, 1), NOW).await?;
    let out = store.commit_batch(&k, &chain(4, 4, 1), NOW + 1).await?;
    ensure!(out.gaps == vec![(2, 3)], "{out:?}");
    let out = store.commit_batch(&k, &chain(3, 3, 1), NOW + 2).await?;
    ensure!(
        out.inserted == 1 && out.gaps.is_empty() && out.committed_seq == 4,
        "{out:?}"
    );
    let gaps = store.gaps(&k).await?;
    ensure!(
        gaps.len() == 1 && (gaps[0].first_seq, gaps[0].last_seq) == (2, 2),
        "{gaps:?}"
    );
    ensure!(agent_row(store, &k).await?.gap_count == 1);
    store.commit_batch(&k, &chain(2, 2, 1), NOW + 3).await?;
    ensure!(store.gaps(&k).await?.is_empty());
    ensure!(agent_row(store, &k).await?.gap_count == 0);
    // Gap 5..12, then 7..8 and 10 arrive in one batch: 5..6, 9 and 11..12 stay missing.
    store.commit_batch(&k, &chain(13, 13, 1), NOW + 4).await?;
    let mut late = chain(7, 8, 1);
    late.extend(chain(10, 10, 1));
    let out = store.commit_batch(&k, &late, NOW + 5).await?;
    ensure!(out.inserted == 3 && out.committed_seq == 13, "{out:?}");
    let spans: Vec<(u64, u64)> = store
        .gaps(&k)
        .await?
        .iter()
        .map(|g| (g.first_seq, g.last_seq))
        .collect();
    ensure!(spans == vec![(5, 6), (9, 9), (11, 12)], "{spans:?}");
    ensure!(agent_row(store, &k).await?.gap_count == 3);
    // A redelivery of stored seqs changes nothing.
    let out = store.commit_batch(&k, &late, NOW + 6).await?;
    ensure!(out.duplicates == 3 && out.inserted == 0, "{out:?}");
    ensure!(store.gaps(&k).await?.len() == 3);
    assert_cursor_invariant(store, &k).await
}

async fn wrong_prev_hash_is_recorded_as_a_chain_break(db: &TestStore) -> Result<()> {
    let store = db.store();
    let k = key("acme", "agent-1");
    connected(store, &k).await?;
    store.commit_batch(&k, &chain(1, 3, 1), NOW).await?;
    // Record 4 claims a predecessor that is not the stored record 3 (e.g. the agent's outbox was reset).
    let broken = vec![
        record(4, hash(3, 9), hash(4, 9)),
        record(5, hash(4, 9), hash(5, 9)),
    ];
    let out = store.commit_batch(&k, &broken, NOW + 1).await?;
    ensure!(
        out.chain_breaks == vec![4] && out.gaps.is_empty(),
        "{out:?}"
    );
    ensure!(out.inserted == 2 && out.committed_seq == 5 && out.committed_hash == hash(5, 9));
    let gaps = store.gaps(&k).await?;
    ensure!(
        gaps.len() == 1 && gaps[0].kind == GapKind::ChainBreak,
        "{gaps:?}"
    );
    ensure!(gaps[0].first_seq == 4 && gaps[0].last_seq == 4);

    // A break inside a batch is found too.
    let mut inner = chain(6, 8, 9);
    inner[2].prev_hash = [0x55; 32];
    let out = store.commit_batch(&k, &inner, NOW + 2).await?;
    ensure!(out.chain_breaks == vec![8], "{out:?}");
    ensure!(agent_row(store, &k).await?.gap_count == 2);

    // Genesis: record 1 must point at 32 zero bytes.
    let k2 = key("acme", "agent-2");
    connected(store, &k2).await?;
    let out = store
        .commit_batch(&k2, &[record(1, [7; 32], hash(1, 4))], NOW)
        .await?;
    ensure!(out.chain_breaks == vec![1], "{out:?}");
    Ok(())
}

async fn committed_seq_advances_only_over_stored_or_recorded_seqs(db: &TestStore) -> Result<()> {
    let store = db.store();
    let k = key("acme", "agent-1");
    connected(store, &k).await?;

    // Holes inside a batch, out-of-order input: the cursor only passes each hole by recording it.
    let mut batch = [chain(9, 9, 1), chain(1, 3, 1), chain(5, 6, 1)].concat();
    batch.swap(0, 2);
    let out = store.commit_batch(&k, &batch, NOW).await?;
    ensure!(out.gaps == vec![(4, 4), (7, 8)], "{out:?}");
    ensure!(out.committed_seq == 9 && out.committed_hash == hash(9, 1));
    assert_cursor_invariant(store, &k).await?;

    // Batches that add nothing above the cursor leave it where it is.
    let dup = store.commit_batch(&k, &chain(1, 2, 1), NOW + 1).await?;
    ensure!(dup.committed_seq == 9 && dup.committed_hash == hash(9, 1));
    let conflict = store
        .commit_batch(&k, &[record(3, hash(2, 1), [0xaa; 32])], NOW + 2)
        .await?;
    ensure!(conflict.committed_seq == 9 && conflict.conflicts == 1);
    // A late record filling a recorded gap is stored and does not move the cursor.
    let late = store.commit_batch(&k, &chain(4, 4, 1), NOW + 3).await?;
    ensure!(
        late.inserted == 1 && late.committed_seq == 9 && late.committed_hash == hash(9, 1),
        "{late:?}"
    );
    let empty = store.commit_batch(&k, &[], NOW + 4).await?;
    ensure!(empty.committed_seq == 9 && empty.inserted == 0);
    assert_cursor_invariant(store, &k).await?;
    let cursor = connected(store, &k).await?;
    ensure!(
        cursor
            == AgentCursor {
                committed_seq: 9,
                committed_hash: hash(9, 1)
            }
    );
    Ok(())
}

async fn bundle_epochs_must_increase_per_tenant(db: &TestStore) -> Result<()> {
    let store = db.store();
    let t = tenant("acme");
    ensure!(store.latest_bundle(&t).await?.is_none());
    ensure!(store.latest_epoch(&t).await?.is_none());
    store
        .publish_bundle(&t, 1, &digest(1), b"bundle-1", "alice", NOW)
        .await?;
    ensure!(store.latest_epoch(&t).await? == Some(1));
    match store
        .publish_bundle(&t, 1, &digest(9), b"other", "mallory", NOW + 1)
        .await
    {
        Err(StoreError::EpochConflict {
            epoch: 1,
            latest: 1,
            next: 2,
            ..
        }) => {}
        other => bail!("republishing epoch 1 gave {other:?}"),
    }
    store
        .publish_bundle(&t, 3, &digest(3), b"bundle-3", "bob", NOW + 2)
        .await?;
    match store
        .publish_bundle(&t, 2, &digest(2), b"late", "carol", NOW + 3)
        .await
    {
        Err(
            e @ StoreError::EpochConflict {
                latest: 3, next: 4, ..
            },
        ) => ensure!(!e.is_retryable()),
        other => bail!("publishing epoch 2 after 3 gave {other:?}"),
    }
    let latest = store.latest_bundle(&t).await?.context("latest bundle")?;
    ensure!(latest.epoch == 3 && latest.digest == digest(3) && latest.bytes == b"bundle-3");
    ensure!(latest.created_by == "bob" && latest.created_unix_ms == NOW + 2);

    // Epochs are per tenant: another env starts at 1.
    let staging = tenant_of("acme", "payments", "staging");
    store
        .publish_bundle(&staging, 1, &digest(1), b"s1", "alice", NOW)
        .await?;
    ensure!(store.latest_bundle(&staging).await?.map(|b| b.epoch) == Some(1));
    ensure!(store.latest_bundle(&t).await?.map(|b| b.epoch) == Some(3));
    Ok(())
}

async fn an_older_bundle_is_read_by_its_epoch(db: &TestStore) -> Result<()> {
    let store = db.store();
    let t = tenant("acme");
    for epoch in 1..=3u8 {
        store
            .publish_bundle(&t, epoch.into(), &digest(epoch), &[epoch], "alice", NOW)
            .await?;
    }
    let old = store.bundle_at_epoch(&t, 2).await?.context("epoch 2")?;
    ensure!(old.epoch == 2 && old.digest == digest(2) && old.bytes == [2]);
    ensure!(store.bundle_at_epoch(&t, 4).await?.is_none());
    ensure!(store.bundle_at_epoch(&tenant("other"), 2).await?.is_none());
    ensure!(store.bundle_at_epoch(&t, u64::MAX).await.is_err());
    Ok(())
}

async fn an_agent_known_only_from_a_file_gets_one_row_and_keeps_its_cursor(
    db: &TestStore,
) -> Result<()> {
    let store = db.store();
    let k = key("acme", "offline-1");
    let serial: CertSerial = id("0a1b2c");
    let ensure_row = async |store: &Store| -> Result<bool> {
        let mut tx = store.begin().await?;
        let created = tx
            .ensure_agent(&k, &serial, Some(NOW + 1000), "CN=ca", NOW - 10)
            .await?;
        tx.commit().await?;
        Ok(created)
    };
    ensure!(matches!(
        store
            .commit_batch(&k, &[record(1, hash(0, 1), hash(1, 1))], NOW)
            .await,
        Err(StoreError::UnknownAgent { .. })
    ));
    ensure!(ensure_row(store).await?, "the first call creates the row");
    let outcome = store
        .commit_batch(&k, &[record(1, hash(0, 1), hash(1, 1))], NOW)
        .await?;
    ensure!(outcome.inserted == 1 && outcome.committed_seq == 1);
    ensure!(!ensure_row(store).await?, "the second call changes nothing");
    // The agent's first hello sees the head the file moved.
    let cursor = store.agent_connected(&k, &hello("0a1b2c"), NOW + 5).await?;
    ensure!(cursor.committed_seq == 1 && cursor.committed_hash == hash(1, 1));
    Ok(())
}

async fn tenants_are_isolated(db: &TestStore) -> Result<()> {
    let store = db.store();
    let a = key("org-a", "agent-1");
    let b = key("org-b", "agent-1");
    let a_staging = AgentKey::new(tenant_of("org-a", "payments", "staging"), id("agent-1"));
    for k in [&a, &b, &a_staging] {
        connected(store, k).await?;
    }
    store.commit_batch(&a, &chain(1, 4, 1), NOW).await?;
    store.commit_batch(&b, &chain(1, 2, 2), NOW).await?;

    ensure!(store.count_records(&a).await? == 4);
    ensure!(store.count_records(&b).await? == 2);
    ensure!(store.count_records(&a_staging).await? == 0);
    ensure!(
        store
            .records(&b, 0, 100)
            .await?
            .iter()
            .all(|r| r.record_hash == hash(r.seq, 2))
    );
    ensure!(connected(store, &a_staging).await?.committed_seq == 0);

    let org_a = store
        .list_agents(&AgentFilter {
            project: None,
            env: None,
            ..AgentFilter::for_org(id("org-a"))
        })
        .await?;
    ensure!(org_a.len() == 2, "{org_a:?}");
    ensure!(org_a.iter().all(|r| r.tenant.org == "org-a"));
    let prod = AgentFilter {
        project: Some(id("payments")),
        env: Some(id("prod")),
        ..AgentFilter::for_org(id("org-a"))
    };
    let only_prod = store.list_agents(&prod).await?;
    ensure!(only_prod.len() == 1 && only_prod[0].committed_seq == 4);
    let org_b = store
        .list_agents(&AgentFilter {
            project: None,
            env: None,
            ..AgentFilter::for_org(id("org-b"))
        })
        .await?;
    ensure!(org_b.len() == 1 && org_b[0].committed_seq == 2);
    // Both backends order agents bytewise by (project, env, agent_id): `-` before `.` before letters.
    for agent in ["b-agent", "a.agent", "a-agent"] {
        connected(
            store,
            &AgentKey::new(tenant_of("org-d", "p", "e"), id(agent)),
        )
        .await?;
    }
    let ids: Vec<gait_store::AgentId> = store
        .list_agents(&AgentFilter {
            project: None,
            env: None,
            ..AgentFilter::for_org(id("org-d"))
        })
        .await?
        .into_iter()
        .map(|r| r.agent_id)
        .collect();
    ensure!(ids == ["a-agent", "a.agent", "b-agent"], "order {ids:?}");
    let none = store
        .list_agents(&AgentFilter {
            project: None,
            env: None,
            ..AgentFilter::for_org(id("org-c"))
        })
        .await?;
    ensure!(none.is_empty());

    // Gaps and bundles stay in their tenant too.
    store.commit_batch(&b, &chain(5, 5, 2), NOW).await?;
    ensure!(store.gaps(&a).await?.is_empty() && store.gaps(&b).await?.len() == 1);
    store
        .publish_bundle(&b.tenant, 1, &digest(1), b"b", "x", NOW)
        .await?;
    ensure!(store.latest_bundle(&a.tenant).await?.is_none());
    Ok(())
}

async fn revocations_are_normalised_and_idempotent(db: &TestStore) -> Result<()> {
    let store = db.store();
    ensure!(store.revoked_serials().await?.is_empty());
    let rev = Revocation {
        cert_serial: id("0A:BC:DE"),
        agent: key("acme", "agent-1"),
        reason: "key compromise".into(),
        revoked_by: "alice".into(),
    };
    store.revoke(&rev, NOW).await?;
    store
        .revoke(
            &Revocation {
                cert_serial: id("0abcde"),
                reason: "again".into(),
                ..rev.clone()
            },
            NOW + 1,
        )
        .await?;
    store
        .revoke(
            &Revocation {
                cert_serial: id("01"),
                ..rev.clone()
            },
            NOW,
        )
        .await?;
    ensure!(
        store.revoked_serials().await? == vec![id::<CertSerial>("01"), id::<CertSerial>("0abcde")]
    );
    // A non-hex serial cannot even be built: the store only ever sees canonical serials.
    ensure!("zz".parse::<CertSerial>().is_err());
    // The listing keeps the first record of each serial: agent, reason, operator and time.
    let listed = store.revocations().await?;
    let summary: Vec<_> = listed
        .iter()
        .map(|r| {
            (
                r.cert_serial.as_str().to_owned(),
                r.agent.to_string(),
                r.reason.as_str(),
                r.revoked_by.as_deref(),
                r.revoked_unix_ms,
            )
        })
        .collect();
    ensure!(
        summary
            == vec![
                (
                    "01".to_owned(),
                    rev.agent.to_string(),
                    "key compromise",
                    Some("alice"),
                    NOW
                ),
                (
                    "0abcde".to_owned(),
                    rev.agent.to_string(),
                    "key compromise",
                    Some("alice"),
                    NOW
                ),
            ],
        "{summary:?}"
    );
    // Who revoked is required.
    let anonymous = store
        .revoke(
            &Revocation {
                cert_serial: id("02"),
                revoked_by: " ".into(),
                ..rev.clone()
            },
            NOW,
        )
        .await;
    ensure!(
        matches!(&anonymous, Err(StoreError::InvalidInput { field, .. }) if field == "revocation.revoked_by"),
        "{anonymous:?}"
    );
    Ok(())
}

async fn agents_are_found_by_their_certificate_serial(db: &TestStore) -> Result<()> {
    let store = db.store();
    let (a, b) = (key("acme", "agent-a"), key("other", "agent-b"));
    store.agent_connected(&a, &hello("0a1b2c"), NOW).await?;
    store.agent_connected(&b, &hello("0d0e0f"), NOW).await?;
    let found = store.agents_with_cert_serial(&id("0A:1B:2C")).await?;
    ensure!(found.len() == 1, "found {found:?}");
    ensure!(found[0].tenant == a.tenant && found[0].agent_id == a.agent_id);
    ensure!(store.agents_with_cert_serial(&id("99")).await?.is_empty());
    // A rotated certificate: the agent is found under its new serial only.
    store.agent_connected(&a, &hello("77"), NOW + 1).await?;
    ensure!(
        store
            .agents_with_cert_serial(&id("0a1b2c"))
            .await?
            .is_empty()
    );
    ensure!(store.agents_with_cert_serial(&id("77")).await?.len() == 1);
    Ok(())
}

async fn record_pages_end_at_their_byte_budget(db: &TestStore) -> Result<()> {
    let store = db.store();
    let k = key("acme", "agent-1");
    connected(store, &k).await?;
    let mut batch = chain(1, 10, 1);
    for r in &mut batch {
        r.payload = format!("{{\"pad\":\"{}\"}}", "x".repeat(90)).into_bytes(); // 101 bytes each
    }
    store.commit_batch(&k, &batch, NOW).await?;
    let seqs = |page: &[gait_store::StoredRecord]| page.iter().map(|r| r.seq).collect::<Vec<_>>();

    // 350 bytes hold three records of 101; the fourth would pass the budget, so the page ends there.
    let (page, cut) = store.records_within(&k, 0, 100, 350).await?;
    ensure!(
        seqs(&page) == [1, 2, 3] && cut,
        "{:?} cut={cut}",
        seqs(&page)
    );
    // The count limit ends a page before the budget: not cut.
    let (page, cut) = store.records_within(&k, 3, 2, 10_000).await?;
    ensure!(seqs(&page) == [4, 5] && !cut, "{:?} cut={cut}", seqs(&page));
    // A record larger than the whole budget still comes, alone, so paging always advances.
    let (page, cut) = store.records_within(&k, 5, 100, 10).await?;
    ensure!(seqs(&page) == [6] && cut, "{:?} cut={cut}", seqs(&page));
    // The end of the stream: not cut.
    let (page, cut) = store.records_within(&k, 6, 100, 1 << 20).await?;
    ensure!(
        seqs(&page) == [7, 8, 9, 10] && !cut,
        "{:?} cut={cut}",
        seqs(&page)
    );
    Ok(())
}

async fn a_batch_of_5000_records_commits_in_one_call(db: &TestStore) -> Result<()> {
    let store = db.store();
    let k = key("acme", "agent-1");
    connected(store, &k).await?;
    let batch = chain(1, 5000, 5);
    let out = store.commit_batch(&k, &batch, NOW).await?;
    ensure!(
        out.inserted == 5000 && out.committed_seq == 5000 && out.committed_hash == hash(5000, 5),
        "{out:?}"
    );
    ensure!(out.gaps.is_empty() && out.chain_breaks.is_empty());
    ensure!(store.count_records(&k).await? == 5000);
    let mut after = 0;
    let mut seen = 0;
    loop {
        let page = store.records(&k, after, 1000).await?;
        let Some(last) = page.last() else { break };
        for r in &page {
            seen += 1;
            ensure!(
                r.seq == seen
                    && r.record_hash == hash(seen, 5)
                    && r.payload == batch[(seen - 1) as usize].payload
            );
        }
        after = last.seq;
    }
    ensure!(seen == 5000);
    let again = store.commit_batch(&k, &batch, NOW + 1).await?;
    ensure!(again.duplicates == 5000 && again.inserted == 0);
    Ok(())
}

async fn operations_on_an_unknown_agent_are_refused(db: &TestStore) -> Result<()> {
    let store = db.store();
    let k = key("acme", "ghost");
    match store.commit_batch(&k, &chain(1, 1, 1), NOW).await {
        Err(e @ StoreError::UnknownAgent { .. }) => ensure!(!e.is_retryable()),
        other => bail!("commit for an unknown agent gave {other:?}"),
    }
    ensure!(matches!(
        store.agent_seen(&k, NOW).await,
        Err(StoreError::UnknownAgent { .. })
    ));
    let report = BundleReportRow::Received(BundleRef {
        epoch: 1,
        digest: digest(1),
    });
    ensure!(matches!(
        store.record_bundle_report(&k, &report, NOW).await,
        Err(StoreError::UnknownAgent { .. })
    ));
    ensure!(store.count_records(&k).await? == 0);
    Ok(())
}

async fn invalid_input_is_refused_before_any_write(db: &TestStore) -> Result<()> {
    let store = db.store();
    let k = key("acme", "agent-1");
    connected(store, &k).await?;
    let mut batch = chain(1, 3, 1);
    batch[2].seq = u64::MAX;
    match store.commit_batch(&k, &batch, NOW).await {
        Err(e @ StoreError::InvalidRecord { index: 2, .. }) => ensure!(
            e.refusal_code() == Some((2, gait_wire::RefusalCode::RecordSeqInvalid)),
            "{e}"
        ),
        other => bail!("seq u64::MAX gave {other:?}"),
    }
    let mut zero = chain(1, 1, 1);
    zero[0].seq = 0;
    ensure!(matches!(
        store.commit_batch(&k, &zero, NOW).await,
        Err(StoreError::InvalidRecord { index: 0, .. })
    ));
    // The wire kind rule (64 bytes), not the store's old label limit, decides.
    let mut long_kind = chain(1, 1, 1);
    long_kind[0].kind = "k".repeat(gait_wire::limits::MAX_KIND_BYTES + 1);
    ensure!(matches!(
        store.commit_batch(&k, &long_kind, NOW).await,
        Err(StoreError::InvalidRecord { index: 0, .. })
    ));
    let mut bad_digest = chain(1, 1, 1);
    bad_digest[0].bundle_digest = Some("sha256:abc".into());
    // The store's own rules name the record too, and map to the store's refusal code.
    match store.commit_batch(&k, &bad_digest, NOW).await {
        Err(
            e @ StoreError::InvalidRecordField {
                index: 0,
                seq: 1,
                field: "bundle_digest",
                ..
            },
        ) => {
            ensure!(
                e.refusal_code() == Some((0, gait_wire::RefusalCode::RecordStoreRefused)),
                "{e}"
            );
            ensure!(
                e.to_string()
                    .starts_with("invalid records[0].bundle_digest (seq 1): "),
                "{e}"
            );
        }
        other => bail!("a bad bundle digest gave {other:?}"),
    }
    ensure!(
        store.count_records(&k).await? == 0,
        "a refused batch wrote records"
    );

    // A tenant with an empty org cannot be built at all: the identifier rule holds before the store.
    ensure!(Tenant::from_parts("", "p", "e").is_err());
    ensure!(matches!(
        store
            .publish_bundle(&tenant("acme"), 0, &digest(1), b"x", "a", NOW)
            .await,
        Err(StoreError::InvalidInput { .. })
    ));
    ensure!(matches!(
        store
            .publish_bundle(&tenant("acme"), u64::MAX, &digest(1), b"x", "a", NOW)
            .await,
        Err(StoreError::InvalidInput { .. })
    ));
    ensure!(store.latest_bundle(&tenant("acme")).await?.is_none());
    Ok(())
}

async fn bundle_reports_update_the_agent_row(db: &TestStore) -> Result<()> {
    let store = db.store();
    let k = key("acme", "agent-1");
    connected(store, &k).await?;
    store
        .record_bundle_report(
            &k,
            &BundleReportRow::Received(BundleRef {
                epoch: 5,
                digest: digest(5),
            }),
            NOW + 1,
        )
        .await?;
    let activated = ActiveBundle {
        epoch: 5,
        digest: digest(5),
        since_unix_ms: NOW + 2,
    };
    store
        .record_bundle_report(&k, &BundleReportRow::Activated(activated.clone()), NOW + 2)
        .await?;
    let long = "é".repeat(2000);
    let refused = BundleReportRow::Refused {
        epoch: 6,
        code: "rollback".into(),
        message: long,
    };
    store.record_bundle_report(&k, &refused, NOW + 3).await?;

    let row = agent_row(store, &k).await?;
    ensure!(
        row.received_bundle
            == Some(BundleRef {
                epoch: 5,
                digest: digest(5)
            })
    );
    ensure!(row.active_bundle == Some(activated));
    let refusal = row.last_refusal.clone().context("refusal stored")?;
    ensure!(refusal.code == "rollback" && refusal.epoch == 6 && refusal.at_unix_ms == NOW + 3);
    ensure!(
        refusal.message.len() <= gait_store::MAX_REFUSAL_MESSAGE_BYTES
            && refusal.message.starts_with('é')
    );
    ensure!(row.last_seen_unix_ms == NOW + 3);
    // Reports arrive on separate streams: an older one after a newer one changes nothing and is no error.
    let stale = ActiveBundle {
        epoch: 4,
        digest: digest(4),
        since_unix_ms: NOW + 1,
    };
    store
        .record_bundle_report(&k, &BundleReportRow::Activated(stale), NOW + 4)
        .await?;
    store
        .record_bundle_report(
            &k,
            &BundleReportRow::Received(BundleRef {
                epoch: 4,
                digest: digest(4),
            }),
            NOW + 4,
        )
        .await?;
    let row = agent_row(store, &k).await?;
    ensure!(
        row.active_bundle.as_ref().map(|b| b.epoch) == Some(5),
        "{row:?}"
    );
    ensure!(
        row.received_bundle.as_ref().map(|b| b.epoch) == Some(5),
        "{row:?}"
    );
    let json = serde_json::to_value(&row)?;
    ensure!(
        json["org"] == "acme" && json["committed_hash"] == hex::encode([0u8; 32]),
        "{json}"
    );
    Ok(())
}

async fn concurrent_redelivery_of_one_batch_stores_it_once(db: &TestStore) -> Result<()> {
    let store = db.store();
    let k = key("acme", "agent-1");
    connected(store, &k).await?;
    // Two connections commit the same batch at once (a retry racing the original); repeated to give a missing
    // lock many chances to show.
    for round in 0..8u64 {
        let batch = chain(round * 100 + 1, round * 100 + 100, 6);
        let (x, y) = tokio::join!(
            store.commit_batch(&k, &batch, NOW),
            store.commit_batch(&k, &batch, NOW)
        );
        let (x, y) = (x?, y?);
        ensure!(
            x.inserted + y.inserted == 100 && x.duplicates + y.duplicates == 100,
            "{x:?} {y:?}"
        );
        ensure!(x.conflicts + y.conflicts == 0);
    }
    ensure!(store.count_records(&k).await? == 800);
    ensure!(store.gaps(&k).await?.is_empty());
    Ok(())
}

async fn concurrent_publishes_of_one_epoch_admit_exactly_one(db: &TestStore) -> Result<()> {
    let store = db.store();
    let t = tenant("acme");
    let (d1, d2) = (digest(1), digest(2));
    let (x, y) = tokio::join!(
        store.publish_bundle(&t, 1, &d1, b"x", "x", NOW),
        store.publish_bundle(&t, 1, &d2, b"y", "y", NOW)
    );
    let conflicts = [&x, &y]
        .iter()
        .filter(|r| matches!(r, Err(StoreError::EpochConflict { .. })))
        .count();
    ensure!(conflicts == 1 && (x.is_ok() || y.is_ok()), "{x:?} {y:?}");
    Ok(())
}

#[tokio::test]
async fn unsupported_and_in_memory_urls_are_refused_without_echoing_secrets() {
    match Store::connect("mysql://root:hunter2@db/gait").await {
        Err(e @ StoreError::UnsupportedUrl { .. }) => {
            assert!(!e.to_string().contains("hunter2"), "{e}");
            assert!(!e.is_retryable());
        }
        other => panic!("mysql url gave {other:?}"),
    }
    assert!(matches!(
        Store::connect("sqlite::memory:").await,
        Err(StoreError::InvalidInput { .. })
    ));
}

#[tokio::test]
async fn an_unreachable_postgres_server_is_a_retryable_connect_error() {
    match Store::connect("postgres://postgres@127.0.0.1:1/gait").await {
        Err(e @ StoreError::Connect { .. }) => assert!(e.is_retryable(), "{e}"),
        other => panic!("unreachable server gave {other:?}"),
    }
}

#[tokio::test]
async fn open_sqlite_file_creates_the_directory_and_reopens_the_same_data() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("data/store/aggregator.db");
    let k = key("acme", "agent-1");
    {
        let store = Store::open_sqlite_file(&path).await?;
        ensure!(store.backend() == "sqlite");
        connected(&store, &k).await?;
        store.commit_batch(&k, &chain(1, 2, 1), NOW).await?;
        store.close().await;
    }
    let reopened = Store::open_sqlite_file(&path).await?;
    ensure!(reopened.count_records(&k).await? == 2);
    let cursor = connected(&reopened, &k).await?;
    ensure!(cursor.committed_seq == 2 && cursor.committed_hash == hash(2, 1));
    Ok(())
}

async fn hellos_and_last_seen_are_written_in_batches(db: &TestStore) -> Result<()> {
    let store = db.store();
    let (a, b, c) = (
        key("acme", "agent-a"),
        key("acme", "agent-b"),
        key("acme", "agent-c"),
    );
    connected(store, &a).await?;
    store.commit_batch(&a, &chain(1, 4, 7), NOW).await?;

    let mut bad = hello("0c");
    bad.agent_version = "x".repeat(100_000);
    let (ha, hb, hc) = (hello("0a"), bad, hello("0c"));
    let results = store
        .agents_connected(&[(&a, &ha), (&b, &hb), (&c, &hc)], NOW + 50)
        .await?;
    ensure!(results.len() == 3, "one result per hello: {results:?}");
    match &results[0] {
        Ok(cursor) => ensure!(
            *cursor
                == AgentCursor {
                    committed_seq: 4,
                    committed_hash: hash(4, 7)
                },
            "agent a resumes after its committed records: {cursor:?}"
        ),
        Err(e) => bail!("agent a refused: {e}"),
    }
    ensure!(
        matches!(&results[1], Err(StoreError::InvalidInput { field, .. }) if field == "hello.agent_version"),
        "the invalid hello gets its own error: {:?}",
        results[1]
    );
    ensure!(
        matches!(
            results[2],
            Ok(AgentCursor {
                committed_seq: 0,
                ..
            })
        ),
        "agent c is new: {:?}",
        results[2]
    );
    ensure!(agent_row(store, &c).await?.last_seen_unix_ms == NOW + 50);
    ensure!(
        agent_row(store, &b).await.is_err(),
        "nothing written for the invalid hello"
    );

    // last_seen moves forward for the known agents, never back, and unknown agents are skipped.
    let found = store.agents_seen(&[&a, &b, &c], NOW + 900).await?;
    ensure!(found == 2, "two known agents, got {found}");
    store.agents_seen(&[&a], NOW + 100).await?;
    ensure!(agent_row(store, &a).await?.last_seen_unix_ms == NOW + 900);
    ensure!(store.agents_seen(&[], NOW).await? == 0);
    Ok(())
}

async fn agents_are_listed_in_pages_that_cover_each_agent_once(db: &TestStore) -> Result<()> {
    let store = db.store();
    let mut expected = Vec::new();
    for (project, env) in [
        ("billing", "prod"),
        ("payments", "dev"),
        ("payments", "prod"),
    ] {
        for i in 0..7 {
            let k = AgentKey {
                tenant: tenant_of("pager", project, env),
                agent_id: id(&format!("agent-{i:02}")),
            };
            store.agent_connected(&k, &hello("0a"), NOW).await?;
            expected.push((
                k.tenant.project.clone(),
                k.tenant.env.clone(),
                k.agent_id.clone(),
            ));
        }
    }
    // Another org's agents never appear.
    store
        .agent_connected(&key("other", "agent-00"), &hello("0b"), NOW)
        .await?;
    let mut seen = Vec::new();
    let mut after = None;
    let mut pages = 0;
    loop {
        let page = store
            .list_agents(&AgentFilter {
                after: after.clone(),
                limit: Some(5),
                ..AgentFilter::for_org(id("pager"))
            })
            .await?;
        pages += 1;
        ensure!(page.len() <= 5, "page of {}", page.len());
        let Some(last) = page.last() else { break };
        after = Some(last.position());
        seen.extend(page.iter().map(|a| {
            (
                a.tenant.project.clone(),
                a.tenant.env.clone(),
                a.agent_id.clone(),
            )
        }));
        ensure!(pages < 20, "paging does not end");
    }
    ensure!(seen == expected, "pages: {seen:?}");
    ensure!(
        pages == 6,
        "21 agents in pages of 5 plus the empty one: {pages}"
    );
    // Narrowed to one environment, the cursor still works.
    let prod = store
        .list_agents(&AgentFilter {
            org: id("pager"),
            project: Some(id("payments")),
            env: Some(id("prod")),
            after: Some(gait_store::AgentPosition {
                project: id("payments"),
                env: id("prod"),
                agent_id: id("agent-03"),
            }),
            limit: Some(100),
        })
        .await?;
    ensure!(
        prod.iter().map(|a| a.agent_id.as_str()).collect::<Vec<_>>()
            == ["agent-04", "agent-05", "agent-06"]
    );
    Ok(())
}

/// A transaction future must be `Send`, or handlers could not run one on a multi-threaded runtime.
#[tokio::test]
async fn a_transaction_with_borrows_runs_in_a_spawned_task() -> Result<()> {
    let db = gait_store::testing::sqlite_temp().await?;
    let store = db.store().clone();
    let task = tokio::spawn(async move {
        let rev = Revocation {
            cert_serial: id("0a"),
            agent: key("acme", "a1"),
            reason: "test".into(),
            revoked_by: "test".into(),
        };
        store
            .transaction(async |tx| {
                tx.revoke(&rev, 1).await?;
                tx.revoked_serials().await
            })
            .await
    });
    assert_eq!(task.await??, vec![id::<CertSerial>("0a")]);
    Ok(())
}

fn revocation(serial: &str) -> Revocation {
    Revocation {
        cert_serial: id(serial),
        agent: key("acme", "agent-1"),
        reason: "key compromise".into(),
        revoked_by: "test".into(),
    }
}

/// The body's own error, to tell it apart from a store error.
#[derive(Debug)]
enum BodyError {
    Audit,
    Store(StoreError),
}

impl From<StoreError> for BodyError {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

async fn a_transaction_body_that_fails_leaves_nothing(db: &TestStore) -> Result<()> {
    let store = db.store();
    let k = key("acme", "agent-1");
    connected(store, &k).await?;
    // The body writes to three domains, reads its own writes, then fails after the last write.
    let outcome = store
        .transaction(async |tx| {
            tx.commit_batch(&k, &chain(1, 3, 1), NOW).await?;
            tx.revoke(&revocation("0a"), NOW).await?;
            tx.publish_bundle(&k.tenant, 1, &digest(1), b"bundle", "ops", NOW)
                .await?;
            let seen = (
                tx.count_records(&k).await?,
                tx.revoked_serials().await?,
                tx.latest_bundle(&k.tenant).await?.map(|b| b.epoch),
            );
            if seen != (3, vec![id::<CertSerial>("0a")], Some(1)) {
                return Ok(seen);
            }
            Err(BodyError::Audit)
        })
        .await;
    match outcome {
        Err(BodyError::Audit) => {}
        other => bail!("the body should have seen its writes and failed, got {other:?}"),
    }
    ensure!(
        store.count_records(&k).await? == 0,
        "records survived the rollback"
    );
    ensure!(
        store.revoked_serials().await?.is_empty(),
        "revocation survived the rollback"
    );
    ensure!(
        store.latest_bundle(&k.tenant).await?.is_none(),
        "bundle survived the rollback"
    );
    ensure!(
        agent_row(store, &k).await?.committed_seq == 0,
        "cursor moved in a rolled-back batch"
    );

    // A store error inside the body (here an epoch conflict after a revocation) rolls the revocation back too.
    store
        .publish_bundle(&k.tenant, 5, &digest(5), b"five", "ops", NOW)
        .await?;
    let outcome = store
        .transaction(async |tx| {
            tx.revoke(&revocation("0b"), NOW).await?;
            tx.publish_bundle(&k.tenant, 5, &digest(6), b"again", "ops", NOW)
                .await?;
            Ok::<_, BodyError>(())
        })
        .await;
    match outcome {
        Err(BodyError::Store(StoreError::EpochConflict { next: 6, .. })) => {}
        other => bail!("a republished epoch should fail the transaction, got {other:?}"),
    }
    ensure!(
        store.revoked_serials().await?.is_empty(),
        "revocation survived a failed publish"
    );
    Ok(())
}

async fn a_committed_transaction_keeps_every_write(db: &TestStore) -> Result<()> {
    let store = db.store();
    let k = key("acme", "agent-1");
    let epoch = store
        .transaction(async |tx| {
            let cursor = tx.agent_connected(&k, &hello("0a"), NOW).await?;
            ensure!(cursor.committed_seq == 0);
            let outcome = tx.commit_batch(&k, &chain(1, 4, 1), NOW).await?;
            ensure!(outcome.inserted == 4);
            tx.revoke(&revocation("0a"), NOW).await?;
            tx.publish_bundle(&k.tenant, 2, &digest(2), b"bundle", "ops", NOW)
                .await?;
            Ok(2)
        })
        .await?;
    ensure!(epoch == 2);
    ensure!(store.count_records(&k).await? == 4);
    ensure!(agent_row(store, &k).await?.committed_seq == 4);
    ensure!(store.revoked_serials().await? == vec![id::<CertSerial>("0a")]);
    ensure!(store.latest_bundle(&k.tenant).await?.map(|b| b.epoch) == Some(2));
    assert_cursor_invariant(store, &k).await?;

    // The same with an explicit begin and commit.
    let mut tx = store.begin().await?;
    tx.commit_batch(&k, &chain(5, 6, 1), NOW).await?;
    tx.revoke(&revocation("0b"), NOW).await?;
    tx.commit().await?;
    ensure!(store.count_records(&k).await? == 6);
    ensure!(store.revoked_serials().await? == vec![id::<CertSerial>("0a"), id::<CertSerial>("0b")]);
    Ok(())
}

async fn a_dropped_transaction_is_rolled_back(db: &TestStore) -> Result<()> {
    let store = db.store();
    let k = key("acme", "agent-1");
    connected(store, &k).await?;
    {
        let mut tx = store.begin().await?;
        tx.commit_batch(&k, &chain(1, 2, 1), NOW).await?;
        tx.revoke(&revocation("0a"), NOW).await?;
    }
    // The next write must not wait on (or see) the dropped transaction.
    let outcome = store.commit_batch(&k, &chain(1, 2, 1), NOW).await?;
    ensure!(outcome.inserted == 2 && outcome.duplicates == 0);
    ensure!(store.revoked_serials().await?.is_empty());

    let mut tx = store.begin().await?;
    tx.revoke(&revocation("0c"), NOW).await?;
    tx.rollback().await?;
    ensure!(store.revoked_serials().await?.is_empty());
    Ok(())
}
