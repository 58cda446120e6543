//! Trace keys known centrally: the `agent.trace_key` record an agent writes to announce the Ed25519 public key
//! it signs Gait traces with (at its first start and after every rotation), so that the aggregator can bind the
//! key to the certificate identity that delivered the record and an auditor can verify any trace the fleet
//! signed from an export. The aggregator takes the identity from the verified certificate, never from the
//! payload.

use serde::{Deserialize, Serialize};

/// Record kind of a trace key announcement.
pub const TRACE_KEY_KIND: &str = "agent.trace_key";
/// Schema id in the payload.
pub const TRACE_KEY_SCHEMA: &str = "gait.agent.trace_key";

/// The JSON payload of an `agent.trace_key` record.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct TraceKeyPayload {
    /// [`TRACE_KEY_SCHEMA`].
    pub schema_id: String,
    /// Gait key id of the public key (`key_id` in a trace's signature: hex SHA-256 of the raw key).
    pub key_id: String,
    /// The raw 32-byte Ed25519 public key, standard base64 (the form of Gait's `*.key` public key files).
    pub public_key: String,
    /// Key id of the key this one replaces, when it is a rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<String>,
    /// When the agent started signing with it, Unix ms on the agent's clock.
    pub since_unix_ms: i64,
}
