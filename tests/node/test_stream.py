"""Pieces of history pages (``relay.node.stream.pieces``): no piece over the size but a frame
larger alone, every frame once, in order, joined one at a time."""

from __future__ import annotations

import inspect

from relay.node import stream


def test_history_goes_in_pieces_of_at_most_the_size() -> None:
    frames = [b"a" * 10, b"b" * 10, b"c" * 25, b"d" * 5, b"e" * 5, b"f" * 12]
    out = list(stream.pieces(frames, 20))
    assert [body for body, _ in out] == [b"a" * 10 + b"b" * 10, b"c" * 25,
                                         b"d" * 5 + b"e" * 5, b"f" * 12]
    assert [n for _, n in out] == [2, 1, 2, 1]
    assert all(len(body) <= 20 for body, n in out if n > 1)
    assert inspect.isgenerator(stream.pieces(frames, 20))  # one piece joined at a time
    assert list(stream.pieces([], 20)) == []
