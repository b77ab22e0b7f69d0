"""API errors and the one place they map to HTTP statuses and JSON bodies.

Rules kept here:
- every error body is ``{"error": {"code": "<snake_case>", "message": "<sentence>"}}``,
  compact JSON encoded as UTF-8 with content type ``application/json``;
- each error class owns its status and code; a message is a sentence for a person and
  never carries secrets (no tokens' plaintext, keys or request bodies);
- ``retry_after_s``, when set, becomes a ``Retry-After`` header (whole seconds); a 405 names the
  methods its path allows in an ``Allow`` header (RFC 9110 §15.5.6); a 401 with a
  ``challenge`` sends it as ``WWW-Authenticate`` (RFC 9110 §11.6.1);
- the responses are messages.py's Response: this module never imports server.py, which
  imports it.
"""

from __future__ import annotations

import json
from typing import ClassVar

from tokenvault.http.messages import Response

__all__ = [
    "AlreadyMember",
    "ApiError",
    "ChangePending",
    "Forbidden",
    "InvalidMember",
    "InvalidRequest",
    "MethodNotAllowed",
    "NotFound",
    "NothingPending",
    "PayloadTooLarge",
    "RingUnavailable",
    "TooFewPeers",
    "Unauthenticated",
    "Unavailable",
    "UnknownMember",
    "error_response",
    "json_response",
]

# One shared encoder: json.dumps() with non-default options builds a new encoder per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_ASCII_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, allow_nan=False)


class ApiError(Exception):
    """Base of all errors a handler may raise to answer with an error body.

    Used directly it means an internal error (500). Subclasses set ``status``, ``code``
    and ``default_message``; any instance may carry a custom ``message``.
    """

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal"
    default_message: ClassVar[str] = "The server hit an unexpected error."
    retry_after_s: int | None = None

    message: str

    def __init__(self, message: str | None = None, *, retry_after_s: int | None = None) -> None:
        self.message = self.default_message if message is None else message
        if retry_after_s is not None:
            if retry_after_s < 0:
                raise ValueError("retry_after_s must be >= 0")
            self.retry_after_s = retry_after_s
        super().__init__(self.message)


class InvalidRequest(ApiError):
    status = 400
    code = "invalid_request"
    default_message = "The request is malformed or invalid."


class Unauthenticated(ApiError):
    status = 401
    code = "unauthenticated"
    default_message = "The request lacks valid credentials."
    challenge: str | None = None  # a WWW-Authenticate value, where a browser should ask


class Forbidden(ApiError):
    status = 403
    code = "forbidden"
    default_message = "The caller is not allowed to do this."


class NotFound(ApiError):
    status = 404
    code = "not_found"
    default_message = "The requested resource does not exist."


class MethodNotAllowed(ApiError):
    status = 405
    code = "method_not_allowed"
    default_message = "The method is not allowed on this resource."

    def __init__(
        self,
        message: str | None = None,
        *,
        allowed_methods: tuple[str, ...] = (),
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        self.allowed_methods = allowed_methods


class PayloadTooLarge(ApiError):
    status = 413
    code = "payload_too_large"
    default_message = "The request body is larger than the server accepts."


class Unavailable(ApiError):
    status = 503
    code = "unavailable"
    default_message = "The service is temporarily unavailable; retry later."
    retry_after_s = 1


# -- membership changes (POST /v1/admin/members; docs/membership.md §2) ------------------------


class InvalidMember(ApiError):
    status = 400
    code = "invalid_member"
    default_message = "The member's id or address is not valid."


class UnknownMember(ApiError):
    status = 404
    code = "unknown_member"
    default_message = "No member of the ring has that id."


class ChangePending(ApiError):
    status = 409
    code = "change_pending"
    default_message = (
        "A membership change is pending: wait for it to finish first (only a replace, or the"
        " remove of a joining member, applies over it)."
    )


class AlreadyMember(ApiError):
    status = 409
    code = "already_member"
    default_message = "That id is already a member of the ring (with another address)."


class TooFewPeers(ApiError):
    status = 409
    code = "too_few_peers"
    default_message = "Fewer active peers than replicas (N) would remain."


class NothingPending(ApiError):
    status = 409
    code = "nothing_pending"
    default_message = "No membership change is pending."


class RingUnavailable(ApiError):
    status = 503
    code = "ring_unavailable"
    default_message = (
        "Too few members answered in time to decide the change; it may still be decided: "
        "read GET /v1/admin/members, or send the same change again (it is idempotent)."
    )
    retry_after_s = 1


def json_response(status: int, payload: object) -> Response:
    """A Response with ``payload`` as compact UTF-8 JSON (``application/json``)."""
    try:
        body = _ENCODER.encode(payload).encode("utf-8")
    except UnicodeEncodeError:
        # Text with a lone surrogate (legal as a JSON escape, not as UTF-8): api.py refuses
        # such bodies, so none should reach an answer; if one does, it goes out escaped again.
        body = _ASCII_ENCODER.encode(payload).encode("ascii")
    return Response(status=status, body=body)


def error_response(error: ApiError) -> Response:
    """The Response for ``error``: its status, the JSON error body, Retry-After if set,
    Allow on a 405 that names its methods, WWW-Authenticate on a 401 with a challenge."""
    body = _ENCODER.encode({"error": {"code": error.code, "message": error.message}})
    headers: tuple[tuple[str, str], ...] = ()
    if error.retry_after_s is not None:
        headers = (("retry-after", str(error.retry_after_s)),)
    if isinstance(error, MethodNotAllowed) and error.allowed_methods:
        headers += (("allow", ", ".join(error.allowed_methods)),)
    elif isinstance(error, Unauthenticated) and error.challenge is not None:
        headers += (("www-authenticate", error.challenge),)
    return Response(status=error.status, body=body.encode("utf-8"), headers=headers)
