//! The JSON objects Gait hashes for an intent (contract §1.3): exactly the keys Go's `json.Marshal` emits for
//! its normalized structs, with `omitempty` dropping empty strings, false and empty lists, but never times.

use serde_json::{Map, Value};

use super::{
    DelegationLink, IntentArgProvenance, IntentContext, IntentDelegation, IntentTarget,
    NormalizedIntent, NormalizedStep, SkillProvenance,
};
use crate::gotime::GoTime;

/// DigestJCS of normalized args.
pub(crate) fn args_digest(args: &Map<String, Value>) -> String {
    gait_canon::digest_jcs(&Value::Object(args.clone()))
}

/// DigestJCS of `{"steps":[...]}` (the script hash).
pub(crate) fn script_hash(steps: &[NormalizedStep]) -> String {
    gait_canon::digest_jcs(&script_payload(steps))
}

fn put_str(map: &mut Map<String, Value>, key: &str, value: &str) {
    if !value.is_empty() {
        map.insert(key.to_owned(), Value::String(value.to_owned()));
    }
}

fn put_true(map: &mut Map<String, Value>, key: &str, value: bool) {
    if value {
        map.insert(key.to_owned(), Value::Bool(true));
    }
}

fn put_list(map: &mut Map<String, Value>, key: &str, values: &[String]) {
    if !values.is_empty() {
        map.insert(
            key.to_owned(),
            Value::Array(values.iter().cloned().map(Value::String).collect()),
        );
    }
}

fn time_value(t: GoTime) -> Value {
    // Normalization already rejected times Go cannot marshal, so the fallback is unreachable in practice.
    Value::String(t.marshal_text().unwrap_or_else(|_| t.to_string()))
}

pub(crate) fn target_payload(t: &IntentTarget) -> Value {
    let mut m = Map::new();
    m.insert("kind".into(), Value::String(t.kind.clone()));
    m.insert("value".into(), Value::String(t.value.clone()));
    put_str(&mut m, "operation", &t.operation);
    put_str(&mut m, "sensitivity", &t.sensitivity);
    put_str(&mut m, "endpoint_class", &t.endpoint_class);
    put_str(&mut m, "endpoint_domain", &t.endpoint_domain);
    put_true(&mut m, "destructive", t.destructive);
    put_str(&mut m, "discovery_method", &t.discovery_method);
    put_true(&mut m, "read_only_hint", t.read_only_hint);
    put_true(&mut m, "destructive_hint", t.destructive_hint);
    put_true(&mut m, "idempotent_hint", t.idempotent_hint);
    put_true(&mut m, "open_world_hint", t.open_world_hint);
    Value::Object(m)
}

fn provenance_payload(p: &IntentArgProvenance) -> Value {
    let mut m = Map::new();
    m.insert("arg_path".into(), Value::String(p.arg_path.clone()));
    m.insert("source".into(), Value::String(p.source.clone()));
    put_str(&mut m, "source_ref", &p.source_ref);
    put_str(&mut m, "integrity_digest", &p.integrity_digest);
    Value::Object(m)
}

fn targets_value(targets: &[IntentTarget]) -> Value {
    Value::Array(targets.iter().map(target_payload).collect())
}

fn provenance_value(items: &[IntentArgProvenance]) -> Value {
    Value::Array(items.iter().map(provenance_payload).collect())
}

fn script_payload(steps: &[NormalizedStep]) -> Value {
    let steps = steps
        .iter()
        .map(|step| {
            let mut m = Map::new();
            m.insert("tool_name".into(), Value::String(step.tool_name.clone()));
            m.insert("args".into(), Value::Object(step.args.clone()));
            if !step.targets.is_empty() {
                m.insert("targets".into(), targets_value(&step.targets));
            }
            if !step.arg_provenance.is_empty() {
                m.insert(
                    "arg_provenance".into(),
                    provenance_value(&step.arg_provenance),
                );
            }
            Value::Object(m)
        })
        .collect();
    let mut m = Map::new();
    m.insert("steps".into(), Value::Array(steps));
    Value::Object(m)
}

