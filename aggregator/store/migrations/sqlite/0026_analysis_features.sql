-- What the analytics upkeep reads of each evidence row, computed by ingest from the row's own columns
-- (`gait_store::analysis::row_features`), so the upkeep's pass over a range groups on a narrow key and sums
-- integers instead of sorting the row's text columns:
--
-- analysis_grain: the first 16 bytes of a SHA-256 over the grouping columns (org, project, env, family, agent,
--   tool, verdict, stage, class), each length-prefixed.
-- analysis_flags: bits 0-1 risk rank, 2 destructive, 3 egress or taint, 4-5 severity rank, 6 regress passed,
--   7 regress failed.
--
-- Rows indexed before this migration have them NULL; the upkeep computes the same values from their columns.
ALTER TABLE evidence_index ADD COLUMN analysis_grain BLOB;
ALTER TABLE evidence_index ADD COLUMN analysis_flags INTEGER;
