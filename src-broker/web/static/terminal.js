// The terminal of an `ssh` session: xterm.js on the session's WebSocket. Binary frames are the
// terminal's bytes both ways; text frames are JSON control messages (see
// proto/src/terminal/mod.rs): the page sends {"t":"resize"} and, when asked with {"t":"login"},
// {"t":"credentials"}; the broker sends {"t":"ready"} and {"t":"exit"}. The token rides in the
// URL fragment (never sent to a server) and is removed from the address bar at once; it goes to
// the broker in a WebSocket subprotocol, not in the URL.
import { Terminal } from '/static/xterm/lib/xterm.mjs';
import { FitAddon } from '/static/xterm-addon-fit/lib/addon-fit.mjs';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.hash.slice(1));
const token = params.get('token') || '';
const viewOnly = params.get('view_only') === '1';
const sessionId = decodeURIComponent(location.pathname.split('/').pop());
history.replaceState(null, '', location.pathname);

const term = new Terminal({
  scrollback: 5000,
  cursorBlink: true,
  disableStdin: viewOnly,
  fontFamily: 'DejaVu Sans Mono, monospace',
  fontSize: 14,
});
const fit = new FitAddon();
term.loadAddon(fit);
term.open($('screen'));
fit.fit();

// What tests and the page read: the connection's state, the broker's close code and reason,
// the login asked for, the user logged in as, the shell's exit, and the screen's text.
const state = (window.passerelle = {
  state: 'connecting', closeCode: null, closeReason: '', login: null, user: null, exit: null,
  cols: term.cols, rows: term.rows, bytesIn: 0,
  screen: () => {
    const b = term.buffer.active;
    const lines = [];
    for (let i = 0; i < term.rows; i++) {
      const line = b.getLine(b.viewportY + i);
      lines.push(line ? line.translateToString(true) : '');
    }
    return lines.join('\n');
  },
});

const REASONS = {
  4000: 'The workstation closed the terminal.',
  4001: 'This link was already used or is not valid. Open the session again from the console.',
  4002: 'This link has expired. Open the session again from the console.',
  4003: 'The session has ended.',
  4010: 'The workstation is offline.',
  4011: "The workstation's SSH service is not available.",
  4012: 'The workstation did not connect in time.',
  4013: 'The workstation disconnected.',
  4020: 'The session was stopped.',
  4021: 'The session reached its time limit.',
  4022: 'The broker is restarting.',
  4023: 'The connection was too slow and the session was ended.',
  4024: 'The workstation was revoked.',
  4025: "The session's recording failed.",
  4030: 'The terminal sent something the broker does not accept.',
  4060: "The broker could not connect to the workstation's SSH server.",
  4061: "The workstation's SSH host key has changed: the broker refused to connect.",
  4062: 'The workstation refused the login.',
  4063: 'The workstation refused to open a terminal.',
  1009: 'A message was too big.',
};
// Codes whose reason says more than the fixed text.
const DETAILED = new Set([4000, 4020, 4060, 4061, 4062, 4063]);

function setStatus(text, cls) {
  $('status').textContent = text;
  $('status').className = cls || '';
}

function notice(title, text) {
  $('notice-title').textContent = title;
  $('notice-text').textContent = text;
  $('login').hidden = true;
  $('notice').hidden = false;
}

const agent = params.get('agent');
const service = params.get('service') || 'ssh';
$('name').textContent = agent ? `${agent} · ${service}` : service;
if (agent) document.title = `${agent} — Passerelle terminal`;
$('recorded').hidden = params.get('record') !== '1';
$('viewonly').hidden = !viewOnly;
if (viewOnly) $('paste').disabled = true;

function ended() {
  if (state.state === 'disconnected') return;
  state.state = 'disconnected';
  const code = state.closeCode;
  const known = REASONS[code];
  const reason = state.closeReason;
  setStatus('Disconnected', 'bad');
  let text = known || 'The connection closed.';
  if (reason && (!known || DETAILED.has(code))) text += ` (${reason})`;
  notice('Session ended', text);
  for (const id of ['paste', 'disconnect']) $(id).disabled = true;
  term.options.disableStdin = true;
}

