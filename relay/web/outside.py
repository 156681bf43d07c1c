"""HTTP to servers outside the deployment: the upstreams ``ssedge ingest`` follows and the
issuer's JWKS. Through httpx, the way a browser reaches them:

- redirects are followed (301, 302, 303, 307, 308; at most ``MAX_REDIRECTS``), headers kept
  (``Last-Event-ID`` among them) except ``Authorization`` on a redirect to another host;
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

import httpx

MAX_REDIRECTS = 10
#: idle pooled connections kept this long for the next request to the same origin
KEEPALIVE_S = 60.0


def client(connect_timeout_s: float, read_timeout_s: float) -> httpx.AsyncClient:
    """A pooled client; ``read_timeout_s`` bounds the wait for each piece of an answer."""
    return httpx.AsyncClient(
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
