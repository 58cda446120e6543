-- Agent enrollment (issue 11): join tokens and the certificates issued through them or by renewal.
--
-- `join_tokens`: one row per token an operator minted for one org/project/env. Only the SHA-256 of the secret
-- is stored (lowercase hex); the secret is shown once, at creation. `uses_left` counts down atomically at each
-- enrollment (a single conditional UPDATE), so a 1-use token enrolls exactly one agent even under races.
-- `issued_certificates`: one row per agent certificate the aggregator signed online (enrollment or renewal),
-- with its expiry, so the fleet's expiry can be shown and measured. Hand-minted certificates have no row.
CREATE TABLE join_tokens (
    token_id         TEXT COLLATE "C" PRIMARY KEY,
    org              TEXT COLLATE "C" NOT NULL,
    project          TEXT COLLATE "C" NOT NULL,
    env              TEXT COLLATE "C" NOT NULL,
    secret_sha256    TEXT   NOT NULL,
    uses_allowed     BIGINT NOT NULL,
    uses_left        BIGINT NOT NULL,
    created_unix_ms  BIGINT NOT NULL,
    expires_unix_ms  BIGINT NOT NULL,
    created_by       TEXT   NOT NULL,
    revoked_unix_ms  BIGINT,
    revoked_by       TEXT   NOT NULL DEFAULT '',
    CHECK (uses_left >= 0 AND uses_left <= uses_allowed)
);

CREATE INDEX join_tokens_by_tenant ON join_tokens (org, project, env, created_unix_ms);

CREATE TABLE issued_certificates (
    cert_serial        TEXT COLLATE "C" PRIMARY KEY,
    org                TEXT COLLATE "C" NOT NULL,
    project            TEXT COLLATE "C" NOT NULL,
    env                TEXT COLLATE "C" NOT NULL,
    agent_id           TEXT COLLATE "C" NOT NULL,
    kind               TEXT   NOT NULL,
    join_token_id      TEXT   NOT NULL DEFAULT '',
    not_after_unix_ms  BIGINT NOT NULL,
    issued_unix_ms     BIGINT NOT NULL,
    issued_by          TEXT   NOT NULL
);

CREATE INDEX issued_certificates_by_agent ON issued_certificates (org, project, env, agent_id, issued_unix_ms);
