//! Priority: what to fix first, as a score an operator can check by hand.
//!
//! The score is the sum of three parts, each bounded, and the API returns the parts beside the sum:
//!
//! | part | what raises it | most |
//! |---|---|---|
//! | **privilege** | how much the calls can do: the risk class, a destructive operation, egress or tainted data, and the verdict (a block means the policy had to stop something) | 100 |
//! | **blast radius** | where it happens: production environments, then how many agents and projects (logarithmic) | 50 |
//! | **recurrence** | how often: logarithmic in the count | 20 |
//!
//! Recurrence is capped well below privilege on purpose: ten thousand low-risk, allowed calls must not outrank
//! one destructive call blocked in production (a test holds that). Logarithms are of integers
//! (`floor(log2(n + 1))`), so a score never depends on floating-point rounding.

use serde::{Deserialize, Serialize};

/// Gait's intent risk classes, lowest first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RiskClass {
    /// No risk class given, or `low`.
    #[default]
    Low,
    /// `medium`.
    Medium,
    /// `high`.
    High,
    /// `critical`.
    Critical,
}

impl RiskClass {
    /// Gait's risk class text (`low`, `medium`, `high`, `critical`); anything else reads as `low`.
    pub fn parse(text: &str) -> Self {
        match text.trim().to_ascii_lowercase().as_str() {
            "critical" => RiskClass::Critical,
            "high" => RiskClass::High,
            "medium" => RiskClass::Medium,
            _ => RiskClass::Low,
        }
    }
}

/// The verdict an incident ended in, by how much the policy had to act.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Allowed.
    #[default]
    Allow,
    /// A dry run would have blocked it.
    WouldBlock,
    /// Needed an approval.
    RequireApproval,
    /// Blocked, or a regress failure.
    Block,
}

/// What a family's priority is computed from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriorityInputs {
    /// Highest risk class among the occurrences.
    pub risk_class: RiskClass,
    /// Some occurrence is a destructive operation (delete, overwrite, drop, …).
    pub destructive: bool,
    /// Some occurrence sends data out or carries tainted input.
    pub egress_or_taint: bool,
    /// The strongest verdict among the occurrences.
    pub severity: Severity,
    /// Production environments affected.
    pub production_environments: u64,
    /// Agents affected.
    pub agents: u64,
    /// Projects affected.
    pub projects: u64,
    /// Occurrences.
    pub count: u64,
}

/// A score and its parts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Priority {
    /// privilege + blast_radius + recurrence.
    pub score: u32,
    /// What the calls can do (0–100).
    pub privilege: u32,
    /// Where they happen (0–50).
    pub blast_radius: u32,
    /// How often (0–20).
    pub recurrence: u32,
}

/// `floor(log2(n + 1))` (with `n + 1` saturating): 0 for 0, 1 for 1, 2 for 3, … 63 at most.
fn log2_floor(n: u64) -> u32 {
    64 - n.saturating_add(1).leading_zeros() - 1
}

/// The priority of a family (module docs).
pub fn priority(i: &PriorityInputs) -> Priority {
    let risk = match i.risk_class {
        RiskClass::Low => 0,
        RiskClass::Medium => 15,
        RiskClass::High => 30,
        RiskClass::Critical => 40,
    };
    let severity = match i.severity {
        Severity::Allow => 0,
        Severity::WouldBlock => 10,
        Severity::RequireApproval => 10,
        Severity::Block => 15,
    };
    let privilege = (risk
        + if i.destructive { 30 } else { 0 }
        + if i.egress_or_taint { 15 } else { 0 }
        + severity)
        .min(100);
    let production = if i.production_environments > 0 { 25 } else { 0 };
    let blast_radius =
        (production + (3 * log2_floor(i.agents)).min(15) + (3 * log2_floor(i.projects)).min(10))
            .min(50);
    let recurrence = (2 * log2_floor(i.count)).min(20);
    Priority {
        score: privilege + blast_radius + recurrence,
        privilege,
        blast_radius,
        recurrence,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn one_destructive_block_in_production_outranks_ten_thousand_low_risk_allows() {
        let one = priority(&PriorityInputs {
            risk_class: RiskClass::High,
            destructive: true,
            severity: Severity::Block,
            production_environments: 1,
            agents: 1,
            projects: 1,
            count: 1,
            ..Default::default()
        });
        // The noise as loud as it gets: every agent, every project, production, ten thousand times.
        let noise = priority(&PriorityInputs {
            risk_class: RiskClass::Low,
            severity: Severity::Allow,
            production_environments: 40,
            agents: 10_000,
            projects: 500,
            count: 10_000,
            ..Default::default()
        });
        assert!(one.score > noise.score, "{one:?} vs {noise:?}");
        assert_eq!(noise.privilege, 0);
        assert_eq!(noise.recurrence, 20);
    }

    #[test]
    fn the_parts_are_what_the_table_says() {
        let p = priority(&PriorityInputs {
            risk_class: RiskClass::Critical,
            destructive: true,
            egress_or_taint: true,
            severity: Severity::Block,
            production_environments: 2,
            agents: 7,
            projects: 3,
            count: 100,
        });
        // privilege 40 + 30 + 15 + 15 = 100; blast 25 + 3*3 + 3*2 = 40; recurrence 2*6 = 12.
        assert_eq!(
            (p.privilege, p.blast_radius, p.recurrence, p.score),
            (100, 40, 12, 152)
        );
        assert_eq!(log2_floor(0), 0);
        assert_eq!(log2_floor(1), 1);
        assert_eq!(log2_floor(u64::MAX), 63);
        assert_eq!(RiskClass::parse(" HIGH "), RiskClass::High);
        assert_eq!(RiskClass::parse("unknown"), RiskClass::Low);
    }

    proptest! {
        /// More of anything never lowers a score, and no part leaves its bound.
        #[test]
        fn monotone_and_bounded(
            count in 0u64..1_000_000, extra in 1u64..1_000_000, agents in 0u64..100_000,
            projects in 0u64..1_000, prod in 0u64..10, destructive: bool, egress: bool,
        ) {
            let base = PriorityInputs {
                risk_class: RiskClass::Medium,
                destructive,
                egress_or_taint: egress,
                severity: Severity::RequireApproval,
                production_environments: prod,
                agents,
                projects,
                count,
            };
            let p = priority(&base);
            prop_assert!(p.privilege <= 100 && p.blast_radius <= 50 && p.recurrence <= 20);
            prop_assert_eq!(p.score, p.privilege + p.blast_radius + p.recurrence);
            for more in [
                PriorityInputs { count: count.saturating_add(extra), ..base.clone() },
                PriorityInputs { agents: agents + extra, ..base.clone() },
                PriorityInputs { projects: projects + extra, ..base.clone() },
                PriorityInputs { production_environments: prod + 1, ..base.clone() },
                PriorityInputs { destructive: true, ..base.clone() },
                PriorityInputs { risk_class: RiskClass::Critical, ..base.clone() },
                PriorityInputs { severity: Severity::Block, ..base.clone() },
            ] {
                prop_assert!(priority(&more).score >= p.score);
            }
        }
    }
}
