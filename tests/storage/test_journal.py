"""The ingest journal's keys and what its replies mean (relay/storage/journal.py), with a fake
client that records each script call; tests/integration/storage/test_journal.py runs the
scripts in a real Redis."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from relay.storage import journal
from relay.storage.journal import Entry, Journal, LeaseLost, Moved, Position
from relay.storage.streams import stream_key


class FakeRedis:
    """Scripts answer from ``replies`` (by script order: append, hold, release)."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, list[Any], list[Any]]] = []
        self.replies: list[Any] = [None, None, None]
        self.hash: list[Any] = [None, None]
        self._scripts = 0

    def register_script(self, source: str) -> Any:
        n = self._scripts
        self._scripts += 1

        async def run(keys: list[Any], args: list[Any]) -> Any:
            self.calls.append((n, keys, args))
            return self.replies[n]

        return run

    async def hmget(self, key: str, fields: list[str]) -> list[Any]:
        return self.hash


def make(max_age_s: int = 0) -> tuple[Journal, FakeRedis]:
    redis = FakeRedis()
    return Journal(redis, "t", "up-1", "me", maxlen=1000, max_age_s=max_age_s), redis  # type: ignore[arg-type]


def test_keys_share_the_topics_slot() -> None:
    assert journal.state_key("t") == stream_key("t") + ":ingest"
    assert journal.lease_key("t", "up-1") == stream_key("t") + ":ingest-lease:up-1"
    assert stream_key("t") in journal.state_key("t")  # the {topic} braces: one cluster slot


def test_position_reads_cursor_and_counter() -> None:
    j, redis = make()
    assert asyncio.run(j.position()) == Position("", 0)
    redis.hash = [b"42-0", b"7"]
    assert asyncio.run(j.position()) == Position("42-0", 7)


def test_append_sends_every_entry_and_answers_the_ids() -> None:
    j, redis = make()
    redis.replies[0] = [1, b"1-0", b"1-1"]
    got = asyncio.run(j.append(3, [Entry(b"", b"a", b"x"), Entry(b"quote", b"", b"y")], "a"))
    assert got == ["1-0", "1-1"]
    _, keys, args = redis.calls[0]
    assert keys == [stream_key("t"), journal.state_key("t"), journal.lease_key("t", "up-1")]
    assert args == ["me", "up-1", 3, "a", 1000, "", b"", b"a", b"x", b"quote", b"", b"y"]


def test_append_with_an_age_bound_trims_by_id() -> None:
    j, redis = make(max_age_s=60)
    redis.replies[0] = [1, b"9-0"]
    before = int(time.time() * 1000) - 60_000
    asyncio.run(j.append(0, [Entry(b"", b"", b"x")], ""))
    min_id = redis.calls[0][2][5]
    assert min_id.endswith("-0") and before <= int(min_id[:-2]) <= before + 5_000


def test_append_refused_says_why_and_writes_nothing() -> None:
    j, redis = make()
    redis.replies[0] = [0]
    with pytest.raises(LeaseLost):
        asyncio.run(j.append(0, [], ""))
    redis.replies[0] = [-1, 5]
    with pytest.raises(Moved, match="write counter is 5, expected 4"):
        asyncio.run(j.append(4, [], ""))


def test_the_lease_is_held_and_released_with_our_token() -> None:
    j, redis = make()
    redis.replies[1] = 1
    assert asyncio.run(j.hold(3000)) is True
    redis.replies[1] = 0
    assert asyncio.run(j.hold(3000)) is False
    asyncio.run(j.release())
    lease = [journal.lease_key("t", "up-1")]
    assert [(n, k, a) for n, k, a in redis.calls] == [
        (1, lease, ["me", 3000]), (1, lease, ["me", 3000]), (2, lease, ["me"])]
