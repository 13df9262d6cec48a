// meshrtc dashboard: signs in with an API token, follows the proxy's live feed
// (GET /api/mesh-rtc/events, server-sent events read through fetch so the token travels in a
// header, never in a URL), renders what it says, and connects peers on request.
"use strict";

const TOKEN_KEY = "meshrtc.token";
const $ = (id) => document.getElementById(id);

let token = null;
let feedAbort = null;
let peerIds = [];

// --- sign-in --------------------------------------------------------------------------------

function takeTokenFromFragment() {
  // `meshctl up` prints `/#token=...`: keep it for this tab and drop it from the address bar
  // (and so from history and screenshots).
  const match = /(?:^#|&)token=([^&]*)/.exec(location.hash);
  if (match) {
    history.replaceState(null, "", location.pathname + location.search);
    let value = "";
    try { value = decodeURIComponent(match[1]).trim(); } catch (_) { /* a mangled link */ }
    if (!value) return { error: "The sign-in link is damaged; paste the token instead." };
    sessionStorage.setItem(TOKEN_KEY, value);
  }
  return { token: sessionStorage.getItem(TOKEN_KEY) };
}

function showSignIn(message) {
  if (feedAbort) feedAbort.abort();
  $("board").hidden = true;
  $("sign-out").hidden = true;
  $("sign-in").hidden = false;
  $("sign-in-error").textContent = message || "";
  $("token").value = "";
  setFeed("signed-out", "Signed out");
  $("token").focus();
}

function signIn(newToken) {
  token = newToken;
  sessionStorage.setItem(TOKEN_KEY, token);
  $("sign-in").hidden = true;
  $("sign-out").hidden = false;
  $("board").hidden = false;
  follow();
}

// --- the API --------------------------------------------------------------------------------

class ApiFailure extends Error {
  constructor(status, body) {
    const err = (body && body.error) || {};
    super(err.message || `HTTP ${status}`);
    this.status = status;
    this.code = err.code || "http_" + status;
    this.details = err.details || null;
  }
}

async function api(path, options = {}) {
  const headers = Object.assign({ Authorization: `Bearer ${token}` }, options.headers || {});
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (!response.ok) {
    let body = null;
    try { body = await response.json(); } catch (_) { /* not JSON: the status says enough */ }
    throw new ApiFailure(response.status, body);
  }
  return response;
}

// --- the live feed --------------------------------------------------------------------------

function setFeed(state, text) {
  const el = $("feed");
  el.dataset.state = state;
  el.textContent = text;
}

async function follow() {
  if (feedAbort) feedAbort.abort();
  const abort = new AbortController();
  feedAbort = abort;
  let backoff = 1000;
  while (!abort.signal.aborted) {
    try {
      setFeed("connecting", "Connecting…");
      const response = await api("/api/mesh-rtc/events", {
        headers: { Accept: "text/event-stream" },
        signal: abort.signal,
      });
      setFeed("live", "Live");
      backoff = 1000;
      await readEvents(response.body, (event, data) => {
        if (event === "overview") render(JSON.parse(data));
      });
    } catch (e) {
      if (abort.signal.aborted) return;
      if (e instanceof ApiFailure && (e.status === 401 || e.status === 403)) {
        // A refused token is not kept for the next load.
        sessionStorage.removeItem(TOKEN_KEY);
        token = null;
        showSignIn(`${e.message} (${e.code})`);
        return;
      }
    }
    if (abort.signal.aborted) return;
    setFeed("reconnecting", `Disconnected; retrying in ${backoff / 1000} s`);
    await new Promise((resolve) => setTimeout(resolve, backoff));
    backoff = Math.min(backoff * 2, 15000);
  }
}

// The text/event-stream format: events separated by a blank line, `event:` and `data:` fields,
// `:` comments (keep-alives) ignored.
async function readEvents(body, onEvent) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const val = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") event = val;
        else if (field === "data") data.push(val);
      }
      if (data.length) onEvent(event, data.join("\n"));
    }
  }
}

// --- rendering ------------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

const fmt = (v, digits = 1) => (typeof v === "number" && isFinite(v) ? v.toFixed(digits) : "–");

