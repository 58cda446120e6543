//! The signed part of a bundle: scope, epoch, validity window, staleness rule, environment settings and the list
//! of policy files, with the field rules every manifest must satisfy (see `schemas/bundle/manifest.schema.json`).

use crate::BundleError;
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};
use std::fmt;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Largest integer a manifest may carry: JCS hashes numbers as IEEE-754 doubles, so larger integers would not
/// be represented exactly in the digest (2^53 - 1, JavaScript's `Number.MAX_SAFE_INTEGER`).
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// Most policy files one bundle may list.
pub const MAX_POLICIES: usize = 1024;

/// Longest policy file name in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// Longest scope component (org, project, env) in bytes: the tenancy identifier limit of `gait-identity`.
pub const MAX_SCOPE_PART_LEN: usize = gait_identity::MAX_IDENTIFIER_LEN;

/// Tenancy a bundle applies to: the one tenant type of the fleet, `{"org", "project", "env"}` in JSON, each part
/// under [`gait_identity::IDENTIFIER_RULE`].
pub type Scope = gait_identity::Tenant;

/// Reads `manifest.scope` like [`Scope`]'s own `Deserialize` does, but names the dotted field of a part that
/// breaks its rule (`manifest.scope.org: invalid org "Acme": must match …`).
fn deserialize_scope<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Scope, D::Error> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct RawScope {
        org: String,
        project: String,
        env: String,
    }
    let raw = RawScope::deserialize(deserializer)?;
    let named = |field: &str, e: gait_identity::IdError| {
        de::Error::custom(format_args!("manifest.scope.{field}: {e}"))
    };
    Ok(Scope {
        org: raw.org.try_into().map_err(|e| named("org", e))?,
        project: raw.project.try_into().map_err(|e| named("project", e))?,
        env: raw.env.try_into().map_err(|e| named("env", e))?,
    })
}

/// What an agent does once it has been offline longer than `max_offline_seconds` since it last heard from the
/// aggregator.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum OnStale {
    /// Keep enforcing the cached bundle.
    Keep,
    /// Refuse every intent until the aggregator is reachable again.
    FailClosed,
}

/// Offline tolerance of a bundle.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct Staleness {
    /// Seconds without contact to the aggregator after which `on_stale` applies.
    pub max_offline_seconds: u64,
    /// What happens then.
    pub on_stale: OnStale,
}

impl Default for Staleness {
    /// Seven days, then keep enforcing.
    fn default() -> Self {
        Staleness {
            max_offline_seconds: 7 * 24 * 3600,
            on_stale: OnStale::Keep,
        }
    }
}

/// Settings of the environment that travel with its policies, signed like them, so an agent applies what the
/// publisher chose and never what a local caller asks for. Every field defaults to the restrictive choice and
/// is omitted while it has that value, so a manifest without settings keeps the digest it always had.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Whether a caller of the agent's local API may ask for `simulate` (decide, record the policy's verdict,
    /// enforce `allow`). Default false: such a request is refused.
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_caller_simulate: bool,
    /// Whether the environment's agents upload the bytes of the artifacts they record (runpacks, traces,
    /// regress results) to the aggregator's blob store. Default false: only digests travel.
    #[serde(default, skip_serializing_if = "is_false")]
    pub upload_artifacts: bool,
    /// What the agents' decision records carry of each intent: digests only (`reference`, the default) or the
    /// normalized intent too (`raw`), so candidate policies can be replayed against real traffic.
    #[serde(default, skip_serializing_if = "CaptureMode::is_reference")]
    pub capture_mode: CaptureMode,
}

/// What a decision record carries of the intent it judged (`manifest.settings.capture_mode`).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum CaptureMode {
    /// Digests only (intent digest, args digest in the trace): nothing of the call's content leaves the host.
    #[default]
    Reference,
    /// The normalized intent too (Gait's §1.3 normalized intent object, whose DigestJCS is the intent digest).
    Raw,
}

impl CaptureMode {
    /// The mode's name in manifests, flags, records and status.
    pub fn as_str(self) -> &'static str {
        match self {
            CaptureMode::Reference => "reference",
            CaptureMode::Raw => "raw",
        }
    }

    /// Parses `reference` or `raw`.
    pub fn parse(s: &str) -> Option<CaptureMode> {
        match s {
            "reference" => Some(CaptureMode::Reference),
            "raw" => Some(CaptureMode::Raw),
            _ => None,
        }
    }

    /// Whether this is the default, `reference`.
    pub fn is_reference(&self) -> bool {
        *self == CaptureMode::Reference
    }
}

