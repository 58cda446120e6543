//! Intent normalization exactly as contract §1.2 describes it (Gait `normalizeIntent`): trimming and
//! lowercasing, endpoint class / domain inference with the tool-name substring quirk, destructive derivation,
//! de-duplication and ordering, context and delegation checks, script steps and `script_hash`.

use serde_json::{Map, Value};

use super::{
    DelegationLink, INTENT_SCHEMA_ID, INTENT_SCHEMA_VERSION, IntentArgProvenance, IntentContext,
    IntentDelegation, IntentRequest, IntentScript, IntentTarget, MAX_SCRIPT_STEPS,
    NormalizedIntent, NormalizedStep, SkillProvenance, digest,
};
use crate::hostname::go_url_hostname;
use crate::text::{go_lower, is_hex64, lower_trim};

/// A normalization rule was violated. Messages are Gait's (the CLI prefixes `normalize intent: `).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NormalizeError {
    /// `tool_name` is empty after trimming.
    #[error("tool_name is required")]
    ToolNameRequired,
    /// An object key (in args or auth_context) is empty after trimming.
    #[error("normalize args: args contains empty key")]
    EmptyArgKey,
    /// A target lacks kind or value.
    #[error("targets require kind and value")]
    TargetKindAndValueRequired,
    /// A target kind outside the allowed set.
    #[error("unsupported target kind: {0}")]
    UnsupportedTargetKind(String),
    /// An endpoint class outside the allowed set.
    #[error("unsupported endpoint class: {0}")]
    UnsupportedEndpointClass(String),
    /// A discovery method outside the allowed set.
    #[error("unsupported discovery method: {0}")]
    UnsupportedDiscoveryMethod(String),
    /// Provenance without arg_path or source.
    #[error("arg provenance requires arg_path and source")]
    ProvenanceFieldsRequired,
    /// Provenance source outside the allowed set.
    #[error("unsupported provenance source: {0}")]
    UnsupportedProvenanceSource(String),
    /// Provenance integrity digest that is not hex64.
    #[error("invalid provenance integrity_digest: {0}")]
    InvalidIntegrityDigest(String),
    /// Skill provenance without name, source or publisher.
    #[error("skill provenance requires skill_name, source, and publisher")]
    SkillFieldsRequired,
    /// Skill digest that is not hex64.
    #[error("invalid skill provenance digest: {0}")]
    InvalidSkillDigest(String),
    /// `context.identity` is empty.
    #[error("context.identity is required")]
    IdentityRequired,
    /// `context.workspace` is empty.
    #[error("context.workspace is required")]
    WorkspaceRequired,
    /// `context.risk_class` is empty.
    #[error("context.risk_class is required")]
    RiskClassRequired,
    /// An auth_context key is empty after trimming.
    #[error("normalize context.auth_context: args contains empty key")]
    EmptyAuthContextKey,
    /// `context.context_set_digest` is not hex64.
    #[error("context.context_set_digest must be sha256 hex")]
    InvalidContextSetDigest,
    /// `context.context_evidence_mode` is not best_effort/required.
    #[error("context.context_evidence_mode must be best_effort or required")]
    InvalidEvidenceMode,
    /// `context.phase` is not plan/apply.
    #[error("context.phase must be plan or apply")]
    InvalidPhase,
    /// Delegation without requester.
    #[error("delegation.requester_identity is required")]
    RequesterRequired,
    /// A chain link lacks an identity.
    #[error("delegation.chain[{0}] requires delegator_identity and delegate_identity")]
    LinkIdentitiesRequired(usize),
    /// A chain link does not continue from the previous delegate.
    #[error(
        "delegation.chain[{index}] delegator_identity must match delegation.chain[{previous}].delegate_identity"
    )]
    BrokenChain {
        /// The offending link.
        index: usize,
        /// The link before it.
        previous: usize,
    },
    /// A chain link expires before (or when) it is issued.
    #[error("delegation.chain[{0}] expires_at must be after issued_at")]
    LinkTimesOutOfOrder(usize),
    /// The delegation expires before (or when) it is issued.
    #[error("delegation.expires_at must be after issued_at")]
    DelegationTimesOutOfOrder,
    /// The last delegate is not the requester.
    #[error("delegation.chain last delegate_identity must match delegation.requester_identity")]
    ChainEndMismatch,
    /// A delegation time cannot be marshaled as Go does (year outside 0..=9999 in UTC).
    #[error("marshal normalized intent: {0}")]
    TimeOutOfRange(String),
    /// `script.steps` is empty.
    #[error("script.steps must not be empty")]
    ScriptEmpty,
    /// More than 64 steps.
    #[error("script.steps exceeds max supported steps ({max})", max = MAX_SCRIPT_STEPS)]
    ScriptTooLong,
    /// A step without tool name.
    #[error("script.steps[{0}].tool_name is required")]
    StepToolNameRequired(usize),
    /// A step's args are invalid.
    #[error("normalize script.steps[{index}].args: {source}")]
    StepArgs {
        /// Step index.
        index: usize,
        /// The underlying problem.
        source: Box<NormalizeError>,
    },
    /// A step's targets are invalid.
    #[error("normalize script.steps[{index}].targets: {source}")]
    StepTargets {
        /// Step index.
        index: usize,
        /// The underlying problem.
        source: Box<NormalizeError>,
    },
    /// A step's provenance is invalid.
    #[error("normalize script.steps[{index}].arg_provenance: {source}")]
    StepProvenance {
        /// Step index.
        index: usize,
        /// The underlying problem.
        source: Box<NormalizeError>,
    },
}

