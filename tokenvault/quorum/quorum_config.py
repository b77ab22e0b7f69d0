"""Quorum sizes and the arithmetic on them, pure and small (checked against a dumb reference).

Rules: N replicas, W durable write acknowledgements, R read answers. A configuration is refused
unless 1 <= W <= N, 1 <= R <= N, W + R > N (every read quorum meets every write quorum) and
W > N / 2 (two write quorums always meet, so two coordinators cannot both think they won alone).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class QuorumConfig:
    replica_count: int
    write_quorum: int
    read_quorum: int

    def __post_init__(self) -> None:
        problem = quorum_problem(self.replica_count, self.write_quorum, self.read_quorum)
        if problem:
            raise ValueError(problem)


def quorum_problem(replica_count: int, write_quorum: int, read_quorum: int) -> str:
    """Why (N, W, R) is unsafe, as a sentence; "" when it is safe."""
    if replica_count < 1:
        return "replicas (N) must be at least 1"
    if not 1 <= write_quorum <= replica_count:
        return "write_quorum (W) must be between 1 and replicas (N)"
    if not 1 <= read_quorum <= replica_count:
        return "read_quorum (R) must be between 1 and replicas (N)"
    if write_quorum + read_quorum <= replica_count:
        return "write_quorum + read_quorum must exceed replicas (W + R > N)"
    if 2 * write_quorum <= replica_count:
        return "write_quorum must be a majority of replicas (W > N / 2)"
    return ""


def majority(replica_count: int) -> int:
    return replica_count // 2 + 1
