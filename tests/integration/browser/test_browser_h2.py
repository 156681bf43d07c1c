"""Why the edge speaks HTTP/2: a browser holds at most six HTTP/1.1 connections per origin,
and an EventSource holds one for as long as it lives.

Headless Chromium opens twenty plain EventSources on one page, to one origin. Over the edge's
TLS listener (HTTP/2 by ALPN; the test's own certificate accepted for this browser context)
all twenty open on one connection and every one receives every event. Over HTTP/1.1 (the
plain listener) six open; the other fourteen wait (readyState CONNECTING) for a connection
that none of the six will ever give back, and receive nothing.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from playwright.sync_api import Browser, Page

from relay.harness.edge import Edge
from relay.harness.servers import Relay, metrics, publish
from tests.integration.conftest import TOKEN

SOURCES = 20
TOPIC = "many-tabs"

SCRIPT = """([n, topic]) => {
  // a page that only listens: N plain EventSources on one topic, what each got
  window.sources = [];
  for (let i = 0; i < n; i++) {
    const es = new EventSource(`/v1/streams/${topic}/events`);
    const s = {ids: [], opens: 0};
    es.onmessage = (e) => s.ids.push(e.lastEventId);
    es.onopen = () => s.opens++;
    s.state = () => es.readyState;
    window.sources.push(s);
  }
}"""


def _thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Playwright's sync API runs an event loop on the test's thread: servers and asyncio
    work run on another."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args, **kwargs).result()


def _streams(relays: list[Relay]) -> int:
    async def count() -> int:
        return int(sum([(await metrics(r.url))["ssedge_streams_open"] for r in relays]))
    return int(_thread(asyncio.run, count()))


def _open_page(browser: Browser, origin: str) -> Page:
    """A page of the edge's origin (its handshake: any document of the origin will do, and
    the browser reached it on its own), then twenty EventSources made by script."""
    context = browser.new_context(ignore_https_errors=True)  # the edge's own test CA
    page = context.new_page()
    page.goto(f"{origin}/v1/handshake")
    page.evaluate(SCRIPT, [SOURCES, TOPIC])
    return page


def _connections(port: int) -> int:
    """Established TCP connections to ``port`` on this host (the browser's)."""
    out = subprocess.run(["ss", "-Htn", "state", "established", "dst", f"127.0.0.1:{port}"],
                         capture_output=True, text=True, check=True, timeout=10).stdout
    return len(out.splitlines())


def test_twenty_eventsources_on_one_page_over_http2_and_over_http11(
    start_relay: Callable[..., Relay], start_edge: Callable[..., Edge], browser: Browser,
) -> None:
    relays = [_thread(start_relay), _thread(start_relay)]
    edge = _thread(start_edge, relays, None)
    assert edge.https_url is not None and edge.https_port is not None

    # -- HTTP/2 over TLS: all twenty on one connection, every event to every one ----------
    page = _open_page(browser, edge.https_url)
    page.wait_for_function("() => window.sources.every(s => s.opens > 0)", timeout=15_000)
    protocol = page.evaluate(
        "() => performance.getEntriesByType('navigation')[0].nextHopProtocol")
    assert protocol == "h2"
    assert _streams(relays) == SOURCES
    assert _connections(edge.https_port) == 1, "twenty streams, one HTTP/2 connection"
    ids = _thread(asyncio.run, publish(relays[0].url, TOKEN, TOPIC,
                                       [{"data": n} for n in range(5)]))
    page.wait_for_function("n => window.sources.every(s => s.ids.length >= n)", arg=len(ids),
                           timeout=10_000)
    got = page.evaluate("() => window.sources.map(s => s.ids)")
    assert got == [ids] * SOURCES
    page.context.close()
    _until(lambda: _streams(relays) == 0, 5)  # the edge let them all go

    # -- HTTP/1.1: six connections per origin, so six streams; fourteen wait for ever -----
    page = _open_page(browser, edge.url)
    page.wait_for_function("() => window.sources.filter(s => s.opens > 0).length >= 6",
                           timeout=15_000)
    time.sleep(3)  # give the fourteen every chance
    states = page.evaluate("() => window.sources.map(s => s.state())")
    opened = page.evaluate("() => window.sources.filter(s => s.opens > 0).length")
    assert opened == 6 and states.count(1) == 6 and states.count(0) == SOURCES - 6, states
    assert _streams(relays) == 6
    assert _connections(edge.port) == 6
    more = _thread(asyncio.run, publish(relays[0].url, TOKEN, TOPIC, [{"data": "late"}]))
    page.wait_for_function("id => window.sources.filter(s => s.ids.includes(id)).length >= 6",
                           arg=more[0], timeout=10_000)
    time.sleep(0.5)
    received = page.evaluate("id => window.sources.filter(s => s.ids.includes(id)).length",
                             more[0])
    assert received == 6, "only the six open EventSources get events"
    page.context.close()
    print(f"HTTP/2: {SOURCES} EventSources on 1 connection, each got {len(ids)} events; "
          f"HTTP/1.1: {opened} open, {SOURCES - opened} stuck connecting")


def _until(predicate: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not within {timeout} s"
        time.sleep(0.1)