impl fmt::Display for CaptureMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Settings {
    /// Whether every setting has its default (the manifest then omits `settings`).
    pub fn is_default(&self) -> bool {
        *self == Settings::default()
    }
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// How far a policy's candidate has come (per policy, signed with it). A policy without a candidate is
/// `enforce`, which is also what every manifest without a `stage` field means.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// The policy decides alone (no candidate).
    #[default]
    Enforce,
    /// The policy decides; the candidate is evaluated in shadow and both verdicts are recorded.
    Observe,
    /// The candidate is the policy of record, but a block it adds over the policy it replaces is reported
    /// (`would_have_blocked`) and not enforced, and what the replaced policy blocks stays blocked.
    DryRun,
}

impl Stage {
    /// The stage's name in manifests, flags and decision records.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Enforce => "enforce",
            Stage::Observe => "observe",
            Stage::DryRun => "dry_run",
        }
    }

    /// Parses `enforce`, `observe` or `dry_run`.
    pub fn parse(s: &str) -> Option<Stage> {
        match s {
            "enforce" => Some(Stage::Enforce),
            "observe" => Some(Stage::Observe),
            "dry_run" => Some(Stage::DryRun),
            _ => None,
        }
    }

    fn is_enforce(&self) -> bool {
        *self == Stage::Enforce
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The candidate policy file staged beside a policy of record: a file of the bundle like the policies, bound
/// by SHA-256 and size, under a name no policy uses.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct CandidateEntry {
    /// File name in the bundle's `files`, under the rule of [`PolicyEntry::name`], distinct from every policy
    /// and candidate name.
    pub name: String,
    /// Lowercase hex SHA-256 of the file bytes.
    pub sha256: String,
    /// File size in bytes.
    pub size: u64,
}

/// One policy file listed in the manifest.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct PolicyEntry {
    /// File name: `[A-Za-z0-9][A-Za-z0-9._-]*`, at most [`MAX_NAME_LEN`] bytes, no path separators.
    pub name: String,
    /// Lowercase hex SHA-256 of the file bytes.
    pub sha256: String,
    /// File size in bytes.
    pub size: u64,
    /// The candidate's stage; omitted for `enforce`, so manifests without stages keep their digest.
    #[serde(default, skip_serializing_if = "Stage::is_enforce")]
    pub stage: Stage,
    /// The candidate policy file: required for `observe` and `dry_run`, refused for `enforce`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<CandidateEntry>,
}

/// The signed manifest of a bundle. Its DigestJCS is the bundle digest.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Tenancy the bundle applies to.
    #[serde(deserialize_with = "deserialize_scope")]
    pub scope: Scope,
    /// Monotonic per scope, starting at 1.
    pub epoch: u64,
    /// When the bundle was built (RFC 3339).
    pub created_at: String,
    /// Agents refuse the bundle at or after this instant (RFC 3339).
    pub not_after: String,
    /// Lowercase hex digest of the previous bundle of this scope, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_digest: Option<String>,
    /// Offline tolerance.
    pub staleness: Staleness,
    /// Environment settings; omitted when all are default, so older manifests keep their digest.
    #[serde(default, skip_serializing_if = "Settings::is_default")]
    pub settings: Settings,
    /// Policy files, sorted by name, names unique.
    pub policies: Vec<PolicyEntry>,
    /// The aggregator's approval public key (Gait's key text: base64 of the raw Ed25519 key): the agent accepts
    /// Gait approval tokens signed by it for decisions under this bundle. Omitted when absent, so manifests
    /// without it keep their digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_key: Option<String>,
    /// The public key Gait delegation tokens must be signed with (Gait's key text) for decisions under this
    /// bundle; agents accept no delegation token without it. Omitted when absent, so manifests without it keep
    /// their digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegation_key: Option<String>,
    /// Key id (lowercase hex SHA-256 of the raw Ed25519 public key) of the signing key.
    pub key_id: String,
    /// Signing-key rotation: endorsements of newer keys and revoked key ids. Omitted when empty, so manifests
    /// without it keep their digest.
    #[serde(default, skip_serializing_if = "TrustUpdate::is_empty")]
    pub trust: TrustUpdate,
    /// Set when this bundle is a rollback: a new epoch restoring the policies of an older bundle, signed like
    /// everything else. Omitted when absent, so every manifest without it keeps its digest; agents older than
    /// the field refuse a manifest carrying it (unknown field), which is the safe direction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<Rollback>,
}

/// Most endorsement links a manifest carries (`manifest.trust.keys`): an agent more rotations behind than this
/// must be re-provisioned with a current registry public key.
pub const MAX_TRUST_LINKS: usize = 16;

