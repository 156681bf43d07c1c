"""Pages of a topic's history, as the replay service serves them and relays consume them.

One page is "up to ``limit`` entries after ``after`` (and at most ``until``)", framed exactly as
the relay frames live events, so a page's bytes can go to a client as they are. The same
function serves the replay service and a relay reading Redis itself when the replay service
is down: both give byte-identical answers.

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
from typing import Any

import msgspec

from relay import ids, store
from relay.wire import encode_event

RESET = "ssedge.reset"
_json = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class Page:
    body: bytes  # frames, the reset event first when there is one
    count: int  # stream entries in the page (a reset event is not one)
    last_id: int | None  # id of the last entry, None for none
    reset: bool
    closed: bool  # the page's answer can never change (safe to cache for good)


def reset_frame(reason: str, requested: int, resume_from: int | None, frame_id: int) -> bytes:
    data = _json.encode({
        "reason": reason,
        "requested": ids.format(requested),
        "resume_from": ids.format(resume_from) if resume_from is not None else None,
    })
    return encode_event(data, id=ids.format(frame_id), event=RESET)


async def read_page(r: store.Client, topic: str, after: int, limit: int,
                    until: int | None = None) -> tuple[Page, int]:
    """The page, and the number of malformed entries in it. One round trip to Redis."""
    key = store.stream_key(topic)
    stop = ids.format(until) if until is not None else "+"
    async with r.pipeline(transaction=False) as pipe:
        pipe.xinfo_stream(key)
        pipe.xrange(key, min="(" + ids.format(after), max=stop, count=limit)
        info, entries = await pipe.execute(raise_on_error=False)
    if isinstance(info, Exception):
        if "no such key" not in str(info).lower():
            raise info
        info = None
    if isinstance(entries, Exception):
        raise entries
    return _page(info, entries, after, limit, until)


def _page(info: dict[str, Any] | None, entries: Sequence[store.Entry], after: int, limit: int,
          until: int | None) -> tuple[Page, int]:
    last_generated = ids.from_redis(info["last-generated-id"]) if info else ids.ZERO
    if after > last_generated:
        body = reset_frame("unknown", after, None, last_generated)
        return Page(body, 0, None, True, False), 0
    head = b""
    reset = False
    if info is not None and int(info["entries-added"]) > int(info["length"]) and after:
        first = ids.from_redis(info["first-entry"][0]) if info.get("first-entry") else None
        if first is None:  # everything was trimmed: resume at whatever comes next
            if after < last_generated:
                head, reset = reset_frame("expired", after, None, last_generated), True
        elif after < ids.predecessor(first):
            head, reset = reset_frame("expired", after, first, ids.predecessor(first)), True
    keys, frames, bad = store.frames(entries)
    count = len(keys)
    # closed: a full page ends at an entry that exists, and nothing can be inserted before it;
    # a page up to an ``until`` the stream has already passed is final too
    closed = count == limit or (until is not None and until <= last_generated)
    last_id = keys[-1] if keys else None
    return Page(head + b"".join(frames), count, last_id, reset, closed), bad


def split(body: bytes) -> list[tuple[int, bytes]]:
    """(id, frame) pairs of a page's body.

    Pages hold only frames made by ``store.frame`` and ``reset_frame``: each starts with its
    ``id:`` line and no line inside one is empty (data lines keep their ``data: `` prefix), so
    a blank line is always a frame's end.
    """
    out = []
    for part in body.split(b"\n\n"):
        if not part:
            continue
        if not part.startswith(b"id: "):
            raise ValueError("a history page holds ssedge frames only")
        end = part.find(b"\n")
        frame_id = ids.parse(part[4:end] if end != -1 else part[4:])
        out.append((frame_id, part + b"\n\n"))
    return out
