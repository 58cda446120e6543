//! Test support (feature `test-util`): fresh, self-cleaning stores on both backends, and [`store_tests!`]
//! to run one async test body against each.
//!
//! SQLite: a database file in a temporary directory, removed on drop. PostgreSQL: `GAIT_TEST_DATABASE_URL`
//! names a server (any database on it that the user may connect to, e.g. `postgres://postgres@127.0.0.1:55432/postgres`);
//! each test creates its own database `gait_test_<random>` and drops it (`WITH (FORCE)`) on drop, so tests run
//! in parallel. When the variable is unset, PostgreSQL tests fail if `CI=true`, and otherwise print a
//! `SKIPPED postgres` line (straight to stderr, past the test harness's capture) and pass.
//! `scripts/pg-test.sh start` starts a throwaway server and `scripts/pg-test.sh url` prints its URL.

use std::io::Write as _;

use sqlx::{AssertSqlSafe, Connection as _};

use crate::{Store, StoreError};

/// Environment variable naming the PostgreSQL server tests use.
pub const TEST_DATABASE_URL_ENV: &str = "GAIT_TEST_DATABASE_URL";

/// Why a test store could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TestStoreError {
    #[error(
        "GAIT_TEST_DATABASE_URL is not set and CI=true, so the PostgreSQL tests cannot be skipped: run \
         `scripts/pg-test.sh start` and export GAIT_TEST_DATABASE_URL=$(scripts/pg-test.sh url)"
    )]
    MissingDatabaseUrl,
    #[error("cannot set up the test store: {0}")]
    Setup(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A store on a fresh database that is removed when this value is dropped.
/// Fields drop in order: the store's pool first, then the directory or database under it.
pub struct TestStore {
    store: Store,
    url: String,
    _dir: Option<tempfile::TempDir>,
    _database: Option<PgDatabase>,
}

/// A PostgreSQL test database, dropped when this value is.
struct PgDatabase {
    server_url: String,
    database: String,
}

impl TestStore {
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// A URL that [`Store::connect`] opens onto the same database (for tests that start a server from config).
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn backend(&self) -> &'static str {
        self.store.backend()
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let (server_url, database) = (self.server_url.clone(), self.database.clone());
        // Drop cannot await: drop the database from a helper thread with its own runtime. FORCE ends the
        // connections this store's pool still holds.
        let done = std::thread::spawn(move || -> Result<(), String> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async {
                let mut admin = sqlx::PgConnection::connect(&server_url)
                    .await
                    .map_err(|e| e.to_string())?;
                let sql = format!("DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)");
                sqlx::query(AssertSqlSafe(sql))
                    .execute(&mut admin)
                    .await
                    .map_err(|e| e.to_string())?;
                admin.close().await.map_err(|e| e.to_string())
            })
        })
        .join();
        if !matches!(done, Ok(Ok(()))) {
            let _ = writeln!(
                std::io::stderr(),
                "warning: could not drop a PostgreSQL test database: {done:?}"
            );
        }
    }
}

/// A fresh SQLite store in a temporary directory.
pub async fn sqlite_temp() -> Result<TestStore, TestStoreError> {
    let dir = tempfile::tempdir()
        .map_err(|e| TestStoreError::Setup(format!("temporary directory: {e}")))?;
    let path = dir.path().join("gait-store-test.db");
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let store = Store::connect(&url).await?;
    Ok(TestStore {
        store,
        url,
        _dir: Some(dir),
        _database: None,
    })
}

/// A fresh PostgreSQL store on its own new database, or `None` (after a loud `SKIPPED postgres` line) when
/// `GAIT_TEST_DATABASE_URL` is unset outside CI. Fails when it is unset and `CI=true`.
pub async fn postgres_fresh() -> Result<Option<TestStore>, TestStoreError> {
    let server_url = match std::env::var(TEST_DATABASE_URL_ENV) {
        Ok(url) if !url.trim().is_empty() => url,
        _ => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                return Err(TestStoreError::MissingDatabaseUrl);
            }
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED postgres: {TEST_DATABASE_URL_ENV} is not set (scripts/pg-test.sh start; export \
                 {TEST_DATABASE_URL_ENV}=$(scripts/pg-test.sh url))"
            );
            return Ok(None);
        }
    };
    let mut random = [0u8; 8];
    getrandom::fill(&mut random)
        .map_err(|e| TestStoreError::Setup(format!("random database name: {e}")))?;
    let database = format!("gait_test_{}", hex::encode(random));
    let mut admin = sqlx::PgConnection::connect(&server_url)
        .await
        .map_err(|e| {
            TestStoreError::Setup(format!("cannot connect to {TEST_DATABASE_URL_ENV}: {e}"))
        })?;
    sqlx::query(AssertSqlSafe(format!("CREATE DATABASE \"{database}\"")))
        .execute(&mut admin)
        .await
        .map_err(|e| TestStoreError::Setup(format!("cannot create database {database}: {e}")))?;
    let _ = admin.close().await;
    let url = with_database(&server_url, &database);
    // From here on, dropping `created` removes the database, also when connecting or migrating fails.
    let created = PgDatabase {
        server_url,
        database,
    };
    let url = url?;
    let store = Store::connect(&url).await?;
    Ok(Some(TestStore {
        store,
        url,
        _dir: None,
        _database: Some(created),
    }))
}

/// `url` with its database path replaced by `database`; the query string is kept.
fn with_database(url: &str, database: &str) -> Result<String, TestStoreError> {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map(|i| i + 3).ok_or_else(|| {
        TestStoreError::Setup(format!("{TEST_DATABASE_URL_ENV} is not a postgres:// URL"))
    })?;
    let authority_end = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    let mut out = format!("{}/{database}", &base[..authority_end]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    Ok(out)
}

/// Runs each listed async test body against both backends. Every name must be an
/// `async fn name(db: &TestStore) -> Result<(), E>` (with `E: Debug`) in scope; the macro generates a module
/// `name` with the tests `sqlite` and `postgres` (so `cargo test name::` runs both). The calling crate needs
/// `tokio` with the `macros` and `rt` features.
#[macro_export]
macro_rules! store_tests {
    ($($case:ident),+ $(,)?) => {
        $(
            mod $case {
                #[::tokio::test]
                async fn sqlite() {
                    let db = match $crate::testing::sqlite_temp().await {
                        Ok(db) => db,
                        Err(e) => panic!("cannot create the SQLite test store: {e}"),
                    };
                    if let Err(e) = super::$case(&db).await {
                        panic!("{} failed on sqlite: {e:?}", stringify!($case));
                    }
                }

                #[::tokio::test]
                async fn postgres() {
                    let db = match $crate::testing::postgres_fresh().await {
                        Ok(Some(db)) => db,
                        Ok(None) => return,
                        Err(e) => panic!("cannot create the PostgreSQL test store: {e}"),
                    };
                    if let Err(e) = super::$case(&db).await {
                        panic!("{} failed on postgres: {e:?}", stringify!($case));
                    }
                }
            }
        )+
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_is_swapped_in_server_urls_keeping_the_query() {
        let ok = |url: &str| with_database(url, "gait_test_1").ok();
        assert_eq!(
            ok("postgres://u@h:1/postgres").as_deref(),
            Some("postgres://u@h:1/gait_test_1")
        );
        assert_eq!(
            ok("postgres://u@h:1").as_deref(),
            Some("postgres://u@h:1/gait_test_1")
        );
        assert_eq!(
            ok("postgres://u@h/db?sslmode=disable").as_deref(),
            Some("postgres://u@h/gait_test_1?sslmode=disable")
        );
        assert!(ok("not a url").is_none());
    }
}
