-- Call-level coverage's set of gated calls as sorted runs (issue 12; `aggregator/store/src/gated.rs`).
--
-- gated_args kept one row per (environment, arguments digest, tool) in one B-tree over every key ever merged: a
-- merge sorted its range's keys in the database and inserted them across the whole tree, so its cost grew with
-- the history (docs/benchmarks.md, stops 36-38). A merge now writes its range's keys, sorted in process, as one
-- new run per environment: chunks of up to 128 sixteen-byte keys (2 KiB), one row each, keyed by the chunk's
-- first key. Runs of one level are merged into one of the next level four at a time.
--
-- The new key binds the tool into the 16 bytes (the digest's first 16 bytes XOR a hash of the tool), which the
-- old rows cannot be converted to (they kept the digest's prefix only). The set is derived state: the merge
-- cursor starts again from the first id, so the upkeep rebuilds it from the decisions' digests, a million rows
-- per merge. Calls already marked gated stay gated (the mark never goes back, and what set it still holds).
DROP TABLE gated_args;

-- One row per run: its level (0 for a merge's own run) and id (the merge's last evidence id), and its keys.
CREATE TABLE gated_runs (
    org      TEXT COLLATE "C" NOT NULL,
    project  TEXT COLLATE "C" NOT NULL,
    env      TEXT COLLATE "C" NOT NULL,
    level    BIGINT  NOT NULL CHECK (level >= 0),
    run      BIGINT  NOT NULL,
    keys     BIGINT  NOT NULL CHECK (keys > 0),
    PRIMARY KEY (org, project, env, level, run)
);

-- The run's keys, sorted and distinct, in chunks that do not overlap.
CREATE TABLE gated_chunks (
    org        TEXT COLLATE "C" NOT NULL,
    project    TEXT COLLATE "C" NOT NULL,
    env        TEXT COLLATE "C" NOT NULL,
    level      BIGINT  NOT NULL,
    run        BIGINT  NOT NULL,
    first_key  BYTEA   NOT NULL CHECK (length(first_key) = 16),
    keys       BYTEA   NOT NULL CHECK (length(keys) > 0 AND length(keys) % 16 = 0),
    PRIMARY KEY (org, project, env, level, run, first_key)
);

UPDATE analysis_cursors SET last_id = 0 WHERE name = 'analysis-calls';

-- A chunk (2 KiB of random bytes) neither compresses nor needs TOAST: keep it in the row.
ALTER TABLE gated_chunks ALTER COLUMN keys SET STORAGE PLAIN;
