//! Publish-time policy validation: a bundle is only signed when every policy in it parses as a Gait policy.

/// Check that `yaml` is a policy the agents will be able to load; the error says what is wrong and where.
pub fn check(yaml: &[u8]) -> Result<(), String> {
    let text = std::str::from_utf8(yaml).map_err(|e| format!("not UTF-8: {e}"))?;
    let _: serde_json::Value = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
    Ok(())
}
