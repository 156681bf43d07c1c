"""The feed's fan-out to parked connections, with fake sends (no server, no Redis)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from relay.node import fanout
from relay.node.metrics import Metrics
from relay.node.topics import Hub, Subscription, Topic


class Taken:
    """What a send returns when the server took the bytes at once."""

    def __await__(self) -> Any:
        return iter(())


fanout._READY.add(Taken)


class Client:
    """A connection's send: records what it was given, answers taken or pending."""

    def __init__(self, *, slow: bool = False) -> None:
        self.slow = slow
        self.bodies: list[bytes] = []

    def __call__(self, message: dict[str, Any]) -> Any:
        self.bodies.append(message["body"])
        if self.slow:
            return asyncio.get_running_loop().create_future()
        return Taken()


def topic_with(frames: int) -> Topic:
    hub = Hub(ring_events=100, ring_bytes=1 << 20, max_topics=10,
              key_of=lambda t: "ssedge:{" + t + "}")
    topic = hub.get("t")
    topic.ring.extend(list(range(1, frames + 1)), [f"id: {i}\n\n".encode()
                                                   for i in range(1, frames + 1)])
    return topic


def parked(topic: Topic, send: Any) -> Subscription:
    sub = Subscription(topic, topic.ring.head, None, topic.ring.last_id)
    sub.send = send
    topic.park(sub)
    return sub


def test_new_frames_go_to_parked_connections_in_one_send_each_without_waking_them() -> None:
    async def run() -> None:
        topic = topic_with(2)
        fast, slow, plain = Client(), Client(slow=True), None
        a, b = parked(topic, fast), parked(topic, slow)
        c = parked(topic, plain)
        start = topic.ring.head
        topic.ring.extend([3, 4], [b"id: 3\n\n", b"id: 4\n\n"])
        metrics = Metrics("n")
        fanout.kick(topic, metrics, 1 << 16)

        assert fast.bodies == slow.bodies == [b"id: 3\n\nid: 4\n\n"]
        assert (a.cursor, a.last_id) == (b.cursor, b.last_id) == (4, 4)
        # taken at once: still parked, its task never woke
        assert a.waiter is not None and not a.waiter.done() and topic.parked == [a]
        # not taken yet: its task wakes to await that send before anything else
        assert b.waiter is None and b.pending is not None
        # a server whose send must be awaited: the task writes its own frames
        assert c.waiter is None and c.cursor == start and c.pending is None
        assert (metrics.sends, metrics.events_out, metrics.bytes_out) == (2, 4, 28)
        assert metrics.parked_sends == 2

    asyncio.run(run())


def test_closed_connections_get_nothing_and_leave_the_parked_list() -> None:
    async def run() -> None:
        topic = topic_with(1)
        client = Client()
        sub = parked(topic, client)
        sub.close("disconnect")
        start = topic.ring.head
        topic.ring.extend([2], [b"id: 2\n\n"])
        fanout.kick(topic, Metrics("n"), 1 << 16)
        assert client.bodies == [] and topic.parked == [] and sub.cursor == start

    asyncio.run(run())


def test_a_frame_larger_than_a_send_wakes_the_task_to_write_it() -> None:
    async def run() -> None:
        topic = topic_with(1)
        client = Client()
        sub = parked(topic, client)
        waiter = sub.waiter
        start = topic.ring.head
        topic.ring.extend([2, 3], [b"id: 2\n\n" + b"x" * 100, b"id: 3\n\n"])
        fanout.kick(topic, Metrics("n"), 64)
        assert client.bodies == [] and sub.cursor == start
        assert waiter is not None and waiter.done() and topic.parked == []

    asyncio.run(run())


def test_a_cancelled_task_does_not_cancel_the_others() -> None:
    async def run() -> None:
        topic = topic_with(1)
        subs = [Subscription(topic, topic.ring.head, None) for _ in range(3)]
        tasks = [asyncio.ensure_future(topic.park(sub)) for sub in subs]
        await asyncio.sleep(0)
        tasks[0].cancel()
        await asyncio.sleep(0)
        topic.wake()
        await asyncio.sleep(0)
        assert tasks[0].cancelled()
        assert [t.done() and not t.cancelled() for t in tasks[1:]] == [True, True]

    asyncio.run(run())


def test_a_long_pass_yields_and_later_connections_get_what_came_meanwhile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(fanout, "SLICE", 2)

    async def run() -> None:
        topic = topic_with(1)
        clients = [Client() for _ in range(5)]
        subs = [parked(topic, c) for c in clients]
        metrics = Metrics("n")
        topic.ring.extend([2], [b"id: 2\n\n"])
        fanout.kick(topic, metrics, 1 << 16)
        assert topic.fanning is not None  # more than a slice: a task of its own
        assert [c.bodies for c in clients] == [[]] * 5  # nothing sent before the loop runs it
        await asyncio.sleep(0)  # first slice
        topic.ring.extend([3], [b"id: 3\n\n"])  # the feed appends during the pass
        fanout.kick(topic, metrics, 1 << 16)  # joins the pass under way
        for _ in range(6):
            await asyncio.sleep(0)
        assert topic.fanning is None
        # the first slice got 2 then 3 (a second pass); the rest 2 and 3 in one send
        assert clients[0].bodies == clients[1].bodies == [b"id: 2\n\n", b"id: 3\n\n"]
        assert all(c.bodies == [b"id: 2\n\nid: 3\n\n"] for c in clients[2:])
        assert all(sub.cursor == topic.ring.head and sub.last_id == 3 for sub in subs)
        assert sorted(map(id, topic.parked)) == sorted(map(id, subs))
        assert (metrics.sends, metrics.events_out) == (7, 10)

    asyncio.run(run())


