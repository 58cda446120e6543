//! Prometheus metrics of the aggregator: one [`Metrics`] owning a `prometheus-client` [`Registry`].
//!
//! Each server has its own registry instead of a process-global recorder, so that an aggregator and agents can run
//! in one test process without merging their series. Label values come from bounded sets (backend, refusal code,
//! message kind, matched route), never tenant or agent ids; every known label value is registered at zero when
//! the server starts, so a rate or an absence alert works before the first event.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use gait_runtime::metrics::register;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub const RECORDS_INSERTED: &str = "gait_aggregator_records_inserted_total";
pub const RECORDS_DUPLICATE: &str = "gait_aggregator_records_duplicate_total";
pub const RECORDS_CONFLICT: &str = "gait_aggregator_records_conflict_total";
pub const RECORD_GAPS: &str = "gait_aggregator_record_gaps_total";
/// Records refused, labelled `code` with [`gait_wire::RefusalCode::as_str`] (a bounded set).
pub const RECORDS_REFUSED: &str = "gait_aggregator_records_refused_total";
/// Skipped seqs recognised as refused earlier (the agent quarantined them), so not counted as gaps.
pub const RECORDS_REFUSED_SKIPPED: &str = "gait_aggregator_records_refused_skipped_total";
pub const BATCHES_COMMITTED: &str = "gait_aggregator_batches_committed_total";
/// Histogram of the store commit of one record batch, in seconds.
pub const BATCH_COMMIT_DURATION: &str = "gait_aggregator_batch_commit_duration_seconds";
pub const CONNECTIONS_ACCEPTED: &str = "gait_aggregator_connections_accepted_total";
pub const CONNECTIONS_REFUSED: &str = "gait_aggregator_connections_refused_total";
pub const CONNECTIONS_OPEN: &str = "gait_aggregator_connections_open";
/// QUIC handshakes being worked on now (bounded by `quic.max_handshakes_in_flight`).
pub const HANDSHAKES_IN_FLIGHT: &str = "gait_aggregator_handshakes_in_flight";
/// Connection attempts waiting for a handshake slot ([`crate::ingest::admission::Waiting`]).
pub const HANDSHAKES_WAITING: &str = "gait_aggregator_handshakes_waiting";
/// Histogram: time from an agent's `Hello` read to its answer (`Welcome` or an error), the session set-up after
/// the handshake (the presence write and the instance check); an agent waits for it at most 30 s.
pub const HELLO_DURATION: &str = "gait_aggregator_hello_duration_seconds";
/// Handshakes per second this process completed while under pressure (0 until measured); sizes the redial
/// window announced at shutdown.
pub const HANDSHAKE_CAPACITY: &str = "gait_aggregator_handshake_capacity_per_second";
/// Stateless QUIC Retry packets sent to validate an address before spending a handshake slot on it.
pub const HANDSHAKE_RETRIES: &str = "gait_aggregator_handshake_retries_total";
pub const PROTOCOL_ERRORS: &str = "gait_aggregator_protocol_errors_total";
pub const BUNDLES_PUBLISHED: &str = "gait_aggregator_bundles_published_total";
pub const BUNDLES_SERVED: &str = "gait_aggregator_bundles_served_total";
pub const BUNDLE_REFUSALS_REPORTED: &str = "gait_aggregator_bundle_refusals_reported_total";
pub const LONG_POLLS_WAITING: &str = "gait_aggregator_long_polls_waiting";
/// Passes the rollout controller made over the progressing rollouts (on the leading replica).
pub const ROLLOUT_CONTROLLER_PASSES: &str = "gait_aggregator_rollout_controller_passes_total";
/// 1 while this replica leads the rollout controller, else 0.
pub const ROLLOUT_CONTROLLER_LEADER: &str = "gait_aggregator_rollout_controller_leader";
/// Evidence rows the analytics upkeep folded into families and posture (on the leading replica).
pub const ANALYSIS_ROWS: &str = "gait_aggregator_analysis_rows_total";
/// Of those, rows folded from the in-process feed of batches this replica committed, without reading them back.
pub const ANALYSIS_FED_ROWS: &str = "gait_aggregator_analysis_fed_rows_total";
/// The evidence index id the analytics upkeep has folded up to.
pub const ANALYSIS_CURSOR: &str = "gait_aggregator_analysis_cursor";
/// Time one analytics upkeep pass took (read, fold, write), in seconds.
pub const ANALYSIS_PASS_SECONDS: &str = "gait_aggregator_analysis_pass_seconds";
/// Time one call merge of the analytics upkeep took (decisions' arguments digests into the gated sets, runpack
/// calls marked), in seconds.
pub const ANALYSIS_CALL_MERGE_SECONDS: &str = "gait_aggregator_analysis_call_merge_seconds";
/// HTTP API requests, labelled `route` (the matched route template, `unmatched` for none), `method`, `status`.
pub const HTTP_REQUESTS: &str = "gait_aggregator_http_requests_total";
/// Histogram of HTTP API request latency in seconds, labelled `route` and `method`.
pub const HTTP_REQUEST_DURATION: &str = "gait_aggregator_http_request_duration_seconds";
pub const PRESENCE_COMMITS: &str = "gait_aggregator_presence_commits_total";
pub const TLS_SESSION_TICKETS: &str = "gait_aggregator_tls_session_tickets_total";
pub const AUTH_FAILURES: &str = "gait_aggregator_http_auth_failures_total";
/// Authenticated HTTP API requests refused by RBAC (403), labelled by the permission asked for.
pub const AUTHZ_DENIALS: &str = "gait_aggregator_http_authz_denials_total";
pub const HTTP_CONNECTIONS_ACCEPTED: &str = "gait_aggregator_http_connections_accepted_total";
pub const HTTP_CONNECTIONS_REFUSED: &str = "gait_aggregator_http_connections_refused_total";
pub const HTTP_CONNECTIONS_OPEN: &str = "gait_aggregator_http_connections_open";
pub const HTTP_CONNECTIONS_EVICTED: &str = "gait_aggregator_http_connections_evicted_total";
pub const HTTP_TLS_HANDSHAKE_FAILURES: &str = "gait_aggregator_http_tls_handshake_failures_total";
/// Agent identity alerts, labelled `kind` with [`gait_store::AlertKind::as_str`] (`duplicate_instance`: a
/// second live instance of one identity refused; `instance_behind`: a new instance behind the committed head).
/// Each one is also a durable `agent_alerts` row, so a restart loses only the rate, never the record.
pub const IDENTITY_ALERTS: &str = "gait_aggregator_identity_alerts_total";
pub const BUILD_INFO: &str = "gait_aggregator_build_info";
/// Fetches of the OpenID provider's signing keys, labelled `result` (`ok`, `failed`: the last good set stayed).
pub const OIDC_JWKS_REFRESHES: &str = "gait_aggregator_oidc_jwks_refreshes_total";
/// Usable signing keys of the OpenID provider in the cache.
pub const OIDC_JWKS_KEYS: &str = "gait_aggregator_oidc_jwks_keys";
/// Lookups in the verified-token cache of operators' JWTs, labelled `result` (`hit`, `miss`: verified in full).
pub const OIDC_TOKEN_CACHE_LOOKUPS: &str = "gait_aggregator_oidc_token_cache_lookups_total";
/// Verified tokens held in that cache (at most `auth.oidc.token_cache_size`).
pub const OIDC_TOKEN_CACHE_ENTRIES: &str = "gait_aggregator_oidc_token_cache_entries";
/// Agent certificates signed online, labelled `kind`: `enroll` (join token) or `renew`.
pub const CERTIFICATES_ISSUED: &str = "gait_aggregator_certificates_issued_total";
/// Histogram of the time left on the certificates agents present at each accepted connection, in seconds:
/// the fleet's expiry, sampled where it matters.
pub const AGENT_CERTIFICATE_EXPIRY: &str = "gait_aggregator_agent_certificate_expiry_seconds";
/// Approval requests raised by agents and requests decided, labelled `outcome` ([`APPROVAL_OUTCOMES`]).
pub const APPROVALS: &str = "gait_aggregator_approvals_total";
/// Outcomes of [`APPROVALS`]: `requested` (a new request from an agent's record), `approved` (its rules were
/// met and tokens issued), `denied`.
pub const APPROVAL_OUTCOMES: [&str; 3] = ["requested", "approved", "denied"];

