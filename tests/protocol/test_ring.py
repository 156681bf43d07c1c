from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.protocol.ring import Ring


def frames(ids: list[int], size: int = 10) -> list[bytes]:
    return [b"%0*d" % (size, i) for i in ids]


def test_read_returns_frames_after_cursor_joined() -> None:
    ring = Ring(100, 10_000)
    ring.extend([1, 2, 3], frames([1, 2, 3]))
    chunk, cursor = ring.read(ring.tail, 1 << 20)
    assert chunk == b"".join(frames([1, 2, 3]))
    assert cursor == ring.head == 3
    assert ring.read(cursor, 1 << 20) == (b"", 3)


def test_single_pending_frame_is_the_same_object() -> None:
    ring = Ring(10, 1000)
    frame = b"id: 1-0\ndata: x\n\n"
    ring.extend([1], [frame])
    assert ring.read(0, 100)[0] is frame


def test_read_caps_chunk_size_but_sends_at_least_one_frame() -> None:
    ring = Ring(100, 10_000)
    ring.extend(list(range(1, 11)), frames(list(range(1, 11))))
    chunk, cursor = ring.read(0, 35)
    assert (len(chunk), cursor) == (30, 3)
    chunk, cursor = ring.read(0, 5)
    assert (len(chunk), cursor) == (10, 1)


def test_event_bound_drops_oldest_and_raises_floor() -> None:
    ring = Ring(3, 10_000)
    ring.extend([1, 2, 3, 4, 5], frames([1, 2, 3, 4, 5]))
    assert len(ring) == 3
    assert list(ring.ids(ring.tail, ring.head)) == [3, 4, 5]
    assert ring.floor == 2
    assert ring.covers(2) and not ring.covers(1)


def test_byte_bound_keeps_total_at_or_under_limit() -> None:
    ring = Ring(1000, 35)
    ring.extend(list(range(1, 8)), frames(list(range(1, 8))))
    assert ring.nbytes == 30
    assert list(ring.ids(ring.tail, ring.head)) == [5, 6, 7]


def test_newest_frame_stays_even_if_over_byte_bound() -> None:
    ring = Ring(10, 5)
    ring.extend([1, 2], frames([1, 2], size=50))
    assert list(ring.ids(ring.tail, ring.head)) == [2]
    assert ring.floor == 1


def test_position_after_bisects_ids() -> None:
    ring = Ring(100, 10_000)
    ring.extend([10, 20, 30], frames([10, 20, 30]))
    assert ring.position_after(5) == 0
    assert ring.position_after(10) == 1
    assert ring.position_after(15) == 1
    assert ring.position_after(30) == 3
    assert ring.position_after(99) == 3


def test_prime_sets_floor_and_keeps_oldest_for_backfill() -> None:
    ring = Ring(100, 10_000)
    ring.prime([10, 20], frames([10, 20]), floor=10)
    assert ring.covers(10) and not ring.covers(9)
    assert ring.position_after(10) == 1
    assert ring.last_id == 20
    with pytest.raises(ValueError):
        ring.prime([30], frames([30]), floor=0)


def test_lag_bytes() -> None:
    ring = Ring(100, 10_000)
    ring.extend([1, 2, 3], frames([1, 2, 3]))
    assert ring.lag_bytes(0) == 30
    assert ring.lag_bytes(2) == 10
    assert ring.lag_bytes(3) == 0


def test_compaction_keeps_absolute_cursors_valid() -> None:
    ring = Ring(100, 1 << 20)
    cursor = 0
    seen: list[int] = []
    for start in range(1, 5000, 7):
        batch = list(range(start, start + 7))
        ring.extend(batch, frames(batch))
        if cursor < ring.tail:
            cursor = ring.tail
            seen.clear()
        while cursor < ring.head:
            _, nxt = ring.read(cursor, 1 << 20)
            seen.extend(ring.ids(cursor, nxt))
            cursor = nxt
    assert seen[-1] == ring.last_id
    assert len(ring._frames) <= 2 * 100 + 64  # dead frames are released


@given(
    batches=st.lists(st.lists(st.integers(1, 40), min_size=0, max_size=20), max_size=40),
    max_events=st.integers(1, 50),
    max_bytes=st.integers(1, 600),
    reads=st.lists(st.integers(1, 200), min_size=1, max_size=10),
)
def test_ring_invariants(
    batches: list[list[int]], max_events: int, max_bytes: int, reads: list[int]
) -> None:
    ring = Ring(max_events, max_bytes)
    next_id = 1
    all_ids: list[int] = []
    sizes: dict[int, int] = {}
    for batch in batches:
        ids = list(range(next_id, next_id + len(batch)))
        next_id += len(batch)
        payload = [b"x" * n for n in batch]
        sizes.update(zip(ids, batch, strict=True))
        ring.extend(ids, payload)
        all_ids.extend(ids)
        live = list(ring.ids(ring.tail, ring.head))
        # the ring holds a suffix of everything appended, within both bounds
        assert live == all_ids[len(all_ids) - len(live) :]
        assert len(live) <= max_events
        if live:
            assert ring.nbytes == sum(sizes[i] for i in live)
            assert ring.nbytes <= max_bytes or len(live) == 1
            dropped = len(all_ids) - len(live)
            assert ring.floor == (all_ids[dropped - 1] if dropped else 0)
        for cap in reads:
            cursor = ring.tail
            got: list[int] = []
            while cursor < ring.head:
                chunk, nxt = ring.read(cursor, cap)
                assert nxt > cursor
                assert len(chunk) == sum(sizes[i] for i in ring.ids(cursor, nxt))
                got.extend(ring.ids(cursor, nxt))
                cursor = nxt
            assert got == live
