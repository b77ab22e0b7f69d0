"""Memberships of the ring: who is a member at one ring version, and what a change makes of it.

Theory of operation (docs/membership.md): the ring register decides one `Membership` per ring
version. Version 1 is the bootstrap (`cluster.toml`'s peers, all active). A change is two
versions, as Raft's joint consensus: `apply_change` of an add, remove or replace to a *stable*
membership gives the *joint* one (members `joining` or `leaving`), and `FinishChange` applied to
that gives the next stable one. A joint membership has two rings: the old (active and leaving
members) and the new (active and joining); an owner whose preference lists differ moves.

Rules:
- Pure and deterministic, like hash_ring.py: no I/O, no clock, no randomness.
- A member's vnodes sit at its *vnode seed*'s points: its own id, unless it replaced a member,
  whose seed it takes, so a replace moves exactly the replaced member's owners to it.
- A `Membership` validates itself on creation (also when decoded from the wire or a record:
  msgspec runs `__post_init__` of a dataclass): sorted unique ids, unique seeds on each ring (a
  replaced member and its replacement share one, on the old and the new ring), both rings at
  least N peers, at most RING_MEMBERS_MAX members.
- A *replaced* member (leaving, its vnode seed taken by a joining member) is gone for good,
  the operator said so by replacing it: the fence and the drain wait for all but one of them
  (ring_placement.py). A member being replaced is not replaced again (its replacement is).
- A change over a pending one never changes the old ring (asserted).
- A refused change is a `ChangeRefused` with a stable reason code (for the HTTP layer), raised
  before anything is built: a refused change changes nothing.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tokenvault.ring.hash_ring import HashRing

if TYPE_CHECKING:  # annotation only
    from collections.abc import Iterable

__all__ = [
    "ACTIVE",
    "JOINING",
    "LEAVING",
    "RING_MEMBERS_MAX",
    "AddMember",
    "ChangeRefused",
    "FinishChange",
    "Member",
    "MemberRing",
    "Membership",
    "MembershipChange",
    "RemoveMember",
    "ReplaceMember",
    "apply_change",
    "bootstrap_membership",
    "change_satisfied",
    "is_successor",
    "replaced_members",
]

ACTIVE = "active"
JOINING = "joining"
LEAVING = "leaving"
MEMBER_STATES = (ACTIVE, JOINING, LEAVING)
RING_MEMBERS_MAX = 256
PEER_ID_LENGTH_MAX = 32  # config.py's rule for [[peer]] ids
ADDRESS_LENGTH_MAX = 255
_PEER_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
_DIGEST_DOMAIN = b"tokenvault.membership.v1\x00"


def is_valid_peer_id(peer_id: str) -> bool:
    return 0 < len(peer_id) <= PEER_ID_LENGTH_MAX and all(c in _PEER_ID_CHARS for c in peer_id)


@dataclass(frozen=True, slots=True, kw_only=True)
class Member:
    id: str
    address: str  # host:port of its peer links, as cluster.toml's [[peer]] address
    state: str = ACTIVE
    seed: str = ""  # the id whose vnode points it takes; "" for its own

    def __post_init__(self) -> None:
        if not is_valid_peer_id(self.id) or (self.seed and not is_valid_peer_id(self.seed)):
            raise ValueError("a member id must be 1-32 letters, digits, '_' or '-'")
        if not 0 < len(self.address) <= ADDRESS_LENGTH_MAX or not self.address.isprintable():
            raise ValueError("a member address must be 1-255 printable characters")
        if self.state not in MEMBER_STATES:
            raise ValueError("unknown member state")

    @property
    def vnode_seed(self) -> str:
        return self.seed or self.id


class MemberRing:
    """The hash ring of some members, over their vnode seeds, answering member ids."""

    __slots__ = ("_id_of_seed", "_ring")

    def __init__(self, members: Iterable[Member], vnodes_per_peer: int) -> None:
        self._id_of_seed = {m.vnode_seed: m.id for m in members}
        self._ring = HashRing(self._id_of_seed, vnodes_per_peer)

    @property
    def peer_ids(self) -> tuple[str, ...]:
        return tuple(sorted(self._id_of_seed.values()))

    def preference_list(self, owner_id: str, replica_count: int) -> tuple[str, ...]:
        seeds = self._ring.preference_list(owner_id, replica_count)
        return tuple(self._id_of_seed[seed] for seed in seeds)


@dataclass(frozen=True, slots=True, kw_only=True)
class Membership:
    """What the ring register decides for one version."""

    version: int
    replica_count: int
    vnodes_per_peer: int
    members: tuple[Member, ...]  # sorted by id
    # A finish version only: the members of the joint version it ends, as they were (joining,
    # leaving). Until the change is drained, writes still reach the old ring's replicas
    # (docs/membership.md §3), and a peer that learned the finish without the joint version
    # finds that ring here.
    previous: tuple[Member, ...] = ()

    def __post_init__(self) -> None:
        if not 1 <= self.version < 2**53:
            raise ValueError("a ring version is in 1..2**53-1")
        if not 1 <= self.vnodes_per_peer <= 4096 or not 1 <= self.replica_count <= 64:
            raise ValueError("vnodes_per_peer or replica_count out of range")
        ids = [m.id for m in self.members]
        if not 0 < len(ids) <= RING_MEMBERS_MAX or ids != sorted(set(ids)):
            raise ValueError("members must be 1..256, sorted by id, ids unique")
        old = [m.vnode_seed for m in self.members if m.state != JOINING]
        new = [m.vnode_seed for m in self.members if m.state != LEAVING]
        if len(set(old)) != len(old) or len(set(new)) != len(new):
            raise ValueError("two members of one ring share a vnode seed")
        if min(len(old), len(new)) < self.replica_count:
            raise ValueError("a ring of the membership has fewer peers than replica_count")
        if len(self.previous) > RING_MEMBERS_MAX or (self.previous and not self.stable):
            raise ValueError("only a stable membership ends a change")

    def member(self, peer_id: str) -> Member | None:
        for member in self.members:
            if member.id == peer_id:
                return member
        return None

    @property
    def stable(self) -> bool:
        return all(m.state == ACTIVE for m in self.members)

    @property
    def voters(self) -> tuple[str, ...]:
        """Who decides the next version: every member that is not leaving, sorted."""
        return tuple(m.id for m in self.members if m.state != LEAVING)

    def old_ring(self) -> MemberRing:
        return MemberRing((m for m in self.members if m.state != JOINING), self.vnodes_per_peer)

    def new_ring(self) -> MemberRing:
        return MemberRing((m for m in self.members if m.state != LEAVING), self.vnodes_per_peer)

    def previous_old_ring(self) -> MemberRing | None:
        """The old ring of the change this finish version ended; None for another version."""
        if not self.previous:
            return None
        old = (m for m in self.previous if m.state != JOINING)
        return MemberRing(old, self.vnodes_per_peer)

    def digest(self) -> str:
        """16 hex characters over everything the membership holds: equal on every peer that
        learned this version (gossiped beside the version to catch a disagreement)."""
        h = hashlib.blake2b(digest_size=8)
        h.update(_DIGEST_DOMAIN)
        counts = (self.version, self.replica_count, self.vnodes_per_peer, len(self.members))
        h.update(struct.pack(">QQQQQ", *counts, len(self.previous)))
        for member in (*self.members, *self.previous):
            for text in (member.id, member.address, member.state, member.vnode_seed):
                raw = text.encode()
                h.update(struct.pack(">Q", len(raw)))
                h.update(raw)
        return h.hexdigest()


def bootstrap_membership(
    peers: Iterable[tuple[str, str]], *, replica_count: int, vnodes_per_peer: int
) -> Membership:
    """Version 1: the bootstrap's (id, address) peers, all active."""
    members = sorted((Member(id=i, address=a) for i, a in peers), key=lambda m: m.id)
    return Membership(
        version=1,
        replica_count=replica_count,
        vnodes_per_peer=vnodes_per_peer,
        members=tuple(members),
    )


