"""A span of time as people write it on a command line (``90``, ``90s``, ``2m``, ``1h30m``:
Locust's ``--run-time`` spelling), for ``ssedge load`` and ``ssedge drill``."""

from __future__ import annotations

import re

_SPAN = re.compile(r"(\d+(?:\.\d+)?)([smh]?)")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600}


def seconds(span: str) -> float:
    """``90``, ``90s``, ``2m``, ``1h30m`` as seconds; ValueError for anything else."""
    parts = _SPAN.findall(span)
    if not parts or "".join(n + u for n, u in parts) != span.strip():
        raise ValueError(f"not a duration: {span!r} (write e.g. 60s, 2m, 1h30m)")
    return sum(float(n) * _UNIT[u] for n, u in parts)
