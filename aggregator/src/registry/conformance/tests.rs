//! Tests of conformance: the pure evaluation (lineage walk, reasons, roll-up, remedy) with plain values, and
//! the registry's answers over a real SQLite store.

use super::*;

fn d(c: char) -> String {
    c.to_string().repeat(64)
}

fn entry(digest: &str, parent: Option<&str>, at: i64) -> LineageEntry {
    LineageEntry {
        digest: digest.to_owned(),
        parent: parent.map(str::to_owned),
        created_unix_ms: at,
    }
}

fn baseline(min: Option<&str>, rules: &[&str]) -> ConformanceBaseline {
    ConformanceBaseline {
        org: "acme".parse().expect("org"),
        min_digest: min.map(str::to_owned),
        required_rules: rules.iter().map(|r| (*r).to_owned()).collect(),
        set_by: "t".into(),
        set_unix_ms: 0,
    }
}

fn policy(digest: &str, rules: &[&str]) -> PolicyInForce {
    PolicyInForce {
        file: "base.yaml".into(),
        digest: digest.to_owned(),
        rules: rules.iter().map(|r| (*r).to_owned()).collect(),
    }
}

#[test]
fn a_version_conforms_when_it_is_the_minimum_or_descends_from_it() {
    // a <- b <- c, and x alone.
    let l = Lineage::new([
        entry(&d('a'), None, 1),
        entry(&d('b'), Some(&d('a')), 2),
        entry(&d('c'), Some(&d('b')), 3),
        entry(&d('x'), None, 4),
    ]);
    assert!(l.descends_from(&d('b'), &d('b')));
    assert!(l.descends_from(&d('c'), &d('b')));
    assert!(!l.descends_from(&d('a'), &d('b')), "an ancestor is older");
    assert!(!l.descends_from(&d('x'), &d('b')));
    assert!(
        !l.descends_from(&d('z'), &d('b')),
        "unknown to the registry"
    );
    assert_eq!(
        l.newest_first().collect::<Vec<_>>(),
        [d('x'), d('c'), d('b'), d('a')]
    );
}

#[test]
fn the_walk_ends_at_cycles_missing_parents_and_its_bound() {
    // c -> b -> a -> c (a cycle), m's parent is missing.
    let l = Lineage::new([
        entry(&d('a'), Some(&d('c')), 1),
        entry(&d('b'), Some(&d('a')), 2),
        entry(&d('c'), Some(&d('b')), 3),
        entry(&d('m'), Some(&d('9')), 4),
    ]);
    assert!(!l.descends_from(&d('c'), &d('f')), "a cycle ends the walk");
    assert!(
        l.descends_from(&d('c'), &d('a')),
        "found before the loop closes"
    );
    assert!(!l.descends_from(&d('m'), &d('f')));
    // A chain longer than the bound is not followed to its end.
    let chain: Vec<LineageEntry> = (0..MAX_WALK + 5)
        .map(|i| {
            let parent = (i > 0).then(|| format!("{:064x}", i - 1));
            entry(&format!("{i:064x}"), parent.as_deref(), i as i64)
        })
        .collect();
    let long = Lineage::new(chain);
    let top = format!("{:064x}", MAX_WALK + 4);
    assert!(long.descends_from(&top, &format!("{:064x}", 10)));
    assert!(
        !long.descends_from(&top, &format!("{:064x}", 0)),
        "past the bound"
    );
}

