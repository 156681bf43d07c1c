"""The one backoff with jitter (relay/backoff.py), as the feed and the ingest use it."""

from __future__ import annotations

import asyncio

import pytest

from relay import backoff
from relay.node.feed.base import reconnect_backoff


def test_jitter_spreads_between_its_bounds() -> None:
    assert backoff.jitter(2.0, rng=lambda: 0.0) == 1.0
    assert backoff.jitter(2.0, rng=lambda: 0.999999) == pytest.approx(3.0)
    assert backoff.jitter(2.0, 0.5, 1.0, rng=lambda: 0.5) == 1.5
    assert all(0.5 <= backoff.jitter(1.0) < 1.5 for _ in range(1000))


def test_doubling_from_the_first_wait_to_the_cap_and_reset() -> None:
    b = backoff.Backoff(0.05, 1.0, rng=lambda: 0.5)  # the middle: the step itself
    steps = []
    for _ in range(8):
        steps.append(b.delay())
        b.failures += 1
    assert steps == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0])
    b.reset()
    assert b.delay() == pytest.approx(0.05)
    b.failures = 10_000  # no overflow, still the cap
    assert b.delay() == pytest.approx(1.0)


def test_the_feeds_wait_counts_a_failure_and_stays_within_one_and_a_half_seconds() -> None:
    b = reconnect_backoff()
    assert (b.first_s, b.cap_s) == (0.05, 1.0)
    b.failures = 100
    assert all(0.5 <= b.delay() < 1.5 for _ in range(1000))
    quick = backoff.Backoff(0.0, 0.0)
    asyncio.run(quick.wait())
    assert quick.failures == 1


def test_settled_is_the_first_wait_after_one_that_worked() -> None:
    b = backoff.Backoff(1.0, 8.0, spread=(0.5, 1.0), settled=(1.0, 1.25), rng=lambda: 0.0)
    assert b.delay() == 1.0  # never below the first wait
    b.failures = 1
    assert b.delay() == 1.0  # half of the doubled step
