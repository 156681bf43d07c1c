"""Regions: relays that read a replica of the primary, with the same ids and exact resume.

Real redis-servers: a primary and a replica of it (``RedisServer(replica_of=…)``). Region A's
relay reads the primary; region B's relays write to the primary and read the replica
(``SSEDGE_REDIS_READ_URL``), as its replay service does. The replica is made to lag by
freezing it (SIGSTOP) and by cutting its link (``REPLICAOF NO ONE`` then back: a full
resync; ``CLIENT KILL TYPE master``: a partial one).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from relay.harness.servers import RedisServer, Relay, metrics, publish
from relay.protocol import ids
from relay.protocol.resume import RESET
from relay.protocol.wire import Event
from relay.web import client
from tests.integration.conftest import TOKEN
from tests.integration.sse import refused, subscribe

TOPIC = "regions"
PATH = f"/v1/streams/{TOPIC}/events"


class Regions:
    """A primary, a replica of it, and the relays and replay services started on them (each
    stopped by PID at the end)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.primary = RedisServer(directory / "primary", "everysec")
        self.replica: RedisServer | None = None
        self.started: list[Relay] = []
        try:
            # a full resync starts at once (Redis waits 5 s for more replicas by default)
            self.primary.cli("CONFIG", "SET", "repl-diskless-sync-delay", "0")
            self.replica = RedisServer(directory / "replica", "off", replica_of=self.primary)
            self.wait_linked()
        except BaseException:
            self.stop()
            raise

    @property
    def read(self) -> RedisServer:
        assert self.replica is not None
        return self.replica

    def relay_a(self, **settings: Any) -> Relay:
        return self._start("relay", **settings)

    def relay_b(self, **settings: Any) -> Relay:
        return self._start("relay", redis_read_url=self.read.url, **settings)

    def replay_b(self, **settings: Any) -> Relay:
        return self._start("replay", redis_read_url=self.read.url, **settings)

    def _start(self, command: str, **settings: Any) -> Relay:
        server = Relay(self.directory, self.primary, TOKEN, command=command, **settings)
        self.started.append(server)
        return server

    def cut(self) -> None:
        """The replica stops following the primary (it becomes a primary of its own)."""
        self.read.cli("REPLICAOF", "NO", "ONE")

    def restore(self) -> None:
        self.read.cli("REPLICAOF", "127.0.0.1", str(self.primary.port))

    def linked(self) -> bool:
        return "master_link_status:up" in self.read.cli("INFO", "replication")

    def wait_linked(self, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while not self.linked():
            assert time.monotonic() < deadline, "the replica did not link to the primary"
            time.sleep(0.05)

    def stop(self) -> None:
        for server in self.started:
            server.stop()
        if self.replica is not None:
            self.replica.stop()
        self.primary.stop()


@pytest.fixture
def regions(tmp_path: Path) -> Iterator[Regions]:
    r = Regions(tmp_path)
    try:
        yield r
    finally:
        r.stop()


async def _until(check: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await _value(check):
        assert time.monotonic() < deadline, f"timed out: {what}"
        await asyncio.sleep(0.05)


async def _value(check: Callable[[], Any]) -> Any:
    value = check()
    return await value if asyncio.iscoroutine(value) else value


async def _gauge(url: str, name: str) -> float:
    return (await metrics(url)).get(f"ssedge_{name}", float("nan"))


async def _gauge_is(url: str, name: str, value: float) -> bool:
    return await _gauge(url, name) == value


async def _next_events(url: str, last: str, count: int, timeout: float = 15) -> list[Event]:
    """Open a stream with ``last`` and read its first ``count`` events."""
    es = await subscribe(url + PATH, last_event_id=last)
    events: list[Event] = list(getattr(es, "early", []))
    async with es:
        deadline = time.monotonic() + timeout
        while len(events) < count and not es.ended:
            left = deadline - time.monotonic()
            assert left > 0, f"{len(events)} of {count} events after {timeout} s"
            with contextlib.suppress(TimeoutError):
                events += [e for e in await asyncio.wait_for(es.read_chunk(), left)
                           if isinstance(e, Event)]
    return events


def test_a_client_ahead_of_the_replica_waits_for_it_and_only_an_unknown_id_is_reset(
    regions: Regions,
) -> None:
    a = regions.relay_a(heartbeat_s=0.5)
    # verify every half second: a replica behind must never look like a stream that went back
    b = regions.relay_b(heartbeat_s=0.5, feed_verify_s=0.5, replica_wait_s=3,
                        refused_retry_ms=400)
    replay = regions.replay_b(replica_wait_s=1)

    async def run() -> None:
        first = await publish(b.url, TOKEN, TOPIC, [{"data": f"e{i}"} for i in range(3)])
        got = await _next_events(b.url, first[0], 2)  # the replica has them: B reads them
        assert [e.id for e in got] == first[1:]

        regions.cut()
        ahead = await publish(a.url, TOKEN, TOPIC, [{"data": "e3"}, {"data": "e4"}])
        await _until(lambda: _gauge_is(b.url, "replica_link_up", 0), 5, "link seen down")
        # a client from region A, holding ids the replica lacks: no reset, it waits
        waiting = [asyncio.ensure_future(_next_events(b.url, last, n))
                   for last, n in ((ahead[1], 1), (ahead[0], 2))]
        # an id nobody has: the one reset, naming the replica's last id
        bogus = ids.format(ids.parse(ahead[1]) + (10**9 << 64))
        reset = await _next_events(b.url, bogus, 1)
        assert reset[0].event == RESET and reset[0].id == first[-1], reset
        # the replay service: 503 to retry for a real id, a reset only for the unknown one
        page = await client.request("GET", f"{replay.url}/v1/replay/{TOPIC}?after={ahead[0]}")
        assert page.status == 503 and page.headers["retry-after"] == "1", page.body
        page = await client.request("GET", f"{replay.url}/v1/replay/{TOPIC}?after={bogus}")
        assert page.status == 200 and page.headers["x-ssedge-reset"] == "1"
        await asyncio.sleep(1.0)  # two verify passes with the clients waiting
        assert not any(w.done() for w in waiting)

        regions.restore()
        more = await publish(b.url, TOKEN, TOPIC, [{"data": "e5"}])
        after_last, after_first = await asyncio.gather(*waiting)
        assert [e.id for e in after_last] == more
        assert [e.id for e in after_first] == [ahead[1], *more]
        page = await client.request("GET", f"{replay.url}/v1/replay/{TOPIC}?after={ahead[0]}")
        assert page.status == 200 and page.headers["x-ssedge-count"] == "2"
        mb = await metrics(b.url)
        assert mb["ssedge_replica_waits_total"] == 2
        assert mb["ssedge_resets_total"] == 1 and mb["ssedge_rewinds_total"] == 0
        await _until(lambda: _gauge_is(b.url, "replica_link_up", 1), 10, "link seen up")
        assert await _gauge(b.url, "replica_lag_seconds") >= 0
        ready = (await client.request("GET", b.url + "/readyz")).json()
        assert ready["replica"].startswith("link up, lag "), ready
        await _until(lambda: _gauge_is(replay.url, "replica_link_up", 1), 10,
                     "the replay service sees the link")

        # the wait is bounded: with the link cut for longer, the stream ends with a retry
        regions.cut()
        late = await publish(a.url, TOKEN, TOPIC, [{"data": "e6"}])
        es = await subscribe(b.url + PATH, last_event_id=late[0], keep_raw=True)
        async with es:
            opened = time.monotonic()
            while not es.ended:
                assert not [e for e in await asyncio.wait_for(es.read_chunk(), 10)
                            if isinstance(e, Event)]
            waited = time.monotonic() - opened
        assert 2.5 <= waited <= 6.0, waited
        assert b"retry: " in bytes(es.raw)[-20:], "ended without asking to come back"
        mb = await metrics(b.url)
        assert mb["ssedge_replica_wait_timeouts_total"] == 1
        assert mb["ssedge_rewinds_total"] == 0
        regions.restore()
        await _until(regions.linked, 15, "relinked")
        more = await publish(a.url, TOKEN, TOPIC, [{"data": "e7"}])
        assert [e.id for e in await _next_events(b.url, late[0], 1)] == more

    asyncio.run(run())


def test_a_relay_steps_out_when_its_replica_is_cut_from_a_primary_that_answers(
    regions: Regions,
) -> None:
    """Readiness (docs/SCALING.md, "Regions"): a replica cut from a primary that answers is
    stale (events are being written that it does not get): past ``redis_grace_s`` the relay
    steps out. A replica cut from a primary that is gone is served as it is: nothing newer
    can be had from anywhere."""
    b = regions.relay_b(heartbeat_s=0.5, redis_grace_s=2, refused_retry_ms=400)
    url = b.url + PATH

    async def ready() -> bool:
        return (await client.request("GET", b.url + "/readyz")).status == 200

    async def run() -> None:
        es = await subscribe(url, keep_raw=True)
        regions.cut()
        cut = time.monotonic()
        async with es:
            while not es.ended:
                await asyncio.wait_for(es.read_chunk(), 10)
        ended = time.monotonic() - cut
        print(f"cut from a primary that answers: streams ended {ended:.1f} s after the cut "
              "(grace 2 s)")
        assert 2.0 <= ended <= 5.0, ended
        assert b"retry: " in bytes(es.raw)[-40:]
        answer = await client.request("GET", b.url + "/readyz")
        assert answer.status == 503 and "replica" in answer.json()["message"]
        response, retry, _ = await refused(url)
        assert response.headers["x-ssedge-refused"] == "replica" and 200 <= retry <= 600

        regions.restore()
        await _until(ready, 15, "ready again with the link back")
        es = await subscribe(url)
        regions.primary.stop()  # the primary gone: the replica is all there is
        gone = time.monotonic()
        async with es:
            await asyncio.sleep(4.0)
            assert not es.ended, "the stream was ended: stale is all there is"
            assert await ready()
            answer = await client.request("GET", b.url + "/readyz")
            assert "primary out of reach" in answer.json()["replica"], answer.json()
        assert time.monotonic() - gone >= 4.0
        regions.primary.start()
        await _until(regions.linked, 15, "relinked")
        await _until(ready, 10, "ready")
        mark = await publish(b.url, TOKEN, TOPIC, [{"data": "mark"}])
        sent = await publish(b.url, TOKEN, TOPIC, [{"data": "after"}])
        got = await _next_events(b.url, mark[0], 1)
        assert [e.id for e in got] == sent

    asyncio.run(run())


class Mover:
    """A reader that moves between regions at random, as a traveller's EventSource would
    when DNS sends it elsewhere: it drops its stream and reconnects, with its Last-Event-ID,
    to a relay picked at random; a stream that ends (a relay asking it to come back) is
    reconnected the same way after a short retry."""

    def __init__(self, name: str, relays: list[str], rng: random.Random) -> None:
        self.name = name
        self.relays = relays
        self.rng = rng
        self.events: list[Event] = []
        self.last = ""
        self.moves = 0
        self._stop = False

    async def run(self) -> None:
        while not self._stop:
            url = self.rng.choice(self.relays)
            try:
                es = await subscribe(url + PATH, last_event_id=self.last)
            except (OSError, AssertionError, asyncio.IncompleteReadError):
                await asyncio.sleep(0.1)
                continue
            stay = time.monotonic() + self.rng.uniform(0.2, 1.5)
            async with es:
                self._take(getattr(es, "early", []), es)
                while not es.ended and not self._stop and time.monotonic() < stay:
                    try:
                        got = await asyncio.wait_for(es.read_chunk(),
                                                     max(0.01, stay - time.monotonic()))
                    except TimeoutError:
                        break
                    except (OSError, asyncio.IncompleteReadError):
                        break
                    self._take(got, es)
            self.moves += 1
            await asyncio.sleep(self.rng.uniform(0.02, 0.2))

    def _take(self, items: list[Any], es: client.EventStream) -> None:
        self.events += [e for e in items if isinstance(e, Event)]
        self.last = es.decoder.last_event_id or self.last

    def has(self, last_id: str) -> bool:
        return any(e.id == last_id for e in self.events[-20:])

    def stop(self) -> None:
        self._stop = True


def test_clients_moving_between_regions_get_every_event_once_through_replica_faults(
    regions: Regions,
) -> None:
    """Readers hop between region A's relay and region B's two at random with their
    Last-Event-ID while events are published through both regions; the replica is frozen
    3 s, cut 3 s (a full resync after) and has its link killed (a partial resync): every
    reader ends with every acknowledged event exactly once, in order, and no reset."""
    replay = regions.replay_b()
    common: dict[str, Any] = {"heartbeat_s": 0.5, "feed_verify_s": 0.5, "ring_events": 300,
                              "refused_retry_ms": 300, "replica_wait_s": 2}
    a = regions.relay_a(**common)
    bs = [regions.relay_b(replay_url=replay.url, **common) for _ in range(2)]
    relays = [a.url, *(r.url for r in bs)]
    rng = random.Random(23)

    async def run() -> None:
        published = await publish(a.url, TOKEN, TOPIC, [{"data": "start"}])
        movers = [Mover(f"reader-{i}", relays, random.Random(rng.random())) for i in range(12)]
        for m in movers:
            m.last = published[0]
        tasks = [asyncio.ensure_future(m.run()) for m in movers]
        stop = asyncio.Event()

        async def publisher() -> None:
            n = 0
            while not stop.is_set():
                target = relays[n % len(relays)]  # publishes from either region
                published.extend(await publish(target, TOKEN, TOPIC,
                                                [{"data": f"{n}.{i}"} for i in range(3)]))
                n += 1
                await asyncio.sleep(0.02)

        pub = asyncio.ensure_future(publisher())
        faults: list[str] = []
        try:
            await asyncio.sleep(2)
            replica_pid = regions.read.process.pid  # type: ignore[union-attr]
            regions.read.process.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
            faults.append(f"replica (pid {replica_pid}) frozen 3 s")
            try:
                await asyncio.sleep(3)
            finally:
                regions.read.process.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
            await asyncio.sleep(2)
            regions.cut()
            await asyncio.sleep(3)
            regions.restore()
            faults.append("link cut 3 s (REPLICAOF NO ONE, then back: full resync)")
            await _until(regions.linked, 15, "relinked after the cut")
            await asyncio.sleep(2)
            regions.read.cli("CLIENT", "KILL", "TYPE", "master")
            faults.append("link killed (CLIENT KILL TYPE master: partial resync)")
            await asyncio.sleep(2)
            stop.set()
            await pub
            await _until(lambda: all(m.has(published[-1]) for m in movers), 60,
                         "every reader has every event")
        finally:
            stop.set()
            for m in movers:
                m.stop()
            await asyncio.gather(pub, *tasks, return_exceptions=True)

        want = published[1:]
        for m in movers:
            got = [e.id for e in m.events]
            resets = [e for e in m.events if e.event == RESET]
            assert not resets, f"{m.name}: {resets[:2]}"
            assert len(got) == len(set(got)), f"{m.name}: {len(got) - len(set(got))} duplicates"
            assert got == sorted(got, key=ids.parse), f"{m.name}: out of order"
            assert got == want, f"{m.name}: {len(set(want) - set(got))} lost of {len(want)}"
        seen = [await metrics(url) for url in relays]
        waits = sum(m.get("ssedge_replica_waits_total", 0) for m in seen)
        print(f"{len(want)} events to each of {len(movers)} readers, "
              f"{sum(m.moves for m in movers)} moves, {waits:g} waits for the replica, "
              f"faults: {'; '.join(faults)}")
        assert waits >= 1, "no reader ever came ahead of the replica: the faults bit nothing"
        assert all(m["ssedge_rewinds_total"] == 0 for m in seen)
        assert all(m["ssedge_resets_total"] == 0 for m in seen)

    asyncio.run(run())


def test_a_stream_on_several_topics_waits_for_the_replica_on_the_topic_it_is_ahead_in(
    regions: Regions,
) -> None:
    from tests.integration.node.test_multistream import by_topic, read, url

    a = regions.relay_a(heartbeat_s=0.5)
    b = regions.relay_b(heartbeat_s=0.5, feed_verify_s=0.5, replica_wait_s=5)
    topics = ["reg-1", "reg-2"]

    async def run() -> None:
        for t in topics:
            await publish(a.url, TOKEN, t, [{"data": f"{t} 0"}])
        es = await subscribe(url(b.url, topics, "&since=earliest"))
        async with es:  # the replica has them
            assert len(await read(es, 2, timeout=15)) == 2
        regions.cut()
        await publish(a.url, TOKEN, "reg-1", [{"data": "reg-1 1"}])  # the replica lacks it
        es = await subscribe(url(a.url, topics, "&since=earliest"))
        assert by_topic(await read(es, 3)) == {"reg-1": ["reg-1 0", "reg-1 1"],
                                               "reg-2": ["reg-2 0"]}
        es.close()
        last = es.decoder.last_event_id
        # region B with that id: reg-1's position is past its replica; no reset, it waits
        es = await subscribe(url(b.url, topics), last_event_id=last)
        async with es:
            with contextlib.suppress(TimeoutError):
                early = await read(es, 1, timeout=1.0)
                raise AssertionError(f"sent while the replica is behind: {early}")
            regions.restore()
            for t in topics:
                await publish(a.url, TOKEN, t, [{"data": f"{t} 2"}])
            got = await read(es, 2, timeout=15)
        assert by_topic(got) == {"reg-1": ["reg-1 2"], "reg-2": ["reg-2 2"]}
        mb = await metrics(b.url)
        assert mb["ssedge_replica_waits_total"] == 1 and mb["ssedge_resets_total"] == 0

    asyncio.run(run())
