"""A Markdown table of ``ssedge load`` summaries: ``python -m loadtests.report DIR``.

Reads every ``*-summary.json`` under DIR (what ``ssedge load --results DIR`` writes), so runs
before and after a change can be put side by side.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

COLUMNS = ("scenario", "verdict", "users", "published", "delivered", "deliveries/s",
           "p50 ms", "p99 ms", "lost", "dup", "ooo", "replayed", "errors",
           "hit ratio", "client CPU %", "connect p99 ms", "relays' streams peak")


def row(s: dict[str, Any]) -> list[str]:
    def num(key: str) -> str:
        value = s.get(key)
        return "-" if value is None else f"{value:,}" if isinstance(value, int) else str(value)

    return [s["scenario"], "PASS" if s["passed"] else "FAIL: " + "; ".join(s["missed"]),
            num("users"), num("published"), num("delivered"), num("deliveries_per_s"),
            num("p50_ms"), num("p99_ms"), num("lost_total"), num("duplicates"),
            num("out_of_order"), num("replayed"), f"{s['failures']}/{s['requests']:,}",
            num("hit_ratio"), num("client_cpu_pct"), num("connect_p99_ms"), server(s)]


def server(s: dict[str, Any]) -> str:
    """The relays' own count of streams at the peak (the collector's snapshots), summed."""
    nodes = (s.get("server") or {}).get("nodes") or {}
    return f"{sum(n['streams_peak'] for n in nodes.values()):,.0f}" if nodes else "-"


def table(directory: Path) -> str:
    summaries = [json.loads(p.read_text()) for p in sorted(directory.glob("*-summary.json"))]
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row(s)) + " |" for s in summaries]
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(Path(sys.argv[1] if len(sys.argv) > 1 else ".ssedge/load")))
