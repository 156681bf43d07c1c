"""The feed in this process against a real redis-server: topics primed while a wake-up is on
its way are read at once, not after a whole block."""

from __future__ import annotations

import asyncio
from typing import Any

from relay.harness.servers import RedisServer
from relay.node.feed.single import RedisFeed
from relay.node.metrics import Metrics
from relay.node.topics import Hub
from relay.storage import clients
from relay.storage import streams as store

BLOCK_MS = 15_000  # a missed wake-up would cost this


async def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.005)


def test_a_topic_primed_while_an_unblock_is_on_its_way_is_read_at_once(
    redis_server: RedisServer,
) -> None:
    async def run() -> None:
        redis = clients.client(redis_server.url)
        hub = Hub(ring_events=100, ring_bytes=1 << 20, max_topics=10, key_of=store.stream_key)
        feed = RedisFeed(hub, redis, Metrics("t"), url=redis_server.url, block_ms=BLOCK_MS,
                    read_count=100, send_max=1 << 16)
        task = asyncio.ensure_future(feed.run())
        try:  # bounded: a hang here must fail the test, not wait out pytest's timeout
            await asyncio.wait_for(_steps(redis, hub, feed), 30)
        finally:
            task.cancel()
            unblocking = feed._unblocking
            if unblocking is not None:
                unblocking.cancel()
            await asyncio.wait_for(asyncio.gather(task, unblocking or task,
                                                  return_exceptions=True), 10)
            await asyncio.wait_for(feed.close(), 10)
            await asyncio.wait_for(redis.aclose(), 10)

    asyncio.run(run())


async def _steps(redis: Any, hub: Hub, feed: RedisFeed) -> None:
    for name in ("a", "b", "late"):  # written: a topic never written is cold, not in the XREAD
        await redis.xadd(store.stream_key(name), {"d": "before"})
    await feed.prime(hub.get("a"))
    # the feed blocks in an XREAD that includes "a"
    await wait_until(lambda: feed._reading_generation == hub.generation, 5, "blocked on a")
    unblock = redis.client_unblock
    late = hub.get("late")

    async def unblock_then_prime(client_id: int) -> Any:
        """CLIENT UNBLOCK succeeds; before its task sees the answer, the feed has sent its
        next XREAD and another topic is primed (its topics_changed finds the unblock task
        still running, and starts no other)."""
        answer = await unblock(client_id)
        if not late.primed:
            generation = hub.generation
            await wait_until(lambda: feed._reading_generation == generation, 5, "re-read")
            await feed.prime(late)
        return answer

    redis.client_unblock = unblock_then_prime
    await feed.prime(hub.get("b"))
    await wait_until(lambda: late.primed, 5, "late primed")
    await redis.xadd(store.stream_key("late"), {"d": "hello"})
    # read within a moment, not after the whole block
    await wait_until(lambda: len(late.ring) == 2, 2, "the late topic's event was not read")
