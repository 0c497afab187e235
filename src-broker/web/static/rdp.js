// The RDP viewer: IronRDP's web client speaking RDCleanPath to the broker on the session's
// WebSocket. The one-time token rides in the URL fragment (never sent to a server as part of a
// URL, so no proxy logs it) and goes to the broker inside the RDCleanPath request.
//
// Credentials: when the broker stores them for the workstation (`creds=stored`), the page
// sends placeholders over TLS and the broker puts the real ones into the Client Info PDU; the
// operator never sees them. Otherwise the page asks, and what is typed goes to the workstation
// (through CredSSP for NLA servers); the broker keeps none of it.
import { Backend, displayControl, enableCredssp, init } from '/static/ironrdp-rdp/iron-remote-desktop-rdp.js';
import '/static/ironrdp/iron-remote-desktop.js';
import { offerDesktopLink } from '/static/desktop-link.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.hash.slice(1));
const token = params.get('token') || '';
const viewOnly = params.get('view_only') === '1';
const recorded = params.get('record') === '1';
const storedCreds = params.get('creds') === 'stored';
const agent = params.get('agent') || '';
const exchange = params.get('exchange');
const sessionId = decodeURIComponent(location.pathname.split('/').pop());
history.replaceState(null, '', location.pathname);

// What tests and the page read: the connection's state and, once closed, the broker's reason.
const state = (window.passerelle = {
  state: 'connecting', closeCode: null, closeReason: '', error: null, errorKind: null, credentials: null, desktop: null,
});

const REASONS = {
  4000: 'The workstation closed the connection.',
  4001: 'This link was already used or is not valid. Open the session again from the console.',
  4002: 'This link has expired. Open the session again from the console.',
  4003: 'The session has ended.',
  4004: 'Too many failed attempts from this address. Try again later.',
  4010: 'The workstation is offline.',
  4011: "The workstation's remote desktop service is not available.",
  4012: 'The workstation did not connect in time.',
  4013: 'The workstation disconnected.',
  4020: 'The session was stopped.',
  4021: 'The session reached its time limit.',
  4022: 'The broker is restarting.',
  4023: 'The connection was too slow and the session was ended.',
  4024: 'The workstation was revoked.',
  4025: "The session's recording failed, so the session was ended.",
  4030: 'The viewer sent something the broker does not accept.',
  4050: "The broker could not open an RDP connection to the workstation.",
  4051: "The workstation's RDP server refused the connection's security settings.",
  4052: "The broker could not establish TLS with the workstation's RDP server.",
  4053: "The workstation's RDP certificate is not the one the broker knows for it, so the connection was refused. If the workstation was reinstalled or its certificate renewed, an administrator can reset the pinned certificate.",
  4054: "The broker did not accept this viewer's connection request.",
  4055: 'The workstation refused the user name or password (NLA). Open the session again from the console to retry.',
};
// Codes whose close reason adds what a person needs (who stopped it, what the server said).
const DETAILED = new Set([4011, 4020, 4050, 4051, 4052, 4054]);

// IronRDP's error kinds (IronErrorKind).
const KINDS = {
  1: 'The workstation refused the user name or password.',
  2: 'The workstation refused the logon: check the user name and password.',
  3: 'The workstation denied access to this account.',
  5: 'The page could not reach the broker.',
  6: "The workstation's RDP server refused the security settings.",
};

function setStatus(text, cls) {
  $('status').textContent = text;
  $('status').className = cls || '';
}

function notice(title, text) {
  $('notice-title').textContent = title;
  $('notice-text').textContent = text;
  $('notice').hidden = false;
}

// The socket IronRDP opens is ours to watch: the broker's close code says why a session ended.
let socketClosed;
const closed = new Promise((resolve) => { socketClosed = resolve; });
const NativeWebSocket = window.WebSocket;
window.WebSocket = class extends NativeWebSocket {
  constructor(...args) {
    super(...args);
    this.addEventListener('close', (e) => {
      // IronRDP's WebSocket wrapper dispatches a close event of its own ("client dropped")
      // when it lets go of the socket: only the browser's (trusted) one has the broker's code.
      if (!e.isTrusted || state.closeCode !== null) return;
      state.closeCode = e.code;
      state.closeReason = e.reason;
      socketClosed();
    });
  }
};

function describe(err) {
  if (err && typeof err.kind === 'function') {
    state.errorKind = err.kind();
    const text = KINDS[state.errorKind];
    let detail = '';
    try { detail = String(err.backtrace()).split('\n')[0]; } catch { /* none */ }
    return text ? `${text}` : detail || 'The connection failed.';
  }
  return err ? String(err.message || err) : '';
}

let ending = false;
async function ended(err) {
  if (ending) return;
  ending = true;
  // The broker's close frame follows its answer: wait (briefly) for the socket's close event.
  await Promise.race([closed, new Promise((r) => setTimeout(r, 2000))]);
  state.state = 'disconnected';
  if (err) state.error = describe(err);
  const code = state.closeCode;
  const known = REASONS[code];
  let text;
  if (known && code !== 4000) {
    text = known;
    if (state.closeReason && DETAILED.has(code)) text += ` (${state.closeReason})`;
  } else if (state.error) {
    text = state.error;
    if (state.errorKind === 1 || state.errorKind === 2) text += ' Open the session again from the console to retry.';
  } else {
    text = known || 'The connection closed.';
  }
  setStatus('Disconnected', 'bad');
  $('login').hidden = true;
  notice('Session ended', text);
  for (const id of ['cad', 'clipbtn', 'disconnect', 'fit', 'unicode']) $(id).disabled = true;
}

