"""The errors a request can end in, each one HTTP answer (``http.answer`` sends it), and the one
table that turns what the layers below raise, in their own words, into these answers."""

from __future__ import annotations

from collections.abc import Callable

from relay.storage import idempotency


class HTTPError(Exception):
    """A client-facing failure: a status, a stable code, and a sentence for a person."""

    status = 500
    code = "internal"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class BadRequest(HTTPError):
    status, code = 400, "bad_request"


class Unauthorized(HTTPError):
    """No token, or one that is not valid here. Per RFC 6750 a request without a token gets
    the bare challenge and a bad token ``invalid_token`` with its reason: a fixed phrase of
    ours, never the token nor a library's message."""

    status, code = 401, "unauthorized"

    def __init__(self, message: str, *, missing: bool = False) -> None:
        challenge = 'Bearer realm="ssedge"'
        if not missing:
            reason = "".join(c for c in message if " " <= c <= "~" and c not in '"\\')
            challenge += f', error="invalid_token", error_description="{reason}"'
        super().__init__(message, headers={"www-authenticate": challenge})


class Forbidden(HTTPError):
    """A valid token without the right for this topic (RFC 6750 ``insufficient_scope``)."""

    status, code = 403, "forbidden"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={
            "www-authenticate": 'Bearer realm="ssedge", error="insufficient_scope"'})


class Revoked(HTTPError):
    """A valid token an operator revoked (by its ``jti`` or its ``sub``): refused for good, so
    an EventSource closes (WHATWG) and its page can tell why from the body."""

    status, code = 403, "revoked"

    def __init__(self, message: str, revocation: dict[str, object]) -> None:
        super().__init__(message, headers={
            "www-authenticate": 'Bearer realm="ssedge", error="invalid_token", '
                                'error_description="token revoked"'})
        self.revocation = revocation


class NotFound(HTTPError):
    status, code = 404, "not_found"


class MethodNotAllowed(HTTPError):
    status, code = 405, "method_not_allowed"

    def __init__(self, allowed: str) -> None:
        super().__init__(f"use {allowed}", headers={"allow": allowed})


class PayloadTooLarge(HTTPError):
    status, code = 413, "payload_too_large"


class Unprocessable(HTTPError):
    status, code = 422, "unprocessable"


class Unavailable(HTTPError):
    status, code = 503, "unavailable"

    def __init__(self, message: str, retry_after: int = 1, *, draining: bool = False) -> None:
        headers = {"retry-after": str(retry_after)}
        if draining:
            # the edge retries a request so answered on another node (varnish/default.vcl)
            headers["x-ssedge-draining"] = "1"
        super().__init__(message, headers=headers)


# -- what the layers below say, and the answer each gets ----------------------------------

#: each exception of a lower layer that a request can end in, and the answer made of it
FROM_BELOW: tuple[tuple[type[Exception], Callable[[Exception], HTTPError]], ...] = (
    (idempotency.BadKey, lambda exc: BadRequest(str(exc))),
    (idempotency.KeyConflict, lambda exc: Unprocessable(
        "this Idempotency-Key was first used with other events (or another topic); nothing "
        "was published")),
)


def from_below(exc: Exception) -> HTTPError | None:
    """The answer to a lower layer's exception, None when it is not one a request ends in."""
    for kind, answer in FROM_BELOW:
        if isinstance(exc, kind):
            return answer(exc)
    return None
