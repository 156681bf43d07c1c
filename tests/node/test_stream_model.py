"""The stream model (tests/node/stream_model.py): the real stream code, a world that is unkind
to it, and a checker that names every violation.

``test_the_world_keeps_the_contract`` runs hypothesis cases of the whole world. What it finds
on the code as it is goes in ``KNOWN_HOLES``, one row per hole: the hole, the gate that keeps
the random world out of it (``stream_model.GATES``) so that everything else is still checked,
the kind of violation it makes, and a short scenario that shows it. Each scenario runs as an
expected failure of that kind (strict: once the hole is fixed it passes, the test fails, and
the row must go, which opens the gate). Nothing else is held back: when the list is empty the
random world has every fault.

Run alone: ``.venv/bin/pytest tests/node/test_stream_model.py -s`` (it prints how many cases
ran). ``SSEDGE_MODEL_CASES=2000`` runs more.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, Phase, given, settings

from tests.node.stream_model import (
    GATES,
    KINDS,
    Action,
    Case,
    ModelViolation,
    RelayConfig,
    run,
    run_case,
    strategies,
)

CASES = int(os.environ.get("SSEDGE_MODEL_CASES", "250"))
ONE = [RelayConfig(4, False, 0)]


@dataclass(frozen=True)
class Hole:
    name: str  # what is missing, in the words of the fix
    gate: str  # what the random world holds back while it is missing (stream_model.GATES)
    kind: str  # the violation it makes
    actions: list[Action]  # a scenario that shows it
    relays: list[RelayConfig]
    seed: int = 0
    max_delay: int = 2  # loop turns a Redis reply may take


# Holes of the code as it is (found by this model); each row's scenario must fail with its
# kind. When a fix lands, its scenario passes and its row goes (the gate opens with it).
KNOWN_HOLES: list[Hole] = []

# The holes this model found in the resume path of 2026-12-07 (each failed with its kind on
# f15c5b7); fixed since, their scenarios are kept as cases that must pass, with every gate open.
FIXED_HOLES: list[Hole] = [
    Hole("no position id line: a browser that drops before its first event reconnects with "
         "no id and starts live; what was published meanwhile is lost (DESIGN: the stream "
         "opens with the client's position as an id: line)",
         "re-anchor", "lost",
         [("connect", 0, 0, False), ("settle", 20), ("read", 0, 9, 0), ("drop", 0),
          ("publish", 0, 2, None), ("read", 0, 9, 0), ("settle", 20),
          ("connect", 0, 0, False)], ONE),
    Hole("the feed does not detect retention that overtook it: XREAD from a trimmed id "
         "silently starts at the first entry, and the ring goes on with no reset",
         "trim-behind-feeds", "silent-gap",
         [("publish", 0, 2, None), ("connect", 0, 0, False), ("settle", 20),
          ("read", 0, 10, 0), ("publish", 0, 6, None), ("trim", 0, 1, False),
          ("read", 0, 10, 0)], ONE),
    Hole("a stream deleted and made again with newer ids is read on by the feed before "
         "verify looks (and verify misses it when the new stream has more entries): the "
         "rest of the old stream is skipped with no reset",
         "recreate-quiet", "silent-gap",
         [("connect", 0, 0, False), ("settle", 20), ("publish", 0, 3, None),
          ("read", 0, 1, 0), ("settle", 20), ("recreate", 0, 2, False), ("read", 0, 5, 0)],
         ONE),
    Hole("a foreign id (from a stream deleted and made again) gets no unknown reset: a "
         "browser back with an id of the old stream, now inside the new one's range, is "
         "served after it and the new stream's entries below it are skipped",
         "recreate-quiet", "lost",
         [("connect", 0, 0, False), ("settle", 20), ("publish", 0, 3, None),
          ("read", 0, 9, 0), ("settle", 20), ("drop", 0), ("recreate", 0, 2, True),
          ("publish", 0, 2, None), ("read", 0, 9, 0), ("connect", 0, 0, False)], ONE),
    Hole("a stream does not re-attach when its topic was forgotten during its awaits: a "
         "multi-topic stream priming its second topic subscribes to the first one's Topic "
         "after the sweeper expired it (its last reader left meanwhile); the feed never "
         "reads it again",
         "forget-between-awaits", "stall",
         [("connect", 0, 0, False), ("settle", 20), ("connect", 3, 0, False), ("drop", 0),
          ("expire", 0), ("publish", 0, 1, None), ("read", 0, 9, 0)], ONE),
    Hole("a position 0 gets no reset when its events were trimmed: a browser whose multi-"
         "topic start frame said 0-0 for an empty topic comes back after entries were "
         "added and trimmed; history after 0-0 has no expired reset (history._page skips "
         "it for after=0)",
         "no-trim-at-zero", "silent-gap",
         [("connect", 3, 0, False), ("settle", 20), ("drop", 3), ("publish", 0, 6, None),
          ("read", 0, 9, 0), ("settle", 10), ("trim", 0, 1, False),
          ("connect", 3, 0, False)], ONE),
    Hole("history pages do not re-check retention between batches: a trim between a page's "
         "first read (XINFO + XRANGE) and the next XRANGE makes it start at the first "
         "retained entry, and the page skips the trimmed ones with no reset",
         "one-batch-pages", "silent-gap",
         [("connect", 0, 0, False), ("settle", 20), ("publish", 0, 1, None),
          ("read", 0, 9, 0), ("settle", 20), ("drop", 0), ("publish", 0, 8, None),
          ("read", 0, 9, 0), ("settle", 10), ("connect", 0, 0, False),
          ("trim", 0, 2, False)], [RelayConfig(3, False, 0)], max_delay=6),
]


# What the contract does not promise (docs/ARCHITECTURE.md, "Known limits"): gates kept shut
# for good, each with why.
KNOWN_LIMITS: dict[str, str] = {
    "zero-across-lives": "a reader that holds 0-0 (it joined an empty topic and no event "
                         "reached it) when the stream is deleted and made again is served the "
                         "new life from its start: what the old life had is not told (0-0 is "
                         "a position in every life)",
    "lower-past-a-client": "a client whose id is past the end of its stream is told "
                           "`unknown` and goes on live from the stream's last id (after a "
                           "lossy failover it had every event up to there); a stream made "
                           "again with explicit ids below that id looks the same, and those "
                           "events are not sent to it",
}


def _gates() -> frozenset[str]:
    """The gates the random world keeps shut: those of the holes still known, and the known
    limits."""
    return frozenset(h.gate for h in KNOWN_HOLES) | frozenset(KNOWN_LIMITS)


def test_every_gate_is_a_known_holes() -> None:
    assert _gates() <= set(GATES)


_ran = [0]


@settings(max_examples=CASES, deadline=None, derandomize=True, database=None,
          phases=[Phase.explicit, Phase.generate, Phase.shrink],
          suppress_health_check=list(HealthCheck))
@given(strategies())
def _the_world(case: Case) -> None:
    _ran[0] += 1
    run_case(case, _gates())


def test_the_world_keeps_the_contract(capsys: pytest.CaptureFixture[str]) -> None:
    _ran[0] = 0
    began = time.monotonic()
    _the_world()
    took = time.monotonic() - began
    with capsys.disabled():
        print(f"\nstream model: {_ran[0]} cases in {took:.1f} s "
              f"({_ran[0] / took:.0f}/s), gates shut: {sorted(_gates()) or 'none'}")


@pytest.mark.parametrize("hole", [
    pytest.param(h, id=f"{i}-{h.gate}", marks=pytest.mark.xfail(
        strict=True, raises=ModelViolation, reason=h.name))
    for i, h in enumerate(KNOWN_HOLES)] or [pytest.param(None, id="none")])
def test_known_hole(hole: Hole | None) -> None:
    """The scenario of a known hole, checked like any case (with every other hole's gate
    shut): expected to fail with the hole's kind of violation, and nothing else. Once the hole
    is fixed it passes, which fails the suite (strict): remove the row."""
    if hole is None:
        return  # none known
    assert hole.kind in KINDS and hole.gate in GATES
    try:
        run(hole.actions, seed=hole.seed, relays=hole.relays, gates=_gates() - {hole.gate},
            max_delay=hole.max_delay)
    except ModelViolation as exc:
        if hole.kind not in exc.kinds:
            raise AssertionError(f"expected {hole.kind}, got {exc}") from None
        raise


@pytest.mark.parametrize("hole", [pytest.param(h, id=f"{i}-{h.gate}")
                                  for i, h in enumerate(FIXED_HOLES)])
def test_a_fixed_hole_stays_fixed(hole: Hole) -> None:
    """The scenario of a hole fixed since it was found, with every gate open: no violation."""
    run(hole.actions, seed=hole.seed, relays=hole.relays, gates=_gates(),
        max_delay=hole.max_delay)
