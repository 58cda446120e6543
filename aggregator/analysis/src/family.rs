//! Incident families: which occurrences are "the same incident", decided by a fingerprint over features that do
//! not change from one occurrence to the next.
//!
//! **Fingerprint v1.** The inputs are the incident kind, the tool, the verdict, the set of reason codes, the
//! matched rule, the policy lineage (the policy's name, which stays the same across its versions, not its
//! digest), the endpoint class and, for regress failures, the failure kind. Never an agent, a time, a sequence
//! number, a trace id or a digest of arguments: those differ per occurrence and would split one incident into
//! many. The inputs are normalized (trimmed; reason codes sorted and deduplicated; empty optional fields
//! dropped), encoded as RFC 8785 canonical JSON, and hashed with SHA-256 behind the domain prefix
//! [`FINGERPRINT_V1_DOMAIN`]. The hash is the family id; [`Fingerprint::dedup_key`] is its short stable form for
//! downstream systems.
//!
//! **Versions.** A later algorithm gets a new version and domain prefix. When one exists, a family will also
//! record the fingerprints of the versions before it, so an upgrade finds existing families by their old hash
//! and keeps them together (as Sentry carries the previous grouping hash when it changes grouping). With v1
//! the only version there is nothing to carry yet.
//!
//! **Folding.** [`Families::add`] counts an occurrence once per record identity ([`RecordRef`]), whatever the
//! order or number of times it arrives, and every field of a family is order-independent (minimum, maximum,
//! sums of distinct records, sets, the smallest representative digests), so a shuffled or duplicated ingest of
//! the same evidence gives equal families. The store enforces the same uniqueness with keys; this is the model
//! it must agree with.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The fingerprint algorithm this crate computes.
pub const FINGERPRINT_VERSION: u32 = 1;
/// Domain prefix of fingerprint v1 (hashed before the canonical inputs).
pub const FINGERPRINT_V1_DOMAIN: &str = "gait.fleet.incident_family.v1\n";
/// Representative artifact digests a family keeps (the smallest, so any order keeps the same ones).
pub const MAX_REPRESENTATIVES: usize = 5;

/// What kind of evidence an incident comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentKind {
    /// A gate decision (block, approval required, dry-run would-block, …).
    Decision,
    /// A failed regress run.
    RegressFailure,
}

impl IncidentKind {
    fn as_str(self) -> &'static str {
        match self {
            IncidentKind::Decision => "decision",
            IncidentKind::RegressFailure => "regress_failure",
        }
    }
}

/// The non-volatile features of one occurrence: everything the fingerprint reads.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IncidentFeatures {
    /// Decision or regress failure.
    pub kind: Option<IncidentKind>,
    /// The tool the intent named.
    pub tool: String,
    /// The verdict (`block`, `require_approval`, `allow`, `dry_run`; a regress failure's is `fail`).
    pub verdict: String,
    /// Reason codes, in any order, duplicates allowed (the fingerprint reads them as a set).
    pub reason_codes: Vec<String>,
    /// The deciding rule, if any.
    pub matched_rule: Option<String>,
    /// The policy's lineage: its name, stable across versions.
    pub policy_lineage: Option<String>,
    /// The endpoint class of the call (`fs.write`, `net.egress`, …), if known.
    pub endpoint_class: Option<String>,
    /// A regress failure's kind (`verdict_changed`, `result_digest_changed`, …).
    pub failure_kind: Option<String>,
}

/// A computed fingerprint: its version, hash and the normalized inputs that went into it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// The algorithm version ([`FINGERPRINT_VERSION`] for new ones).
    pub version: u32,
    /// Lowercase hex SHA-256 over the domain prefix and the canonical inputs: the family id.
    pub hash: String,
    /// The normalized inputs, as hashed (for "why are these one family").
    pub inputs: Value,
}

impl Fingerprint {
    /// The short stable key downstream systems deduplicate on: `gfam<version>-<first 32 hex of the hash>`.
    pub fn dedup_key(&self) -> String {
        format!(
            "gfam{}-{}",
            self.version,
            self.hash.get(..32).unwrap_or(&self.hash)
        )
    }
}

