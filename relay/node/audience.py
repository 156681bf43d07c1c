"""This process's audience, told to Redis every ``SSEDGE_AUDIENCE_PERIOD_S`` (2 s), so that any
relay can add up the deployment's (``relay.storage.presence``).

Each period the counts are read off the hub (one look at each topic: the streams open on it,
a stream on several topics counting once in each) and only what changed is written, in one
command; every ``_FULL_EVERY`` periods, and after a write that failed, the whole hash is
written again (a Redis that restarted or expired the hash while away has it back at once).
The hash expires ``presence.TTL_PERIODS`` periods (and a second) after the last write: a
process that died leaves its numbers for a few seconds at most. A process that stops
removes them at once.

Redis's cost per relay process: one command per period (0.5/s at 2 s), whatever its streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

from redis.exceptions import RedisError

from relay.node.metrics import Metrics
from relay.node.topics import Hub
from relay.storage import clients, presence
from relay.storage.clients import Client

log = logging.getLogger("ssedge.audience")

_FULL_EVERY = 15


def counts(hub: Hub) -> dict[str, int]:
    """Open streams per topic in this process (topics with none are left out)."""
    return {t.name: len(t.subscribers) for t in hub if t.subscribers}


class Reporter:
    def __init__(self, hub: Hub, redis: Client, node: str, period_s: float,
                 metrics: Metrics) -> None:
        self.hub = hub
        self.redis = redis
        self.member = f"{node}:{os.getpid()}"
        self.period_s = period_s
        self.ttl_ms = presence.ttl_ms(period_s)
        self._written: dict[str, int] = {}
        self._periods = 0
        self._full = True
        self.writes = 0
        self.failures = 0
        metrics.gauge("audience_topics", "Topics with at least one stream open in this process.",
                      lambda: sum(1 for t in hub if t.subscribers))
        metrics.counter("audience_writes_total", "Audience reports written to Redis.",
                        lambda: self.writes)
        metrics.counter("audience_write_failures_total", "Audience reports Redis did not take.",
                        lambda: self.failures)

    async def report(self) -> None:
        """One period's write (nothing to write is still a write: it keeps the hash alive)."""
        now = counts(self.hub)
        full = self._full or self._periods % _FULL_EVERY == 0
        self._periods += 1
        try:
            await presence.write(self.redis, self.member,
                                 now if full else presence.changes(self._written, now),
                                 full=full, ttl_ms=self.ttl_ms)
        except (RedisError, OSError) as exc:
            self.failures += 1
            self._full = True
            log.debug("audience not written: %s", exc)
            return
        finally:
            clients.still_wanted()
        self.writes += 1
        self._written = now
        self._full = False

    async def run(self) -> None:
        while True:
            await self.report()
            await asyncio.sleep(self.period_s)

    async def leave(self) -> None:
        # bounded: a stop must not wait for a Redis that is away (the hash expires anyway)
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            await asyncio.wait_for(presence.leave(self.redis, self.member), 1.0)
