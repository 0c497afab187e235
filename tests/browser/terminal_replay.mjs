// Opens a Passerelle terminal replay page in Debian's headless Chromium and, unless --no-play,
// plays it to the end at 16x; reports, as one JSON line, the player's state, duration and
// position, and the replayed screen's text.
//
// usage: node terminal_replay.mjs URL SCREENSHOT.png [--no-play] [--timeout MS]
import { launch } from './common.mjs';

const [url, shot, ...rest] = process.argv.slice(2);
const opt = (name) => { const i = rest.indexOf(name); return i >= 0 ? rest[i + 1] : undefined; };
const timeout = Number(opt('--timeout') || 30000);
const noPlay = rest.includes('--no-play');

const browser = await launch();
const result = { state: null, duration: null, position: null, events: null, screen: null, error: null };
try {
  const page = await browser.newPage({ viewport: { width: 1000, height: 700 } });
  page.on('pageerror', (e) => { result.error = String(e); });
  await page.goto(url);
  await page.waitForFunction(() => window.passerelle && window.passerelle.state !== 'loading', null, { timeout });
  if (await page.evaluate(() => window.passerelle.state) === 'ready' && !noPlay) {
    await page.selectOption('#speed', '16');
    await page.click('#play');
    await page.waitForFunction(() => window.passerelle.state === 'ended', null, { timeout });
  }
  if (shot) await page.screenshot({ path: shot });
  Object.assign(result, await page.evaluate(() => ({
    state: window.passerelle.state, duration: window.passerelle.duration, position: window.passerelle.position,
    events: window.passerelle.events, screen: window.passerelle.screen(), pageError: window.passerelle.error,
  })));
  if (result.pageError) result.error = result.pageError;
} catch (e) {
  result.error = String(e);
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
