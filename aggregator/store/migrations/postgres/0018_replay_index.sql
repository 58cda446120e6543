-- Replay and rollout health (issue 13): what the evidence index keeps of a decision record beyond 0012.
--
-- active_verdict / candidate_verdict: the record's stage report (the policy a candidate would replace, and the
-- candidate); reason_codes: the enforced decision's reason codes and candidate_reason_codes the candidate's,
-- each a JSON array of strings (NULL when empty); candidate_error: a staged candidate that could not be used or
-- evaluated (1), else NULL or 0; captured: the record carries its normalized intent (capture mode raw), so
-- replay reads it as part of the org's corpus. Rows indexed before this migration read as not captured and
-- without these fields.
ALTER TABLE evidence_index ADD COLUMN active_verdict TEXT;
ALTER TABLE evidence_index ADD COLUMN candidate_verdict TEXT;
ALTER TABLE evidence_index ADD COLUMN reason_codes TEXT;
ALTER TABLE evidence_index ADD COLUMN candidate_reason_codes TEXT;
ALTER TABLE evidence_index ADD COLUMN candidate_error BIGINT CHECK (candidate_error IN (0, 1));
ALTER TABLE evidence_index ADD COLUMN captured BIGINT NOT NULL DEFAULT 0 CHECK (captured IN (0, 1));
-- Rollout health: one candidate's decisions of one environment in a receipt-time window.
CREATE INDEX evidence_index_by_candidate ON evidence_index (org, project, env, candidate_digest, received_unix_ms)
    WHERE candidate_digest IS NOT NULL;
-- Replay: the org's captured decisions in index order (the corpus walk and its until_id pin).
CREATE INDEX evidence_index_captured ON evidence_index (org, id) WHERE captured = 1;
