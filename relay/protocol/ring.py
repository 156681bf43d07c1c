"""The per-topic ring of framed events: plain synchronous state, no I/O.

Frames are encoded once by the feed and the same ``bytes`` objects go to every connection.
A connection is an absolute sequence number (a cursor) into the ring; the ring never moves a
cursor, it only drops frames from its tail, and a cursor that points below the tail has fallen
behind.

Coverage: the ring holds every stream entry whose id is above ``floor``. A client resuming
after an id at or above ``floor`` is served from the ring alone; one below it needs history
(replay service or Redis) first.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Sequence

# Dropping frames from the front of a list moves the rest. Dropped frames are released once
# there are as many of them as live ones: a constant cost per appended frame, and at most
# twice the live frames held.
_COMPACT_MIN = 64


class Ring:
    def __init__(self, max_events: int, max_bytes: int) -> None:
        if max_events < 1 or max_bytes < 1:
            raise ValueError("a ring holds at least one event and one byte")
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._ids: list[int] = []
        self._frames: list[bytes] = []
        # _ends[i] is the byte offset just after frame i, counted from the ring's creation,
        # so the bytes between two cursors is one subtraction.
        self._ends: list[int] = []
        self._base = 0  # sequence number of _frames[0]
        # plain attributes, not properties: every connection reads them at every wake-up
        self.head = 0  # the sequence number the next appended frame will get
        self.tail = 0  # the sequence number of the oldest frame still served (>= _base)
        self.floor = 0  # every entry with an id above this is in the ring
        self.last_id = 0  # the id of the newest frame, or the floor when there is none

    # -- what a connection reads ---------------------------------------------------------

    def __len__(self) -> int:
        return self.head - self.tail

    @property
    def nbytes(self) -> int:
        if self.head == self.tail:
            return 0
        return self._ends[-1] - self._offset(self.tail)

    def _offset(self, seq: int) -> int:
        """Byte offset of the start of frame ``seq``."""
        i = seq - self._base
        return self._ends[i - 1] if i > 0 else self._ends[0] - len(self._frames[0])

    def lag_bytes(self, cursor: int) -> int:
        """Bytes between ``cursor`` and the head (the cursor must not be behind the tail)."""
        if cursor >= self.head:
            return 0
        return self._ends[-1] - self._offset(cursor)

    def read(self, cursor: int, max_bytes: int) -> tuple[bytes, int]:
        """Frames from ``cursor`` joined into one chunk of about ``max_bytes`` at most (always at
        least one frame), and the cursor after them."""
        head = self.head
        if cursor >= head:
            return b"", cursor
        i = cursor - self._base
        if cursor + 1 == head:  # the newest frame alone: most sends once a client keeps up
            return self._frames[i], head
        j = len(self._frames)
        start = self._offset(cursor)
        if self._ends[-1] - start > max_bytes:
            j = max(i + 1, bisect_right(self._ends, start + max_bytes, i))
        if j - i == 1:
            return self._frames[i], cursor + 1
        return b"".join(self._frames[i:j]), self._base + j

    def position_after(self, key: int) -> int:
        """The sequence number of the first frame whose id is above ``key``."""
        lo = self.tail - self._base
        return self._base + bisect_right(self._ids, key, lo)

    def covers(self, key: int) -> bool:
        """Whether every entry after ``key`` is in the ring (from its tail on)."""
        return key >= self.floor

    def id_at(self, seq: int) -> int:
        """The id of the frame at ``seq`` (which must be in the ring)."""
        return self._ids[seq - self._base]

    def ids(self, start: int, stop: int) -> Sequence[int]:
        """The ids of frames ``start`` to ``stop`` (sequence numbers), for tests and replay."""
        return self._ids[start - self._base : stop - self._base]

    def frames(self, start: int, stop: int) -> Sequence[bytes]:
        return self._frames[start - self._base : stop - self._base]

    # -- what the feed writes ------------------------------------------------------------

    def prime(self, ids: Sequence[int], frames: Sequence[bytes], floor: int) -> None:
        """Start an empty ring with the newest entries of a stream, read in one go.

        ``floor`` is the id at and below which entries may exist that are not included:
        ``0`` when ``ids`` is the whole stream, else the oldest id that was read (that entry
        is in the ring for backfill, but nothing older is).
        """
        if self._frames:
            raise ValueError("only an empty ring can be primed")
        self.floor = floor
        self.last_id = floor
        self.extend(ids, frames)

    def extend(self, ids: Sequence[int], frames: Sequence[bytes]) -> None:
        """Append frames that follow the newest one, then drop the oldest over the bounds."""
        end = self._ends[-1] if self._ends else 0
        ends = self._ends
        for frame in frames:
            end += len(frame)
            ends.append(end)
        self._ids.extend(ids)
        self._frames.extend(frames)
        self.head += len(frames)
        if ids:
            self.last_id = ids[-1]
        self._trim()

    def _trim(self) -> None:
        head = self.head
        first = max(self.tail, head - self.max_events)
        limit = self._ends[-1] - self.max_bytes if self._ends else 0
        if first < head and self._offset(first) < limit:
            # the smallest first whose start offset is at or above the limit; the newest frame
            # always stays, even when it alone is over the byte bound
            k = bisect_left(self._ends, limit, max(0, first - self._base - 1))
            first = min(head - 1, self._base + k + 1)
        if first == self.tail:
            return
        self.floor = self._ids[first - 1 - self._base]
        self.tail = first
        dead = first - self._base
        if dead >= max(_COMPACT_MIN, head - first):
            del self._ids[:dead], self._frames[:dead], self._ends[:dead]
            self._base = first
