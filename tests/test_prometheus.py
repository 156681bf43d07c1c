"""The one Prometheus renderer: histograms, merging workers' expositions, and names that
``promtool check metrics`` (Debian's prometheus package, installed by ``make system``) finds
nothing to say about, for every kind of ssedge process."""

from __future__ import annotations

import subprocess

from relay import prometheus
from relay.ingest.status import Status, render
from relay.node.metrics import Metrics
from relay.prometheus import Exposition, Histogram
from replay.app import ReplayMetrics


def promtool(text: bytes) -> str:
    done = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                          timeout=30)
    return (done.stdout + done.stderr).decode().strip()


def test_a_histogram_counts_cumulative_buckets_its_sum_and_count() -> None:
    h = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 7.0):
        h.observe(value)
    out = Exposition("n", worker="3")
    out.histogram("x_seconds", "help", h)
    lines = out.text().decode().splitlines()
    assert lines[2:] == [
        'ssedge_x_seconds_bucket{node="n",worker="3",le="0.1"} 2',
        'ssedge_x_seconds_bucket{node="n",worker="3",le="1"} 3',
        'ssedge_x_seconds_bucket{node="n",worker="3",le="+Inf"} 4',
        'ssedge_x_seconds_sum{node="n",worker="3"} 7.65',
        'ssedge_x_seconds_count{node="n",worker="3"} 4',
    ]


def test_merged_workers_keep_one_group_per_metric() -> None:
    texts = []
    for worker in ("0", "1"):
        out = Exposition("n", worker=worker)
        out.counter("a_total", "a", 1)
        out.histogram("wait_seconds", "b", Histogram((1.0,)))
        texts.append(out.text())
    merged = prometheus.merge(texts).decode()
    assert merged.count("# TYPE ssedge_a_total counter") == 1
    assert merged.count("# HELP ssedge_wait_seconds b") == 1
    a = merged.index("ssedge_a_total{")
    assert merged[a:].index('worker="1"') < merged[a:].index("# HELP ssedge_wait_seconds")
    assert promtool(merged.encode()) == ""


def test_every_process_kind_names_its_metrics_as_prometheus_asks() -> None:
    relay = Metrics("relay-1")
    relay.refused("capacity")
    relay.publish_seconds.observe(0.002)
    relay.responses[200] = 3
    replay = ReplayMetrics("replay-1")
    replay.page_seconds.observe(0.01)
    ingest = render("ingest-1", [Status("t", "a", active=True, down_since=1.0)])
    for text in (relay.render(), replay.render(), ingest):
        assert promtool(text) == "", text.decode()
        assert b"ssedge_build_info{" in text and b'worker="0"' in text
        assert b'pid="' not in text  # a pid is a value, never a label: no series per restart


def test_the_one_reader_reads_what_the_renderer_wrote() -> None:
    out = Exposition('a "node"\\x', worker="1")
    out.counter("events_total", "Events.", 7)
    out.metric("refused_total", "counter", "Refusals.", [({"reason": "line\nbreak, and"}, 2),
                                                         ({"reason": "other"}, 3)])
    samples = prometheus.parse(out.text().decode() + "not a sample\nx NaNs\n")
    assert [(s.name, s.value) for s in samples] == [
        ("ssedge_events_total", 7), ("ssedge_refused_total", 2), ("ssedge_refused_total", 3)]
    assert samples[0].labels == {"node": 'a "node"\\x', "worker": "1"}
    assert samples[1].labels["reason"] == "line\nbreak, and"
    assert prometheus.sums(out.text().decode()) == {"ssedge_events_total": 7,
                                                    "ssedge_refused_total": 5}
