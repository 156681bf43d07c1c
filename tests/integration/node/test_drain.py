"""Rolling deploys: a relay given SIGTERM drains its streams to the other nodes.

Readiness turns red at once, new streams are refused (a 200 asking to come back soon, with
``X-Ssedge-Refused: draining``, which the edge retries elsewhere), and open streams are
closed spread over ``drain_s``, each told to come back after ``drain_retry_ms``; the clients
resume on other nodes with Last-Event-ID.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from relay.harness.servers import RedisServer, Relay, Varnish
from relay.web import client
from tests.integration.conftest import TOKEN
from tests.integration.sse import Crowd, Publisher, refused, subscribe


def test_sigterm_drains_streams_over_the_drain_period(
    start_relay: Callable[..., Relay],
) -> None:
    relay = start_relay(drain_s=2, drain_retry_ms=250, heartbeat_s=0.5)
    url = f"{relay.url}/v1/streams/drain/events"

    async def run() -> tuple[list[float], list[bytes], client.Response, client.Response, float]:
        streams = [await subscribe(url, keep_raw=True) for _ in range(20)]
        ended_at: list[float] = []

        async def until_end(es: client.EventStream) -> None:
            while not es.ended:
                await es.read_chunk()
            ended_at.append(time.monotonic())

        readers = [asyncio.ensure_future(until_end(es)) for es in streams]
        signalled = time.monotonic()
        os.kill(relay.pid, signal.SIGTERM)  # the main process only, as an orchestrator does
        await asyncio.sleep(0.3)
        ready = await client.request("GET", relay.url + "/readyz")
        answer, retry, _ = await refused(url)
        await asyncio.wait_for(asyncio.gather(*readers), 10)
        for es in streams:
            es.close()
        return ([t - signalled for t in ended_at], [bytes(es.raw) for es in streams], ready,
                answer, retry, signalled)

    ended, raws, ready, answer, retry, signalled = asyncio.run(run())
    assert ready.status == 503 and ready.json()["message"] == "not ready: draining for shutdown"
    # a new stream is asked to come back soon (to another node), as a 200 an EventSource
    # retries; the edge tries another relay on X-Ssedge-Refused first
    assert answer.headers["x-ssedge-refused"] == "draining"
    assert 125 <= retry <= 375
    # every stream ended cleanly with the short retry as its last words
    assert all(raw.endswith(b"retry: 250\n\n") for raw in raws)
    # spread over the drain period, not all at once
    ended.sort()
    print(f"streams closed from {ended[0]:.2f} s to {ended[-1]:.2f} s after SIGTERM")
    assert ended[-1] - ended[0] >= 1.0
    assert ended[-1] < 3.0
    relay.process.wait(timeout=10)
    print(f"relay exited {time.monotonic() - signalled:.2f} s after SIGTERM")


def test_rolling_restart_under_load_loses_and_repeats_nothing(
    tmp_path: Path, redis_server: RedisServer, start_replay: Callable[..., Relay],
    start_varnish: Callable[..., Varnish],
) -> None:
    settings = {"drain_s": 2, "drain_retry_ms": 200, "heartbeat_s": 1, "max_connections": 1000}
    relays = [Relay(tmp_path, redis_server, TOKEN, **settings) for _ in range(3)]
    replay = start_replay()
    varnish = start_varnish(relays, replay)
    topic = "rolling"
    clients_n = 150
    restarts: list[float] = []

    async def run() -> tuple[Crowd, list[str]]:
        crowd = Crowd(f"{varnish.url}/v1/streams/{topic}/events", clients_n)
        await asyncio.sleep(1.5)  # all subscribed before the first event
        publisher = Publisher(varnish.url, TOKEN, topic)
        publisher.start()
        await asyncio.sleep(1.0)
        for i, old in enumerate(list(relays)):
            started = time.monotonic()
            os.kill(old.pid, signal.SIGTERM)
            await asyncio.to_thread(old.process.wait, 15)
            relays[i] = await asyncio.to_thread(
                Relay, tmp_path, redis_server, TOKEN, port=old.port, **settings)
            restarts.append(time.monotonic() - started)
            await asyncio.sleep(2.5)  # the edge's probe sees it healthy again
        await crowd.finish(await publisher.stop())
        return crowd, publisher.published

    try:
        crowd, published = asyncio.run(run())
    finally:
        for relay in relays:
            relay.stop()
    print(f"{len(published)} events, {clients_n} clients, restarts took "
          + ", ".join(f"{t:.1f} s" for t in restarts) + f"; reconnects {crowd.reconnects}")
    assert crowd.reconnects >= clients_n  # each drain moved clients
    crowd.check(published)
