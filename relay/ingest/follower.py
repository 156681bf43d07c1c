"""Following one upstream SSE endpoint into a topic, the way an EventSource would.

One connection at a time, through httpx as a browser would (``relay.web.outside``: redirects,
proxies from the environment, the system's trust store, keep-alive). Each connection starts
from the cursor stored in Redis (so it is exact even after another process or a crash),
sends it as ``Last-Event-ID``, and decodes with the project's wire decoder. Every chunk's
events are appended with the journal's one atomic script, which also moves the cursor: what
is in the stream and where the next connection resumes never disagree.

Per the WHATWG rules, with one deliberate difference:

- A ``200`` event stream that ends is reconnected after the upstream's ``retry`` (jittered
  upwards by at most a quarter, so many ingesters do not come back at once), capped at
  ``ingest_retry_max_ms``; redirects are followed to the same origin, or to the hosts of
  ``ingest_redirect_hosts``, no further.
- ``204 No Content`` means "stop reconnecting": this upstream is given up for good in this
  process (counted, logged, and shown in ``/metrics``).
- Any other status, a ``Content-Type`` that is not ``text/event-stream``, a refused
  connection or an answer that is not HTTP: the spec fails the connection for good, since a
  person can reload a page. A daemon cannot, so these are retried with exponential backoff
  and jitter, from ``retry`` up to ``ingest_backoff_max_s``, and counted by kind.
- Garbage inside a stream is whatever the decoder makes of it (unknown fields and bad retry
  values ignored, invalid UTF-8 replaced); an event whose data is over ``max_body_bytes``, or
  whose type publishing would refuse, is not written but counted as rejected, and the
  cursor moves past it, so one bad event cannot stall the upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import httpx
import msgspec
from redis.exceptions import RedisError

from relay.backoff import Backoff, Random
from relay.ingest.config import Upstream
from relay.ingest.status import Status
from relay.protocol import names
from relay.protocol.wire import Decoder, Event, Item, Oversize
from relay.storage import clients
from relay.storage.journal import Entry, Journal, LeaseLost, Moved, Position
from relay.web import outside

log = logging.getLogger("ssedge.ingest")

BATCH = 256  # events per script call: a script blocks Redis while it runs
_FLOOR_S = 0.05  # shortest wait between two connections
_ERROR_BODY_MAX = 64 * 1024  # of an error answer, what the log may quote from
_ERROR_BODY_WAIT_S = 2.0  # an error answer that never ends says enough early
_json = msgspec.json.Encoder()


class Ending(enum.Enum):
    STOPPED = "stopped"  # the upstream said 204: do not reconnect
    LEASE_LOST = "lease lost"  # another process follows it now
    HANDOVER = "handover"  # down too long here: let another process try


@dataclass(frozen=True, slots=True)
class Policy:
    retry_ms: int  # until the upstream sends its own
    backoff_max_s: float
    connect_timeout_s: float
    idle_timeout_s: float
    max_event_bytes: int
    handover_s: float  # down this long while failing: give the lease up for a while
    envelope: bool = False
    retry_max_ms: int = 60_000  # an upstream's own ``retry`` is capped at this


def backoff(retry_ms: int, max_s: float, rng: Random = random.random) -> Backoff:
    """The wait before the next connection: the upstream's ``retry`` after a stream that
    worked (up to a quarter more), doubling per failed attempt up to a cap (half to the whole
    step), always with jitter."""
    return Backoff(first_wait(retry_ms), max_s, spread=(0.5, 1.0), settled=(1.0, 1.25), rng=rng)


def first_wait(retry_ms: int) -> float:
    # floored: an upstream sending "retry: 0" and closing at once must not make a hot loop
    return max(retry_ms / 1000, _FLOOR_S)


def entry(ev: Event, upstream: str, envelope: bool) -> Entry:
    """How an upstream event is stored: data byte for byte (or, with ``envelope``, a JSON
    object that also names the upstream and its id, for clients that only see data)."""
    kind = b"" if ev.event == "message" else ev.event.encode()
    data = ev.data.encode()
    if envelope:
        data = _json.encode({"upstream": upstream, "id": ev.id or None, "event": ev.event,
                             "data": ev.data})
    return Entry(kind, ev.id.encode(), data)


def is_event_stream(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip().lower() == "text/event-stream"


class Body:
    """An answer's event stream as the follower reads it: decoded chunk by chunk."""

    def __init__(self, chunks: AsyncIterator[bytes], decoder: Decoder) -> None:
        self.decoder = decoder
        self.ended = False
        self._chunks = chunks

    async def aclose(self) -> None:
        close = getattr(self._chunks, "aclose", None)  # httpx's is an async generator
        if close is not None:
            with contextlib.suppress(httpx.HTTPError, RuntimeError):
                await close()

    async def read_chunk(self) -> list[Item]:
        try:
            chunk = await anext(self._chunks)
        except StopAsyncIteration:
            self.ended = True
            return []
        return self.decoder.feed(chunk)


