"""The workloads of `tokenvault bench` and the etcd operation each is compared with.

Rules:
- A workload is a request shape, a batch size (keys per request) and whether its connections go
  to one endpoint or are spread over every member, as a load balancer would.
- Each tokenvault shape has one etcd counterpart: tokenize is a put-if-absent transaction of the
  same number of fresh keys, detokenize a linearizable read of the same number of existing keys.
- A shape names its wrk script (package data in lua/) and the URL path it posts to; the Python
  fallback builds the same requests from the same names.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Shape(enum.Enum):
    TOKENVAULT_TOKENIZE = "tv_tokenize"
    TOKENVAULT_DETOKENIZE = "tv_detokenize"
    ETCD_PUT_IF_ABSENT = "etcd_txn"
    ETCD_RANGE = "etcd_range"

    @property
    def script_name(self) -> str:
        return f"{self.value}.lua"

    def path(self, batch: int) -> str:
        """The URL path its requests go to."""
        if self is Shape.TOKENVAULT_TOKENIZE:
            return "/v1/tokenize"
        if self is Shape.TOKENVAULT_DETOKENIZE:
            return "/v1/detokenize"
        if self is Shape.ETCD_RANGE and batch == 1:
            return "/v3/kv/range"
        return "/v3/kv/txn"  # put-if-absent, and a batch of range requests


@dataclass(frozen=True, slots=True, kw_only=True)
class Workload:
    name: str
    tokenvault_shape: Shape
    etcd_shape: Shape
    batch: int
    spread: bool

    @property
    def needs_stored_keys(self) -> bool:
        """Reads need keys made before they start: tokens for tokenvault, keys for etcd."""
        return self.tokenvault_shape is Shape.TOKENVAULT_DETOKENIZE

    @property
    def etcd_operation(self) -> str:
        verb = "put-if-absent" if self.etcd_shape is Shape.ETCD_PUT_IF_ABSENT else "range"
        return f"{verb}-{self.batch}"


def _workload(name: str, batch: int, *, read: bool = False, spread: bool = False) -> Workload:
    return Workload(
        name=name,
        tokenvault_shape=Shape.TOKENVAULT_DETOKENIZE if read else Shape.TOKENVAULT_TOKENIZE,
        etcd_shape=Shape.ETCD_RANGE if read else Shape.ETCD_PUT_IF_ABSENT,
        batch=batch,
        spread=spread,
    )


# In the order they run and are shown: the rows of issue 12's table.
WORKLOADS: tuple[Workload, ...] = (
    _workload("tokenize-1", 1),
    _workload("tokenize-100", 100),
    _workload("detokenize-1", 1, read=True),
    _workload("detokenize-100", 100, read=True),
    _workload("spread-tokenize-1", 1, spread=True),
    _workload("spread-tokenize-100", 100, spread=True),
)
WORKLOAD_NAMES = tuple(workload.name for workload in WORKLOADS)


def parse_workloads(text: str) -> tuple[Workload, ...]:
    """The workloads named in a comma-separated list, in their running order; ValueError names
    an unknown one."""
    names = {name.strip() for name in text.split(",") if name.strip()}
    unknown = sorted(names - set(WORKLOAD_NAMES))
    if unknown:
        raise ValueError(
            f"unknown workload {', '.join(unknown)} (choose from {', '.join(WORKLOAD_NAMES)})"
        )
    if not names:
        raise ValueError("no workload named")
    return tuple(workload for workload in WORKLOADS if workload.name in names)
