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
