//! Decoding an intent document the way Go's `encoding/json` fills Gait's structs: keys matched to known fields
//! case-insensitively (Unicode simple folding), unknown keys ignored, later duplicates overwrite earlier ones,
//! `null` leaves a field as it was (and clears maps, slices and pointers), nested structs and maps merge.

use std::fmt;

use gait_canon::gojson::fold_key;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use super::{
    DelegationLink, IntentArgProvenance, IntentContext, IntentDelegation, IntentRequest,
    IntentScript, IntentScriptStep, IntentTarget, SkillProvenance,
};
use crate::gotime::GoTime;

/// A JSON value with object members in document order (duplicates kept), as Go's decoder sees them.
#[derive(Debug, Clone, PartialEq)]
enum Node {
    Null,
    Bool(bool),
    Number(Number),
    String(String),
    Array(Vec<Node>),
    Object(Vec<(String, Node)>),
}

impl Node {
    fn kind(&self) -> &'static str {
        match self {
            Node::Null => "null",
            Node::Bool(_) => "bool",
            Node::Number(_) => "number",
            Node::String(_) => "string",
            Node::Array(_) => "array",
            Node::Object(_) => "object",
        }
    }

    /// The generic value Go's `any` would hold; repeated keys keep the last value.
    fn into_value(self) -> Value {
        match self {
            Node::Null => Value::Null,
            Node::Bool(b) => Value::Bool(b),
            Node::Number(n) => Value::Number(n),
            Node::String(s) => Value::String(s),
            Node::Array(items) => Value::Array(items.into_iter().map(Node::into_value).collect()),
            Node::Object(members) => {
                let mut map = Map::new();
                for (key, value) in members {
                    map.insert(key, value.into_value());
                }
                Value::Object(map)
            }
        }
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Number(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
        Ok(Node::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
        Number::from_f64(v)
            .map(Node::Number)
            .ok_or_else(|| E::custom("number out of range"))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
        Ok(Node::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Node, E> {
        Ok(Node::String(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<NodeSeed>()? {
            items.push(item.0);
        }
        Ok(Node::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut members = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            let value: NodeSeed = map.next_value()?;
            members.push((key, value.0));
        }
        Ok(Node::Object(members))
    }
}

struct NodeSeed(Node);

/// Fills one Go struct from the members of a JSON object; the `&str` is the field path for errors.
type DecodeFn<T> = fn(Vec<(String, Node)>, &mut T, &str) -> Result<(), DecodeError>;

impl<'de> de::Deserialize<'de> for NodeSeed {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor).map(NodeSeed)
    }
}

/// Why the bytes are not an intent document Go would accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not JSON (syntax, invalid UTF-8, nesting beyond serde_json's 128 levels, number out of range).
    #[error("{0}")]
    Syntax(String),
    /// A known field holds a JSON type Go cannot store in it.
    #[error("cannot unmarshal {found} into field {field} of type {expected}")]
    Type {
        /// Dotted path of the field, e.g. `targets.kind`.
        field: String,
        /// JSON type found.
        found: &'static str,
        /// Go type expected.
        expected: &'static str,
    },
    /// A timestamp field is not RFC 3339.
    #[error("field {field}: {message}")]
    Time {
        /// Dotted path of the field.
        field: String,
        /// What is wrong.
        message: String,
    },
}

/// Decode `bytes` into an [`IntentRequest`] with Go's `json.Unmarshal` leniency.
pub(crate) fn decode_intent(bytes: &[u8]) -> Result<IntentRequest, DecodeError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let root = de::Deserialize::deserialize(&mut de)
        .and_then(|NodeSeed(node)| de.end().map(|()| node))
        .map_err(|err| DecodeError::Syntax(err.to_string()))?;
    let mut intent = IntentRequest::default();
    match root {
        Node::Null => {}
        Node::Object(members) => decode_request(members, &mut intent)?,
        other => return Err(type_error("", &other, "gate.IntentRequest")),
    }
    Ok(intent)
}

fn join(parent: &str, field: &str) -> String {
    if parent.is_empty() {
        field.to_owned()
    } else {
        format!("{parent}.{field}")
    }
}

fn type_error(field: &str, found: &Node, expected: &'static str) -> DecodeError {
    DecodeError::Type {
        field: if field.is_empty() {
            "(root)".to_owned()
        } else {
            field.to_owned()
        },
        found: found.kind(),
        expected,
    }
}

fn object_members(
    node: Node,
    field: &str,
    expected: &'static str,
) -> Result<Option<Vec<(String, Node)>>, DecodeError> {
    match node {
        Node::Null => Ok(None),
        Node::Object(members) => Ok(Some(members)),
        other => Err(type_error(field, &other, expected)),
    }
}

fn set_string(node: Node, slot: &mut String, field: &str) -> Result<(), DecodeError> {
    match node {
        Node::Null => Ok(()),
        Node::String(s) => {
            *slot = s;
            Ok(())
        }
        other => Err(type_error(field, &other, "string")),
    }
}

fn set_bool(node: Node, slot: &mut bool, field: &str) -> Result<(), DecodeError> {
    match node {
        Node::Null => Ok(()),
        Node::Bool(b) => {
            *slot = b;
            Ok(())
        }
        other => Err(type_error(field, &other, "bool")),
    }
}

fn set_time(node: Node, slot: &mut GoTime, field: &str) -> Result<(), DecodeError> {
    match node {
        Node::Null => Ok(()),
        Node::String(s) => {
            *slot = GoTime::parse_rfc3339(&s).map_err(|err| DecodeError::Time {
                field: field.to_owned(),
                message: err.to_string(),
            })?;
            Ok(())
        }
        other => Err(type_error(field, &other, "time.Time")),
    }
}

fn set_strings(node: Node, slot: &mut Vec<String>, field: &str) -> Result<(), DecodeError> {
    match node {
        Node::Null => {
            slot.clear();
            Ok(())
        }
        Node::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                let mut s = String::new();
                set_string(item, &mut s, field)?;
                out.push(s);
            }
            *slot = out;
            Ok(())
        }
        other => Err(type_error(field, &other, "[]string")),
    }
}

