// The screen benchmark's browser: one headless Chromium (Debian's, through playwright-core) that
// `passerelle-bench --screen` drives with one JSON command per stdin line, each answered by one
// JSON line on stdout ({"ok": true, ...} or {"error": "..."}), which carries the command's "id"
// back (so that a late answer to a command the harness gave up on is not taken for the next):
//   {"cmd":"open","url":U,"probe":[X,Y],"timeout_ms":N}  a new page on U; answers when the page's
//        screen is 1920x1080-sized with pixels (the probe not black): {"ok":true,"setup_ms":N}
//   {"cmd":"start","probe":[X,Y]}  starts the page's recording (pages/instrument.js)
//   {"cmd":"stop"}   stops it: {"ok":true,"changes":[[t_ms,r,g,b],...],"frames":N,"ticks":N,
//        "bytes":N,"msgs":N,"arrivals":[t_ms,...],"t0":T,"t1":T} (times on CLOCK_REALTIME, ms)
//   {"cmd":"now"}    the page's clock: {"ok":true,"now":T}
//   {"cmd":"close"}  closes the page (and its WebSocket)
// The first line out is {"ok":true,"ready":true}. Pages for stacks (b) and (c), given as
// http://screen.bench/PAGE, are served from pages/ and node_modules by a static server of this
// process on 127.0.0.1. Every step inside the page has a deadline (EVAL_MS; opening: timeout_ms),
// so that a page whose main thread is stuck gives an error, not silence.
//
// usage: node driver.mjs   (CHROMIUM overrides /usr/bin/chromium)
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const instrument = fs.readFileSync(path.join(here, 'pages', 'instrument.js'), 'utf8');
// What the page server serves: URL prefix -> directory (or file).
const MOUNTS = [
  ['/novnc/', path.join(here, 'node_modules', '@novnc', 'novnc')],
  ['/guac/guacamole-common.js', path.join(here, 'node_modules', 'guacamole-common-js', 'dist', 'esm', 'guacamole-common.js')],
  ['/', path.join(here, 'pages')],
];
const TYPES = { '.html': 'text/html', '.js': 'text/javascript', '.json': 'application/json' };

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
});
let context = null;
let page = null;
// How long one evaluation inside the page may take.
const EVAL_MS = 10000;

// `page.evaluate` with a deadline naming what did not happen.
async function evaluate(what, fn, arg) {
  let timer;
  const limit = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`the page did not ${what} within ${EVAL_MS} ms`)), EVAL_MS);
  });
  try {
    return await Promise.race([page.evaluate(fn, arg), limit]);
  } finally {
    clearTimeout(timer);
  }
}

// Pages for stacks (b) and (c): a static server on loopback (a page from a public origin may not
// open a WebSocket to 127.0.0.1: Chromium's local network access checks).
const server = http.createServer(async (req, res) => {
  const { pathname } = new URL(req.url, 'http://x');
  for (const [prefix, dir] of MOUNTS) {
    if (!pathname.startsWith(prefix)) continue;
    const file = prefix.endsWith('/') ? path.join(dir, pathname.slice(prefix.length)) : dir;
    if (!file.startsWith(dir)) break;
    try {
      const body = await fs.promises.readFile(file);
      res.writeHead(200, { 'content-type': TYPES[path.extname(file)] || 'application/octet-stream' });
      res.end(body);
    } catch {
      res.writeHead(404);
      res.end('not found');
    }
    return;
  }
  res.writeHead(404);
  res.end('not found');
});
await new Promise((resolve) => { server.listen(0, '127.0.0.1', resolve); });
const base = `http://127.0.0.1:${server.address().port}/`;

async function close() {
  if (context) await context.close();
  context = null;
  page = null;
}

async function open({ url, probe, timeout_ms: timeoutMs }) {
  await close();
  context = await browser.newContext({ viewport: { width: 1920, height: 1080 } });
  await context.addInitScript(instrument);
  page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  const start = Date.now();
  const deadline = start + (timeoutMs || 30000);
  await page.goto(url.replace('http://screen.bench/', base), { timeout: timeoutMs || 30000 });
  for (;;) {
    const p = await evaluate('read its canvas', ([x, y]) => window.__bench.peek(x, y), probe);
    if (p && p.width >= 1920 && p.rgb.some((v) => v > 16)) return { setup_ms: Date.now() - start };
    if (Date.now() > deadline) {
      const state = await evaluate('give its state', () => window.passerelle);
      throw new Error(`the page showed no screen within ${timeoutMs} ms: ${JSON.stringify({ peek: p, state, errors })}`);
    }
    await page.waitForTimeout(50);
  }
}

async function handle(msg) {
  switch (msg.cmd) {
    case 'open': return open(msg);
    case 'start': {
      const [x, y] = msg.probe;
      await evaluate('start recording', ([px, py]) => window.__bench.start(px, py), [x, y]);
      return {};
    }
    case 'stop': return evaluate('stop recording', () => window.__bench.stop());
    case 'now': return { now: await evaluate('read its clock', () => window.__bench.now()) };
    case 'close': await close(); return {};
    default: throw new Error(`unknown command ${msg.cmd}`);
  }
}

const out = (obj) => process.stdout.write(`${JSON.stringify(obj)}\n`);
out({ ok: true, ready: true });
for await (const line of readline.createInterface({ input: process.stdin })) {
  if (!line.trim()) continue;
  let id = null;
  try {
    const msg = JSON.parse(line);
    id = msg.id ?? null;
    out({ ok: true, id, ...(await handle(msg)) });
  } catch (e) {
    out({ ok: false, id, error: String(e && e.stack ? e.message : e) });
  }
}
await browser.close();
server.close();
