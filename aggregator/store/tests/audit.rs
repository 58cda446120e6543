//! The audit log's store, on both backends: appends inside the caller's transaction, serialised under
//! concurrency (one index per entry, no gaps, none doubled), proofs from stored subtrees that verify against the
//! `gait-audit` verifier, checkpoints.
#![allow(clippy::disallowed_methods)] // tests spawn freely

use anyhow::{Result, ensure};
use gait_audit::merkle::{MemoryTree, verify_consistency, verify_inclusion};
use gait_audit::{Entry, EntryDraft, Target};
use gait_store::testing::TestStore;
use gait_store::{StoreError, StoredCheckpoint};

const NOW: i64 = 1_764_000_000_000;

fn draft(i: u64) -> EntryDraft {
    EntryDraft {
        actor: "admin-token".into(),
        action: "bundle.publish".into(),
        target: Target::in_env("acme", "web", "prod", "bundle", i.to_string()),
        before: None,
        after: Some(gait_audit::content_digest(&i.to_be_bytes())),
        details: None,
    }
}

gait_store::store_tests!(
    appends_chain_entries_and_proofs_verify_against_the_stored_root,
    an_append_in_a_rolled_back_transaction_leaves_no_trace,
    concurrent_appends_take_one_index_each_without_gaps,
    checkpoints_are_stored_once_per_size,
    invalid_drafts_are_refused_before_any_write,
    scoped_reads_return_exactly_the_entries_whose_target_lies_in_the_scope,
);

async fn appends_chain_entries_and_proofs_verify_against_the_stored_root(
    db: &TestStore,
) -> Result<()> {
    let store = db.store();
    let empty = store.audit_head().await?;
    ensure!(empty.size == 0 && empty.root == gait_audit::empty_root());
    let mut tree = MemoryTree::new();
    let mut prev = None;
    for i in 0..37u64 {
        let appended = store.audit_append(&draft(i), NOW + i as i64).await?;
        ensure!(appended.seq == i, "seq {} for append {i}", appended.seq);
        let entry = Entry::parse_line(&appended.line)?;
        ensure!(
            entry.prev_hash() == prev,
            "entry {i} does not chain to {prev:?}"
        );
        prev = Some(appended.leaf_hash);
        tree.push(appended.leaf_hash);
        ensure!(appended.root == tree.root(), "root after {i}");
    }
    let head = store.audit_head().await?;
    ensure!(head.size == 37 && head.root == tree.root());
    let rows = store.audit_entries(0, 100).await?;
    ensure!(rows.len() == 37 && rows.iter().enumerate().all(|(i, r)| r.seq == i as u64));
    let page = store.audit_entries(30, 5).await?;
    ensure!(page.iter().map(|r| r.seq).collect::<Vec<_>>() == vec![30, 31, 32, 33, 34]);
    for size in [1u64, 2, 5, 8, 13, 32, 37] {
        let root = store.audit_root(size).await?;
        ensure!(
            root == gait_audit::merkle::root(&tree, size)?,
            "root({size})"
        );
        for index in [0, size / 2, size - 1] {
            let proof = store.audit_inclusion_proof(index, size).await?;
            ensure!(
                verify_inclusion(index, size, &rows[index as usize].leaf(), &proof, &root),
                "inclusion {index}/{size}"
            );
        }
        for old in [0, 1, size / 3, size] {
            let proof = store.audit_consistency_proof(old, size).await?;
            let old_root = store.audit_root(old).await?;
            ensure!(
                verify_consistency(old, size, &old_root, &root, &proof),
                "consistency {old}->{size}"
            );
        }
    }
    ensure!(matches!(
        store.audit_inclusion_proof(37, 37).await,
        Err(StoreError::InvalidInput { .. })
    ));
    ensure!(matches!(
        store.audit_consistency_proof(5, 38).await,
        Err(StoreError::InvalidInput { .. })
    ));
    Ok(())
}

trait Leaf {
    fn leaf(&self) -> gait_audit::Hash;
}

impl Leaf for gait_store::AuditRow {
    fn leaf(&self) -> gait_audit::Hash {
        gait_audit::leaf_hash(&self.line)
    }
}

async fn an_append_in_a_rolled_back_transaction_leaves_no_trace(db: &TestStore) -> Result<()> {
    let store = db.store();
    store.audit_append(&draft(0), NOW).await?;
    let failed: Result<(), StoreError> = store
        .transaction(async |tx| {
            tx.audit_append(&draft(1), NOW).await?;
            Err(StoreError::InvalidInput {
                field: "test".into(),
                reason: "the operation failed after its audit append".into(),
            })
        })
        .await;
    ensure!(failed.is_err());
    let next = store.audit_append(&draft(2), NOW).await?;
    ensure!(
        next.seq == 1,
        "the rolled-back append kept index {}",
        next.seq
    );
    ensure!(store.audit_head().await?.size == 2);
    Ok(())
}

async fn concurrent_appends_take_one_index_each_without_gaps(db: &TestStore) -> Result<()> {
    let store = db.store().clone();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..8u64 {
        let store = store.clone();
        tasks.spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..25u64 {
                let d = draft(worker * 1000 + i);
                let appended = store
                    .transaction(async |tx| tx.audit_append(&d, NOW).await)
                    .await?;
                seqs.push(appended.seq);
            }
            Ok::<_, StoreError>(seqs)
        });
    }
    let mut all = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        all.extend(joined??);
    }
    all.sort_unstable();
    ensure!(all == (0..200).collect::<Vec<u64>>(), "indices {all:?}");
    // The stored entries chain and hash to the stored root: no append saw a stale head.
    let rows = store.audit_entries(0, 1000).await?;
    let mut tree = MemoryTree::new();
    let mut prev = None;
    for row in &rows {
        let entry = Entry::parse_line(&row.line)?;
        ensure!(
            entry.seq == row.seq && entry.prev_hash() == prev,
            "entry {}",
            row.seq
        );
        prev = Some(row.leaf());
        tree.push(row.leaf());
    }
    ensure!(store.audit_head().await?.root == tree.root());
    Ok(())
}

