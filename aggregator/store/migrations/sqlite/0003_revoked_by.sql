-- Who revoked a certificate: the operator (the OS user running `gait-aggregator pki revoke`, or whatever
-- identity the caller records). Rows written before this column existed keep '' (not recorded); the store
-- refuses an empty value for every new revocation.
ALTER TABLE revocations ADD COLUMN revoked_by TEXT NOT NULL DEFAULT '';
