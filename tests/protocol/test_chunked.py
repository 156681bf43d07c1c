"""relay/protocol/chunked.py: chunked transfer coding undone, whole and byte by byte."""

from __future__ import annotations

import pytest

from relay.protocol.chunked import BadChunk, Dechunker


def test_dechunker_whole_and_byte_by_byte() -> None:
    body = b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n"
    whole = Dechunker()
    assert whole.feed(body) == b"hello, world" and whole.done
    bytewise = Dechunker()
    out = b"".join(bytewise.feed(body[i:i + 1]) for i in range(len(body)))
    assert out == b"hello, world" and bytewise.done


def test_dechunker_refuses_an_endless_size_line() -> None:
    with pytest.raises(BadChunk, match="too long"):
        Dechunker().feed(b"f" * 2000)


def test_dechunker_refuses_a_size_that_is_not_hex() -> None:
    with pytest.raises(BadChunk, match="bad chunk size line"):
        Dechunker().feed(b"zz\r\nhello\r\n")
