"""relay/cli/load_server.py: the collector's snapshots of a load run, summed up."""

from __future__ import annotations

from typing import Any

from relay.cli.load_server import line, summarize


def _snap(t: float, streams: float, out: float | None, drops: float, hits: int,
          requests: int, up: bool = True, restarts: int = 0) -> dict[str, Any]:
    node = ({"node": "relay-1", "up": True, "streams_open": streams, "events_out_per_s": out,
             "backlog_drops": drops, "replay_fetches": 3.0, "ring_fill": 0.1,
             "redis_lag_s": 0.002} if up else {"node": "relay-1", "up": False})
    return {"t": t, "nodes": [node, {"node": "relay-2", "up": True, "streams_open": 5,
                                     "events_out_per_s": 10.0, "backlog_drops": 7.0,
                                     "replay_fetches": 0.0, "ring_fill": 0.0,
                                     "redis_lag_s": 0.001}],
            "edge": {"classes": {"handshake": {"hit": hits, "requests": requests},
                                 "replay": {"hit": 0, "requests": 0}}},
            "stack": {"restarts": restarts}}


def test_peaks_deltas_and_hit_ratios_over_the_run() -> None:
    summary = summarize([
        _snap(1.0, 10, None, 2.0, 100, 110),
        _snap(2.0, 50, 900.0, 2.0, 180, 200),
        _snap(3.0, 0, None, 0, 0, 0, up=False),
        _snap(4.0, 40, 500.0, 5.0, 280, 300, restarts=1),
    ])
    one = summary["nodes"]["relay-1"]
    assert one == {"up_share": 0.75, "streams_peak": 50, "events_out_per_s_peak": 900.0,
                   "events_out_per_s_mean": 700.0, "backlog_drops": 3.0, "replay_fetches": 0.0,
                   "ring_fill_max": 0.1, "redis_lag_ms_max": 2.0}
    assert summary["edge"]["handshake"] == {"requests": 190, "hit_ratio": 0.9474}
    assert summary["edge"]["replay"] == {"requests": 0, "hit_ratio": None}
    assert summary["snapshots"] == 4 and summary["stack_restarts"] == 1
    text = line(summary)
    assert text.startswith("server: relay-1: streams peak 50, out peak 900/s, backlog drops 3")
    assert "up 75%" in text and "edge hits: handshake 95%" in text and "restarts 1" in text


def test_a_node_that_restarted_counts_from_zero() -> None:
    summary = summarize([_snap(1.0, 1, 1.0, 9.0, 0, 0), _snap(2.0, 1, 1.0, 4.0, 0, 0)])
    assert summary["nodes"]["relay-1"]["backlog_drops"] == 4.0


def test_no_snapshots_says_why() -> None:
    summary = summarize([])
    assert summary["snapshots"] == 0 and "collector" in line(summary)
