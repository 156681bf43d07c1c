"""Upstream SSE servers for the ingest tests, on an event loop in a thread of the test process:
the demo upstream (numbered events, random drops, Last-Event-ID honoured), canned answers
(204, wrong content type, garbage, redirects; over TLS, or on kept-alive connections) and a
forward proxy (plain requests and CONNECT tunnels)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from relay.devstack.demo import DemoUpstream

T = TypeVar("T")


class Canned:
    """Answers each connection with the next of ``answers`` (the last one repeats), raw, then
    holds the connection open ``hold_s`` before closing it. With ``keep_alive``, a connection
    takes request after request (the answers must then be whole messages); with ``tls``, it
    is HTTPS."""

    def __init__(self, answers: list[bytes], hold_s: float = 0.0, keep_alive: bool = False,
                 tls: ssl.SSLContext | None = None) -> None:
        self.answers = answers
        self.hold_s = hold_s
        self.keep_alive = keep_alive
        self.tls = tls
        self.connections = 0
        self.requests: list[bytes] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._closing = asyncio.Event()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}/events"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        self._closing.set()
        if self._server is not None:
            self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for n in range(1_000_000):
                self.requests.append(await reader.readuntil(b"\r\n\r\n"))
                self.connections += n == 0  # a connection that sent a request
                answer = self.answers[min(len(self.requests) - 1, len(self.answers) - 1)]
                writer.write(answer)
                await writer.drain()
                if not self.keep_alive:
                    break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self.hold_s)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


class Proxy:
    """A forward proxy, as HTTP_PROXY and HTTPS_PROXY name one: a request in absolute form
    (``GET http://host:port/path``) is sent on to its origin, ``CONNECT host:port`` opens a
    tunnel; ``seen`` holds each request line."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            line, _, rest = head.partition(b"\r\n")
            method, target, version = line.decode("latin-1").split(" ")
            self.seen.append(f"{method} {target}")
            if method == "CONNECT":
                host, _, port = target.rpartition(":")
                o_reader, o_writer = await asyncio.open_connection(host, int(port))
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                origin = target.split("://", 1)[1]
                authority, _, path = origin.partition("/")
                host, _, port = authority.rpartition(":")
                o_reader, o_writer = await asyncio.open_connection(host, int(port))
                o_writer.write(f"{method} /{path} {version}\r\n".encode() + rest)
            await asyncio.gather(_pipe(reader, o_writer), _pipe(o_reader, writer))
        except (OSError, ValueError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


class Upstreams:
    """Starts upstream servers on its own loop thread; ``close`` stops them all."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._servers: list[DemoUpstream | Canned | Proxy] = []

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

    def canned(self, answers: list[bytes], hold_s: float = 0.0, keep_alive: bool = False,
               tls: ssl.SSLContext | None = None) -> Canned:
        async def make() -> Canned:
            server = Canned(answers, hold_s, keep_alive, tls)
            await server.start()
            return server

        server = self.run(make())
        self._servers.append(server)
        return server

    def proxy(self) -> Proxy:
        async def make() -> Proxy:
            server = Proxy()
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
