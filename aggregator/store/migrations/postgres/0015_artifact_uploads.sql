-- Artifact bytes uploaded by agents (issue 15 item 7): one row per (environment, digest, uploading agent), so
-- an operator reads a blob through an environment only when an agent of that environment uploaded it (the
-- blob store itself is shared and content-addressed; this row is the tenancy). `size_bytes` is the verified
-- length; `uploaded_unix_ms` the first completed upload of that digest by that agent.
CREATE TABLE artifact_uploads (
    org                 TEXT COLLATE "C" NOT NULL,
    project             TEXT COLLATE "C" NOT NULL,
    env                 TEXT COLLATE "C" NOT NULL,
    sha256              TEXT COLLATE "C" NOT NULL,
    agent_id            TEXT COLLATE "C" NOT NULL,
    size_bytes          BIGINT NOT NULL,
    uploaded_unix_ms    BIGINT NOT NULL,
    PRIMARY KEY (org, project, env, sha256, agent_id),
    FOREIGN KEY (org, project, env, agent_id) REFERENCES agents (org, project, env, agent_id)
);
