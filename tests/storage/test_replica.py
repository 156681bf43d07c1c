"""The replica's link and lag from INFO replication, without a server."""

from __future__ import annotations

import pytest

from relay.storage.replica import LagClock, Link, Primary, Watch, linked

PRIMARY = Primary("p-run", 1000, "history-1")


def replica_info(**fields: object) -> dict[str, object]:
    info: dict[str, object] = {"run_id": "r-run", "role": "slave", "master_link_status": "up",
                               "slave_repl_offset": 900, "master_replid": "history-1"}
    info.update(fields)
    return info


def test_a_replica_with_its_link_up_is_linked() -> None:
    link = Link.parse(replica_info())
    assert link.replica and link.up and link.offset == 900 and link.replid == "history-1"
    assert linked(link, PRIMARY) and linked(link, None)


def test_a_replica_whose_link_is_down_or_told_replicaof_no_one_is_not() -> None:
    assert not linked(Link.parse(replica_info(master_link_status="down")), PRIMARY)
    alone = Link.parse({"run_id": "r-run", "role": "master", "master_repl_offset": 950,
                        "master_replid": "history-2"})
    assert not alone.replica and alone.offset == 950
    assert not linked(alone, PRIMARY) and not linked(alone, None)


def test_a_read_url_naming_the_primary_itself_is_linked() -> None:
    itself = Link.parse({"run_id": "p-run", "role": "master", "master_repl_offset": 1000,
                         "master_replid": "history-1"})
    assert linked(itself, PRIMARY)


def test_lag_is_zero_when_the_replica_has_what_the_primary_had_at_the_check() -> None:
    clock = LagClock()
    assert clock.note(0.0, 100, 100) == 0.0
    assert clock.note(1.0, 200, 250) == 0.0  # writes after the primary was asked


def test_lag_is_interpolated_between_the_checks_around_the_replicas_offset() -> None:
    clock = LagClock()
    clock.note(0.0, 0, 0)
    clock.note(1.0, 1000, 1000)
    # in sync but for a few bytes in flight: a few milliseconds, not a whole check interval
    assert clock.note(2.0, 2000, 1990) == pytest.approx(0.01)
    # stuck at the offset of t=1 while the primary went on for 3 s
    clock.note(3.0, 3000, 1000)
    assert clock.note(4.0, 4000, 1000) == pytest.approx(3.0)
    assert clock.note(5.0, 5000, 1500) == pytest.approx(3.5)


def test_lag_past_every_sample_is_at_least_the_window_and_a_new_history_starts_over() -> None:
    clock = LagClock(window_s=2.0)
    for t in range(5):
        clock.note(float(t), 1000 * (t + 1), 0)
    assert clock.note(5.0, 6000, 0) == pytest.approx(2.0)
    assert clock.note(6.0, 10, 0) == pytest.approx(0.0, abs=1)  # offsets went back: restarted
    assert clock.note(7.0, 20, 10) == pytest.approx(1.0)


def test_stale_only_when_the_primary_answers_and_the_link_has_been_down_the_grace() -> None:
    watch = Watch(None)  # type: ignore[arg-type]  # no check is run
    watch.down_since = 100.0
    assert not watch.stale(15.0, now=110.0)
    assert watch.stale(15.0, now=115.0)
    watch.primary_reachable = False  # the primary failed, or this region is cut off
    assert not watch.stale(15.0, now=200.0)
    watch.primary_reachable, watch.down_since = True, None
    assert not watch.stale(15.0, now=200.0)
