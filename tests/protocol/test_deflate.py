"""relay/protocol/deflate.py: a topic compressed once, every client's bytes decode to its own
stream. The model test drives the real sans-I/O code (the ring, the readers, the shared
compressor) through joins, resumes, catch-ups, lagging clients, notices, heartbeats, epoch
boundaries and ends, and decodes each client's bytes with the standard library as they
arrive."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.protocol import ids, resume
from relay.protocol.deflate import (
    FINAL_BLOCK,
    GZIP_HEADER,
    Coding,
    Encoding,
    Shared,
    negotiate,
    stored,
)
from relay.protocol.resume import Reader
from relay.protocol.ring import Ring
from relay.protocol.wire import encode_comment, encode_event, encode_position, encode_retry

KEEPALIVE = encode_comment("keepalive")
BOTH = (Encoding.GZIP, Encoding.DEFLATE)


def decoder(encoding: Encoding) -> zlib._Decompress:
    return zlib.decompressobj(31 if encoding is Encoding.GZIP else -15)


# -- negotiation and blocks ---------------------------------------------------------------

@pytest.mark.parametrize(("header", "allowed", "chosen"), [
    ("gzip, deflate, br, zstd", BOTH, Encoding.GZIP),  # Chromium's
    ("deflate, gzip", BOTH, Encoding.GZIP),  # equal weights: gzip first
    ("gzip;q=0.5, deflate", BOTH, Encoding.DEFLATE),
    ("gzip;q=0, deflate;q=0", BOTH, None),
    ("br", BOTH, None),
    ("identity", BOTH, None),
    ("*", BOTH, Encoding.GZIP),
    ("*;q=0.2, gzip;q=0", BOTH, Encoding.DEFLATE),
    ("GZIP", BOTH, Encoding.GZIP),
    ("gzip;q=x", BOTH, None),
    ("gzip, deflate", (Encoding.DEFLATE,), Encoding.DEFLATE),
    ("gzip, deflate", (), None),
    ("", BOTH, None),
])
def test_negotiate(header: str, allowed: tuple[Encoding, ...], chosen: Encoding | None) -> None:
    assert negotiate(header, allowed) is chosen


@pytest.mark.parametrize("size", [0, 1, 65535, 65536, 200_000])
def test_stored_blocks_decode_whole_and_a_byte_at_a_time(size: int) -> None:
    plain = bytes(i % 251 for i in range(size))
    body = stored(plain) + FINAL_BLOCK
    d = zlib.decompressobj(-15)
    assert d.decompress(body) == plain and d.eof and not d.unused_data
    d = zlib.decompressobj(-15)
    assert b"".join(d.decompress(body[i:i + 1]) for i in range(len(body))) == plain
    assert d.eof


def test_a_gzip_stream_ends_complete_but_for_its_trailer() -> None:
    coding = Coding(Encoding.GZIP)
    body = coding.own(b"retry: 1\n\n") + coding.finish(b"retry: 2\n\n")
    assert body.startswith(GZIP_HEADER)
    d = zlib.decompressobj(31)
    assert d.decompress(body) == b"retry: 1\n\nretry: 2\n\n"
    assert not d.eof  # no CRC-32 and size: a truncated gzip member, and nothing else wrong
    assert d.flush() == b""


def test_a_client_joins_the_shared_bytes_at_an_epoch_and_shares_them() -> None:
    ring = Ring(100, 1 << 20)
    shared = Shared(epoch_bytes=1 << 20, epoch_s=10.0)
    frames = [encode_event(b'{"n":%d}' % n, id=f"{n}-0") for n in range(1, 7)]
    ring.extend([ids.parse("1-0")], frames[:1])
    first = Reader(ring.head, ring.last_id)
    shared.sync(ring, 0.0)  # the compressor starts at the head: an epoch
    a, b = Coding(Encoding.GZIP), Coding(Encoding.DEFLATE)
    a.own(b"")
    ring.extend([ids.parse("2-0")], frames[1:2])
    _, count = shared.next_chunk(a, first, ring, 1 << 16, 1.0)
    assert count == 1 and a.segment == shared.head
    late = Reader(ring.head, ring.last_id)  # mid-epoch: on its own until the next one
    b.own(b"")
    assert shared.next_chunk(b, late, ring, 1 << 16, 1.0) == (b"", 0)
    assert shared.waiting  # it asked: the next wake-up after epoch_s ends the epoch
    ring.extend([ids.parse("3-0")], frames[2:3])
    shared.next_chunk(a, first, ring, 1 << 16, 11.0)  # ends the epoch
    own_body, _ = shared.next_chunk(b, late, ring, 1 << 16, 11.0)
    assert own_body == stored(frames[2]) and b.segment is None
    assert not shared.waiting
    ring.extend([ids.parse("4-0")], frames[3:4])
    one, _ = shared.next_chunk(a, first, ring, 1 << 16, 12.0)
    two, _ = shared.next_chunk(b, late, ring, 1 << 16, 12.0)
    assert one is two  # the same bytes object for both


# -- the model ----------------------------------------------------------------------------

@dataclass
class Client:
    name: int
    coding: Coding
    reader: Reader
    start: int  # the stream it must decode to: every frame after this id
    decoder: zlib._Decompress
    decoded: bytes = b""
    parked: bool = False
    ticks: int = 0
    notice: bytes = b""
    ended: bool = False
    notices: int = 0
    sent: list[int] = field(default_factory=list)


class Model:
    def __init__(self, epoch_bytes: int, epoch_s: float, send_max: int) -> None:
        self.ring = Ring(12, 3000)
        self.shared = Shared(level=6, epoch_bytes=epoch_bytes, epoch_s=epoch_s,
                             max_segments=12, max_bytes=3000, now=0.0)
        self.send_max = send_max
        self.now = 0.0
        self.ticks = 0
        self.log: list[tuple[int, bytes]] = []  # every frame ever appended (Redis)
        self.clients: list[Client] = []
        self.next_ms = 1
        self.ended: list[Client] = []

    # -- the feed ------------------------------------------------------------------------

    def publish(self, sizes: list[int]) -> None:
        keys, frames = [], []
        for size in sizes:
            key = ids.parse(f"{self.next_ms}-0")
            data = (b"%d:" % self.next_ms) + bytes(97 + (i * 7 + self.next_ms) % 26
                                                    for i in range(size))
            frame = encode_event(data, id=ids.format(key))
            self.next_ms += 1
            keys.append(key)
            frames.append(frame)
            self.log.append((key, frame))
        self.ring.extend(keys, frames)
        self.fan_out()

    def fan_out(self) -> None:
        """relay.node.fanout._send for compressed connections (``_send_shared``)."""
        ring, shared = self.ring, self.shared
        shared.sync(ring, self.now)
        shared.trim(ring)
        for c in self.clients:
            if not c.parked or c.ended:
                continue
            cursor = c.reader.cursor
            if cursor == ring.head:
                continue
            taken = shared.take(c.coding, ring, cursor, c.reader.last_id, self.send_max)
            if taken is None or not taken[0] or len(taken[0]) > self.send_max:
                c.parked = False
                continue
            body, end = taken
            self.deliver(c, body)
            if end > cursor:
                c.reader.cursor = end
                c.reader.last_id = ring.id_at(end - 1)
            if end != ring.head:
                c.parked = False

    # -- a stream's task -----------------------------------------------------------------

    def join(self, after: int | None, backfill: int, encoding: Encoding) -> None:
        plan = resume.plan(self.ring, after, backfill=backfill if after is None else 0)
        reader = Reader(plan.cursor, plan.last_id)
        reader.catch_up = plan.catch_up()
        coding = Coding(encoding)
        start = after if after is not None else plan.last_id
        c = Client(len(self.clients), coding, reader, start, decoder(encoding),
                   ticks=self.ticks)
        self.clients.append(c)
        first = encode_retry(3000) + plan.reset + encode_position(ids.format(plan.last_id))
        self.deliver(c, coding.own(first))

    def step(self, c: Client) -> bool:
        """One turn of relay.node.stream._follow; False when it parks."""
        if c.ended or c.parked:
            return False
        reader = c.reader
        if reader.catch_up is not None:
            catch_up = reader.catch_up
            frames = [f for k, f in self.log if catch_up.after < k <= catch_up.until]
            if frames:
                self.deliver(c, c.coding.own(b"".join(frames)))
            reader.last_id = max(reader.last_id, catch_up.until)
            reader.catch_up = None
            return True
        chunk, _ = self.shared.next_chunk(c.coding, reader, self.ring, self.send_max, self.now)
        if chunk:
            c.ticks = self.ticks
            self.deliver(c, chunk)
        elif reader.catch_up is not None:
            pass
        elif c.notice:
            notice, c.notice = c.notice, b""
            self.deliver(c, c.coding.own(notice))
        elif c.ticks != self.ticks:
            c.ticks = self.ticks
            if not self.shared.beat(c.coding, self.ring, self.ticks, self.now):
                self.deliver(c, c.coding.own(KEEPALIVE))
        else:
            c.parked = True
            return False
        return True

    def run(self, c: Client) -> None:
        for _ in range(10_000):
            if not self.step(c):
                return
        raise AssertionError("a task that never parks")

    def tick(self) -> None:
        self.ticks += 1
        for c in self.clients:
            c.parked = False  # Hub.tick wakes every parked connection

    def end(self, c: Client) -> None:
        self.deliver(c, c.coding.finish(encode_retry(500)))
        c.ended = True
        if c.coding.encoding is Encoding.DEFLATE:
            assert c.decoder.eof and not c.decoder.unused_data

    # -- what each client decodes --------------------------------------------------------

    def deliver(self, c: Client, body: bytes) -> None:
        assert not c.ended
        c.decoded += c.decoder.decompress(body)
        # decodable as it arrives: every send decodes whole, up to the end of a frame
        assert c.decoded.endswith(b"\n\n"), c.decoded[-200:]
        assert not c.decoder.unconsumed_tail
        got = self.events(c)
        expected = [f for k, f in self.log if k > c.start]
        assert got == expected[:len(got)], (c.name, len(got))

    @staticmethod
    def events(c: Client) -> list[bytes]:
        units = c.decoded.split(b"\n\n")[:-1]
        return [u + b"\n\n" for u in units if b"\ndata:" in u]

    def settle(self) -> None:
        """Every client's task runs until it parks, and the fan-out has nothing left."""
        for _ in range(100):
            for c in self.clients:
                self.run(c)
            self.fan_out()
            if all(c.parked or c.ended for c in self.clients):
                return

    def check_complete(self) -> None:
        for c in self.clients:
            if c.ended:
                continue
            expected = [f for k, f in self.log if k > c.start]
            assert self.events(c) == expected, c.name
            unit = c.decoded.split(b"\n\n")
            assert unit[-1] == b""


