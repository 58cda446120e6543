-- One live instance per agent identity (issue 10). `instance_id` is the 32-hex-digit id of the agent data
-- directory that last said hello for this identity ('' before any did); `conflict_count` counts the records
-- the aggregator did not store because it already held a different record at that seq (durable, unlike a
-- process counter). `agent_alerts` holds one row per identity alert: a second live instance refused, or a new
-- instance arriving behind the committed head (a wiped or copied data directory reusing a certificate).
ALTER TABLE agents ADD COLUMN instance_id TEXT NOT NULL DEFAULT '';
ALTER TABLE agents ADD COLUMN conflict_count INTEGER NOT NULL DEFAULT 0;

CREATE TABLE agent_alerts (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    org                 TEXT    NOT NULL,
    project             TEXT    NOT NULL,
    env                 TEXT    NOT NULL,
    agent_id            TEXT    NOT NULL,
    kind                TEXT    NOT NULL,
    instance_id         TEXT    NOT NULL,
    other_instance_id   TEXT    NOT NULL,
    remote_addr         TEXT    NOT NULL,
    other_remote_addr   TEXT    NOT NULL,
    detail              TEXT    NOT NULL,
    created_unix_ms     INTEGER NOT NULL,
    FOREIGN KEY (org, project, env, agent_id) REFERENCES agents (org, project, env, agent_id)
) STRICT;

CREATE INDEX agent_alerts_by_agent ON agent_alerts (org, project, env, agent_id, id);
