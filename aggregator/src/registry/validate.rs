//! Publish-time policy validation: a bundle is only signed when every policy in it is a valid Gait policy,
//! checked by the same parser the agents enforce with.

/// Check that `yaml` parses and normalizes as a Gait policy; the error says what is wrong and where.
pub fn check(yaml: &[u8]) -> Result<(), String> {
    gait_policy::parse_policy_yaml(yaml)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn accepts_a_gait_policy_and_names_the_problem_in_a_bad_one() {
        assert!(
            check(b"schema_id: gait.gate.policy\nschema_version: 1.0.0\ndefault_verdict: allow\n")
                .is_ok()
        );
        let err = check(
            b"default_verdict: allow\nrules:\n  - name: r\n    effect: allow\n    surprise: 1\n",
        )
        .expect_err("unknown key");
        assert!(err.contains("surprise"), "{err}");
        assert!(
            check(b"name: legacy\n").is_err(),
            "legacy top-level keys are refused"
        );
    }
}