/// Fingerprint v1 of `features` (module docs).
pub fn fingerprint(features: &IncidentFeatures) -> Fingerprint {
    let inputs = normalized_inputs(features);
    let mut bytes = FINGERPRINT_V1_DOMAIN.as_bytes().to_vec();
    bytes.extend(gait_canon::canonical_bytes(&inputs));
    Fingerprint {
        version: FINGERPRINT_VERSION,
        hash: gait_canon::sha256_hex(&bytes),
        inputs,
    }
}

/// The inputs of fingerprint v1 as one JSON object: trimmed strings, reason codes as a sorted set, empty
/// optional fields left out (so "absent" and "empty" are the same incident).
fn normalized_inputs(f: &IncidentFeatures) -> Value {
    let mut m = Map::new();
    let kind = f.kind.unwrap_or(IncidentKind::Decision);
    m.insert("kind".into(), kind.as_str().into());
    m.insert("tool".into(), f.tool.trim().into());
    m.insert("verdict".into(), f.verdict.trim().into());
    let codes: BTreeSet<&str> = f
        .reason_codes
        .iter()
        .map(|c| c.trim())
        .filter(|c| !c.is_empty())
        .collect();
    m.insert(
        "reason_codes".into(),
        codes
            .into_iter()
            .map(Value::from)
            .collect::<Vec<_>>()
            .into(),
    );
    for (key, value) in [
        ("matched_rule", &f.matched_rule),
        ("policy_lineage", &f.policy_lineage),
        ("endpoint_class", &f.endpoint_class),
        ("failure_kind", &f.failure_kind),
    ] {
        if let Some(v) = value.as_deref().map(str::trim).filter(|v| !v.is_empty()) {
            m.insert(key.into(), v.into());
        }
    }
    Value::Object(m)
}

/// Where one occurrence was recorded: the identity of its evidence record (unique in the fleet).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RecordRef {
    /// The org.
    pub org: String,
    /// The project.
    pub project: String,
    /// The environment.
    pub env: String,
    /// The agent.
    pub agent_id: String,
    /// The record's sequence number in that agent's stream.
    pub seq: u64,
}

/// One occurrence of an incident, as the evidence index holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Occurrence {
    /// The record it came from (the deduplication key).
    pub record: RecordRef,
    /// When the agent recorded it (Unix ms).
    pub at_unix_ms: i64,
    /// Its features.
    pub features: IncidentFeatures,
    /// The digest of an artifact showing it (a trace or runpack), if any.
    pub artifact_digest: Option<String>,
}

/// One incident family.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Family {
    /// The current fingerprint (its hash is the family id).
    pub fingerprint: Fingerprint,
    /// Earliest occurrence (Unix ms).
    pub first_seen_unix_ms: i64,
    /// Latest occurrence (Unix ms).
    pub last_seen_unix_ms: i64,
    /// Distinct records in the family.
    pub count: u64,
    /// Agents affected, as `<org>/<project>/<env>/<agent>`.
    pub agents: BTreeSet<String>,
    /// Projects affected, as `<org>/<project>`.
    pub projects: BTreeSet<String>,
    /// Environments affected, as `<org>/<project>/<env>`.
    pub environments: BTreeSet<String>,
    /// The smallest [`MAX_REPRESENTATIVES`] artifact digests seen.
    pub representatives: BTreeSet<String>,
}

impl Family {
    fn new(fingerprint: Fingerprint, at: i64) -> Self {
        Family {
            fingerprint,
            first_seen_unix_ms: at,
            last_seen_unix_ms: at,
            count: 0,
            agents: BTreeSet::new(),
            projects: BTreeSet::new(),
            environments: BTreeSet::new(),
            representatives: BTreeSet::new(),
        }
    }

    fn count_in(&mut self, o: &Occurrence) {
        let r = &o.record;
        self.count += 1;
        self.first_seen_unix_ms = self.first_seen_unix_ms.min(o.at_unix_ms);
        self.last_seen_unix_ms = self.last_seen_unix_ms.max(o.at_unix_ms);
        self.projects.insert(format!("{}/{}", r.org, r.project));
        self.environments
            .insert(format!("{}/{}/{}", r.org, r.project, r.env));
        self.agents
            .insert(format!("{}/{}/{}/{}", r.org, r.project, r.env, r.agent_id));
        if let Some(d) = &o.artifact_digest {
            self.representatives.insert(d.clone());
            if self.representatives.len() > MAX_REPRESENTATIVES {
                self.representatives.pop_last();
            }
        }
    }
}

