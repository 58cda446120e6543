//! Trace keys known centrally: at start the daemon announces the key it signs Gait traces with (an
//! `agent.trace_key` record, class `status`, never shed) unless this database already holds that key id as
//! announced. A different key (a replaced `gate.signing_key` file, a regenerated key) is announced with
//! `replaces` naming the previous one, so the aggregator keeps both and old traces still verify.
//!
//! The announced key id is written to the `trace_key_announced` table only after the record is durable in the
//! outbox: a crash in between announces the same key again at the next start, which the aggregator takes as a
//! repeat. A failed announcement is logged and retried at the next start; decisions do not wait for it.

use std::sync::Arc;

use gait_wire::RecordClass;
use gait_wire::trace_key::{TRACE_KEY_KIND, TRACE_KEY_SCHEMA, TraceKeyPayload};
use redb::TableDefinition;

use crate::db::{AgentDb, DbError};
use crate::outbox::{AppendOutcome, OutboxError};
use crate::state::{AgentState, now_unix_ms};

/// Key id of the last announced trace key, under [`CURRENT`].
const ANNOUNCED: TableDefinition<'static, &str, &str> = TableDefinition::new("trace_key_announced");
const CURRENT: &str = "current";

/// What [`announce`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Announced {
    /// The key was announced before; nothing was written.
    Already,
    /// A record announcing the key was appended at `seq`, replacing `replaces` when set.
    Now {
        /// Outbox seq of the `agent.trace_key` record.
        seq: u64,
        /// Key id of the key announced before this one.
        replaces: Option<String>,
    },
}

