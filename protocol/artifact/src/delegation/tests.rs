//! Unit tests for delegation tokens: Gait's depth-3 chain validates, broken chains and tokens are rejected.

use gait_canon::sign::{PublicKey, SigningKey};
use time::macros::datetime;

use super::*;
use crate::approval::required_scope;

const DIR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/fixtures/gait/scenarios/gait/delegation-chain-depth-3"
);

fn read(file: &str) -> Vec<u8> {
    std::fs::read(format!("{DIR}/{file}")).unwrap()
}

fn key() -> PublicKey {
    PublicKey::from_gait_public_key(&String::from_utf8(read("delegation_public.key")).unwrap())
        .unwrap()
}

fn chain() -> Vec<ClaimedLink> {
    [
        ("agent.lead", "agent.manager", "694428976ab1b10859171a05"),
        ("agent.manager", "agent.senior", "7e37847cf7d9320eb0854cc8"),
        ("agent.senior", "agent.worker", "8a715283a36e6b05e9287e12"),
    ]
    .into_iter()
    .map(|(from, to, id)| ClaimedLink {
        delegator_identity: from.into(),
        delegate_identity: to.into(),
        scope_class: "write".into(),
        token_ref: id.into(),
    })
    .collect()
}

const INTENT: &str = "1111111111111111111111111111111111111111111111111111111111111111";

#[test]
fn gait_depth_three_chain_is_granted_with_three_valid_delegations() {
    let tokens = [
        read("delegation-token-3.json"),
        read("delegation-token-1.json"),
        read("delegation-token-2.json"),
    ];
    let refs: Vec<&[u8]> = tokens.iter().map(Vec::as_slice).collect();
    let links = required_links("agent.worker", "write", &chain()).unwrap();
    let scope = required_scope("tool.write", "apply", false);
    let check = DelegationCheck {
        intent_digest: INTENT,
        policy_digest: INTENT,
        required_scope: &scope,
        now: datetime!(2026-03-01 00:00 UTC),
    };
    let outcome = match_delegation_chain(&links, &refs, &key(), &check);
    assert!(outcome.delegated, "{outcome:?}");
    assert_eq!(outcome.valid_delegations, 3);
    assert_eq!(outcome.reason_codes, ["delegation_granted"]);
}

#[test]
fn gait_token_ids_follow_the_derivation() {
    for file in [
        "delegation-token-1.json",
        "delegation-token-2.json",
        "delegation-token-3.json",
    ] {
        let token = parse_delegation_token(&read(file)).unwrap();
        assert_eq!(delegation_token_id(&token), token.token_id, "{file}");
    }
}

#[test]
fn missing_link_token_makes_the_chain_insufficient() {
    let tokens = [
        read("delegation-token-1.json"),
        read("delegation-token-2.json"),
    ];
    let refs: Vec<&[u8]> = tokens.iter().map(Vec::as_slice).collect();
    let links = required_links("agent.worker", "write", &chain()).unwrap();
    let scope = required_scope("tool.write", "apply", false);
    let check = DelegationCheck {
        intent_digest: INTENT,
        policy_digest: INTENT,
        required_scope: &scope,
        now: datetime!(2026-03-01 00:00 UTC),
    };
    let outcome = match_delegation_chain(&links, &refs, &key(), &check);
    assert!(!outcome.delegated);
    assert_eq!(outcome.valid_delegations, 2);
    assert!(
        outcome
            .reason_codes
            .contains(&"delegation_chain_insufficient".to_string())
    );
    assert!(
        outcome
            .reason_codes
            .contains(&"delegation_token_missing".to_string())
    );
    let none = match_delegation_chain(&links, &[], &key(), &check);
    assert_eq!(none.reason_codes, ["delegation_token_missing"]);
}

#[test]
fn broken_or_misdirected_chains_are_chain_mismatch() {
    let mut broken = chain();
    broken[1].delegator_identity = "agent.other".into();
    assert_eq!(
        required_links("agent.worker", "write", &broken)
            .unwrap_err()
            .code,
        DelegationErrorCode::ChainMismatch
    );
    assert_eq!(
        required_links("agent.someone", "write", &chain())
            .unwrap_err()
            .code,
        DelegationErrorCode::ChainMismatch
    );
}

#[test]
fn each_token_check_reports_its_code() {
    let key = SigningKey::from_seed(&[9; 32]);
    let token = mint_delegation_token(
        DelegationToken {
            delegator_identity: "a".into(),
            delegate_identity: "b".into(),
            scope: vec!["tool:tool.write".into()],
            scope_class: "Write".into(),
            intent_digest: INTENT.into(),
            created_at: GoTime::parse("2026-02-05T00:00:00Z").unwrap(),
            expires_at: GoTime::parse("2026-02-06T00:00:00Z").unwrap(),
            producer_version: "0.1.0".into(),
            ..DelegationToken::default()
        },
        &key,
    );
    let loaded = LoadedDelegationToken::from_bytes(&token.to_pretty_json()).unwrap();
    let scope = required_scope("tool.write", "apply", false);
    let check = DelegationCheck {
        intent_digest: INTENT,
        policy_digest: INTENT,
        required_scope: &scope,
        now: datetime!(2026-02-05 12:00 UTC),
    };
    let link = RequiredLink {
        delegator_identity: Some("a".into()),
        delegate_identity: "b".into(),
        scope_class: "write".into(),
        token_ref: String::new(),
    };
    let pk = key.public_key();
    check_delegation_token(&loaded, &pk, &link, &check).unwrap();
    let code = |l: &RequiredLink, c: &DelegationCheck<'_>| {
        check_delegation_token(&loaded, &pk, l, c).unwrap_err().code
    };
    assert_eq!(
        code(
            &link,
            &DelegationCheck {
                now: datetime!(2026-02-06 00:00 UTC),
                ..check.clone()
            }
        ),
        DelegationErrorCode::Expired
    );
    assert_eq!(
        code(
            &RequiredLink {
                delegator_identity: Some("x".into()),
                ..link.clone()
            },
            &check
        ),
        DelegationErrorCode::DelegatorMismatch
    );
    assert_eq!(
        code(
            &RequiredLink {
                delegate_identity: "x".into(),
                ..link.clone()
            },
            &check
        ),
        DelegationErrorCode::DelegateMismatch
    );
    assert_eq!(
        code(
            &RequiredLink {
                scope_class: "read".into(),
                ..link.clone()
            },
            &check
        ),
        DelegationErrorCode::ScopeMismatch
    );
    let other = "2".repeat(64);
    assert_eq!(
        code(
            &link,
            &DelegationCheck {
                intent_digest: &other,
                ..check.clone()
            }
        ),
        DelegationErrorCode::IntentMismatch
    );
    let wrong_key = SigningKey::from_seed(&[10; 32]).public_key();
    assert_eq!(
        check_delegation_token(&loaded, &wrong_key, &link, &check)
            .unwrap_err()
            .code,
        DelegationErrorCode::SignatureInvalid
    );
}
