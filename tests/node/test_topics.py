"""Topic and subscriber bookkeeping, without an event loop."""

from __future__ import annotations

import pytest

from relay.node.topics import Hub, Subscription, TooManyTopics


def hub(max_topics: int = 10) -> Hub:
    return Hub(ring_events=10, ring_bytes=1000, max_topics=max_topics,
               key_of=lambda t: "ssedge:{" + t + "}")


def test_topics_by_name_and_key_and_limit() -> None:
    h = hub(max_topics=2)
    a = h.get("a")
    assert h.get("a") is a and h.by_key[b"ssedge:{a}"] is a
    h.get("b")
    with pytest.raises(TooManyTopics):
        h.get("c")


def test_only_primed_topics_are_read() -> None:
    h = hub()
    a, b = h.get("a"), h.get("b")
    a.read_from = b"5-0"
    gen = h.generation
    h.mark_primed(a)
    assert h.watched() == {b"ssedge:{a}": b"5-0"}
    assert h.generation > gen
    assert b.primed is False


def test_unsubscribe_starts_linger_and_expire_forgets() -> None:
    h = hub()
    t = h.get("a")
    s1, s2 = Subscription(t, 0, None), Subscription(t, 0, None)
    h.subscribe(t, s1)
    h.subscribe(t, s2)
    h.unsubscribe(s1, now=100.0)
    assert t.idle_since is None and h.subscriber_count == 1
    h.unsubscribe(s2, now=100.0)
    assert t.idle_since == 100.0
    assert h.expire(now=105.0, linger=10.0) == []
    assert h.expire(now=110.0, linger=10.0) == [t]
    assert "a" not in h.topics and b"ssedge:{a}" not in h.by_key


def test_resubscribing_cancels_linger() -> None:
    h = hub()
    t = h.get("a")
    s = Subscription(t, 0, None)
    h.subscribe(t, s)
    h.unsubscribe(s, now=1.0)
    h.subscribe(t, Subscription(t, 0, None))
    assert h.expire(now=1000.0, linger=1.0) == []


def test_close_records_first_reason_only() -> None:
    t = hub().get("a")
    s = Subscription(t, 0, None)
    s.close("overflow")
    s.close("disconnect")
    assert s.closed_because == "overflow"
