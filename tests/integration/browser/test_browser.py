"""A browser's EventSource never gives up: headless Chromium through the edge, under faults.

One page holds several plain EventSources on one topic, through varnishd in front of two
relays; it only listens (no library, no code that reopens anything). Events are written
straight to Redis the whole time (as any producer may), so publishing goes on whatever
happens to the relays. Each test makes a fault that used to close EventSources for good (an
error status from the edge or a relay), cuts the browser's connections (``ss -K``) so that
they must reconnect through it, and then requires of every EventSource: every event
acknowledged by Redis exactly once, in order, and a readyState that never reached CLOSED.
Each prints the longest an event waited to reach the page (``-s`` shows it).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis as sync_redis
from playwright.sync_api import Browser, Page

from relay.harness.servers import RedisServer, Relay, Varnish, metrics
from tests.integration.sse import subscribe

SOURCES = 4
TOPIC = "browser"

PAGE = """<!doctype html><meta charset="utf-8"><title>listener</title><script>
// a page that only listens, as real pages do: N EventSources, what each got and its states
window.sources = [];
for (let i = 0; i < %(n)d; i++) {
  const es = new EventSource("/v1/streams/%(topic)s/events");
  const s = {ids: [], at: [], states: [es.readyState], opens: 0, errors: 0};
  es.onmessage = (e) => { s.ids.push(e.lastEventId); s.at.push(Date.now()); };
  es.onopen = () => { s.opens++; s.states.push(es.readyState); };
  es.onerror = () => { s.errors++; s.states.push(es.readyState); };
  window.sources.push(s);
}
</script>"""


class Producer(threading.Thread):
    """XADDs an event every 50 ms straight to Redis; keeps the ids Redis acknowledged and
    when. Redis away: the attempt is not counted, and it tries again."""

    def __init__(self, redis_url: str) -> None:
        super().__init__(daemon=True)
        self.url = redis_url
        self.acked: list[tuple[str, float]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        n = 0
        while not self._halt.wait(0.05):
            try:
                with sync_redis.Redis.from_url(self.url, socket_timeout=1,
                                               socket_connect_timeout=1) as r:
                    while not self._halt.wait(0.05):
                        event_id = r.xadd(f"ssedge:{{{TOPIC}}}", {"d": str(n)})
                        self.acked.append((event_id.decode(), time.time() * 1000))
                        n += 1
            except (sync_redis.RedisError, OSError):
                continue

    def stop(self) -> list[tuple[str, float]]:
        self._halt.set()
        self.join(5)
        return self.acked


def cut(port: int) -> None:
    """Destroy every connection to ``port`` on this host (both ends see a reset)."""
    subprocess.run(["ss", "-K", "dst", "127.0.0.1", "dport", "=", str(port)], check=True,
                   capture_output=True, timeout=10)



def _edge(start_relay: Callable[..., Relay], start_replay: Callable[..., Relay],
          start_varnish: Callable[..., Varnish], **settings: Any) -> tuple[Relay, Relay, Varnish]:
    common = {"retry_ms": 500, "heartbeat_s": 1, "refused_retry_ms": 1000, **settings}
    a = start_relay(**common)
    b = start_relay(**common)
    return a, b, start_varnish([a, b], start_replay())


def _open(browser: Browser, edge: Varnish) -> Page:
    page = browser.new_page()
    page.route(f"{edge.url}/listener", lambda route: route.fulfill(
        body=PAGE % {"n": SOURCES, "topic": TOPIC}, content_type="text/html"))
    page.goto(f"{edge.url}/listener")
    page.wait_for_function("() => window.sources.every(s => s.opens > 0)", timeout=15_000)
    return page


def _settle(page: Page, producer: Producer, redis_url: str,
            timeout: float = 45) -> dict[str, Any]:
    """Stop producing; wait until every EventSource has the stream's last event; check each
    against the stream as Redis holds it (which holds every acknowledged event)."""
    time.sleep(0.5)
    acked = producer.stop()
    with sync_redis.Redis.from_url(redis_url) as r:
        want = [i.decode() for i, _ in r.xrange(f"ssedge:{{{TOPIC}}}")]
    assert {i for i, _ in acked} <= set(want), "Redis lost acknowledged events"
    page.wait_for_function("last => window.sources.every(s => s.ids.includes(last))",
                           arg=want[-1], timeout=timeout * 1000)
    sources: list[dict[str, Any]] = page.evaluate("() => window.sources")
    published = dict(acked)
    worst = 0.0
    for n, s in enumerate(sources):
        got = s["ids"]
        assert 2 not in s["states"], f"EventSource {n} closed for good: {s['states']}"
        assert len(got) == len(set(got)), f"EventSource {n}: duplicates"
        missing = set(want) - set(got)
        assert not missing, f"EventSource {n}: {len(missing)} of {len(want)} lost"
        assert got == want, f"EventSource {n}: out of order"
        worst = max([worst, *(at - published[i] for i, at in zip(got, s["at"], strict=True)
                               if i in published)])
    gap = max(b - a for s in sources for a, b in itertools.pairwise(s["at"]))
    return {"events": len(want), "longest wait ms": round(worst), "longest gap ms": gap,
            "reconnects": [s["errors"] for s in sources]}


def _run(coro: Any) -> Any:
    """Playwright's sync API runs an event loop on this thread: asyncio work (and the test
    harness, which uses it to wait for servers) runs on another."""
    return _thread(asyncio.run, coro)


def _thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args, **kwargs).result()


def test_every_relay_frozen_while_the_browsers_connections_are_cut(
    start_relay: Callable[..., Relay], start_replay: Callable[..., Relay],
    start_varnish: Callable[..., Varnish], redis_server: RedisServer, browser: Browser,
) -> None:
    a, b, edge = _thread(_edge, start_relay, start_replay, start_varnish)
    page = _open(browser, edge)
    producer = Producer(redis_server.url)
    producer.start()
    time.sleep(1)
    workers = [pid for relay in (a, b) for pid in [relay.pid, *relay.worker_pids()]]
    for pid in workers:
        os.kill(pid, signal.SIGSTOP)
    try:
        cut(edge.port)  # the browser must reconnect, through an edge with no relay answering
        time.sleep(6)
        cut(edge.port)
    finally:
        for pid in workers:
            os.kill(pid, signal.SIGCONT)
    result = _settle(page, producer, redis_server.url)
    print(f"relays frozen 6 s: {result}")


def test_redis_stopped_for_10_s_while_the_browsers_connections_are_cut(
    start_relay: Callable[..., Relay], start_replay: Callable[..., Relay],
    start_varnish: Callable[..., Varnish], redis_server: RedisServer, browser: Browser,
) -> None:
    _, _, edge = _thread(_edge, start_relay, start_replay, start_varnish)
    page = _open(browser, edge)
    producer = Producer(redis_server.url)
    producer.start()
    time.sleep(1)
    redis_server.stop()
    stopped = time.monotonic()
    cut(edge.port)
    time.sleep(3)
    # the relays stay ready through the blip (SSEDGE_REDIS_GRACE_S): the edge keeps them
    health = edge.healthy()
    assert health["relay_1"] and health["relay_2"], health
    cut(edge.port)
    time.sleep(max(0.0, 10 - (time.monotonic() - stopped)))
    _thread(redis_server.start)
    result = _settle(page, producer, redis_server.url)
    print(f"Redis stopped 10 s: {result}")


def test_relays_at_their_maximum_of_streams(
    start_relay: Callable[..., Relay], start_replay: Callable[..., Relay],
    start_varnish: Callable[..., Varnish], redis_server: RedisServer, browser: Browser,
) -> None:
    # relay a takes 1 stream, b 7: of the page's 4 EventSources one fits on a, and the edge
    # sends the others a refuses on to b. A retry of 2 s leaves the test time to fill both
    # relays before the browser comes back.
    settings = {"retry_ms": 2000, "heartbeat_s": 1, "refused_retry_ms": 1000}
    a = _thread(start_relay, max_streams=1, **settings)
    b = _thread(start_relay, max_streams=7, **settings)
    edge = _thread(start_varnish, [a, b], _thread(start_replay))
    page = _open(browser, edge)
    assert page.evaluate("() => window.sources.every(s => s.errors === 0)"), (
        "a refusal reached the browser while another relay had room")
    producer = Producer(redis_server.url)
    producer.start()
    time.sleep(0.5)

    async def fill_then_free() -> int:
        cut(edge.port)
        await _until_streams(a, 0)
        await _until_streams(b, 0)
        # both relays full: every reconnect of the browser is refused for a while
        blockers = [await subscribe(f"{a.url}/v1/streams/other/events")]
        blockers += [await subscribe(f"{b.url}/v1/streams/other/events") for _ in range(7)]
        await asyncio.sleep(5)
        refused = (await metrics(a.url))["ssedge_refused_streams_total"] + (
            await metrics(b.url))["ssedge_refused_streams_total"]
        for es in blockers:
            es.close()
        return int(refused)

    refused = _run(fill_then_free())
    assert refused >= SOURCES, "the browser's reconnects were not refused"
    result = _settle(page, producer, redis_server.url)
    print(f"both relays full 5 s, {refused} refusals: {result}")


async def _until_streams(relay: Relay, n: int) -> None:
    for _ in range(100):
        if (await metrics(relay.url))["ssedge_streams_open"] <= n:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{relay.url} still has streams")
