-- The tamper-evident audit log (issue 11): an append-only RFC 6962 Merkle log of privileged operations.
-- `audit_entries` holds each entry's canonical bytes (the leaf data, exactly one line of an export), its leaf
-- hash (the level-0 subtree) and the tenancy of its target (NULL where it has none) for scoped reads;
-- `audit_nodes` the hash of every larger complete aligned subtree (level >= 1, index), written once when its
-- last leaf is appended, so proofs read O(log n) rows;
-- `audit_head` the one row that serialises appends (its row lock is held until the appending transaction
-- ends): the size, the right edge of the tree (its complete subtrees' hashes, largest first) and the last leaf
-- hash; `audit_checkpoints` the signed checkpoints.
CREATE TABLE audit_head (
    id          BIGINT  PRIMARY KEY CHECK (id = 1),
    size        BIGINT  NOT NULL CHECK (size >= 0),
    frontier    BYTEA   NOT NULL,
    last_leaf   BYTEA   CHECK (last_leaf IS NULL OR octet_length(last_leaf) = 32)
);
INSERT INTO audit_head (id, size, frontier, last_leaf) VALUES (1, 0, '\x'::bytea, NULL);

CREATE TABLE audit_entries (
    seq             BIGINT PRIMARY KEY CHECK (seq >= 0),
    org             TEXT COLLATE "C",
    project         TEXT COLLATE "C",
    env             TEXT COLLATE "C",
    actor           TEXT   NOT NULL,
    action          TEXT   NOT NULL,
    time_unix_ms    BIGINT NOT NULL,
    leaf            BYTEA  NOT NULL,
    leaf_hash       BYTEA  NOT NULL CHECK (octet_length(leaf_hash) = 32)
);
CREATE INDEX audit_entries_by_tenant ON audit_entries (org, project, env, seq);

CREATE TABLE audit_nodes (
    level   BIGINT   NOT NULL CHECK (level >= 1 AND level < 64),
    idx     BIGINT   NOT NULL CHECK (idx >= 0),
    hash    BYTEA    NOT NULL CHECK (octet_length(hash) = 32),
    PRIMARY KEY (level, idx)
);

CREATE TABLE audit_checkpoints (
    size            BIGINT PRIMARY KEY CHECK (size >= 0),
    root            BYTEA  NOT NULL CHECK (octet_length(root) = 32),
    note            TEXT   NOT NULL,
    signed_unix_ms  BIGINT NOT NULL
);
