"""Exceptions shared by the API and the gateway.

    DmsError
     ├── BadRequest            400 bad_request
     ├── Unauthorized          401 unauthorized
     ├── Forbidden             403 forbidden
     ├── NotFound              404 not_found
     ├── Conflict              409 conflict
     │    ├── InvalidTransition  409 invalid_transition
     │    └── VersionConflict    409 version_conflict
     ├── PayloadTooLarge       413 payload_too_large
     ├── UnsupportedMediaType  415 unsupported_media_type
     ├── ValidationFailed      422 validation_error
     ├── RateLimited           429 rate_limited
     └── Unavailable           503 unavailable
"""

from __future__ import annotations

from typing import Any


class DmsError(Exception):
    """Base of every error that maps to a contract error code."""

    status = 500
    code = "internal"
    # What a 429 or 503 tells the client to wait before retrying.
    retry_after_s = 1

    def __init__(self, message: str, *, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def body(self) -> dict[str, Any]:
        """The contract's error body; the same from the REST API and the gateway's handshake."""
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}

    def headers(self) -> dict[str, str]:
        """The HTTP headers the status calls for: when to retry a 429/503, how to authenticate a 401."""
        if self.status in (429, 503):
            return {"Retry-After": str(self.retry_after_s)}
        if self.status == 401:
            return {"WWW-Authenticate": "Bearer"}
        return {}


class BadRequest(DmsError):
    status, code = 400, "bad_request"


class Unauthorized(DmsError):
    status, code = 401, "unauthorized"


class Forbidden(DmsError):
    status, code = 403, "forbidden"


class NotFound(DmsError):
    status, code = 404, "not_found"


class Conflict(DmsError):
    status, code = 409, "conflict"


class InvalidTransition(Conflict):
    code = "invalid_transition"


class VersionConflict(Conflict):
    code = "version_conflict"


class MethodNotAllowed(DmsError):
    status, code = 405, "method_not_allowed"

    def __init__(self, message: str, *, allow: tuple[str, ...]) -> None:
        super().__init__(message)
        self.allow = allow

    def headers(self) -> dict[str, str]:
        return {"Allow": ", ".join(self.allow)}


class PayloadTooLarge(DmsError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(DmsError):
    status, code = 415, "unsupported_media_type"


class ValidationFailed(DmsError):
    status, code = 422, "validation_error"


class RateLimited(DmsError):
    status, code = 429, "rate_limited"

    def __init__(self, message: str, *, retry_after_s: int, details: Any = None) -> None:
        super().__init__(message, details=details)
        self.retry_after_s = retry_after_s


class Unavailable(DmsError):
    status, code = 503, "unavailable"
