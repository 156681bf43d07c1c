"""Redis key tracking for a feed: a reader whose reads Redis tracks, and a listener that hears
which tracked keys were written. The cluster feed reads each node so, and the cold watch
(``cold``) its topics that have no stream yet."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from redis.asyncio.connection import AbstractConnection

INVALIDATE = b"__redis__:invalidate"  # the channel Redis names written tracked keys on


async def track(listener: AbstractConnection, reader: AbstractConnection) -> None:
    """Connect both, subscribe ``listener`` to the written keys, and have Redis track every
    key ``reader`` reads, telling ``listener``."""
    await listener.connect()  # type: ignore[no-untyped-call]
    await listener.send_command("CLIENT", "ID")
    listener_id = int(await listener.read_response())
    await listener.send_command("SUBSCRIBE", INVALIDATE)
    await listener.read_response()
    await reader.connect()  # type: ignore[no-untyped-call]
    await reader.send_command("CLIENT", "TRACKING", "ON", "REDIRECT", listener_id)
    await reader.read_response()


async def together(*work: Coroutine[Any, Any, None]) -> None:
    """Run ``work`` until one of them ends; the others are cancelled, and an error of the one
    that ended is raised (the listener and the reader live and fail as one)."""
    tasks = [asyncio.ensure_future(w) for w in work]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
