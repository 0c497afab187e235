// Opens a Passerelle replay page in Debian's headless Chromium, plays it at 16x (or seeks to a
// fraction of it) and reports, as one JSON line, the player's state and the dominant colour of
// the replayed screen, and where the page's last fetch started (keyframe, bytes).
//
// usage: node replay.mjs URL SCREENSHOT.png [--seek FRACTION] [--timeout MS]
import { launch, waitForPixels } from './common.mjs';

const [url, shot, ...rest] = process.argv.slice(2);
const opt = (name) => { const i = rest.indexOf(name); return i >= 0 ? rest[i + 1] : undefined; };
const timeout = Number(opt('--timeout') || 30000);
const seekTo = opt('--seek');

const browser = await launch();
const result = { state: null, duration: null, position: null, frames: null, dominant: null, error: null, console: [] };
try {
  const page = await browser.newPage({ viewport: { width: 800, height: 600 } });
  page.on('pageerror', (e) => { result.console.push(`pageerror: ${e}`); result.error = String(e); });
  page.on('console', (m) => { if (result.console.length < 400) result.console.push(m.text()); });
  await page.goto(url);
  await page.waitForFunction(() => window.passerelle && window.passerelle.state !== 'loading', null, { timeout });
  if (await page.evaluate(() => window.passerelle.state) === 'ready') {
    if (seekTo !== undefined) {
      await page.evaluate((f) => window.passerelleSeek(window.passerelle.duration * f), Number(seekTo));
    } else {
      await page.selectOption('#speed', '16');
      await page.click('#play');
      await page.waitForFunction(() => window.passerelle.state === 'ended', null, { timeout });
    }
    result.dominant = await waitForPixels(page, 10000);
  }
  if (shot) await page.screenshot({ path: shot });
  Object.assign(result, await page.evaluate(() => ({
    state: window.passerelle.state, duration: window.passerelle.duration, position: window.passerelle.position,
    frames: window.passerelle.frames, pageError: window.passerelle.error,
    keyframe: window.passerelle.keyframe, keyframeNumber: window.passerelle.keyframeNumber,
    fetchedBytes: window.passerelle.fetchedBytes, totalBytes: window.passerelle.totalBytes,
  })));
  if (result.pageError) result.error = result.pageError;
} catch (e) {
  result.error = String(e);
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