/// Artifact upload bytes received from agents in `BlobChunk`s and kept (a chunk not applied is not counted).
pub const BLOB_UPLOAD_BYTES: &str = "gait_aggregator_blob_upload_bytes_total";
/// Artifact uploads by `outcome` ([`BLOB_UPLOAD_OUTCOMES`]).
pub const BLOB_UPLOADS: &str = "gait_aggregator_blob_uploads_total";
/// Outcomes of [`BLOB_UPLOADS`]: `started` (an offer with nothing kept yet), `resumed` (an offer answered
/// with an offset above 0 from a kept partial upload), `completed` (verified and stored), `refused`.
pub const BLOB_UPLOAD_OUTCOMES: [&str; 4] = ["started", "resumed", "completed", "refused"];
/// Refused artifact uploads by `reason` ([`crate::evidence::upload::REFUSAL_REASONS`]).
pub const BLOB_UPLOADS_REFUSED: &str = "gait_aggregator_blob_uploads_refused_total";

/// Stages at which a QUIC connection is refused (`stage` label of [`CONNECTIONS_REFUSED`]).
pub const REFUSAL_STAGES: [&str; 7] = [
    "admission",
    "repeat",
    "version",
    "handshake",
    "identity",
    "revoked",
    "expired",
];
/// Reasons an admin request is refused (`reason` label of [`AUTH_FAILURES`]); an operator's bearer JWT adds
/// [`crate::auth::oidc::REASONS`].
pub const AUTH_FAILURE_REASONS: [&str; 2] = ["missing", "invalid"];
/// Session ticket outcomes (`outcome` label of [`TLS_SESSION_TICKETS`]).
pub const TICKET_OUTCOMES: [&str; 3] = ["issued", "resumed", "refused"];
/// Identity alert kinds (`kind` label of [`IDENTITY_ALERTS`]).
pub const ALERT_KINDS: [gait_store::AlertKind; 2] = [
    gait_store::AlertKind::DuplicateInstance,
    gait_store::AlertKind::InstanceBehind,
];