impl NormalizeError {
    fn in_step(
        self,
        index: usize,
        part: fn(usize, Box<NormalizeError>) -> NormalizeError,
    ) -> NormalizeError {
        part(index, Box::new(self))
    }
}

const TARGET_KINDS: [&str; 9] = [
    "path", "url", "host", "repo", "bucket", "table", "queue", "topic", "other",
];
pub(crate) const ENDPOINT_CLASSES: [&str; 10] = [
    "fs.read",
    "fs.write",
    "fs.delete",
    "proc.exec",
    "net.http",
    "net.dns",
    "ui.click",
    "ui.type",
    "ui.navigate",
    "other",
];
pub(crate) const DISCOVERY_METHODS: [&str; 7] = [
    "webmcp",
    "dynamic_mcp",
    "a2a",
    "mcp",
    "static_mcp",
    "manual",
    "unknown",
];
const PROVENANCE_SOURCES: [&str; 4] = ["user", "tool_output", "external", "system"];

/// Normalize an intent (§1.2) and compute its digests (§1.3). Checks run in Gait's order, so the first
/// violation reported is the one Gait reports.
pub fn normalize_intent(input: &IntentRequest) -> Result<NormalizedIntent, NormalizeError> {
    let script = input.script.as_ref().map(normalize_script).transpose()?;
    let tool_name = if script.is_some() {
        "script".to_owned()
    } else {
        lower_trim(&input.tool_name)
    };
    if tool_name.is_empty() {
        return Err(NormalizeError::ToolNameRequired);
    }
    let args = normalize_args(input.args.as_ref())?;

    let targets = match &script {
        Some(steps) if input.targets.is_empty() => {
            let from_steps: Vec<IntentTarget> = steps
                .iter()
                .flat_map(|s| s.targets.iter().cloned())
                .collect();
            normalize_targets(&tool_name, &from_steps)?
        }
        _ => normalize_targets(&tool_name, &input.targets)?,
    };
    let arg_provenance = match &script {
        Some(steps) if input.arg_provenance.is_empty() => {
            let from_steps: Vec<IntentArgProvenance> = steps
                .iter()
                .flat_map(|s| s.arg_provenance.iter().cloned())
                .collect();
            normalize_provenance(&from_steps)?
        }
        _ => normalize_provenance(&input.arg_provenance)?,
    };
    let skill_provenance = input
        .skill_provenance
        .as_ref()
        .map(normalize_skill)
        .transpose()?;
    let context = normalize_context(&input.context)?;
    let delegation = input
        .delegation
        .as_ref()
        .map(normalize_delegation)
        .transpose()?;
    let script_hash = script
        .as_deref()
        .map(digest::script_hash)
        .unwrap_or_default();

    let mut out = NormalizedIntent {
        schema_id: if input.schema_id.is_empty() {
            INTENT_SCHEMA_ID.to_owned()
        } else {
            input.schema_id.clone()
        },
        schema_version: if input.schema_version.is_empty() {
            INTENT_SCHEMA_VERSION.to_owned()
        } else {
            input.schema_version.clone()
        },
        created_at: input.created_at,
        producer_version: input.producer_version.clone(),
        tool_name,
        args_digest: digest::args_digest(&args),
        args,
        intent_digest: String::new(),
        script_hash,
        script,
        targets,
        arg_provenance,
        skill_provenance,
        delegation,
        relationship: input.relationship.clone(),
        context,
    };
    out.intent_digest = gait_canon::digest_jcs(&digest::intent_payload(&out));
    Ok(out)
}

