"""One client on several topics: a ``resume.Reader`` per topic, and the ids they make together.

A stream on several topics is a set of per-topic cursors into the same rings the one-topic
streams read (nothing is read twice per process). Every rule of ``relay.protocol.resume``
holds per topic because each topic *is* a ``Reader``, with its own cursor, last id and
catch-up; this module adds only what a shared connection needs:

- **Re-framing.** Ring frames and history pages start with ``id: <entry id>``. Sent on a
  several-topic stream, each frame's ``id:`` line is replaced by the composite id
  (``relay.protocol.composite``): the event's topic, then every topic's position, this one's
  at the frame's own id. The rest of the frame (``event:`` as the publisher gave it, ``data:``
  as published) goes out unchanged: the same bytes the ring holds for everyone.
- **Positions move with what was sent.** A topic's entry in the id is its ``Reader.last_id``
  as the frames go out, so the id of the last frame a browser parsed names, for every topic,
  exactly what it has: never less (it would be sent again), never more (it would be lost).
- **Resets name their topic.** An ``ssedge.reset`` of a page (or of an id past a stream's end)
  is re-made with ``"topic"`` in its data; its id carries the topic's position at the reset.
- **The first frame only sets the id** (``start_frame``: an ``id:`` line and no data). WHATWG
  sets an EventSource's last event id at each blank line, and dispatches nothing when there is
  no data: a browser that reconnects before any event came resumes every topic from where its
  first connection started, not from "now" again.

Plain state, no I/O: the node's connection task (``relay.node.multistream``) and the feed's
fan-out (``relay.node.fanout``) call it; ``tests/node/test_stream_model.py`` drives it in a
model of several relays with lagging feeds, an edge and trimmed streams.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from relay.protocol import composite, ids, wire
from relay.protocol.composite import TopicSet
from relay.protocol.resume import RESET, HistoryPage, Reader
from relay.protocol.ring import Ring

_RESET_LINE = wire.event_and_data(RESET)
# entries already encoded, by (tag, id): an event's entry is the same for every client that
# gets it, so it is encoded once per process rather than once per delivery
_entries: dict[tuple[str, int], bytes] = {}
_ENTRIES_MAX = 1 << 14


def _entry(tag: str, key: int) -> bytes:
    got = _entries.get((tag, key))
    if got is None:
        if len(_entries) >= _ENTRIES_MAX:
            _entries.clear()
        got = _entries[(tag, key)] = composite.entry(tag, key)
    return got


def _nothing() -> None:
    pass


def frame_id(frame: bytes) -> int:
    """The entry id of a frame as the ring and history pages hold it (``id:`` first)."""
    return ids.parse(frame[4:frame.index(b"\n")])


class MultiReader:
    """A client's place in every topic of its set: ``readers[i]`` follows ``set.topics[i]``.

    ``awake`` is the connection's: while its task runs, the feed sends it nothing (it hands
    each cursor back to the task instead), so only one writer ever builds its ids and the
    order of its frames is the order they were built in."""

    __slots__ = ("_index", "_marks", "awake", "entries", "outbox", "readers", "set", "wake")

    def __init__(self, topic_set: TopicSet, readers: Sequence[Reader]) -> None:
        self.set = topic_set
        self.readers = list(readers)
        self._index = {id(r): i for i, r in enumerate(self.readers)}
        self._marks = [wire.ID_FIELD + t.encode() + composite.MARK.encode()
                       for t in topic_set.topics]
        self.entries = [_entry(g, r.last_id) for g, r in zip(topic_set.tags, self.readers,
                                                              strict=True)]
        self.awake = True
        # frames the feed's fan-out built for this client, not handed to the server yet: what
        # several topics bring in one read goes out in one write (``relay.node.fanout.flush``)
        self.outbox: list[bytes] = []
        # what runs the connection's task (the node sets it), its cursors left where they are
        self.wake: Callable[[], None] = _nothing

    def take_outbox(self) -> bytes:
        """What the fan-out queued for this client, as one body; the outbox is left empty."""
        outbox = self.outbox
        body = outbox[0] if len(outbox) == 1 else b"".join(outbox)
        outbox.clear()
        return body

    def index(self, reader: Reader) -> int:
        return self._index[id(reader)]

    @property
    def last_event_id(self) -> str:
        """The composite id of everything sent so far (without an event's topic)."""
        return composite.join(b"", self.entries).decode()

    def start_frame(self) -> bytes:
        """A frame that sets the browser's last event id without dispatching an event."""
        return wire.encode_position(composite.join(b"", self.entries))

    def _line(self, i: int, key: int) -> bytes:
        entries = self.entries
        entries[i] = _entry(self.set.tags[i], key)
        return self._marks[i] + b".".join(entries) + b"\n"

    def reframe(self, i: int, keys: Sequence[int], frames: Sequence[bytes]) -> bytes:
        """Frames of topic ``i`` (ids ``keys``) with composite ids, joined; the topic's
        position moves to the last of them."""
        parts: list[bytes | memoryview] = []
        for key, frame in zip(keys, frames, strict=True):
            parts.append(self._line(i, key))
            parts.append(memoryview(frame)[frame.index(b"\n") + 1:])
        return b"".join(parts)

    def hold(self, i: int, key: int) -> None:
        """Keep topic ``i`` at ``key`` in the ids until its own frames move it: the client's
        position in a stream that went back, until the reset that says so is sent (the ids of
        the frames before it must not carry the lower id yet: a browser that reconnected
        after them would never hear of the reset)."""
        self.entries[i] = _entry(self.set.tags[i], key)

    def retag_reset(self, i: int, frame: bytes) -> bytes:
        """An ``ssedge.reset`` frame of topic ``i``, its data naming the topic."""
        data = frame[frame.index(b"\ndata: ") + 7:-2]
        topic = self.set.topics[i].encode()
        return (self._line(i, frame_id(frame)) + _RESET_LINE + b'{"topic":"' + topic + b'",'
                + data[1:] + b"\n\n")

    # -- what the connection's task sends --------------------------------------------------

    def ring_chunk(self, i: int, ring: Ring, max_bytes: int) -> tuple[bytes, int]:
        """Topic ``i``'s next ring frames (``Reader.next_chunk``), re-framed, and how many."""
        reader = self.readers[i]
        _, count = reader.next_chunk(ring, max_bytes)
        if not count:
            return b"", 0
        stop = reader.cursor
        return self.reframe(i, ring.ids(stop - count, stop), ring.frames(stop - count, stop)), \
            count

    def page_frames(self, i: int, page: HistoryPage, *, fresh: bool = False) -> list[bytes]:
        """The frames of a history page of topic ``i`` to send (``Reader.take_page``),
        re-framed; its resets (always first) name the topic."""
        reader = self.readers[i]
        catch_up = reader.catch_up
        assert catch_up is not None
        resets = catch_up.resets
        frames = reader.take_page(page, fresh=fresh)
        new_resets = catch_up.resets - resets
        out = []
        for n, frame in enumerate(frames):
            if n < new_resets:
                out.append(self.retag_reset(i, frame))
            else:
                out.append(self.reframe(i, (frame_id(frame),), (frame,)))
        return out

    # -- what the feed sends to a parked connection --------------------------------------

    def ring_span(self, reader: Reader, span: Span) -> bytes:
        """The frames of ``span`` (of ``reader``'s topic), re-framed; its last id moves to the
        last of them (the caller checked the first is above it)."""
        i = self._index[id(reader)]
        entries = self.entries
        mark = self._marks[i]
        keys, new, rests = span.keys, span.entries, span.rests
        reader.last_id = keys[-1]
        if len(keys) == 1:  # most sends once clients keep up
            entries[i] = new[0]
            return b"".join((mark, b".".join(entries), b"\n", rests[0]))
        parts: list[bytes] = []
        for entry, rest in zip(new, rests, strict=True):
            entries[i] = entry
            parts += (mark, b".".join(entries), b"\n", rest)
        return b"".join(parts)


class Span:
    """Ring frames ``start`` to ``stop`` of one topic, cut once for every client they go to
    in one pass of the feed's fan-out: their ids, their entries in composite ids (the same
    for every client), and the rest of each frame after its ``id:`` line."""

    __slots__ = ("entries", "keys", "rests", "stop")

    def __init__(self, topic_tag: str, ring: Ring, start: int, stop: int) -> None:
        self.stop = stop
        self.keys = ring.ids(start, stop)
        self.entries = [_entry(topic_tag, key) for key in self.keys]
        self.rests = [frame[frame.index(b"\n") + 1:] for frame in ring.frames(start, stop)]