function ago(ts) {
  const s = Math.max(0, Math.round((Date.now() - ts) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return new Date(ts).toLocaleString();
}

function time(ts) {
  const when = new Date(ts);
  // One bad timestamp must not blank the page.
  if (typeof ts !== "number" || isNaN(when.getTime())) return document.createTextNode("–");
  return el("time", { datetime: when.toISOString(), title: when.toLocaleString(), dataset: { ts } }, ago(ts));
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) { v /= 1024; u += 1; }
  return u === 0 ? `${n} B` : `${v.toFixed(1)} ${units[u]}`;
}

function healthBadge(health) {
  return el("span", { class: `health ${health}` }, health);
}

function fillTable(id, rows) {
  const body = $(id).querySelector("tbody");
  body.replaceChildren(...rows);
  $(`${id}-empty`).hidden = rows.length > 0;
}

function render(o) {
  const s = o.summary;
  $("card-peers").textContent = s.peers;
  $("card-links").textContent = `${s.links.up} up`;
  $("card-links-detail").textContent =
    `${s.links.degraded} degraded · ${s.links.down} down${s.links.capped ? " (first 1000)" : ""}`;
  const hour = s.gossipLastHour;
  $("card-gossip").textContent = `${hour.envelopes}${hour.capped ? "+" : ""}`;
  $("card-gossip-detail").textContent =
    `${hour.deliveries} delivered · ${hour.failures} failed · ${hour.refused} refused`;
  if (s.lastRun) {
    $("card-run").replaceChildren(time(s.lastRun.ts));
    $("card-run-detail").textContent =
      `${s.lastRun.origins} origins · ${s.lastRun.succeeded} delivered · ${s.lastRun.failed} failed`;
  } else {
    $("card-run").textContent = "none yet";
    $("card-run-detail").textContent = "";
  }
  const storeError = $("store-error");
  storeError.hidden = !o.error;
  storeError.textContent = o.error ? `${o.error} (showing the last good read)` : "";

  fillTable("peers", o.peers.map((p) => el("tr", { dataset: { peer: p.id } },
    el("th", { scope: "row" }, p.id),
    el("td", {}, p.region || "–"),
    el("td", { class: "num" }, fmt(p.trust, 3)),
    el("td", { class: "endpoint" }, (p.endpoints && p.endpoints.https) || "–"),
    el("td", {}, time(p.lastSeenAt)))));

  fillTable("links", o.links.map((l) => el("tr", { dataset: { link: l.id, health: l.health } },
    el("th", { scope: "row" }, `${l.a} ↔ ${l.b}`),
    el("td", {}, healthBadge(l.health)),
    el("td", { class: "num" }, fmt(l.rttMs ?? l.probeRttMs)),
    el("td", { class: "num" }, fmt(l.jitterMs)),
    el("td", { class: "num" }, fmt(l.lossPct)),
    el("td", { class: "num" }, fmt(l.bitrateKbps, 0)),
    el("td", {}, time(l.lastTs)))));

  fillTable("gossip", o.gossip.map((r) => el("tr", { dataset: { kind: r.kind } },
    el("td", {}, time(r.ts)),
    el("td", {}, r.kind),
    el("td", {}, r.from),
    el("td", {}, (r.targets || []).map((t) => `${t.peer} (${t.transport}${t.ok ? "" : ", failed"})`).join(", ") || (r.recordedBy ? `by ${r.recordedBy}` : "–")),
    el("td", { class: "num" }, r.succeeded),
    el("td", { class: "num" }, r.failed),
    el("td", {}, r.reason || ""))));

  fillTable("transfers", (o.transfers || []).map((t) => {
    const pct = t.size > 0 ? Math.floor((t.bytes * 100) / t.size) : 100;
    return el("tr", { dataset: { transfer: t.id, state: t.state } },
      el("th", { scope: "row" }, t.name),
      el("td", {}, `${t.from} → ${t.to}`),
      el("td", {},
        el("progress", { max: "100", value: String(pct), "aria-label": `${t.name}: ${pct} %` }),
        ` ${bytes(t.bytes)} / ${bytes(t.size)} (${pct} %)`),
      el("td", { class: "num" }, t.rateBps ? `${bytes(t.rateBps)}/s` : "–"),
      el("td", { class: "num" }, t.etaMs != null ? `${Math.ceil(t.etaMs / 1000)} s` : "–"),
      el("td", {}, t.errorCode ? `${t.state}: ${t.errorCode}` : t.state),
      el("td", {}, time(t.updatedAt)));
  }));

  updatePeerChoices(o.peers.map((p) => p.id));
  drawTopology(o.peers, o.links);
}

function updatePeerChoices(ids) {
  if (ids.join("\n") === peerIds.join("\n")) return;
  peerIds = ids;
  for (const [id, fallback] of [["connect-a", 0], ["connect-b", 1]]) {
    const select = $(id);
    const keep = select.value;
    select.replaceChildren(...ids.map((p) => el("option", { value: p }, p)));
    select.value = ids.includes(keep) ? keep : (ids[fallback] || "");
  }
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function drawTopology(peers, links) {
  const root = $("topology");
  const cx = 200, cy = 150, r = peers.length > 1 ? 110 : 0;
  // Peers on a circle; each label sits outside it, away from the links.
  const at = new Map(peers.map((p, i) => {
    const angle = (2 * Math.PI * i) / Math.max(peers.length, 1) - Math.PI / 2;
    const dx = Math.cos(angle), dy = peers.length > 1 ? Math.sin(angle) : 1;
    return [p.id, {
      x: cx + r * dx, y: cy + r * dy,
      lx: cx + (r + 26) * dx, ly: cy + (r + 26) * dy + 4,
      anchor: Math.abs(dx) < 0.3 ? "middle" : dx > 0 ? "start" : "end",
    }];
  }));
  const up = links.filter((l) => l.health === "up").length;
  const children = [svg("title", { id: "topology-desc" },
    `${peers.length} peers; ${links.length} links, ${up} up`)];
  for (const l of links) {
    const a = at.get(l.a), b = at.get(l.b);
    if (!a || !b) continue;
    children.push(svg("line", {
      x1: a.x, y1: a.y, x2: b.x, y2: b.y, class: `edge ${l.health}`,
      "data-link": l.id, "data-health": l.health,
    }));
  }
  for (const p of peers) {
    const { x, y, lx, ly, anchor } = at.get(p.id);
    const g = svg("g", { class: "node", "data-peer": p.id });
    g.append(svg("circle", { cx: x, cy: y, r: 12 }), svg("text", { x: lx, y: ly, "text-anchor": anchor }, p.id));
    children.push(g);
  }
  root.replaceChildren(...children);
}

// --- connect --------------------------------------------------------------------------------

async function connect(event) {
  event.preventDefault();
  const a = $("connect-a").value, b = $("connect-b").value;
  const result = $("connect-result");
  const button = $("connect-button");
  result.className = "result pending";
  result.textContent = `Connecting ${a} and ${b}…`;
  button.disabled = true;
  const started = performance.now();
  try {
    const response = await api("/api/mesh-rtc/connect", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ a, b }),
    });
    const link = await response.json();
    const took = ((performance.now() - started) / 1000).toFixed(1);
    result.className = "result ok";
    result.dataset.outcome = "ok";
    result.textContent = `${link.a} ↔ ${link.b} is ${link.health} (${took} s).`;
  } catch (e) {
    result.className = "result failed";
    result.dataset.outcome = "failed";
    const step = e.details && e.details.step ? ` at step “${e.details.step}”` : "";
    result.replaceChildren(
      el("strong", {}, `Failed${step}: `),
      e.message || String(e),
      " ",
      el("code", {}, e.code || "network_error"));
  } finally {
    button.disabled = false;
  }
}

// --- start ----------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("sign-in-form").addEventListener("submit", (e) => {
    e.preventDefault();
    signIn($("token").value.trim());
  });
  $("sign-out").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    token = null;
    showSignIn();
  });
  $("connect-form").addEventListener("submit", connect);
  // Relative times ("12 s ago") age between updates.
  setInterval(() => {
    for (const t of document.querySelectorAll("time[data-ts]")) t.textContent = ago(Number(t.dataset.ts));
  }, 5000);
  const saved = takeTokenFromFragment();
  if (saved.token) signIn(saved.token); else showSignIn(saved.error);
});
