-- Shifts in a tool's verdict mix are attributed to what changed at their start (issue 12, gait_analysis::shift):
-- posture_daily has the verdicts, stages and risk of each day; this table adds the policy digests that decided
-- them.
--
-- policy_daily: decisions per environment, UTC day (of the agent's clock, as posture_daily), tool and the digest
-- of the policy that decided them ('(none)' when the record named none).
CREATE TABLE policy_daily (
    org            TEXT NOT NULL,
    project        TEXT NOT NULL,
    env            TEXT NOT NULL,
    day            INTEGER NOT NULL,
    tool           TEXT NOT NULL,
    policy_digest  TEXT NOT NULL,
    decisions      INTEGER NOT NULL CHECK (decisions >= 0),
    PRIMARY KEY (org, project, env, day, tool, policy_digest)
) STRICT;

-- State folded before this table existed has no policy rows: it is cleared and the upkeep job refolds the
-- evidence index from its start, as migration 0024 did. Family definitions and manual merges are kept.
DELETE FROM incident_family_scopes;
DELETE FROM incident_family_agents;
DELETE FROM posture_daily;
DELETE FROM posture_daily_org;
DELETE FROM regress_daily;
DELETE FROM analysis_cursors WHERE name = 'analysis-upkeep';
