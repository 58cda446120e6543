-- Call-level gate coverage (issue 12): a runpack's call went through a gate when a decision in its environment
-- has the call's arguments digest. evidence_index gains, on decision rows, the arguments digest of the signed
-- trace the record carries (Gait's `args_digest`, 64 hex). Decisions indexed before this migration have none:
-- they match no call.
ALTER TABLE evidence_index ADD COLUMN args_digest TEXT;
CREATE INDEX evidence_index_by_args ON evidence_index (org, project, env, args_digest)
    WHERE args_digest IS NOT NULL;
