-- Trace keys known centrally (issue 15 item 4): each Ed25519 key an agent signs Gait traces with, registered
-- from its `agent.trace_key` record and bound to the verified certificate that delivered it (tenancy, agent id,
-- certificate serial from the connection, never from the payload). A rotation adds a row naming the key it
-- replaces; rows are never replaced, so traces signed with an older key still verify from an export.
CREATE TABLE agent_trace_keys (
    org                 TEXT COLLATE "C" NOT NULL,
    project             TEXT COLLATE "C" NOT NULL,
    env                 TEXT COLLATE "C" NOT NULL,
    agent_id            TEXT COLLATE "C" NOT NULL,
    key_id              TEXT COLLATE "C" NOT NULL,
    public_key          TEXT   NOT NULL,
    replaces            TEXT   NOT NULL,
    cert_serial         TEXT   NOT NULL,
    record_seq          BIGINT NOT NULL,
    since_unix_ms       BIGINT NOT NULL,
    registered_unix_ms  BIGINT NOT NULL,
    PRIMARY KEY (org, project, env, agent_id, key_id),
    FOREIGN KEY (org, project, env, agent_id) REFERENCES agents (org, project, env, agent_id)
);

CREATE INDEX agent_trace_keys_by_key ON agent_trace_keys (org, project, env, key_id);
