"""The dashboard's numbers, computed from what relays and Varnish report: no I/O here.

``ssedge stats`` (``relay.collector``) scrapes each relay node's ``/metrics`` and follows
Varnish's request log every interval; this module turns two scrapes of a node into its
snapshot (rates from counter deltas), classifies edge requests into handshake, metadata,
replay and pages, and builds the one JSON snapshot published to the stats topic.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from relay import prometheus

TOPIC = "ssedge.stats"
EVENT = "stats"
VERSION = 1


# counters shown as per-second rates, and their names in the snapshot
RATES = {
    "ssedge_events_in_total": "events_in_per_s",
    "ssedge_events_out_total": "events_out_per_s",
    "ssedge_backlog_drops_total": "backlog_drops_per_s",
    "ssedge_replay_fetches_total": "replay_fetches_per_s",
    "ssedge_published_total": "published_per_s",
}
# counters also shown as totals since the node started
TOTALS = {
    "ssedge_backlog_drops_total": "backlog_drops",
    "ssedge_replay_fetches_total": "replay_fetches",
}
# gauges summed over a node's worker processes
SUMS = {
    "ssedge_streams_open": "streams_open",
    "ssedge_ring_events": "ring_events",
}
# gauges where the worst process speaks for the node
MAXIMA = {
    "ssedge_ring_fill_ratio": "ring_fill",
    "ssedge_feed_lag_seconds": "redis_lag_s",
}
EDGE_CLASSES = ("handshake", "metadata", "replay", "pages")


@dataclass(frozen=True, slots=True)
class Scrape:
    """One node's ``/metrics`` at one moment: sums and maxima over its worker processes."""

    t: float
    node: str
    sums: dict[str, float]
    maxima: dict[str, float]


def parse_metrics(text: str, t: float, default_node: str) -> Scrape:
    sums: dict[str, float] = {}
    maxima: dict[str, float] = {}
    node = default_node
    for sample in prometheus.parse(text):
        name, value = sample.name, sample.value
        node = sample.labels.get("node", node)
        sums[name] = sums.get(name, 0.0) + value
        maxima[name] = max(maxima.get(name, value), value)
    return Scrape(t, node, sums, maxima)


def _rate(prev: Scrape | None, cur: Scrape, name: str) -> float | None:
    if prev is None or cur.t <= prev.t:
        return None
    delta = cur.sums.get(name, 0.0) - prev.sums.get(name, 0.0)
    if delta < 0:  # the node restarted: its counters began again from zero
        delta = cur.sums.get(name, 0.0)
    return round(delta / (cur.t - prev.t), 3)


def node_snapshot(url: str, prev: Scrape | None, cur: Scrape | None,
                  error: str | None = None) -> dict[str, Any]:
    """A node's numbers; ``cur`` None (with ``error``) when this scrape failed."""
    if cur is None:
        return {"node": prev.node if prev else url, "url": url, "up": False, "error": error}
    out: dict[str, Any] = {"node": cur.node, "url": url, "up": True}
    for metric, key in SUMS.items():
        out[key] = cur.sums.get(metric, 0.0)
    for metric, key in MAXIMA.items():
        out[key] = cur.maxima.get(metric, 0.0)
    for metric, key in TOTALS.items():
        out[key] = cur.sums.get(metric, 0.0)
    for metric, key in RATES.items():
        out[key] = _rate(prev, cur, metric)
    out["redis_connected"] = cur.maxima.get("ssedge_redis_connected", 0.0) >= 1
    return out


def classify(path: str) -> str | None:
    """Which cached class an edge request belongs to; None for streams, publishes, health."""
    if path == "/v1/handshake":
        return "handshake"
    if path.startswith("/v1/replay/"):
        return "replay"
    if path.startswith("/v1/streams/"):
        rest = path[len("/v1/streams/"):]
        return "metadata" if rest and "/" not in rest else None
    if path in ("/", "/dashboard") or path.startswith("/static/"):
        return "pages"
    return None


