//! The enrollment domain on both backends: join tokens (scope, expiry, uses, revocation, atomic consumption
//! under races) and the record of certificates signed online.
#![allow(clippy::disallowed_methods)] // tests spawn freely

use anyhow::{Result, ensure};
use gait_store::testing::TestStore;
use gait_store::{
    AgentHello, AgentKey, CertificateSource, IssueKind, IssuedCertificate, JoinTokenState,
    NewJoinToken, StoreError, Tenant,
};

const NOW: i64 = 1_764_000_000_000;
const HOUR: i64 = 3_600_000;

fn tenant(env: &str) -> Tenant {
    Tenant::from_parts("acme", "web", env).unwrap_or_else(|e| panic!("test tenant: {e}"))
}

fn hash(n: u8) -> String {
    hex::encode([n; 32])
}

fn token(id: &str, env: &str, secret: u8, uses: u32) -> NewJoinToken {
    NewJoinToken {
        token_id: id.to_owned(),
        tenant: tenant(env),
        secret_sha256: hash(secret),
        uses,
        expires_unix_ms: NOW + HOUR,
        created_by: "admin-token".to_owned(),
    }
}

async fn tokens_are_listed_per_tenant_and_revoked_only_in_their_tenant(
    db: &TestStore,
) -> Result<()> {
    let store = db.store();
    store
        .create_join_token(&token("00000000000000a1", "prod", 1, 3), NOW)
        .await?;
    store
        .create_join_token(&token("00000000000000a2", "prod", 2, 1), NOW + 1)
        .await?;
    store
        .create_join_token(&token("00000000000000b1", "dev", 3, 1), NOW)
        .await?;
    let prod = store.join_tokens(&tenant("prod"), 100).await?;
    let ids: Vec<&str> = prod.iter().map(|t| t.token_id.as_str()).collect();
    ensure!(ids == ["00000000000000a2", "00000000000000a1"], "{ids:?}");
    ensure!(
        prod[1].uses_allowed == 3 && prod[1].uses_left == 3,
        "{:?}",
        prod[1]
    );
    ensure!(prod[1].state(NOW) == JoinTokenState::Active);
    ensure!(prod[1].state(NOW + HOUR) == JoinTokenState::Expired);

    // Another tenant's token is not found, and not touched.
    ensure!(
        store
            .revoke_join_token(&tenant("prod"), "00000000000000b1", "alice", NOW)
            .await?
            .is_none()
    );
    let dev = store.join_tokens(&tenant("dev"), 100).await?;
    ensure!(dev[0].revoked_unix_ms.is_none(), "{dev:?}");

    let revoked = store
        .revoke_join_token(&tenant("prod"), "00000000000000a1", "alice", NOW + 5)
        .await?
        .ok_or_else(|| anyhow::anyhow!("token not found"))?;
    ensure!(
        revoked.revoked_unix_ms == Some(NOW + 5) && revoked.revoked_by == "alice",
        "{revoked:?}"
    );
    // A second revocation keeps the first.
    let again = store
        .revoke_join_token(&tenant("prod"), "00000000000000a1", "bob", NOW + 9)
        .await?
        .ok_or_else(|| anyhow::anyhow!("token not found"))?;
    ensure!(again.revoked_by == "alice", "{again:?}");
    ensure!(again.state(NOW) == JoinTokenState::Revoked);
    Ok(())
}

