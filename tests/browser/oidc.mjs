// Signs in to the Passerelle console through a real OpenID provider's login page in Debian's
// headless Chromium, and reports what happened as one JSON line: the page's refusal (its code
// and text) or who the console says is signed in, the broker's cookies and their attributes,
// and, on request, a session opened from the page, a replay of the provider's callback URL, a
// forged callback, and the sign-out.
//
// usage: node oidc.mjs BROKER_URL SCREENSHOT.png --login LOGIN [--tenant T]
//        [--agent A --service S] [--replay] [--bad-state] [--signout] [--timeout MS]
import { launch } from './common.mjs';

const [base, shot, ...rest] = process.argv.slice(2);
const opt = (name) => { const i = rest.indexOf(name); return i >= 0 ? rest[i + 1] : undefined; };
const flag = (name) => rest.includes(name);
const timeout = Number(opt('--timeout') || 30000);
const origin = new URL(base).origin;

const result = { refused: null, who: null, cookies: [], session: null, replay: null, badState: null,
  afterSignout: null, error: null };

// The refusal page's code and text, if the page is one.
async function refusal(page) {
  const el = await page.$('#signin-error');
  if (!el) return null;
  return { code: await el.getAttribute('data-code'), text: await el.textContent() };
}

async function cookies(context) {
  return (await context.cookies([`${base}/`, `${base}/auth/callback`])).map((c) => ({
    name: c.name, value: c.value, path: c.path, httpOnly: c.httpOnly, secure: c.secure, sameSite: c.sameSite,
  }));
}

const browser = await launch();
let pageUrl = () => null;
try {
  const context = await browser.newContext();
  const page = await context.newPage();
  pageUrl = () => page.url();
  page.on('pageerror', (e) => { result.error = String(e); });
  let callbackUrl = null;
  page.on('request', (r) => { if (r.url().startsWith(`${base}/auth/callback`)) callbackUrl = r.url(); });

  await page.goto(`${base}/console`);
  if (opt('--tenant')) await page.fill('#signin-tenant', opt('--tenant'));
  await page.click('#signin button[type=submit]');
  // The provider's login page (or the broker's refusal, when the tenant has no sign-in).
  await page.waitForSelector('input[name=login], #signin-error', { timeout });
  result.refused = await refusal(page);
  const flow = (await cookies(context)).find((c) => c.name === 'passerelle_oidc_flow');
  if (!result.refused && flag('--bad-state')) {
    await page.goto(`${base}/auth/callback?code=forged-code&state=forged-state`);
    result.badState = await refusal(page);
  } else if (!result.refused) {
    await page.fill('input[name=login]', opt('--login'));
    await page.fill('input[name=password]', 'any password');
    await Promise.all([page.waitForNavigation({ timeout }), page.click('button[type=submit]')]);
    // The consent page, once per account and client, then back to the broker.
    for (let i = 0; i < 3 && new URL(page.url()).origin !== origin; i += 1) {
      await page.waitForSelector('button[type=submit]', { timeout });
      await Promise.all([page.waitForNavigation({ timeout }), page.click('button[type=submit]')]);
    }
    await page.waitForURL((u) => u.origin === origin, { timeout });
    await page.waitForLoadState('load');
    result.refused = await refusal(page);
  }
  if (!result.refused && !flag('--bad-state')) {
    await page.waitForSelector('#who:not([hidden])', { timeout });
    result.who = {
      name: await page.textContent('#who-name'),
      role: await page.textContent('#who-role'),
      tenant: await page.textContent('#who-tenant'),
    };
  }
  result.cookies = await cookies(context);
  if (result.who && opt('--agent')) {
    // As the console's own "open" button does, with a forged operator in the header and body.
    result.session = await page.evaluate(async ([agent, service]) => {
      const res = await fetch('/api/v1/sessions', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', 'X-Passerelle-Operator': 'mallory' },
        body: JSON.stringify({ agent, service, operator: 'mallory' }),
      });
      return { status: res.status, body: await res.json().catch(() => null) };
    }, [opt('--agent'), opt('--service') || 'rdp']);
  }
  if (shot) await page.screenshot({ path: shot, fullPage: true });
  if (result.who && flag('--replay') && callbackUrl && flow) {
    // The same callback again, with the flow cookie it came with: the provider must refuse the
    // code it already redeemed.
    await context.addCookies([{ ...flow, domain: new URL(base).hostname }]);
    await page.goto(callbackUrl);
    result.replay = await refusal(page);
  }
  if (result.who && flag('--signout')) {
    if (new URL(page.url()).pathname !== '/console') {
      await page.goto(`${base}/console`);
      await page.waitForSelector('#who:not([hidden])', { timeout });
    }
    await page.click('#signout');
    await page.waitForSelector('#who[hidden]', { state: 'attached', timeout });
    const me = await page.evaluate(async () => (await fetch('/api/v1/console/me')).status);
    result.afterSignout = { cookies: await cookies(context), meStatus: me, message: await page.textContent('#error') };
  }
} catch (e) {
  result.error = `${e} (at ${pageUrl()})`;
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
