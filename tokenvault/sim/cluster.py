"""The simulated cluster: the peers on their learned ring, the network between them, the
clients' link, and the faults applied to them.

Rules:
- Messages between peers cross the Network; clients reach every peer over a reliable link of
  fixed latency (client-side faults are a peer that is down, paused or crashes mid-operation).
- A fault action is applied as scheduled; `heal()` ends every fault at once: the network heals,
  crashed peers restart from their durable state, paused peers resume, aimed crashes disarm.
- `snapshot()` is what the checker sees of the peers at the end: durable mappings, decided
  values and acceptor records, merkle roots, active epochs, hints pending, operations in flight,
  unsynced writes and held outputs.
- `converged()` is the liveness phase's goal: every peer up and serving (a wiped peer has
  recovered) with nothing in flight, unsynced or held, no hint pending anywhere, every member
  of the highest ring version durably learned it (and, with `require_finish`, on by default,
  that version is stable and drained), and every owner's replicas with one
  merkle root and one decided active epoch.
- The ring is the one the peers learned (ring_log.py: the highest version any peer made
  durable or sent as decided), not a static one: an owner's replicas are its placement's read
  set there (`preference_list`), and every replica of its sets may hold it (`placed_on`).
- Spare peers (membership changes) join the cluster when started (`start_spare`); a member
  replaced dead is `retire`d: killed, its disk wiped, never restarted, and no longer judged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from tokenvault.quorum.messages import Envelope, EpochValue, Mapping
from tokenvault.quorum.records import AcceptorSlot
from tokenvault.quorum.ring_placement import RingPlacement, is_drained
from tokenvault.ring.membership import Membership, bootstrap_membership
from tokenvault.sim.client import ClientAnswer, ClientRequest
from tokenvault.sim.config import SimConfig
from tokenvault.sim.engine import Engine
from tokenvault.sim.faults import FaultAction, FaultKind, FaultMix, LinkFaults, StrikeOn
from tokenvault.sim.membership_faults import spare_link_faults
from tokenvault.sim.network import Network
from tokenvault.sim.observer import Observer
from tokenvault.sim.peer import CoreError, PeerState, SimPeer
from tokenvault.sim.ring_log import RingLog
from tokenvault.sim.transfer_log import TransferLog

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
    judged: bool = True  # placed on the learned ring: its convergence is judged


def address_of(peer_id: str) -> str:
    """A simulated peer's address (its member address on the ring)."""
    return f"{peer_id}.sim:7000"


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
        self._mix = mix
        self.bootstrap = bootstrap_membership(
            ((p, address_of(p)) for p in config.peer_ids),
            replica_count=config.replica_count,
            vnodes_per_peer=config.vnodes_per_peer,
        )
        self.network = Network(engine, links, self._deliver)
        self.observer = (
            observer if observer is not None else Observer(replica_count=config.replica_count)
        )
        self.ring_log = RingLog(self.bootstrap)
        self.observer.ring = self.ring_log
        self.transfer_log = TransferLog(
            write_quorum=config.write_quorum,
            holdings=self._owner_holdings,
        )
        self.observer.transfers = self.transfer_log
        self.observer.unplaced = self._unplaced_by_a_change
        self._factory = SimPeer if peer_factory is None else peer_factory
        self.peers: dict[str, SimPeer] = {
            peer_id: self._new_peer(peer_id) for peer_id in config.peer_ids
        }
        self.retired: set[str] = set()  # replaced dead: never restarted, no longer judged
        self._placements: dict[tuple[int, bool], RingPlacement] = {}
        self.observer.attach(self._durable_mapping)
        self.healed = False

    def _new_peer(self, peer_id: str, join_address: str | None = None) -> SimPeer:
        # Only a joining spare's factory call names a join address: scenario factories that
        # build bootstrap peers need not know the argument.
        arguments: dict[str, str] = {} if join_address is None else {"join_address": join_address}
        return self._factory(
            peer_id,
            engine=self._engine,
            bootstrap=self.bootstrap,
            quorum=self._config.quorum,
            fsync_s=self._mix.fsync_s,
            client_latency_s=self._config.client_latency_s,
            send=self.network.send,
            owners=self._config.owner_ids,
            observer=self.observer,
            limits=self._config.peer_limits,
            **arguments,  # type: ignore[arg-type]
        )

    # -- membership ----------------------------------------------------------------------------

    def start_spare(self, peer_id: str, *, join: bool) -> SimPeer:
        """A spare peer starts on an empty store; with `join`, it asks to be added by itself."""
        config = self._config
        self.network.add_links(
            spare_link_faults(config.seed, self._mix, config.peer_ids, config.spare_ids)
        )
        peer = self._new_peer(peer_id, address_of(peer_id) if join else None)
        self.peers[peer_id] = peer
        self._engine.record(f"spare-start {peer_id} {'join' if join else 'named'}")
        return peer

    def retire(self, peer_id: str) -> None:
        """A member dies for good: killed, its disk wiped, never restarted (it is replaced)."""
        self.retired.add(peer_id)
        peer = self.peers[peer_id]
        peer.resume()
        peer.wipe()
        self._engine.record(f"retire {peer_id}")

    def running(self) -> list[SimPeer]:
        """Every peer but the retired ones."""
        return [p for p in self.peers.values() if p.peer_id not in self.retired]

    def judged(self) -> list[SimPeer]:
        """The running peers the ring places owners on (members, and the members a change not
        yet drained removed): those whose convergence is judged. A peer outside (removed and
        drained: its operator stops it; a spare never let in) is not."""
        placed = self.ring().peers()
        return [p for p in self.running() if p.peer_id in placed]

    def client_peers(self) -> tuple[str, ...]:
        """The members of the learned ring that exist (a spare is started before it is named):
        whom clients talk to once the ring changes."""
        return tuple(m.id for m in self.members().members if m.id in self.peers)

    def serving_members(self) -> tuple[str, ...]:
        """The members of the learned ring that run and serve: where the liveness reads go."""
        members = self.members()
        return tuple(
            p.peer_id
            for p in self.running()
            if members.member(p.peer_id) is not None and p.core.state == "serving"
        )

    def ring(self) -> RingPlacement:
        """The placements of the highest ring version any peer learned."""
        membership = self.ring_log.highest()
        drained = is_drained(
            membership,
            lambda peer: (
                peer in self.retired or self.ring_log.learned_version(peer) >= membership.version
            ),
        )
        key = (membership.version, drained)
        ring = self._placements.get(key)
        if ring is None:
            ring = RingPlacement(
                membership,
                drained=drained,
                cached_max=self._config.peer_limits.preference_lists_cached_max,
            )
            self._placements[key] = ring
        return ring

    def hints_pending(self, peer: SimPeer) -> int:
        """Hints `peer` holds for a target that may still take them: not one retired (a dead
        replaced member; its copies are the transfer's to rebuild, not the hints'). Hints for
        a target that no longer replicates their owner are forgotten by the peers
        (hinted_handoff.py `forget_unplaced`): pending until then."""
        if not self.retired:
            return peer.core.hints.pending_total()
        held = peer.core.hints.statistics()
        return sum(h.hints for h in held if h.target not in self.retired)

    def members(self) -> Membership:
        return self.ring_log.highest()

    def preference_list(self, owner: str) -> tuple[str, ...]:
        """Where the owner's data must be: its read set on the learned ring (retired aside)."""
        read_set = self.ring().placement(owner).read_set
        return tuple(p for p in read_set if p not in self.retired)

    def placed_on(self, owner: str) -> tuple[str, ...]:
        """Every peer that may hold the owner's data: both sets while a change is pending (a
        former replica drops it once the change is drained: dropping.py)."""
        replicas = set(self.ring().placement(owner).replicas)
        return tuple(sorted(p for p in replicas if p not in self.retired))

    def _unplaced_by_a_change(self, target: str, owner: str) -> bool:
        """Some decided change (not the bootstrap), once drained, places the owner off
        `target`: a peer may then forget its hints for it (hinted_handoff.py
        `forget_unplaced`)."""
        return any(
            target not in self._placement_at(m, drained=True).placement(owner).replicas
            for m in self.ring_log.memberships()
            if m.version > 1
        )

    def _placement_at(self, membership: Membership, *, drained: bool = False) -> RingPlacement:
        """The placements of one decided version: both sets of its change (not drained), or
        the new one only (drained)."""
        key = (membership.version, drained)
        ring = self._placements.get(key)
        if ring is None or ring.membership != membership:
            limit = self._config.peer_limits.preference_lists_cached_max
            ring = self._placements[key] = RingPlacement(
                membership, drained=drained, cached_max=limit
            )
        return ring

    # -- traffic -------------------------------------------------------------------------------

    def _deliver(self, envelope: Envelope) -> None:
        peer = self.peers.get(envelope.destination)
        if peer is None:  # a spare not started (nothing sends to one)
            self._engine.record(f"drop-unknown {envelope.source}->{envelope.destination}")
            return
        peer.receive(envelope)

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

    def _owner_holdings(self, peer_id: str, owner: str) -> dict[str, Mapping]:
        """What `peer_id` holds durably of `owner`, by token (nothing when no such peer)."""
        peer = self.peers.get(peer_id)
        return {} if peer is None else peer.durable.owner_mappings(owner)

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
        elif action.peer in self.retired:
            self._engine.record(f"{kind.value}-skipped {action.peer} retired")
        else:
            peer = self.peers[action.peer]
            if kind is FaultKind.ARM_CRASH:
                peer.arm_crash(action.strike_on or StrikeOn.STAGED_WRITE)
                return
            if kind in (FaultKind.WIPE, FaultKind.LOSE_WAL_TAIL):
                self._wipe(peer, lost_wal_tail=kind is FaultKind.LOSE_WAL_TAIL)
                return
            if kind is FaultKind.BIT_FLIP:
                if self.copy_lost_elsewhere(peer):
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

    def copy_lost_elsewhere(self, peer: SimPeer) -> bool:
        """Whether another peer has lost copies it has not got back yet: it is wiped or still
        recovering, or holds a record a bit flip corrupted and nothing repaired. A disk fault
        on `peer` then could destroy the last copy of an acknowledged write (W = 2 of N = 3
        tolerates one lost copy): beyond the model, so the fault is called off."""
        placed = self.ring().peers()  # a retired peer counts while the ring places it
        return any(
            other.wiped or other.core.state != "serving" or other.holds_unrepaired_flip()
            for other in self.peers.values()
            if other is not peer and (other.peer_id not in self.retired or other.peer_id in placed)
        )

    def _wipe(self, peer: SimPeer, *, lost_wal_tail: bool) -> None:
        """Wipes `peer`'s disk, unless that could lose more than the model allows: another peer
        that lost copies and has not got them back (`copy_lost_elsewhere`), or fewer than
        three replicas. Then it is a plain crash."""
        if not self.copy_lost_elsewhere(peer) and self._config.replica_count >= 3:
            peer.wipe(lost_wal_tail=lost_wal_tail)
        else:
            cause = "lose-wal-tail" if lost_wal_tail else "wipe"
            self._engine.record(f"{cause}-skipped {peer.peer_id}")
            peer.crash()

    def heal(self) -> None:
        self._engine.record("heal")
        self.healed = True
        self.network.heal()
        for peer in self.running():
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
            for peer in self.judged()
        )

    def converged(self) -> bool:
        """Every peer idle, up and serving, no hint pending, every owner's replicas alike and
        no other member holding any of it."""
        running = self.judged()
        if not self.quiet() or any(self.hints_pending(p) for p in running):
            return False
        if any(p.core.state != "serving" for p in running):
            return False  # a wiped peer still recovering
        members = self.members()
        if any(
            self.ring_log.learned_version(p.peer_id) < members.version
            for p in running
            if members.member(p.peer_id) is not None
        ):
            return False  # a member still behind the ring
        if self._config.require_finish and not (members.stable and self.ring().drained):
            return False  # a change not finished, or not drained
        for owner in self._config.owner_ids:
            replicas = [self.peers[p] for p in self.preference_list(owner)]
            if len({peer.core.replica.digests.root(owner) for peer in replicas}) != 1:
                return False
            placed = self.placed_on(owner)
            if any(p.core.replica.digests.count(owner) for p in running if p.peer_id not in placed):
                return False  # a former replica has not dropped it yet (dropping.py)
            if len({peer.core.acceptor.active_epoch(owner) for peer in replicas}) != 1:
                return False
        return True

    # -- observation ---------------------------------------------------------------------------

    def core_errors(self) -> list[CoreError]:
        return [error for peer in self.peers.values() for error in peer.core_errors]

    def snapshot(self) -> tuple[ReplicaState, ...]:
        judged = {p.peer_id for p in self.judged()}
        return tuple(self._state_of(peer, peer.peer_id in judged) for peer in self.running())

    def _state_of(self, peer: SimPeer, judged: bool) -> ReplicaState:
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
            hints_pending=self.hints_pending(peer) if up else 0,
            judged=judged,
        )
