"""The sse-starlette peer: what a Python team would write, an in-process broadcast.

Each subscriber gets a bounded ``asyncio.Queue``; a publish puts every line of its body into
every subscriber's queue; a subscriber whose queue is full is dropped (its stream ends once it
has drained what it holds), so a stuck client cannot grow memory. Run by ``bench.fanout`` as::

    python -m uvicorn bench.starlette_peer:app --loop uvloop --http httptools

``GET /sub/{topic}`` streams; ``POST /pub/{topic}`` takes events separated by newlines.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

QUEUE_MAX = 1000


class Subscriber:
    __slots__ = ("dropped", "queue")

    def __init__(self) -> None:
        self.queue: asyncio.Queue[str] = asyncio.Queue(QUEUE_MAX)
        self.dropped = False


topics: dict[str, set[Subscriber]] = {}


async def subscribe(request: Request) -> EventSourceResponse:
    subscribers = topics.setdefault(request.path_params["topic"], set())
    subscriber = Subscriber()
    subscribers.add(subscriber)

    async def events() -> AsyncIterator[dict[str, str]]:
        try:
            while not (subscriber.dropped and subscriber.queue.empty()):
                yield {"data": await subscriber.queue.get()}
        finally:
            subscribers.discard(subscriber)

    return EventSourceResponse(events())


async def publish(request: Request) -> Response:
    subscribers = topics.get(request.path_params["topic"], set())
    for line in (await request.body()).decode().split("\n"):
        for subscriber in list(subscribers):
            try:
                subscriber.queue.put_nowait(line)
            except asyncio.QueueFull:
                subscribers.discard(subscriber)
                subscriber.dropped = True
    return Response(status_code=202)


app = Starlette(routes=[
    Route("/sub/{topic}", subscribe),
    Route("/pub/{topic}", publish, methods=["POST"]),
])
