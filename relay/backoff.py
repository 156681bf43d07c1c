"""Waiting before trying again, the one way ssedge does it: doubling per failure up to a cap,
and always spread by a random factor (jitter), so that a crowd that failed together (relays
that lost Redis, publishers refused at once, clients told to come back) does not come back in
step.

``jitter`` spreads one wait; ``Backoff`` counts failures and says the next wait. Who waits:
the feed reconnecting to Redis (``relay.node.feed``), an ingest follower reconnecting to its
upstream and a process retrying a lease (``relay.ingest``), a publisher retrying with its key
(``relay.web.client``), a stream refused with a ``retry:`` (``relay.node.stream``).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

#: a source of numbers in [0, 1): ``random.random``, or a fixed one in a test
Random = Callable[[], float]
#: doublings at most: 2**30 times the first wait is beyond any cap, and no float overflows
_MAX_DOUBLINGS = 30


def jitter(seconds: float, low: float = 0.5, high: float = 1.5,
           rng: Random = random.random) -> float:
    """``seconds`` times a random factor from ``low`` to ``high``."""
    return seconds * (low + (high - low) * rng())


class Backoff:
    """The wait before the next try: ``first_s`` doubled per failure up to ``cap_s`` (or
    ``first_s``, when that is longer), spread by ``spread``; ``reset`` once a try worked.
    With ``settled``, the wait before the first try after one that worked is ``first_s``
    spread by it instead (an upstream's own ``retry``, say, never shortened)."""

    def __init__(self, first_s: float, cap_s: float, *,
                 spread: tuple[float, float] = (0.5, 1.5),
                 settled: tuple[float, float] | None = None,
                 rng: Random = random.random) -> None:
        self.first_s = first_s
        self.cap_s = cap_s
        self.failures = 0
        self._spread = spread
        self._settled = settled
        self._rng = rng

    def delay(self) -> float:
        """The next wait, for ``failures`` failures so far."""
        if self.failures == 0 and self._settled is not None:
            return jitter(self.first_s, *self._settled, rng=self._rng)
        step = self.first_s * 2.0 ** min(self.failures, _MAX_DOUBLINGS)
        return jitter(min(max(self.cap_s, self.first_s), step), *self._spread, rng=self._rng)

    def reset(self) -> None:
        self.failures = 0

    async def wait(self) -> None:
        """Sleep the next wait and count one more failure."""
        delay = self.delay()
        self.failures += 1
        await asyncio.sleep(delay)
