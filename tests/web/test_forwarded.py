"""The access log's client address: X-Forwarded-For only from a trusted proxy, read from the
right past the trusted proxies."""

from __future__ import annotations

import pytest

from relay.settings import SettingsError, load, proxy_networks
from relay.web.forwarded import client_address

LOOPBACK = proxy_networks("127.0.0.0/8,::1/128")
EDGES = proxy_networks("127.0.0.0/8,10.0.0.0/8")


@pytest.mark.parametrize(("peer", "header", "trusted", "expected"), [
    ("127.0.0.1", None, LOOPBACK, "127.0.0.1"),  # no header: the peer
    ("127.0.0.1", "203.0.113.9", LOOPBACK, "203.0.113.9"),  # the edge on this host
    ("198.51.100.1", "203.0.113.9", LOOPBACK, "198.51.100.1"),  # not a proxy: ignored
    ("127.0.0.1", "203.0.113.9", (), "127.0.0.1"),  # nothing trusted
    # a client's own header is left of what the proxies appended: never believed
    ("127.0.0.1", "6.6.6.6, 203.0.113.9", LOOPBACK, "203.0.113.9"),
    ("127.0.0.1", "6.6.6.6, 203.0.113.9, 10.1.2.3", EDGES, "203.0.113.9"),
    ("127.0.0.1", "10.1.2.3, 127.0.0.2", EDGES, "10.1.2.3"),  # all proxies: the first
    ("127.0.0.1", "garbage, 203.0.113.9", LOOPBACK, "203.0.113.9"),
    ("127.0.0.1", "203.0.113.9, garbage", LOOPBACK, "127.0.0.1"),  # garbage a proxy added
    ("127.0.0.1", "[2001:db8::1]:443", LOOPBACK, "2001:db8::1"),
    ("127.0.0.1", "203.0.113.9:5555", LOOPBACK, "203.0.113.9"),
    ("::ffff:127.0.0.1", "203.0.113.9", LOOPBACK, "203.0.113.9"),  # v4-mapped loopback
    ("::1", "2001:db8::7", LOOPBACK, "2001:db8::7"),
])
def test_client_address(peer: str, header: str | None, trusted: tuple[object, ...],
                        expected: str) -> None:
    assert client_address(peer, header, trusted) == expected  # type: ignore[arg-type]


def test_a_bad_network_stops_start_up_naming_the_setting() -> None:
    with pytest.raises(SettingsError, match="SSEDGE_TRUSTED_PROXIES"):
        load({"SSEDGE_TRUSTED_PROXIES": "10.0.0.0/33"})
    assert load({"SSEDGE_TRUSTED_PROXIES": ""}).trusted_proxies == ""
