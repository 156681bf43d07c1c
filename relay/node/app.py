"""The relay's ASGI application: routes, publish, metadata, handshake, health, metrics.

Served by Granian over ASGI, not RSGI: Granian's ASGI ``send`` waits when a client stops
reading, while its RSGI stream transport buffers without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import time
from typing import Annotated

import msgspec
from msgspec import Meta
from redis.exceptions import RedisError

from relay import __version__, logs, prometheus, scrape
from relay import settings as settings_mod
from relay.node import admin, multistream, stream
from relay.node.relay import Relay
from relay.protocol import names
from relay.settings import Settings
from relay.storage import idempotency, presence
from relay.storage import streams as store
from relay.web import auth, cookie, pages
from relay.web.admin import PARTS as ADMIN_PARTS
from relay.web.admin import AdminAuth
from relay.web.errors import (
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    Unavailable,
    Unprocessable,
)
from relay.web.http import (
    Receive,
    Request,
    Scope,
    Send,
    answer,
    decode_json,
    parse_topic,
    read_body,
)

log = logging.getLogger("ssedge.relay")

PROTOCOL = 1
EventType = Annotated[str, Meta(min_length=1, max_length=names.MAX_EVENT_TYPE,
                                pattern=names.EVENT_TYPE_PATTERN)]


class PublishEvent(msgspec.Struct, forbid_unknown_fields=True):
    data: msgspec.Raw
    event: EventType | None = None


_publish_decoder = msgspec.json.Decoder(PublishEvent | list[PublishEvent])
_str_decoder = msgspec.json.Decoder(str)


def decode_events(body: bytes, max_batch: int) -> tuple[list[tuple[bytes, str | None]], bool]:
    """(data as sent on the wire, event type) pairs, and whether the body was an array."""
    try:
        # JSON is UTF-8, but msgspec passes other bytes inside strings and raw values through:
        # an event must reach every reader exactly as published, so the body is checked whole
        body.decode()
    except UnicodeDecodeError as exc:
        raise Unprocessable(f"body is not UTF-8 (byte {exc.start})") from None
    decoded = decode_json(_publish_decoder, body)
    many = isinstance(decoded, list)
    events = decoded if isinstance(decoded, list) else [decoded]
    if not events:
        raise Unprocessable("an empty array publishes nothing")
    if len(events) > max_batch:
        raise PayloadTooLarge(f"at most {max_batch} events per request")
    out = []
    for ev in events:
        raw = bytes(ev.data).strip()
        # a JSON string is sent as the text it holds; any other JSON value as written
        data = _str_decoder.decode(raw).encode() if raw[:1] == b'"' else raw
        out.append((data, ev.event))
    return out, many


class App:
    def __init__(self, settings: Settings, *, handle_signals: bool = False) -> None:
        self.settings = settings
        self.relay = Relay(settings)
        self.auth = auth.Authority(settings)
        self.auth.register_metrics(self.relay.metrics)
        self.handle_signals = handle_signals
        self.pages = pages.Pages()
        # this worker's slot among the node's, and /metrics of them all (relay.scrape)
        self.workers = scrape.Workers(self.relay.metrics)
        self.multi = multistream.MultiStreams(self.relay.metrics)
        self._stopping: asyncio.Task[None] | None = None
        # the operator API (/v1/admin/), off without SSEDGE_ADMIN_TOKEN
        self.admin = admin.Admin(self.relay, AdminAuth(settings.admin_token),
                                 admin.drain_node(self.relay, handle_signals))
        self.handshake = {
            "protocol": PROTOCOL,
            "version": __version__,
            "stream_url": "/v1/streams/{topic}/events",
            # one stream on several topics (RFC 6570: ?topic=a&topic=b), ids per
            # docs/ARCHITECTURE.md; at most max_stream_topics of them
            "streams_url": multistream.PATH + "{?topic*}",
            "max_stream_topics": settings.max_stream_topics,
            "metadata_url": "/v1/streams/{topic}",
            "publish_url": "/v1/streams/{topic}/events",
            "replay_url": "/v1/replay/{topic}",
            "retry_ms": settings.retry_ms,
            "heartbeat_s": settings.heartbeat_s,
            "replay_window": {"ring_events": settings.ring_events,
                              "retention_maxlen": settings.retention_maxlen,
                              "retention_max_age_s": settings.retention_max_age_s},
            "publish_auth": "Bearer",
            # where a private topic's reader puts its token, and the claim that lists its rights
            "subscribe_auth": {
                "scheme": "Bearer",
                "claim": auth.CLAIM,
                "query": auth.TOKEN_QUERY,
                "cookie": auth.TOKEN_COOKIE,
                # sent ahead of expiry on a stream read with a token; renew the cookie here
                "expiring_event": "ssedge.token-expiring",
                "cookie_url": cookie.PATH,
            },
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            # here, not in a coroutine of its own: an open stream holds every frame of its
            # chain for its whole life (about 290 bytes each)
            request = Request(scope)
            await answer(self.relay.responder, request, send, self.route(request, receive, send))
        elif scope["type"] == "lifespan":
            await self.lifespan(receive, send)

    async def lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.relay.start()
                await self.auth.start()
                await self.workers.start()
                if self.handle_signals:  # a server's worker process, not a test's app
                    self._take_stop_signals()
                    tune_gc(self.settings.gc_young_objects)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.workers.stop()
                await self.auth.stop()
                await self.relay.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _take_stop_signals(self) -> None:
        """Drain on SIGTERM and SIGINT, in place of Granian's own handling in this worker.

        Granian's worker, on these signals, stops accepting and waits for every connection to
        end, which event streams never do by themselves: its main process then kills the
        worker, cutting every client mid-stream. Here the worker drains (``Relay.drain``) and
        then ends the way the signal's default action would, which is what Granian's main
        process waits for. Signals that arrive during the drain (systemd and ``kill -- -PGID``
        signal main process and workers alike) do not cut it short; the main process's kill
        timeout (``drain_s`` + 5 s, ``relay.server``) stays the hard stop.
        """
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop_signal, sig)

    def _on_stop_signal(self, sig: signal.Signals) -> None:
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._drain_and_exit(sig))
        else:
            log.info("%s while draining: the drain goes on", sig.name)

    async def _drain_and_exit(self, sig: signal.Signals) -> None:
        try:
            await self.relay.drain()
            await self.relay.stop()
        except Exception:
            log.exception("drain failed; stopping anyway")
        finally:
            asyncio.get_running_loop().remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), sig)

    async def route(self, request: Request, receive: Receive, send: Send) -> None:
        method, parts = request.method, request.parts
        if method == "OPTIONS":
            return await self.preflight(request, send)
        # a topic's name and the method are checked before any token: a private topic's rules
        # are public, and nothing else about the request is looked at before its token
        if parts == ["v1", "streams", "events"] and multistream.wanted(request):
            _only(method, "GET")  # one stream on several topics (a topic named "events"
            # keeps its metadata here when no topic= is given)
            return await multistream.serve(self.relay, self.multi, self.auth, request,
                                           receive, send)
        if parts[:2] == ADMIN_PARTS:
            return await self.admin.route(request, receive, send)
        if parts[:2] == ["v1", "streams"] and len(parts) in (3, 4):
            topic = parse_topic(parts[2])
            if len(parts) == 3:
                _only(method, "GET, HEAD")
                access = await self.auth.read_access(request, topic)
                self.relay.orders.check(access.jti, access.subject)
                return await self.metadata(request, topic, access, send)
            if parts[3] == "events":
                if method == "POST":
                    return await self.publish(request, topic, receive, send)
                _only(method, "GET, POST")
                try:
                    access = await self.auth.read_access(request, topic)
                except Unavailable as exc:  # the keys could not be had now (JWKS away)
                    return await stream.refuse(self.relay, send, "keys", exc.message,
                                              request)
                # revoked: 403 for good (an EventSource closes), the revocation named
                self.relay.orders.check(access.jti, access.subject)
                return await stream.serve(self.relay, request, topic, receive, send,
                                          expires=access.expires, token_exp=access.token_exp,
                                          identity=(access.jti, access.subject))
        if request.path == cookie.PATH:
            return await cookie.answer(request, self.auth, self.settings, self.relay.responder,
                                       send)
        page = self.pages.find(parts)
        if page is not None:
            _only(method, "GET, HEAD")
            return await self.relay.responder.cached(
                send, request, page.body, pages.CACHE_CONTROL,
                {"content-type": page.content_type})
        simple = {
            "v1/handshake": self.handshake_answer,
            "healthz": self.healthz,
            "readyz": self.readyz,
            "metrics": self.metrics,
        }.get("/".join(parts))
        if simple is None:
            raise NotFound(f"no such resource: {request.path}")
        _only(method, "GET, HEAD")
        await simple(request, send)

    # -- handlers -----------------------------------------------------------------------

    async def publish(self, request: Request, topic: str, receive: Receive, send: Send) -> None:
        s = self.settings
        # checked before the body is read: without a valid token the answer is 401 whatever
        # else is wrong
        await self.auth.publish_access(request, topic)
        key = idempotency.parse_key(request.scope["headers"])
        body = await read_body(receive, s.max_body_bytes, request.headers.get("content-length"))
        events, many = decode_events(body, s.max_batch)
        headers = {"cache-control": "no-store"}
        if key is None:
            assigned, replicated = await self._publish(topic, events)
            if not replicated:
                # in the stream and on its way to readers: a resend would write them twice
                headers["x-ssedge-replicated"] = "false"
        else:
            outcome = await self._publish_once(topic, events, many, key)
            assigned = outcome.ids
            if outcome.replayed:
                headers["idempotent-replayed"] = "true"
        answer: dict[str, object] = {"ids": assigned} if many else {"id": assigned[0]}
        if "x-ssedge-replicated" in headers:
            answer["replicated"] = False
            answer["warning"] = ("written and delivered, but no replica confirmed it in time: "
                                 "a failover now could lose it; do not resend it (it would be "
                                 "written twice), or publish with an Idempotency-Key")
        self.relay.metrics.publish_seconds.observe(time.monotonic() - request.started)
        await self.relay.responder.json(send, 201, answer, headers)

    async def _publish(self, topic: str, events: list[tuple[bytes, str | None]]
                       ) -> tuple[list[str], bool]:
        """The ids, and whether the replicas asked for confirmed them. A keyless publish that
        was written but not confirmed in time is not an error: its events are in the stream
        and being delivered, and a publisher that resent it would write them twice."""
        s = self.settings
        replicated = True
        try:
            assigned = await store.publish(self.relay.redis.primary, topic, events,
                                           maxlen=s.retention_maxlen,
                                           max_age_s=s.retention_max_age_s,
                                           replicas=self.relay.publish_replicas,
                                           replica_timeout_ms=s.publish_replica_timeout_ms)
        except store.NotReplicated as exc:
            assigned, replicated = exc.ids, False
            self.relay.metrics.publish_unreplicated += 1
        except (RedisError, OSError):
            raise Unavailable("Redis is not reachable; nothing was published", 1) from None
        self.relay.metrics.published += len(assigned)
        self.relay.metrics.publish_requests += 1
        return assigned, replicated

    async def _publish_once(self, topic: str, events: list[tuple[bytes, str | None]],
                            many: bool, key: str) -> idempotency.Outcome:
        s = self.settings
        try:
            outcome = await idempotency.publish(
                self.relay.redis.primary, topic, events, many, key,
                ttl_s=s.idempotency_ttl_s,
                maxlen=s.retention_maxlen, max_age_s=s.retention_max_age_s,
                replicas=self.relay.publish_replicas,
                replica_timeout_ms=s.publish_replica_timeout_ms)
        except store.NotReplicated as exc:
            raise Unavailable(f"not acknowledged: {exc}; retry with the same "
                              "Idempotency-Key", 1) from None
        except (RedisError, OSError):
            # the reply may be what was lost: the retry with the key finds out
            raise Unavailable("Redis is not reachable; retry with the same Idempotency-Key",
                              1) from None
        if outcome.replayed:
            self.relay.metrics.publish_replays += 1
        else:
            self.relay.metrics.published += len(outcome.ids)
        self.relay.metrics.publish_requests += 1
        return outcome

    async def metadata(self, request: Request, topic: str, access: auth.Access,
                       send: Send) -> None:
        s = self.settings
        try:
            info = await store.info(self.relay.redis.read, topic)
        except (RedisError, OSError):
            raise Unavailable("Redis is not reachable", 1) from None
        # streams open on it across the deployment (relay.storage.presence), read from the
        # primary: a relay reading a replica whose primary is away still answers, without it
        audience: int | None = None
        with contextlib.suppress(RedisError, OSError):
            audience = await presence.of_topic(self.relay.redis.primary, topic,
                                               self.relay.audience.ttl_ms)
        first = last = None
        length = 0
        if info is not None:
            length = int(info["length"])
            if info.get("first-entry"):
                first = info["first-entry"][0].decode()
            if info.get("last-entry"):
                last = info["last-entry"][0].decode()
        payload = {
            "topic": topic,
            "first_id": first,
            "last_id": last,
            "length": length,
            "retention": {"maxlen": s.retention_maxlen, "max_age_s": s.retention_max_age_s},
            "retry_ms": s.retry_ms,
            "heartbeat_s": s.heartbeat_s,
            "audience": audience,
        }
        # a private topic's metadata is its readers' alone: no shared cache may keep it
        cache = "private, no-store" if access.private else (
            f"public, max-age={s.metadata_max_age_s}, stale-while-revalidate=5, "
            "stale-if-error=300")
        await self.relay.responder.cached_json(send, request, payload, cache)

    async def handshake_answer(self, request: Request, send: Send) -> None:
        await self.relay.responder.cached_json(
            send, request, self.handshake, f"public, max-age={self.settings.handshake_max_age_s}"
        )

    async def healthz(self, request: Request, send: Send) -> None:
        await self.relay.responder.json(send, 200, {"status": "ok"}, {"cache-control": "no-store"})

    async def readyz(self, request: Request, send: Send) -> None:
        """Whether this relay takes streams: not draining, and Redis reachable or lost less
        than ``redis_grace_s`` ago (``Relay.stepped_out``: a blip must not take every relay
        out of the edge at once)."""
        relay = self.relay
        feed = relay.feed
        if relay.draining:
            raise Unavailable("not ready: draining for shutdown", 1, draining=True)
        down = relay.redis_down_since
        if feed.connected:
            redis = "connected"
        else:
            since = f" {time.monotonic() - down:.1f} s ago" if down is not None else ""
            redis = f"lost{since}: {feed.last_error or 'not connected'}"
        answer = {"status": "ready", "redis": redis}
        if relay.replica is not None:
            answer["replica"] = relay.replica.describe()
        if relay.ready:
            await relay.responder.json(send, 200, answer, {"cache-control": "no-store"})
        elif relay.stepped_out == "replica":
            raise Unavailable(f"not ready: the replica is cut from its primary "
                              f"({answer['replica']})", 1)
        else:
            raise Unavailable(f"not ready: Redis {redis}", 1)

    async def metrics(self, request: Request, send: Send) -> None:
        await self.relay.responder.body(
            send, 200, await self.workers.gather(),
            {"content-type": prometheus.CONTENT_TYPE, "cache-control": "no-store"},
        )

    async def preflight(self, request: Request, send: Send) -> None:
        await self.relay.responder.preflight(send, request)


def _only(method: str, allowed: str) -> None:
    if method not in allowed.split(", "):
        raise MethodNotAllowed(allowed)


def tune_gc(young: int) -> None:
    """Fewer garbage collector passes in a worker: each one stops every stream of the process.

    Objects made at start-up are frozen out of every pass; ``young`` allocations (Python's
    default: 700) are let pile up before a pass over the young generation, so full passes over
    all the connections' objects come 70 times less often. 0 leaves Python's settings.
    """
    if young:
        gc.freeze()
        _, middle, old = gc.get_threshold()
        gc.set_threshold(young, middle, old)


def create_app() -> App:
    """Granian's factory: settings come from the ``SSEDGE_*`` environment."""
    settings = settings_mod.load()
    logs.setup(settings.log_level, settings.log_format)
    return App(settings, handle_signals=True)
