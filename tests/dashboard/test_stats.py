"""The dashboard's numbers from relay scrapes and edge log lines (no I/O)."""

from __future__ import annotations

import pytest

from relay.dashboard import stats

SCRAPE = """\
# HELP ssedge_streams_open Event streams open now.
# TYPE ssedge_streams_open gauge
ssedge_streams_open{node="relay-1",worker="0"} 3
ssedge_streams_open{node="relay-1",worker="1"} 4
ssedge_events_in_total{node="relay-1",worker="0"} 100
ssedge_events_in_total{node="relay-1",worker="1"} 100
ssedge_events_out_total{node="relay-1",worker="0"} 1000
ssedge_ring_fill_ratio{node="relay-1",worker="0"} 0.25
ssedge_ring_fill_ratio{node="relay-1",worker="1"} 0.5
ssedge_feed_lag_seconds{node="relay-1",worker="0"} 0.002
ssedge_redis_connected{node="relay-1",worker="0"} 1
ssedge_responses_total{node="relay-1",worker="0",status="200"} 7
"""


def test_a_scrape_sums_workers_and_keeps_the_worst_gauge() -> None:
    s = stats.parse_metrics(SCRAPE, 10.0, "http://x")
    assert s.node == "relay-1"
    assert s.sums["ssedge_streams_open"] == 7
    assert s.maxima["ssedge_ring_fill_ratio"] == 0.5
    assert s.sums["ssedge_responses_total"] == 7


def test_rates_come_from_counter_deltas_and_survive_a_restart() -> None:
    first = stats.parse_metrics(SCRAPE, 10.0, "u")
    later = stats.parse_metrics(SCRAPE.replace(" 1000", " 1500"), 12.0, "u")
    node = stats.node_snapshot("u", first, later)
    assert node["events_out_per_s"] == 250
    assert node["events_in_per_s"] == 0
    assert node["streams_open"] == 7 and node["ring_fill"] == 0.5
    assert node["redis_lag_s"] == 0.002 and node["redis_connected"]
    # no previous scrape: no rate yet
    assert stats.node_snapshot("u", None, first)["events_out_per_s"] is None
    # restarted node: its counters began again, the rate is what it counted since
    restarted = stats.parse_metrics(SCRAPE.replace(" 1000", " 40"), 14.0, "u")
    assert stats.node_snapshot("u", later, restarted)["events_out_per_s"] == 20  # 40 in 2 s


def test_a_node_that_does_not_answer_is_down_under_its_last_name() -> None:
    first = stats.parse_metrics(SCRAPE, 10.0, "u")
    node = stats.node_snapshot("u", first, None, "connection refused")
    assert node == {"node": "relay-1", "url": "u", "up": False, "error": "connection refused"}
    assert stats.totals([node])["nodes_up"] == 0


@pytest.mark.parametrize(("path", "kind"), [
    ("/v1/handshake", "handshake"),
    ("/v1/streams/demo", "metadata"),
    ("/v1/streams/demo/events", None),
    ("/v1/replay/demo", "replay"),
    ("/", "pages"),
    ("/dashboard", "pages"),
    ("/static/demo.js", "pages"),
    ("/metrics", None),
    ("/v1/streams/", None),
])
def test_edge_requests_are_classified_by_path(path: str, kind: str | None) -> None:
    assert stats.classify(path) == kind


def test_edge_hit_ratios_since_start_and_over_the_interval() -> None:
    counts = stats.EdgeCounts()
    for line in ["miss /v1/handshake", "hit /v1/handshake", "hit /v1/handshake",
                 "pass /v1/streams/t/events", "hit /v1/replay/t", "garbage"]:
        counts.add_line(line + "\n")
    first = counts.copy()
    counts.add_line("miss /v1/handshake")
    snap = stats.edge_snapshot(first, counts, 2.0)
    h = snap["handshake"]
    assert (h["hit"], h["miss"], h["requests"]) == (2, 2, 4)
    assert h["hit_ratio"] == 0.5 and h["interval_hit_ratio"] == 0.0
    assert h["requests_per_s"] == 0.5
    assert snap["replay"]["hit_ratio"] == 1.0
    assert snap["metadata"]["hit_ratio"] is None  # nothing asked yet
    assert stats.edge_snapshot(None, counts, 1.0)["handshake"]["requests_per_s"] is None


def test_totals_add_the_nodes_up() -> None:
    a = stats.node_snapshot("a", stats.parse_metrics(SCRAPE, 1, "a"),
                            stats.parse_metrics(SCRAPE, 2, "a"))
    b = dict(a, node="relay-2", streams_open=1, ring_fill=0.9)
    down = {"node": "relay-3", "url": "c", "up": False, "error": "x"}
    t = stats.totals([a, b, down])
    assert t["nodes_up"] == 2 and t["streams_open"] == 8 and t["ring_fill"] == 0.9
    assert t["events_out_per_s"] == 0
    snap = stats.snapshot(2.0, 1.0, [a, b, down], None, "no edge configured")
    assert snap["edge"] == {"up": False, "error": "no edge configured", "classes": {}}
