"""The minimal admin HTTP server (``/metrics`` and health of the ingest process)."""

from __future__ import annotations

import asyncio
import time

from relay.ingest import admin
from relay.web import client


def test_admin_server_answers_routes_and_refuses_the_rest() -> None:
    async def ok() -> admin.Answer:
        return 200, "text/plain", b"fine\n"

    async def run() -> list[client.Response]:
        server = await admin.serve("127.0.0.1", 0, {"/healthz": ok})
        port = server.sockets[0].getsockname()[1]
        base = f"http://127.0.0.1:{port}"
        try:
            return [await client.request("GET", base + "/healthz?x=1"),
                    await client.request("GET", base + "/nope"),
                    await client.request("POST", base + "/healthz", body=b""),
                    await client.request("HEAD", base + "/healthz")]
        finally:
            server.close()
            await server.wait_closed()

    started = time.monotonic()
    got, missing, post, head = asyncio.run(run())
    assert (got.status, got.body) == (200, b"fine\n")
    assert missing.status == 404 and post.status == 405
    assert head.status == 200 and head.body == b""
    assert time.monotonic() - started < 5
