"""Pages of a topic's history, as the replay service serves them and relays consume them.

One page is "the entries after ``after`` (and at most ``until``), up to ``limit`` of them or
until they hold ``max_bytes``", framed exactly as the relay frames live events, so a page's
bytes can go to a client as they are. The same function serves the replay service and a
relay reading Redis itself when the replay service is down or a cached page proved too old:
both give byte-identical answers.

Bounded by bytes as well as by count: events may be up to a MiB each, and a page is held
whole by whoever reads it. The entry that crosses ``max_bytes`` is the page's last, so which
entries a page holds depends only on the stream, never on how it was read: full pages stay
the same for every reader and every cache. Entries are read in batches sized from the
largest entry seen so far, so no read asks Redis for much more than ``max_bytes``.

``through``: every entry after ``after`` up to this id is in the page. A page that stopped at
a bound goes through its last entry; one that reached the stream's end goes through the
stream's last generated id at the moment it was read. A relay ends a catch-up only on a page
that goes through the floor it noted (``relay.protocol.resume.CatchUp``), so a page a cache
kept from before newer events can never end one early.

The retention check (``ssedge.reset``). XRANGE from an id older than the first entry silently
starts at the first entry, so a gap is only visible in XINFO STREAM: ``entries-added`` above
``length`` means something was trimmed (or deleted), and everything trimmed is older than
``first-entry``. A page for an ``after`` below the entry just before the first one, on a
trimmed stream, starts with a reset event whose id is just below the first retained entry, so
a client that reconnects right after it does not get it again. An ``after`` newer than the
stream's last generated id never existed here: the page is a reset with reason ``unknown``
carrying the stream's last id, and the client goes on live from there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from relay.protocol import ids
from relay.protocol.resume import reset_frame
from relay.protocol.wire import split_frames
from relay.storage import clients
from relay.storage import streams as store

# the first batch of a page: one round trip (with XINFO) for pages of small events
_FIRST_BATCH = 100
_MAX_ID = ids.parse("18446744073709551615-18446744073709551615")


@dataclass(frozen=True, slots=True)
class Page:
    body: bytes  # frames, the reset event first when there is one
    count: int  # stream entries in the page (a reset event is not one)
    last_id: int | None  # id of the last entry, None for none
    reset: bool
    closed: bool  # the page's answer can never change (safe to cache for good)
    through: int  # every entry after ``after`` up to this id is in the page

    def headers(self) -> dict[str, str]:
        """The headers a replay answer carries besides its body (``relay.node.replayer``
        reads them back)."""
        out = {"content-type": "text/event-stream", "x-ssedge-count": str(self.count),
               "x-ssedge-through": ids.format(self.through)}
        if self.last_id is not None:
            out["x-ssedge-last-id"] = ids.format(self.last_id)
        if self.reset:
            out["x-ssedge-reset"] = "1"
        return out


async def read_page(r: clients.Client, topic: str, after: int, limit: int,
                    until: int | None = None, max_bytes: int = 1 << 20) -> tuple[Page, int]:
    """The page, and the number of malformed entries in it. One round trip to Redis for a
    page of small events; more, each sized to stay near ``max_bytes``, for large ones.

    The first round trip reads XINFO before the entries (what the page goes ``through`` must
    not claim entries added after they were read), the entry at or below ``after`` (is it an
    entry of this stream: ``_page``) and XINFO again after them (retention is judged on what
    was trimmed by the time the entries were read). Each later batch is followed by XINFO:
    a trim that overtook the page between two batches (the stream's first entry now past the
    last one read) ends the page there, open, and the next page tells the loss."""
    key = store.stream_key(topic)
    stop = ids.format(until) if until is not None else "+"
    # nothing sorts after the largest id: Redis refuses "(" with it, and the answer is empty
    beyond = after >= _MAX_ID or (until is not None and until <= after)
    async with r.pipeline(transaction=False) as pipe:
        pipe.xinfo_stream(key)
        if not beyond:
            pipe.xrange(key, min="(" + ids.format(after), max=stop,
                        count=min(limit, _FIRST_BATCH))
            pipe.xrevrange(key, max=ids.format(after), min="-", count=1)
            pipe.xinfo_stream(key)
        replies = await pipe.execute(raise_on_error=False)
    info = _info(replies[0])
    entries: list[store.Entry] = []
    below: int | None = None
    cut = False
    if not beyond:
        batch = replies[1]
        if isinstance(batch, Exception):
            raise batch
        if isinstance(replies[2], Exception):
            raise replies[2]
        below = ids.from_redis(replies[2][0][0]) if replies[2] else None
        trimmed = _info(replies[3])
        entries = list(batch)
        size, largest = _sizes(entries)
        asked = min(limit, _FIRST_BATCH)
        # read on while the last read was full and the page has room left
        while len(batch) == asked and len(entries) < limit and size < max_bytes:
            asked = min(limit - len(entries), max(1, (max_bytes - size) // max(largest, 1) + 1))
            async with r.pipeline(transaction=False) as pipe:
                pipe.xrange(key, min="(" + entries[-1][0].decode(), max=stop, count=asked)
                pipe.xinfo_stream(key)
                more_replies = await pipe.execute(raise_on_error=False)
            if isinstance(more_replies[0], Exception):
                raise more_replies[0]
            first_now = _first(_info(more_replies[1]))
            if first_now is None or first_now > ids.from_redis(entries[-1][0]):
                cut = True  # trimmed past what was read: the page ends at its last entry
                break
            # raw replies (clients.client): lists of (id, [field, value, ...])
            batch = cast(list[store.Entry], more_replies[0])
            entries.extend(batch)
            more, biggest = _sizes(batch)
            size += more
            largest = max(largest, biggest)
    else:
        trimmed = info
    return _page(info, entries, after, limit, until, max_bytes, below=below,
                 trimmed_info=trimmed, cut=cut)


def _info(reply: Any) -> dict[str, Any] | None:
    """XINFO STREAM's answer, None when the stream does not exist."""
    if isinstance(reply, Exception):
        if "no such key" not in str(reply).lower():
            raise reply
        return None
    return cast(dict[str, Any], reply)


