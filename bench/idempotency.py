"""Benchmark: what an Idempotency-Key costs a publish, in time and in Redis memory.

On one redis-server (AOF on, ``appendfsync everysec``), in one process:

- **latency**: a publish of one 100-byte event without a key (``store.publish``: MULTI/EXEC)
  and with a new key each time (``idempotency.publish``: the script), alternating in rounds,
  one at a time and 20 at a time; then a replay (the same key again); then both for a batch of
  100 events. p50/p99 per publish, and Redis's CPU per publish (``used_cpu_sys+user``);
- **memory**: N keys written by the script (one event each, and batches of 10), Redis's
  ``used_memory`` before them and after them with their stream deleted, per key; and
  ``MEMORY USAGE`` of one key.

    .venv/bin/python -m bench.idempotency --rounds 2000 --keys 100000

Everything runs on 127.0.0.1, bounded by the arguments; redis-server is stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import multiprocessing
import platform
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from relay.harness.servers import RedisServer
from relay.storage import clients, idempotency
from relay.storage import streams as store

DATA = b"x" * 100


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


async def _cpu(r: Any) -> float:
    info = await r.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


async def _timed(calls: int, concurrency: int,
                 publish: Callable[[int], Awaitable[Any]]) -> list[float]:
    out: list[float] = []
    counter = iter(range(calls))

    async def worker() -> None:
        for n in counter:
            start = time.perf_counter()
            await publish(n)
            out.append((time.perf_counter() - start) * 1000)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return out


async def latency(r: Any, rounds: int) -> list[dict[str, Any]]:
    rows = []
    for size in (1, 100):
        for concurrency in (1, 20):
            rows += await _latency_of(r, size, concurrency, rounds)
    return rows


async def _latency_of(r: Any, size: int, concurrency: int,
                      rounds: int) -> list[dict[str, Any]]:
    events = [(DATA, None)] * size
    keys = [str(uuid.uuid4()) for _ in range(rounds)]

    async def plain(n: int) -> Any:
        return await store.publish(r, "lat", events, maxlen=100_000, max_age_s=0)

    async def keyed(n: int) -> Any:
        return await idempotency.publish(r, "lat", events, size > 1, keys[n], ttl_s=600,
                                         maxlen=100_000, max_age_s=0)

    got: dict[str, list[float]] = {"plain": [], "keyed": [], "replay": []}
    cpu: dict[str, float] = {"plain": 0.0, "keyed": 0.0, "replay": 0.0}
    # alternating blocks, so that drift on a shared machine hits all three alike; "replay"
    # sends the block's keys again
    step = max(1, rounds // 10)
    for block in range(0, rounds, step):
        for name, fn in (("plain", plain), ("keyed", keyed), ("replay", keyed)):
            before = await _cpu(r)
            got[name] += await _timed_block(fn, block, min(step, rounds - block), concurrency)
            cpu[name] += await _cpu(r) - before
    return [{"size": size, "concurrency": concurrency, "kind": name,
             "p50": _pct(values, 0.5), "p99": _pct(values, 0.99),
             "cpu_us": cpu[name] / max(1, len(values)) * 1e6, "n": len(values)}
            for name, values in got.items()]


async def _timed_block(fn: Callable[[int], Awaitable[Any]], first: int, count: int,
                       concurrency: int) -> list[float]:
    return await _timed(count, concurrency, lambda n: fn(first + n))


async def memory(r: Any, keys: int) -> list[dict[str, Any]]:
    return [await _memory_of(r, size, keys) for size in (1, 10)]


async def _memory_of(r: Any, size: int, keys: int) -> dict[str, Any]:
    topic = f"mem{size}"
    events = [(DATA, None)] * size
    await r.delete(store.stream_key(topic))
    sem = asyncio.Semaphore(50)

    async def one(n: int) -> None:
        async with sem:
            await idempotency.publish(r, topic, events, size > 1, f"key-{n}-{uuid.uuid4()}",
                                      ttl_s=86_400, maxlen=0, max_age_s=0)

    # with no stream before and none after (DEL frees it at once): the keys' own cost
    before = int((await r.info("memory"))["used_memory"])
    await asyncio.gather(*(one(n) for n in range(keys)))
    await r.delete(store.stream_key(topic))
    after = int((await r.info("memory"))["used_memory"])
    sample = idempotency.redis_key(topic, "sample")
    await idempotency.publish(r, topic, events, size > 1, "sample", ttl_s=86_400, maxlen=0,
                              max_age_s=0)
    return {
        "size": size, "keys": keys, "per_key": (after - before) / keys,
        "usage": int(await r.memory_usage(sample) or 0),
        "value": len(await r.get(sample) or b""), "name": len(sample),
    }


async def run(args: argparse.Namespace, tmp: Path) -> tuple[list[Any], list[Any], str]:
    server = RedisServer(tmp / "redis")
    try:
        server.cli("CONFIG", "SET", "appendfsync", "everysec")
        version = server.cli("INFO", "server").split("redis_version:")[1].split()[0]
        r = clients.client(server.url)
        try:
            lat = await latency(r, args.rounds)
            mem = await memory(r, args.keys)
        finally:
            await r.aclose()
    finally:
        server.stop()
    return lat, mem, version


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=2000, help="publishes of each kind")
    p.add_argument("--keys", type=int, default=100_000, help="keys written for the memory")
    p.add_argument("--out", default="docs/results/idempotency.md")
    args = p.parse_args()
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    with tempfile.TemporaryDirectory(prefix="ssedge-bench-") as tmp:
        lat, mem, version = asyncio.run(run(args, Path(tmp)))
    names = {"plain": "no key (MULTI/EXEC)", "keyed": "new key (script)",
             "replay": "same key again (script, nothing written)"}
    lines = [
        "# What an Idempotency-Key costs a publish",
        "",
        f"`.venv/bin/python -m bench.idempotency --rounds {args.rounds} --keys {args.keys}`, "
        f"{started}, {platform.machine()}, {multiprocessing.cpu_count()} CPUs, Python "
        f"{sys.version.split()[0]}, Redis {version} (AOF, everysec); client and Redis on "
        "127.0.0.1, sharing the CPUs. Latency is a publish's round trip from the relay's code "
        "(no HTTP); Redis CPU is its user+sys time over the publishes.",
        "",
        "| events | at a time | publish | p50 | p99 | Redis CPU per publish |",
        "|---|---|---|---|---|---|",
    ]
    for row in lat:
        lines.append(f"| {row['size']} | {row['concurrency']} | {names[row['kind']]} | "
                     f"{row['p50']:.3f} ms | {row['p99']:.3f} ms | {row['cpu_us']:.0f} µs |")
    lines += [
        "",
        "| events per publish | keys | Redis memory per key (used_memory) | MEMORY USAGE of "
        "one key | its value | its name |",
        "|---|---|---|---|---|---|",
    ]
    for row in mem:
        lines.append(f"| {row['size']} | {row['keys']:,} | {row['per_key']:.0f} B | "
                     f"{row['usage']} B | {row['value']} B | {row['name']} B |")
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
