//! Replay corpus and rollout decision statistics on both backends: the corpus walk reads only the org's
//! captured decisions up to its pin, one group per intent digest in the order of its first decision, with
//! the payload of that first decision only; the decision statistics count each definition over one
//! environment's window.
#![allow(clippy::disallowed_methods)] // tests read the clock

use std::collections::BTreeMap;

use anyhow::{Result, ensure};
use gait_store::testing::TestStore;
use gait_store::{
    AgentKey, CorpusScope, DecisionStats, DecisionStatsQuery, EvidenceClass, IndexFields,
    NewIndexEntry, NewRecord, Shard, Store, Tenant,
};

const NOW: i64 = 1_764_000_000_000;

fn tenant(org: &str, env: &str) -> Tenant {
    Tenant::from_parts(org, "web", env).expect("test tenant")
}

fn key(org: &str, env: &str, agent: &str) -> AgentKey {
    AgentKey::new(tenant(org, env), agent.parse().expect("agent id"))
}

fn hash(seq: u64) -> [u8; 32] {
    if seq == 0 {
        return [0; 32];
    }
    let mut h = [1; 32];
    h[..8].copy_from_slice(&seq.to_be_bytes());
    h
}

fn record(seq: u64, payload: String) -> NewRecord {
    NewRecord {
        seq,
        prev_hash: hash(seq - 1),
        hash: hash(seq),
        class: "decision".into(),
        kind: "gate.decision".into(),
        created_unix_ms: NOW - 10,
        bundle_epoch: None,
        bundle_digest: None,
        bundle_since_ms: None,
        payload: payload.into_bytes(),
    }
}

