"""The token-expiring notice (relay/node/renewal.py): when it is sent, what it says, and that it
leaves the client's last event id alone."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from relay.node import renewal
from relay.node.topics import Hub, Subscription
from relay.protocol.wire import Decoder, Event


@pytest.mark.parametrize(("left", "lead", "told_before"), [
    (600, 60, 60),  # a long token: the lead
    (8, 60, 4),  # a short one: half the life it had left, not at once
    (8, 3, 3),
    (0, 60, 0),  # connected in the leeway: at once
    (-3, 60, 0),  # already past: at once (its time is gone)
])
def test_notice_time(left: float, lead: float, told_before: float) -> None:
    now = 1_000_000.0
    assert renewal.notice_at(now + left, now, lead) == pytest.approx(now + left - told_before)


def test_the_frame_has_no_id_and_keeps_the_last_event_id() -> None:
    frame = renewal.frame(1_000_060.4, 1_000_000.0)
    assert b"id:" not in frame
    decoder = Decoder(last_event_id="1700000000000-3")
    [event] = decoder.feed(frame)
    assert isinstance(event, Event)
    assert event.event == "ssedge.token-expiring"
    assert json.loads(event.data) == {"expires_at": 1_000_060, "in_s": 60}
    assert decoder.last_event_id == "1700000000000-3"


def test_schedule_sets_the_notice_and_wakes_a_parked_connection() -> None:
    hub = Hub(ring_events=10, ring_bytes=1000, max_topics=10, key_of=lambda t: t)
    topic = hub.get("private-1")

    async def go() -> None:
        sub = Subscription(topic, 0, None)
        waiter = topic.park(sub)
        handle = renewal.schedule(sub, time.time() + 0.2, lead_s=60)  # told after 0.1 s
        assert handle is not None and not sub.notice
        await asyncio.wait_for(waiter, 1)
        assert b"ssedge.token-expiring" in sub.notice
        # none for a token without exp; none after the stream closed
        assert renewal.schedule(sub, None, 60) is None
        closed = Subscription(topic, 0, None)
        closed.close("disconnect")
        renewal.schedule(closed, time.time(), lead_s=60)
        await asyncio.sleep(0.05)
        assert not closed.notice

    asyncio.run(go())
