// Opens the Passerelle console in Debian's headless Chromium, signs in with an API key, fills
// the session-history filters and reports, as one JSON line, the sessions listed (with their
// replay links), then follows the first replay link and reports whether the replay page loaded.
//
// usage: node console.mjs URL SCREENSHOT.png --key KEY [--agent A] [--operator O]
//        [--min-minutes N] [--max-minutes N] [--since ISO] [--timeout MS]
import { launch } from './common.mjs';

const [url, shot, ...rest] = process.argv.slice(2);
const opt = (name) => { const i = rest.indexOf(name); return i >= 0 ? rest[i + 1] : undefined; };
const timeout = Number(opt('--timeout') || 30000);

// A datetime-local value (the browser's local time) for an ISO time.
function local(iso) {
  const d = new Date(iso);
  const pad = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

const browser = await launch();
const result = { rows: [], replayState: null, error: null };
try {
  const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
  page.on('pageerror', (e) => { result.error = String(e); });
  await page.goto(url);
  await page.fill('#key', opt('--key'));
  await page.fill('#operator', 'auditor-in-test');
  await page.click('#login button[type=submit]');
  await page.waitForSelector('#app:not([hidden])', { timeout });
  for (const [flag, field] of [['--agent', '#f-agent'], ['--operator', '#f-operator'], ['--min-minutes', '#f-min'], ['--max-minutes', '#f-max']]) {
    if (opt(flag) !== undefined) await page.fill(field, opt(flag));
  }
  if (opt('--since')) await page.fill('#f-since', local(opt('--since')));
  // Mark the table, filter, and wait for it to be rendered anew.
  await page.evaluate(() => { document.getElementById('history').dataset.stale = '1'; });
  await page.click('#history-filter button[type=submit]');
  await page.waitForFunction(() => !document.getElementById('history').dataset.stale, null, { timeout });
  result.rows = await page.$$eval('#history tr', (trs) => trs.map((tr) => ({
    session: tr.dataset.session || null,
    cells: [...tr.children].map((td) => td.textContent),
    replay: tr.querySelector('a.replay') ? tr.querySelector('a.replay').getAttribute('href') : null,
  })));
  if (shot) await page.screenshot({ path: shot, fullPage: true });
  const first = result.rows.find((r) => r.replay);
  if (first) {
    await page.click(`tr[data-session="${first.session}"] a.replay`);
    await page.waitForFunction(() => window.passerelle && window.passerelle.state !== 'loading', null, { timeout });
    result.replayState = await page.evaluate(() => window.passerelle.state);
  }
} catch (e) {
  result.error = String(e);
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
