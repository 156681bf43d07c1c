"""Streams idle past ``SSEDGE_IDLE_STREAM_S`` are deleted (issue 28), their readers told.

Every relay sweeps at once; one script checks and deletes, so a publish landing meanwhile
keeps its stream. A relay watching a deleted stream ends its streams; a reader that comes
back with an id of it gets an ``unknown`` reset and goes on live, never silently.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import redis as sync_redis

from relay.harness.cluster import LocalCluster
from relay.harness.servers import RedisServer, Relay, metrics, publish
from relay.storage import clients
from relay.storage import streams as store
from relay.web import client
from tests.integration.conftest import TOKEN
from tests.integration.sse import collect, subscribe

RESET = "ssedge.reset"


def test_an_idle_stream_is_deleted_and_its_watching_readers_are_told(
    start_relay: Callable[..., Relay], redis_server: RedisServer,
) -> None:
    # two relays sweep the same Redis at once; one of them watches the topic
    relays = [start_relay(idle_stream_s=2, feed_verify_s=0.5, heartbeat_s=0.5,
                          topic_linger_s=0) for _ in range(2)]
    r = sync_redis.Redis.from_url(redis_server.url)

    async def run() -> list[object]:
        relay = relays[0]
        [old] = await publish(relay.url, TOKEN, "quiet", [{"data": "old"}])
        es = await subscribe(f"{relay.url}/v1/streams/quiet/events?backfill=1")
        assert [e.id for e in await collect(es, 1, timeout=5)] == [old]
        es.early = []  # type: ignore[attr-defined]  # had
        # a topic published to all along is kept
        busy_until = time.monotonic() + 4.5
        while time.monotonic() < busy_until:
            await publish(relay.url, TOKEN, "busy", [{"data": "x"}])
            await asyncio.sleep(0.5)
        assert not r.exists("ssedge:{quiet}") and r.exists("ssedge:{busy}")
        # the watching relay ended the stream (it resumes by id); told, not silent
        rest = await collect(es, 1, timeout=5)
        es.close()
        assert es.ended and rest == [], rest
        again = await subscribe(f"{relay.url}/v1/streams/quiet/events", last_event_id=old)
        [new] = await publish(relay.url, TOKEN, "quiet", [{"data": "new"}])
        got = await collect(again, 2, timeout=10)
        again.close()
        assert [e.id for e in got if e.event != RESET] == [new]
        deleted = sum([(await metrics(x.url))["ssedge_idle_streams_deleted_total"]
                       for x in relays])
        assert deleted == 1  # both swept, one deleted
        return got  # type: ignore[return-value]

    got = asyncio.run(run())
    assert got[0].event == RESET, "an id of the deleted stream was taken as a position"  # type: ignore[attr-defined]
    assert json.loads(got[0].data)["reason"] == "unknown"  # type: ignore[attr-defined]


def test_the_idle_check_and_delete_are_one_step(redis_server: RedisServer) -> None:
    """Deleted only when its last id is older than the idle time by Redis's own clock: a
    stream written within it is kept."""

    async def run() -> None:
        redis = clients.client(redis_server.url)
        try:
            key = store.stream_key("t")
            await redis.xadd(key, {"d": "x"})
            await asyncio.sleep(0.3)
            await redis.xadd(key, {"d": "y"})  # written 0 to a few ms ago
            assert not await store.delete_if_idle(redis, key, 200)
            assert await redis.exists(key)
            await asyncio.sleep(0.3)
            assert await store.delete_if_idle(redis, key, 200)
            assert not await redis.exists(key)
            assert not await store.delete_if_idle(redis, key, 200)  # none: nothing done
            await redis.set(store.stream_key("s") + ":idem:x", "v")  # not a stream: kept
            await redis.xadd(store.stream_key("fresh"), {"d": "x"})
            await asyncio.sleep(0.3)
            assert await store.delete_idle(redis, 200) == [b"ssedge:{fresh}"]
            assert await redis.exists(store.stream_key("s") + ":idem:x")
        finally:
            await redis.aclose()

    asyncio.run(run())


def test_idle_streams_on_every_primary_of_a_cluster_are_deleted(
    tmp_path: Path, cluster: LocalCluster,
) -> None:
    """The sweep SCANs every primary and deletes each stream on its own node."""
    unused = SimpleNamespace(url="redis://127.0.0.1:1/0")
    relay = Relay(tmp_path, unused, TOKEN, redis_cluster=cluster.seeds,  # type: ignore[arg-type]
                  idle_stream_s=2)
    names = [f"idle-{i}" for i in range(12)]  # spread over the three primaries

    async def run() -> None:
        for name in names:
            await publish(relay.url, TOKEN, name, [{"data": "x"}])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if (await metrics(relay.url))["ssedge_idle_streams_deleted_total"] == len(names):
                break
            await asyncio.sleep(0.2)
        r = clients.cluster_client(cluster.seeds)
        try:
            assert [await r.exists(store.stream_key(n)) for n in names] == [0] * len(names)
        finally:
            await r.aclose()
        assert (await metrics(relay.url))["ssedge_idle_streams_deleted_total"] == len(names)
        assert (await client.request("GET", relay.url + "/readyz")).status == 200

    try:
        asyncio.run(run())
    finally:
        relay.stop()
