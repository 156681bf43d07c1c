"""Reading a replica: how far it has got, whether its link to the primary is up, and where a
client's id stands.

Redis replication copies the primary's writes in order, entry ids included, so a replica
holds a prefix of the primary's history: an id it has means the same event as on the
primary, and an id it lacks may only not have reached it yet. Two questions follow, both
answered here for relays and the replay service alike:

- **Where does an id stand?** (``locate``) Held by the replica (``HERE``); held by the
  primary only, or the primary cannot be asked (``BEHIND``: wait for the replica, never
  reset); or held by neither (``UNKNOWN``: the one case for an ``unknown`` reset). Each
  answer compares ids read from one server; the primary is asked only whether an id exists.
- **How is the link?** (``Link.read``, ``LagClock``) ``INFO replication`` of both: the
  replica's role and ``master_link_status``, both replication offsets, and, for the lag in
  seconds, how long ago the primary's offset was where the replica's is now.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from relay.protocol import ids
from relay.storage import clients
from relay.storage import streams as store


class Where(enum.Enum):
    HERE = "here"  # the read side holds the id
    BEHIND = "behind"  # the primary does (or cannot be asked): the replica has not got it yet
    UNKNOWN = "unknown"  # nobody holds it: it never existed here


async def last_id(r: clients.Client, topic: str) -> int:
    """The stream's last generated id on ``r`` (0-0 when there is no stream)."""
    info = await store.info(r, topic)
    return ids.from_redis(info["last-generated-id"]) if info else ids.ZERO


async def locate(redis: clients.Redis, topic: str, after: int) -> tuple[Where, int]:
    """Where ``after`` stands, and the read side's last id (what an ``unknown`` reset names:
    the client goes on from there). Raises ``RedisError`` when the read side cannot answer.

    A primary out of reach says nothing: the id may be real, so the answer is ``BEHIND``
    (the caller waits, bounded, and asks again later) rather than a reset that would skip a
    client's events for good."""
    last = await last_id(redis.read, topic)
    if after <= last:
        return Where.HERE, last
    if not redis.replica:
        return Where.UNKNOWN, last
    try:
        primary_last = await last_id(redis.primary, topic)
    except (RedisError, OSError):
        return Where.BEHIND, last
    return (Where.BEHIND if after <= primary_last else Where.UNKNOWN), last


@dataclass(frozen=True, slots=True)
class Link:
    """The replica's side of ``INFO server replication``, as far as ssedge needs it."""

    run_id: str
    replica: bool  # role slave
    up: bool  # master_link_status:up
    offset: int  # slave_repl_offset (what it has applied), or its own offset as a primary
    replid: str  # the replication history it follows

    @classmethod
    def parse(cls, info: dict[str, Any]) -> Link:
        replica = info.get("role") == "slave"
        offset = info.get("slave_repl_offset" if replica else "master_repl_offset", -1)
        return cls(str(info.get("run_id", "")), replica,
                   replica and info.get("master_link_status") == "up", int(offset),
                   str(info.get("master_replid", "")))

    @classmethod
    async def read(cls, r: clients.Client) -> Link:
        return cls.parse(await r.info("server", "replication"))


@dataclass(frozen=True, slots=True)
class Primary:
    """The primary's side: who it is and how far its history goes."""

    run_id: str
    offset: int  # master_repl_offset
    replid: str

    @classmethod
    async def read(cls, r: clients.Client) -> Primary:
        info = await r.info("server", "replication")
        return cls(str(info.get("run_id", "")), int(info.get("master_repl_offset", -1)),
                   str(info.get("master_replid", "")))


def linked(link: Link, primary: Primary | None) -> bool:
    """Whether the read side gets the primary's writes: a replica with its link up, or the
    primary itself (a read URL that names the primary, or a replica promoted and named as
    primary since). A replica told ``REPLICAOF NO ONE`` is a primary of its own: not linked.
    Without the primary's answer only the replica's own word is there."""
    if link.up:
        return True
    return primary is not None and not link.replica and link.run_id == primary.run_id


