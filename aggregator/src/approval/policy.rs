//! Approval policies: which intents they cover (tool glob, phase, destructive, environment) and the rules a
//! request under them must meet (quorum, groups, separation of duties, token lifetime). A policy is stored
//! as its canonical JSON; its digest is the SHA-256 of those bytes.

use serde::{Deserialize, Serialize};

/// Longest token lifetime a policy may allow: one day.
pub const MAX_TOKEN_TTL_SECONDS: u64 = 24 * 3600;
/// Token lifetime when a policy does not say: one hour.
pub const DEFAULT_TOKEN_TTL_SECONDS: u64 = 3600;
/// Most approvers a quorum may ask for.
pub const MAX_QUORUM: u32 = 32;
/// Most groups a policy may compose.
pub const MAX_GROUPS: usize = 16;

/// An approval policy as operators write it (`gait-aggregator approvals policy set`, the API).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    /// Tool name globs (`*` any run of characters, `?` one); empty: every tool.
    #[serde(default)]
    pub tools: Vec<String>,
    /// Phases (`plan`, `apply`, …); empty: every phase.
    #[serde(default)]
    pub phases: Vec<String>,
    /// Only intents with a destructive target.
    #[serde(default)]
    pub destructive_only: bool,
    /// Environment globs, for a policy set on an org or a project; empty: every environment of its scope.
    #[serde(default)]
    pub envs: Vec<String>,
    /// Distinct approvers needed (1 to [`MAX_QUORUM`]).
    #[serde(default = "one")]
    pub quorum: u32,
    /// Groups that must each supply one distinct approver (AND); empty: any approver counts.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Longest lifetime of an issued token, in seconds (1 to [`MAX_TOKEN_TTL_SECONDS`]).
    #[serde(default = "default_ttl")]
    pub max_token_ttl_seconds: u64,
    /// The author of the policy version in force may not approve requests judged under it.
    #[serde(default)]
    pub author_cannot_approve: bool,
}

fn one() -> u32 {
    1
}

fn default_ttl() -> u64 {
    DEFAULT_TOKEN_TTL_SECONDS
}

impl Default for PolicySpec {
    /// The rules of a request no policy covers: one approver who is not the requester, one-hour tokens.
    fn default() -> Self {
        PolicySpec {
            tools: Vec::new(),
            phases: Vec::new(),
            destructive_only: false,
            envs: Vec::new(),
            quorum: 1,
            groups: Vec::new(),
            max_token_ttl_seconds: DEFAULT_TOKEN_TTL_SECONDS,
            author_cannot_approve: false,
        }
    }
}

/// A policy spec broke a rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("approval policy {field}: {reason}")]
pub struct SpecError {
    /// The spec field at fault.
    pub field: &'static str,
    /// What is wrong and what is accepted.
    pub reason: String,
}

fn bad(field: &'static str, reason: impl Into<String>) -> SpecError {
    SpecError {
        field,
        reason: reason.into(),
    }
}

fn normalized(list: &[String], lower: bool) -> Vec<String> {
    let mut out: Vec<String> = list
        .iter()
        .map(|s| {
            let s = s.trim();
            if lower {
                s.to_lowercase()
            } else {
                s.to_owned()
            }
        })
        .filter(|s| !s.is_empty())
        .collect();
    out.sort();
    out.dedup();
    out
}

impl PolicySpec {
    /// Checks the rules and returns the spec with its lists trimmed, lowercased (tools, phases, envs) and
    /// sorted, so two spellings of one policy have one digest.
    pub fn normalize(mut self) -> Result<PolicySpec, SpecError> {
        self.tools = normalized(&self.tools, true);
        self.phases = normalized(&self.phases, true);
        self.envs = normalized(&self.envs, true);
        self.groups = normalized(&self.groups, false);
        if self.quorum == 0 || self.quorum > MAX_QUORUM {
            return Err(bad("quorum", format!("must be 1 to {MAX_QUORUM}")));
        }
        if self.groups.len() > MAX_GROUPS {
            return Err(bad("groups", format!("at most {MAX_GROUPS} groups")));
        }
        if self.groups.len() > self.quorum as usize {
            return Err(bad(
                "groups",
                format!(
                    "{} groups each need their own approver, more than the quorum of {}: raise quorum to at \
                     least the number of groups",
                    self.groups.len(),
                    self.quorum
                ),
            ));
        }
        if self.max_token_ttl_seconds == 0 || self.max_token_ttl_seconds > MAX_TOKEN_TTL_SECONDS {
            return Err(bad(
                "max_token_ttl_seconds",
                format!("must be 1 to {MAX_TOKEN_TTL_SECONDS}"),
            ));
        }
        for (field, list) in [
            ("tools", &self.tools),
            ("envs", &self.envs),
            ("groups", &self.groups),
        ] {
            if list
                .iter()
                .any(|entry| entry.len() > 256 || entry.chars().any(char::is_control))
            {
                return Err(bad(
                    field,
                    "entries are at most 256 bytes without control characters",
                ));
            }
        }
        Ok(self)
    }

