//! Unit tests for approval tokens: real Gait tokens validate, each check fires with its code and in order.

use gait_canon::sign::{PublicKey, SigningKey};
use time::macros::datetime;

use super::*;

const SCENARIOS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/fixtures/gait/scenarios/gait"
);

fn scenario(name: &str, file: &str) -> Vec<u8> {
    std::fs::read(format!("{SCENARIOS}/{name}/{file}")).unwrap()
}

fn scenario_key(name: &str) -> PublicKey {
    let text = String::from_utf8(scenario(name, "approval_public.key")).unwrap();
    PublicKey::from_gait_public_key(&text).unwrap()
}

const VALID_INTENT: &str = "4b53bb79e35105ac9170963ac6f84ed0ed15530c68f06a46fc1233c5ec766913";
const POLICY: &str = "07a528a879e4f0e0cd5a0e2ca801924746b47dac624862207ef21d4ec266f8f9";

fn check<'a>(required: &'a [String]) -> ApprovalCheck<'a> {
    ApprovalCheck {
        intent_digest: VALID_INTENT,
        policy_digest: POLICY,
        delegation_binding_digest: "",
        required_scope: required,
        target_count: 1,
        op_count: 1,
        now: datetime!(2026-03-01 00:00 UTC),
    }
}

#[test]
fn gait_minted_token_validates_and_its_token_id_derivation_matches() {
    let bytes = scenario("approval-token-valid", "approval-token.json");
    let required = required_scope("tool.write", "apply", false);
    let token = validate_approval_token(
        &bytes,
        &scenario_key("approval-token-valid"),
        &check(&required),
    )
    .unwrap();
    assert_eq!(token.token_id, "ec44f8948261811d131eb04a");
    assert_eq!(approval_token_id(&token), token.token_id);
}

#[test]
fn gait_token_one_second_past_expiry_is_expired() {
    let bytes = scenario("approval-expiry-1s-past", "approval-token.json");
    let token = parse_approval_token(&bytes).unwrap();
    let required = required_scope("tool.write", "apply", false);
    let mut c = check(&required);
    c.intent_digest = "5560b84bd90ae0b84079bd0125a27d74750fb25f55a62a12a6b718eaca3dca51";
    c.now = datetime!(2026-02-24 12:42:59.274138 UTC);
    let err =
        validate_approval_token(&bytes, &scenario_key("approval-expiry-1s-past"), &c).unwrap_err();
    assert_eq!(err.code, ApprovalErrorCode::Expired);
    assert_eq!(err.code.as_str(), "approval_token_expired");
    c.now = datetime!(2026-02-24 12:42:59.274137 UTC);
    check_approval_claims(&token, &c).unwrap();
}

#[test]
fn each_failed_check_reports_its_code_in_contract_order() {
    let key = SigningKey::from_seed(&[5; 32]);
    let grant = ApprovalGrant {
        approver_identity: "alice".into(),
        reason_code: "ticket-1".into(),
        intent_digest: VALID_INTENT.into(),
        policy_digest: POLICY.into(),
        scope: vec!["Tool:tool.write".into(), "tool:tool.write".into()],
        max_targets: 1,
        max_ops: 1,
        created_at: GoTime::parse("2026-02-05T00:00:00Z").unwrap(),
        expires_at: GoTime::parse("2026-02-05T01:00:00+01:00").unwrap(),
        producer_version: "0.1.0".into(),
        ..ApprovalGrant::default()
    };
    let token = mint_approval_token(grant, &key);
    assert_eq!(token.scope, ["tool:tool.write"]);
    assert_eq!(token.expires_at.to_string(), "2026-02-05T00:00:00Z");
    let bytes = token.to_pretty_json();
    let pk = key.public_key();
    let required = required_scope("tool.write", "apply", false);
    let base = ApprovalCheck {
        now: datetime!(2026-02-04 23:00 UTC),
        ..check(&required)
    };
    validate_approval_token(&bytes, &pk, &base).unwrap();

    let code = |c: &ApprovalCheck<'_>| validate_approval_token(&bytes, &pk, c).unwrap_err().code;
    let other = "f".repeat(64);
    assert_eq!(
        code(&ApprovalCheck {
            intent_digest: &other,
            ..base.clone()
        }),
        ApprovalErrorCode::IntentMismatch
    );
    assert_eq!(
        code(&ApprovalCheck {
            policy_digest: &other,
            ..base.clone()
        }),
        ApprovalErrorCode::PolicyMismatch
    );
    assert_eq!(
        code(&ApprovalCheck {
            delegation_binding_digest: &other,
            ..base.clone()
        }),
        ApprovalErrorCode::DelegationBindingMismatch
    );
    assert_eq!(
        code(&ApprovalCheck {
            now: datetime!(2026-02-05 00:00 UTC),
            ..base.clone()
        }),
        ApprovalErrorCode::Expired
    );
    let destructive = required_scope("tool.write", "apply", true);
    assert_eq!(
        destructive,
        ["tool:tool.write", "phase:apply", "destructive:apply"]
    );
    assert_eq!(
        code(&ApprovalCheck {
            required_scope: &destructive,
            ..base.clone()
        }),
        ApprovalErrorCode::ScopeMismatch
    );
    assert_eq!(
        code(&ApprovalCheck {
            target_count: 2,
            ..base.clone()
        }),
        ApprovalErrorCode::MaxTargetsExceeded
    );
    assert_eq!(
        code(&ApprovalCheck {
            op_count: 2,
            ..base.clone()
        }),
        ApprovalErrorCode::MaxOpsExceeded
    );
    // Expiry is checked before scope: both wrong reports expired.
    assert_eq!(
        code(&ApprovalCheck {
            now: datetime!(2027-01-01 00:00 UTC),
            required_scope: &destructive,
            ..base.clone()
        }),
        ApprovalErrorCode::Expired
    );

    let other_key = SigningKey::from_seed(&[6; 32]).public_key();
    assert_eq!(
        code_with(&bytes, &other_key, &base),
        ApprovalErrorCode::SignatureInvalid
    );
    let unsigned = ApprovalToken {
        signature: None,
        ..token.clone()
    }
    .to_pretty_json();
    assert_eq!(
        code_with(&unsigned, &pk, &base),
        ApprovalErrorCode::SignatureMissing
    );
    assert_eq!(
        code_with(b"{\"schema_id\":1}", &pk, &base),
        ApprovalErrorCode::Invalid
    );
}

fn code_with(bytes: &[u8], key: &PublicKey, c: &ApprovalCheck<'_>) -> ApprovalErrorCode {
    validate_approval_token(bytes, key, c).unwrap_err().code
}

#[test]
fn wildcard_scope_covers_everything() {
    assert!(scope_covers(
        &["*".into()],
        &["tool:x".into(), "phase:apply".into()]
    ));
    assert!(!scope_covers(&["tool:y".into()], &["tool:x".into()]));
}
