"""The feed's fan-out to parked connections, with fake sends (no server, no Redis)."""

from __future__ import annotations

import asyncio
from typing import Any

from relay import fanout
from relay.metrics import Metrics
from relay.topics import Hub, Subscription, Topic


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
        fanout.deliver(topic, start, metrics, 1 << 16)

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
        fanout.deliver(topic, start, Metrics("n"), 1 << 16)
        assert client.bodies == [] and topic.parked == [] and sub.cursor == start

    asyncio.run(run())


def test_more_than_one_send_wakes_every_task_to_write_its_own() -> None:
    async def run() -> None:
        topic = topic_with(1)
        client = Client()
        sub = parked(topic, client)
        waiter = sub.waiter
        start = topic.ring.head
        topic.ring.extend([2, 3], [b"id: 2\n\n" + b"x" * 100, b"id: 3\n\n"])
        fanout.deliver(topic, start, Metrics("n"), 64)
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
