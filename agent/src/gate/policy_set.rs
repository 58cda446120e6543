//! The policies of a verified bundle, parsed once at activation, and the choice of the one a decision
//! is made against (`?policy=<file>`, or the bundle's only policy file). A policy may carry a staged
//! candidate (`manifest.policies[].stage` / `.candidate`): it is parsed with its policy and is never picked
//! by name on its own.

use std::collections::BTreeMap;
use std::sync::Arc;

use gait_policy::{Policy, parse_policy_yaml};

/// A bundle policy file parsed once at activation.
#[derive(Debug)]
pub struct PreparedPolicy {
    /// File name in the bundle.
    pub name: String,
    /// The parsed, normalized policy.
    pub policy: Policy,
    /// Its Gait policy digest.
    pub digest: String,
    /// The candidate staged beside it (stage `observe` or `dry_run`); `None`: stage `enforce`.
    pub staged: Option<Staged>,
}

/// A candidate policy and its stage.
#[derive(Debug)]
pub struct Staged {
    /// `observe` or `dry_run`.
    pub stage: gait_bundle::Stage,
    /// The candidate, parsed; a file that does not parse keeps its error (the candidate then has no verdict,
    /// and the policy it was staged beside decides alone).
    pub candidate: Result<Arc<PreparedPolicy>, String>,
}

/// Every policy file of a bundle, parsed; a file that does not parse keeps its error (the aggregator
/// validates on publish, so this is a defence, reported at decision time).
pub type PreparedPolicies = BTreeMap<String, Result<Arc<PreparedPolicy>, String>>;

/// Parses every policy file of a verified bundle, each with its staged candidate.
pub fn prepare_policies(bundle: &gait_bundle::VerifiedBundle) -> PreparedPolicies {
    let parse = |name: &str, staged: Option<Staged>| -> Result<PreparedPolicy, String> {
        let bytes = bundle
            .files
            .get(name)
            .ok_or_else(|| format!("bundle has no file {name:?}"))?;
        let policy = parse_policy_yaml(bytes).map_err(|e| e.to_string())?;
        let digest = policy.digest();
        Ok(PreparedPolicy {
            name: name.to_owned(),
            policy,
            digest,
            staged,
        })
    };
    bundle
        .manifest
        .policies
        .iter()
        .map(|entry| {
            let staged = entry.candidate.as_ref().map(|c| Staged {
                stage: entry.stage,
                candidate: parse(&c.name, None)
                    .map(Arc::new)
                    .map_err(|e| format!("candidate {:?}: {e}", c.name)),
            });
            (entry.name.clone(), parse(&entry.name, staged).map(Arc::new))
        })
        .collect()
}

/// The policies of the bundle in force and its epoch (for messages).
#[derive(Debug, Clone, Copy)]
pub struct PolicySet<'a> {
    /// Bundle epoch.
    pub epoch: u64,
    /// Its parsed policy files.
    pub policies: &'a PreparedPolicies,
    /// The approval key the bundle carries (`manifest.approval_key`): tokens it signs are accepted.
    pub approval_key: Option<gait_canon::sign::PublicKey>,
    /// The delegation key the bundle carries (`manifest.delegation_key`): delegation tokens it signs are
    /// accepted; without it none is.
    pub delegation_key: Option<gait_canon::sign::PublicKey>,
}

/// Why no policy could be picked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PickError {
    /// The request named a file the bundle does not hold, or named none while the bundle holds several.
    #[error("{0}")]
    NotFound(String),
    /// The policy file did not parse (or the bundle holds none).
    #[error("{0}")]
    Unusable(String),
}

impl PickError {
    /// The request is at fault (the caller answers 400), not the bundle.
    pub fn is_bad_request(&self) -> bool {
        matches!(self, PickError::NotFound(_))
    }
}

impl PolicySet<'_> {
    /// The policy named `name`, or the only one when `name` is `None` or blank.
    pub fn pick(&self, name: Option<&str>) -> Result<Arc<PreparedPolicy>, PickError> {
        let names = || self.policies.keys().cloned().collect::<Vec<_>>().join(", ");
        let entry = match name.map(str::trim).filter(|n| !n.is_empty()) {
            Some(name) => self.policies.get(name).ok_or_else(|| {
                PickError::NotFound(format!(
                    "bundle epoch {} has no policy file {name:?}; it has: {}",
                    self.epoch,
                    names()
                ))
            })?,
            None if self.policies.len() == 1 => self
                .policies
                .values()
                .next()
                .ok_or_else(|| PickError::Unusable("bundle without policies".into()))?,
            None => {
                return Err(PickError::NotFound(format!(
                    "bundle epoch {} holds {} policy files; name one with ?policy=<file> ({})",
                    self.epoch,
                    self.policies.len(),
                    names()
                )));
            }
        };
        entry.clone().map_err(|e| {
            PickError::Unusable(format!(
                "policy file of bundle epoch {} does not parse: {e}",
                self.epoch
            ))
        })
    }
}
