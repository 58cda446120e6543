-- Policy registry listings without re-parsing (review M7): the warnings of a version, computed once at push as
-- a JSON array of {code, field, message}. NULL for versions pushed before this migration, whose warnings the
-- registry still computes from their YAML when listed.
ALTER TABLE policy_versions ADD COLUMN warnings_json TEXT;