async fn consumption_refuses_wrong_secrets_expired_used_up_and_revoked_tokens(
    db: &TestStore,
) -> Result<()> {
    let store = db.store();
    store
        .create_join_token(&token("00000000000000c1", "prod", 1, 2), NOW)
        .await?;
    let wrong = store
        .consume_join_token("00000000000000c1", &hash(9), NOW)
        .await?;
    ensure!(wrong == Err(JoinTokenState::Unknown), "{wrong:?}");
    let unknown = store
        .consume_join_token("00000000000000ff", &hash(1), NOW)
        .await?;
    ensure!(unknown == Err(JoinTokenState::Unknown), "{unknown:?}");
    let malformed = store.consume_join_token("x", "y", NOW).await?;
    ensure!(malformed == Err(JoinTokenState::Unknown), "{malformed:?}");

    let first = store
        .consume_join_token("00000000000000c1", &hash(1), NOW)
        .await?
        .map_err(|s| anyhow::anyhow!("refused: {s:?}"))?;
    ensure!(
        first.uses_left == 1 && first.tenant == tenant("prod"),
        "{first:?}"
    );
    let expired = store
        .consume_join_token("00000000000000c1", &hash(1), NOW + HOUR)
        .await?;
    ensure!(expired == Err(JoinTokenState::Expired), "{expired:?}");
    store
        .consume_join_token("00000000000000c1", &hash(1), NOW)
        .await?
        .map_err(|s| anyhow::anyhow!("refused: {s:?}"))?;
    let used_up = store
        .consume_join_token("00000000000000c1", &hash(1), NOW)
        .await?;
    ensure!(used_up == Err(JoinTokenState::UsedUp), "{used_up:?}");

    store
        .create_join_token(&token("00000000000000c2", "prod", 2, 5), NOW)
        .await?;
    store
        .revoke_join_token(&tenant("prod"), "00000000000000c2", "alice", NOW)
        .await?;
    let revoked = store
        .consume_join_token("00000000000000c2", &hash(2), NOW)
        .await?;
    ensure!(revoked == Err(JoinTokenState::Revoked), "{revoked:?}");
    Ok(())
}

async fn concurrent_enrollments_with_a_one_use_token_admit_exactly_one(
    db: &TestStore,
) -> Result<()> {
    let store = db.store();
    for round in 0..5u8 {
        let id = format!("00000000000001{round:02x}");
        store
            .create_join_token(&token(&id, "prod", round, 1), NOW)
            .await?;
        let mut racers = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let (store, id) = (store.clone(), id.clone());
            racers.spawn(async move {
                // Each racer consumes inside its own transaction, as enrollment does.
                store
                    .transaction(async |tx| tx.consume_join_token(&id, &hash(round), NOW).await)
                    .await
            });
        }
        let mut admitted = 0;
        while let Some(result) = racers.join_next().await {
            match result? {
                Ok(Ok(_)) => admitted += 1,
                Ok(Err(state)) => ensure!(state == JoinTokenState::UsedUp, "{state:?}"),
                // SQLite may report a busy database to a racer that waited too long: it enrolled nothing.
                Err(e) if e.is_retryable() => {}
                Err(e) => return Err(e.into()),
            }
        }
        ensure!(
            admitted == 1,
            "round {round}: {admitted} enrollments admitted"
        );
    }
    Ok(())
}

async fn a_rolled_back_enrollment_gives_the_use_back(db: &TestStore) -> Result<()> {
    let store = db.store();
    store
        .create_join_token(&token("00000000000000d1", "prod", 1, 1), NOW)
        .await?;
    let refused: Result<(), StoreError> = store
        .transaction(async |tx| {
            let used = tx
                .consume_join_token("00000000000000d1", &hash(1), NOW)
                .await?;
            assert!(used.is_ok(), "{used:?}");
            Err(StoreError::InvalidInput {
                field: "csr".into(),
                reason: "names another tenant".into(),
            })
        })
        .await;
    ensure!(refused.is_err());
    let left = store.join_tokens(&tenant("prod"), 10).await?;
    ensure!(left[0].uses_left == 1, "{left:?}");
    Ok(())
}

