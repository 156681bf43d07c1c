"""Revocations in one process, without I/O: what is refused, which streams an order ends and
what each is told."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from relay.node.metrics import Metrics
from relay.node.revocation import CLOSE_ORDERED, CLOSE_REVOKED, Held, Identities, Orders
from relay.node.topics import Hub, Subscription
from relay.protocol.wire import Decoder, Event
from relay.storage import control
from relay.storage.control import Revocation
from relay.web.errors import Revoked


def test_held_revocations_match_by_jti_or_sub_until_their_end() -> None:
    held = Held()
    now = time.time()
    held.add(Revocation("jti", "t1", now + 60))
    held.add(Revocation("sub", "alice", now + 60, "moved"))
    held.add(Revocation("jti", "old", now - 1))
    assert held.find("t1", None) is not None
    assert held.find("t2", "alice") == Revocation("sub", "alice", now + 60, "moved")
    assert held.find("old", None) is None  # past its end
    assert held.find(None, None) is None and held.find("t2", "bob") is None
    assert len(held) == 2


def _orders() -> tuple[Orders, Hub]:
    hub = Hub(ring_events=10, ring_bytes=10_000, max_topics=10, key_of=lambda t: t)
    return Orders(hub, None, 10.0, Metrics("test")), hub  # type: ignore[arg-type]


def test_a_revocation_ends_its_streams_with_a_notice_and_refuses_it_after() -> None:
    async def run() -> None:
        orders, hub = _orders()
        topic = hub.get("private-1")
        subs = [Subscription(topic, 0, None) for _ in range(3)]
        orders.register(subs[0], "t1", "alice")
        orders.register(subs[1], "t2", "alice")
        orders.register(subs[2], "t3", "bob")
        ended = orders.apply(control.Order("revoke", "jti", "t1", time.time() + 60, "leaked"))
        assert ended == 1 and subs[0].closed_because == CLOSE_REVOKED
        [event] = [e for e in Decoder().feed(subs[0].notice) if isinstance(e, Event)]
        assert event.event == "ssedge.revoked" and not event.own_id  # no id: line
        assert json.loads(event.data) == {"reason": "leaked", "jti": "t1",
                                          "until": pytest.approx(time.time() + 60, abs=2)}
        with pytest.raises(Revoked) as refused:
            orders.check("t1", "carol")
        assert refused.value.status == 403 and refused.value.revocation["jti"] == "t1"
        orders.check("t9", "carol")  # others pass
        assert orders.apply(control.Order("revoke", "sub", "alice", time.time() + 60)) == 1
        assert subs[1].closed_because == CLOSE_REVOKED and subs[2].closed_because is None
        # a stream that registers after the order (it passed the check just before) ends
        late = Subscription(topic, 0, None)
        orders.register(late, "t7", "alice")
        assert late.closed_because == CLOSE_REVOKED

    asyncio.run(run())


def test_disconnect_by_topic_and_by_subject() -> None:
    async def run() -> None:
        orders, hub = _orders()
        a, b = hub.get("a"), hub.get("b")
        on_a = [Subscription(a, 0, None) for _ in range(2)]
        on_b = Subscription(b, 0, None)
        for sub in [*on_a, on_b]:
            hub.subscribe(sub.topic, sub)
        orders.register(on_b, "t1", "dave")
        assert orders.apply(control.Order("disconnect", "topic", "a")) == 2
        assert all(s.closed_because == CLOSE_ORDERED for s in on_a)
        assert on_b.closed_because is None
        assert orders.apply(control.Order("disconnect", "topic", "nowhere")) == 0
        assert orders.apply(control.Order("disconnect", "sub", "dave")) == 1
        assert on_b.closed_because == CLOSE_ORDERED and on_b.notice == b""

    asyncio.run(run())


def test_identities_forget_streams_that_ended() -> None:
    hub = Hub(ring_events=10, ring_bytes=10_000, max_topics=10, key_of=lambda t: t)
    sub = Subscription(hub.get("x"), 0, None)
    ids = Identities()
    ids.add(sub, "t1", "alice")
    assert ids.of("jti", "t1") == [sub] and ids.of("sub", "alice") == [sub]
    ids.remove(sub, "t1", "alice")
    assert ids.by_jti == {} and ids.by_sub == {}


def test_orders_travel_as_json() -> None:
    order = control.Order("revoke", "jti", "t1", 12.5, "why")
    assert control.decode(control.encode(order)) == order
    assert control.decode(b"not json") is None