@dataclass
class EdgeCounts:
    """Edge requests by class and by how Varnish handled them (hit, miss, pass, ...)."""

    counts: dict[str, dict[str, int]] = field(
        default_factory=lambda: {c: {} for c in EDGE_CLASSES})

    def add(self, handling: str, path: str) -> None:
        kind = classify(path)
        if kind is not None:
            by = self.counts[kind]
            by[handling] = by.get(handling, 0) + 1

    def add_line(self, line: str) -> None:
        """A ``varnishncsa -F '%{Varnish:handling}x %U'`` line."""
        handling, _, path = line.strip().partition(" ")
        if handling and path:
            self.add(handling, path)

    def copy(self) -> EdgeCounts:
        return EdgeCounts({k: dict(v) for k, v in self.counts.items()})


def edge_snapshot(prev: EdgeCounts | None, cur: EdgeCounts, dt: float) -> dict[str, Any]:
    """Per class: counts since the collector started, the hit ratio over them (hits over all
    requests of the class), the ratio over this interval, and requests per second."""
    out: dict[str, Any] = {}
    for kind in EDGE_CLASSES:
        now = cur.counts[kind]
        before = prev.counts[kind] if prev else {}
        total = sum(now.values())
        window = {h: n - before.get(h, 0) for h, n in now.items()}
        in_window = sum(window.values())
        out[kind] = {
            "hit": now.get("hit", 0),
            "miss": now.get("miss", 0),
            "pass": now.get("pass", 0),
            "requests": total,
            "hit_ratio": round(now.get("hit", 0) / total, 4) if total else None,
            "interval_hit_ratio": (round(window.get("hit", 0) / in_window, 4)
                                   if in_window else None),
            "requests_per_s": round(in_window / dt, 3) if prev is not None and dt > 0 else None,
        }
    return out


def totals(nodes: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Sums over the nodes that answered (rates: None until every one has a rate)."""
    up = [n for n in nodes if n.get("up")]
    out: dict[str, Any] = {"nodes_up": len(up)}
    for key in (*SUMS.values(), *TOTALS.values()):
        out[key] = sum(n[key] for n in up)
    for key in RATES.values():
        values = [n[key] for n in up]
        out[key] = round(sum(values), 3) if values and None not in values else None
    for key in MAXIMA.values():
        out[key] = max((n[key] for n in up), default=None)
    return out


def stack_part(status: dict[str, Any] | None) -> dict[str, Any] | None:
    """The local stack's children as ``ssedge up`` last wrote them (``supervisor.json``):
    state, restarts and last exit of each; None when there is no such file."""
    if status is None or not isinstance(status.get("children"), list):
        return None
    keys = ("name", "state", "pid", "restarts", "last_exit", "last_exit_at")
    children = [{k: c.get(k) for k in keys} for c in status["children"] if isinstance(c, dict)]
    return {"state": status.get("state"), "failure": status.get("failure"),
            "restarts": sum(int(c.get("restarts") or 0) for c in children),
            "children": children}


def audience_part(topics: dict[str, int], processes: int, limit: int = 10) -> dict[str, Any]:
    """The deployment's audience (``relay.storage.presence``): the busiest topics."""
    busiest = sorted(topics.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
    return {"streams": sum(topics.values()), "topic_count": len(topics),
            "processes": processes, "topics": [[t, n] for t, n in busiest]}


def snapshot(t: float, interval_s: float, nodes: list[dict[str, Any]],
             edge: dict[str, Any] | None, edge_error: str | None = None,
             stack: dict[str, Any] | None = None) -> dict[str, Any]:
    out = {
        "v": VERSION,
        "t": round(t, 3),
        "interval_s": interval_s,
        "nodes": nodes,
        "totals": totals(nodes),
        "edge": {"up": edge is not None, "error": edge_error, "classes": edge or {}},
    }
    if stack is not None:
        out["stack"] = stack
    return out
