// Replays a session recording in the browser from its screen stream (src-broker/src/
// screen_stream.rs): the broker decodes the recording once into stateless records (PNG
// rectangles, copies, resizes) with a full-screen keyframe every few seconds. Playing draws the
// records on a canvas on the recorded clock; seeking fetches from the last keyframe at or before
// the target, so it never decodes from the start. Auditor and admin keys only.

const $ = (id) => document.getElementById(id);
const sessionId = decodeURIComponent(location.pathname.split('/').pop());
// What tests read: keyframe/keyframeNumber say where the last fetch started, fetchedBytes how
// much it fetched, of totalBytes in the whole stream.
const state = (window.passerelle = {
  state: 'loading', position: 0, duration: 0, frames: 0, error: null,
  keyframe: null, keyframeNumber: null, fetchedBytes: 0, totalBytes: 0, seeks: 0,
});

const KEYFRAME = 1; const RECT = 2; const COPY = 3; const RESIZE = 4;

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

let apiKey = null;
let index = null;
let canvas = null;
let ctx = null;
let queue = [];       // records fetched and not yet drawn, in time order
let next = 0;         // index of the next record to draw
let position = 0;     // seconds shown
let playing = false;
let lastTick = 0;
let generation = 0;   // bumps on each seek, so a late fetch does not draw over a newer one
let segEnd = null;    // number of the keyframe where the fetched records stop (null: the end)
let fetchingMore = false;
const hashParams = new URLSearchParams(location.hash.slice(1));
// Keyframe intervals per fetch (`#segment=N` to change it, e.g. in tests).
const SEGMENT = Math.max(1, Number(hashParams.get('segment')) || 5);
// Which connection of the session (`#connection=N`, from 1): each connection of a recorded
// session is recorded on its own, in the order they were bridged.
const CONNECTION = Math.max(1, Math.floor(Number(hashParams.get('connection'))) || 1);
state.connection = CONNECTION;

async function api(path) {
  const res = await fetch(path, { headers: { Authorization: `Bearer ${apiKey}` } });
  if (res.status === 401 || res.status === 403) {
    sessionStorage.removeItem('passerelle-key');
    notice('Access needed', 'Replays are for auditor and admin keys.', true);
    throw new Error('access');
  }
  if (!res.ok) {
    const body = await res.json().catch(() => ({}));
    throw new Error((body.error && body.error.message) || `HTTP ${res.status}`);
  }
  return res;
}

// Parses records; decodes their PNGs up front so that drawing is synchronous and in order.
async function parse(buf) {
  const dv = new DataView(buf);
  const bytes = new Uint8Array(buf);
  const out = [];
  let pos = 0;
  while (pos + 13 <= bytes.length) {
    const kind = bytes[pos];
    const t = Number(dv.getBigUint64(pos + 1, true)) / 1e6;
    const len = dv.getUint32(pos + 9, true);
    if (pos + 13 + len > bytes.length) break;
    const p = pos + 13;
    const u = (i) => dv.getUint16(p + 2 * i, true);
    const r = { kind, t };
    if (kind === KEYFRAME || kind === RECT) {
      Object.assign(r, { x: u(0), y: u(1), w: u(2), h: u(3) });
      r.image = createImageBitmap(new Blob([bytes.subarray(p + 8, p + len)], { type: 'image/png' }));
    } else if (kind === COPY) {
      Object.assign(r, { x: u(0), y: u(1), w: u(2), h: u(3), sx: u(4), sy: u(5) });
    } else if (kind === RESIZE) {
      Object.assign(r, { w: u(0), h: u(1) });
    }
    out.push(r);
    pos += 13 + len;
  }
  await Promise.all(out.filter((r) => r.image).map(async (r) => { r.image = await r.image; }));
  return out;
}

function resize(w, h) {
  if (canvas.width === w && canvas.height === h) return;
  const old = document.createElement('canvas');
  old.width = canvas.width; old.height = canvas.height;
  old.getContext('2d').drawImage(canvas, 0, 0);
  canvas.width = w; canvas.height = h;
  ctx.fillStyle = '#000'; ctx.fillRect(0, 0, w, h);
  ctx.drawImage(old, 0, 0);
}

function draw(r) {
  if (r.kind === KEYFRAME) { resize(r.w, r.h); ctx.drawImage(r.image, 0, 0); }
  else if (r.kind === RECT) ctx.drawImage(r.image, r.x, r.y);
  else if (r.kind === COPY) ctx.drawImage(canvas, r.sx, r.sy, r.w, r.h, r.x, r.y, r.w, r.h);
  else if (r.kind === RESIZE) resize(r.w, r.h);
  state.frames += 1;
}

// Fetches records from keyframe `number`'s time on; returns [keyframe number, records, bytes].
async function fetchFrom(t) {
  const res = await api(`/api/v1/recordings/${encodeURIComponent(sessionId)}/screen?from=${t}&keyframes=${SEGMENT}&segment=${CONNECTION}`);
  const [number, us] = (res.headers.get('x-passerelle-keyframe') || '0 0').split(' ').map(Number);
  const buf = await res.arrayBuffer();
  return [number, us / 1e6, await parse(buf), buf.byteLength];
}

function segEndTime() {
  return segEnd !== null && segEnd < index.keyframes.length ? index.keyframes[segEnd][0] / 1e6 : Infinity;
}

