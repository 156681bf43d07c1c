"""``make bench-100k`` at small scale: its code runs end to end in ``make test``.

2,000 streams to a relay of 2 workers from 2 load clients on 2 source addresses: every stream
connects and is held (by the clients' count and the relay's), no event is lost or doubled, the
report is written. The figures themselves are the benchmark's (docs/results/hundredk.md).
"""

from __future__ import annotations

import time
from pathlib import Path

from bench import hundredk
from bench.fanout import SSELOAD


def test_hundredk_smoke(tmp_path: Path) -> None:
    assert SSELOAD.exists(), "make bench/sseload (a prerequisite of make test)"
    args = hundredk.parse(["--smoke", "--report", str(tmp_path / "hundredk.md")])
    began = time.monotonic()
    rows, report = hundredk.run(args)
    connect = rows["Connect and hold: memory"][0]
    assert connect["connected"] == connect["held_by_relay"] == args.streams
    rest = next(iter(rows[k] for k in rows if k.startswith("At rest")))[0]
    assert rest["held_by_relay"] == args.streams
    for row in rows["One event, then a steady rate, to every stream"]:
        assert row["streams"] == args.streams
        assert row["lost"] == row["dup"] == row["closed"] == 0
        assert row["deliveries"] == row["expected"] == row["published"] * args.streams
        assert row["p99_ms"] is not None
    text = report.read_text()
    assert "| streams | connected |" in text and "kib_per_stream_relay" in text
    assert time.monotonic() - began < 30
