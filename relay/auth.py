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

Signatures: HMAC tokens verify with ``SSEDGE_JWT_SECRET`` only, RSA and EC tokens with
``SSEDGE_JWT_PUBLIC_KEY`` only; the key is chosen by the token's ``alg`` among the accepted
algorithms that fit it, so a token can never make the public key serve as an HMAC secret (the
key-confusion attack), and ``none`` is never accepted. A bad token is 401 with a fixed reason,
never the library's message nor the token; a good token without the right is 403.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import msgspec

from relay.errors import Forbidden, Unauthorized
from relay.http import Request
from relay.settings import Settings, SettingsError

CLAIM = "ssedge"
TOKEN_QUERY = "access_token"
TOKEN_COOKIE = "ssedge_auth"
MAX_TOKEN_BYTES = 8192  # a token is a few hundred bytes; longer is refused before parsing

HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
KNOWN_ALGORITHMS = (*HMAC_ALGORITHMS, *RSA_ALGORITHMS, *EC_ALGORITHMS.values())


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


_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.ImmatureSignatureError, "token not valid yet"),
    (jwt.InvalidAudienceError, "token is for another audience"),
    (jwt.InvalidIssuerError, "token is from another issuer"),
    (jwt.MissingRequiredClaimError, "token has no expiry (exp)"),
    (jwt.InvalidSignatureError, "token signature does not verify"),
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


class Verifier:
    """The accepted algorithms, each with the one key it verifies with."""

    def __init__(self, settings: Settings) -> None:
        self._keys = load_keys(settings)
        self._audience = settings.jwt_audience or None
        self._issuer = settings.jwt_issuer or None
        self._leeway = settings.jwt_leeway_s
        self._options: dict[str, Any] = {
            "require": ["exp"] if settings.jwt_require_exp else [],
            "enforce_minimum_key_length": True,
        }

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    @property
    def algorithms(self) -> list[str]:
        return sorted(self._keys)

    def verify(self, token: str) -> Token:
        if len(token) > MAX_TOKEN_BYTES:
            raise Unauthorized("token too long")
        try:
            alg = jwt.get_unverified_header(token).get("alg")
        except (jwt.PyJWTError, ValueError, TypeError):
            raise Unauthorized("malformed token") from None
        key = self._keys.get(alg) if isinstance(alg, str) else None
        if key is None or not isinstance(alg, str):
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
        expires = float(exp) + self._leeway if isinstance(exp, int | float) else None
        return Token(Patterns(rights.subscribe), Patterns(rights.publish), expires)


def load_keys(settings: Settings) -> dict[str, Any]:
    """Algorithm name to verifying key; a bad key or algorithm is a ``SettingsError``."""
    accepted = [a.strip() for a in settings.jwt_algorithms.split(",") if a.strip()]
    for alg in accepted:
        if alg not in KNOWN_ALGORITHMS:
            raise SettingsError(f"bad setting SSEDGE_JWT_ALGORITHMS={settings.jwt_algorithms!r}: "
                                f"unknown algorithm {alg!r} (use {', '.join(KNOWN_ALGORITHMS)})")
    keys: dict[str, Any] = {}
    if settings.jwt_secret:
        secret = settings.jwt_secret.encode()
        for alg in (a for a in accepted if a in HMAC_ALGORITHMS):
            keys[alg] = _prepared(alg, secret, "SSEDGE_JWT_SECRET", "<hidden>")
    if settings.jwt_public_key:
        public = _public_key(settings.jwt_public_key)
        fits = _algorithms_for(public)
        usable = [a for a in accepted if a in fits]
        if not usable:
            raise SettingsError(
                f"bad setting SSEDGE_JWT_PUBLIC_KEY: a key for {', '.join(fits)}, none of "
                f"which is in SSEDGE_JWT_ALGORITHMS={settings.jwt_algorithms!r}")
        for alg in usable:
            keys[alg] = _prepared(alg, public, "SSEDGE_JWT_PUBLIC_KEY",
                                  _shown(settings.jwt_public_key))
    if settings.private_topics and not keys:
        raise SettingsError("bad setting SSEDGE_PRIVATE_TOPICS: private topics need "
                            "SSEDGE_JWT_SECRET or SSEDGE_JWT_PUBLIC_KEY to verify tokens")
    return keys


def _prepared(alg: str, key: Any, name: str, shown: str) -> Any:
    algorithm = jwt.get_algorithm_by_name(alg)
    try:
        prepared = algorithm.prepare_key(key)
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        # e.g. a PEM public key given as the HMAC secret: the key-confusion setup
        raise SettingsError(f"bad setting {name}={shown!r}: {exc}") from None
    weak = algorithm.check_key_length(prepared)
    if weak:
        raise SettingsError(f"bad setting {name}={shown!r}: {weak}")
    return prepared


def _public_key(setting: str) -> Any:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    if setting.lstrip().startswith("-----BEGIN"):
        pem = setting.encode()
    else:
        try:
            pem = Path(setting).read_bytes()
        except OSError as exc:
            raise SettingsError(f"bad setting SSEDGE_JWT_PUBLIC_KEY={setting!r}: "
                                f"cannot read it: {exc.strerror}") from None
    try:
        if b"-----BEGIN CERTIFICATE-----" in pem:
            return x509.load_pem_x509_certificate(pem).public_key()
        return load_pem_public_key(pem)
    except ValueError:
        raise SettingsError(f"bad setting SSEDGE_JWT_PUBLIC_KEY={_shown(setting)!r}: not a PEM "
                            "public key or certificate") from None


def _shown(setting: str) -> str:
    """The key setting for an error line: a path as given, an inline PEM not at all."""
    return "<inline PEM>" if setting.lstrip().startswith("-----BEGIN") else setting


def _algorithms_for(key: Any) -> tuple[str, ...]:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if isinstance(key, rsa.RSAPublicKey):
        return RSA_ALGORITHMS
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in EC_ALGORITHMS:
        return (EC_ALGORITHMS[key.curve.name],)
    raise SettingsError("bad setting SSEDGE_JWT_PUBLIC_KEY: an RSA key, or an EC key on "
                        "P-256, P-384 or P-521, is needed")


# ---------------------------------------------------------------------------------------------
# The checks a request goes through


@dataclass(frozen=True, slots=True)
class Access:
    """How a read was allowed: ``private`` answers are never cached by shared caches, and a
    stream read with a token ends when the token expires."""

    private: bool
    expires: float | None = None


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
        if not self.is_private(topic):
            return PUBLIC
        token = reader_token(request)
        if token is None:
            raise Unauthorized(f"{topic} is private: send a subscriber token", missing=True)
        verified = self.verifier.verify(token)
        if not verified.subscribe.match(topic):
            raise Forbidden(f"this token may not read {topic}")
        return Access(private=True, expires=verified.expires)

    def check_publish(self, request: Request, topic: str) -> None:
        """May this request publish to ``topic``? Checked before its body is read."""
        token = bearer(request)
        if token is None:
            raise Unauthorized("publishing needs Authorization: Bearer <token>", missing=True)
        # compared in constant time; a static token may publish anywhere
        if self._static and hmac.compare_digest(token.encode(), self._static):
            return
        if not self.verifier.enabled:
            raise Unauthorized("wrong publish token")
        if not self.verifier.verify(token).publish.match(topic):
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
