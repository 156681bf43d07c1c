"""Test helpers around relay.client: open a stream until subscribed, collect N events."""

from __future__ import annotations

import asyncio
import contextlib

from relay import client
from relay.client import EventStream
from relay.wire import Event


async def subscribe(url: str, **kwargs: object) -> EventStream:
    """Open a stream and return once its ``retry:`` arrived: from then on it is subscribed."""
    es = await client.stream(url, **kwargs)  # type: ignore[arg-type]
    assert es.response.status == 200, (es.response.status, es.response.body)
    pending: list[Event] = []
    while es.decoder.retry is None:
        pending.extend(e for e in await es.read_chunk() if isinstance(e, Event))
        assert not es.ended, "stream ended before its retry field"
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
                while not es.ended:
                    try:
                        got = await es.read_chunk()
                    except (OSError, asyncio.IncompleteReadError):
                        break
                    self.events.extend(e for e in got if isinstance(e, Event))
                    last = es.decoder.last_event_id or last
                    if until.done() and any(e.id == until.result() for e in self.events[-50:]):
                        return
            # the node went away: wait for the test's go, then the next node
            self.reconnects += 1
            node = min(node + 1, len(self.urls) - 1)
            await self.gate.wait()
