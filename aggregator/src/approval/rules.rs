//! The approval rules, pure: who may decide a request ([`may_decide`]: pending, not expired, separation of
//! duties) and where a request stands after its decisions ([`standing`]: a denial ends it; it is approved when
//! at least `quorum` distinct people approved and each required group supplied its own approver).
//!
//! Group AND-composition is a matching problem: one person in both `security` and `web-owners` satisfies one
//! of the two groups, not both, so the groups are matched to distinct approvers (augmenting paths; at most
//! [`super::policy::MAX_GROUPS`] groups).

use gait_store::{ApprovalState, ApprovalVote, StoredApprovalDecision, StoredApprovalRequest};

use super::policy::PolicySpec;
use crate::auth::Principal;

/// Why a caller may not decide a request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RuleViolation {
    /// The request was already approved or denied.
    #[error("approval request {id} is already {state}; nothing more can be decided on it")]
    Decided {
        /// The request.
        id: u64,
        /// approved or denied.
        state: &'static str,
    },
    /// The request's lifetime ended.
    #[error(
        "approval request {id} expired; the agent raises a new request when the intent is retried"
    )]
    Expired {
        /// The request.
        id: u64,
    },
    /// Separation of duties: the requester never approves their own request.
    #[error("you asked for this intent ({requested_by}); someone else must approve it")]
    Requester {
        /// The requester as the agent named them.
        requested_by: String,
    },
    /// Separation of duties: the policy says its author may not approve under it.
    #[error(
        "you wrote the approval policy version in force ({policy} v{version}), which says its author may not \
         approve requests under it"
    )]
    Author {
        /// Policy name.
        policy: String,
        /// Its version.
        version: u64,
    },
}

/// The approval policy version a request is judged under (`None` fields: the default rules).
#[derive(Clone, Debug, Default)]
pub struct InForce {
    /// The rules.
    pub spec: PolicySpec,
    /// Policy name (empty for the default rules).
    pub name: String,
    /// Version.
    pub version: u64,
    /// Who set that version.
    pub author: Option<String>,
}

/// Whether `who` is the person who asked for the intent: the agent's `requested_by` names them by their actor
/// string or, for an operator, by their subject.
pub fn is_requester(requested_by: &str, who: &Principal) -> bool {
    let requested_by = requested_by.trim();
    if requested_by.is_empty() {
        return false;
    }
    if requested_by == who.actor() {
        return true;
    }
    match who {
        Principal::Operator(op) => requested_by == op.subject,
        Principal::AdminToken => false,
    }
}

/// Whether `who` may cast `vote` on `request` under `policy` at `now_ms`.
pub fn may_decide(
    request: &StoredApprovalRequest,
    policy: &InForce,
    who: &Principal,
    vote: ApprovalVote,
    now_ms: i64,
) -> Result<(), RuleViolation> {
    match request.state {
        ApprovalState::Pending => {}
        state => {
            return Err(RuleViolation::Decided {
                id: request.id,
                state: state.as_str(),
            });
        }
    }
    if now_ms >= request.expires_unix_ms {
        return Err(RuleViolation::Expired { id: request.id });
    }
    if vote == ApprovalVote::Deny {
        // Anyone who may decide may stop a request, the requester withdrawing it included.
        return Ok(());
    }
    if is_requester(&request.requested_by, who) {
        return Err(RuleViolation::Requester {
            requested_by: request.requested_by.clone(),
        });
    }
    if policy.spec.author_cannot_approve && policy.author.as_deref() == Some(who.actor().as_str()) {
        return Err(RuleViolation::Author {
            policy: policy.name.clone(),
            version: policy.version,
        });
    }
    Ok(())
}

/// Where a request stands after its decisions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Standing {
    /// Someone denied it.
    Denied {
        /// Who.
        by: String,
    },
    /// Quorum and every group are satisfied.
    Approved {
        /// The distinct approvers, in decision order.
        approvers: Vec<String>,
    },
    /// More approvals are needed.
    Waiting {
        /// Distinct approvals so far.
        approvals: usize,
        /// What is still missing, for people.
        missing: String,
    },
}

