"""Test helpers around relay.client: open a stream until subscribed, collect N events."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from relay.protocol.ids import parse
from relay.protocol.wire import Event, Item
from relay.web import client
from relay.web.client import EventStream


async def subscribe(url: str, **kwargs: object) -> EventStream:
    """Open a stream and return once its ``retry:`` arrived: from then on it is subscribed."""
    es = await client.stream(url, **kwargs)  # type: ignore[arg-type]
    assert es.response.status == 200, (es.response.status, es.response.body)
    pending: list[Event] = []
    try:
        while es.decoder.retry is None:
            pending.extend(e for e in await es.read_chunk() if isinstance(e, Event))
            # a refusal (retry, then the end) may come in one chunk: that is subscribed too
            assert es.decoder.retry is not None or not es.ended, \
                "stream ended before its retry field"
    except BaseException:
        es.close()
        raise
    es.early = pending  # type: ignore[attr-defined]
    return es


async def collect(es: EventStream, count: int, timeout: float = 60.0) -> list[Event]:
    """Read until ``count`` events arrived (or the stream ended, or the time ran out)."""
    events: list[Event] = list(getattr(es, "early", []))

    async def read() -> None:
        while len(events) < count and not es.ended:
            events.extend(e for e in await es.read_chunk() if isinstance(e, Event))

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(read(), timeout)
    return events


class Follower:
    """Follows a topic across nodes the way EventSource does: on a dropped stream, it
    reconnects (to the next node) with the last id it saw."""

    def __init__(self, urls: list[str], gate: asyncio.Event) -> None:
        self.urls = urls
        self.gate = gate
        self.events: list[Event] = []
        self.reconnects = 0

    async def run(self, until: asyncio.Future[str]) -> None:
        node, last = 0, ""
        while True:
            try:
                es = await subscribe(self.urls[node], last_event_id=last)
            except (OSError, AssertionError, asyncio.IncompleteReadError):
                await asyncio.sleep(0.05)
                continue
            async with es:
                self.events.extend(e for e in getattr(es, "early", []))
                reading: asyncio.Future[list[Item]] | None = None
                while not es.ended:
                    if until.done() and any(e.id == until.result() for e in self.events[-50:]):
                        if reading is not None:  # leaving this stream: its read goes too
                            reading.cancel()
                        return
                    # the last event may be in already: wait for a chunk, or for the last id
                    # to be named, not for the next heartbeat (a read is never cut short: the
                    # same one is awaited again)
                    if reading is None:
                        reading = asyncio.ensure_future(es.read_chunk())
                    waits: set[asyncio.Future[Any]] = {reading}
                    if not until.done():
                        waits.add(until)
                    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                    if not reading.done():
                        continue
                    done, reading = reading, None
                    try:
                        got = done.result()
                    except (OSError, asyncio.IncompleteReadError):
                        break
                    self.events.extend(e for e in got if isinstance(e, Event))
                    last = es.decoder.last_event_id or last
            # the node went away: wait for the test's go, then the next node
            self.reconnects += 1
            node = min(node + 1, len(self.urls) - 1)
            await self.gate.wait()


class Crowd:
    """``count`` Followers of one URL (through the edge), reconnecting at once; they run until
    ``finish`` names the last id published, then ``check`` compares each with what was."""

    def __init__(self, url: str, count: int) -> None:
        gate = asyncio.Event()
        gate.set()
        self.clients = [Follower([url], gate) for _ in range(count)]
        self._until: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._tasks = [asyncio.ensure_future(c.run(self._until)) for c in self.clients]

    async def finish(self, last_id: str, timeout: float = 60) -> None:
        self._until.set_result(last_id)
        await asyncio.wait_for(asyncio.gather(*self._tasks), timeout)

    @property
    def reconnects(self) -> int:
        return sum(c.reconnects for c in self.clients)

    def check(self, published: list[str]) -> None:
        """Every client has every acknowledged event exactly once, in order."""
        for n, c in enumerate(self.clients):
            ids = [e.id for e in c.events]
            assert ids == sorted(set(ids), key=parse), f"client {n}: duplicate or out of order"
            assert ids == published, (f"client {n}: {len(ids)} events for {len(published)} "
                                      "published")


class Publisher:
    """Publishes a batch every 20 ms to ``target`` until stopped; ``published`` holds the ids
    acknowledged, in order."""

    def __init__(self, target: str, token: str, topic: str, batch: int = 5) -> None:
        self.target = target
        self.token = token
        self.topic = topic
        self.batch = batch
        self.published: list[str] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._busy = asyncio.Lock()  # held while a publish is in flight

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while not self._stop.is_set():
            async with self._busy:
                n = len(self.published)
                # with an Idempotency-Key, retried with it: through the edge, a relay that
                # dies or drains under a publish is neither a failure nor a duplicate
                response, _ = await client.publish(
                    f"{self.target}/v1/streams/{self.topic}/events",
                    [{"data": n + i} for i in range(self.batch)], token=self.token,
                    attempts=5, delay_max=1.0)
                assert response.status == 201, response.body
                self.published += response.json()["ids"]
            await asyncio.sleep(0.02)

    async def retarget(self, target: str) -> None:
        """Publish to ``target`` from now on; returns once nothing is in flight elsewhere."""
        async with self._busy:
            self.target = target

    async def stop(self) -> str:
        """Stop; the last id published."""
        self._stop.set()
        assert self._task is not None
        await self._task
        return self.published[-1]


async def refused(url: str, **kwargs: object) -> tuple[client.Response, int, str]:
    """Open a stream that is refused for a while: a 200 event stream that gives only a
    ``retry:`` and a comment, then ends (what an EventSource retries). Its answer, the retry
    and the comment's text."""
    es = await client.stream(url, comments=True, **kwargs)  # type: ignore[arg-type]
    async with es:
        assert es.response.status == 200, (es.response.status, es.response.body)
        assert es.response.headers["content-type"] == "text/event-stream"
        items = []
        while not es.ended:
            items += await asyncio.wait_for(es.read_chunk(), 10)
        assert not [i for i in items if isinstance(i, Event)], "a refusal sends no event"
        # no id: the client's Last-Event-ID stays what it sent
        sent = kwargs.get("last_event_id") or ""
        assert es.decoder.retry is not None and es.decoder.last_event_id == sent
        text = " ".join(getattr(i, "text", "") for i in items)
        return es.response, es.decoder.retry, text