/// `map[string]any`: `null` clears it, an object adds its keys to the existing map.
fn merge_map(
    node: Node,
    slot: &mut Option<Map<String, Value>>,
    field: &str,
) -> Result<(), DecodeError> {
    match object_members(node, field, "map[string]interface {}")? {
        None => *slot = None,
        Some(members) => {
            let map = slot.get_or_insert_with(Map::new);
            for (key, value) in members {
                map.insert(key, value.into_value());
            }
        }
    }
    Ok(())
}

fn decode_list<T: Default>(
    node: Node,
    slot: &mut Vec<T>,
    field: &str,
    expected: &'static str,
    decode: DecodeFn<T>,
) -> Result<(), DecodeError> {
    match node {
        Node::Null => {
            slot.clear();
            Ok(())
        }
        Node::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                let mut element = T::default();
                if let Some(members) = object_members(item, field, expected)? {
                    decode(members, &mut element, field)?;
                }
                out.push(element);
            }
            *slot = out;
            Ok(())
        }
        other => Err(type_error(field, &other, expected)),
    }
}

fn decode_pointer<T: Default>(
    node: Node,
    slot: &mut Option<T>,
    field: &str,
    expected: &'static str,
    decode: DecodeFn<T>,
) -> Result<(), DecodeError> {
    match object_members(node, field, expected)? {
        None => *slot = None,
        Some(members) => decode(members, slot.get_or_insert_with(T::default), field)?,
    }
    Ok(())
}

