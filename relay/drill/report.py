"""``ssedge drill``'s bookkeeping: the run cut into windows, one per fault, what happened in
each, the objectives and the report. No I/O.

A window begins when its fault is injected (the first, ``baseline``, when the drill starts)
and ends when the next one is. What the readers and publishers see is put in the window in
which it happened: a reconnect when the stream dropped, a duplicate when it arrived. A stall
(a reader without events, the publisher without an acknowledgement) goes to the window in
which it ended, which is that of the last fault it lived through. An acknowledged event that
a reader never received is put in the window in which it was acknowledged; one that is gone
from the stream itself (the audit after each window reads the topic from its start) in the
window whose fault it did not survive.
"""

from __future__ import annotations

import bisect
from dataclasses import asdict, dataclass, field
from typing import Any

#: figures summed over the windows for the totals (the stalls: their maximum)
COUNTS = ("acked", "publish_failed", "lost", "lost_delivery", "lost_store", "duplicates",
          "out_of_order", "resets", "reconnects", "refused")
MAXIMA = ("stall_s", "publish_stall_s")


@dataclass
class Window:
    kind: str  # "baseline" or the fault's kind
    at: float  # seconds since the drill began
    target: str = ""  # what the fault acted on (relay-1, a hook)
    detail: str = ""  # what was done (SIGKILL pid 4242; the hook's exit status)
    back_s: float | None = None  # until the target answered again (the local stack)
    error: str | None = None  # the fault could not be injected
    acked: int = 0  # events acknowledged (201) in this window
    publish_failed: int = 0  # publish requests that failed (their events are not counted)
    publish_stall_s: float = 0.0  # longest time without an acknowledged publish (ended here)
    lost: int = 0  # acknowledged events lost: lost_delivery + lost_store
    lost_delivery: int = 0  # acknowledged in this window, never reached some reader
    lost_store: int = 0  # gone from the stream after this window's fault
    duplicates: int = 0
    out_of_order: int = 0  # an event after a later one (by publisher order or by id)
    resets: int = 0  # ssedge.reset events received
    reconnects: int = 0  # streams that dropped and were opened again
    refused: int = 0  # stream requests answered other than 200: a browser gives up on them
    stall_s: float = 0.0  # longest a reader went without events (gaps that ended here)


@dataclass
class Timeline:
    """The windows in order; ``at(t)`` is the window holding moment ``t``."""

    windows: list[Window] = field(default_factory=lambda: [Window("baseline", 0.0)])

    def open(self, kind: str, at: float, **details: Any) -> Window:
        window = Window(kind, at, **details)
        self.windows.append(window)
        return window

    def at(self, t: float) -> Window:
        starts = [w.at for w in self.windows]
        return self.windows[max(0, bisect.bisect_right(starts, t) - 1)]

    @property
    def current(self) -> Window:
        return self.windows[-1]

    def totals(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: sum(getattr(w, k) for w in self.windows) for k in COUNTS}
        out.update({k: max(getattr(w, k) for w in self.windows) for k in MAXIMA})
        return out


@dataclass(frozen=True)
class Objectives:
    max_lost: int = 0
    max_duplicates: int = 0
    max_out_of_order: int = 0
    max_resets: int = 0
    max_refused: int = 0
    max_stall_s: float = 30.0


def missed(totals: dict[str, Any], windows: list[Window], objectives: Objectives,
           problems: list[str]) -> list[str]:
    """Each objective missed, said plainly; ``problems`` are the drill's own (an audit that
    could not finish, a hook that failed), which also fail it."""
    out = list(problems)
    if not totals["acked"]:
        out.append("no event was acknowledged (check the URL and the publish token)")
    for key, limit in (("lost", objectives.max_lost), ("duplicates", objectives.max_duplicates),
                       ("out_of_order", objectives.max_out_of_order),
                       ("resets", objectives.max_resets), ("refused", objectives.max_refused)):
        if totals[key] > limit:
            where = ", ".join(f"{w.kind}@{w.at:.0f}s {getattr(w, key)}" for w in windows
                              if getattr(w, key))
            out.append(f"{key.replace('_', ' ')} {totals[key]} > {limit} ({where})")
    if totals["stall_s"] > objectives.max_stall_s:
        worst = max(windows, key=lambda w: w.stall_s)
        out.append(f"a reader went {totals['stall_s']:.1f} s without events > "
                   f"{objectives.max_stall_s:g} s ({worst.kind}@{worst.at:.0f}s)")
    for w in windows:
        if w.error:
            out.append(f"{w.kind}@{w.at:.0f}s: {w.error}")
    return out


COLUMNS = (("window", 16), ("at", 7), ("target", 10), ("back", 6), ("acked", 6), ("lost", 5),
           ("dup", 4), ("ooo", 4), ("resets", 6), ("reconn", 6), ("refused", 7),
           ("stall", 6), ("pub fail", 8), ("pub stall", 9))


def _row(w: Window, at: str) -> str:
    cells = [w.kind, at, w.target, "" if w.back_s is None else f"{w.back_s:.1f}s",
             str(w.acked), str(w.lost), str(w.duplicates), str(w.out_of_order), str(w.resets),
             str(w.reconnects), str(w.refused), f"{w.stall_s:.1f}s", str(w.publish_failed),
             f"{w.publish_stall_s:.1f}s"]
    return "  ".join(c.ljust(width) if i < 3 else c.rjust(width)
                     for i, (c, (_, width)) in enumerate(zip(cells, COLUMNS, strict=True)))


def table(timeline: Timeline) -> str:
    """The windows as a fixed-width table, and their totals."""
    head = "  ".join(n.ljust(w) if i < 3 else n.rjust(w) for i, (n, w) in enumerate(COLUMNS))
    rows = [_row(w, f"{w.at:.1f}s") for w in timeline.windows]
    return "\n".join([head, *rows, _row(Window("total", 0.0, **timeline.totals()), "")])


def as_json(timeline: Timeline, missed_: list[str], setup: dict[str, Any]) -> dict[str, Any]:
    return {"setup": setup, "passed": not missed_, "missed": missed_,
            "totals": timeline.totals(), "windows": [asdict(w) for w in timeline.windows]}
