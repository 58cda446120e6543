-- Staged rollouts (issue 13 item 3): a rollout moves one candidate registry version through steps (observe ->
-- dry_run -> enforce, each for a cohort and a bake time) over target environments, gated by health figures.
-- `version` is a compare-and-set fence: every transition (controller or human) updates `WHERE version = $old`,
-- so a stale controller and an operator never both win. Bake times run from the persisted
-- `step_started_unix_ms`, so a restarted controller resumes the same step.
CREATE TABLE rollouts (
    org                   TEXT COLLATE "C"    NOT NULL,
    id                    TEXT COLLATE "C"    NOT NULL,
    candidate_digest      TEXT COLLATE "C"    NOT NULL,
    plan_json             TEXT    NOT NULL,
    state                 TEXT    NOT NULL CHECK (state IN ('progressing', 'paused', 'completed', 'rolled_back', 'aborted')),
    step                  BIGINT NOT NULL CHECK (step >= 0),
    attempt               BIGINT NOT NULL CHECK (attempt >= 1),
    version               BIGINT NOT NULL,
    reason                TEXT    NOT NULL,
    step_published        BIGINT NOT NULL,
    step_started_unix_ms  BIGINT NOT NULL,
    created_by            TEXT    NOT NULL,
    created_unix_ms       BIGINT NOT NULL,
    updated_unix_ms       BIGINT NOT NULL,
    PRIMARY KEY (org, id)
);

CREATE INDEX rollouts_by_state ON rollouts (state, org, id);

-- One row per target environment; `step`/`attempt`/`bundle_*` name the last bundle the rollout published there
-- (NULL before its first), written in the bundle's own transaction.
CREATE TABLE rollout_targets (
    org              TEXT COLLATE "C"    NOT NULL,
    rollout_id       TEXT COLLATE "C"    NOT NULL,
    project          TEXT COLLATE "C"    NOT NULL,
    env              TEXT COLLATE "C"    NOT NULL,
    baseline_digest  TEXT COLLATE "C"    NOT NULL,
    step             BIGINT,
    attempt          BIGINT,
    bundle_epoch     BIGINT,
    bundle_digest    TEXT COLLATE "C",
    PRIMARY KEY (org, rollout_id, project, env),
    FOREIGN KEY (org, rollout_id) REFERENCES rollouts (org, id)
);

CREATE INDEX rollout_targets_by_env ON rollout_targets (org, project, env);

-- The timeline: every transition, with why it happened and the gate figures behind it.
CREATE TABLE rollout_events (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    org          TEXT COLLATE "C"    NOT NULL,
    rollout_id   TEXT COLLATE "C"    NOT NULL,
    at_unix_ms   BIGINT NOT NULL,
    kind         TEXT    NOT NULL,
    from_state   TEXT    NOT NULL,
    to_state     TEXT    NOT NULL,
    step         BIGINT NOT NULL,
    attempt      BIGINT NOT NULL,
    reason       TEXT    NOT NULL,
    gates_json   TEXT,
    actor        TEXT    NOT NULL
);

CREATE INDEX rollout_events_by_rollout ON rollout_events (org, rollout_id, id);

-- The audience of a bundle published for a cohort: only agents in it are offered that epoch.
CREATE TABLE bundle_audiences (
    org          TEXT COLLATE "C"    NOT NULL,
    project      TEXT COLLATE "C"    NOT NULL,
    env          TEXT COLLATE "C"    NOT NULL,
    epoch        BIGINT NOT NULL,
    rollout_id   TEXT COLLATE "C"    NOT NULL,
    labels_json  TEXT    NOT NULL,
    percent_bp   BIGINT NOT NULL CHECK (percent_bp BETWEEN 0 AND 10000),
    PRIMARY KEY (org, project, env, epoch)
);

-- Labels operators give agents, for rollout cohorts (`--labels ring=canary`).
CREATE TABLE agent_labels (
    org          TEXT COLLATE "C"    NOT NULL,
    project      TEXT COLLATE "C"    NOT NULL,
    env          TEXT COLLATE "C"    NOT NULL,
    agent_id     TEXT COLLATE "C"    NOT NULL,
    labels_json  TEXT    NOT NULL,
    updated_unix_ms BIGINT NOT NULL,
    PRIMARY KEY (org, project, env, agent_id)
);
