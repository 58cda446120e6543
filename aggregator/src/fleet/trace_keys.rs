//! Trace keys known centrally (issue 15 item 4): the Ed25519 keys agents sign Gait traces with, so that any
//! trace the fleet signed verifies offline from an export (`gait-aggregator trace-keys --out DIR`).
//!
//! An agent announces its key with an `agent.trace_key` record ([`gait_wire::trace_key`]). When a batch
//! carrying one commits, the key is registered in the same transaction, bound to the identity of the verified
//! certificate that delivered it — tenancy and agent id of the connection's [`AgentKey`], the certificate
//! serial of the connection — never to anything the payload claims about itself. An announcement whose key id
//! is not the SHA-256 of its public key (or that does not parse) is not registered; its record still commits
//! like any other, so the evidence of the attempt stays. A rotation adds a key beside the old one (which is
//! never removed), so traces signed before it still verify.

use gait_store::{
    AgentId, AgentKey, BatchOutcome, CertSerial, MAX_TRACE_KEYS_PAGE, NewRecord, NewTraceKey,
    StoreError, StoreTx, Tenant, TraceKey,
};
use gait_wire::trace_key::{TRACE_KEY_KIND, TRACE_KEY_SCHEMA, TraceKeyPayload};

use super::{Fleet, FleetError};
use crate::auth::Authorized;

/// Why an announcement was not registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnnouncementError {
    /// The payload is not a trace key announcement.
    #[error("record {seq}: not an agent.trace_key payload: {detail}")]
    Malformed {
        /// Seq of the record.
        seq: u64,
        /// What is wrong.
        detail: String,
    },
    /// `public_key` is not Gait's form of an Ed25519 public key.
    #[error("record {seq}: public_key is not base64 of a raw Ed25519 public key: {detail}")]
    BadKey {
        /// Seq of the record.
        seq: u64,
        /// What is wrong.
        detail: String,
    },
    /// `key_id` is not the SHA-256 of `public_key`.
    #[error(
        "record {seq}: key_id {claimed} does not match its public key (whose key id is {actual})"
    )]
    KeyIdMismatch {
        /// Seq of the record.
        seq: u64,
        /// The key id the payload claims.
        claimed: String,
        /// The key id of the public key it carries.
        actual: String,
    },
}

/// The trace key announcements of a batch that `serial`'s connection delivered: the verified ones, and why
/// each other one is not registered.
pub fn announcements(
    rows: &[NewRecord],
    serial: &CertSerial,
) -> (Vec<NewTraceKey>, Vec<AnnouncementError>) {
    let mut keys = Vec::new();
    let mut refused = Vec::new();
    for row in rows.iter().filter(|r| r.kind == TRACE_KEY_KIND) {
        match verify(row, serial) {
            Ok(key) => keys.push(key),
            Err(e) => refused.push(e),
        }
    }
    (keys, refused)
}

fn verify(row: &NewRecord, serial: &CertSerial) -> Result<NewTraceKey, AnnouncementError> {
    let seq = row.seq;
    let payload: TraceKeyPayload =
        serde_json::from_slice(&row.payload).map_err(|e| AnnouncementError::Malformed {
            seq,
            detail: e.to_string(),
        })?;
    if payload.schema_id != TRACE_KEY_SCHEMA {
        return Err(AnnouncementError::Malformed {
            seq,
            detail: format!(
                "schema_id is {:?}, expected {TRACE_KEY_SCHEMA:?}",
                payload.schema_id
            ),
        });
    }
    if let Some(replaces) = &payload.replaces
        && !is_key_id(replaces)
    {
        return Err(AnnouncementError::Malformed {
            seq,
            detail: "replaces is not a key id (64 lowercase hex)".into(),
        });
    }
    let public = gait_canon::sign::PublicKey::from_gait_public_key(payload.public_key.trim())
        .map_err(|e| AnnouncementError::BadKey {
            seq,
            detail: e.to_string(),
        })?;
    let actual = public.key_id();
    if actual != payload.key_id {
        return Err(AnnouncementError::KeyIdMismatch {
            seq,
            claimed: payload.key_id,
            actual,
        });
    }
    Ok(NewTraceKey {
        key_id: actual,
        // Re-encoded from the parsed key: one spelling per key, whatever whitespace the payload carried.
        public_key: public.to_gait_public_key(),
        replaces: payload.replaces,
        cert_serial: serial.clone(),
        record_seq: seq,
        since_unix_ms: payload.since_unix_ms,
    })
}

