"""Invariants of the cores, asserted where they live (TigerBeetle style), sans-IO.

Rules:
- An `InvariantViolation` is a programmer error: this peer's own code was about to change its
  own state, or to answer, in a way its rules forbid (an acceptor lowering a promise, a replica
  overwriting a mapping that verifies, a coordinator answering success below W). Each core
  checks at the moment it changes its state, so a bug stops where it happens, not in a later
  audit.
- It is never raised for bad input. A peer's message that contradicts our state (a Decide with
  another value than the one decided here, an Accept of a second value at one ballot, a FENCED
  answer to a repair) is the peer's misbehaviour, a bug or a hostile peer elsewhere: the core
  refuses or ignores it with an Event (a log line), it does not assert. Malformed input never
  reaches a core at all: messages validate themselves on creation.
- Not `assert`: `python -O` strips asserts, and these checks must hold in production too. Hot
  per-mapping paths inline `if not ...: raise InvariantViolation(...)` to save a call.
- A message names only the owner, a token prefix, an epoch or slot, a ballot: never a value or
  a key (it reaches logs).
- A core never catches its own violations: containing one (log it at level error, drop the
  input and the Effects of the broken call, so nothing it decided is persisted or sent) is the
  peer core's job (peer_core.py). `raised_at` locates any exception for that line without
  echoing its message.
"""

from __future__ import annotations


class InvariantViolation(AssertionError):
    """A core's own invariant is broken: a bug in this peer, never the peer's input."""


def require(condition: bool, message: str) -> None:
    """Raise InvariantViolation(message) unless condition holds."""
    if not condition:
        raise InvariantViolation(message)


def raised_at(error: BaseException) -> str:
    """``file:line`` where ``error`` was raised (relative to the package when inside it):
    locates a bug without echoing its message, which may quote a value."""
    frame = error.__traceback__
    if frame is None:
        return "?"
    while frame.tb_next is not None:
        frame = frame.tb_next
    return f"{frame.tb_frame.f_code.co_filename.rpartition('tokenvault/')[2]}:{frame.tb_lineno}"