/// Why the key could not be announced (retried at the next start).
#[derive(Debug, thiserror::Error)]
pub(crate) enum AnnounceError {
    /// The agent database failed.
    #[error("trace key announcement: {0}")]
    Db(#[from] DbError),
    /// The record could not be appended.
    #[error("trace key announcement: {0}")]
    Outbox(#[from] OutboxError),
    /// Encoding or a blocking task failed.
    #[error("trace key announcement: {0}")]
    Internal(String),
}

/// Announces the trace key of `state`'s gate unless it already was; see the module docs.
pub(crate) async fn announce(state: &Arc<AgentState>) -> Result<Announced, AnnounceError> {
    let public_key = state.gate().public_key();
    let key_id = public_key.key_id();
    let db = state.db().clone();
    let previous = tokio::task::spawn_blocking(move || read_announced(&db))
        .await
        .map_err(|e| AnnounceError::Internal(format!("read task failed: {e}")))??;
    if previous.as_deref() == Some(key_id.as_str()) {
        return Ok(Announced::Already);
    }
    let payload = TraceKeyPayload {
        schema_id: TRACE_KEY_SCHEMA.to_owned(),
        key_id: key_id.clone(),
        public_key: public_key.to_gait_public_key(),
        replaces: previous.clone(),
        since_unix_ms: now_unix_ms(),
    };
    let bytes = serde_json::to_vec(&payload)
        .map_err(|e| AnnounceError::Internal(format!("encode: {e}")))?;
    let seq = match state
        .append(RecordClass::Status, TRACE_KEY_KIND.to_owned(), bytes)
        .await?
    {
        AppendOutcome::Appended { seq } => seq,
        // Only `allow` records are ever shed; keep the key unannounced so the next start tries again.
        AppendOutcome::Shed => {
            return Err(AnnounceError::Internal(
                "the outbox shed the record (only allow records should be)".into(),
            ));
        }
    };
    let db = state.db().clone();
    let written = key_id.clone();
    tokio::task::spawn_blocking(move || write_announced(&db, &written))
        .await
        .map_err(|e| AnnounceError::Internal(format!("write task failed: {e}")))??;
    tracing::info!(%key_id, replaces = previous.as_deref().unwrap_or(""), seq,
        "trace signing key announced to the aggregator");
    Ok(Announced::Now {
        seq,
        replaces: previous,
    })
}

/// Announces at start, logging the outcome (a failure is retried at the next start).
pub(crate) async fn announce_at_start(state: &Arc<AgentState>) {
    if let Err(error) = announce(state).await {
        tracing::warn!(%error, key_id = %state.gate().key_id(),
            "trace signing key not announced; traces it signs verify only with its public key file until a restart announces it");
    }
}

fn read_announced(db: &AgentDb) -> Result<Option<String>, DbError> {
    let read = db.redb().begin_read().map_err(|e| db.err(e))?;
    match read.open_table(ANNOUNCED) {
        Ok(table) => Ok(table
            .get(CURRENT)
            .map_err(|e| db.err(e))?
            .map(|v| v.value().to_owned())),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(db.err(e)),
    }
}

fn write_announced(db: &AgentDb, key_id: &str) -> Result<(), DbError> {
    let write = db.redb().begin_write().map_err(|e| db.err(e))?;
    {
        let mut table = write.open_table(ANNOUNCED).map_err(|e| db.err(e))?;
        table.insert(CURRENT, key_id).map_err(|e| db.err(e))?;
    }
    write.commit().map_err(|e| db.err(e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::{Outbox, OutboxLimits};
    use gait_canon::sign::SigningKey;
    use std::path::Path;

    /// The agent state over `dir`, signing traces with `key` (a `gate.signing_key` file).
    async fn state(dir: &Path, key: &Path) -> Arc<AgentState> {
        let db = AgentDb::open(dir.join("agent.redb")).expect("db");
        let outbox = Outbox::open(&db, OutboxLimits::default()).expect("outbox");
        let identity = crate::identity::AgentIdentity::from_uri(
            "spiffe://fleet.example/org/acme/project/pay/env/prod/agent/a-1",
        )
        .expect("identity");
        let gate = crate::gate::engine::GateEngine::open(dir, Some(key)).expect("gate");
        AgentState::open(
            identity,
            "127.0.0.1:7443".into(),
            db,
            outbox,
            gait_bundle::TrustRoot::from_public_keys(Vec::new()),
            Arc::new(gate),
        )
        .await
        .expect("state")
    }

    fn key_file(dir: &Path, name: &str, seed: u8) -> (std::path::PathBuf, String) {
        let key = SigningKey::from_seed(&[seed; 32]);
        let private = dir.join(format!("{name}.key"));
        let public = dir.join(format!("{name}.pub"));
        gait_canon::sign::write_key_pair(&private, &public, &key).expect("key pair");
        (private, key.public_key().key_id())
    }

    fn announcements(state: &AgentState) -> Vec<TraceKeyPayload> {
        state
            .outbox()
            .peek_batch(0, 1000, 1 << 24)
            .expect("peek")
            .into_iter()
            .filter(|r| r.kind == TRACE_KEY_KIND)
            .map(|r| {
                // Status records are never shed under quota (only `allow` ones are).
                assert_eq!(r.class, RecordClass::Status);
                assert!(!r.class.is_sheddable());
                serde_json::from_slice(&r.payload).expect("payload")
            })
            .collect()
    }

    #[tokio::test]
    async fn a_key_is_announced_once_and_a_rotation_names_the_key_it_replaces() {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys = tempfile::tempdir().expect("tempdir");
        let (first, first_id) = key_file(keys.path(), "first", 1);
        let (second, second_id) = key_file(keys.path(), "second", 2);

        let s = state(dir.path(), &first).await;
        let done = announce(&s).await.expect("announce");
        assert!(
            matches!(done, Announced::Now { replaces: None, .. }),
            "{done:?}"
        );
        assert_eq!(announce(&s).await.expect("again"), Announced::Already);
        let sent = announcements(&s);
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert_eq!(sent[0].key_id, first_id);
        assert_eq!(sent[0].schema_id, TRACE_KEY_SCHEMA);
        let public = gait_canon::sign::PublicKey::from_gait_public_key(&sent[0].public_key)
            .expect("gait public key text");
        assert_eq!(public.key_id(), first_id, "the key id is the key's");
        drop(s);

        // A restart with the same key announces nothing; with a new key file, a rotation.
        let s = state(dir.path(), &first).await;
        assert_eq!(announce(&s).await.expect("restart"), Announced::Already);
        drop(s);
        let s = state(dir.path(), &second).await;
        let done = announce(&s).await.expect("rotation");
        assert_eq!(
            done,
            Announced::Now {
                seq: 2,
                replaces: Some(first_id.clone())
            }
        );
        let sent = announcements(&s);
        assert_eq!(sent.len(), 2, "{sent:?}");
        assert_eq!(sent[1].key_id, second_id);
        assert_eq!(sent[1].replaces.as_deref(), Some(first_id.as_str()));
    }
}
