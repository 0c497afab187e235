// Replays a session recording in the browser: the recording (format in proto/src/recording.rs)
// is fetched with an auditor or admin key, and its workstation-to-viewer RFB stream is fed to
// noVNC through a stand-in for its WebSocket, on the recorded clock. Seeking forward fast-plays
// to the target; seeking back restarts from the beginning and fast-plays (no keyframes yet).
import RFB from '/static/novnc/core/rfb.js';
import { initLogging } from '/static/novnc/core/util/logging.js';

const $ = (id) => document.getElementById(id);
const sessionId = decodeURIComponent(location.pathname.split('/').pop());
const state = (window.passerelle = { state: 'loading', position: 0, duration: 0, frames: 0, error: null });

function notice(title, text, login) {
  $('notice-title').textContent = title;
  $('notice-text').textContent = text;
  $('login').hidden = !login;
  $('notice').hidden = false;
}

function fmt(s) {
  const m = Math.floor(s / 60);
  return `${m}:${String(Math.floor(s % 60)).padStart(2, '0')}`;
}

// --- parsing -------------------------------------------------------------------------------
function parse(buf) {
  const bytes = new Uint8Array(buf);
  const magic = [0x50, 0x53, 0x52, 0x45, 0x43, 0x00, 0x01, 0x0a];
  if (bytes.length < 12 || magic.some((b, i) => bytes[i] !== b)) throw new Error('not a Passerelle recording');
  const dv = new DataView(buf);
  const hlen = dv.getUint32(8, true);
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(12, 12 + hlen)));
  const frames = [];
  let pos = 12 + hlen;
  let trailer = null;
  while (pos + 25 <= bytes.length) {
    const kind = bytes[pos];
    const t = Number(dv.getBigUint64(pos + 1, true)) / 1e6;
    const len = dv.getUint32(pos + 9, true);
    if (pos + 25 + len > bytes.length) break;
    const payload = bytes.subarray(pos + 17, pos + 17 + len);
    if (kind === 5) {
      const jlen = new DataView(payload.buffer, payload.byteOffset).getUint32(0, true);
      trailer = JSON.parse(new TextDecoder().decode(payload.subarray(4, 4 + jlen)));
    } else if (kind !== 4) {
      frames.push({ kind, t, payload });
    }
    pos += 25 + len;
  }
  return { header, frames, trailer };
}

// --- a WebSocket stand-in that noVNC drives --------------------------------------------------
class RecordedChannel {
  constructor(onReady) {
    this.binaryType = 'arraybuffer';
    this.protocol = '';
    this.readyState = 0;
    this._onopen = null; this.onmessage = null; this.onclose = null; this.onerror = null;
    this._sent = 0;
    this._onReady = onReady;
  }
  // Opens (and greets) only once noVNC has attached its handlers.
  get onopen() { return this._onopen; }
  set onopen(fn) {
    this._onopen = fn;
    if (fn && this.readyState === 0) {
      setTimeout(() => {
        if (this.readyState !== 0) return;
        this.readyState = 1;
        this._onopen({});
        this._deliver(new TextEncoder().encode('RFB 003.008\n'));
      }, 0);
    }
  }
  _deliver(bytes) {
    if (this.readyState === 1 && this.onmessage) this.onmessage({ data: bytes.slice().buffer });
  }
  // noVNC's messages: its version, its security choice, its ClientInit; later ones are ignored.
  send(data) {
    const n = data.byteLength !== undefined ? data.byteLength : data.length;
    const before = this._sent;
    this._sent += n;
    // Answer later, as a socket would: noVNC is still inside its own handler here.
    if (before < 12 && this._sent >= 12) setTimeout(() => this._deliver(new Uint8Array([1, 1])), 0);
    else if (before < 13 && this._sent >= 13) setTimeout(() => this._deliver(new Uint8Array([0, 0, 0, 0])), 0);
    else if (before < 14 && this._sent >= 14) setTimeout(() => this._onReady(), 0);
  }
  close() {
    if (this.readyState >= 2) return;
    this.readyState = 3;
    if (this.onclose) this.onclose({ code: 1000, reason: '', wasClean: true });
  }
}

// --- the player ------------------------------------------------------------------------------
let rec = null;
let rfb = null;
let channel = null;
let next = 0;          // index of the next frame to deliver
let position = 0;      // seconds of recording delivered
let playing = false;
let lastTick = 0;

