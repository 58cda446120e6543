//! Capture mode: what a `gate.decision` record carries of the intent it judged, as the environment's signed
//! bundle says (`manifest.settings.capture_mode`).
//!
//! - `reference` (the default): digests only (`intent_digest`, and the trace's digests). Nothing of the call's
//!   content leaves the host.
//! - `raw`: the record also carries `normalized_intent`, Gait's §1.3 normalized intent object (the exact JSON
//!   whose DigestJCS is `intent_digest`, so a reader can check it against the digest) — enough to replay
//!   candidate policies against real traffic.
//!
//! A decision is never refused because of its capture: when the normalized intent is larger than
//! [`MAX_CAPTURED_INTENT_BYTES`], or the record with it would break the wire's payload limit, the record keeps
//! the digest and says `intent_truncated: true` instead. An intent that does not normalize has no normalized
//! form; its record carries neither field (its `intent_digest` is empty too).

use gait_bundle::CaptureMode;
use gait_wire::limits::MAX_PAYLOAD_BYTES;
use serde::Serialize;
use serde_json::Value;

/// Largest normalized intent a decision record carries (its JSON bytes). A quarter of the wire's payload limit,
/// so the rest of the record (trace, verdicts, attribution) always fits beside it.
pub const MAX_CAPTURED_INTENT_BYTES: usize = MAX_PAYLOAD_BYTES / 4;

/// Record field holding the environment's capture mode.
pub const FIELD_CAPTURE_MODE: &str = "capture_mode";
/// Record field holding the normalized intent in `raw` mode.
pub const FIELD_NORMALIZED_INTENT: &str = "normalized_intent";
/// Record field set to `true` when the normalized intent was left out for its size.
pub const FIELD_INTENT_TRUNCATED: &str = "intent_truncated";

/// How one record's capture came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Captured {
    /// `reference` mode, or `raw` with an intent that did not normalize: digests only.
    DigestsOnly,
    /// The normalized intent is in the record.
    Intent,
    /// The normalized intent was too large and left out (`intent_truncated: true`).
    Truncated,
}

/// Encodes the decision record `payload` (anything serializing as a JSON object) with the capture fields
/// beside its own: the mode always, in `raw` mode the normalized intent (`normalized_intent`, when the intent
/// normalized) or, if that would be too large, `intent_truncated: true`. `payload_limit` is the largest record
/// the outbox takes. The payload is serialized straight to bytes, once in the common case.
pub fn encode_record<P: Serialize>(
    payload: &P,
    mode: CaptureMode,
    intent: Option<Value>,
    payload_limit: usize,
) -> Result<(Vec<u8>, Captured), serde_json::Error> {
    let encode = |intent: Option<&Value>, intent_truncated: Option<bool>| {
        serde_json::to_vec(&WithCapture {
            payload,
            capture_mode: mode.as_str(),
            normalized_intent: intent,
            intent_truncated,
        })
    };
    let intent = match (mode, intent) {
        (CaptureMode::Raw, Some(intent)) => intent,
        _ => return Ok((encode(None, None)?, Captured::DigestsOnly)),
    };
    let intent_bytes = serde_json::to_vec(&intent)?.len();
    if intent_bytes <= MAX_CAPTURED_INTENT_BYTES {
        let bytes = encode(Some(&intent), None)?;
        if bytes.len() <= payload_limit {
            return Ok((bytes, Captured::Intent));
        }
    }
    Ok((encode(None, Some(true))?, Captured::Truncated))
}

/// A record payload with the capture fields added (see [`encode_record`]).
#[derive(Serialize)]
struct WithCapture<'a, P> {
    #[serde(flatten)]
    payload: &'a P,
    capture_mode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    normalized_intent: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    intent_truncated: Option<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record() -> Value {
        json!({"schema": "gait.agent.gate_decision", "intent_digest": "ab", "verdict": "allow"})
    }

    fn decode(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn reference_mode_records_digests_only() {
        let intent = json!({"tool_name": "tool.read", "args": {"path": "/secret"}});
        let (bytes, captured) = encode_record(
            &record(),
            CaptureMode::Reference,
            Some(intent),
            MAX_PAYLOAD_BYTES,
        )
        .unwrap();
        let v = decode(&bytes);
        assert_eq!(captured, Captured::DigestsOnly);
        assert_eq!(v["capture_mode"], "reference");
        assert!(v.get(FIELD_NORMALIZED_INTENT).is_none(), "{v}");
        assert!(v.get(FIELD_INTENT_TRUNCATED).is_none(), "{v}");
        assert!(!String::from_utf8_lossy(&bytes).contains("/secret"));
    }

    #[test]
    fn raw_mode_records_the_normalized_intent() {
        let intent = json!({"tool_name": "tool.read", "args": {"path": "/tmp/x"}});
        let (bytes, captured) = encode_record(
            &record(),
            CaptureMode::Raw,
            Some(intent.clone()),
            MAX_PAYLOAD_BYTES,
        )
        .unwrap();
        let v = decode(&bytes);
        assert_eq!(captured, Captured::Intent);
        assert_eq!(v["capture_mode"], "raw");
        assert_eq!(v[FIELD_NORMALIZED_INTENT], intent);
        assert!(v.get(FIELD_INTENT_TRUNCATED).is_none(), "{v}");
        assert_eq!(v["intent_digest"], "ab", "the digest stays");
    }

    #[test]
    fn raw_mode_without_a_normalized_intent_records_the_mode_only() {
        let (bytes, captured) =
            encode_record(&record(), CaptureMode::Raw, None, MAX_PAYLOAD_BYTES).unwrap();
        let v = decode(&bytes);
        assert_eq!(captured, Captured::DigestsOnly);
        assert_eq!(v["capture_mode"], "raw");
        assert!(v.get(FIELD_NORMALIZED_INTENT).is_none(), "{v}");
    }

    #[test]
    fn a_huge_intent_is_truncated_not_refused() {
        let huge =
            json!({"tool_name": "t", "args": {"blob": "x".repeat(MAX_CAPTURED_INTENT_BYTES)}});
        let (bytes, captured) =
            encode_record(&record(), CaptureMode::Raw, Some(huge), MAX_PAYLOAD_BYTES).unwrap();
        let v = decode(&bytes);
        assert_eq!(captured, Captured::Truncated);
        assert_eq!(v[FIELD_INTENT_TRUNCATED], true);
        assert!(v.get(FIELD_NORMALIZED_INTENT).is_none());
        assert_eq!(v["intent_digest"], "ab");
        assert!(bytes.len() < 1024, "{}", bytes.len());
    }

    #[test]
    fn an_intent_that_would_overflow_the_record_is_truncated() {
        // Under the intent budget, but the record with it would pass the outbox's limit.
        let intent = json!({"tool_name": "t", "args": {"blob": "x".repeat(2048)}});
        let (bytes, captured) =
            encode_record(&record(), CaptureMode::Raw, Some(intent), 1024).unwrap();
        assert_eq!(captured, Captured::Truncated);
        assert!(bytes.len() <= 1024);
        assert_eq!(decode(&bytes)[FIELD_INTENT_TRUNCATED], true);
    }
}
