"""The supervisor's bookkeeping without processes: backoff, its reset, the crash loop."""

from __future__ import annotations

import os

from relay.dashboard.stats import snapshot, stack_part
from relay.devstack.supervisor import Child, RestartPolicy, exit_text
from relay.harness.processes import group_members

POLICY = RestartPolicy()


def test_backoff_doubles_from_half_a_second_up_to_ten() -> None:
    assert [POLICY.delay(n) for n in range(1, 8)] == [0.5, 1, 2, 4, 8, 10, 10]


def _crash(child: Child, now: float) -> float | None:
    """The child exits at ``now``; restarted at once when a delay is given."""
    delay = child.exited(1, now, POLICY)
    if delay is not None:
        child.restarted(1000 + child.restarts, now + delay)
    return delay


def test_a_child_that_keeps_exiting_is_given_up_after_five_restarts_within_a_minute() -> None:
    child = Child("relay-1", 8101, ["relay"])
    child.started(1, 0.0)
    child.ready(0.5)
    now, delays = 1.0, []
    while (delay := _crash(child, now)) is not None:
        delays.append(delay)
        now += delay + 0.2  # each attempt dies 0.2 s after it started
    assert delays == [0.5, 1, 2, 4, 8]
    assert child.state == "failed" and child.restarts == 5 and child.last_exit == 1


def test_restarts_older_than_the_window_do_not_count_towards_a_crash_loop() -> None:
    child = Child("replay", 8201, ["replay"])
    child.started(1, 0.0)
    for n in range(12):  # an exit every 20 s: at most 3 restarts within any minute
        child.ready(n * 20.0 + 1)
        assert _crash(child, n * 20.0 + 10) is not None
    assert child.restarts == 12 and child.state == "starting"


def test_a_child_that_stayed_up_long_enough_starts_its_backoff_afresh() -> None:
    child = Child("varnish", 8080, ["varnishd"])
    child.started(1, 0.0)
    child.ready(0.0)
    assert _crash(child, 5.0) == 0.5
    child.ready(6.0)
    assert _crash(child, 7.0) == 1  # up only a second: the backoff goes on
    child.ready(8.0)
    assert _crash(child, 8.0 + POLICY.stable_s) == 0.5  # stayed up 30 s


def test_status_names_state_restarts_and_last_exit_in_unix_time() -> None:
    child = Child("redis", 6390, ["redis-server"])
    child.started(42, 10.0)
    child.ready(10.5)
    child.exited(-9, 20.0, POLICY)
    status = child.status(lambda t: t + 1_000_000)
    assert status == {"name": "redis", "port": 6390, "pid": 42, "state": "backoff",
                      "since": 1_000_020.0, "restarts": 0, "last_exit": -9,
                      "last_exit_at": 1_000_020.0}


def test_exit_text_names_signals() -> None:
    assert exit_text(-9) == "-9 SIGKILL"
    assert exit_text(2) == "2"


def test_group_members_finds_this_process() -> None:
    assert os.getpid() in group_members(os.getpgid(0))


def test_the_stats_snapshot_carries_the_stack_only_under_ssedge_up() -> None:
    status = {"state": "running", "failure": None, "pid": 1, "children": [
        {"name": "redis", "state": "up", "pid": 2, "restarts": 2, "last_exit": -9,
         "last_exit_at": 5.0, "port": 6390, "since": 1.0},
        {"name": "relay-1", "state": "backoff", "pid": 3, "restarts": 1, "last_exit": 1,
         "last_exit_at": 6.0, "port": 8101, "since": 1.0},
    ]}
    part = stack_part(status)
    assert part is not None and part["restarts"] == 3
    assert part["children"][1] == {"name": "relay-1", "state": "backoff", "pid": 3,
                                   "restarts": 1, "last_exit": 1, "last_exit_at": 6.0}
    assert snapshot(1.0, 1.0, [], None, stack=part)["stack"] == part
    assert "stack" not in snapshot(1.0, 1.0, [], None)
    assert stack_part(None) is None and stack_part({"children": "x"}) is None
