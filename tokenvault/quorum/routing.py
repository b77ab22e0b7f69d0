"""Which core takes a peer message: the one routing table both drivers use (node.py and the
simulator), so a routing mistake the simulator would find is the production one.

Rules: pure and total — every message type has exactly one destination; an insert reply goes
to the core its insert came from, by the `Origin` the replica echoes (never by the op id, whose
prefixes are for the logs). `answers_from_storage` says whether the destination reads the store
to answer: its replies then wait for durability even when it wrote nothing (persist before send).
"""

from __future__ import annotations

import enum

from tokenvault.quorum.messages import (
    RING_MESSAGE_TYPES,
    Accept,
    Accepted,
    AeKeys,
    AeKeysReply,
    AeSummary,
    AeSummaryReply,
    Decide,
    EpochQuery,
    EpochReport,
    Heartbeat,
    InsertReply,
    InsertRequest,
    Message,
    Origin,
    OwnerInspect,
    OwnerView,
    Prepare,
    Promise,
    ReadReply,
    ReadRequest,
    RecoveryQuery,
    RecoveryReport,
    TransferPage,
    TransferPageReply,
)


class Destination(enum.Enum):
    NONE = "none"  # a heartbeat: a sign of life (and store identities, peer_core.py)
    REPLICA = "replica"
    ACCEPTOR = "acceptor"
    ANTI_ENTROPY = "anti_entropy"
    HINTS = "hints"
    COORDINATOR = "coordinator"
    EPOCH_COORDINATOR = "epoch_coordinator"
    INSPECTION = "inspection"  # an admin view's answer, for whoever asked
    RECOVERY = "recovery"  # a report for a peer recovering a lost store (recovery.py)
    RING = "ring"  # the ring register (ring_register.py); a join request, for the peer core
    TRANSFER = "transfer"  # transfers of moved owners (transfer.py): pages asked and answered
    DROPPING = "dropping"  # a former replica's hand-over before it deletes (dropping.py)

    @property
    def answers_from_storage(self) -> bool:
        return self in _FROM_STORAGE


_FROM_STORAGE = frozenset(
    {
        Destination.REPLICA,
        Destination.ACCEPTOR,
        Destination.ANTI_ENTROPY,
        Destination.RING,
        Destination.TRANSFER,
    }
)
_INSERT_REPLY_DESTINATIONS = {
    Origin.COORDINATOR: Destination.COORDINATOR,
    Origin.HINTS: Destination.HINTS,
    Origin.ANTI_ENTROPY: Destination.ANTI_ENTROPY,
    Origin.TRANSFER: Destination.TRANSFER,
    Origin.DROP: Destination.DROPPING,
}


def route(message: Message) -> Destination:
    if isinstance(message, Heartbeat):
        return Destination.NONE
    if isinstance(message, InsertRequest | ReadRequest | OwnerInspect):
        return Destination.REPLICA
    if isinstance(message, EpochQuery | Prepare | Accept | Decide | RecoveryQuery):
        return Destination.ACCEPTOR
    if isinstance(message, AeSummary | AeKeys | AeSummaryReply | AeKeysReply):
        return Destination.ANTI_ENTROPY
    if isinstance(message, OwnerView):
        return Destination.INSPECTION
    if isinstance(message, RecoveryReport):
        return Destination.RECOVERY
    if isinstance(message, TransferPage | TransferPageReply):
        return Destination.TRANSFER
    if isinstance(message, RING_MESSAGE_TYPES):
        return Destination.RING
    if isinstance(message, InsertReply):
        return _INSERT_REPLY_DESTINATIONS[message.origin]
    if isinstance(message, ReadReply):
        return Destination.COORDINATOR
    assert isinstance(message, EpochReport | Promise | Accepted), type(message).__name__
    return Destination.EPOCH_COORDINATOR