fn skill_payload(s: &SkillProvenance) -> Value {
    let mut m = Map::new();
    m.insert("skill_name".into(), Value::String(s.skill_name.clone()));
    put_str(&mut m, "skill_version", &s.skill_version);
    m.insert("source".into(), Value::String(s.source.clone()));
    m.insert("publisher".into(), Value::String(s.publisher.clone()));
    put_str(&mut m, "digest", &s.digest);
    put_str(&mut m, "signature_key_id", &s.signature_key_id);
    Value::Object(m)
}

fn link_payload(l: &DelegationLink) -> Value {
    let mut m = Map::new();
    m.insert(
        "delegator_identity".into(),
        Value::String(l.delegator_identity.clone()),
    );
    m.insert(
        "delegate_identity".into(),
        Value::String(l.delegate_identity.clone()),
    );
    put_str(&mut m, "scope_class", &l.scope_class);
    put_str(&mut m, "token_ref", &l.token_ref);
    m.insert("issued_at".into(), time_value(l.issued_at));
    m.insert("expires_at".into(), time_value(l.expires_at));
    Value::Object(m)
}

/// The normalized delegation object, times always present (zero ⇒ `0001-01-01T00:00:00Z`).
pub(crate) fn delegation_payload(d: &IntentDelegation) -> Value {
    let mut m = Map::new();
    m.insert(
        "requester_identity".into(),
        Value::String(d.requester_identity.clone()),
    );
    put_str(&mut m, "scope_class", &d.scope_class);
    put_list(&mut m, "token_refs", &d.token_refs);
    if !d.chain.is_empty() {
        m.insert(
            "chain".into(),
            Value::Array(d.chain.iter().map(link_payload).collect()),
        );
    }
    m.insert("issued_at".into(), time_value(d.issued_at));
    m.insert("expires_at".into(), time_value(d.expires_at));
    Value::Object(m)
}

pub(crate) fn context_payload(c: &IntentContext) -> Value {
    let mut m = Map::new();
    m.insert("identity".into(), Value::String(c.identity.clone()));
    m.insert("workspace".into(), Value::String(c.workspace.clone()));
    m.insert("risk_class".into(), Value::String(c.risk_class.clone()));
    put_str(&mut m, "phase", &c.phase);
    put_str(&mut m, "job_id", &c.job_id);
    put_str(&mut m, "session_id", &c.session_id);
    put_str(&mut m, "request_id", &c.request_id);
    if let Some(auth) = &c.auth_context
        && !auth.is_empty()
    {
        m.insert("auth_context".into(), Value::Object(auth.clone()));
    }
    put_list(&mut m, "credential_scopes", &c.credential_scopes);
    put_str(
        &mut m,
        "environment_fingerprint",
        &c.environment_fingerprint,
    );
    put_str(&mut m, "context_set_digest", &c.context_set_digest);
    put_str(&mut m, "context_evidence_mode", &c.context_evidence_mode);
    put_list(&mut m, "context_refs", &c.context_refs);
    Value::Object(m)
}

/// The §1.3 normalized intent object whose DigestJCS is `intent_digest`.
pub(crate) fn intent_payload(intent: &NormalizedIntent) -> Value {
    let mut m = Map::new();
    m.insert("tool_name".into(), Value::String(intent.tool_name.clone()));
    m.insert("args".into(), Value::Object(intent.args.clone()));
    put_str(&mut m, "script_hash", &intent.script_hash);
    if let Some(steps) = &intent.script {
        m.insert("script".into(), script_payload(steps));
    }
    m.insert("targets".into(), targets_value(&intent.targets));
    if !intent.arg_provenance.is_empty() {
        m.insert(
            "arg_provenance".into(),
            provenance_value(&intent.arg_provenance),
        );
    }
    if let Some(skill) = &intent.skill_provenance {
        m.insert("skill_provenance".into(), skill_payload(skill));
    }
    if let Some(d) = &intent.delegation {
        m.insert("delegation".into(), delegation_payload(d));
    }
    m.insert("context".into(), context_payload(&intent.context));
    Value::Object(m)
}
