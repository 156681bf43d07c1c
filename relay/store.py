"""Everything ssedge says to Redis: key layout, framing of entries, publish, metadata, ranges.

Stream key ``ssedge:{topic}`` (the braces are a Cluster hash tag); fields ``d`` (data as sent
on the wire) and ``e`` (event type, optional). Entries written by ``ssedge ingest`` also carry
``o`` (the upstream's name) and ``i`` (the upstream's event id), framed as ``upstream:`` and
``upstream-id:`` lines, which an EventSource ignores and other SSE parsers can read. Any
producer may XADD these fields directly, so entries are framed defensively.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from relay import ids
from relay.wire import encode_data

KEY_PREFIX = "ssedge:"
_BAD_TYPE = (b"\r", b"\n", b"\x00")

Entry = tuple[bytes, list[bytes]]  # (id, [field, value, field, value, ...]) as Redis sends them


def stream_key(topic: str) -> str:
    return KEY_PREFIX + "{" + topic + "}"


def _raw(response: Any, **_: Any) -> Any:
    return response


def client(url: str, *, socket_timeout: float | None = 5.0, max_connections: int = 50,
           retries: int = 1) -> aioredis.Redis:
    """A client whose stream replies come back raw (hiredis lists), not as dicts per entry."""
    r = aioredis.Redis.from_url(
        url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=2.0,
        max_connections=max_connections,
        retry=Retry(NoBackoff(), retries),
        health_check_interval=0,
    )
    for command in ("XREAD", "XRANGE", "XREVRANGE"):
        r.set_response_callback(command, _raw)
    return r


def entries_of(reply: Any) -> list[tuple[bytes, list[Entry]]]:
    """(key, entries) pairs from an XREAD reply, RESP3 (a map) or RESP2 (a list)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return list(reply.items())
    return [(key, entries) for key, entries in reply]


def frame(entry_id: bytes, fields: list[bytes]) -> tuple[bytes, bool]:
    """One entry as an SSE frame, and whether the entry was well formed."""
    if len(fields) == 2 and fields[0] == b"d":
        return b"id: " + entry_id + b"\n" + encode_data(fields[1]) + b"\n", True
    data = b""
    event: bytes | None = None
    origin: bytes | None = None
    origin_id: bytes | None = None
    for i in range(0, len(fields) - 1, 2):
        name = fields[i]
        if name == b"d":
            data = fields[i + 1]
        elif name == b"e":
            event = fields[i + 1]
        elif name == b"o":
            origin = fields[i + 1]
        elif name == b"i":
            origin_id = fields[i + 1]
    ok = True
    head = b"id: " + entry_id + b"\n"
    # a value that would break the stream is left out: the event goes out without it
    for line, value in ((b"event: ", event), (b"upstream: ", origin),
                        (b"upstream-id: ", origin_id)):
        if value is None:
            continue
        if not value or any(c in value for c in _BAD_TYPE):
            ok = False
            continue
        head += line + value + b"\n"
    return head + encode_data(data) + b"\n", ok


def frames(entries: Sequence[Entry]) -> tuple[list[int], list[bytes], int]:
    """Keys, frames and the number of malformed entries, for a batch of entries."""
    keys: list[int] = []
    out: list[bytes] = []
    bad = 0
    for entry_id, fields in entries:
        f, ok = frame(entry_id, fields)
        keys.append(ids.from_redis(entry_id))
        out.append(f)
        bad += not ok
    return keys, out, bad


async def publish(r: aioredis.Redis, topic: str, events: Sequence[tuple[bytes, str | None]],
                  *, maxlen: int, max_age_s: int) -> list[str]:
    """XADD every event in one MULTI/EXEC round trip: all are written or none."""
    key = stream_key(topic)
    async with r.pipeline(transaction=True) as pipe:
        for data, event in events:
            fields: dict[str, bytes | str] = {"d": data}
            if event is not None:
                fields["e"] = event
            pipe.xadd(key, fields, maxlen=maxlen or None, approximate=True)  # type: ignore[arg-type]
        if max_age_s:
            min_id = f"{int(time.time() * 1000) - max_age_s * 1000}-0"
            pipe.xtrim(key, minid=min_id, approximate=True)
        replies = await pipe.execute()
    return [reply.decode() for reply in replies[: len(events)]]


async def info(r: aioredis.Redis, topic: str) -> dict[str, Any] | None:
    """XINFO STREAM, or None when the stream does not exist."""
    try:
        return await r.xinfo_stream(stream_key(topic))
    except aioredis.ResponseError as exc:
        if "no such key" in str(exc).lower():
            return None
        raise


async def newest(r: aioredis.Redis, key: bytes, count: int) -> tuple[list[Entry], int]:
    """The newest ``count`` entries, oldest first, and the floor below which entries may exist
    that were not read: the oldest entry read when the read was full; just below the first
    entry when the stream was ever trimmed (everything trimmed is older than it); else 0-0,
    the read holds the whole stream."""
    async with r.pipeline(transaction=False) as pipe:
        pipe.xrevrange(key, count=count)
        pipe.xinfo_stream(key)
        reply, info = await pipe.execute(raise_on_error=False)
    if isinstance(reply, Exception):
        raise reply
    entries: list[Entry] = list(reversed(reply))
    if isinstance(info, Exception):
        if "no such key" not in str(info).lower():
            raise info
        return entries, ids.ZERO
    if entries and len(entries) == count:
        return entries, ids.from_redis(entries[0][0])
    if int(info["entries-added"]) > int(info["length"]):
        if entries:
            return entries, ids.predecessor(ids.from_redis(entries[0][0]))
        return entries, ids.from_redis(info["last-generated-id"])
    return entries, ids.ZERO
