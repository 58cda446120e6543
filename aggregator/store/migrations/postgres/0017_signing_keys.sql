-- Bundle signing keys (issue 13 item 7): the registry's Ed25519 keys and their lifecycle. `next` is endorsed by
-- the active key and waits for `activate_after_unix_ms` (the overlap), then becomes `active` and the old one
-- `retired`; `revoked` keys are named in every later bundle's `manifest.trust.revoked`. Private seeds stay in
-- files (`keys/registry/<key_id>.key`), never here. At most one `active` and one `next` key at a time.
CREATE TABLE signing_keys (
    key_id                  TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    public_key              TEXT   NOT NULL,
    state                   TEXT   NOT NULL CHECK (state IN ('next', 'active', 'retired', 'revoked')),
    endorsed_by             TEXT,
    endorsement_sig         TEXT,
    created_unix_ms         BIGINT NOT NULL,
    activate_after_unix_ms  BIGINT,
    activated_unix_ms       BIGINT,
    revoked_unix_ms         BIGINT,
    actor                   TEXT   NOT NULL
);

CREATE UNIQUE INDEX signing_keys_one_per_live_state ON signing_keys (state) WHERE state IN ('active', 'next');
