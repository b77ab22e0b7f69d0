"""What one simulated run is: the seed and the shape of the cluster and of its workload.

Rules:
- A run is a pure function of its SimConfig: the same config gives the same digest.
- Only seed, peer_count, owner_count, operation_count and membership_changes (and
  require_full_convergence, on by default: `--no-full-convergence` turns it off) are on the
  command line; every other field keeps its default in a replay, so a replay command with
  those flags reproduces the run exactly.
- Membership changes (docs/simulation.md, membership faults) come from generators of their own:
  with `membership_changes = 0` (the default) a run is exactly what it was before they existed.
  `require_finish` (on) holds a run to a finished, drained ring (`owners-on-final-ring`).
- The fault schedule depends only on the seed, the peers and faults_end_s, never on the
  workload: replaying with fewer operations keeps the same faults (that is how a failure is
  shrunk).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tokenvault.quorum.peer_core import PeerLimits
from tokenvault.quorum.quorum_config import QuorumConfig, quorum_problem


@dataclass(frozen=True, slots=True, kw_only=True)
class SimConfig:
    seed: int
    peer_count: int = 5
    owner_count: int = 3
    operation_count: int = 200  # client operations (a retry is another attempt of the same one)
    clients_per_owner: int = 2
    replica_count: int = 3  # N
    write_quorum: int = 2  # W
    read_quorum: int = 2  # R
    vnodes_per_peer: int = 8
    faults_end_s: float = 30.0  # faults stop here; the network heals and liveness follows
    attempts_max: int = 3  # attempts per client operation, the first included
    client_timeout_s: float = 6.0  # a client gives up on an attempt (longer than an epoch op's)
    client_latency_s: float = 0.001  # one way, client <-> peer
    peer_limits: PeerLimits = field(default_factory=PeerLimits)  # every peer core's, as a node's
    run_s_max: float = 600.0  # virtual seconds: a run whose clients are not done by then is stuck
    events_max: int = 5_000_000
    # All N replicas of every owner identical (mappings, merkle roots, decided epoch) and no hint
    # pending, within convergence_bound_s of the start of the liveness phase.
    require_full_convergence: bool = True
    convergence_bound_s: float = 60.0
    # Joins, removes and replaces drawn from the seed (membership_faults.py), and the spare
    # peers (started empty, named after the bootstrap's) that joins and replaces bring in.
    membership_changes: int = 0
    spare_count: int = 2
    # Every change reached its finish version and was drained by the end (owners-on-final-ring).
    require_finish: bool = True

    def __post_init__(self) -> None:
        problem = quorum_problem(self.replica_count, self.write_quorum, self.read_quorum)
        if problem:
            raise ValueError(problem)
        if self.peer_count < self.replica_count:
            raise ValueError("peers must be at least replicas (N)")
        if self.owner_count < 1 or self.clients_per_owner < 1:
            raise ValueError("a run needs at least one owner and one client per owner")
        if self.operation_count < 0 or self.attempts_max < 1:
            raise ValueError("operations must be >= 0 and attempts >= 1")
        if not 0.0 < self.faults_end_s < self.run_s_max:
            raise ValueError("faults must end within the run")
        if self.convergence_bound_s <= 0.0:
            raise ValueError("the convergence bound must be positive")
        if self.membership_changes < 0 or self.spare_count < 0:
            raise ValueError("membership changes and spare peers must be >= 0")

    @property
    def quorum(self) -> QuorumConfig:
        return QuorumConfig(
            replica_count=self.replica_count,
            write_quorum=self.write_quorum,
            read_quorum=self.read_quorum,
        )

    @property
    def peer_ids(self) -> tuple[str, ...]:
        return tuple(f"p{index}" for index in range(1, self.peer_count + 1))

    @property
    def spare_ids(self) -> tuple[str, ...]:
        """Peers outside the bootstrap that joins and replaces start (when there are changes)."""
        if not self.membership_changes:
            return ()
        first = self.peer_count + 1
        return tuple(f"p{index}" for index in range(first, first + self.spare_count))

    @property
    def owner_ids(self) -> tuple[str, ...]:
        return tuple(f"owner-{index}" for index in range(self.owner_count))

    def replay_command(self) -> str:
        command = (
            f"tokenvault sim --seed {self.seed} --peers {self.peer_count}"
            f" --owners {self.owner_count} --ops {self.operation_count}"
        )
        if self.membership_changes:
            command += f" --membership {self.membership_changes}"
        if not self.require_full_convergence:
            command += " --no-full-convergence"
        return command
