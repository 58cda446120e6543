//! The API state the in-process router tests share: every feature on the test store, bundles signed with
//! `registry_key`, the admin token `admin_token` as a deployment admin. A test that needs one feature set up its
//! own way overrides that field (`AppState { enrollment, ..app_state(…) }`), so a new feature is added here once.

use std::sync::Arc;

use gait_aggregator::api::AppState;
use gait_aggregator::auth::{AdminTokenMode, Authorizer};
use gait_aggregator::metrics::Metrics;
use gait_aggregator::registry::{BundleDefaults, Registry};
use gait_canon::sign::SigningKey;
use gait_store::testing::TestStore;

pub fn app_state(db: &TestStore, admin_token: &str, registry_key: SigningKey) -> AppState {
    let store = db.store().clone();
    let metrics = Arc::new(Metrics::new());
    let authorizer = Arc::new(Authorizer::new(AdminTokenMode::Admin));
    // The audit log reads its key into memory, so the key directory can go when this returns.
    let keys = tempfile::tempdir().expect("tempdir");
    let registry = Arc::new(Registry::new(
        store.clone(),
        registry_key,
        BundleDefaults::default(),
        metrics.clone(),
    ));
    let rollouts = Arc::new(gait_aggregator::rollout::Rollouts::new(
        store.clone(),
        registry.clone(),
    ));
    AppState {
        analytics: Arc::new(gait_aggregator::analysis::Analytics::new(
            store.clone(),
            registry.clone(),
        )),
        rollouts,
        registry,
        fleet: Arc::new(gait_aggregator::fleet::Fleet::new(store.clone())),
        bindings: Arc::new(gait_aggregator::auth::bindings::Bindings::new(
            store.clone(),
            authorizer.clone(),
        )),
        metrics,
        admin_token: Arc::new(admin_token.to_owned()),
        authorizer,
        oidc: None,
        audit: Arc::new(
            gait_aggregator::audit::AuditLog::open(
                store.clone(),
                keys.path(),
                "gait-aggregator/test.local",
            )
            .expect("audit log"),
        ),
        enrollment: Arc::new(gait_aggregator::enroll::Enrollment::new(
            store.clone(),
            std::path::PathBuf::from("/nonexistent/pki"),
            Default::default(),
        )),
        approvals: Arc::new(gait_aggregator::approval::Approvals::new(
            store.clone(),
            SigningKey::generate(),
        )),
        uploads: None,
        evidence: Arc::new(gait_aggregator::evidence::query::EvidenceIndex::new(
            store.clone(),
        )),
        replay: Arc::new(gait_aggregator::replay::Replay::new(
            store.clone(),
            SigningKey::generate(),
        )),
    }
}
