"""HTTP to servers outside the deployment: the upstreams ``ssedge ingest`` follows and the
issuer's JWKS. Through httpx, the way a browser reaches them:

- redirects are followed (301, 302, 303, 307, 308; at most ``MAX_REDIRECTS``), headers kept
  (``Last-Event-ID`` among them) except ``Authorization`` on a redirect to another host; a
  client given ``redirect_hosts`` follows one only to the same origin (scheme, host, port)
  or to a host listed (``RedirectRefused`` otherwise): an upstream must not be able to send
  the ingest, and its ``Last-Event-ID``, wherever it likes;
- ``HTTP_PROXY``, ``HTTPS_PROXY`` (a CONNECT tunnel), ``ALL_PROXY`` and ``NO_PROXY`` from the
  environment, as curl reads them;
- TLS checked against the system's trust store (``/etc/ssl/certs``; ``SSL_CERT_FILE`` and
  ``SSL_CERT_DIR`` name others), so a private CA installed on the host is trusted;
- connections kept alive and pooled between requests to the same origin (a reconnect after
  a stream that ended, a retry after an error answer).

The project's own small client (``relay.web.client``) stays where the bytes on the wire are
the point: the CLI and the tests, and a relay's history pages from its own replay service.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable

import httpx

MAX_REDIRECTS = 10
#: idle pooled connections kept this long for the next request to the same origin
KEEPALIVE_S = 60.0


class RedirectRefused(httpx.RequestError):
    """A redirect to an origin the client may not follow (``redirect_hosts``)."""


def redirect_allowed(source: httpx.URL, target: httpx.URL, hosts: frozenset[str]) -> bool:
    """Whether a redirect from ``source`` to ``target`` may be followed: the same origin, or
    a host in ``hosts`` (``*``: any)."""
    if "*" in hosts or (target.host or "").lower() in hosts:
        return True
    return (source.scheme, source.host, source.port) == (target.scheme, target.host,
                                                         target.port)


def _redirect_check(hosts: frozenset[str]) -> Callable[[httpx.Response], Awaitable[None]]:
    async def check(response: httpx.Response) -> None:
        location = response.headers.get("location")
        if not response.is_redirect or location is None:
            return
        source = response.request.url
        try:
            target = source.join(location)
        except httpx.InvalidURL:
            return  # httpx refuses it itself
        if not redirect_allowed(source, target, hosts):
            raise RedirectRefused(f"redirect from {source.host} to {target.host!r} refused "
                                  "(another origin, not listed)", request=response.request)
    return check


def parse_hosts(text: str) -> frozenset[str]:
    """A comma-separated list of host names (``*``: any) as ``redirect_hosts`` takes them."""
    return frozenset(h.strip().lower() for h in text.split(",") if h.strip())


def client(connect_timeout_s: float, read_timeout_s: float,
           redirect_hosts: frozenset[str] | None = None) -> httpx.AsyncClient:
    """A pooled client; ``read_timeout_s`` bounds the wait for each piece of an answer;
    with ``redirect_hosts``, redirects only to the same origin or to those hosts."""
    hooks = {} if redirect_hosts is None else {"response": [_redirect_check(redirect_hosts)]}
    return httpx.AsyncClient(
        event_hooks=hooks,
        follow_redirects=True,
        max_redirects=MAX_REDIRECTS,
        trust_env=True,  # the *_PROXY variables, SSL_CERT_FILE, SSL_CERT_DIR
        verify=ssl.create_default_context(),  # the system's trust store, as a browser's
        timeout=httpx.Timeout(connect=connect_timeout_s, read=read_timeout_s,
                              write=connect_timeout_s, pool=connect_timeout_s),
        # a followed stream holds its connection for as long as it lasts: never a cap on them
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=100,
                            keepalive_expiry=KEEPALIVE_S),
    )


async def read_bounded(response: httpx.Response, limit: int) -> bytes:
    """The body, cut after ``limit`` bytes (the rest is never read)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(chunks)[:limit]