/// Most revoked key ids a manifest carries (`manifest.trust.revoked`).
pub const MAX_REVOKED_KEYS: usize = 64;

/// The signing-key changes a bundle announces (`manifest.trust`), signed with the manifest.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TrustUpdate {
    /// The endorsement chain, oldest link first: each newer key endorsed by the key before it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<KeyEndorsement>,
    /// Key ids agents must no longer accept, sorted, each once (cumulative).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revoked: Vec<String>,
}

impl TrustUpdate {
    /// Whether the update announces nothing (the manifest then omits `trust`).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.revoked.is_empty()
    }
}

/// One link of the endorsement chain: `endorsed_by` vouches for `key`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KeyEndorsement {
    /// The endorsed public key, in Gait's key text (base64 of the raw 32-byte Ed25519 key).
    pub key: String,
    /// Its key id (lowercase hex SHA-256 of the raw key).
    pub key_id: String,
    /// Key id of the endorsing key.
    pub endorsed_by: String,
    /// Standard base64 of the endorsing key's Ed25519 signature over SHA-256 of
    /// [`endorsement_input`]`(key_id, endorsed_by)`.
    pub sig: String,
}

/// The bytes an endorsement signs (through their SHA-256, like every Gait signature):
/// `gait.fleet.bundle_key_endorsement.v1\n{key_id}\n{endorsed_by}`. The key id is the SHA-256 of the endorsed
/// key, so the endorsement binds the key itself.
pub fn endorsement_input(key_id: &str, endorsed_by: &str) -> Vec<u8> {
    format!("gait.fleet.bundle_key_endorsement.v1\n{key_id}\n{endorsed_by}").into_bytes()
}

/// Longest `manifest.rollback.reason` in bytes.
pub const MAX_ROLLBACK_REASON_LEN: usize = 256;

/// The signed rollback marker of a bundle (`manifest.rollback`): which bundle was rolled back and which older
/// bundle's policies this epoch restores. It never lowers the epoch: the agent's anti-rollback rule (epoch
/// strictly greater) stays as it is, so old signed bytes remain refused after a rollback.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct Rollback {
    /// Lowercase hex digest of the bundle that was in force and is rolled back.
    pub from_digest: String,
    /// Epoch of the older bundle whose policies this bundle restores.
    pub restores_epoch: u64,
    /// Lowercase hex digest of that older bundle.
    pub restores_digest: String,
    /// Why (at most [`MAX_ROLLBACK_REASON_LEN`] bytes, no control characters).
    pub reason: String,
}

impl Manifest {
    /// The approval public key the bundle carries, if any (validated when the manifest was parsed or built).
    pub fn approval_public_key(&self) -> Option<gait_canon::sign::PublicKey> {
        self.approval_key
            .as_deref()
            .and_then(|k| gait_canon::sign::PublicKey::from_gait_public_key(k).ok())
    }

    /// The delegation public key the bundle carries, if any (validated when the manifest was parsed or built).
    pub fn delegation_public_key(&self) -> Option<gait_canon::sign::PublicKey> {
        self.delegation_key
            .as_deref()
            .and_then(|k| gait_canon::sign::PublicKey::from_gait_public_key(k).ok())
    }

    /// `created_at` as Unix seconds (the manifest was validated when it was parsed or built).
    pub fn created_at_unix(&self) -> Result<i64, BundleError> {
        parse_time("manifest.created_at", &self.created_at).map(|t| t.unix_timestamp())
    }

    /// `not_after` as Unix seconds, rounded down.
    pub fn not_after_unix(&self) -> Result<i64, BundleError> {
        parse_time("manifest.not_after", &self.not_after).map(|t| t.unix_timestamp())
    }

    /// The bundle digest: DigestJCS of this manifest, as raw bytes and lowercase hex.
    pub fn digest(&self) -> Result<([u8; 32], String), BundleError> {
        let value = gait_canon::to_canonical_value(self)
            .map_err(|e| BundleError::Malformed(format!("manifest: {e}")))?;
        digest_of_value(&value)
    }

