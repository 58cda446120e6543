-- Role bindings (issue 11): who holds which role where. A binding names a user (the OIDC subject) or an IdP
-- group, a role, and a scope: one org, one project of it, or one environment of that project (project and env
-- are '' when the binding covers the whole org or project); org '' is the whole deployment. `source` says
-- where the binding came from: the API/CLI ('api') or the config file's auth.bindings ('config', replaced as a
-- set whenever the aggregator starts).
CREATE TABLE role_bindings (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    subject_kind        TEXT    NOT NULL CHECK (subject_kind IN ('user', 'group')),
    subject             TEXT    NOT NULL CHECK (length(subject) > 0),
    role                TEXT    NOT NULL,
    org                 TEXT    NOT NULL,
    project             TEXT    NOT NULL,
    env                 TEXT    NOT NULL,
    source              TEXT    NOT NULL CHECK (source IN ('api', 'config')),
    created_by          TEXT    NOT NULL,
    created_unix_ms     INTEGER NOT NULL,
    CHECK (project = '' OR org <> ''),
    CHECK (env = '' OR project <> ''),
    UNIQUE (subject_kind, subject, role, org, project, env)
) STRICT;

CREATE INDEX role_bindings_by_scope ON role_bindings (org, project, env);
