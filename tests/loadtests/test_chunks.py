"""loadtests/chunks.py: chunked transfer coding undone, whole and byte by byte."""

from __future__ import annotations

import pytest

from loadtests.chunks import Dechunker


def test_dechunker_whole_and_byte_by_byte() -> None:
    body = b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n"
    whole = Dechunker()
    assert whole.feed(body) == b"hello, world" and whole.done
    bytewise = Dechunker()
    out = b"".join(bytewise.feed(body[i:i + 1]) for i in range(len(body)))
    assert out == b"hello, world" and bytewise.done


def test_dechunker_refuses_an_endless_size_line() -> None:
    with pytest.raises(ValueError, match="too long"):
        Dechunker().feed(b"f" * 2000)
