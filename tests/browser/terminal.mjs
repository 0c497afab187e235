// Opens a Passerelle terminal page (an `ssh` session's viewer_url) in Debian's headless
// Chromium, runs a list of steps in it and reports, as one JSON line on stdout, what the page
// showed: its state, the broker's close code and reason, the login asked for, the user logged in
// as, the shell's exit, the terminal's size and screen text, and a snapshot per `snapshot` step.
//
// usage: node terminal.mjs URL SCREENSHOT.png --steps JSON [--timeout MS]
// steps (in order), each an object with one key:
//   {"state": "connected"}                 wait for window.passerelle.state
//   {"wait": "TEXT"}                       wait until the screen shows TEXT
//   {"type": "TEXT"}                       type TEXT ("\n" presses Enter)
//   {"login": {"user": U, "password": P}}  wait for the login form, fill it (user if editable), submit
//   {"waitLogin": "TEXT"}                  wait for a login request whose message holds TEXT
//   {"viewport": [W, H]}                   resize the window; wait until the terminal's size changes
//   {"snapshot": "NAME"}                   keep the screen text and the terminal's size as NAME
//   {"close": true}                        wait until the page is disconnected
import { launch } from './common.mjs';

const [url, shot, ...rest] = process.argv.slice(2);
const opt = (name) => { const i = rest.indexOf(name); return i >= 0 ? rest[i + 1] : undefined; };
const timeout = Number(opt('--timeout') || 20000);
const steps = JSON.parse(opt('--steps') || '[]');

const browser = await launch();
const result = { state: null, closeCode: null, closeReason: null, user: null, exit: null, login: null,
  cols: null, rows: null, screen: null, snapshots: {}, notice: null, recorded: null, error: null };
let page;
const screen = () => page.evaluate(() => window.passerelle.screen());
try {
  page = await browser.newPage({ viewport: { width: 900, height: 600 } });
  page.on('pageerror', (e) => { result.error = String(e); });
  await page.goto(url);
  await page.waitForFunction(() => window.passerelle && window.passerelle.state !== 'connecting', null, { timeout });
  for (const step of steps) {
    if (step.state) {
      await page.waitForFunction((s) => window.passerelle.state === s, step.state, { timeout });
    } else if (step.wait !== undefined) {
      await page.waitForFunction((t) => window.passerelle.screen().includes(t), step.wait, { timeout })
        .catch(async (e) => { throw new Error(`${e.message}; screen: ${JSON.stringify(await screen())}`); });
    } else if (step.type !== undefined) {
      await page.locator('#screen .xterm-helper-textarea').focus();
      await page.keyboard.type(step.type, { delay: 10 });
    } else if (step.waitLogin !== undefined) {
      await page.waitForFunction((t) => window.passerelle.login && (window.passerelle.login.message || '').includes(t),
        step.waitLogin, { timeout });
    } else if (step.login) {
      await page.waitForFunction(() => window.passerelle.login, null, { timeout });
      if (!(await page.locator('#user').evaluate((e) => e.readOnly))) await page.fill('#user', step.login.user);
      await page.fill('#password', step.login.password);
      await page.click('#login-submit');
    } else if (step.viewport) {
      const before = await page.evaluate(() => [window.passerelle.cols, window.passerelle.rows]);
      await page.setViewportSize({ width: step.viewport[0], height: step.viewport[1] });
      await page.waitForFunction((b) => window.passerelle.cols !== b[0] || window.passerelle.rows !== b[1], before, { timeout });
    } else if (step.snapshot) {
      result.snapshots[step.snapshot] = await page.evaluate(() => ({
        screen: window.passerelle.screen(), cols: window.passerelle.cols, rows: window.passerelle.rows,
      }));
    } else if (step.close) {
      await page.waitForFunction(() => window.passerelle.state === 'disconnected', null, { timeout });
    }
  }
} catch (e) {
  result.error = String(e);
}
try {
  if (shot) await page.screenshot({ path: shot });
  Object.assign(result, await page.evaluate(() => ({
    state: window.passerelle.state, closeCode: window.passerelle.closeCode, closeReason: window.passerelle.closeReason,
    user: window.passerelle.user, exit: window.passerelle.exit, login: window.passerelle.login,
    cols: window.passerelle.cols, rows: window.passerelle.rows, screen: window.passerelle.screen(),
    notice: document.querySelector('#notice').hidden ? null : document.querySelector('#notice-text').textContent,
    recorded: !document.querySelector('#recorded').hidden,
  })));
} catch (e) {
  result.error = result.error || String(e);
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
