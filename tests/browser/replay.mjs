// Opens a Passerelle replay page in Debian's headless Chromium, plays it at 16x (or seeks to a
// fraction of it) and reports, as one JSON line, the player's state and the dominant colour of
// the replayed screen.
//
// usage: node replay.mjs URL SCREENSHOT.png [--seek FRACTION] [--timeout MS]
import { chromium } from 'playwright-core';

const [url, shot, ...rest] = process.argv.slice(2);
const opt = (name) => { const i = rest.indexOf(name); return i >= 0 ? rest[i + 1] : undefined; };
const timeout = Number(opt('--timeout') || 30000);
const seekTo = opt('--seek');

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
});
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
    const deadline = Date.now() + 10000;
    while (Date.now() < deadline) {
      result.dominant = await page.evaluate(() => {
        const c = document.querySelector('#screen canvas');
        if (!c || !c.width) return null;
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        const counts = new Map();
        for (let i = 0; i < d.length; i += 4 * 7) {
          const k = `${d[i] >> 3},${d[i + 1] >> 3},${d[i + 2] >> 3}`;
          counts.set(k, (counts.get(k) || 0) + 1);
        }
        let best = null; let n = 0;
        for (const [k, v] of counts) if (v > n) { best = k; n = v; }
        return best.split(',').map((x) => Number(x) << 3);
      });
      if (result.dominant && result.dominant.some((x) => x > 16)) break;
      await page.waitForTimeout(100);
    }
  }
  if (shot) await page.screenshot({ path: shot });
  Object.assign(result, await page.evaluate(() => ({
    state: window.passerelle.state, duration: window.passerelle.duration, position: window.passerelle.position,
    frames: window.passerelle.frames, pageError: window.passerelle.error,
  })));
  if (result.pageError) result.error = result.pageError;
} catch (e) {
  result.error = String(e);
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
