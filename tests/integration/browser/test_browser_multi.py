"""One plain EventSource on eight topics, headless Chromium through the edge, relays killed.

The page opens ``/v1/streams/events?topic=…`` (eight topics) through varnishd in front of
two relays whose rings hold 2 events (a reconnect reads history through the edge's replay
pages), and tells topics apart by its event's ``lastEventId`` (``id.split("~")[0]``); it has
no code that reopens anything. Events are written straight to Redis, round robin over the
topics, each carrying its topic's own sequence number.

1. The relay holding the stream is SIGKILLed before any event was published, and publishing
   starts at once: the browser reconnects with the id of the stream's first frame (an ``id:``
   and no data, which sets an EventSource's last event id and dispatches nothing), so the
   events published while it was away reach it.
2. That relay is started again; a few seconds later the other one, now holding the stream,
   is SIGKILLed mid-stream.

Then for every topic: every acknowledged event once, in order; the EventSource's readyState
never CLOSED.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis as sync_redis
from playwright.sync_api import Browser, Page
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from relay.harness.edge import Edge
from relay.harness.servers import RedisServer, Relay, metrics

TOPICS = [f"bm-{n}" for n in range(8)]

PAGE = """<!doctype html><meta charset="utf-8"><title>eight topics</title><script>
// a page that only listens: one EventSource, eight topics, each event filed under its topic
const topics = %(topics)s;
const es = new EventSource("/v1/streams/events?" + topics.map((t) => "topic=" + t).join("&"));
window.got = Object.fromEntries(topics.map((t) => [t, []]));
window.states = [es.readyState];
window.opens = 0;
window.errors = 0;
es.onmessage = (e) => { window.got[e.lastEventId.split("~")[0]].push(+e.data); };
es.onopen = () => { window.opens++; window.states.push(es.readyState); };
es.onerror = () => { window.errors++; window.states.push(es.readyState); };
</script>"""


class Producer(threading.Thread):
    """XADDs an event every 20 ms straight to Redis, round robin over the topics, each with
    its topic's next number; keeps how many each topic got acknowledged."""

    def __init__(self, redis_url: str) -> None:
        super().__init__(daemon=True)
        self.url = redis_url
        self.acked = dict.fromkeys(TOPICS, 0)
        self._halt = threading.Event()

    def run(self) -> None:
        with sync_redis.Redis.from_url(self.url, socket_timeout=2) as r:
            n = 0
            while not self._halt.wait(0.02):
                topic = TOPICS[n % len(TOPICS)]
                r.xadd(f"ssedge:{{{topic}}}", {"d": str(self.acked[topic])})
                self.acked[topic] += 1
                n += 1

    def stop(self) -> dict[str, int]:
        self._halt.set()
        self.join(5)
        return self.acked


def _thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Playwright's sync API runs an event loop on this thread: the harness's servers (which
    wait with asyncio) start on another."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args, **kwargs).result()


def _holder(relays: list[Relay]) -> Relay:
    """The relay that holds the page's stream (wait until one does)."""
    for _ in range(100):
        for relay in relays:
            try:
                if _thread(asyncio.run, metrics(relay.url)).get("ssedge_streams_open"):
                    return relay
            except OSError:
                continue
        time.sleep(0.1)
    raise AssertionError("no relay holds the page's stream")


def _opens(page: Page, n: int) -> None:
    page.wait_for_function(f"() => window.opens >= {n}", timeout=20_000)


def test_one_eventsource_on_eight_topics_through_relays_killed(
    start_relay: Callable[..., Relay], start_replay: Callable[..., Relay],
    start_edge: Callable[..., Edge], redis_server: RedisServer, browser: Browser,
) -> None:
    common = {"retry_ms": 500, "heartbeat_s": 1, "ring_events": 2, "refused_retry_ms": 500}
    a = _thread(start_relay, **common)
    b = _thread(start_relay, **common)
    edge = _thread(start_edge, [a, b], _thread(start_replay))
    page = browser.new_page()
    page.route(f"{edge.url}/listener", lambda route: route.fulfill(
        body=PAGE % {"topics": TOPICS}, content_type="text/html"))
    page.goto(f"{edge.url}/listener")
    _opens(page, 1)

    # 1. killed before any event: the first frame's id brings back what it missed
    first = _holder([a, b])
    first.stop(signal.SIGKILL)
    producer = Producer(redis_server.url)
    producer.start()
    _opens(page, 2)
    _thread(first.start)
    time.sleep(2)

    # 2. killed mid-stream
    second = _holder([a, b])
    second.stop(signal.SIGKILL)
    _opens(page, 3)
    time.sleep(2)
    acked = producer.stop()

    with sync_redis.Redis.from_url(redis_server.url) as r:
        want = {t: [int(f[b"d"]) for _, f in r.xrange(f"ssedge:{{{t}}}")] for t in TOPICS}
    assert all(want[t] == list(range(acked[t])) for t in TOPICS), "Redis lost events"
    with contextlib.suppress(PlaywrightTimeout):  # what is missing is said below
        page.wait_for_function(
            "want => Object.entries(want).every(([t, n]) => window.got[t].length >= n)",
            arg={t: len(v) for t, v in want.items()}, timeout=20_000)
    page.wait_for_timeout(300)  # anything doubled would arrive with its original
    got: dict[str, list[int]] = page.evaluate("() => window.got")
    states: list[int] = page.evaluate("() => window.states")
    assert 2 not in states, f"the EventSource closed for good: {states}"
    for topic in TOPICS:
        missing = sorted(set(want[topic]) - set(got[topic]))
        assert not missing, f"{topic}: {len(missing)} of {len(want[topic])} lost: {missing[:10]}"
        assert got[topic] == want[topic], f"{topic}: not every event once, in order"
    survivor = _thread(asyncio.run, metrics(first.url))
    print(f"eight topics, two relays killed: {sum(map(len, got.values()))} events, "
          f"{page.evaluate('() => window.errors')} reconnects, states {states}, "
          f"{survivor.get('ssedge_catchups_total', 0):.0f} topics caught up from history "
          "on the last relay")
