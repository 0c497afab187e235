// Injected into every benchmarked page before its own scripts (playwright's addInitScript), the
// same for the three stacks. It counts what the page's WebSockets receive and, once started,
// reads the remote screen's canvas on every animation frame:
// - the colour of one pixel (the probe, the centre of the square the harness toggles), with the
//   time it changed, on CLOCK_REALTIME (performance.timeOrigin + performance.now(), in ms), so that
//   the harness can pair each change with the moment the X server had it;
// - eight full rows of the canvas, hashed: a frame whose rows differ from the previous frame's is
//   one canvas update ("frames delivered");
// - the arrival time of each WebSocket message (the first one after a change of a still screen
//   is that change's update: where the tunnel's share of the latency ends).
(() => {
  const now = () => performance.timeOrigin + performance.now();
  const st = { on: false, bytes: 0, msgs: 0, changes: [], arrivals: [], frames: 0, ticks: 0, t0: 0, t1: 0 };
  // At most this many arrival times are kept (a busy screen sends hundreds a second).
  const MAX_ARRIVALS = 20000;
  const Native = window.WebSocket;
  // A real WebSocket with one more listener (noVNC checks the methods on the object's own
  // prototype, so a subclass would not do).
  function Counted(...args) {
    const ws = new Native(...args);
    ws.addEventListener('message', (e) => {
      if (!st.on) return;
      if (st.arrivals.length < MAX_ARRIVALS) st.arrivals.push(now());
      const d = e.data;
      st.bytes += typeof d === 'string' ? d.length : (d.byteLength ?? d.size ?? 0);
      st.msgs += 1;
    });
    return ws;
  }
  Counted.prototype = Native.prototype;
  for (const k of ['CONNECTING', 'OPEN', 'CLOSING', 'CLOSED']) Counted[k] = Native[k];
  window.WebSocket = Counted;

  // The remote screen: the largest canvas of the page (noVNC has one; Guacamole one per layer,
  // the screen being the default layer).
  function screen() {
    let best = null;
    for (const c of document.querySelectorAll('canvas')) {
      if (!best || c.width * c.height > best.width * best.height) best = c;
    }
    return best;
  }

  function rowsHash(ctx, w, h) {
    let x = 0x811c9dc5;
    for (let i = 0; i < 8; i += 1) {
      const y = Math.floor(((i + 0.5) * h) / 8);
      const d = new Uint32Array(ctx.getImageData(0, y, w, 1).data.buffer);
      for (let j = 0; j < d.length; j += 1) x = Math.imul(x ^ d[j], 16777619);
    }
    return x;
  }

  let last = null;
  let hash = null;
  function tick() {
    if (!st.on) return;
    const t = now();
    const c = screen();
    if (c && c.width > 0) {
      const ctx = c.getContext('2d');
      const p = ctx.getImageData(st.px, st.py, 1, 1).data;
      if (!last || p[0] !== last[0] || p[1] !== last[1] || p[2] !== last[2]) {
        st.changes.push([t, p[0], p[1], p[2]]);
        last = [p[0], p[1], p[2]];
      }
      const h = rowsHash(ctx, c.width, c.height);
      if (hash !== null && h !== hash) st.frames += 1;
      hash = h;
    }
    st.ticks += 1;
    requestAnimationFrame(tick);
  }

  window.__bench = {
    // The screen's size and the probe's colour now, or null before the screen has pixels.
    peek(px, py) {
      const c = screen();
      if (!c || c.width < 2) return null;
      const p = c.getContext('2d').getImageData(px, py, 1, 1).data;
      return { width: c.width, height: c.height, rgb: [p[0], p[1], p[2]] };
    },
    start(px, py) {
      Object.assign(st, { on: true, bytes: 0, msgs: 0, changes: [], arrivals: [], frames: 0, ticks: 0, px, py, t0: now() });
      last = null;
      hash = null;
      requestAnimationFrame(tick);
    },
    stop() {
      st.on = false;
      st.t1 = now();
      return {
        changes: st.changes, frames: st.frames, ticks: st.ticks, bytes: st.bytes, msgs: st.msgs,
        arrivals: st.arrivals, t0: st.t0, t1: st.t1,
      };
    },
    now,
  };
})();
