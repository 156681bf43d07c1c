"""``ssedge drill``: a fault drill with loss accounting, for SREs.

Readers follow the drill's topics through the edge as browsers would, a publisher posts a
steady rate of numbered events and keeps what was acknowledged, and faults are injected on the
schedule the user gives (``--fault relay-kill@5s``, or ``--every 20s`` through ``--faults``,
or ``--soak 30m`` at random). Before each fault, and at the end, an audit reads every topic
from its start through the replay API (Redis itself, not a relay's ring): acknowledged events
must still be there. The report gives, per fault:
acknowledged events lost, duplicates, out of order, resets, reconnects, refused streams, the
longest a reader went without events; the drill exits 1 when an objective is missed.

On the local stack (``ssedge up`` in this checkout) the faults act on its processes; against a
deployment (``--url``) each is a command (``--hook KIND=COMMAND``). ``relay.drill_faults``
injects them, ``relay.drill_clients`` reads and publishes, ``relay.drill_report`` keeps count.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import random
import secrets
import sys
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from relay.drill import report as drill_report
from relay.drill.clients import Publisher, Reader, audit
from relay.drill.faults import (
    KINDS,
    FaultError,
    Faults,
    Hooks,
    LocalStack,
    Planned,
    check_kind,
    parse_at,
    schedule,
)
from relay.drill.report import Objectives, Timeline, Window
from relay.duration import seconds
from relay.protocol import ids
from relay.web import client_settings
from relay.web.client_settings import DEFAULT_URL

SUBSCRIBE_TIMEOUT_S = 30.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help=f"the edge's base URL [SSEDGE_URL, default {DEFAULT_URL}]")
    p.add_argument("--token", help="publish token [SSEDGE_PUBLISH_TOKEN, .ssedge/publish-token]")
    p.add_argument("--stack", default=".ssedge",
                   help="the local stack's directory, whose processes faults act on when the "
                        "URL is its edge (default .ssedge)")
    when = p.add_argument_group("schedule")
    when.add_argument("--fault", action="append", default=[], metavar="KIND@TIME",
                      help="a fault at a time, e.g. relay-kill@5s; repeat for more")
    when.add_argument("--every", metavar="SPAN", help="a fault every SPAN (e.g. 20s) from "
                                                      "--faults, in turn (at random in a soak)")
    when.add_argument("--faults", default=",".join(KINDS),
                      help="the kinds --every takes (default all: " + ", ".join(KINDS) + ")")
    when.add_argument("--soak", metavar="SPAN",
                      help="run this long (e.g. 30m) with a random fault every --every (20s)")
    when.add_argument("--duration", metavar="SPAN",
                      help="how long to publish (default: the last fault's time + 10 s, "
                           "or one --every more than the faults need)")
    when.add_argument("--seed", type=int, help="the soak's random seed (default: random)")
    load = p.add_argument_group("load")
    load.add_argument("--readers", type=int, default=20, help="readers (default 20)")
    load.add_argument("--topics", type=int, default=1, help="topics, readers spread over them")
    load.add_argument("--rate", type=float, default=20.0,
                      help="events per second published to each topic (default 20)")
    load.add_argument("--payload", type=int, default=64, help="padding bytes per event")
    load.add_argument("--retry-ms", type=int,
                      help="readers' reconnect delay instead of the stream's retry:")
    load.add_argument("--freeze", default="5s", metavar="SPAN",
                      help="how long relay-freeze keeps a relay stopped (default 5s)")
    load.add_argument("--settle", default="15s", metavar="SPAN",
                      help="at the end, the longest wait for readers to catch up (15s)")
    load.add_argument("--audit-timeout", default="20s", metavar="SPAN",
                      help="the longest an audit may take to read a topic (20s)")
    p.add_argument("--hook", action="append", default=[], metavar="KIND=COMMAND",
                   help="run COMMAND (sh -c) for this fault instead of acting on the local "
                        "stack, e.g. relay-kill='systemctl kill -s KILL ssedge-relay@1'")
    goals = p.add_argument_group("objectives (a missed one makes the exit status 1)")
    goals.add_argument("--max-lost", type=int, default=0, help="acknowledged events lost (0)")
    goals.add_argument("--max-duplicates", type=int, default=0, help="duplicates (0)")
    goals.add_argument("--max-out-of-order", type=int, default=0, help="out of order (0)")
    goals.add_argument("--max-resets", type=int, default=0, help="ssedge.reset events (0)")
    goals.add_argument("--max-refused", type=int, default=0,
                       help="stream requests answered other than 200, on which a browser "
                            "stops for good (0)")
    goals.add_argument("--max-stall", default="30s", metavar="SPAN",
                       help="the longest a reader may go without events (30s)")
    p.add_argument("--report", metavar="FILE", help="also write the report as JSON here")


@dataclass(frozen=True)
class Config:
    url: str
    token: str
    readers: int
    topics: list[str]
    rate: float
    payload: int
    retry_ms: int | None
    duration: float
    settle: float
    audit_timeout: float
    planned: list[Planned]


def _config(args: argparse.Namespace) -> tuple[Config, Faults, Objectives]:
    """Everything the drill needs from its arguments; FaultError or ValueError says what is
    wrong with them."""
    url = client_settings.base_url(args.url)
    for name in ("readers", "topics"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be at least 1")
    if args.rate <= 0:
        raise ValueError("--rate must be above 0")
    hooks: dict[str, str] = {}
    for item in args.hook:
        kind, sep, command = item.partition("=")
        if not sep or not command.strip():
            raise FaultError(f"--hook wants KIND=COMMAND, not {item!r}")
        hooks[check_kind(kind.strip())] = command
    explicit = [parse_at(spec, seconds) for spec in args.fault]
    kinds = [check_kind(k.strip()) for k in args.faults.split(",") if k.strip()]
    every = seconds(args.every) if args.every else None
    rng = None
    if args.soak:
        every = every or 20.0
        rng = random.Random(args.seed)
    if every is not None and every <= 0:
        raise ValueError("--every must be above 0")
    if args.duration or args.soak:
        duration = seconds(args.soak or args.duration)
    elif every:
        duration = every * (len(kinds) + 1)
    else:
        duration = max((p.at for p in explicit), default=0.0) + 10.0
    if duration <= 0:
        raise ValueError("the drill needs a duration above 0")
    planned = schedule(explicit, every, kinds, duration, rng)
    late = [p for p in planned if p.at >= duration]
    if late:
        raise ValueError(f"{late[0].kind}@{late[0].at:g}s is not before the end ({duration:g} s)")
    host = urlsplit(url)
    local = None
    if host.hostname in ("127.0.0.1", "localhost") and host.port:
        local = LocalStack.find(Path(args.stack), host.port, seconds(args.freeze))
    faults = Faults(Hooks(hooks), local)
    faults.check([p.kind for p in planned])
    prefix = f"drill-{secrets.token_hex(3)}"
    config = Config(url, client_settings.publish_token(args.token), args.readers,
                    [f"{prefix}-{i}" for i in range(args.topics)], args.rate, args.payload,
                    args.retry_ms, duration, seconds(args.settle), seconds(args.audit_timeout),
                    planned)
    objectives = Objectives(args.max_lost, args.max_duplicates, args.max_out_of_order,
                            args.max_resets, args.max_refused, seconds(args.max_stall))
    return config, faults, objectives


class Drill:
    """One run: readers, a publisher, the faults, the audits; then the lost events counted."""

    def __init__(self, config: Config, faults: Faults) -> None:
        self.config = config
        self.faults = faults
        self.timeline = Timeline()
        self._origin = time.monotonic()
        self.readers = [Reader(config.url, config.topics[i % len(config.topics)],
                               self.timeline, self.clock, config.retry_ms)
                        for i in range(config.readers)]
        self.publisher = Publisher(config.url, config.token, config.topics, config.rate,
                                   config.payload, self.timeline, self.clock)
        #: acknowledged events an audit found gone, and the window whose fault they did not
        #: survive: (topic, seq) -> window
        self.gone: dict[tuple[str, int], Window] = {}
        self.problems: list[str] = []

    def clock(self) -> float:
        return time.monotonic() - self._origin

    async def run(self) -> None:
        tasks = [asyncio.ensure_future(r.run()) for r in self.readers]
        notes: list[asyncio.Future[None]] = []
        stop = asyncio.Event()
        publishing: asyncio.Future[None] | None = None
        try:
            # every reader subscribed before the first event: each must then get every one
            try:
                await asyncio.wait_for(asyncio.gather(*(r.subscribed.wait()
                                                        for r in self.readers)),
                                       SUBSCRIBE_TIMEOUT_S)
            except TimeoutError:
                self.problems.append(f"the readers could not open their streams at "
                                     f"{self.config.url} within {SUBSCRIBE_TIMEOUT_S:g} s")
                return
            self._origin = time.monotonic()
            publishing = asyncio.ensure_future(self.publisher.run(stop))
            for planned in self.config.planned:
                await self._until(planned.at)
                await self._audit(self.timeline.current)
                notes.append(asyncio.ensure_future(self._inject(planned)))
                await asyncio.sleep(0)  # the window opens before anything else happens
            await self._until(self.config.duration)
            await self._audit(self.timeline.current)
            stop.set()
            await publishing
            end = self.clock()
            for reader in self.readers:
                reader.publish_end = end
            if not await self.publisher.finish(self.config.settle):
                self.problems.append("the last events could not be published")
            await self._settle()
            await self._audit(self.timeline.current, final=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*notes), 30)
        finally:
            stop.set()
            for task in [*tasks, *notes, *([publishing] if publishing else [])]:
                task.cancel()
            await asyncio.gather(*tasks, *notes, return_exceptions=True)
            await self.faults.close()
            for reader in self.readers:
                reader.close()
        self._count_lost()

    async def _until(self, at: float) -> None:
        await asyncio.sleep(max(0.0, at - self.clock()))

    async def _inject(self, planned: Planned) -> None:
        at = self.clock()
        window = self.timeline.open(planned.kind, at)
        injected = await self.faults.inject(planned.kind)
        window.target, window.detail, window.error = (injected.target, injected.detail,
                                                      injected.error)
        print(f"ssedge drill: {at:6.1f} s  {planned.kind}: {injected.target} "
              f"{injected.detail}{'  ' + injected.error if injected.error else ''}", flush=True)
        if injected.back is not None:
            back: Awaitable[float | None] = injected.back
            window.back_s = await back
            window.error = window.error or injected.error
            window.detail = injected.detail  # a fault that runs a while tells what it did

    async def _audit(self, window: Window, *, final: bool = False) -> None:
        """Read each topic from its start: every acknowledged event must still be there."""
        for topic in self.config.topics:
            target = self.publisher.newest[topic]
            present = await audit(self.config.url, topic, target, self.config.audit_timeout)
            if present is None:
                when = "at the end" if final else f"after {window.kind}@{window.at:.0f}s"
                self.problems.append(f"the audit {when} could not read {topic} up to its "
                                     f"last acknowledged event within "
                                     f"{self.config.audit_timeout:g} s")
                continue
            mine = present.get(self.publisher.name, set())
            for seq, ack in self.publisher.acked[topic].items():
                if (seq not in mine and (topic, seq) not in self.gone
                        and ids.parse(ack.id) <= target):
                    self.gone[(topic, seq)] = window

    async def _settle(self) -> None:
        """Until every reader has its topic's last event (or the settle time is over)."""
        deadline = self.clock() + self.config.settle
        name = self.publisher.name
        while self.clock() < deadline:
            if all(r.has(name, self.publisher.seq[r.topic]) for r in self.readers):
                return
            await asyncio.sleep(0.1)

    def _count_lost(self) -> None:
        name = self.publisher.name
        for topic in self.config.topics:
            readers = [r for r in self.readers if r.topic == topic]
            for seq, ack in self.publisher.acked[topic].items():
                if (topic, seq) in self.gone:
                    self.gone[(topic, seq)].lost_store += 1
                elif any(not r.has(name, seq) for r in readers):
                    self.timeline.at(ack.at).lost_delivery += 1
        for w in self.timeline.windows:
            w.lost = w.lost_delivery + w.lost_store