/// Judges `decisions` (one per actor, in order) under `spec`.
pub fn standing(spec: &PolicySpec, decisions: &[StoredApprovalDecision]) -> Standing {
    if let Some(denial) = decisions.iter().find(|d| d.vote == ApprovalVote::Deny) {
        return Standing::Denied {
            by: denial.actor.clone(),
        };
    }
    let mut approvers: Vec<&StoredApprovalDecision> = Vec::new();
    for d in decisions.iter().filter(|d| d.vote == ApprovalVote::Approve) {
        // The store keeps one decision per actor; this holds the rule even if it were handed duplicates.
        if !approvers.iter().any(|a| a.actor == d.actor) {
            approvers.push(d);
        }
    }
    let unmatched = unmatched_groups(&spec.groups, &approvers);
    let quorum = spec.quorum as usize;
    if approvers.len() >= quorum && unmatched.is_empty() {
        return Standing::Approved {
            approvers: approvers.iter().map(|a| a.actor.clone()).collect(),
        };
    }
    let mut missing = Vec::new();
    if approvers.len() < quorum {
        missing.push(format!(
            "{} more distinct approver(s) of {quorum}",
            quorum - approvers.len()
        ));
    }
    if !unmatched.is_empty() {
        missing.push(format!(
            "an approver of their own from each of: {}",
            unmatched.join(", ")
        ));
    }
    Standing::Waiting {
        approvals: approvers.len(),
        missing: missing.join("; "),
    }
}

/// The groups left without a distinct approver in a maximum matching of groups to approvers.
fn unmatched_groups(groups: &[String], approvers: &[&StoredApprovalDecision]) -> Vec<String> {
    // owner[a] = the group approver a is matched to.
    let mut owner: Vec<Option<usize>> = vec![None; approvers.len()];
    let mut left = Vec::new();
    for g in 0..groups.len() {
        let mut seen = vec![false; approvers.len()];
        if !augment(g, groups, approvers, &mut owner, &mut seen) {
            left.push(groups[g].clone());
        }
    }
    left
}

