"""loadtests/report.py: summaries side by side as a Markdown table."""

from __future__ import annotations

import json
from pathlib import Path

from loadtests.report import COLUMNS, table


def test_one_row_per_summary(tmp_path: Path) -> None:
    base = {"users": 500, "published": 600, "delivered": 299_400, "deliveries_per_s": 4990,
            "p50_ms": 9, "p99_ms": 41, "lost_total": 0, "duplicates": 0, "out_of_order": 0,
            "replayed": 0, "failures": 0, "requests": 300_000}
    (tmp_path / "fanout-summary.json").write_text(json.dumps(
        {**base, "scenario": "fanout", "passed": True, "missed": []}))
    (tmp_path / "edge-cache-summary.json").write_text(json.dumps(
        {**base, "scenario": "edge-cache", "passed": False, "missed": ["hit ratio 0.5 < 0.9"],
         "hit_ratio": 0.5}))
    lines = table(tmp_path).splitlines()
    assert len(lines) == 4
    assert all(line.count("|") == len(COLUMNS) + 1 for line in lines)
    assert lines[2].startswith("| edge-cache | FAIL: hit ratio 0.5 < 0.9 | 500 |")
    assert "| fanout | PASS | 500 | 600 | 299,400 | 4,990 | 9 | 41 | 0 |" in lines[3]
