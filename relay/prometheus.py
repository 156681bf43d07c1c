"""The Prometheus text format (0.0.4): the one renderer every ssedge process's /metrics uses.

Each process labels its samples with ``node`` and ``pid`` (Granian workers are processes of
their own, each with its numbers); a metric adds its own labels per sample.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Iterable, Mapping

CONTENT_TYPE = "text/plain; version=0.0.4"
Labels = Mapping[str, str]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Exposition:
    """One scrape's text, built metric by metric; every name gets ``prefix``."""

    def __init__(self, node: str, prefix: str = "ssedge_") -> None:
        self._prefix = prefix
        self._base = f'node="{_escape(node)}",pid="{os.getpid()}"'
        self._lines: list[str] = []

    def metric(self, name: str, kind: str, help: str,
               samples: Iterable[tuple[Labels, float]]) -> None:
        full = self._prefix + name
        self._lines.append(f"# HELP {full} {help}")
        self._lines.append(f"# TYPE {full} {kind}")
        for labels, value in samples:
            extra = "".join(f',{k}="{_escape(v)}"' for k, v in labels.items())
            self._lines.append(f"{full}{{{self._base}{extra}}} {value:.15g}")

    def counter(self, name: str, help: str, value: float) -> None:
        self.metric(name, "counter", help, [({}, value)])

    def gauge(self, name: str, help: str, value: float) -> None:
        self.metric(name, "gauge", help, [({}, value)])

    def text(self) -> bytes:
        return ("\n".join(self._lines) + "\n").encode()


class ProcessMetrics:
    """What every ssedge HTTP process reports: answers by status, garbage-collector passes,
    and values read when scraped (gauges and counters kept by other parts). Subclasses add
    their own in ``samples``."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.responses: dict[int, int] = {}
        self.gauges: list[tuple[str, str, Callable[[], float]]] = []
        self.counters: list[tuple[str, str, Callable[[], float]]] = []

    def gauge(self, name: str, help: str, read: Callable[[], float]) -> None:
        """A value computed when scraped (ring fill, topics watched, ...)."""
        self.gauges.append((name, help, read))

    def counter(self, name: str, help: str, read: Callable[[], float]) -> None:
        """A count kept by another part (the JWKS's fetches, ...), read when scraped."""
        self.counters.append((name, help, read))

    def samples(self, out: Exposition) -> None:
        """This process's own metrics."""

    def render(self) -> bytes:
        out = Exposition(self.node)
        self.samples(out)
        out.metric("responses_total", "counter", "HTTP answers by status.",
                   [({"status": str(s)}, n) for s, n in sorted(self.responses.items())])
        out.metric("gc_collections_total", "counter",
                   "Garbage-collector passes by generation; each one stalls every stream.",
                   [({"generation": str(i)}, g["collections"])
                    for i, g in enumerate(gc.get_stats())])
        for name, help, read in self.gauges:
            out.gauge(name, help, read())
        for name, help, read in self.counters:
            out.counter(name, help, read())
        return out.text()
