"""Benchmark: what reading a replica costs a reader, next to reading the primary.

Starts a Redis primary and a replica of it, a relay of region A reading the primary and a
relay of region B reading the replica (``SSEDGE_REDIS_READ_URL``), on free loopback ports.
One publisher posts ``--rate`` events a second through region A, each carrying the time it
was sent; ``--readers`` streams on each relay note when each event arrives, and ``--movers``
readers hop between the two relays every second with their Last-Event-ID (checked exactly
once). Each run is repeated for every ``--link-delay-ms``: the replica then follows the
primary through a TCP relay of this script that holds every byte that long each way, as a
link between regions would (0: straight over loopback).

    .venv/bin/python -m bench.regions --seconds 15 --rate 50 --link-delay-ms 0,25,75

Load goes to 127.0.0.1 only; counts and durations are bounded by the arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import platform
import random
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from relay.harness.processes import free_port
from relay.harness.servers import RedisServer, Relay, metrics
from relay.protocol import ids
from relay.protocol.wire import Event
from relay.web import client

TOKEN = "bench"
TOPIC = "regions"
PATH = f"/v1/streams/{TOPIC}/events"


class DelayLink(threading.Thread):
    """A TCP relay from a loopback port to ``target`` that holds every chunk ``delay_s`` in
    each direction (order kept), in a thread with its own event loop so that the bench's own
    work does not add to the delay."""

    def __init__(self, target: int, delay_s: float) -> None:
        super().__init__(daemon=True)
        self.target = target
        self.delay_s = delay_s
        self.port = free_port()
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def run(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        server = await asyncio.start_server(self._pipe, "127.0.0.1", self.port)
        self._ready.set()
        async with server:
            await server.serve_forever()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        await asyncio.gather(self._one_way(reader, up_writer), self._one_way(up_reader, writer),
                             return_exceptions=True)
        writer.close()
        up_writer.close()

    async def _one_way(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                at, data = await queue.get()
                if not data:
                    writer.close()
                    return
                await asyncio.sleep(max(0.0, at + self.delay_s - loop.time()))
                writer.write(data)
                await writer.drain()

        sending = asyncio.ensure_future(deliver())
        while True:
            data = await reader.read(1 << 16)
            queue.put_nowait((loop.time(), data))
            if not data:
                break
        await sending

    def start_and_wait(self) -> None:
        self.start()
        self._ready.wait(10)


@dataclass
class Reader:
    """One stream's arrivals: (event id, seconds from its publish to here)."""

    url: str
    got: list[tuple[str, float]] = field(default_factory=list)

    async def run(self, last: str) -> None:
        es = await client.stream(self.url + PATH, last_event_id=last)
        async with es:
            while not es.ended:
                for item in await es.read_chunk():
                    if isinstance(item, Event) and item.id:
                        self.got.append((item.id, time.time() - float(item.data)))


@dataclass
class Mover:
    """A reader that moves between the regions every second with its Last-Event-ID: each
    move's first event and how long after its publish it came."""

    urls: list[str]
    got: list[str] = field(default_factory=list)
    first_after_move: dict[str, list[float]] = field(default_factory=dict)

    async def run(self, last: str, stop: asyncio.Event) -> None:
        n = random.randrange(2)
        while not stop.is_set():
            url = self.urls[n % 2]
            direction = "to B (replica)" if n % 2 else "to A (primary)"
            n += 1
            es = await client.stream(url + PATH, last_event_id=last)
            first = True
            leave = time.monotonic() + random.uniform(0.8, 1.2)
            async with es:
                while not es.ended and time.monotonic() < leave and not stop.is_set():
                    with contextlib.suppress(TimeoutError):
                        items = await asyncio.wait_for(es.read_chunk(),
                                                       max(0.01, leave - time.monotonic()))
                        for item in items:
                            if isinstance(item, Event) and item.id:
                                if first and n > 1:
                                    self.first_after_move.setdefault(direction, []).append(
                                        time.time() - float(item.data))
                                first = False
                                self.got.append(item.id)
                                last = item.id


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000


