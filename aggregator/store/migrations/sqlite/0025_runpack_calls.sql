-- The tool calls of indexed runpacks, by digests only (issue 12 coverage): which tools agents actually called,
-- to compare with the tools that went through a gate. One row per call of a runpack record (its agent stream
-- position and the call's place in intents.jsonl), at most 1,000 per runpack (the agent counts the rest).
CREATE TABLE runpack_calls (
    org              TEXT    NOT NULL,
    project          TEXT    NOT NULL,
    env              TEXT    NOT NULL,
    agent_id         TEXT    NOT NULL,
    seq              INTEGER NOT NULL,
    call_index       INTEGER NOT NULL CHECK (call_index >= 0),
    tool_name        TEXT    NOT NULL,
    args_digest      TEXT    NOT NULL,
    result_digest    TEXT,
    created_unix_ms  INTEGER NOT NULL,
    PRIMARY KEY (org, project, env, agent_id, seq, call_index)
) STRICT;
CREATE INDEX runpack_calls_by_time ON runpack_calls (org, project, env, created_unix_ms);