function start(thenSeekTo) {
  if (rfb) { rfb.disconnect(); $('screen').replaceChildren(); }
  next = 0;
  position = 0;
  channel = new RecordedChannel(() => { if (thenSeekTo !== undefined) advanceTo(thenSeekTo); });
  rfb = new RFB($('screen'), channel, { shared: true });
  rfb.viewOnly = true;
  rfb.scaleViewport = true;
  rfb.addEventListener('desktopname', (e) => { $('meta').textContent = `${e.detail.name} · ${$('meta').textContent}`; });
}

function advanceTo(t) {
  while (next < rec.frames.length && rec.frames[next].t <= t) {
    const f = rec.frames[next++];
    if (f.kind === 1) channel._deliver(f.payload);
  }
  position = Math.min(t, state.duration);
  state.position = position;
  $('seek').value = String(position);
  $('time').textContent = `${fmt(position)} / ${fmt(state.duration)}`;
  if (position >= state.duration) { playing = false; state.state = 'ended'; $('play').textContent = 'Play'; }
}

function tick(now) {
  if (playing) {
    const speed = Number($('speed').value);
    advanceTo(position + ((now - lastTick) / 1000) * speed);
  }
  lastTick = now;
  requestAnimationFrame(tick);
}

function seek(t) {
  if (t >= position) advanceTo(t);
  else start(t);
}

async function load(key) {
  const res = await fetch(`/api/v1/recordings/${encodeURIComponent(sessionId)}`, { headers: { Authorization: `Bearer ${key}` } });
  if (res.status === 401 || res.status === 403) {
    sessionStorage.removeItem('passerelle-key');
    notice('Access needed', 'Replays are for auditor and admin keys.', true);
    return;
  }
  if (!res.ok) {
    const body = await res.json().catch(() => ({}));
    notice('No recording', (body.error && body.error.message) || `HTTP ${res.status}`, false);
    state.state = 'error';
    return;
  }
  rec = parse(await res.arrayBuffer());
  const h = rec.header;
  state.frames = rec.frames.length;
  state.duration = rec.trailer ? rec.trailer.duration_us / 1e6 : (rec.frames.length ? rec.frames[rec.frames.length - 1].t : 0);
  $('meta').textContent = `${h.service} on ${h.agent} · operator ${h.operator} · ${h.started_at}` +
    (rec.trailer ? ` · ${rec.trailer.end_reason}` : ' · recording cut short (broker stopped)');
  $('seek').max = String(state.duration);
  $('time').textContent = `0:00 / ${fmt(state.duration)}`;
  if (h.content !== 'rfb') {
    notice('Metadata only', `${h.service} sessions are encrypted end to end: the recording holds metadata and byte counts, not the screen.`, false);
    state.state = 'metadata';
    return;
  }
  for (const f of rec.frames) {
    if (f.kind !== 3) continue;
    const ev = JSON.parse(new TextDecoder().decode(f.payload));
    if (!ev.input) continue;
    const mark = document.createElement('div');
    mark.style.cssText = `position:absolute;left:${(100 * f.t) / Math.max(state.duration, 0.001)}%;width:2px;height:8px;background:#e3b341`;
    $('marks').append(mark);
  }
  $('status').textContent = 'Ready';
  $('play').disabled = false;
  $('seek').disabled = false;
  state.state = 'ready';
  start(0);
}

$('play').addEventListener('click', () => {
  if (state.state === 'ended') seek(0);
  playing = !playing;
  state.state = playing ? 'playing' : 'paused';
  $('play').textContent = playing ? 'Pause' : 'Play';
  $('status').textContent = playing ? 'Playing' : 'Paused';
});
$('seek').addEventListener('input', () => seek(Number($('seek').value)));
$('login').addEventListener('submit', (e) => {
  e.preventDefault();
  const key = $('key').value.trim();
  sessionStorage.setItem('passerelle-key', key);
  $('notice').hidden = true;
  load(key).catch((err) => { state.error = String(err); notice('Cannot replay', String(err), false); });
});
window.passerelleSeek = seek;
requestAnimationFrame((now) => { lastTick = now; tick(now); });
const hashParams = new URLSearchParams(location.hash.slice(1));
if (hashParams.has('debug')) initLogging('debug');
const key = hashParams.get('key') || sessionStorage.getItem('passerelle-key');
history.replaceState(null, '', location.pathname);
if (key) {
  sessionStorage.setItem('passerelle-key', key);
  load(key).catch((err) => { state.error = String(err); notice('Cannot replay', String(err), false); });
} else {
  notice('Access needed', 'Replays are for auditor and admin keys.', true);
}
