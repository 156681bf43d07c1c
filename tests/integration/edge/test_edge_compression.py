"""The edge and compressed streams: HAProxy passes a relay's gzip stream through untouched and
unbuffered (no ``compression`` of its own on stream paths); varnishd stores replay pages
gzipped and serves them so to whoever accepts gzip, plain to the others (the relays' own
page fetches among them: a catch-up through the edge still works)."""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import Callable
from pathlib import Path

from relay.harness.edge import Edge
from relay.harness.servers import Relay, metrics, publish
from relay.web import client
from tests.integration.conftest import TOKEN
from tests.integration.sse import collect, subscribe

CONFIG = Path(__file__).parents[3] / "relay" / "edge" / "haproxy" / "haproxy.cfg"


def test_haproxy_compresses_nothing_itself() -> None:
    lines = [line.split("#")[0].strip() for line in CONFIG.read_text().splitlines()]
    assert not [line for line in lines if line.startswith(("compression", "filter comp"))]


def test_streams_pass_compressed_and_replay_pages_are_stored_gzipped(
    start_relay: Callable[..., Relay], start_replay: Callable[..., Relay],
    start_edge: Callable[..., Edge],
) -> None:
    backend = start_relay()
    replay = start_replay()
    edge = start_edge([backend], replay)
    # a relay that reads history through the edge, as a deployment's relays do
    reader = start_relay(replay_url=edge.url, ring_events=20)

    async def run() -> None:
        ids = await publish(backend.url, TOKEN, "gz", [{"data": {"n": i, "px": 100.25 + i}}
                                                       for i in range(200)])
        url = f"{edge.url}/v1/replay/gz?after={ids[9]}"
        zipped = await client.request("GET", url, headers={"Accept-Encoding": "gzip"})
        plain = await client.request("GET", url)
        assert zipped.status == plain.status == 200
        assert zipped.headers["content-encoding"] == "gzip"
        assert "content-encoding" not in plain.headers
        assert gzip.decompress(zipped.body) == plain.body
        assert len(zipped.body) * 4 < len(plain.body)
        assert (await metrics(replay.url))["ssedge_replay_pages_total"] == 1
        # the relay's catch-up reads pages through the edge (it asks for no gzip)
        async with await subscribe(f"{reader.url}/v1/streams/gz/events",
                                   last_event_id=ids[4], compressed=True) as es:
            assert es.response.headers["content-encoding"] == "gzip"
            got = await collect(es, 195, timeout=15)
        assert [e.id for e in got] == ids[5:]
        # a stream through HAProxy: gzip from the relay, each event as it comes
        async with await subscribe(f"{edge.url}/v1/streams/gz/events", compressed=True,
                                   keep_raw=True) as es:
            assert es.response.headers["content-encoding"] == "gzip"
            waits = []
            for n in range(5):
                sent = time.monotonic()
                (one,) = await publish(backend.url, TOKEN, "gz", [{"data": n}])
                (event,) = await collect(es, 1, timeout=5)
                es.early = []  # type: ignore[attr-defined]
                assert event.id == one
                waits.append(time.monotonic() - sent)
            assert max(waits) < 0.5, waits
            assert bytes(es.raw).startswith(b"\x1f\x8b")

    asyncio.run(run())
