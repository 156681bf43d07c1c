"""A one-topic stream sent compressed: the topic's shared compressor, met from a stream's task
(``relay.node.stream``) and from the fan-out (``relay.node.fanout``); the state machine is
``relay.protocol.deflate``.

A topic has a ``Shared`` while it has compressed clients, made by the first and dropped with
the last: its compressor's state (about 256 KiB at zlib's defaults) is paid per topic that a
compressed client reads, never per client. Streams on several topics are not compressed: each
client's ids are its own, so its bytes are too (``relay.node.multistream``).
"""

from __future__ import annotations

import time

from relay.node.topics import Subscription, Topic
from relay.protocol.deflate import Coding, Encoding, Shared, negotiate
from relay.settings import Settings
from relay.web.http import Request


def allowed(settings: Settings) -> tuple[Encoding, ...]:
    if settings.compression == "off":
        return ()
    return tuple(Encoding(name) for name in settings.compression.split(","))


def choose(settings: Settings, request: Request) -> Coding | None:
    """The coding a stream is sent with, from its ``Accept-Encoding``; None: as it is."""
    accepted = request.headers.get("accept-encoding", "")
    if not accepted or settings.compression == "off":
        return None
    encoding = negotiate(accepted, allowed(settings))
    return None if encoding is None else Coding(encoding)


def attach(settings: Settings, topic: Topic) -> Shared:
    shared = topic.shared
    if shared is None:
        shared = topic.shared = Shared(
            level=settings.compression_level, epoch_bytes=settings.compression_epoch_bytes,
            epoch_s=settings.compression_epoch_s, max_segments=settings.ring_events,
            max_bytes=settings.ring_bytes, now=time.monotonic())
    shared.clients += 1
    return shared


def detach(topic: Topic) -> None:
    shared = topic.shared
    if shared is not None:
        shared.clients -= 1
        if shared.clients <= 0:
            topic.shared = None


def own(sub: Subscription, plain: bytes) -> bytes:
    """Bytes for this client alone (a first ``retry:``, history, a notice, a keep-alive)."""
    return plain if sub.coding is None else sub.coding.own(plain)


def last(sub: Subscription, plain: bytes) -> bytes:
    """The stream's last bytes (and, compressed, the end of its deflate stream)."""
    return plain if sub.coding is None else sub.coding.finish(plain)


def next_chunk(sub: Subscription, send_max: int) -> tuple[bytes, int]:
    """What to send next from the ring and how many events (``Reader.next_chunk``): the
    shared bytes when it may have them, else its own (``Shared.next_chunk``)."""
    coding, shared = sub.coding, sub.topic.shared
    if coding is None or shared is None:
        return sub.next_chunk(sub.topic.ring, send_max)
    return shared.next_chunk(coding, sub, sub.topic.ring, send_max, time.monotonic())


def beat(sub: Subscription, tick: int) -> bool:
    """A heartbeat for a client on the shared bytes: the topic's keep-alive, compressed once
    (sent by ``next_chunk``). False: the client sends its own."""
    shared = sub.topic.shared
    if sub.coding is None or shared is None:
        return False
    return shared.beat(sub.coding, sub.topic.ring, tick, time.monotonic())
