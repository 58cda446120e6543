-- The coverage read (issue 12) joined each runpack call to its evidence row for the runpack's digest: one index
-- search per call, most of a posture read's time once an org has tens of thousands of calls. Each call now
-- carries its runpack's digest, and the time index covers the read (tool, gated, digest and the runpack's stream
-- position), so the read scans one index and touches no table.
ALTER TABLE runpack_calls ADD COLUMN runpack_sha256 TEXT;
UPDATE runpack_calls SET runpack_sha256 = (
    SELECT e.sha256 FROM evidence_index e
    WHERE e.org = runpack_calls.org AND e.project = runpack_calls.project AND e.env = runpack_calls.env
      AND e.agent_id = runpack_calls.agent_id AND e.seq = runpack_calls.seq
);
DROP INDEX runpack_calls_by_time;
CREATE INDEX runpack_calls_by_time ON runpack_calls
    (org, project, env, created_unix_ms, tool_name, gated, runpack_sha256, agent_id, seq);
