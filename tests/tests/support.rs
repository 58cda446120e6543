//! Helpers the end-to-end test files share (not tests themselves).

use gait_store::testing::TestStore;

/// A fresh PostgreSQL database with the runtime its handle lives on (keep both until the test ends), or `None`
/// when `GAIT_TEST_DATABASE_URL` is unset ([`gait_store::testing::postgres_fresh`] says so on stderr, and fails
/// under `CI=true`).
pub fn fresh_postgres() -> anyhow::Result<Option<(tokio::runtime::Runtime, TestStore)>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let db = rt.block_on(gait_store::testing::postgres_fresh())?;
    Ok(db.map(|db| (rt, db)))
}