#[test]
fn reasons_name_the_digest_and_each_missing_rule() {
    let l = Lineage::new([entry(&d('a'), None, 1), entry(&d('b'), Some(&d('a')), 2)]);
    let b = baseline(Some(&d('b')), &["block_prod_writes", "audit"]);
    assert!(evaluate(&b, &l, &[policy(&d('b'), &["audit", "block_prod_writes"])]).is_empty());
    let reasons = evaluate(&b, &l, &[policy(&d('a'), &["audit"])]);
    assert_eq!(
        reasons,
        [
            format!(
                "policy gait digest {} (base.yaml) is not version {} or a descendant",
                d('a'),
                d('b')
            ),
            "rule `block_prod_writes` missing".to_owned()
        ]
    );
    // Required rules may come from any policy file in force; the minimum binds every file.
    let rules_only = baseline(None, &["r1", "r2"]);
    assert!(
        evaluate(
            &rules_only,
            &l,
            &[policy(&d('7'), &["r1"]), policy(&d('8'), &["r2"])]
        )
        .is_empty()
    );
    let two = evaluate(
        &b,
        &l,
        &[
            policy(&d('b'), &["audit", "block_prod_writes"]),
            policy(&d('7'), &[]),
        ],
    );
    assert_eq!(two.len(), 1);
    assert!(two[0].contains("not in the registry"), "{two:?}");
    assert_eq!(evaluate(&b, &l, &[]), ["the bundle enforces no policy"]);
}

#[test]
fn a_project_conforms_only_when_all_its_envs_and_agents_do() {
    let t = Tenant::from_parts("acme", "web", "prod").expect("t");
    let s = Tenant::from_parts("acme", "web", "staging").expect("t");
    let api = Tenant::from_parts("acme", "api", "prod").expect("t");
    let ok = |t: &Tenant, agent: Option<&str>| {
        scope_answer(
            t,
            agent.map(str::to_owned),
            vec![],
            "r".into(),
            None,
            None,
            vec![],
        )
    };
    let bad = |t: &Tenant, agent: Option<&str>| {
        scope_answer(
            t,
            agent.map(str::to_owned),
            vec!["x".into()],
            "r".into(),
            None,
            None,
            vec![],
        )
    };
    let rolled = roll_up(&[
        ok(&t, None),
        ok(&t, Some("a1")),
        ok(&s, None),
        bad(&s, Some("s1")),
        ok(&api, None),
    ]);
    assert_eq!(rolled.len(), 2);
    assert_eq!(rolled[0].project, "api");
    assert!(rolled[0].conformant);
    assert_eq!(
        (
            rolled[1].conformant,
            rolled[1].envs,
            rolled[1].agents,
            rolled[1].nonconformant_agents
        ),
        (false, 2, 2, 1)
    );
    assert_eq!(bad(&t, None).remedy.as_deref(), Some("r"));
    assert_eq!(ok(&t, None).remedy, None);
}

#[test]
fn rule_names_are_trimmed_deduplicated_and_checked() {
    assert_eq!(
        check_rule_names(&[" b ".into(), "a".into(), "b".into()]).expect("ok"),
        ["a", "b"]
    );
    for bad in ["", "x\ny"] {
        let err = check_rule_names(&[bad.into()]).unwrap_err();
        assert!(err.to_string().contains("required_rules"), "{err}");
    }
}

#[test]
fn the_remedy_pins_or_says_what_to_push() {
    let t = Tenant::from_parts("acme", "web", "prod").expect("t");
    assert_eq!(
        pin_command(&t, &d('b')),
        format!(
            "gait-aggregator policy pin {} --org acme --project web --env prod",
            d('b')
        )
    );
    assert_eq!(
        push_advice(&baseline(Some(&d('b')), &[])),
        format!("push a version that descends from {}, then pin it", d('b'))
    );
    assert!(push_advice(&baseline(None, &["r"])).contains("carries rules `r`"));
}

mod with_store {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use gait_bundle::Stage;
    use gait_canon::sign::SigningKey;
    use gait_store::{ActiveBundle, AgentHello, AgentKey, PinKind, Store};

    use super::super::*;
    use crate::registry::versions::PushRequest;
    use crate::registry::{BundleDefaults, PublishRequest, StagedCandidate};

