//! The audit domain: the append-only Merkle log of privileged operations (format and hashing in `gait-audit`).
//! Portable SQL only.
//!
//! # Appends
//! An append runs inside the caller's transaction, so an operation and its entry commit together or not at all.
//! Its first statement increments `audit_head.size` and returns the head: on PostgreSQL that takes the head
//! row's lock until the transaction ends, and on SQLite every transaction already holds the write lock, so
//! appends are serialised on both backends — one leaf index per entry, no gaps, none doubled, in commit order.
//! The entry is then built from the head (its `seq` and `prev`), and its row, the subtrees it completes and the
//! new head are written. A rolled-back transaction takes its index back with it.
//!
//! # Proofs
//! Every complete aligned subtree's hash is stored (a leaf's with its entry, larger ones in `audit_nodes`), so a tree hash or proof reads the `O(log n)` nodes
//! [`gait_audit::merkle::nodes_for`] names and recomputes nothing over the leaves.

use std::collections::HashMap;

use gait_audit::merkle::{self, NodeId, NodeSource, ProofError};
use gait_audit::{Entry, EntryDraft, Frontier, Hash};

use crate::access::BindingScope;
use crate::conn::{Conn, db_run};
use crate::error::{StoreError, db};
use crate::model::{to_hash, to_u64};
use crate::rows::Columns;

/// What an append wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendedEntry {
    /// The entry's leaf index.
    pub seq: u64,
    /// Its canonical bytes (the leaf data).
    pub line: Vec<u8>,
    /// Its RFC 6962 leaf hash.
    pub leaf_hash: Hash,
    /// The tree's root hash with this entry as its last leaf (size `seq + 1`).
    pub root: Hash,
}

/// The log's current size and root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuditHead {
    /// How many entries the log holds.
    pub size: u64,
    /// The RFC 6962 root hash over them.
    pub root: Hash,
}

/// One stored entry: its leaf index and canonical bytes, as the export writes them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRow {
    /// The leaf index.
    pub seq: u64,
    /// The entry's canonical bytes.
    pub line: Vec<u8>,
}

/// A signed checkpoint the log stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredCheckpoint {
    /// The tree size it signs.
    pub size: u64,
    /// The root hash it signs.
    pub root: Hash,
    /// The signed note.
    pub note: String,
    /// When it was signed.
    pub signed_unix_ms: i64,
}

const HEAD: &str = "audit_head";

fn int(value: u64, field: &str) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::invalid(field, format!("{value} is too large")))
}

