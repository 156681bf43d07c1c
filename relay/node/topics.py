"""Topics watched by one relay process, and the connections on each: plain bookkeeping.

A connection that has sent everything in its topic's ring *parks*: its task waits on a future
of its own (cancelling a task cancels the future it awaits, so one shared future would let one
client's disconnect cancel every other stream of the topic). New frames reach parked
connections without waking them (``relay.node.fanout``); ``wake`` resumes every parked task, for
the heartbeat (``tick``) or when a topic is forgotten. Nothing here does I/O.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from relay.protocol import ids
from relay.protocol.deflate import Coding, Shared
from relay.protocol.multi import MultiReader
from relay.protocol.resume import Reader
from relay.protocol.ring import Ring


class TooManyTopics(Exception):
    """No room for a new topic: the table of hot topics (``max_topics``) or of cold ones
    (``max_cold_topics``) is full."""


class Subscription(Reader):
    """One connection's place in a topic (``resume.Reader``: a cursor into the ring, the last
    id it has, a catch-up under way) and the task to close."""

    __slots__ = (
        "behind",
        "closed_because",
        "coding",
        "multi",
        "notice",
        "pending",
        "send",
        "sending",
        "sends",
        "task",
        "topic",
        "waiter",
    )

    def __init__(self, topic: Topic, cursor: int, task: asyncio.Task[Any] | None,
                 last_id: int = 0) -> None:
        super().__init__(cursor, last_id)
        self.topic = topic
        self.task = task
        self.closed_because: str | None = None
        self.behind = False  # over the backlog bound at the last sweep
        # the server's send, when a call to it hands the bytes over at once (relay.fanout)
        self.send: Callable[[dict[str, Any]], Awaitable[None]] | None = None
        self.waiter: asyncio.Future[None] | None = None  # set while parked
        self.pending: Awaitable[None] | None = None  # a send started for it, to await
        # while catching up, the sweeper judges it by its sends: one in progress, and how
        # many were taken (a client that takes none for two sweeps is stuck)
        self.sending = False
        self.sends = 0
        # a frame for this connection alone, without an id (relay.node.renewal), not yet written
        self.notice = b""
        # on a stream of several topics (relay.node.multistream), what builds its frames' ids
        self.multi: MultiReader | None = None
        # a compressed stream: its side of the topic's shared compression (relay.node.shared)
        self.coding: Coding | None = None

    def resume(self, pending: Awaitable[None] | None = None) -> None:
        """Unpark: the task runs again, first awaiting ``pending`` (a send the client has not
        taken yet) when given."""
        waiter, self.waiter = self.waiter, None
        if pending is not None:
            self.pending = pending
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def close(self, reason: str) -> None:
        """Stop this connection from the outside (disconnect, overflow, shutdown)."""
        if self.closed_because is None:
            self.closed_because = reason
            self.waiter = None  # nothing more is sent to it from outside its task
            if self.task is not None:
                self.task.cancel()


class Topic:
    __slots__ = (
        "added",
        "ahead",
        "cold",
        "fanning",
        "idle_since",
        "key",
        "name",
        "parked",
        "primed",
        "priming",
        "read_from",
        "refused",
        "ring",
        "shared",
        "subscribers",
    )

    def __init__(self, name: str, key: bytes, ring: Ring) -> None:
        self.name = name
        self.key = key
        self.ring = ring
        self.subscribers: set[Subscription] = set()
        self.read_from = b"0-0"  # the last id the feed has seen, as Redis spells it
        # the stream's entries-added count at ``read_from`` (None: not known): a read that
        # jumped over trimmed entries is told by it (``FeedBase.absorb``)
        self.added: int | None = None
        self.priming: asyncio.Future[None] | None = None
        self.primed = False
        # primed on a stream never written: watched apart, out of the blocking XREAD (``Hub``)
        self.cold = False
        # primed with its table full ("hot" or "cold"): not watched, its streams refused
        self.refused = ""
        self.idle_since: float | None = None
        # connections whose tasks wait for more; a closed one stays here until the next
        # fan-out or wake, which skip it (its ``waiter`` is None or done)
        self.parked: list[Subscription] = []
        self.fanning: asyncio.Task[None] | None = None  # a fan-out pass (relay.fanout)
        # the highest id a client came with that this feed had not read yet (the stream had
        # it then): a stream that goes back below it leaves such clients waiting for nothing
        self.ahead = 0
        # its stream compressed once for its compressed clients, while it has any
        # (relay.node.shared)
        self.shared: Shared | None = None

    def park(self, sub: Subscription) -> asyncio.Future[None]:
        """The future ``sub``'s task awaits until it is resumed."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        sub.waiter = waiter
        self.parked.append(sub)
        return waiter

    def wake(self) -> None:
        """Resume every parked connection's task (those in a fan-out pass get data anyway)."""
        parked, self.parked = self.parked, []
        for sub in parked:
            sub.resume()


