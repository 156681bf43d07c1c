"""The resume holes a review found, each shown on real relays, replay service, edge and Redis.

Each test here failed on the code before the fix (run against commit 446f256) and passes now:
a resume onto a relay whose feed is behind, a page the edge kept, a catch-up taken for a slow
client, an id that is the largest there is, a reset above what follows it, a stream that went
back, pages of large events.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable

import redis as redis_sync

from relay.harness.servers import RedisServer, Relay, Varnish, metrics, publish, rss_bytes
from relay.protocol import ids
from relay.protocol.wire import Event
from relay.web import client
from tests.integration.conftest import TOKEN
from tests.integration.sse import collect, subscribe

LARGEST = "18446744073709551615-18446744073709551615"


async def publish_many(url: str, topic: str, n: int, size: int = 0) -> list[str]:
    out: list[str] = []
    pad = "x" * size
    for start in range(0, n, 1000):
        batch = [{"data": f"{pad}{i}"} for i in range(start, min(n, start + 1000))]
        out += await publish(url, TOKEN, topic, batch)
    return out


def frames_of(events: list[Event]) -> list[str]:
    return [e.id for e in events]


async def read_all(url: str, last_event_id: str, count: int, timeout: float = 30
                   ) -> list[Event]:
    async with await subscribe(url, last_event_id=last_event_id) as es:
        return await collect(es, count, timeout)


def test_a_resume_onto_a_relay_whose_feed_is_behind_sends_nothing_twice(
    start_relay: Callable[..., Relay],
) -> None:
    fast = start_relay()
    # reads one entry per XREAD: thawed, it takes a while to read what it missed
    slow = start_relay(feed_read_count=1)
    url = "/v1/streams/lag/events"

    async def run() -> None:
        async with await subscribe(slow.url + url):
            pass  # the topic is watched by both (it lingers 10 s)
        worker = slow.worker_pids()[0]
        os.kill(worker, signal.SIGSTOP)
        try:
            published = await publish_many(fast.url, "lag", 2000)
            have = published[1499]  # the client read this far on the fast relay
            resume = asyncio.ensure_future(read_all(slow.url + url, have, 500, timeout=20))
            await asyncio.sleep(0.2)  # its request waits in the frozen relay's backlog
        finally:
            os.kill(worker, signal.SIGCONT)
        got = frames_of(await resume)
        assert got == published[1500:], (
            f"{len(got)} events, first {got[:1]}: sent again what the client had")
        # and a client with the very newest id gets nothing more than what comes next
        more = asyncio.ensure_future(read_all(slow.url + url, published[-1], 1, timeout=10))
        await asyncio.sleep(0.3)
        newer = await publish(fast.url, TOKEN, "lag", [{"data": "next"}])
        assert frames_of(await more) == newer

    asyncio.run(run())


def test_a_page_the_edge_kept_from_before_does_not_end_a_catch_up(
    start_relay: Callable[..., Relay], start_replay: Callable[..., Relay],
    start_varnish: Callable[..., Varnish],
) -> None:
    # the replay service lets the edge keep pages at the head for 30 s: every request for
    # that URL meanwhile gets the page as it was (the worst an edge cache can do)
    replay = start_replay(replay_open_max_age_s=30)
    backend = start_relay()  # the edge's relay pool (the relay under test is not in it)
    varnish = start_varnish([backend], replay)
    relay = start_relay(replay_url=varnish.url, ring_events=1000, ring_bytes=1 << 24)

    async def run() -> None:
        first = await publish_many(relay.url, "stale", 10)
        have = first[-1]
        # a page after the client's id, empty, at the edge
        page = await client.request("GET", f"{varnish.url}/v1/replay/stale?after={have}"
                                    "&limit=1000")
        assert page.status == 200 and page.headers["x-ssedge-count"] == "0"
        later = await publish_many(relay.url, "stale", 3000)  # the ring holds the last 1000
        again = await client.request("GET", f"{varnish.url}/v1/replay/stale?after={have}"
                                     "&limit=1000")
        assert again.headers["x-ssedge-count"] == "0" and again.headers["x-cache"] == "HIT"
        got = frames_of(await read_all(relay.url + "/v1/streams/stale/events", have, 3000))
        assert got == later, f"{len(got)} of {len(later)} events"
        assert (await metrics(relay.url))["ssedge_replay_fresh_reads_total"] >= 1

    asyncio.run(run())


def test_the_edge_never_serves_a_page_at_the_head_past_its_lifetime(
    start_relay: Callable[..., Relay], start_replay: Callable[..., Relay],
    start_varnish: Callable[..., Varnish],
) -> None:
    relay = start_relay()
    varnish = start_varnish([relay], start_replay())

    async def run() -> None:
        have = (await publish_many(relay.url, "grace", 3))[-1]
        url = f"{varnish.url}/v1/replay/grace?after={have}&limit=1000"
        assert (await client.request("GET", url)).headers["x-ssedge-count"] == "0"
        newer = await publish_many(relay.url, "grace", 2)
        await asyncio.sleep(1.5)  # past max-age=1: Varnish's default grace would serve it stale
        page = await client.request("GET", url)
        assert page.headers["x-ssedge-count"] == "2", "served stale past its lifetime"
        assert page.headers["x-ssedge-through"] == newer[-1]

    asyncio.run(run())


def test_a_catch_up_is_not_taken_for_a_slow_client(
    start_relay: Callable[..., Relay], redis_server: RedisServer,
) -> None:
    # the ring holds more than the backlog bound, and history comes slowly: a replay service
    # that never answers (each page waits out replay_timeout_s, then Redis)
    silent = _silent_server()
    relay = start_relay(client_backlog_bytes=16 * 1024, ring_events=400, replay_page=100,
                        replay_url=f"http://127.0.0.1:{silent.port}", replay_timeout_s=0.4)

    async def run() -> None:
        published = await publish_many(relay.url, "slowhistory", 1400, size=100)
        async with await subscribe(relay.url + "/v1/streams/slowhistory/events"):
            pass  # primed: the ring holds the last 400 (about 45 KiB)
        got = await read_all(relay.url + "/v1/streams/slowhistory/events", published[0], 1399,
                             timeout=30)
        assert frames_of(got) == published[1:], f"{len(got)} events: closed while catching up"
        m = await metrics(relay.url)
        assert m["ssedge_backlog_drops_total"] == 0

    try:
        asyncio.run(run())
    finally:
        silent.close()


def test_the_largest_id_is_answered_not_refused(
    relay: Relay, start_replay: Callable[..., Relay],
) -> None:
    replay = start_replay()

    async def run() -> None:
        last = (await publish_many(relay.url, "big", 3))[-1]
        page = await client.request("GET", f"{replay.url}/v1/replay/big?after={LARGEST}")
        assert page.status == 200, page.body
        assert page.headers["x-ssedge-reset"] == "1" and page.headers["x-ssedge-count"] == "0"
        async with await subscribe(relay.url + "/v1/streams/big/events",
                                   last_event_id=LARGEST) as es:
            reset = (await collect(es, 1, timeout=5))[0]
            assert reset.event == "ssedge.reset" and reset.id == last
            newer = await publish(relay.url, TOKEN, "big", [{"data": "on"}])
            assert frames_of((await collect(es, 2, timeout=5))[1:]) == newer

    asyncio.run(run())


def test_a_reset_is_never_above_the_events_after_it(
    start_relay: Callable[..., Relay], redis_server: RedisServer,
) -> None:
    # the ring holds the last 100; Redis is then trimmed to its last 50: a client from far
    # back loses what is in neither, and the reset says exactly that, below what follows
    relay = start_relay(ring_events=100, heartbeat_s=0.5)

    async def run() -> None:
        published = await publish_many(relay.url, "trimmed", 300)
        async with await subscribe(relay.url + "/v1/streams/trimmed/events"):
            pass  # primed with the last 100
        redis_server.cli("XTRIM", "ssedge:{trimmed}", "MAXLEN", "50")
        got = await read_all(relay.url + "/v1/streams/trimmed/events", published[9], 100,
                             timeout=10)
        reset, rest = got[0], got[1:]
        assert reset.event == "ssedge.reset"
        # the ring was primed with the last 100: its floor is the oldest of them (everything
        # above it is in the ring); lost is everything after the client's id up to the floor
        assert frames_of(rest) == published[201:], "the ring's events, all of them"
        assert ids.parse(reset.id) < ids.parse(rest[0].id), "a reset above what follows it"
        assert reset.id == published[200]
        assert f'"requested":"{published[9]}"' in reset.data
        assert f'"resume_from":"{published[201]}"' in reset.data

    asyncio.run(run())


def test_a_stream_that_went_back_is_noticed_and_its_clients_start_over(
    start_relay: Callable[..., Relay], redis_server: RedisServer,
) -> None:
    relay = start_relay(feed_verify_s=0.5, heartbeat_s=0.5)

    async def run() -> None:
        published = await publish_many(relay.url, "again", 5)
        async with await subscribe(relay.url + "/v1/streams/again/events",
                                   last_event_id=published[1]) as es:
            assert frames_of(await collect(es, 3, timeout=5)) == published[2:]
            # deleted and made again with ids below every old one (a fixture reloaded)
            with redis_sync.Redis.from_url(redis_server.url) as r:
                r.delete("ssedge:{again}")
                r.xadd("ssedge:{again}", {"d": "new-1"}, id="1000-1")
            deadline = time.monotonic() + 10
            while not es.ended:  # the relay ends the stream: the client reconnects
                assert time.monotonic() < deadline, "still waiting on a stream that is gone"
                await es.read_chunk()
        async with await subscribe(relay.url + "/v1/streams/again/events",
                                   last_event_id=published[-1]) as es:
            reset = (await collect(es, 1, timeout=5))[0]
            assert reset.event == "ssedge.reset" and reset.id == "1000-1"
            assert '"reason":"unknown"' in reset.data
            with redis_sync.Redis.from_url(redis_server.url) as r:
                r.xadd("ssedge:{again}", {"d": "new-2"}, id="1000-2")
            assert [e.data for e in (await collect(es, 2, timeout=5))[1:]] == ["new-2"]
        assert (await metrics(relay.url))["ssedge_rewinds_total"] == 1

    asyncio.run(run())


def test_history_of_large_events_is_read_and_sent_in_bounded_pieces(
    start_relay: Callable[..., Relay], start_replay: Callable[..., Relay],
) -> None:
    replay = start_replay()
    relay = start_relay(ring_events=2, replay_url=replay.url, replay_cache_bytes=0,
                        max_body_bytes=1 << 20)
    size = 512 * 1024

    async def run() -> None:
        published: list[str] = []
        for i in range(40):  # 20 MiB of history
            published += await publish(relay.url, TOKEN, "large",
                                       [{"data": str(i % 10) * size}])
        page = await client.request("GET", f"{replay.url}/v1/replay/large?after=0-0")
        assert int(page.headers["x-ssedge-count"]) <= 3 and len(page.body) < 2 * size + 4096
        assert page.headers["x-ssedge-through"] == page.headers["x-ssedge-last-id"]
        async with await subscribe(relay.url + "/v1/streams/large/events"):
            pass
        worker = relay.worker_pids()[0]
        before = rss_bytes(worker)
        readers = [read_all(relay.url + "/v1/streams/large/events", "0-0", 40, timeout=60)
                   for _ in range(6)]
        results = await asyncio.gather(*readers)
        grown = rss_bytes(worker) - before
        for got in results:
            assert frames_of(got) == published
        # six readers of 20 MiB each: a page and a piece at a time, not 20 MiB copies
        assert grown < 48 * 1024 * 1024, f"relay grew {grown >> 20} MiB"

    asyncio.run(run())


class _Silent:
    """A TCP server that accepts and never answers (a replay service that hangs)."""

    def __init__(self) -> None:
        import socket

        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]

    def close(self) -> None:
        self._sock.close()


def _silent_server() -> _Silent:
    return _Silent()
