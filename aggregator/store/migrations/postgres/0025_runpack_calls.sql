-- The tool calls of indexed runpacks, by digests only (issue 12 coverage): which tools agents actually called,
-- to compare with the tools that went through a gate. One row per call of a runpack record (its agent stream
-- position and the call's place in intents.jsonl), at most 1,000 per runpack (the agent counts the rest).
CREATE TABLE runpack_calls (
    org              TEXT COLLATE "C"  NOT NULL,
    project          TEXT COLLATE "C"  NOT NULL,
    env              TEXT COLLATE "C"  NOT NULL,
    agent_id         TEXT COLLATE "C"  NOT NULL,
    seq              BIGINT            NOT NULL,
    call_index       BIGINT            NOT NULL CHECK (call_index >= 0),
    tool_name        TEXT COLLATE "C"  NOT NULL,
    args_digest      TEXT COLLATE "C"  NOT NULL,
    result_digest    TEXT COLLATE "C",
    created_unix_ms  BIGINT            NOT NULL,
    PRIMARY KEY (org, project, env, agent_id, seq, call_index)
);
CREATE INDEX runpack_calls_by_time ON runpack_calls (org, project, env, created_unix_ms);
