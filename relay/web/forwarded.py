"""Who a request came from, for the access log: the peer's address, or, when the peer is a
proxy we trust (``SSEDGE_TRUSTED_PROXIES``, loopback by default), the client that
``X-Forwarded-For`` names.

The header is a list each proxy appends the address it saw to, so only its right end is
known to be true: it is read from the right, each trusted proxy's entry skipped, and the first
address that is not a trusted proxy is the client. Anything a client wrote itself lies to the
left of what the proxies appended and is never taken while a proxy's entry stands after it.
A header from an untrusted peer is ignored whole (anyone can send one).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _address(text: str) -> Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1:text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _trusted(address: Address, trusted: Sequence[Network]) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in net for net in trusted)


def client_address(peer: str, forwarded_for: str | None, trusted: Sequence[Network]) -> str:
    """The client's address as the access log writes it."""
    if not forwarded_for or not trusted:
        return peer
    address = _address(peer)
    if address is None or not _trusted(address, trusted):
        return peer
    hops = [h for h in (part.strip() for part in forwarded_for.split(",")) if h]
    known = address  # the leftmost address known true so far
    for hop in reversed(hops):
        hop_address = _address(hop)
        if hop_address is None:  # not an address: nothing left of it can be believed
            break
        known = hop_address
        if not _trusted(hop_address, trusted):
            break
    return str(known)