/// Appends the entry `draft` at `now_ms`; see the module docs.
pub(crate) async fn append(
    mut conn: Conn<'_>,
    draft: &EntryDraft,
    now_ms: i64,
) -> Result<AppendedEntry, StoreError> {
    const BUMP: &str =
        "UPDATE audit_head SET size = size + 1 WHERE id = 1 RETURNING size, frontier, last_leaf";
    const INSERT_ENTRY: &str = "INSERT INTO audit_entries (seq, org, project, env, actor, action, \
         time_unix_ms, leaf, leaf_hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";
    const SET_HEAD: &str = "UPDATE audit_head SET frontier = $1, last_leaf = $2 WHERE id = 1";

    draft
        .validate()
        .map_err(|e| StoreError::invalid("audit entry", e.to_string()))?;
    let (size, frontier_bytes, last_leaf): (i64, Vec<u8>, Option<Vec<u8>>) = db_run!(conn, |c| {
        let row = sqlx::query(BUMP)
            .fetch_optional(&mut *c)
            .await
            .map_err(db("audit append: head"))?
            .ok_or_else(|| StoreError::corrupt(HEAD, "the head row is missing"))?;
        (
            row.int("size")?,
            row.bytes("frontier")?,
            row.opt_bytes("last_leaf")?,
        )
    });
    let new_size = to_u64(HEAD, "size", size)?;
    let seq = new_size - 1;
    let mut frontier = Frontier::from_bytes(seq, &frontier_bytes)
        .map_err(|e| StoreError::corrupt(HEAD, e.to_string()))?;
    let prev = last_leaf
        .map(|b| to_hash(HEAD, "last_leaf", b))
        .transpose()?;
    if prev.is_some() != (seq > 0) {
        return Err(StoreError::corrupt(
            HEAD,
            format!("last_leaf must be set exactly when the log is not empty (size {seq})"),
        ));
    }
    let entry = Entry::new(draft.clone(), seq, now_ms, prev.as_ref())
        .map_err(|e| StoreError::invalid("audit entry", e.to_string()))?;
    let line = entry.to_line();
    let leaf = gait_audit::leaf_hash(&line);
    // The leaf itself (level 0) is stored with the entry; the larger subtrees it completes (one in two appends
    // completes none) go to `audit_nodes` in one statement.
    let nodes: Vec<(i64, i64, Hash)> = frontier
        .append(leaf)
        .into_iter()
        .filter(|(id, _)| id.level > 0)
        .map(|(id, hash)| {
            Ok((
                i64::from(id.level),
                int(id.index, "audit node index")?,
                hash,
            ))
        })
        .collect::<Result<_, StoreError>>()?;
    let insert_nodes = (!nodes.is_empty()).then(|| insert_nodes_sql(nodes.len()));
    let target = &draft.target;
    let seq_i = int(seq, "audit seq")?;
    db_run!(conn, |c| {
        sqlx::query(INSERT_ENTRY)
            .bind(seq_i)
            .bind(target.org.as_deref())
            .bind(target.project.as_deref())
            .bind(target.env.as_deref())
            .bind(draft.actor.as_str())
            .bind(draft.action.as_str())
            .bind(now_ms)
            .bind(line.as_slice())
            .bind(leaf.as_slice())
            .execute(&mut *c)
            .await
            .map_err(db("audit append: entry"))?;
        if let Some(sql) = &insert_nodes {
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
            for (level, index, hash) in &nodes {
                query = query.bind(*level).bind(*index).bind(hash.as_slice());
            }
            query
                .execute(&mut *c)
                .await
                .map_err(db("audit append: nodes"))?;
        }
        sqlx::query(SET_HEAD)
            .bind(frontier.to_bytes())
            .bind(leaf.as_slice())
            .execute(&mut *c)
            .await
            .map_err(db("audit append: head"))?;
    });
    Ok(AppendedEntry {
        seq,
        line,
        leaf_hash: leaf,
        root: frontier.root(),
    })
}

/// `INSERT INTO audit_nodes` of `rows` rows, numbered placeholders only (no value is ever spliced in).
fn insert_nodes_sql(rows: usize) -> String {
    let values: Vec<String> = (0..rows)
        .map(|r| format!("(${}, ${}, ${})", 3 * r + 1, 3 * r + 2, 3 * r + 3))
        .collect();
    format!(
        "INSERT INTO audit_nodes (level, idx, hash) VALUES {}",
        values.join(", ")
    )
}

/// The log's size and root.
pub(crate) async fn head(mut conn: Conn<'_>) -> Result<AuditHead, StoreError> {
    const SQL: &str = "SELECT size, frontier FROM audit_head WHERE id = 1";
    let (size, bytes) = db_run!(conn, |c| {
        let row = sqlx::query(SQL)
            .fetch_optional(&mut *c)
            .await
            .map_err(db("audit head"))?
            .ok_or_else(|| StoreError::corrupt(HEAD, "the head row is missing"))?;
        (row.int("size")?, row.bytes("frontier")?)
    });
    let size = to_u64(HEAD, "size", size)?;
    let frontier =
        Frontier::from_bytes(size, &bytes).map_err(|e| StoreError::corrupt(HEAD, e.to_string()))?;
    Ok(AuditHead {
        size,
        root: frontier.root(),
    })
}

