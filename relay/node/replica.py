"""Streams waiting for the replica: a client whose Last-Event-ID the replica has not reached.

A client that comes from another region (its relays read the primary, or a replica further
ahead) may hold an id this relay's replica does not have yet. The primary has it, so it is
no unknown id: the stream is registered as rule 2 registers a client ahead of a lagging feed
(its cursor at the ring's head, every frame up to its id skipped, never sent) and follows as
soon as the feed, reading the replica, passes the id.

Unlike rule 2 the id is not taken as the stream's (``Topic.ahead`` stays as it was): that
would make ``FeedBase.verify`` compare an id only the primary has with the replica's last
one, and a replica behind would look like a stream that went back. So the wait is bounded
instead: a stream whose id the feed has not passed within ``SSEDGE_REPLICA_WAIT_S`` is ended
with a ``retry:``, and the client comes back with its id, to be placed again (by then the
replica has it, or the primary says it never existed: an ``unknown`` reset).

Plain bookkeeping, looked at by the relay's sweeper once a second.
"""

from __future__ import annotations

from relay.node.topics import Subscription


class Waits:
    """Streams waiting for the feed to pass an id, each with its deadline."""

    def __init__(self, wait_s: float) -> None:
        self.wait_s = wait_s
        self._waiting: list[tuple[float, int, Subscription]] = []  # (deadline, id, stream)
        self.started = 0  # streams that waited
        self.timed_out = 0  # of those, ended at their deadline

    def add(self, sub: Subscription, after: int, now: float) -> None:
        self._waiting.append((now + self.wait_s, after, sub))
        self.started += 1

    def __len__(self) -> int:
        return len(self._waiting)

    def expired(self, now: float) -> list[Subscription]:
        """The streams to end now: still open, their id not passed by the feed, past their
        deadline. The others are forgotten once passed or closed."""
        out: list[Subscription] = []
        keep: list[tuple[float, int, Subscription]] = []
        for deadline, after, sub in self._waiting:
            if sub.closed_because is not None or sub.topic.ring.last_id >= after:
                continue
            if now >= deadline:
                self.timed_out += 1
                out.append(sub)
            else:
                keep.append((deadline, after, sub))
        self._waiting = keep
        return out
