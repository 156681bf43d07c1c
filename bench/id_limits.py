"""Measure how long an event id (and a request head) may be, end to end.

A composite id (``relay.protocol.composite``) comes back as the ``Last-Event-ID`` request
header on every reconnect, next to a URL that names every topic. Three parts must take it:

- **Chromium's EventSource**: does it keep an ``id:`` of N bytes and send it back whole? A
  small server sends one event with an id of N bytes and ends the stream; the page's
  ``lastEventId`` and the header of the browser's reconnect are compared with it.
- **Granian** (a relay node) and **varnishd** with the shipped ``varnish/params``: the
  largest ``Last-Event-ID`` header, and the largest URL, of a request they still answer
  (``GET /healthz``, raw HTTP/1.1 over a socket).

    .venv/bin/python -m bench.id_limits            # prints a Markdown table

Everything listens on 127.0.0.1; every process it starts is stopped by its PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from relay.harness.processes import free_port
from relay.harness.servers import RedisServer, Relay, Varnish

CHROMIUM = "/usr/bin/chromium"
SIZES = [1024, 8192, 65536, 1 << 20, 4 << 20]


def head_status(port: int, *, header: int = 0, url: int = 0) -> str:
    """The status line's code for ``GET /healthz`` with a Last-Event-ID of ``header`` bytes
    and a query of ``url`` bytes, or what happened instead."""
    path = "/healthz" + ("?pad=" + "p" * max(0, url - 13) if url else "")
    head = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    if header:
        head += "Last-Event-ID: " + "x" * header + "\r\n"
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(head.encode() + b"\r\n")
            answer = s.recv(200)
    except OSError as exc:
        return type(exc).__name__
    if not answer:
        return "closed"
    return answer.split(b"\r\n", 1)[0].split(b" ")[1].decode()


def largest(port: int, kind: str) -> int:
    """The largest size (bytes of the header value, or of the request target) answered 200."""
    lo, hi = 0, 1 << 16  # lo answered, hi did not
    if head_status(port, **{kind: hi}) == "200":
        return hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if head_status(port, **{kind: mid}) == "200":
            lo = mid
        else:
            hi = mid
    return lo


# -- Chromium --------------------------------------------------------------------------------

PAGE = b"""<!doctype html><meta charset="utf-8"><script>
window.got = [];
const es = new EventSource("/sse");
es.onmessage = (e) => { window.got.push([e.data, e.lastEventId.length]); };
</script>"""


class IdServer(threading.Thread):
    """Sends one event with an id of ``size`` bytes and ends; the reconnect's Last-Event-ID
    length comes back as the next event's data."""

    def __init__(self, size: int) -> None:
        super().__init__(daemon=True)
        self.size = size
        self.port = free_port()
        self.ready = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None

    def run(self) -> None:
        self.loop = asyncio.new_event_loop()
        server = self.loop.run_until_complete(
            asyncio.start_server(self.handle, "127.0.0.1", self.port, limit=8 << 20))
        self.ready.set()
        self.loop.run_forever()
        server.close()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        if head.startswith("GET /page"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: %d\r\n"
                         b"Connection: close\r\n\r\n%s" % (len(PAGE), PAGE))
        else:
            sent = next((line.split(":", 1)[1].strip() for line in head.split("\r\n")
                         if line.lower().startswith("last-event-id:")), None)
            body = b"retry: 50\n"
            if sent is None:
                body += b"id: " + b"i" * self.size + b"\ndata: first\n\n"
            else:
                whole = sent == "i" * self.size
                others = len(head) - len(sent)  # the rest of the browser's request head
                body += b"retry: 60000\ndata: reconnect %d %s (head without it: %d B)\n\n" % (
                    len(sent), b"whole" if whole else b"changed", others)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         b"Connection: close\r\n\r\n" + body)
        await writer.drain()
        writer.close()

    def stop(self) -> None:
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.join(5)


def chromium(sizes: list[int]) -> list[tuple[int, str]]:
    from playwright.sync_api import sync_playwright

    out = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        try:
            for size in sizes:
                server = IdServer(size)
                server.start()
                server.ready.wait(5)
                page = browser.new_page()
                try:
                    page.goto(f"http://127.0.0.1:{server.port}/page")
                    page.wait_for_function("() => window.got.length >= 2", timeout=10_000)
                    got = page.evaluate("() => window.got")
                    out.append((size, f"lastEventId {got[0][1]} B; reconnect sent "
                                      f"{got[1][0].split(' ', 1)[1]}"))
                except Exception as exc:  # noqa: BLE001  the measurement is what failed
                    out.append((size, f"failed: {type(exc).__name__}"))
                finally:
                    page.close()
                    server.stop()
        finally:
            browser.close()
    return out


@contextlib.contextmanager
def edge(directory: Path) -> Iterator[tuple[Relay, Varnish]]:
    redis = RedisServer(directory / "redis", fsync="off")
    relay = varnish = None
    try:
        relay = Relay(directory, redis, "t")
        varnish = Varnish(directory / "varnish", [relay], None)
        yield relay, varnish
    finally:
        for part in (varnish, relay, redis):
            if part is not None:
                part.stop()


def main() -> int:
    print("| what | largest accepted |")
    print("|---|---|")
    with tempfile.TemporaryDirectory() as tmp, edge(Path(tmp)) as (relay, varnish):
        for name, port in (("relay (Granian, 8 KiB HTTP/1 buffer)", relay.port),
                           ("varnishd (varnish/params)", varnish.port)):
            header = largest(port, "header")
            url = largest(port, "url")
            print(f"| {name}: Last-Event-ID value | {header} B |")
            print(f"| {name}: request target | {url} B |")
    for size, result in chromium(SIZES):
        print(f"| Chromium EventSource, id of {size} B | {result} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
