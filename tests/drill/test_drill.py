"""``ssedge drill`` without servers: the schedule, the windows, what readers count, the verdict,
and bad arguments answered with one line."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from relay import cli
from relay.drill.clients import Reader
from relay.drill.faults import KINDS, FaultError, Planned, parse_at, schedule
from relay.drill.report import Objectives, Timeline, missed, table
from relay.duration import seconds
from relay.protocol import tally
from relay.protocol.wire import Event


def test_a_fault_is_kind_at_time() -> None:
    assert parse_at("relay-kill@5s", seconds) == Planned("relay-kill", 5.0)
    assert parse_at("redis-restart@1m30s", seconds) == Planned("redis-restart", 90.0)
    for bad in ("relay-kill", "nope@5s", "relay-kill@soon"):
        with pytest.raises(FaultError):
            parse_at(bad, seconds)


def test_every_takes_the_kinds_in_turn_and_leaves_the_last_a_window() -> None:
    planned = schedule([Planned("cut-connections", 1.0)], 10.0, ["relay-kill", "redis-kill"],
                       40.0)
    assert planned == [Planned("cut-connections", 1.0), Planned("relay-kill", 10.0),
                       Planned("redis-kill", 20.0), Planned("relay-kill", 30.0)]


def test_a_soak_picks_at_random_from_the_kinds() -> None:
    planned = schedule([], 20.0, list(KINDS), 1800.0, random.Random(7))
    assert len(planned) == 89 and {p.kind for p in planned} == set(KINDS)
    assert planned == schedule([], 20.0, list(KINDS), 1800.0, random.Random(7))


def test_the_window_of_a_moment_is_the_last_fault_before_it() -> None:
    timeline = Timeline()
    timeline.open("relay-kill", 5.0)
    timeline.open("redis-kill", 9.0)
    assert [timeline.at(t).kind for t in (0.0, 4.9, 5.0, 8.9, 9.0, 100.0)] == [
        "baseline", "baseline", "relay-kill", "relay-kill", "redis-kill", "redis-kill"]


def _event(seq: int, event_id: str, publisher: str = "p1", kind: str = "message") -> Event:
    return Event(tally.encode(1.0, publisher, seq, 0, False, 0), kind, event_id)


def test_a_reader_counts_duplicates_order_resets_and_stalls_where_they_happen() -> None:
    now = [0.0]
    timeline = Timeline()
    reader = Reader("http://edge", "t", timeline, lambda: now[0], None)
    for seq in (1, 2):
        now[0] += 0.05
        reader._see(_event(seq, f"1-{seq}"))
    timeline.open("relay-kill", 1.0)
    now[0] = 4.0  # a reconnect after the kill: 3.9 s without events, ending in its window
    reader._see(_event(3, "1-3"))
    reader._see(_event(3, "1-3"))  # again: a duplicate
    reader._see(_event(5, "1-5"))
    reader._see(_event(4, "1-4"))  # late: out of order (by sequence and by id)
    reader._see(Event('{"reason": "expired"}', "ssedge.reset", "1-9"))
    baseline, kill = timeline.windows
    assert baseline.stall_s == pytest.approx(0.05)
    assert (kill.stall_s, kill.duplicates, kill.out_of_order, kill.resets) == (
        pytest.approx(3.9), 1, 1, 1)
    assert reader.has("p1", 4) and not reader.has("p1", 6) and not reader.has("p2", 1)


def test_a_stall_is_not_counted_past_the_end_of_publishing() -> None:
    now = [1.0]
    timeline = Timeline()
    reader = Reader("http://edge", "t", timeline, lambda: now[0], None)
    reader._see(_event(1, "1-1"))
    reader.publish_end = 2.0
    now[0] = 30.0
    reader.close()
    assert timeline.windows[0].stall_s == pytest.approx(1.0)


def test_the_verdict_names_each_objective_missed_and_where() -> None:
    timeline = Timeline()
    timeline.windows[0].acked = 100
    kill = timeline.open("redis-kill", 20.0, error="hook exited 1: no such unit")
    kill.lost, kill.lost_store, kill.stall_s = 12, 12, 31.0
    totals = timeline.totals()
    assert totals["lost"] == 12 and totals["stall_s"] == 31.0
    assert missed(totals, timeline.windows, Objectives(), ["the audit at the end ..."]) == [
        "the audit at the end ...",
        "lost 12 > 0 (redis-kill@20s 12)",
        "a reader went 31.0 s without events > 30 s (redis-kill@20s)",
        "redis-kill@20s: hook exited 1: no such unit",
    ]
    assert missed(totals, timeline.windows, Objectives(max_lost=12, max_stall_s=40), []) == [
        "redis-kill@20s: hook exited 1: no such unit"]
    lines = table(timeline).splitlines()
    assert lines[0].split()[:3] == ["window", "at", "target"]
    assert lines[2].split()[:2] == ["redis-kill", "20.0s"] and lines[-1].startswith("total")


@pytest.mark.parametrize(("args", "says"), [
    (["--fault", "relay-nap@5s"], "unknown fault 'relay-nap'"),
    (["--fault", "relay-kill"], "--fault wants KIND@TIME"),
    (["--hook", "relay-kill"], "--hook wants KIND=COMMAND"),
    (["--fault", "relay-kill@5s", "--duration", "4s"], "is not before the end"),
    (["--readers", "0"], "--readers must be at least 1"),
    (["--fault", "relay-kill@5s", "--url", "http://10.0.0.1:8080"],
     "no hook for relay-kill and no running ssedge up here"),
])
def test_bad_drill_arguments_stop_it_with_one_line(
    args: list[str], says: str, capsys: pytest.CaptureFixture[str], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # no .ssedge/ here
    assert cli.main(["drill", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err
