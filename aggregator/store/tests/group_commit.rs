//! SQLite's group commit: transactions that run while a group is open share its one commit, each is reported
//! committed only once that commit is durable, and a member that fails or whose future is dropped mid-flight
//! takes nothing of the others with it and blocks nobody.
#![allow(clippy::disallowed_methods)] // tests spawn freely

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use gait_audit::{EntryDraft, Target};
use gait_store::testing::{TestStore, sqlite_temp};
use gait_store::{GroupCommitStats, Store, StoreError};
use tokio::task::JoinSet;

const NOW: i64 = 1_764_000_000_000;
/// Generous bound for anything that normally takes milliseconds (the suite runs on loaded machines).
const PATIENCE: Duration = Duration::from_secs(60);

fn draft(id: &str) -> EntryDraft {
    EntryDraft {
        actor: "admin-token".into(),
        action: "bundle.publish".into(),
        target: Target::in_env("acme", "web", "prod", "bundle", id),
        before: None,
        after: None,
        details: None,
    }
}

fn stats(store: &Store) -> Result<GroupCommitStats> {
    store
        .group_commit_stats()
        .context("SQLite has group commit stats")
}

/// Waits until `n` transactions are pending (running or queued for their turn).
async fn until_pending(store: &Store, n: usize) -> Result<()> {
    tokio::time::timeout(PATIENCE, async {
        loop {
            if stats(store)?.pending == n {
                return Ok(());
            }
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .with_context(|| format!("{n} transactions never became pending"))?
}

/// The targets' ids of the stored audit entries, in log order.
async fn stored_ids(store: &Store) -> Result<Vec<String>> {
    let rows = store.audit_entries(0, 1000).await?;
    rows.iter()
        .map(|r| {
            let entry = gait_audit::Entry::parse_line(&r.line)?;
            Ok(entry.target.id)
        })
        .collect()
}

/// One transaction appending the entry `id`, spawned.
fn spawn_append(tasks: &mut JoinSet<Result<(), StoreError>>, store: &Store, id: String) {
    let store = store.clone();
    tasks.spawn(async move {
        store
            .transaction(async |tx| {
                tx.audit_append(&draft(&id), NOW).await?;
                Ok::<_, StoreError>(())
            })
            .await
    });
}

async fn temp() -> Result<TestStore> {
    Ok(sqlite_temp().await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_transactions_share_one_commit_and_each_is_durable_when_reported() -> Result<()> {
    let db = temp().await?;
    let store = db.store();
    let before = stats(store)?;

    // The first transaction holds the writer while 31 more queue behind it.
    let mut first = store.begin().await?;
    first.audit_append(&draft("t0"), NOW).await?;
    let mut tasks = JoinSet::new();
    for i in 1..32 {
        spawn_append(&mut tasks, store, format!("t{i}"));
    }
    until_pending(store, 32).await?;
    tokio::time::timeout(PATIENCE, first.commit())
        .await
        .context("the first commit never returned")??;
    while let Some(joined) = tokio::time::timeout(PATIENCE, tasks.join_next())
        .await
        .context("a queued transaction never returned")?
    {
        joined??;
    }

    let after = stats(store)?;
    ensure!(
        after.transactions - before.transactions == 32,
        "transactions {before:?} -> {after:?}"
    );
    ensure!(
        after.commits - before.commits == 1,
        "32 queued transactions took {} commits, not 1",
        after.commits - before.commits
    );
    ensure!(after.pending == 0, "{after:?}");

    // A second pool on the same file (a new reader) sees every entry, each index once.
    let other = Store::connect(db.url()).await?;
    let head = other.audit_head().await?;
    ensure!(
        head.size == 32,
        "a fresh connection sees {} entries",
        head.size
    );
    let mut ids = stored_ids(&other).await?;
    ids.sort();
    let mut want: Vec<String> = (0..32).map(|i| format!("t{i}")).collect();
    want.sort();
    ensure!(ids == want, "{ids:?}");
    other.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_transaction_takes_nothing_of_the_others_in_its_group() -> Result<()> {
    let db = temp().await?;
    let store = db.store();
    let mut first = store.begin().await?;
    first.audit_append(&draft("first"), NOW).await?;

    let mut tasks = JoinSet::new();
    spawn_append(&mut tasks, store, "a".into());
    let failing = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .transaction(async |tx| {
                    tx.audit_append(&draft("failed"), NOW).await?;
                    Err::<(), _>(StoreError::InvalidInput {
                        field: "test".into(),
                        reason: "the body fails after writing".into(),
                    })
                })
                .await
        })
    };
    until_pending(store, 3).await?;
    spawn_append(&mut tasks, store, "c".into());
    until_pending(store, 4).await?;
    tokio::time::timeout(PATIENCE, first.commit())
        .await
        .context("commit never returned")??;
    match tokio::time::timeout(PATIENCE, failing).await?? {
        Err(StoreError::InvalidInput { .. }) => {}
        other => bail!("the failing body returned {other:?}"),
    }
    while let Some(joined) = tokio::time::timeout(PATIENCE, tasks.join_next()).await? {
        joined??;
    }
    let mut ids = stored_ids(store).await?;
    ids.sort();
    ensure!(ids == ["a", "c", "first"], "{ids:?}");
    // The log stayed one chain: indexes 0..3 without a gap where the failed append was.
    let head = store.audit_head().await?;
    ensure!(head.size == 3, "{head:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_dropped_mid_flight_is_rolled_back_and_blocks_nobody() -> Result<()> {
    let db = temp().await?;
    let store = db.store();
    let (started_tx, started) = tokio::sync::oneshot::channel::<()>();
    let stuck = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .transaction(async |tx| {
                    tx.audit_append(&draft("abandoned"), NOW).await?;
                    let _ = started_tx.send(());
                    std::future::pending::<()>().await;
                    Ok::<_, StoreError>(())
                })
                .await
        })
    };
    tokio::time::timeout(PATIENCE, started)
        .await
        .context("the stuck transaction never started")??;
    let mut tasks = JoinSet::new();
    spawn_append(&mut tasks, store, "after".into());
    until_pending(store, 2).await?;
    // The caller goes away (a cancelled request) while its transaction holds the writer.
    stuck.abort();
    let _ = stuck.await;
    while let Some(joined) = tokio::time::timeout(PATIENCE, tasks.join_next())
        .await
        .context("the transaction queued behind the dropped one never returned")?
    {
        joined??;
    }
    ensure!(stored_ids(store).await? == ["after"]);

    // Dropped alone (nobody queued behind it): the finishing task rolls it back and the writer is free again.
    let (started_tx, started) = tokio::sync::oneshot::channel::<()>();
    let stuck = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .transaction(async |tx| {
                    tx.audit_append(&draft("abandoned-alone"), NOW).await?;
                    let _ = started_tx.send(());
                    std::future::pending::<()>().await;
                    Ok::<_, StoreError>(())
                })
                .await
        })
    };
    tokio::time::timeout(PATIENCE, started).await??;
    stuck.abort();
    let _ = stuck.await;
    until_pending(store, 0).await?;
    tokio::time::timeout(PATIENCE, async {
        store
            .transaction(async |tx| {
                tx.audit_append(&draft("later"), NOW).await?;
                Ok::<_, StoreError>(())
            })
            .await
    })
    .await
    .context("the writer stayed locked after an abandoned transaction")??;
    ensure!(stored_ids(store).await? == ["after", "later"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_writers_each_commit_exactly_once() -> Result<()> {
    let db = temp().await?;
    let store = db.store();
    let mut tasks = JoinSet::new();
    for i in 0..300 {
        spawn_append(&mut tasks, store, format!("w{i:03}"));
    }
    while let Some(joined) = tokio::time::timeout(PATIENCE, tasks.join_next()).await? {
        joined??;
    }
    let s = stats(store)?;
    ensure!(s.transactions == 300 && s.pending == 0, "{s:?}");
    ensure!(s.commits <= 300, "{s:?}");
    let mut ids = stored_ids(store).await?;
    ids.sort();
    ensure!(
        ids.len() == 300 && ids.windows(2).all(|w| w[0] < w[1]),
        "{ids:?}"
    );
    Ok(())
}