/// Families folded from occurrences, by family id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Families {
    families: BTreeMap<String, Family>,
    /// Records already counted, so a duplicate delivery counts once.
    seen: BTreeSet<RecordRef>,
}

impl Families {
    /// Counts `occurrence` into its family (created at its first occurrence); a record counted before changes
    /// nothing. Answers the family id.
    pub fn add(&mut self, occurrence: &Occurrence) -> String {
        let fp = fingerprint(&occurrence.features);
        let id = fp.hash.clone();
        if !self.seen.insert(occurrence.record.clone()) {
            return id;
        }
        self.families
            .entry(id.clone())
            .or_insert_with(|| Family::new(fp, occurrence.at_unix_ms))
            .count_in(occurrence);
        id
    }

    /// The families, by id.
    pub fn iter(&self) -> impl Iterator<Item = &Family> {
        self.families.values()
    }

    /// The family with id `hash`.
    pub fn get(&self, hash: &str) -> Option<&Family> {
        self.families.get(hash)
    }

    /// How many families.
    pub fn len(&self) -> usize {
        self.families.len()
    }

    /// No family yet.
    pub fn is_empty(&self) -> bool {
        self.families.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn features(tool: &str, verdict: &str, codes: &[&str]) -> IncidentFeatures {
        IncidentFeatures {
            kind: Some(IncidentKind::Decision),
            tool: tool.into(),
            verdict: verdict.into(),
            reason_codes: codes.iter().map(|c| c.to_string()).collect(),
            matched_rule: Some("no-delete".into()),
            policy_lineage: Some("base.yaml".into()),
            endpoint_class: None,
            failure_kind: None,
        }
    }

    #[test]
    fn v1_is_pinned_by_a_golden_value() {
        // Computed independently: sha256(domain prefix + canonical JSON of the inputs), e.g. with Python's
        // hashlib over b"gait.fleet.incident_family.v1\n" + b'{"kind":"decision","matched_rule":"no-delete",
        // "policy_lineage":"base.yaml","reason_codes":["a","b"],"tool":"tool.delete","verdict":"block"}'.
        let fp = fingerprint(&features("tool.delete", "block", &["b", "a"]));
        assert_eq!(
            String::from_utf8(gait_canon::canonical_bytes(&fp.inputs)).unwrap(),
            r#"{"kind":"decision","matched_rule":"no-delete","policy_lineage":"base.yaml","reason_codes":["a","b"],"tool":"tool.delete","verdict":"block"}"#
        );
        assert_eq!(fp.hash, GOLDEN_V1);
        assert_eq!(fp.dedup_key(), format!("gfam1-{}", &GOLDEN_V1[..32]));
    }

    const GOLDEN_V1: &str = "ae6b5d7c9eb6519952e1a4b7fb06c21bd51b270fa391fb50228608ec77079550";

    #[test]
    fn volatile_or_cosmetic_differences_do_not_split_a_family() {
        let a = fingerprint(&features("tool.delete", "block", &["b", "a"]));
        let b = fingerprint(&features(" tool.delete ", "block", &["a", "b", "a", ""]));
        assert_eq!(a.hash, b.hash);
        let mut empty_rule = features("tool.delete", "block", &["a", "b"]);
        empty_rule.endpoint_class = Some("  ".into());
        assert_eq!(fingerprint(&empty_rule).hash, a.hash);
    }

    #[test]
    fn every_input_separates_families() {
        let base = features("tool.delete", "block", &["a"]);
        let h = fingerprint(&base).hash;
        let variants: Vec<IncidentFeatures> = vec![
            IncidentFeatures {
                kind: Some(IncidentKind::RegressFailure),
                ..base.clone()
            },
            IncidentFeatures {
                tool: "tool.write".into(),
                ..base.clone()
            },
            IncidentFeatures {
                verdict: "require_approval".into(),
                ..base.clone()
            },
            IncidentFeatures {
                reason_codes: vec!["a".into(), "c".into()],
                ..base.clone()
            },
            IncidentFeatures {
                matched_rule: None,
                ..base.clone()
            },
            IncidentFeatures {
                policy_lineage: Some("other.yaml".into()),
                ..base.clone()
            },
            IncidentFeatures {
                endpoint_class: Some("fs.write".into()),
                ..base.clone()
            },
            IncidentFeatures {
                failure_kind: Some("verdict_changed".into()),
                ..base.clone()
            },
        ];
        let mut hashes: BTreeSet<String> = variants.iter().map(|v| fingerprint(v).hash).collect();
        assert_eq!(hashes.len(), variants.len());
        assert!(hashes.insert(h), "a variant collided with the base");
    }

    fn occurrence(i: u64, tool: usize, agent: usize, at: i64, digest: Option<u8>) -> Occurrence {
        Occurrence {
            record: RecordRef {
                org: "acme".into(),
                project: format!("p{}", agent % 2),
                env: if agent.is_multiple_of(3) {
                    "prod"
                } else {
                    "dev"
                }
                .into(),
                agent_id: format!("agent-{agent}"),
                seq: i,
            },
            at_unix_ms: at,
            features: features(
                ["tool.delete", "tool.write", "tool.read"][tool % 3],
                "block",
                &["a"],
            ),
            artifact_digest: digest.map(|d| format!("{d:064x}")),
        }
    }

    fn corpus() -> impl Strategy<Value = Vec<Occurrence>> {
        prop::collection::vec(
            (
                0usize..3,
                0usize..6,
                0i64..1_000_000,
                prop::option::of(0u8..40),
            ),
            1..60,
        )
        .prop_map(|rows| {
            rows.into_iter()
                .enumerate()
                .map(|(i, (tool, agent, at, d))| occurrence(i as u64, tool, agent, at, d))
                .collect()
        })
    }

    fn fold(occurrences: &[Occurrence]) -> Families {
        let mut f = Families::default();
        for o in occurrences {
            f.add(o);
        }
        f
    }

    proptest! {
        /// Shuffled and duplicated delivery of the same evidence gives identical families.
        #[test]
        fn order_and_duplicates_do_not_change_families(
            occurrences in corpus(),
            seed in any::<u64>(),
            dups in prop::collection::vec(any::<prop::sample::Index>(), 0..30),
        ) {
            let expected = fold(&occurrences);
            let mut delivered = occurrences.clone();
            for d in &dups {
                delivered.push(d.get(&occurrences).clone());
            }
            // A deterministic shuffle from the seed (no RNG crate needed).
            let mut state = seed | 1;
            for i in (1..delivered.len()).rev() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                delivered.swap(i, (state % (i as u64 + 1)) as usize);
            }
            let got = fold(&delivered);
            let total: u64 = expected.iter().map(|f| f.count).sum();
            prop_assert_eq!(got.families, expected.families);
            prop_assert_eq!(total, occurrences.len() as u64);
        }
    }

    #[test]
    fn a_family_keeps_scope_times_and_the_smallest_representatives() {
        let mut f = Families::default();
        let mut id = String::new();
        for (i, (agent, at, d)) in [
            (0, 50, 9u8),
            (3, 10, 7),
            (1, 90, 1),
            (0, 70, 3),
            (4, 30, 8),
            (5, 20, 2),
            (2, 60, 5),
        ]
        .into_iter()
        .enumerate()
        {
            id = f.add(&occurrence(i as u64, 0, agent, at, Some(d)));
        }
        let family = f.get(&id).expect("family");
        assert_eq!(f.len(), 1);
        assert_eq!(family.count, 7);
        assert_eq!(
            (family.first_seen_unix_ms, family.last_seen_unix_ms),
            (10, 90)
        );
        assert_eq!(family.agents.len(), 6);
        assert_eq!(family.projects.len(), 2);
        assert!(
            family.environments.contains("acme/p1/prod"),
            "{:?}",
            family.environments
        );
        let reps: Vec<String> = [1u8, 2, 3, 5, 7]
            .iter()
            .map(|d| format!("{d:064x}"))
            .collect();
        assert_eq!(
            family.representatives.iter().cloned().collect::<Vec<_>>(),
            reps
        );
    }
}
