//! Rollout cohorts: which agents a staged rollout reaches first.
//!
//! An agent's place in a rollout is a stable hash of the rollout id and the agent id, so every replica, test and
//! auditor computes the same cohort, and an agent never moves in or out of a rollout's cohort as the fleet
//! changes. Growing a rollout from 10 % to 30 % only adds agents: the 10 % cohort is inside the 30 % one.
//!
//! `bucket = u64_be(sha256("gait.rollout.cohort.v1\0" ‖ rollout_id ‖ "\0" ‖ agent_id)[0..8]) % 10_000`, and the
//! agent is in a cohort of `percent_bp` basis points iff `bucket < percent_bp`.

/// Basis points of a whole fleet (100 %).
pub const ALL_BP: u16 = 10_000;

const DOMAIN: &[u8] = b"gait.rollout.cohort.v1\0";

/// The agent's bucket in `0..10_000` for the rollout.
pub fn cohort_bucket(rollout_id: &str, agent_id: &str) -> u16 {
    let mut input = Vec::with_capacity(DOMAIN.len() + rollout_id.len() + 1 + agent_id.len());
    input.extend_from_slice(DOMAIN);
    input.extend_from_slice(rollout_id.as_bytes());
    input.push(0);
    input.extend_from_slice(agent_id.as_bytes());
    let digest = gait_canon::sha256(&input);
    let mut head = [0u8; 8];
    head.copy_from_slice(&digest[..8]);
    // The remainder is below 10_000, so it fits.
    (u64::from_be_bytes(head) % u64::from(ALL_BP)) as u16
}

/// Whether the agent is in the rollout's cohort of `percent_bp` basis points (10_000 or more = everyone).
pub fn in_cohort(rollout_id: &str, agent_id: &str, percent_bp: u16) -> bool {
    percent_bp >= ALL_BP || cohort_bucket(rollout_id, agent_id) < percent_bp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_is_the_documented_hash() {
        // Computed independently: python3 -c "import hashlib;d=hashlib.sha256(b'gait.rollout.cohort.v1\0r-1\0agent-1').digest();print(int.from_bytes(d[:8],'big')%10000)"
        assert_eq!(cohort_bucket("r-1", "agent-1"), GOLDEN);
    }

    const GOLDEN: u16 = 6206;

    #[test]
    fn cohorts_nest_and_the_extremes_hold() {
        for i in 0..500 {
            let agent = format!("agent-{i}");
            if in_cohort("r-9", &agent, 1_000) {
                assert!(in_cohort("r-9", &agent, 3_000), "{agent}");
            }
            assert!(!in_cohort("r-9", &agent, 0));
            assert!(in_cohort("r-9", &agent, ALL_BP));
        }
        let members = (0..10_000)
            .filter(|i| in_cohort("r-9", &format!("agent-{i}"), 3_000))
            .count();
        assert!(
            (2_700..3_300).contains(&members),
            "{members} of 10000 at 30 %"
        );
    }
}
