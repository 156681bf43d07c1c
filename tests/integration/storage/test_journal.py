"""The exactly-once write against a real Redis: lease, write counter, cursor, trimming."""

from __future__ import annotations

import asyncio
import time

import pytest

from relay.harness.servers import RedisServer
from relay.storage import clients
from relay.storage import streams as store
from relay.storage.journal import Entry, Journal, LeaseLost, Moved, Position, lease_key


def entries(*names: str) -> list[Entry]:
    return [Entry(b"t", n.encode(), b"data " + n.encode()) for n in names]


def test_only_the_lease_holder_writes_and_only_from_where_it_last_saw(
    redis_server: RedisServer,
) -> None:
    async def run() -> None:
        r = clients.client(redis_server.url, retries=0)
        one = Journal(r, "j", "up", "one", maxlen=0, max_age_s=0)
        two = Journal(r, "j", "up", "two", maxlen=0, max_age_s=0)
        assert await one.position() == Position("", 0)
        with pytest.raises(LeaseLost):  # nobody holds it yet
            await one.append(0, entries("1"), "1")
        assert await one.hold(5000) and not await two.hold(5000)
        ids = await one.append(0, entries("1", "2"), "2")
        assert len(ids) == 2 and await one.position() == Position("2", 1)
        with pytest.raises(LeaseLost):  # the standby cannot write, whatever it believes
            await two.append(1, entries("3"), "3")
        with pytest.raises(Moved):  # a writer that missed a write (a lost reply) re-reads
            await one.append(0, entries("2"), "2")
        await one.append(1, [], "2b")  # an id-only block: the cursor moves, nothing written
        assert await one.position() == Position("2b", 2)
        await one.release()
        assert await one.holder() == "" and await two.hold(5000)
        assert await two.holder() == "two"
        await one.release()  # not its lease any more: nothing happens
        assert await two.holder() == "two"
        with pytest.raises(Moved):  # taking over from a stale position
            await two.append(1, entries("3"), "3")
        await two.append(2, entries("3"), "3")
        reply = await r.xrange(store.stream_key("j"))
        assert [fields for _, fields in reply] == [
            [b"d", b"data 1", b"e", b"t", b"o", b"up", b"i", b"1"],
            [b"d", b"data 2", b"e", b"t", b"o", b"up", b"i", b"2"],
            [b"d", b"data 3", b"e", b"t", b"o", b"up", b"i", b"3"],
        ]
        await r.aclose()

    asyncio.run(run())


def test_a_lease_expires_and_writes_trim_like_publishing(redis_server: RedisServer) -> None:
    async def run() -> None:
        r = clients.client(redis_server.url, retries=0)
        short = Journal(r, "trim", "up", "a", maxlen=100, max_age_s=0)
        assert await short.hold(150)
        time.sleep(0.3)
        assert await r.get(lease_key("trim", "up")) is None
        assert await short.hold(5000)
        for n in range(10):
            await short.append(n, entries(*(f"{n}.{i}" for i in range(100))), f"{n}.99")
        info = await r.xinfo_stream(store.stream_key("trim"))
        assert 100 <= info["length"] < 1000  # MAXLEN ~ trims whole nodes
        aged = Journal(r, "aged", "up", "a", maxlen=0, max_age_s=1)
        assert await aged.hold(5000)
        for seq in range(250):
            await r.xadd(store.stream_key("aged"), {"d": "old"}, id=f"1-{seq}")
        await aged.append(0, entries("new"), "new")
        # MINID ~ dropped the old entries, by whole nodes of 100
        assert await r.xlen(store.stream_key("aged")) <= 51
        await r.aclose()

    asyncio.run(run())