ops = st.one_of(
    st.tuples(st.just("publish"), st.lists(st.integers(1, 400), min_size=1, max_size=5)),
    st.tuples(st.just("publish"), st.just([70_000])),
    st.tuples(st.just("join"), st.integers(0, 40), st.integers(0, 12), st.sampled_from(BOTH)),
    st.tuples(st.just("step"), st.integers(0, 20)),
    st.tuples(st.just("run"), st.integers(0, 20)),
    st.tuples(st.just("tick")),
    st.tuples(st.just("time"), st.floats(0.1, 3.0)),
    st.tuples(st.just("notice"), st.integers(0, 20)),
    st.tuples(st.just("end"), st.integers(0, 20), st.booleans()),
    st.tuples(st.just("settle")),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(200, 5000), st.floats(0.5, 10.0), st.sampled_from([1024, 4096, 65536]),
       st.lists(ops, min_size=1, max_size=60))
def test_every_client_decodes_exactly_its_own_stream(epoch_bytes: int, epoch_s: float,
                                                     send_max: int,
                                                     steps: list[tuple[object, ...]]) -> None:
    m = Model(epoch_bytes, epoch_s, send_max)
    m.publish([50, 60])
    m.join(None, 0, Encoding.GZIP)
    for op in steps:
        kind = op[0]
        live = [c for c in m.clients if not c.ended]
        if kind == "publish":
            m.publish(op[1])  # type: ignore[arg-type]
        elif kind == "join":
            _, pick, backfill, encoding = op
            if pick == 0 or not m.log:
                m.join(None, backfill, encoding)  # type: ignore[arg-type]
            else:  # resume after an id of the stream, perhaps long gone from the ring
                m.join(m.log[(pick - 1) % len(m.log)][0], 0, encoding)  # type: ignore[arg-type]
        elif kind in ("step", "run", "notice", "end") and live:
            c = live[op[1] % len(live)]  # type: ignore[operator]
            if kind == "step":
                m.step(c)
            elif kind == "run":
                m.run(c)
            elif kind == "notice":
                c.notices += 1
                c.notice = encode_comment(f"notice {c.notices}")
                c.parked = False
            else:
                m.end(c)
                if op[2]:  # it comes back after the last event it decoded
                    got = m.events(c)
                    last = ids.parse(got[-1].split(b"\n")[0][4:].decode()) if got else c.start
                    m.join(last, 0, c.coding.encoding)
        elif kind == "tick":
            m.tick()
        elif kind == "time":
            m.now += op[1]  # type: ignore[operator]
        elif kind == "settle":
            m.settle()
        assert len(m.shared.segments()) <= 12 and m.shared.nbytes <= 3000 + 70_100
    m.settle()
    m.check_complete()
    m.tick()
    m.now += 20.0
    m.publish([30])
    m.settle()
    m.check_complete()
    for c in m.clients:
        if not c.ended:
            m.end(c)


def test_shared_bytes_are_what_most_clients_get() -> None:
    """A hundred clients, a thousand wake-ups: after the first epoch every client is on the
    shared bytes, each wake-up compressed once."""
    m = Model(epoch_bytes=4096, epoch_s=1.0, send_max=65536)
    m.ring = Ring(10_000, 1 << 24)
    m.shared = Shared(epoch_bytes=4096, epoch_s=1.0, now=0.0)
    for _ in range(100):
        m.join(None, 0, Encoding.GZIP)
    m.settle()
    for n in range(1000):
        m.now += 0.1
        m.publish([180])
        if n % 150 == 0:
            m.tick()
        m.settle()
    m.check_complete()
    assert all(c.coding.segment is not None for c in m.clients)
    shared = m.shared
    assert shared.bytes_out * 3 < shared.plain_in
