"""The composite event id of a stream on several topics, and the rules of a topic set.

A stream on several topics (``GET /v1/streams/events?topic=a&topic=b``) gives each event an
``id:`` that holds the position the client has reached in *every* topic of the set, so the
browser's ``Last-Event-ID`` resumes each topic exactly, on any node::

    id: scores~k3J9aRq2f8Zm.Xy7Qp1a2B3cE_1.Ab3C0

- ``scores`` is the topic of this event (empty on the frame that only sets the id): a page
  tells topics apart with ``e.lastEventId.split("~")[0]``; topics never hold ``~``.
- then one entry per topic of the set, ``.``-separated, in the order of the sorted set:
  a 5-character tag (a hash of the topic's name: the entries say which topic they belong
  to, so a reconnect with another set still finds each topic's position), then the position:
  nothing for ``0-0`` (before every entry), else the Redis id's milliseconds in base 62 and,
  when not 0, ``_`` and its sequence number in base 62.

Every character is unreserved in a URL (``A-Z a-z 0-9 . _ ~``), so the id also travels as
``last_event_id=`` in a query unescaped. An entry is the same bytes for every client at the
same position: it is encoded once per event and topic (``entry``), never per client.

Sans I/O: no asyncio, Redis or server imports.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from relay.protocol import ids, names

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_VALUE = {c: n for n, c in enumerate(ALPHABET)}
TAG_CHARS = 5  # 62**5: about 2**30 tags; a set whose tags collide is refused (``TopicSet``)
_U64 = (1 << 64) - 1
_NUMBER_CHARS = 11  # 62**11 > 2**64
MARK = "~"  # after the event's topic
SEP = "."  # between entries
SEQ = "_"  # between an entry's milliseconds and its sequence number
# the longest entry: a tag, 64-bit milliseconds, and a 64-bit sequence number
ENTRY_MAX = TAG_CHARS + _NUMBER_CHARS + 1 + _NUMBER_CHARS
# the longest id accepted from a client: more than any set of ``MAX_SET`` topics makes, so an
# id from a larger set (before topics were removed) still reads
ID_MAX = 4096
MAX_SET = 64  # the most topics a set can have, whatever the setting (ids stay under ID_MAX)
# what a reconnect sends through the edge must fit its request head: varnishd (http_req_size
# 8 KiB) took at most 8,072 B of URL and Granian (8 KiB HTTP/1 buffer) 8,139 B (bench/id_limits);
# Chromium's EventSource adds about 570 B of other headers. The URL and the longest id a set
# can make are kept under 6 KiB, leaving 2 KiB for those headers and a token cookie.
REQUEST_BUDGET = 6144


class BadSet(ValueError):
    """A topic set or composite id that can never be served: a 400 naming why."""


def b62(n: int) -> str:
    """``n`` (>= 0) in base 62."""
    if n < 62:
        return ALPHABET[n]
    out = []
    while n:
        n, r = divmod(n, 62)
        out.append(ALPHABET[r])
    return "".join(reversed(out))


def _number(text: str, what: str) -> int:
    if not text or len(text) > _NUMBER_CHARS:
        raise BadSet(f"bad composite id: {what} is 1 to {_NUMBER_CHARS} base-62 digits")
    n = 0
    for c in text:
        v = _VALUE.get(c)
        if v is None:
            raise BadSet(f"bad composite id: {what} is 1 to {_NUMBER_CHARS} base-62 digits")
        n = n * 62 + v
    if n > _U64:
        raise BadSet(f"bad composite id: {what} must fit in 64 bits")
    return n


def tag(topic: str) -> str:
    """The topic's tag in composite ids: the same on every node and in every release."""
    digest = int.from_bytes(hashlib.blake2b(topic.encode(), digest_size=8).digest(), "big")
    return b62(digest % 62**TAG_CHARS).rjust(TAG_CHARS, "0")


def position(key: int) -> str:
    """An entry's position part for the id key ``key`` (``ids.parse``'s integer)."""
    if not key:
        return ""
    ms, seq = key >> 64, key & _U64
    return b62(ms) + SEQ + b62(seq) if seq else b62(ms)


def entry(topic_tag: str, key: int) -> bytes:
    return (topic_tag + position(key)).encode()


