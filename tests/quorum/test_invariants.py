"""The invariant helper: a programmer error that `python -O` does not strip."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tokenvault.quorum.invariants import InvariantViolation, require


def test_require_passes_when_the_condition_holds() -> None:
    require(True, "never raised")


def test_require_raises_an_invariant_violation_with_its_message() -> None:
    with pytest.raises(InvariantViolation) as raised:
        require(False, "acceptor would lower its promise")
    assert str(raised.value) == "acceptor would lower its promise"


def test_an_invariant_violation_is_an_assertion_error() -> None:
    """A programmer error, like a failed assert: callers that contain assertion errors
    contain it too."""
    assert issubclass(InvariantViolation, AssertionError)


def test_python_dash_o_does_not_strip_it() -> None:
    script = (
        "from tokenvault.quorum.invariants import InvariantViolation, require\n"
        "assert False, 'stripped under -O'\n"
        "try:\n"
        "    require(False, 'kept')\n"
        "except InvariantViolation as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run(
        [sys.executable, "-O", "-c", script], capture_output=True, text=True, check=True
    )
    assert result.stdout == "kept\n"
