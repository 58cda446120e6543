//! The signed gate trace `gate eval` and the daemon emit (contract §2.3, Gait's `EmitSignedTrace`): the record
//! built from the evaluated (context-prepared) intent and the final decision, its relationship envelope, the
//! Ed25519 signature over DigestJCS of the record without `signature`, and (for `gate eval`) the file written
//! pretty-printed with mode 0600.

use std::path::{Component, Path, PathBuf};

use gait_artifact::GoTime;
use gait_artifact::relationship::{AgentLink, Edge, EntityRef, PolicyRef, RelationshipEnvelope};
use gait_artifact::trace::{
    DelegationRef, SkillProvenance, StepVerdict, TraceRecord, event_id, sign_trace, trace_id,
};
use gait_canon::sign::SigningKey;
use gait_policy::eval::ScriptOutcome;
use gait_policy::{NormalizedIntent, Policy, Verdict};

use crate::gate::files;

/// Everything a trace records beyond the intent and policy.
#[derive(Debug, Clone)]
pub struct TraceInputs<'a> {
    /// The policy.
    pub policy: &'a Policy,
    /// Its digest.
    pub policy_digest: &'a str,
    /// The intent exactly as evaluated (context claims stripped), digests computed.
    pub intent: &'a NormalizedIntent,
    /// Final verdict.
    pub verdict: Verdict,
    /// Final reason codes (only `delegation_*` ones are recorded, in `delegation_ref`).
    pub reason_codes: &'a [String],
    /// Final violations.
    pub violations: &'a [String],
    /// Gate result `created_at`.
    pub created_at: GoTime,
    /// Producer version.
    pub producer_version: &'a str,
    /// Correlation id of the command line.
    pub correlation_id: &'a str,
    /// Comma-joined valid approval token ids.
    pub approval_token_ref: &'a str,
    /// Comma-joined valid delegation token ids.
    pub delegation_token_ref: &'a str,
    /// Evaluation time in milliseconds.
    pub latency_ms: f64,
    /// Context source of the evaluation.
    pub context_source: &'a str,
    /// Script details.
    pub script: Option<&'a ScriptOutcome>,
    /// Pre-approved by the approved-script registry.
    pub pre_approved: bool,
    /// Registry pattern.
    pub pattern_id: &'a str,
    /// Registry reason.
    pub registry_reason: &'a str,
}