async def _measure(a: Relay, b: Relay, seconds: float, rate: float, readers: int,
                   movers: int) -> dict[str, object]:
    start = (await client.publish(f"{a.url}{PATH}", {"data": repr(time.time())},
                                  token=TOKEN))[0].json()["id"]
    await asyncio.sleep(0.5)  # the replica has it: every stream below starts in its ring
    regions = {"A (primary)": [Reader(a.url) for _ in range(readers)],
               "B (replica)": [Reader(b.url) for _ in range(readers)]}
    tasks = [asyncio.ensure_future(r.run(start)) for rs in regions.values() for r in rs]
    hoppers = [Mover([a.url, b.url]) for _ in range(movers)]
    stop = asyncio.Event()
    tasks += [asyncio.ensure_future(m.run(start, stop)) for m in hoppers]
    lag_s: list[float] = []
    lag_bytes: list[float] = []
    published: list[str] = []
    t0 = time.monotonic()
    n = 0
    while time.monotonic() - t0 < seconds:
        response = await client.request("POST", f"{a.url}{PATH}",
                                        headers={"Authorization": f"Bearer {TOKEN}"},
                                        json_body={"data": repr(time.time())})
        published.append(response.json()["id"])
        n += 1
        if n % max(1, int(rate / 2)) == 0:
            m = await metrics(b.url)
            lag_s.append(m.get("ssedge_replica_lag_seconds", -1))
            lag_bytes.append(m.get("ssedge_replica_lag_bytes", -1))
        await asyncio.sleep(max(0.0, t0 + n / rate - time.monotonic()))
    await asyncio.sleep(2.0)  # the last events reach every reader
    stop.set()
    await asyncio.sleep(1.5)
    mb = await metrics(b.url)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    lost = dup = 0
    for mover in hoppers:
        lost += len(set(published) - set(mover.got))
        dup += len(mover.got) - len(set(mover.got))
        assert mover.got == sorted(mover.got, key=ids.parse), "a mover's events out of order"
    return {"regions": {name: [lat for r in rs for _, lat in r.got]
                        for name, rs in regions.items()},
            "complete": {name: all(len(r.got) == len(published) for r in rs)
                         for name, rs in regions.items()},
            "published": len(published),
            "moves_all": [(d, v) for m in hoppers for d, vs in m.first_after_move.items()
                          for v in vs],
            "lost": lost, "dup": dup,
            "waits": mb.get("ssedge_replica_waits_total", 0),
            "lag_s": lag_s, "lag_bytes": lag_bytes}