# -- changes ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class AddMember:
    id: str
    address: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoveMember:
    id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplaceMember:
    old: str
    new: str
    address: str


@dataclass(frozen=True, slots=True, kw_only=True)
class FinishChange:
    """Ends the change pending at `version`: joining members become active, leaving ones are
    dropped. Naming the version keeps a finish proposed for one joint version from ending a
    later one (a replace over the pending change) whose transfers nobody saw committed."""

    version: int


MembershipChange = AddMember | RemoveMember | ReplaceMember | FinishChange


class ChangeRefused(ValueError):
    """A change that does not apply to this membership; `reason` is a stable code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def apply_change(base: Membership, change: MembershipChange) -> Membership:
    """The membership of version base.version + 1, or ChangeRefused."""
    if isinstance(change, FinishChange):
        if base.stable:
            raise ChangeRefused("nothing_pending", "no change is pending")
        if change.version != base.version:
            raise ChangeRefused("superseded", "the pending change was changed since")
        members = [_with(m, ACTIVE) for m in base.members if m.state != LEAVING]
        return _next(base, members, previous=base.members)
    if not base.stable:
        return _apply_over_pending(base, change)
    if isinstance(change, AddMember):
        _require_new(base, change.id)
        joining = _new_member(change.id, change.address, seed="")
        return _next(base, [*base.members, joining])
    if isinstance(change, RemoveMember):
        _require_member(base, change.id)
        members = [_with(m, LEAVING) if m.id == change.id else m for m in base.members]
        if len(members) - 1 < base.replica_count:
            raise ChangeRefused("too_few_peers", "fewer peers than replicas would remain")
        return _next(base, members)
    _require_member(base, change.old)
    _require_new(base, change.new)
    old = base.member(change.old)
    assert old is not None
    joining = _new_member(change.new, change.address, seed=old.vnode_seed)
    members = [_with(m, LEAVING) if m.id == change.old else m for m in base.members]
    return _next(base, [*members, joining])


def _apply_over_pending(base: Membership, change: MembershipChange) -> Membership:
    """A change while another is pending: only the new ring may change. A member is replaced
    (an active one leaves, a joining one is dropped, a leaving one that nobody replaces yet gets
    a replacement) or a joining member that replaces nobody is removed (its add aborted); an add
    or any other remove waits for the finish."""
    if isinstance(change, RemoveMember):
        removed = base.member(change.id)
        if removed is None or removed.state != JOINING or removed.seed:
            raise ChangeRefused(
                "change_pending",
                "a membership change is pending: only a joining member that replaces nobody"
                " may be removed before it finishes",
            )
        after = _next(base, [m for m in base.members if m.id != change.id])
    elif isinstance(change, ReplaceMember):
        _require_member(base, change.old)
        _require_new(base, change.new)
        old = base.member(change.old)
        assert old is not None
        if old.id in replaced_members(base.members):
            raise ChangeRefused(
                "change_pending", "that member is being replaced: replace its replacement"
            )
        joining = _new_member(change.new, change.address, seed=old.vnode_seed)
        members = [
            _with(m, LEAVING) if m.id == old.id and m.state == ACTIVE else m
            for m in base.members
            if m.id != old.id or m.state != JOINING
        ]
        after = _next(base, [*members, joining])
    else:
        raise ChangeRefused("change_pending", "a membership change is pending: finish it first")
    assert after.old_ring().peer_ids == base.old_ring().peer_ids, "the old ring changed"
    return after


def replaced_members(members: Iterable[Member]) -> frozenset[str]:
    """The leaving members whose vnode seed a joining member took: replaced, gone for good."""
    members = tuple(members)
    taken = {m.seed for m in members if m.state == JOINING and m.seed}
    return frozenset(m.id for m in members if m.state == LEAVING and m.vnode_seed in taken)


def change_satisfied(membership: Membership, change: MembershipChange) -> bool:
    """The change is already in `membership` (pending or finished): proposing it again is
    not needed. What makes an operator's command idempotent by intent."""
    if isinstance(change, FinishChange):
        return membership.stable or membership.version > change.version
    if isinstance(change, AddMember):
        added = membership.member(change.id)
        return added is not None and added.address == change.address and added.state != LEAVING
    if isinstance(change, RemoveMember):
        removed = membership.member(change.id)
        return removed is None or removed.state == LEAVING
    new = membership.member(change.new)
    old = membership.member(change.old)
    return (
        new is not None
        and new.address == change.address
        and new.state != LEAVING
        and (old is None or old.state == LEAVING)
    )


