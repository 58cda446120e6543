-- Artifact bytes uploaded by agents (issue 15 item 7): one row per (environment, digest, uploading agent), so
-- an operator reads a blob through an environment only when an agent of that environment uploaded it (the
-- blob store itself is shared and content-addressed; this row is the tenancy). `size_bytes` is the verified
-- length; `uploaded_unix_ms` the first completed upload of that digest by that agent.
CREATE TABLE artifact_uploads (
    org                 TEXT    NOT NULL,
    project             TEXT    NOT NULL,
    env                 TEXT    NOT NULL,
    sha256              TEXT    NOT NULL,
    agent_id            TEXT    NOT NULL,
    size_bytes          INTEGER NOT NULL,
    uploaded_unix_ms    INTEGER NOT NULL,
    PRIMARY KEY (org, project, env, sha256, agent_id),
    FOREIGN KEY (org, project, env, agent_id) REFERENCES agents (org, project, env, agent_id)
) STRICT;