fn entry(seq: u64, fields: IndexFields) -> NewIndexEntry {
    NewIndexEntry {
        seq,
        class: EvidenceClass::Decision,
        fields,
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

/// `n` captured decisions of `k` over intents `seq % distinct`, plus one reference-mode decision.
async fn captured(store: &Store, k: &AgentKey, n: u64, distinct: u64) -> Result<()> {
    connected(store, k).await?;
    let mut records = Vec::new();
    let mut index = Vec::new();
    for seq in 1..=n {
        let digest = hex::encode([u8::try_from(seq % distinct)?; 32]);
        records.push(record(
            seq,
            format!(r#"{{"intent":"{digest}","seq":{seq}}}"#),
        ));
        index.push(entry(
            seq,
            IndexFields {
                verdict: Some("allow".into()),
                intent_digest: Some(digest),
                captured: true,
                ..IndexFields::default()
            },
        ));
    }
    records.push(record(n + 1, "{}".into()));
    index.push(entry(
        n + 1,
        IndexFields {
            verdict: Some("allow".into()),
            intent_digest: Some(hex::encode([200; 32])),
            ..IndexFields::default()
        },
    ));
    store.commit_batch_indexed(k, &records, &index, NOW).await?;
    Ok(())
}

gait_store::store_tests!(
    the_corpus_is_the_orgs_captured_decisions_up_to_the_pin_first_payload_per_intent,
    decision_stats_count_each_definition_in_the_window,
);

async fn the_corpus_is_the_orgs_captured_decisions_up_to_the_pin_first_payload_per_intent(
    db: &TestStore,
) -> Result<()> {
    let store = db.store();
    captured(store, &key("acme", "prod", "agent-1"), 6, 3).await?;
    captured(store, &key("acme", "dev", "agent-2"), 2, 2).await?;
    captured(store, &key("other", "prod", "agent-9"), 4, 4).await?;
    let scope = CorpusScope {
        org: "acme".parse()?,
        project: None,
        env: None,
    };
    let head = store.replay_corpus_head(&scope).await?;
    let groups = async |scope: &CorpusScope, until: u64, per_intent: u32| {
        let mut groups = Vec::new();
        store
            .replay_corpus_groups(scope, until, per_intent, &mut |g| {
                let payload = g.payload.map(|p| String::from_utf8_lossy(p).into_owned());
                let seq = payload
                    .as_deref()
                    .and_then(|p| p.rsplit("\"seq\":").next())
                    .map(str::to_owned);
                groups.push((g.first_id, g.samples.to_owned(), g.count, seq));
                Ok(())
            })
            .await
            .map(|()| groups)
    };
    // One row per digest, in the order of each digest's first decision: agent-1's seqs 1, 2, 3 carry digests
    // 1, 2, 0; every later decision (agent-1's 4..6, agent-2's digests 1 and 0) repeats one of them. Each has
    // its total count, its first 2 sample ids in index order, and the payload of its first decision only.
    let all = groups(&scope, head, 2).await?;
    let rows: Vec<(String, u64, Option<String>)> = all
        .iter()
        .map(|(_, s, c, p)| (s.clone(), *c, p.clone()))
        .collect();
    let expected: Vec<(String, u64, Option<String>)> = [
        ("web/prod/agent-1:1 web/prod/agent-1:4", 3, "1}"),
        ("web/prod/agent-1:2 web/prod/agent-1:5", 2, "2}"),
        ("web/prod/agent-1:3 web/prod/agent-1:6", 3, "3}"),
    ]
    .into_iter()
    .map(|(s, c, p)| (s.to_owned(), c, Some(p.to_owned())))
    .collect();
    ensure!(rows == expected, "{rows:?}");
    ensure!(all.windows(2).all(|w| w[0].0 < w[1].0), "{all:?}");
    ensure!(store.replay_corpus_samples(&scope, head).await? == 8);
    // Every sample is kept under a larger per-intent limit, and never one of another org.
    let wide = groups(&scope, head, 5).await?;
    let named: Vec<&str> = wide.iter().flat_map(|(_, s, _, _)| s.split(' ')).collect();
    ensure!(named.len() == 8, "{wide:?}");
    ensure!(named.iter().all(|s| !s.contains("agent-9")), "{wide:?}");
    ensure!(named.contains(&"web/dev/agent-2:2"), "{wide:?}");
    // The pin holds: an earlier until_id reads a prefix.
    let prefix = groups(&scope, all[1].0, 5).await?;
    ensure!(
        prefix.iter().map(|g| g.2).sum::<u64>() == 2 && prefix.len() == 2,
        "{prefix:?}"
    );
    ensure!(store.replay_corpus_samples(&scope, all[1].0).await? == 2);
    // The env filter narrows, and sample ids drop the project and environment it fixes.
    let dev = CorpusScope {
        project: Some("web".parse()?),
        env: Some("dev".parse()?),
        ..scope.clone()
    };
    let dev_groups = groups(&dev, head, 5).await?;
    let dev_samples: Vec<&str> = dev_groups.iter().map(|g| g.1.as_str()).collect();
    ensure!(dev_samples == ["agent-2:1", "agent-2:2"], "{dev_groups:?}");
    // Shards split the digests: every intent in exactly one shard, for any shard count.
    captured(store, &key("spread", "prod", "agent-3"), 256, 256).await?;
    let spread = CorpusScope {
        org: "spread".parse()?,
        project: None,
        env: None,
    };
    let spread_head = store.replay_corpus_head(&spread).await?;
    for of in [1u8, 2, 3, 7, 16] {
        let mut seen = Vec::new();
        for index in 0..of {
            let (tx, mut rx) = tokio::sync::mpsc::channel(512);
            store
                .replay_corpus_groups_to(&spread, spread_head, 1, false, Shard { index, of }, &tx)
                .await?;
            drop(tx);
            while let Some(g) = rx.recv().await {
                ensure!(g.payload.is_some() && g.count == 1, "{g:?}");
                seen.push(g.intent_digest);
            }
        }
        seen.sort();
        let before = seen.len();
        seen.dedup();
        ensure!(
            before == 256 && seen.len() == 256,
            "{of} shards: {before} rows, {} distinct",
            seen.len()
        );
    }
    let empty = CorpusScope {
        org: "nobody".parse()?,
        project: None,
        env: None,
    };
    ensure!(store.replay_corpus_head(&empty).await? == 0);
    Ok(())
}

fn staged(active: &str, candidate: Option<&str>, tool: &str, codes: [&[&str]; 2]) -> IndexFields {
    IndexFields {
        verdict: Some(active.into()),
        stage: Some("observe".into()),
        candidate_digest: Some(hex::encode([5; 32])),
        active_verdict: Some(active.into()),
        candidate_verdict: candidate.map(str::to_owned),
        tool_name: Some(tool.into()),
        reason_codes: codes[0].iter().map(|s| s.to_string()).collect(),
        candidate_reason_codes: codes[1].iter().map(|s| s.to_string()).collect(),
        ..IndexFields::default()
    }
}

async fn decision_stats_count_each_definition_in_the_window(db: &TestStore) -> Result<()> {
    let store = db.store();
    let k = key("acme", "prod", "agent-1");
    let k2 = key("acme", "prod", "agent-2");
    connected(store, &k).await?;
    connected(store, &k2).await?;
    let rows = [
        staged(
            "allow",
            Some("block"),
            "tool.delete",
            [&["ok"], &["no_delete"]],
        ),
        // A dry-run stage marker on the enforced side is no difference between the policies.
        staged(
            "allow",
            Some("block"),
            "tool.delete",
            [&["ok", "stage_dry_run_would_have_blocked"], &["no_delete"]],
        ),
        staged("allow", Some("allow"), "tool.read", [&["ok"], &["ok"]]),
        staged(
            "block",
            Some("require_approval"),
            "tool.write",
            [&["w"], &["w", "ask"]],
        ),
        staged("allow", None, "tool.read", [&[], &[]]),
    ];
    let records: Vec<NewRecord> = (1..=5).map(|s| record(s, "{}".into())).collect();
    let index: Vec<NewIndexEntry> = rows
        .iter()
        .enumerate()
        .map(|(i, f)| entry(i as u64 + 1, f.clone()))
        .collect();
    store
        .commit_batch_indexed(&k, &records, &index, NOW)
        .await?;
    let mut other = staged("allow", Some("block"), "tool.delete", [&[], &[]]);
    other.candidate_error = Some(true);
    store
        .commit_batch_indexed(&k2, &[record(1, "{}".into())], &[entry(1, other)], NOW + 5)
        .await?;

    let q = DecisionStatsQuery {
        tenant: tenant("acme", "prod"),
        candidate_digest: Some(hex::encode([5; 32])),
        policy_digest: None,
        agents: None,
        since_received_ms: NOW,
        until_received_ms: NOW + 10,
    };
    let s = store.decision_stats(&q).await?;
    let expected = DecisionStats {
        decisions: 6,
        agents_reporting: 2,
        verdict_diffs: 4,
        new_blocks: 3,
        candidate_errors: 2,
        blocks: 1,
        diffs_by_reason: BTreeMap::from([
            ("ask".to_owned(), 1),
            ("no_delete".to_owned(), 2),
            ("ok".to_owned(), 2),
        ]),
        diffs_by_tool: BTreeMap::from([
            ("tool.delete".to_owned(), 3),
            ("tool.write".to_owned(), 1),
        ]),
    };
    ensure!(s == expected, "{s:#?}");
    // The cohort narrows, the window excludes, another candidate matches nothing.
    let cohort = store
        .decision_stats(&DecisionStatsQuery {
            agents: Some(vec!["agent-2".parse()?]),
            ..q.clone()
        })
        .await?;
    ensure!(
        (cohort.decisions, cohort.candidate_errors) == (1, 1),
        "{cohort:?}"
    );
    let before = store
        .decision_stats(&DecisionStatsQuery {
            until_received_ms: NOW + 1,
            ..q.clone()
        })
        .await?;
    ensure!(before.decisions == 5, "{before:?}");
    let none = store
        .decision_stats(&DecisionStatsQuery {
            candidate_digest: Some(hex::encode([6; 32])),
            ..q.clone()
        })
        .await?;
    ensure!(none == DecisionStats::default(), "{none:?}");
    let nobody = store
        .decision_stats(&DecisionStatsQuery {
            agents: Some(Vec::new()),
            ..q
        })
        .await?;
    ensure!(nobody.decisions == 0, "{nobody:?}");
    Ok(())
}
