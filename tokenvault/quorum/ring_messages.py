"""Messages of the ring register (ring_register.py), declared once for the core and the wire.

Rules (as messages.py's): every message is one-way, frozen, keyword-only, tagged by "type" on
the wire, and validates itself in `__post_init__` (which the wire decoder runs too). A
`Membership` validates itself (ring/membership.py). `version` is the ring version a Paxos message
is about: the slot of one single-decree instance, decided by the voters of version - 1.
Not yet in messages.Message: the peer core does not route them (docs/membership.md, wiring).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import msgspec

from tokenvault.quorum.messages import OP_ID_LENGTH_MAX, WIRE_INT_MAX, Ballot
from tokenvault.ring.membership import Membership

_OpId = Annotated[str, msgspec.Meta(max_length=OP_ID_LENGTH_MAX)]
_Version = Annotated[int, msgspec.Meta(ge=1, le=WIRE_INT_MAX)]
_Digest = Annotated[str, msgspec.Meta(min_length=16, max_length=16)]


def _check_ballot(ballot: Ballot | None) -> None:
    if ballot is not None:
        Ballot(round=ballot.round, peer=ballot.peer)  # a decoded one skipped Ballot.__new__


class _RingMessage(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    op_id: _OpId


class RingPrepare(_RingMessage, frozen=True, kw_only=True, tag="ring_prepare"):
    """Proposer -> the voters of version - 1. `base_digest` is the proposer's membership at
    version - 1: an acceptor that learned another one there reports a disagreement."""

    version: _Version
    ballot: Ballot
    base_digest: _Digest

    def __post_init__(self) -> None:
        if self.version < 2:
            raise ValueError("version 1 is the bootstrap: never proposed")
        _check_ballot(self.ballot)


class RingAccept(_RingMessage, frozen=True, kw_only=True, tag="ring_accept"):
    version: _Version
    ballot: Ballot
    value: Membership

    def __post_init__(self) -> None:
        if self.value.version != self.version:
            raise ValueError("a proposed membership's version is its slot")
        _check_ballot(self.ballot)


class RingVote(_RingMessage, frozen=True, kw_only=True, tag="ring_vote"):
    """Acceptor -> proposer, the answer to a prepare (`phase` "prepare") or an accept
    ("accept"). Not a vote at all when `learned` is set (this acceptor learned `version` or
    later: here is its membership) or when `behind` (it has not learned version - 1 yet:
    `learned_version` says where it is). Else `granted`, with the promise held and, for a
    prepare, the value accepted in this slot (if any)."""

    phase: Annotated[str, msgspec.Meta(pattern="^(prepare|accept)$")]
    version: _Version
    ballot: Ballot
    granted: bool
    promised: Ballot
    accepted_ballot: Ballot | None = None
    accepted_value: Membership | None = None
    behind: bool = False
    learned_version: _Version = 1
    learned: Membership | None = None

    def __post_init__(self) -> None:
        for ballot in (self.ballot, self.promised, self.accepted_ballot):
            _check_ballot(ballot)
        if (self.accepted_ballot is None) != (self.accepted_value is None):
            raise ValueError("an accepted value comes with its ballot")
        if self.accepted_value is not None and self.accepted_value.version != self.version:
            raise ValueError("an accepted membership's version is its slot")
        if self.granted and (self.behind or self.learned is not None):
            raise ValueError("a vote is granted, behind, or learned: one of them")


class RingDecide(_RingMessage, frozen=True, kw_only=True, tag="ring_decide"):
    """A membership chosen for its version: from a proposer that saw it chosen, or from any
    member answering a fetch or a peer behind."""

    value: Membership


class RingFetch(_RingMessage, frozen=True, kw_only=True, tag="ring_fetch"):
    """A member behind -> one ahead (as its gossip said): your membership, please."""

    version: _Version  # the asker's


RingMessage = RingPrepare | RingAccept | RingVote | RingDecide | RingFetch


@dataclass(frozen=True, slots=True, kw_only=True)
class RingEnvelope:
    source: str
    destination: str
    message: RingMessage
