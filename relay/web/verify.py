"""Verifying a token: its signature with the key it may use, its claims, and its rights.

A token's rights are in one claim, in the manner of Mercure's ``mercure`` claim::

    {"exp": 1767225600, "ssedge": {"subscribe": ["private-42", "user.42.*"],
                                   "publish": ["news.*"]}}

Each entry is a topic pattern: topic characters, with ``*`` for any run of characters
(``*`` alone: every topic).

Signatures: HMAC tokens verify with ``SSEDGE_JWT_SECRET`` only, RSA and EC tokens with a
public key only: ``SSEDGE_JWT_PUBLIC_KEY``, or the key of ``SSEDGE_JWKS_URL`` that the token's
``kid`` names (``relay.jwks``). The key is chosen among those that fit the token's ``alg``
(``relay.keys``), so a token can never make a public key serve as an HMAC secret (the
key-confusion attack), and ``none`` is never accepted. A bad token is 401 with a fixed reason,
never the library's message nor the token.

``Verifier.verify`` is synchronous; only a token whose ``kid`` the JWKS does not list yet
needs ``verify_async``, which awaits one fetch of the JWKS, so the common path stays free
of it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import jwt
import msgspec

from relay.settings import Settings
from relay.web import jwks, keys
from relay.web.errors import Unauthorized, Unavailable

CLAIM = "ssedge"
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
    jti: str | None = None  # the token's id, and whom it is for: what an operator revokes
    sub: str | None = None

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
        jti, sub = claims.get("jti"), claims.get("sub")
        return Token(Patterns(rights.subscribe), Patterns(rights.publish),
                     None if exp is None else exp + self._leeway, exp,
                     jti if isinstance(jti, str) and jti else None,
                     sub if isinstance(sub, str) and sub else None)
