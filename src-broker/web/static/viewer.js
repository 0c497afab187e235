// The session viewer: noVNC on the broker's RFB stream. The tokens ride in the URL fragment
// (never sent to a server, so no proxy logs them) and are removed from the address bar at once;
// the viewer token then goes to the broker in a WebSocket subprotocol, not in the URL, and the
// one-time exchange token is traded for a launch URL that stays in this page's memory.
import RFB from '/static/novnc/core/rfb.js';
import { offerDesktopLink } from '/static/desktop-link.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.hash.slice(1));
const token = params.get('token') || '';
const viewOnly = params.get('view_only') === '1';
const exchange = params.get('exchange');
const sessionId = decodeURIComponent(location.pathname.split('/').pop());
history.replaceState(null, '', location.pathname);

// What tests and the page read: the connection's state and, once closed, the broker's reason.
const state = (window.passerelle = { state: 'connecting', closeCode: null, closeReason: '' });

const REASONS = {
  4000: 'The workstation closed the connection.',
  4001: 'This link was already used or is not valid. Open the session again from the console.',
  4002: 'This link has expired. Open the session again from the console.',
  4003: 'The session has ended.',
  4010: 'The workstation is offline.',
  4011: "The workstation's remote-control service is not available.",
  4012: 'The workstation did not connect in time.',
  4013: 'The workstation disconnected.',
  4020: 'The session was stopped.',
  4021: 'The session reached its time limit.',
  4022: 'The broker is restarting.',
  4023: 'The connection was too slow and the session was ended.',
  4024: 'The workstation was revoked.',
  4030: 'The viewer sent something the broker does not accept.',
  4040: "The workstation's VNC server refused the broker's password.",
  4041: "The broker could not connect to the workstation's VNC server.",
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

function ended() {
  state.state = 'disconnected';
  const code = state.closeCode;
  const known = REASONS[code];
  const reason = state.closeReason;
  setStatus('Disconnected', 'bad');
  let text = known || 'The connection closed.';
  if (reason && (!known || code === 4020 || code === 4041 || code === 4040)) text += ` (${reason})`;
  notice('Session ended', text);
  for (const id of ['cad', 'clipbtn', 'disconnect']) $(id).disabled = true;
}

if (!token) {
  setStatus('No token', 'bad');
  notice('Cannot connect', 'This page must be opened with the link the console gives (it carries a one-time token).');
} else {
  const proto = location.protocol === 'https:' ? 'wss://' : 'ws://';
  const url = `${proto}${location.host}/ws/sessions/${encodeURIComponent(sessionId)}`;
  // The broker answers `binary`; the second protocol only carries the token.
  const ws = new WebSocket(url, ['binary', `passerelle.token.${token}`]);
  ws.binaryType = 'arraybuffer';
  ws.addEventListener('close', (e) => {
    state.closeCode = e.code;
    state.closeReason = e.reason;
  });
  const rfb = new RFB($('screen'), ws, { shared: true });
  rfb.scaleViewport = true;
  rfb.viewOnly = viewOnly;
  if (viewOnly) {
    $('viewonly').hidden = false;
    $('cad').hidden = true;
    $('clipsend').disabled = true;
  }
  offerDesktopLink(sessionId, exchange, $('desktop'), () => { state.launch = true; });
  rfb.addEventListener('connect', () => {
    state.state = 'connected';
    setStatus('Connected', 'ok');
    rfb.focus();
  });
  // The close event of the socket comes first; read it on the next turn.
  rfb.addEventListener('disconnect', () => setTimeout(ended, 0));
  rfb.addEventListener('securityfailure', (e) => {
    state.closeReason = e.detail.reason || 'security failure';
  });
  rfb.addEventListener('desktopname', (e) => {
    $('name').textContent = e.detail.name;
    document.title = `${e.detail.name} — Passerelle`;
  });
  rfb.addEventListener('clipboard', (e) => {
    $('cliptext').value = e.detail.text;
  });
  $('scale').addEventListener('change', () => { rfb.scaleViewport = $('scale').checked; });
  $('cad').addEventListener('click', () => rfb.sendCtrlAltDel());
  $('clipbtn').addEventListener('click', () => { $('clip').hidden = !$('clip').hidden; });
  $('clipclose').addEventListener('click', () => { $('clip').hidden = true; });
  $('clipsend').addEventListener('click', () => rfb.clipboardPasteFrom($('cliptext').value));
  $('full').addEventListener('click', () => {
    if (document.fullscreenElement) document.exitFullscreen();
    else document.documentElement.requestFullscreen().catch(() => {});
  });
  $('disconnect').addEventListener('click', () => rfb.disconnect());
}
