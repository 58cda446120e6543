-- Conformance to an org's required baseline (issue 13 item 6): at most one baseline per org, a minimum policy
-- version (a registry digest; versions descending from it through `parent_digest` conform too) and/or rule names
-- every policy in force must carry. Its history is the audit log (`policy.baseline_set` / `policy.baseline_clear`,
-- in the same transaction as the change). The bundle index lets an agent's reported `active_bundle_digest` be
-- resolved to its bundle without scanning the environment's epochs.
CREATE TABLE conformance_baselines (
    org                  TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    min_digest           TEXT COLLATE "C",
    required_rules_json  TEXT   NOT NULL,
    set_by               TEXT   NOT NULL,
    set_unix_ms          BIGINT NOT NULL,
    FOREIGN KEY (org, min_digest) REFERENCES policy_versions (org, digest)
);

CREATE INDEX bundles_by_digest ON bundles (org, project, env, digest);
