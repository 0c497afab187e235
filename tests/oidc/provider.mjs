// A real OpenID provider for the console sign-in tests: the certified `oidc-provider` package,
// on plain HTTP at 127.0.0.1 on a port the OS picks (the broker accepts http:// issuers only on
// a loopback host), with its development login and consent pages (any password is accepted).
//
// usage: node provider.mjs REDIRECT_URI [CLIENT_ID] [CLIENT_SECRET]
// Prints one JSON line {"issuer": "http://127.0.0.1:PORT"} on stdout once it listens.
//
// Accounts (the login is the subject): alice (Alice Martin, group helpdesk-team), bob (Bob
// Admin, passerelle-admins), eve (Eve Outsider, sales: maps to no role).
//
// Faults a correct provider never makes, to test the broker's checks, are injected into the
// next token answer only, after `POST /__fault?mode=MODE`: `audience` (aud is another client),
// `issuer` (iss is another issuer), `expired` (exp 10 minutes ago), `nonce` (no nonce),
// `signature` (signed by a key not in the JWKS). The provider itself is unchanged.
import http from 'node:http';
import * as jose from 'jose';
import Provider from 'oidc-provider';

const [redirectUri, clientId = 'passerelle', clientSecret = 'passerelle-test-secret'] = process.argv.slice(2);
if (!redirectUri) {
  console.error('usage: node provider.mjs REDIRECT_URI [CLIENT_ID] [CLIENT_SECRET]');
  process.exit(2);
}

const ACCOUNTS = {
  alice: { name: 'Alice Martin', preferred_username: 'alice', email: 'alice@example.test', passerelle_groups: ['helpdesk-team', 'staff'] },
  bob: { name: 'Bob Admin', preferred_username: 'bob', email: 'bob@example.test', passerelle_groups: 'passerelle-admins' },
  eve: { name: 'Eve Outsider', preferred_username: 'eve', email: 'eve@example.test', passerelle_groups: ['sales'] },
};

const KID = 'test-signing-key';
async function signingKey() {
  const { privateKey } = await jose.generateKeyPair('RS256', { extractable: true });
  const jwk = await jose.exportJWK(privateKey);
  return { privateKey, jwk: { ...jwk, kid: KID, alg: 'RS256', use: 'sig' } };
}
const key = await signingKey();
const stranger = await signingKey();

let fault = null;

async function tamper(idToken, mode) {
  const claims = jose.decodeJwt(idToken);
  const now = Math.floor(Date.now() / 1000);
  let signer = key.privateKey;
  if (mode === 'audience') claims.aud = 'another-client';
  else if (mode === 'issuer') claims.iss = 'http://127.0.0.1:1/another-issuer';
  else if (mode === 'expired') { claims.iat = now - 1200; claims.exp = now - 600; }
  else if (mode === 'nonce') delete claims.nonce;
  else if (mode === 'signature') signer = stranger.privateKey;
  return new jose.SignJWT(claims).setProtectedHeader({ alg: 'RS256', kid: KID, typ: 'JWT' }).sign(signer);
}

const server = http.createServer();
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;
  const provider = new Provider(issuer, {
    clients: [{
      client_id: clientId,
      client_secret: clientSecret,
      redirect_uris: [redirectUri],
      response_types: ['code'],
      grant_types: ['authorization_code'],
      token_endpoint_auth_method: 'client_secret_basic',
    }],
    jwks: { keys: [key.jwk] },
    cookies: { keys: [Buffer.from(crypto.getRandomValues(new Uint8Array(32))).toString('hex')] },
    claims: {
      openid: ['sub'],
      profile: ['name', 'preferred_username', 'passerelle_groups'],
      email: ['email'],
    },
    // The person's claims in the ID token itself, as most enterprise providers put them.
    conformIdTokenClaims: false,
    pkce: { required: () => true },
    features: { devInteractions: { enabled: true } },
    async findAccount(ctx, sub) {
      const account = ACCOUNTS[sub];
      if (!account) return undefined;
      return { accountId: sub, claims: async () => ({ sub, ...account }) };
    },
  });
  provider.use(async (ctx, next) => {
    await next();
    if (ctx.path === '/token' && ctx.status === 200 && fault && ctx.body && ctx.body.id_token) {
      const mode = fault;
      fault = null;
      ctx.body = { ...ctx.body, id_token: await tamper(ctx.body.id_token, mode) };
    }
  });
  const handle = provider.callback();
  server.on('request', (req, res) => {
    const url = new URL(req.url, issuer);
    if (url.pathname === '/__fault' && req.method === 'POST') {
      fault = url.searchParams.get('mode') || null;
      res.writeHead(204).end();
      return;
    }
    handle(req, res);
  });
  console.log(JSON.stringify({ issuer }));
});
