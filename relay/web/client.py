"""A small asyncio HTTP/1.1 client for ssedge's own needs: event streams and JSON calls.

One request per connection; responses are read as they arrive (chunked or not) and event
streams are decoded with the wire module; no redirects, no proxies. ``publish`` is the
publisher's side of exactly once: an Idempotency-Key, and retries with it.

It stays where the raw bytes on the wire, and nothing between, are the point:

- the tests and the benchmarks, which hold hundreds of streams at once and check the exact
  bytes and chunks a relay or the edge sent (``keep_raw``), and ``ssedge drill`` and
  ``ssedge load``'s server-side report, which judge a deployment by what reaches a reader;
- ``ssedge tail`` and ``ssedge publish``, which talk to ssedge's own edge or relays;
- a relay's history pages (``relay.node.replayer``), whose bytes it sends on unchanged, from
  its own replay service or edge; the devstack's readiness checks and the dashboard's
  collector, which scrape ssedge's own processes.

Servers outside the deployment (the upstreams ``ssedge ingest`` follows, an issuer's JWKS) are
reached through httpx instead, as a browser would reach them: ``relay.web.outside``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import uuid
import zlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from relay.backoff import jitter
from relay.protocol.chunked import BadChunk, Dechunker
from relay.protocol.wire import Decoder, Item
from relay.web import client_settings

_ERROR_BODY_WAIT_S = 2.0


class ProtocolError(ValueError):
    """The peer's answer is not HTTP/1.1 as this client reads it (status line, chunk sizes)."""


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes = b""

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class _Target:
    host: str
    port: int
    path: str
    tls: bool = False

    @classmethod
    def of(cls, url: str) -> _Target:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"only http:// and https:// URLs are supported: {url}")
        tls = parts.scheme == "https"
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(parts.hostname or "127.0.0.1", parts.port or (443 if tls else 80), path, tls)

    @property
    def authority(self) -> str:
        default = 443 if self.tls else 80
        return self.host if self.port == default else f"{self.host}:{self.port}"


class _Body:
    """Reads a response body as it arrives, de-chunking when needed (``protocol.chunked``)."""

    def __init__(self, reader: asyncio.StreamReader, headers: Mapping[str, str],
                 status: int = 200) -> None:
        self._reader = reader
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        self._dechunker = Dechunker() if chunked else None
        length = headers.get("content-length")
        self._left = int(length) if length is not None and not chunked else None
        # these answers have no body whatever their headers say (RFC 9110 6.4.1)
        self.done = status in (204, 304) or 100 <= status < 200

    async def read(self) -> bytes:
        """What arrived of the body next; empty only at its end."""
        if self.done:
            return b""
        if self._dechunker is not None:
            while True:  # a read may bring a size line or a CRLF and no data yet
                raw = await self._reader.read(65536)
                if not raw:
                    self.done = True
                    return b""
                try:
                    data = self._dechunker.feed(raw)
                except BadChunk as exc:
                    raise ProtocolError(str(exc)) from None
                self.done = self._dechunker.done
                if data or self.done:
                    return data
        if self._left is not None:
            if self._left == 0:
                self.done = True
                return b""
            data = await self._reader.read(min(self._left, 65536))
            self._left -= len(data)
        else:
            data = await self._reader.read(65536)
        if not data:
            self.done = True
        return data


async def _open(method: str, url: str, headers: Mapping[str, str] | None,
                body: bytes | None) -> tuple[asyncio.StreamWriter, Response, _Body]:
    target = _Target.of(url)
    reader, writer = await asyncio.open_connection(
        target.host, target.port, limit=1 << 20,
        # SSEDGE_CA_FILE: a CA of its own to trust, as the local stack's TLS edge needs
        ssl=ssl.create_default_context(cafile=client_settings.ca_file())
        if target.tls else None,
    )
    lines = [f"{method} {target.path} HTTP/1.1", f"Host: {target.authority}",
             "Connection: close"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    try:
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b""))
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise ProtocolError("response head over 1 MiB") from None
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        version, _, rest = status_line.partition(" ")
        code = rest[:3]
        if not version.startswith("HTTP/1.") or not (code.isascii() and code.isdigit()):
            raise ProtocolError(f"not an HTTP/1.x status line: {status_line[:80]!r}")
        parsed: dict[str, str] = {}
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                parsed[name.strip().lower()] = value.strip()
        return writer, Response(int(code), parsed), _Body(reader, parsed, int(code))
    except BaseException:
        writer.close()
        raise


async def request(method: str, url: str, *, headers: Mapping[str, str] | None = None,
                  body: bytes | None = None, json_body: Any = None,
                  timeout: float = 30.0, max_body: int | None = None) -> Response:
    """One whole request and its whole response (more than ``max_body`` bytes of it is a
    ``ProtocolError``)."""
    if json_body is not None:
        body = json.dumps(json_body).encode()
        headers = {"Content-Type": "application/json", **(headers or {})}

    async def go() -> Response:
        writer, response, reader = await _open(method, url, headers, body)
        try:
            chunks = []
            size = 0
            while not reader.done:
                chunks.append(await reader.read())
                size += len(chunks[-1])
                if max_body is not None and size > max_body:
                    raise ProtocolError(f"response body over {max_body} bytes")
            response.body = b"".join(chunks)
            return response
        finally:
            writer.close()

    return await asyncio.wait_for(go(), timeout)


