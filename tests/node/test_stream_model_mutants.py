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

from relay.node import fanout
from relay.node.feed.base import FeedBase
from relay.protocol.resume import CatchUp, Reader
from relay.storage import history
from tests.node.stream_model import KINDS, Action, ModelViolation, RelayConfig, run, strategies
from tests.node.test_stream_model import _gates

BUDGET = int(os.environ.get("SSEDGE_MUTANT_CASES", "600"))


@dataclass(frozen=True)
class Mutant:
    rule: str
    owner: Any  # the class or module holding the function
    name: str
    old: str
    new: str
    kinds: frozenset[str]  # what the model must report (one of them)


def _k(*kinds: str) -> frozenset[str]:
    return frozenset(kinds)


MUTANTS = [
    Mutant("a: Reader.next_chunk skips ring frames at or below last_id (feed behind)",
           Reader, "next_chunk", "if ring.id_at(cursor) <= self.last_id:", "if False:",
           _k("duplicate")),
    Mutant("b: the fan-out does not send what the client has (chunk[5] <= last_id)",
           fanout, "_send", "if chunk[5] <= sub.last_id:", "if False:", _k("duplicate")),
    Mutant("c: CatchUp.take ends only when a page goes through the floor",
           CatchUp, "take", "if max(through, self.after) >= self.until:", "if True:",
           _k("lost")),
    Mutant("d: CatchUp.take rereads from Redis when a cached page proved nothing new",
           CatchUp, "take", "self.fresh = True", "self.fresh = False",
           _k("stall", "lost")),
    Mutant("e: FeedBase.verify finds a stream that went back",
           FeedBase, "verify", "if last < had or added < topic.entries_added:", "if False:",
           _k("stall")),
    Mutant("f: CatchUp._reset re-ids a reset above the floor",
           CatchUp, "_reset", "if frame_id > self.until:", "if False:",
           _k("duplicate", "out-of-order")),
    Mutant("g: history._page's expired reset",
           history, "_page", "elif after < ids.predecessor(first):", "elif False:",
           _k("silent-gap")),
    Mutant("h: the fan-out resumes a cursor behind the ring's tail",
           fanout, "_send", "if cursor < ring.tail or ring.lag_bytes(cursor) > send_max:",
           "if ring.lag_bytes(cursor) > send_max:", _k("lost")),
]


def mutated(mutant: Mutant) -> Any:
    """The function with the rule taken out, compiled in its own module."""
    function = inspect.unwrap(vars(mutant.owner)[mutant.name])
    source = textwrap.dedent(inspect.getsource(function))
    if source.count(mutant.old) != 1:
        raise AssertionError(f"{mutant.rule}: {mutant.old!r} is not once in "
                             f"{function.__qualname__}: bring the row up to date")
    namespace = dict(vars(sys.modules[function.__module__]))
    exec(compile(source.replace(mutant.old, mutant.new),  # noqa: S102  the test's own text
                 f"<{mutant.rule}>", "exec"), namespace)
    return namespace[mutant.name]


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.rule.split(":")[0] for m in MUTANTS])
def test_the_model_catches_the_rule_taken_out(mutant: Mutant, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert mutant.kinds <= set(KINDS)
    monkeypatch.setattr(mutant.owner, mutant.name, mutated(mutant))
    gates = _gates()
    seen: dict[str, int] = {}
    cases = [0]

    def caught(case: tuple[list[Action], list[RelayConfig], int]) -> bool:
        actions, relays, seed = case
        cases[0] += 1
        try:
            run(actions, seed=seed, relays=relays, gates=gates)
        except ModelViolation as exc:
            for kind in exc.kinds:
                seen[kind] = seen.get(kind, 0) + 1
            return bool(mutant.kinds & set(exc.kinds))
        return False

    began = time.monotonic()
    try:
        find(strategies(), caught, settings=settings(
            max_examples=BUDGET, deadline=None, derandomize=True, database=None,
            phases=[Phase.generate], suppress_health_check=list(HealthCheck)))
        found = True
    except Exception:  # noqa: BLE001  hypothesis' NoSuchExample: nothing in the budget
        found = False
    with capsys.disabled():
        print(f"\nmutant {mutant.rule}: {'caught' if found else 'MISSED'} "
              f"{sorted(mutant.kinds & set(seen)) or '-'} after {cases[0]} cases "
              f"({time.monotonic() - began:.1f} s); kinds seen: {seen}")
    assert found, f"{mutant.rule}: no {sorted(mutant.kinds)} in {cases[0]} cases ({seen})"
