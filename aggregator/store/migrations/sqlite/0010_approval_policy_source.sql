-- Approval policies from the config file (issue 11): `source` says who owns a policy version — the API/CLI
-- ('api') or the config file's approvals.policies ('config', applied as a set whenever the aggregator starts;
-- the API cannot overwrite or remove such a policy). `removed_unix_ms` is set on the newest version of a policy
-- that was removed: it no longer judges new requests and is no longer listed, but its versions stay, so a
-- request judged under one still names it. Setting the policy again adds the next version, live again.
ALTER TABLE approval_policies ADD COLUMN source TEXT NOT NULL DEFAULT 'api' CHECK (source IN ('api', 'config'));
ALTER TABLE approval_policies ADD COLUMN removed_unix_ms INTEGER;