// Playing past the fetched records: fetch the next keyframes (each starts with a full screen).
function more() {
  if (fetchingMore || segEndTime() === Infinity) return;
  fetchingMore = true;
  const mine = generation;
  fetchFrom(segEndTime()).then(([number, , records, bytes]) => {
    fetchingMore = false;
    if (mine !== generation) return;
    queue = queue.slice(next).concat(records);
    next = 0;
    segEnd = number + SEGMENT;
    state.fetchedBytes += bytes;
    advanceTo(position);
  }).catch((err) => { fetchingMore = false; fail(err); });
}

function advanceTo(t) {
  while (next < queue.length && queue[next].t <= t) draw(queue[next++]);
  if (next >= queue.length && t >= segEndTime()) {
    more();
    if (fetchingMore) t = Math.min(t, segEndTime());
  }
  position = Math.min(t, state.duration);
  state.position = position;
  $('seek').value = String(position);
  $('time').textContent = `${fmt(position)} / ${fmt(state.duration)}`;
  if (position >= state.duration && playing) {
    playing = false; state.state = 'ended'; $('play').textContent = 'Play'; $('status').textContent = 'Ended';
  }
}

// Shows the screen at `t`: from what is fetched if `t` is ahead, else from the nearest keyframe.
async function seek(t) {
  t = Math.max(0, Math.min(t, state.duration));
  // Ahead, before the next keyframe: draw on from what is here.
  if (t >= position && queue.length && t < segEndTime() &&
      !index.keyframes.some(([us]) => us / 1e6 > position && us / 1e6 <= t)) {
    advanceTo(t);
    return;
  }
  const mine = ++generation;
  const [number, key, records, bytes] = await fetchFrom(t);
  if (mine !== generation) return;
  state.keyframeNumber = number;
  state.keyframe = key;
  state.fetchedBytes = bytes;
  state.seeks += 1;
  queue = records;
  next = 0;
  segEnd = number + SEGMENT;
  position = 0;
  advanceTo(t);
}

function tick(now) {
  if (playing) advanceTo(position + ((now - lastTick) / 1000) * Number($('speed').value));
  lastTick = now;
  requestAnimationFrame(tick);
}

async function load(key) {
  apiKey = key;
  try {
    const res = await api(`/api/v1/recordings/${encodeURIComponent(sessionId)}/screen/index?segment=${CONNECTION}`);
    index = await res.json();
    await listConnections();
  } catch (err) {
    if (String(err).includes('access')) return;
    notice('Cannot replay', String(err.message || err), false);
    state.state = 'error';
    return;
  }
  const h = index.header;
  state.duration = index.duration_us / 1e6;
  state.totalBytes = index.records_len;
  $('meta').textContent = `${h.service} on ${h.agent} · operator ${h.operator} · ${h.started_at}` +
    (index.complete ? ` · ${index.end_reason}` : ' · recording cut short (broker stopped)');
  $('seek').max = String(state.duration);
  $('time').textContent = `0:00 / ${fmt(state.duration)}`;
  if (h.content !== 'rfb') {
    notice('Metadata only', `This ${h.service} connection was carried as it is: its recording holds metadata and byte counts, not the screen.`, false);
    state.state = 'metadata';
    return;
  }
  for (const us of index.marks) {
    const mark = document.createElement('div');
    mark.style.cssText = `position:absolute;left:${(100 * us / 1e6) / Math.max(state.duration, 0.001)}%;width:2px;height:8px;background:#e3b341`;
    $('marks').append(mark);
  }
  canvas = document.createElement('canvas');
  canvas.style.cssText = 'max-width:100%;max-height:100%;display:block;margin:auto';
  ctx = canvas.getContext('2d');
  $('screen').replaceChildren(canvas);
  if (index.decode_error) $('status').textContent = `Plays up to ${index.decode_error}`;
  if (index.unsigned_frames) {
    $('meta').textContent += ` · ${index.unsigned_frames} frames after ${fmt(state.duration)} are not signed and not shown`;
  }
  await seek(0);
  $('status').textContent = 'Ready';
  $('play').disabled = false;
  $('seek').disabled = false;
  state.state = 'ready';
}

// The session's recorded connections, to switch between them.
async function listConnections() {
  const res = await api(`/api/v1/recordings/${encodeURIComponent(sessionId)}/segments`);
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

$('connection').addEventListener('change', () => {
  location.hash = `connection=${$('connection').value}`;
  location.reload();
});

function fail(err) { state.error = String(err); notice('Cannot replay', String(err), false); }

$('play').addEventListener('click', () => {
  if (state.state === 'ended') { seek(0).catch(fail); }
  playing = !playing;
  state.state = playing ? 'playing' : 'paused';
  $('play').textContent = playing ? 'Pause' : 'Play';
  $('status').textContent = playing ? 'Playing' : 'Paused';
});
$('seek').addEventListener('input', () => seek(Number($('seek').value)).catch(fail));
$('login').addEventListener('submit', (e) => {
  e.preventDefault();
  const key = $('key').value.trim();
  sessionStorage.setItem('passerelle-key', key);
  $('notice').hidden = true;
  load(key).catch(fail);
});
window.passerelleSeek = (t) => seek(t);
requestAnimationFrame((now) => { lastTick = now; tick(now); });
const key = hashParams.get('key') || sessionStorage.getItem('passerelle-key');
history.replaceState(null, '', location.pathname);
if (key) {
  sessionStorage.setItem('passerelle-key', key);
  load(key).catch(fail);
} else {
  notice('Access needed', 'Replays are for auditor and admin keys.', true);
}
