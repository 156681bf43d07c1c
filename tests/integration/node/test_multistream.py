"""Streams on several topics (``GET /v1/streams/events?topic=a&topic=b``) on real relays,
Redis, the replay service and varnishd: each topic exact across reconnects to other nodes,
per-topic resets, a set that changes, private topics, ``since``/``backfill``, bad sets."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest

from relay.harness.edge import Edge
from relay.harness.servers import RedisServer, Relay, metrics, publish
from relay.protocol import composite
from relay.protocol.wire import Event
from relay.web import client
from tests.integration.conftest import TOKEN
from tests.integration.sse import subscribe

TOPICS = ["mt-a", "mt-b", "mt-c"]


def url(base: str, topics: list[str], query: str = "") -> str:
    return f"{base}/v1/streams/events?" + "&".join(f"topic={t}" for t in topics) + query


def topic_of(event: Event) -> str:
    return event.id.split("~")[0]  # what a page does with e.lastEventId


async def read(es: client.EventStream, count: int, timeout: float = 10) -> list[Event]:
    got: list[Event] = list(getattr(es, "early", []))

    async def go() -> None:
        while len(got) < count and not es.ended:
            got.extend(e for e in await es.read_chunk() if isinstance(e, Event))

    await asyncio.wait_for(go(), timeout)
    return got


def by_topic(events: list[Event]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for e in events:
        out.setdefault(topic_of(e), []).append(e.data)
    return out


def test_each_topic_resumes_exactly_on_another_relay_with_its_own_reset(
    start_relay: Callable[..., Relay], redis_server: RedisServer,
) -> None:
    # rings of 4: a client away for more catches up from history, per topic
    a = start_relay(ring_events=4, heartbeat_s=0.5)
    b = start_relay(ring_events=4, heartbeat_s=0.5)

    async def run() -> None:
        for t in TOPICS:
            await publish(a.url, TOKEN, t, [{"data": f"{t} {n}"} for n in range(3)])
        # published data arrives unchanged, with the publisher's own event type
        await publish(a.url, TOKEN, "mt-b", [{"data": "two\nlines", "event": "goal"}])
        es = await subscribe(url(a.url, TOPICS, "&since=earliest"))
        first = await read(es, 10)
        es.close()
        assert by_topic(first) == {"mt-a": [f"mt-a {n}" for n in range(3)],
                                   "mt-b": [f"mt-b {n}" for n in range(3)] + ["two\nlines"],
                                   "mt-c": [f"mt-c {n}" for n in range(3)]}
        assert [e.event for e in first if e.data == "two\nlines"] == ["goal"]
        last = es.decoder.last_event_id
        # away: every topic moves on past the rings; mt-c's older history is trimmed
        for t in TOPICS:
            await publish(a.url, TOKEN, t, [{"data": f"{t} {n}"} for n in range(3, 12)])
        redis_server.cli("XTRIM", "ssedge:{mt-c}", "MAXLEN", "2")
        es = await subscribe(url(b.url, TOPICS), last_event_id=last)
        second = await read(es, 9 + 9 + 2 + 1)
        es.close()
        got = by_topic(second)
        assert got["mt-a"] == [f"mt-a {n}" for n in range(3, 12)]
        assert got["mt-b"] == [f"mt-b {n}" for n in range(3, 12)]
        resets = [e for e in second if e.event == "ssedge.reset"]
        assert [json.loads(e.data)["topic"] for e in resets] == ["mt-c"]
        assert topic_of(resets[0]) == "mt-c"
        assert got["mt-c"][1:] == ["mt-c 10", "mt-c 11"]  # after its reset
        assert (await metrics(b.url))["ssedge_catchups_total"] >= 2

    asyncio.run(run())


def test_a_set_that_changes_keeps_the_topics_it_keeps(start_relay: Callable[..., Relay]) -> None:
    relay = start_relay(heartbeat_s=0.5)

    async def run() -> None:
        for t in TOPICS:
            await publish(relay.url, TOKEN, t, [{"data": f"{t} 0"}])
        es = await subscribe(url(relay.url, ["mt-a", "mt-b"]))
        await read(es, 0)
        es.close()
        # no event yet: the first frame alone gave the browser an id for both topics
        held = composite.parse(es.decoder.last_event_id)
        assert len(held.positions) == 2 and held.topic == ""
        for t in TOPICS:
            await publish(relay.url, TOKEN, t, [{"data": f"{t} 1"}])
        # the page opens a new EventSource on another set, with the old one's last id
        es = await subscribe(url(relay.url, ["mt-b", "mt-c"], "&since=earliest&last_event_id="
                                 + es.decoder.last_event_id))
        got = by_topic(await read(es, 3))
        es.close()
        # mt-b resumes where it was, mt-c (new) starts as since=earliest says, mt-a is gone
        assert got == {"mt-b": ["mt-b 1"], "mt-c": ["mt-c 0", "mt-c 1"]}

    asyncio.run(run())


def test_backfill_and_live_per_topic(start_relay: Callable[..., Relay]) -> None:
    relay = start_relay(heartbeat_s=0.5)

    async def run() -> None:
        for t in TOPICS:
            await publish(relay.url, TOKEN, t, [{"data": f"{t} {n}"} for n in range(5)])
        es = await subscribe(url(relay.url, TOPICS, "&backfill=2"))
        await publish(relay.url, TOKEN, "mt-a", [{"data": "mt-a live"}])
        got = by_topic(await read(es, 7))
        es.close()
        assert got == {"mt-a": ["mt-a 3", "mt-a 4", "mt-a live"], "mt-b": ["mt-b 3", "mt-b 4"],
                       "mt-c": ["mt-c 3", "mt-c 4"]}

    asyncio.run(run())


@pytest.mark.parametrize(("query", "headers", "why"), [
    ("?topic=a&topic=a", {}, "named twice"),
    ("?topic=a&topic=b%20c", {}, "a topic is 1 to 128"),
    ("?" + "&".join(f"topic=t{n}" for n in range(5)), {}, "at most 4 topics"),
    ("?topic=a", {"Last-Event-ID": "1732147200000-0"}, "bad composite id"),
    ("?topic=a&backfill=x", {}, "backfill"),
])
def test_a_bad_set_is_a_400_naming_why(start_relay: Callable[..., Relay], query: str,
                                       headers: dict[str, str], why: str) -> None:
    relay = start_relay(max_stream_topics=4)
    response = asyncio.run(client.request("GET", f"{relay.url}/v1/streams/events{query}",
                                          headers=headers))
    assert response.status == 400, response.body
    assert why in response.json()["message"]


def test_without_topics_the_url_is_the_metadata_of_a_topic_named_events(
    start_relay: Callable[..., Relay],
) -> None:
    relay = start_relay()
    response = asyncio.run(client.request("GET", f"{relay.url}/v1/streams/events"))
    assert response.status == 200 and response.json()["topic"] == "events"


SECRET = "integration-secret-" + "x" * 20


def _token(subscribe: list[str], ttl: float = 60) -> str:
    return jwt.encode({"ssedge": {"subscribe": subscribe}, "exp": int(time.time() + ttl)},
                      SECRET, algorithm="HS256")


def test_each_private_topic_is_checked_against_the_token(
    start_relay: Callable[..., Relay],
) -> None:
    relay = start_relay(private_topics="private-*", jwt_secret=SECRET, heartbeat_s=0.5)
    topics = ["news", "private-1", "private-2"]

    async def run() -> None:
        missing = await client.request("GET", url(relay.url, topics))
        assert missing.status == 401 and "private-1" in missing.json()["message"]
        one = {"Authorization": "Bearer " + _token(["private-1"])}
        partly = await client.request("GET", url(relay.url, topics), headers=one)
        assert partly.status == 403 and "private-2" in partly.json()["message"]
        for t in topics:
            await publish(relay.url, TOKEN, t, [{"data": t}])
        es = await subscribe(url(relay.url, topics, "&since=earliest&access_token="
                                 + _token(["private-*"])))
        assert es.response.headers["cache-control"] == "private, no-store"
        assert by_topic(await read(es, 3)) == {t: [t] for t in topics}
        es.close()

    asyncio.run(run())


def test_through_the_edge_a_stream_passed_refusals_retried(
    start_relay: Callable[..., Relay], start_replay: Callable[..., Relay],
    start_edge: Callable[..., Edge],
) -> None:
    # relay a takes one stream at most: a second is refused there and the edge tries b
    a = start_relay(max_streams=1, heartbeat_s=0.5)
    b = start_relay(heartbeat_s=0.5)
    edge = start_edge([a, b], start_replay())

    async def run() -> dict[str, Any]:
        full = await subscribe(url(a.url, ["other"]))  # a is full from here
        # least connections: a (none through the edge) gets some of these first, and they
        # are taken by b instead; HAProxy carries them straight to the relays
        streams = [await subscribe(url(edge.url, TOPICS)) for _ in range(3)]
        assert edge.streams() == 3
        assert not any("x-cache" in s.response.headers for s in streams)
        assert not any("x-ssedge-refused" in s.response.headers for s in streams)
        for t in TOPICS:
            await publish(edge.url, TOKEN, t, [{"data": f"{t} edge"}])
        got = [by_topic(await read(s, 3)) for s in streams]
        for s in [full, *streams]:
            s.close()
        assert all(g == {t: [f"{t} edge"] for t in TOPICS} for g in got)
        return (await metrics(a.url)) | {"b": (await metrics(b.url))["ssedge_streams_total"]}

    m = asyncio.run(run())
    assert m["ssedge_refused_streams_total"] >= 1 and m["b"] == 3
    # no relay at all: the edge's own retry answer, never an error an EventSource gives up on
    a.stop()
    b.stop()

    async def gone() -> client.Response:
        es = await client.stream(url(edge.url, TOPICS))
        es.close()
        return es.response

    response = asyncio.run(gone())
    assert response.status == 200
    assert response.headers["x-ssedge-refused"] == "edge"


def test_the_token_is_told_ahead_of_expiry_and_the_whole_stream_ends_with_it(
    start_relay: Callable[..., Relay],
) -> None:
    relay = start_relay(private_topics="private-*", jwt_secret=SECRET, jwt_leeway_s=0,
                        token_refresh_s=1, heartbeat_s=0.5)

    async def run() -> list[str]:
        es = await subscribe(url(relay.url, ["news", "private-1"], "&access_token="
                                 + _token(["private-*"], ttl=3)))
        await publish(relay.url, TOKEN, "private-1", [{"data": "before"}])
        seen: list[str] = []

        async def until_end() -> None:
            while not es.ended:
                seen.extend(e.event for e in await es.read_chunk() if isinstance(e, Event))

        await asyncio.wait_for(until_end(), 8)
        es.close()
        return seen

    seen = asyncio.run(run())
    assert seen == ["message", "ssedge.token-expiring"]  # then the stream ended, at expiry