def test_a_cancelled_pass_resumes_every_connection_it_held() -> None:
    async def run() -> None:
        topic = topic_with(1)
        subs = [parked(topic, Client()) for _ in range(fanout.SLICE + 1)]
        topic.ring.extend([2], [b"id: 2\n\n"])
        fanout.kick(topic, Metrics("n"), 1 << 16)
        assert topic.fanning is not None
        await asyncio.sleep(0)
        topic.fanning.cancel()
        await asyncio.sleep(0)
        assert topic.fanning is None and all(sub.waiter is None for sub in subs)

    asyncio.run(run())


def test_a_connection_ahead_of_the_feed_is_woken_not_sent_what_it_has() -> None:
    """A client that came with an id this feed has not read yet: the feed's fan-out must
    not send it the frames up to its id (its task skips them, ``resume.Reader``)."""
    async def run() -> None:
        topic = topic_with(2)
        behind, ahead = Client(), Client()
        a = parked(topic, behind)
        b = parked(topic, ahead)
        b.last_id = 4  # it has up to 4; the ring ends at 2
        topic.ring.extend([3, 4, 5], [b"id: 3\n\n", b"id: 4\n\n", b"id: 5\n\n"])
        fanout.kick(topic, Metrics("t"), 1 << 16)
        assert behind.bodies == [b"id: 3\n\nid: 4\n\nid: 5\n\n"] and a.cursor == topic.ring.head
        assert ahead.bodies == [] and b.waiter is None  # resumed: its task takes it from here
        assert b.next_chunk(topic.ring, 1 << 16) == (b"id: 5\n\n", 1)

    asyncio.run(run())


# -- a client that does not read holds a bounded number of bytes (issue #28) -------------------

FRAMES = [f"id: {i}\n\n".encode() for i in range(2, 12)]  # 10 frames of 7 or 8 bytes


def test_what_a_connection_lacks_goes_in_sends_of_at_most_send_max_bytes() -> None:
    async def run() -> None:
        topic = topic_with(1)
        client = Client()
        sub = parked(topic, client)
        topic.ring.extend(list(range(2, 12)), FRAMES)
        metrics = Metrics("n")
        fanout.kick(topic, metrics, 24)
        assert all(len(body) <= 24 for body in client.bodies)
        assert b"".join(client.bodies) == b"".join(FRAMES)
        assert (sub.cursor, sub.last_id) == (topic.ring.head, 11) and topic.parked == [sub]
        assert metrics.sends == len(client.bodies) > 1 and metrics.events_out == 10

    asyncio.run(run())


def test_nothing_more_is_sent_to_a_connection_whose_send_is_pending() -> None:
    """A client that does not read: once the server leaves a send pending, the feed hands
    it nothing more; its cursor stops after what was handed over, its task awaits that
    send and writes the rest itself."""
    async def run() -> None:
        topic = topic_with(1)
        client = Client(slow=True)
        sub = parked(topic, client)
        topic.ring.extend(list(range(2, 12)), FRAMES)
        fanout.kick(topic, Metrics("n"), 24)
        assert len(client.bodies) == 1 and len(client.bodies[0]) <= 24
        assert sub.pending is not None and sub.waiter is None and topic.parked == []
        frames = client.bodies[0].count(b"\n\n")
        assert sub.cursor == 1 + frames and sub.last_id == 1 + frames
        topic.ring.extend([12], [b"id: 12\n\n"])
        fanout.kick(topic, Metrics("n"), 24)
        assert len(client.bodies) == 1  # not parked: the feed sends it nothing

    asyncio.run(run())


def test_small_frames_go_then_the_task_writes_a_frame_larger_than_a_send() -> None:
    async def run() -> None:
        topic = topic_with(1)
        client = Client()
        sub = parked(topic, client)
        big = b"id: 4\n" + b"data: " + b"x" * 100 + b"\n\n"
        topic.ring.extend([2, 3, 4], [b"id: 2\n\n", b"id: 3\n\n", big])
        fanout.kick(topic, Metrics("n"), 24)
        assert client.bodies == [b"id: 2\n\nid: 3\n\n"]
        assert sub.cursor == 3 and sub.last_id == 3 and sub.waiter is None  # task woken

    asyncio.run(run())


def test_a_task_writes_a_large_body_in_pieces() -> None:
    async def run() -> None:
        sent: list[bytes] = []

        async def send(message: dict[str, Any]) -> None:
            assert message["more_body"] is True
            sent.append(message["body"])

        await fanout.write(send, b"x" * 100, 30)
        assert [len(b) for b in sent] == [30, 30, 30, 10]
        sent.clear()
        await fanout.write(send, b"y" * 30, 30)
        assert sent == [b"y" * 30]

    asyncio.run(run())


def test_the_size_of_a_send_follows_the_client_queue_bound() -> None:
    assert fanout.send_bytes(48 * 1024, 256 * 1024) == 6 * 1024
    assert fanout.send_bytes(4 * 1024 * 1024, 256 * 1024) == 256 * 1024
    assert fanout.send_bytes(16 * 1024, 1024) == 1024
