"""A stream's side of its topic's shared compression (relay/node/shared.py), without an event
loop: which coding a request gets, a topic's compressor made by its first compressed stream
and dropped with its last, a stream's own bytes and its end."""

from __future__ import annotations

import zlib

import pytest

from relay.node import shared
from relay.node.topics import Hub, Subscription
from relay.protocol.deflate import Encoding
from relay.settings import Settings
from relay.web.http import Request


def request(accept: bytes | None) -> Request:
    headers = [(b"Accept-Encoding", accept)] if accept is not None else []
    return Request({"type": "http", "method": "GET", "path": "/v1/streams/a/events",
                    "query_string": b"", "headers": headers})


@pytest.mark.parametrize(("setting", "accept", "chosen"), [
    ("gzip,deflate", b"gzip, deflate, br, zstd", Encoding.GZIP),
    ("gzip,deflate", b"deflate", Encoding.DEFLATE),
    ("deflate", b"gzip, deflate", Encoding.DEFLATE),
    ("gzip", b"deflate", None),
    ("off", b"gzip, deflate", None),
    ("gzip,deflate", None, None),
    ("gzip,deflate", b"identity", None),
])
def test_the_coding_a_request_gets(setting: str, accept: bytes | None,
                                   chosen: Encoding | None) -> None:
    coding = shared.choose(Settings(compression=setting), request(accept))
    assert (coding.encoding if coding is not None else None) is chosen


def test_a_topic_compresses_while_it_has_compressed_streams() -> None:
    settings = Settings(compression_level=1, ring_events=10, ring_bytes=4096)
    hub = Hub(ring_events=10, ring_bytes=4096, max_topics=2, key_of=lambda t: t)
    topic = hub.get("a")
    first = shared.attach(settings, topic)
    assert shared.attach(settings, topic) is first and topic.shared is first
    assert first.level == 1 and first.max_segments == 10 and first.max_bytes == 4096
    shared.detach(topic)
    assert topic.shared is first
    shared.detach(topic)
    assert topic.shared is None
    shared.detach(topic)  # nothing left: nothing happens
    assert shared.attach(settings, topic) is not first  # a fresh compressor, a fresh epoch


def test_a_plain_stream_is_sent_as_it_is_and_a_compressed_one_ends_its_stream() -> None:
    hub = Hub(ring_events=10, ring_bytes=4096, max_topics=2, key_of=lambda t: t)
    sub = Subscription(hub.get("a"), 0, None)
    assert shared.own(sub, b"retry: 1\n\n") == b"retry: 1\n\n"
    assert shared.last(sub, b"") == b""
    assert shared.beat(sub, 1) is False
    sub.coding = shared.choose(Settings(), request(b"deflate"))
    body = shared.own(sub, b"retry: 1\n\n") + shared.last(sub, b"retry: 2\n\n")
    d = zlib.decompressobj(-15)
    assert d.decompress(body) == b"retry: 1\n\nretry: 2\n\n" and d.eof
