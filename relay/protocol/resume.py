"""Where a stream starts, and how it catches up: the one reconnect protocol, without I/O.

1. ``plan``: register and note the ring position in one step. The cursor is fixed before the
   first byte is sent; everything after it will come from the ring.
2. If the client's id is older than the ring's floor, the history between them is read page
   by page (replay service, else Redis) and ``CatchUp`` says which frames of each page to send:
   those up to the floor noted in step 1, and no further, so nothing is sent twice.
3. Then the stream follows the ring from the cursor (``Reader.next_chunk``).

A client that falls behind the ring's tail later resumes the same way from the last id it
was sent.

Three rules hold whatever the feed, the caches or Redis do meanwhile:

- **Never an id at or below what the client has.** ``Reader.last_id`` is the id of the last
  frame the client was sent (or the Last-Event-ID it came with). Ring frames at or below it are
  skipped, not sent: a client that comes from a node whose feed is ahead, to one whose feed is
  behind, waits for this feed to pass its id instead of getting those events again.
- **A catch-up ends only when a page proves it reached the floor.** Each page says through
  which id it is complete (``HistoryPage.through``): its last entry when it stopped at a bound,
  the stream's last id at the moment it was read when it stopped at the end. A page from a
  cache can be older than the floor: then it proves less, and the next page is read fresh.
- **A reset names exactly what was lost, and its id is below what follows it.** An
  ``ssedge.reset`` from a page whose id lies above the floor (Redis trimmed entries the ring
  still holds) is sent with the floor as its id instead: what is lost is up to the floor, the
  ring has the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import msgspec

from relay.protocol import ids
from relay.protocol.ring import Ring
from relay.protocol.wire import encode_event

RESET = "ssedge.reset"
_json = msgspec.json.Encoder()


def reset_frame(reason: str, requested: int, resume_from: int | None, frame_id: int,
                topic: str | None = None) -> bytes:
    """An ``ssedge.reset`` event: the events after ``requested`` up to ``frame_id`` are gone
    (``expired``), never existed here (``unknown``); the next one is ``resume_from``. A reset
    every reader of a topic shares (a feed's, in its ring) names its ``topic``: a stream on
    several topics sends it as it is."""
    head = {"topic": topic} if topic is not None else {}
    data = _json.encode({**head,
        "reason": reason,
        "requested": ids.format(requested),
        "resume_from": ids.format(resume_from) if resume_from is not None else None,
    })
    return encode_event(data, id=ids.format(frame_id), event=RESET)


@dataclass(frozen=True, slots=True)
class Plan:
    cursor: int  # ring sequence number the stream follows from
    last_id: int  # the id just before the cursor: what the client is taken to have
    history_after: int | None  # read history after this id first, if not None ...
    history_until: int  # ... up to and including this id (the ring's floor)
    resume_from: int | None  # the id of the first ring frame after the floor, when known
    earliest: bool = False  # ``since=earliest``: what was trimmed before it is no loss
    # an ``unknown`` reset to send first: the client's id lies inside the ring's range but
    # is none of its ids (an id of another topic, or of an earlier life of this stream)
    reset: bytes = b""

    def catch_up(self) -> CatchUp | None:
        """The catch-up this start needs, if any."""
        if self.history_after is None:
            return None
        return CatchUp(self.history_after, self.history_until, self.resume_from,
                       earliest=self.earliest)


def plan(ring: Ring, after: int | None, *, earliest: bool = False, backfill: int = 0) -> Plan:
    """The start of a stream on ``ring``: after an id, at the oldest event, the last N, or live.

    An ``after`` above everything in the ring (the client comes from a node whose feed is
    ahead of this one) puts the cursor at the head with ``last_id = after``: the frames this
    feed appends up to ``after`` are skipped (``Reader.next_chunk``)."""
    from_earliest = after is None and earliest
    if from_earliest:
        after = ids.ZERO
    if after is not None:
        if ring.covers(after):
            cursor = ring.position_after(after)
            foreign = _foreign(ring, after, cursor)
            if foreign:
                # the client's id means nothing here: told, it starts the stream over
                restart = plan(ring, ids.ZERO)
                return Plan(restart.cursor, restart.last_id, restart.history_after,
                            restart.history_until, restart.resume_from, reset=foreign)
            return Plan(cursor, after, None, ring.floor, None)
        cursor = ring.position_after(ring.floor)
        first = ring.id_at(cursor) if cursor < ring.head else None
        return Plan(cursor, after, after, ring.floor, first, earliest=from_earliest)
    cursor = max(ring.tail, ring.head - backfill) if backfill else ring.head
    return Plan(cursor, last_before(ring, cursor), None, ring.floor, None)


def _foreign(ring: Ring, after: int, cursor: int) -> bytes:
    """The ``unknown`` reset for an ``after`` the ring covers but does not hold: above its
    floor, below its last id, and none of its frames' ids (another topic's id, an earlier
    life's). Its id is 0-0: the client starts the stream over, from its oldest retained
    event, so nothing below the foreign id is skipped. The floor and the last id are
    positions this stream hands out, never foreign."""
    if after <= ring.floor or after >= ring.last_id:
        return b""
    below = ring.id_at(cursor - 1) if cursor > ring.tail else ring.floor
    if below == after or (cursor < ring.head and ring.id_at(cursor) == after + 1):
        # an entry, or the id just below one: a position this stream hands out (a backfill
        # that reaches the ring's tail starts just below its first frame)
        return b""
    first = ring.id_at(ring.tail) if ring.floor == ids.ZERO and ring.tail < ring.head else None
    return reset_frame("unknown", after, first, ids.ZERO)


def last_before(ring: Ring, cursor: int) -> int:
    """The id just below the frame at ``cursor``."""
    if cursor > ring.tail:
        return ring.id_at(cursor - 1)
    if cursor < ring.head:
        return ids.predecessor(ring.id_at(cursor))
    return ring.last_id


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """A history page as a relay receives it: ``ssedge.reset`` frames first, then entries."""

    frames: Sequence[tuple[int, bytes]]  # (id, frame)
    count: int  # stream entries: the last ``count`` frames
    # every entry after the page's ``after`` up to this id is in the page; None: not known
    # (an answer without the header), the page proves no more than its own entries
    through: int | None


class CatchUp:
    """Which history pages to read and which of their frames to send.

    ``after`` is the last id the client has (sent to it, or named by a reset it was sent):
    where the next page starts. ``done`` turns true once a page proves that nothing up to
    ``until`` (the ring's floor when the cursor was fixed) is missing. A page that proves
    nothing new (an empty or short answer kept by a cache since before the floor) makes the
    next read ``fresh``: from Redis, past every cache. A fresh page that still stops below
    ``until`` means the stream went back (deleted and made again, or a failover lost its
    newest entries): ``rewound``, and the stream is ended so the client starts over.
    """

    __slots__ = ("after", "done", "earliest", "fresh", "resets", "restarted", "resume_from",
                 "rewound", "until")

    def __init__(self, after: int, until: int, resume_from: int | None = None, *,
                 earliest: bool = False) -> None:
        self.earliest = earliest  # since=earliest: a reset of what was trimmed before 0-0
        # is no loss to this client (it asked for whatever is retained)
        self.after = after
        self.until = until
        self.resume_from = resume_from  # the ring's first frame after ``until``, if known
        self.done = after >= until
        self.fresh = False
        self.rewound = False
        self.restarted = False  # an ``unknown`` reset set the client back to 0-0
        self.resets = 0  # ssedge.reset frames given out

    def take(self, page: HistoryPage, *, fresh: bool = False) -> list[bytes]:
        """The frames of ``page`` to send (``fresh``: it was read from Redis just now)."""
        out: list[bytes] = []
        if self.done:
            return out
        frames = page.frames
        first_entry = len(frames) - page.count
        before = self.after
        for frame_id, frame in frames[:first_entry]:
            self._reset(frame_id, frame, out)
        if self.after < before:
            return out  # started over (a foreign id): the page proves nothing past 0-0
        for frame_id, frame in frames[first_entry:]:
            if frame_id <= self.after:
                continue  # never at or below what the client has
            if frame_id > self.until:
                self.done = True  # the ring has it from here
                return out
            self.after = frame_id
            out.append(frame)
        through = page.through if page.through is not None else self.after
        if max(through, self.after) >= self.until:
            self.done = True
        elif self.after == before:
            # nothing new, and the same page would come again: a cache kept it from before
            # the floor existed (read on from Redis), or, read from Redis just now, the stream
            # holds less than the ring: it went back
            if fresh:
                self.rewound = self.done = True
            self.fresh = True
        else:
            self.fresh = False
        return out

    def _reset(self, frame_id: int, frame: bytes, out: list[bytes]) -> None:
        """A page's reset: sent when it names a loss past what the client has, with the floor
        as its id when the loss reaches into what the ring holds. ``since=earliest`` skips
        the reset of what was trimmed before it (it asked for what is retained)."""
        if self.earliest and self.after == ids.ZERO:
            self.after = min(frame_id, self.until)
            self.done = self.after >= self.until
            return
        if frame_id == ids.ZERO and self.after != ids.ZERO:
            # ``unknown`` with id 0-0: the client's id is none of the stream's (another
            # topic's, an earlier life's). Told, it starts over: its position is 0-0 and the
            # next page is the stream's first
            self.after = ids.ZERO
            self.restarted = True
            # past every cache: a page kept from before may be of the life its id came from
            self.fresh = True
            self.resets += 1
            out.append(frame)
            return
        if frame_id <= self.after:
            return  # a reset for an id the client is past (``unknown`` of a stream that
            # went back): the page proves nothing, ``take`` decides what happens next
        if frame_id > self.until:
            frame = reset_frame("expired", self.after, self.resume_from, self.until)
            frame_id = self.until
            self.done = True
        self.after = frame_id
        self.resets += 1
        out.append(frame)


class Reader:
    """One client's place in a topic: a cursor into the ring, the last id it has, and the
    catch-up under way, if any. Plain state: the stream task does the I/O."""

    __slots__ = ("catch_up", "cursor", "last_id")

    def __init__(self, cursor: int, last_id: int) -> None:
        self.cursor = cursor
        self.last_id = last_id  # the id of the last frame sent (or taken as had)
        self.catch_up: CatchUp | None = None

    def next_chunk(self, ring: Ring, max_bytes: int) -> tuple[bytes, int]:
        """Ring frames to send next, joined (at most about ``max_bytes``), and how many: ``b""``
        when there are none, or when history must be read first (``catch_up`` is set)."""
        cursor = self.cursor
        if cursor >= ring.head:
            return b"", 0
        if cursor < ring.tail:
            # the frames it needs are gone from the ring: catch up from the last id sent
            floor = ring.floor
            self.cursor = cursor = ring.position_after(floor)
            if self.last_id < floor:
                first = ring.id_at(cursor) if cursor < ring.head else None
                self.catch_up = CatchUp(self.last_id, floor, first)
                return b"", 0
            if cursor >= ring.head:
                return b"", 0
        if ring.id_at(cursor) <= self.last_id:
            # this feed is behind the client (it came from a node whose feed was ahead)
            cursor = ring.position_after(self.last_id)
            self.cursor = cursor
            if cursor >= ring.head:
                return b"", 0
        chunk, self.cursor = ring.read(cursor, max_bytes)
        self.last_id = ring.id_at(self.cursor - 1)
        return chunk, self.cursor - cursor

    def take_page(self, page: HistoryPage, *, fresh: bool = False) -> list[bytes]:
        """The frames of a history page to send; ``catch_up`` is cleared once it is done."""
        catch_up = self.catch_up
        assert catch_up is not None
        out = catch_up.take(page, fresh=fresh)
        if catch_up.restarted:  # the client's id was foreign: it has 0-0 now
            catch_up.restarted = False
            self.last_id = catch_up.after
        self.last_id = max(self.last_id, catch_up.after)
        if catch_up.done and not catch_up.rewound:
            self.catch_up = None
        return out
