// The live feed: one browser EventSource on a topic, shown as it goes.
//
// The browser does the reconnecting: when the stream drops, EventSource waits the stream's
// `retry:` and reconnects with a Last-Event-ID header, and ssedge replays what was missed
// first. This page only watches and counts. An event is counted as replayed by a reconnect
// when its id's time (Redis's clock when it was published) is not after the moment the
// stream opened again: it was published while the page was away. (The browser's clock is
// the judge, so a skew between it and Redis's moves that line by as much.)
"use strict";

const MAX_ROWS = 500;
const $ = (id) => document.getElementById(id);

const page = {
  source: null,
  sources: 0,          // EventSource objects made: 1 unless the page had to start one anew
  topic: "",
  types: [],
  lastId: null,
  lastKey: null,
  seen: new Set(),
  count: 0,
  duplicates: 0,
  outOfOrder: 0,
  downSince: null,     // when the stream dropped, and the last id then
  idAtDrop: null,
  reconnect: null,     // the reconnect whose replay is being counted
  reconnects: [],
  retryTimer: null,
  everOpen: false,
};
window.ssedgeDemo = page; // for the browser tests and the curious

function idKey(id) {
  const m = /^(\d+)-(\d+)$/.exec(id || "");
  return m ? (BigInt(m[1]) << 64n) | BigInt(m[2]) : null;
}

function idTime(id) {
  const m = /^(\d+)-/.exec(id || "");
  return m ? Number(m[1]) : null;
}

function setState(state, text) {
  const el = $("state");
  el.dataset.state = state;
  el.textContent = text || state;
}

function streamUrl(extra) {
  const url = `/v1/streams/${encodeURIComponent(page.topic)}/events`;
  return extra ? `${url}?${new URLSearchParams(extra)}` : url;
}

function watch(topic, types) {
  if (page.source) page.source.close();
  clearTimeout(page.retryTimer);
  Object.assign(page, {
    topic, types, lastId: null, lastKey: null, seen: new Set(), count: 0, duplicates: 0,
    outOfOrder: 0, downSince: null, idAtDrop: null, reconnect: null, reconnects: [],
    everOpen: false,
  });
  $("events").replaceChildren();
  $("reconnects").replaceChildren();
  $("no-reconnects").hidden = false;
  $("publish-url").textContent = streamUrl();
  updateFacts();
  open(null);
}

function open(afterId) {
  // a fresh EventSource cannot set Last-Event-ID: the query parameter says the same
  const url = streamUrl(afterId ? { last_event_id: afterId } : null);
  $("stream-url").textContent = url;
  const source = new EventSource(url);
  page.source = source;
  page.sources += 1;
  document.body.dataset.sources = String(page.sources);
  setState("connecting");
  source.onopen = () => {
    page.everOpen = true;
    setState("open");
    if (page.downSince !== null) startReconnect();
  };
  source.onerror = () => {
    if (page.downSince === null && page.everOpen) {
      page.downSince = Date.now();
      page.idAtDrop = page.lastId;
    }
    if (source.readyState === EventSource.CONNECTING) {
      setState("reconnecting", "reconnecting (the browser retries by itself)");
    } else {
      // closed for good (an error status such as 503 with no relay left): the page starts
      // a new EventSource after a pause, from the last id it has
      setState("closed", "closed; the page reconnects in 2 s");
      if (page.downSince === null) page.downSince = Date.now();
      page.retryTimer = setTimeout(() => open(page.lastId), 2000);
    }
  };
  for (const type of page.types) source.addEventListener(type, onEvent);
}

function listen(type) {
  if (type && !page.types.includes(type)) {
    page.types.push(type);
    page.source.addEventListener(type, onEvent);
    $("types").value = page.types.join(" ");
  }
}

function startReconnect() {
  const r = {
    at: Date.now(), downFor: Date.now() - page.downSince, lastId: page.idAtDrop,
    replayed: 0, li: document.createElement("li"),
  };
  page.downSince = null;
  page.reconnect = r;
  page.reconnects.push(r);
  $("no-reconnects").hidden = true;
  $("reconnects").append(r.li);
  describeReconnect(r);
}

function describeReconnect(r) {
  r.li.dataset.replayed = String(r.replayed);
  r.li.dataset.lastEventId = r.lastId || "";
  r.li.textContent = `${new Date(r.at).toLocaleTimeString()}: back after ` +
    `${(r.downFor / 1000).toFixed(1)} s with Last-Event-ID ${r.lastId || "(none)"}; ` +
    `${r.replayed} event${r.replayed === 1 ? "" : "s"} replayed`;
}

