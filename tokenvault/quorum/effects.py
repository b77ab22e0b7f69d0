"""What a core asks its driver to do after one input.

Theory of operation (as etcd's raft `Ready`): a core takes one input — a client request, a peer
message, a timer firing — and returns `Effects`. The driver must, in this order:

1. stage `writes` in the store before it gives the core any other input (so the core's next read
   sees them), and make them durable (fsync) before step 3;
2. arm `timers`;
3. send `messages` and deliver `replies`.

An acknowledgement a peer sends therefore always means "fsync'd" (persist before send).
`events` are the state changes to log and count; they never carry values or keys.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from tokenvault.quorum.messages import Envelope, EpochValue, Mapping
from tokenvault.ring.membership import Membership

Write = tuple[bytes, bytes | None]


class TimerKind(enum.Enum):
    RESEND = "resend"  # resend to replicas that have not answered yet
    DEADLINE = "deadline"  # give up on an operation
    BACKOFF = "backoff"  # a preempted Paxos round tries again with a higher ballot
    HEDGE = "hedge"  # a read still undecided asks the replicas it has not asked yet
    THROTTLE = "throttle"  # transfers may ask pages again: the throttle's budget is back


@dataclass(frozen=True, slots=True, kw_only=True)
class Timer:
    kind: TimerKind
    op_id: str
    due: float  # virtual or monotonic seconds, the same clock as every `now`


class Failure(enum.Enum):
    """Why an operation failed: each maps to one documented HTTP error in one place."""

    QUORUM_TIMEOUT = "quorum_timeout"  # too few replicas answered in time
    INTEGRITY_CONFLICT = "integrity_conflict"  # replicas hold different values for a token
    OVERLOADED = "overloaded"  # too many operations in flight on this coordinator
    FENCED = "fenced"  # a replica holds a later epoch for the owner: learn it and retry
    CONTENDED = "contended"  # Paxos rounds kept being preempted until the attempts ran out
    EPOCHS_EXHAUSTED = "epochs_exhausted"  # the owner is at EPOCH_MAX: no slot to rotate into
    STORE_FAILED = "store_failed"  # this peer's store failed to stage or sync what it needed
    INTERNAL_ERROR = "internal_error"  # a core of this peer raised: the input was dropped
    RECOVERING = "recovering"  # this peer is recovering a lost store: it coordinates nothing
    NOT_A_MEMBER = "not_a_member"  # this peer is no member of the ring (yet, or any more)


@dataclass(frozen=True, slots=True, kw_only=True)
class WriteDone:
    """A client write finished: every mapping durable on W replicas, or failed claiming nothing."""

    op_id: str
    owner: str
    failure: Failure | None


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadDone:
    """A client read finished; `mappings` follows the order of the tokens asked."""

    op_id: str
    owner: str
    mappings: tuple[Mapping | None, ...]
    failure: Failure | None


@dataclass(frozen=True, slots=True, kw_only=True)
class EpochDone:
    """An epoch operation finished: the owner's active epoch as learned, and for a rotate
    whether this request's own value was the one chosen."""

    op_id: str
    owner: str
    value: EpochValue | None
    rotated: bool
    failure: Failure | None


class RingOutcome(enum.Enum):
    """How a membership change (ring_register.py) ended."""

    CHANGED = "changed"  # this operation's membership was chosen
    ALREADY = "already"  # the learned membership already holds the change
    REFUSED = "refused"  # the change does not apply (`reason`: ChangeRefused's code)
    TIMEOUT = "timeout"  # no majority of the voters answered in time
    CONTENDED = "contended"  # the attempts ran out


@dataclass(frozen=True, slots=True, kw_only=True)
class RingDone:
    """A membership change finished; `membership` is the one learned when it ended."""

    op_id: str
    outcome: RingOutcome
    membership: Membership
    reason: str = ""
    failure: Failure | None = None  # always None: `outcome` says how it ended


ClientReply = WriteDone | ReadDone | EpochDone | RingDone


# The fields every log line has of its own: an event's details may not reuse these names.
RESERVED_LOG_FIELDS = frozenset({"ts", "level", "peer", "event", "owner", "epoch", "request_id"})


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """One state change, for one JSON log line and one counter. Never a value or a key."""

    name: str
    owner: str = ""
    request_id: str = ""
    # The epoch the change is about (of the mappings, the Paxos slot); 0 where a core has no
    # single one, and the driver logs the owner's active epoch instead.
    epoch: int = 0
    details: tuple[tuple[str, str | int], ...] = ()

    def __post_init__(self) -> None:
        reserved = RESERVED_LOG_FIELDS.intersection(name for name, _ in self.details)
        assert not reserved, f"event details may not be named {sorted(reserved)}"


@dataclass(slots=True)
class Effects:
    writes: list[Write] = field(default_factory=list)
    timers: list[Timer] = field(default_factory=list)
    messages: list[Envelope] = field(default_factory=list)
    replies: list[ClientReply] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    def extend(self, other: Effects) -> None:
        self.writes.extend(other.writes)
        self.timers.extend(other.timers)
        self.messages.extend(other.messages)
        self.replies.extend(other.replies)
        self.events.extend(other.events)

    def is_empty(self) -> bool:
        return not (self.writes or self.timers or self.messages or self.replies or self.events)
