"""The Prometheus text format (0.0.4): the one renderer every ssedge process's /metrics uses,
and the one reader of it (``parse``: the dashboard's collector, the harness, the tests).

Each process labels its samples with ``node`` and ``worker`` (Granian workers are processes of
their own, each with its numbers; ``relay.scrape`` gathers a server's workers into one
answer); a metric adds its own labels per sample. ``worker`` is a slot, 0 to workers - 1, that
a respawned worker takes over: unlike a pid, it does not make new series at every restart.

Naming follows Prometheus's rules, which ``promtool check metrics`` checks in the tests:
counters end in ``_total``, quantities carry their base unit (``_seconds``, ``_bytes``),
timestamps are ``_timestamp_seconds``, and no label takes unbounded values.
"""

from __future__ import annotations

import bisect
import gc
import os
import platform
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from relay import __version__

CONTENT_TYPE = "text/plain; version=0.0.4"
Labels = Mapping[str, str]

#: when this process started (Unix time), for ``ssedge_process_start_time_seconds``
STARTED = time.time()


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


# -- reading an exposition ----------------------------------------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
_UNESCAPE = re.compile(r"\\(.)")


@dataclass(frozen=True, slots=True)
class Sample:
    """One line of an exposition: the metric's full name, its labels, its value."""

    name: str
    labels: dict[str, str]
    value: float


def parse(text: str) -> list[Sample]:
    """Every sample of an exposition, label values unescaped. Comments, blank lines and lines
    that are not a sample (a value that is not a number) are passed over: a reader of another
    program's numbers takes what it understands."""
    out: list[Sample] = []
    for line in text.splitlines():
        found = _SAMPLE.match(line)
        if found is None:
            continue
        try:
            value = float(found.group(3))
        except ValueError:
            continue
        labels = {name: _UNESCAPE.sub(lambda m: "\n" if m.group(1) == "n" else m.group(1), raw)
                  for name, raw in _LABEL.findall(found.group(2) or "")}
        out.append(Sample(found.group(1), labels, value))
    return out


def sums(text: str) -> dict[str, float]:
    """Each metric's samples summed over their label sets."""
    out: dict[str, float] = {}
    for sample in parse(text):
        out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out


class Histogram:
    """Observations counted into fixed buckets (upper bounds, seconds): one bisect and two
    additions per observation, no lock (one event loop per process)."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(sorted(bounds))
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value

    def samples(self) -> list[tuple[str, Labels, float]]:
        """(suffix, labels, value): cumulative ``_bucket``s, then ``_sum`` and ``_count``."""
        out: list[tuple[str, Labels, float]] = []
        running = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append(("_bucket", {"le": "+Inf" if bound == float("inf") else f"{bound:g}"},
                        running))
        out.append(("_sum", {}, self.sum))
        out.append(("_count", {}, self.count))
        return out


class Exposition:
    """One scrape's text, built metric by metric; every name gets ``prefix``."""

    def __init__(self, node: str, prefix: str = "ssedge_", worker: str = "0") -> None:
        self._prefix = prefix
        self._base = f'node="{_escape(node)}",worker="{_escape(worker)}"'
        self._lines: list[str] = []

    def _sample(self, full: str, labels: Labels, value: float) -> None:
        extra = "".join(f',{k}="{_escape(v)}"' for k, v in labels.items())
        self._lines.append(f"{full}{{{self._base}{extra}}} {value:.15g}")

    def metric(self, name: str, kind: str, help: str,
               samples: Iterable[tuple[Labels, float]], *, prefix: str | None = None) -> None:
        full = (self._prefix if prefix is None else prefix) + name
        self._lines.append(f"# HELP {full} {help}")
        self._lines.append(f"# TYPE {full} {kind}")
        for labels, value in samples:
            self._sample(full, labels, value)

    def counter(self, name: str, help: str, value: float) -> None:
        self.metric(name, "counter", help, [({}, value)])

    def gauge(self, name: str, help: str, value: float) -> None:
        self.metric(name, "gauge", help, [({}, value)])

    def histogram(self, name: str, help: str, histogram: Histogram) -> None:
        full = self._prefix + name
        self._lines.append(f"# HELP {full} {help}")
        self._lines.append(f"# TYPE {full} histogram")
        for suffix, labels, value in histogram.samples():
            self._sample(full + suffix, labels, value)

    def process(self) -> None:
        """What every ssedge process says of itself, under the ``ssedge_`` prefix whatever
        this exposition's: its build, when it started and its pid (a value, not a label: a
        label would make new series at every restart)."""
        self.metric("build_info", "gauge", "The ssedge build this process runs (always 1).",
                    [({"version": __version__,
                       "python": platform.python_version()}, 1)], prefix="ssedge_")
        self.metric("process_start_time_seconds", "gauge",
                    "Unix time this process started.", [({}, STARTED)], prefix="ssedge_")
        self.metric("process_pid", "gauge", "This process's id (to find it in ps and logs).",
                    [({}, os.getpid())], prefix="ssedge_")

    def text(self) -> bytes:
        return ("\n".join(self._lines) + "\n").encode()


def merge(texts: Iterable[bytes]) -> bytes:
    """Several processes' expositions as one: the text format wants every sample of a metric
    in one group under one ``# HELP``/``# TYPE``, so samples are regrouped by metric, in the
    order metrics first appear (each process's samples keep their own labels)."""
    order: list[str] = []
    heads: dict[str, list[str]] = {}
    samples: dict[str, list[str]] = {}
    for text in texts:
        family = ""
        for line in text.decode().splitlines():
            if line.startswith("# "):
                _, kind, name = line.split(" ", 3)[:3]
                family = name
                if name not in heads:
                    order.append(name)
                    heads[name], samples[name] = [], []
                if kind in ("HELP", "TYPE") and len(heads[name]) < 2 and line not in heads[name]:
                    heads[name].append(line)
            elif line:
                samples.setdefault(family, []).append(line)
    lines = [line for name in order for line in (*heads[name], *samples[name])]
    return ("\n".join(lines) + "\n").encode()


class ProcessMetrics:
    """What every ssedge HTTP process reports: answers by status, garbage-collector passes,
    and values read when scraped (gauges and counters kept by other parts). Subclasses add
    their own in ``samples``."""

    def __init__(self, node: str) -> None:
        self.node = node
        #: this process's slot among its server's workers (``relay.scrape`` sets it)
        self.worker = "0"
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
        out = Exposition(self.node, worker=self.worker)
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
        out.process()
        return out.text()
