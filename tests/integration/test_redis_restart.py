"""Redis goes away mid-stream and comes back (AOF on): no acknowledged event is lost and no
client is dropped."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from relay import client
from tests.integration.conftest import TOKEN
from tests.integration.servers import RedisServer, Relay, metrics
from tests.integration.sse import collect, subscribe

CLIENTS = 20


def test_redis_restart_loses_no_acknowledged_event_and_drops_no_client(
    start_relay: Callable[..., Relay], redis_server: RedisServer
) -> None:
    relay = start_relay(heartbeat_s=0.5)
    url = f"{relay.url}/v1/streams/restart/events"

    async def publisher(acked: list[str], refused: list[int], stop: asyncio.Event) -> None:
        n = 0
        while not stop.is_set():
            try:
                response = await client.request(
                    "POST", url, headers={"Authorization": f"Bearer {TOKEN}"},
                    json_body={"data": n}, timeout=5,
                )
            except OSError:
                refused.append(-1)
                continue
            if response.status == 201:
                acked.append(response.json()["id"])
            else:
                assert response.status == 503, response.body
                assert response.headers["retry-after"]
                refused.append(response.status)
            n += 1
            await asyncio.sleep(0.01)

    async def run() -> None:
        streams = await asyncio.gather(*(subscribe(url) for _ in range(CLIENTS)))
        acked: list[str] = []
        refused: list[int] = []
        stop = asyncio.Event()
        pub = asyncio.ensure_future(publisher(acked, refused, stop))
        await asyncio.sleep(1.0)
        redis_server.stop()
        await asyncio.sleep(1.5)
        down_ready = await client.request("GET", relay.url + "/readyz")
        redis_server.start()
        await asyncio.sleep(1.5)
        stop.set()
        await pub
        # what Redis holds now is what every client must have
        stored = [line for line in redis_server.cli("XRANGE", "ssedge:{restart}", "-", "+")
                  .split("\n") if line[:1].isdigit() and "-" in line]
        assert set(acked) <= set(stored)
        assert refused, "publishes during the outage were refused with 503"
        assert down_ready.status == 503
        results = await asyncio.gather(*(collect(es, len(stored), timeout=20) for es in streams))
        m = await metrics(relay.url)
        assert m["ssedge_redis_reconnects_total"] >= 1
        assert m["ssedge_streams_open"] == CLIENTS
        for es, got in zip(streams, results, strict=True):
            assert not es.ended, "the client stream was dropped"
            assert [e.id for e in got] == stored
            es.close()

    asyncio.run(run())
    # once Redis is back, the relay is ready again
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if asyncio.run(client.request("GET", relay.url + "/readyz")).status == 200:
            break
        time.sleep(0.1)
    assert asyncio.run(client.request("GET", relay.url + "/readyz")).status == 200
