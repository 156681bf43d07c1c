// The operators' dashboard: an EventSource on the stats topic, whose snapshots come from
// `ssedge stats` (relay/collector.py). The ring's recent history (backfill) fills the plots
// at once; every snapshot then redraws the numbers and SVG sparklines. No library.
"use strict";

const PARAMS = new URLSearchParams(location.search);
const TOPIC = PARAMS.get("topic") || "ssedge.stats";
// the stats topic is private (its snapshots name internal addresses and errors): `ssedge up`
// prints this page's address with a subscriber token, passed on to the stream
const TOKEN = PARAMS.get("access_token");
const WINDOW_S = 300;             // what the plots show
const KEEP = 600;                 // snapshots held
const GAP_S = 5;                  // longer between two snapshots: no line across
const CLASSES = ["handshake", "metadata", "replay", "pages"];
const COLORS = ["var(--s1)", "var(--s2)", "var(--s3)", "var(--s4)", "var(--s5)"];
const $ = (id) => document.getElementById(id);

const board = { snapshots: [], source: null, drawn: false };
window.ssedgeDashboard = board;

function fmt(value, digits = 1) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  if (Math.abs(value) >= 1000) return Math.round(value).toLocaleString("en");
  return Number.isInteger(value) ? String(value) : value.toFixed(digits);
}

function pct(value) {
  return value === null || value === undefined ? "–" : `${(value * 100).toFixed(1)} %`;
}

// one polyline per series over the last WINDOW_S seconds; y from 0 to the largest value
function spark(svg, series) {
  const W = 300, H = 40;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("preserveAspectRatio", "none");
  const now = board.snapshots.length ? board.snapshots[board.snapshots.length - 1].t : 0;
  let max = 0;
  for (const s of series) for (const [, v] of s.points) if (v !== null) max = Math.max(max, v);
  max = max || 1;
  const parts = [`<line class="axis" x1="0" y1="${H - 0.5}" x2="${W}" y2="${H - 0.5}"/>`];
  for (const s of series) {
    // a gap (the collector or a node away, a missing value) breaks the line
    let line = [], prevT = null;
    const flush = () => {
      if (line.length) parts.push(`<polyline stroke="${s.color}" points="${line.join(" ")}"/>`);
      line = [];
    };
    for (const [t, v] of s.points) {
      if (now - t > WINDOW_S) continue;
      if (v === null || (prevT !== null && t - prevT > GAP_S)) flush();
      if (v !== null) {
        line.push(`${(W - ((now - t) / WINDOW_S) * W).toFixed(1)},` +
                  `${(H - 2 - (v / max) * (H - 4)).toFixed(1)}`);
      }
      prevT = t;
    }
    flush();
  }
  svg.innerHTML = parts.join("");
  svg.setAttribute("aria-label", `up to ${fmt(max)}`);
}

function nodeNames() {
  const names = [];
  for (const snap of board.snapshots) {
    for (const n of snap.nodes) if (!names.includes(n.node)) names.push(n.node);
  }
  return names;
}

function perNode(key, scale = 1) {
  return nodeNames().map((name, i) => ({
    color: COLORS[i % COLORS.length],
    points: board.snapshots.map((s) => {
      const n = s.nodes.find((x) => x.node === name);
      return [s.t, n && n.up && n[key] !== null ? n[key] * scale : null];
    }),
  }));
}

function total(snap, key) {
  if (key === "redis_lag_ms") {
    const lag = snap.totals.redis_lag_s;
    return lag === null || lag === undefined ? null : lag * 1000;
  }
  return snap.totals[key];
}