    /// Check every field rule; errors name the dotted field.
    pub(crate) fn validate(&self) -> Result<(), BundleError> {
        // The scope needs no check here: its parts are validated identifiers by construction.
        if self.epoch == 0 || self.epoch > MAX_SAFE_INTEGER {
            return Err(malformed(
                "manifest.epoch",
                format!("must be between 1 and {MAX_SAFE_INTEGER}"),
            ));
        }
        let created = parse_time("manifest.created_at", &self.created_at)?;
        let not_after = parse_time("manifest.not_after", &self.not_after)?;
        if not_after <= created {
            return Err(malformed(
                "manifest.not_after",
                "must be later than manifest.created_at",
            ));
        }
        if let Some(parent) = &self.parent_digest {
            check_hex64("manifest.parent_digest", parent)?;
        }
        if self.staleness.max_offline_seconds > MAX_SAFE_INTEGER {
            return Err(malformed(
                "manifest.staleness.max_offline_seconds",
                format!("must be at most {MAX_SAFE_INTEGER}"),
            ));
        }
        if self.policies.len() > MAX_POLICIES {
            return Err(malformed(
                "manifest.policies",
                format!("lists more than {MAX_POLICIES} files"),
            ));
        }
        for (i, p) in self.policies.iter().enumerate() {
            check_name(&format!("manifest.policies[{i}].name"), &p.name)?;
            check_hex64(&format!("manifest.policies[{i}].sha256"), &p.sha256)?;
            if p.size > MAX_SAFE_INTEGER {
                return Err(malformed(
                    &format!("manifest.policies[{i}].size"),
                    format!("must be at most {MAX_SAFE_INTEGER}"),
                ));
            }
            check_stage(i, p)?;
            if i > 0 && self.policies[i - 1].name >= p.name {
                return Err(malformed(
                    &format!("manifest.policies[{i}].name"),
                    format!(
                        "{:?} is out of order or repeated: list files sorted by name, each once",
                        p.name
                    ),
                ));
            }
        }
        let mut names: std::collections::BTreeSet<&str> =
            self.policies.iter().map(|p| p.name.as_str()).collect();
        for (i, p) in self.policies.iter().enumerate() {
            if let Some(c) = &p.candidate
                && !names.insert(c.name.as_str())
            {
                return Err(malformed(
                    &format!("manifest.policies[{i}].candidate.name"),
                    format!(
                        "{:?} is already the name of a policy or another candidate: every file of a bundle has its own name",
                        c.name
                    ),
                ));
            }
        }
        check_hex64("manifest.key_id", &self.key_id)?;
        if let Some(r) = &self.rollback {
            check_rollback(r, self.epoch)?;
        }
        for (field, key) in [
            ("manifest.approval_key", &self.approval_key),
            ("manifest.delegation_key", &self.delegation_key),
        ] {
            if let Some(key) = key {
                gait_canon::sign::PublicKey::from_gait_public_key(key).map_err(|e| {
                    malformed(
                        field,
                        format!("is not an Ed25519 public key in Gait's base64 form ({e})"),
                    )
                })?;
            }
        }
        self.validate_trust()
    }

    /// `manifest.trust`: at most [`MAX_TRUST_LINKS`] well-formed links, each key id matching its key, and at
    /// most [`MAX_REVOKED_KEYS`] revoked ids, sorted and unique. Signatures are checked by the verifier.
    fn validate_trust(&self) -> Result<(), BundleError> {
        let t = &self.trust;
        if t.keys.len() > MAX_TRUST_LINKS {
            return Err(malformed(
                "manifest.trust.keys",
                format!("carries more than {MAX_TRUST_LINKS} endorsement links"),
            ));
        }
        for (i, link) in t.keys.iter().enumerate() {
            let field = |f: &str| format!("manifest.trust.keys[{i}].{f}");
            check_hex64(&field("key_id"), &link.key_id)?;
            check_hex64(&field("endorsed_by"), &link.endorsed_by)?;
            let key =
                gait_canon::sign::PublicKey::from_gait_public_key(&link.key).map_err(|e| {
                    malformed(
                        &field("key"),
                        format!("is not an Ed25519 public key in Gait's base64 form ({e})"),
                    )
                })?;
            if key.key_id() != link.key_id {
                return Err(malformed(
                    &field("key_id"),
                    "is not the SHA-256 of manifest.trust.keys[].key",
                ));
            }
            if link.sig.is_empty() || link.sig.len() > 128 {
                return Err(malformed(
                    &field("sig"),
                    "must be base64 of a 64-byte signature",
                ));
            }
        }
        if t.revoked.len() > MAX_REVOKED_KEYS {
            return Err(malformed(
                "manifest.trust.revoked",
                format!("lists more than {MAX_REVOKED_KEYS} key ids"),
            ));
        }
        for (i, id) in t.revoked.iter().enumerate() {
            check_hex64(&format!("manifest.trust.revoked[{i}]"), id)?;
            if i > 0 && t.revoked[i - 1] >= *id {
                return Err(malformed(
                    &format!("manifest.trust.revoked[{i}]"),
                    "key ids must be sorted and unique",
                ));
            }
        }
        Ok(())
    }

