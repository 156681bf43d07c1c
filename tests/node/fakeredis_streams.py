"""An in-memory Redis holding streams: the subset of redis-py's asyncio client ssedge calls.

Semantics are Redis's, command by command (Redis 7.0), not whatever today's code needs:

- ids are ``<ms>-<seq>``; ``XADD *`` takes the model's clock (``FakeRedis.now_ms``) and never
  goes at or below the stream's ``last-generated-id``; an explicit id must be above it;
- ``XRANGE``/``XREVRANGE`` take ``-``, ``+``, a full id, an id without its sequence (``ms``:
  ``ms-0`` as a start, ``ms-<max>`` as an end) and ``(`` exclusive bounds; from an id older
  than the first entry they silently start at the first entry, as ``XREAD`` does;
- ``XTRIM``/``XADD … MAXLEN|MINID`` remove from the front; ``~`` removes whole macro-nodes
  only (``node_entries`` entries each, filled in insertion order), so it may remove less;
  trimming never touches ``max-deleted-entry-id`` (only XDEL does), it only makes ``length``
  fall below ``entries-added``;
- a stream emptied by trims or XDEL still exists (``XINFO`` answers, with null first and last
  entries); ``DEL`` removes it, and the next ``XADD`` makes a new one from ``0-0``;
- ``XINFO STREAM`` of a missing key raises ``ResponseError("no such key")``; its answer is
  what redis-py 8 makes of Redis's RESP3 map (``clients.client``'s raw callbacks apply only
  to XREAD/XRANGE/XREVRANGE): ``str`` keys, ``bytes`` ids, ints for counts, entries as
  ``(id, {field: value})``;
- ``XREAD`` replies a RESP3 map ``{key: [[id, [field, value, ...]], ...]}`` holding only the
  streams with entries after the given id (``$``: after the last generated id), or None.

Replies come back as raw lists (``[id, [field, value, …]]``), as ``clients.client`` asks
hiredis for. A pipeline queues commands and runs them in one go (nothing interleaves);
``execute(raise_on_error=False)`` puts each failed command's exception in its place.

``failover(key, writes)`` is not a command: it puts the stream back to what it was
``writes`` writes ago, as a replica that missed them would hold it after a failover.

Every call yields to the event loop ``delay()`` times after running (the reply's way back),
so the model's world can change while a relay waits for an answer.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import ResponseError

U64 = (1 << 64) - 1
Fields = list[bytes]


def key_of(raw: str | bytes) -> bytes:
    return raw.encode() if isinstance(raw, str) else raw


def fmt(key: int) -> bytes:
    return f"{key >> 64}-{key & U64}".encode()


def parse_id(raw: str | bytes | int, *, end: bool = False) -> int:
    """A full or partial (``ms``) id as an integer key; a partial one is its first id, or its
    last as an ``end``."""
    if isinstance(raw, int):
        return raw
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, sep, seq = text.partition("-")
    if not ms.isdigit() or (sep and not seq.isdigit()):
        raise ResponseError("Invalid stream ID specified as stream command argument")
    if not sep:
        return int(ms) << 64 | (U64 if end else 0)
    return int(ms) << 64 | int(seq)


@dataclass
class Stream:
    entries: list[tuple[int, Fields, int]] = field(default_factory=list)  # (id, fields, node)
    last_generated: int = 0
    entries_added: int = 0
    max_deleted: int = 0
    node: int = 0  # the macro-node new entries go into
    in_node: int = 0  # entries put into it so far


class FakeRedis:
    def __init__(self, *, node_entries: int = 4,
                 delay: Callable[[], int] = lambda: 0) -> None:
        self.streams: dict[bytes, Stream] = {}
        self.now_ms = 1_000
        self.node_entries = node_entries
        self.delay = delay
        self.history: list[tuple[bytes, Stream | None]] = []  # (key, state before a write)
        self.calls: dict[str, int] = {}

    # -- plumbing ---------------------------------------------------------------------------

    async def _reply(self, name: str, run: Callable[[], Any]) -> Any:
        self.calls[name] = self.calls.get(name, 0) + 1
        result = run()
        for _ in range(self.delay()):
            await asyncio.sleep(0)
        return result

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Pipeline:
        return Pipeline(self)

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"FakeRedis does not implement {name!r}: implement it, as Redis "
                             "does, in tests/node/fakeredis_streams.py")

    def _write(self, key: bytes) -> Stream:
        before = self.streams.get(key)
        self.history.append((key, copy.deepcopy(before)))
        stream = self.streams.get(key)
        if stream is None:
            stream = self.streams[key] = Stream()
        return stream

    # -- commands, synchronous (a pipeline runs them in one go) ------------------------------

    def do_xadd(self, name: str | bytes, fields: dict[Any, Any], id: str | bytes = "*",
                maxlen: int | None = None, approximate: bool = True, nomkstream: bool = False,
                minid: str | bytes | None = None, limit: int | None = None) -> bytes:
        key = key_of(name)
        if nomkstream and key not in self.streams:
            return None  # type: ignore[return-value]
        last = self.streams[key].last_generated if key in self.streams else 0
        if id in ("*", b"*"):
            ms = max(self.now_ms, last >> 64)
            new = ms << 64 | ((last & U64) + 1 if ms == last >> 64 and last else 0)
            if new <= last:
                new = last + 1
        else:
            new = parse_id(id)
            if new <= last or new == 0:
                raise ResponseError("The ID specified in XADD is equal or smaller than the "
                                    "target stream top item")
        stream = self._write(key)
        flat: Fields = []
        for f, v in fields.items():
            flat += [key_of(f) if not isinstance(f, bytes) else f,
                     v if isinstance(v, bytes) else str(v).encode()]
        if stream.in_node >= self.node_entries:
            stream.node += 1
            stream.in_node = 0
        stream.in_node += 1
        stream.entries.append((new, flat, stream.node))
        stream.last_generated = new
        stream.entries_added += 1
        self._trim(stream, maxlen, minid, approximate)
        return fmt(new)

    def do_xtrim(self, name: str | bytes, maxlen: int | None = None, approximate: bool = True,
                 minid: str | bytes | None = None, limit: int | None = None) -> int:
        key = key_of(name)
        if key not in self.streams:
            return 0
        return self._trim(self._write(key), maxlen, minid, approximate)

    def _trim(self, stream: Stream, maxlen: int | None, minid: str | bytes | None,
              approximate: bool) -> int:
        entries = stream.entries
        drop = 0
        if maxlen is not None:
            drop = max(0, len(entries) - maxlen)
        if minid is not None:
            low = parse_id(minid)
            drop = max(drop, sum(1 for e in entries if e[0] < low))
        if approximate and drop:
            # only whole macro-nodes go, and never the one being filled
            whole = 0
            while whole < len(entries):
                node = entries[whole][2]
                end = whole
                while end < len(entries) and entries[end][2] == node:
                    end += 1
                if end > drop or node == stream.node:
                    break
                whole = end
            drop = whole
        del entries[:drop]
        return drop

    def do_xdel(self, name: str | bytes, *entry_ids: str | bytes) -> int:
        key = key_of(name)
        if key not in self.streams:
            return 0
        stream = self._write(key)
        gone = {parse_id(i) for i in entry_ids}
        kept = [e for e in stream.entries if e[0] not in gone]
        removed = [e[0] for e in stream.entries if e[0] in gone]
        stream.entries = kept
        if removed:
            stream.max_deleted = max(stream.max_deleted, *removed)
        return len(removed)

    def do_delete(self, *names: str | bytes) -> int:
        n = 0
        for name in names:
            key = key_of(name)
            if key in self.streams:
                self._write(key)
                del self.streams[key]
                n += 1
        return n

    def do_exists(self, *names: str | bytes) -> int:
        return sum(key_of(n) in self.streams for n in names)

    def do_xlen(self, name: str | bytes) -> int:
        stream = self.streams.get(key_of(name))
        return len(stream.entries) if stream else 0

    def _bounds(self, low: str | bytes | int, high: str | bytes | int) -> tuple[int, int]:
        def one(raw: str | bytes | int, end: bool) -> int:
            if isinstance(raw, int):
                return raw
            text = raw.decode() if isinstance(raw, bytes) else raw
            if text == "-":
                return 0
            if text == "+":
                return (U64 << 64) | U64
            if text.startswith("("):
                key = parse_id(text[1:], end=not end)
                if end:
                    if key == 0:
                        raise ResponseError("invalid end ID for the interval")
                    return key - 1
                if key == (U64 << 64) | U64:
                    raise ResponseError("invalid start ID for the interval")
                return key + 1
            return parse_id(text, end=end)

        return one(low, False), one(high, True)

    def do_xrange(self, name: str | bytes, min: str | bytes = "-", max: str | bytes = "+",
                  count: int | None = None) -> list[list[Any]]:
        stream = self.streams.get(key_of(name))
        low, high = self._bounds(min, max)
        if stream is None:
            return []
        out = [[fmt(k), list(f)] for k, f, _ in stream.entries if low <= k <= high]
        return out[:count] if count is not None else out

    def do_xrevrange(self, name: str | bytes, max: str | bytes = "+", min: str | bytes = "-",
                     count: int | None = None) -> list[list[Any]]:
        stream = self.streams.get(key_of(name))
        low, high = self._bounds(min, max)
        if stream is None:
            return []
        out = [[fmt(k), list(f)] for k, f, _ in reversed(stream.entries) if low <= k <= high]
        return out[:count] if count is not None else out

    def do_xinfo_stream(self, name: str | bytes, full: bool = False) -> dict[str, Any]:
        stream = self.streams.get(key_of(name))
        if stream is None:
            raise ResponseError("no such key")

        def entry(e: tuple[int, Fields, int] | None) -> Any:
            if e is None:
                return None
            f = e[1]
            return (fmt(e[0]), dict(zip(f[::2], f[1::2], strict=True)))

        entries = stream.entries
        return {
            "length": len(entries),
            "radix-tree-keys": len({e[2] for e in entries}),
            "radix-tree-nodes": len({e[2] for e in entries}) + 1,
            "last-generated-id": fmt(stream.last_generated),
            "max-deleted-entry-id": fmt(stream.max_deleted),
            "entries-added": stream.entries_added,
            "recorded-first-entry-id": fmt(entries[0][0]) if entries else b"0-0",
            "groups": 0,
            "first-entry": entry(entries[0] if entries else None),
            "last-entry": entry(entries[-1] if entries else None),
        }

    def do_xread(self, streams: dict[Any, Any], count: int | None = None,
                 block: int | None = None) -> dict[bytes, list[list[Any]]] | None:
        out: dict[bytes, list[list[Any]]] = {}
        for name, raw in streams.items():
            key = key_of(name)
            stream = self.streams.get(key)
            if stream is None:
                continue
            after = stream.last_generated if raw in ("$", b"$") else parse_id(raw)
            got = [[fmt(k), list(f)] for k, f, _ in stream.entries if k > after]
            if count is not None:
                got = got[:count]
            if got:
                out[key] = got
        return out or None

    # -- not a command: the model's faults -----------------------------------------------------

    def failover(self, writes: int) -> list[bytes]:
        """Undo the last ``writes`` writes of every stream (a replica that had not got them
        took over); the keys that changed."""
        changed = []
        for _ in range(min(writes, len(self.history))):
            key, before = self.history.pop()
            if before is None:
                self.streams.pop(key, None)
            else:
                self.streams[key] = before
            changed.append(key)
        return changed

    # -- the async client API --------------------------------------------------------------

    async def xadd(self, *args: Any, **kwargs: Any) -> bytes:
        return await self._reply("xadd", lambda: self.do_xadd(*args, **kwargs))  # type: ignore[no-any-return]

    async def xtrim(self, *args: Any, **kwargs: Any) -> int:
        return await self._reply("xtrim", lambda: self.do_xtrim(*args, **kwargs))  # type: ignore[no-any-return]

    async def xdel(self, *args: Any) -> int:
        return await self._reply("xdel", lambda: self.do_xdel(*args))  # type: ignore[no-any-return]

    async def delete(self, *args: Any) -> int:
        return await self._reply("delete", lambda: self.do_delete(*args))  # type: ignore[no-any-return]

    async def exists(self, *args: Any) -> int:
        return await self._reply("exists", lambda: self.do_exists(*args))  # type: ignore[no-any-return]

    async def xlen(self, *args: Any) -> int:
        return await self._reply("xlen", lambda: self.do_xlen(*args))  # type: ignore[no-any-return]

    async def xrange(self, *args: Any, **kwargs: Any) -> list[list[Any]]:
        return await self._reply("xrange", lambda: self.do_xrange(*args, **kwargs))  # type: ignore[no-any-return]

    async def xrevrange(self, *args: Any, **kwargs: Any) -> list[list[Any]]:
        return await self._reply("xrevrange", lambda: self.do_xrevrange(*args, **kwargs))  # type: ignore[no-any-return]

    async def xinfo_stream(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return await self._reply("xinfo_stream", lambda: self.do_xinfo_stream(*args, **kwargs))  # type: ignore[no-any-return]

    async def xread(self, *args: Any, **kwargs: Any) -> Any:
        return await self._reply("xread", lambda: self.do_xread(*args, **kwargs))

    async def ping(self) -> bool:
        return True

    async def aclose(self) -> None:
        pass


class Pipeline:
    """``pipeline(transaction=False)``: commands queued, then run in one go by ``execute``."""

    def __init__(self, redis: FakeRedis) -> None:
        self._redis = redis
        self._queued: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    async def __aenter__(self) -> Pipeline:
        return self

    async def __aexit__(self, *_: object) -> None:
        self._queued.clear()

    def __getattr__(self, name: str) -> Any:
        run = getattr(self._redis, "do_" + name, None)
        if run is None:
            raise AttributeError(f"FakeRedis pipelines do not implement {name!r}")

        def queue(*args: Any, **kwargs: Any) -> Pipeline:
            self._queued.append((name, args, kwargs))
            return self

        return queue

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        def run() -> list[Any]:
            out: list[Any] = []
            for name, args, kwargs in self._queued:
                try:
                    out.append(getattr(self._redis, "do_" + name)(*args, **kwargs))
                except ResponseError as exc:
                    out.append(exc)
            self._queued.clear()
            return out

        replies: list[Any] = await self._redis._reply("pipeline", run)
        if raise_on_error:
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
        return replies