/// One label with a value from a bounded set.
type Label = [(&'static str, &'static str); 1];

/// Labels of [`HTTP_REQUESTS`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The matched route template (`/v1/orgs/{org}/…`), never the raw path; `unmatched` when no route matched.
    pub route: String,
    /// The request method (`other` for a method outside the standard set).
    pub method: &'static str,
    /// The response status code.
    pub status: u16,
}

/// Labels of [`HTTP_REQUEST_DURATION`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// As [`RequestLabels::route`].
    pub route: String,
    /// As [`RequestLabels::method`].
    pub method: &'static str,
}

/// Latency buckets from 0.5 ms to about 16 s (doubling).
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Every series of the aggregator, and the registry that renders them. Each public field is the series named by
/// the constant of the same name in upper case (`records_inserted` is [`RECORDS_INSERTED`]); labelled ones are
/// [`Family`]s keyed by the label documented on that constant.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub records_inserted: Counter,
    pub records_duplicate: Counter,
    pub records_conflict: Counter,
    pub record_gaps: Counter,
    pub records_refused: Family<Label, Counter>,
    pub records_refused_skipped: Counter,
    pub batches_committed: Counter,
    pub batch_commit_duration: Histogram,
    pub connections_accepted: Counter,
    pub connections_refused: Family<Label, Counter>,
    pub connections_open: Gauge,
    pub handshakes_in_flight: Gauge,
    pub handshakes_waiting: Gauge,
    pub hello_duration: Histogram,
    pub handshake_capacity: Gauge,
    pub handshake_retries: Counter,
    pub protocol_errors: Counter,
    pub bundles_published: Counter,
    pub bundles_served: Counter,
    pub bundle_refusals_reported: Family<Label, Counter>,
    pub long_polls_waiting: Gauge,
    pub rollout_controller_passes: Counter,
    pub rollout_controller_leader: Gauge,
    pub analysis_rows: Counter,
    pub analysis_fed_rows: Counter,
    pub analysis_cursor: Gauge,
    pub analysis_pass_seconds: Histogram,
    pub analysis_call_merge_seconds: Histogram,
    pub http_requests: Family<RequestLabels, Counter>,
    pub http_request_duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub auth_failures: Family<Label, Counter>,
    pub authz_denials: Family<Label, Counter>,
    pub presence_commits: Counter,
    pub identity_alerts: Family<Label, Counter>,
    pub approvals: Family<Label, Counter>,
    pub tls_session_tickets: Family<Label, Counter>,
    /// [`OIDC_JWKS_REFRESHES`] and [`OIDC_JWKS_KEYS`], handed to the OIDC key cache.
    pub jwks: crate::auth::jwks::JwksMetrics,
    /// [`OIDC_TOKEN_CACHE_LOOKUPS`] and [`OIDC_TOKEN_CACHE_ENTRIES`], handed to the OIDC verifier.
    pub oidc_token_cache: crate::auth::oidc::cache::TokenCacheMetrics,
    pub certificates_issued: Family<Label, Counter>,
    pub agent_certificate_expiry: Histogram,
    pub blob_upload_bytes: Counter,
    pub blob_uploads: Family<Label, Counter>,
    pub blob_uploads_refused: Family<Label, Counter>,
    /// The HTTP server's connection counters, once it runs (read at each scrape).
    http: Arc<OnceLock<Arc<gait_runtime::http::Stats>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// A counter's family name in a descriptor: the encoder appends `_total` to its samples itself.
