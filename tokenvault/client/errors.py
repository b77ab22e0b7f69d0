"""The errors of the client library: one base, TokenvaultError, and a class per API error code.

Rules:
- Every error a Client or AsyncClient raises is a TokenvaultError carrying `status` (the HTTP
  status, None when no peer answered), `code` (the API's snake_case code, or a client-side code:
  `unreachable`, `bad_answer`), `message` (a sentence for a person), `retry_after_s` (from the
  answer's Retry-After, else None) and `peer` (the URL of the peer that answered or failed last).
- The API's codes map to classes in one table, ERROR_CLASSES; a code the table does not know
  maps by status class (4xx ClientError, 5xx ServerError), so a newer peer's codes still raise.
- Messages come from the peer's answer or from the client; never from the request: no key,
  value or token is ever part of an error, its str or its repr.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ERROR_CLASSES",
    "AlreadyMember",
    "BadAnswer",
    "ChangePending",
    "ClientError",
    "Conflict",
    "Forbidden",
    "Internal",
    "InvalidMember",
    "InvalidRequest",
    "MethodNotAllowed",
    "NotFound",
    "NothingPending",
    "PayloadTooLarge",
    "RingUnavailable",
    "ServerError",
    "TokenvaultError",
    "TooFewPeers",
    "Unauthenticated",
    "Unavailable",
    "UnknownMember",
    "Unreachable",
    "error_from_answer",
]


class TokenvaultError(Exception):
    """What went wrong with a request to the cluster."""

    default_code = "error"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        retry_after_s: float | None = None,
        peer: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code or self.default_code
        self.retry_after_s = retry_after_s
        self.peer = peer

    def __str__(self) -> str:
        """The API's error line: `<status> <code>: <message>` (the message alone without an
        answer), then `(retry after N s)` when the answer said so."""
        if self.status is None:
            return self.message
        line = f"{self.status} {self.code}: {self.message}"
        if self.retry_after_s is not None:
            line += f" (retry after {self.retry_after_s:g} s)"
        return line

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status={self.status!r}, code={self.code!r},"
            f" message={self.message!r}, retry_after_s={self.retry_after_s!r}, peer={self.peer!r})"
        )


class ClientError(TokenvaultError):
    """A 4xx answer: the request was refused; sending it again changes nothing."""


class ServerError(TokenvaultError):
    """A 5xx answer."""


class InvalidRequest(ClientError):
    default_code = "invalid_request"


class Unauthenticated(ClientError):
    default_code = "unauthenticated"


class Forbidden(ClientError):
    default_code = "forbidden"


class NotFound(ClientError):
    default_code = "not_found"


class MethodNotAllowed(ClientError):
    default_code = "method_not_allowed"


class PayloadTooLarge(ClientError):
    default_code = "payload_too_large"


class InvalidMember(InvalidRequest):
    """A membership change naming an id or address no member may have."""

    default_code = "invalid_member"


class UnknownMember(NotFound):
    default_code = "unknown_member"


class Conflict(ClientError):
    """409: a membership change that does not apply to the ring as it is."""

    default_code = "conflict"


class ChangePending(Conflict):
    default_code = "change_pending"


class AlreadyMember(Conflict):
    default_code = "already_member"


class TooFewPeers(Conflict):
    default_code = "too_few_peers"


class NothingPending(Conflict):
    default_code = "nothing_pending"


class Internal(ServerError):
    default_code = "internal"


class Unavailable(ServerError):
    """503: nothing was claimed; the client already retried as its RetryPolicy allows."""

    default_code = "unavailable"


class RingUnavailable(Unavailable):
    """503 of a membership change that no majority decided in time: indeterminate (it may
    still be decided); retried like any 503, which is safe (the same change answers
    `already`)."""

    default_code = "ring_unavailable"


class Unreachable(TokenvaultError):
    """No peer answered: connection refused, a timeout, a connection lost before the answer."""

    default_code = "unreachable"


class BadAnswer(TokenvaultError):
    """A peer answered something that is not the API's answer (not JSON, a wrong shape)."""

    default_code = "bad_answer"


ERROR_CLASSES: dict[str, type[TokenvaultError]] = {
    cls.default_code: cls
    for cls in (
        InvalidRequest,
        Unauthenticated,
        Forbidden,
        NotFound,
        MethodNotAllowed,
        PayloadTooLarge,
        Internal,
        Unavailable,
        InvalidMember,
        UnknownMember,
        ChangePending,
        AlreadyMember,
        TooFewPeers,
        NothingPending,
        RingUnavailable,
    )
}


def error_from_answer(
    status: int, body: Any, retry_after: str | None, peer: str, reason: str
) -> TokenvaultError:
    """The error of a non-2xx answer: its body's {"error": {"code", "message"}} when it has one."""
    code, message = "", ""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code, message = str(error.get("code", "")), str(error.get("message", ""))
    cls = ERROR_CLASSES.get(code) or (ServerError if status >= 500 else ClientError)
    return cls(
        message or reason or "no message",
        status=status,
        code=code or reason.lower().replace(" ", "_") or None,
        retry_after_s=parse_retry_after(retry_after),
        peer=peer,
    )


def parse_retry_after(header: str | None) -> float | None:
    """Retry-After in seconds (the API sends a number of seconds); None when absent or a date."""
    if header is None:
        return None
    try:
        seconds = float(header.strip())
    except ValueError:
        return None
    return seconds if 0 <= seconds < float("inf") else None
