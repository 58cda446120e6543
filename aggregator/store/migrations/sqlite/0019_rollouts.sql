-- Staged rollouts (issue 13 item 3): a rollout moves one candidate registry version through steps (observe ->
-- dry_run -> enforce, each for a cohort and a bake time) over target environments, gated by health figures.
-- `version` is a compare-and-set fence: every transition (controller or human) updates `WHERE version = $old`,
-- so a stale controller and an operator never both win. Bake times run from the persisted
-- `step_started_unix_ms`, so a restarted controller resumes the same step.
CREATE TABLE rollouts (
    org                   TEXT    NOT NULL,
    id                    TEXT    NOT NULL,
    candidate_digest      TEXT    NOT NULL,
    plan_json             TEXT    NOT NULL,
    state                 TEXT    NOT NULL CHECK (state IN ('progressing', 'paused', 'completed', 'rolled_back', 'aborted')),
    step                  INTEGER NOT NULL CHECK (step >= 0),
    attempt               INTEGER NOT NULL CHECK (attempt >= 1),
    version               INTEGER NOT NULL,
    reason                TEXT    NOT NULL,
    step_published        INTEGER NOT NULL,
    step_started_unix_ms  INTEGER NOT NULL,
    created_by            TEXT    NOT NULL,
    created_unix_ms       INTEGER NOT NULL,
    updated_unix_ms       INTEGER NOT NULL,
    PRIMARY KEY (org, id)
) STRICT;

CREATE INDEX rollouts_by_state ON rollouts (state, org, id);

-- One row per target environment; `step`/`attempt`/`bundle_*` name the last bundle the rollout published there
-- (NULL before its first), written in the bundle's own transaction.
CREATE TABLE rollout_targets (
    org              TEXT    NOT NULL,
    rollout_id       TEXT    NOT NULL,
    project          TEXT    NOT NULL,
    env              TEXT    NOT NULL,
    baseline_digest  TEXT    NOT NULL,
    step             INTEGER,
    attempt          INTEGER,
    bundle_epoch     INTEGER,
    bundle_digest    TEXT,
    PRIMARY KEY (org, rollout_id, project, env),
    FOREIGN KEY (org, rollout_id) REFERENCES rollouts (org, id)
) STRICT;

CREATE INDEX rollout_targets_by_env ON rollout_targets (org, project, env);

-- The timeline: every transition, with why it happened and the gate figures behind it.
CREATE TABLE rollout_events (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    org          TEXT    NOT NULL,
    rollout_id   TEXT    NOT NULL,
    at_unix_ms   INTEGER NOT NULL,
    kind         TEXT    NOT NULL,
    from_state   TEXT    NOT NULL,
    to_state     TEXT    NOT NULL,
    step         INTEGER NOT NULL,
    attempt      INTEGER NOT NULL,
    reason       TEXT    NOT NULL,
    gates_json   TEXT,
    actor        TEXT    NOT NULL
) STRICT;

CREATE INDEX rollout_events_by_rollout ON rollout_events (org, rollout_id, id);

-- The audience of a bundle published for a cohort: only agents in it are offered that epoch.
CREATE TABLE bundle_audiences (
    org          TEXT    NOT NULL,
    project      TEXT    NOT NULL,
    env          TEXT    NOT NULL,
    epoch        INTEGER NOT NULL,
    rollout_id   TEXT    NOT NULL,
    labels_json  TEXT    NOT NULL,
    percent_bp   INTEGER NOT NULL CHECK (percent_bp BETWEEN 0 AND 10000),
    PRIMARY KEY (org, project, env, epoch)
) STRICT;

-- Labels operators give agents, for rollout cohorts (`--labels ring=canary`).
CREATE TABLE agent_labels (
    org          TEXT    NOT NULL,
    project      TEXT    NOT NULL,
    env          TEXT    NOT NULL,
    agent_id     TEXT    NOT NULL,
    labels_json  TEXT    NOT NULL,
    updated_unix_ms INTEGER NOT NULL,
    PRIMARY KEY (org, project, env, agent_id)
) STRICT;
