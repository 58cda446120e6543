-- Call-level gate coverage (issue 12): a runpack's call went through a gate when a decision in its environment
-- has the call's arguments digest (Gait's `args_digest`, 64 hex, on every runpack intent and every gate trace).
--
-- evidence_index gains, on decision rows, the arguments digest of the signed trace the record carries. It has no
-- index of its own: one keyed on a digest puts every decision at a random place in a large B-tree, and that
-- halved ingest (ADR 0007). Instead the upkeep's call merge (cursor `analysis-calls`) copies the digests of the
-- decisions it has folded into gated_args in large sorted batches, then marks the runpack calls they match.
-- Decisions indexed before this migration have no digest and match no call.
ALTER TABLE evidence_index ADD COLUMN args_digest TEXT;

-- gated_args: each (arguments digest, tool) some decision of an environment carried (a set: one row however
-- many). Gait's args_digest covers the arguments only, so the tool is part of the match: a gate on `tool.list {}`
-- says nothing of `db.drop_all {}`. The digest is kept as its first 16 bytes (128 bits: no accidental match; a
-- deliberate pair of colliding argument sets costs about 2^64 work). Binary keys sort about twice as fast as
-- their hex, and a merge is mostly that sort; the key leads, so a merge sorted by it fills the set in order.
CREATE TABLE gated_args (
    org          TEXT NOT NULL,
    project      TEXT NOT NULL,
    env          TEXT NOT NULL,
    args_key     BLOB NOT NULL CHECK (length(args_key) = 16),
    tool_name    TEXT NOT NULL,
    PRIMARY KEY (org, project, env, args_key, tool_name)
) STRICT, WITHOUT ROWID;

-- runpack_calls.gated: 1 once a merged decision of the call's environment carried its arguments digest and tool
-- (it never goes back). A merge checks the calls of the runpacks in its own range against the whole set, and the
-- ungated calls of earlier runpacks against the decisions in its range (through runpack_calls_ungated), so a
-- call pushed before or after its decision is matched either way, and a merge's work follows its range, not
-- the history.
ALTER TABLE runpack_calls ADD COLUMN gated INTEGER NOT NULL DEFAULT 0 CHECK (gated IN (0, 1));
CREATE INDEX runpack_calls_ungated ON runpack_calls (org, project, env, args_digest) WHERE gated = 0;

-- Rows folded before now carry no digest: the merge starts where the fold stands.
INSERT INTO analysis_cursors (name, last_id, updated_unix_ms)
SELECT 'analysis-calls', last_id, updated_unix_ms FROM analysis_cursors WHERE name = 'analysis-upkeep';
