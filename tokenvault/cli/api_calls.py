"""A client command's request to the cluster, through the client library: its JSON answer, or
one line that says what went wrong.

Rules:
- Every request goes through tokenvault.client: tried at the target's peers in turn on
  connection errors, timeouts and 503 (bounded attempts, backoff with jitter, Retry-After
  honoured), each attempt with a REQUEST_TIMEOUT_S timeout; the key as a Bearer token; HTTPS
  checked with the target's CA. Whether a request may be sent twice is the library's rule
  (calls.py). A raw request of status.py (`request_json`) makes one attempt per peer of its
  target (a probe of one peer fails as fast as one request), and is retried only if a GET.
- Only a 2xx answer with a JSON body is an answer; anything else (no peer answered, an error
  status, a body that is not JSON) is a CliError with exit code 1, whose line carries the
  status, the API's error code and message, and its Retry-After.
- With -v (target.verbose), every attempt is one line on stderr: which peer answered, or
  which failed and why, and where the next attempt goes.
- `call` prints the answer on stdout as indented JSON, non-ASCII left as is.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from tokenvault.cli.exits import EXIT_OK, CliError, print_error
from tokenvault.cli.target import Target
from tokenvault.client import AttemptReport, Call, Client, Retry, RetryPolicy, TokenvaultError
from tokenvault.client.failover import ATTEMPTS_MAX_DEFAULT

REQUEST_TIMEOUT_S = 10.0


def call(target: Target, request: Call, transport: httpx.BaseTransport | None) -> int:
    """Sends one request, prints its answer; the exit code."""
    print_answer(send(target, request, transport))
    return EXIT_OK


def print_answer(answer: Any) -> None:
    print(json.dumps(answer, indent=2, ensure_ascii=False))


def send(
    target: Target,
    request: Call,
    transport: httpx.BaseTransport | None,
    *,
    attempts_max: int = ATTEMPTS_MAX_DEFAULT,
) -> Any:
    """The JSON answer of a 2xx response; CliError for anything else."""
    with Client(
        target.urls,
        target.key,
        verify=target.verify(),
        policy=RetryPolicy(attempts_max=attempts_max, timeout_s=REQUEST_TIMEOUT_S),
        transport=transport,
        on_attempt=_print_attempt if target.verbose else None,
    ) as client:
        try:
            return client.send(request)
        except TokenvaultError as error:
            raise CliError(str(error)) from None


def request_json(
    target: Target,
    method: str,
    path: str,
    body: bytes | None,
    transport: httpx.BaseTransport | None,
) -> Any:
    """The JSON answer of a 2xx response; CliError for anything else. One attempt per peer of
    the target: a probe of one peer (`Target.at`) is one attempt, as quick to fail as before."""
    retry = Retry.ALWAYS if method == "GET" else Retry.IF_UNSENT
    call = Call(method, path, body, retry)
    return send(target, call, transport, attempts_max=len(target.urls))


def _print_attempt(report: AttemptReport) -> None:
    error, peer = report.error, report.peer
    if error is None:
        print_error(f"attempt {report.attempt}: {peer} answered")
        return
    if error.status is not None and error.status != 503:
        print_error(f"attempt {report.attempt}: {peer} answered {error.status} {error.code}")
        return
    what = str(error) if error.status is None else f"{peer}: {error}"  # a message names its peer
    follows = (
        "no more attempts"
        if report.next_peer is None
        else f"next attempt: {report.next_peer} in {report.next_delay_s:.1f} s"
    )
    print_error(f"attempt {report.attempt}: {what}; {follows}")
