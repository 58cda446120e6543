//! The evidence index on both backends: entries are written with the records they index, in the batch's
//! transaction, only for records the batch inserted (a redelivered batch doubles nothing, a conflicting record
//! indexes nothing); every filter narrows, tenancy is kept, and keyset pages cover the index exactly once.
#![allow(clippy::disallowed_methods)] // tests read the clock

use anyhow::{Result, ensure};
use gait_store::testing::TestStore;
use gait_store::{
    AgentKey, EvidenceClass, EvidenceFilter, IndexFields, NewIndexEntry, NewRecord, Store, Tenant,
};

const NOW: i64 = 1_764_000_000_000;

fn tenant(org: &str, env: &str) -> Tenant {
    Tenant::from_parts(org, "web", env).expect("test tenant")
}

fn key(org: &str, env: &str, agent: &str) -> AgentKey {
    AgentKey::new(tenant(org, env), agent.parse().expect("agent id"))
}

fn hash(seq: u64, salt: u8) -> [u8; 32] {
    if seq == 0 {
        return [0; 32];
    }
    let mut h = [salt; 32];
    h[..8].copy_from_slice(&seq.to_be_bytes());
    h
}

fn record(seq: u64, salt: u8, kind: &str) -> NewRecord {
    NewRecord {
        seq,
        prev_hash: hash(seq - 1, salt),
        hash: hash(seq, salt),
        class: "decision".into(),
        kind: kind.into(),
        created_unix_ms: NOW - 10,
        bundle_epoch: None,
        bundle_digest: None,
        bundle_since_ms: None,
        payload: b"{}".to_vec(),
    }
}

fn decision(seq: u64, verdict: &str, policy: u8) -> NewIndexEntry {
    NewIndexEntry {
        seq,
        class: EvidenceClass::Decision,
        fields: IndexFields {
            verdict: Some(verdict.into()),
            policy_verdict: Some(verdict.into()),
            policy_digest: Some(hex::encode([policy; 32])),
            stage: Some("enforce".into()),
            tool_name: Some("fs.read".into()),
            would_have_blocked: Some(false),
            ..IndexFields::default()
        },
    }
}

fn runpack(seq: u64, run_id: &str, sha: u8) -> NewIndexEntry {
    NewIndexEntry {
        seq,
        class: EvidenceClass::Artifact,
        fields: IndexFields {
            artifact_kind: Some("runpack".into()),
            sha256: Some(hex::encode([sha; 32])),
            size_bytes: Some(4096),
            file_name: Some(format!("runpack_{run_id}.zip")),
            run_ids: vec![run_id.into(), format!("{run_id}-replay")],
            ..IndexFields::default()
        },
    }
}

async fn connected(store: &Store, k: &AgentKey) -> Result<()> {
    let hello = gait_store::AgentHello {
        cert_serial: "0a1b2c".parse()?,
        cert_not_after_unix_ms: NOW + 86_400_000,
        cert_issuer: String::new(),
        remote_addr: "10.0.0.7:4433".into(),
        agent_version: "0.1.0".into(),
        active_bundle: None,
        received_bundle: None,
        outbox_depth: 0,
        shed_total: 0,
    };
    store.agent_connected(k, &hello, NOW).await?;
    Ok(())
}

async fn all(store: &Store, filter: EvidenceFilter) -> Result<Vec<(u64, String)>> {
    Ok(store
        .evidence(&filter)
        .await?
        .into_iter()
        .map(|r| (r.seq, r.agent_id.to_string()))
        .collect())
}

gait_store::store_tests!(
    index_entries_commit_with_their_records_and_a_retry_doubles_nothing,
    only_inserted_records_are_indexed,
    filters_narrow_and_tenancy_is_kept,
    keyset_pages_cover_the_index_once_newest_first,
);

