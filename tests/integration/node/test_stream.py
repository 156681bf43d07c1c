"""The event stream's contract on a real relay: start positions, resume, headers, heartbeat,
clean-up, slow clients, topics added while the feed is blocked."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

from relay.harness.servers import Relay, metrics, publish
from relay.web import client
from tests.integration.conftest import TOKEN
from tests.integration.sse import collect, subscribe


def events(n: int, start: int = 0) -> list[dict[str, object]]:
    return [{"data": f"e{i}"} for i in range(start, start + n)]


def test_headers_and_retry_are_the_first_bytes(relay: Relay) -> None:
    async def run() -> None:
        es = await client.stream(f"{relay.url}/v1/streams/t/events", keep_raw=True)
        assert es.response.status == 200
        assert es.response.headers["content-type"] == "text/event-stream"
        assert es.response.headers["cache-control"] == "private, no-store"
        assert es.response.headers["x-accel-buffering"] == "no"
        await es.read_chunk()
        assert bytes(es.raw).startswith(b"retry: 3000\n\n")
        es.close()

    asyncio.run(run())


def test_resume_inside_ring_returns_exactly_the_events_after_the_id(relay: Relay) -> None:
    async def run() -> None:
        ids = await publish(relay.url, TOKEN, "r", events(50))
        url = f"{relay.url}/v1/streams/r/events"
        # header, then the query parameter
        async with await subscribe(url, last_event_id=ids[19]) as es:
            assert [e.id for e in await collect(es, 30, timeout=10)] == ids[20:]
        async with await subscribe(f"{url}?last_event_id={ids[44]}") as es:
            assert [e.id for e in await collect(es, 5, timeout=10)] == ids[45:]
        # the last id: nothing old, then live events only
        async with await subscribe(url, last_event_id=ids[-1]) as es:
            more = await publish(relay.url, TOKEN, "r", events(3, 50))
            assert [e.id for e in await collect(es, 3, timeout=10)] == more

    asyncio.run(run())


def test_id_older_than_ring_is_read_from_redis_then_ring_without_gap(
    start_relay: Callable[..., Relay],
) -> None:
    relay = start_relay(ring_events=20, topic_linger_s=0)

    async def run() -> None:
        ids = await publish(relay.url, TOKEN, "old", events(300))
        url = f"{relay.url}/v1/streams/old/events"
        async with await subscribe(url, last_event_id=ids[9]) as es:
            more = await publish(relay.url, TOKEN, "old", events(5, 300))
            got = await collect(es, 295, timeout=15)
        assert [e.id for e in got] == ids[10:] + more
        m = await metrics(relay.url)
        assert m["ssedge_catchups_total"] >= 1 and m["ssedge_redis_history_reads_total"] >= 1
        # since=earliest reads the whole stream the same way
        async with await subscribe(url + "?since=earliest") as es:
            assert [e.id for e in await collect(es, 305, timeout=15)] == ids + more

    asyncio.run(run())


def test_backfill_and_live_tail(relay: Relay) -> None:
    async def run() -> None:
        ids = await publish(relay.url, TOKEN, "bf", events(10))
        url = f"{relay.url}/v1/streams/bf/events"
        async with await subscribe(url + "?backfill=3") as es_backfill, \
                await subscribe(url) as es_live:
            more = await publish(relay.url, TOKEN, "bf", events(2, 10))
            assert [e.id for e in await collect(es_backfill, 5, timeout=10)] == ids[7:] + more
            assert [e.id for e in await collect(es_live, 2, timeout=10)] == more

    asyncio.run(run())


def test_heartbeat_comments_while_idle(start_relay: Callable[..., Relay]) -> None:
    relay = start_relay(heartbeat_s=0.2)

    async def run() -> None:
        es = await client.stream(f"{relay.url}/v1/streams/hb/events", comments=True)
        seen: list[object] = []
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and len(seen) < 3:
            seen.extend(await es.read_chunk())
        es.close()
        assert len([c for c in seen if getattr(c, "text", None) == "keepalive"]) >= 3

    asyncio.run(run())


def test_disconnected_clients_leave_nothing_behind(relay: Relay) -> None:
    async def run() -> None:
        before = await metrics(relay.url)
        url = f"{relay.url}/v1/streams/gone/events"
        streams = await asyncio.gather(*(subscribe(url) for _ in range(50)))
        during = await metrics(relay.url)
        assert during["ssedge_streams_open"] == 50
        assert during["ssedge_subscribers"] == 50
        for es in streams:
            es.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            after = await metrics(relay.url)
            if (after["ssedge_streams_open"] == 0 and after["ssedge_topics_watched"] == 0
                    and after["ssedge_tasks"] <= before["ssedge_tasks"]):
                break
            await asyncio.sleep(0.1)
        assert after["ssedge_streams_open"] == 0
        assert after["ssedge_subscribers"] == 0
        assert after["ssedge_tasks"] <= before["ssedge_tasks"]
        # with no linger, the topic is forgotten too
        assert after["ssedge_topics_watched"] == 0

    asyncio.run(run())


def test_client_that_stops_reading_is_closed_and_fanout_goes_on(
    start_relay: Callable[..., Relay],
) -> None:
    relay = start_relay(client_backlog_bytes=256 * 1024)

    async def run() -> None:
        url = f"{relay.url}/v1/streams/slow/events"
        # a client that sends its request and then never reads, with a tiny receive buffer
        stuck = socket.socket()
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.connect(("127.0.0.1", relay.port))
        stuck.sendall(b"GET /v1/streams/slow/events HTTP/1.1\r\nHost: x\r\n\r\n")
        reader = await subscribe(url)
        reading = asyncio.ensure_future(collect(reader, 400, timeout=60))
        await asyncio.sleep(0.2)
        payload = "x" * 32 * 1024
        published: list[str] = []
        for _ in range(40):  # 40 x 10 x 32 KiB = 12.5 MiB
            published += await publish(relay.url, TOKEN, "slow",
                                        [{"data": payload}] * 10)
        got = await reading
        assert [e.id for e in got] == published
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            m = await metrics(relay.url)
            if m["ssedge_backlog_drops_total"] >= 1 and m["ssedge_streams_open"] == 1:
                break
            await asyncio.sleep(0.2)
        assert m["ssedge_backlog_drops_total"] >= 1
        assert m["ssedge_streams_open"] == 1  # only the reader is left
        stuck.close()
        reader.close()

    asyncio.run(run())


def test_new_topic_is_read_without_waiting_out_the_feed_block(
    start_relay: Callable[..., Relay],
) -> None:
    # a 60 s block: without CLIENT UNBLOCK, events of a topic added later would wait a minute
    relay = start_relay(feed_block_ms=60_000)

    async def run() -> None:
        first = await subscribe(f"{relay.url}/v1/streams/one/events")
        await asyncio.sleep(0.3)  # the feed is now blocked on "one" alone
        second = await subscribe(f"{relay.url}/v1/streams/two/events")
        ids = await publish(relay.url, TOKEN, "two", events(1))
        got = await collect(second, 1, timeout=5)
        assert [e.id for e in got] == ids
        first.close()
        second.close()

    asyncio.run(run())
