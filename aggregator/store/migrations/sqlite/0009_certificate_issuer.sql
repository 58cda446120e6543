-- The certificate each agent presented at its last connection (issue 11): its expiry and its issuer, recorded
-- with the hello, so the fleet inventory shows the expiry of every agent (hand-minted certificates included)
-- and `pki retire-ca` can tell which agents still hold a certificate of the retired CA. The issuer of every
-- certificate signed online is recorded too: a renewal from the new CA counts before the agent reconnects.
-- Issuers are RFC 4514 distinguished names as x509-parser prints them; NULL for rows written before this
-- migration (unknown until the agent connects again).
ALTER TABLE agents ADD COLUMN cert_not_after_unix_ms INTEGER;
ALTER TABLE agents ADD COLUMN cert_issuer TEXT;
ALTER TABLE issued_certificates ADD COLUMN issuer TEXT;