    const V1: &str = "default_verdict: block\nrules:\n  - name: allow-reads\n    effect: allow\n    match:\n      tool_names: [tool.read]\n";
    const V2: &str = "default_verdict: block\nrules:\n  - name: allow-reads\n    effect: allow\n    match:\n      tool_names: [tool.read]\n  - name: block_prod_writes\n    effect: block\n    match:\n      tool_names: [tool.write]\n";

    fn registry(store: &Store) -> Registry {
        Registry::new(
            store.clone(),
            SigningKey::from_seed(&[9; 32]),
            BundleDefaults::default(),
            Arc::new(crate::metrics::Metrics::new()),
        )
    }

    async fn push(r: &Registry, org: &Org, yaml: &str, parent: Option<&str>) -> String {
        r.push(
            org,
            PushRequest {
                name: "base.yaml".into(),
                yaml: yaml.into(),
                message: String::new(),
                parent: parent.map(str::to_owned),
                author: "t".into(),
                dry_run: false,
            },
        )
        .await
        .expect("push")
        .version
        .digest
    }

    fn publish(policy: &str, candidate: Option<&str>) -> PublishRequest {
        PublishRequest {
            policies: BTreeMap::from([("base.yaml".to_owned(), policy.to_owned())]),
            max_offline_seconds: None,
            on_stale: None,
            validity: None,
            settings: gait_bundle::Settings::default(),
            created_by: "t".into(),
            candidates: candidate
                .map(|c| {
                    BTreeMap::from([(
                        "base.yaml".to_owned(),
                        StagedCandidate {
                            stage: Stage::Observe,
                            name: "next.yaml".into(),
                            text: c.to_owned(),
                        },
                    )])
                })
                .unwrap_or_default(),
            delegation_key: None,
            rollback: None,
            audience: None,
        }
    }

    async fn agent(store: &Store, tenant: &Tenant, id: &str, active: Option<(u64, &str)>) {
        let hello = AgentHello {
            cert_serial: "0a1b".parse().expect("serial"),
            cert_not_after_unix_ms: i64::MAX,
            cert_issuer: "CN=test CA".into(),
            remote_addr: "127.0.0.1:1".into(),
            agent_version: "test".into(),
            active_bundle: active.map(|(epoch, digest)| ActiveBundle {
                epoch,
                digest: digest.to_owned(),
                since_unix_ms: 1,
            }),
            received_bundle: None,
            outbox_depth: 0,
            shed_total: 0,
        };
        let key = AgentKey::new(tenant.clone(), id.parse().expect("agent id"));
        store.agent_connected(&key, &hello, 1).await.expect("agent");
    }

