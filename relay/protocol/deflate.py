"""A topic's stream compressed once and shared by its clients: plain state, no I/O.

Every up-to-date client of a topic is sent the same frames, so the same compressed bytes can
go to all of them. One raw-deflate compressor per topic (``Shared``) compresses what the ring
gets, one *segment* per wake-up, each ending with a sync flush: the segment ends on a byte
boundary and a decoder that has every segment before it turns it into exactly its frames, at
once (a browser dispatches the events as they arrive).

A client may only be sent the shared segments in order, from a point where the bytes before
do not matter to them. That point is an *epoch* start: a segment ends with a full flush
instead, and what the compressor writes after it refers to nothing before it. A full flush
costs ratio (the next bytes start with no history: 3.9x instead of 4.4x for 5 s epochs of a
ticker feed at 10 events/s), so epochs end only while a client waits to join (one on its own
asked for the shared bytes since the last epoch), once the epoch is ``epoch_s`` old or has
``epoch_bytes`` of frames: no client waits longer than that, and a topic whose clients are
all on the shared bytes keeps its compressor's history for ever.

Each client has its own ``Coding``: the gzip header it needs (or none for raw ``deflate``), and
whether it is on the shared stream (the next segment it gets) or on its own. On its own, every
byte it is sent (the first ``retry:``, a catch-up, frames while it waits for an epoch, a reset,
a notice) goes out as deflate *stored* blocks: byte-aligned, copied, never compressed, and
referenced by nothing it will be sent later (its next shared segment starts an epoch). A client
may leave the shared stream at any moment (its own bytes follow the sync-flushed segment it
had), but may join it only at an epoch start: anything sent to one client alone inside an epoch
would shift what the shared back-references point at.

Heartbeats are per topic: a ``: keepalive`` compressed through the shared compressor as a
segment of its own (``Shared.heartbeat``), so that a shared client stays on it.

A stream ends with an empty final stored block: a complete deflate stream. A gzip stream has
no trailer (its CRC-32 would have to be computed per client over every byte: Python's zlib
has no crc32_combine); a client that checks it sees a truncated gzip stream at the end of a
stream that ends anyway (an EventSource reconnects as after any end).
"""

from __future__ import annotations

import zlib
from bisect import bisect_right
from collections.abc import Sequence
from enum import Enum

from relay.protocol.resume import Reader
from relay.protocol.ring import Ring

_MAX_STORED = 65535  # a stored block's LEN is 16 bits

# gzip header (RFC 1952): magic, deflate, no flags, no mtime, no extra flags, OS unknown
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
# an empty stored block with BFINAL set: the end of a deflate stream
FINAL_BLOCK = b"\x01\x00\x00\xff\xff"


class Encoding(Enum):
    """A Content-Encoding a stream may be sent with; the value is its HTTP name."""

    GZIP = "gzip"
    DEFLATE = "deflate"  # raw deflate (RFC 1951), as browsers decode it


# preferred first, when a client accepts several with the same weight
PREFERENCE = (Encoding.GZIP, Encoding.DEFLATE)


def negotiate(accept_encoding: str, allowed: Sequence[Encoding]) -> Encoding | None:
    """The encoding to send a stream with, from an ``Accept-Encoding`` header: the best
    weighted of ``allowed`` (gzip before deflate at equal weight), or None (identity)."""
    weights: dict[str, float] = {}
    for item in accept_encoding.split(","):
        name, _, params = item.strip().partition(";")
        weight = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = 0.0
        name = name.strip().lower()
        if name:
            weights[name] = weight
    best: Encoding | None = None
    best_weight = 0.0
    for encoding in PREFERENCE:
        if encoding not in allowed:
            continue
        weight = weights.get(encoding.value, weights.get("*", 0.0))
        if weight > best_weight:
            best, best_weight = encoding, weight
    return best


def stored(plain: bytes) -> bytes:
    """``plain`` as non-final deflate stored blocks (the output before is byte-aligned)."""
    out = bytearray()
    for start in range(0, len(plain), _MAX_STORED):
        piece = plain[start:start + _MAX_STORED]
        n = len(piece)
        out += bytes((0, n & 0xFF, n >> 8, ~n & 0xFF, (~n >> 8) & 0xFF))
        out += piece
    return bytes(out)


class Coding:
    """One client's side of a compressed stream: its header, then either its own stored
    blocks or the shared segments from ``segment`` on (None: on its own)."""

    __slots__ = ("encoding", "segment", "started")

    def __init__(self, encoding: Encoding) -> None:
        self.encoding = encoding
        self.segment: int | None = None  # the next shared segment it is sent, when on them
        self.started = False

    def _head(self) -> bytes:
        if self.started:
            return b""
        self.started = True
        return GZIP_HEADER if self.encoding is Encoding.GZIP else b""

    def own(self, plain: bytes) -> bytes:
        """``plain`` for this client alone: it leaves the shared stream until an epoch."""
        self.segment = None
        return self._head() + stored(plain)

    def finish(self, plain: bytes = b"") -> bytes:
        """The last bytes of the stream: ``plain``, then the end of the deflate stream."""
        self.segment = None
        return self._head() + stored(plain) + FINAL_BLOCK


