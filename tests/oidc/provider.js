// A real OpenID provider (the OpenID-certified `oidc-provider` package) for the aggregator's end-to-end OIDC tests
// (tests/tests/oidc.rs, tests/tests/approvals_oidc.rs). It serves discovery, the JWKS and /token (client
// credentials, JWT access tokens for the audience `gait-aggregator` with a `groups` claim) on 127.0.0.1 and can
// rotate its signing key. Several clients stand for several operators: each client's token carries its own
// groups (CLIENT_GROUPS), its subject is the client id, and its secret is `<client id>-secret`.
//
//   node provider.js --keys-dir DIR [--port N]
//
// Prints `issuer=<URL>` on stdout once it answers. Every signing key it makes is written to DIR as `<kid>.pem`
// (PKCS#8, test use only) and `<kid>.pub.pem` (SPKI) so the test can forge tokens with the provider's own keys. Key rotation — a new key signs
// from then on, the old one stays published — on `POST /admin/rotate` (answers {"kid": "<new kid>"}) or SIGUSR1.
'use strict';

const crypto = require('node:crypto');
const fs = require('node:fs');
const http = require('node:http');
const path = require('node:path');

const { default: Provider } = require('oidc-provider');

const AUDIENCE = 'gait-aggregator';
const RESOURCE = 'urn:gait:aggregator';
// Client id (= the token's subject) -> the groups its access tokens carry.
const CLIENT_GROUPS = {
  'gait-e2e': ['sre', 'security'],
  'sec-ana': ['security'],
  'sec-ben': ['security'],
  'pay-cho': ['payments-team'],
  'view-dee': ['observers'],
};

function arg(name, fallback) {
  const i = process.argv.indexOf(name);
  return i > 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

const keysDir = arg('--keys-dir');
if (!keysDir) {
  console.error('usage: node provider.js --keys-dir DIR [--port N]');
  process.exit(2);
}
fs.mkdirSync(keysDir, { recursive: true });

let generation = 0;
// Newest first: oidc-provider signs with the first key of the algorithm, and publishes them all.
const signingKeys = [];

function newKey() {
  generation += 1;
  const kid = `gait-test-${generation}-${crypto.randomBytes(4).toString('hex')}`;
  const { privateKey, publicKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  fs.writeFileSync(path.join(keysDir, `${kid}.pem`), privateKey.export({ type: 'pkcs8', format: 'pem' }));
  fs.writeFileSync(path.join(keysDir, `${kid}.pub.pem`), publicKey.export({ type: 'spki', format: 'pem' }));
  const jwk = { ...privateKey.export({ format: 'jwk' }), kid, alg: 'RS256', use: 'sig' };
  signingKeys.unshift(jwk);
  return kid;
}

function makeProvider(issuer) {
  const provider = new Provider(issuer, {
    clients: Object.keys(CLIENT_GROUPS).map((id) => ({
      client_id: id,
      client_secret: `${id}-secret`,
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
    })),
    jwks: { keys: signingKeys },
    features: {
      clientCredentials: { enabled: true },
      devInteractions: { enabled: false },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => RESOURCE,
        useGrantedResource: () => true,
        getResourceServerInfo: () => ({
          scope: 'api',
          audience: AUDIENCE,
          accessTokenFormat: 'jwt',
          accessTokenTTL: 300,
          jwt: { sign: { alg: 'RS256' } },
        }),
      },
    },
    extraTokenClaims: (ctx, token) => ({ groups: CLIENT_GROUPS[token.clientId] || [] }),
  });
  // Plain HTTP on loopback only (the aggregator allows http:// for a loopback issuer).
  provider.proxy = false;
  return provider;
}

let handler;
const server = http.createServer((req, res) => {
  if (req.method === 'POST' && req.url === '/admin/rotate') {
    const kid = rotate();
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ kid }));
    return;
  }
  handler(req, res);
});

let issuer;
function rotate() {
  const kid = newKey();
  handler = makeProvider(issuer).callback();
  console.error(`rotated: now signing with ${kid}`);
  return kid;
}

process.on('SIGUSR1', rotate);
process.on('SIGTERM', () => server.close(() => process.exit(0)));

server.listen(Number(arg('--port', '0')), '127.0.0.1', () => {
  issuer = `http://127.0.0.1:${server.address().port}`;
  newKey();
  handler = makeProvider(issuer).callback();
  process.stdout.write(`issuer=${issuer}\n`);
});
