"""One request of a client command to a peer's API: its JSON answer, or one line that says what
went wrong.

Rules:
- Every request has a REQUEST_TIMEOUT_S timeout and sends the key as a Bearer token; a body,
  when there is one, is sent as application/json. HTTPS is checked with the target's CA.
- Only a 2xx answer with a JSON body is an answer; anything else (no connection, no answer in
  time, an error status, a body that is not JSON) is a CliError with exit code 1. An error
  answer's line carries its status, the API's error code and message, and its Retry-After.
- `call` prints the answer on stdout as indented JSON, non-ASCII left as is.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from tokenvault.cli.exits import EXIT_OK, CliError
from tokenvault.cli.target import Target

REQUEST_TIMEOUT_S = 10.0


def call(
    target: Target,
    method: str,
    path: str,
    body: bytes | None,
    transport: httpx.BaseTransport | None,
) -> int:
    """Sends one request, prints its answer; the exit code."""
    answer = request_json(target, method, path, body, transport)
    print(json.dumps(answer, indent=2, ensure_ascii=False))
    return EXIT_OK


def request_json(
    target: Target,
    method: str,
    path: str,
    body: bytes | None,
    transport: httpx.BaseTransport | None,
) -> Any:
    """The JSON answer of a 2xx response; CliError for anything else."""
    headers = {"Authorization": f"Bearer {target.key}", "Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    url = target.url + path
    try:
        with httpx.Client(
            timeout=REQUEST_TIMEOUT_S, transport=transport, verify=target.verify()
        ) as client:
            response = client.request(method, url, content=body, headers=headers)
    except (httpx.ConnectError, httpx.ConnectTimeout) as error:
        reason = str(error) or type(error).__name__
        raise CliError(f"cannot connect to {target.url}: {reason}") from error
    except httpx.TimeoutException as error:
        raise CliError(f"no answer from {target.url} within {REQUEST_TIMEOUT_S:.0f} s") from error
    except (httpx.HTTPError, httpx.InvalidURL) as error:
        raise CliError(f"request to {target.url} failed: {error}") from error
    if not response.is_success:
        raise CliError(_error_line(response))
    try:
        return response.json()
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CliError(f"{target.url} answered {response.status_code} without JSON") from error


def _error_line(response: httpx.Response) -> str:
    """One line for an error answer: its status, code and message (the API's error shape)."""
    code, message = "", ""
    try:
        error = response.json().get("error", {})
        code, message = str(error.get("code", "")), str(error.get("message", ""))
    except (AttributeError, UnicodeDecodeError, json.JSONDecodeError):
        pass
    line = f"{response.status_code} {code or response.reason_phrase}"
    if message:
        line += f": {message}"
    retry_after = response.headers.get("Retry-After")
    if retry_after:
        line += f" (retry after {retry_after} s)"
    return line
