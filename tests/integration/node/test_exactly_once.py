"""Exactly once through the whole system, with the faults that threaten it.

Three relays behind varnishd (the relays read history through it, as ``make up``'s do), the
replay service, one Redis. One relay's worker is frozen (SIGSTOP) while thousands of events
are published through another; clients that read them elsewhere resume onto the frozen relay
(its feed is far behind once thawed) and onto the others; the frozen relay's own clients fall
behind its small ring and catch up from history, which the edge holds stale (a page at the
head, empty, kept 30 s). Every client must end with every acknowledged event exactly once,
in order: 0 lost, 0 duplicates.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable

from relay.harness.processes import free_port
from relay.harness.servers import Relay, Varnish, metrics, publish
from relay.protocol import ids
from relay.protocol.wire import Event
from relay.web import client
from tests.integration.conftest import TOKEN
from tests.integration.sse import subscribe

TOPIC = "once"
PATH = f"/v1/streams/{TOPIC}/events"


class Browser:
    """Reads like an EventSource: on any end it reconnects with its Last-Event-ID, to the
    URL its ``route`` names at that moment."""

    def __init__(self, name: str, route: str) -> None:
        self.name = name
        self.route = route
        self.events: list[Event] = []
        self.last = ""
        self.reconnects = 0
        self._cut = asyncio.Event()
        self._stop = False

    def cut(self, route: str | None = None) -> None:
        """Drop the connection (and come back through ``route``)."""
        if route is not None:
            self.route = route
        self._cut.set()

    async def run(self) -> None:
        while not self._stop:
            try:
                es = await subscribe(self.route + PATH, last_event_id=self.last)
            except (OSError, AssertionError, asyncio.IncompleteReadError):
                await asyncio.sleep(0.1)
                self.reconnects += 1
                continue
            self._cut.clear()
            async with es:
                self._take(getattr(es, "early", []), es)
                while not es.ended and not self._cut.is_set() and not self._stop:
                    read = asyncio.ensure_future(es.read_chunk())
                    cut = asyncio.ensure_future(self._cut.wait())
                    done, _ = await asyncio.wait({read, cut},
                                                 return_when=asyncio.FIRST_COMPLETED)
                    cut.cancel()
                    if read not in done:
                        read.cancel()
                        with contextlib.suppress(BaseException):
                            await read
                        break
                    try:
                        self._take(read.result(), es)
                    except (OSError, asyncio.IncompleteReadError):
                        break
            self.reconnects += 1
            await asyncio.sleep(0.05)

    def _take(self, items: list[object], es: client.EventStream) -> None:
        self.events += [e for e in items if isinstance(e, Event)]
        self.last = es.decoder.last_event_id or self.last

    def has(self, last_id: str) -> bool:
        return any(e.id == last_id for e in self.events[-20:])

    def stop(self) -> None:
        self._stop = True
        self._cut.set()


async def _publish_through(url: str, n: int, pause: float = 0.01) -> list[str]:
    out: list[str] = []
    for start in range(0, n, 100):
        out += await publish(url, TOKEN, TOPIC, [{"data": f"e{start + i}"}
                                                 for i in range(min(100, n - start))])
        await asyncio.sleep(pause)
    return out


async def _until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out: {what}")
        await asyncio.sleep(0.1)


def test_exactly_once_through_the_edge_with_a_frozen_relay_and_stale_pages(
    start_relay: Callable[..., Relay], start_replay: Callable[..., Relay],
    start_varnish: Callable[..., Varnish],
) -> None:
    edge_port = free_port()
    edge_url = f"http://127.0.0.1:{edge_port}"
    # the edge keeps pages at the head 30 s: any page it has is as stale as it gets
    replay = start_replay(replay_open_max_age_s=30)
    common = {"replay_url": edge_url, "ring_events": 500, "heartbeat_s": 1, "retry_ms": 200}
    a = start_relay(**common)
    b = start_relay(**common)
    # the relay that will be frozen: thawed, its feed reads what it missed 100 at a time
    # into a ring of 50, so its feed is behind for a while (when resuming clients arrive) and
    # its own clients fall behind the ring's tail at every read (they catch up from history)
    c = start_relay(feed_read_count=100, **{**common, "ring_events": 50})
    start_varnish([a, b, c], replay, port=edge_port)

    async def run() -> None:
        published = await _publish_through(a.url, 100)
        start = published[0]
        browsers = ([Browser(f"edge-{i}", edge_url) for i in range(9)]
                    + [Browser(f"a-{i}", a.url) for i in range(4)]
                    + [Browser(f"c-{i}", c.url) for i in range(6)])
        for br in browsers:
            br.last = start
        tasks = [asyncio.ensure_future(br.run()) for br in browsers]
        try:
            await _until(lambda: all(br.has(published[-1]) for br in browsers), 30,
                         "every client caught up before the fault")
            # a page after the current head, empty, at the edge (kept 30 s)
            page = await client.request(
                "GET", f"{edge_url}/v1/replay/{TOPIC}?after={published[-1]}&limit=1000")
            assert page.headers["x-ssedge-count"] == "0"

            worker = c.worker_pids()[0]
            os.kill(worker, signal.SIGSTOP)
            try:
                published += await _publish_through(a.url, 1500)
                # readers of relay a move onto the frozen relay (their requests wait in its
                # backlog); half the edge's readers reconnect through the edge
                await _until(lambda: all(br.has(published[-1]) for br in browsers[9:13]), 30,
                             "relay a's readers read the burst")
                for br in browsers[9:13]:
                    br.cut(c.url)
                for br in browsers[:9:2]:
                    br.cut()
                published += await _publish_through(b.url, 1500)
                await asyncio.sleep(0.5)
            finally:
                os.kill(worker, signal.SIGCONT)
            published += await _publish_through(b.url, 300)
            await _until(lambda: all(br.has(published[-1]) for br in browsers), 90,
                         "every client has every event")
        finally:
            for br in browsers:
                br.stop()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        want = published[1:]
        for br in browsers:
            got = [e.id for e in br.events]
            dup = len(got) - len(set(got))
            assert dup == 0, f"{br.name}: {dup} duplicates"
            assert got == sorted(got, key=ids.parse), f"{br.name}: out of order"
            lost = len(set(want) - set(got))
            assert lost == 0, f"{br.name}: {lost} lost of {len(want)}"
            assert got == want
        # the fault really was there: relay c's clients caught up from history, and a page
        # the edge held was read again fresh
        mc = await metrics(c.url)
        assert mc["ssedge_resumes_total"] + mc["ssedge_catchups_total"] >= 1
        assert sum([(await metrics(r.url))["ssedge_replay_fresh_reads_total"]
                    for r in (a, b, c)]) >= 1

    asyncio.run(run())
