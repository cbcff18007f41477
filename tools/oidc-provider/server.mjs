// An OpenID Provider for cardlink's tests: panva's oidc-provider (OpenID Certified), with
// clients and members from a JSON file, and a plain member-id/password login page whose fields
// match the demo card companies' (login_id, password, action=login|cancel).
//
//   node server.mjs config.json     → prints "LISTENING <port>" once it accepts connections
//
// It exits when its standard input closes, so it never outlives the test process that started
// it. Clients register themselves (OpenID Connect Dynamic Client Registration, POST /reg), so one
// provider serves every test of a test binary, each with its own consent page.
//
// config.json: { "clients": [oidc-provider client metadata…] (optional),
//                "accounts": { "<sub>": { "password": "…", "claims": { "name": "…", … } } },
//                "claims": ["name", "<account claim>"],
//                "jwks": { "keys": [private JWKs] }   (optional: a development key otherwise) }
// The member's claims are released for scope `profile`; by the OpenID Connect rules for the
// code flow they come from userinfo, not the ID token.
import fs from 'node:fs';
import http from 'node:http';
import Provider from 'oidc-provider';

const config = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
process.stdin.on('end', () => process.exit(0));
process.stdin.on('error', () => process.exit(0));
process.stdin.resume();

const escape = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function loginPage(uid, notice) {
  return `<!doctype html><html><head><meta charset="utf-8"><title>Test card company</title><style>
body{font:20px sans-serif;margin:2em} h1{background:#7a1f3d;color:#fff;padding:.6em} input,button{font-size:20px;margin:.4em}
</style></head><body><h1>Test card company — member sign-in</h1>${notice ? `<p>${escape(notice)}</p>` : ''}
<form method="post" action="/interaction/${escape(uid)}/login">
<input type="hidden" name="request" value="${escape(uid)}">
<input name="login_id"><input name="password" type="password">
<button type="submit" name="action" value="login">Sign in</button>
<button type="submit" name="action" value="cancel">Cancel</button></form></body></html>`;
}

async function readForm(req) {
  let body = '';
  for await (const chunk of req) {
    body += chunk;
    if (body.length > 16384) throw new Error('form too large');
  }
  return Object.fromEntries(new URLSearchParams(body));
}

const server = http.createServer();
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;
  const provider = new Provider(issuer, {
    clients: config.clients ?? [],
    ...(config.jwks ? { jwks: config.jwks } : {}),
    claims: { openid: ['sub'], profile: config.claims ?? ['name'] },
    findAccount: async (ctx, sub) => {
      const account = config.accounts[sub];
      return account && { accountId: sub, claims: async () => ({ sub, ...account.claims }) };
    },
    features: { devInteractions: { enabled: false }, registration: { enabled: true } },
    interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
    cookies: { keys: ['cardlink-test-cookie-key'] },
    pkce: { required: () => true },
  });
  const handler = provider.callback();

  async function interaction(req, res, uid, action) {
    const details = await provider.interactionDetails(req, res);
    const { prompt, params, session } = details;
    if (action === '/login') {
      const form = await readForm(req);
      if (form.action === 'cancel') {
        return provider.interactionFinished(req, res, { error: 'access_denied', error_description: 'the member cancelled' }, { mergeWithLastSubmission: false });
      }
      const account = config.accounts[form.login_id];
      if (!account || account.password !== form.password) {
        res.statusCode = 401;
        res.setHeader('content-type', 'text/html; charset=utf-8');
        return res.end(loginPage(uid, 'wrong member id or password'));
      }
      return provider.interactionFinished(req, res, { login: { accountId: form.login_id } }, { mergeWithLastSubmission: false });
    }
    if (prompt.name === 'login') {
      res.setHeader('content-type', 'text/html; charset=utf-8');
      return res.end(loginPage(uid, ''));
    }
    // The card company's own consent to release the claims: granted (cardlink asks the member).
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    if (prompt.details.missingOIDCScope) grant.addOIDCScope(prompt.details.missingOIDCScope.join(' '));
    if (prompt.details.missingOIDCClaims) grant.addOIDCClaims(prompt.details.missingOIDCClaims);
    const grantId = await grant.save();
    return provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
  }

  server.on('request', (req, res) => {
    const match = new URL(req.url, issuer).pathname.match(/^\/interaction\/([^/]+)(\/login)?$/);
    if (!match) return handler(req, res);
    interaction(req, res, match[1], match[2]).catch((e) => {
      res.statusCode = 500;
      res.end(String(e));
    });
  });
  console.log(`LISTENING ${port}`);
});
