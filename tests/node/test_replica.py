"""Streams waiting for the replica to reach their id: bounded, without an event loop."""

from __future__ import annotations

from relay.node.replica import Waits
from relay.node.topics import Hub, Subscription
from relay.protocol import ids


def test_a_stream_is_ended_at_its_deadline_unless_it_closed_first() -> None:
    hub = Hub(ring_events=10, ring_bytes=10_000, max_topics=10,
              key_of=lambda t: "ssedge:{" + t + "}")
    topic = hub.get("t")
    topic.ring.prime([ids.parse("5-0")], [b"id: 5-0\ndata: x\n\n"], ids.ZERO)
    waits = Waits(wait_s=3.0)
    behind, closed, late = (Subscription(topic, 0, None) for _ in range(3))
    for sub in (behind, closed, late):
        waits.add(sub, ids.parse("7-0"), now=100.0)
    assert waits.started == 3
    assert waits.expired(now=102.0) == [] and len(waits) == 3
    closed.close("disconnect")
    topic.ring.extend([ids.parse("6-0")], [b"id: 6-0\ndata: x\n\n"])
    assert waits.expired(now=102.5) == [] and len(waits) == 2
    assert waits.expired(now=103.0) == [behind, late] and waits.timed_out == 2
    assert len(waits) == 0


def test_a_stream_whose_id_the_feed_passes_is_let_go() -> None:
    hub = Hub(ring_events=10, ring_bytes=10_000, max_topics=10,
              key_of=lambda t: "ssedge:{" + t + "}")
    topic = hub.get("t")
    topic.ring.prime([], [], ids.ZERO)
    waits = Waits(wait_s=1.0)
    sub = Subscription(topic, 0, None)
    waits.add(sub, ids.parse("7-0"), now=0.0)
    topic.ring.extend([ids.parse("7-0")], [b"id: 7-0\ndata: x\n\n"])
    assert waits.expired(now=5.0) == [] and len(waits) == 0 and waits.timed_out == 0
