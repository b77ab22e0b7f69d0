"""The HTTP request a handler receives and the response it returns: plain frozen records, and
the gate that admits a request from its head before its body is read.

Rules kept here:
- no I/O and no HTTP framing: server.py parses requests into these and encodes responses from
  them; errors.py builds its error responses as these;
- admission comes before reading: the server hands a request's head (RequestHead) to its
  Gate, which answers with an Admission (how many body bytes it may send and which Handler
  answers it) or with a Response that refuses it; only an admitted request's body is read;
- this module imports nothing of the project, so that both may import it and neither has to
  import the other's module (server.py imports errors.py, never the reverse).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["Admission", "Gate", "Handler", "Request", "RequestHead", "Response"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestHead:
    """What a request says before its body: all that admission may look at."""

    method: str  # "GET", "POST", ...
    path: str  # percent-decoded target path without query, e.g. "/v1/tokens/tok_abc"
    query: str  # raw query string ("" if none)
    headers: Mapping[str, str]  # lower-cased names, latin-1; repeats joined with ", "
    client: str  # "host:port" of the peer, for logs
    # The peer id of the client's TLS certificate, verified against the cluster CA; None
    # without TLS or without a client certificate (every public client).
    peer_certificate_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    """An admitted request with its whole body (at most the body size its Admission granted)."""

    head: RequestHead
    body: bytes

    @property
    def method(self) -> str:
        return self.head.method

    @property
    def path(self) -> str:
        return self.head.path

    @property
    def query(self) -> str:
        return self.head.query

    @property
    def headers(self) -> Mapping[str, str]:
        return self.head.headers

    @property
    def client(self) -> str:
        return self.head.client

    @property
    def peer_certificate_id(self) -> str | None:
        return self.head.peer_certificate_id


@dataclass(frozen=True, slots=True, kw_only=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True, slots=True, kw_only=True)
class Admission:
    """A gate's yes: the body may be read, up to ``body_bytes_max``, then ``handler`` answers.

    ``handler`` is usually bound to what the gate learnt from the head (route, principal), so
    that nothing decided at admission is decided again.
    """

    body_bytes_max: int
    handler: Handler


@runtime_checkable
class Gate(Protocol):
    def admit(self, head: RequestHead) -> Admission | Response:
        """Decide from the head alone, without I/O: admit, or refuse with this response.

        A refusal is sent at once; the request's body is never read and the connection then
        closes (unless the request has no body).
        """
        ...
