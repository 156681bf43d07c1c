"""Private topics and publish rights: JSON Web Tokens checked once per request.

A token's rights are topic patterns in one claim, verified by ``relay.verify``.
``SSEDGE_PRIVATE_TOPICS`` lists the patterns of the topics that need a ``subscribe`` right to
be read (stream, metadata, replay); every other topic is public, answered without looking at
any token, and stays cacheable. Publishing always needs a token:
the static ``SSEDGE_PUBLISH_TOKEN`` (every topic) or a JWT with a ``publish`` right.

Where a reader's token comes from, first found wins: ``Authorization: Bearer``, the
``access_token`` query parameter (RFC 6750; EventSource cannot set headers), the
``ssedge_auth`` cookie (``EventSource(url, {withCredentials: true})``). A publish token is
taken from the header only: a cookie would let any page a publisher visits publish (CSRF).

A bad token is 401 with a fixed reason, never the library's message nor the token; a good
token without the right is 403.

Checks are synchronous (``check_read``, ``check_publish``) except when a token names a ``kid``
the JWKS does not list yet: the request then awaits one fetch of the JWKS (``read_access``,
``publish_access``), and the common path stays free of it.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from relay.prometheus import ProcessMetrics
from relay.settings import Settings
from relay.web import jwks
from relay.web.errors import Forbidden, Unauthorized
from relay.web.http import Request
from relay.web.verify import Token

# what callers know these by (the rights claim, topic patterns, the verifier)
from relay.web.verify import CLAIM as CLAIM  # isort: skip
from relay.web.verify import KeyUnknown as KeyUnknown  # isort: skip
from relay.web.verify import Patterns as Patterns  # isort: skip
from relay.web.verify import Verifier as Verifier  # isort: skip
from relay.web.verify import glob_match as glob_match  # isort: skip

TOKEN_QUERY = "access_token"
TOKEN_COOKIE = "ssedge_auth"


@dataclass(frozen=True, slots=True)
class Access:
    """How a read was allowed: ``private`` answers are never cached by shared caches, and a
    stream read with a token ends when the token expires."""

    private: bool
    expires: float | None = None  # the stream's end: the token's exp and the leeway
    token_exp: float | None = None  # the token's exp claim, told to the page ahead of it
    jti: str | None = None  # the token's jti and sub claims: what an operator may revoke
    subject: str | None = None


PUBLIC = Access(private=False)


class Authority:
    def __init__(self, settings: Settings) -> None:
        self.private = Patterns.parse(settings.private_topics)
        self.verifier = Verifier(settings)
        self._static = settings.publish_token.encode()

    def is_private(self, topic: str) -> bool:
        return bool(self.private) and self.private.match(topic)

    def check_read(self, request: Request, topic: str) -> Access:
        """May this request read ``topic``? A public topic is answered without a token."""
        token = self._reader_token(request, topic)
        return PUBLIC if token is None else _read(self.verifier.verify(token), topic)

    async def read_access(self, request: Request, topic: str) -> Access:
        """``check_read``, asking the JWKS again for a key it did not list."""
        token = self._reader_token(request, topic)
        return PUBLIC if token is None else _read(await self.verifier.verify_async(token), topic)

    def check_publish(self, request: Request, topic: str) -> None:
        """May this request publish to ``topic``? Checked before its body is read."""
        token = self._publish_token(request)
        if token is not None:
            _publish(self.verifier.verify(token), topic)

    async def publish_access(self, request: Request, topic: str) -> None:
        """``check_publish``, asking the JWKS again for a key it did not list."""
        token = self._publish_token(request)
        if token is not None:
            _publish(await self.verifier.verify_async(token), topic)

    def _reader_token(self, request: Request, topic: str) -> str | None:
        """The token to check, or None for a public topic."""
        if not self.is_private(topic):
            return None
        token = reader_token(request)
        if token is None:
            raise Unauthorized(f"{topic} is private: send a subscriber token", missing=True)
        return token

    def _publish_token(self, request: Request) -> str | None:
        """The JWT to check, or None for the static token."""
        token = bearer(request)
        if token is None:
            raise Unauthorized("publishing needs Authorization: Bearer <token>", missing=True)
        # compared in constant time; a static token may publish anywhere
        if self._static and hmac.compare_digest(token.encode(), self._static):
            return None
        if not self.verifier.enabled:
            raise Unauthorized("wrong publish token")
        return token

    def register_metrics(self, metrics: ProcessMetrics) -> None:
        if self.verifier.jwks is not None:
            jwks.register(self.verifier.jwks, metrics)

    async def start(self) -> None:
        """The JWKS's first fetch and its schedule (nothing without ``SSEDGE_JWKS_URL``)."""
        if self.verifier.jwks is not None:
            await self.verifier.jwks.start()

    async def stop(self) -> None:
        if self.verifier.jwks is not None:
            await self.verifier.jwks.stop()


def _read(token: Token, topic: str) -> Access:
    if not token.subscribe.match(topic):
        raise Forbidden(f"this token may not read {topic}")
    return Access(private=True, expires=token.expires, token_exp=token.exp, jti=token.jti,
                  subject=token.sub)


def _publish(token: Token, topic: str) -> None:
    if not token.publish.match(topic):
        raise Forbidden(f"this token may not publish to {topic}")


def bearer(request: Request) -> str | None:
    """The token of an ``Authorization: Bearer`` header; any other scheme is 401."""
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("use Authorization: Bearer <token>")
    return token


def reader_token(request: Request) -> str | None:
    """A reader's token: the header, else the query parameter, else the cookie."""
    token = bearer(request)
    if token is None:
        token = request.query.get(TOKEN_QUERY) or None
    if token is None:
        token = cookie(request.headers.get("cookie", ""), TOKEN_COOKIE)
    return token


def cookie(header: str, name: str) -> str | None:
    """One cookie's value from a Cookie header (RFC 6265 syntax, quotes removed)."""
    for pair in header.split(";"):
        key, sep, value = pair.partition("=")
        if sep and key.strip() == name:
            return value.strip().strip('"') or None
    return None
