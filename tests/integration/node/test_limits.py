"""Connection limits: streams per process, topics per process, request head size.

Each limit answers with a clear status and the relay goes on serving everyone else.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from relay.harness.servers import Relay, metrics, publish
from relay.web import client
from tests.integration.conftest import TOKEN
from tests.integration.sse import refused, subscribe


def test_streams_above_max_streams_are_asked_to_come_back_until_one_leaves(
    start_relay: Callable[..., Relay],
) -> None:
    relay = start_relay(max_streams=5, refused_retry_ms=2000)
    url = f"{relay.url}/v1/streams/limits/events"

    async def run() -> None:
        streams = [await subscribe(url) for _ in range(5)]
        # not a 503 (an EventSource would close for good): a 200 that says when to come back
        answer, retry, why = await refused(url)
        assert answer.headers["x-ssedge-refused"] == "capacity"
        assert 1000 <= retry <= 3000  # 2,000 ms spread 0.5-1.5x
        assert "maximum of 5 streams" in why
        # spread: a crowd refused together does not come back together
        spread = [(await refused(url))[1] for _ in range(20)]
        assert all(1000 <= r <= 3000 for r in spread) and len(set(spread)) >= 10
        # everything else still answers
        assert (await client.request("GET", relay.url + "/v1/handshake")).status == 200
        streams.pop().close()
        for _ in range(50):  # the relay notices the disconnect
            if (await metrics(relay.url))["ssedge_streams_open"] < 5:
                break
            await asyncio.sleep(0.05)
        again = await subscribe(url)
        again.close()
        for es in streams:
            es.close()
        assert (await metrics(relay.url))["ssedge_refused_streams_total"] == 21

    asyncio.run(run())


def test_topics_above_max_topics_are_asked_to_come_back(
    start_relay: Callable[..., Relay],
) -> None:
    relay = start_relay(max_topics=3, topic_linger_s=60)

    async def run() -> None:
        for i in range(4):  # written: a topic never written is cold (test_cold_topics.py)
            await publish(relay.url, TOKEN, f"t{i}", [{"data": "x"}])
        streams = [await subscribe(f"{relay.url}/v1/streams/t{i}/events") for i in range(3)]
        answer, _, why = await refused(f"{relay.url}/v1/streams/t3/events")
        assert answer.headers["x-ssedge-refused"] == "topics" and "topics" in why
        # a watched topic still takes more clients
        more = await subscribe(f"{relay.url}/v1/streams/t0/events")
        for es in [*streams, more]:
            es.close()

    asyncio.run(run())


def raw_request(port: int, head: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        return data


def test_request_heads_over_8_kib_get_431(start_relay: Callable[..., Relay]) -> None:
    relay = start_relay()
    big = b"GET /v1/handshake HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n"
    assert raw_request(relay.port, big).startswith(b"HTTP/1.1 431")
    many = (b"GET /v1/handshake HTTP/1.1\r\nHost: x\r\n"
            + b"".join(b"X-H%d: v\r\n" % i for i in range(120)) + b"Connection: close\r\n\r\n")
    assert raw_request(relay.port, many).startswith(b"HTTP/1.1 431")
    ok = b"GET /v1/handshake HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    assert raw_request(relay.port, ok).startswith(b"HTTP/1.1 200")