function draw() {
  board.drawn = false;
  const snaps = board.snapshots;
  if (!snaps.length) return;
  const last = snaps[snaps.length - 1];
  $("updated").textContent = new Date(last.t * 1000).toLocaleTimeString();
  $("held").textContent = String(snaps.length);
  $("window").textContent = String(Math.round(last.t - snaps[0].t));

  for (const out of document.querySelectorAll("output[data-total]")) {
    const key = out.dataset.total;
    const value = total(last, key);
    out.textContent = fmt(value, key === "redis_lag_ms" ? 1 : 1);
    out.dataset.value = value === null || value === undefined ? "" : String(value);
  }
  for (const svg of document.querySelectorAll("svg[data-spark]")) {
    const key = svg.dataset.spark;
    spark(svg, key === "redis_lag_ms" ? perNode("redis_lag_s", 1000) : perNode(key));
  }
  $("legend").innerHTML = nodeNames().map((name, i) =>
    `<span><i style="background:${COLORS[i % COLORS.length]}"></i>${escape(name)}</span>`)
    .join("");

  const rows = last.nodes.map((n) => {
    const tr = document.createElement("tr");
    tr.dataset.node = n.node;
    const cells = n.up ? [
      n.node, "up", fmt(n.streams_open, 0), fmt(n.events_in_per_s), fmt(n.events_out_per_s),
      null, pct(n.ring_fill), `${fmt(n.backlog_drops, 0)} (${fmt(n.backlog_drops_per_s)}/s)`,
      `${fmt(n.replay_fetches, 0)} (${fmt(n.replay_fetches_per_s)}/s)`,
      `${fmt(n.redis_lag_s * 1000)} ms${n.redis_connected ? "" : " (disconnected)"}`,
    ] : [n.node, "down", "", "", "", null, "", "", "", n.error || ""];
    cells.forEach((text, i) => {
      const td = document.createElement("td");
      if (i === 5) {
        const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
        svg.setAttribute("class", "spark small");
        td.append(svg);
        const color = COLORS[nodeNames().indexOf(n.node) % COLORS.length];
        spark(svg, [{ color, points: perNode("events_out_per_s")[nodeNames().indexOf(n.node)].points }]);
      } else {
        td.textContent = text;
      }
      if (i === 1) { td.className = "state"; td.dataset.state = n.up ? "open" : "down"; }
      else if (i >= 2 && i !== 5) td.className = "num";
      tr.append(td);
    });
    return tr;
  });
  $("nodes").replaceChildren(...rows);

  const edge = last.edge || { classes: {} };
  $("edge-note").textContent = edge.up ? "" : `edge counts unavailable: ${edge.error || "?"}`;
  $("edge").replaceChildren(...CLASSES.map((kind, i) => {
    const c = edge.classes[kind] || {};
    const tr = document.createElement("tr");
    tr.dataset.class = kind;
    [kind, pct(c.hit_ratio), pct(c.interval_hit_ratio), null, fmt(c.hit, 0), fmt(c.miss, 0),
     fmt(c.pass, 0), fmt(c.requests_per_s)].forEach((text, j) => {
      const td = document.createElement("td");
      if (j === 3) {
        const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
        svg.setAttribute("class", "spark small");
        td.append(svg);
        spark(svg, [{ color: COLORS[i], points: snaps.map((s) => {
          const x = s.edge && s.edge.classes && s.edge.classes[kind];
          return [s.t, x && x.hit_ratio !== null && x.hit_ratio !== undefined ? x.hit_ratio : null];
        }) }]);
      } else {
        td.textContent = text;
      }
      if (j > 0 && j !== 3) td.className = "num";
      tr.append(td);
    });
    return tr;
  }));
  drawProxy(edge.proxy);
  drawStack(last.stack);
  drawAudience(last.audience);
}

// the streams the edge proxy carries, per relay (HAProxy's `show stat`); absent without it
function drawProxy(proxy) {
  $("proxy").hidden = !proxy;
  if (!proxy) return;
  if (!proxy.up) {
    $("proxy-streams").textContent = "?";
    $("proxy-relays").textContent = `(${proxy.error})`;
    return;
  }
  $("proxy-streams").textContent = fmt(proxy.streams, 0);
  $("proxy-relays").textContent = "· " + proxy.relays.map((r) =>
    `${r.name} ${r.status} ${fmt(r.streams, 0)}`).join(" · ") +
    ` · retries ${fmt(proxy.retries, 0)}, redispatches ${fmt(proxy.redispatches, 0)}` +
    refusals(proxy.refused);
}

