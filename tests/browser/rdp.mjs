// Opens a Passerelle RDP viewer URL in Debian's headless Chromium and reports, as one JSON line
// on stdout, what the page shows: its state, the broker's close code and reason, the notice it
// displays, and the dominant colour and size of the remote desktop as IronRDP drew it.
//
// usage: node rdp.mjs URL SCREENSHOT.png [--login USER:PASSWORD[:DOMAIN]] [--type TEXT]
//            [--wait-file PATH] [--resize WIDTHxHEIGHT] [--wait-close] [--timeout MS]
// --wait-file: type only once PATH exists (the workstation's typing target is up).
import { existsSync } from 'node:fs';
import { launch } from './common.mjs';

const [url, shot, ...rest] = process.argv.slice(2);
const opt = (name) => { const i = rest.indexOf(name); return i >= 0 ? rest[i + 1] : undefined; };
const timeout = Number(opt('--timeout') || 30000);
const login = opt('--login');
const typeText = opt('--type');
const resize = opt('--resize');
const waitFile = opt('--wait-file');
const waitClose = rest.includes('--wait-close');

// The canvas IronRDP draws on, inside its web component's shadow root.
const CANVAS = () => {
  const el = document.querySelector('iron-remote-desktop');
  return el && el.shadowRoot && el.shadowRoot.querySelector('canvas');
};

async function canvasInfo(page) {
  return page.evaluate(`(() => {
    const c = (${CANVAS.toString()})();
    if (!c || !c.width) return null;
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    const counts = new Map();
    for (let i = 0; i < d.length; i += 4 * 7) {
      const k = (d[i] >> 3) + ',' + (d[i + 1] >> 3) + ',' + (d[i + 2] >> 3);
      counts.set(k, (counts.get(k) || 0) + 1);
    }
    let best = null; let n = 0;
    for (const [k, v] of counts) if (v > n) { best = k; n = v; }
    return { width: c.width, height: c.height, dominant: best.split(',').map((x) => Number(x) << 3) };
  })()`);
}

const state = (page) => page.evaluate(() => window.passerelle && window.passerelle.state);

const browser = await launch();
const result = {
  state: null, closeCode: null, closeReason: null, notice: null, error: null, errorKind: null, pageError: null,
  dominant: null, desktop: null, resized: null, loginShown: false, recordedBadge: false, target: null,
  navigatedAt: null, firstFrameAt: null, console: [],
};
try {
  const context = await browser.newContext({ viewport: { width: 1000, height: 700 } });
  const page = await context.newPage();
  page.on('pageerror', (e) => { result.pageError = String(e); });
  page.on('console', (m) => { if (m.type() === 'error') result.console.push(m.text()); });
  result.navigatedAt = Date.now();
  await page.goto(url);
  await page.waitForFunction(() => window.passerelle && window.passerelle.state !== 'connecting', null, { timeout });
  if (await state(page) === 'login') {
    result.loginShown = true;
    if (login) {
      const [user, password, domain] = login.split(':');
      await page.fill('#username', user);
      await page.fill('#password', password);
      if (domain) await page.fill('#domain', domain);
      await page.click('#signin');
      await page.waitForFunction(() => !['connecting', 'login'].includes(window.passerelle.state), null, { timeout });
    }
  }
  if (await state(page) === 'connected') {
    // The first frame: a canvas with something other than black.
    const deadline = Date.now() + timeout;
    let info = null;
    while (Date.now() < deadline) {
      info = await canvasInfo(page);
      if (info && info.dominant.some((x) => x > 16)) { result.firstFrameAt = Date.now(); break; }
      await page.waitForTimeout(20);
    }
    if (info) { result.dominant = info.dominant; result.desktop = { width: info.width, height: info.height }; }
    if (typeText && waitFile) {
      const until = Date.now() + timeout;
      while (!existsSync(waitFile) && Date.now() < until) await page.waitForTimeout(50);
    }
    if (typeText) {
      const canvas = page.locator('iron-remote-desktop canvas');
      const box = await canvas.boundingBox();
      // The xterm of the tests sits at (200, 180) of the remote screen, 40x8 characters.
      const x = box.x + (260 / result.desktop.width) * box.width;
      const y = box.y + (210 / result.desktop.height) * box.height;
      await page.mouse.move(x, y);
      await page.mouse.click(x, y);
      await page.keyboard.type(typeText, { delay: 30 });
      await page.keyboard.press('Enter');
      await page.waitForTimeout(300);
    }
    if (resize) {
      const [w, h] = resize.split('x').map(Number);
      const before = result.desktop;
      await page.setViewportSize({ width: w, height: h });
      const until = Date.now() + timeout;
      while (Date.now() < until) {
        const now = await canvasInfo(page);
        if (now && (now.width !== before.width || now.height !== before.height)) {
          result.resized = { width: now.width, height: now.height };
          break;
        }
        await page.waitForTimeout(100);
      }
    }
  }
  if (waitClose) {
    await page.waitForFunction(() => window.passerelle.state === 'disconnected', null, { timeout });
  }
  if (shot) await page.screenshot({ path: shot });
  Object.assign(result, await page.evaluate(() => ({
    state: window.passerelle.state,
    closeCode: window.passerelle.closeCode,
    closeReason: window.passerelle.closeReason,
    error: window.passerelle.error,
    errorKind: window.passerelle.errorKind,
    notice: document.querySelector('#notice').hidden ? null : document.querySelector('#notice-text').textContent,
    recordedBadge: !document.querySelector('#recorded').hidden,
    target: document.querySelector('#target').textContent,
  })));
} catch (e) {
  result.pageError = result.pageError || String(e);
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