fn unique_sorted<I: IntoIterator<Item = String>>(items: I) -> Vec<String> {
    let mut out: Vec<String> = items
        .into_iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

fn entity(kind: &str, id: &str) -> EntityRef {
    EntityRef {
        kind: kind.to_owned(),
        id: id.to_owned(),
    }
}

/// Gait's `buildTraceRelationship`.
fn relationship(
    intent: &NormalizedIntent,
    trace_id: &str,
    policy: &Policy,
    policy_digest: &str,
    matched_rule_ids: &[String],
) -> RelationshipEnvelope {
    let tool = intent.tool_name.trim();
    let identity = intent.context.identity.trim();
    let policy_digest = policy_digest.trim().to_lowercase();

    let mut entity_refs: Vec<EntityRef> = [
        ("trace", trace_id.trim()),
        ("tool", tool),
        ("agent", identity),
        ("policy", policy_digest.as_str()),
    ]
    .into_iter()
    .filter(|(_, id)| !id.is_empty())
    .map(|(kind, id)| entity(kind, id))
    .collect();
    entity_refs.sort_by(|a, b| (&a.kind, &a.id).cmp(&(&b.kind, &b.id)));
    entity_refs.dedup();

    let mut agent_chain: Vec<AgentLink> = Vec::new();
    let link = |identity: &str, role: &str| AgentLink {
        identity: identity.trim().to_owned(),
        role: role.to_owned(),
    };
    match &intent.delegation {
        Some(delegation) => {
            agent_chain.push(link(&delegation.requester_identity, "requester"));
            for hop in &delegation.chain {
                agent_chain.push(link(&hop.delegator_identity, "delegator"));
                agent_chain.push(link(&hop.delegate_identity, "delegate"));
            }
        }
        None => agent_chain.push(link(identity, "requester")),
    }
    agent_chain.retain(|l| !l.identity.is_empty());
    agent_chain.sort_by(|a, b| (&a.role, &a.identity).cmp(&(&b.role, &b.identity)));
    agent_chain.dedup();

    let mut edges: Vec<Edge> = Vec::new();
    if !identity.is_empty() && !tool.is_empty() {
        edges.push(Edge {
            kind: "calls".into(),
            from: entity("agent", identity),
            to: entity("tool", tool),
        });
    }
    if !tool.is_empty() && !policy_digest.is_empty() {
        edges.push(Edge {
            kind: "governed_by".into(),
            from: entity("tool", tool),
            to: entity("policy", &policy_digest),
        });
    }
    if let Some(delegation) = &intent.delegation {
        for hop in &delegation.chain {
            let (from, to) = (hop.delegator_identity.trim(), hop.delegate_identity.trim());
            if !from.is_empty() && !to.is_empty() {
                edges.push(Edge {
                    kind: "delegates_to".into(),
                    from: entity("agent", from),
                    to: entity("agent", to),
                });
            }
        }
    }
    let edge_key = |e: &Edge| {
        (
            e.kind.clone(),
            e.from.kind.clone(),
            e.from.id.clone(),
            e.to.kind.clone(),
            e.to.id.clone(),
        )
    };
    edges.sort_by_key(edge_key);
    edges.dedup();

    let parent_ref = Some(intent.context.session_id.trim())
        .filter(|s| !s.is_empty())
        .map(|s| entity("session", s));
    RelationshipEnvelope {
        parent_ref,
        related_entity_ids: unique_sorted(entity_refs.iter().map(|e| e.id.clone())),
        entity_refs,
        policy_ref: Some(PolicyRef {
            policy_id: policy.schema_id.trim().to_owned(),
            policy_version: policy.schema_version.trim().to_owned(),
            policy_digest,
            matched_rule_ids: matched_rule_ids.to_vec(),
        }),
        agent_chain,
        edges,
        ..RelationshipEnvelope::default()
    }
}

/// Build the unsigned trace record of a decision observed at `observed_at`.
pub fn build_trace(inputs: &TraceInputs<'_>, observed_at: GoTime) -> TraceRecord {
    let intent = inputs.intent;
    let verdict = inputs.verdict.as_str();
    let id = trace_id(inputs.policy_digest, &intent.intent_digest, verdict);
    let step_verdicts: Vec<StepVerdict> = inputs
        .script
        .map(|s| {
            s.step_verdicts
                .iter()
                .map(|v| StepVerdict {
                    index: i64::try_from(v.index).unwrap_or(i64::MAX),
                    tool_name: v.tool_name.clone(),
                    verdict: v.verdict.as_str().to_owned(),
                    reason_codes: v.reason_codes.clone(),
                    violations: v.violations.clone(),
                    matched_rule: v.matched_rule.clone(),
                })
                .collect()
        })
        .unwrap_or_default();
    let matched_rule_ids = unique_sorted(step_verdicts.iter().map(|s| s.matched_rule.clone()));
    let delegation_ref = intent.delegation.as_ref().map(|d| {
        let token_ref = match inputs.delegation_token_ref.trim() {
            "" => d
                .token_refs
                .first()
                .map(|r| r.trim().to_owned())
                .unwrap_or_default(),
            r => r.to_owned(),
        };
        DelegationRef {
            delegation_token_ref: token_ref,
            requester_identity: d.requester_identity.trim().to_owned(),
            delegation_depth: i64::try_from(d.chain.len()).unwrap_or(i64::MAX),
            scope_class: d.scope_class.trim().to_owned(),
            chain_digest: intent.delegation_digest().unwrap_or_default(),
            reason_codes: unique_sorted(
                inputs
                    .reason_codes
                    .iter()
                    .filter(|r| r.starts_with("delegation_"))
                    .cloned(),
            ),
        }
    });
    let skill_provenance = intent.skill_provenance.as_ref().map(|s| SkillProvenance {
        skill_name: s.skill_name.clone(),
        skill_version: s.skill_version.clone(),
        source: s.source.clone(),
        publisher: s.publisher.clone(),
        digest: s.digest.clone(),
        signature_key_id: s.signature_key_id.clone(),
    });
    TraceRecord {
        schema_id: gait_artifact::trace::TRACE_SCHEMA_ID.to_owned(),
        schema_version: gait_artifact::SCHEMA_VERSION.to_owned(),
        created_at: inputs.created_at,
        observed_at,
        producer_version: inputs.producer_version.to_owned(),
        event_id: event_id(&id, &observed_at),
        correlation_id: inputs.correlation_id.trim().to_owned(),
        tool_name: intent.tool_name.clone(),
        args_digest: intent.args_digest.clone(),
        intent_digest: intent.intent_digest.clone(),
        policy_digest: inputs.policy_digest.to_owned(),
        policy_id: inputs.policy.schema_id.trim().to_owned(),
        policy_version: inputs.policy.schema_version.trim().to_owned(),
        matched_rule_ids: matched_rule_ids.clone(),
        verdict: verdict.to_owned(),
        context_set_digest: intent.context.context_set_digest.clone(),
        context_evidence_mode: intent.context.context_evidence_mode.clone(),
        context_ref_count: i64::try_from(intent.context.context_refs.len()).unwrap_or(i64::MAX),
        context_source: inputs.context_source.trim().to_owned(),
        script: intent.is_script(),
        step_count: intent
            .script
            .as_ref()
            .map_or(0, |s| i64::try_from(s.len()).unwrap_or(i64::MAX)),
        script_hash: intent.script_hash.clone(),
        composite_risk_class: inputs
            .script
            .map(|s| s.composite_risk_class.as_str().to_owned())
            .unwrap_or_default(),
        step_verdicts,
        pre_approved: inputs.pre_approved,
        pattern_id: inputs.pattern_id.trim().to_owned(),
        registry_reason: inputs.registry_reason.trim().to_owned(),
        violations: unique_sorted(inputs.violations.iter().cloned()),
        latency_ms: inputs.latency_ms.max(0.0),
        approval_token_ref: inputs.approval_token_ref.trim().to_owned(),
        delegation_ref,
        mcp_trust: None,
        relationship: Some(relationship(
            intent,
            &id,
            inputs.policy,
            inputs.policy_digest,
            &matched_rule_ids,
        )),
        skill_provenance,
        trace_id: id,
        signature: None,
    }
}

/// Gait's `normalizeTracePath`: non-empty, and a relative path must not climb out with `..`.
pub fn normalize_trace_path(path: &Path) -> Result<PathBuf, String> {
    let text = path.to_string_lossy();
    let trimmed = text.trim();
    if trimmed.is_empty() || trimmed == "." || trimmed == "/" {
        return Err("trace path is required".into());
    }
    let path = PathBuf::from(trimmed);
    if path.is_relative() && path.components().any(|c| c == Component::ParentDir) {
        return Err("relative trace path must not traverse parent directories".into());
    }
    Ok(path)
}

/// Sign `record` and write it to `path` (parents created 0750, file 0600, atomically).
pub fn sign_and_write(
    record: TraceRecord,
    key: &SigningKey,
    path: &Path,
) -> Result<TraceRecord, String> {
    let signed = sign_trace(record, key);
    files::create_parent_dirs(path)
        .map_err(|e| format!("create trace directory: {}", files::go_reason(&e)))?;
    files::write_atomic(path, &signed.to_pretty_json())
        .map_err(|e| format!("write trace record: {}", files::go_reason(&e)))?;
    Ok(signed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_trace_paths_may_not_climb_out() {
        assert!(normalize_trace_path(Path::new("../x.json")).is_err());
        assert!(normalize_trace_path(Path::new("  ")).is_err());
        assert_eq!(
            normalize_trace_path(Path::new("gate/t.json")).unwrap(),
            PathBuf::from("gate/t.json")
        );
        assert!(normalize_trace_path(Path::new("/tmp/../t.json")).is_ok());
    }
}
