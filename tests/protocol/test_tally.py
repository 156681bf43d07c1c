"""relay/protocol/tally.py: the loss, duplicate and order bookkeeping of the load readers."""

from __future__ import annotations

from relay.protocol.tally import Payload, Tally, encode, id_key, parse


def event(seq: int, *, retired: int = 0, last: bool = False, pub: str = "p1") -> Payload:
    payload = parse(encode(1000.0 + seq, pub, seq, retired, last, pad=8))
    assert payload is not None
    return payload


def feed(tally: Tally, seqs: list[int], **kw: object) -> list[tuple[int, bool, bool]]:
    out = []
    for n, seq in enumerate(seqs):
        v = tally.see("t", f"1-{n}", event(seq, **kw))  # type: ignore[arg-type]
        out.append((v.lost, v.duplicate, v.late))
    return out


def test_payload_round_trip_and_foreign_data() -> None:
    p = parse(encode(1700000000.123456, "ab12", 7, 2, True, pad=100))
    assert p == Payload(1700000000.123456, "ab12", 7, 2, True)
    assert parse("tick 5") is None
    assert parse('{"data": 1}') is None
    assert parse("1.0 p x 0 e") is None  # seq not a number


def test_in_order_events_lose_nothing() -> None:
    tally = Tally()
    assert feed(tally, [5, 6, 7, 8]) == [(0, False, False)] * 4
    assert (tally.lost, tally.duplicates, tally.out_of_order, tally.received) == (0, 0, 0, 4)


def test_a_gap_is_lost_until_the_missing_events_arrive_late() -> None:
    tally = Tally()
    verdicts = feed(tally, [1, 2, 5])
    assert verdicts[-1] == (2, False, False)
    assert tally.lost == 2
    assert feed(tally, [3]) == [(0, False, True)]
    assert (tally.lost, tally.out_of_order) == (1, 1)


def test_a_repeat_is_a_duplicate() -> None:
    tally = Tally()
    feed(tally, [1, 2, 3, 3, 2])
    assert (tally.duplicates, tally.lost) == (2, 0)


def test_numbers_retired_by_failed_publishes_are_not_lost() -> None:
    tally = Tally()
    tally.see("t", "1-0", event(1))
    # seqs 2-4 failed to publish (retired 3), then 5 arrives saying so
    assert tally.see("t", "1-1", event(5, retired=3)).lost == 0
    # one more failure is explained, a second gap is not
    assert tally.see("t", "1-2", event(7, retired=4)).lost == 0
    assert tally.see("t", "1-3", event(9, retired=4)).lost == 1
    assert tally.lost == 1


def test_publishers_and_topics_are_counted_apart() -> None:
    tally = Tally()
    tally.see("t", "1-0", event(10, pub="a"))
    tally.see("t", "1-1", event(1, pub="b"))
    tally.see("u", "1-0", event(3, pub="a"))
    tally.see("t", "1-2", event(11, pub="a"))
    assert (tally.publishers, tally.lost, tally.duplicates) == (3, 0, 0)


def test_missing_tail_after_the_last_event_is_known() -> None:
    tally = Tally()
    feed(tally, [1, 2, 3])
    assert tally.missing_tail() == (0, 1)  # the publisher's last event never came
    tally.see("t", "1-9", event(6, last=True))
    assert tally.missing_tail() == (0, 0)
    assert tally.lost == 2  # 4 and 5
    other = Tally()
    other.see("t", "1-0", event(1))
    other.sources[("t", "p1")].final_seq = 4  # last event seen by others, not by this reader
    assert other.missing_tail() == (3, 0)


def test_ids_must_grow() -> None:
    tally = Tally()
    tally.see("t", "5-0", event(1))
    tally.see("t", "4-9", event(2))
    tally.see("t", "5-1", event(3))
    assert tally.id_regressions == 1
    assert id_key("12-3") == (12, 3) and id_key("junk") == (-1, -1)
