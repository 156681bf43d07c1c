"""A gevent-friendly SSE client for Locust, and the abstract user that reads streams with it.

As Locust's own custom-client examples do, the client times each call and fires Locust's
``request`` event: ``connect`` and ``reconnect`` (time to the response head), and one ``event``
per event received, whose "response time" is the publish-to-receive latency (the publisher
writes its clock into the data; see ``tally``). Plain sockets, which Locust's gevent patches
make cooperative (TLS too: ``https://`` hosts, HTTP/1.1 over TLS, the certificate checked
against the system's CAs or ``SSEDGE_CA_FILE``); bytes are decoded with ssedge's own wire
module.
"""

from __future__ import annotations

import os
import random
import socket
import ssl
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlsplit

from locust import User
from locust.env import Environment

from relay.protocol import tally
from relay.protocol.chunked import Dechunker
from relay.protocol.wire import Decoder, Event

REQUEST_TYPE = "SSE"
HEAD_LIMIT = 64 * 1024


def tls_context(cafile: str | None = None) -> ssl.SSLContext:
    """How every load client checks an https:// edge: against ``SSEDGE_CA_FILE`` when set
    (``ssedge load --ca``; the local stack's is ``.ssedge/tls/ca.pem``), else ``cafile``, else
    the system's CAs. (Locust's FastHttpUser calls it with its own ``cafile``.)"""
    return ssl.create_default_context(cafile=os.environ.get("SSEDGE_CA_FILE") or cafile)


class StreamError(Exception):
    """A stream could not be opened or broke; the message says how."""


class Stream:
    """One open event stream: ``read()`` blocks for the next bytes and returns the events."""

    def __init__(self, sock: socket.socket | ssl.SSLSocket, headers: dict[str, str],
                 rest: bytes) -> None:
        self.sock = sock
        self.headers = headers
        self.decoder = Decoder()
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        self._dechunker = Dechunker() if chunked else None
        self._pending = rest
        self.ended = False

    def read(self, size: int = 65536) -> list[Event]:
        if self._pending:
            data, self._pending = self._pending, b""
        else:
            data = self.sock.recv(size)
        if not data:
            self.ended = True
            return []
        if self._dechunker is not None:
            data = self._dechunker.feed(data)
            self.ended = self._dechunker.done
        return [item for item in self.decoder.feed(data) if isinstance(item, Event)]

    @property
    def retry_ms(self) -> int | None:
        return self.decoder.retry

    def close(self) -> None:
        self.sock.close()


class SSEClient:
    """Opens event streams on one base URL and reports each attempt to Locust."""

    def __init__(self, base_url: str, environment: Environment) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"the SSE client speaks http:// and https://, not {base_url!r}")
        self.host = parts.hostname
        self.tls = tls_context() if parts.scheme == "https" else None
        if self.tls is not None:
            # one stream per connection, as a browser over HTTP/1.1 holds it
            self.tls.set_alpn_protocols(["http/1.1"])
        self.port = parts.port or (443 if self.tls else 80)
        self.prefix = parts.path.rstrip("/")
        self.environment = environment

    def open(self, topic: str, *, last_event_id: str | None = None, name: str = "connect",
             rcvbuf: int | None = None, timeout: float = 10.0,
             headers: dict[str, str] | None = None, query: str = "") -> Stream:
        path = f"{self.prefix}/v1/streams/{quote(topic, safe='')}/events"
        if query:
            path += "?" + query
        lines = [f"GET {path} HTTP/1.1", f"Host: {self.host}:{self.port}",
                 "Accept: text/event-stream", "Cache-Control: no-cache"]
        if last_event_id:
            lines.append(f"Last-Event-ID: {last_event_id}")
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        started = time.perf_counter()
        sock: socket.socket | ssl.SSLSocket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if rcvbuf:
                # Set before connecting so the advertised window is small from the start.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.settimeout(timeout)
            sock.connect((self.host, self.port))
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_hostname=self.host)
            sock.sendall(request)
            status, headers_in, rest = _read_head(sock)
            if status != 200:
                body = rest[:200].decode("utf-8", "replace").strip()
                raise StreamError(f"HTTP {status}: {body}")
            if not headers_in.get("content-type", "").startswith("text/event-stream"):
                raise StreamError(f"not an event stream: {headers_in.get('content-type')!r}")
        except (OSError, ValueError, StreamError) as exc:
            sock.close()
            self._fire(name, started, exc if isinstance(exc, StreamError) else StreamError(
                f"{type(exc).__name__}: {exc}"))
            raise StreamError(str(exc)) from None
        self._fire(name, started, None)
        sock.settimeout(None)
        return Stream(sock, headers_in, rest)

    def _fire(self, name: str, started: float, exception: Exception | None) -> None:
        self.environment.events.request.fire(
            request_type=REQUEST_TYPE, name=name,
            response_time=(time.perf_counter() - started) * 1000, response_length=0,
            exception=exception, context={})