class Hub:
    """Every topic of this process, by name and by Redis key.

    A primed topic is *hot* (its stream has been written: the feed's blocking read names it)
    or *cold* (no stream yet: watched apart, ``relay.node.feed.cold``, until its first write
    *promotes* it). Each has its own bound, checked when priming tells which it is: a topic
    that primes hot with ``max_topics`` hot ones, or cold with ``max_cold_topics`` cold ones,
    is refused (``Topic.refused``). So names that were never written, however many, cannot
    fill the table that written topics need, nor grow the blocking read every other topic
    waits on. The whole table, topics being primed included, holds at most the sum of both:
    a name is only known to be cold once primed, and priming takes one round trip.
    """

    def __init__(self, *, ring_events: int, ring_bytes: int, max_topics: int,
                 key_of: Any, max_cold_topics: int = 10_000) -> None:
        self._ring_events = ring_events
        self._ring_bytes = ring_bytes
        self._max_topics = max_topics
        self._max_cold = max_cold_topics
        self._key_of = key_of
        self.topics: dict[str, Topic] = {}
        self.by_key: dict[bytes, Topic] = {}
        self.hot: dict[bytes, Topic] = {}
        self.cold: dict[bytes, Topic] = {}
        self.ticks = 0
        self.generation = 0  # bumped whenever the set of hot topics changes
        self.promotions = 0  # cold topics found written, now hot

    def __iter__(self) -> Iterator[Topic]:
        return iter(self.topics.values())

    def get(self, name: str) -> Topic:
        """The topic, created (not yet primed) on first use."""
        topic = self.topics.get(name)
        if topic is None:
            # each kind is bounded when primed (``mark_primed``); this bounds the memory
            if len(self.topics) >= self._max_topics + self._max_cold:
                raise TooManyTopics(name)
            key = self._key_of(name).encode()
            topic = Topic(name, key, Ring(self._ring_events, self._ring_bytes))
            self.topics[name] = topic
            self.by_key[key] = topic
        topic.idle_since = None
        return topic

    def mark_primed(self, topic: Topic) -> None:
        """``topic`` was primed: hot when its stream was ever written (a last id above 0-0),
        else cold; refused (``Topic.refused``, and forgotten) when its table is full."""
        topic.primed = True
        if ids.from_redis(topic.read_from) != ids.ZERO:
            if len(self.hot) >= self._max_topics:
                topic.refused = "hot"
                self._drop(topic)
            else:
                self.hot[topic.key] = topic
                self.generation += 1
        elif len(self.cold) >= self._max_cold:
            topic.refused = "cold"
            self._drop(topic)
        else:
            topic.cold = True
            self.cold[topic.key] = topic

    def promote(self, topic: Topic) -> bool:
        """A cold topic whose stream was written (its first entries were read into its ring,
        ``read_from`` is the last of them) joins the hot topics; False when it was not cold
        or is no longer watched."""
        if not topic.cold or self.by_key.get(topic.key) is not topic:
            return False
        topic.cold = False
        del self.cold[topic.key]
        self.hot[topic.key] = topic
        self.generation += 1
        self.promotions += 1
        return True

    def subscribe(self, topic: Topic, sub: Subscription) -> None:
        topic.subscribers.add(sub)
        topic.idle_since = None

    def unsubscribe(self, sub: Subscription, now: float) -> None:
        topic = sub.topic
        topic.subscribers.discard(sub)
        if not topic.subscribers and topic.idle_since is None:
            topic.idle_since = now

    def _drop(self, topic: Topic) -> None:
        """Out of every table (the caller checked it is the one watched under its name)."""
        del self.topics[topic.name]
        del self.by_key[topic.key]
        self.cold.pop(topic.key, None)
        if self.hot.pop(topic.key, None) is not None:
            self.generation += 1

    def expire(self, now: float, linger: float) -> list[Topic]:
        """Forget topics that have had no connection for ``linger`` seconds."""
        gone = [
            t for t in self.topics.values()
            if t.idle_since is not None and now - t.idle_since >= linger and t.priming is None
        ]
        for topic in gone:
            self._drop(topic)
            topic.wake()
        return gone

    def forget(self, topic: Topic) -> None:
        """Stop watching ``topic`` now (its stream went back): its connections are closed,
        and the next one primes it again from the stream as it is."""
        if self.topics.get(topic.name) is topic:
            self._drop(topic)
        for sub in list(topic.subscribers):
            sub.close("rewound")
        topic.wake()

    def tick(self) -> None:
        """A heartbeat: wake every connection so each writes a keep-alive."""
        self.ticks += 1
        for topic in self.topics.values():
            topic.wake()

    def watched(self) -> dict[bytes, bytes]:
        """What the feed's blocking read names: each hot topic's key and the last id it saw."""
        return {key: t.read_from for key, t in self.hot.items()}

    @property
    def subscriber_count(self) -> int:
        return sum(len(t.subscribers) for t in self.topics.values())
