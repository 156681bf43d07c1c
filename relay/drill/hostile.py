"""A hostile client: raw HTTP/1.1 from a chosen source address (127.0.0.2: the edge's limits
key on it, and ``ssedge up`` exempts only 127.0.0.1), so that anything a client may send, the
odd spellings and absolute-form request lines among them, is sent exactly as written.

``ssedge drill``'s ``hostile`` fault floods the local stack's edge with it; the edge's tests
(tests/integration/edge/test_hostile.py) and its benchmark (bench/hostile.py) use it too."""

from __future__ import annotations

import asyncio
import contextlib
import random
import string
from dataclasses import dataclass, field

HOSTILE = "127.0.0.2"


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes = b""
    # an open stream's connection, while the caller holds it
    writer: asyncio.StreamWriter | None = field(default=None, repr=False)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


async def _head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    return status, headers, raw


async def request(port: int, target: str, *, source: str = HOSTILE, method: str = "GET",
                  headers: dict[str, str] | None = None, body: bytes = b"", hold: bool = False,
                  timeout: float = 10.0) -> Answer:
    """One request on its own connection. A 200 event stream is read up to its first bytes;
    with ``hold`` it stays open (the answer's ``writer``; ``close()`` it), else it is closed.
    Anything else is read to its end."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(
        "127.0.0.1", port, local_addr=(source, 0)), timeout)
    try:
        head = {"Host": "edge", "Connection": "close", **(headers or {})}
        if body:
            head["Content-Length"] = str(len(body))
        text = f"{method} {target} HTTP/1.1\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in head.items()) + "\r\n"
        writer.write(text.encode("latin-1") + body)
        status, answer_headers, _ = await asyncio.wait_for(_head(reader), timeout)
        streaming = (answer_headers.get("content-type", "").startswith("text/event-stream")
                     and "content-length" not in answer_headers)
        if streaming and "x-ssedge-refused" not in answer_headers:
            first = await asyncio.wait_for(reader.read(4096), timeout)
            answer = Answer(status, answer_headers, first, writer if hold else None)
            if not hold:
                writer.close()
            return answer
        data = await asyncio.wait_for(reader.read(-1), timeout)
        writer.close()
        return Answer(status, answer_headers, data)
    except BaseException:
        writer.close()
        raise


def random_topics(n: int, rng: random.Random) -> list[str]:
    return ["h-" + "".join(rng.choices(string.ascii_lowercase, k=10)) for _ in range(n)]


def multi_stream_target(topics: list[str]) -> str:
    return "/v1/streams/events?" + "&".join(f"topic={t}" for t in topics)


async def flood_streams(port: int, seconds: float, *, workers: int = 16, names: int = 16,
                        seed: int = 1, hold: bool = True) -> dict[str, int]:
    """Streams on random topics (``names`` a request) asked for as fast as ``workers``
    connections can, each served one held open (with ``hold``) until the end, for
    ``seconds``: the answers by kind."""
    rng = random.Random(seed)
    counts = {"served": 0, "refused_limit": 0, "other": 0, "errors": 0}
    held: list[Answer] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds

    async def worker() -> None:
        while loop.time() < deadline:
            try:
                answer = await request(port, multi_stream_target(random_topics(names, rng)),
                                       hold=hold, timeout=5)
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
                counts["errors"] += 1
                await asyncio.sleep(0.01)
                continue
            if answer.headers.get("x-ssedge-refused") == "limit":
                counts["refused_limit"] += 1
            elif answer.status == 200 and b"retry:" in answer.body:
                counts["served"] += 1
                if answer.writer is not None:
                    held.append(answer)
            else:
                counts["other"] += 1

    try:
        await asyncio.gather(*(worker() for _ in range(workers)))
    finally:
        for answer in held:
            with contextlib.suppress(Exception):
                answer.close()
    return counts


async def flood_replay(port: int, topic: str, seconds: float, *, workers: int = 8,
                       seed: int = 2) -> dict[int, int]:
    """Replay pages after random ids as fast as ``workers`` connections can: answers by
    status."""
    rng = random.Random(seed)
    counts: dict[int, int] = {}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds

    async def worker() -> None:
        while loop.time() < deadline:
            after = f"{rng.randrange(1, 2**40)}-{rng.randrange(0, 100)}"
            try:
                answer = await request(port, f"/v1/replay/{topic}?after={after}", timeout=5)
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
                counts[0] = counts.get(0, 0) + 1
                continue
            counts[answer.status] = counts.get(answer.status, 0) + 1

    await asyncio.gather(*(worker() for _ in range(workers)))
    return counts


ODD_STREAMS = ("/v1/streams/demo/events/", "//v1/streams/demo/events",
               "/v1/streams/demo/%65vents", "/v1/streams/x/../demo/events")
OPERATOR = ("/metrics", "/readyz", "//metrics", "/%6detrics", "https://x/metrics")


async def odd_requests(port: int, seconds: float) -> dict[str, int]:
    """Odd spellings of a stream and operator endpoints (absolute form among them), one at a
    time for ``seconds``: how many were refused (4xx) and how many were not (``leaked``)."""
    counts = {"refused": 0, "leaked": 0, "errors": 0}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    targets = [*ODD_STREAMS, *OPERATOR]
    n = 0
    while loop.time() < deadline:
        target = targets[n % len(targets)]
        n += 1
        try:
            answer = await request(port, target, timeout=5,
                                   headers={"Host": "x"} if target.startswith("https:") else None)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
            counts["errors"] += 1
            continue
        counts["refused" if 400 <= answer.status < 500 else "leaked"] += 1
    return counts


async def abuse(port: int, seconds: float, *, workers: int = 4) -> dict[str, int]:
    """One source abusing the edge on ``port`` in every way at once for ``seconds``: streams
    on random topics (not held), random replay pages, odd spellings and operator endpoints.
    The answers by kind (``stream_*``, ``replay_<status>``, ``odd_*``)."""
    streams, replay, odd = await asyncio.gather(
        flood_streams(port, seconds, workers=workers, hold=False),
        flood_replay(port, "demo", seconds, workers=max(1, workers // 2)),
        odd_requests(port, seconds))
    return {**{f"stream_{k}": v for k, v in streams.items()},
            **{f"replay_{k}": v for k, v in replay.items()},
            **{f"odd_{k}": v for k, v in odd.items()}}