def _read_head(sock: socket.socket | ssl.SSLSocket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise StreamError("connection closed before the response head")
        data += chunk
        if len(data) > HEAD_LIMIT:
            raise StreamError("response head too long")
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split(" ", 2)[1])
    headers = {}
    for line in lines:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    if status != 200 and "content-length" in headers:
        want = int(headers["content-length"])
        while len(rest) < want:
            chunk = sock.recv(4096)
            if not chunk:
                break
            rest += chunk
    return status, headers, rest


#: Every reader's tally in this process, summed into the run's summary when the test stops.
TALLIES: list[tuple[tally.Tally, bool]] = []


class SSEUser(User):
    """A browser-like reader: follows a topic, resumes with Last-Event-ID, judges what arrives.

    Scenario classes hold only a ``@task`` that calls ``follow``.
    """

    abstract = True
    #: Readers marked slow are left out of the latency objective (not out of the loss count).
    slow = False

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self.client = SSEClient(self.host or "http://127.0.0.1:8080", environment)
        self.tally = tally.Tally()
        TALLIES.append((self.tally, self.slow))
        self.last_event_id: str | None = None

    @property
    def options(self) -> Any:
        return self.environment.parsed_options

    def follow(self, topic: str, *, read_size: int = 65536, read_delay: float = 0.0,
               rcvbuf: int | None = None, storms: Iterator[float] | None = None,
               leave_at: float | None = None, query: str = "") -> None:
        """Read ``topic`` until the user is stopped (or ``leave_at``, a time: then the stream is
        closed and this returns), reconnecting as EventSource does.

        ``storms`` yields the times at which this reader may drop its connection on purpose
        (with probability ``--ssedge-storm-share``) to come back with Last-Event-ID. ``query``
        goes on the stream's URL (a private topic's ``access_token``, as a browser sends it).
        """
        name = "event slow" if self.slow else "event"
        next_storm = next(storms) if storms is not None else None
        retry_ms = 1000
        dropped_at: float | None = None
        while leave_at is None or time.time() < leave_at:
            try:
                stream = self.client.open(
                    topic, last_event_id=self.last_event_id, rcvbuf=rcvbuf, query=query,
                    name="reconnect" if dropped_at is not None else "connect")
            except StreamError:
                dropped_at = dropped_at or time.time()
                time.sleep(retry_ms / 1000 * random.uniform(0.5, 1.5))
                continue
            reconnected_at = time.time() if dropped_at is not None else None
            stream.sock.settimeout(1.0)  # wake up now and then to check the storm clock
            try:
                while not stream.ended:
                    if leave_at is not None and time.time() >= leave_at:
                        stream.close()
                        return
                    if next_storm is not None and storms is not None and time.time() >= next_storm:
                        next_storm = next(storms)
                        if random.random() < float(self.options.ssedge_storm_share):
                            break
                    try:
                        events = stream.read(read_size)
                    except TimeoutError:
                        continue
                    now = time.time()
                    for event in events:
                        self._judge(topic, event, now, name, reconnected_at)
                    if read_delay:
                        time.sleep(read_delay)
            except OSError:
                pass  # the connection broke: come back like a browser would
            finally:
                retry_ms = stream.retry_ms or retry_ms
                stream.close()
            dropped_at = time.time()
            override = self.options.ssedge_retry_ms
            time.sleep((override if override is not None else retry_ms) / 1000)

    def _judge(self, topic: str, event: Event, now: float, name: str,
               reconnected_at: float | None) -> None:
        payload = tally.parse(event.data)
        if event.id:
            self.last_event_id = event.id
        if payload is None:
            return  # not from a load publisher (a demo event, a reset notice)
        if reconnected_at is not None and payload.sent_at < reconnected_at:
            # Published while this reader was away: its wait includes the time offline (the
            # stream's retry), which the reconnect entry measures; kept out of "event".
            self.tally.replayed += 1
            name = "event replayed"
        verdict = self.tally.see(topic, event.id or "", payload)
        self.environment.events.request.fire(
            request_type=REQUEST_TYPE, name=name,
            response_time=max(0.0, (now - payload.sent_at) * 1000),
            response_length=len(event.data), exception=None, context={})
        if verdict.lost:
            self._fail("lost", f"{verdict.lost} event(s) missing before seq {payload.seq}")
        elif verdict.duplicate:
            self._fail("duplicate", f"seq {payload.seq} received twice")
        elif verdict.late:
            self._fail("out-of-order", f"seq {payload.seq} arrived after later ones")

    def _fail(self, name: str, message: str) -> None:
        self.environment.events.request.fire(
            request_type=REQUEST_TYPE, name=name, response_time=0, response_length=0,
            exception=StreamError(message), context={})
