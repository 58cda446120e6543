-- The tamper-evident audit log (issue 11): an append-only RFC 6962 Merkle log of privileged operations.
-- `audit_entries` holds each entry's canonical bytes (the leaf data, exactly one line of an export), its leaf
-- hash (the level-0 subtree) and the tenancy of its target (NULL where it has none) for scoped reads;
-- `audit_nodes` the hash of every larger complete aligned subtree (level >= 1, index), written once when its
-- last leaf is appended, so proofs read O(log n) rows;
-- `audit_head` the one row that serialises appends: the size, the right edge of the tree (its complete
-- subtrees' hashes, largest first) and the last leaf hash; `audit_checkpoints` the signed checkpoints.
CREATE TABLE audit_head (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    size        INTEGER NOT NULL CHECK (size >= 0),
    frontier    BLOB    NOT NULL,
    last_leaf   BLOB    CHECK (last_leaf IS NULL OR length(last_leaf) = 32)
);
INSERT INTO audit_head (id, size, frontier, last_leaf) VALUES (1, 0, x'', NULL);

CREATE TABLE audit_entries (
    seq             INTEGER PRIMARY KEY CHECK (seq >= 0),
    org             TEXT,
    project         TEXT,
    env             TEXT,
    actor           TEXT    NOT NULL,
    action          TEXT    NOT NULL,
    time_unix_ms    INTEGER NOT NULL,
    leaf            BLOB    NOT NULL,
    leaf_hash       BLOB    NOT NULL CHECK (length(leaf_hash) = 32)
);
CREATE INDEX audit_entries_by_tenant ON audit_entries (org, project, env, seq);

CREATE TABLE audit_nodes (
    level   INTEGER NOT NULL CHECK (level >= 1 AND level < 64),
    idx     INTEGER NOT NULL CHECK (idx >= 0),
    hash    BLOB    NOT NULL CHECK (length(hash) = 32),
    PRIMARY KEY (level, idx)
) WITHOUT ROWID;

CREATE TABLE audit_checkpoints (
    size            INTEGER PRIMARY KEY CHECK (size >= 0),
    root            BLOB    NOT NULL CHECK (length(root) = 32),
    note            TEXT    NOT NULL,
    signed_unix_ms  INTEGER NOT NULL
);
