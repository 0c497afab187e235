// Opens a Passerelle viewer URL in Debian's headless Chromium and reports, as one JSON line on
// stdout, what the page shows: its connection state, the broker's close code and reason, and the
// dominant colour of the remote screen as drawn on noVNC's canvas.
//
// usage: node viewer.mjs URL SCREENSHOT.png [--type TEXT] [--wait-close] [--timeout MS]
import { launch, waitForPixels } from './common.mjs';

const [url, shot, ...rest] = process.argv.slice(2);
const opt = (name) => { const i = rest.indexOf(name); return i >= 0 ? rest[i + 1] : undefined; };
const timeout = Number(opt('--timeout') || 20000);
const typeText = opt('--type');
const waitClose = rest.includes('--wait-close');

const browser = await launch();
const result = { state: null, closeCode: null, closeReason: null, dominant: null, title: null, error: null };
try {
  const page = await browser.newPage({ viewport: { width: 800, height: 600 } });
  page.on('pageerror', (e) => { result.error = String(e); });
  await page.goto(url);
  await page.waitForFunction(() => window.passerelle && window.passerelle.state !== 'connecting', null, { timeout });

  if (await page.evaluate(() => window.passerelle.state) === 'connected') {
    result.dominant = await waitForPixels(page, timeout);
    if (typeText) {
      const box = await page.locator('#screen canvas').boundingBox();
      await page.mouse.click(box.x + box.width / 2, box.y + box.height / 2);
      await page.keyboard.type(typeText, { delay: 20 });
      await page.keyboard.press('Enter');
      await page.waitForTimeout(300);
    }
  }
  if (waitClose) {
    await page.waitForFunction(() => window.passerelle.state === 'disconnected', null, { timeout });
  }
  if (shot) await page.screenshot({ path: shot });
  Object.assign(result, await page.evaluate(() => ({
    state: window.passerelle.state, closeCode: window.passerelle.closeCode, closeReason: window.passerelle.closeReason,
    desktopLink: document.querySelector('#desktop') && !document.querySelector('#desktop').hidden
      ? document.querySelector('#desktop').getAttribute('href') : null,
    title: document.querySelector('#notice').hidden ? null : document.querySelector('#notice-text').textContent,
  })));
} catch (e) {
  result.error = String(e);
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
