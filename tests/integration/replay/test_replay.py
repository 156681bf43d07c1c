"""The replay service on a real Redis: pages, cache headers, resets, bad input."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from relay.harness.servers import RedisServer, Relay, metrics, publish
from relay.protocol.wire import Decoder, Event
from relay.web import client
from tests.integration.conftest import TOKEN
from tests.integration.sse import collect, subscribe


def get(url: str, **kwargs: Any) -> client.Response:
    return asyncio.run(client.request("GET", url, **kwargs))


def events_of(body: bytes) -> list[Event]:
    return [e for e in Decoder().feed(body) if isinstance(e, Event)]


@pytest.fixture
def replay(start_replay: Callable[..., Relay]) -> Relay:
    return start_replay(replay_page=10, replay_limit_max=50)


def fill(relay_url: str, topic: str, n: int) -> list[str]:
    return asyncio.run(publish(relay_url, TOKEN, topic, [{"data": f"e{i}"} for i in range(n)]))


def test_pages_are_framed_like_the_relay_and_closed_ones_are_immutable(
    relay: Relay, replay: Relay
) -> None:
    ids = fill(relay.url, "rp", 25)
    page = get(f"{replay.url}/v1/replay/rp?after={ids[4]}")
    assert page.status == 200 and page.headers["content-type"] == "text/event-stream"
    assert [e.id for e in events_of(page.body)] == ids[5:15]  # default limit: replay_page
    assert page.headers["x-ssedge-count"] == "10"
    assert page.headers["x-ssedge-last-id"] == ids[14]
    assert page.headers["cache-control"] == "public, max-age=31536000, immutable"
    # the same bytes a relay sends for those events
    async def relay_bytes() -> bytes:
        async with await subscribe(f"{relay.url}/v1/streams/rp/events?since=earliest",
                                   keep_raw=True) as es:
            await collect(es, 25, timeout=5)
            return bytes(es.raw)
    assert page.body in asyncio.run(relay_bytes())
    # a page reaching the stream's head may still grow: short lifetime
    head = get(f"{replay.url}/v1/replay/rp?after={ids[20]}")
    assert [e.id for e in events_of(head.body)] == ids[21:]
    assert head.headers["cache-control"] == "public, max-age=1"
    # ... unless it ends at an until the stream has passed
    closed = get(f"{replay.url}/v1/replay/rp?after={ids[20]}&until={ids[22]}")
    assert [e.id for e in events_of(closed.body)] == ids[21:23]
    assert closed.headers["cache-control"].endswith("immutable")
    # strong ETag, 304 when the client has it
    again = get(f"{replay.url}/v1/replay/rp?after={ids[4]}",
                headers={"If-None-Match": page.headers["etag"]})
    assert again.status == 304 and again.body == b""


def test_reset_only_when_events_were_trimmed(
    relay: Relay, replay: Relay, redis_server: RedisServer
) -> None:
    ids = fill(relay.url, "tr", 10)
    time.sleep(0.01)  # a new millisecond: ids <ms>-<seq> between the batches never existed
    ids += fill(relay.url, "tr", 20)
    # not trimmed: an id below the stream, or inside it, that is none of its entries (another
    # topic's, an earlier life's, a time: after=<ms>-0) gets an ``unknown`` reset with id 0-0
    # (a relay's catch-up starts the stream over from it), then everything that follows it
    page = get(f"{replay.url}/v1/replay/tr?after=1-0&limit=50")
    got = events_of(page.body)
    assert page.headers["x-ssedge-reset"] == "1"
    assert (got[0].event, got[0].id) == ("ssedge.reset", "0-0")
    assert got[0].data == f'{{"reason":"unknown","requested":"1-0","resume_from":"{ids[0]}"}}'
    assert [e.id for e in got[1:]] == ids
    page = get(f"{replay.url}/v1/replay/tr?after=0-0&limit=50")
    assert [e.id for e in events_of(page.body)] == ids and "x-ssedge-reset" not in page.headers
    never = ids[9].split("-")[0] + "-999999"
    assert never not in ids
    page = get(f"{replay.url}/v1/replay/tr?after={never}&limit=50")
    got = events_of(page.body)
    assert (got[0].event, got[0].id) == ("ssedge.reset", "0-0")
    assert [e.id for e in got[1:]] == ids[10:]
    page = get(f"{replay.url}/v1/replay/tr?after={ids[9]}&limit=50")
    assert [e.id for e in events_of(page.body)] == ids[10:]
    assert "x-ssedge-reset" not in page.headers
    redis_server.cli("XTRIM", "ssedge:{tr}", "MAXLEN", "20")
    # trimmed, and the id is below the first retained: reset, then the retained events
    page = get(f"{replay.url}/v1/replay/tr?after={ids[3]}&limit=50")
    got = events_of(page.body)
    assert page.headers["x-ssedge-reset"] == "1"
    assert got[0].event == "ssedge.reset"
    assert got[0].data == (f'{{"reason":"expired","requested":"{ids[3]}",'
                           f'"resume_from":"{ids[10]}"}}')
    assert [e.id for e in got[1:]] == ids[10:]
    # the reset's id is just below the first retained event: resuming from it, no reset again
    page = get(f"{replay.url}/v1/replay/tr?after={got[0].id}&limit=50")
    assert "x-ssedge-reset" not in page.headers
    assert [e.id for e in events_of(page.body)] == ids[10:]
    # an id newer than the stream's last: reset "unknown" carrying the last id
    future = get(f"{replay.url}/v1/replay/tr?after=99999999999999-0")
    (reset,) = events_of(future.body)
    assert reset.event == "ssedge.reset" and reset.id == ids[-1]
    assert '"reason":"unknown"' in reset.data
    assert future.headers["cache-control"] == "public, max-age=1"


def test_empty_topic_and_bad_input(replay: Relay) -> None:
    empty = get(f"{replay.url}/v1/replay/nothing")
    assert empty.status == 200 and empty.body == b"" and empty.headers["x-ssedge-count"] == "0"
    for query in ("after=x", "until=1", "limit=0", "limit=51", "limit=abc",
                  "after=5-0&until=4-0"):
        response = get(f"{replay.url}/v1/replay/t?{query}")
        assert response.status == 400, query
        assert response.json()["error"] == "bad_request"
    assert get(f"{replay.url}/v1/replay/bad%20topic").status == 400
    assert get(f"{replay.url}/v1/nope").status == 404
    assert get(f"{replay.url}/readyz").status == 200
    assert b"ssedge_replay_pages_total" in get(f"{replay.url}/metrics").body


def test_relay_history_through_replay_single_flight_and_fallback(
    start_relay: Callable[..., Relay], start_replay: Callable[..., Relay]
) -> None:
    replay = start_replay(replay_page=100)
    relay = start_relay(ring_events=20, replay_url=replay.url, replay_page=100,
                        topic_linger_s=60)
    ids = fill(relay.url, "sf", 250)
    url = f"{relay.url}/v1/streams/sf/events"

    async def reconnects(n: int) -> list[list[str]]:
        streams = await asyncio.gather(*(subscribe(url, last_event_id=ids[9]) for _ in range(n)))
        got = await asyncio.gather(*(collect(es, 240, timeout=20) for es in streams))
        for es in streams:
            es.close()
        return [[e.id for e in events] for events in got]

    results = asyncio.run(reconnects(200))
    assert all(r == ids[10:] for r in results)
    m = asyncio.run(metrics(relay.url))
    rm = asyncio.run(metrics(replay.url))
    # 240 events after the id, the ring holds 20: three pages of 100, each fetched once for 200
    # streams
    assert m["ssedge_replay_fetches_total"] == rm["ssedge_replay_pages_total"] == 3
    assert m["ssedge_catchups_total"] == 200
    assert m["ssedge_replay_fallbacks_total"] == 0
    # the replay service goes away: the relay reads Redis itself, and says so
    replay.stop()
    results = asyncio.run(reconnects(5))
    assert all(r == ids[10:] for r in results)  # full pages still cached
    stale = ids[0]
    async def fresh_page() -> list[str]:
        async with await subscribe(url, last_event_id=stale) as es:
            return [e.id for e in await collect(es, 249, timeout=10)]
    assert asyncio.run(fresh_page()) == ids[1:]
    m = asyncio.run(metrics(relay.url))
    assert m["ssedge_replay_fallbacks_total"] >= 1
    assert m["ssedge_redis_history_reads_total"] >= 1
