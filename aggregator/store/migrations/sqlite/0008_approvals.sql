-- Approval governance (issue 11): approval policies, the requests agents raise upstream when a Gait verdict is
-- require_approval, and each approver's decision. Every row is tenancy-scoped.
--
-- approval_policies: one row per version of a named policy at a scope (an org, a project of it, or one
-- environment; project and env are '' when the policy covers the whole org or project). Versions are never
-- changed or deleted, so a request can name the version it was judged under. `spec` is the policy as JSON
-- (what it matches and its rules; the aggregator's approval feature reads it) and `digest` its SHA-256.
CREATE TABLE approval_policies (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    org                 TEXT    NOT NULL CHECK (org <> ''),
    project             TEXT    NOT NULL,
    env                 TEXT    NOT NULL,
    name                TEXT    NOT NULL CHECK (length(name) > 0),
    version             INTEGER NOT NULL CHECK (version > 0),
    spec                TEXT    NOT NULL,
    digest              TEXT    NOT NULL,
    created_by          TEXT    NOT NULL,
    created_unix_ms     INTEGER NOT NULL,
    CHECK (env = '' OR project <> ''),
    UNIQUE (org, project, env, name, version)
) STRICT;

-- approval_requests: one per approval.request record of an agent (unique on the agent's stream position, so a
-- redelivered record raises nothing twice). The tenancy is the agent's (from its certificate). `state` moves
-- once, from 'pending' to 'approved' or 'denied'; expiry is judged against expires_unix_ms when read. `tokens`
-- holds the issued Gait approval tokens (a JSON array of documents) once approved.
CREATE TABLE approval_requests (
    id                      INTEGER PRIMARY KEY AUTOINCREMENT,
    org                     TEXT    NOT NULL,
    project                 TEXT    NOT NULL,
    env                     TEXT    NOT NULL,
    agent_id                TEXT    NOT NULL,
    seq                     INTEGER NOT NULL,
    tool                    TEXT    NOT NULL,
    phase                   TEXT    NOT NULL,
    destructive             INTEGER NOT NULL CHECK (destructive IN (0, 1)),
    scope                   TEXT    NOT NULL,
    intent_digest           TEXT    NOT NULL,
    policy_digest           TEXT    NOT NULL,
    requested_by            TEXT    NOT NULL,
    trace_id                TEXT    NOT NULL,
    created_unix_ms         INTEGER NOT NULL,
    received_unix_ms        INTEGER NOT NULL,
    expires_unix_ms         INTEGER NOT NULL,
    approval_policy_id      INTEGER REFERENCES approval_policies (id),
    state                   TEXT    NOT NULL CHECK (state IN ('pending', 'approved', 'denied')),
    updated_unix_ms         INTEGER NOT NULL,
    tokens                  TEXT    NOT NULL DEFAULT '',
    token_expires_unix_ms   INTEGER,
    UNIQUE (org, project, env, agent_id, seq)
) STRICT;

CREATE INDEX approval_requests_by_tenant ON approval_requests (org, project, env, state, id);
CREATE INDEX approval_requests_by_agent ON approval_requests (org, project, env, agent_id, state);

-- approval_decisions: each approver's approve or deny of one request; one per actor and request, so a second
-- approval by the same person counts once. `groups` are the approver's IdP groups at decision time (a JSON
-- array), which the AND-composition of groups is judged on.
CREATE TABLE approval_decisions (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id          INTEGER NOT NULL REFERENCES approval_requests (id),
    org                 TEXT    NOT NULL,
    project             TEXT    NOT NULL,
    env                 TEXT    NOT NULL,
    actor               TEXT    NOT NULL,
    groups              TEXT    NOT NULL,
    decision            TEXT    NOT NULL CHECK (decision IN ('approve', 'deny')),
    reason              TEXT    NOT NULL,
    created_unix_ms     INTEGER NOT NULL,
    UNIQUE (request_id, actor)
) STRICT;
