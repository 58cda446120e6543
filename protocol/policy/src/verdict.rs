//! The four gate verdicts, their restrictiveness order and the CLI exit codes they map to (contract §2.1, §6).

use std::fmt;

use serde::{Deserialize, Serialize};

/// Exit code for success, `allow` and `dry_run`.
pub const EXIT_OK: i32 = 0;
/// Exit code for a `block` verdict.
pub const EXIT_POLICY_BLOCKED: i32 = 3;
/// Exit code for an unsatisfied `require_approval` verdict.
pub const EXIT_APPROVAL_REQUIRED: i32 = 4;
/// Exit code for invalid input: unparsable policy or intent, normalization errors.
pub const EXIT_INVALID_INPUT: i32 = 6;

/// A gate decision. The derived order is Gait's restrictiveness order:
/// `allow` < `dry_run` < `require_approval` < `block`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Execute the tool call.
    Allow,
    /// Plan only; do not execute.
    DryRun,
    /// Do not execute until enough valid approvals are presented.
    RequireApproval,
    /// Do not execute.
    Block,
}

impl Verdict {
    /// Every verdict, least restrictive first.
    pub const ALL: [Verdict; 4] = [
        Verdict::Allow,
        Verdict::DryRun,
        Verdict::RequireApproval,
        Verdict::Block,
    ];

    /// The wire spelling (`allow`, `dry_run`, `require_approval`, `block`).
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::DryRun => "dry_run",
            Verdict::RequireApproval => "require_approval",
            Verdict::Block => "block",
        }
    }

    /// Parse an already trimmed, lowercased spelling.
    pub fn parse(value: &str) -> Option<Verdict> {
        Verdict::ALL.into_iter().find(|v| v.as_str() == value)
    }

    /// The more restrictive of `self` and `other`.
    pub fn most_restrictive(self, other: Verdict) -> Verdict {
        self.max(other)
    }

    /// Exit code of `gait gate eval` / `gait policy test` for this verdict: 0 allow/dry_run, 3 block,
    /// 4 require_approval.
    pub fn exit_code(self) -> i32 {
        match self {
            Verdict::Allow | Verdict::DryRun => EXIT_OK,
            Verdict::RequireApproval => EXIT_APPROVAL_REQUIRED,
            Verdict::Block => EXIT_POLICY_BLOCKED,
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restrictiveness_order_is_allow_dry_run_approval_block() {
        assert!(Verdict::Allow < Verdict::DryRun);
        assert!(Verdict::DryRun < Verdict::RequireApproval);
        assert!(Verdict::RequireApproval < Verdict::Block);
        assert_eq!(
            Verdict::DryRun.most_restrictive(Verdict::Allow),
            Verdict::DryRun
        );
    }

    #[test]
    fn exit_codes_follow_the_contract() {
        assert_eq!(Verdict::Allow.exit_code(), 0);
        assert_eq!(Verdict::DryRun.exit_code(), 0);
        assert_eq!(Verdict::Block.exit_code(), 3);
        assert_eq!(Verdict::RequireApproval.exit_code(), 4);
    }

    #[test]
    fn spelling_round_trips() {
        for v in Verdict::ALL {
            assert_eq!(Verdict::parse(v.as_str()), Some(v));
        }
        assert_eq!(Verdict::parse("Allow"), None);
    }
}
