"""The HTTP request a handler receives and the response it returns: plain frozen records.

Rules kept here:
- no I/O and no HTTP framing: server.py parses requests into these and encodes responses from
  them; errors.py builds its error responses as these;
- this module imports nothing of the project, so that both may import it and neither has to
  import the other's module (server.py imports errors.py, never the reverse).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

__all__ = ["Handler", "Request", "Response"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    method: str  # "GET", "POST", ...
    path: str  # percent-decoded target path without query, e.g. "/v1/tokens/tok_abc"
    query: str  # raw query string ("" if none)
    headers: Mapping[str, str]  # lower-cased names, latin-1; repeats joined with ", "
    body: bytes
    client: str  # "host:port" of the peer, for logs
    # The peer id of the client's TLS certificate, verified against the cluster CA; None
    # without TLS or without a client certificate (every public client).
    peer_certificate_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


Handler = Callable[[Request], Awaitable[Response]]
