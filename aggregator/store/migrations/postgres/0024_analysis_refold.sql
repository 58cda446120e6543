-- Fleet analytics now read a row's time as its arrival when the agent's clock was more than 5 minutes ahead
-- (stop 27). State folded before keeps future first/last-seen times and future posture days, which would hold
-- families open: it is cleared, and the upkeep job refolds the evidence index from its start. Family
-- definitions and manual merges are kept; the refold runs at the job's usual pace (docs/benchmarks.md).
DELETE FROM incident_family_scopes;
DELETE FROM incident_family_agents;
DELETE FROM posture_daily;
DELETE FROM posture_daily_org;
DELETE FROM regress_daily;
DELETE FROM analysis_cursors WHERE name = 'analysis-upkeep';
