"""Audience: how many streams each relay process holds open per topic, kept in Redis so that
any process can add up a whole deployment.

Layout (one Cluster slot: the hash tag ``{#audience}``, which no topic's keys can share, since
``#`` is not a topic character):

- ``ssedge:{#audience}:<node>:<pid>``: a hash per relay process, topic -> open streams,
  expiring a few write periods after its last write (a process that dies leaves nothing for
  long);
- ``ssedge:{#audience}:processes``: a sorted set of those processes, scored by the time
  (Redis's clock, ms) of their last write; readers take the members written within the
  expiry and drop older ones.

A process writes once per period, in one command (``EVAL`` of ``_WRITE``): the topics whose
count changed (a count of 0 removes the field), or, now and then and after any failed write,
the whole hash again. Its cost is one command per period whatever its streams; the
arguments grow with the topics that changed, never with the streams. Readers make two round
trips: the live processes, then one ``HGET`` (a topic) or ``HGETALL`` (every topic) each.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from relay.storage.clients import Client

TAG = "{#audience}"
PREFIX = "ssedge:" + TAG + ":"
PROCESSES = PREFIX + "processes"

# KEYS: the process's hash, the index of processes. ARGV: the process's member, expiry (ms),
# whether to rewrite the hash whole (1) or apply changes (0), then topic, count pairs.
_WRITE = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local ttl = tonumber(ARGV[2])
if ARGV[3] == '1' then redis.call('DEL', KEYS[1]) end
for i = 4, #ARGV, 2 do
  if ARGV[i + 1] == '0' then
    redis.call('HDEL', KEYS[1], ARGV[i])
  else
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[2], ms, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ms - ttl)
redis.call('PEXPIRE', KEYS[2], ttl * 10)
return ms
"""

_LEAVE = """
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""

# the live processes: written within the expiry, by Redis's clock
_LIVE = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], ms - tonumber(ARGV[1]), '+inf')
"""


#: a process's counts stand this many periods (and a second) after its last write
TTL_PERIODS = 3


def ttl_ms(period_s: float) -> int:
    """How long a process's counts stand after its last write (readers use the same)."""
    return int(period_s * 1000 * TTL_PERIODS) + 1000


def process_key(member: str) -> str:
    return PREFIX + member


def changes(before: Mapping[str, int], now: Mapping[str, int]) -> dict[str, int]:
    """What to write to go from ``before`` to ``now``: changed counts, 0 for topics gone."""
    out = {topic: count for topic, count in now.items() if before.get(topic) != count}
    out.update({topic: 0 for topic in before if topic not in now})
    return out


async def write(r: Client, member: str, counts: Mapping[str, int], *, full: bool,
                ttl_ms: int) -> None:
    """Write this process's counts (``full``: the whole hash again; else only ``counts``'s
    changes, 0 removing a topic). One command."""
    args: list[Any] = [member, ttl_ms, int(full)]
    for topic, count in counts.items():
        if full and count == 0:
            continue
        args += (topic, count)
    await r.eval(_WRITE, 2, process_key(member), PROCESSES, *args)


async def leave(r: Client, member: str) -> None:
    """A process that stops takes its counts away at once."""
    await r.eval(_LEAVE, 2, process_key(member), PROCESSES, member)


async def live(r: Client, ttl_ms: int) -> list[str]:
    reply = await r.eval(_LIVE, 1, PROCESSES, ttl_ms)
    return [m.decode() if isinstance(m, bytes) else str(m) for m in reply or []]


@dataclass(frozen=True, slots=True)
class Audience:
    """A deployment's audience: open streams per topic (topics with none are left out), and
    how many relay processes reported."""

    topics: dict[str, int]
    processes: int

    @property
    def streams(self) -> int:
        return sum(self.topics.values())

    def busiest(self, limit: int) -> list[tuple[str, int]]:
        return sorted(self.topics.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]


async def of_topic(r: Client, topic: str, ttl_ms: int) -> int:
    """Open streams of ``topic`` across every live relay process."""
    members = await live(r, ttl_ms)
    if not members:
        return 0
    pipe = r.pipeline(transaction=False)
    for member in members:
        pipe.hget(process_key(member), topic)
    return sum(int(v) for v in await pipe.execute() if v)


async def everything(r: Client, ttl_ms: int) -> Audience:
    """Every topic's open streams across every live relay process."""
    members = await live(r, ttl_ms)
    topics: dict[str, int] = {}
    if members:
        pipe = r.pipeline(transaction=False)
        for member in members:
            pipe.hgetall(process_key(member))
        for counts in await pipe.execute():
            for topic, count in (counts or {}).items():
                name = topic.decode() if isinstance(topic, bytes) else str(topic)
                topics[name] = topics.get(name, 0) + int(count)
    return Audience({t: n for t, n in topics.items() if n > 0}, len(members))
