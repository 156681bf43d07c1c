"""The Redis side of ingesting one upstream into one topic: its cursor, its lease, and the one
script that appends its events.

Keys (all in the topic's Cluster slot, thanks to the ``{topic}`` hash tag):

- ``ssedge:{T}:ingest`` HASH: field ``<upstream>`` holds the upstream's resume cursor (the
  ``Last-Event-ID`` an EventSource would send after the last event written), field
  ``<upstream>#n`` the number of writes made so far (a fencing counter).
- ``ssedge:{T}:ingest-lease:<upstream>`` STRING with expiry: the token of the ingest process
  that follows the upstream now.

**Exactly once.** ``APPEND`` runs atomically in Redis: it checks that the caller still holds
the lease and that the write counter is the one the caller last saw, then XADDs the batch,
stores the new cursor and bumps the counter, all in one step. So an event is in the stream
if and only if the cursor moved past it: a process killed at any moment leaves a cursor that
is exact, and a process that lost its lease (paused, partitioned) cannot write another event
even if it still believes it holds it. A reply lost on the way back (timeout) leaves the
writer unsure; it re-reads the cursor instead of retrying (the client has no retries).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from relay.storage.clients import Client
from relay.storage.streams import stream_key

# KEYS: stream, state hash, lease. ARGV: token, upstream, expected writes, new cursor,
# maxlen (0: none), minid ('': none), then (type, upstream id, data) per event.
_APPEND = """
if redis.call('GET', KEYS[3]) ~= ARGV[1] then return {0} end
local n = tonumber(redis.call('HGET', KEYS[2], ARGV[2] .. '#n') or '0')
if n ~= tonumber(ARGV[3]) then return {-1, n} end
local out = {1}
for i = 7, #ARGV, 3 do
  local cmd = {'XADD', KEYS[1]}
  if ARGV[5] ~= '0' then
    cmd[#cmd + 1] = 'MAXLEN'; cmd[#cmd + 1] = '~'; cmd[#cmd + 1] = ARGV[5]
  end
  cmd[#cmd + 1] = '*'; cmd[#cmd + 1] = 'd'; cmd[#cmd + 1] = ARGV[i + 2]
  if ARGV[i] ~= '' then cmd[#cmd + 1] = 'e'; cmd[#cmd + 1] = ARGV[i] end
  cmd[#cmd + 1] = 'o'; cmd[#cmd + 1] = ARGV[2]
  if ARGV[i + 1] ~= '' then cmd[#cmd + 1] = 'i'; cmd[#cmd + 1] = ARGV[i + 1] end
  out[#out + 1] = redis.call(unpack(cmd))
end
if ARGV[6] ~= '' then redis.call('XTRIM', KEYS[1], 'MINID', '~', ARGV[6]) end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[4], ARGV[2] .. '#n', n + 1)
return out
"""

# KEYS: lease. ARGV: token, ttl ms. Takes a free lease or extends one's own.
_HOLD = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if not holder then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True, slots=True)
class Entry:
    """One upstream event as it is stored: fields ``e``, ``i`` and ``d``."""

    event: bytes  # b"" for the default type, "message"
    upstream_id: bytes  # b"" when the upstream's event had no id
    data: bytes


@dataclass(frozen=True, slots=True)
class Position:
    cursor: str  # "" means: connect without Last-Event-ID
    writes: int


class LeaseLost(Exception):
    """Another process follows this upstream now: nothing was written."""


class Moved(Exception):
    """The write counter is not the one this writer last saw: someone else wrote (or this
    writer's previous write landed but its reply was lost). Nothing was written; re-read."""


def state_key(topic: str) -> str:
    return stream_key(topic) + ":ingest"


def lease_key(topic: str, upstream: str) -> str:
    return stream_key(topic) + ":ingest-lease:" + upstream


class Journal:
    def __init__(self, redis: Client, topic: str, upstream: str, token: str, *,
                 maxlen: int, max_age_s: int) -> None:
        self._redis = redis
        self._keys = [stream_key(topic), state_key(topic), lease_key(topic, upstream)]
        self._upstream = upstream
        self._token = token
        self._maxlen = maxlen
        self._max_age_s = max_age_s
        self._append = redis.register_script(_APPEND)
        self._hold = redis.register_script(_HOLD)
        self._release = redis.register_script(_RELEASE)

    async def position(self) -> Position:
        cursor, writes = await self._redis.hmget(
            self._keys[1], [self._upstream, self._upstream + "#n"])
        return Position(_text(cursor), int(writes or 0))

    async def append(self, writes: int, entries: Sequence[Entry], cursor: str) -> list[str]:
        """Write ``entries`` and move the cursor, if nobody else did since ``writes``; the ids
        Redis gave the entries."""
        min_id = ""
        if self._max_age_s:
            min_id = f"{int(time.time() * 1000) - self._max_age_s * 1000}-0"
        args: list[Any] = [self._token, self._upstream, writes, cursor, self._maxlen, min_id]
        for e in entries:
            args += (e.event, e.upstream_id, e.data)
        reply = await self._append(keys=self._keys, args=args)
        if reply[0] == 0:
            raise LeaseLost(self._upstream)
        if reply[0] == -1:
            raise Moved(f"write counter is {reply[1]}, expected {writes}")
        return [_text(i) for i in reply[1:]]

    async def hold(self, ttl_ms: int) -> bool:
        """Take the lease if it is free, or extend it if it is ours."""
        return bool(await self._hold(keys=self._keys[2:], args=[self._token, ttl_ms]))

    async def release(self) -> None:
        await self._release(keys=self._keys[2:], args=[self._token])

    async def holder(self) -> str:
        return _text(await self._redis.get(self._keys[2]))


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)
