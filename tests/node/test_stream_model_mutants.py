"""The stream model must catch each rule of the resume path taken away, by its kind.

Each row of ``MUTANTS`` takes one rule out of the production code: the source of one function
with one piece of text replaced (``old`` must be found exactly once: a row whose text is gone
from the code fails, to be brought up to date), compiled in its module and patched in for the
test. The model then runs its random world (with the gates of ``KNOWN_HOLES`` shut, as the
suite runs it) until it reports a violation of one of the row's kinds; any other violations
on the way are noted, not counted. A row is one line of data: add one for every rule that
lands.
"""

from __future__ import annotations

import inspect
import os
import sys
import textwrap
import time
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, find, settings

from relay.node import fanout, stream
from relay.node.feed.base import FeedBase
from relay.protocol import resume
from relay.protocol.resume import CatchUp, Reader
from relay.storage import history
from tests.node.stream_model import (
    KINDS,
    Action,
    Case,
    ModelViolation,
    RelayConfig,
    run,
    run_case,
    strategies,
)
from tests.node.test_stream_model import FIXED_HOLES, _gates

BUDGET = int(os.environ.get("SSEDGE_MUTANT_CASES", "400"))


Edit = tuple[Any, str, str, str]  # the class or module, the function's name, old text, new


@dataclass(frozen=True)
class Scenario:
    """A case that shows the mutant at once (the random search may take long to reach it)."""

    actions: list[Action]
    relays: list[RelayConfig]
    seed: int = 0
    edge_fail: float = 0.1
    edge_stale: float = 0.4
    max_delay: int = 2


@dataclass(frozen=True)
class Mutant:
    rule: str
    kinds: frozenset[str]  # what the model must report (one of them)
    edits: tuple[Edit, ...]
    scenario: Scenario | None = None  # checked instead of the random search, when given


def _k(*kinds: str) -> frozenset[str]:
    return frozenset(kinds)


_BEHIND = [("connect", 0, 0, False), ("settle", 20), ("publish", 0, 1, None), ("read", 0, 9, 0),
           ("settle", 20), ("drop", 0), ("publish", 0, 8, None), ("read", 0, 9, 0),
           ("settle", 10), ("trim", 0, 2, False), ("connect", 0, 0, False)]
_STALE_EMPTY = Scenario(
    [("connect", 0, 0, False), ("settle", 20), ("publish", 0, 1, None), ("read", 0, 9, 0),
     ("settle", 20), ("drop", 0), ("publish", 0, 5, None), ("read", 0, 9, 0), ("settle", 10),
     ("failover", 5), ("connect", 0, 0, False), ("settle", 30), ("verify", 0), ("settle", 20),
     ("publish", 0, 6, None), ("connect", 0, 0, False), ("settle", 30), ("read", 0, 9, 0)],
    [RelayConfig(3, True, 0)], edge_fail=0.0, edge_stale=1.0)
def _fixed(gate: str, nth: int = 0) -> Scenario:
    """The scenario of the hole with ``gate`` fixed this round (the ``nth`` of that gate)."""
    hole = [h for h in FIXED_HOLES if h.gate == gate][nth]
    return Scenario(hole.actions, hole.relays, hole.seed, max_delay=hole.max_delay)


_SKIP = (Reader, "next_chunk", "if ring.id_at(cursor) <= self.last_id:", "if False:")