def run_one(delay_ms: float, directory: Path, args: argparse.Namespace) -> list[str]:
    primary = RedisServer(directory / "primary", "everysec")
    replica: RedisServer | None = None
    link: DelayLink | None = None
    relays: list[Relay] = []
    try:
        replica = RedisServer(directory / "replica", "off", replica_of=primary)
        if delay_ms:
            link = DelayLink(primary.port, delay_ms / 1000)
            link.start_and_wait()
            replica.cli("REPLICAOF", "127.0.0.1", str(link.port))
        deadline = time.monotonic() + 30
        while "master_link_status:up" not in replica.cli("INFO", "replication"):
            assert time.monotonic() < deadline, "the replica did not link"
            time.sleep(0.1)
        a = Relay(directory, primary, TOKEN, heartbeat_s=5)
        relays.append(a)
        b = Relay(directory, primary, TOKEN, heartbeat_s=5, redis_read_url=replica.url)
        relays.append(b)
        result = asyncio.run(_measure(a, b, args.seconds, args.rate, args.readers, args.movers))
    finally:
        for relay in relays:
            relay.stop()
        if replica is not None:
            replica.stop()
        primary.stop()
    rows = []
    lats: dict[str, list[float]] = result["regions"]  # type: ignore[assignment]
    complete: dict[str, bool] = result["complete"]  # type: ignore[assignment]
    for name, values in lats.items():
        rows.append(f"| {delay_ms:g} ms | {name} | {args.readers} | {result['published']} | "
                    f"{_pct(values, 50):.1f} | {_pct(values, 90):.1f} | {_pct(values, 99):.1f} | "
                    f"{max(values) * 1000:.1f} | {'yes' if complete[name] else 'NO'} |")
    lag_s: list[float] = [v for v in result["lag_s"] if v >= 0]  # type: ignore[attr-defined]
    lag_b: list[float] = [v for v in result["lag_bytes"] if v >= 0]  # type: ignore[attr-defined]
    moves: list[tuple[str, float]] = result["moves_all"]  # type: ignore[assignment]
    move_rows = []
    for direction in ("to A (primary)", "to B (replica)"):
        values = [v for d, v in moves if d == direction]
        if values:
            move_rows.append(
                f"| {delay_ms:g} ms | {direction} | {len(values)} | {_pct(values, 50):.1f} | "
                f"{_pct(values, 99):.1f} | {max(values) * 1000:.1f} |")
    summary = (f"link {delay_ms:g} ms: replica_lag_seconds sampled {len(lag_s)} times, "
               f"median {_pct(lag_s, 50) / 1000 if lag_s else -1:.3f} s, max "
               f"{max(lag_s, default=-1):.3f} s; replica_lag_bytes max {max(lag_b, default=-1):g};"
               f" movers: lost {result['lost']}, duplicates {result['dup']}, "
               f"{result['waits']:g} waits for the replica")
    for line in (*rows, *move_rows, summary):
        print(line, flush=True)
    return [*rows, "\x00", *move_rows, "\x00", summary]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rate", type=float, default=50.0, help="events published a second")
    parser.add_argument("--readers", type=int, default=5, help="streams on each relay")
    parser.add_argument("--movers", type=int, default=4, help="readers moving between them")
    parser.add_argument("--link-delay-ms", default="0,25,75",
                        help="one-way delay on the replica's link, one run each")
    parser.add_argument("--out", default="docs/results/regions.md")
    args = parser.parse_args()
    redis = subprocess.run(["redis-server", "--version"], capture_output=True,
                           text=True).stdout.split()[2].removeprefix("v=")
    load = os.getloadavg()
    conditions = (f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, "
                  f"{platform.machine()}, {os.cpu_count()} CPUs (load average {load[0]:.1f} at "
                  f"the start), Python {platform.python_version()}, Redis {redis}; everything "
                  "on 127.0.0.1, sharing the CPUs")
    print(f"conditions: {conditions}", flush=True)
    rows: list[str] = []
    moves: list[str] = []
    summaries: list[str] = []
    with tempfile.TemporaryDirectory(prefix="ssedge-regions-") as tmp:
        for delay in args.link_delay_ms.split(","):
            out = run_one(float(delay), Path(tmp) / f"delay-{delay}", args)
            first, second = out.index("\x00"), len(out) - 1 - out[::-1].index("\x00")
            rows += out[:first]
            moves += out[first + 1:second]
            summaries += out[second + 1:]
    command = " ".join([".venv/bin/python -m bench.regions", *sys.argv[1:]])
    Path(args.out).write_text(
        "# Regions: publish to reader, through the primary and through a replica\n\n"
        f"`{command}`\n\n{conditions}. One publisher posts {args.rate:g} events/s for "
        f"{args.seconds:g} s through region A's relay (one event per request); "
        f"{args.readers} streams on region A's relay (reading the primary) and as many on "
        "region B's (reading the replica) note when each event arrives; the latency is "
        "from just before the publish was sent to the event's arrival. The replica follows "
        "the primary through a TCP relay holding every byte the *link* delay each way "
        "(0: loopback).\n\n"
        "| link (one way) | region | streams | events | p50 ms | p90 ms | p99 ms | max ms | "
        "every event |\n|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows)
        + f"\n\n{args.movers} readers moving between the two relays about every second with "
        "their Last-Event-ID: the first event after each move, publish to arrival.\n\n"
        "| link (one way) | move | moves | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|---|\n"
        + "\n".join(moves) + "\n\n" + "\n".join(f"- {s}" for s in summaries) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
