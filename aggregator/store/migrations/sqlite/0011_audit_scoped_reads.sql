-- Per-tenant views of the audit log (GET /v1/orgs/{org}/audit/entries): an org's or a project's entries in
-- seq order, keyset-paginated, read from an index instead of sorting every entry of the org. An environment's
-- entries already use audit_entries_by_tenant (org, project, env, seq).
CREATE INDEX audit_entries_by_org ON audit_entries (org, seq);
CREATE INDEX audit_entries_by_project ON audit_entries (org, project, seq);