let ws = null;
function send(obj) {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(obj));
}

function sendSize() {
  state.cols = term.cols;
  state.rows = term.rows;
  send({ t: 'resize', cols: term.cols, rows: term.rows });
}

function control(msg) {
  if (msg.t === 'login') {
    state.state = 'login';
    state.login = msg;
    setStatus('Login needed', '');
    $('notice-title').textContent = 'Log in to the workstation';
    $('notice-text').textContent = msg.message || '';
    $('user').value = msg.user || $('user').value;
    $('user').readOnly = !!msg.user;
    $('password').value = '';
    $('login').hidden = false;
    $('notice').hidden = false;
    (msg.user ? $('password') : $('user')).focus();
  } else if (msg.t === 'ready') {
    state.state = 'connected';
    state.user = msg.user;
    state.login = null;
    $('notice').hidden = true;
    setStatus(`Connected as ${msg.user}`, 'ok');
    term.focus();
  } else if (msg.t === 'exit') {
    state.exit = msg;
  }
}

if (!token) {
  setStatus('No token', 'bad');
  notice('Cannot connect', 'This page must be opened with the link the console gives (it carries a one-time token).');
} else {
  const proto = location.protocol === 'https:' ? 'wss://' : 'ws://';
  // The broker answers `binary`; the second protocol only carries the token.
  ws = new WebSocket(`${proto}${location.host}/ws/sessions/${encodeURIComponent(sessionId)}`,
    ['binary', `passerelle.token.${token}`]);
  ws.binaryType = 'arraybuffer';
  ws.addEventListener('open', () => { setStatus('Logging in…', ''); sendSize(); });
  ws.addEventListener('message', (e) => {
    if (typeof e.data === 'string') {
      try { control(JSON.parse(e.data)); } catch (err) { console.warn('bad control message', err); }
    } else {
      state.bytesIn += e.data.byteLength;
      term.write(new Uint8Array(e.data));
    }
  });
  ws.addEventListener('close', (e) => {
    state.closeCode = e.code;
    state.closeReason = e.reason;
    ended();
  });
  const encoder = new TextEncoder();
  term.onData((data) => {
    if (!viewOnly && ws.readyState === WebSocket.OPEN && state.state === 'connected') ws.send(encoder.encode(data));
  });
  term.onBinary((data) => {
    if (viewOnly || ws.readyState !== WebSocket.OPEN || state.state !== 'connected') return;
    const bytes = new Uint8Array(data.length);
    for (let i = 0; i < data.length; i++) bytes[i] = data.charCodeAt(i) & 0xff;
    ws.send(bytes);
  });
  term.onResize(sendSize);
  new ResizeObserver(() => fit.fit()).observe($('screen'));
  $('login').addEventListener('submit', (e) => {
    e.preventDefault();
    send({ t: 'credentials', user: $('user').value, password: $('password').value });
    $('password').value = '';
    $('login').hidden = true;
    $('notice-text').textContent = 'Checking…';
    state.login = null;
  });
  $('disconnect').addEventListener('click', () => ws.close(1000));
}

$('copy').addEventListener('click', () => {
  const text = term.getSelection();
  if (text && navigator.clipboard) navigator.clipboard.writeText(text).catch(() => {});
  term.focus();
});
$('paste').addEventListener('click', () => {
  if (!navigator.clipboard) return;
  navigator.clipboard.readText().then((text) => term.paste(text)).catch(() => {});
});
term.attachCustomKeyEventHandler((e) => {
  // Ctrl+Shift+C copies the selection (Ctrl+C is the terminal's interrupt).
  if (e.type === 'keydown' && e.ctrlKey && e.shiftKey && e.code === 'KeyC') {
    const text = term.getSelection();
    if (text && navigator.clipboard) navigator.clipboard.writeText(text).catch(() => {});
    return false;
  }
  return true;
});
$('full').addEventListener('click', () => {
  if (document.fullscreenElement) document.exitFullscreen();
  else document.documentElement.requestFullscreen().catch(() => {});
});
