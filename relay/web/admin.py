"""The operator API's credential: ``Authorization: Bearer <SSEDGE_ADMIN_TOKEN>``.

A setting of its own, apart from the publish token and the JWT keys: whoever may publish may
not, by that, revoke readers or drain relays. Without the setting the operator API is off:
every path under ``PREFIX`` is 404, as if it did not exist. It is served on each relay's own
port only; the public edge never passes ``PREFIX`` (docs/EDGE.md).
"""

from __future__ import annotations

import hmac

from relay.web.auth import bearer
from relay.web.errors import NotFound, Unauthorized
from relay.web.http import Request

#: every operator endpoint is under this path: what the edge refuses
PREFIX = "/v1/admin/"
PARTS = ["v1", "admin"]


class AdminAuth:
    def __init__(self, token: str) -> None:
        self._token = token.encode()

    @property
    def enabled(self) -> bool:
        return bool(self._token)

    def check(self, request: Request) -> None:
        """Pass, or 404 (the API is off), or 401 (no credential, or not this one)."""
        if not self._token:
            raise NotFound(f"no such resource: {request.path}")
        token = bearer(request)
        if token is None:
            raise Unauthorized("the operator API needs Authorization: Bearer <admin token>",
                               missing=True)
        if not hmac.compare_digest(token.encode(), self._token):
            raise Unauthorized("wrong admin token")
