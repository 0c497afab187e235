// A small console for trying Passerelle without the platform's: agents and their services,
// open a session in the browser or the desktop app, live sessions with a stop button, audit.
// Two ways in: a person signed in with the tenant's OpenID provider (a session cookie the page
// never sees; the broker records their name as the operator), or an API key with a name typed
// in (the key stays in this tab's sessionStorage).
const $ = (id) => document.getElementById(id);
let key = sessionStorage.getItem('passerelle-key') || '';
let operator = sessionStorage.getItem('passerelle-operator') || '';
// The signed-in person (GET /api/v1/console/me), or null when the page uses an API key.
let me = null;

// The headers of an API call: none to authenticate when signed in (the cookie goes by itself).
function authHeaders() {
  return me ? {} : { Authorization: `Bearer ${key}`, 'X-Passerelle-Operator': operator };
}

function el(tag, text, attrs = {}) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}

function showError(msg) {
  $('error').textContent = msg;
  $('error').hidden = !msg;
}

async function api(method, path, body) {
  const res = await fetch(path, {
    method,
    headers: { ...authHeaders(), 'Content-Type': 'application/json' },
    body: body ? JSON.stringify(body) : undefined,
  });
  if (res.status === 204) return null;
  if (res.status === 401 && me) signedOut('Your sign-in has ended (signed out or expired): sign in again.');
  const data = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error((data.error && data.error.message) || `HTTP ${res.status}`);
  return data;
}

// A page of the agent list: the body, and the next page's cursor (a response header).
async function apiPage(path) {
  const res = await fetch(path, { headers: authHeaders() });
  const data = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error((data.error && data.error.message) || `HTTP ${res.status}`);
  return { data, next: res.headers.get('X-Next-Cursor') };
}

// The agent table pages through the fleet (never the whole list): the search, the cursors of
// the pages seen so far (to go back), and the next page's cursor.
const AGENTS_PER_PAGE = 50;
const agentView = { q: '', online: '', cursors: [''], next: null };

function agentsPath() {
  const q = new URLSearchParams({ limit: String(AGENTS_PER_PAGE) });
  if (agentView.q) q.set('q', agentView.q);
  if (agentView.online) q.set('online', agentView.online);
  const cursor = agentView.cursors[agentView.cursors.length - 1];
  if (cursor) q.set('cursor', cursor);
  return `/api/v1/agents?${q}`;
}

async function refreshAgents() {
  const page = await apiPage(agentsPath());
  agentView.next = page.next;
  renderAgents(page.data);
  $('agents-prev').disabled = agentView.cursors.length <= 1;
  $('agents-next').disabled = !agentView.next;
  $('agents-page').textContent = `page ${agentView.cursors.length}`;
}

async function agentsMoved() {
  try { await refreshAgents(); showError(''); } catch (e) { showError(e.message); }
}

$('agent-search').addEventListener('submit', (e) => {
  e.preventDefault();
  agentView.q = $('agent-q').value.trim();
  agentView.online = $('agent-online').value;
  agentView.cursors = [''];
  agentsMoved();
});
$('agents-next').addEventListener('click', () => {
  if (!agentView.next) return;
  agentView.cursors.push(agentView.next);
  agentsMoved();
});
$('agents-prev').addEventListener('click', () => {
  if (agentView.cursors.length > 1) agentView.cursors.pop();
  agentsMoved();
});

async function open(agent, service, inBrowser) {
  try {
    const s = await api('POST', '/api/v1/sessions', { agent, service, operator: me ? me.name : operator });
    if (inBrowser) window.open(s.viewer_url, '_blank', 'noopener');
    else location.href = s.launch_url;
    refresh();
  } catch (e) { showError(`Could not open ${service} on ${agent}: ${e.message}`); }
}

async function stop(id) {
  try { await api('DELETE', `/api/v1/sessions/${encodeURIComponent(id)}`); refresh(); }
  catch (e) { showError(`Could not stop the session: ${e.message}`); }
}

function renderAgents(agents) {
  const body = $('agents');
  body.replaceChildren();
  delete body.dataset.stale;
  for (const a of agents) {
    const tr = el('tr', undefined, { 'data-agent': a.id, class: a.online ? 'agent-online' : 'agent-offline' });
    tr.append(el('td', a.id));
    const seen = a.last_seen ? `last seen ${new Date(a.last_seen).toLocaleString()}` : 'never seen';
    tr.append(el('td', a.online ? 'online' : `offline · ${seen}`, { class: a.online ? 'online' : 'offline' }));
    const svc = el('td');
    for (const s of a.services) {
      const name = s.name;
      if (name === 'vnc' || name === 'ssh') {
        const b = el('button', name === 'ssh' ? 'terminal in browser' : 'vnc in browser');
        b.addEventListener('click', () => open(a.id, name, true));
        svc.append(b, ' ');
      }
      const d = el('button', `${name} in desktop app`);
      d.addEventListener('click', () => open(a.id, name, false));
      svc.append(d, ' ');
    }
    tr.append(svc, el('td', a.connected_since || ''), el('td', a.peer_addr || ''));
    body.append(tr);
  }
  if (!agents.length) {
    const tr = el('tr');
    tr.append(el('td', 'No agent matches.', { colspan: '5' }));
    body.append(tr);
  }
  body.dataset.rendered = String(performance.now());
}

function renderSessions(sessions) {
  const body = $('sessions');
  body.replaceChildren();
  for (const s of sessions) {
    const tr = el('tr');
    tr.append(el('td', s.id.slice(0, 8)), el('td', s.agent), el('td', s.service + (s.view_only ? ' (view only)' : '')),
      el('td', s.operator), el('td', s.state), el('td', s.created_at));
    const td = el('td');
    const b = el('button', 'Stop', { class: 'danger' });
    b.addEventListener('click', () => stop(s.id));
    td.append(b);
    tr.append(td);
    body.append(tr);
  }
}