fn normalize_script(input: &IntentScript) -> Result<Vec<NormalizedStep>, NormalizeError> {
    if input.steps.is_empty() {
        return Err(NormalizeError::ScriptEmpty);
    }
    if input.steps.len() > MAX_SCRIPT_STEPS {
        return Err(NormalizeError::ScriptTooLong);
    }
    let mut steps = Vec::with_capacity(input.steps.len());
    for (index, step) in input.steps.iter().enumerate() {
        let tool_name = lower_trim(&step.tool_name);
        if tool_name.is_empty() {
            return Err(NormalizeError::StepToolNameRequired(index));
        }
        let args = normalize_args(step.args.as_ref()).map_err(|e| {
            e.in_step(index, |index, source| NormalizeError::StepArgs {
                index,
                source,
            })
        })?;
        let targets = normalize_targets(&tool_name, &step.targets).map_err(|e| {
            e.in_step(index, |index, source| NormalizeError::StepTargets {
                index,
                source,
            })
        })?;
        let arg_provenance = normalize_provenance(&step.arg_provenance).map_err(|e| {
            e.in_step(index, |index, source| NormalizeError::StepProvenance {
                index,
                source,
            })
        })?;
        steps.push(NormalizedStep {
            tool_name,
            args,
            targets,
            arg_provenance,
        });
    }
    Ok(steps)
}

/// Normalize an args object: every string value and key trimmed at any depth, empty keys rejected, `None`
/// (Go's nil map) becomes `{}`.
pub fn normalize_args(
    args: Option<&Map<String, Value>>,
) -> Result<Map<String, Value>, NormalizeError> {
    match args {
        None => Ok(Map::new()),
        Some(map) => normalize_object(map).ok_or(NormalizeError::EmptyArgKey),
    }
}

fn normalize_object(map: &Map<String, Value>) -> Option<Map<String, Value>> {
    let mut out = Map::new();
    for (key, value) in map {
        let key = key.trim();
        if key.is_empty() {
            return None;
        }
        out.insert(key.to_owned(), normalize_value(value)?);
    }
    Some(out)
}

fn normalize_value(value: &Value) -> Option<Value> {
    Some(match value {
        Value::String(s) => Value::String(s.trim().to_owned()),
        Value::Array(items) => {
            Value::Array(items.iter().map(normalize_value).collect::<Option<_>>()?)
        }
        Value::Object(map) => Value::Object(normalize_object(map)?),
        other => other.clone(),
    })
}

fn normalize_discovery_method(value: &str) -> String {
    let method = lower_trim(value);
    if method.is_empty() {
        return "unknown".to_owned();
    }
    method.replace(['-', ' '], "_")
}

/// Go's `path.Base` on the lowercased, trimmed tool name, then a substring test per hint.
fn has_tool_hint(tool_name: &str, hints: &[&str]) -> bool {
    let lowered = lower_trim(tool_name);
    let base = go_path_base(&lowered);
    hints.iter().any(|hint| base.contains(hint))
}

fn go_path_base(p: &str) -> &str {
    if p.is_empty() {
        return ".";
    }
    let trimmed = p.trim_end_matches('/');
    if trimmed.is_empty() {
        return "/";
    }
    match trimmed.rfind('/') {
        Some(i) => &trimmed[i + 1..],
        None => trimmed,
    }
}

