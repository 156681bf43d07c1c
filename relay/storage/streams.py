"""Topic streams in Redis: key layout, entries as frames, publish, metadata, heads, newest.

Stream key ``ssedge:{topic}`` (the braces are a Cluster hash tag); fields ``d`` (data as sent
on the wire) and ``e`` (event type, optional). Entries written by ``ssedge ingest`` also carry
``o`` (the upstream's name) and ``i`` (the upstream's event id), framed as ``upstream:`` and
``upstream-id:`` lines, which an EventSource ignores and other SSE parsers can read. Any
producer may XADD these fields directly, so entries are framed defensively.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar, cast

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import (
    AskError,
    ConnectionError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import (
    TimeoutError as RedisTimeoutError,
)

from relay.protocol import ids
from relay.protocol.wire import encode_entry
from relay.storage.clients import Client

KEY_PREFIX = "ssedge:"

Entry = tuple[bytes, list[bytes]]  # (id, [field, value, field, value, ...]) as Redis sends them
def stream_key(topic: str) -> str:
    return KEY_PREFIX + "{" + topic + "}"


def entries_of(reply: Any) -> list[tuple[bytes, list[Entry]]]:
    """(key, entries) pairs from an XREAD reply, RESP3 (a map) or RESP2 (a list)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return list(reply.items())
    return [(key, entries) for key, entries in reply]


def frame(entry_id: bytes, fields: list[bytes]) -> tuple[bytes, bool]:
    """One entry as an SSE frame, and whether the entry was well formed."""
    if len(fields) == 2 and fields[0] == b"d":  # published entries: the fast path
        return encode_entry(entry_id, fields[1])
    values = dict(zip(fields[::2], fields[1::2], strict=False))
    return encode_entry(entry_id, values.get(b"d", b""), (
        (b"event", values.get(b"e")), (b"upstream", values.get(b"o")),
        (b"upstream-id", values.get(b"i"))))


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


class NotReplicated(RedisError):
    """The events were written (``ids``) but fewer replicas than asked confirmed them in
    time: a failover now could lose them."""

    def __init__(self, message: str, ids: list[str] | None = None) -> None:
        super().__init__(message)
        self.ids = ids or []


def _publish_commands(key: str, events: Sequence[tuple[bytes, str | None]], *, maxlen: int,
                      max_age_s: int) -> list[tuple[Any, ...]]:
    commands: list[tuple[Any, ...]] = []
    for data, event in events:
        command: tuple[Any, ...] = ("XADD", key)
        if maxlen:
            command += ("MAXLEN", "~", maxlen)
        command += ("*", "d", data)
        if event is not None:
            command += ("e", event)
        commands.append(command)
    if max_age_s:
        min_id = f"{int(time.time() * 1000) - max_age_s * 1000}-0"
        commands.append(("XTRIM", key, "MINID", "~", min_id))
    return commands


async def publish(r: Client, topic: str, events: Sequence[tuple[bytes, str | None]],
                  *, maxlen: int, max_age_s: int, replicas: int = 0,
                  replica_timeout_ms: int = 1000) -> list[str]:
    """XADD every event in one MULTI/EXEC round trip: all are written or none.

    With ``replicas``, the same connection then sends ``WAIT replicas timeout``: the ids are
    returned only once that many replicas hold the events, else ``NotReplicated``.
    """
    key = stream_key(topic)
    # never redis-py's pipeline: it sends a failed MULTI/EXEC again (the client's one retry),
    # and one whose EXEC landed before the connection broke would be written twice with one
    # 201. A pooled connection the server closed is found and replaced before it is used;
    # a failure after the write went out is a 503, which a publisher retries with its key.
    commands = _publish_commands(key, events, maxlen=maxlen, max_age_s=max_age_s)

    async def run(conn: Any) -> list[Any]:
        return await _multi_exec(conn, commands, replicas, replica_timeout_ms)

    try:
        replies = await on_primary(r, key, run)
    except NotReplicated as exc:
        raise NotReplicated(str(exc), [bytes(reply).decode() if isinstance(reply, bytes)
                                       else str(reply) for reply in exc.ids[: len(events)]]
                            ) from None
    return [reply.decode() for reply in replies[: len(events)]]


_REDIRECTS = 3  # a slot may move more than once while a cluster is resharded
T = TypeVar("T")


async def on_primary(r: Client, key: str, run: Callable[[Any], Awaitable[T]]) -> T:
    """``run(connection)`` on one connection to the primary holding ``key``: from the pool of
    one Redis, else the key's cluster node. For commands that must share a connection (a
    WAIT counts the writes of its own connection). ``run`` leaves a connection it did not
    read to the end disconnected."""
    if isinstance(r, aioredis.Redis):
        conn = await r.connection_pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            return await run(conn)
        finally:
            await r.connection_pool.release(conn)
    return await _on_cluster_primary(r, key, run)


