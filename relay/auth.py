"""Private topics and publish rights: JSON Web Tokens checked once per request.

A token's rights are in one claim, in the manner of Mercure's ``mercure`` claim::

    {"exp": 1767225600, "ssedge": {"subscribe": ["private-42", "user.42.*"],
                                   "publish": ["news.*"]}}

Each entry is a topic pattern: topic characters, with ``*`` for any run of characters
(``*`` alone: every topic). ``SSEDGE_PRIVATE_TOPICS`` lists the patterns of the topics that
need a ``subscribe`` right to be read (stream, metadata, replay); every other topic is public,
answered without looking at any token, and stays cacheable. Publishing always needs a token:
the static ``SSEDGE_PUBLISH_TOKEN`` (every topic) or a JWT with a ``publish`` right.

Where a reader's token comes from, first found wins: ``Authorization: Bearer``, the
``access_token`` query parameter (RFC 6750; EventSource cannot set headers), the
``ssedge_auth`` cookie (``EventSource(url, {withCredentials: true})``). A publish token is
taken from the header only: a cookie would let any page a publisher visits publish (CSRF).

Signatures: HMAC tokens verify with ``SSEDGE_JWT_SECRET`` only, RSA and EC tokens with a
public key only: ``SSEDGE_JWT_PUBLIC_KEY``, or the key of ``SSEDGE_JWKS_URL`` that the token's
``kid`` names (``relay.jwks``). The key is chosen among those that fit the token's ``alg``
(``relay.keys``), so a token can never make a public key serve as an HMAC secret (the
key-confusion attack), and ``none`` is never accepted. A bad token is 401 with a fixed reason,
never the library's message nor the token; a good token without the right is 403.

Checks are synchronous (``check_read``, ``check_publish``) except when a token names a ``kid``
the JWKS does not list yet: the request then awaits one fetch of the JWKS (``read_access``,
``publish_access``), and the common path stays free of it.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import jwt
import msgspec

from relay import jwks, keys
from relay.errors import Forbidden, Unauthorized, Unavailable
from relay.http import Request
from relay.metrics import Metrics
from relay.settings import Settings

CLAIM = "ssedge"
TOKEN_QUERY = "access_token"
TOKEN_COOKIE = "ssedge_auth"
MAX_TOKEN_BYTES = 8192  # a token is a few hundred bytes; longer is refused before parsing


# ---------------------------------------------------------------------------------------------
# Topic patterns


def glob_match(pattern: str, topic: str) -> bool:
    """``*`` matches any run of characters, everything else itself. Linear in practice: on a
    mismatch only the last ``*`` is widened (no exponential backtracking)."""
    p = t = 0
    star = -1
    mark = 0
    while t < len(topic):
        if p < len(pattern) and pattern[p] == "*":
            star, mark = p, t
            p += 1
        elif p < len(pattern) and pattern[p] == topic[t]:
            p += 1
            t += 1
        elif star >= 0:
            p, mark = star + 1, mark + 1
            t = mark
        else:
            return False
    return all(c == "*" for c in pattern[p:])


class Patterns:
    """A set of topic patterns; a topic matches when any of them does."""

    __slots__ = ("_exact", "_globs")

    def __init__(self, patterns: Iterable[str]) -> None:
        listed = [p.strip() for p in patterns if p.strip()]
        self._exact = frozenset(p for p in listed if "*" not in p)
        self._globs = tuple(p for p in listed if "*" in p)

    @classmethod
    def parse(cls, setting: str) -> Patterns:
        return cls(setting.split(","))

    def __bool__(self) -> bool:
        return bool(self._exact or self._globs)

    def match(self, topic: str) -> bool:
        return topic in self._exact or any(glob_match(g, topic) for g in self._globs)


_BAD_SIGNATURE = "token signature does not verify"
_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.ImmatureSignatureError, "token not valid yet"),
    (jwt.InvalidAudienceError, "token is for another audience"),
    (jwt.InvalidIssuerError, "token is from another issuer"),
    (jwt.MissingRequiredClaimError, "token has no expiry (exp)"),
    (jwt.InvalidSignatureError, _BAD_SIGNATURE),
)


# ---------------------------------------------------------------------------------------------
# Verifying tokens


class Rights(msgspec.Struct, frozen=True):
    subscribe: list[str] = []
    publish: list[str] = []


@dataclass(frozen=True, slots=True)
class Token:
    """A verified token: what it may read and publish, and when it stops being valid."""

    subscribe: Patterns
    publish: Patterns
    expires: float | None  # epoch seconds, leeway included
    exp: float | None = None  # the token's own exp claim

class KeyUnknown(Exception):
    """A token names a ``kid`` the JWKS held now does not list: ``Verifier.verify_async``
    asks the JWKS again (``relay.jwks``) before answering."""

    def __init__(self, kid: str, alg: str) -> None:
        super().__init__(kid)
        self.kid = kid
        self.alg = alg


class Verifier:
    """The accepted algorithms, each with the key it verifies with: the static keys of the
    settings, and the keys of ``SSEDGE_JWKS_URL`` chosen by the token's ``kid``.

    A token with a ``kid`` that the JWKS lists verifies with that key alone, and only for an
    algorithm that fits it. Any other token (no ``kid``, no JWKS, a ``kid`` still unknown after
    the JWKS was asked again) verifies with the static key of its algorithm. HMAC tokens never
    look at the JWKS (it holds no symmetric keys)."""

    def __init__(self, settings: Settings) -> None:
        self._keys = keys.load_keys(settings)
        self._accepted = frozenset(keys.accepted(settings))
        self.jwks = jwks.Jwks(
            settings.jwks_url, [a for a in keys.accepted(settings)
                                if a not in keys.HMAC_ALGORITHMS],
            refresh_s=settings.jwks_refresh_s, min_interval_s=settings.jwks_min_interval_s,
        ) if settings.jwks_url else None
        self._audience = settings.jwt_audience or None
        self._issuer = settings.jwt_issuer or None
        self._leeway = settings.jwt_leeway_s
        self._options: dict[str, Any] = {
            "require": ["exp"] if settings.jwt_require_exp else [],
            "enforce_minimum_key_length": True,
        }

    @property
    def enabled(self) -> bool:
        return bool(self._keys) or self.jwks is not None

    @property
    def algorithms(self) -> list[str]:
        return sorted(self._keys)

    def verify(self, token: str) -> Token:
        """The common path, without awaiting: ``KeyUnknown`` when the JWKS must be asked."""
        alg, kid = self._header(token)
        if alg not in self._accepted:
            raise Unauthorized("token algorithm not accepted")
        key = None
        if self.jwks is not None and kid is not None and alg not in keys.HMAC_ALGORITHMS:
            if kid not in self.jwks:
                raise KeyUnknown(kid, alg)
            key = self.jwks.key(kid, alg)
            if key is None:  # the kid's key does not fit this algorithm
                raise Unauthorized("token algorithm not accepted")
        return self._decode(token, alg, key)

    async def verify_async(self, token: str) -> Token:
        """``verify``, asking the JWKS again for a ``kid`` it did not list (rate-limited)."""
        try:
            return self.verify(token)
        except KeyUnknown as unknown:
            assert self.jwks is not None
            found = await self.jwks.lookup(unknown.kid)
            if found is jwks.Lookup.FOUND:
                key = self.jwks.key(unknown.kid, unknown.alg)
                if key is None:  # the kid's key does not fit this algorithm
                    raise Unauthorized("token algorithm not accepted") from None
                return self._decode(token, unknown.alg, key)
            if unknown.alg in self._keys:  # a token of the static key's issuer, with a kid
                try:
                    return self._decode(token, unknown.alg, None)
                except Unauthorized as exc:
                    if found is jwks.Lookup.ABSENT or exc.message != _BAD_SIGNATURE:
                        raise
            if found is jwks.Lookup.UNSURE:
                # maybe a key published since the last fetch: not a refusal for good
                raise Unavailable("this token's signing key is not known yet; try again",
                                  self.jwks.retry_after_s()) from None
            raise Unauthorized("token signing key (kid) is unknown") from None

    def _header(self, token: str) -> tuple[str, str | None]:
        if len(token) > MAX_TOKEN_BYTES:
            raise Unauthorized("token too long")
        try:
            header = jwt.get_unverified_header(token)
        except (jwt.PyJWTError, ValueError, TypeError):
            raise Unauthorized("malformed token") from None
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or alg not in keys.KNOWN_ALGORITHMS:
            raise Unauthorized("token algorithm not accepted")
        return alg, kid if isinstance(kid, str) and kid else None

    def _decode(self, token: str, alg: str, key: Any | None) -> Token:
        """Verify with ``key``, else the static key of ``alg``."""
        if key is None:
            key = self._keys.get(alg)
            if key is None:
                raise Unauthorized("token algorithm not accepted")
        try:
            claims = jwt.decode(token, key, algorithms=[alg], audience=self._audience,
                                issuer=self._issuer, leeway=self._leeway,
                                options=self._options)  # type: ignore[arg-type]
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            reason = next((r for kind, r in _REASONS if isinstance(exc, kind)), "invalid token")
            raise Unauthorized(reason) from None
        try:
            rights = msgspec.convert(claims.get(CLAIM) or {}, Rights)
        except msgspec.ValidationError:
            raise Unauthorized(f"token's {CLAIM} claim is not an object of "
                               "subscribe and publish pattern lists") from None
        exp = claims.get("exp")
        exp = float(exp) if isinstance(exp, int | float) else None
        return Token(Patterns(rights.subscribe), Patterns(rights.publish),
                     None if exp is None else exp + self._leeway, exp)


# ---------------------------------------------------------------------------------------------
# The checks a request goes through


@dataclass(frozen=True, slots=True)
class Access:
    """How a read was allowed: ``private`` answers are never cached by shared caches, and a
    stream read with a token ends when the token expires."""

    private: bool
    expires: float | None = None  # the stream's end: the token's exp and the leeway
    token_exp: float | None = None  # the token's exp claim, told to the page ahead of it


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

    def register_metrics(self, metrics: Metrics) -> None:
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
    return Access(private=True, expires=token.expires, token_exp=token.exp)


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