/// Up to `limit` entries from leaf index `from` on, in order.
pub(crate) async fn entries(
    mut conn: Conn<'_>,
    from: u64,
    limit: u32,
) -> Result<Vec<AuditRow>, StoreError> {
    const SQL: &str = "SELECT seq, leaf FROM audit_entries WHERE seq >= $1 ORDER BY seq LIMIT $2";
    let from = int(from, "audit entries: from")?;
    db_run!(conn, |c| {
        let rows = sqlx::query(SQL)
            .bind(from)
            .bind(i64::from(limit))
            .fetch_all(&mut *c)
            .await
            .map_err(db("audit entries"))?;
        rows.iter()
            .map(|row| {
                Ok(AuditRow {
                    seq: to_u64("audit_entries", "seq", row.int("seq")?)?,
                    line: row.bytes("leaf")?,
                })
            })
            .collect()
    })
}

/// Up to `limit` entries from leaf index `from` on whose target lies inside `scope`, in order: an org's
/// entries (any project and env of it, and those on the org itself), a project's, or an environment's; the
/// deployment scope is every entry ([`entries`]). Each query reads one index (migrations 0005 and 0011).
pub(crate) async fn entries_in(
    mut conn: Conn<'_>,
    scope: &BindingScope,
    from: u64,
    limit: u32,
) -> Result<Vec<AuditRow>, StoreError> {
    const ORG: &str = "SELECT seq, leaf FROM audit_entries WHERE org = $1 AND seq >= $2 \
         ORDER BY seq LIMIT $3";
    const PROJECT: &str = "SELECT seq, leaf FROM audit_entries WHERE org = $1 AND project = $2 \
         AND seq >= $3 ORDER BY seq LIMIT $4";
    const ENV: &str = "SELECT seq, leaf FROM audit_entries WHERE org = $1 AND project = $2 \
         AND env = $3 AND seq >= $4 ORDER BY seq LIMIT $5";
    let Some(org) = scope.org_part() else {
        return entries(conn, from, limit).await;
    };
    let project = scope.project_part().map(|p| p.as_str());
    let env = scope.env_part().map(|e| e.as_str());
    let from = int(from, "audit entries: from")?;
    let limit = i64::from(limit);
    db_run!(conn, |c| {
        let query = match (project, env) {
            (None, _) => sqlx::query(ORG).bind(org.as_str()),
            (Some(project), None) => sqlx::query(PROJECT).bind(org.as_str()).bind(project),
            (Some(project), Some(env)) => {
                sqlx::query(ENV).bind(org.as_str()).bind(project).bind(env)
            }
        }
        .bind(from)
        .bind(limit);
        let rows = query
            .fetch_all(&mut *c)
            .await
            .map_err(db("audit entries in scope"))?;
        rows.iter()
            .map(|row| {
                Ok(AuditRow {
                    seq: to_u64("audit_entries", "seq", row.int("seq")?)?,
                    line: row.bytes("leaf")?,
                })
            })
            .collect()
    })
}

/// The stored hashes of `ids`; a missing one is corruption (every complete subtree is written with its leaf).
async fn nodes(mut conn: Conn<'_>, ids: &[NodeId]) -> Result<HashMap<NodeId, Hash>, StoreError> {
    const NODE: &str = "SELECT hash FROM audit_nodes WHERE level = $1 AND idx = $2";
    const LEAF: &str = "SELECT leaf_hash FROM audit_entries WHERE seq = $1";
    let mut out = HashMap::with_capacity(ids.len());
    for id in ids {
        if out.contains_key(id) {
            continue;
        }
        let index = int(id.index, "audit node index")?;
        let found: Option<Vec<u8>> = db_run!(conn, |c| if id.level == 0 {
            sqlx::query_scalar(LEAF)
                .bind(index)
                .fetch_optional(&mut *c)
                .await
        } else {
            sqlx::query_scalar(NODE)
                .bind(i64::from(id.level))
                .bind(index)
                .fetch_optional(&mut *c)
                .await
        }
        .map_err(db("audit nodes")))?;
        let bytes = found.ok_or_else(|| {
            StoreError::corrupt(
                "audit_nodes",
                format!(
                    "the subtree at level {} index {} is missing",
                    id.level, id.index
                ),
            )
        })?;
        out.insert(*id, to_hash("audit_nodes", "hash", bytes)?);
    }
    Ok(out)
}

struct Fetched(HashMap<NodeId, Hash>);

