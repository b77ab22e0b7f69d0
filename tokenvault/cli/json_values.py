"""Reading one value out of a peer's JSON answer: the value when it has the type expected,
else None. A peer's answer is never trusted to have the shape documented (another version, a
proxy in between): the readers of `tokenvault status` see a missing or mistyped field as
unknown, never as an exception.
"""

from __future__ import annotations

from typing import Any


def int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def float_or_none(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def bool_or_none(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def dict_or_none(value: Any) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None


def list_or_empty(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
