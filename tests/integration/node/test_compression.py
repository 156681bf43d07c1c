"""Shared compression on a real relay (relay/node/shared.py): a one-topic stream asked for
gzip or deflate is sent so, every client decodes exactly the events an uncompressed one gets,
most clients are sent the same bytes, refusals and streams on several topics are not
compressed, and the setting turns it off."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable

from relay.harness.servers import Relay, metrics, publish
from relay.web import client
from tests.integration.conftest import TOKEN
from tests.integration.sse import collect, subscribe


def events(n: int, start: int = 0) -> list[dict[str, object]]:
    return [{"data": {"n": i, "price": 100 + i % 7, "symbol": "ABC"}} for i in range(start,
                                                                                    start + n)]


def test_compressed_streams_decode_to_the_same_events(start_relay: Callable[..., Relay]) -> None:
    relay = start_relay(compression_epoch_s=0.3, heartbeat_s=0.5, ring_events=200)
    url = f"{relay.url}/v1/streams/z/events"

    async def run() -> None:
        old = await publish(relay.url, TOKEN, "z", events(300))
        plain = await subscribe(url)
        gz = [await subscribe(url, compressed=True, keep_raw=True) for _ in range(5)]
        raw = await subscribe(url, headers={"Accept-Encoding": "deflate"}, keep_raw=True)
        behind = await subscribe(url, compressed=True, last_event_id=old[9])  # catch-up
        assert plain.response.headers.get("content-encoding") is None
        assert plain.response.headers["vary"] == "accept-encoding"
        for es in gz:
            assert es.response.headers["content-encoding"] == "gzip"
            assert es.response.headers["vary"] == "accept-encoding"
        assert raw.response.headers["content-encoding"] == "deflate"
        new: list[str] = []
        for n in range(12):  # several epochs, heartbeats between
            new += await publish(relay.url, TOKEN, "z", events(10, 300 + 10 * n))
            await asyncio.sleep(0.1)
        late = await subscribe(url, compressed=True)  # joins mid-way, on its own first
        more = await publish(relay.url, TOKEN, "z", events(40, 500))
        await asyncio.sleep(0.8)
        more += await publish(relay.url, TOKEN, "z", events(40, 540))
        want = new + more
        for es in [plain, *gz, raw]:
            assert [e.id for e in await collect(es, len(want), timeout=15)] == want
        assert [e.id for e in await collect(behind, 290 + len(want), timeout=15)] == \
            old[10:] + want
        assert [e.id for e in await collect(late, 80, timeout=15)] == more
        # the compressed clients that came together were sent the same bytes after a while
        tails = [bytes(es.raw[-2000:]) for es in gz]
        assert len(set(tails)) == 1, "up-to-date clients share the topic's bytes"
        assert all(es.wire_bytes * 3 < plain.wire_bytes for es in gz)
        for es in [plain, *gz, raw, behind, late]:
            es.close()

    asyncio.run(run())


def test_an_ended_compressed_stream_ends_its_deflate_stream(
        start_relay: Callable[..., Relay]) -> None:
    relay = start_relay()

    async def run() -> None:
        ids = await publish(relay.url, TOKEN, "end", events(5))
        es = await client.stream(f"{relay.url}/v1/streams/end/events",
                                 headers={"Accept-Encoding": "deflate"}, keep_raw=True)
        got = await collect(es, 0, timeout=1)
        assert got == []
        stopping = asyncio.create_task(asyncio.to_thread(relay.stop))  # a drain: a clean end
        while not es.ended:
            await asyncio.wait_for(es.read_chunk(), 15)
        await stopping
        d = zlib.decompressobj(-15)
        text = d.decompress(bytes(es.raw))
        assert d.eof and not d.unused_data
        assert text.startswith(b"retry: 3000\n\nid: " + ids[-1].encode())
        assert text.endswith(b"retry: 500\n\n")
        es.close()

    asyncio.run(run())


def test_off_refusals_and_several_topics_are_not_compressed(
        start_relay: Callable[..., Relay]) -> None:
    off = start_relay(compression="off")
    full = start_relay(max_streams=1)

    async def run() -> None:
        async with await client.stream(f"{off.url}/v1/streams/a/events", compressed=True) as es:
            assert es.response.headers.get("content-encoding") is None
        async with await client.stream(f"{full.url}/v1/streams/events?topic=a&topic=b",
                                       compressed=True) as es:
            assert es.response.status == 200
            assert es.response.headers.get("content-encoding") is None
        for _ in range(100):  # the stream on several topics is let go
            if not (await metrics(full.url))["ssedge_streams_open"]:
                break
            await asyncio.sleep(0.05)
        async with await subscribe(f"{full.url}/v1/streams/a/events", compressed=True):
            refused = await client.stream(f"{full.url}/v1/streams/a/events", compressed=True)
            assert refused.response.headers["x-ssedge-refused"] == "capacity"
            assert refused.response.headers.get("content-encoding") is None
            assert b"retry:" in bytes(await refused._body.read())
            refused.close()
        bad = await client.stream(f"{full.url}/v1/streams/a/events", compressed=True,
                                  last_event_id="nope")
        bad.close()
        assert bad.response.status == 400
        assert bad.response.headers.get("content-encoding") is None

    asyncio.run(run())