fn augment(
    g: usize,
    groups: &[String],
    approvers: &[&StoredApprovalDecision],
    owner: &mut [Option<usize>],
    seen: &mut [bool],
) -> bool {
    for a in 0..approvers.len() {
        if seen[a] || !approvers[a].groups.contains(&groups[g]) {
            continue;
        }
        seen[a] = true;
        let free = match owner[a] {
            None => true,
            Some(other) => augment(other, groups, approvers, owner, seen),
        };
        if free {
            owner[a] = Some(g);
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Operator;

    fn decision(actor: &str, groups: &[&str], vote: ApprovalVote) -> StoredApprovalDecision {
        StoredApprovalDecision {
            id: 0,
            request_id: 1,
            actor: actor.into(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            vote,
            reason: "r".into(),
            created_unix_ms: 0,
        }
    }

    fn approve(actor: &str, groups: &[&str]) -> StoredApprovalDecision {
        decision(actor, groups, ApprovalVote::Approve)
    }

    fn spec(quorum: u32, groups: &[&str]) -> PolicySpec {
        PolicySpec {
            quorum,
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            ..PolicySpec::default()
        }
    }

    fn approved(s: &Standing) -> bool {
        matches!(s, Standing::Approved { .. })
    }

    #[test]
    fn quorum_counts_distinct_people() {
        let two = spec(2, &[]);
        assert!(!approved(&standing(&two, &[approve("alice", &[])])));
        // The same person twice is one approver.
        assert!(!approved(&standing(
            &two,
            &[approve("alice", &[]), approve("alice", &[])]
        )));
        assert!(approved(&standing(
            &two,
            &[approve("alice", &[]), approve("bob", &[])]
        )));
    }

    #[test]
    fn groups_compose_with_and_and_each_needs_its_own_approver() {
        let both = spec(2, &["security", "web-owners"]);
        // One person in both groups satisfies only one of them.
        let carol = approve("carol", &["security", "web-owners"]);
        let s = standing(&both, std::slice::from_ref(&carol));
        assert!(!approved(&s), "{s:?}");
        // Two approvers, but both only from security: web-owners is missing.
        let s = standing(
            &both,
            &[
                approve("alice", &["security"]),
                approve("bob", &["security"]),
            ],
        );
        match &s {
            Standing::Waiting { missing, .. } => {
                assert!(missing.contains("web-owners"), "{missing}")
            }
            other => panic!("{other:?}"),
        }
        // carol can stand for web-owners when alice covers security: the matching finds it.
        assert!(approved(&standing(
            &both,
            &[carol.clone(), approve("alice", &["security"])]
        )));
        assert!(approved(&standing(
            &both,
            &[
                approve("alice", &["security"]),
                approve("dave", &["web-owners"])
            ]
        )));
    }

    #[test]
    fn a_denial_ends_the_request_whatever_the_approvals() {
        let s = standing(
            &spec(1, &[]),
            &[
                approve("alice", &[]),
                decision("bob", &[], ApprovalVote::Deny),
            ],
        );
        assert_eq!(s, Standing::Denied { by: "bob".into() });
    }

    fn request(state: ApprovalState, expires: i64) -> StoredApprovalRequest {
        StoredApprovalRequest {
            id: 9,
            tenant: gait_store::Tenant::from_parts("acme", "web", "prod").expect("tenant"),
            agent_id: "agent-1".parse().expect("agent"),
            seq: 1,
            tool: "db.drop".into(),
            phase: "apply".into(),
            destructive: true,
            scope: vec!["tool:db.drop".into()],
            intent_digest: "a".repeat(64),
            policy_digest: "b".repeat(64),
            requested_by: "alice".into(),
            trace_id: String::new(),
            created_unix_ms: 0,
            received_unix_ms: 0,
            expires_unix_ms: expires,
            approval_policy_id: None,
            state,
            updated_unix_ms: 0,
            tokens: String::new(),
            token_expires_unix_ms: None,
        }
    }

    fn op(subject: &str) -> Principal {
        Principal::Operator(Operator {
            issuer: "https://idp".into(),
            subject: subject.into(),
            groups: vec![],
        })
    }

    #[test]
    fn separation_of_duties_and_expiry_are_enforced() {
        let open = request(ApprovalState::Pending, 1000);
        let rules = InForce {
            spec: PolicySpec {
                author_cannot_approve: true,
                ..PolicySpec::default()
            },
            name: "prod".into(),
            version: 3,
            author: Some("oidc:https://idp#erin".into()),
        };
        // The requester, by subject or by actor string, cannot approve (but may withdraw).
        assert!(matches!(
            may_decide(&open, &rules, &op("alice"), ApprovalVote::Approve, 10),
            Err(RuleViolation::Requester { .. })
        ));
        let mut by_actor = open.clone();
        by_actor.requested_by = "oidc:https://idp#alice".into();
        assert!(may_decide(&by_actor, &rules, &op("alice"), ApprovalVote::Approve, 10).is_err());
        assert!(may_decide(&open, &rules, &op("alice"), ApprovalVote::Deny, 10).is_ok());
        // The author of the policy version in force cannot approve under it.
        assert!(matches!(
            may_decide(&open, &rules, &op("erin"), ApprovalVote::Approve, 10),
            Err(RuleViolation::Author { version: 3, .. })
        ));
        assert!(may_decide(&open, &rules, &op("bob"), ApprovalVote::Approve, 10).is_ok());
        // Expired at expires_unix_ms exactly.
        assert_eq!(
            may_decide(&open, &rules, &op("bob"), ApprovalVote::Approve, 1000),
            Err(RuleViolation::Expired { id: 9 })
        );
        let done = request(ApprovalState::Denied, 1000);
        assert!(matches!(
            may_decide(&done, &rules, &op("bob"), ApprovalVote::Approve, 10),
            Err(RuleViolation::Decided { .. })
        ));
    }
}
