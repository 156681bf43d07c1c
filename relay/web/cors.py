"""Cross-origin rules: which origins may read ssedge's answers, decided once per request.

``SSEDGE_CORS_ORIGIN`` is ``*``, a comma-separated list of origins, or empty:

- ``*``: every answer says ``Access-Control-Allow-Origin: *``. Browsers then send no cookies,
  so the token cookie never works cross-origin; a token in the ``Authorization`` header or
  the ``access_token`` query parameter does (it is not an ambient credential: a page has to
  hold it to send it). The answer is the same for every origin: no ``Vary``.
- a list: a listed origin is echoed back with ``Access-Control-Allow-Credentials: true``
  (so ``EventSource(url, {withCredentials: true})`` sends the token cookie); any other origin
  gets no CORS header and its browser refuses the answer. Every answer says
  ``Vary: Origin``, so a cache (Varnish) keeps one copy per origin and never serves one
  origin's answer to another.
- empty: no CORS headers at all (same-origin deployments).
"""

from __future__ import annotations

from urllib.parse import urlsplit

Headers = tuple[tuple[bytes, bytes], ...]

ALLOW_METHODS = "GET, HEAD, POST, DELETE, OPTIONS"  # DELETE: /v1/auth/cookie
ALLOW_HEADERS = ("authorization, cache-control, content-type, idempotency-key, if-none-match, "
                 "last-event-id")
EXPOSE_HEADERS = (b"etag, idempotent-replayed, retry-after, www-authenticate, x-ssedge-count, "
                  b"x-ssedge-last-id, x-ssedge-refused, x-ssedge-reset, x-ssedge-through")
PREFLIGHT_MAX_AGE = 86400


def normalise(origin: str) -> str:
    """An origin as browsers serialise it: lower case, no default port, no trailing slash."""
    parts = urlsplit(origin.strip().rstrip("/").lower())
    default = {"http": 80, "https": 443}.get(parts.scheme)
    host = parts.netloc
    if default is not None and host.endswith(f":{default}"):
        host = host[: -len(f":{default}")]
    return f"{parts.scheme}://{host}"


class Cors:
    def __init__(self, setting: str) -> None:
        value = setting.strip()
        self.any = value == "*"
        self.origins = frozenset() if self.any else frozenset(
            normalise(o) for o in value.split(",") if o.strip())
        self.enabled = self.any or bool(self.origins)
        self._any: Headers = ((b"access-control-allow-origin", b"*"),
                              (b"access-control-expose-headers", EXPOSE_HEADERS))
        self._refused: Headers = ((b"vary", b"origin"),)

    def allows(self, origin: str | None) -> bool:
        return self.any or (origin is not None and origin.lower() in self.origins)

    def headers(self, origin: str | None) -> Headers:
        """The CORS headers of any answer to a request from ``origin``."""
        if self.any:
            return self._any
        if not self.origins:
            return ()
        if origin is None or origin.lower() not in self.origins:
            return self._refused
        return ((b"access-control-allow-origin", origin.encode("latin-1")),
                (b"access-control-allow-credentials", b"true"),
                (b"access-control-expose-headers", EXPOSE_HEADERS),
                (b"vary", b"origin"))

    def preflight(self, origin: str | None) -> dict[str, str]:
        """What a preflight answer adds for ``origin`` (nothing for a refused one)."""
        if not self.allows(origin):
            return {}
        return {"access-control-allow-methods": ALLOW_METHODS,
                "access-control-allow-headers": ALLOW_HEADERS,
                "access-control-max-age": str(PREFLIGHT_MAX_AGE)}