    /// Every file the bundle carries: (name, sha256, size) of each policy and each candidate.
    pub fn listed_files(&self) -> impl Iterator<Item = (&str, &str, u64)> {
        self.policies.iter().flat_map(|p| {
            std::iter::once((p.name.as_str(), p.sha256.as_str(), p.size)).chain(
                p.candidate
                    .iter()
                    .map(|c| (c.name.as_str(), c.sha256.as_str(), c.size)),
            )
        })
    }
}

/// A rollback marker names two bundle digests, an older epoch and a short printable reason.
fn check_rollback(r: &Rollback, epoch: u64) -> Result<(), BundleError> {
    check_hex64("manifest.rollback.from_digest", &r.from_digest)?;
    check_hex64("manifest.rollback.restores_digest", &r.restores_digest)?;
    if r.restores_epoch == 0 || r.restores_epoch >= epoch {
        return Err(malformed(
            "manifest.rollback.restores_epoch",
            format!(
                "{} must be between 1 and the bundle's epoch - 1 ({})",
                r.restores_epoch,
                epoch.saturating_sub(1)
            ),
        ));
    }
    if r.reason.len() > MAX_ROLLBACK_REASON_LEN || r.reason.chars().any(char::is_control) {
        return Err(malformed(
            "manifest.rollback.reason",
            format!("must be at most {MAX_ROLLBACK_REASON_LEN} bytes without control characters"),
        ));
    }
    Ok(())
}

/// A staged policy names its candidate, and `enforce` carries none.
fn check_stage(i: usize, p: &PolicyEntry) -> Result<(), BundleError> {
    match (&p.candidate, p.stage) {
        (None, Stage::Enforce) => Ok(()),
        (Some(_), Stage::Enforce) => Err(malformed(
            &format!("manifest.policies[{i}].candidate"),
            "a policy at stage enforce has no candidate: to enforce the candidate, publish it as the policy",
        )),
        (None, stage) => Err(malformed(
            &format!("manifest.policies[{i}].stage"),
            format!("{stage} needs a candidate policy file (manifest.policies[{i}].candidate)"),
        )),
        (Some(c), _) => {
            check_name(&format!("manifest.policies[{i}].candidate.name"), &c.name)?;
            check_hex64(
                &format!("manifest.policies[{i}].candidate.sha256"),
                &c.sha256,
            )?;
            if c.size > MAX_SAFE_INTEGER {
                return Err(malformed(
                    &format!("manifest.policies[{i}].candidate.size"),
                    format!("must be at most {MAX_SAFE_INTEGER}"),
                ));
            }
            Ok(())
        }
    }
}

pub(crate) fn malformed(field: &str, what: impl fmt::Display) -> BundleError {
    BundleError::Malformed(format!("{field}: {what}"))
}

pub(crate) fn digest_of_value(
    value: &serde_json::Value,
) -> Result<([u8; 32], String), BundleError> {
    let hex_digest = gait_canon::digest_jcs(value);
    let mut raw = [0u8; 32];
    hex::decode_to_slice(&hex_digest, &mut raw)
        .map_err(|e| BundleError::Malformed(format!("manifest digest: {e}")))?;
    Ok((raw, hex_digest))
}

pub(crate) fn parse_time(field: &str, s: &str) -> Result<OffsetDateTime, BundleError> {
    OffsetDateTime::parse(s, &Rfc3339)
        .map_err(|e| malformed(field, format!("{s:?} is not an RFC 3339 timestamp ({e})")))
}

pub(crate) fn format_time(field: &str, unix: i64) -> Result<String, BundleError> {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .ok_or_else(|| malformed(field, format!("{unix} is outside the years 0000-9999")))
}

/// Policy file names are used as file names by agents, so they are kept to a portable, path-free alphabet.
pub(crate) fn check_name(field: &str, name: &str) -> Result<(), BundleError> {
    let ok_len = !name.is_empty() && name.len() <= MAX_NAME_LEN;
    let ok_first = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric());
    let ok_rest = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok_len && ok_first && ok_rest {
        Ok(())
    } else {
        Err(malformed(
            field,
            format!(
                "{name:?} is not a valid file name: use 1 to {MAX_NAME_LEN} of [A-Za-z0-9._-], starting with a letter or digit"
            ),
        ))
    }
}

fn check_hex64(field: &str, s: &str) -> Result<(), BundleError> {
    if s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(malformed(
            field,
            format!("{s:?} must be 64 lowercase hex characters"),
        ))
    }
}