async fn issued_certificates_are_recorded_per_agent(db: &TestStore) -> Result<()> {
    let store = db.store();
    let agent = AgentKey::new(tenant("prod"), "a-1".parse()?);
    let other = AgentKey::new(tenant("dev"), "a-1".parse()?);
    let cert = |serial: &str, kind, token: &str| IssuedCertificate {
        cert_serial: serial.parse().unwrap_or_else(|e| panic!("{e}")),
        agent: agent.clone(),
        kind,
        join_token_id: token.to_owned(),
        not_after_unix_ms: NOW + HOUR,
        issued_by: "agent:spiffe://gait.local/org/acme/project/web/env/prod/agent/a-1".to_owned(),
        issuer: Some("CN=ca".to_owned()),
    };
    store
        .record_issued_certificate(&cert("0a01", IssueKind::Enroll, "00000000000000e1"), NOW)
        .await?;
    store
        .record_issued_certificate(&cert("0a02", IssueKind::Renew, ""), NOW + 1)
        .await?;
    let issued = store.issued_certificates(&agent).await?;
    let serials: Vec<&str> = issued.iter().map(|c| c.cert_serial.as_str()).collect();
    ensure!(serials == ["0a02", "0a01"], "{serials:?}");
    ensure!(issued[1].kind == IssueKind::Enroll && issued[1].join_token_id == "00000000000000e1");
    ensure!(issued[0].issuer.as_deref() == Some("CN=ca"), "{issued:?}");
    ensure!(store.issued_certificates(&other).await?.is_empty());
    let live = store.certificate_expiries(&tenant("prod"), NOW).await?;
    ensure!(
        live.len() == 2 && live.values().all(|t| *t == NOW + HOUR),
        "{live:?}"
    );
    ensure!(
        store
            .certificate_expiries(&tenant("prod"), NOW + HOUR)
            .await?
            .is_empty()
    );
    ensure!(
        store
            .certificate_expiries(&tenant("dev"), NOW)
            .await?
            .is_empty()
    );
    Ok(())
}

async fn invalid_join_tokens_are_refused_before_any_write(db: &TestStore) -> Result<()> {
    let store = db.store();
    let cases = [
        (
            NewJoinToken {
                token_id: "ABC".into(),
                ..token("0000000000000001", "prod", 1, 1)
            },
            "token_id",
        ),
        (
            NewJoinToken {
                secret_sha256: "00".into(),
                ..token("0000000000000002", "prod", 1, 1)
            },
            "secret_sha256",
        ),
        (token("0000000000000003", "prod", 1, 0), "uses"),
        (
            NewJoinToken {
                expires_unix_ms: NOW,
                ..token("0000000000000004", "prod", 1, 1)
            },
            "expires_unix_ms",
        ),
        (
            NewJoinToken {
                created_by: " ".into(),
                ..token("0000000000000005", "prod", 1, 1)
            },
            "created_by",
        ),
    ];
    for (bad, field) in cases {
        match store.create_join_token(&bad, NOW).await {
            Err(StoreError::InvalidInput { field: f, .. }) if f.ends_with(field) => {}
            other => anyhow::bail!("{field}: {other:?}"),
        }
    }
    ensure!(store.join_tokens(&tenant("prod"), 10).await?.is_empty());
    Ok(())
}

const OLD_CA: &str = "O=Gait fleet, CN=old";
const NEW_CA: &str = "O=Gait fleet, CN=new";

fn hello(serial: &str, not_after: i64, issuer: &str) -> Result<AgentHello> {
    Ok(AgentHello {
        cert_serial: serial.parse()?,
        cert_not_after_unix_ms: not_after,
        cert_issuer: issuer.to_owned(),
        remote_addr: "127.0.0.1:1".to_owned(),
        agent_version: "t".to_owned(),
        active_bundle: None,
        received_bundle: None,
        outbox_depth: 0,
        shed_total: 0,
    })
}

/// A known certificate as (agent, serial, issuer, not_after, source).
type Seen<'a> = (
    String,
    &'a str,
    Option<&'a str>,
    Option<i64>,
    CertificateSource,
);

