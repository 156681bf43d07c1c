"""The server side of an ``ssedge load`` run: the relays' and the edge's own numbers while it
ran, put beside Locust's.

They are not scraped here: ``ssedge stats`` (the dashboard's collector, which ``ssedge up``
starts; run one per deployment) already publishes a snapshot of every relay's ``/metrics``
and of the edge's request log each second to the ``ssedge.stats`` topic. After the run, its
snapshots from the run's time span are read through the edge's replay API (any deployment
that runs the collector, with nothing but the URL Locust used) and summed up per relay node
and per class of edge request. No collector: the summary says so.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import quote

from relay.protocol.wire import Decoder, Event
from relay.web import client

PAGE = 1000


async def snapshots(base_url: str, topic: str, since: float, until: float,
                    timeout: float = 10.0, token: str | None = None) -> list[dict[str, Any]]:
    """The collector's snapshots taken from ``since`` to ``until`` (Unix seconds)."""
    after = f"{int(since * 1000)}-0"
    out: list[dict[str, Any]] = []
    while True:
        url = f"{base_url}/v1/replay/{quote(topic, safe='')}?after={after}&limit={PAGE}"
        # the stats topic is private at the edge (ssedge.*): read with a token when one is had
        headers = {"Authorization": f"Bearer {token}"} if token else None
        response = await client.request("GET", url, timeout=timeout, headers=headers)
        if response.status != 200:
            return out
        events = [e for e in Decoder().feed(response.body) if isinstance(e, Event) and e.id]
        for event in events:
            try:
                snap = json.loads(event.data)
            except ValueError:
                continue
            if isinstance(snap, dict) and isinstance(snap.get("t"), int | float):
                if snap["t"] > until:
                    return out
                out.append(snap)
        if len(events) < PAGE:
            return out
        after = events[-1].id


def _delta(first: dict[str, Any], last: dict[str, Any], key: str) -> float | None:
    if first.get(key) is None or last.get(key) is None:
        return None
    value = float(last[key]) - float(first[key])
    return value if value >= 0 else float(last[key])  # the node restarted: counted from zero


def summarize(snaps: list[dict[str, Any]]) -> dict[str, Any]:
    """Per relay node: peak streams, peak and mean events out per second, backlog drops and
    replay fetches during the run, worst ring fill and Redis lag, the share of snapshots it
    answered; per edge class: the hit ratio over the run; the stack's restarts."""
    if not snaps:
        return {"snapshots": 0, "note": "no ssedge stats snapshots for this run (is the "
                                        "dashboard's collector running?)"}
    nodes: dict[str, list[dict[str, Any]]] = {}
    for snap in snaps:
        for node in snap.get("nodes", []):
            nodes.setdefault(str(node.get("node")), []).append(node)
    out_nodes = {}
    for name, seen in nodes.items():
        up = [n for n in seen if n.get("up")]
        rates = [n["events_out_per_s"] for n in up if n.get("events_out_per_s") is not None]
        out_nodes[name] = {
            "up_share": round(len(up) / len(seen), 3),
            "streams_peak": max((n.get("streams_open", 0) for n in up), default=0),
            "events_out_per_s_peak": max(rates, default=None),
            "events_out_per_s_mean": round(sum(rates) / len(rates), 1) if rates else None,
            "backlog_drops": _delta(up[0], up[-1], "backlog_drops") if up else None,
            "replay_fetches": _delta(up[0], up[-1], "replay_fetches") if up else None,
            "ring_fill_max": max((n.get("ring_fill", 0) for n in up), default=None),
            "redis_lag_ms_max": round(max((n.get("redis_lag_s", 0) for n in up),
                                          default=0) * 1000, 1) if up else None,
        }
    edge: dict[str, Any] = {}
    first_edge = snaps[0].get("edge", {}).get("classes", {})
    last_edge = snaps[-1].get("edge", {}).get("classes", {})
    for kind, now in last_edge.items():
        before = first_edge.get(kind, {})
        requests = now.get("requests", 0) - before.get("requests", 0)
        hits = now.get("hit", 0) - before.get("hit", 0)
        edge[kind] = {"requests": requests,
                      "hit_ratio": round(hits / requests, 4) if requests > 0 else None}
    out: dict[str, Any] = {"snapshots": len(snaps), "from": snaps[0]["t"], "to": snaps[-1]["t"],
                           "nodes": out_nodes, "edge": edge}
    stacks = [s["stack"] for s in snaps if isinstance(s.get("stack"), dict)]
    if stacks:
        out["stack_restarts"] = stacks[-1].get("restarts", 0) - stacks[0].get("restarts", 0)
    return out


def line(summary: dict[str, Any]) -> str:
    """The summary in one line, beside Locust's."""
    if not summary.get("snapshots"):
        return f"server: {summary.get('note', 'no snapshots')}"
    parts = []
    for name, n in summary["nodes"].items():
        parts.append(f"{name}: streams peak {n['streams_peak']:.0f}, out peak "
                     f"{n['events_out_per_s_peak'] or 0:,.0f}/s, backlog drops "
                     f"{n['backlog_drops'] or 0:.0f}, replay fetches "
                     f"{n['replay_fetches'] or 0:.0f}, Redis lag max "
                     f"{n['redis_lag_ms_max'] or 0:.0f} ms"
                     + ("" if n["up_share"] == 1 else f", up {n['up_share']:.0%}"))
    hits = [f"{k} {v['hit_ratio']:.0%}" for k, v in summary["edge"].items()
            if v["hit_ratio"] is not None]
    if hits:
        parts.append("edge hits: " + ", ".join(hits))
    if summary.get("stack_restarts"):
        parts.append(f"stack restarts {summary['stack_restarts']}")
    return "server: " + "; ".join(parts)


def capture(base_url: str, topic: str, since: float, until: float,
            token: str | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The summary of the run's snapshots, and the snapshots."""
    try:
        snaps = asyncio.run(snapshots(base_url, topic, since, until, token=token))
    except (OSError, TimeoutError, asyncio.IncompleteReadError, client.ProtocolError) as exc:
        return {"snapshots": 0, "note": f"could not read {topic}: {exc}"}, []
    return summarize(snaps), snaps
