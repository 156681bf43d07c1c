"""Framing of stream entries: published ones, ingested ones, and anything a producer XADDs."""

from __future__ import annotations

from typing import Any

import pytest

from relay.protocol.wire import Decoder, Event
from relay.storage import clients
from relay.storage import streams as store


def test_published_entry_frames_as_id_event_data() -> None:
    assert store.frame(b"1-0", [b"d", b"a\nb"]) == (b"id: 1-0\ndata: a\ndata: b\n\n", True)
    assert store.frame(b"1-1", [b"d", b"x", b"e", b"t"]) == (
        b"id: 1-1\nevent: t\ndata: x\n\n", True)


def test_ingested_entry_shows_its_upstream_and_upstream_id() -> None:
    frame, ok = store.frame(b"5-0", [b"d", b"{}", b"e", b"quote", b"o", b"a", b"i", b"A7-x"])
    assert ok and frame == b"id: 5-0\nevent: quote\nupstream: a\nupstream-id: A7-x\ndata: {}\n\n"
    # an EventSource ignores the two fields; a parser that asks sees them
    assert Decoder().feed(frame) == [Event("{}", "quote", "5-0")]
    assert Decoder(extra_fields=True).feed(frame)[0].extra == (
        ("upstream", "a"), ("upstream-id", "A7-x"))


@pytest.mark.parametrize("field", [b"e", b"o", b"i"])
@pytest.mark.parametrize("bad", [b"", b"x\ny", b"x\rid: 9", b"x\x00"])
def test_a_value_that_would_break_the_stream_is_left_out(field: bytes, bad: bytes) -> None:
    frame, ok = store.frame(b"7-0", [b"d", b"data", field, bad])
    assert not ok and frame == b"id: 7-0\ndata: data\n\n"


def test_seed_nodes_are_host_port_pairs() -> None:
    assert clients.seed_nodes("10.0.0.1:7000, redis-b:7001,[::1]:7002") == [
        ("10.0.0.1", 7000), ("redis-b", 7001), ("::1", 7002)]


def test_publish_commands_are_xadds_then_the_age_trim() -> None:
    commands = store._publish_commands("ssedge:{t}", [(b"1", None), (b"2", "e")], maxlen=10,
                                       max_age_s=60)
    assert commands[0] == ("XADD", "ssedge:{t}", "MAXLEN", "~", 10, "*", "d", b"1")
    assert commands[1] == ("XADD", "ssedge:{t}", "MAXLEN", "~", 10, "*", "d", b"2", "e", "e")
    assert commands[2][:4] == ("XTRIM", "ssedge:{t}", "MINID", "~")
    assert store._publish_commands("k", [(b"1", None)], maxlen=0, max_age_s=0) == [
        ("XADD", "k", "*", "d", b"1")]


def test_a_write_to_a_closed_socket_is_a_connection_error(monkeypatch: Any) -> None:
    """uvloop raises RuntimeError for a write on a transport the peer closed; ssedge's
    connections say ConnectionError, which every caller answers (503, a feed reconnect)."""
    import asyncio

    import redis.asyncio as aioredis
    from redis.exceptions import ConnectionError as RedisConnectionError

    async def closed(self: Any, command: Any, check_health: bool = True) -> None:
        raise RuntimeError("unable to perform operation on <TCPTransport closed=True>")

    monkeypatch.setattr(aioredis.Connection, "send_packed_command", closed)
    conn = clients.Connection(host="127.0.0.1", port=1)
    with pytest.raises(RedisConnectionError, match="closed=True"):
        asyncio.run(conn.send_packed_command(b"PING"))
    single = clients.client("redis://127.0.0.1:1/0")
    assert single.connection_pool.connection_class is clients.Connection
    cluster = clients.cluster_client("127.0.0.1:1")
    assert cluster.connection_kwargs["connection_class"] is clients.Connection
    assert all(n.connection_class is clients.Connection for n in cluster.startup_nodes)
