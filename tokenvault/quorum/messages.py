"""Messages between peers and the records they carry, declared once for the cores and the wire.

Rules:
- Every message is one-way: a reply is a message of its own, matched to its request by `op_id`.
- A message is a frozen, keyword-only msgspec Struct, one member of a union tagged on the wire by
  its "type". It validates itself in `__post_init__`, which runs both when a core builds one and
  when the wire decoder (http/peer_codec.py) does, so a core never sees a malformed one.
- A `Mapping` is the unit of insert-once storage: (owner, token) -> (value, field, epoch). It is
  written once and never changed; two mappings are identical when all their fields are equal.
  `Mapping` and `Ballot` are validated named tuples, keyword-only like the messages: on the wire
  a JSON array of exactly their fields. msgspec builds named tuples without calling `__new__`,
  so a decoded one is checked by the message that carries it: a mapping by the constraints
  annotated on its fields (checked while parsing) and by the message's `__post_init__` (its
  owner and its field's ASCII), a ballot by `_check_ballot`.
- An insert (and its reply) says where it comes from, `Origin`: replies are routed by it, never by
  the shape of an op id (op ids keep readable prefixes for the logs, nothing more).
- Every number and string a peer sends is bounded, so that nothing a message carries can make a
  core build an invalid message later or persist a record it cannot read back: epochs and slots
  in 1..`EPOCH_MAX` (a proposer never goes past it: a rotate of an owner at `EPOCH_MAX` answers
  `epochs_exhausted`), ballot rounds in 0..`BALLOT_ROUND_MAX` (likewise: `contended`), counts
  and bucket numbers in 0..`WIRE_INT_MAX`, op ids and proposers up to `OP_ID_LENGTH_MAX`
  characters, a mapping's value up to `VALUE_LENGTH_MAX` characters (the API's limit), wall
  clock times finite. What depends on the configuration (owners, their fields) is the node's
  check (node.py, `BatchRules`), not this module's.
"""

from __future__ import annotations

import enum
import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, NamedTuple

import msgspec

from tokenvault.ring.membership import Member, Membership

OWNER_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")
OWNER_ID_LENGTH_MAX = 64
TOKEN_LENGTH_MAX = 64
FIELD_NAME_LENGTH_MAX = 64
VALUE_LENGTH_MAX = 4096  # characters; the API refuses values over 4,096 UTF-8 bytes
OP_ID_LENGTH_MAX = 128  # op ids are "<peer>-<incarnation>-<n>" and a suffix: under 64
GENESIS_EPOCH = 1
EPOCH_MAX = 2**32 - 1
WIRE_INT_MAX = 2**53 - 1  # the largest integer every JSON reader holds exactly
BALLOT_ROUND_MAX = WIRE_INT_MAX  # rounds grow by one per preemption: never near it honestly

_Token = Annotated[str, msgspec.Meta(min_length=1, max_length=TOKEN_LENGTH_MAX)]
_OpId = Annotated[str, msgspec.Meta(max_length=OP_ID_LENGTH_MAX)]
_Count = Annotated[int, msgspec.Meta(ge=0, le=WIRE_INT_MAX)]
_Slot = Annotated[int, msgspec.Meta(ge=GENESIS_EPOCH, le=EPOCH_MAX)]
STORE_ID_LENGTH_MAX = 64  # a store identity is 32 hex characters (recovery.py); "" is none
_StoreId = Annotated[str, msgspec.Meta(max_length=STORE_ID_LENGTH_MAX)]


@functools.lru_cache(maxsize=4096)
def is_valid_owner_id(owner: str) -> bool:
    return 0 < len(owner) <= OWNER_ID_LENGTH_MAX and all(c in OWNER_ID_CHARS for c in owner)


def _check_owner(owner: str) -> None:
    if not is_valid_owner_id(owner):
        raise ValueError("not a valid owner id")


