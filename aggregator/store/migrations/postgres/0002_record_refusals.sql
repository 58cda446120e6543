-- Seqs the aggregator refused for good (gait_wire::RefusalCode, permanent): the agent quarantines such a record
-- and ships the ones after it, so its seq never arrives. commit_batch does not record a refused seq as a
-- `missing` gap (nothing was lost; the agent declared it), so an auditor tells "refused" from "lost" here.
-- One row per (agent, seq); a second refusal of the same seq keeps the latest code and message.
CREATE TABLE record_refusals (
    org                 TEXT COLLATE "C" NOT NULL,
    project             TEXT COLLATE "C" NOT NULL,
    env                 TEXT COLLATE "C" NOT NULL,
    agent_id            TEXT COLLATE "C" NOT NULL,
    seq                 BIGINT NOT NULL CHECK (seq > 0),
    code                TEXT   NOT NULL,
    message             TEXT   NOT NULL,
    refused_unix_ms     BIGINT NOT NULL,
    PRIMARY KEY (org, project, env, agent_id, seq),
    FOREIGN KEY (org, project, env, agent_id) REFERENCES agents (org, project, env, agent_id)
);