fn decode_request(
    members: Vec<(String, Node)>,
    out: &mut IntentRequest,
) -> Result<(), DecodeError> {
    for (key, value) in members {
        let Some(name) = fold_key(&key) else { continue };
        let f = name.as_str();
        match f {
            "schema_id" => set_string(value, &mut out.schema_id, f)?,
            "schema_version" => set_string(value, &mut out.schema_version, f)?,
            "created_at" => set_time(value, &mut out.created_at, f)?,
            "producer_version" => set_string(value, &mut out.producer_version, f)?,
            "tool_name" => set_string(value, &mut out.tool_name, f)?,
            "args" => merge_map(value, &mut out.args, f)?,
            "args_digest" => set_string(value, &mut out.args_digest, f)?,
            "intent_digest" => set_string(value, &mut out.intent_digest, f)?,
            "script_hash" => set_string(value, &mut out.script_hash, f)?,
            "script" => decode_pointer(
                value,
                &mut out.script,
                f,
                "gate.IntentScript",
                decode_script,
            )?,
            "targets" => decode_list(
                value,
                &mut out.targets,
                f,
                "gate.IntentTarget",
                decode_target,
            )?,
            "arg_provenance" => decode_list(
                value,
                &mut out.arg_provenance,
                f,
                "gate.IntentArgProvenance",
                decode_provenance,
            )?,
            "skill_provenance" => decode_pointer(
                value,
                &mut out.skill_provenance,
                f,
                "gate.SkillProvenance",
                decode_skill,
            )?,
            "delegation" => decode_pointer(
                value,
                &mut out.delegation,
                f,
                "gate.IntentDelegation",
                decode_delegation,
            )?,
            "relationship" => match value {
                Node::Null => out.relationship = None,
                node @ Node::Object(_) => out.relationship = Some(node.into_value()),
                other => return Err(type_error(f, &other, "gate.RelationshipEnvelope")),
            },
            "context" => {
                if let Some(members) = object_members(value, f, "gate.IntentContext")? {
                    decode_context(members, &mut out.context, f)?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn decode_script(
    members: Vec<(String, Node)>,
    out: &mut IntentScript,
    path: &str,
) -> Result<(), DecodeError> {
    for (key, value) in members {
        if fold_key(&key).as_deref() == Some("steps") {
            decode_list(
                value,
                &mut out.steps,
                &join(path, "steps"),
                "gate.IntentScriptStep",
                decode_step,
            )?;
        }
    }
    Ok(())
}

fn decode_step(
    members: Vec<(String, Node)>,
    out: &mut IntentScriptStep,
    path: &str,
) -> Result<(), DecodeError> {
    for (key, value) in members {
        let Some(name) = fold_key(&key) else { continue };
        let field = join(path, &name);
        match name.as_str() {
            "tool_name" => set_string(value, &mut out.tool_name, &field)?,
            "args" => merge_map(value, &mut out.args, &field)?,
            "targets" => decode_list(
                value,
                &mut out.targets,
                &field,
                "gate.IntentTarget",
                decode_target,
            )?,
            "arg_provenance" => decode_list(
                value,
                &mut out.arg_provenance,
                &field,
                "gate.IntentArgProvenance",
                decode_provenance,
            )?,
            _ => {}
        }
    }
    Ok(())
}

fn decode_target(
    members: Vec<(String, Node)>,
    out: &mut IntentTarget,
    path: &str,
) -> Result<(), DecodeError> {
    for (key, value) in members {
        let Some(name) = fold_key(&key) else { continue };
        let field = join(path, &name);
        match name.as_str() {
            "kind" => set_string(value, &mut out.kind, &field)?,
            "value" => set_string(value, &mut out.value, &field)?,
            "operation" => set_string(value, &mut out.operation, &field)?,
            "sensitivity" => set_string(value, &mut out.sensitivity, &field)?,
            "endpoint_class" => set_string(value, &mut out.endpoint_class, &field)?,
            "endpoint_domain" => set_string(value, &mut out.endpoint_domain, &field)?,
            "destructive" => set_bool(value, &mut out.destructive, &field)?,
            "discovery_method" => set_string(value, &mut out.discovery_method, &field)?,
            "read_only_hint" => set_bool(value, &mut out.read_only_hint, &field)?,
            "destructive_hint" => set_bool(value, &mut out.destructive_hint, &field)?,
            "idempotent_hint" => set_bool(value, &mut out.idempotent_hint, &field)?,
            "open_world_hint" => set_bool(value, &mut out.open_world_hint, &field)?,
            _ => {}
        }
    }
    Ok(())
}

fn decode_provenance(
    members: Vec<(String, Node)>,
    out: &mut IntentArgProvenance,
    path: &str,
) -> Result<(), DecodeError> {
    for (key, value) in members {
        let Some(name) = fold_key(&key) else { continue };
        let field = join(path, &name);
        match name.as_str() {
            "arg_path" => set_string(value, &mut out.arg_path, &field)?,
            "source" => set_string(value, &mut out.source, &field)?,
            "source_ref" => set_string(value, &mut out.source_ref, &field)?,
            "integrity_digest" => set_string(value, &mut out.integrity_digest, &field)?,
            _ => {}
        }
    }
    Ok(())
}

fn decode_skill(
    members: Vec<(String, Node)>,
    out: &mut SkillProvenance,
    path: &str,
) -> Result<(), DecodeError> {
    for (key, value) in members {
        let Some(name) = fold_key(&key) else { continue };
        let field = join(path, &name);
        match name.as_str() {
            "skill_name" => set_string(value, &mut out.skill_name, &field)?,
            "skill_version" => set_string(value, &mut out.skill_version, &field)?,
            "source" => set_string(value, &mut out.source, &field)?,
            "publisher" => set_string(value, &mut out.publisher, &field)?,
            "digest" => set_string(value, &mut out.digest, &field)?,
            "signature_key_id" => set_string(value, &mut out.signature_key_id, &field)?,
            _ => {}
        }
    }
    Ok(())
}

fn decode_delegation(
    members: Vec<(String, Node)>,
    out: &mut IntentDelegation,
    path: &str,
) -> Result<(), DecodeError> {
    for (key, value) in members {
        let Some(name) = fold_key(&key) else { continue };
        let field = join(path, &name);
        match name.as_str() {
            "requester_identity" => set_string(value, &mut out.requester_identity, &field)?,
            "scope_class" => set_string(value, &mut out.scope_class, &field)?,
            "token_refs" => set_strings(value, &mut out.token_refs, &field)?,
            "chain" => decode_list(
                value,
                &mut out.chain,
                &field,
                "gate.DelegationLink",
                decode_link,
            )?,
            "issued_at" => set_time(value, &mut out.issued_at, &field)?,
            "expires_at" => set_time(value, &mut out.expires_at, &field)?,
            _ => {}
        }
    }
    Ok(())
}

fn decode_link(
    members: Vec<(String, Node)>,
    out: &mut DelegationLink,
    path: &str,
) -> Result<(), DecodeError> {
    for (key, value) in members {
        let Some(name) = fold_key(&key) else { continue };
        let field = join(path, &name);
        match name.as_str() {
            "delegator_identity" => set_string(value, &mut out.delegator_identity, &field)?,
            "delegate_identity" => set_string(value, &mut out.delegate_identity, &field)?,
            "scope_class" => set_string(value, &mut out.scope_class, &field)?,
            "token_ref" => set_string(value, &mut out.token_ref, &field)?,
            "issued_at" => set_time(value, &mut out.issued_at, &field)?,
            "expires_at" => set_time(value, &mut out.expires_at, &field)?,
            _ => {}
        }
    }
    Ok(())
}

fn decode_context(
    members: Vec<(String, Node)>,
    out: &mut IntentContext,
    path: &str,
) -> Result<(), DecodeError> {
    for (key, value) in members {
        let Some(name) = fold_key(&key) else { continue };
        let field = join(path, &name);
        match name.as_str() {
            "identity" => set_string(value, &mut out.identity, &field)?,
            "workspace" => set_string(value, &mut out.workspace, &field)?,
            "risk_class" => set_string(value, &mut out.risk_class, &field)?,
            "phase" => set_string(value, &mut out.phase, &field)?,
            "job_id" => set_string(value, &mut out.job_id, &field)?,
            "session_id" => set_string(value, &mut out.session_id, &field)?,
            "request_id" => set_string(value, &mut out.request_id, &field)?,
            "auth_context" => merge_map(value, &mut out.auth_context, &field)?,
            "credential_scopes" => set_strings(value, &mut out.credential_scopes, &field)?,
            "environment_fingerprint" => {
                set_string(value, &mut out.environment_fingerprint, &field)?
            }
            "context_set_digest" => set_string(value, &mut out.context_set_digest, &field)?,
            "context_evidence_mode" => set_string(value, &mut out.context_evidence_mode, &field)?,
            "context_refs" => set_strings(value, &mut out.context_refs, &field)?,
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_fields_case_insensitively_including_go_special_folds() {
        let doc = br#"{"TOOL_NAME":"a","Context":{"Identity":"x","\u017fession_id":"s1"},
                      "targets":[{"\u212aIND":"path"}],"Ar\u00e7s":{"k":1}}"#;
        let intent = decode_intent(doc).unwrap();
        assert_eq!(intent.tool_name, "a");
        assert_eq!(intent.context.identity, "x");
        assert_eq!(intent.context.session_id, "s1");
        assert_eq!(intent.targets[0].kind, "path");
        assert!(
            intent.args.is_none(),
            "a non-ASCII letter other than the two Go folds names no field"
        );
    }

    #[test]
    fn later_duplicates_win_and_nested_objects_merge() {
        let doc = br#"{"tool_name":"a","Tool_Name":"b","context":{"identity":"x"},"context":{"workspace":"w"},
                      "args":{"p":1},"ARGS":{"q":2}}"#;
        let intent = decode_intent(doc).unwrap();
        assert_eq!(intent.tool_name, "b");
        assert_eq!(intent.context.identity, "x");
        assert_eq!(intent.context.workspace, "w");
        let args = intent.args.unwrap();
        assert_eq!(args.len(), 2);
    }

    #[test]
    fn null_keeps_strings_and_clears_collections() {
        let doc = br#"{"tool_name":"a","tool_name":null,"targets":[{"kind":"path","value":"/x"}],"targets":null,
                      "args":{"a":1},"args":null}"#;
        let intent = decode_intent(doc).unwrap();
        assert_eq!(intent.tool_name, "a");
        assert!(intent.targets.is_empty());
        assert!(intent.args.is_none());
    }

    #[test]
    fn unknown_fields_are_ignored_but_wrong_types_are_errors() {
        assert!(decode_intent(br#"{"surprise":{"deep":[1,2]},"tool_name":"a"}"#).is_ok());
        let err = decode_intent(br#"{"context":{"credential_scopes":["a",42]}}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot unmarshal number into field context.credential_scopes of type string"
        );
        assert!(decode_intent(br#"{"args":[1]}"#).is_err());
        assert!(decode_intent(br#"[]"#).is_err());
        assert!(decode_intent(br#"{"created_at":"yesterday"}"#).is_err());
    }

    #[test]
    fn syntax_errors_and_trailing_bytes_are_rejected() {
        assert!(matches!(decode_intent(b"{"), Err(DecodeError::Syntax(_))));
        assert!(matches!(
            decode_intent(b"{} {}"),
            Err(DecodeError::Syntax(_))
        ));
    }
}
