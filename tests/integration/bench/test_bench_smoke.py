"""The benchmarks' short versions: `make bench` and `make bench-compression` take minutes and
run alone on a quiet machine; these run the same code (the C load client, real relays, Redis
and HAProxy) for a few seconds, so a harness that broke is found by `make test`, not on the
day of a measurement. They check the harness reports whole runs, not how fast anything was."""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]
SSELOAD = ROOT / "bench" / "sseload"


def _sseload() -> None:
    if not SSELOAD.exists():
        subprocess.run(["make", "bench/sseload"], cwd=ROOT, check=True, capture_output=True)


def _run(args: list[str], timeout: float) -> list[dict[str, Any]]:
    """The benchmark in a process group of its own, stopped by its PID if it hangs; its
    ``run {…}`` lines."""
    _sseload()
    process = subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        out, _ = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 0, out[-3000:]
    return [ast.literal_eval(line[4:]) for line in out.splitlines() if line.startswith("run {")]


def test_fanout_smoke(tmp_path: Path) -> None:
    rows = _run(["bench.fanout", "--smoke", "--servers", "ssedge-1w",
                 "--report", str(tmp_path / "fanout.md")], 180)
    assert [r["rate"] for r in rows] == [10, 100]
    for row in rows:
        assert row["status"] == "ok" and row["lost"] == 0 and row["dup"] == 0, row
        assert row["delivered_per_s"] > 0
    assert "SSELOAD_DEFER" in (tmp_path / "fanout.md").read_text()


def test_compression_smoke() -> None:
    rows = _run(["bench.compression", "--smoke", "--defer", "--rx-at-wake",
                 "--modes", "plain", "shared"], 240)
    by_mode = {row["mode"]: row for row in rows}
    assert set(by_mode) == {"plain", "shared"}
    for row in rows:
        assert row["status"] == "ok" and row["lost"] == 0 and row["inflate_errors"] == 0, row
    shared = by_mode["shared"]
    assert shared["compressed_streams"] == 100
    # the topic's ticks compress: fewer bytes per delivery on the wire than plain
    assert shared["wire_bytes_per_delivery"] < by_mode["plain"]["wire_bytes_per_delivery"] / 2