class Shared:
    """One topic's compressor and the segments it wrote, bounded like the ring: segments whose
    frames left the ring are dropped, and at most ``max_segments`` / ``max_bytes`` are kept.

    Segment ``n`` holds the frames ``starts[n]`` to ``ends[n]`` of the ring (none for a
    heartbeat). ``epochs`` maps a ring position to the segment that starts an epoch there,
    including the one the next segment will be when the last one ended an epoch."""

    def __init__(self, *, level: int = 6, epoch_bytes: int = 256 * 1024,
                 epoch_s: float = 5.0, max_segments: int = 10_000,
                 max_bytes: int = 16 * 1024 * 1024, heartbeat: bytes = b": keepalive\n\n",
                 now: float = 0.0) -> None:
        self.level = level
        self.epoch_bytes = epoch_bytes
        self.epoch_s = epoch_s
        self.max_segments = max_segments
        self.max_bytes = max_bytes
        self.heartbeat_frame = heartbeat
        self._z = zlib.compressobj(level, zlib.DEFLATED, -15)
        self._segments: list[bytes] = []
        self.starts: list[int] = []
        self.ends: list[int] = []
        self._base = 0  # segment number of _segments[0]
        self.head = 0  # the number the next segment gets
        self.seq: int | None = None  # the ring position compressed up to (None: not yet)
        self.epochs: dict[int, int] = {}
        self._epoch_plain = 0
        self._epoch_began = now
        self.waiting = False  # a client on its own asked for the shared bytes this epoch
        self.nbytes = 0  # compressed bytes held
        self.plain_in = 0  # counters: frames compressed, and what they came to
        self.bytes_out = 0
        self.beats = 0  # the last heartbeat tick compressed
        self.clients = 0  # compressed streams reading it (kept by their relay)
        self.epochs_ended = 0  # full flushes: what clients waiting to join cost the ratio
        self._memo: dict[tuple[int, int], tuple[bytes, int, int]] = {}

    # -- what the feed's side does -------------------------------------------------------

    def sync(self, ring: Ring, now: float) -> None:
        """Compress the ring's frames not compressed yet, as one segment."""
        seq = self.seq
        head = ring.head
        if seq is None or seq < ring.tail:
            # the first segment, or frames left the ring before they were compressed: the
            # shared stream starts over (no client on it can go on: its next frame is gone)
            start = ring.tail if seq is not None else head
            self._z = zlib.compressobj(self.level, zlib.DEFLATED, -15)
            self._epoch_plain, self._epoch_began = 0, now
            self.seq = seq = start
            self.epochs[start] = self.head
        if seq >= head:
            return
        plain = b"".join(ring.frames(seq, head))
        self._append(plain, seq, head, now)

    def heartbeat(self, ring: Ring, tick: int, now: float) -> None:
        """A keep-alive for every shared client, once per heartbeat ``tick``."""
        if tick == self.beats:
            return
        self.beats = tick
        self.sync(ring, now)
        assert self.seq is not None
        self._append(self.heartbeat_frame, self.seq, self.seq, now)

    def _append(self, plain: bytes, start: int, end: int, now: float) -> None:
        z = self._z
        self._epoch_plain += len(plain)
        ends_epoch = self.waiting and (self._epoch_plain >= self.epoch_bytes
                                       or now - self._epoch_began >= self.epoch_s)
        body = z.compress(plain) + z.flush(zlib.Z_FULL_FLUSH if ends_epoch else zlib.Z_SYNC_FLUSH)
        self._segments.append(body)
        self.starts.append(start)
        self.ends.append(end)
        self.head += 1
        self.seq = end
        self.nbytes += len(body)
        self.plain_in += len(plain)
        self.bytes_out += len(body)
        if ends_epoch:
            self._epoch_plain, self._epoch_began = 0, now
            self.epochs[end] = self.head
            self.waiting = False
            self.epochs_ended += 1
        self._memo.clear()

    def trim(self, ring: Ring) -> None:
        """Drop the segments over the bounds or whose frames the ring no longer holds."""
        dead = 0
        segments, starts = self._segments, self.starts
        count = len(segments)
        while dead < count and (count - dead > self.max_segments or self.nbytes > self.max_bytes
                                or starts[dead] < ring.tail):
            self.nbytes -= len(segments[dead])
            dead += 1
        if not dead:
            return
        first = self._base + dead
        del segments[:dead], starts[:dead], self.ends[:dead]
        self._base = first
        for position in [p for p, n in self.epochs.items() if n < first]:
            del self.epochs[position]
        self._memo.clear()

    # -- what a client's side does -------------------------------------------------------

    def take(self, coding: Coding, ring: Ring, cursor: int, last_id: int,
             max_bytes: int) -> tuple[bytes, int] | None:
        """The shared bytes for a client at ring position ``cursor`` that has every id up to
        ``last_id``: the segments from its next one, joined up to ``max_bytes`` (at least
        one), and the ring position after them; ``b""`` when it is on the shared stream and
        there is nothing new. None when it must be sent its own bytes (``Coding.own``): it
        is not on the shared stream and not at an epoch start, or the shared stream does not
        go on from where it is (its next frames left the ring, or it has them already)."""
        segment = coding.segment
        if segment is None:
            segment = self.epochs.get(cursor)
            if segment is None:
                return None
        if segment < self._base or segment > self.head:
            coding.segment = None
            return None
        if segment == self.head:
            if self.seq != cursor:
                coding.segment = None
                return None
            coding.segment = segment
            return b"", cursor
        i = segment - self._base
        start = self.starts[i]
        if start != cursor or (start < self.ends[i] and (
                cursor < ring.tail or ring.id_at(cursor) <= last_id)):
            coding.segment = None
            return None
        body, next_segment, end = self.span(segment, max_bytes)
        coding.segment = next_segment
        if not coding.started:
            coding.started = True
            if coding.encoding is Encoding.GZIP:
                body = GZIP_HEADER + body
        return body, end

    def next_chunk(self, coding: Coding, reader: Reader, ring: Ring, max_bytes: int,
                   now: float) -> tuple[bytes, int]:
        """What a stream's task sends next from the ring, and how many events
        (``Reader.next_chunk``): the shared bytes when it may have them, else its own, up to
        the next epoch start, where it joins the shared ones."""
        cursor = reader.cursor
        if reader.catch_up is None:
            self.sync(ring, now)
            self.trim(ring)
            taken = self.take(coding, ring, cursor, reader.last_id, max_bytes)
            if taken is not None:
                body, end = taken
                if end > cursor:
                    reader.last_id = ring.id_at(end - 1)
                    reader.cursor = end
                return body, end - cursor
            stop = self.next_epoch(cursor)
            if stop is None:
                self.waiting = True  # the next epoch comes for it
            elif ring.tail <= cursor < stop <= ring.head:
                max_bytes = min(max_bytes, ring.lag_bytes(cursor) - ring.lag_bytes(stop))
        chunk, count = reader.next_chunk(ring, max_bytes)
        return (coding.own(chunk) if chunk else b""), count

    def beat(self, coding: Coding, ring: Ring, tick: int, now: float) -> bool:
        """A heartbeat: for a client on the shared bytes, the topic's keep-alive compressed
        once (``next_chunk`` sends it); False for one on its own (it sends its own)."""
        if coding.segment is None:
            return False
        self.heartbeat(ring, tick, now)
        self.trim(ring)
        return True

    def plain(self, ring: Ring, first: int, stop: int) -> bytes:
        """What segments ``first`` to ``stop`` (held) decode to; for tests."""
        out = []
        for i in range(first - self._base, stop - self._base):
            start, end = self.starts[i], self.ends[i]
            out.append(self.heartbeat_frame if start == end else b"".join(ring.frames(start, end)))
        return b"".join(out)

    def span(self, segment: int, max_bytes: int) -> tuple[bytes, int, int]:
        """Segments from ``segment`` (held) joined up to ``max_bytes`` (at least one), the
        segment after them and the ring position after them; the same ``bytes`` for every
        client at the same segment until the next append."""
        memo = self._memo.get((segment, max_bytes))
        if memo is not None:
            return memo
        i = segment - self._base
        segments = self._segments
        j = i + 1
        total = len(segments[i])
        while j < len(segments) and total + len(segments[j]) <= max_bytes:
            total += len(segments[j])
            j += 1
        body = segments[i] if j == i + 1 else b"".join(segments[i:j])
        out = self._memo[(segment, max_bytes)] = (body, self._base + j, self.ends[j - 1])
        return out

    def next_epoch(self, cursor: int) -> int | None:
        """The first ring position after ``cursor`` where a client on its own may join."""
        later = sorted(p for p in self.epochs if p > cursor)
        return later[0] if later else None

    def segments(self) -> list[tuple[int, int, bytes]]:
        """The segments held: (first frame, frame after the last, bytes); for tests."""
        return list(zip(self.starts, self.ends, self._segments, strict=True))

    def segment_index(self, position: int) -> int:
        """The number of the first held segment starting after ``position``; for tests."""
        return self._base + bisect_right(self.starts, position)