def _first(info: dict[str, Any] | None) -> int | None:
    """The id of the stream's oldest retained entry, None when there is none."""
    if info is None or not info.get("first-entry"):
        return None
    return ids.from_redis(info["first-entry"][0])


def _sizes(entries: Sequence[store.Entry]) -> tuple[int, int]:
    """Bytes of the entries' fields, and of the largest entry."""
    total = largest = 0
    for _, fields in entries:
        n = sum(len(f) for f in fields)
        total += n
        largest = max(largest, n)
    return total, largest


def _page(info: dict[str, Any] | None, entries: Sequence[store.Entry], after: int, limit: int,
          until: int | None, max_bytes: int = 1 << 20, *, below: int | None = None,
          trimmed_info: dict[str, Any] | None = None, cut: bool = False) -> tuple[Page, int]:
    """The page from what Redis answered: ``info`` (XINFO before the entries were read),
    ``below`` (the stream's entry at or below ``after``, None for none), ``trimmed_info``
    (XINFO after them, for retention; ``info`` when not given) and ``cut`` (a trim overtook
    the page between two batches: it ends at its last entry)."""
    last_generated = ids.from_redis(info["last-generated-id"]) if info else ids.ZERO
    if after > last_generated:
        body = reset_frame("unknown", after, None, last_generated)
        return Page(body, 0, None, True, False, last_generated), 0
    head = _retention(after, below, trimmed_info if trimmed_info is not None else info,
                      entries)
    # (an ``unknown`` reset with id 0-0 for an id that is none of this stream's: a relay's
    # catch-up starts the stream over from it, ``resume.CatchUp``; a reader of the replay API
    # asking for what came after a time, ``after=<ms>-0``, is told and gets it)
    reset = bool(head)
    # the page's entries: up to ``limit``, or through the one that crosses ``max_bytes``
    size = 0
    for n, (_, fields) in enumerate(entries[:limit]):
        size += sum(len(f) for f in fields)
        if size >= max_bytes:
            entries = entries[:n + 1]
            break
    else:
        entries = entries[:limit]
    keys, frames, bad = store.frames(entries)
    count = len(keys)
    bounded = count == limit or size >= max_bytes
    last_id = keys[-1] if keys else None
    if bounded or (cut and keys):
        through = keys[-1]
    else:  # it reached the end of the stream (or ``until``) as it was when read
        through = max(last_generated, last_id or ids.ZERO)
        if until is not None:
            through = min(through, until)
    # closed: a page that stopped at a bound ends at an entry that exists, and nothing can
    # be inserted before it; a page up to an ``until`` the stream has already passed is final
    # after 0-0 is the start of whatever life the stream is in: never final (a stream deleted
    # and made again starts anew, and a cache must not hand its old first page on)
    closed = not cut and after != ids.ZERO and (
        bounded or (until is not None and until <= last_generated))
    return Page(head + b"".join(frames), count, last_id, reset, closed, through), bad