async def _on_cluster_primary(r: RedisCluster, key: str,
                              run: Callable[[Any], Awaitable[T]]) -> T:
    """redis-py's cluster pipeline cannot add a WAIT after EXEC (or a script), so the node's
    connection is used directly; a redirection or a refused connection means nothing was
    written: the slot map is refreshed and the write sent again."""
    for attempt in range(_REDIRECTS + 1):
        try:
            await r.initialize()  # once; a no-op after
            node = r.nodes_manager.get_node_from_slot(r.keyslot(key))
        except RedisClusterException as exc:
            raise ConnectionError(str(exc)) from exc
        conn = node.acquire_connection()
        sent = False
        try:
            if not conn.is_connected:
                await conn.connect()  # type: ignore[no-untyped-call]
            sent = True
            return await run(conn)
        except (AskError, TryAgainError, ConnectionError, OSError) as exc:
            await conn.disconnect()
            written_maybe = sent and not isinstance(exc, AskError | TryAgainError)
            if written_maybe or attempt == _REDIRECTS:
                raise
            try:
                await r.nodes_manager.initialize()
            except RedisClusterException as refresh:
                raise ConnectionError(str(refresh)) from exc
        finally:
            node.release(conn)
    raise AssertionError("unreachable")


async def _multi_exec(conn: Any, commands: list[tuple[Any, ...]], replicas: int,
                      replica_timeout_ms: int) -> list[Any]:
    """Send MULTI, the commands, EXEC (and WAIT) in one write; EXEC's replies. Any error
    reply leaves the connection closed (it is not read to the end)."""
    wire = [("MULTI",), *commands, ("EXEC",)]
    if replicas:
        wire.append(("WAIT", replicas, replica_timeout_ms))
    await conn.send_packed_command(conn.pack_commands(wire))
    queued_error: ResponseError | None = None
    try:
        for _ in range(len(commands) + 1):  # +OK, then QUEUED per command
            try:
                await conn.read_response()
            except ResponseError as exc:  # MOVED/ASK/TRYAGAIN: EXEC will abort
                queued_error = queued_error or exc
        try:
            replies = await conn.read_response()
        except ResponseError:
            if queued_error is not None:
                raise queued_error from None  # EXECABORT: nothing was written
            raise
        acked = int(await read_wait(conn, replica_timeout_ms)) if replicas else 0
    except BaseException:
        await conn.disconnect()
        raise
    if replicas and acked < replicas:
        raise NotReplicated(f"written, but {acked} of {replicas} replicas confirmed it "
                            f"within {replica_timeout_ms} ms", list(replies))
    return list(replies)


async def read_wait(conn: Any, replica_timeout_ms: int) -> Any:
    """WAIT's reply, which Redis sends up to its timeout late: the connection's own read
    timeout (5 s) would cut a longer WAIT, and a write that landed would be answered as if
    Redis were unreachable."""
    reply = await conn.read_response(
        timeout=(getattr(conn, "socket_timeout", None) or 5.0) + replica_timeout_ms / 1000)
    if reply is None:  # redis-py's answer to a read that ran out of time: no reply came
        await conn.disconnect()  # a late reply must not be read as the next command's
        raise RedisTimeoutError("no answer to WAIT in time: written, not acknowledged")
    return reply


async def info(r: Client, topic: str) -> dict[str, Any] | None:
    """XINFO STREAM, or None when the stream does not exist."""
    try:
        return await r.xinfo_stream(stream_key(topic))
    except aioredis.ResponseError as exc:
        if "no such key" in str(exc).lower():
            return None
        raise


async def holds(r: Client, topic: str, entry_id: int) -> bool:
    """Whether ``entry_id`` is a position of the stream now: one of its entries, or the id
    just below one (where a backfill that reached a ring's tail started)."""
    reply = await r.xrange(stream_key(topic), min=ids.format(entry_id),
                           max=ids.format(min(entry_id + 1, ids.MAX)), count=1)
    return bool(reply)


async def infos(r: Client, keys: Sequence[bytes]) -> list[dict[str, Any] | None]:
    """XINFO STREAM of each key (None where there is no stream), in one pipeline."""
    async with r.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.xinfo_stream(key)
        replies = await pipe.execute(raise_on_error=False)
    out: list[dict[str, Any] | None] = []
    for reply in replies:
        if isinstance(reply, Exception):
            if "no such key" not in str(reply).lower():
                raise reply
            out.append(None)
        else:
            out.append(reply)
    return out


async def heads(r: Client, keys: Sequence[bytes]) -> list[tuple[int, int]]:
    """Each stream's last generated id and ``entries-added`` (0-0 and 0 when it does not
    exist), in one pipeline."""
    return [(ids.from_redis(info["last-generated-id"]), int(info["entries-added"]))
            if info is not None else (ids.ZERO, 0) for info in await infos(r, keys)]


# the first read of ``newest``: one more round trip after XINFO for rings of small events
_NEWEST_FIRST_BATCH = 100


