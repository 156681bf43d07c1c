"""Upstream SSE servers for the ingest tests, on an event loop in a thread of the test process:
the demo upstream (numbered events, random drops, Last-Event-ID honoured) and canned answers
(204, wrong content type, garbage) for the failure cases."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from relay.devstack.demo import DemoUpstream

T = TypeVar("T")


class Canned:
    """Answers each connection with the next of ``answers`` (the last one repeats), raw, then
    holds the connection open ``hold_s`` before closing it."""

    def __init__(self, answers: list[bytes], hold_s: float = 0.0) -> None:
        self.answers = answers
        self.hold_s = hold_s
        self.connections = 0
        self.requests: list[bytes] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._closing = asyncio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/events"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        self._closing.set()
        if self._server is not None:
            self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            self.requests.append(await reader.readuntil(b"\r\n\r\n"))
            answer = self.answers[min(self.connections, len(self.answers) - 1)]
            self.connections += 1
            writer.write(answer)
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self.hold_s)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


class Upstreams:
    """Starts upstream servers on its own loop thread; ``close`` stops them all."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._servers: list[DemoUpstream | Canned] = []

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def demo(self, **options: Any) -> DemoUpstream:
        async def make() -> DemoUpstream:
            upstream = DemoUpstream(**options)
            await upstream.start()
            return upstream

        upstream = self.run(make())
        self._servers.append(upstream)
        return upstream

    def canned(self, answers: list[bytes], hold_s: float = 0.0) -> Canned:
        async def make() -> Canned:
            server = Canned(answers, hold_s)
            await server.start()
            return server

        server = self.run(make())
        self._servers.append(server)
        return server

    def close(self) -> None:
        for server in self._servers:
            with contextlib.suppress(Exception):
                self.run(server.close())
        with contextlib.suppress(Exception):
            self.run(_wind_down())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


async def _wind_down() -> None:
    """Closed servers wake their connections, which end: wait for them."""
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    if tasks:
        await asyncio.wait(tasks, timeout=2)


def url(upstream: DemoUpstream) -> str:
    return f"http://127.0.0.1:{upstream.port}/events"
