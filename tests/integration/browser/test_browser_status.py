"""A status page on a quiet topic: the commonest feed of all, in headless Chromium through the
edge (HAProxy, HTTP/1.1 and HTTP/2).

The page only listens: one plain EventSource on a topic that has had no event for a while
(or never). Its connection is cut (``ss -K``, a phone changing networks) before any event
arrives, and the incident update is published while it is away. The browser reconnects by
itself with the id the stream gave it when it opened (an ``id:`` line without data: WHATWG
sets ``lastEventId`` and dispatches nothing), so the update arrives, once. Without that id
it came back "live" and the update was lost (0 of 1 on f15c5b7).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis as sync_redis
from playwright.sync_api import Browser

from relay.harness.edge import Edge
from relay.harness.servers import RedisServer, Relay

PAGE = """<!doctype html><meta charset="utf-8"><title>status</title><script>
window.status_ = {updates: [], ids: [], opens: 0, errors: 0, states: []};
const es = new EventSource("/v1/streams/%(topic)s/events");
es.addEventListener("incident", (e) => {
  window.status_.updates.push(e.data); window.status_.ids.push(e.lastEventId); });
es.onopen = () => { window.status_.opens++; window.status_.states.push(es.readyState); };
es.onerror = () => { window.status_.errors++; window.status_.states.push(es.readyState); };
</script>"""


def _thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Playwright's sync API runs an event loop on this thread: servers start on another."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args, **kwargs).result()


def _cut(port: int) -> None:
    subprocess.run(["ss", "-K", "dst", "127.0.0.1", "dport", "=", str(port)], check=True,
                   capture_output=True, timeout=10)


@pytest.mark.parametrize("history", [False, True], ids=["never-written", "old-events"])
@pytest.mark.parametrize("protocol", ["http1", "h2"])
def test_a_status_page_cut_before_any_event_gets_the_update_published_while_away(
    start_relay: Callable[..., Relay], start_replay: Callable[..., Relay],
    start_edge: Callable[..., Edge], redis_server: RedisServer, browser: Browser,
    protocol: str, history: bool,
) -> None:
    topic = f"status-{protocol}-{int(history)}"
    r = sync_redis.Redis.from_url(redis_server.url)
    if history:
        for n in range(3):
            r.xadd(f"ssedge:{{{topic}}}", {"d": f"resolved {n}", "e": "incident"})
    relay = _thread(start_relay, retry_ms=500, heartbeat_s=1)
    edge = _thread(start_edge, [relay], _thread(start_replay))
    origin = edge.https_url if protocol == "h2" else edge.url
    context = browser.new_context(ignore_https_errors=True)  # the edge's own test CA
    page = context.new_page()
    page.route(f"{origin}/status", lambda route: route.fulfill(
        body=PAGE % {"topic": topic}, content_type="text/html"))
    page.goto(f"{origin}/status")
    page.wait_for_function("() => window.status_.opens > 0", timeout=15_000)
    time.sleep(0.5)  # quiet: nothing arrives
    assert page.evaluate("() => window.status_.updates") == []
    port = edge.https_port if protocol == "h2" else edge.port
    _cut(port)  # the browser's connection to the edge is gone; it retries after 500 ms
    update = r.xadd(f"ssedge:{{{topic}}}", {"d": "investigating", "e": "incident"}).decode()
    page.wait_for_function("() => window.status_.updates.length > 0", timeout=15_000)
    time.sleep(1.0)  # anything doubled would be here by now
    status = page.evaluate("() => window.status_")
    assert status["updates"] == ["investigating"] and status["ids"] == [update], status
    assert status["errors"] >= 1 and status["opens"] >= 2, f"it never reconnected: {status}"
    assert 2 not in status["states"], f"the EventSource closed for good: {status}"
    context.close()
