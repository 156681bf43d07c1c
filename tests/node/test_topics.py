"""Topic and subscriber bookkeeping, without an event loop."""

from __future__ import annotations

import pytest

from relay.node.topics import Hub, Subscription, TooManyTopics, Topic


def hub(max_topics: int = 10, max_cold_topics: int = 10) -> Hub:
    return Hub(ring_events=10, ring_bytes=1000, max_topics=max_topics,
               max_cold_topics=max_cold_topics, key_of=lambda t: "ssedge:{" + t + "}")


def test_topics_by_name_and_key_and_the_table_bound() -> None:
    h = hub(max_topics=1, max_cold_topics=1)
    a = h.get("a")
    assert h.get("a") is a and h.by_key[b"ssedge:{a}"] is a
    h.get("b")
    with pytest.raises(TooManyTopics):  # being primed, either kind: both bounds together
        h.get("c")


def primed(h: Hub, name: str, last: bytes = b"0-0") -> Topic:
    topic = h.get(name)
    topic.read_from = last
    h.mark_primed(topic)
    return topic


def test_a_topic_never_written_is_cold_out_of_the_read_and_bounded_apart() -> None:
    h = hub(max_topics=2, max_cold_topics=2)
    primed(h, "hot", b"5-0")
    gen = h.generation
    cold = [primed(h, f"c{i}") for i in range(2)]
    assert h.watched() == {b"ssedge:{hot}": b"5-0"} and h.generation == gen
    assert list(h.cold) == [b"ssedge:{c0}", b"ssedge:{c1}"]
    assert all(t.cold and t.primed and not t.refused for t in cold)
    # the cold table is full: a third name never written is refused and not kept...
    late = h.get("c2")
    late.read_from = b"0-0"
    h.mark_primed(late)
    assert late.refused == "cold" and "c2" not in h.topics and b"ssedge:{c2}" not in h.by_key
    # ...while a written topic still takes its place among the hot ones
    assert not primed(h, "hot2", b"7-0").refused
    # the hot table has its own bound, met when priming finds a topic written
    h = hub(max_topics=1, max_cold_topics=5)
    primed(h, "a", b"1-0")
    assert primed(h, "b", b"2-0").refused == "hot"
    assert list(h.hot) == [b"ssedge:{a}"] and "b" not in h.topics


def test_a_cold_topic_written_is_promoted_once_and_read_from_its_last_id() -> None:
    h = hub()
    c = h.get("c")
    h.mark_primed(c)
    gen = h.generation
    c.read_from = b"9-1"  # its first entries were read into its ring
    assert h.promote(c) and not c.cold and h.promotions == 1 and h.generation > gen
    assert h.watched() == {b"ssedge:{c}": b"9-1"} and not h.cold
    assert not h.promote(c)
    # forgotten meanwhile: not promoted
    d = h.get("d")
    h.mark_primed(d)
    h.forget(d)
    assert not h.promote(d) and h.promotions == 1


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