class _MappingFields(NamedTuple):
    # The annotations are what the wire decoder checks while parsing, in C; Mapping.__new__
    # checks the same limits for mappings built here (a test holds both to the same verdicts).
    owner: str  # checked by the carrying message: equal to its own, validated, owner
    token: _Token
    value: Annotated[str, msgspec.Meta(max_length=VALUE_LENGTH_MAX)]
    field: Annotated[str, msgspec.Meta(min_length=1, max_length=FIELD_NAME_LENGTH_MAX)]
    epoch: Annotated[int, msgspec.Meta(ge=GENESIS_EPOCH, le=EPOCH_MAX)]


class Mapping(_MappingFields):
    """(owner, token) -> (value, field, epoch), validated on creation, immutable, equal and
    hashed by its fields (so also equal to a plain tuple of them). A named tuple, not a frozen
    dataclass: a replica builds one per mapping of every peer batch, and this builds in two
    thirds of the time (measured). On the wire: [owner, token, value, field, epoch]."""

    __slots__ = ()

    def __new__(cls, *, owner: str, token: str, value: str, field: str, epoch: int) -> Mapping:
        _check_owner(owner)
        if not 0 < len(token) <= TOKEN_LENGTH_MAX:
            raise ValueError("mapping token must be 1-64 characters")
        if len(value) > VALUE_LENGTH_MAX:
            raise ValueError("mapping value must be at most 4,096 characters")
        if not 0 < len(field) <= FIELD_NAME_LENGTH_MAX or not field.isascii():
            raise ValueError("mapping field must be 1-64 ASCII characters")
        if not GENESIS_EPOCH <= epoch <= EPOCH_MAX:
            raise ValueError("mapping epoch out of range")
        return tuple.__new__(cls, (owner, token, value, field, epoch))


def highest_epoch(mappings: Iterable[Mapping]) -> int:
    """The epoch a log line about these mappings names; 0 for none."""
    return max((m.epoch for m in mappings), default=0)


def _check_carried_mappings(owner: str, mappings: Iterable[Mapping | None]) -> None:
    """What a mapping's annotations cannot say, checked by the message that carries it (a named
    tuple decoded from the wire was not built by Mapping.__new__): it is of the message's owner,
    and its field is ASCII."""
    for mapping in mappings:
        if mapping is not None and (mapping.owner != owner or not mapping.field.isascii()):
            raise ValueError("a mapping of another owner, or with a field that is not ASCII")


class InsertOutcome(enum.Enum):
    """A replica's durable answer to one insert."""

    STORED = "stored"  # newly written and fsync'd
    IDENTICAL = "identical"  # already held, identical: an idempotent retry
    CONFLICT = "conflict"  # a different mapping under the same token: integrity alarm
    FENCED = "fenced"  # refused: this replica accepted or learned a later epoch for the owner
    UNAVAILABLE = "unavailable"  # refused: this replica is recovering a lost store (recovery.py)

    @property
    def is_durable_ack(self) -> bool:
        return self is InsertOutcome.STORED or self is InsertOutcome.IDENTICAL


class Origin(enum.Enum):
    """Who sent an insert, echoed in its reply, which goes back to that core."""

    COORDINATOR = "coordinator"  # a client's write, or a read's blocking repair
    HINTS = "hints"  # hinted handoff delivering what a replica missed
    ANTI_ENTROPY = "anti_entropy"  # anti-entropy copying what a partner lacks
    TRANSFER = "transfer"  # a transfer's page, stored by the new replica itself (transfer.py)
    DROP = "drop"  # a former replica handing its copy over before it deletes it (dropping.py)