def _retention(after: int, below: int | None, info: dict[str, Any] | None,
               entries: Sequence[store.Entry]) -> bytes:
    """The ``ssedge.reset`` a page after ``after`` starts with, or nothing.

    - ``expired``: the stream was trimmed (``entries-added`` above ``length``) past
      ``after``: its id is just below the first retained entry. ``after`` 0-0 is a client
      that had nothing (a position sent on a topic that was empty then): it is told too
      (``since=earliest`` skips this one reset, ``resume.CatchUp``).
    - ``unknown``: ``after`` is not an entry of this stream as it is: inside the retained
      range but not one of its ids (an id of another topic, or of an earlier life made again
      with lower ids), or below a stream that never lost anything (an id of an earlier life:
      deleted and made again). Its id is 0-0: the client's position means nothing here, and
      it starts the stream over from its oldest retained event (a client that reconnects
      right after it comes with 0-0).
    Handed-out ids that are not entries (0-0, a reset's id just below the first entry, the
    last generated id of a stream trimmed empty) never get ``unknown``."""
    if info is None or not after:
        if info is not None and int(info["entries-added"]) > int(info["length"]):
            return _expired(after, info)
        return b""
    first = _first(info)
    last_generated = ids.from_redis(info["last-generated-id"])
    trimmed = int(info["entries-added"]) > int(info["length"])
    # an entry, the last id, or the id just below an entry: positions a stream hands out (a
    # backfill that reaches a ring's tail starts just below its first frame)
    is_entry = below == after or after == last_generated or (
        bool(entries) and ids.from_redis(entries[0][0]) == after + 1)
    if first is not None and after >= first:
        if is_entry:
            return b""
        return reset_frame("unknown", after, first, ids.ZERO)
    if trimmed:
        return _expired(after, info)
    if first is not None and after != ids.predecessor(first) and not is_entry:
        return reset_frame("unknown", after, first, ids.ZERO)
    return b""


def _expired(after: int, info: dict[str, Any]) -> bytes:
    first = _first(info)
    last_generated = ids.from_redis(info["last-generated-id"])
    if first is None:  # everything was trimmed: resume at whatever comes next
        if after < last_generated:
            return reset_frame("expired", after, None, last_generated)
        return b""
    if after < ids.predecessor(first):
        return reset_frame("expired", after, first, ids.predecessor(first))
    return b""


def split(body: bytes) -> list[tuple[int, bytes]]:
    """(id, frame) pairs of a page's body (``wire.split_frames``), ids as keys."""
    return [(ids.parse(frame_id), frame) for frame_id, frame in split_frames(body)]
