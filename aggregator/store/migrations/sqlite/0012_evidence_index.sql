-- The evidence index (issue 15 item 10): one row per committed decision record (`gate.decision`) and artifact
-- record (`artifact.*`) whose payload parsed, written in the transaction that commits the record, so a record
-- is indexed exactly when it is committed. Records whose payload does not parse are committed and not indexed.
--
-- evidence_index: the record's tenancy and stream position (unique, like records), when it arrived, and the
-- fields queries filter on. `class` is 'decision' or 'artifact'; decision columns are NULL on artifact rows
-- and the other way round, except verdict and policy_digest, which an artifact row carries from its trace
-- projection. `run_ids` is the artifact's run ids as a JSON array (display); evidence_run_ids is its lookup.
-- Listings are newest first by id (the order of indexing), keyset-paginated on id; a time window
-- (received_unix_ms) filters within that walk, so it has no index of its own (ids grow with receipt time).
CREATE TABLE evidence_index (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    org                 TEXT    NOT NULL,
    project             TEXT    NOT NULL,
    env                 TEXT    NOT NULL,
    agent_id            TEXT    NOT NULL,
    seq                 INTEGER NOT NULL,
    class               TEXT    NOT NULL CHECK (class IN ('decision', 'artifact')),
    kind                TEXT    NOT NULL,
    received_unix_ms    INTEGER NOT NULL,
    created_unix_ms     INTEGER NOT NULL,
    verdict             TEXT,
    policy_verdict      TEXT,
    policy_digest       TEXT,
    policy_name         TEXT,
    intent_digest       TEXT,
    trace_id            TEXT,
    tool_name           TEXT,
    stage               TEXT,
    candidate_digest    TEXT,
    would_have_blocked  INTEGER CHECK (would_have_blocked IN (0, 1)),
    artifact_kind       TEXT,
    sha256              TEXT,
    size_bytes          INTEGER,
    file_name           TEXT,
    producer_version    TEXT,
    signature_status    TEXT,
    regress_status      TEXT,
    run_ids             TEXT,
    UNIQUE (org, project, env, agent_id, seq)
) STRICT;
CREATE INDEX evidence_index_by_org ON evidence_index (org, class, id);
CREATE INDEX evidence_index_by_env ON evidence_index (org, project, env, class, id);
CREATE INDEX evidence_index_by_policy ON evidence_index (org, policy_digest, id);
-- Only artifact rows carry a digest: the index holds those alone (decisions are the bulk of the rows).
CREATE INDEX evidence_index_by_sha256 ON evidence_index (org, sha256, id) WHERE sha256 IS NOT NULL;

-- evidence_run_ids: one row per run id of an indexed artifact record.
CREATE TABLE evidence_run_ids (
    org         TEXT    NOT NULL,
    project     TEXT    NOT NULL,
    env         TEXT    NOT NULL,
    agent_id    TEXT    NOT NULL,
    seq         INTEGER NOT NULL,
    run_id      TEXT    NOT NULL,
    PRIMARY KEY (org, project, env, agent_id, seq, run_id)
) STRICT;
CREATE INDEX evidence_run_ids_by_run ON evidence_run_ids (org, run_id);
