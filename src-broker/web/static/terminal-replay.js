// Replays a terminal recording: the broker serves it as asciicast v2 (verified first,
// GET /api/v1/recordings/{id}/asciicast?segment=N) and xterm.js plays its output at the recorded
// times, with play/pause, speed 1–16× and seeking (a seek back replays the output from the start
// at once; a seek forward writes what lies between). Each connection of the session is recorded
// on its own: `#connection=N` (from 1) picks one, and a menu switches when there are several.
// `#t=SECONDS` opens at that time (search results link there). Auditor and admin keys only: the
// key comes from `#key=`, the session's storage, or the form.
import { Terminal } from '/static/xterm/lib/xterm.mjs';

const $ = (id) => document.getElementById(id);
const sessionId = decodeURIComponent(location.pathname.split('/').pop());
const hash = new URLSearchParams(location.hash.slice(1));
const startAt = Number(hash.get('t')) || 0;
const CONNECTION = Math.max(1, Math.floor(Number(hash.get('connection'))) || 1);

const state = (window.passerelle = {
  state: 'loading', position: 0, duration: 0, events: 0, error: null, width: 0, height: 0,
  connection: CONNECTION, connections: 0,
  screen: () => {
    if (!term) return '';
    const b = term.buffer.active;
    const lines = [];
    for (let i = 0; i < term.rows; i++) {
      const line = b.getLine(b.viewportY + i);
      lines.push(line ? line.translateToString(true) : '');
    }
    return lines.join('\n');
  },
});

let term = null;
let header = null;
let events = [];      // [t, code, data], in time order
let next = 0;         // index of the next event to apply
let position = 0;
let playing = false;
let lastTick = 0;
let pending = 0;      // writes xterm.js has not processed yet

function notice(title, text, form) {
  $('notice-title').textContent = title;
  $('notice-text').textContent = text;
  $('keyform').hidden = !form;
  $('notice').hidden = false;
}

function fmt(s) {
  const m = Math.floor(s / 60);
  return `${m}:${String(Math.floor(s % 60)).padStart(2, '0')}`;
}

function showTime() {
  state.position = position;
  $('time').textContent = `${fmt(position)} / ${fmt(state.duration)}`;
  $('seek').value = String(position);
}

function write(text) {
  if (!text) return;
  pending += 1;
  term.write(text, () => { pending -= 1; });
}

// Applies every event up to time `t`, joining consecutive output into one write.
function applyUntil(t) {
  let out = '';
  while (next < events.length && events[next][0] <= t) {
    const [, code, data] = events[next];
    if (code === 'o') {
      out += data;
    } else if (code === 'r') {
      write(out);
      out = '';
      const [c, r] = data.split('x').map(Number);
      if (c > 0 && r > 0) term.resize(c, r);
    }
    next += 1;
  }
  write(out);
}

function seek(t) {
  const target = Math.max(0, Math.min(t, state.duration));
  if (target < position || next === 0) {
    term.reset();
    term.resize(header.width, header.height);
    next = 0;
  }
  position = target;
  applyUntil(position);
  showTime();
}
window.passerelleSeek = (t) => { seek(t); return whenWritten(); };

// Resolves once xterm.js has drawn every write made so far.
function whenWritten() {
  return new Promise((resolve) => term.write('', resolve));
}

function tick(now) {
  if (!playing) return;
  const dt = (now - lastTick) / 1000;
  lastTick = now;
  position = Math.min(state.duration, position + dt * Number($('speed').value));
  applyUntil(position);
  showTime();
  if (position >= state.duration) {
    playing = false;
    $('play').textContent = 'Play';
    whenWritten().then(() => { state.state = 'ended'; });
    return;
  }
  requestAnimationFrame(tick);
}

function play() {
  if (playing) {
    playing = false;
    state.state = 'paused';
    $('play').textContent = 'Play';
    return;
  }
  if (position >= state.duration) seek(0);
  playing = true;
  state.state = 'playing';
  $('play').textContent = 'Pause';
  lastTick = performance.now();
  requestAnimationFrame(tick);
}

// The session's recorded connections, to switch between them.
async function listConnections(key) {
  const res = await fetch(`/api/v1/recordings/${encodeURIComponent(sessionId)}/segments`, {
    headers: { Authorization: `Bearer ${key}` },
  });
  if (!res.ok) return;
  const segments = await res.json();
  state.connections = segments.length;
  const pick = $('connection');
  pick.replaceChildren(...segments.map((s) => {
    const o = document.createElement('option');
    o.value = String(s.segment);
    o.textContent = `Connection ${s.segment}${s.started_at ? ` · ${s.started_at.slice(11, 19)}` : ''}`;
    o.selected = s.segment === CONNECTION;
    return o;
  }));
  pick.hidden = segments.length < 2;
}

async function load(key) {
  const url = `/api/v1/recordings/${encodeURIComponent(sessionId)}/asciicast?segment=${CONNECTION}`;
  const res = await fetch(url, { headers: { Authorization: `Bearer ${key}` } });
  if (res.status === 401 || res.status === 403) {
    sessionStorage.removeItem('passerelle-key');
    notice('Access needed', 'Replays are for auditor and admin keys.', true);
    state.state = 'login';
    return;
  }
  if (!res.ok) {
    const body = await res.json().catch(() => ({}));
    throw new Error((body.error && body.error.message) || `HTTP ${res.status}`);
  }
  const lines = (await res.text()).split('\n').filter((l) => l);
  header = JSON.parse(lines[0]);
  events = lines.slice(1).map((l) => JSON.parse(l));
  state.events = events.length;
  state.duration = events.length ? events[events.length - 1][0] : 0;
  state.width = header.width;
  state.height = header.height;
  term = new Terminal({ cols: header.width, rows: header.height, scrollback: 5000, disableStdin: true,
    fontFamily: 'DejaVu Sans Mono, monospace', fontSize: 14 });
  term.open($('screen'));
  $('notice').hidden = true;
  $('seek').max = String(state.duration);
  $('seek').disabled = false;
  $('play').disabled = false;
  const when = header.timestamp ? new Date(header.timestamp * 1000).toLocaleString() : '';
  $('meta').textContent = `${header.width}×${header.height} ${when}`;
  $('status').textContent = 'Ready';
  seek(startAt);
  await whenWritten();
  await listConnections(key).catch(() => {});
  state.state = 'ready';
}

function fail(e) {
  state.state = 'error';
  state.error = String(e.message || e);
  $('status').textContent = 'Error';
  notice('Cannot replay', state.error, false);
}

$('play').addEventListener('click', play);
$('connection').addEventListener('change', () => {
  location.hash = `connection=${$('connection').value}`;
  location.reload();
});
$('seek').addEventListener('input', () => seek(Number($('seek').value)));
$('keyform').addEventListener('submit', (e) => {
  e.preventDefault();
  const key = $('key').value.trim();
  sessionStorage.setItem('passerelle-key', key);
  $('notice').hidden = true;
  load(key).catch(fail);
});
const key = hash.get('key') || sessionStorage.getItem('passerelle-key');
const kept = [CONNECTION > 1 ? `connection=${CONNECTION}` : '', startAt ? `t=${startAt}` : ''].filter((p) => p);
history.replaceState(null, '', location.pathname + (kept.length ? `#${kept.join('&')}` : ''));
if (key) {
  sessionStorage.setItem('passerelle-key', key);
  load(key).catch(fail);
} else {
  notice('Access needed', 'Replays are for auditor and admin keys.', true);
  state.state = 'login';
}
