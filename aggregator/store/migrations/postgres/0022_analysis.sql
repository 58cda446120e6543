-- Fleet analytics (issue 12): the decision fields incident families and posture read, and the precomputed state
-- queries read instead of scanning the evidence index.
--
-- evidence_index gains, for decision rows, the deciding rule and the intent's profile (risk class, endpoint
-- classes comma-joined in sorted order, destructive), for regress results the top failure reason, and for both
-- the incident family (fingerprint hash) computed at ingest. Rows indexed before this migration have them NULL:
-- they count in posture, and in no family.
ALTER TABLE evidence_index ADD COLUMN matched_rule TEXT;
ALTER TABLE evidence_index ADD COLUMN risk_class TEXT;
ALTER TABLE evidence_index ADD COLUMN endpoint_classes TEXT;
ALTER TABLE evidence_index ADD COLUMN destructive BIGINT  CHECK (destructive IN (0, 1));
ALTER TABLE evidence_index ADD COLUMN failure_kind TEXT;
ALTER TABLE evidence_index ADD COLUMN family TEXT COLLATE "C";

-- analysis_cursors: how far each upkeep job has folded the evidence index (the last id it counted). The job
-- moves it with a compare-and-set in the transaction that writes what it counted, so each row counts once
-- however many replicas run the job.
CREATE TABLE analysis_cursors (
    name             TEXT COLLATE "C"    NOT NULL PRIMARY KEY,
    last_id          BIGINT  NOT NULL CHECK (last_id >= 0),
    updated_unix_ms  BIGINT  NOT NULL
);

-- incident_families: one row per family of an org, keyed by its fingerprint hash; what went into the hash.
CREATE TABLE incident_families (
    org         TEXT COLLATE "C"    NOT NULL,
    family      TEXT COLLATE "C"    NOT NULL CHECK (length(family) = 64),
    version     BIGINT  NOT NULL CHECK (version > 0),
    dedup_key   TEXT COLLATE "C"    NOT NULL,
    kind        TEXT COLLATE "C"    NOT NULL,
    tool        TEXT COLLATE "C"    NOT NULL,
    verdict     TEXT COLLATE "C"    NOT NULL,
    inputs      TEXT    NOT NULL,
    PRIMARY KEY (org, family)
);

-- incident_family_scopes: a family's occurrences in one environment (what a scoped reader may see of it). All
-- columns fold with sums, minima and maxima, so any order of upkeep gives the same row. `representative` is the
-- smallest evidence digest of the family there (an intent digest for a decision, the SHA-256 of a regress
-- result): chosen by value, never by arrival. `agents` counts its rows in incident_family_agents (kept by the
-- fold that inserts them), so a listing need not count them.
CREATE TABLE incident_family_scopes (
    org                 TEXT COLLATE "C"    NOT NULL,
    project             TEXT COLLATE "C"    NOT NULL,
    env                 TEXT COLLATE "C"    NOT NULL,
    family              TEXT COLLATE "C"    NOT NULL,
    occurrences         BIGINT  NOT NULL CHECK (occurrences > 0),
    first_seen_unix_ms  BIGINT  NOT NULL,
    last_seen_unix_ms   BIGINT  NOT NULL,
    risk_rank           BIGINT  NOT NULL,
    destructive         BIGINT  NOT NULL CHECK (destructive IN (0, 1)),
    egress_or_taint     BIGINT  NOT NULL CHECK (egress_or_taint IN (0, 1)),
    severity_rank       BIGINT  NOT NULL,
    representative      TEXT,
    agents              BIGINT  NOT NULL DEFAULT 0 CHECK (agents >= 0),
    PRIMARY KEY (org, project, env, family)
);
CREATE INDEX incident_family_scopes_by_family ON incident_family_scopes (org, family);

-- incident_family_agents: the agents a family reached, per environment.
CREATE TABLE incident_family_agents (
    org       TEXT COLLATE "C" NOT NULL,
    project   TEXT COLLATE "C" NOT NULL,
    env       TEXT COLLATE "C" NOT NULL,
    family    TEXT COLLATE "C" NOT NULL,
    agent_id  TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (org, project, env, family, agent_id)
);

-- posture_daily: decisions per environment, UTC day (of the agent's clock), tool, verdict and stage, with how
-- many of them were high or critical risk and how many destructive.
CREATE TABLE posture_daily (
    org          TEXT COLLATE "C"    NOT NULL,
    project      TEXT COLLATE "C"    NOT NULL,
    env          TEXT COLLATE "C"    NOT NULL,
    day          BIGINT  NOT NULL,
    tool         TEXT COLLATE "C"    NOT NULL,
    verdict      TEXT COLLATE "C"    NOT NULL,
    stage        TEXT COLLATE "C"    NOT NULL,
    decisions    BIGINT  NOT NULL CHECK (decisions >= 0),
    high_risk    BIGINT  NOT NULL CHECK (high_risk >= 0),
    destructive  BIGINT  NOT NULL CHECK (destructive >= 0),
    PRIMARY KEY (org, project, env, day, tool, verdict, stage)
);

-- posture_daily_org: posture_daily summed over the org's environments, so an org-wide read scans days × tools
-- × verdicts × stages rows, not that times the environments.
CREATE TABLE posture_daily_org (
    org          TEXT COLLATE "C"    NOT NULL,
    day          BIGINT  NOT NULL,
    tool         TEXT COLLATE "C"    NOT NULL,
    verdict      TEXT COLLATE "C"    NOT NULL,
    stage        TEXT COLLATE "C"    NOT NULL,
    decisions    BIGINT  NOT NULL CHECK (decisions >= 0),
    high_risk    BIGINT  NOT NULL CHECK (high_risk >= 0),
    destructive  BIGINT  NOT NULL CHECK (destructive >= 0),
    PRIMARY KEY (org, day, tool, verdict, stage)
);

-- regress_daily: regress results per environment and UTC day.
CREATE TABLE regress_daily (
    org      TEXT COLLATE "C"    NOT NULL,
    project  TEXT COLLATE "C"    NOT NULL,
    env      TEXT COLLATE "C"    NOT NULL,
    day      BIGINT  NOT NULL,
    passed   BIGINT  NOT NULL CHECK (passed >= 0),
    failed   BIGINT  NOT NULL CHECK (failed >= 0),
    PRIMARY KEY (org, project, env, day)
);