/// The certificates `pki retire-ca` decides from: each agent's presented one (expiry and issuer recorded with the
/// hello, replaced at the next hello) and the ones signed online, live and unrevoked only.
async fn live_agent_certificates_cover_presented_and_issued_ones(db: &TestStore) -> Result<()> {
    let store = db.store();
    let minted = AgentKey::new(tenant("prod"), "minted".parse()?);
    let renewed = AgentKey::new(tenant("prod"), "renewed".parse()?);
    let revoked = AgentKey::new(tenant("dev"), "revoked".parse()?);
    let expired = AgentKey::new(tenant("dev"), "expired".parse()?);
    store
        .agent_connected(&minted, &hello("0b01", NOW + HOUR, OLD_CA)?, NOW)
        .await?;
    store
        .agent_connected(&renewed, &hello("0b02", NOW + HOUR, OLD_CA)?, NOW)
        .await?;
    store
        .agent_connected(&revoked, &hello("0b03", NOW + HOUR, OLD_CA)?, NOW)
        .await?;
    store
        .agent_connected(&expired, &hello("0b04", NOW - 1, OLD_CA)?, NOW)
        .await?;
    store
        .record_issued_certificate(
            &IssuedCertificate {
                cert_serial: "0b12".parse()?,
                agent: renewed.clone(),
                kind: IssueKind::Renew,
                join_token_id: String::new(),
                not_after_unix_ms: NOW + 2 * HOUR,
                issued_by: "agent:x".to_owned(),
                issuer: Some(NEW_CA.to_owned()),
            },
            NOW,
        )
        .await?;
    store
        .revoke(
            &gait_store::Revocation {
                cert_serial: "0b03".parse()?,
                agent: revoked.clone(),
                reason: "gone".to_owned(),
                revoked_by: "alice".to_owned(),
            },
            NOW,
        )
        .await?;

    let live = store.live_agent_certificates(NOW).await?;
    let seen: Vec<Seen<'_>> = live
        .iter()
        .map(|c| {
            (
                c.agent.to_string(),
                c.cert_serial.as_str(),
                c.issuer.as_deref(),
                c.not_after_unix_ms,
                c.source,
            )
        })
        .collect();
    let prod = |id: &str| format!("acme/web/prod/{id}");
    ensure!(
        seen == [
            (
                prod("minted"),
                "0b01",
                Some(OLD_CA),
                Some(NOW + HOUR),
                CertificateSource::Presented
            ),
            (
                prod("renewed"),
                "0b02",
                Some(OLD_CA),
                Some(NOW + HOUR),
                CertificateSource::Presented
            ),
            (
                prod("renewed"),
                "0b12",
                Some(NEW_CA),
                Some(NOW + 2 * HOUR),
                CertificateSource::Issued
            ),
        ],
        "{seen:?}"
    );
    // The inventory row carries what the last hello presented; the next hello replaces it.
    let row = |rows: Vec<gait_store::AgentRow>| rows.into_iter().next();
    let listed = row(store.agents_with_cert_serial(&"0b01".parse()?).await?);
    ensure!(
        listed
            .as_ref()
            .is_some_and(|r| r.cert_not_after_unix_ms == Some(NOW + HOUR)
                && r.cert_issuer.as_deref() == Some(OLD_CA)),
        "{listed:?}"
    );
    store
        .agent_connected(&minted, &hello("0b21", NOW + 3 * HOUR, NEW_CA)?, NOW + 1)
        .await?;
    let listed = row(store.agents_with_cert_serial(&"0b21".parse()?).await?);
    ensure!(
        listed
            .as_ref()
            .is_some_and(|r| r.cert_not_after_unix_ms == Some(NOW + 3 * HOUR)
                && r.cert_issuer.as_deref() == Some(NEW_CA)),
        "{listed:?}"
    );
    ensure!(
        store
            .live_agent_certificates(NOW + 3 * HOUR)
            .await?
            .is_empty()
    );
    // An issuer longer than any distinguished name is refused, naming the field.
    match store
        .agent_connected(&minted, &hello("0b22", NOW + HOUR, &"x".repeat(5000))?, NOW)
        .await
    {
        Err(StoreError::InvalidInput { field, .. }) if field == "hello.cert_issuer" => {}
        other => anyhow::bail!("long issuer: {other:?}"),
    }
    Ok(())
}

gait_store::store_tests!(
    live_agent_certificates_cover_presented_and_issued_ones,
    tokens_are_listed_per_tenant_and_revoked_only_in_their_tenant,
    consumption_refuses_wrong_secrets_expired_used_up_and_revoked_tokens,
    concurrent_enrollments_with_a_one_use_token_admit_exactly_one,
    a_rolled_back_enrollment_gives_the_use_back,
    issued_certificates_are_recorded_per_agent,
    invalid_join_tokens_are_refused_before_any_write,
);
