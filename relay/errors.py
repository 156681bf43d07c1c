"""The errors a request can end in, each mapped to one HTTP answer in ``http.error_response``."""

from __future__ import annotations


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
    status, code = 401, "unauthorized"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"www-authenticate": 'Bearer realm="ssedge"'})


class Forbidden(HTTPError):
    status, code = 403, "forbidden"


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
