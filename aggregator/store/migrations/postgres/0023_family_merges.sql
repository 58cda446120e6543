-- Manual merges of incident families (issue 12): an operator's overlay on the fingerprint's grouping. A merged
-- family reads as part of the family it was merged into (occurrences, agents, environments, priority); its own
-- rows are never rewritten, so removing the merge (a split) gives the family back exactly as it was. Each merge
-- and split is an audit log entry; this table holds the merges in force.
CREATE TABLE incident_family_merges (
    org             TEXT COLLATE "C"  NOT NULL,
    family          TEXT COLLATE "C"  NOT NULL CHECK (length(family) = 64),
    into_family     TEXT COLLATE "C"  NOT NULL CHECK (length(into_family) = 64),
    reason          TEXT              NOT NULL,
    merged_by       TEXT              NOT NULL,
    merged_unix_ms  BIGINT            NOT NULL,
    PRIMARY KEY (org, family),
    CHECK (family <> into_family)
);
CREATE INDEX incident_family_merges_by_into ON incident_family_merges (org, into_family);
