//! The CLI-level gate steps that can be pure (contract §3.4 post-processing, §6, §9): rate-limit and
//! destructive-budget counting over a state value, delegation and approval token outcomes, broker credential,
//! simulate mode, and the gate / policy-test result documents with their exit codes.

mod post;
mod rate_limit;
mod result;

pub use post::{
    ApprovalReport, BrokerStatus, DelegationReport, GateDecision, SimulateReport, TokenCheck,
    apply_approvals, apply_broker, apply_delegation, apply_destructive_budget, apply_rate_limit,
    apply_simulate,
};
pub use rate_limit::{
    MAX_RATE_LIMIT_STATE_BYTES, RATE_LIMIT_STATE_SCHEMA_ID, RATE_LIMIT_STATE_SCHEMA_VERSION,
    RateLimitDecision, RateLimitError, RateLimitState,
};
pub use result::{
    DEFAULT_PRODUCER_VERSION, GATE_RESULT_SCHEMA_ID, GateResult, POLICY_TEST_SCHEMA_ID,
    PolicyTestOutput, PolicyTestResult, RESULT_SCHEMA_VERSION, policy_test_normalized,
    result_created_at, run_policy_test,
};