async def newest(r: Client, key: bytes, count: int,
                 max_bytes: int) -> tuple[list[Entry], int, dict[str, Any] | None]:
    """The newest entries, oldest first, up to ``count`` of them or until they hold
    ``max_bytes`` (the entry that crosses it is the oldest read); the floor, the id at and
    below which entries may exist that were not read; and the XINFO STREAM it was read by
    (None: no such stream).

    XINFO first, then XREVRANGE from its ``last-generated-id`` down, in batches sized from
    the largest entry seen (as history pages are, ``relay.storage.history``): what was read is
    exactly the stream up to that id, whatever is added meanwhile, and a topic of large events
    costs about ``max_bytes``, never ``count`` of them.

    The floor: the oldest entry read when a bound stopped the read; else (the read reached
    the stream's start) 0-0 when the stream as XINFO saw it was never trimmed and the read got
    every entry it held, else just below the oldest entry read (anything trimmed, before or
    during the read, is older than it)."""
    try:
        info: dict[str, Any] | None = await r.xinfo_stream(key)
    except ResponseError as exc:
        if "no such key" not in str(exc).lower():
            raise
        return [], ids.ZERO, None
    assert info is not None
    top = info["last-generated-id"]
    top = top.decode() if isinstance(top, bytes) else str(top)
    read: list[Entry] = []  # newest first
    size = 0
    # the first read is sized from the last entry (XINFO holds it): one round trip for a ring
    # of small events, a few entries for large ones
    largest = _info_entry_bytes(info.get("last-entry"))
    asked = min(count, _NEWEST_FIRST_BATCH, max_bytes // max(largest, 1) + 1)
    bounded = False
    while True:
        # raw replies (clients.client): lists of (id, [field, value, ...])
        batch = cast(list[Entry], await r.xrevrange(key, max=top, min="-", count=asked))
        read.extend(batch)
        for _, fields in batch:
            n = sum(len(f) for f in fields)
            size += n
            largest = max(largest, n)
        if len(batch) < asked:
            break  # the stream's start
        if len(read) >= count or size >= max_bytes:
            bounded = True
            break
        asked = min(count - len(read), max(1, (max_bytes - size) // max(largest, 1) + 1))
        top = "(" + read[-1][0].decode()
    read.reverse()
    oldest = ids.from_redis(read[0][0]) if read else None
    return read, newest_floor(oldest, bounded, info, len(read)), info


def _info_entry_bytes(entry: Any) -> int:
    """Bytes of the fields of an entry as XINFO STREAM gives it ((id, {field: value}))."""
    if not entry or len(entry) != 2 or not isinstance(entry[1], dict):
        return 0
    return sum(len(k) + len(v) for k, v in entry[1].items())


def newest_floor(oldest: int | None, full: bool, info: dict[str, Any] | None,
                 read: int | None = None) -> int:
    """The floor of a ring primed with a stream's newest entries (``oldest`` the oldest read,
    ``full`` whether a bound stopped the read, ``info`` XINFO STREAM or None, ``read`` how
    many entries were read when XINFO was taken before the read: fewer than its ``length``
    means some were trimmed meanwhile)."""
    if info is None:
        return ids.ZERO
    if oldest is not None and full:
        return oldest
    length = int(info["length"])
    if int(info["entries-added"]) > length or (read is not None and read < length):
        if oldest is not None:
            return ids.predecessor(oldest)
        return ids.from_redis(info["last-generated-id"])
    return ids.ZERO


# KEYS: a stream. ARGV: ms. Deletes the stream when its last generated id is more than that
# older than Redis's clock (TIME: the clock ids are made from, not a relay's): nothing was
# added to it since. One script, so no XADD can land between the check and the DEL (every
# relay may run it on the same stream at once: the first deletes, the others find no key).
# Not a stream, or none: 0.
_DELETE_IDLE = """
local ok, info = pcall(redis.call, 'XINFO', 'STREAM', KEYS[1])
if not ok then return 0 end
local now = redis.call('TIME')
local cutoff = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - tonumber(ARGV[1])
for i = 1, #info, 2 do
  if info[i] == 'last-generated-id' then
    local ms = tonumber(string.match(info[i + 1], '^(%d+)-'))
    if ms ~= nil and ms < cutoff then return redis.call('DEL', KEYS[1]) end
    return 0
  end
end
return 0
"""
_SCAN_COUNT = 1000


async def delete_if_idle(r: Client, key: str | bytes, idle_ms: int) -> bool:
    """Delete the stream ``key`` when nothing was added to it for ``idle_ms`` (its last id's
    time against Redis's clock); whether it was deleted."""
    return bool(await r.eval(_DELETE_IDLE, 1, key, idle_ms))


async def delete_idle(r: Client, idle_ms: int) -> list[bytes]:
    """Every topic stream to which nothing was added for ``idle_ms``, deleted (a SCAN of the
    stream keys, every node of a cluster); the keys deleted."""
    gone = []
    async for key in r.scan_iter(match=KEY_PREFIX + "{*}", count=_SCAN_COUNT, _type="stream"):
        raw = key if isinstance(key, bytes) else str(key).encode()
        if raw.endswith(b"}") and await delete_if_idle(r, raw, idle_ms):
            gone.append(raw)
    return gone