def run(args: argparse.Namespace) -> int:
    try:
        config, faults, objectives = _config(args)
    except (FaultError, ValueError) as exc:
        print(f"ssedge drill: {exc}", file=sys.stderr)
        return 2
    started = datetime.datetime.now(datetime.UTC)
    mode = "hooks" if faults.local is None else f"the local stack in {args.stack}"
    print(f"ssedge drill: {config.readers} readers on {len(config.topics)} topic(s), "
          f"{config.rate:g} events/s each, {config.duration:g} s through {config.url}; "
          f"{len(config.planned)} faults on {mode}", flush=True)
    drill = Drill(config, faults)
    try:
        asyncio.run(drill.run())
    except KeyboardInterrupt:
        print("ssedge drill: interrupted", file=sys.stderr)
        return 130
    timeline = drill.timeline
    missed = drill_report.missed(timeline.totals(), timeline.windows, objectives, drill.problems)
    print(drill_report.table(timeline))
    for w in timeline.windows[1:]:
        print(f"  {w.kind}@{w.at:.1f}s: {w.target} {w.detail}"
              + (f"; back after {w.back_s:.1f} s" if w.back_s is not None else "")
              + (f"; {w.error}" if w.error else ""))
    print("ssedge drill: " + ("PASS" if not missed else "FAIL: " + "; ".join(missed)),
          flush=True)
    if args.report:
        setup: dict[str, Any] = {
            "url": config.url, "started": started.isoformat(timespec="seconds"),
            "readers": config.readers, "topics": config.topics, "rate": config.rate,
            "duration_s": config.duration, "faults": mode,
            "planned": [{"kind": p.kind, "at": p.at} for p in config.planned],
            "objectives": objectives.__dict__,
        }
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(json.dumps(
            drill_report.as_json(timeline, missed, setup), indent=1) + "\n")
    return 0 if not missed else 1