#: answers after which a publish is sent again with its key: not known to be written (503), or
#: a gateway between failed (502, 504)
RETRY_STATUSES = frozenset({502, 503, 504})


async def publish(url: str, body: Any, *, token: str, key: str | None = None,
                  attempts: int = 5, timeout: float = 10.0,
                  delay_max: float = 5.0) -> tuple[Response, str]:
    """POST ``body`` (one event or a list) to a publish ``url`` with an ``Idempotency-Key``
    (a new one unless given), and send the very same request again after a 502/503/504, a
    timeout or a broken connection, up to ``attempts`` times: retried with its key, a publish
    is written once. The last answer and the key; the last error if none came."""
    key = key or str(uuid.uuid4())
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": key}
    raw = json.dumps(body).encode()  # the same bytes every time: a retry is the same request
    for attempt in range(1, attempts + 1):
        # backoff with jitter, or the server's Retry-After; both bounded
        delay = jitter(min(delay_max, 0.25 * 2 ** attempt), 0.5, 1.0)
        try:
            response = await request("POST", url, body=raw, timeout=timeout,
                                     headers={**headers, "Content-Type": "application/json"})
        except (OSError, EOFError, ProtocolError):  # TimeoutError is an OSError
            if attempt == attempts:
                raise
        else:
            if response.status not in RETRY_STATUSES or attempt == attempts:
                return response, key
            after = response.headers.get("retry-after", "")
            if after.isdigit():
                delay = min(delay_max, float(after))
        await asyncio.sleep(delay)
    raise AssertionError("unreachable")


@dataclass
class EventStream:
    """An open event stream: ``response`` holds status and headers; iterate for events."""

    response: Response
    decoder: Decoder
    _writer: asyncio.StreamWriter
    _body: _Body
    raw: bytearray = field(default_factory=bytearray)
    keep_raw: bool = False
    # a stream sent compressed (``Content-Encoding`` gzip or deflate): decoded as it arrives;
    # ``raw`` keeps the bytes as sent, ``wire_bytes`` counts them
    inflate: Any = None
    wire_bytes: int = 0

    async def __aiter__(self) -> AsyncIterator[Item]:
        while not self._body.done:
            for item in await self.read_chunk():
                yield item

    async def read_chunk(self) -> list[Item]:
        chunk = await self._body.read()
        self.wire_bytes += len(chunk)
        if self.keep_raw:
            self.raw.extend(chunk)
        if self.inflate is not None:
            chunk = self.inflate.decompress(chunk)
        return self.decoder.feed(chunk)

    @property
    def ended(self) -> bool:
        return self._body.done

    def close(self) -> None:
        self._writer.close()

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, *_: object) -> None:
        self.close()


async def stream(url: str, *, last_event_id: str | None = None,
                 headers: Mapping[str, str] | None = None, comments: bool = False,
                 keep_raw: bool = False, extra_fields: bool = False,
                 max_data: int | None = None, error_body_max: int = 64 * 1024,
                 compressed: bool = False) -> EventStream:
    """Open an event stream (``status`` may be an error: then ``body`` holds the first
    ``error_body_max`` bytes of the answer, and the connection is closed); ``compressed``
    asks for it gzip or deflate compressed, and decodes it."""
    all_headers = {"Accept": "text/event-stream", **(headers or {})}
    if compressed:
        all_headers.setdefault("Accept-Encoding", "gzip, deflate")
    if last_event_id:
        all_headers["Last-Event-ID"] = last_event_id
    writer, response, body = await _open("GET", url, all_headers, None)
    if response.status != 200:
        chunks: list[bytes] = []

        async def read_error() -> None:
            size = 0
            while not body.done and size < error_body_max:
                chunks.append(await body.read())
                size += len(chunks[-1])

        try:
            # bounded in size and time: an error answer that never ends says enough early
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(read_error(), _ERROR_BODY_WAIT_S)
            response.body = b"".join(chunks)[:error_body_max]
        finally:
            writer.close()
    wbits = _WBITS.get(response.headers.get("content-encoding", "").lower())
    return EventStream(response, Decoder(comments=comments, extra_fields=extra_fields,
                                         max_data=max_data, last_event_id=last_event_id or ""),
                       writer,
                       body, keep_raw=keep_raw,
                       inflate=None if wbits is None else zlib.decompressobj(wbits))


# zlib's window bits for each Content-Encoding a stream may come in: gzip, and deflate as
# ssedge sends it (a raw deflate stream, which browsers take as well as zlib's format)
_WBITS = {"gzip": 31, "x-gzip": 31, "deflate": -15}
