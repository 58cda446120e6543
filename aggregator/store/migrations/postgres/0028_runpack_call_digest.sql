-- The coverage read (issue 12) joined each runpack call to its evidence row for the runpack's digest and counted
-- distinct runpacks per tool: one index search and one distinct-set entry per call, most of a posture read's
-- time once an org has tens of thousands of calls. Each call now carries its runpack's digest and whether it is
-- the first call of its tool in that runpack (so a sum counts the runpacks that called a tool), and the time index
-- covers the read, so it scans one index and touches no table.
ALTER TABLE runpack_calls ADD COLUMN runpack_sha256 TEXT COLLATE "C";
ALTER TABLE runpack_calls ADD COLUMN first_of_tool INTEGER NOT NULL DEFAULT 0 CHECK (first_of_tool IN (0, 1));
UPDATE runpack_calls SET runpack_sha256 = (
    SELECT e.sha256 FROM evidence_index e
    WHERE e.org = runpack_calls.org AND e.project = runpack_calls.project AND e.env = runpack_calls.env
      AND e.agent_id = runpack_calls.agent_id AND e.seq = runpack_calls.seq
);
UPDATE runpack_calls SET first_of_tool = 1 WHERE call_index = (
    SELECT MIN(c.call_index) FROM runpack_calls c
    WHERE c.org = runpack_calls.org AND c.project = runpack_calls.project AND c.env = runpack_calls.env
      AND c.agent_id = runpack_calls.agent_id AND c.seq = runpack_calls.seq AND c.tool_name = runpack_calls.tool_name
);
DROP INDEX runpack_calls_by_time;
CREATE INDEX runpack_calls_by_time ON runpack_calls
    (org, project, env, created_unix_ms, tool_name, gated, first_of_tool, runpack_sha256);
