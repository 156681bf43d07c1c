"""``client.publish``: a key per publish, and the very same request again after a 503, a
timeout or a dropped connection (against a scripted asyncio server on loopback)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from relay.web import client

Answer = Callable[[asyncio.StreamWriter], None]


def _status(code: int, body: bytes = b"{}", retry_after: str | None = None) -> Answer:
    def answer(writer: asyncio.StreamWriter) -> None:
        extra = f"Retry-After: {retry_after}\r\n" if retry_after else ""
        writer.write(f"HTTP/1.1 {code} X\r\nContent-Length: {len(body)}\r\n{extra}"
                     "Connection: close\r\n\r\n".encode() + body)
    return answer


def _drop(writer: asyncio.StreamWriter) -> None:
    """The connection dies after the request arrived (a relay killed under it)."""


def _hang(writer: asyncio.StreamWriter) -> None:
    raise _Hang


class _Hang(Exception):
    pass


async def _serve(answers: list[Answer]) -> tuple[list[bytes], asyncio.AbstractServer]:
    requests: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            requests.append(head + await reader.readexactly(length))
            try:
                answers.pop(0)(writer)
            except _Hang:
                await reader.read()  # until the client gives up and closes
            await writer.drain()
        finally:
            writer.close()

    return requests, await asyncio.start_server(handle, "127.0.0.1", 0)


def _key(request: bytes) -> bytes:
    return next(line for line in request.split(b"\r\n")
                if line.lower().startswith(b"idempotency-key:"))


@pytest.mark.parametrize("failures", [
    [_status(503, retry_after="0")],
    [_drop, _status(502)],
    [_hang],
])
def test_a_publish_is_sent_again_the_same_with_its_key(failures: list[Answer]) -> None:
    async def run() -> None:
        requests, server = await _serve([*failures, _status(201, b'{"id": "1-0"}')])
        async with server:
            port = server.sockets[0].getsockname()[1]
            response, key = await client.publish(
                f"http://127.0.0.1:{port}/v1/streams/t/events", {"data": "x"}, token="t",
                attempts=3, timeout=0.5, delay_max=0.05)
        assert response.status == 201 and response.json() == {"id": "1-0"}
        assert len(requests) == len(failures) + 1
        assert len(set(requests)) == 1, "every try is the same request, key included"
        assert _key(requests[0]) == f"Idempotency-Key: {key}".encode()

    asyncio.run(run())


def test_other_answers_are_not_retried_and_tries_are_bounded() -> None:
    async def run() -> None:
        requests, server = await _serve([_status(422), _status(503), _status(503)])
        async with server:
            url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
            first, key = await client.publish(url, [{"data": 1}], token="t", key="mine",
                                              attempts=2, delay_max=0.01)
            assert first.status == 422 and key == "mine" and len(requests) == 1
            last, _ = await client.publish(url, [{"data": 1}], token="t", attempts=2,
                                           delay_max=0.01)
            assert last.status == 503 and len(requests) == 3
        assert _key(requests[1]) == _key(requests[2]) != _key(requests[0])

    asyncio.run(run())