async fn index_entries_commit_with_their_records_and_a_retry_doubles_nothing(
    db: &TestStore,
) -> Result<()> {
    let store = db.store();
    let k = key("acme", "prod", "agent-1");
    connected(store, &k).await?;
    let records = vec![
        record(1, 1, "gate.decision"),
        record(2, 1, "artifact.runpack"),
        record(3, 1, "producer.own"),
    ];
    let index = vec![decision(1, "block", 7), runpack(2, "run_1", 9)];
    let out = store
        .commit_batch_indexed(&k, &records, &index, NOW)
        .await?;
    ensure!(out.inserted == 3, "{out:?}");
    // A transaction that commits the batch and then fails commits neither records nor entries.
    let k2 = key("acme", "prod", "agent-2");
    connected(store, &k2).await?;
    let failed: Result<(), gait_store::StoreError> = store
        .transaction(async |tx| {
            tx.commit_batch_indexed(
                &k2,
                &[record(1, 2, "gate.decision")],
                &[decision(1, "allow", 7)],
                NOW,
            )
            .await?;
            Err(gait_store::StoreError::UnknownAgent {
                agent: "forced rollback".into(),
            })
        })
        .await;
    ensure!(failed.is_err());
    ensure!(store.count_records(&k2).await? == 0);

    let filter = EvidenceFilter::org("acme".parse()?, 100);
    let rows = store.evidence(&filter).await?;
    ensure!(rows.len() == 2, "{rows:?}");
    let artifact = &rows[0];
    ensure!(
        artifact.seq == 2
            && artifact.kind == "artifact.runpack"
            && artifact.class == EvidenceClass::Artifact
            && artifact.fields.run_ids == vec!["run_1".to_owned(), "run_1-replay".into()]
            && artifact.fields.size_bytes == Some(4096)
            && artifact.received_unix_ms == NOW
            && artifact.created_unix_ms == NOW - 10,
        "{artifact:?}"
    );
    // An artifact row carries its record's payload (the projection), joined from the records it indexes.
    ensure!(
        artifact.artifact.as_ref().map(|p| p.get()) == Some("{}"),
        "{artifact:?}"
    );
    let decided = &rows[1];
    ensure!(
        decided.seq == 1
            && decided.fields.verdict.as_deref() == Some("block")
            && decided.fields.would_have_blocked == Some(false)
            && decided.artifact.is_none(),
        "{decided:?}"
    );

    // The agent resends the same batch (its ack was lost): duplicates, nothing indexed twice.
    let out = store
        .commit_batch_indexed(&k, &records, &index, NOW + 5)
        .await?;
    ensure!(out.inserted == 0 && out.duplicates == 3, "{out:?}");
    ensure!(store.evidence(&filter).await?.len() == 2);
    let by_run = EvidenceFilter {
        run_id: Some("run_1-replay".into()),
        ..filter.clone()
    };
    ensure!(all(store, by_run).await? == vec![(2, "agent-1".into())]);
    Ok(())
}

async fn only_inserted_records_are_indexed(db: &TestStore) -> Result<()> {
    let store = db.store();
    let k = key("acme", "prod", "agent-1");
    connected(store, &k).await?;
    store
        .commit_batch_indexed(
            &k,
            &[record(1, 1, "gate.decision")],
            &[decision(1, "allow", 1)],
            NOW,
        )
        .await?;
    // Seq 1 again with another hash (a conflict: the stored record is kept, and its entry); seq 2 carries no
    // entry (an unparsed payload); an entry for seq 9, which is not in the batch, is ignored.
    let mut other = record(1, 5, "gate.decision");
    other.prev_hash = [0; 32];
    let out = store
        .commit_batch_indexed(
            &k,
            &[other, record(2, 1, "gate.decision")],
            &[decision(1, "block", 2), decision(9, "block", 2)],
            NOW + 1,
        )
        .await?;
    ensure!(out.conflicts == 1 && out.inserted == 1, "{out:?}");
    let rows = store
        .evidence(&EvidenceFilter::org("acme".parse()?, 100))
        .await?;
    ensure!(rows.len() == 1, "{rows:?}");
    ensure!(rows[0].fields.verdict.as_deref() == Some("allow"));
    // Plain commit_batch indexes nothing.
    store
        .commit_batch(&k, &[record(3, 1, "gate.decision")], NOW + 2)
        .await?;
    ensure!(
        store
            .evidence(&EvidenceFilter::org("acme".parse()?, 100))
            .await?
            .len()
            == 1
    );
    Ok(())
}

