"""A small upstream SSE server: what ``ssedge up`` ingests, and what the tests drop at will.

``GET /events`` streams numbered events with opaque ids (``<prefix><n>-<tag>``), keeps them
for resumes and honours ``Last-Event-ID``: a client gets exactly the events after that id.
Without one it starts live, or at the first event with ``replay_all`` (the tests use that to
account for every event). With ``drop_every`` it ends each connection after a random number
of events (about that many on average), sometimes in the middle of a frame, the way flaky
origins and proxies do.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import threading
import time
import zlib

from relay.protocol.wire import encode_comment, encode_event, encode_retry
from relay.web import client

_HEARTBEAT_S = 10.0


class DemoUpstream:
    def __init__(self, *, interval: float = 1.0, count: int = 0, prefix: str = "",
                 retry_ms: int = 1000, drop_every: int = 0, replay_all: bool = False,
                 keep: int = 10_000, seed: int | None = None) -> None:
        self.interval = interval
        self.count = count  # stop producing after this many (0: never)
        self.prefix = prefix
        self.retry_ms = retry_ms
        self.drop_every = drop_every
        self.replay_all = replay_all
        self.keep = keep
        self.ids: list[str] = []  # every id produced, in order
        self.frames: dict[str, bytes] = {}
        self._index: dict[str, int] = {}
        self._writers: set[asyncio.StreamWriter] = set()
        self.connections = 0
        self.resumed_from: list[str] = []  # Last-Event-ID of each connection ("" for none)
        self._first = 0  # index in ids of the oldest kept event
        self._random = random.Random(seed)
        self._changed = asyncio.Event()
        self._closed = False
        self._server: asyncio.Server | None = None
        self._producer: asyncio.Task[None] | None = None
        self.port = 0

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = await asyncio.start_server(self._handle, host, port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        self._producer = asyncio.ensure_future(self._produce())

    async def close(self) -> None:
        self._closed = True
        self._changed.set()  # wakes every stream, which then ends
        if self._producer is not None:
            self._producer.cancel()
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()

    @property
    def done(self) -> bool:
        return bool(self.count) and len(self.ids) >= self.count

    # -- events ------------------------------------------------------------------------

    def event(self, n: int) -> tuple[str, bytes]:
        tag = format(zlib.crc32(b"%d" % n) & 0xFFFF, "04x")
        event_id = f"{self.prefix}{n}-{tag}"
        body = {"n": n, "symbol": "ACME", "price": round(100 + 5 * random.random(), 2),
                "at": time.time()}
        data = json.dumps(body)
        if n % 7 == 3:
            data += "\nsecond line"  # multi-line data must survive the trip
        kind = "quote" if n % 5 else "summary"
        return event_id, encode_event(data, id=event_id, event=kind)

    async def _produce(self) -> None:
        n = 0
        while not self.done:
            n += 1
            event_id, frame = self.event(n)
            self._index[event_id] = len(self.ids)
            self.ids.append(event_id)
            self.frames[event_id] = frame
            if len(self.ids) - self._first > self.keep:
                gone = self.ids[self._first]
                del self.frames[gone], self._index[gone]
                self._first += 1
            self._changed.set()
            self._changed = asyncio.Event()
            await asyncio.sleep(self.interval)

    # -- HTTP ------------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            request_line, *lines = head.decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in
                       (line.partition(":") for line in lines if line)}
            if request_line.split(" ")[1].split("?")[0] != "/events":
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n"
                             b"Connection: close\r\n\r\n")
                return
            await self._stream(writer, headers.get("last-event-id", ""))
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                IndexError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def _start(self, last_id: str) -> int:
        if last_id in self._index:
            return self._index[last_id] + 1
        if last_id or self.replay_all:
            return self._first  # unknown id: everything kept, rather than a silent gap
        return len(self.ids)

    async def _stream(self, writer: asyncio.StreamWriter, last_id: str) -> None:
        self.connections += 1
        self.resumed_from.append(last_id)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Cache-Control: no-store\r\nTransfer-Encoding: chunked\r\n\r\n")
        _chunk(writer, encode_retry(self.retry_ms))
        at = self._start(last_id)
        budget = self._budget()
        while True:
            while at < len(self.ids):
                frame = self.frames[self.ids[at]]
                if budget == 0:
                    if self._random.random() < 0.5:  # cut in the middle of the frame
                        _chunk(writer, frame[: len(frame) // 2])
                    await writer.drain()
                    return
                _chunk(writer, frame)
                at += 1
                budget -= 1
            await writer.drain()
            if self._closed:
                return
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), _HEARTBEAT_S)
            except TimeoutError:
                _chunk(writer, encode_comment("keepalive"))

    def _budget(self) -> int:
        """Events this connection sends before it is dropped (-1: never)."""
        if not self.drop_every:
            return -1
        return self._random.randint(0, 2 * self.drop_every)


def _chunk(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(b"%x\r\n%s\r\n" % (len(data), data))


def run(host: str, port: int, *, interval: float, drop_every: int) -> int:
    async def main() -> None:
        upstream = DemoUpstream(interval=interval, drop_every=drop_every, retry_ms=1000)
        await upstream.start(host, port)
        print(f"demo upstream on http://{host}:{upstream.port}/events", flush=True)
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
    return 0


DEMO_TOPIC = "demo"


def publish_ticks(url: str, token: str, stop: threading.Event) -> None:
    """Publishes a small JSON tick to the demo topic every second."""
    n = 0
    while not stop.wait(1.0):
        n += 1
        body = {"data": {"n": n, "at": time.time()}, "event": "tick"}
        with contextlib.suppress(Exception):  # retried with its Idempotency-Key: once
            asyncio.run(client.publish(f"{url}/v1/streams/{DEMO_TOPIC}/events", body,
                                       token=token, attempts=3, timeout=5))