impl NodeSource for Fetched {
    type Error = NodeId;
    fn node(&self, id: NodeId) -> Result<Hash, NodeId> {
        self.0.get(&id).copied().ok_or(id)
    }
}

fn proof_error(e: ProofError<NodeId>) -> StoreError {
    match e {
        ProofError::Range(reason) => StoreError::invalid("audit proof", reason),
        ProofError::Source(id) => StoreError::corrupt(
            "audit_nodes",
            format!(
                "the subtree at level {} index {} is missing",
                id.level, id.index
            ),
        ),
    }
}

async fn check_size(conn: Conn<'_>, size: u64) -> Result<(), StoreError> {
    let head = head(conn).await?;
    if size > head.size {
        return Err(StoreError::invalid(
            "audit proof",
            format!("the log holds {} entries, not {size}", head.size),
        ));
    }
    Ok(())
}

/// The root hash of the first `size` entries.
pub(crate) async fn root(mut conn: Conn<'_>, size: u64) -> Result<Hash, StoreError> {
    check_size(conn.reborrow(), size).await?;
    let source = Fetched(nodes(conn, &merkle::range_nodes(0, size)).await?);
    merkle::root(&source, size).map_err(proof_error)
}

/// The inclusion proof of entry `index` in the tree of the first `size` entries.
pub(crate) async fn inclusion_proof(
    mut conn: Conn<'_>,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, StoreError> {
    check_size(conn.reborrow(), size).await?;
    let ids = merkle::nodes_for(&merkle::inclusion_ranges(index, size));
    let source = Fetched(nodes(conn, &ids).await?);
    merkle::inclusion_proof(&source, index, size).map_err(proof_error)
}

/// The consistency proof from the first `old` entries to the first `new`.
pub(crate) async fn consistency_proof(
    mut conn: Conn<'_>,
    old: u64,
    new: u64,
) -> Result<Vec<Hash>, StoreError> {
    check_size(conn.reborrow(), new).await?;
    let ids = merkle::nodes_for(&merkle::consistency_ranges(old, new));
    let source = Fetched(nodes(conn, &ids).await?);
    merkle::consistency_proof(&source, old, new).map_err(proof_error)
}

/// Stores a signed checkpoint; one per size, the first kept.
pub(crate) async fn save_checkpoint(
    mut conn: Conn<'_>,
    cp: &StoredCheckpoint,
) -> Result<(), StoreError> {
    const SQL: &str = "INSERT INTO audit_checkpoints (size, root, note, signed_unix_ms) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (size) DO NOTHING";
    let size = int(cp.size, "audit checkpoint size")?;
    db_run!(conn, |c| {
        sqlx::query(SQL)
            .bind(size)
            .bind(cp.root.as_slice())
            .bind(cp.note.as_str())
            .bind(cp.signed_unix_ms)
            .execute(&mut *c)
            .await
            .map_err(db("audit save checkpoint"))?;
    });
    Ok(())
}

/// The stored checkpoint of the largest size, or of exactly `size` when given.
pub(crate) async fn checkpoint(
    mut conn: Conn<'_>,
    size: Option<u64>,
) -> Result<Option<StoredCheckpoint>, StoreError> {
    const LATEST: &str = "SELECT size, root, note, signed_unix_ms FROM audit_checkpoints \
         ORDER BY size DESC LIMIT 1";
    const AT: &str =
        "SELECT size, root, note, signed_unix_ms FROM audit_checkpoints WHERE size = $1";
    let at = size.map(|s| int(s, "audit checkpoint size")).transpose()?;
    db_run!(conn, |c| {
        let row = match at {
            Some(at) => sqlx::query(AT).bind(at).fetch_optional(&mut *c).await,
            None => sqlx::query(LATEST).fetch_optional(&mut *c).await,
        }
        .map_err(db("audit checkpoint"))?;
        row.map(|row| {
            const T: &str = "audit_checkpoints";
            Ok(StoredCheckpoint {
                size: to_u64(T, "size", row.int("size")?)?,
                root: to_hash(T, "root", row.bytes("root")?)?,
                note: row.text("note")?,
                signed_unix_ms: row.int("signed_unix_ms")?,
            })
        })
        .transpose()
    })
}