fn infer_endpoint_class(kind: &str, operation: &str, tool_name: &str) -> &'static str {
    match kind {
        "path" => match operation {
            "read" | "get" | "list" | "open" | "cat" | "head" | "download" | "stat" => "fs.read",
            "write" | "append" | "put" | "create" | "update" | "save" | "copy" | "move"
            | "rename" => "fs.write",
            "delete" | "remove" | "rm" | "unlink" | "rmdir" | "drop" | "truncate" => "fs.delete",
            _ if has_tool_hint(tool_name, &["read", "list", "fetch", "search"]) => "fs.read",
            _ if has_tool_hint(tool_name, &["write", "update", "save", "create"]) => "fs.write",
            _ if has_tool_hint(tool_name, &["delete", "remove", "rm", "drop"]) => "fs.delete",
            _ => "other",
        },
        "host" | "url" => match operation {
            "dns" | "resolve" | "lookup" => "net.dns",
            _ => "net.http",
        },
        "other" => match operation {
            "exec" | "spawn" | "run" | "shell" | "command" => "proc.exec",
            _ if has_tool_hint(tool_name, &["exec", "shell", "command", "spawn", "run"]) => {
                "proc.exec"
            }
            _ => "other",
        },
        _ => "other",
    }
}

fn infer_endpoint_domain(kind: &str, value: &str) -> String {
    match kind {
        "host" => {
            let mut host = value.trim();
            host = host.strip_prefix("http://").unwrap_or(host);
            host = host.strip_prefix("https://").unwrap_or(host);
            if let Some(i) = host.find('/') {
                host = &host[..i];
            }
            if let Some(i) = host.find(':') {
                host = &host[..i];
            }
            lower_trim(host)
        }
        "url" => go_url_hostname(value.trim())
            .map(|h| lower_trim(&h))
            .unwrap_or_default(),
        _ => String::new(),
    }
}

fn infer_destructive(endpoint_class: &str, operation: &str) -> bool {
    matches!(endpoint_class, "fs.delete" | "proc.exec")
        || matches!(
            operation,
            "delete"
                | "remove"
                | "rm"
                | "unlink"
                | "rmdir"
                | "drop"
                | "truncate"
                | "exec"
                | "spawn"
        )
}

/// Normalize targets for `tool_name` (§1.2): infer, validate, de-duplicate on the full tuple and sort.
pub(crate) fn normalize_targets(
    tool_name: &str,
    targets: &[IntentTarget],
) -> Result<Vec<IntentTarget>, NormalizeError> {
    let mut out: Vec<IntentTarget> = Vec::with_capacity(targets.len());
    for target in targets {
        let kind = lower_trim(&target.kind);
        let value = target.value.trim().to_owned();
        let operation = lower_trim(&target.operation);
        let sensitivity = lower_trim(&target.sensitivity);
        let mut endpoint_class = lower_trim(&target.endpoint_class);
        let mut endpoint_domain = lower_trim(&target.endpoint_domain);
        let discovery_method = normalize_discovery_method(&target.discovery_method);
        if kind.is_empty() || value.is_empty() {
            return Err(NormalizeError::TargetKindAndValueRequired);
        }
        if !TARGET_KINDS.contains(&kind.as_str()) {
            return Err(NormalizeError::UnsupportedTargetKind(kind));
        }
        if endpoint_class.is_empty() {
            endpoint_class = infer_endpoint_class(&kind, &operation, tool_name).to_owned();
        }
        if !ENDPOINT_CLASSES.contains(&endpoint_class.as_str()) {
            return Err(NormalizeError::UnsupportedEndpointClass(endpoint_class));
        }
        if endpoint_domain.is_empty() {
            endpoint_domain = infer_endpoint_domain(&kind, &value);
        }
        if !DISCOVERY_METHODS.contains(&discovery_method.as_str()) {
            return Err(NormalizeError::UnsupportedDiscoveryMethod(discovery_method));
        }
        let destructive = target.destructive
            || target.destructive_hint
            || infer_destructive(&endpoint_class, &operation);
        let normalized = IntentTarget {
            kind,
            value,
            operation,
            sensitivity,
            endpoint_class,
            endpoint_domain,
            destructive,
            discovery_method,
            read_only_hint: target.read_only_hint,
            destructive_hint: target.destructive_hint,
            idempotent_hint: target.idempotent_hint,
            open_world_hint: target.open_world_hint,
        };
        out.push(normalized);
    }
    // The sort key is the whole tuple, so equal targets end up adjacent and `dedup` removes them all.
    out.sort_by(|a, b| target_sort_key(a).cmp(&target_sort_key(b)));
    out.dedup();
    Ok(out)
}

