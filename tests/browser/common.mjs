// What the page drivers share: Debian's Chromium started the way this machine needs it, and the
// dominant colour of noVNC's canvas.
import { chromium } from 'playwright-core';

export function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
  });
}

// The most frequent colour (in steps of 8) of the canvas under #screen, or null before it has a size.
export function dominantColour(page) {
  return page.evaluate(() => {
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
}

// Polls the canvas until it shows something other than black, for at most `ms`.
export async function waitForPixels(page, ms) {
  const deadline = Date.now() + ms;
  let colour = null;
  while (Date.now() < deadline) {
    colour = await dominantColour(page);
    if (colour && colour.some((x) => x > 16)) break;
    await page.waitForTimeout(100);
  }
  return colour;
}