class LagClock:
    """The replica's lag in seconds, from replication offsets sampled once per check.

    Each check notes the primary's offset and when; the replica's offset is then placed on
    that timeline: the replica is where the primary was at the moment found by
    interpolating between the two samples around it (writes taken as even between checks).
    Lag is how long ago that moment was: 0 when the replica holds everything the primary had
    at the check, at least the window when it is further behind than any sample."""

    def __init__(self, window_s: float = 600.0) -> None:
        self._window_s = window_s
        self._samples: deque[tuple[float, int]] = deque()  # (when, primary offset)

    def note(self, now: float, primary: int, replica: int) -> float:
        samples = self._samples
        if samples and primary < samples[-1][1]:
            samples.clear()  # a new history (the primary restarted, or another one)
        samples.append((now, primary))
        while now - samples[0][0] > self._window_s:
            samples.popleft()
        if replica >= primary:
            return 0.0
        later_t, later_off = now, primary
        for when, offset in reversed(samples):
            if offset <= replica:
                share = (replica - offset) / (later_off - offset) if later_off > offset else 1
                return max(0.0, now - (when + share * (later_t - when)))
            later_t, later_off = when, offset
        return now - samples[0][0]

    def reset(self) -> None:
        self._samples.clear()


# a link check a second: two INFO commands, nothing per event or per stream
CHECK_S = 1.0


class Watch:
    """The replica's link and lag, checked every ``CHECK_S`` (``run``), as metrics and as the
    step-out rule (``stale``). Only for a process that reads a replica."""

    def __init__(self, redis: clients.Redis) -> None:
        self._redis = redis
        self._clock = LagClock()
        self.checked = False  # a check has answered
        self.linked = True  # the read side gets the primary's writes (as last seen)
        self.down_since: float | None = None  # monotonic; None while linked
        self.primary_reachable = True
        self.lag_bytes = -1  # -1: not known (the replica is on another history, or away)
        self.lag_s = -1.0

    def register(self, metrics: Any) -> None:
        """Gauges on a ``ProcessMetrics``."""
        metrics.gauge("replica_link_up", "1 while the replica read from gets the primary's "
                      "writes (master_link_status up).", lambda: float(self.linked))
        metrics.gauge("replica_link_down_seconds", "How long the replica's link has been "
                      "down (0 while up).", self.down_for)
        metrics.gauge("replica_lag_bytes", "Primary's replication offset minus the replica's "
                      "(-1: not known).", lambda: float(self.lag_bytes))
        metrics.gauge("replica_lag_seconds", "How long ago the primary was where the replica "
                      "is now (-1: not known).", lambda: self.lag_s)
        metrics.gauge("replica_primary_reachable", "1 while the primary answers this process.",
                      lambda: float(self.primary_reachable))

    def down_for(self, now: float | None = None) -> float:
        if self.down_since is None:
            return 0.0
        return (time.monotonic() if now is None else now) - self.down_since

    def stale(self, grace_s: float, now: float | None = None) -> bool:
        """The replica has been cut from a primary that answers us for ``grace_s``: events are
        being written that it does not get. With the primary out of reach too (it failed, or
        this region is cut off) nothing newer can be had from anywhere we know: not stale."""
        return self.primary_reachable and self.down_for(now) >= grace_s

    async def run(self) -> None:
        while True:
            await self.check()
            clients.still_wanted()  # a stop swallowed by a Redis call
            await asyncio.sleep(CHECK_S)

    async def check(self) -> None:
        """One look at both: the primary first, so that a replica found at or past the
        primary's offset holds everything the primary had at that moment."""
        now = time.monotonic()
        try:
            primary: Primary | None = await Primary.read(self._redis.primary)
        except (RedisError, OSError):
            primary = None
        self.primary_reachable = primary is not None
        try:
            link = await Link.read(self._redis.read)
        except (RedisError, OSError):
            # the replica itself is away: the feed's own state (and the Redis grace) says so
            self.lag_bytes, self.lag_s = -1, -1.0
            return
        self.checked = True
        self.linked = linked(link, primary)
        if self.linked:
            self.down_since = None
        elif self.down_since is None:
            self.down_since = now
        if primary is None or link.replid != primary.replid:
            self.lag_bytes, self.lag_s = -1, -1.0  # resyncing, or on another history
            self._clock.reset()
            return
        self.lag_bytes = max(0, primary.offset - link.offset)
        self.lag_s = round(self._clock.note(now, primary.offset, link.offset), 3)

    def describe(self) -> str:
        """For readiness answers and logs."""
        if not self.checked:
            return "not checked yet"
        state = "up" if self.linked else f"down {self.down_for():.1f} s"
        lag = f"{self.lag_s:g} s" if self.lag_s >= 0 else "unknown"
        primary = "" if self.primary_reachable else ", primary out of reach"
        return f"link {state}, lag {lag}{primary}"
