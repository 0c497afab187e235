// Opens the console's agent table in Debian's headless Chromium, signs in, times the first page
// of agents (from the click on "Use" to the table rendered), goes to the next page, searches by
// id prefix, and reports as one JSON line what the table showed.
//
// usage: node agents.mjs URL SCREENSHOT.png --key KEY --q PREFIX [--timeout MS]
import { launch } from './common.mjs';

const [url, shot, ...rest] = process.argv.slice(2);
const opt = (name) => { const i = rest.indexOf(name); return i >= 0 ? rest[i + 1] : undefined; };
const timeout = Number(opt('--timeout') || 30000);
const q = opt('--q');

const rows = (page) => page.$$eval('#agents tr[data-agent]', (trs) => trs.map((tr) => ({
  id: tr.dataset.agent,
  offline: tr.classList.contains('agent-offline'),
  state: tr.children[1].textContent,
  opacity: Number(getComputedStyle(tr.children[0]).opacity),
})));

const browser = await launch();
const result = { firstPageMs: null, firstPage: [], nextEnabled: null, secondPage: [], rows: [], error: null };
try {
  const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
  page.on('pageerror', (e) => { result.error = String(e); });
  await page.goto(url);
  await page.fill('#key', opt('--key'));
  await page.fill('#operator', 'fleet-in-test');
  const start = Date.now();
  await page.click('#login button[type=submit]');
  await page.waitForFunction(() => document.getElementById('agents').dataset.rendered, null, { timeout });
  result.firstPageMs = Date.now() - start;
  result.firstPage = await rows(page);
  result.nextEnabled = await page.$eval('#agents-next', (b) => !b.disabled);
  if (result.nextEnabled) {
    const last = result.firstPage[result.firstPage.length - 1].id;
    await page.click('#agents-next');
    await page.waitForFunction((l) => {
      const first = document.querySelector('#agents tr[data-agent]');
      return first && first.dataset.agent > l;
    }, last, { timeout });
    result.secondPage = await rows(page);
  }
  await page.fill('#agent-q', q);
  await page.click('#agent-search button[type=submit]');
  // Wait for the search's rows (a periodic refresh may render the previous query meanwhile).
  await page.waitForFunction((p) => {
    const trs = [...document.querySelectorAll('#agents tr[data-agent]')];
    return trs.length > 0 && trs.every((tr) => tr.dataset.agent.startsWith(p));
  }, q, { timeout });
  result.rows = await rows(page);
  if (shot) await page.screenshot({ path: shot, fullPage: true });
} catch (e) {
  result.error = String(e);
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
