// fedmemes live dashboard: polls /status (and /dashboard/run once) and redraws. No framework, no build step.
"use strict";

const POLL_MS = 2000;
const token = new URLSearchParams(location.hash.slice(1)).get("token");  // #token=...: sent as a header, never in a URL
const headers = token ? { "X-Fedmemes-Token": token } : {};
const $ = (id) => document.getElementById(id);
let numRounds = null;  // from /dashboard/run: the x axis spans the whole run from the start
const fmt = (v, digits = 3) => (v === null || v === undefined || Number.isNaN(v) ? "n/a" : Number(v).toFixed(digits));

function el(tag, attrs = {}, text = "") {
  const node = document.createElementNS(tag === "svg" || attrs.svg ? "http://www.w3.org/2000/svg" : "http://www.w3.org/1999/xhtml", tag);
  for (const [k, v] of Object.entries(attrs)) if (k !== "svg") node.setAttribute(k, v);
  if (text !== "") node.textContent = text;
  return node;
}

function drawChart(rounds) {
  const svg = $("auroc-chart");
  svg.replaceChildren();
  const W = 1000, H = 240, L = 50, R = 20, T = 25, B = 30;  // T: room for the top point's label
  const pts = rounds.filter((r) => r.auroc !== null && r.auroc !== undefined);
  const lastRound = Math.max(1, numRounds || 0, ...rounds.map((r) => r.round));
  const lo = Math.min(0.5, ...pts.map((r) => r.auroc)), hi = 1.0;
  const x = (round) => L + (round / lastRound) * (W - L - R);
  const y = (v) => T + (1 - (v - lo) / (hi - lo || 1)) * (H - T - B);
  for (const v of [lo, (lo + hi) / 2, hi]) {  // y grid with labels
    svg.append(el("line", { svg: 1, x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: "#e0e0e0" }));
    svg.append(el("text", { svg: 1, x: L - 6, y: y(v) + 4, "text-anchor": "end" }, v.toFixed(2)));
  }
  const step = Math.max(1, Math.ceil(lastRound / 20));
  for (let r = 0; r <= lastRound; r += step) svg.append(el("text", { svg: 1, x: x(r), y: H - 10, "text-anchor": "middle" }, String(r)));
  if (pts.length === 0) {
    svg.append(el("text", { svg: 1, x: W / 2, y: H / 2 - 12, "text-anchor": "middle" }, "no hold-out score yet"));
    return;
  }
  const path = pts.map((r, i) => `${i ? "L" : "M"}${x(r.round).toFixed(1)},${y(r.auroc).toFixed(1)}`).join(" ");
  svg.append(el("path", { svg: 1, d: path, fill: "none", stroke: "#1976d2", "stroke-width": 2, "vector-effect": "non-scaling-stroke" }));
  for (const r of pts) {
    const dot = el("circle", { svg: 1, cx: x(r.round), cy: y(r.auroc), r: 4, fill: "#1976d2", "data-round": r.round });
    dot.append(el("title", { svg: 1 }, `round ${r.round}: AUROC ${fmt(r.auroc)}`));
    svg.append(dot);
    svg.append(el("text", { svg: 1, x: x(r.round), y: y(r.auroc) - 8, "text-anchor": "middle" }, fmt(r.auroc)));
  }
}

function drawRounds(rounds) {
  const best = rounds.reduce((b, r) => (r.auroc !== null && (b === null || r.auroc > b.auroc) ? r : b), null);
  const body = $("rounds-table").tBodies[0];
  body.replaceChildren(...rounds.slice().reverse().map((r) => {
    const row = el("tr", { "data-round": r.round, class: best && r.round === best.round ? "best" : "" });
    for (const v of [r.round, fmt(r.auroc), fmt(r.accuracy), fmt(r.loss), r.clients ?? "", r.replies ?? "", r.dropped_replies ?? ""]) {
      row.append(el("td", {}, String(v)));
    }
    row.cells[1].className = "auroc";
    return row;
  }));
  $("dropped-total").textContent = String(rounds.reduce((n, r) => n + (r.dropped_replies || 0), 0));
}

function drawClients(clients) {
  const body = $("clients-table").tBodies[0];
  body.replaceChildren(...clients.map((c) => {
    const row = el("tr", { "data-client": c.name });
    row.append(el("td", {}, c.name));
    row.append(el("td", { class: c.online ? "online" : "offline" }, c.online ? "online" : "offline"));
    row.append(el("td", {}, `${fmt(c.seconds_since_heartbeat, 1)} s ago`));
    return row;
  }));
  $("clients-note").textContent = clients.length ? "" :
    "No client manager has sent a heartbeat (a simulation's clients are virtual; `fedmemes manager` reports real ones).";
}

function drawState(status) {
  const state = status.state || "unknown";
  const badge = $("state");
  badge.textContent = state;
  badge.className = "badge " + (state.includes("failed") || state.includes("stopped") ? "failed" :
    state.startsWith("finished") ? "finished" : state === "running" ? "running" : "");
  $("round").textContent = status.current_round ?? "-";
}

async function poll() {
  try {
    const response = await fetch("status", { headers, cache: "no-store" });
    if (!response.ok) throw new Error(`GET /status: HTTP ${response.status}`);
    const status = await response.json();
    const rounds = status.rounds || [];
    drawState(status);
    drawChart(rounds);
    drawRounds(rounds);
    drawClients(status.clients || []);
    $("error").textContent = "";
    $("updated").textContent = new Date().toLocaleTimeString();
    if (status.state && status.state.startsWith("finished")) return;  // the run is over: the page stays as it is
  } catch (err) {
    $("error").textContent = `server unreachable (${err.message}); showing the last data`;
  }
  setTimeout(poll, POLL_MS);
}

async function runInfo() {
  try {
    const info = await (await fetch("dashboard/run", { headers, cache: "no-store" })).json();
    if (info.num_rounds) {
      numRounds = info.num_rounds;
      $("num-rounds").textContent = ` / ${info.num_rounds}`;
    }
    $("run-info").textContent = ["model", "strategy", "partition", "num_clients"]
      .filter((k) => info[k] !== undefined && info[k] !== null).map((k) => `${k} ${info[k]}`).join(" · ");
  } catch (err) { /* the page works without it */ }
}

runInfo().finally(poll);  // the run summary first: it sets the x axis
