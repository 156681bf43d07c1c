"""``ssedge ingest`` reaches upstreams as a browser's EventSource would (``relay.web.outside``):
it follows redirects with its ``Last-Event-ID``, goes through the proxies the environment
names (a plain HTTP_PROXY, and an HTTPS_PROXY tunnel to an HTTPS origin whose CA the host
trusts), and keeps a connection alive across the streams it reconnects to."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from relay.harness.servers import IngestProcess, RedisServer
from tests.integration.ingest.test_ingest import FAST, stored, wait_until
from tests.integration.tls import authority
from tests.integration.upstreams import Upstreams

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"


def closing_stream(*events: bytes) -> bytes:
    """A 200 event stream that ends with its connection (one request per connection)."""
    return HEAD + b"Connection: close\r\n\r\n" + b"".join(events)


def chunked_stream(*events: bytes) -> bytes:
    """A whole 200 event stream in chunks: the connection may carry the next request."""
    body = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events)
    return HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + body + b"0\r\n\r\n"


def test_redirects_are_followed_with_the_last_event_id(
    upstreams: Upstreams, start_ingest: Callable[..., IngestProcess],
    redis_server: RedisServer,
) -> None:
    origin = upstreams.canned([closing_stream(b"id: r1\ndata: one\n\n"),
                               closing_stream(b"id: r2\ndata: two\n\n"),
                               closing_stream()])
    moved = (f"HTTP/1.1 307 Temporary Redirect\r\nLocation: http://127.0.0.1:{origin.port}"
             f"/moved/here\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").encode()
    entry = upstreams.canned([moved])
    # another port is another origin: followed because its host is listed
    start_ingest("--topic", "redirected", "--from", f"r={entry.url}", **FAST,
                 ingest_redirect_hosts="127.0.0.1")
    wait_until(lambda: len(stored(redis_server, "redirected")) >= 2, 15, "two events")
    assert [e["d"] for e in stored(redis_server, "redirected")] == ["one", "two"]
    assert origin.requests[0].startswith(b"GET /moved/here HTTP/1.1")
    # the redirected request carries what the first one carried: the resume position
    assert b"Last-Event-ID: r1" in entry.requests[1] and b"Last-Event-ID: r1" in origin.requests[1]


def test_a_redirect_to_another_origin_is_not_followed_by_default(
    upstreams: Upstreams, start_ingest: Callable[..., IngestProcess],
    redis_server: RedisServer,
) -> None:
    """An upstream must not send the ingest (and its Last-Event-ID) wherever it likes: a
    redirect to another origin is an error (counted, retried with backoff), one to the same
    origin is followed."""
    elsewhere = upstreams.canned([closing_stream(b"id: x1\ndata: elsewhere\n\n")] * 5)
    moved = (f"HTTP/1.1 302 Found\r\nLocation: http://localhost:{elsewhere.port}/x\r\n"
             "Content-Length: 0\r\nConnection: close\r\n\r\n").encode()
    entry = upstreams.canned([moved] * 50)
    ingest = start_ingest("--topic", "away", "--from", f"r={entry.url}", **FAST)
    wait_until(lambda: ingest.metric("errors_total", "r") >= 2, 15, "refused redirects")
    assert len(entry.requests) >= 2 and elsewhere.requests == []
    assert stored(redis_server, "away") == []
    assert ingest.metric("errors_total", "r", kind="redirect") >= 2


def test_the_proxies_the_environment_names_are_used(
    upstreams: Upstreams, start_ingest: Callable[..., IngestProcess],
    redis_server: RedisServer, tmp_path: Path,
) -> None:
    tls, ca_file = authority(tmp_path / "tls")
    plain = upstreams.canned([closing_stream(b"id: p1\ndata: plain\n\n")], hold_s=30)
    secure = upstreams.canned([closing_stream(b"id: s1\ndata: secure\n\n")], hold_s=30,
                              tls=tls)
    proxy = upstreams.proxy()
    settings_file = tmp_path / "ingest.toml"
    settings_file.write_text(f'[[ingest]]\ntopic = "proxied"\nfrom = ["plain={plain.url}", '
                             f'"secure={secure.url}"]\n')
    ingest = start_ingest(
        ingest_file=settings_file, **FAST,
        environ={"HTTP_PROXY": proxy.url, "HTTPS_PROXY": proxy.url,
                 # the host's trust store, as a browser's: here, the test's CA
                 "SSL_CERT_FILE": str(ca_file)})
    wait_until(lambda: len(stored(redis_server, "proxied")) >= 2, 15, "both events")
    assert sorted(e["d"] for e in stored(redis_server, "proxied")) == ["plain", "secure"]
    assert f"GET {plain.url}" in proxy.seen
    assert f"CONNECT 127.0.0.1:{secure.port}" in proxy.seen
    assert ingest.metric("errors_total", "secure") == 0


def test_a_kept_alive_connection_carries_the_reconnects(
    upstreams: Upstreams, start_ingest: Callable[..., IngestProcess],
    redis_server: RedisServer,
) -> None:
    origin = upstreams.canned([chunked_stream(b"retry: 50\n\n", b"id: k1\ndata: one\n\n"),
                               chunked_stream(b"id: k2\ndata: two\n\n"),
                               chunked_stream(b"id: k3\ndata: three\n\n"),
                               chunked_stream(b": nothing new\n\n")], keep_alive=True)
    ingest = start_ingest("--topic", "alive", "--from", f"k={origin.url}", **FAST)
    wait_until(lambda: len(origin.requests) >= 4, 15, "four requests")
    assert [e["d"] for e in stored(redis_server, "alive")] == ["one", "two", "three"]
    assert origin.connections == 1  # every reconnect went on the same connection
    assert b"Last-Event-ID: k2" in origin.requests[2]
    assert ingest.metric("reconnects_total", "k") >= 3