function askCredentials() {
  return new Promise((resolve) => {
    state.state = 'login';
    setStatus('Sign in', '');
    $('login').hidden = false;
    $('username').focus();
    $('login').addEventListener('submit', (e) => {
      e.preventDefault();
      $('login').hidden = true;
      const c = { username: $('username').value, password: $('password').value, domain: $('domain').value, credssp: true };
      $('password').value = '';
      resolve(c);
    }, { once: true });
  });
}

function screenSize() {
  const s = $('screen');
  return { width: Math.max(200, Math.floor(s.clientWidth)), height: Math.max(200, Math.floor(s.clientHeight)) };
}

async function main() {
  $('target').textContent = agent ? `${agent} · RDP` : 'RDP';
  if (agent) document.title = `${agent} — Passerelle RDP`;
  $('recorded').hidden = !recorded;
  if (viewOnly) {
    $('viewonly').hidden = false;
    $('cad').hidden = true;
    $('clipsend').disabled = true;
  }
  offerDesktopLink(sessionId, exchange, $('desktop'), () => { state.launch = true; });
  if (!token) {
    setStatus('No token', 'bad');
    state.state = 'disconnected';
    notice('Cannot connect', 'This page must be opened with the link the console gives (it carries a one-time token).');
    return;
  }
  await init('WARN');
  const el = document.createElement('iron-remote-desktop');
  const ready = new Promise((resolve) => {
    el.addEventListener('ready', (e) => resolve(e.detail.irgUserInteraction), { once: true });
  });
  el.module = Backend;
  el.setAttribute('scale', 'fit');
  el.setAttribute('flexcenter', 'true');
  el.setAttribute('verbose', 'false');
  $('screen').append(el);
  const ui = await ready;
  ui.onWarningCallback((w) => console.warn(`rdp: ${w}`));

  const creds = storedCreds
    // Placeholders: the broker replaces them with the stored credentials (TLS servers).
    ? { username: 'passerelle', password: 'stored-by-the-broker', domain: '', credssp: false }
    : await askCredentials();
  state.credentials = storedCreds ? 'stored' : 'typed';
  setStatus('Connecting…', '');
  state.state = 'connecting';

  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const url = `${proto}//${location.host}/ws/sessions/${encodeURIComponent(sessionId)}`;
  const config = ui.configBuilder()
    .withUsername(creds.username)
    .withPassword(creds.password)
    .withServerDomain(creds.domain)
    .withDestination(agent || 'workstation')
    .withProxyAddress(url)
    .withAuthToken(token)
    .withDesktopSize(screenSize())
    .withExtension(enableCredssp(creds.credssp))
    // A view-only viewer does not resize the workstation's desktop.
    .withExtension(displayControl(!viewOnly))
    .build();
  ui.setEnableClipboard(!viewOnly);

  let info;
  try {
    info = await ui.connect(config);
  } catch (err) {
    return ended(err);
  }
  state.state = 'connected';
  state.desktop = { width: info.initialDesktopSize.width, height: info.initialDesktopSize.height };
  setStatus('Connected', 'ok');
  ui.setVisibility(true);
  wire(ui);
  try {
    await info.run();
    ended();
  } catch (err) {
    ended(err);
  }
}

function canvasSize() {
  const el = document.querySelector('iron-remote-desktop');
  const c = el && el.shadowRoot && el.shadowRoot.querySelector('canvas');
  return c ? { width: c.width, height: c.height } : null;
}

function wire(ui) {
  // Asks the server for the window's size (display control). A request made before the
  // server opened its display control channel is dropped by IronRDP: ask again, a few times,
  // until the desktop has the size asked for (servers without display control ignore it).
  let resizing;
  let attempts = 0;
  const apply = () => {
    if (viewOnly || !$('fit').checked || state.state !== 'connected') return;
    const { width, height } = screenSize();
    const before = canvasSize();
    if (!before || (before.width === width && before.height === height) || attempts >= 5) return;
    attempts += 1;
    ui.resize(width, height);
    // Nothing changed after a while: the request was dropped, ask again.
    resizing = setTimeout(() => {
      const now = canvasSize();
      if (now && now.width === before.width && now.height === before.height) apply();
    }, 3000);
  };
  const follow = () => {
    clearTimeout(resizing);
    attempts = 0;
    resizing = setTimeout(apply, 250);
  };
  window.addEventListener('resize', follow);
  document.addEventListener('fullscreenchange', follow);
  $('fit').addEventListener('change', () => {
    ui.setScale($('fit').checked ? 1 : 3);
    follow();
  });
  $('unicode').addEventListener('change', () => ui.setKeyboardUnicodeMode($('unicode').checked));
  $('cad').addEventListener('click', () => ui.ctrlAltDel());
  $('clipbtn').addEventListener('click', () => { $('clip').hidden = !$('clip').hidden; });
  $('clipclose').addEventListener('click', () => { $('clip').hidden = true; });
  // IronRDP synchronises the browser's clipboard with the workstation's while the page has the
  // focus; these two buttons move text through that clipboard by hand.
  $('clipsend').addEventListener('click', async () => {
    try { await navigator.clipboard.writeText($('cliptext').value); } catch (e) { console.warn(`clipboard: ${e}`); }
  });
  $('clipget').addEventListener('click', async () => {
    try { $('cliptext').value = await navigator.clipboard.readText(); } catch (e) { console.warn(`clipboard: ${e}`); }
  });
  $('full').addEventListener('click', () => {
    if (document.fullscreenElement) document.exitFullscreen();
    else document.documentElement.requestFullscreen().catch(() => {});
  });
  $('disconnect').addEventListener('click', () => ui.shutdown());
}

main().catch((err) => ended(err));
