"""Redis Stream entry ids, which are also the SSE event ids.

An id is ``<ms>-<seq>``, both unsigned 64-bit decimals. Ids are compared as the single integer
``ms << 64 | seq`` so that the ring can keep them in a plain list and bisect it.
"""

from __future__ import annotations

import re

_ID = re.compile(r"(\d{1,20})-(\d{1,20})")
_U64 = (1 << 64) - 1

ZERO = 0  # "0-0": before every entry
MAX = (_U64 << 64) | _U64  # the largest id: nothing sorts after it


def parse(text: str | bytes) -> int:
    """The sortable key of a full entry id; ValueError for anything else."""
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    m = _ID.fullmatch(text)
    if m is None:
        raise ValueError("an event id is <ms>-<seq> in decimal, like 1732147200000-0")
    ms, seq = int(m.group(1)), int(m.group(2))
    if ms > _U64 or seq > _U64:
        raise ValueError("an event id's parts must fit in 64 bits")
    return ms << 64 | seq


def format(key: int) -> str:
    """The ``<ms>-<seq>`` text of a key."""
    return f"{key >> 64}-{key & _U64}"


def from_redis(raw: bytes) -> int:
    """The key of an id that Redis returned (trusted: no validation on the hot path)."""
    ms, _, seq = raw.partition(b"-")
    return int(ms) << 64 | int(seq)


def predecessor(key: int) -> int:
    """The largest id below ``key`` (``key`` must be above 0-0)."""
    return key - 1 if key & _U64 else (((key >> 64) - 1) << 64) | _U64