    /// The canonical JSON stored and digested (after [`PolicySpec::normalize`]).
    pub fn to_canonical_json(&self) -> String {
        // Field order is the struct's, lists are sorted: the same spec always serializes the same way.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Whether the policy covers an intent with this tool, phase and destructiveness in environment `env`.
    pub fn matches(&self, tool: &str, phase: &str, destructive: bool, env: &str) -> bool {
        let tool = tool.trim().to_lowercase();
        let phase = phase.trim().to_lowercase();
        let env = env.to_lowercase();
        (self.tools.is_empty() || self.tools.iter().any(|g| glob(g, &tool)))
            && (self.phases.is_empty() || self.phases.contains(&phase))
            && (!self.destructive_only || destructive)
            && (self.envs.is_empty() || self.envs.iter().any(|g| glob(g, &env)))
    }
}

/// `*` matches any run of characters (none included), `?` exactly one; everything else itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_runs_and_single_characters() {
        assert!(glob("db.*", "db.drop"));
        assert!(glob("*", ""));
        assert!(glob("*.drop", "db.drop"));
        assert!(glob("db.?rop", "db.drop"));
        assert!(!glob("db.*", "fs.delete"));
        assert!(!glob("db.?", "db.drop"));
        assert!(glob("a*b*c", "axxbyyc"));
        assert!(!glob("a*b*c", "axxbyy"));
    }

    #[test]
    fn a_policy_matches_tool_phase_destructiveness_and_environment() {
        let spec = PolicySpec {
            tools: vec!["DB.*".into()],
            phases: vec!["apply".into()],
            destructive_only: true,
            envs: vec!["prod*".into()],
            ..PolicySpec::default()
        }
        .normalize()
        .expect("valid");
        assert!(spec.matches("db.drop", "apply", true, "prod"));
        assert!(!spec.matches("db.drop", "plan", true, "prod"));
        assert!(!spec.matches("db.drop", "apply", false, "prod"));
        assert!(!spec.matches("fs.delete", "apply", true, "prod"));
        assert!(!spec.matches("db.drop", "apply", true, "staging"));
        assert!(PolicySpec::default().matches("anything", "", false, "dev"));
    }

    #[test]
    fn specs_out_of_range_are_refused_naming_the_field() {
        let field = |spec: PolicySpec| spec.normalize().map_err(|e| e.field).err();
        assert_eq!(
            field(PolicySpec {
                quorum: 0,
                ..PolicySpec::default()
            }),
            Some("quorum")
        );
        assert_eq!(
            field(PolicySpec {
                quorum: 1,
                groups: vec!["security".into(), "web".into()],
                ..PolicySpec::default()
            }),
            Some("groups")
        );
        assert_eq!(
            field(PolicySpec {
                max_token_ttl_seconds: MAX_TOKEN_TTL_SECONDS + 1,
                ..PolicySpec::default()
            }),
            Some("max_token_ttl_seconds")
        );
        // Two spellings of one policy have one canonical form.
        let a = PolicySpec {
            tools: vec!["b".into(), " A ".into()],
            ..PolicySpec::default()
        };
        let b = PolicySpec {
            tools: vec!["a".into(), "b".into(), "a".into()],
            ..PolicySpec::default()
        };
        assert_eq!(
            a.normalize().expect("a").to_canonical_json(),
            b.normalize().expect("b").to_canonical_json()
        );
    }
}
