"""The record of what `tokenvault status` found: the peers, the owners' replicas, the problems
and the exit code, as frozen dataclasses. The table and --json are both rendered from one
ClusterStatus (status_verdict builds it), so they cannot disagree; `to_json` is the --json
document of docs/api.md.

Exit codes (docs/api.md, `status`): EXIT_HEALTHY without problems; else the first of
EXIT_CONFIGURATION, EXIT_PEERS, EXIT_NOT_CONVERGED that a problem has (EXIT_PRECEDENCE). Notes
(peers at different ring versions) are said and never change the exit code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

EXIT_HEALTHY = 0
EXIT_PEERS = 3  # a peer unreachable, down, suspect, recovering or not ready
EXIT_CONFIGURATION = 4  # the peers read different cluster configurations
EXIT_NOT_CONVERGED = 5  # an owner's replicas differ, or could not all be compared
EXIT_PRECEDENCE = (EXIT_CONFIGURATION, EXIT_PEERS, EXIT_NOT_CONVERGED)

STATUS_FORMAT = 1  # the version of the --json document; raised when a field changes meaning


@dataclass(frozen=True, slots=True)
class RingSummary:
    seen_by: str  # the peer whose ring answer came first
    version: str | None
    replicas: int | None
    write_quorum: int | None
    read_quorum: int | None


@dataclass(frozen=True, slots=True)
class HintsHeld:
    target: str
    hints: int


@dataclass(frozen=True, slots=True)
class LastPass:
    outcome: str
    finished_s_ago: float


@dataclass(frozen=True, slots=True)
class AntiEntropy:
    enabled: bool
    last_pass: LastPass | None  # None: no pass finished since the peer started


@dataclass(frozen=True, slots=True)
class PeerStatus:
    id: str
    address: str
    state: str  # up / suspect / down / unreachable / recovering
    for_s: float | None  # how long the peer that holds that state has held it
    views: dict[str, str]  # peer id -> the state that peer (one that answered) holds of this one
    answered: bool
    error: str | None  # why it did not answer, when it did not
    serving: str | None  # its own state: "serving" or "recovering"
    ready: bool | None
    readiness: str | None  # "serving" or why it is not ready (disk_full, ...)
    recovery: dict[str, Any] | None  # how far a recovery went, as the peer says
    uptime_s: float | None
    cluster_fingerprint: str | None
    ring_version: str | None
    hints_held: list[HintsHeld] | None  # None without its admin view
    anti_entropy: AntiEntropy | None


@dataclass(frozen=True, slots=True)
class ReplicaStatus:
    peer: str
    answered: bool
    active_epoch: int | None
    active_epoch_id: str | None
    token_count: int | None
    digest: str | None
    hints_for_it: int | None  # hints the peers that answered hold for this peer, all owners


@dataclass(frozen=True, slots=True)
class OwnerStatus:
    owner: str
    converged: bool | None  # None: the inspection did not answer; filling replicas left out
    epochs_agree: bool | None
    inspected_by: str | None
    error: str | None
    replicas: list[ReplicaStatus]
    filling: list[str]  # replicas a transfer into them still fills (a membership change)


@dataclass(frozen=True, slots=True)
class MemberEntry:
    id: str
    address: str
    state: str  # active / joining / leaving


@dataclass(frozen=True, slots=True)
class TransferStatus:
    """One transfer, as the peer it fills (its target) answered GET /v1/admin/members."""

    owner: str
    target: str
    from_replicas: list[str]  # the owner's old replica set
    to_replicas: list[str]  # its new one
    version: int | None  # the ring version whose change it belongs to
    state: str  # epochs / copying / verifying / committed
    source: str | None  # the old replica read now
    mappings_moved: int | None
    bytes_moved: int | None
    rate_bytes_s: float | None
    eta_s: float | None
    done_fraction: float | None  # estimated: moved / (moved + rate * eta); 1.0 once committed


@dataclass(frozen=True, slots=True)
class MembershipStatus:
    """The ring's membership, from every peer's GET /v1/admin/members (admin key)."""

    version: int  # the highest version a peer answered
    stable: bool  # at that version: every member active
    members: list[MemberEntry]  # at that version
    versions: dict[str, int | None]  # ring peer id -> the version it is at (None: no answer)
    transfers: list[TransferStatus]  # into every peer that answered, by owner then target


@dataclass(frozen=True, slots=True)
class Note:
    """Something worth saying that is no problem: it never changes the exit code."""

    subject: str
    message: str


@dataclass(frozen=True, slots=True)
class ConfigurationGroup:
    kind: str  # "cluster_fingerprint" (admin views), or "ring_version" with an owner key
    read: str  # the fingerprint or ring version these peers read
    peers: list[str]

    def shown(self) -> str:
        return self.read[:8] if self.kind == "cluster_fingerprint" else f"ring {self.read}"


@dataclass(frozen=True, slots=True)
class Problem:
    exit_code: int
    subject: str  # a peer id, an owner, or "configuration"
    message: str


@dataclass(frozen=True, slots=True)
class ClusterStatus:
    ring: RingSummary
    admin: bool  # the admin views were seen (else an owner key: the ring only)
    peers: list[PeerStatus]
    configuration_differs: bool
    configurations: list[ConfigurationGroup]
    owners: list[OwnerStatus]
    membership: MembershipStatus | None  # None with an owner key, or when no peer answered it
    problems: list[Problem]
    notes: list[Note]
    exit_code: int
    elapsed_s: float

    def to_json(self) -> dict[str, Any]:
        return {"format": STATUS_FORMAT, "healthy": self.exit_code == EXIT_HEALTHY, **asdict(self)}