class _Message(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """The base of every message: the wire names its class in "type" (the `tag` of each)."""


class _OwnerMessage(_Message, frozen=True, kw_only=True):
    """Every message but the heartbeat: about one owner, in one operation ("op" on the wire)."""

    op_id: _OpId = msgspec.field(name="op")
    owner: str
    # The ring version whose placement the sender's operation runs under (docs/membership.md
    # §3): set on the requests of coordinators and proposers, 0 on everything else. A replica
    # at a later version does not answer them (the ring fence, peer_core.py).
    ring: _Count = 0

    def __post_init__(self) -> None:
        _check_owner(self.owner)


class InsertRequest(_OwnerMessage, frozen=True, kw_only=True, tag="insert"):
    """Coordinator -> replica: store these mappings of one owner, insert-once.

    A tokenize is fenced by the owner's epoch; a repair (read repair, hints and anti-entropy)
    copies mappings that already exist and is never fenced."""

    mappings: tuple[Mapping, ...]
    repair: bool = False
    origin: Origin = Origin.COORDINATOR

    def __post_init__(self) -> None:
        _check_owner(self.owner)
        if not self.mappings:
            raise ValueError("insert request carries no mapping")
        _check_carried_mappings(self.owner, self.mappings)
        if len({mapping.token for mapping in self.mappings}) != len(self.mappings):
            raise ValueError("insert request repeats a token")
        if self.origin is not Origin.COORDINATOR and not self.repair:
            raise ValueError("hints and anti-entropy only repair")

    @property
    def epoch(self) -> int:
        """The highest epoch of its mappings (one for a tokenize; a repair may mix epochs)."""
        return highest_epoch(self.mappings)


class InsertReply(_OwnerMessage, frozen=True, kw_only=True, tag="insert_reply"):
    """Replica -> whoever sent the insert (its `origin`, echoed): one outcome per mapping of the
    request, in its order."""

    tokens: tuple[_Token, ...]
    outcomes: tuple[InsertOutcome, ...]
    origin: Origin = Origin.COORDINATOR

    def __post_init__(self) -> None:
        _check_owner(self.owner)
        if len(self.tokens) != len(self.outcomes):
            raise ValueError("insert reply: tokens and outcomes differ in length")


class ReadRequest(_OwnerMessage, frozen=True, kw_only=True, tag="read"):
    """Coordinator -> replica: what do you hold for these tokens of one owner?"""

    tokens: tuple[_Token, ...]

    def __post_init__(self) -> None:
        _check_owner(self.owner)
        if not self.tokens:
            raise ValueError("read request carries no token")


class ReadReply(_OwnerMessage, frozen=True, kw_only=True, tag="read_reply"):
    """Replica -> coordinator: the durable mapping for each token asked, or None; `corrupt`
    names the asked tokens whose held record failed verification (their mapping is None: a
    corrupt record is neither a value nor an absence). Bounded by the tokens asked; absent on
    the wire from a replica of an older version, which reads as "none corrupt".
    `unavailable`: the replica is recovering a lost store and answers nothing (every mapping
    None); the coordinator does not count it toward R."""

    tokens: tuple[_Token, ...]
    mappings: tuple[Mapping | None, ...]
    corrupt: tuple[_Token, ...] = ()
    unavailable: bool = False

    def __post_init__(self) -> None:
        _check_owner(self.owner)
        if len(self.tokens) != len(self.mappings):
            raise ValueError("read reply: tokens and mappings differ in length")
        if self.corrupt:
            held = {t for t, m in zip(self.tokens, self.mappings, strict=True) if m is not None}
            if len(set(self.corrupt)) != len(self.corrupt) or not set(self.corrupt) <= (
                set(self.tokens) - held
            ):
                raise ValueError("read reply: corrupt tokens must be asked, unheld and unique")
        _check_carried_mappings(self.owner, self.mappings)
        for token, mapping in zip(self.tokens, self.mappings, strict=True):
            if mapping is not None and mapping.token != token:
                raise ValueError("read reply: a mapping does not match its token")


# -- epochs: single-decree Paxos per (owner, slot); slot e decides epoch e ---------------------


def _check_ballot(ballot: Ballot | None) -> None:
    """A ballot has a round in 1..BALLOT_ROUND_MAX and a proposer of at most OP_ID_LENGTH_MAX
    characters, or is the zero ballot (None passes: no ballot)."""
    if ballot is not None and (
        not 0 <= ballot.round <= BALLOT_ROUND_MAX
        or (ballot.round > 0) != bool(ballot.peer)
        or len(ballot.peer) > OP_ID_LENGTH_MAX
    ):
        raise ValueError("a ballot has a bounded round >= 1 and a proposer, or is the zero ballot")


def _check_slot(slot: int) -> None:
    """A Paxos slot decides an epoch after the genesis one."""
    if not GENESIS_EPOCH < slot <= EPOCH_MAX:
        raise ValueError("a slot is above the genesis epoch and at most EPOCH_MAX")


class _BallotFields(NamedTuple):
    round: int
    peer: str


class Ballot(_BallotFields):
    """Unique and totally ordered: (round, proposer). The proposer is the id of the operation
    that prepares (unique across peers, operations and restarts). Ballot() is below all.
    On the wire: [round, peer]. A named tuple, not a Struct: an array-like Struct with defaults
    would decode [] or [0] as the zero ballot, and `Ballot()` must stay the zero ballot."""

    __slots__ = ()

    def __new__(cls, *, round: int = 0, peer: str = "") -> Ballot:
        ballot = tuple.__new__(cls, (round, peer))
        _check_ballot(ballot)
        return ballot


@dataclass(frozen=True, slots=True, kw_only=True)
class EpochValue:
    """What one Paxos instance decides: an epoch and the parameters its token key derives from.
    A dataclass, not a Struct: it is a stored record as much as a message part (records.py),
    and msgspec decodes a dataclass as strictly, running its __post_init__."""

    epoch: int
    salt: str  # hex, chosen by the proposer; "" for the genesis epoch
    requested_by: str  # the request id of the rotate that proposed it
    requested_at_s: float  # the proposer's wall clock (UNIX seconds) when it proposed

    def __post_init__(self) -> None:
        if not GENESIS_EPOCH <= self.epoch <= EPOCH_MAX:
            raise ValueError("epoch out of range")
        if len(self.requested_by) > OP_ID_LENGTH_MAX or not math.isfinite(self.requested_at_s):
            raise ValueError("an epoch value's request id is too long or its time not finite")
        if len(self.salt) > 64 or not all(c in "0123456789abcdef" for c in self.salt):
            raise ValueError("epoch salt must be at most 64 lowercase hex characters")
        if (self.epoch == GENESIS_EPOCH) != (not self.salt):
            raise ValueError("only the genesis epoch has no salt")


ZERO_BALLOT = Ballot()
GENESIS = EpochValue(epoch=GENESIS_EPOCH, salt="", requested_by="", requested_at_s=0.0)


class EpochQuery(_OwnerMessage, frozen=True, kw_only=True, tag="epoch_query"):
    """Learner -> acceptor: what have you decided and accepted for this owner? Changes nothing."""


class EpochReport(_OwnerMessage, frozen=True, kw_only=True, tag="epoch_report"):
    """Acceptor -> learner: its highest decided epoch and highest slot with an accepted value.
    `unavailable`: the acceptor is recovering a lost store; the learner does not count it."""

    decided: EpochValue
    accepted_slot: _Slot
    unavailable: bool = False


class Prepare(_OwnerMessage, frozen=True, kw_only=True, tag="prepare"):
    slot: int
    ballot: Ballot

    def __post_init__(self) -> None:
        _check_owner(self.owner)
        _check_ballot(self.ballot)
        _check_slot(self.slot)
        if self.ballot.round < 1:
            raise ValueError("prepare needs a real ballot")


class Promise(_OwnerMessage, frozen=True, kw_only=True, tag="promise"):
    """Acceptor -> proposer. `granted` false means `promised` outranks the ballot asked, or the
    slot is already decided here (`decided` then carries the value). `store` is the
    acceptor's store identity (recovery.py): a proposer drops promises of a store that was
    since replaced. `unavailable`: the acceptor is recovering and does not vote (not granted,
    and not a refusal by a higher ballot either)."""

    slot: int
    ballot: Ballot
    granted: bool
    promised: Ballot
    accepted_ballot: Ballot | None
    accepted_value: EpochValue | None
    decided: EpochValue | None
    store: _StoreId = ""
    unavailable: bool = False

    def __post_init__(self) -> None:
        _check_owner(self.owner)
        _check_slot(self.slot)
        for ballot in (self.ballot, self.promised, self.accepted_ballot):
            _check_ballot(ballot)
        if (self.accepted_ballot is None) != (self.accepted_value is None):
            raise ValueError("an accepted value comes with its ballot")


class Accept(_OwnerMessage, frozen=True, kw_only=True, tag="accept"):
    slot: int
    ballot: Ballot
    value: EpochValue

    def __post_init__(self) -> None:
        _check_owner(self.owner)
        _check_ballot(self.ballot)
        _check_slot(self.slot)
        if self.value.epoch != self.slot or self.ballot.round < 1:
            raise ValueError("accept: the value's epoch is its slot, with a real ballot")


class Accepted(_OwnerMessage, frozen=True, kw_only=True, tag="accepted"):
    """Acceptor -> proposer; `store` and `unavailable` as in Promise."""

    slot: int
    ballot: Ballot
    granted: bool
    promised: Ballot
    decided: EpochValue | None
    store: _StoreId = ""
    unavailable: bool = False

    def __post_init__(self) -> None:
        _check_owner(self.owner)
        _check_slot(self.slot)
        _check_ballot(self.ballot)
        _check_ballot(self.promised)


class Decide(_OwnerMessage, frozen=True, kw_only=True, tag="decide"):
    """Proposer -> every replica: this value was chosen for its slot (a majority accepted it)."""

    value: EpochValue

    def __post_init__(self) -> None:
        _check_owner(self.owner)
        if self.value.epoch <= GENESIS_EPOCH:
            raise ValueError("the genesis epoch is never decided by a round")


# -- inspection ---------------------------------------------------------------------------------


class OwnerInspect(_OwnerMessage, frozen=True, kw_only=True, tag="owner_inspect"):
    """Admin view: a replica's own state for one owner. Changes nothing."""


class OwnerView(_OwnerMessage, frozen=True, kw_only=True, tag="owner_view"):
    token_count: _Count
    digest: Annotated[str, msgspec.Meta(max_length=64)]  # hex root of the owner's digest tree
    complete: bool  # False when the scan stopped at its bound: count and digest are partial
    decided: EpochValue  # the highest epoch decided here: the active one
    accepted_slot: _Slot
    next_slot_promised: Ballot
    next_slot_accepted: Ballot | None

    def __post_init__(self) -> None:
        _check_owner(self.owner)
        _check_ballot(self.next_slot_promised)
        _check_ballot(self.next_slot_accepted)


class Heartbeat(_Message, frozen=True, kw_only=True, tag="heartbeat"):
    """Peer -> peer, every heartbeat interval: a sign of life for the failure detector, and
    the store identities (recovery.py): `store` is the sender's ("" while it has not decided
    whether it lost its store), `known` the one the sender remembers for the destination
    ("" when it never saw one)."""

    sender: Annotated[str, msgspec.Meta(max_length=OP_ID_LENGTH_MAX)]
    store: _StoreId = ""
    known: _StoreId = ""
    # The ring (docs/membership.md): the sender's learned version and its digest ("" from a
    # peer of an older version), and the highest ring version whose transfers into the sender
    # are all committed (0: none yet), and the highest version the sender knows drained (0:
    # none): a fact that never stops holding, so a peer that restarted learns it from anyone.
    ring_version: Annotated[int, msgspec.Meta(ge=1, le=WIRE_INT_MAX)] = 1
    ring_digest: Annotated[str, msgspec.Meta(max_length=16)] = ""
    transfers_done: _Count = 0
    ring_drained: _Count = 0

    @property
    def op_id(self) -> str:
        return ""


# -- anti-entropy ------------------------------------------------------------------------------


class AeSummary(_OwnerMessage, frozen=True, kw_only=True, tag="ae_summary"):
    """Initiator -> partner: my digest leaves and decided epoch for one owner."""

    leaves: tuple[Annotated[str, msgspec.Meta(max_length=64)], ...]  # hex, one per bucket
    count: _Count
    decided: EpochValue


class AeSummaryReply(_OwnerMessage, frozen=True, kw_only=True, tag="ae_summary_reply"):
    """Partner -> initiator: the buckets whose leaves differ, and the partner's decided epoch."""

    differing: tuple[_Count, ...]
    decided: EpochValue


class AeKeys(_OwnerMessage, frozen=True, kw_only=True, tag="ae_keys"):
    """Initiator -> partner: my tokens (with record hashes) in one window of one bucket:
    after `start_after` (or the bucket's start) up to `last` inclusive (or the bucket's end)."""

    bucket: _Count
    start_after: _Token | None
    last: _Token | None
    entries: tuple[tuple[_Token, Annotated[str, msgspec.Meta(max_length=64)]], ...]


class AeKeysReply(_OwnerMessage, frozen=True, kw_only=True, tag="ae_keys_reply"):
    """Partner -> initiator: the tokens of the window the partner lacks (the initiator pushes
    them); the partner pushes what the initiator lacks on its own."""

    bucket: _Count
    missing: tuple[_Token, ...]
    pushed: _Count = 0  # mappings of the window the partner pushed to the initiator


# -- recovery of a lost store (recovery.py) ------------------------------------------------------

RECOVERY_DECIDED_MAX = 1_024  # decided values one report carries: the highest ones
RECOVERY_SLOTS_MAX = 64  # open acceptor slots one report carries: the lowest ones


class SlotState(msgspec.Struct, frozen=True, kw_only=True):
    """One acceptor slot above the decided one: what a recovering replica adopts."""

    slot: int
    promised: Ballot
    accepted_ballot: Ballot | None
    accepted_value: EpochValue | None

    def __post_init__(self) -> None:
        _check_slot(self.slot)
        _check_ballot(self.promised)
        _check_ballot(self.accepted_ballot)
        if (self.accepted_ballot is None) != (self.accepted_value is None):
            raise ValueError("an accepted value comes with its ballot")
        if self.accepted_value is not None and self.accepted_value.epoch != self.slot:
            raise ValueError("an accepted value's epoch is its slot")


class RecoveryQuery(_OwnerMessage, frozen=True, kw_only=True, tag="recovery_query"):
    """Recovering replica -> another replica of the owner: your whole epoch state, please.
    `store` is the asker's new store identity: the answering peer notes it (and drops the
    promises its proposers counted from the old store) before it answers."""

    store: _StoreId


class RecoveryReport(_OwnerMessage, frozen=True, kw_only=True, tag="recovery_report"):
    """Replica -> recovering replica: its decided values (the highest RECOVERY_DECIDED_MAX,
    slots above the genesis one), its epoch meta, and its open acceptor slots (above the
    decided one; the lowest RECOVERY_SLOTS_MAX)."""

    decided: tuple[EpochValue, ...]
    decided_slot: _Slot
    accepted_slot: _Slot
    slots: tuple[SlotState, ...]

    def __post_init__(self) -> None:
        _check_owner(self.owner)
        if len(self.decided) > RECOVERY_DECIDED_MAX or len(self.slots) > RECOVERY_SLOTS_MAX:
            raise ValueError("a recovery report carries too many values")
        if any(value.epoch <= GENESIS_EPOCH for value in self.decided):
            raise ValueError("the genesis epoch is never decided by a round")


# -- transfers of a moved owner to a new replica (transfer.py) ----------------------------------

TRANSFER_PAGE_MAPPINGS_MAX = 1_000  # mappings one page carries
TRANSFER_PAGE_BYTES_MAX = 1 << 20  # bytes of records one page carries (at least one record)
TRANSFER_RECORD_BYTES_MAX = 64 * 1024  # one stored record: a sealed value of 4,096 characters
# and its header stay far below
_Checksum = Annotated[str, msgspec.Meta(min_length=32, max_length=32, pattern="^[0-9a-f]{32}$")]


class TransferPage(_OwnerMessage, frozen=True, kw_only=True, tag="transfer_page"):
    """New replica -> an old replica of the owner: up to `limit` of your mappings of the owner,
    in token order, after the token `after` (from the start when None). `request` numbers the
    asker's requests: the reply echoes it, so a late answer to an earlier request is known."""

    after: _Token | None
    limit: Annotated[int, msgspec.Meta(ge=1, le=TRANSFER_PAGE_MAPPINGS_MAX)]
    request: _Count


class TransferPageReply(_OwnerMessage, frozen=True, kw_only=True, tag="transfer_page_reply"):
    """Old replica -> new replica: the owner's records as stored (sealed, format 2), in token
    order after `after`; `done` when nothing follows them; `checksum` is the hex blake2b-128 of
    the length-prefixed (token, record) pairs (transfer.py `page_checksum`); `held` is how
    many mappings of the owner the source holds (for progress only). `unavailable`: the
    source does not serve the owner now (it recovers, or holds no copy): ask another."""

    after: _Token | None
    request: _Count
    entries: tuple[
        tuple[_Token, Annotated[bytes, msgspec.Meta(max_length=TRANSFER_RECORD_BYTES_MAX)]], ...
    ] = ()
    checksum: _Checksum = "0" * 32
    done: bool = False
    held: _Count = 0
    unavailable: bool = False

    def __post_init__(self) -> None:
        _check_owner(self.owner)
        if len(self.entries) > TRANSFER_PAGE_MAPPINGS_MAX:
            raise ValueError("a transfer page carries too many mappings")
        previous = self.after
        for token, _ in self.entries:
            if previous is not None and token <= previous:
                raise ValueError("a transfer page is in strict token order after its cursor")
            previous = token


# -- the ring register (ring_register.py): one single-decree Paxos instance per ring version ---
# `version` is the ring version a Paxos message is about: the slot of one instance, decided by
# the voters of version - 1. A `Membership` validates itself (ring/membership.py).

_Version = Annotated[int, msgspec.Meta(ge=1, le=WIRE_INT_MAX)]
_RingDigest = Annotated[str, msgspec.Meta(min_length=16, max_length=16)]


class _RingMessage(_Message, frozen=True, kw_only=True):
    op_id: _OpId


class RingPrepare(_RingMessage, frozen=True, kw_only=True, tag="ring_prepare"):
    """Proposer -> the voters of version - 1. `base_digest` is the proposer's membership at
    version - 1: an acceptor that learned another one there reports a disagreement."""

    version: _Version
    ballot: Ballot
    base_digest: _RingDigest

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


class RingJoin(_RingMessage, frozen=True, kw_only=True, tag="ring_join"):
    """A peer started with --join, not a member yet -> a bootstrap member: add me (id and
    address of its peer links). The receiver proposes the add (idempotent by intent)."""

    id: Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
    address: Annotated[str, msgspec.Meta(min_length=1, max_length=255)]

    def __post_init__(self) -> None:
        Member(id=self.id, address=self.address)  # the member rules: raises ValueError


RingMessage = RingPrepare | RingAccept | RingVote | RingDecide | RingFetch | RingJoin
RING_MESSAGE_TYPES = (RingPrepare, RingAccept, RingVote, RingDecide, RingFetch, RingJoin)


AntiEntropyMessage = AeSummary | AeSummaryReply | AeKeys | AeKeysReply
AcceptorMessage = EpochQuery | Prepare | Accept | Decide
ProposerMessage = EpochReport | Promise | Accepted
Message = (
    InsertRequest
    | InsertReply
    | ReadRequest
    | ReadReply
    | AcceptorMessage
    | ProposerMessage
    | OwnerInspect
    | OwnerView
    | Heartbeat
    | AntiEntropyMessage
    | RecoveryQuery
    | RecoveryReport
    | TransferPage
    | TransferPageReply
    | RingMessage
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Envelope:
    """A message on its way from one peer to another (source may equal destination)."""

    source: str
    destination: str
    message: Message