async fn filters_narrow_and_tenancy_is_kept(db: &TestStore) -> Result<()> {
    let store = db.store();
    let prod = key("acme", "prod", "agent-1");
    let dev = key("acme", "dev", "agent-2");
    let other_org = key("globex", "prod", "agent-1");
    for k in [&prod, &dev, &other_org] {
        connected(store, k).await?;
    }
    store
        .commit_batch_indexed(
            &prod,
            &[
                record(1, 1, "gate.decision"),
                record(2, 1, "gate.decision"),
                record(3, 1, "artifact.runpack"),
            ],
            &[
                decision(1, "block", 7),
                decision(2, "allow", 8),
                runpack(3, "run_a", 1),
            ],
            NOW,
        )
        .await?;
    store
        .commit_batch_indexed(
            &dev,
            &[record(1, 2, "gate.decision")],
            &[decision(1, "block", 7)],
            NOW + 1000,
        )
        .await?;
    store
        .commit_batch_indexed(
            &other_org,
            &[record(1, 3, "artifact.runpack")],
            &[runpack(1, "run_a", 1)],
            NOW,
        )
        .await?;

    let org: gait_store::Org = "acme".parse()?;
    let base = EvidenceFilter::org(org.clone(), 100);
    let agent1 = "agent-1".to_owned();
    let agent2 = "agent-2".to_owned();
    ensure!(all(store, base.clone()).await?.len() == 4);
    let env_only = EvidenceFilter::tenant(&tenant("acme", "dev"), 100);
    ensure!(all(store, env_only).await? == vec![(1, agent2.clone())]);
    let block = EvidenceFilter {
        verdict: Some("block".into()),
        ..base.clone()
    };
    ensure!(all(store, block).await? == vec![(1, agent2.clone()), (1, agent1.clone())]);
    let by_policy = EvidenceFilter {
        policy_digest: Some(hex::encode([8; 32])),
        ..base.clone()
    };
    ensure!(all(store, by_policy).await? == vec![(2, agent1.clone())]);
    let by_sha = EvidenceFilter {
        sha256: Some(hex::encode([1; 32])),
        ..base.clone()
    };
    // The other org's artifact with the same digest stays out.
    ensure!(all(store, by_sha).await? == vec![(3, agent1.clone())]);
    let by_run = EvidenceFilter {
        run_id: Some("run_a".into()),
        class: Some(EvidenceClass::Artifact),
        ..base.clone()
    };
    ensure!(all(store, by_run).await? == vec![(3, agent1.clone())]);
    let by_kind = EvidenceFilter {
        kind: Some("gate.decision".into()),
        stage: Some("enforce".into()),
        agent_id: Some("agent-1".parse()?),
        ..base.clone()
    };
    ensure!(all(store, by_kind).await? == vec![(2, agent1.clone()), (1, agent1.clone())]);
    let window = EvidenceFilter {
        received_from_ms: Some(NOW + 1),
        received_to_ms: Some(NOW + 1001),
        ..base.clone()
    };
    ensure!(all(store, window).await? == vec![(1, agent2.clone())]);
    let empty_window = EvidenceFilter {
        received_from_ms: Some(NOW),
        received_to_ms: Some(NOW),
        ..base.clone()
    };
    ensure!(all(store, empty_window).await?.is_empty());
    let bad = EvidenceFilter {
        limit: gait_store::MAX_EVIDENCE_PAGE + 1,
        ..base
    };
    ensure!(store.evidence(&bad).await.is_err());
    Ok(())
}

async fn keyset_pages_cover_the_index_once_newest_first(db: &TestStore) -> Result<()> {
    let store = db.store();
    let k = key("acme", "prod", "agent-1");
    connected(store, &k).await?;
    // 150 decisions in three batches: more than one insert chunk per batch.
    for (first, last) in [(1, 70), (71, 140), (141, 150)] {
        let records: Vec<NewRecord> = (first..=last)
            .map(|s| record(s, 1, "gate.decision"))
            .collect();
        let index: Vec<NewIndexEntry> = (first..=last).map(|s| decision(s, "allow", 1)).collect();
        let out = store
            .commit_batch_indexed(&k, &records, &index, NOW + i64::try_from(first)?)
            .await?;
        ensure!(out.inserted == last - first + 1, "{out:?}");
    }
    let mut seen = Vec::new();
    let mut filter = EvidenceFilter::org("acme".parse()?, 40);
    loop {
        let page = store.evidence(&filter).await?;
        let Some(last) = page.last() else { break };
        filter.before_id = Some(last.id);
        seen.extend(page.iter().map(|r| r.seq));
    }
    let expected: Vec<u64> = (1..=150).rev().collect();
    ensure!(seen == expected, "{seen:?}");
    Ok(())
}