fn is_key_id(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Registers `keys` for `agent` inside the batch's transaction, skipping those whose record was not stored
/// because another instance holds its seq; returns how many keys are new.
pub async fn register(
    tx: &mut StoreTx,
    agent: &AgentKey,
    outcome: &BatchOutcome,
    keys: &[NewTraceKey],
    now_ms: i64,
) -> Result<u64, StoreError> {
    let mut added = 0;
    for key in keys {
        if outcome.conflict_seqs.contains(&key.record_seq) {
            continue;
        }
        match tx.register_trace_key(agent, key, now_ms).await {
            Ok(true) => {
                tracing::info!(%agent, key_id = %key.key_id, replaces = key.replaces.as_deref().unwrap_or(""),
                    cert_serial = %key.cert_serial, "trace key registered");
                added += 1;
            }
            Ok(false) => {}
            // The store checks its input before any SQL runs, so the transaction is intact: an announcement the
            // store will not hold must not stop the agent's record stream (verification above rules this out).
            Err(error @ StoreError::InvalidInput { .. }) => {
                tracing::warn!(%agent, %error, seq = key.record_seq, "trace key not registered");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(added)
}

impl Fleet {
    /// The trace keys registered in the caller's environment, only `agent_id`'s when given, by agent then
    /// registration (at most [`MAX_TRACE_KEYS_PAGE`]).
    pub async fn trace_keys(
        &self,
        caller: &Authorized<Tenant>,
        agent_id: Option<&AgentId>,
    ) -> Result<Vec<TraceKey>, FleetError> {
        Ok(self
            .store
            .trace_keys(
                caller.target(),
                agent_id.map(|a| a.as_str()),
                MAX_TRACE_KEYS_PAGE,
            )
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gait_canon::sign::SigningKey;
    use serde_json::json;

    fn row(seq: u64, payload: serde_json::Value) -> NewRecord {
        NewRecord {
            seq,
            prev_hash: [0; 32],
            hash: [0; 32],
            class: "status".into(),
            kind: TRACE_KEY_KIND.into(),
            created_unix_ms: 1,
            bundle_epoch: None,
            bundle_digest: None,
            bundle_since_ms: None,
            payload: serde_json::to_vec(&payload).unwrap(),
        }
    }

    fn serial() -> CertSerial {
        "0a1b2c".parse().unwrap()
    }

    #[test]
    fn a_matching_announcement_is_registered_with_the_connection_serial() {
        let key = SigningKey::from_seed(&[7; 32]).public_key();
        let old = SigningKey::from_seed(&[8; 32]).public_key().key_id();
        let (keys, refused) = announcements(
            &[row(
                3,
                json!({"schema_id": TRACE_KEY_SCHEMA, "key_id": key.key_id(),
                    "public_key": key.to_gait_public_key(), "replaces": old, "since_unix_ms": 5}),
            )],
            &serial(),
        );
        assert!(refused.is_empty(), "{refused:?}");
        assert_eq!(
            keys,
            vec![NewTraceKey {
                key_id: key.key_id(),
                public_key: key.to_gait_public_key(),
                replaces: Some(old),
                cert_serial: serial(),
                record_seq: 3,
                since_unix_ms: 5,
            }]
        );
    }

    #[test]
    fn a_forged_or_malformed_announcement_is_not_registered() {
        let key = SigningKey::from_seed(&[7; 32]).public_key();
        let other = SigningKey::from_seed(&[9; 32]).public_key();
        let rows = [
            // Claims another key's id.
            row(
                1,
                json!({"schema_id": TRACE_KEY_SCHEMA, "key_id": other.key_id(),
                    "public_key": key.to_gait_public_key(), "since_unix_ms": 1}),
            ),
            row(
                2,
                json!({"schema_id": TRACE_KEY_SCHEMA, "key_id": key.key_id(),
                    "public_key": "bm90IGEga2V5", "since_unix_ms": 1}),
            ),
            row(3, json!({"key_id": key.key_id()})),
            row(
                4,
                json!({"schema_id": "other", "key_id": key.key_id(),
                    "public_key": key.to_gait_public_key(), "since_unix_ms": 1}),
            ),
        ];
        let (keys, refused) = announcements(&rows, &serial());
        assert!(keys.is_empty(), "{keys:?}");
        assert_eq!(refused.len(), 4, "{refused:?}");
        assert!(matches!(
            &refused[0],
            AnnouncementError::KeyIdMismatch { seq: 1, .. }
        ));
        assert!(matches!(
            &refused[1],
            AnnouncementError::BadKey { seq: 2, .. }
        ));
        assert!(matches!(
            &refused[2],
            AnnouncementError::Malformed { seq: 3, .. }
        ));
        assert!(matches!(
            &refused[3],
            AnnouncementError::Malformed { seq: 4, .. }
        ));
    }
}
