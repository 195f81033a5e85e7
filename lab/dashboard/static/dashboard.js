// The `lab dashboard` page: draws /api/stream's state, sends the controls' actions with the token.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const token = document.querySelector('meta[name="lab-token"]').content;
const tiles = new Map(); // replica name -> its tile's parts
let lastState = null;

const $ = (id) => document.getElementById(id);
const fmt = (n, digits = 0) =>
  n === null || n === undefined ? "–" : Number(n).toLocaleString("en", { maximumFractionDigits: digits, minimumFractionDigits: digits });
const pct = (x) => (x === null || x === undefined ? "–" : `${(x * 100).toFixed(1)}%`);
const clock = (t) => new Date(t * 1000).toLocaleTimeString("en-GB");

function el(tag, attrs = {}, text = "") {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text) node.textContent = text;
  return node;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

// Tiles -------------------------------------------------------------------------------------
function makeTile(name) {
  const tile = el("article", { class: "tile", "data-replica": name });
  const head = el("header");
  head.append(el("h3", {}, name));
  const state = el("span", { class: "state" });
  head.append(state);
  const rps = el("div", { class: "rps" });
  const figures = el("dl", { class: "figures" });
  const field = (label, cls) => {
    const box = el("div");
    box.append(el("dt", {}, label));
    const dd = el("dd", { class: cls });
    box.append(dd);
    figures.append(box);
    return dd;
  };
  const parts = {
    tile,
    state,
    rps,
    requests: field("requests", "requests"),
    share: field("share (expected)", "share"),
    p95: field("p95 ms", "p95"),
    errors: field("5xx", "errors"),
    spark: svg("svg", { class: "spark", viewBox: "0 0 120 30", preserveAspectRatio: "none", "aria-hidden": "true" }),
    line: svg("polyline", { fill: "none" }),
    kill: el("button", { type: "button", class: "kill" }, "Kill"),
  };
  parts.spark.append(parts.line);
  parts.kill.addEventListener("click", () => act("kill", { replica: name }, `kill ${name}`));
  tile.append(head, rps, figures, parts.spark, parts.kill);
  return parts;
}

function drawTiles(state) {
  const container = $("tiles");
  const names = new Set(state.replicas.map((r) => r.name));
  for (const [name, parts] of tiles) {
    if (!names.has(name)) {
      parts.tile.remove();
      tiles.delete(name);
    }
  }
  const top = Math.max(1, ...state.replicas.flatMap((r) => r.sparkline));
  for (const r of state.replicas) {
    let parts = tiles.get(r.name);
    if (!parts) {
      parts = makeTile(r.name);
      tiles.set(r.name, parts);
    }
    container.append(parts.tile); // keeps the tiles in the state's order
    parts.tile.dataset.state = r.state;
    parts.tile.dataset.requests = r.requests;
    parts.state.textContent = r.state;
    parts.rps.textContent = `${fmt(r.rps)} req/s`;
    parts.requests.textContent = fmt(r.requests);
    parts.share.textContent = `${pct(r.share)} (${pct(r.expected_share)})`;
    parts.p95.textContent = r.p95_ms === null ? "–" : fmt(r.p95_ms, 1);
    parts.errors.textContent = fmt(r.errors);
    const points = r.sparkline.map((v, i) => `${(i * 120) / (r.sparkline.length - 1)},${29 - (v / top) * 27}`);
    parts.line.setAttribute("points", points.join(" "));
    parts.kill.disabled = r.state === "down";
  }
}

// Share chart ---------------------------------------------------------------------------------
function drawShare(state) {
  const chart = $("share-chart");
  const rows = state.replicas;
  const row = 22;
  const label = 150;
  const width = 560;
  const height = Math.max(row, rows.length * row) + 6;
  chart.setAttribute("viewBox", `0 0 ${width + label + 60} ${height}`);
  chart.replaceChildren();
  const scale = Math.max(0.01, ...rows.map((r) => Math.max(r.share, r.expected_share || 0)));
  rows.forEach((r, i) => {
    const y = i * row + 4;
    const name = svg("text", { x: label - 8, y: y + 13, "text-anchor": "end", class: "label" });
    name.textContent = r.name;
    const bar = svg("rect", { x: label, y, height: row - 8, width: (r.share / scale) * width, class: `bar ${r.state}` });
    chart.append(name, bar);
    if (r.expected_share !== null) {
      const x = label + (r.expected_share / scale) * width;
      chart.append(svg("line", { x1: x, x2: x, y1: y - 2, y2: y + row - 6, class: "expected" }));
    }
    const value = svg("text", { x: label + width + 56, y: y + 13, "text-anchor": "end", class: "value" });
    value.textContent = pct(r.share);
    chart.append(value);
  });
}

// Summary and events --------------------------------------------------------------------------
function drawSummary(state) {
  $("method").textContent = state.method || "?";
  $("generation").textContent = state.generation || "?";
  $("lb").textContent = state.lb;
  $("lb").className = state.lb === "running" ? "good" : "bad";
  $("rps").textContent = fmt(state.rps);
  $("total").textContent = fmt(state.total_requests);
  $("errors").textContent = fmt(state.errors);
  $("since").textContent = clock(state.since);
  if (document.activeElement !== $("method-select") && state.method) $("method-select").value = state.method;
}

function drawEvents(state) {
  const log = $("event-log");
  log.replaceChildren();
  for (const e of [...state.events].reverse()) {
    const item = el("li", { class: `event ${e.kind}` });
    item.append(el("time", {}, clock(e.at)), el("span", { class: "kind" }, e.kind), el("span", { class: "text" }, e.text));
    log.append(item);
  }
}

function draw(state) {
  lastState = state;
  drawSummary(state);
  drawTiles(state);
  drawShare(state);
  drawEvents(state);
}

// Actions -------------------------------------------------------------------------------------
async function act(kind, body, what) {
  const status = $("action-status");
  status.textContent = `${what}…`;
  status.className = "busy";
  try {
    const response = await fetch(`/api/actions/${kind}`, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-Lab-Token": token },
      body: JSON.stringify(body),
    });
    const answer = await response.json();
    if (response.ok) {
      status.textContent = `${what}: done`;
      status.className = "good";
    } else {
      status.textContent = `${what}: ${answer.error}`;
      status.className = "bad";
    }
  } catch (error) {
    status.textContent = `${what}: ${error}`;
    status.className = "bad";
  }
}

function wireControls() {
  const n = $("scale-n");
  const label = () => ($("scale-button").textContent = `Scale to ${n.value}`);
  n.addEventListener("input", label);
  label();
  $("scale-form").addEventListener("submit", (event) => {
    event.preventDefault();
    act("scale", { replicas: Number(n.value) }, `scale to ${n.value}`);
  });
  $("method-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const method = $("method-select").value;
    act("method", { method }, `switch to ${method}`);
  });
  $("verify-form").addEventListener("submit", (event) => {
    event.preventDefault();
    act("verify", { requests: Number($("verify-n").value) }, `verify with ${$("verify-n").value} requests`);
  });
  $("restore-button").addEventListener("click", () => act("restore", {}, "restore"));
}

function connect() {
  const source = new EventSource("/api/stream");
  source.addEventListener("state", (event) => {
    $("connection").textContent = "live";
    $("connection").className = "connection live";
    draw(JSON.parse(event.data));
  });
  source.addEventListener("error", () => {
    $("connection").textContent = "reconnecting…";
    $("connection").className = "connection lost";
  });
}

wireControls();
connect();
