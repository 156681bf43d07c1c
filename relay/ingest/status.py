"""What ``/metrics`` of an ingest process says about each upstream it follows or stands by for.

One ``Status`` per (topic, upstream), plain attributes updated by its follower and worker (one
event loop: no locks), rendered in the Prometheus text format with ``topic`` and ``upstream``
labels next to ``node`` and ``worker``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from relay.prometheus import Exposition


@dataclass
class Status:
    """What ``/metrics`` and the log say about one upstream of one topic."""

    topic: str
    name: str
    active: bool = False  # this process holds the lease and follows it
    up: bool = False  # an event stream is open now
    down_since: float | None = None  # wall-clock time it stopped being up, while active
    stopped: bool = False  # answered 204: given up for good
    cursor: str = ""
    events: int = 0
    duplicates: int = 0
    rejected: int = 0
    reconnects: int = 0
    leases: int = 0
    last_event_at: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1



def render(node: str, statuses: Iterable[Status]) -> bytes:
    """Prometheus text: one sample per upstream of each metric."""
    statuses = list(statuses)
    out = Exposition(node, prefix="ssedge_ingest_")

    def labels(st: Status, **more: str) -> dict[str, str]:
        return {"topic": st.topic, "upstream": st.name, **more}

    def each(name: str, kind: str, help: str, value: str) -> None:
        out.metric(name, kind, help, [(labels(st), float(getattr(st, value)))
                                      for st in statuses])

    each("active", "gauge", "1 while this process holds the upstream's lease and follows it.",
         "active")
    each("up", "gauge", "1 while an event stream from the upstream is open.", "up")
    out.metric("down_since_timestamp_seconds", "gauge",
               "Unix time the followed upstream went down; 0 while up or standing by.",
               [(labels(st), st.down_since if st.active and st.down_since else 0)
                for st in statuses])
    each("stopped", "gauge", "1 once the upstream answered 204 (not followed any more).",
         "stopped")
    each("last_event_timestamp_seconds", "gauge", "Unix time of the last event written.",
         "last_event_at")
    each("events_total", "counter", "Upstream events written to the topic.", "events")
    each("duplicates_total", "counter", "Upstream events skipped as already written.",
         "duplicates")
    each("rejected_total", "counter", "Upstream events not written (too large, bad type).",
         "rejected")
    each("reconnects_total", "counter", "Connections to the upstream after the first.",
         "reconnects")
    each("leases_total", "counter", "Times this process took the upstream's lease.", "leases")
    out.metric("errors_total", "counter", "Failed connections and writes, by kind.",
               [(labels(st, kind=kind), n) for st in statuses
                for kind, n in sorted(st.errors.items())])
    out.process()
    return out.text()
