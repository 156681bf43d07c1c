"""Topics that cost nothing until written (issue 28), through a real relay and Redis.

One client opens streams on thousands of random names never published (streams on 16 topics
each, as the one address of the open-internet finding did); meanwhile a reader of a written
topic keeps getting its events, new readers of written topics are never refused, and the
feed's blocking XREAD names only the written topics. A name never written that then is written
delivers its first events to the streams waiting on it.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from relay.harness.cluster import LocalCluster
from relay.harness.servers import RedisServer, Relay, metrics, publish
from relay.storage import clients
from relay.web import client
from tests.integration.conftest import TOKEN
from tests.integration.sse import collect, refused, subscribe

WRITTEN = [f"written-{i}" for i in range(8)]
NAMES_PER_STREAM = 16
COLD_STREAMS = 250  # 4,000 names never written


async def _open_and_leave(url: str) -> str:
    """One stream opened (its first bytes read) and closed: what it was answered."""
    es = await client.stream(url)
    try:
        chunk = await asyncio.wait_for(es.read_chunk(), 10)
        del chunk
        return es.response.headers.get("x-ssedge-refused", "")
    finally:
        es.close()


async def _feed_xread_argv(redis: Any) -> list[int]:
    """``argv-mem`` of every client blocked in XREAD: the bytes of the keys and ids it names."""
    return [int(c["argv-mem"]) for c in await redis.client_list()
            if c.get("cmd") == "xread" and "b" in c.get("flags", "")]


def test_thousands_of_unwritten_topics_cost_written_ones_nothing(
    start_relay: Callable[..., Relay], redis_server: RedisServer,
) -> None:
    # a table of hot topics far smaller than the crowd of names: before cold topics, the
    # names filled it and readers of written topics were refused
    relay = start_relay(max_topics=50, max_cold_topics=5000, topic_linger_s=120,
                        heartbeat_s=0.5)

    async def run() -> None:
        redis = clients.client(redis_server.url)
        try:
            for name in WRITTEN:
                await publish(relay.url, TOKEN, name, [{"data": "before"}])
            reader = await subscribe(f"{relay.url}/v1/streams/{WRITTEN[0]}/events")
            got: list[str] = []

            async def read() -> None:
                async for item in reader:
                    data = getattr(item, "data", None)
                    if data is not None:
                        got.append(data)

            reading = asyncio.ensure_future(read())
            refusals: list[str] = []
            newcomers = 0

            crowd_answers: list[str] = []

            async def crowd() -> None:
                for _ in range(COLD_STREAMS // 10):
                    urls = []
                    for _ in range(10):
                        names = "&".join(f"topic=cold-{secrets.token_hex(8)}"
                                         for _ in range(NAMES_PER_STREAM))
                        urls.append(f"{relay.url}/v1/streams/events?{names}")
                    crowd_answers.extend(await asyncio.gather(*(_open_and_leave(u)
                                                                for u in urls)))

            async def ordinary() -> None:
                """Publishes to the watched topic, and new readers of the written ones."""
                nonlocal newcomers
                i = 0
                while True:
                    await publish(relay.url, TOKEN, WRITTEN[0], [{"data": f"live-{i}"}])
                    i += 1
                    name = WRITTEN[1 + i % (len(WRITTEN) - 1)]
                    es = await client.stream(f"{relay.url}/v1/streams/{name}/events")
                    await asyncio.wait_for(es.read_chunk(), 10)
                    refusals.append(es.response.headers.get("x-ssedge-refused", ""))
                    es.close()
                    newcomers += 1
                    await asyncio.sleep(0.02)

            others = asyncio.ensure_future(ordinary())
            await asyncio.wait_for(crowd(), 240)
            others.cancel()
            await asyncio.gather(others, return_exceptions=True)
            # new readers of written topics were never refused
            assert newcomers >= 10 and refusals == [""] * len(refusals), refusals

            # the ordinary reader got every event published meanwhile, in order
            published = newcomers
            deadline = asyncio.get_running_loop().time() + 10
            while len(got) < published and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.05)
            assert got[:published] == [f"live-{i}" for i in range(published)], got[-3:]

            # and the crowd was served too (its names fit the cold table)
            assert crowd_answers == [""] * COLD_STREAMS, set(crowd_answers)
            seen = await metrics(relay.url)
            assert seen["ssedge_topics_cold"] == COLD_STREAMS * NAMES_PER_STREAM
            # the blocking XREAD names the written topics only
            assert seen["ssedge_feed_keys"] == len(WRITTEN), seen["ssedge_feed_keys"]
            assert seen.get("ssedge_refused_streams_total", 0) == 0
            argv = await _feed_xread_argv(redis)
            assert argv and max(argv) < 4096, argv  # 4,000 keys would be ~150 KB

            # a name never written, then written: its waiting streams get the first events
            name = f"cold-{secrets.token_hex(8)}"
            waiting = [await subscribe(f"{relay.url}/v1/streams/{name}/events")
                       for _ in range(3)]
            # the stream opens at its position: 0-0 for a topic never written
            for es in waiting:
                while es.decoder.last_event_id == "":
                    await asyncio.wait_for(es.read_chunk(), 5)
                assert es.decoder.last_event_id == "0-0"
            ids = await publish(relay.url, TOKEN, name, [{"data": "first"}])
            ids += await publish(relay.url, TOKEN, name, [{"data": "second"}, {"data": "3"}])
            for es in waiting:
                events = await collect(es, 3, timeout=10)
                assert [e.data for e in events] == ["first", "second", "3"]
                assert [e.id for e in events] == ids
                es.close()
            for _ in range(100):  # the blocking XREAD is sent again with the promoted key
                seen = await metrics(relay.url)
                if seen["ssedge_feed_keys"] == len(WRITTEN) + 1:
                    break
                await asyncio.sleep(0.05)
            assert seen["ssedge_topics_promoted_total"] == 1
            assert seen["ssedge_feed_keys"] == len(WRITTEN) + 1
            reader.close()
            reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)
        finally:
            await redis.aclose()

    asyncio.run(run())


def test_a_full_cold_table_refuses_only_new_unwritten_topics(
    start_relay: Callable[..., Relay],
) -> None:
    relay = start_relay(max_topics=5, max_cold_topics=20, topic_linger_s=120,
                        refused_retry_ms=2000)

    async def run() -> None:
        await publish(relay.url, TOKEN, "news", [{"data": "old"}])
        held = [await subscribe(f"{relay.url}/v1/streams/never-{i}/events") for i in range(20)]
        # the 21st name never written: asked to come back (a 200 an EventSource retries)
        answer, retry, why = await refused(f"{relay.url}/v1/streams/never-20/events")
        assert answer.headers["x-ssedge-refused"] == "topics" and "never written" in why
        assert 1000 <= retry <= 3000
        # a written topic is served, new or already watched, and so is a held cold topic
        news = await subscribe(f"{relay.url}/v1/streams/news/events?backfill=1")
        again = await subscribe(f"{relay.url}/v1/streams/never-3/events")
        ids = await publish(relay.url, TOKEN, "never-3", [{"data": "now"}])
        for es in (held[3], again):
            events = await collect(es, 1, timeout=10)
            assert [(e.id, e.data) for e in events] == [(ids[0], "now")]
        assert [e.data for e in await collect(news, 1, timeout=10)] == ["old"]
        # promoted: its place in the cold table is free for a new name
        for _ in range(50):
            if (await metrics(relay.url))["ssedge_topics_cold"] == 19:
                break
            await asyncio.sleep(0.05)
        late = await subscribe(f"{relay.url}/v1/streams/never-20/events")
        for es in (*held, news, again, late):
            es.close()

    asyncio.run(run())


def test_cold_topics_on_a_cluster_are_promoted_at_their_first_write(
    tmp_path: Path, cluster: LocalCluster,
) -> None:
    """The cluster feed tracks a cold key with one read and leaves it out of its sweeps: names
    never written on every primary, held open; each, written, delivers its first events."""
    unused = SimpleNamespace(url="redis://127.0.0.1:1/0")
    relay = Relay(tmp_path, unused, TOKEN, redis_cluster=cluster.seeds,  # type: ignore[arg-type]
                  heartbeat_s=0.5, topic_linger_s=120, feed_block_ms=500)

    async def run() -> None:
        await publish(relay.url, TOKEN, "written", [{"data": "x"}])
        reader = await subscribe(f"{relay.url}/v1/streams/written/events")
        crowd = "&".join(f"topic=cold-{i}" for i in range(16))
        for _ in range(3):
            es = await client.stream(f"{relay.url}/v1/streams/events?{crowd}")
            await asyncio.wait_for(es.read_chunk(), 10)
            assert es.response.headers.get("x-ssedge-refused") is None
            es.close()
        waiting = {f"cold-{i}": await subscribe(f"{relay.url}/v1/streams/cold-{i}/events")
                   for i in range(0, 16, 3)}
        await asyncio.sleep(1.5)  # sweeps pass: nothing is read of the cold keys
        seen = await metrics(relay.url)
        assert seen["ssedge_topics_cold"] == 16 and seen["ssedge_feed_keys"] == 1
        for name, es in waiting.items():
            ids = await publish(relay.url, TOKEN, name, [{"data": name}, {"data": "then"}])
            events = await collect(es, 2, timeout=10)
            assert [(e.id, e.data) for e in events] == list(zip(ids, [name, "then"],
                                                                strict=True))
            es.close()
        seen = await metrics(relay.url)
        assert seen["ssedge_topics_promoted_total"] == len(waiting)
        assert seen["ssedge_topics_cold"] == 16 - len(waiting)
        reader.close()

    try:
        asyncio.run(run())
    finally:
        relay.stop()