#[allow(clippy::type_complexity)]
fn target_sort_key(
    t: &IntentTarget,
) -> (
    &str,
    &str,
    &str,
    &str,
    &str,
    &str,
    bool,
    &str,
    bool,
    bool,
    bool,
    bool,
) {
    (
        &t.kind,
        &t.value,
        &t.operation,
        &t.sensitivity,
        &t.endpoint_class,
        &t.endpoint_domain,
        t.destructive,
        &t.discovery_method,
        t.read_only_hint,
        t.destructive_hint,
        t.idempotent_hint,
        t.open_world_hint,
    )
}

fn normalize_provenance(
    items: &[IntentArgProvenance],
) -> Result<Vec<IntentArgProvenance>, NormalizeError> {
    let mut out: Vec<IntentArgProvenance> = Vec::with_capacity(items.len());
    for item in items {
        let arg_path = item.arg_path.trim().to_owned();
        let source = lower_trim(&item.source);
        let source_ref = item.source_ref.trim().to_owned();
        let integrity_digest = lower_trim(&item.integrity_digest);
        if arg_path.is_empty() || source.is_empty() {
            return Err(NormalizeError::ProvenanceFieldsRequired);
        }
        if !PROVENANCE_SOURCES.contains(&source.as_str()) {
            return Err(NormalizeError::UnsupportedProvenanceSource(source));
        }
        if !integrity_digest.is_empty() && !is_hex64(&integrity_digest) {
            return Err(NormalizeError::InvalidIntegrityDigest(integrity_digest));
        }
        let normalized = IntentArgProvenance {
            arg_path,
            source,
            source_ref,
            integrity_digest,
        };
        out.push(normalized);
    }
    out.sort_by(|a, b| {
        (&a.arg_path, &a.source, &a.source_ref, &a.integrity_digest).cmp(&(
            &b.arg_path,
            &b.source,
            &b.source_ref,
            &b.integrity_digest,
        ))
    });
    out.dedup();
    Ok(out)
}

fn normalize_skill(input: &SkillProvenance) -> Result<SkillProvenance, NormalizeError> {
    let skill_name = input.skill_name.trim().to_owned();
    let source = lower_trim(&input.source);
    let publisher = input.publisher.trim().to_owned();
    if skill_name.is_empty() || source.is_empty() || publisher.is_empty() {
        return Err(NormalizeError::SkillFieldsRequired);
    }
    let digest = lower_trim(&input.digest);
    if !digest.is_empty() && !is_hex64(&digest) {
        return Err(NormalizeError::InvalidSkillDigest(digest));
    }
    Ok(SkillProvenance {
        skill_name,
        skill_version: input.skill_version.trim().to_owned(),
        source,
        publisher,
        digest,
        signature_key_id: input.signature_key_id.trim().to_owned(),
    })
}

fn normalize_context(input: &IntentContext) -> Result<IntentContext, NormalizeError> {
    let identity = input.identity.trim();
    let workspace = input.workspace.trim();
    let risk_class = lower_trim(&input.risk_class);
    if identity.is_empty() {
        return Err(NormalizeError::IdentityRequired);
    }
    if workspace.is_empty() {
        return Err(NormalizeError::WorkspaceRequired);
    }
    if risk_class.is_empty() {
        return Err(NormalizeError::RiskClassRequired);
    }
    let auth_context = match &input.auth_context {
        Some(map) if !map.is_empty() => {
            let normalized = normalize_object(map).ok_or(NormalizeError::EmptyAuthContextKey)?;
            (!normalized.is_empty()).then_some(normalized)
        }
        _ => None,
    };
    let context_set_digest = lower_trim(&input.context_set_digest);
    if !context_set_digest.is_empty() && !is_hex64(&context_set_digest) {
        return Err(NormalizeError::InvalidContextSetDigest);
    }
    let context_evidence_mode = lower_trim(&input.context_evidence_mode);
    if !matches!(
        context_evidence_mode.as_str(),
        "" | "best_effort" | "required"
    ) {
        return Err(NormalizeError::InvalidEvidenceMode);
    }
    let mut phase = lower_trim(&input.phase);
    if phase.is_empty() {
        phase = "apply".to_owned();
    }
    if phase != "plan" && phase != "apply" {
        return Err(NormalizeError::InvalidPhase);
    }
    Ok(IntentContext {
        identity: identity.to_owned(),
        workspace: workspace.replace('\\', "/"),
        risk_class,
        phase,
        job_id: input.job_id.trim().to_owned(),
        session_id: input.session_id.trim().to_owned(),
        request_id: input.request_id.trim().to_owned(),
        auth_context,
        credential_scopes: crate::text::unique_sorted(&input.credential_scopes),
        environment_fingerprint: input.environment_fingerprint.trim().to_owned(),
        context_set_digest,
        context_evidence_mode,
        context_refs: crate::text::unique_sorted(&input.context_refs),
    })
}

