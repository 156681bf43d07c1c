"""What a client of a deployment is told by its environment, read in one place: where the
deployment is (``SSEDGE_URL``), which CA its TLS edge is checked against (``SSEDGE_CA_FILE``)
and the tokens (``SSEDGE_PUBLISH_TOKEN``, ``SSEDGE_SUBSCRIBE_TOKEN``). A flag given on the
command line wins over the variable; in a checkout, the local stack's files under ``.ssedge/``
come last (``ssedge up`` writes them: its token, its own CA).

The servers' settings are ``relay.settings``; these are the other side's: ``ssedge publish``,
``tail``, ``load``, ``drill`` and the HTTP client they share (``relay.web.client``).
"""

from __future__ import annotations

import os
from pathlib import Path

#: the local stack's edge (``make up``)
DEFAULT_URL = "http://127.0.0.1:8080"
#: what ``ssedge up`` writes for its clients, relative to the checkout it runs in
STACK_TOKEN = Path(".ssedge/publish-token")
STACK_CA = Path(".ssedge/tls/ca.pem")


def base_url(explicit: str | None = None) -> str:
    """--url, else ``SSEDGE_URL``, else the local stack's edge; no trailing slash."""
    return (explicit or os.environ.get("SSEDGE_URL") or DEFAULT_URL).rstrip("/")


def publish_token(explicit: str | None = None, *, stack: bool = True) -> str:
    """--token, else ``SSEDGE_PUBLISH_TOKEN``, else (``stack``) the local stack's token file;
    empty when there is none."""
    if explicit:
        return explicit
    if os.environ.get("SSEDGE_PUBLISH_TOKEN"):
        return os.environ["SSEDGE_PUBLISH_TOKEN"]
    if stack and STACK_TOKEN.is_file():
        return STACK_TOKEN.read_text().strip()
    return ""


def subscribe_token(explicit: str | None = None) -> str | None:
    """--subscribe-token, else ``SSEDGE_SUBSCRIBE_TOKEN``; None: none given."""
    return explicit or os.environ.get("SSEDGE_SUBSCRIBE_TOKEN") or None


def ca_file(explicit: str | None = None, host: str = "") -> str | None:
    """--ca, else ``SSEDGE_CA_FILE``, else, for the local stack's own TLS edge
    (``https://127.0.0.1``, ``https://localhost`` as ``host``), its CA; None: the system's."""
    if explicit or os.environ.get("SSEDGE_CA_FILE"):
        return explicit or os.environ["SSEDGE_CA_FILE"]
    local = host.startswith(("https://127.0.0.1", "https://localhost"))
    return str(STACK_CA) if local and STACK_CA.is_file() else None


#: a relay of the local stack: the operator API is on the relays' own ports, never the edge's
DEFAULT_ADMIN_URL = "http://127.0.0.1:8101"


def admin_url(explicit: str | None = None) -> str:
    """--url, else ``SSEDGE_ADMIN_URL``, else the local stack's first relay; no trailing slash.
    Any relay of the deployment answers for all of it (but ``drain``, which is per node)."""
    return (explicit or os.environ.get("SSEDGE_ADMIN_URL") or DEFAULT_ADMIN_URL).rstrip("/")


def admin_token(explicit: str | None = None) -> str:
    """--admin-token, else ``SSEDGE_ADMIN_TOKEN`` (in a checkout, the local stack's
    ``.ssedge/env`` sets it); empty when there is none."""
    return explicit or os.environ.get("SSEDGE_ADMIN_TOKEN", "")