fn family(name: &str) -> &str {
    name.strip_suffix("_total").unwrap_or(name)
}

impl Metrics {
    /// A registry with every series, labelled ones at zero for each known label value.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let mut counter = |name: &str, help: &str| {
            let c = Counter::default();
            register(&mut registry, name, help, c.clone());
            c
        };
        let records_inserted = counter(RECORDS_INSERTED, "Outbox records committed to the store.");
        let records_duplicate = counter(
            RECORDS_DUPLICATE,
            "Redelivered records recognised as already stored.",
        );
        let records_conflict = counter(
            RECORDS_CONFLICT,
            "Records not stored because their sequence was stored with a different hash (kept the original; the agent quarantines its record). Durable per agent as agents.conflict_count.",
        );
        let record_gaps = counter(
            RECORD_GAPS,
            "Sequence gaps or hash-chain breaks detected in agent streams.",
        );
        let records_refused_skipped = counter(
            RECORDS_REFUSED_SKIPPED,
            "Seqs skipped by an agent stream that were refused earlier (quarantined by the agent), not counted as gaps.",
        );
        let batches_committed = counter(
            BATCHES_COMMITTED,
            "Record batches committed and acknowledged.",
        );
        let connections_accepted = counter(
            CONNECTIONS_ACCEPTED,
            "QUIC connections that completed the mutual-TLS handshake.",
        );
        let protocol_errors = counter(
            PROTOCOL_ERRORS,
            "Streams or connections closed for a protocol violation.",
        );
        let bundles_published = counter(BUNDLES_PUBLISHED, "Policy bundles signed and published.");
        let bundles_served = counter(BUNDLES_SERVED, "Policy bundles sent to agents.");
        let presence_commits = counter(
            PRESENCE_COMMITS,
            "Group commits of agent hellos and last-seen refreshes.",
        );

        let mut labelled = |name: &str, help: &str, key: &'static str, values: &[&'static str]| {
            let f = Family::<Label, Counter>::default();
            for v in values {
                let _ = f.get_or_create(&[(key, *v)]);
            }
            register(&mut registry, name, help, f.clone());
            f
        };
        let codes: Vec<&'static str> = gait_wire::RefusalCode::ALL
            .iter()
            .map(|c| c.as_str())
            .collect();
        let records_refused = labelled(
            RECORDS_REFUSED,
            "Records refused, by refusal code (a permanent code makes the agent quarantine the record).",
            "code",
            &codes,
        );
        let connections_refused = labelled(
            CONNECTIONS_REFUSED,
            "QUIC connection attempts refused, by stage.",
            "stage",
            &REFUSAL_STAGES,
        );
        let mut auth_reasons = AUTH_FAILURE_REASONS.to_vec();
        auth_reasons.extend(crate::auth::oidc::REASONS);
        let auth_failures = labelled(
            AUTH_FAILURES,
            "HTTP API requests refused for a missing or invalid admin token or operator JWT, by reason.",
            "reason",
            &auth_reasons,
        );
        let jwks_refreshes = labelled(
            OIDC_JWKS_REFRESHES,
            "Fetches of the OpenID provider's signing keys, by result (failed: the last good set stayed).",
            "result",
            &["ok", "failed"],
        );
        let cache_lookups = labelled(
            OIDC_TOKEN_CACHE_LOOKUPS,
            "Lookups in the verified-token cache of operators' JWTs, by result (miss: the token was verified in full).",
            "result",
            &["hit", "miss"],
        );
        let permissions: Vec<&'static str> = crate::auth::Permission::ALL
            .iter()
            .map(|p| p.as_str())
            .collect();
        let authz_denials = labelled(
            AUTHZ_DENIALS,
            "Authenticated HTTP API requests refused because no role binding grants the permission, by permission.",
            "permission",
            &permissions,
        );
        let mut bundle_codes = gait_bundle::BundleError::CODES.to_vec();
        bundle_codes.push("other");
        let bundle_refusals_reported = labelled(
            BUNDLE_REFUSALS_REPORTED,
            "Bundle refusals reported by agents, by refusal code (`other` for a code this build does not know).",
            "code",
            &bundle_codes,
        );
        let kinds: Vec<&'static str> = ALERT_KINDS.iter().map(|k| k.as_str()).collect();
        let identity_alerts = labelled(
            IDENTITY_ALERTS,
            "Agent identity alerts by kind: a second live instance of one identity refused, or a new instance behind the committed head (durable rows in agent_alerts).",
            "kind",
            &kinds,
        );
        let approvals = labelled(
            APPROVALS,
            "Approval requests raised by agents (requested) and requests decided (approved: tokens issued; denied).",
            "outcome",
            &APPROVAL_OUTCOMES,
        );
        let tls_session_tickets = labelled(
            TLS_SESSION_TICKETS,
            "TLS session tickets by outcome: issued, resumed (a handshake without certificates), refused (forged, foreign or expired; a full handshake followed).",
            "outcome",
            &TICKET_OUTCOMES,
        );
        let certificates_issued = labelled(
            CERTIFICATES_ISSUED,
            "Agent certificates signed online, by kind: enroll (a join token) or renew (over the agent's connection).",
            "kind",
            &["enroll", "renew"],
        );
        let blob_uploads = labelled(
            BLOB_UPLOADS,
            "Artifact uploads from agents by outcome: started, resumed (from a kept partial upload), completed (verified and stored), refused.",
            "outcome",
            &BLOB_UPLOAD_OUTCOMES,
        );
        let blob_uploads_refused = labelled(
            BLOB_UPLOADS_REFUSED,
            "Artifact uploads refused, by reason.",
            "reason",
            &crate::evidence::upload::REFUSAL_REASONS,
        );
        let blob_upload_bytes = Counter::default();
        register(
            &mut registry,
            BLOB_UPLOAD_BYTES,
            "Artifact upload bytes received from agents and kept.",
            blob_upload_bytes.clone(),
        );
        // An hour to a year, so a fleet drifting towards expiry shows in the low buckets.
        let agent_certificate_expiry = Histogram::new([
            3_600.0,
            86_400.0,
            7.0 * 86_400.0,
            30.0 * 86_400.0,
            60.0 * 86_400.0,
            90.0 * 86_400.0,
            365.0 * 86_400.0,
        ]);
        register(
            &mut registry,
            AGENT_CERTIFICATE_EXPIRY,
            "Time left on the certificate an agent presented, observed at each accepted connection, in seconds.",
            agent_certificate_expiry.clone(),
        );

        let connections_open = Gauge::default();
        register(
            &mut registry,
            CONNECTIONS_OPEN,
            "Agent connections currently open.",
            connections_open.clone(),
        );
        let long_polls_waiting = Gauge::default();
        register(
            &mut registry,
            LONG_POLLS_WAITING,
            "Bundle long-polls currently waiting.",
            long_polls_waiting.clone(),
        );
        let rollout_controller_passes = Counter::default();
        register(
            &mut registry,
            ROLLOUT_CONTROLLER_PASSES,
            "Passes the rollout controller made over the progressing rollouts (on the leading replica).",
            rollout_controller_passes.clone(),
        );
        let handshakes_in_flight = Gauge::default();
        register(
            &mut registry,
            HANDSHAKES_IN_FLIGHT,
            "QUIC handshakes being worked on now (bounded by quic.max_handshakes_in_flight).",
            handshakes_in_flight.clone(),
        );
        let handshakes_waiting = Gauge::default();
        register(
            &mut registry,
            HANDSHAKES_WAITING,
            "Connection attempts waiting for a handshake slot (at most 8 per slot of quic.max_handshakes_in_flight, each at most 1 s).",
            handshakes_waiting.clone(),
        );
        let handshake_capacity = Gauge::default();
        register(
            &mut registry,
            HANDSHAKE_CAPACITY,
            "Handshakes per second this process completed while under pressure (0 until measured); sizes the redial window announced at shutdown.",
            handshake_capacity.clone(),
        );
        let handshake_retries = Counter::default();
        register(
            &mut registry,
            HANDSHAKE_RETRIES,
            "Stateless QUIC Retry packets sent to validate an agent's address before a handshake slot is spent on it.",
            handshake_retries.clone(),
        );
        let rollout_controller_leader = Gauge::default();
        register(
            &mut registry,
            ROLLOUT_CONTROLLER_LEADER,
            "1 while this replica leads the rollout controller, else 0.",
            rollout_controller_leader.clone(),
        );
        let analysis_rows = Counter::default();
        register(
            &mut registry,
            ANALYSIS_ROWS,
            "Evidence rows the analytics upkeep folded into families and posture (on the leading replica).",
            analysis_rows.clone(),
        );
        let analysis_fed_rows = Counter::default();
        register(
            &mut registry,
            ANALYSIS_FED_ROWS,
            "Evidence rows the analytics upkeep folded from the in-process feed of batches this replica committed, \
             without reading them back.",
            analysis_fed_rows.clone(),
        );
        let analysis_cursor = Gauge::default();
        register(
            &mut registry,
            ANALYSIS_CURSOR,
            "The evidence index id the analytics upkeep has folded up to.",
            analysis_cursor.clone(),
        );
        let analysis_pass_seconds = latency_histogram();
        register(
            &mut registry,
            ANALYSIS_PASS_SECONDS,
            "Time one analytics upkeep pass took (read, fold, write), in seconds.",
            analysis_pass_seconds.clone(),
        );
        let analysis_call_merge_seconds = latency_histogram();
        register(
            &mut registry,
            ANALYSIS_CALL_MERGE_SECONDS,
            "Time one call merge of the analytics upkeep took (decisions' arguments digests merged, runpack calls \
             marked gated), in seconds.",
            analysis_call_merge_seconds.clone(),
        );
        let hello_duration = latency_histogram();
        register(
            &mut registry,
            HELLO_DURATION,
            "Time from an agent's Hello read to its answer (Welcome or error), in seconds.",
            hello_duration.clone(),
        );
        let batch_commit_duration = latency_histogram();
        register(
            &mut registry,
            BATCH_COMMIT_DURATION,
            "Time to commit one record batch to the store, in seconds.",
            batch_commit_duration.clone(),
        );
        let http_requests = Family::<RequestLabels, Counter>::default();
        register(
            &mut registry,
            HTTP_REQUESTS,
            "HTTP API requests served, by matched route, method and status.",
            http_requests.clone(),
        );
        let http_request_duration =
            Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        register(
            &mut registry,
            HTTP_REQUEST_DURATION,
            "HTTP API request latency until the response head, in seconds, by matched route and method.",
            http_request_duration.clone(),
        );
        let build_info = Family::<[(&'static str, &'static str); 1], Gauge>::default();
        build_info
            .get_or_create(&[("version", env!("CARGO_PKG_VERSION"))])
            .set(1);
        register(
            &mut registry,
            BUILD_INFO,
            "The running build (always 1).",
            build_info,
        );
        let jwks = crate::auth::jwks::JwksMetrics {
            refresh_ok: jwks_refreshes.get_or_create(&[("result", "ok")]).clone(),
            refresh_failed: jwks_refreshes
                .get_or_create(&[("result", "failed")])
                .clone(),
            keys: Gauge::default(),
        };
        register(
            &mut registry,
            OIDC_JWKS_KEYS,
            "Usable signing keys of the OpenID provider in the cache.",
            jwks.keys.clone(),
        );
        let oidc_token_cache = crate::auth::oidc::cache::TokenCacheMetrics {
            hits: cache_lookups.get_or_create(&[("result", "hit")]).clone(),
            misses: cache_lookups.get_or_create(&[("result", "miss")]).clone(),
            entries: Gauge::default(),
        };
        register(
            &mut registry,
            OIDC_TOKEN_CACHE_ENTRIES,
            "Verified operator tokens held in the cache (at most auth.oidc.token_cache_size).",
            oidc_token_cache.entries.clone(),
        );
        let http = Arc::new(OnceLock::new());
        registry.register_collector(Box::new(HttpStats(Arc::clone(&http))));
        registry.register_collector(Box::new(gait_runtime::metrics::ProcessCollector));

        Self {
            registry,
            records_inserted,
            records_duplicate,
            records_conflict,
            record_gaps,
            records_refused,
            records_refused_skipped,
            batches_committed,
            batch_commit_duration,
            connections_accepted,
            connections_refused,
            connections_open,
            handshakes_in_flight,
            handshakes_waiting,
            hello_duration,
            handshake_capacity,
            handshake_retries,
            protocol_errors,
            bundles_published,
            bundles_served,
            bundle_refusals_reported,
            long_polls_waiting,
            rollout_controller_passes,
            rollout_controller_leader,
            analysis_rows,
            analysis_fed_rows,
            analysis_cursor,
            analysis_pass_seconds,
            analysis_call_merge_seconds,
            http_requests,
            http_request_duration,
            auth_failures,
            authz_denials,
            presence_commits,
            identity_alerts,
            approvals,
            tls_session_tickets,
            jwks,
            oidc_token_cache,
            certificates_issued,
            agent_certificate_expiry,
            blob_upload_bytes,
            blob_uploads,
            blob_uploads_refused,
            http,
        }
    }

    /// Publishes the HTTP server's connection counters (accepted, refused at the cap, open).
    pub fn attach_http_stats(&self, stats: Arc<gait_runtime::http::Stats>) {
        let _ = self.http.set(stats);
    }

    /// Counts one HTTP request answered with `status` after `elapsed`.
    pub fn observe_request(
        &self,
        route: String,
        method: &http::Method,
        status: u16,
        elapsed: Duration,
    ) {
        let method = method_label(method);
        self.http_request_duration
            .get_or_create(&RouteLabels {
                route: route.clone(),
                method,
            })
            .observe(elapsed.as_secs_f64());
        self.http_requests
            .get_or_create(&RequestLabels {
                route,
                method,
                status,
            })
            .inc();
    }

    /// Every series as OpenMetrics text (serve it through [`gait_runtime::metrics::negotiate`]).
    pub fn render_openmetrics(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; an encoder error would be a bug in a metric, shown as a short body.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "metrics encoding failed");
        }
        out
    }

    /// Every series in the Prometheus text format 0.0.4 (what `promtool check metrics` reads).
    pub fn render(&self) -> String {
        gait_runtime::metrics::to_text_format(&self.render_openmetrics())
    }
}

