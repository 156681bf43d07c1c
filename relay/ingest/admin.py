"""A minimal HTTP/1.1 server for a process's ``/metrics``, ``/healthz`` and ``/readyz``.

For processes that serve nothing else (``ssedge ingest``): plain asyncio, one request per
connection, GET and HEAD only, request heads bounded in size and time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping

Answer = tuple[int, str, bytes]  # status, content type, body
Route = Callable[[], Awaitable[Answer]]

_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 400: "Bad Request",
            503: "Service Unavailable"}
_HEAD_MAX = 8192
_HEAD_TIMEOUT_S = 5.0


async def serve(host: str, port: int, routes: Mapping[str, Route]) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _HEAD_TIMEOUT_S)
            method, _, rest = head.decode("latin-1").partition(" ")
            path = rest.partition(" ")[0].split("?", 1)[0]
            route = routes.get(path)
            if method not in ("GET", "HEAD"):
                answer: Answer = (405, "text/plain", b"GET or HEAD\n")
            elif route is None:
                answer = (404, "text/plain", b"not found\n")
            else:
                answer = await route()
            status, content_type, body = answer
            writer.write(
                f"HTTP/1.1 {status} {_REASONS.get(status, 'OK')}\r\n"
                f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                "Cache-Control: no-store\r\nConnection: close\r\n\r\n".encode()
                + (body if method == "GET" else b"")
            )
            await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # a client that left or sent no request: nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    return await asyncio.start_server(handle, host, port, limit=_HEAD_MAX,
                                      reuse_address=True)
