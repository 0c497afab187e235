// The tunnel list: polls the app once a second (bytes and durations move), renders rows with a
// close button, and opens pasted launch URLs. No build step: window.__TAURI__ is injected.
"use strict";

const invoke = window.__TAURI__.core.invoke;

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
}

function duration(s) {
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  const two = (x) => String(x).padStart(2, "0");
  return (h > 0 ? h + ":" + two(m) : m) + ":" + two(sec);
}

function cell(text, cls, title) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  if (title) td.title = title;
  return td;
}

function showError(message) {
  const p = document.getElementById("error");
  p.textContent = message || "";
  p.hidden = !message;
}

async function refresh() {
  let rows;
  try {
    rows = await invoke("list_tunnels");
  } catch (e) {
    showError(String(e));
    return;
  }
  const body = document.querySelector("#tunnels tbody");
  body.replaceChildren(...rows.map((r) => {
    const tr = document.createElement("tr");
    tr.append(
      cell((r.agent || r.session.slice(0, 8) + "…") + " @ " + r.broker, null, "session " + r.session),
      cell(r.service),
      cell(r.local),
      cell(bytes(r.bytes_up), "num"),
      cell(bytes(r.bytes_down), "num"),
      cell(duration(r.seconds), "num"),
      cell(r.active + " / " + r.connections, "num"),
      cell(r.client),
    );
    const td = document.createElement("td");
    const close = document.createElement("button");
    close.textContent = "Close";
    close.addEventListener("click", async () => {
      await invoke("close_tunnel", { id: r.id });
      refresh();
    });
    td.append(close);
    tr.append(td);
    return tr;
  }));
  document.getElementById("tunnels").hidden = rows.length === 0;
  document.getElementById("empty").hidden = rows.length !== 0;
}

document.getElementById("open").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const input = document.getElementById("url");
  showError("");
  try {
    await invoke("open_url", { url: input.value.trim() });
    input.value = "";
  } catch (e) {
    showError(String(e));
  }
  refresh();
});

// A broker a link names for the first time: the app asks before opening anything.
let asking = null;

async function ask() {
  let questions;
  try {
    questions = await invoke("pending_brokers");
  } catch (e) {
    return;
  }
  const box = document.getElementById("confirm");
  const q = questions[0];
  if (!q) {
    box.hidden = true;
    asking = null;
    return;
  }
  if (asking === q.id) return;
  asking = q.id;
  document.getElementById("confirm-question").textContent =
    "Open a session on " + q.origin.replace(/^https?:\/\//, "") + "?";
  box.hidden = false;
  document.getElementById("confirm-open").focus();
}

async function answer(open) {
  if (asking === null) return;
  const id = asking;
  asking = null;
  document.getElementById("confirm").hidden = true;
  await invoke("answer_broker", { id, open });
  ask();
}

document.getElementById("confirm-open").addEventListener("click", () => answer(true));
document.getElementById("confirm-refuse").addEventListener("click", () => answer(false));

refresh();
ask();
setInterval(refresh, 1000);
setInterval(ask, 300);