/// Counts one `key = value` of a labelled counter (`records_refused`, `connections_refused`, …).
pub fn inc_labelled(family: &Family<Label, Counter>, key: &'static str, value: &'static str) {
    family.get_or_create(&[(key, value)]).inc();
}

/// A method as a bounded label value.
fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::PATCH => "PATCH",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// The HTTP server's connection counters, read at each scrape (0 before the server runs).
#[derive(Debug)]
struct HttpStats(Arc<OnceLock<Arc<gait_runtime::http::Stats>>>);

impl Collector for HttpStats {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let s = self.0.get();
        for (name, help, value) in [
            (
                HTTP_CONNECTIONS_ACCEPTED,
                "HTTP API connections admitted.",
                s.map_or(0, |s| s.accepted()),
            ),
            (
                HTTP_CONNECTIONS_REFUSED,
                "HTTP API connections closed at once because http.max_connections were open, each with a request in flight.",
                s.map_or(0, |s| s.refused()),
            ),
            (
                HTTP_CONNECTIONS_EVICTED,
                "Idle HTTP API connections closed to admit a new one at http.max_connections.",
                s.map_or(0, |s| s.evicted()),
            ),
            (
                HTTP_TLS_HANDSHAKE_FAILURES,
                "HTTPS API connections closed because the TLS handshake failed or did not finish within http.header_timeout_ms.",
                s.map_or(0, |s| s.handshake_failures()),
            ),
        ] {
            let c = ConstCounter::new(value);
            c.encode(encoder.encode_descriptor(family(name), help, None, c.metric_type())?)?;
        }
        let open = ConstGauge::new(s.map_or(0, |s| i64::try_from(s.open()).unwrap_or(i64::MAX)));
        open.encode(encoder.encode_descriptor(
            HTTP_CONNECTIONS_OPEN,
            "HTTP API connections open now.",
            None,
            open.metric_type(),
        )?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_lists_every_metric_with_type_and_current_value() {
        let m = Metrics::new();
        m.records_inserted.inc_by(3);
        inc_labelled(&m.connections_refused, "stage", "revoked");
        inc_labelled(&m.connections_refused, "stage", "revoked");
        m.connections_open.inc_by(5);
        m.connections_open.dec();
        let text = m.render();
        assert!(text.contains("# TYPE gait_aggregator_records_inserted_total counter"));
        assert!(text.contains("\ngait_aggregator_records_inserted_total 3\n"));
        assert!(text.contains("gait_aggregator_connections_refused_total{stage=\"revoked\"} 2"));
        assert!(text.contains("\ngait_aggregator_connections_open 4\n"));
        assert!(text.contains("\ngait_aggregator_bundles_published_total 0\n"));
        assert!(text.contains("\ngait_aggregator_http_connections_open 0\n"));
        assert!(text.contains(&format!(
            "gait_aggregator_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )));
        assert!(!text.contains("# EOF"));
        assert!(
            !text.contains(".."),
            "a help text ends in two periods:\n{text}"
        );
        #[cfg(target_os = "linux")]
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_start_time_seconds",
        ] {
            assert!(text.contains(&format!("\n{name} ")), "{name} missing");
        }
    }

    #[test]
    fn labelled_series_are_present_at_zero_before_any_event() {
        let text = Metrics::new().render();
        for code in gait_wire::RefusalCode::ALL {
            let s = format!(
                "gait_aggregator_records_refused_total{{code=\"{}\"}} 0\n",
                code.as_str()
            );
            assert!(text.contains(&s), "{s} missing:\n{text}");
        }
        for (name, key, values) in [
            (CONNECTIONS_REFUSED, "stage", &REFUSAL_STAGES[..]),
            (AUTH_FAILURES, "reason", &AUTH_FAILURE_REASONS[..]),
            (TLS_SESSION_TICKETS, "outcome", &TICKET_OUTCOMES[..]),
            (OIDC_TOKEN_CACHE_LOOKUPS, "result", &["hit", "miss"][..]),
            (
                IDENTITY_ALERTS,
                "kind",
                &["duplicate_instance", "instance_behind"][..],
            ),
        ] {
            for v in values {
                let s = format!("{name}{{{key}=\"{v}\"}} 0\n");
                assert!(text.contains(&s), "{s} missing:\n{text}");
            }
        }
        assert!(text.contains("# TYPE gait_aggregator_batch_commit_duration_seconds histogram"));
        assert!(text.contains("\ngait_aggregator_batch_commit_duration_seconds_count 0\n"));
    }

    #[test]
    fn a_request_is_counted_under_its_route_method_and_status() {
        let m = Metrics::new();
        m.observe_request(
            "/v1/orgs/{org}".to_owned(),
            &http::Method::GET,
            404,
            Duration::from_millis(3),
        );
        let text = m.render();
        assert!(
            text.contains("gait_aggregator_http_requests_total{route=\"/v1/orgs/{org}\",method=\"GET\",status=\"404\"} 1\n"),
            "{text}"
        );
        assert!(text.contains(
            "gait_aggregator_http_request_duration_seconds_count{route=\"/v1/orgs/{org}\",method=\"GET\"} 1\n"
        ));
    }
}