    fn find<'a>(r: &'a ConformanceReport, agent: Option<&str>) -> &'a ScopeConformance {
        r.results
            .iter()
            .find(|s| s.scope.agent.as_deref() == agent)
            .expect("answer")
    }

    #[tokio::test]
    async fn the_policy_of_record_comes_from_bundle_bytes_and_candidates_do_not_count() {
        let db = gait_store::testing::sqlite_temp().await.expect("store");
        let store = db.store();
        let r = registry(store);
        let org: Org = "acme".parse().expect("org");
        let prod = Tenant::from_parts("acme", "web", "prod").expect("t");
        let v1 = push(&r, &org, V1, None).await;
        let v2 = push(&r, &org, V2, Some(&v1)).await;
        let all = ConformanceFilter::default();

        // No baseline: not found, naming how to set one. Refusals store nothing.
        let err = r.conformance(&org, &all).await.unwrap_err();
        assert!(err.to_string().contains("baseline set"), "{err}");
        let err = r
            .set_baseline(
                &org,
                BaselineRequest {
                    min_digest: Some("f".repeat(64)),
                    required_rules: vec![],
                },
                "t",
            )
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                RegistryError::Field {
                    field: "min_digest",
                    ..
                }
            ),
            "{err}"
        );
        let err = r
            .set_baseline(&org, BaselineRequest::default(), "t")
            .await
            .unwrap_err();
        assert!(matches!(err, RegistryError::Field { .. }), "{err}");
        assert!(r.baseline(&org).await.is_err(), "nothing stored");

        r.set_baseline(
            &org,
            BaselineRequest {
                min_digest: Some(v2.clone()),
                required_rules: vec!["block_prod_writes".into()],
            },
            "t",
        )
        .await
        .expect("set");

        // Pinned to v1: not conforming; the remedy pins v2.
        let pinned = r
            .pin(&prod, &v1, None, "t", PinKind::Pin, None)
            .await
            .expect("pin");
        agent(store, &prod, "a1", Some((1, &pinned.bundle.digest))).await;
        agent(store, &prod, "a2", None).await;
        agent(store, &prod, "a3", Some((9, &"e".repeat(64)))).await;
        let theirs = Tenant::from_parts("other", "web", "prod").expect("t");
        agent(store, &theirs, "o1", None).await;
        let report = r.conformance(&org, &all).await.expect("report");
        let env = find(&report, None);
        assert!(!env.conformant);
        assert_eq!(
            env.remedy.as_deref(),
            Some(pin_command(&prod, &v2).as_str())
        );
        assert_eq!(find(&report, Some("a1")).reasons.len(), 2);
        assert_eq!(find(&report, Some("a2")).reasons, ["no bundle reported"]);
        assert!(find(&report, Some("a3")).reasons[0].contains("no bundle with this digest"));
        assert_eq!(
            report.results.len(),
            4,
            "the other org's agent is not listed"
        );

        // v2 staged as an observe candidate beside v1: still v1 of record.
        r.publish(&prod, publish(V1, Some(V2)))
            .await
            .expect("staged");
        let report = r.conformance(&org, &all).await.expect("report");
        assert!(
            !find(&report, None).conformant,
            "a candidate does not count"
        );
        assert_eq!(find(&report, None).policies, std::slice::from_ref(&v1));

        // A plain publish of v2's content (no pin) is what is in force: the environment conforms.
        let published = r.publish(&prod, publish(V2, None)).await.expect("publish");
        let report = r.conformance(&org, &all).await.expect("report");
        assert!(find(&report, None).conformant, "{report:?}");
        assert_eq!(find(&report, None).bundle_epoch, Some(published.epoch));
        let a1 = find(&report, Some("a1"));
        assert!(!a1.conformant);
        assert!(
            a1.remedy.as_deref().is_some_and(|m| m.contains("activate")),
            "{a1:?}"
        );
        agent(
            store,
            &prod,
            "a1",
            Some((published.epoch, &published.digest)),
        )
        .await;
        let one = ConformanceFilter {
            agent: Some("a1".into()),
            ..Default::default()
        };
        let nobody = ConformanceFilter {
            env: Some("qa".into()),
            ..Default::default()
        };
        assert!(
            matches!(r.conformance(&org, &nobody).await, Err(RegistryError::NotFound(m)) if m.contains("env qa")),
            "an empty selection is not a pass"
        );
        let report = r.conformance(&org, &one).await.expect("report");
        assert_eq!(report.results.len(), 1);
        assert!(report.conformant, "{report:?}");

        // No registry version carries a rule nobody has: the remedy says what to push.
        r.set_baseline(
            &org,
            BaselineRequest {
                min_digest: Some(v2.clone()),
                required_rules: vec!["nobody_has_it".into()],
            },
            "t",
        )
        .await
        .expect("replace");
        let report = r.conformance(&org, &all).await.expect("report");
        assert!(
            find(&report, None)
                .remedy
                .as_deref()
                .is_some_and(|m| m.starts_with("push a version that descends from")),
            "{report:?}"
        );
        let cleared = r.clear_baseline(&org, "t").await.expect("clear");
        assert_eq!(cleared.required_rules, ["nobody_has_it"]);
        assert!(matches!(
            r.clear_baseline(&org, "t").await,
            Err(RegistryError::NotFound(_))
        ));
        let head = store.audit_head().await.expect("head");
        let actions: Vec<String> = store
            .audit_entries(0, u32::try_from(head.size).expect("size"))
            .await
            .expect("entries")
            .iter()
            .filter_map(|e| {
                let v: serde_json::Value = serde_json::from_slice(&e.line).ok()?;
                v["action"].as_str().map(str::to_owned)
            })
            .filter(|a| a.starts_with("policy.baseline"))
            .collect();
        assert_eq!(
            actions,
            [
                "policy.baseline_set",
                "policy.baseline_set",
                "policy.baseline_clear"
            ]
        );
    }

    /// Measurement, not a check: `cargo test -p gait-aggregator --lib conformance_of_ten_thousand_agents --
    /// --ignored --nocapture` (debug build; SQLite, and PostgreSQL too with `GAIT_TEST_DATABASE_URL`).
    #[tokio::test]
    #[ignore = "measurement"]
    async fn conformance_of_ten_thousand_agents() {
        let db = gait_store::testing::sqlite_temp().await.expect("store");
        measure(db.store()).await;
        if let Some(db) = gait_store::testing::postgres_fresh()
            .await
            .expect("postgres")
        {
            measure(db.store()).await;
        }
    }

    async fn measure(store: &Store) {
        let backend = match store {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        };
        let r = registry(store);
        let org: Org = "acme".parse().expect("org");
        let v1 = push(&r, &org, V1, None).await;
        let v2 = push(&r, &org, V2, Some(&v1)).await;
        r.set_baseline(
            &org,
            BaselineRequest {
                min_digest: Some(v2.clone()),
                required_rules: vec!["block_prod_writes".into()],
            },
            "t",
        )
        .await
        .expect("set");
        for e in 0..10 {
            let tenant = Tenant::from_parts("acme", "web", &format!("env{e}")).expect("t");
            let digest = if e % 2 == 0 { &v1 } else { &v2 };
            let pinned = r
                .pin(&tenant, digest, None, "t", PinKind::Pin, None)
                .await
                .expect("pin");
            let keys: Vec<AgentKey> = (0..1000)
                .map(|i| AgentKey::new(tenant.clone(), format!("a{i:04}").parse().expect("id")))
                .collect();
            let hellos: Vec<AgentHello> = (0..1000u32)
                .map(|i| AgentHello {
                    cert_serial: format!("{:08x}", e * 1000 + i + 1).parse().expect("serial"),
                    cert_not_after_unix_ms: i64::MAX,
                    cert_issuer: "CN=test CA".into(),
                    remote_addr: "127.0.0.1:1".into(),
                    agent_version: "test".into(),
                    active_bundle: Some(ActiveBundle {
                        epoch: 1,
                        digest: pinned.bundle.digest.clone(),
                        since_unix_ms: 1,
                    }),
                    received_bundle: None,
                    outbox_depth: 0,
                    shed_total: 0,
                })
                .collect();
            let pairs: Vec<(&AgentKey, &AgentHello)> = keys.iter().zip(&hellos).collect();
            store.agents_connected(&pairs, 1).await.expect("agents");
        }
        let all = ConformanceFilter::default();
        let mut times = Vec::new();
        let mut encode = Vec::new();
        let mut bytes = 0;
        for _ in 0..5 {
            let start = std::time::Instant::now();
            let report = r.conformance(&org, &all).await.expect("report");
            times.push(start.elapsed());
            assert_eq!(report.results.len(), 10_010);
            assert!(!report.truncated);
            let start = std::time::Instant::now();
            bytes = serde_json::to_vec(&report).expect("json").len();
            encode.push(start.elapsed());
        }
        encode.sort();
        println!(
            "{backend}: JSON answer {bytes} bytes, encoded in median {:?}",
            encode[2]
        );
        times.sort();
        println!(
            "{backend}: conformance of 10 envs + 10,000 agents (10 distinct bundles): min {:?}, median {:?}, \
             max {:?}",
            times[0], times[2], times[4]
        );
    }
}