class Failed(Exception):
    """A connection attempt or stream that failed, with the kind counted in metrics."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


class Follower:
    def __init__(self, upstream: Upstream, journal: Journal, policy: Policy,
                 status: Status, http: httpx.AsyncClient | None = None) -> None:
        self.upstream = upstream
        # shared by an ingest process's followers: one pool of kept-alive connections
        self._http = http
        self._journal = journal
        self._policy = policy
        self.status = status
        self._backoff = backoff(policy.retry_ms, policy.backoff_max_s)
        self._headers = {"Accept": "text/event-stream", **dict(upstream.headers)}
        self._headers.setdefault("Cache-Control", "no-cache")

    async def run(self) -> Ending:
        """Follow the upstream until it says 204, the lease is lost, or it is handed over."""
        st = self.status
        st.down_since = time.time()
        first = True
        while True:
            failure = ""
            try:
                position = await self._journal.position()
                clients.still_wanted()  # a stop swallowed by a Redis call
                st.cursor = position.cursor
                if not first:
                    st.reconnects += 1
                first = False
                ending = await self._connection(position)
                if ending is not None:
                    return ending
            except LeaseLost:
                return Ending.LEASE_LOST
            except Moved as exc:
                # another write moved the cursor (or ours landed and its reply was lost):
                # nothing of this batch was written; resume from the stored cursor
                st.error("conflict")
                failure = f"conflict: {exc}"
            except Failed as exc:
                st.error(exc.kind)
                failure = str(exc)
            except (RedisError, OSError, httpx.HTTPError, httpx.InvalidURL, TimeoutError) as exc:
                kind = _kind_of(exc)
                st.error(kind)
                failure = f"{kind}: {exc or type(exc).__name__}"
            finally:
                self._went_down()
            clients.still_wanted()  # a stop swallowed by a Redis call (clients.still_wanted)
            if failure:
                self._backoff.failures += 1
            if self._handover_due():
                return Ending.HANDOVER
            delay = self._backoff.delay()
            if failure:
                since = st.down_since or time.time()
                log.warning("%s down since %s (%.1f s): %s; attempt %d, next in %.1f s",
                            self._who(), _iso(since), time.time() - since, failure,
                            self._backoff.failures, delay)
            else:
                log.info("%s: stream ended; reconnecting in %.1f s %s", self._who(), delay,
                         f"after id {st.cursor!r}" if st.cursor else "without Last-Event-ID")
            await asyncio.sleep(delay)

    # -- one connection ------------------------------------------------------------------

    async def _connection(self, position: Position) -> Ending | None:
        p = self._policy
        assert self._http is not None
        headers = dict(self._headers)
        if position.cursor:
            headers["Last-Event-ID"] = position.cursor
        request = self._http.build_request("GET", self.upstream.url, headers=headers)
        # connecting, redirects and the answer's head, all within the connect timeout
        response = await asyncio.wait_for(self._http.send(request, stream=True),
                                          p.connect_timeout_s)
        try:
            if response.status_code == 204:
                self.status.error("no_content")
                self.status.stopped = True
                log.warning("%s: answered 204 No Content, the spec's 'stop reconnecting': "
                            "not following it any more", self._who())
                return Ending.STOPPED
            if response.status_code != 200:
                body = b""
                with contextlib.suppress(httpx.HTTPError, TimeoutError):
                    body = await asyncio.wait_for(
                        outside.read_bounded(response, _ERROR_BODY_MAX), _ERROR_BODY_WAIT_S)
                raise Failed("status", f"HTTP {response.status_code} "
                             f"{body[:200].decode('utf-8', 'replace')!r}")
            content_type = response.headers.get("content-type", "")
            if not is_event_stream(content_type):
                raise Failed("content_type", f"Content-Type {content_type!r}, "
                             "not text/event-stream")
            self._went_up(position.cursor)
            body_stream = Body(response.aiter_bytes(),
                               Decoder(max_data=p.max_event_bytes,
                                       last_event_id=position.cursor))
            try:
                await self._follow(body_stream, position)
            except httpx.TimeoutException:
                raise Failed("idle", f"nothing for {p.idle_timeout_s:g} s") from None
            except httpx.TransportError:
                pass  # a stream cut short ends like any other: the cursor is exact either way
            finally:
                await body_stream.aclose()
        finally:
            await response.aclose()
        return None

    async def _follow(self, es: Body, position: Position) -> None:
        writes, cursor = position.writes, position.cursor
        # an upstream that resends the event named in Last-Event-ID (an inclusive resume)
        # sends it first: that one is already in the stream
        repeat = cursor
        while not es.ended:
            try:
                items = await asyncio.wait_for(es.read_chunk(), self._policy.idle_timeout_s)
            except TimeoutError:
                raise Failed("idle", f"nothing for {self._policy.idle_timeout_s:g} s") from None
            if es.decoder.retry is not None:
                # capped: an upstream's "retry: 86400000" must not silence it for a day
                self._backoff.first_s = first_wait(min(es.decoder.retry,
                                                       self._policy.retry_max_ms))
            events = [i for i in items if isinstance(i, Event | Oversize)]
            if repeat and events:
                first = events[0]
                if first.id == repeat and (isinstance(first, Oversize) or first.own_id):
                    self.status.duplicates += 1
                    events = events[1:]
                repeat = ""
            new_cursor = es.decoder.last_event_id if events or (
                es.decoder.last_event_id and es.decoder.last_event_id != cursor) else cursor
            if not events and new_cursor == cursor:
                continue
            for start in range(0, max(len(events), 1), BATCH):
                part = events[start:start + BATCH]
                last = start + BATCH >= len(events)
                part_cursor = new_cursor if last else part[-1].id
                await self._append(writes, part, part_cursor)
                clients.still_wanted()
                writes += 1
            cursor = new_cursor

    async def _append(self, writes: int, events: Sequence[Event | Oversize],
                      cursor: str) -> None:
        st = self.status
        entries = []
        for ev in events:
            if isinstance(ev, Oversize):
                self._reject(ev.id, f"data of about {ev.size} bytes is over the limit")
            elif not names.event_type_ok(ev.event):
                self._reject(ev.id, "its event type is not one publishing allows")
            else:
                entries.append(entry(ev, self.upstream.name, self._policy.envelope))
        await self._journal.append(writes, entries, cursor)
        st.cursor = cursor
        if entries:
            st.events += len(entries)
            st.last_event_at = time.time()

    def _reject(self, upstream_id: str, why: str) -> None:
        self.status.rejected += 1
        log.warning("%s: event id %r not ingested: %s", self._who(), upstream_id, why)

    # -- state, log and metrics ------------------------------------------------------------

    def _who(self) -> str:
        return f"upstream {self.upstream.name} of topic {self.status.topic}"

    def _went_up(self, cursor: str) -> None:
        st = self.status
        if st.down_since is not None and self._backoff.failures:
            log.info("%s is up again after %.1f s down; resuming %s", self._who(),
                     time.time() - st.down_since, f"after id {cursor!r}" if cursor else "live")
        st.up, st.down_since = True, None
        self._backoff.failures = 0

    def _went_down(self) -> None:
        st = self.status
        if st.up or st.down_since is None:
            st.down_since = time.time()
        st.up = False

    def _handover_due(self) -> bool:
        st = self.status
        return (self._backoff.failures > 0 and st.down_since is not None
                and time.time() - st.down_since > self._policy.handover_s)


def _kind_of(exc: BaseException) -> str:
    if isinstance(exc, RedisError):
        return "redis"
    if isinstance(exc, httpx.TooManyRedirects):
        return "status"
    if isinstance(exc, outside.RedirectRefused):
        return "redirect"
    if isinstance(exc, httpx.ProtocolError | httpx.UnsupportedProtocol | httpx.InvalidURL):
        return "protocol"  # not HTTP, a head over the limit, a redirect to a bad URL
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        return "timeout"
    return "connect"  # refused, reset, a proxy that failed


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
