"""The demo page and the dashboard in headless Chromium, through Varnish in front of two
relays: the page's own EventSource receives published events, survives a relay SIGKILLed
mid-stream (reconnecting by itself with Last-Event-ID, every event shown once), and the
dashboard's numbers move when load is applied.

Debian's chromium, driven by Playwright's sync API (no ``playwright install``). The page
runs its own event loop on this thread, so the tests' own asyncio work runs in a helper
thread (``_run``)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, Route

from relay.harness.processes import spawn, stop_group
from relay.harness.servers import RedisServer, Relay, Varnish, metrics, publish
from relay.web import client
from tests.integration.conftest import TOKEN
from tests.integration.sse import subscribe

WAIT_MS = 15_000


def _run(coro: Coroutine[Any, Any, Any]) -> Any:
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


@dataclass
class Edge:
    a: Relay
    b: Relay
    varnish: Varnish

    @property
    def url(self) -> str:
        return self.varnish.url


@pytest.fixture
def edge(start_relay: Callable[..., Relay], start_replay: Callable[..., Relay],
         start_varnish: Callable[..., Varnish]) -> Edge:
    # a second between tries: room for the test to publish while the page is away
    a = start_relay(retry_ms=1000, heartbeat_s=1)
    b = start_relay(retry_ms=1000, heartbeat_s=1)
    return Edge(a, b, start_varnish([a, b], start_replay()))



@pytest.fixture
def page(edge: Edge, browser: Browser) -> Iterator[Page]:
    page = browser.new_page()
    yield page
    page.close()


def _shown_ids(page: Page) -> list[str]:
    """The ids in the events table, oldest first (the table shows the newest first)."""
    ids: list[str] = page.eval_on_selector_all("#events tr", "rows => rows.map(r => r.dataset.id)")
    return ids[::-1]


def _wait_rows(page: Page, count: int) -> None:
    page.wait_for_function("n => document.querySelectorAll('#events tr').length >= n",
                           arg=count, timeout=WAIT_MS)


def test_demo_page_shows_published_events_and_publishes_with_the_token(
        edge: Edge, page: Page) -> None:
    page.goto(f"{edge.url}/?topic=pages-live")
    page.wait_for_selector('#state[data-state="open"]', timeout=WAIT_MS)
    published = _run(publish(edge.url, TOKEN, "pages-live",
                             [{"data": f"event {n}", "event": "tick"} for n in range(5)]))
    _wait_rows(page, 5)
    assert _shown_ids(page) == published
    assert page.text_content("#last-id") == published[-1]
    third = f'#events tr[data-id="{published[2]}"] td:nth-child(4)'
    assert page.text_content(third) == "event 2"

    # the page's own form: refused without the token, published with it
    page.fill("#data", "from the form")
    page.fill("#token", "not-the-token")
    page.click("#publish button")
    page.wait_for_selector('#publish-result[data-status="401"]', timeout=WAIT_MS)
    # the first try is answered 503 (a relay that cannot say whether it wrote): the form
    # sends the same request, with the same Idempotency-Key, again
    keys: list[str] = []

    def first_unavailable(route: Route) -> None:
        if route.request.method != "POST":
            route.continue_()
            return
        keys.append(route.request.headers.get("idempotency-key", ""))
        if len(keys) == 1:
            route.fulfill(status=503, headers={"Retry-After": "0"},
                          body='{"error": "unavailable", "message": "retry"}')
        else:
            route.continue_()

    page.route("**/v1/streams/pages-live/events", first_unavailable)
    page.fill("#token", TOKEN)
    page.click("#publish button")
    page.wait_for_selector('#publish-result[data-status="201"]', timeout=WAIT_MS)
    page.unroute("**/v1/streams/pages-live/events")
    assert len(keys) == 2 and keys[0] == keys[1] and len(keys[0]) == 32, keys
    _wait_rows(page, 6)
    assert page.text_content("#events tr:first-child td:nth-child(4)") == "from the form"
    assert page.text_content("#duplicates") == "0"


def test_demo_page_reconnects_by_itself_when_its_relay_is_killed(edge: Edge, page: Page) -> None:
    topic = "pages-kill"
    page.goto(f"{edge.url}/?topic={topic}")
    page.wait_for_selector('#state[data-state="open"]', timeout=WAIT_MS)
    before = _run(publish(edge.url, TOKEN, topic, [{"data": n} for n in range(5)]))
    _wait_rows(page, 5)

    # the node that holds the page's stream dies; events are published while it is away
    open_on = [_run(metrics(r.url))["ssedge_streams_open"] for r in (edge.a, edge.b)]
    assert sorted(open_on) == [0, 1], open_on
    victim, survivor = (edge.a, edge.b) if open_on[0] else (edge.b, edge.a)
    victim.stop(signal.SIGKILL)
    page.wait_for_selector('#state[data-state="reconnecting"]', timeout=WAIT_MS)
    during = _run(publish(survivor.url, TOKEN, topic, [{"data": n} for n in range(5, 10)]))
    page.wait_for_selector("#reconnects li", timeout=WAIT_MS)
    after = _run(publish(edge.url, TOKEN, topic, [{"data": n} for n in range(10, 15)]))
    _wait_rows(page, 15)
    page.wait_for_timeout(300)  # anything doubled would arrive with its original

    assert _shown_ids(page) == before + during + after  # each once, in order
    assert page.text_content("#duplicates") == "0"
    assert page.text_content("#out-of-order") == "0"
    reconnects = page.query_selector_all("#reconnects li")
    assert len(reconnects) == 1
    assert reconnects[0].get_attribute("data-last-event-id") == before[-1]
    assert reconnects[0].get_attribute("data-replayed") == str(len(during))
    # the browser's EventSource did it, with Last-Event-ID: the page never made another one
    assert page.get_attribute("body", "data-sources") == "1"


class Load:
    """``streams`` readers through the edge and a publisher, in a thread of their own, until
    ``stop``; and handshake requests so the edge has something to hit."""

    def __init__(self, url: str, streams: int) -> None:
        self.url = url
        self.streams = streams
        self.done = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self.thread.start()

    async def _run(self) -> None:
        readers = [await subscribe(f"{self.url}/v1/streams/pages-load/events")
                   for _ in range(self.streams)]
        try:
            for _ in range(20):
                await client.request("GET", f"{self.url}/v1/handshake")
            n = 0
            while not self.done.is_set():
                await publish(self.url, TOKEN, "pages-load", [{"data": n + i} for i in range(5)])
                n += 5
                await asyncio.sleep(0.05)
        finally:
            for es in readers:
                es.close()

    def stop(self) -> None:
        self.done.set()
        self.thread.join(10)


def _value(page: Page, key: str) -> float | None:
    raw = page.get_attribute(f'output[data-total="{key}"]', "data-value")
    return float(raw) if raw else None


def test_dashboard_numbers_move_under_load(edge: Edge, page: Page, tmp_path: Path,
                                           redis_server: RedisServer) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSEDGE_")}
    env["SSEDGE_REDIS_URL"] = redis_server.url
    # what `ssedge up`'s supervisor writes: its children's restarts reach the page
    supervised = tmp_path / "supervisor.json"
    supervised.write_text(json.dumps({"state": "running", "failure": None, "children": [
        {"name": "redis", "state": "up", "pid": 10, "restarts": 1, "last_exit": -9,
         "last_exit_at": 1.7e9},
        {"name": "relay-1", "state": "backoff", "pid": 11, "restarts": 2, "last_exit": 1,
         "last_exit_at": 1.7e9}]}))
    collector = spawn([sys.executable, "-m", "relay", "stats", "--relay", edge.a.url,
                       "--relay", edge.b.url, "--varnish-name", str(edge.varnish.workdir),
                       "--haproxy-socket", str(edge.varnish.admin.path),
                       "--interval", "0.5", "--supervisor", str(supervised)],
                      tmp_path / "stats.log", env)
    try:
        # the edge asks a token of the ssedge.* topics; these relays keep them public (make
        # up's make them private and print the page's address with a real token)
        page.goto(f"{edge.url}/dashboard?access_token=any")
        # the backfill's snapshots are from before the page came; the dashboard's own stream
        # shows in the first one after (rates need two scrapes)
        page.wait_for_function(
            "() => document.querySelector('output[data-total=\"streams_open\"]')"
            ".dataset.value === '1' && document.querySelector("
            "'output[data-total=\"events_out_per_s\"]').dataset.value !== ''",
            timeout=WAIT_MS)
        assert page.eval_on_selector_all(
            "#nodes tr", "rows => rows.map(r => r.children[1].textContent)") == ["up", "up"]
        assert page.inner_text("#stack-restarts") == "3"
        assert page.eval_on_selector_all(
            "#children tr", "rows => rows.map(r => [...r.children].map(c => c.textContent))"
        )[1][:4] == ["relay-1", "backoff", "11", "2"]

        load = Load(edge.url, 30)
        try:
            page.wait_for_function(
                "() => Number(document.querySelector('output[data-total=\"streams_open\"]')"
                ".dataset.value) >= 31 && Number(document.querySelector("
                "'output[data-total=\"events_out_per_s\"]').dataset.value) > 100",
                timeout=WAIT_MS)
            page.wait_for_function(
                "() => Number(document.querySelector('#edge tr[data-class=\"handshake\"]')"
                ".children[4].textContent) > 0", timeout=WAIT_MS)
            # the busiest topics across both relays (the audience every relay writes)
            page.wait_for_function(
                "() => { const r = document.querySelector("
                "'#audience tr[data-topic=\"pages-load\"]');"
                " return r !== null && r.children[1].textContent === '30'; }", timeout=WAIT_MS)
            # the streams the edge proxy carries (HAProxy's own count): the load's and the page's
            page.wait_for_function(
                "() => Number(document.querySelector('#proxy-streams').textContent) >= 31",
                timeout=WAIT_MS)
        finally:
            load.stop()
        loaded = _value(page, "events_out_per_s")
        assert loaded is not None and loaded > 100
        # the plots have points
        assert page.eval_on_selector('svg[data-spark="streams_open"]',
                                     "s => s.querySelectorAll('polyline').length") >= 2
    finally:
        stop_group(collector, signal.SIGTERM)