async fn checkpoints_are_stored_once_per_size(db: &TestStore) -> Result<()> {
    let store = db.store();
    ensure!(store.audit_latest_checkpoint().await?.is_none());
    let cp = |size: u64, note: &str| StoredCheckpoint {
        size,
        root: [size as u8; 32],
        note: note.into(),
        signed_unix_ms: NOW,
    };
    store.audit_save_checkpoint(&cp(3, "three")).await?;
    store.audit_save_checkpoint(&cp(3, "again")).await?;
    store.audit_save_checkpoint(&cp(9, "nine")).await?;
    ensure!(store.audit_latest_checkpoint().await? == Some(cp(9, "nine")));
    ensure!(store.audit_checkpoint(3).await? == Some(cp(3, "three")));
    ensure!(store.audit_checkpoint(4).await?.is_none());
    Ok(())
}

async fn invalid_drafts_are_refused_before_any_write(db: &TestStore) -> Result<()> {
    let store = db.store();
    let mut bad = draft(0);
    bad.action = "Not An Action".into();
    ensure!(matches!(
        store.audit_append(&bad, NOW).await,
        Err(StoreError::InvalidInput { .. })
    ));
    ensure!(store.audit_head().await?.size == 0);
    Ok(())
}

/// The per-tenant views: an org's entries are those on the org itself and on any of its projects and
/// environments, a project's those on it and its environments, an environment's those on it; the deployment
/// scope is every entry. Pages continue from a leaf index like the whole-log listing, and keep the leaf indices
/// of the whole log (what an inclusion proof is asked for).
async fn scoped_reads_return_exactly_the_entries_whose_target_lies_in_the_scope(
    db: &TestStore,
) -> Result<()> {
    use gait_store::BindingScope;
    let store = db.store();
    let target = |org: Option<&str>, project: Option<&str>, env: Option<&str>, i: usize| Target {
        org: org.map(str::to_owned),
        project: project.map(str::to_owned),
        env: env.map(str::to_owned),
        kind: "bundle".into(),
        id: i.to_string(),
    };
    // Interleaved, so every scope's leaf indices have holes the others fill.
    let targets = [
        (None, None, None),
        (Some("acme"), Some("web"), Some("prod")),
        (Some("globex"), Some("web"), Some("prod")),
        (Some("acme"), None, None),
        (Some("acme"), Some("web"), Some("staging")),
        (Some("acme"), Some("api"), Some("prod")),
        (Some("acme"), Some("web"), None),
        (Some("acme"), Some("web"), Some("prod")),
        (Some("globex"), None, None),
        (Some("acme-2"), Some("web"), Some("prod")),
    ];
    for (i, (org, project, env)) in targets.iter().enumerate() {
        let mut d = draft(i as u64);
        d.target = target(*org, *project, *env, i);
        store.audit_append(&d, NOW + i as i64).await?;
    }
    fn id<T: std::str::FromStr>(s: &str) -> T
    where
        T::Err: std::fmt::Debug,
    {
        s.parse().expect("identifier")
    }
    let seqs = |rows: Vec<gait_store::AuditRow>| rows.iter().map(|r| r.seq).collect::<Vec<_>>();
    let cases: [(BindingScope, Vec<u64>); 6] = [
        (BindingScope::deployment(), (0..10).collect()),
        (BindingScope::org(id("acme")), vec![1, 3, 4, 5, 6, 7]),
        (BindingScope::org(id("globex")), vec![2, 8]),
        (
            BindingScope::project(id("acme"), id("web")),
            vec![1, 4, 6, 7],
        ),
        (
            BindingScope::env(id("acme"), id("web"), id("prod")),
            vec![1, 7],
        ),
        (BindingScope::org(id("initech")), vec![]),
    ];
    for (scope, want) in &cases {
        let all = seqs(store.audit_entries_in(scope, 0, 100).await?);
        ensure!(&all == want, "{scope}: {all:?}, want {want:?}");
        // Keyset pages of two: each continues after the last index of the one before.
        let mut paged = Vec::new();
        let mut from = 0;
        loop {
            let page = store.audit_entries_in(scope, from, 2).await?;
            ensure!(page.len() <= 2, "{scope}: a page of {}", page.len());
            let Some(last) = page.last().map(|r| r.seq) else {
                break;
            };
            paged.extend(seqs(page));
            from = last + 1;
        }
        ensure!(&paged == want, "{scope} paged: {paged:?}, want {want:?}");
    }
    // Each row is the stored entry at that index, byte for byte.
    let whole = store.audit_entries(0, 100).await?;
    for row in store
        .audit_entries_in(&BindingScope::org(id("acme")), 0, 100)
        .await?
    {
        ensure!(whole[row.seq as usize] == row, "entry {} differs", row.seq);
        let entry = Entry::parse_line(&row.line)?;
        ensure!(entry.target.org.as_deref() == Some("acme"));
    }
    Ok(())
}
