"""Fan-out through the ring: many clients, two relay processes, one Redis Stream."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from relay.harness.servers import RedisServer, Relay, metrics, publish
from relay.web import client
from tests.integration.conftest import TOKEN
from tests.integration.sse import collect, subscribe

EVENTS = 1000
CLIENTS_A = 500
CLIENTS_B = 100


async def young_gc_passes(url: str) -> int:
    response = await client.request("GET", url + "/metrics")
    for line in response.body.decode().splitlines():
        if line.startswith("ssedge_gc_collections_total{") and 'generation="0"' in line:
            return int(float(line.rpartition(" ")[2]))
    raise AssertionError("no ssedge_gc_collections_total for generation 0")


def test_500_clients_and_a_second_relay_get_every_event_in_order_with_redis_ids(
    start_relay: Callable[..., Relay], redis_server: RedisServer
) -> None:
    a = start_relay(max_connections=2000)
    b = start_relay(max_connections=2000, gc_young_objects=0)  # Python's own GC thresholds

    async def run() -> None:
        url_a = f"{a.url}/v1/streams/scores/events"
        url_b = f"{b.url}/v1/streams/scores/events"
        passes = [await young_gc_passes(a.url), await young_gc_passes(b.url)]
        streams = await asyncio.gather(*(subscribe(url_a) for _ in range(CLIENTS_A)),
                                       *(subscribe(url_b) for _ in range(CLIENTS_B)))
        readers = [asyncio.ensure_future(collect(es, EVENTS, timeout=120)) for es in streams]
        published: list[str] = []
        for i in range(0, EVENTS, 20):
            batch = [{"data": {"n": n}, "event": "score"} for n in range(i, i + 20)]
            published += await publish(a.url, TOKEN, "scores", batch)
            await asyncio.sleep(0.005)
        results = await asyncio.gather(*readers)
        for es in streams:
            es.close()
        # the ids are the Redis entry ids, and every client has all of them in order
        in_redis = redis_server.cli("XRANGE", "ssedge:{scores}", "-", "+").split("\n")
        assert [line for line in in_redis if "-" in line and line[0].isdigit()] == published
        for n, events in enumerate(results):
            assert [e.id for e in events] == published, f"client {n}"
            assert events[0].data == '{"n": 0}' and events[-1].data == '{"n": 999}'
            assert {e.event for e in events} == {"score"}
        ma, mb = await metrics(a.url), await metrics(b.url)
        assert ma["ssedge_events_out_total"] >= CLIENTS_A * EVENTS
        assert mb["ssedge_events_out_total"] >= CLIENTS_B * EVENTS
        # each process read each event from Redis once, whatever its number of clients
        assert ma["ssedge_events_in_total"] == EVENTS
        # most sends were made by the feed to parked streams (Granian's send took the bytes at
        # once), not by waking each stream's task
        assert ma["ssedge_parked_sends_total"] > ma["ssedge_sends_total"] / 2, ma
        assert mb["ssedge_events_in_total"] == EVENTS
        # with its default gc_young_objects a worker stops for the collector far less often,
        # though it served five times the streams
        a_passes = await young_gc_passes(a.url) - passes[0]
        b_passes = await young_gc_passes(b.url) - passes[1]
        assert b_passes > 0 and a_passes * 3 < b_passes, (a_passes, b_passes)

    asyncio.run(run())
