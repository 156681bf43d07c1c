"""Exactly once, the rest of the way: the holes the last round left, each through real relays,
Redis and (where a browser's path goes through it) the edge.

- a quiet topic: a reader that hears nothing and drops comes back with the position the
  stream gave it at once, and gets what was published while it was away (HTTP/1.1 and
  HTTP/2 at the edge, with and without ``backfill``);
- retention that overtakes a frozen relay: its readers, and readers resuming into the gap,
  are told (``ssedge.reset``) before the jump;
- a stream deleted and made again is a new life: an id of the old one gets ``unknown``;
- a topic at position 0-0 of a stream on several topics is told of trims while it was away;
- a history page that a trim overtakes between two reads ends there, not with a hole;
- a stream whose topic expires during its awaits is still fed;
- an id of another topic is not taken as a position.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis as sync_redis

from relay.harness.edge import Edge
from relay.harness.servers import RedisServer, Relay, metrics, publish
from relay.protocol import ids
from relay.protocol.wire import Decoder, Event
from relay.storage import clients, history
from tests.integration.conftest import TOKEN
from tests.integration.sse import collect, subscribe

RESET = "ssedge.reset"


def _curl(url: str, seconds: float, last_event_id: str = "",
          ca: str | None = None) -> Decoder:
    """What a plain client reads of ``url`` in ``seconds`` (curl, HTTP/2 over TLS when
    ``ca`` is given), decoded as a WHATWG EventSource would."""
    args = ["curl", "-sN", "--max-time", str(seconds)]
    if ca is not None:
        args += ["--http2", "--cacert", ca]
    if last_event_id:
        args += ["-H", f"Last-Event-ID: {last_event_id}"]
    out = subprocess.run([*args, url], capture_output=True, timeout=seconds + 10).stdout
    decoder = Decoder()
    decoder.events = [e for e in decoder.feed(out) if isinstance(e, Event)]  # type: ignore[attr-defined]
    return decoder


def _xadd(r: sync_redis.Redis, topic: str, n: int, maxlen: int | None = None) -> list[str]:
    with r.pipeline(transaction=False) as pipe:
        for i in range(n):
            if maxlen is None:
                pipe.xadd(f"ssedge:{{{topic}}}", {"d": str(i)})
            else:
                pipe.xadd(f"ssedge:{{{topic}}}", {"d": str(i)}, maxlen=maxlen,
                          approximate=True)
        return [i.decode() for i in pipe.execute()]


def _told(received: list[Event], published: list[str]) -> None:
    """Every jump over published events in what a client received has a reset before it;
    nothing twice, nothing out of order."""
    events = [e.id for e in received if e.event != RESET]
    assert events == sorted(set(events), key=ids.parse), "duplicate or out of order"
    order = {i: n for n, i in enumerate(published)}
    told = False
    last = None
    for e in received:
        if e.event == RESET:
            told = True
            continue
        n = order[e.id]
        if last is not None and n != last + 1:
            assert told, f"jumped from {published[last]} to {e.id} without a reset"
        last, told = n, False


@pytest.fixture
def edge_stack(start_relay: Callable[..., Relay], start_replay: Callable[..., Relay],
               start_edge: Callable[..., Edge]) -> tuple[Relay, Edge]:
    """A relay that lets a topic go as soon as nobody watches it (``_forgotten``), and the
    edge in front of it."""
    relay = start_relay(heartbeat_s=1, retry_ms=300, topic_linger_s=0)
    return relay, start_edge([relay], start_replay())


async def _forgotten(relay: Relay) -> None:
    """Until the relay watches no topic: what a client comes back to is read afresh (a relay
    that still holds the events in its ring serves them, trimmed from Redis or not)."""
    for _ in range(100):
        if not (await metrics(relay.url))["ssedge_topics_watched"]:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the relay still watches a topic")


# -- a quiet topic ----------------------------------------------------------------------------


@pytest.mark.parametrize("old_events", [0, 5], ids=["never-written", "old-events"])
@pytest.mark.parametrize("backfill", [0, 3])
@pytest.mark.parametrize("protocol", ["http1", "h2"])
def test_a_quiet_topics_reader_that_drops_gets_what_was_published_while_away(
    edge_stack: tuple[Relay, Edge], redis_server: RedisServer, protocol: str, backfill: int,
    old_events: int,
) -> None:
    _, edge = edge_stack
    topic = f"status-{protocol}-{backfill}-{old_events}"
    r = sync_redis.Redis.from_url(redis_server.url)
    old = _xadd(r, topic, old_events) if old_events else []
    base = edge.https_url if protocol == "h2" else edge.url
    ca = str(edge.ca) if protocol == "h2" else None
    url = f"{base}/v1/streams/{topic}/events" + (f"?backfill={backfill}" if backfill else "")
    # connected, hears nothing new, drops (curl's time runs out: the network went away)
    first = _curl(url, 1.5, ca=ca)
    assert [e.id for e in first.events] == (old[-backfill:] if backfill else [])  # type: ignore[attr-defined]
    position = first.last_event_id
    assert position, "the stream gave no position: the reader would come back from 'now'"
    update = _xadd(r, topic, 5)  # the incident update, published while it is away
    again = _curl(url, 1.5, last_event_id=position, ca=ca)
    assert [e.id for e in again.events] == update  # type: ignore[attr-defined]


# -- retention that overtakes a frozen relay ------------------------------------------------


def test_retention_overtaking_a_frozen_relay_is_told_to_its_readers(
    start_relay: Callable[..., Relay], start_replay: Callable[..., Relay],
    start_edge: Callable[..., Edge], redis_server: RedisServer,
) -> None:
    """Readers through the edge on a relay whose process is frozen (SIGSTOP) while far more
    than the retention is published: thawed, its feed reads on from what is left, and every
    reader is told (``ssedge.reset``) before the jump; so is one that comes back through the
    edge with an id inside the gap."""
    relay = start_relay(heartbeat_s=1, retention_maxlen=1000)
    edge = start_edge([relay], start_replay())
    r = sync_redis.Redis.from_url(redis_server.url)
    published = _xadd(r, "overtaken", 50, maxlen=1000)

    async def run() -> tuple[list[Event], list[Event]]:
        es = await subscribe(f"{edge.url}/v1/streams/overtaken/events?since=earliest")
        got = await collect(es, 50, timeout=10)
        pids = [relay.pid, *relay.worker_pids()]
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            # while it is frozen, far more than the retention: the feed's next read starts
            # at whatever is left
            published.extend(_xadd(r, "overtaken", 20_000, maxlen=1000))
        finally:
            for pid in pids:
                os.kill(pid, signal.SIGCONT)
        events: list[Event] = list(got)
        while published[-1] not in [e.id for e in events[-5:]]:
            more = await asyncio.wait_for(es.read_chunk(), 15)
            events += [e for e in more if isinstance(e, Event)]
        es.close()
        for _ in range(100):  # the edge takes the thawed relay back
            if all(edge.healthy().values()):
                break
            await asyncio.sleep(0.1)
        # a reader resuming inside the gap (it came from a relay that read those events)
        inside = published[50 + 5000]
        es = await subscribe(f"{edge.url}/v1/streams/overtaken/events",
                             last_event_id=inside)
        resumed = await collect(es, 2, timeout=10)
        es.close()
        return events, resumed

    events, resumed = asyncio.run(run())
    resets = [e for e in events if e.event == RESET]
    assert resets, "the reader jumped over trimmed events without a reset"
    assert json.loads(resets[0].data)["reason"] == "expired"
    _told(events, published)
    assert resumed[0].event == RESET, f"resumed inside the gap without a reset: {resumed}"


# -- a stream deleted and made again ---------------------------------------------------------


def test_an_id_of_a_deleted_streams_old_life_gets_an_unknown_reset(
    edge_stack: tuple[Relay, Edge], redis_server: RedisServer,
) -> None:
    """A reader of the old life comes back after the stream was deleted and made again, to a
    relay that no longer holds the old life: told (``unknown``), then the new life. (A relay
    whose ring still holds the old life serves what it holds first: those events were
    published, and the reader had not had them.)"""
    relay, edge = edge_stack
    r = sync_redis.Redis.from_url(redis_server.url)
    old = _xadd(r, "lives", 10)

    async def run() -> list[Event]:
        es = await subscribe(f"{edge.url}/v1/streams/lives/events?since=earliest")
        assert [e.id for e in await collect(es, 10, timeout=10)] == old
        es.close()
        await _forgotten(relay)
        r.delete("ssedge:{lives}")
        time.sleep(0.01)
        new = _xadd(r, "lives", 5)  # a new life, its ids ahead of the old ones
        es = await subscribe(f"{edge.url}/v1/streams/lives/events", last_event_id=old[4])
        got = await collect(es, 6, timeout=10)
        es.close()
        assert [e.id for e in got if e.event != RESET] == new
        return got

    got = asyncio.run(run())
    assert got[0].event == RESET, "an old life's id was taken as a position in the new one"
    assert json.loads(got[0].data)["reason"] == "unknown"


# -- position 0-0 of a stream on several topics --------------------------------------------


def test_a_topic_empty_when_joined_is_told_of_what_was_trimmed_while_away(
    edge_stack: tuple[Relay, Edge], redis_server: RedisServer,
) -> None:
    relay, edge = edge_stack
    r = sync_redis.Redis.from_url(redis_server.url)
    _xadd(r, "m-a", 3)
    url = f"{edge.url}/v1/streams/events?topic=m-a&topic=m-b"

    async def run() -> list[Event]:
        es = await subscribe(url)
        position = es.decoder.last_event_id
        es.close()
        assert position
        await _forgotten(relay)
        _xadd(r, "m-b", 50)
        r.xtrim("ssedge:{m-b}", maxlen=10, approximate=False)
        es = await subscribe(url, last_event_id=position)
        got = await collect(es, 11, timeout=10)
        es.close()
        assert [e.data for e in got[1:]] == [str(i) for i in range(40, 50)], (position, got)
        return got

    got = asyncio.run(run())
    assert got[0].event == RESET, f"events trimmed while away were skipped silently: {got}"
    assert json.loads(got[0].data)["topic"] == "m-b"


def test_a_one_topic_position_of_0_is_told_of_trims_too(
    edge_stack: tuple[Relay, Edge], redis_server: RedisServer,
) -> None:
    relay, edge = edge_stack
    r = sync_redis.Redis.from_url(redis_server.url)
    first = _curl(f"{edge.url}/v1/streams/quiet-trim/events", 1.0)
    assert first.last_event_id == "0-0"
    asyncio.run(_forgotten(relay))
    _xadd(r, "quiet-trim", 50)
    r.xtrim("ssedge:{quiet-trim}", maxlen=10, approximate=False)
    again = _curl(f"{edge.url}/v1/streams/quiet-trim/events", 1.5, last_event_id="0-0")
    got = again.events  # type: ignore[attr-defined]
    assert got[0].event == RESET and json.loads(got[0].data)["reason"] == "expired"
    assert [e.data for e in got[1:]] == [str(i) for i in range(40, 50)]


# -- a page overtaken by a trim between its reads -------------------------------------------


def test_a_history_page_overtaken_between_two_reads_ends_open_not_with_a_hole(
    redis_server: RedisServer,
) -> None:
    r = sync_redis.Redis.from_url(redis_server.url)
    big = "x" * 20_000  # 100 per page's first read is 2 MB: the page reads in batches
    with r.pipeline(transaction=False) as pipe:
        for i in range(300):
            pipe.xadd("ssedge:{paged}", {"d": f"{i}{big}"})
        published = [i.decode() for i in pipe.execute()]

    class Trimming:
        """A real client whose first pipeline is followed by a trim past what it read."""

        def __init__(self, real: Any) -> None:
            self.real = real
            self.trimmed = False

        def pipeline(self, transaction: bool = False) -> Any:
            pipe = self.real.pipeline(transaction=transaction)
            outer = self
            execute = pipe.execute

            async def trim_after(**kwargs: Any) -> Any:
                replies = await execute(**kwargs)
                if not outer.trimmed:
                    outer.trimmed = True
                    await outer.real.xtrim("ssedge:{paged}", maxlen=100, approximate=False)
                return replies

            pipe.execute = trim_after
            return pipe

        def __getattr__(self, name: str) -> Any:
            return getattr(self.real, name)

    async def run() -> history.Page:
        real = clients.client(redis_server.url)
        try:
            page, _ = await history.read_page(Trimming(real), "paged", ids.ZERO, 1000,  # type: ignore[arg-type]
                                              max_bytes=5 << 20)
        finally:
            await real.aclose()
        return page

    page = asyncio.run(run())
    got = [ids.format(frame_id) for frame_id, _ in history.split(page.body)]
    assert got == published[:len(got)], "a hole inside the page"
    assert not page.closed, "a page cut by a trim was called final"
    assert page.through == ids.parse(got[-1])


# -- a stream whose topic expires during its awaits -----------------------------------------


def test_a_stream_whose_topic_expired_during_its_awaits_is_still_fed(
    start_relay: Callable[..., Relay], redis_server: RedisServer,
) -> None:
    relay = start_relay(heartbeat_s=1, topic_linger_s=0)
    r = sync_redis.Redis.from_url(redis_server.url)
    last = _xadd(r, "expiring", 3)[-1]
    ahead = f"{int(last.split('-')[0]) + 1}-0"  # past this node's ring: it asks Redis

    async def run() -> list[Event]:
        a = await subscribe(f"{relay.url}/v1/streams/expiring/events")
        assert redis_server.process is not None
        pid = redis_server.process.pid
        os.kill(pid, signal.SIGSTOP)  # every Redis call waits, the relay's sweeps do not
        thaw = threading.Timer(2.5, os.kill, (pid, signal.SIGCONT))
        thaw.start()
        await asyncio.sleep(0.1)
        # b's check of its id waits on Redis; meanwhile a leaves and the topic expires
        b_open = asyncio.ensure_future(subscribe(f"{relay.url}/v1/streams/expiring/events",
                                                 last_event_id=ahead))
        await asyncio.sleep(0.2)
        a.close()
        b = await asyncio.wait_for(b_open, 15)
        await asyncio.sleep(0.5)
        new = _xadd(r, "expiring", 1)
        got = await collect(b, 2, timeout=8)
        b.close()
        assert new[0] in [e.id for e in got], f"the stream was never fed: {got}"
        return got

    asyncio.run(run())


# -- an id of another topic -----------------------------------------------------------------


@pytest.mark.parametrize("ring_events", [1000, 4], ids=["in-the-ring", "in-history"])
def test_an_id_of_another_topic_is_not_a_position(
    start_relay: Callable[..., Relay], start_replay: Callable[..., Relay],
    start_edge: Callable[..., Edge], redis_server: RedisServer, ring_events: int,
) -> None:
    relay = start_relay(heartbeat_s=1, ring_events=ring_events)
    edge = start_edge([relay], start_replay())
    mine: list[str] = []
    theirs: list[str] = []

    async def run() -> list[Event]:
        for i in range(20):
            mine.extend(await publish(edge.url, TOKEN, "mine", [{"data": i}]))
            theirs.extend(await publish(edge.url, TOKEN, "theirs", [{"data": i}]))
        es = await subscribe(f"{edge.url}/v1/streams/mine/events", last_event_id=theirs[15])
        got = await collect(es, 21, timeout=10)
        es.close()
        return got

    got = asyncio.run(run())
    assert got[0].event == RESET and json.loads(got[0].data)["reason"] == "unknown", got
    # its position means nothing here: it starts the stream over (id 0-0), nothing skipped
    assert got[0].id == "0-0"
    assert [e.id for e in got[1:]] == mine[:len(got) - 1]
