"""Compressed event streams in Chromium, through the edge (HAProxy, HTTP/1.1 and HTTP/2).

Chromium asks every request for gzip; a one-topic stream is answered gzip, compressed once
per topic (relay/node/shared.py). Two pages (the plain listener and the TLS one, over h2) each
hold plain EventSources on one topic while events are written straight to Redis every 50 ms
and epochs end every 300 ms; the relay that holds most of the streams is SIGKILLed mid-epoch,
so the browser reconnects to the other with its Last-Event-ID and decodes a new stream from
its first bytes. Every EventSource must get every event exactly once, in order, and never
close for good; each page sees ``Content-Encoding: gzip`` on the stream's answer.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from typing import Any

from playwright.sync_api import Browser, Page

from relay.harness.edge import Edge
from relay.harness.servers import RedisServer, Relay, metrics
from tests.integration.browser.test_browser import PAGE, TOPIC, Producer, _settle, _thread

SOURCES = 3

HEADERS = """async (topic) => {
  // the stream's answer as the page sees it; the body is let go at once
  const r = await fetch(`/v1/streams/${topic}/events`);
  const out = {status: r.status, encoding: r.headers.get('content-encoding'),
               vary: r.headers.get('vary'), type: r.headers.get('content-type')};
  await r.body.cancel();
  // the protocol of the page's connection to the edge, by a request that completes
  await (await fetch('/v1/handshake')).text();
  const entries = performance.getEntriesByType('resource')
    .filter(e => e.name.endsWith('/v1/handshake'));
  out.protocol = entries.length ? entries[entries.length - 1].nextHopProtocol : '';
  return out;
}"""


def _open(browser: Browser, origin: str) -> Page:
    context = browser.new_context(ignore_https_errors=True)  # the edge's own test CA
    page = context.new_page()
    page.route(f"{origin}/listener", lambda route: route.fulfill(
        body=PAGE % {"n": SOURCES, "topic": TOPIC}, content_type="text/html"))
    page.goto(f"{origin}/listener")
    page.wait_for_function("() => window.sources.every(s => s.opens > 0)", timeout=15_000)
    return page


def _metrics(relay: Relay) -> dict[str, float]:
    return dict(_thread(asyncio.run, metrics(relay.url)))


def test_compressed_eventsources_across_epochs_and_a_killed_relay(
    start_relay: Callable[..., Relay], start_replay: Callable[..., Relay],
    start_edge: Callable[..., Edge], redis_server: RedisServer, browser: Browser,
) -> None:
    common: dict[str, Any] = {"retry_ms": 500, "heartbeat_s": 1, "refused_retry_ms": 1000,
                              "compression_epoch_s": 0.3}
    relays = [_thread(start_relay, **common), _thread(start_relay, **common)]
    edge = _thread(start_edge, relays, _thread(start_replay))
    assert edge.https_url is not None
    pages = [_open(browser, edge.url), _open(browser, edge.https_url)]
    producer = Producer(redis_server.url)  # after the pages: their streams start live
    producer.start()
    for page, protocol in zip(pages, ("http/1.1", "h2"), strict=True):
        seen = page.evaluate(HEADERS, TOPIC)
        assert seen["status"] == 200 and seen["type"] == "text/event-stream", seen
        assert seen["encoding"] == "gzip" and seen["vary"] == "accept-encoding", seen
        assert seen["protocol"] == protocol, seen
    time.sleep(2)  # several epochs: the streams are on their topic's shared bytes
    before = [_metrics(r) for r in relays]
    assert sum(m["ssedge_compressed_streams_total"] for m in before) >= 2 * SOURCES
    assert sum(m["ssedge_shared_sends_total"] for m in before) > 0
    victim = max(range(2), key=lambda i: before[i]["ssedge_streams_open"])
    assert before[victim]["ssedge_streams_open"] > 0
    time.sleep(0.15)  # mid-epoch
    for pid in [*relays[victim].worker_pids(), relays[victim].pid]:
        os.kill(pid, signal.SIGKILL)
    time.sleep(3)  # the survivor's epochs: the reconnected streams join its shared bytes
    survivor = _metrics(relays[1 - victim])
    assert survivor["ssedge_streams_open"] == 2 * SOURCES
    reconnects = 0
    for page in pages:
        result = _settle(page, producer, redis_server.url)
        reconnects += sum(result["reconnects"])
        print(f"compressed, relay killed: {result}")
    assert reconnects >= before[victim]["ssedge_streams_open"]
    after = _metrics(relays[1 - victim])
    assert after["ssedge_shared_sends_total"] > survivor["ssedge_shared_sends_total"]
    for page in pages:
        page.context.close()