fn check_marshalable(t: super::GoTime) -> Result<(), NormalizeError> {
    t.marshal_text()
        .map(|_| ())
        .map_err(|err| NormalizeError::TimeOutOfRange(err.to_string()))
}

fn normalize_delegation(input: &IntentDelegation) -> Result<IntentDelegation, NormalizeError> {
    let requester_identity = input.requester_identity.trim().to_owned();
    if requester_identity.is_empty() {
        return Err(NormalizeError::RequesterRequired);
    }
    let mut chain: Vec<DelegationLink> = Vec::with_capacity(input.chain.len());
    for (index, link) in input.chain.iter().enumerate() {
        let delegator_identity = link.delegator_identity.trim().to_owned();
        let delegate_identity = link.delegate_identity.trim().to_owned();
        if delegator_identity.is_empty() || delegate_identity.is_empty() {
            return Err(NormalizeError::LinkIdentitiesRequired(index));
        }
        if let Some(previous) = chain.last()
            && previous.delegate_identity != delegator_identity
        {
            return Err(NormalizeError::BrokenChain {
                index,
                previous: index - 1,
            });
        }
        if !link.issued_at.is_zero()
            && !link.expires_at.is_zero()
            && link.expires_at <= link.issued_at
        {
            return Err(NormalizeError::LinkTimesOutOfOrder(index));
        }
        check_marshalable(link.issued_at)?;
        check_marshalable(link.expires_at)?;
        chain.push(DelegationLink {
            delegator_identity,
            delegate_identity,
            scope_class: lower_trim(&link.scope_class),
            token_ref: link.token_ref.trim().to_owned(),
            issued_at: link.issued_at,
            expires_at: link.expires_at,
        });
    }
    if !input.issued_at.is_zero()
        && !input.expires_at.is_zero()
        && input.expires_at <= input.issued_at
    {
        return Err(NormalizeError::DelegationTimesOutOfOrder);
    }
    if let Some(last) = chain.last()
        && last.delegate_identity != requester_identity
    {
        return Err(NormalizeError::ChainEndMismatch);
    }
    check_marshalable(input.issued_at)?;
    check_marshalable(input.expires_at)?;
    Ok(IntentDelegation {
        requester_identity,
        scope_class: go_lower(input.scope_class.trim()),
        token_refs: crate::text::unique_sorted(&input.token_refs),
        chain,
        issued_at: input.issued_at,
        expires_at: input.expires_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(kind: &str, value: &str, operation: &str) -> IntentTarget {
        IntentTarget {
            kind: kind.into(),
            value: value.into(),
            operation: operation.into(),
            ..IntentTarget::default()
        }
    }

    #[test]
    fn path_endpoint_class_comes_from_operation_then_tool_name_substring() {
        let t = normalize_targets("tool.x", &[target("path", "/a", "cat")]).unwrap();
        assert_eq!(t[0].endpoint_class, "fs.read");
        let t = normalize_targets("fs/search_docs", &[target("path", "/a", "")]).unwrap();
        assert_eq!(t[0].endpoint_class, "fs.read");
        // The quirk: `tool.format` contains `rm`, so it is a delete and therefore destructive.
        let t = normalize_targets("tool.format", &[target("path", "/a", "")]).unwrap();
        assert_eq!(t[0].endpoint_class, "fs.delete");
        assert!(t[0].destructive);
        let t = normalize_targets("tool.info", &[target("path", "/a", "")]).unwrap();
        assert_eq!(t[0].endpoint_class, "other");
    }

    #[test]
    fn tool_hint_uses_last_path_segment() {
        assert!(has_tool_hint("Remove/Tool.Read", &["read"]));
        assert!(!has_tool_hint("read/tool.x", &["read"]));
        assert!(has_tool_hint("tool.read/", &["read"]));
    }

    #[test]
    fn network_targets_get_class_and_domain() {
        let t = normalize_targets(
            "t",
            &[
                target("host", "https://API.Example.com:443/x", ""),
                target("url", "https://Files.Example.org/a", "lookup"),
            ],
        )
        .unwrap();
        assert_eq!(t[0].endpoint_class, "net.http");
        assert_eq!(t[0].endpoint_domain, "api.example.com");
        assert_eq!(t[1].endpoint_class, "net.dns");
        assert_eq!(t[1].endpoint_domain, "files.example.org");
    }

    #[test]
    fn other_targets_infer_proc_exec_and_destructive() {
        let t = normalize_targets("tool.shell", &[target("other", "ls", "")]).unwrap();
        assert_eq!(t[0].endpoint_class, "proc.exec");
        assert!(t[0].destructive);
        let t = normalize_targets("t", &[target("repo", "r", "spawn")]).unwrap();
        assert_eq!(t[0].endpoint_class, "other");
        assert!(
            t[0].destructive,
            "operation spawn is destructive on its own"
        );
    }

    #[test]
    fn discovery_method_defaults_to_unknown_and_is_canonicalized() {
        let mut t = target("path", "/a", "read");
        t.discovery_method = " Dynamic-MCP ".into();
        let out = normalize_targets("t", &[t, target("path", "/b", "read")]).unwrap();
        assert_eq!(out[0].discovery_method, "dynamic_mcp");
        assert_eq!(out[1].discovery_method, "unknown");
        let mut bad = target("path", "/a", "read");
        bad.discovery_method = "carrier pigeon".into();
        assert_eq!(
            normalize_targets("t", &[bad]).unwrap_err(),
            NormalizeError::UnsupportedDiscoveryMethod("carrier_pigeon".into())
        );
    }

    #[test]
    fn targets_are_deduplicated_and_sorted_with_false_before_true() {
        let mut d = target("path", "/a", "write");
        d.destructive = true;
        let out = normalize_targets(
            "t",
            &[
                d.clone(),
                target("path", "/a", "write"),
                target("path", " /a ", "WRITE"),
                target("host", "h", ""),
            ],
        )
        .unwrap();
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].kind, "host");
        assert!(!out[1].destructive);
        assert!(out[2].destructive);
    }

    #[test]
    fn args_are_trimmed_recursively_and_empty_keys_rejected() {
        let raw: Map<String, Value> =
            serde_json::from_str(r#"{" a ":{" b ":[" x ",1,true,null]}}"#).unwrap();
        let out = normalize_args(Some(&raw)).unwrap();
        assert_eq!(out["a"]["b"][0], " x ".trim());
        let bad: Map<String, Value> = serde_json::from_str(r#"{"a":{"  ":1}}"#).unwrap();
        assert_eq!(
            normalize_args(Some(&bad)).unwrap_err(),
            NormalizeError::EmptyArgKey
        );
    }

    #[test]
    fn delegation_chain_must_be_contiguous_and_end_at_requester() {
        let link = |a: &str, b: &str| DelegationLink {
            delegator_identity: a.into(),
            delegate_identity: b.into(),
            ..DelegationLink::default()
        };
        let mut d = IntentDelegation {
            requester_identity: "c".into(),
            chain: vec![link("a", "b"), link("x", "c")],
            ..IntentDelegation::default()
        };
        assert_eq!(
            normalize_delegation(&d).unwrap_err(),
            NormalizeError::BrokenChain {
                index: 1,
                previous: 0
            }
        );
        d.chain = vec![link("a", "b")];
        assert_eq!(
            normalize_delegation(&d).unwrap_err(),
            NormalizeError::ChainEndMismatch
        );
        d.chain = vec![link("a", "b"), link("b", "c")];
        assert!(normalize_delegation(&d).is_ok());
    }

    #[test]
    fn context_defaults_phase_and_rewrites_backslashes() {
        let ctx = normalize_context(&IntentContext {
            identity: " alice ".into(),
            workspace: "C:\\repo\\work".into(),
            risk_class: " HIGH ".into(),
            ..IntentContext::default()
        })
        .unwrap();
        assert_eq!(ctx.identity, "alice");
        assert_eq!(ctx.workspace, "C:/repo/work");
        assert_eq!(ctx.risk_class, "high");
        assert_eq!(ctx.phase, "apply");
    }
}