def _next(
    base: Membership, members: list[Member], *, previous: tuple[Member, ...] = ()
) -> Membership:
    try:
        return Membership(
            version=base.version + 1,
            replica_count=base.replica_count,
            vnodes_per_peer=base.vnodes_per_peer,
            members=tuple(sorted(members, key=lambda m: m.id)),
            previous=previous,
        )
    except ValueError as error:
        raise ChangeRefused("invalid_member", str(error)) from error


def _new_member(peer_id: str, address: str, *, seed: str) -> Member:
    try:
        return Member(id=peer_id, address=address, state=JOINING, seed=seed)
    except ValueError as error:
        raise ChangeRefused("invalid_member", str(error)) from error


def _with(member: Member, state: str) -> Member:
    return Member(id=member.id, address=member.address, state=state, seed=member.seed)


def _require_new(base: Membership, peer_id: str) -> None:
    if base.member(peer_id) is not None:
        raise ChangeRefused("already_member", "that id is already a member")
    if peer_id in {m.vnode_seed for m in base.members}:
        raise ChangeRefused("already_member", "that id is a member's vnode seed")


def _require_member(base: Membership, peer_id: str) -> None:
    if base.member(peer_id) is None:
        raise ChangeRefused("unknown_member", "no member has that id")


def is_successor(base: Membership, value: Membership) -> bool:
    """`value` is what one change (or the finish of the pending one) makes of `base`: what an
    acceptor checks before it accepts a proposed membership. Tries every change the difference
    could be: at most a handful."""
    if value.version != base.version + 1:
        return False
    candidates: list[MembershipChange] = []
    if not base.stable:
        candidates.append(FinishChange(version=base.version))
    for member in value.members:
        if base.member(member.id) is None:
            candidates.append(AddMember(id=member.id, address=member.address))
            candidates.extend(
                ReplaceMember(old=old.id, new=member.id, address=member.address)
                for old in base.members
                if old.vnode_seed == member.vnode_seed
            )
    for member in base.members:
        now = value.member(member.id)
        if now is None or (now.state == LEAVING and member.state != LEAVING):
            candidates.append(RemoveMember(id=member.id))
    for change in candidates:
        try:
            if apply_change(base, change) == value:
                return True
        except ChangeRefused:
            continue
    return False