function onEvent(e) {
  const id = e.lastEventId;
  const key = idKey(id);
  const duplicate = page.seen.has(id);
  page.count += 1;
  if (duplicate) page.duplicates += 1;
  else if (key !== null && page.lastKey !== null && key < page.lastKey) page.outOfOrder += 1;
  page.seen.add(id);
  if (key !== null && (page.lastKey === null || key > page.lastKey)) page.lastKey = key;
  page.lastId = id || page.lastId;

  let replayed = false;
  const r = page.reconnect;
  if (r) {
    if (idTime(id) !== null && idTime(id) <= r.at) {
      r.replayed += 1;
      replayed = true;
      describeReconnect(r);
    } else {
      page.reconnect = null; // caught up: the rest is live
    }
  }
  addRow(id, e.type, e.data, replayed);
  updateFacts();
}

function addRow(id, type, data, replayed) {
  const tr = document.createElement("tr");
  tr.className = "fresh" + (type === "ssedge.reset" ? " reset" : "");
  tr.dataset.id = id;
  tr.dataset.type = type;
  const cells = [new Date().toLocaleTimeString(), id, type, data, replayed ? "yes" : ""];
  cells.forEach((text, i) => {
    const td = document.createElement("td");
    td.textContent = text;
    if (i === 1) td.className = "id";
    if (i === 4) td.className = "num";
    tr.append(td);
  });
  const body = $("events");
  body.prepend(tr);
  while (body.childElementCount > MAX_ROWS) body.lastElementChild.remove();
}

function updateFacts() {
  $("last-id").textContent = page.lastId || "none yet";
  $("count").textContent = String(page.count);
  $("duplicates").textContent = String(page.duplicates);
  $("out-of-order").textContent = String(page.outOfOrder);
}

// A key per publish, sent again with every retry of it: the relays answer a retry with the
// first answer and write nothing (crypto.randomUUID needs a secure context; getRandomValues
// does not).
function idempotencyKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

const PUBLISH_ATTEMPTS = 4;
const PUBLISH_TIMEOUT_MS = 10000;

// One publish: retried with the same key and body after a 503 (or 502, 504), a timeout or a
// network error, waiting Retry-After (at most 5 s). Resolves to the last answer.
async function sendPublish(body, token) {
  const headers = { "Content-Type": "application/json", "Authorization": `Bearer ${token}`,
                    "Idempotency-Key": idempotencyKey() };
  const text = JSON.stringify(body);
  for (let attempt = 1; ; attempt++) {
    let wait = Math.min(5000, 250 * 2 ** attempt);
    try {
      const response = await fetch(streamUrl(), {
        method: "POST", headers, body: text, signal: AbortSignal.timeout(PUBLISH_TIMEOUT_MS),
      });
      if (![502, 503, 504].includes(response.status) || attempt === PUBLISH_ATTEMPTS) {
        return response;
      }
      const after = Number(response.headers.get("Retry-After"));
      if (after > 0) wait = Math.min(5000, after * 1000);
    } catch (err) {
      if (attempt === PUBLISH_ATTEMPTS) throw err;
    }
    $("publish-result").textContent = `publishing… (try ${attempt + 1})`;
    await new Promise((resolve) => setTimeout(resolve, wait));
  }
}

async function publish(event) {
  event.preventDefault();
  const type = $("event-type").value.trim();
  const body = { data: $("data").value };
  if (type) body.event = type;
  listen(type || "message");
  const out = $("publish-result");
  out.textContent = "publishing…";
  try {
    const response = await sendPublish(body, $("token").value.trim());
    const answer = await response.json().catch(() => ({}));
    out.textContent = response.status === 201 ? `published as ${answer.id}`
      : `${response.status}: ${answer.message || answer.error || "refused"}`;
    out.dataset.status = String(response.status);
  } catch (err) {
    out.textContent = `no answer: ${err} (it may or may not be published)`;
  }
}

function start() {
  const params = new URLSearchParams(location.search);
  if (params.get("topic")) $("topic").value = params.get("topic");
  if (params.get("types")) $("types").value = params.get("types");
  $("watch").addEventListener("submit", (e) => {
    e.preventDefault();
    const url = new URL(location.href);
    url.searchParams.set("topic", $("topic").value);
    history.replaceState(null, "", url);
    watch($("topic").value, $("types").value.split(/[\s,]+/).filter(Boolean));
  });
  $("publish").addEventListener("submit", publish);
  watch($("topic").value, $("types").value.split(/[\s,]+/).filter(Boolean));
}

start();
