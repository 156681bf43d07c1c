"""Where a stream starts, and how it catches up: the one reconnect protocol, without I/O.

1. ``plan``: register and note the ring position in one step. The cursor is fixed before the
   first byte is sent; everything after it will come from the ring.
2. If the client's id is older than the ring's floor, the history between them is read page
   by page (replay service, else Redis) and ``CatchUp`` says which frames of each page to send:
   those up to the floor noted in step 1, and no further, so nothing is sent twice.
3. Then the stream follows the ring from the cursor.

A client that falls behind the ring's tail later resumes the same way from the last id it
was sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from relay import ids
from relay.ring import Ring


@dataclass(frozen=True, slots=True)
class Plan:
    cursor: int  # ring sequence number the stream follows from
    last_id: int  # the id just before the cursor: what the client is taken to have
    history_after: int | None  # read history after this id first, if not None ...
    history_until: int  # ... up to and including this id (the ring's floor)


def plan(ring: Ring, after: int | None, *, earliest: bool = False, backfill: int = 0) -> Plan:
    """The start of a stream on ``ring``: after an id, at the oldest event, the last N, or live."""
    if after is None and earliest:
        after = ids.ZERO
    if after is not None:
        if ring.covers(after):
            return Plan(ring.position_after(after), after, None, ring.floor)
        return Plan(ring.position_after(ring.floor), after, after, ring.floor)
    cursor = max(ring.tail, ring.head - backfill) if backfill else ring.head
    return Plan(cursor, last_before(ring, cursor), None, ring.floor)


def last_before(ring: Ring, cursor: int) -> int:
    """The id just below the frame at ``cursor``."""
    if cursor > ring.tail:
        return ring.id_at(cursor - 1)
    if cursor < ring.head:
        return ids.predecessor(ring.id_at(cursor))
    return ring.last_id


class CatchUp:
    """Which history pages to read and which of their frames to send.

    ``after`` is where the next page starts. ``done`` turns true once the floor is reached (or
    passed: the ring has the rest), or a page is empty (the stream has nothing after
    ``after``). A short page that stops before the floor is not the end: pages may come from a
    cache and be older than the floor, so the next page is read after its last entry.
    """

    def __init__(self, after: int, until: int, page_size: int) -> None:
        self.after = after
        self.until = until
        self.page_size = page_size
        self.done = after >= until

    def take(self, frames: Sequence[tuple[int, bytes]], count: int) -> list[bytes]:
        """The frames of a page to send (``count`` is its number of stream entries)."""
        out: list[bytes] = []
        # a page holding more frames than entries starts with an ssedge.reset: always sent
        first_entry = len(frames) - count
        out.extend(frame for _, frame in frames[:first_entry])
        for frame_id, frame in frames[first_entry:]:
            if frame_id > self.until:
                self.done = True  # the ring has it from here
                return out
            self.after = frame_id
            out.append(frame)
        if count == 0 or self.after >= self.until:
            self.done = True
        return out