def longest_id(topics: Sequence[str]) -> int:
    """The longest id a set of these topics can make (its longest topic as the mark, every
    position at 64-bit milliseconds and sequence number)."""
    n = len(topics)
    return max(map(len, topics)) + len(MARK) + n * ENTRY_MAX + (n - 1) * len(SEP)


def join(mark: bytes, entries: Sequence[bytes]) -> bytes:
    """The id's text (as bytes) for an event of topic ``mark`` (b"" for none)."""
    return mark + b"~" + b".".join(entries)


@dataclass(frozen=True, slots=True)
class CompositeId:
    topic: str  # the topic of the event that carried it ("" for none)
    positions: Mapping[str, int]  # tag -> id key


def parse(text: str) -> CompositeId:
    """A composite id from a client; ``BadSet`` for anything this module would not make."""
    if len(text) > ID_MAX:
        raise BadSet(f"bad composite id: longer than {ID_MAX} characters")
    mark, sep, rest = text.partition(MARK)
    if not sep:
        raise BadSet("bad composite id: no '~' (an id from a one-topic stream?)")
    if mark and not names.is_topic(mark):
        raise BadSet(f"bad composite id: its topic: {names.TOPIC_RULE}")
    positions: dict[str, int] = {}
    for part in rest.split(SEP):
        if len(part) < TAG_CHARS or any(c not in _VALUE for c in part[:TAG_CHARS]):
            raise BadSet(f"bad composite id: each entry starts with a {TAG_CHARS}-character tag")
        key = part[:TAG_CHARS]
        if key in positions:
            raise BadSet("bad composite id: a topic appears twice")
        pos = part[TAG_CHARS:]
        if not pos:
            positions[key] = ids.ZERO
            continue
        ms, has_seq, seq = pos.partition(SEQ)
        positions[key] = _number(ms, "milliseconds") << 64 | (
            _number(seq, "a sequence number") if has_seq else 0)
    if len(positions) > MAX_SET:
        raise BadSet(f"bad composite id: more than {MAX_SET} topics")
    return CompositeId(mark, positions)


@dataclass(frozen=True, slots=True)
class TopicSet:
    """The topics of one stream, sorted (the order of entries in its ids), and their tags."""

    topics: tuple[str, ...]
    tags: tuple[str, ...]

    @classmethod
    def parse(cls, raw: Sequence[str], limit: int, request_bytes: int = 0) -> TopicSet:
        """The set named by ``topic=`` values, or ``BadSet`` naming why it cannot be served:
        none, more than ``limit``, a bad name, a duplicate, two tags alike, or a URL
        (``request_bytes`` long) and longest id over ``REQUEST_BUDGET``."""
        if not raw:
            raise BadSet("name at least one topic: ?topic=a&topic=b")
        if len(raw) > limit:
            raise BadSet(f"at most {limit} topics per stream (SSEDGE_MAX_STREAM_TOPICS); "
                         f"{len(raw)} were named")
        for name in raw:
            if not names.is_topic(name):
                raise BadSet(f"topic {name[:140]!r}: {names.TOPIC_RULE}")
        topics = tuple(sorted(raw))
        for a, b in itertools.pairwise(topics):
            if a == b:
                raise BadSet(f"topic {a!r} is named twice")
        tags = tuple(tag(t) for t in topics)
        seen: dict[str, str] = {}
        for t, g in zip(topics, tags, strict=True):
            if g in seen:
                raise BadSet(f"topics {seen[g]!r} and {t!r} cannot share a stream: their "
                             "composite-id tags are alike (rename one)")
            seen[g] = t
        longest = longest_id(topics)
        if request_bytes + longest > REQUEST_BUDGET:
            raise BadSet(f"this URL ({request_bytes} B) and the longest id its set can make "
                         f"({longest} B) would not fit the {REQUEST_BUDGET} B a reconnect may "
                         "send through the edge: fewer or shorter topics")
        return cls(topics, tags)

    def positions(self, composite: CompositeId | None) -> list[int | None]:
        """Each topic's position in ``composite``; None for a topic it does not hold (new to
        the set: it starts as ``since``/``backfill`` say). Entries of topics not in the set
        (removed from it) are ignored."""
        if composite is None:
            return [None] * len(self.topics)
        return [composite.positions.get(g) for g in self.tags]
