//! How one query body runs on either backend: [`Conn`] borrows a connection of one of the two pools, and
//! [`db_run!`] expands a body once per backend, so a portable query is written once and compiled for SQLite and
//! PostgreSQL with their own native types (no `sqlx::Any`, which would erase them).
//!
//! The SQL text is shared as-is, so portable statements use only what both dialects accept: numbered
//! placeholders (`$1`; SQLite reads `$N` as a numbered parameter), `CAST(x AS TEXT)` instead of `x::text`,
//! `CASE` instead of `max(a, b)` / `GREATEST(a, b)` (see [`later!`]), `ON CONFLICT ... DO NOTHING/UPDATE`,
//! `RETURNING` and row values. SQL that really differs (bulk inserts, locks, array parameters) is in the
//! `sqlite` and `postgres` modules, called through the two-arm form of [`db_run!`].

use sqlx::pool::PoolConnection;
use sqlx::query::Query;
use sqlx::{Database, Encode, PgConnection, Postgres, Sqlite, SqliteConnection, Transaction, Type};

use crate::error::{StoreError, db};
use crate::model::AgentKey;
use crate::sqlite::Member;

/// A borrowed connection (plain or inside a transaction) of either backend.
#[derive(Debug)]
pub(crate) enum Conn<'c> {
    Sqlite(&'c mut SqliteConnection),
    Postgres(&'c mut PgConnection),
}

impl Conn<'_> {
    /// A shorter borrow of the same connection, so one `Conn` can run several statements in turn.
    pub(crate) fn reborrow(&mut self) -> Conn<'_> {
        match self {
            Conn::Sqlite(c) => Conn::Sqlite(c),
            Conn::Postgres(c) => Conn::Postgres(c),
        }
    }
}

/// A connection checked out of either pool (returned to it on drop).
#[derive(Debug)]
pub(crate) enum Pooled {
    Sqlite(PoolConnection<Sqlite>),
    Postgres(PoolConnection<Postgres>),
}

impl Pooled {
    pub(crate) fn conn(&mut self) -> Conn<'_> {
        match self {
            Pooled::Sqlite(c) => Conn::Sqlite(c),
            Pooled::Postgres(c) => Conn::Postgres(c),
        }
    }

    /// Closes the connection when it is dropped instead of returning it to the pool: for a connection whose
    /// session settings were changed for one operation, so no later user inherits them, however the operation
    /// ends (finished, failed, or its future dropped).
    pub(crate) fn close_on_drop(&mut self) {
        match self {
            Pooled::Sqlite(c) => c.close_on_drop(),
            Pooled::Postgres(c) => c.close_on_drop(),
        }
    }
}

/// An open transaction on either backend (rolled back on drop unless committed). On SQLite it is a member of
/// the backend's group commit (see `sqlite::group`), on PostgreSQL a transaction of its own.
#[derive(Debug)]
pub(crate) enum Tx {
    Sqlite(Member),
    Postgres(Transaction<'static, Postgres>),
}

impl Tx {
    pub(crate) fn conn(&mut self) -> Conn<'_> {
        match self {
            Tx::Sqlite(member) => Conn::Sqlite(member.connection()),
            Tx::Postgres(tx) => Conn::Postgres(tx),
        }
    }

    /// Makes the transaction's writes durable; `op` names the operation in errors.
    pub(crate) async fn commit(self, op: &'static str) -> Result<(), StoreError> {
        match self {
            Tx::Sqlite(member) => member.commit(op).await,
            Tx::Postgres(tx) => tx.commit().await.map_err(db(op)),
        }
    }

    /// Discards the transaction's writes; `op` names the operation in errors.
    pub(crate) async fn rollback(self, op: &'static str) -> Result<(), StoreError> {
        match self {
            Tx::Sqlite(member) => member.rollback(op).await,
            Tx::Postgres(tx) => tx.rollback().await.map_err(db(op)),
        }
    }
}

/// Runs a body on a [`Conn`] (a mutable place, reborrowed, so it stays usable afterwards).
///
/// - `db_run!(conn, |c| body)`: one body, expanded once per backend with `c` bound to `&mut SqliteConnection`
///   or `&mut PgConnection`: the shape for portable SQL.
/// - `db_run!(conn, sqlite: |c| a, postgres: |c| b)`: one body per backend, for SQL that really differs.
macro_rules! db_run {
    ($conn:expr, |$c:ident| $body:expr) => {
        match $conn.reborrow() {
            $crate::conn::Conn::Sqlite($c) => $body,
            $crate::conn::Conn::Postgres($c) => $body,
        }
    };
    ($conn:expr, sqlite: |$s:ident| $sqlite:expr, postgres: |$p:ident| $postgres:expr $(,)?) => {
        match $conn.reborrow() {
            $crate::conn::Conn::Sqlite($s) => $sqlite,
            $crate::conn::Conn::Postgres($p) => $postgres,
        }
    };
}
pub(crate) use db_run;

/// The portable "later of two timestamps" as a SQL literal for `concat!`: `later!("col", "$5")` is the larger
/// of the two (SQLite spells it `max(a, b)`, PostgreSQL `GREATEST(a, b)`; `CASE` reads the same in both).
/// Both operands must be non-NULL.
macro_rules! later {
    ($a:literal, $b:literal) => {
        concat!(
            "CASE WHEN ",
            $b,
            " > ",
            $a,
            " THEN ",
            $b,
            " ELSE ",
            $a,
            " END"
        )
    };
}
pub(crate) use later;

/// The `WHERE` clause of every per-agent statement; the key binds to `$1`..`$4` with [`bind_key`].
macro_rules! agent_where {
    () => {
        " WHERE org = $1 AND project = $2 AND env = $3 AND agent_id = $4"
    };
}
pub(crate) use agent_where;

/// Binds an agent key as the next four parameters (org, project, env, agent_id), on either backend.
pub(crate) fn bind_key<'q, DB>(
    query: Query<'q, DB, <DB as Database>::Arguments>,
    key: &AgentKey,
) -> Query<'q, DB, <DB as Database>::Arguments>
where
    DB: Database,
    for<'t> &'t str: Encode<'t, DB> + Type<DB>,
{
    query
        .bind(key.tenant.org.as_str())
        .bind(key.tenant.project.as_str())
        .bind(key.tenant.env.as_str())
        .bind(key.agent_id.as_str())
}

#[cfg(test)]
mod tests {
    #[test]
    fn later_expands_to_a_case_both_dialects_read() {
        assert_eq!(
            later!("last_seen", "$5"),
            "CASE WHEN $5 > last_seen THEN $5 ELSE last_seen END"
        );
    }
}
