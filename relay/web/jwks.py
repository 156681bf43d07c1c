"""Verification keys from a JWKS URL, chosen by a token's ``kid``, refreshed without a restart.

An issuer rotates its signing key by publishing the new public key in its JSON Web Key Set,
signing new tokens with it (their header names its ``kid``), and removing the old key once
the old tokens have expired. The relay follows without a restart:

- **On a schedule** (``SSEDGE_JWKS_REFRESH_S``): removed keys stop verifying within one period.
- **On an unknown kid**: a token signed with a key published since the last fetch makes the
  relay fetch again at once, at most once per ``SSEDGE_JWKS_MIN_INTERVAL_S`` (a flood of
  made-up kids costs the issuer one request per interval). Concurrent requests share a fetch.
  A kid is refused for good (401) only when a fetch made after the request arrived does not
  list it; while none could be made (the rate limit, a JWKS that does not answer) the answer
  is temporary (503 with Retry-After): the key may have been published a moment ago.
- **A bad or unreachable JWKS keeps the last good keys**: a failed fetch, an answer that is not
  a JWK Set, or one with no usable key changes nothing; the metrics and the log say so.

Fetching never blocks the event loop: PyJWT's ``PyJWKClient`` reads with urllib synchronously,
so the set is fetched with httpx, as a browser reaches an outside server (redirects, the
environment's proxies, the system's trust store: ``relay.web.outside``), and parsed with
PyJWT's ``PyJWK``.

Which keys are usable (``parse``): RSA and EC public keys that have a ``kid`` and are not
marked for encryption. A symmetric (``oct``) key is never taken from a URL: HMAC tokens verify
with ``SSEDGE_JWT_SECRET`` only, so no token can make a public key serve as an HMAC secret.
Each key verifies the accepted algorithms that fit its type (its curve, for EC), narrowed to
its own ``alg`` when it names one; ``none`` fits no key.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Iterable
from typing import Any

import httpx
import jwt
import msgspec

from relay.prometheus import ProcessMetrics
from relay.web import outside
from relay.web.keys import key_algorithms

log = logging.getLogger("ssedge.jwks")

FETCH_TIMEOUT_S = 3.0  # a request with an unknown kid may wait this long for the fetch
MAX_BYTES = 1024 * 1024  # a key set is a few KiB; more is refused before parsing
MAX_KEYS = 100


class JwksError(ValueError):
    """A key set that cannot be used; the message is one line for the log."""


# kid -> algorithm -> the key prepared for it
Keys = dict[str, dict[str, Any]]


def parse(body: bytes, accepted: Iterable[str]) -> Keys:
    """The usable keys of a JWK Set document; ``JwksError`` when there are none."""
    try:
        document = msgspec.json.decode(body)
    except msgspec.DecodeError:
        raise JwksError("not JSON") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise JwksError('not a JWK Set (an object with a "keys" list)')
    allowed = set(accepted)
    keys: Keys = {}
    skipped: list[str] = []
    for entry in entries[:MAX_KEYS]:
        kid = entry.get("kid") if isinstance(entry, dict) else None
        why = _unusable(entry, kid)
        prepared: dict[str, Any] = {}
        if why is None:
            try:
                public = jwt.PyJWK(entry).key
                fits = [a for a in key_algorithms(public) if a in allowed]
            except Exception:  # noqa: BLE001  PyJWT raises several kinds for a bad JWK
                fits, why = [], "not a valid RSA or EC public key"
            if entry.get("alg") is not None:
                fits = [a for a in fits if a == entry["alg"]]
            for alg in fits:
                algorithm = jwt.get_algorithm_by_name(alg)
                key = algorithm.prepare_key(public)
                if not algorithm.check_key_length(key):  # too short for its algorithm
                    prepared[alg] = key
            if why is None and not prepared:
                why = "fits no accepted algorithm (SSEDGE_JWT_ALGORITHMS), or is too short"
        if why is not None:
            skipped.append(f"{kid or '?'}: {why}")
        elif isinstance(kid, str) and kid not in keys:
            keys[kid] = prepared
    if skipped:
        log.warning("JWKS: keys skipped: %s", "; ".join(skipped))
    if not keys:
        raise JwksError(f"no usable key among {len(entries)}")
    return keys


def _unusable(entry: Any, kid: Any) -> str | None:
    if not isinstance(entry, dict):
        return "not an object"
    if not isinstance(kid, str) or not kid:
        return "no kid (keys are chosen by the token's kid)"
    if entry.get("kty") not in ("RSA", "EC"):
        return f"key type {entry.get('kty')!r} (RSA and EC only; HMAC uses the secret)"
    if entry.get("use") not in (None, "sig"):
        return "not a signing key (use)"
    if "d" in entry:
        return "holds private key material (publish public keys only)"
    return None


class Lookup(enum.Enum):
    FOUND = "found"
    ABSENT = "absent"  # a fetch made after the question was asked does not list it
    UNSURE = "unsure"  # no such fetch could be made now (rate limit, JWKS unreachable)


class Jwks:
    """The key set of one URL, in one process, and the task that keeps it fresh."""

    def __init__(self, url: str, accepted: Iterable[str], *, refresh_s: float,
                 min_interval_s: float, timeout_s: float = FETCH_TIMEOUT_S) -> None:
        self.url = url
        self._accepted = tuple(accepted)
        self.refresh_s = refresh_s
        self.min_interval_s = min_interval_s
        self.timeout_s = timeout_s
        self.keys: Keys = {}
        self.loaded_at: float | None = None  # monotonic time of the last good fetch
        self.refreshes = 0
        self.failures = 0
        self.last_error = ""
        self._ok_started: float | None = None  # monotonic start of the last good fetch
        self._demanded: float | None = None  # ... of the last fetch for an unknown kid
        self._fetching: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._http: httpx.AsyncClient | None = None

    def __contains__(self, kid: str) -> bool:
        return kid in self.keys

    def key(self, kid: str, alg: str) -> Any | None:
        return self.keys.get(kid, {}).get(alg)

    @property
    def age_s(self) -> float:
        """Seconds since the last good fetch; -1 when none succeeded yet."""
        return -1.0 if self.loaded_at is None else time.monotonic() - self.loaded_at

    # -- the schedule ------------------------------------------------------------------------

    async def start(self) -> None:
        """The first fetch (bounded: the process starts anyway, see ``lookup``), then the
        schedule."""
        await self.refresh()
        self._task = asyncio.ensure_future(self._every())

    async def stop(self) -> None:
        for task in (self._task, self._fetching):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def _every(self) -> None:
        while True:
            # after a failure, try again soon rather than a whole period later
            wait = self.refresh_s if self.last_error == "" else min(self.refresh_s,
                                                                     self.min_interval_s)
            await asyncio.sleep(wait)
            await self.refresh()

    # -- fetching ----------------------------------------------------------------------------

    async def refresh(self) -> None:
        """Fetch now, or join the fetch under way."""
        if self._fetching is None:
            self._fetching = asyncio.ensure_future(self._fetch())
        fetching = self._fetching
        await asyncio.shield(fetching)

    async def lookup(self, kid: str) -> Lookup:
        """Whether ``kid`` is in the set, fetching it again first when the rate limit allows.

        The limit is on fetches made for unknown kids (scheduled ones do not count), so a
        question asked again after ``min_interval_s`` is always answered for sure."""
        if kid in self.keys:
            return Lookup.FOUND
        asked = time.monotonic()
        if self._fetching is None and (self._demanded is None
                                       or asked - self._demanded >= self.min_interval_s):
            self._demanded = asked
            await self.refresh()
        elif self._fetching is not None:
            await asyncio.shield(self._fetching)
        if kid in self.keys:
            return Lookup.FOUND
        if self._ok_started is not None and self._ok_started >= asked:
            return Lookup.ABSENT
        return Lookup.UNSURE

    def retry_after_s(self) -> int:
        """When a fetch for an unknown kid may be made again, for a ``Retry-After``."""
        if self._demanded is None:
            return 1
        left = self.min_interval_s - (time.monotonic() - self._demanded)
        return max(1, int(left + 0.999))

    async def _fetch(self) -> None:
        started = time.monotonic()
        try:
            keys = parse(await self._get(), self._accepted)
        except Exception as exc:  # noqa: BLE001  whatever an outside server sends, keep the keys
            self.failures += 1
            reason = str(exc) or type(exc).__name__
            if reason != self.last_error:  # once per outage, not once per attempt
                kept = (f"keeping {len(self.keys)} keys fetched {self.age_s:.0f} s ago"
                        if self.keys else "no keys yet: tokens that need them are refused "
                        "for now (503), public topics are served")
                log.warning("JWKS %s: refresh failed (%s); %s", self.url, reason, kept)
            self.last_error = reason
        else:
            if keys.keys() != self.keys.keys() or self.last_error:
                log.info("JWKS %s: %d keys (kids %s)", self.url, len(keys), ", ".join(keys))
            self.keys = keys
            self.loaded_at = time.monotonic()
            self._ok_started = started
            self.refreshes += 1
            self.last_error = ""
        finally:
            self._fetching = None

    async def _get(self) -> bytes:
        if self._http is None:  # made in the loop that uses it, kept for the next fetches
            self._http = outside.client(self.timeout_s, self.timeout_s)
        http = self._http

        async def get() -> bytes:
            async with http.stream("GET", self.url,
                                   headers={"Accept": "application/json"}) as response:
                if response.status_code != 200:
                    raise JwksError(f"HTTP {response.status_code}")
                body = await outside.read_bounded(response, MAX_BYTES + 1)
            if len(body) > MAX_BYTES:
                raise JwksError(f"over {MAX_BYTES} bytes")
            return body

        return await asyncio.wait_for(get(), self.timeout_s)


def register(jwks: Jwks, metrics: ProcessMetrics) -> None:
    """The ``ssedge_jwks_*`` metrics: is the key set fresh, and does fetching it fail?"""
    metrics.counter("jwks_refreshes_total", "Good fetches of the JWKS.", lambda: jwks.refreshes)
    metrics.counter("jwks_refresh_failures_total",
                    "Failed JWKS fetches (unreachable, bad answer); the last good keys stay.",
                    lambda: jwks.failures)
    metrics.gauge("jwks_keys", "Usable keys of the JWKS held now.", lambda: len(jwks.keys))
    metrics.gauge("jwks_age_seconds", "Seconds since the last good JWKS fetch; -1: none yet.",
                  lambda: jwks.age_s)