// what the edge refused itself since it started (per-client limits, odd spellings, operator
// endpoints: docs/SECURITY.md), by reason; nothing when it refused nothing
function refusals(refused) {
  const seen = Object.entries(refused || {}).filter(([, n]) => n > 0);
  if (!seen.length) return "";
  return " · refused " + seen.map(([reason, n]) => `${reason.replace(/_/g, " ")} ${fmt(n, 0)}`)
    .join(", ");
}

// the children of `ssedge up` (its supervisor.json): restarts made visible; absent elsewhere
function drawStack(stack) {
  $("stack").hidden = !stack;
  if (!stack) return;
  $("stack-restarts").textContent = String(stack.restarts);
  $("stack-note").textContent = stack.failure ? `stack ${stack.state}: ${stack.failure}` : "";
  $("children").replaceChildren(...stack.children.map((c) => {
    const tr = document.createElement("tr");
    tr.dataset.child = c.name;
    const exit = c.last_exit === null || c.last_exit === undefined ? "" :
      `${c.last_exit < 0 ? `signal ${-c.last_exit}` : `status ${c.last_exit}`}, ` +
      new Date(c.last_exit_at * 1000).toLocaleTimeString();
    [c.name, c.state, c.pid ?? "", fmt(c.restarts, 0), exit].forEach((text, i) => {
      const td = document.createElement("td");
      td.textContent = String(text);
      if (i === 1) {
        td.className = "state";
        td.dataset.state = c.state === "up" ? "open" : c.state === "failed" ? "down" : "connecting";
      } else if (i === 2 || i === 3) td.className = "num";
      tr.append(td);
    });
    return tr;
  }));
}

// the busiest topics across every relay (relay/storage/presence.py; what `ssedge top` shows)
function drawAudience(audience) {
  if (!audience || audience.error) {
    $("audience-note").textContent = audience ? `audience unavailable: ${audience.error}` : "";
    return;
  }
  $("audience-streams").textContent = fmt(audience.streams, 0);
  $("audience-topics").textContent = fmt(audience.topic_count, 0);
  $("audience-note").textContent = `${audience.processes} relay processes reporting`;
  $("audience").replaceChildren(...audience.topics.map(([topic, count]) => {
    const tr = document.createElement("tr");
    tr.dataset.topic = topic;
    [topic, fmt(count, 0)].forEach((text, i) => {
      const td = document.createElement("td");
      td.textContent = String(text);
      if (i === 1) td.className = "num";
      tr.append(td);
    });
    return tr;
  }));
}

function escape(text) {
  return String(text).replace(/[&<>"]/g, (c) => `&#${c.charCodeAt(0)};`);
}

function onSnapshot(e) {
  let snap;
  try { snap = JSON.parse(e.data); } catch { return; }
  if (!snap || !Array.isArray(snap.nodes)) return;
  board.snapshots.push(snap);
  if (board.snapshots.length > KEEP) board.snapshots.splice(0, board.snapshots.length - KEEP);
  // the backfill arrives as one burst: draw once for it, not once per snapshot
  if (!board.drawn) {
    board.drawn = true;
    setTimeout(draw, 50); // not requestAnimationFrame: a hidden tab would never draw
  }
}

function setState(state, text) {
  const el = $("state");
  el.dataset.state = state;
  el.textContent = text || state;
}

function open(afterId) {
  const query = afterId ? `last_event_id=${encodeURIComponent(afterId)}` : `backfill=${WINDOW_S}`;
  const auth = TOKEN ? `&access_token=${encodeURIComponent(TOKEN)}` : "";
  const source = new EventSource(
    `/v1/streams/${encodeURIComponent(TOPIC)}/events?${query}${auth}`);
  board.source = source;
  source.onopen = () => setState("open", "live");
  source.onerror = () => {
    if (source.readyState === EventSource.CONNECTING) {
      setState("reconnecting");
    } else {
      setState("closed", "closed; reconnecting in 2 s");
      setTimeout(() => open(board.lastId), 2000);
    }
  };
  source.addEventListener("stats", (e) => { board.lastId = e.lastEventId; onSnapshot(e); });
}

open(null);
