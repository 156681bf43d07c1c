"""Priming a topic against a real redis-server (``store.newest``): bounded by bytes as well as
by count, read from XINFO's last generated id down, the floor exact in every case."""

from __future__ import annotations

import asyncio
from typing import Any

from relay.harness.servers import RedisServer
from relay.protocol import ids
from relay.storage import clients
from relay.storage import streams as store

KEY = b"ssedge:{t}"


def _run(redis_server: RedisServer, steps: Any) -> None:
    async def run() -> None:
        redis = clients.client(redis_server.url)
        try:
            await asyncio.wait_for(steps(redis), 30)
        finally:
            await redis.aclose()

    asyncio.run(run())


async def _add(redis: Any, n: int, size: int) -> list[int]:
    async with redis.pipeline(transaction=False) as pipe:
        for _ in range(n):
            pipe.xadd(KEY, {"d": b"x" * size})
        return [ids.from_redis(i) for i in await pipe.execute()]


def test_large_events_are_read_up_to_the_byte_bound(redis_server: RedisServer) -> None:
    """1,000 events of 64 KiB (62.5 MiB) and a ring of 10,000 events or 1 MiB: about 1 MiB is
    read, the newest entries, in order; the floor is the oldest read."""
    async def steps(redis: Any) -> None:
        added = await _add(redis, 1000, 64 * 1024)
        entries, floor, info = await store.newest(redis, KEY, 10_000, 1 << 20)
        got = [ids.from_redis(e[0]) for e in entries]
        assert got == added[-len(got):]
        assert 16 <= len(got) <= 17  # the entry that crosses the bound is the oldest read
        assert floor == got[0]
        assert info is not None and ids.from_redis(info["last-generated-id"]) == added[-1]

    _run(redis_server, steps)


def test_the_count_bound_and_the_whole_stream(redis_server: RedisServer) -> None:
    async def steps(redis: Any) -> None:
        added = await _add(redis, 250, 10)
        entries, floor, _ = await store.newest(redis, KEY, 200, 1 << 20)
        assert [ids.from_redis(e[0]) for e in entries] == added[-200:]
        assert floor == added[-200]
        entries, floor, _ = await store.newest(redis, KEY, 250, 1 << 20)
        assert [ids.from_redis(e[0]) for e in entries] == added
        assert floor == added[0]  # the count stopped it: whether more is below is not known
        entries, floor, _ = await store.newest(redis, KEY, 1000, 1 << 20)
        assert len(entries) == 250 and floor == ids.ZERO

    _run(redis_server, steps)


def test_a_trimmed_stream_and_none(redis_server: RedisServer) -> None:
    async def steps(redis: Any) -> None:
        assert await store.newest(redis, KEY, 10, 1 << 20) == ([], ids.ZERO, None)
        added = await _add(redis, 50, 10)
        await redis.xtrim(KEY, maxlen=20, approximate=False)
        entries, floor, _ = await store.newest(redis, KEY, 100, 1 << 20)
        assert [ids.from_redis(e[0]) for e in entries] == added[-20:]
        assert floor == ids.predecessor(added[-20])  # trimmed: whatever is older may be gone
        await redis.xtrim(KEY, maxlen=0, approximate=False)
        entries, floor, _ = await store.newest(redis, KEY, 100, 1 << 20)
        assert entries == [] and floor == added[-1]

    _run(redis_server, steps)


def test_entries_trimmed_during_the_read_raise_the_floor(redis_server: RedisServer) -> None:
    """XINFO saw a stream never trimmed; a trim before the XREVRANGE reached its start: fewer
    entries than XINFO's length were read, so the floor is just below the oldest read (a
    client after an older id gets a reset, never a silent skip)."""
    async def steps(redis: Any) -> None:
        added = await _add(redis, 300, 10)
        xrevrange = redis.xrevrange
        calls = 0

        async def trim_after_first(*args: Any, **kwargs: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls == 2:
                await redis.xtrim(KEY, maxlen=150, approximate=False)
            return await xrevrange(*args, **kwargs)

        redis.xrevrange = trim_after_first
        entries, floor, info = await store.newest(redis, KEY, 1000, 1 << 20)
        assert int(info["entries-added"]) == int(info["length"]) == 300
        assert [ids.from_redis(e[0]) for e in entries] == added[-150:]
        assert floor == ids.predecessor(added[-150])

    _run(redis_server, steps)


def test_entries_added_during_the_read_are_left_to_the_feed(redis_server: RedisServer) -> None:
    async def steps(redis: Any) -> None:
        added = await _add(redis, 300, 10)
        xrevrange = redis.xrevrange
        later: list[int] = []

        async def add_first(*args: Any, **kwargs: Any) -> Any:
            if not later:
                later.extend(await _add(redis, 5, 10))
            return await xrevrange(*args, **kwargs)

        redis.xrevrange = add_first
        entries, floor, info = await store.newest(redis, KEY, 1000, 1 << 20)
        assert [ids.from_redis(e[0]) for e in entries] == added  # up to XINFO's last id
        assert ids.from_redis(info["last-generated-id"]) == added[-1]
        assert floor == ids.ZERO

    _run(redis_server, steps)