MUTANTS = [
    Mutant("a: Reader.next_chunk skips ring frames at or below last_id (feed behind)",
           _k("duplicate"), (_SKIP,)),
    Mutant("b: the fan-out does not send what the client has (chunk[5] <= last_id)",
           _k("duplicate"), ((fanout, "_send", "if chunk[2] <= sub.last_id or not chunk[1]:",
                              "if not chunk[1]:"),)),
    Mutant("c: CatchUp.take ends only when a page goes through the floor", _k("lost"),
           ((CatchUp, "take", "if max(through, self.after) >= self.until:", "if True:"),)),
    Mutant("d: CatchUp.take rereads from Redis when a cached page proved nothing new",
           _k("stall", "lost"),
           ((CatchUp, "take", "self.fresh = True", "self.fresh = False"),), _STALE_EMPTY),
    # a stream deleted and made again is found by the feed's count (rule 8) at its next read,
    # else by verify: taken out together
    Mutant("e: FeedBase.verify and absorb find a stream that went back",
           _k("stall", "silent-gap", "lost"),
           ((FeedBase, "verify", "if last < had or added < counted:",
             "if False:"),
            (FeedBase, "_gap", "if known is not None and added < known + len(entries):",
             "if False:"),
            (FeedBase, "_gap", "        if gone < 0:\n            return NEW_LIFE",
             "        if gone < 0:\n            gone = 0")),
           _fixed("recreate-quiet", 0)),
    # taken out alone it changes nothing a client sees: the reset keeps the page's id, the
    # ring frames below it are skipped by rule a (and they were trimmed: the reset covers
    # them). With rule a gone too, they come after it
    Mutant("f: CatchUp._reset re-ids a reset above the floor (and a, which masks it)",
           _k("out-of-order", "duplicate"),
           ((CatchUp, "_reset", "if frame_id > self.until:", "if False:"), _SKIP),
           Scenario(_BEHIND, [RelayConfig(4, False, 0)])),
    Mutant("g: history._page's expired reset", _k("silent-gap"),
           ((history, "_expired", "if after < ids.predecessor(first):", "if False:"),),
           Scenario(_BEHIND, [RelayConfig(4, False, 0)])),
    Mutant("h: the fan-out resumes a cursor behind the ring's tail", _k("lost"),
           ((fanout, "_send",
             "if cursor < ring.tail or ring.lag_bytes(cursor) > HELD_SENDS * send_max:",
             "if ring.lag_bytes(cursor) > HELD_SENDS * send_max:"),)),
    # the rules of this round (docs/ARCHITECTURE.md, resume rules 7 to 12), each with the
    # scenario of the hole it closed (test_stream_model.FIXED_HOLES)
    Mutant("i: a stream opens with its position (id: line, no data)", _k("lost"),
           ((stream, "serve",
             "first_frames += plan.reset + encode_position(ids.format(plan.last_id))",
             "first_frames += plan.reset"),), _fixed("re-anchor")),
    Mutant("j: a feed read that jumped trimmed entries gets a reset in the ring",
           _k("silent-gap"),
           ((FeedBase, "deliver", "if gaps and gaps.get(key):", "if False:"),),
           _fixed("trim-behind-feeds")),
    Mutant("k: an id that is none of the stream's entries is told unknown (ring, page, feed)",
           _k("lost", "silent-gap"),
           ((resume, "_foreign", "if below == after or (", "if True or ("),
            (history, "_retention",
             '            return b""\n'
             '        return reset_frame("unknown", after, first, ids.ZERO)',
             '            return b""\n        return b""'),
            (history, "_retention",
             "not is_entry:\n        return reset_frame(\"unknown\", after, first, ids.ZERO)",
             "not is_entry:\n        return b\"\""),
            (stream, "check_future", "and not await store.holds(",
             "and False and not await store.holds("))),
    Mutant("l: a position 0-0 is told of trims", _k("silent-gap"),
           ((history, "_retention", "        if info is not None and int(info[\"entries-added\"]) "
             "> int(info[\"length\"]):", "        if False:"),), _fixed("no-trim-at-zero")),
    Mutant("m: a page overtaken by a trim between two batches ends there", _k("silent-gap"),
           ((history, "read_page",
             "if first_now is None or first_now > ids.from_redis(entries[-1][0]):",
             "if False:"),)),
    Mutant("n: a stream attaches only to a topic that is still fed", _k("stall"),
           ((stream, "attached",
             "return relay.hub.topics.get(topic.name) is topic and topic.primed",
             "return True"),), _fixed("forget-between-awaits")),
]


def mutated(edits: list[Edit]) -> Any:
    """The function with the rule taken out (every edit of it), compiled in its own module."""
    owner, name = edits[0][0], edits[0][1]
    function = inspect.unwrap(vars(owner)[name])
    source = textwrap.dedent(inspect.getsource(function))
    for _, _, old, new in edits:
        if source.count(old) != 1:
            raise AssertionError(f"{old!r} is not once in {function.__qualname__}: bring the "
                                 "row up to date")
        source = source.replace(old, new)
    namespace = dict(vars(sys.modules[function.__module__]))
    exec(compile(source, f"<mutant of {function.__qualname__}>", "exec"), namespace)
    return namespace[name]


def _kinds(run_it: Any) -> list[str]:
    try:
        run_it()
    except ModelViolation as exc:
        return exc.kinds
    return []


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.rule.split(":")[0] for m in MUTANTS])
def test_the_model_catches_the_rule_taken_out(mutant: Mutant, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert mutant.kinds and mutant.kinds <= set(KINDS)
    by_function: dict[tuple[int, str], list[Edit]] = {}
    for edit in mutant.edits:
        by_function.setdefault((id(edit[0]), edit[1]), []).append(edit)
    for edits in by_function.values():
        monkeypatch.setattr(edits[0][0], edits[0][1], mutated(edits))
    gates = _gates()
    began = time.monotonic()
    sc = mutant.scenario
    if sc is not None:
        seen = _kinds(lambda: run(sc.actions, seed=sc.seed, relays=sc.relays, gates=gates,
                                  edge_fail=sc.edge_fail, edge_stale=sc.edge_stale,
                                  max_delay=sc.max_delay))
        how = "its scenario"
        found = bool(mutant.kinds & set(seen))
    else:
        counted: dict[str, int] = {}
        cases = [0]

        def caught(case: Case) -> bool:
            cases[0] += 1
            kinds = _kinds(lambda: run_case(case, gates))
            for kind in kinds:
                counted[kind] = counted.get(kind, 0) + 1
            return bool(mutant.kinds & set(kinds))

        try:
            find(strategies(), caught, settings=settings(
                max_examples=BUDGET, deadline=None, derandomize=True, database=None,
                phases=[Phase.generate], suppress_health_check=list(HealthCheck)))
            found = True
        except Exception:  # noqa: BLE001  hypothesis' NoSuchExample: nothing in the budget
            found = False
        seen = sorted(counted)
        how = f"{cases[0]} random cases"
    with capsys.disabled():
        print(f"\nmutant {mutant.rule}: {'caught' if found else 'MISSED'} "
              f"{sorted(mutant.kinds & set(seen)) or '-'} by {how} "
              f"({time.monotonic() - began:.1f} s); all kinds seen: {seen}")
    assert found, f"{mutant.rule}: no {sorted(mutant.kinds)} ({seen})"
