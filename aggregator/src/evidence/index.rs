//! What the evidence index holds of a record batch: the [`NewIndexEntry`] of every decision record
//! (`gate.decision`, the payload the agent's local API writes) and every artifact record (`artifact.*`,
//! [`gait_artifact::evidence::ArtifactRecord`]) whose payload reads, computed before the batch commits and
//! written by the store in the batch's own transaction ([`gait_store::Store::commit_batch_indexed`]).
//!
//! Rules:
//! - Only the record kind picks a parser; any other kind (a producer's own) costs one string comparison.
//! - A payload that does not read (an older agent, a producer's own `gate.decision`) is not indexed and the
//!   record is committed as always: the index never refuses a record.
//! - Decisions are read into small borrowed structs (no JSON tree): the ingest hot path stays cheap.
//! - What is stored is checked here, so the store never refuses an entry: a verdict or stage the protocol does
//!   not know leaves the record unindexed (verdict) or the field empty (stage); a digest that is not 64
//!   lowercase hex is left out; free text is cut to [`MAX_INDEXED_TEXT_BYTES`] and stripped of control
//!   characters; at most [`MAX_RUN_IDS`] run ids per artifact.

use std::borrow::Cow;

use gait_artifact::evidence::{
    ARTIFACT_KIND_PREFIX, ARTIFACT_RECORD_SCHEMA, ArtifactKind, ArtifactRecord,
};
use gait_bundle::Stage;
use gait_policy::Verdict;
use gait_store::{EvidenceClass, IndexFields, IndexedCall, NewIndexEntry, NewRecord};
use serde::Deserialize;

/// The record kind of a gate decision (written by the agent's local API).
pub const DECISION_KIND: &str = "gate.decision";

/// Longest free-text field kept in the index (tool name, policy name, file name, ids); longer text is cut.
pub const MAX_INDEXED_TEXT_BYTES: usize = 256;

/// Most run ids of one artifact kept in the index.
pub const MAX_RUN_IDS: usize = 64;

/// The index entries of `records` (in batch order; records that are not indexed have none).
pub fn entries(records: &[NewRecord]) -> Vec<NewIndexEntry> {
    records.iter().filter_map(entry).collect()
}

/// The index entry of one record, if it is a decision or artifact record whose payload reads.
pub fn entry(record: &NewRecord) -> Option<NewIndexEntry> {
    let mut fields = if record.kind == DECISION_KIND {
        (EvidenceClass::Decision, decision(&record.payload)?)
    } else if record.kind.starts_with(ARTIFACT_KIND_PREFIX) {
        (
            EvidenceClass::Artifact,
            artifact(&record.kind, &record.payload)?,
        )
    } else {
        return None;
    };
    // The incident family, so fleet analytics fold the row without reading it back (crate::analysis::upkeep).
    fields.1.family = crate::analysis::upkeep::family_of(fields.0, &fields.1);
    Some(NewIndexEntry {
        seq: record.seq,
        class: fields.0,
        fields: fields.1,
    })
}

/// The fields of a decision payload the index reads; unknown fields are skipped by serde without building
/// anything.
#[derive(Deserialize)]
struct DecisionPayload<'a> {
    #[serde(borrow)]
    verdict: Cow<'a, str>,
    #[serde(borrow, default)]
    enforced_verdict: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    policy_verdict: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    policy_digest: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    policy_name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    intent_digest: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    trace_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tool_name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    stage: Option<StagePayload<'a>>,
    #[serde(borrow, default)]
    reason_codes: Vec<Cow<'a, str>>,
    #[serde(borrow, default)]
    matched_rule: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    intent_profile: Option<ProfilePayload<'a>>,
    /// The signed trace (`gait.gate.trace`): only its arguments digest is read, from the raw bytes, so a trace
    /// of another shape costs the decision that field and nothing else.
    #[serde(borrow, default)]
    trace: Option<&'a serde_json::value::RawValue>,
    /// Present in capture mode `raw`; only its presence is read here (replay reads the intent itself).
    #[serde(default)]
    normalized_intent: Option<serde::de::IgnoredAny>,
}