function renderAudit(page) {
  const body = $('audit');
  body.replaceChildren();
  for (const e of page.events.slice(0, 50)) {
    const tr = el('tr');
    tr.append(el('td', e.at), el('td', e.kind), el('td', e.agent || ''), el('td', e.operator || ''), el('td', e.detail));
    body.append(tr);
  }
}

function duration(s) {
  if (!s.started_at) return '';
  const end = s.ended_at ? Date.parse(s.ended_at) : Date.now();
  const secs = Math.max(0, Math.round((end - Date.parse(s.started_at)) / 1000));
  const h = Math.floor(secs / 3600);
  const m = Math.floor((secs % 3600) / 60);
  return `${h ? `${h} h ` : ''}${m} min ${secs % 60} s`;
}

// The history filters as API query parameters (dates in the browser's time zone).
function historyQuery() {
  const q = new URLSearchParams({ limit: '100' });
  const text = (id, name) => { const v = $(id).value.trim(); if (v) q.set(name, v); };
  text('f-agent', 'agent');
  text('f-operator', 'operator');
  for (const [id, name] of [['f-since', 'since'], ['f-until', 'until']]) {
    const v = $(id).value;
    if (v) q.set(name, new Date(v).toISOString());
  }
  for (const [id, name] of [['f-min', 'min_duration_secs'], ['f-max', 'max_duration_secs']]) {
    const v = $(id).value;
    if (v !== '') q.set(name, String(Math.round(Number(v) * 60)));
  }
  return q.toString();
}

function renderHistory(page) {
  const body = $('history');
  body.replaceChildren();
  delete body.dataset.stale;
  for (const s of page.sessions) {
    const tr = el('tr', undefined, { 'data-session': s.id });
    const ended = s.end_reason ? `${s.end_reason}${s.ended_by && s.end_reason === 'stopped' ? ` by ${s.ended_by}` : ''}` : s.state;
    tr.append(el('td', new Date(s.created_at).toLocaleString()), el('td', s.agent), el('td', s.service), el('td', s.operator),
      el('td', duration(s)), el('td', ended), el('td', `${s.bytes_down} / ${s.bytes_up}`));
    const td = el('td');
    // VNC screens and browser terminals replay (an ssh session through the desktop app holds
    // metadata only; its replay page says so).
    if (s.record && (s.service === 'vnc' || s.service === 'ssh') && s.started_at) {
      td.append(el('a', 'replay', { href: `/replay/${encodeURIComponent(s.id)}`, class: 'replay' }));
    } else if (s.record) {
      td.append(el('span', 'metadata only'));
    }
    tr.append(td);
    body.append(tr);
  }
}

async function refreshHistory() {
  try {
    renderHistory(await api('GET', `/api/v1/audit?${historyQuery()}`));
  } catch (e) {
    // Helpdesk keys may not read the audit: say so in the table instead of failing the page.
    const td = el('td', `Session history: ${e.message}`, { colspan: '8' });
    const tr = el('tr');
    tr.append(td);
    $('history').replaceChildren(tr);
    delete $('history').dataset.stale;
  }
}

async function refresh() {
  if (!key && !me) return;
  try {
    const [, pending, active] = await Promise.all([
      refreshAgents(), api('GET', '/api/v1/sessions?state=pending'), api('GET', '/api/v1/sessions?state=active'),
    ]);
    renderSessions(active.concat(pending));
    $('app').hidden = false;
    showError('');
  } catch (e) { showError(e.message); return; }
  try { renderAudit(await api('GET', '/api/v1/audit?limit=50')); } catch { $('audit').replaceChildren(); }
  await refreshHistory();
}

$('history-filter').addEventListener('submit', (e) => {
  e.preventDefault();
  refreshHistory();
});

// The sign-in state: who is signed in, or the two ways in.
function showSignedIn() {
  $('who-name').textContent = me.name;
  $('who-role').textContent = me.role;
  $('who-tenant').textContent = me.tenant;
  $('who').hidden = false;
  $('signin').hidden = true;
  $('login').hidden = true;
}

function signedOut(message) {
  me = null;
  $('who').hidden = true;
  $('signin').hidden = false;
  $('login').hidden = false;
  $('app').hidden = true;
  showError(message || '');
}

async function whoAmI() {
  const res = await fetch('/api/v1/console/me');
  if (!res.ok) return;
  const who = await res.json().catch(() => null);
  if (who && who.via === 'session') {
    me = who;
    showSignedIn();
  }
}

$('signout').addEventListener('click', async () => {
  try {
    const res = await fetch('/console/signout', { method: 'POST' });
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    signedOut('Signed out.');
  } catch (e) { showError(`Could not sign out: ${e.message}`); }
});

const asked = new URLSearchParams(location.search).get('tenant');
if (asked) $('signin-tenant').value = asked;
$('key').value = key;
$('operator').value = operator;
$('login').addEventListener('submit', (e) => {
  e.preventDefault();
  key = $('key').value.trim();
  operator = $('operator').value.trim();
  sessionStorage.setItem('passerelle-key', key);
  sessionStorage.setItem('passerelle-operator', operator);
  refresh();
});
$('forget').addEventListener('click', () => {
  sessionStorage.clear();
  key = '';
  $('key').value = '';
  $('app').hidden = true;
});
whoAmI().then(refresh);
setInterval(refresh, 5000);
