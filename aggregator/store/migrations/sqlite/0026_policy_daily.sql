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

-- Rows the upkeep folded before this table existed (its cursor, `analysis-upkeep`, is past them) are counted here
-- now, exactly as the range pass would have counted them; later rows are folded by the upkeep as they come.
-- Nothing else folded is touched: families, posture and the change gate read on without a refold.
INSERT INTO policy_daily (org, project, env, day, tool, policy_digest, decisions)
SELECT org, project, env,
       (CASE WHEN created_unix_ms > received_unix_ms + 300000 THEN received_unix_ms ELSE created_unix_ms END)
           / 86400000,
       COALESCE(tool_name, '(unknown)'), COALESCE(policy_digest, '(none)'), COUNT(*)
FROM evidence_index
WHERE class = 'decision' AND verdict IS NOT NULL
  AND id <= COALESCE((SELECT last_id FROM analysis_cursors WHERE name = 'analysis-upkeep'), 0)
GROUP BY 1, 2, 3, 4, 5, 6;