/// The field of a decision's embedded trace the index keeps.
#[derive(Deserialize)]
struct TraceArgs<'a> {
    #[serde(borrow, default)]
    args_digest: Option<Cow<'a, str>>,
}

/// The intent profile a decision record carries (agent `IntentProfile`).
#[derive(Deserialize)]
struct ProfilePayload<'a> {
    #[serde(borrow, default)]
    risk_class: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    endpoint_classes: Vec<Cow<'a, str>>,
    #[serde(default)]
    destructive: bool,
}

/// Most endpoint classes of one intent kept in the index (Gait knows ten).
pub const MAX_ENDPOINT_CLASSES: usize = 16;

#[derive(Deserialize)]
struct StagePayload<'a> {
    #[serde(borrow)]
    stage: Cow<'a, str>,
    #[serde(borrow, default)]
    candidate_digest: Option<Cow<'a, str>>,
    #[serde(default)]
    would_have_blocked: bool,
    #[serde(borrow, default)]
    active_verdict: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    candidate_verdict: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    candidate_reason_codes: Vec<Cow<'a, str>>,
    #[serde(default)]
    candidate_error: bool,
}

fn decision(payload: &[u8]) -> Option<IndexFields> {
    let p: DecisionPayload<'_> = serde_json::from_slice(payload).ok()?;
    // The verdict enforced: `enforced_verdict` when the agent wrote it, else `verdict` (the same value).
    let verdict = Verdict::parse(p.enforced_verdict.as_deref().unwrap_or(&p.verdict))?;
    let stage = p.stage.as_ref();
    Some(IndexFields {
        verdict: Some(verdict.as_str().to_owned()),
        policy_verdict: p
            .policy_verdict
            .as_deref()
            .and_then(Verdict::parse)
            .map(|v| v.as_str().to_owned()),
        policy_digest: digest(p.policy_digest.as_deref()),
        policy_name: text(p.policy_name.as_deref()),
        intent_digest: digest(p.intent_digest.as_deref()),
        trace_id: text(p.trace_id.as_deref()),
        tool_name: text(p.tool_name.as_deref()),
        stage: stage
            .and_then(|s| Stage::parse(&s.stage))
            .map(|s| s.as_str().to_owned()),
        candidate_digest: digest(stage.and_then(|s| s.candidate_digest.as_deref())),
        would_have_blocked: stage.map(|s| s.would_have_blocked),
        active_verdict: verdict_of(stage.and_then(|s| s.active_verdict.as_deref())),
        candidate_verdict: verdict_of(stage.and_then(|s| s.candidate_verdict.as_deref())),
        reason_codes: codes(&p.reason_codes),
        candidate_reason_codes: codes(stage.map_or(&[][..], |s| &s.candidate_reason_codes)),
        candidate_error: stage.and_then(|s| s.candidate_error.then_some(true)),
        // A decision without an intent digest cannot be replayed (its intent did not normalize).
        captured: p.normalized_intent.is_some()
            && p.intent_digest.as_deref().is_some_and(is_digest),
        matched_rule: text(p.matched_rule.as_deref()),
        risk_class: text(
            p.intent_profile
                .as_ref()
                .and_then(|i| i.risk_class.as_deref()),
        ),
        endpoint_classes: p.intent_profile.as_ref().and_then(endpoint_classes),
        destructive: p.intent_profile.as_ref().map(|i| i.destructive),
        args_digest: p
            .trace
            .and_then(|t| serde_json::from_str::<TraceArgs<'_>>(t.get()).ok())
            .and_then(|t| digest(t.args_digest.as_deref())),
        ..IndexFields::default()
    })
}

/// The endpoint classes of a profile as indexed: cleaned, sorted, without repeats, comma-joined (a class with a
/// comma in it cannot be told apart, so it is left out); nothing when none is left.
fn endpoint_classes(profile: &ProfilePayload<'_>) -> Option<String> {
    let mut classes: Vec<String> = profile
        .endpoint_classes
        .iter()
        .filter_map(|c| text(Some(c)))
        .filter(|c| !c.contains(','))
        .take(MAX_ENDPOINT_CLASSES)
        .collect();
    classes.sort_unstable();
    classes.dedup();
    (!classes.is_empty()).then(|| classes.join(","))
}

fn artifact(kind: &str, payload: &[u8]) -> Option<IndexFields> {
    let record: ArtifactRecord = serde_json::from_slice(payload).ok()?;
    if record.schema != ARTIFACT_RECORD_SCHEMA
        || ArtifactKind::from_record_kind(kind) != Some(record.artifact_kind)
    {
        return None;
    }
    let sha256 = digest(Some(&record.sha256))?;
    let mut run_ids: Vec<String> = record
        .run_ids
        .iter()
        .filter_map(|r| text(Some(r)))
        .take(MAX_RUN_IDS)
        .collect();
    if let Some(runpack) = &record.runpack
        && run_ids.len() < MAX_RUN_IDS
        && let Some(run) = text(Some(&runpack.run_id))
        && !run_ids.contains(&run)
    {
        run_ids.push(run);
    }
    run_ids.sort_unstable();
    run_ids.dedup();
    let trace = record.trace.as_ref();
    Some(IndexFields {
        verdict: trace
            .and_then(|t| Verdict::parse(&t.trace_verdict))
            .map(|v| v.as_str().to_owned()),
        policy_digest: digest(trace.map(|t| t.trace_policy_digest.as_str())),
        intent_digest: digest(trace.map(|t| t.trace_intent_digest.as_str())),
        trace_id: text(trace.map(|t| t.trace_id.as_str())),
        artifact_kind: Some(record.artifact_kind.as_str().to_owned()),
        sha256: Some(sha256),
        size_bytes: Some(record.size_bytes),
        file_name: text(Some(&record.file_name)),
        producer_version: text(Some(&record.producer_version)),
        signature_status: text(Some(&record.signature_status)),
        regress_status: text(record.regress.as_ref().map(|r| r.regress_status.as_str())),
        failure_kind: text(
            record
                .regress
                .as_ref()
                .map(|r| r.top_failure_reason.as_str()),
        ),
        run_ids,
        // Calls whose tool or digests do not read as such are left out, never stored half-formed.
        runpack_calls: record
            .calls
            .iter()
            .take(gait_artifact::evidence::MAX_RUNPACK_CALLS)
            .enumerate()
            .filter_map(|(i, c)| {
                Some(IndexedCall {
                    index: u32::try_from(i).ok()?,
                    tool_name: text(Some(&c.tool_name))?,
                    args_digest: digest(Some(&c.args_digest))?,
                    result_digest: digest(Some(&c.result_digest)),
                })
            })
            .collect(),
        ..IndexFields::default()
    })
}

/// Most reason codes of one side of a decision kept in the index (Gait's policies give a handful).
pub const MAX_REASON_CODES: usize = 32;

fn verdict_of(value: Option<&str>) -> Option<String> {
    value
        .and_then(Verdict::parse)
        .map(|v| v.as_str().to_owned())
}

/// Reason codes as indexed: cleaned like free text, at most [`MAX_REASON_CODES`].
fn codes(list: &[Cow<'_, str>]) -> Vec<String> {
    list.iter()
        .filter_map(|c| text(Some(c)))
        .take(MAX_REASON_CODES)
        .collect()
}

/// A SHA-256 digest as 64 lowercase hex characters (the form every Gait digest takes), or nothing.
pub fn is_digest(value: &str) -> bool {
    value.len() == 64
        && value
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn digest(value: Option<&str>) -> Option<String> {
    value.filter(|v| is_digest(v)).map(str::to_owned)
}

/// Free text as indexed: empty is nothing, control characters are dropped, cut to [`MAX_INDEXED_TEXT_BYTES`] on
/// a character boundary.
fn text(value: Option<&str>) -> Option<String> {
    let value = value?;
    let mut out = String::with_capacity(value.len().min(MAX_INDEXED_TEXT_BYTES));
    for c in value.chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > MAX_INDEXED_TEXT_BYTES {
            break;
        }
        out.push(c);
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: &str, payload: &str) -> NewRecord {
        NewRecord {
            seq: 7,
            prev_hash: [0; 32],
            hash: [1; 32],
            class: "decision".into(),
            kind: kind.into(),
            created_unix_ms: 0,
            bundle_epoch: None,
            bundle_digest: None,
            bundle_since_ms: None,
            payload: payload.as_bytes().to_vec(),
        }
    }

    fn hex64(c: char) -> String {
        std::iter::repeat_n(c, 64).collect()
    }

    #[test]
    fn a_decision_payload_is_indexed_by_its_verdicts_digests_and_stage() {
        let payload = serde_json::json!({
            "schema": "gait.agent.gate_decision",
            "tool_name": "fs.write",
            "verdict": "allow",
            "enforced_verdict": "allow",
            "policy_verdict": "block",
            "reason_codes": ["stage_dry_run_would_have_blocked"],
            "policy_name": "prod.yaml",
            "policy_digest": hex64('a'),
            "intent_digest": hex64('b'),
            "trace_id": "0123456789abcdef01234567",
            "trace": {"nested": {"deep": [1, 2, 3]}, "args_digest": hex64('e')},
            "stage": {"stage": "dry_run", "candidate": "next.yaml", "candidate_digest": hex64('c'),
                      "active_verdict": "allow", "candidate_verdict": "block", "would_have_blocked": true}
        });
        let e = entry(&record(DECISION_KIND, &payload.to_string())).expect("indexed");
        assert_eq!((e.seq, e.class), (7, EvidenceClass::Decision));
        let f = e.fields;
        assert_eq!(f.verdict.as_deref(), Some("allow"));
        assert_eq!(f.policy_verdict.as_deref(), Some("block"));
        assert_eq!(f.policy_digest, Some(hex64('a')));
        assert_eq!(f.args_digest, Some(hex64('e')));
        assert_eq!(f.candidate_digest, Some(hex64('c')));
        assert_eq!(f.stage.as_deref(), Some("dry_run"));
        assert_eq!(f.would_have_blocked, Some(true));
        assert_eq!(f.tool_name.as_deref(), Some("fs.write"));
        assert!(f.sha256.is_none() && f.run_ids.is_empty());
    }

    #[test]
    fn a_captured_staged_decision_keeps_both_verdicts_reason_codes_and_the_captured_flag() {
        let payload = serde_json::json!({
            "verdict": "allow", "tool_name": "tool.delete", "intent_digest": hex64('b'),
            "reason_codes": ["ok_read", "bad\ncode"],
            "capture_mode": "raw", "normalized_intent": {"tool_name": "tool.delete", "args": {"x": [1]}},
            "stage": {"stage": "observe", "candidate_digest": hex64('c'), "active_verdict": "allow",
                      "candidate_verdict": "block", "candidate_reason_codes": ["no_delete"],
                      "candidate_error": true}
        });
        let f = entry(&record(DECISION_KIND, &payload.to_string()))
            .expect("indexed")
            .fields;
        assert_eq!(f.active_verdict.as_deref(), Some("allow"));
        assert_eq!(f.candidate_verdict.as_deref(), Some("block"));
        assert_eq!(f.reason_codes, ["ok_read", "badcode"]);
        assert_eq!(f.candidate_reason_codes, ["no_delete"]);
        assert_eq!(f.candidate_error, Some(true));
        assert!(f.captured);
        // Reference mode (no intent) and a raw record whose intent did not normalize are not captured.
        let reference = serde_json::json!({"verdict": "allow", "intent_digest": hex64('b')});
        let unnormalized = serde_json::json!({"verdict": "block", "normalized_intent": {}});
        for p in [reference, unnormalized] {
            let f = entry(&record(DECISION_KIND, &p.to_string()))
                .unwrap()
                .fields;
            assert!(
                !f.captured && f.candidate_error.is_none() && f.active_verdict.is_none(),
                "{p}"
            );
        }
    }

    #[test]
    fn payloads_that_do_not_read_are_not_indexed() {
        for payload in [
            "not json",
            "{}",
            r#"{"verdict":"maybe"}"#,
            r#"{"verdict":7}"#,
            "\u{0}\u{1}",
        ] {
            assert!(
                entry(&record(DECISION_KIND, payload)).is_none(),
                "{payload}"
            );
        }
        assert!(entry(&record("producer.own", r#"{"verdict":"allow"}"#)).is_none());
        assert!(entry(&record("artifact.runpack", r#"{"verdict":"allow"}"#)).is_none());
    }

    #[test]
    fn an_older_decision_without_stage_is_indexed_and_bad_fields_are_left_out() {
        let long = "t".repeat(1000);
        let payload = serde_json::json!({
            "verdict": "block", "policy_digest": "sha256:abc", "tool_name": long, "policy_name": "a\nb",
            "stage": {"stage": "canary"}, "trace": "not an object"
        });
        let f = entry(&record(DECISION_KIND, &payload.to_string()))
            .expect("indexed")
            .fields;
        assert_eq!(f.verdict.as_deref(), Some("block"));
        assert_eq!(f.policy_digest, None);
        assert_eq!(f.stage, None);
        assert_eq!(f.args_digest, None);
        assert_eq!(f.tool_name.map(|t| t.len()), Some(MAX_INDEXED_TEXT_BYTES));
        assert_eq!(f.policy_name.as_deref(), Some("ab"));
    }

    fn artifact_payload(kind: &str, sha: &str) -> String {
        serde_json::json!({
            "schema": ARTIFACT_RECORD_SCHEMA,
            "artifact_kind": kind,
            "sha256": sha,
            "size_bytes": 2048,
            "file_name": "runpack_run_9.zip",
            "source": "push",
            "signature_status": "verified",
            "run_ids": ["run_9"],
            "producer_version": "0.9.0",
            "runpack": {"run_id": "run_9", "runpack_manifest_digest": hex64('d'), "capture_mode": "reference",
                        "intent_count": 1, "result_count": 1, "receipt_count": 0, "receipt_digest_vector": []},
            "enterprise_extension": {"ignored": true}
        })
        .to_string()
    }

    #[test]
    fn an_artifact_record_is_indexed_by_digest_and_run_ids() {
        let e = entry(&record(
            "artifact.runpack",
            &artifact_payload("runpack", &hex64('e')),
        ))
        .expect("indexed");
        assert_eq!(e.class, EvidenceClass::Artifact);
        assert_eq!(e.fields.sha256, Some(hex64('e')));
        assert_eq!(e.fields.run_ids, vec!["run_9".to_owned()]);
        assert_eq!(e.fields.artifact_kind.as_deref(), Some("runpack"));
        assert_eq!(e.fields.size_bytes, Some(2048));
        // The record kind must name the payload's kind, and the digest must be one.
        assert!(
            entry(&record(
                "artifact.trace",
                &artifact_payload("runpack", &hex64('e'))
            ))
            .is_none()
        );
        assert!(
            entry(&record(
                "artifact.runpack",
                &artifact_payload("runpack", "E")
            ))
            .is_none()
        );
    }
}
