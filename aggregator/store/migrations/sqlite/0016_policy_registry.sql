-- Policy registry (issue 13 items 1-2): immutable Gait policy versions per org, identified by the Gait policy
-- digest (over the normalized form), and each environment's pin history. A version row is never updated or
-- deleted; re-uploading the same content finds the existing row. A pin row records which version an
-- environment enforces, the bundle epoch that carried it, and whether it is a known-good target for rollback.
CREATE TABLE policy_versions (
    org              TEXT    NOT NULL,
    digest           TEXT    NOT NULL,
    name             TEXT    NOT NULL,
    yaml             BLOB    NOT NULL,
    sha256           TEXT    NOT NULL,
    size             INTEGER NOT NULL,
    author           TEXT    NOT NULL,
    message          TEXT    NOT NULL,
    parent_digest    TEXT,
    rule_count       INTEGER NOT NULL,
    default_verdict  TEXT    NOT NULL,
    created_unix_ms  INTEGER NOT NULL,
    PRIMARY KEY (org, digest)
) STRICT;

CREATE INDEX policy_versions_by_time ON policy_versions (org, created_unix_ms, digest);

CREATE TABLE env_pins (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    org              TEXT    NOT NULL,
    project          TEXT    NOT NULL,
    env              TEXT    NOT NULL,
    digest           TEXT    NOT NULL,
    kind             TEXT    NOT NULL CHECK (kind IN ('pin', 'rollback', 'rollout')),
    rollout_id       TEXT,
    settings_json    TEXT    NOT NULL,
    bundle_epoch     INTEGER NOT NULL,
    bundle_digest    TEXT    NOT NULL,
    known_good       INTEGER NOT NULL,
    actor            TEXT    NOT NULL,
    reason           TEXT    NOT NULL,
    created_unix_ms  INTEGER NOT NULL,
    FOREIGN KEY (org, digest) REFERENCES policy_versions (org, digest)
) STRICT;

CREATE INDEX env_pins_by_env ON env_pins (org, project, env, id);
