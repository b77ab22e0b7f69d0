"""The simulated cluster: the peers on one ring, the network between them, the clients' link,
and the faults applied to them.

Rules:
- Messages between peers cross the Network; clients reach every peer over a reliable link of
  fixed latency (client-side faults are a peer that is down, paused or crashes mid-operation).
- A fault action is applied as scheduled; `heal()` ends every fault at once: the network heals,
  crashed peers restart from their durable state, paused peers resume, aimed crashes disarm.
- `snapshot()` is what the checker sees of the peers at the end: durable mappings, decided
  values and acceptor records, merkle roots, active epochs, hints pending, operations in flight,
  unsynced writes and held outputs.
- `converged()` is the liveness phase's goal: every peer up and serving (a wiped peer has
  recovered) with nothing in flight, unsynced or held, no hint pending anywhere, and every
  owner's replicas with one merkle root and one decided active epoch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from tokenvault.quorum.messages import Envelope, EpochValue, Mapping
from tokenvault.quorum.records import AcceptorSlot
from tokenvault.ring.hash_ring import HashRing
from tokenvault.ring.membership import bootstrap_membership
from tokenvault.sim.client import ClientAnswer, ClientRequest
from tokenvault.sim.config import SimConfig
from tokenvault.sim.engine import Engine
from tokenvault.sim.faults import FaultAction, FaultKind, FaultMix, LinkFaults, StrikeOn
from tokenvault.sim.network import Network
from tokenvault.sim.observer import Observer
from tokenvault.sim.peer import CoreError, PeerState, SimPeer

PeerFactory = Callable[..., SimPeer]


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaState:
    """One peer at the end of a run, as the checker sees it."""

    peer: str
    up: bool
    mappings: dict[tuple[str, str], Mapping]  # durable, by (owner, token)
    operations_in_flight: int
    unsynced: bool
    held_effects: int
    decided: dict[tuple[str, int], EpochValue] = field(default_factory=dict)  # (owner, slot)
    acceptor_slots: dict[tuple[str, int], AcceptorSlot] = field(default_factory=dict)
    active_epochs: dict[str, EpochValue] = field(default_factory=dict)  # owners it replicates
    merkle_roots: dict[str, str] = field(default_factory=dict)  # owners it replicates
    hints_pending: int = 0


class SimCluster:
    def __init__(
        self,
        *,
        config: SimConfig,
        engine: Engine,
        mix: FaultMix,
        links: dict[tuple[str, str], LinkFaults],
        peer_factory: PeerFactory | None = None,
        observer: Observer | None = None,
    ) -> None:
        self._config = config
        self._engine = engine
        self.ring = HashRing(config.peer_ids, config.vnodes_per_peer)
        bootstrap = bootstrap_membership(
            ((p, f"{p}.sim:7000") for p in config.peer_ids),
            replica_count=config.replica_count,
            vnodes_per_peer=config.vnodes_per_peer,
        )
        self.network = Network(engine, links, self._deliver)
        self.observer = (
            observer if observer is not None else Observer(replica_count=config.replica_count)
        )
        factory = SimPeer if peer_factory is None else peer_factory
        self.peers: dict[str, SimPeer] = {
            peer_id: factory(
                peer_id,
                engine=engine,
                bootstrap=bootstrap,
                quorum=config.quorum,
                fsync_s=mix.fsync_s,
                client_latency_s=config.client_latency_s,
                send=self.network.send,
                owners=config.owner_ids,
                observer=self.observer,
                limits=config.peer_limits,
            )
            for peer_id in config.peer_ids
        }
        self.observer.attach(self._durable_mapping)
        self.healed = False

    def preference_list(self, owner: str) -> tuple[str, ...]:
        return self.ring.preference_list(owner, self._config.replica_count)

    # -- traffic -------------------------------------------------------------------------------

    def _deliver(self, envelope: Envelope) -> None:
        self.peers[envelope.destination].receive(envelope)

    def submit(
        self, peer_id: str, request: ClientRequest, sink: Callable[[ClientAnswer], None]
    ) -> None:
        peer = self.peers[peer_id]
        self._engine.after(
            self._config.client_latency_s, lambda: peer.client_request(request, sink)
        )

    def attempted_tokens(self, op_id: str) -> tuple[str, ...]:
        """The tokens the peers tried to write for a client's tokenize (the observer's)."""
        return self.observer.attempted_tokens(op_id)

    def _durable_mapping(self, peer_id: str, owner: str, token: str) -> Mapping | None:
        """What `peer_id` holds durably under token, or held until a wipe took its store (a
        hint delivered before a wipe may be deleted durably only after it, as a full disk
        delays the delete: the target did acknowledge it durably)."""
        peer = self.peers[peer_id]
        return peer.durable.mapping(owner, token) or peer.lost_mappings.get((owner, token))

    def durable_copies(self, mapping: Mapping) -> int:
        """Replicas that hold `mapping` durably, or held it until a wipe took their store."""
        return sum(
            1
            for peer_id in self.preference_list(mapping.owner)
            if self.peers[peer_id].durable.holds(mapping)
            or self.peers[peer_id].lost_mappings.get((mapping.owner, mapping.token)) == mapping
        )

    # -- faults --------------------------------------------------------------------------------

    def apply(self, action: FaultAction) -> None:
        kind = action.kind
        if kind is FaultKind.PARTITION:
            assert action.partition is not None
            self.network.start_partition(action.partition)
        elif kind is FaultKind.PARTITION_END:
            self.network.end_partition()
        else:
            peer = self.peers[action.peer]
            if kind is FaultKind.ARM_CRASH:
                peer.arm_crash(action.strike_on or StrikeOn.STAGED_WRITE)
                return
            if kind in (FaultKind.WIPE, FaultKind.LOSE_WAL_TAIL):
                self._wipe(peer, lost_wal_tail=kind is FaultKind.LOSE_WAL_TAIL)
                return
            if kind is FaultKind.BIT_FLIP:
                if self._copy_lost_elsewhere(peer):
                    self._engine.record(f"bit-flip-skipped {peer.peer_id}")
                else:
                    peer.flip_bit(action.draw)
                return
            {
                FaultKind.CRASH: peer.crash,
                FaultKind.RESTART: peer.disarm_and_restart,
                FaultKind.PAUSE: peer.pause,
                FaultKind.RESUME: peer.resume,
                FaultKind.DISK_FULL: peer.fill_disk,
                FaultKind.DISK_FREED: peer.free_disk,
            }[kind]()

    def _copy_lost_elsewhere(self, peer: SimPeer) -> bool:
        """Whether another peer has lost copies it has not got back yet: it is wiped or still
        recovering, or holds a record a bit flip corrupted and nothing repaired. A disk fault
        on `peer` then could destroy the last copy of an acknowledged write (W = 2 of N = 3
        tolerates one lost copy): beyond the model, so the fault is called off."""
        return any(
            other.wiped or other.core.state != "serving" or other.holds_unrepaired_flip()
            for other in self.peers.values()
            if other is not peer
        )

    def _wipe(self, peer: SimPeer, *, lost_wal_tail: bool) -> None:
        """Wipes `peer`'s disk, unless that could lose more than the model allows: another peer
        that lost copies and has not got them back (`_copy_lost_elsewhere`), or fewer than
        three replicas. Then it is a plain crash."""
        if not self._copy_lost_elsewhere(peer) and self._config.replica_count >= 3:
            peer.wipe(lost_wal_tail=lost_wal_tail)
        else:
            cause = "lose-wal-tail" if lost_wal_tail else "wipe"
            self._engine.record(f"{cause}-skipped {peer.peer_id}")
            peer.crash()

    def heal(self) -> None:
        self._engine.record("heal")
        self.healed = True
        self.network.heal()
        for peer in self.peers.values():
            peer.disarm()
            peer.free_disk()
            peer.restart()
            peer.resume()

    def quiet(self) -> bool:
        """Every peer up, with nothing in flight, unsynced or held."""
        return all(
            peer.state is PeerState.UP
            and not peer.store.has_unsynced()
            and not peer.held_effects()
            and not peer.operations_in_flight()
            for peer in self.peers.values()
        )

    def converged(self) -> bool:
        """Every peer idle, up and serving, no hint pending, every owner's replicas alike."""
        if not self.quiet() or any(p.core.hints.pending_total() for p in self.peers.values()):
            return False
        if any(p.core.state != "serving" for p in self.peers.values()):
            return False  # a wiped peer still recovering
        for owner in self._config.owner_ids:
            replicas = [self.peers[p] for p in self.preference_list(owner)]
            if len({peer.core.replica.digests.root(owner) for peer in replicas}) != 1:
                return False
            if len({peer.core.acceptor.active_epoch(owner) for peer in replicas}) != 1:
                return False
        return True

    # -- observation ---------------------------------------------------------------------------

    def core_errors(self) -> list[CoreError]:
        return [error for peer in self.peers.values() for error in peer.core_errors]

    def snapshot(self) -> tuple[ReplicaState, ...]:
        return tuple(self._state_of(peer) for peer in self.peers.values())

    def _state_of(self, peer: SimPeer) -> ReplicaState:
        up = peer.state is PeerState.UP
        replicated = [o for o in self._config.owner_ids if peer.peer_id in self.preference_list(o)]
        return ReplicaState(
            peer=peer.peer_id,
            up=up,
            mappings=peer.durable.mappings(),
            operations_in_flight=peer.operations_in_flight(),
            unsynced=peer.store.has_unsynced(),
            held_effects=peer.held_effects(),
            decided=peer.durable.decided(),
            acceptor_slots=peer.durable.acceptor_slots(),
            active_epochs={o: peer.core.acceptor.active_epoch(o) for o in replicated} if up else {},
            merkle_roots={o: peer.core.replica.digests.root(o) for o in replicated} if up else {},
            hints_pending=peer.core.hints.pending_total() if up else 0,
        )
