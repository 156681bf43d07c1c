"""Load shapes for the scenarios: ramp, step and soak (Locust ``LoadTestShape``).

Locust runs the first shape class it finds in its ``-f`` files, so each shape has a file of its
own to add: ``locust -f loadtests/locustfile.py,loadtests/shape_step.py --config
loadtests/fanout.conf``. They read Locust's own ``--users``, ``--spawn-rate`` and
``--run-time`` (``use_common_options``), and stop at the run time. The publishers
(``fixed_count``) are spawned first and kept throughout: the shapes move the readers only.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from locust import LoadTestShape

log = logging.getLogger("ssedge.load")


class _Shape(LoadTestShape):
    abstract = True
    use_common_options = True

    @property
    def options(self) -> Any:
        assert self.runner is not None
        return self.runner.environment.parsed_options

    def fixed(self) -> int:
        """Users of the fixed-count classes (the publisher): always there."""
        assert self.runner is not None
        return sum(c.fixed_count for c in self.runner.environment.user_classes)

    def share(self, part: float) -> int:
        """``part`` (0 to 1) of the readers, on top of the publishers."""
        readers = max(0, int(self.options.num_users or 1) - self.fixed())
        return self.fixed() + math.ceil(readers * min(1.0, max(0.0, part)))

    def ended(self) -> bool:
        run_time = self.options.run_time
        return bool(run_time) and self.get_run_time() >= float(run_time)

    @property
    def spawn_rate(self) -> float:
        return float(self.options.spawn_rate or 1)


class Ramp(_Shape):
    """Readers rise in a straight line to ``--users`` over ``--ssedge-ramp-share`` (0.8) of the
    run time, then hold: the latency against the load as a curve, where it bends."""

    def tick(self) -> tuple[int, float] | None:
        if self.ended():
            return None
        ramp_for = float(self.options.run_time or 600) * float(self.options.ssedge_ramp_share)
        return self.share(self.get_run_time() / max(1e-9, ramp_for)), self.spawn_rate


class Step(_Shape):
    """``--ssedge-steps`` (5) equal plateaus up to ``--users``, each an equal part of the run
    time: each load level held long enough to read its own percentiles."""

    def tick(self) -> tuple[int, float] | None:
        if self.ended():
            return None
        steps = max(1, int(self.options.ssedge_steps))
        step_for = float(self.options.run_time or 60 * steps) / steps
        step = min(steps, int(self.get_run_time() // step_for) + 1)
        return self.share(step / steps), self.spawn_rate


class Soak(_Shape):
    """``--users`` at ``--spawn-rate``, held for the run time (say 30m or hours); Locust's
    statistics are reset once every user is there, so the percentiles are the steady state's,
    not the ramp's (the loss counts cover the whole run)."""

    _reset = False

    def tick(self) -> tuple[int, float] | None:
        if self.ended():
            return None
        target = self.share(1.0)
        if not self._reset and self.get_current_user_count() >= target:
            assert self.runner is not None
            self.runner.stats.reset_all()
            self._reset = True
            log.info("soak: %d users reached; statistics reset for the steady state", target)
        return target, self.spawn_rate
