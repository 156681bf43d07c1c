"""Streams on several topics in a relay process: cursors that park together, the feed's
fan-out with each client's ids, one write per read (fake sends, no server, no Redis)."""

from __future__ import annotations

import asyncio
from typing import Any

from relay.node import fanout
from relay.node.metrics import Metrics
from relay.node.multistream import Connection, Cursor
from relay.node.topics import Hub, Topic
from relay.protocol import composite
from relay.protocol.composite import TopicSet
from relay.protocol.multi import MultiReader
from relay.protocol.wire import Decoder, Event, encode_event
from tests.node.test_fanout import Client

NAMES = ["t-a", "t-b"]


def hub_with(*names: str) -> tuple[Hub, list[Topic]]:
    hub = Hub(ring_events=100, ring_bytes=1 << 20, max_topics=10,
              key_of=lambda t: "ssedge:{" + t + "}")
    return hub, [hub.get(name) for name in names]


def append(topic: Topic, *keys: int) -> None:
    topic.ring.extend(list(keys), [encode_event(f"{topic.name} {k}", id=f"0-{k}", event="t")
                                   for k in keys])


def connection(topics: list[Topic], send: Any) -> Connection:
    conn = Connection(None)
    for topic in topics:
        cursor = Cursor(conn, topic, topic.ring.head, topic.ring.last_id)
        cursor.send = send
        conn.cursors.append(cursor)
        topic.subscribers.add(cursor)
    conn.multi = MultiReader(TopicSet.parse([t.name for t in topics], 16), conn.cursors)
    conn.multi.wake = conn.wake
    for cursor in conn.cursors:
        cursor.multi = conn.multi
    return conn


def events(bodies: list[bytes]) -> list[Event]:
    return [e for e in Decoder().feed(b"".join(bodies)) if isinstance(e, Event)]


def test_what_several_topics_bring_in_one_read_goes_out_in_one_write() -> None:
    async def run() -> None:
        _, topics = hub_with(*NAMES)
        client = Client()
        conn = connection(topics, client)
        waiter = conn.park()
        metrics = Metrics("test")
        append(topics[0], 1, 2)
        append(topics[1], 3)
        for topic in topics:  # as the feed delivers one read: each topic's pass in turn
            fanout.kick(topic, metrics, 1 << 16)
        assert client.bodies == []  # queued, flushed once the delivery is done
        await asyncio.sleep(0)
        assert len(client.bodies) == 1 and not waiter.done()  # one write, still parked
        got = events(client.bodies)
        assert [(e.event, e.data) for e in got] == [("t", "t-a 1"), ("t", "t-a 2"),
                                                    ("t", "t-b 3")]
        assert [e.id.split("~")[0] for e in got] == ["t-a", "t-a", "t-b"]
        topic_set = TopicSet.parse(NAMES, 16)
        assert topic_set.positions(composite.parse(got[-1].id)) == [2, 3]
        assert metrics.sends == 1 and metrics.events_out == 3

    asyncio.run(run())


def test_a_running_task_gets_its_cursors_back_instead_of_sends() -> None:
    async def run() -> None:
        _, topics = hub_with(*NAMES)
        client = Client()
        conn = connection(topics, client)
        waiter = conn.park()
        append(topics[0], 1)
        conn.cursors[1].resume()  # woken through the other topic (a heartbeat, a notice)
        assert waiter.done() and conn.multi is not None and conn.multi.awake
        fanout.kick(topics[0], Metrics("test"), 1 << 16)
        await asyncio.sleep(0)
        # only one writer builds its ids: the task, which finds the frame in the ring
        assert client.bodies == [] and conn.cursors[0].waiter is None
        assert conn.multi.ring_chunk(0, topics[0].ring, 1 << 16)[1] == 1

    asyncio.run(run())


def test_a_slow_client_keeps_the_task_waiting_and_closing_one_cursor_closes_all() -> None:
    async def run() -> None:
        _, topics = hub_with(*NAMES)
        client = Client(slow=True)
        conn = connection(topics, client)
        waiter = conn.park()
        append(topics[1], 5)
        fanout.kick(topics[1], Metrics("test"), 1 << 16)
        await asyncio.sleep(0)
        assert len(client.bodies) == 1 and waiter.done()
        assert conn.cursors[1].pending is not None  # what the task awaits before more
        # its cursors stay listed, once: a pass hands them back while the task runs
        assert [t.parked.count(c) for t, c in zip(topics, conn.cursors, strict=True)] == [1, 1]
        append(topics[0], 6)
        fanout.kick(topics[0], Metrics("test"), 1 << 16)
        assert topics[0].parked == [] and len(client.bodies) == 1
        conn.park()
        assert [t.parked.count(c) for t, c in zip(topics, conn.cursors, strict=True)] == [1, 1]
        conn.close("overflow")
        assert all(c.closed_because == "overflow" for c in conn.cursors)

    asyncio.run(run())
